"""Temporal model of the face stream (reference ``face-transformer``): per-frame features -> per-frame VA.

Projection of the input features to 256 + LayerNorm, sinusoidal positions, 5 Transformer encoder layers
(8 heads, FFN 256, GELU), and a head Linear -> LayerNorm -> GELU -> Linear(2). Windows of 400 frames with hop
150 are cut, padded and overlap-averaged by :class:`vaest.training.SequenceTask` / ``predict_sequence``.

``attn_span`` (not in the reference, off by default) limits each layer's self-attention to frames at most
that far away; stacked layers still reach ``layers x attn_span`` frames. Full attention over 400-frame windows
overfits small training sets (a dozen videos): it learns window-level shortcuts that do not carry over to new
people, while local attention keeps the per-frame evidence in front and still pools over seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from vaest.models import register_model


def sinusoidal_positions(n: int, dim: int, device: torch.device | None = None, max_period: float = 10000.0) -> torch.Tensor:
    """Fixed sine/cosine position codes (n, dim): even channels sin, odd channels cos (Vaswani et al.)."""
    pos = torch.arange(n, dtype=torch.float32, device=device)[:, None]
    half = torch.arange(0, dim, 2, dtype=torch.float32, device=device)
    freq = torch.exp(-math.log(max_period) * half / dim)
    pe = torch.zeros(n, dim, device=device)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return pe


def va_head(dim: int, hidden: int | None = None) -> nn.Sequential:
    """The reference regression head: Linear -> LayerNorm -> GELU -> Linear(2)."""
    hidden = hidden or dim
    return nn.Sequential(nn.Linear(dim, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Linear(hidden, 2))


@dataclass
class FaceTransformerConfig:
    """Settings of :class:`FaceTransformer` (defaults: the reference face model)."""

    input_dim: int = 256
    d_model: int = 256
    layers: int = 5
    heads: int = 8
    ffn: int = 256
    dropout: float = 0.1
    attn_span: int | None = None  # frames each layer may attend to on either side (None: the whole window)


@register_model("face-transformer")
class FaceTransformer(nn.Module):
    """Transformer encoder over a window of frames.

    forward(x (B, T, input_dim)) -> ``va`` (B, T, 2) and ``emb`` (B, T, d_model): the encoder output before the
    head, exported for fusion.
    """

    Config = FaceTransformerConfig

    def __init__(self, config: FaceTransformerConfig | None = None):
        super().__init__()
        self.config = c = config or FaceTransformerConfig()
        self.proj = nn.Linear(c.input_dim, c.d_model)
        self.norm = nn.LayerNorm(c.d_model)
        layer = nn.TransformerEncoderLayer(c.d_model, c.heads, c.ffn, c.dropout, activation="gelu", batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, c.layers, enable_nested_tensor=False)
        self.head = va_head(c.d_model)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.norm(self.proj(x.float()))
        h = h + sinusoidal_positions(h.shape[1], h.shape[2], h.device)
        mask = None
        if self.config.attn_span is not None:
            t = torch.arange(h.shape[1], device=h.device)
            mask = (t[None, :] - t[:, None]).abs() > self.config.attn_span  # True = may not attend
        h = self.encoder(h, mask=mask)
        return {"va": self.head(h), "emb": h}
