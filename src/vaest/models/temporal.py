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
import torch.nn.functional as F
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


def banded_self_attention(x: torch.Tensor, mha: nn.MultiheadAttention, span: int, block: int | None = None,
                          dropout_p: float = 0.0) -> torch.Tensor:
    """Self-attention of ``mha``'s weights where each frame sees only the frames within ``span`` of it.

    The same function as ``mha(x, x, x, attn_mask=|i - j| > span)`` (and the same dropout on the attention
    weights), computed block by block: queries in blocks of ``block`` frames attend to their block's keys plus
    ``span`` frames on either side, so the cost is T x (block + 2 span) scores instead of T x T (about 4x less
    for 400-frame windows and span 30). Used in training, where the masked full attention cannot take the fused
    kernel (dropout on the attention weights forces the materialised path).

    Args:
        x: (B, T, d) inputs (``mha`` built with ``batch_first=True``).
        mha: the layer's attention (its ``in_proj``/``out_proj`` weights are used as they are).
        span: frames each query may attend to on either side.
        block: query block length (default ``max(16, span)``).
        dropout_p: dropout on the attention weights.
    Returns:
        (B, T, d) attention output after ``out_proj``.
    """
    B, T, d = x.shape
    h = mha.num_heads
    dh = d // h
    block = block or max(16, span)
    nb = -(-T // block)
    tp = nb * block
    q, k, v = F.linear(x, mha.in_proj_weight, mha.in_proj_bias).view(B, T, 3, h, dh).permute(2, 0, 3, 1, 4)
    q = F.pad(q, (0, 0, 0, tp - T)).view(B, h, nb, block, dh)  # (B, h, nb, block, dh)
    kw = block + 2 * span
    k = F.pad(k, (0, 0, span, tp - T + span)).unfold(2, kw, block).transpose(-1, -2)  # (B, h, nb, kw, dh)
    v = F.pad(v, (0, 0, span, tp - T + span)).unfold(2, kw, block).transpose(-1, -2)
    qi = torch.arange(tp, device=x.device).view(nb, block, 1)  # absolute frame of each query
    kj = (torch.arange(nb, device=x.device) * block - span).view(nb, 1, 1) + torch.arange(kw, device=x.device)
    allowed = ((qi - kj).abs() <= span) & (kj >= 0) & (kj < T)
    allowed = allowed | (qi >= T)  # padding queries (dropped below) see everything, so no row is all -inf
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout_p)  # (B, h, nb, block, dh)
    out = out.reshape(B, h, tp, dh)[:, :, :T].transpose(1, 2).reshape(B, T, d)
    return mha.out_proj(out)


class _BandedEncoderLayer(nn.TransformerEncoderLayer):
    """A ``TransformerEncoderLayer`` (same parameters, same state dict) whose self-attention in training runs
    :func:`banded_self_attention` when ``span`` is set; inference keeps PyTorch's fused path."""

    span: int | None = None

    def _sa_block(self, x: torch.Tensor, attn_mask: torch.Tensor | None, key_padding_mask: torch.Tensor | None,
                  is_causal: bool = False) -> torch.Tensor:
        if (self.span is None or not self.training or key_padding_mask is not None or x.dim() != 3
                or 2 * self.span >= x.shape[1]):
            return super()._sa_block(x, attn_mask, key_padding_mask, is_causal)
        drop = self.self_attn.dropout if self.training else 0.0
        return self.dropout1(banded_self_attention(x, self.self_attn, self.span, dropout_p=drop))


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
        layer = _BandedEncoderLayer(c.d_model, c.heads, c.ffn, c.dropout, activation="gelu", batch_first=True)
        layer.span = c.attn_span  # training attends within the span block by block (same function, less work)
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
