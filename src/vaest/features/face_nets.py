"""The torch frame encoders of the face modality: the :class:`FrameEncoder` base and the ``grada``, ``fer`` and
``tiny`` networks (the published ``minixception`` and ``emotiefflib`` ones are in
:mod:`vaest.features.pretrained_face`).

Kept apart from :mod:`vaest.features.face` so that the face tracker, the extractors and the zero-shot path import
without torch (0.7-0.9 s of start-up); :func:`vaest.features.face_encoders.create_encoder` imports this module
when it builds a torch encoder.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
from torch import nn

from vaest.errors import ModelError
from vaest.features.face_geometry import letterbox
from vaest.features.face_registry import (AFFECTNET_CLASSES, FER_CLASSES, IMAGENET_MEAN, IMAGENET_STD, fer_weights_path,
                                          register_encoder)

log = logging.getLogger(__name__)


class FrameEncoder(nn.Module):
    """A face-crop encoder: ``preprocess`` RGB crops, ``forward`` -> ``emb`` (B, D), ``probs`` (B, C), and
    ``va`` (B, 2) when it has a valence/arousal head. ``classes`` names the C expression classes."""

    Config: ClassVar[type] = object
    registry_name: ClassVar[str] = ""
    classes: tuple[str, ...] = ()
    has_va: ClassVar[bool] = False
    light: ClassVar[bool] = False  # small network: one CPU thread is fastest
    # preprocessing that travels with the weights: the crop framing (scale, shift of :func:`crop_face`) the
    # network ranks best on, and whether mirrored-crop averaging is on by default (None: on for light networks)
    crop_framing: ClassVar[tuple[float, float]] = (1.1, -0.05)
    flip_default: ClassVar[bool | None] = None

    @property
    def feature_dim(self) -> int:  # pragma: no cover - interface
        raise NotImplementedError

    def preprocess(self, crops: Sequence[np.ndarray]) -> torch.Tensor:  # pragma: no cover - interface
        """(B, C, S, S) float tensor from RGB uint8 crops of any size."""
        raise NotImplementedError

    def load_weights(self, path: str | Path) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    @torch.no_grad()
    def encode(self, crops: Sequence[np.ndarray], device: str = "cpu", batch_size: int = 64,
               flip: bool = False) -> dict[str, np.ndarray]:
        """Encode RGB crops in batches; returns ``emb`` (N, D), ``probs`` (N, C) and maybe ``va`` (N, 2).

        ``flip``: average every output over the crop and its mirror image (test-time augmentation).
        """
        self.eval()
        outs: dict[str, list[np.ndarray]] = {}
        for i in range(0, len(crops), batch_size):
            x = self.preprocess(crops[i : i + batch_size]).to(device)
            res = self(x)
            if flip:
                res = {k: 0.5 * (v + res2[k]) for res2 in [self(torch.flip(x, dims=[3]))] for k, v in res.items()}
            for k, v in res.items():
                outs.setdefault(k, []).append(v.float().cpu().numpy())
        if not outs:
            res = {"emb": np.zeros((0, self.feature_dim), np.float32), "probs": np.zeros((0, len(self.classes)), np.float32)}
            if self.has_va:
                res["va"] = np.zeros((0, 2), np.float32)
            return res
        return {k: np.concatenate(v) for k, v in outs.items()}


def _read_state(path: str | Path) -> dict[str, torch.Tensor]:
    """A state_dict from a checkpoint file: a state_dict, a dict holding 'state_dict' / 'model' / 'network',
    or a whole pickled model. Keys lose any ``module.`` prefix (DataParallel)."""
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"{p}: weights file not found")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception:
        try:
            log.warning("%s: not a plain weights file; loading it as a pickled model (trusted files only)", p)
            obj = torch.load(p, map_location="cpu", weights_only=False)
        except Exception as e:
            raise ModelError(f"{p}: cannot read weights ({type(e).__name__}: {e})") from None
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict):
        for k in ("state_dict", "model", "network"):
            if k in obj and isinstance(obj[k], (dict, nn.Module)):
                obj = obj[k].state_dict() if isinstance(obj[k], nn.Module) else obj[k]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"{p}: no state_dict found (expected a state_dict, a dict with 'state_dict'/'model', or a model)")
    return {(k[7:] if k.startswith("module.") else k): v for k, v in obj.items()}


def _load_into(model: nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        msg = str(e).splitlines()
        raise ModelError(f"{path}: weights do not fit the {type(model).__name__} network: {' '.join(msg[:3])[:500]}") from None


# --- EfficientNet-B1 in plain torch with torchvision's parameter names ---------------------------------------


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm2d -> optional SiLU, as torchvision's Conv2dNormActivation (indices 0, 1)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True):
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
                                   nn.BatchNorm2d(cout)]
        if act:
            layers.append(nn.SiLU(inplace=True))
        super().__init__(*layers)


class SqueezeExcite(nn.Module):
    """Channel gating: x * sigmoid(fc2(silu(fc1(mean over H, W of x)))) (parameter names fc1, fc2)."""

    def __init__(self, channels: int, squeeze: int):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = nn.SiLU(inplace=True)
        self.scale_activation = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return x * s


def stochastic_depth(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Drop whole samples of a residual branch with probability ``p`` during training (rescaling the rest)."""
    if not training or p == 0.0:
        return x
    keep = 1.0 - p
    noise = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * noise.div_(keep) if keep > 0 else x * noise


class MBConv(nn.Module):
    """Inverted residual block: [1x1 expand] -> depthwise kxk -> squeeze-excite -> 1x1 project (+ residual)."""

    def __init__(self, cin: int, cout: int, expand: int, k: int, stride: int, sd_prob: float):
        super().__init__()
        mid = cin * expand
        layers: list[nn.Module] = []
        if mid != cin:
            layers.append(ConvBNAct(cin, mid, 1))
        layers += [ConvBNAct(mid, mid, k, stride, groups=mid), SqueezeExcite(mid, max(1, cin // 4)),
                   ConvBNAct(mid, cout, 1, act=False)]
        self.block = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout
        self.sd_prob = sd_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        if self.use_res:
            y = stochastic_depth(y, self.sd_prob, self.training) + x
        return y


# (expand ratio, kernel, stride, in, out, layers) of EfficientNet-B0; B1 repeats each stage ceil(1.1 x layers)
_B0_STAGES = ((1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
              (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1))


class EfficientNet(nn.Module):
    """torchvision-compatible EfficientNet (B1 by default): ``features`` (stem, 7 MBConv stages, 1x1 head conv
    to 1280), ``avgpool``, ``classifier`` (Dropout, Linear) or Identity when ``num_classes`` is None.

    A torchvision ``efficientnet_b1`` state_dict loads into it with ``strict=True``.
    """

    def __init__(self, depth_mult: float = 1.1, stochastic_depth_prob: float = 0.2, num_classes: int | None = 1000,
                 dropout: float = 0.2):
        super().__init__()
        stages = [(e, k, s, i, o, int(math.ceil(n * depth_mult))) for e, k, s, i, o, n in _B0_STAGES]
        total = sum(st[-1] for st in stages)
        layers: list[nn.Module] = [ConvBNAct(3, stages[0][3], 3, 2)]
        block_id = 0
        for e, k, s, cin, cout, n in stages:
            blocks = []
            for j in range(n):
                blocks.append(MBConv(cin if j == 0 else cout, cout, e, k, s if j == 0 else 1,
                                     stochastic_depth_prob * block_id / total))
                block_id += 1
            layers.append(nn.Sequential(*blocks))
        self.out_channels = 4 * stages[-1][4]
        layers.append(ConvBNAct(stages[-1][4], self.out_channels, 1))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier: nn.Module = (nn.Sequential(nn.Dropout(dropout, inplace=True), nn.Linear(self.out_channels, num_classes))
                                      if num_classes else nn.Identity())
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                r = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -r, r)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, num_classes) or pooled features (B, 1280) when the classifier is Identity."""
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))




@dataclass
class GradaConfig:
    """GRADA affective encoder: EfficientNet-B1 -> Dropout -> Linear(1280, emb) -> BatchNorm1d -> Tanh."""

    emb_dim: int = 256
    num_classes: int = 8
    dropout: float = 0.1
    input_size: int = 240
    stochastic_depth: float = 0.2
    classes: tuple[str, ...] = AFFECTNET_CLASSES


@register_encoder("grada")
class GradaEncoder(FrameEncoder):
    """The reference face frame encoder (parameter names of the published checkpoint:
    ``model.features...``, ``embeddings_layer``, ``batchnorm``, ``classifier`` (8), ``regression`` (2))."""

    Config = GradaConfig
    has_va = True

    def __init__(self, config: GradaConfig | None = None):
        super().__init__()
        self.config = config or GradaConfig()
        c = self.config
        self.classes = tuple(c.classes)
        if len(self.classes) != c.num_classes:
            raise ModelError(f"grada: {len(self.classes)} class names for {c.num_classes} classes")
        self.model = EfficientNet(depth_mult=1.1, stochastic_depth_prob=c.stochastic_depth, num_classes=None)
        self.dropout_after_pretrained = nn.Dropout(c.dropout)
        self.embeddings_layer = nn.Linear(self.model.out_channels, c.emb_dim)
        self.batchnorm = nn.BatchNorm1d(c.emb_dim, momentum=0.1, affine=True)
        self.activation_embeddings = nn.Tanh()
        self.classifier = nn.Linear(c.emb_dim, c.num_classes)
        self.regression = nn.Linear(c.emb_dim, 2)

    @classmethod
    def from_option(cls, variant: str, weights: str | Path | None = None, device: str = "cpu",
                    **config: Any) -> "GradaEncoder":
        """``grada:<path to affective_static_efficientNet_b1.pth>``: the checkpoint named in the option itself, so
        that a bundle records it with the encoder (``vaest bundle --face-encoder grada:PATH``)."""
        enc = cls(GradaConfig(**config))
        enc.load_weights(weights if weights is not None else variant)
        return enc.to(device).eval()

    @property
    def feature_dim(self) -> int:
        return self.config.emb_dim

    def preprocess(self, crops: Sequence[np.ndarray]) -> torch.Tensor:
        """Keep aspect, longer side -> 240, zero-pad to square, scale to [0, 1], ImageNet normalisation."""
        s = self.config.input_size
        x = np.stack([letterbox(np.ascontiguousarray(c[..., :3]), s) for c in crops]).astype(np.float32) / 255.0
        x = (x - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
        return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 3, 240, 240) -> ``emb`` (B, 256), ``probs`` (B, 8) softmax, ``va`` (B, 2)."""
        emb = self.activation_embeddings(self.batchnorm(self.embeddings_layer(self.dropout_after_pretrained(self.model(x)))))
        return {"emb": emb, "probs": torch.softmax(self.classifier(emb), -1), "va": self.regression(emb)}

    def load_weights(self, path: str | Path) -> None:
        _load_into(self, _read_state(path), path)




@dataclass
class FerConfig:
    """FER2013 network of the ``facial-emotion-recognition`` package (1x48x48 grayscale input)."""

    input_size: int = 48
    width: int = 32
    classes: tuple[str, ...] = FER_CLASSES


def _pad_conv_block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(cin, cout, 3, stride, 0), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


@register_encoder("fer")
class FerEncoder(FrameEncoder):
    """4 conv blocks (32, 64/2, 128/2, 256/2 channels) -> Linear(256*6*6, 256) -> ReLU -> Linear(7) -> Sigmoid.

    Outputs the 256-d post-ReLU penultimate layer as ``emb`` and the 7 sigmoid scores normalised to sum 1.
    """

    Config = FerConfig
    light = True

    def __init__(self, config: FerConfig | None = None):
        super().__init__()
        self.config = config or FerConfig()
        w = self.config.width
        self.classes = tuple(self.config.classes)
        self.conv_1 = _pad_conv_block(1, w, 1)
        self.conv_2 = _pad_conv_block(w, 2 * w, 2)
        self.conv_3 = _pad_conv_block(2 * w, 4 * w, 2)
        self.conv_4 = _pad_conv_block(4 * w, 8 * w, 2)
        side = self.config.input_size
        for _ in range(3):
            side = (side - 1) // 2 + 1
        self.linear = nn.Sequential(nn.Linear(8 * w * side * side, 256), nn.ReLU(inplace=True),
                                    nn.Linear(256, len(self.classes)), nn.Sigmoid())

    @property
    def feature_dim(self) -> int:
        return 256

    def preprocess(self, crops: Sequence[np.ndarray]) -> torch.Tensor:
        """Grayscale, resize to 48x48 (no aspect kept, as the package does), (x/255 - 0.5) / 0.5."""
        import cv2

        s = self.config.input_size
        g = [cv2.resize(cv2.cvtColor(np.ascontiguousarray(c[..., :3]), cv2.COLOR_RGB2GRAY), (s, s), interpolation=cv2.INTER_AREA)
             for c in crops]
        x = np.stack(g).astype(np.float32)[:, None] / 255.0
        return torch.from_numpy((x - 0.5) / 0.5)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 1, 48, 48) -> ``emb`` (B, 256), ``probs`` (B, 7).

        The convolutions run in channels-last memory order (as
        :class:`vaest.features.pretrained_face.MiniXceptionEncoder`'s): on CPU 34 -> 27 ms
        per batch of 32 on one thread; ``flatten`` still reads the NCHW order the linear layer was trained on,
        and the outputs agree with the NCHW computation to float rounding (~3e-7 relative;
        ``tests/test_onepass.py``).
        """
        if not self.conv_2[1].weight.is_contiguous(memory_format=torch.channels_last):  # once (after loading)
            self.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
        h = self.conv_4(self.conv_3(self.conv_2(self.conv_1(x)))).flatten(1)
        emb = self.linear[1](self.linear[0](h))
        scores = self.linear[3](self.linear[2](emb))
        return {"emb": emb, "probs": scores / scores.sum(-1, keepdim=True).clamp_min(1e-8)}

    def load_weights(self, path: str | Path) -> None:
        _load_into(self, _read_state(path), path)

    def default_weights(self) -> Path:
        return fer_weights_path()


@dataclass
class TinyConfig:
    """A small random CNN (for tests): RGB 32x32 -> ``emb_dim`` features, 7 classes, a VA head."""

    emb_dim: int = 32
    input_size: int = 32
    seed: int = 0
    classes: tuple[str, ...] = FER_CLASSES


@register_encoder("tiny")
class TinyEncoder(FrameEncoder):
    """Deterministic random weights (seeded), so two instances give the same features."""

    Config = TinyConfig
    has_va = True
    light = True

    def __init__(self, config: TinyConfig | None = None):
        super().__init__()
        self.config = config or TinyConfig()
        self.classes = tuple(self.config.classes)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)
            self.conv = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.emb = nn.Sequential(nn.Linear(16, self.config.emb_dim), nn.Tanh())
            self.cls = nn.Linear(self.config.emb_dim, len(self.classes))
            self.va = nn.Sequential(nn.Linear(self.config.emb_dim, 2), nn.Tanh())

    @property
    def feature_dim(self) -> int:
        return self.config.emb_dim

    def preprocess(self, crops: Sequence[np.ndarray]) -> torch.Tensor:
        s = self.config.input_size
        x = np.stack([letterbox(np.ascontiguousarray(c[..., :3]), s) for c in crops]).astype(np.float32) / 255.0
        return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        e = self.emb(self.conv(x))
        return {"emb": e, "probs": torch.softmax(self.cls(e), -1), "va": self.va(e)}

    def load_weights(self, path: str | Path) -> None:
        _load_into(self, _read_state(path), path)


