"""Temporal models of the face stream: per-frame features -> per-frame VA.

Two models. ``face-transformer-ref`` (:class:`FaceTransformerRef`) is the official Team RAS face model, layer
for layer (``src_visual_dynamic_model/model.py``; its weights load with
:func:`vaest.models.official.face_from_official`). ``face-transformer`` (:class:`FaceTransformer`) is vaest's
own variant: projection to 256 + LayerNorm (no dropout), sinusoidal positions added once, 5 standard post-LN
``nn.TransformerEncoderLayer`` (8 heads, FFN 256, GELU) without the outer residual, a head Linear -> LayerNorm
-> GELU -> Linear(2) without dropout, and the encoder output (not the head's penultimate layer) as embedding. Windows of 400 frames with hop
150 are cut, padded and overlap-averaged by :class:`vaest.training.SequenceTask` / ``predict_sequence``.

``attn_span`` (vaest's option, not in the official model; ``face-transformer`` and, off by default,
``face-transformer-ref``) limits each layer's self-attention to frames at most that far away; stacked layers still reach ``layers x attn_span`` frames. Full attention over 400-frame windows
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
    """vaest's regression head: Linear -> LayerNorm -> GELU -> Linear(2) (the official head has a Dropout
    before the last Linear: :func:`ref_head`)."""
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

    def forward(self, src: torch.Tensor, src_mask: torch.Tensor | None = None,
                src_key_padding_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        """The layer's standard (unfused) computation, also in eval mode: PyTorch's fused CPU inference kernel
        (``_transformer_encoder_layer_fwd``) is slower here, 2.1x with the span mask (12 windows of 400 frames,
        256 wide, one thread: 145 vs 70 ms per layer) and 1.4x without; outputs agree to ~1e-6 (issue 13,
        docs/performance.md)."""
        x = src
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), src_mask, src_key_padding_mask, is_causal)
            return x + self._ff_block(self.norm2(x))
        x = self.norm1(x + self._sa_block(x, src_mask, src_key_padding_mask, is_causal))
        return self.norm2(x + self._ff_block(x))

    def _sa_block(self, x: torch.Tensor, attn_mask: torch.Tensor | None, key_padding_mask: torch.Tensor | None,
                  is_causal: bool = False) -> torch.Tensor:
        if (self.span is None or not self.training or key_padding_mask is not None or x.dim() != 3
                or 2 * self.span >= x.shape[1]):
            return super()._sa_block(x, attn_mask, key_padding_mask, is_causal)
        drop = self.self_attn.dropout if self.training else 0.0
        return self.dropout1(banded_self_attention(x, self.self_attn, self.span, dropout_p=drop))


@dataclass
class FaceTransformerConfig:
    """Settings of :class:`FaceTransformer` (sizes as the official face model: 256 wide, 5 layers, 8 heads)."""

    input_dim: int = 256
    d_model: int = 256
    layers: int = 5
    heads: int = 8
    ffn: int = 256
    dropout: float = 0.1
    attn_span: int | None = None  # frames each layer may attend to on either side (None or 0: the whole window)


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
        if self.config.attn_span:  # None or 0: the whole window
            t = torch.arange(h.shape[1], device=h.device)
            mask = (t[None, :] - t[:, None]).abs() > self.config.attn_span  # True = may not attend
        h = self.encoder(h, mask=mask)
        return {"va": self.head(h), "emb": h}


# ---------------------------------------------------------------------------------------------------------
# The official Team RAS layer form (src_visual_dynamic_model/model.py, src_fusion_model/model.py)
# ---------------------------------------------------------------------------------------------------------


class RefAttentionLayer(nn.Module):
    """One layer in the form of the official face and fusion models (post-LN, positions inside the layer).

    ``q``, ``k`` and ``v`` (B, T, dim) each get the sinusoidal positions added and their own dropout
    (``pos_dropout``, fixed at 0.1 in the official code); then ``a = MHA(q, k, v)`` with the key-padding mask,
    ``x = LN1(a + dropout(q))`` (the residual is the position-coded query, dropout on the residual branch),
    ``out = LN2(FFN(x) + dropout(x))`` with FFN ``dim -> dim`` (Linear-GELU-Dropout-Linear). The caller adds the
    outer residual ``q + out``.
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.1, pos_dropout: float = 0.1):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ff_in = nn.Linear(dim, dim)
        self.ff_out = nn.Linear(dim, dim)
        self.ff_drop = nn.Dropout(dropout)
        self.norm_attn = nn.LayerNorm(dim)
        self.drop_attn = nn.Dropout(dropout)
        self.norm_ff = nn.LayerNorm(dim)
        self.drop_ff = nn.Dropout(dropout)
        self.pos_drop = nn.Dropout(pos_dropout)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                pad: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """q (B, Tq, dim), k/v (B, Tk, dim), pad (B, Tk) bool True = padding -> (B, Tq, dim).
        ``attn_mask`` (B * heads, Tq, Tk) bool True = may not attend (vaest's local span, :func:`span_mask`)."""
        pq = sinusoidal_positions(q.shape[1], q.shape[2], q.device).to(q.dtype)
        pk = pq if k.shape[1] == q.shape[1] else sinusoidal_positions(k.shape[1], k.shape[2], k.device).to(k.dtype)
        k = self.pos_drop(k + pk)
        v = self.pos_drop(v + pk)
        q = self.pos_drop(q + pq)
        a, _ = self.attn(q, k, v, key_padding_mask=pad, attn_mask=attn_mask, need_weights=False)
        x = self.norm_attn(a + self.drop_attn(q))
        f = self.ff_out(self.ff_drop(F.gelu(self.ff_in(x))))
        return self.norm_ff(f + self.drop_ff(x))


def span_mask(t: int, span: int | None, pad: torch.Tensor | None, heads: int,
              device: torch.device) -> torch.Tensor | None:
    """Attention mask of a local span over ``t`` frames, True = may not attend: frames further apart than
    ``span`` and padded keys (``pad`` (B, t) bool True = padding) are masked; a frame always sees itself, so no
    row is fully masked. Shape (t, t) without ``pad``, else (B * heads, t, t); None when ``span`` is None or 0
    (the whole window)."""
    if not span:
        return None
    idx = torch.arange(t, device=device)
    far = (idx[None, :] - idx[:, None]).abs() > int(span)
    if pad is None:
        return far
    m = (far[None] | pad.bool()[:, None, :]) & ~torch.eye(t, dtype=torch.bool, device=device)[None]
    return m.repeat_interleave(heads, dim=0)


def ref_projection(input_dim: int, dim: int, dropout: float) -> nn.Sequential:
    """Input projection of the official models: Linear -> LayerNorm -> Dropout."""
    return nn.Sequential(nn.Linear(input_dim, dim), nn.LayerNorm(dim), nn.Dropout(dropout))


def ref_head(dim: int, dropout: float, kind: str = "mlp") -> nn.Module:
    """Head of the official models: ``mlp`` Linear-LayerNorm-GELU-Dropout-Linear(2), or ``linear`` Linear(2)."""
    if kind == "linear":
        return nn.Linear(dim, 2)
    if kind != "mlp":
        raise ValueError(f"head must be 'mlp' or 'linear', got {kind!r}")
    return nn.Sequential(nn.Linear(dim, dim), nn.LayerNorm(dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, 2))


def ref_head_outputs(head: nn.Module, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(embedding, va) of a :func:`ref_head`: the embedding is the input of the last Linear (the official
    ``forward_with_embeddings``), or ``h`` itself for a linear head."""
    if isinstance(head, nn.Sequential):
        emb = head[:-1](h)
        return emb, head[-1](emb)
    return h, head(h)


@dataclass
class FaceTransformerRefConfig:
    """Settings of :class:`FaceTransformerRef` (defaults: ``src_visual_dynamic_model/config_best.toml``)."""

    input_dim: int = 256
    hidden_dim: int = 256
    heads: int = 8
    layers: int = 5
    dropout: float = 0.1
    head: str = "mlp"
    pos_dropout: float = 0.1
    attn_span: int | None = None  # vaest's option, not in the official model (None or 0: the whole window)


@register_model("face-transformer-ref")
class FaceTransformerRef(nn.Module):
    """The reference face temporal model (official ``VisualDynamicModel``).

    forward(x (B, T, input_dim), mask (B, T) bool True = real frame, optional) -> ``va`` (B, T, 2) and ``emb``
    (B, T, hidden_dim), the head's penultimate layer. Projection Linear-LN-Dropout, then ``layers`` times
    ``h = h + layer(h, h, h)`` with :class:`RefAttentionLayer` and padded frames masked out of the keys.
    ``attn_span`` (vaest's option, off in the official model) limits each layer's attention to frames at most
    that far away, as in ``face-transformer``; a padded frame then attends to itself only.
    """

    Config = FaceTransformerRefConfig

    def __init__(self, config: FaceTransformerRefConfig | None = None):
        super().__init__()
        self.config = c = config or FaceTransformerRefConfig()
        self.proj = ref_projection(c.input_dim, c.hidden_dim, c.dropout)
        self.layers = nn.ModuleList(RefAttentionLayer(c.hidden_dim, c.heads, c.dropout, c.pos_dropout)
                                    for _ in range(c.layers))
        self.head = ref_head(c.hidden_dim, c.dropout, c.head)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        pad = None if mask is None else ~mask.bool()
        h = self.proj(x.float())
        local = span_mask(h.shape[1], self.config.attn_span, pad, self.config.heads, h.device)
        for layer in self.layers:
            h = h + (layer(h, h, h, pad) if local is None else layer(h, h, h, attn_mask=local))
        emb, va = ref_head_outputs(self.head, h)
        return {"va": va, "emb": emb}
