"""Learned fusion of per-frame modality outputs: RAAV (reliability-aware) and DCMMoE (directed cross-modal).

Both models read, per frame, what the modality run folders export: a modality's ``emb`` (H,) concatenated with
its ``va`` (2,), i.e. an input row of ``H + 2`` numbers (``va`` always in the last two columns), and a boolean
mask saying where the modality had real input. Masked rows are never treated as real data: their content is
replaced by zeros before any layer sees it and every path that could carry it is switched off by the mask
(gate weight exactly 0, attention weight exactly 0, expert excluded).

Inputs (batch of B windows of T frames; ``<m>`` is a modality name from the config):

- ``<m>`` (B, T, H_m + 2) float32, ``<m>_mask`` (B, T) bool;
- RAAV audio, as windows of tokens: ``audio_tokens`` (U, K, H_a) float32 (the K = 4 one-second tokens of U
  distinct 4 s windows), ``audio_token_mask`` (U, K) bool (False for unreliable windows and seconds without
  audio) and ``audio_index`` (B, T, 2) int64: for each frame the (up to two) windows covering it as rows of
  ``audio_tokens``, -1 where none;
- DCMMoE audio, per frame: ``audio`` (B, T, H_a + 2), ``audio_mask`` (B, T).

**RAAV** (:class:`RAAVFusion`, vaest's form; the official model is :class:`ReferenceRAAV`, see
``docs/reference-audio-fusion.md`` for the differences). Each frame modality m is projected to ``d`` (h_m, see :class:`ModalityProjection`).
A gate MLP shared by the modalities scores each projection on its own, ``s_m = gate(h_m) + log prior_m``
(priors face 0.85, behavior 0.15); the weights are the softmax of ``s`` over the modalities available at that
frame (unavailable ones get exactly 0); the fused frame token is ``sum_m w_m h_m``. A frame with no available
modality takes a learned null token and is flagged (``fallback``). The K audio tokens of each window are read
by ``n_latents`` learned latent queries (one cross-attention, tokens masked by ``audio_token_mask``); each frame
token then cross-attends to the latents of the windows covering it (a window without a valid token is masked;
with none valid the frame token is left unchanged). One pre-LN Transformer layer (4 heads, FFN 1024) runs over
the frames, and a head gives ``va``. With ``pred_skip`` (default; ``False`` is the plain head
``tanh(head(emb))``) the head is a correction of the gated average of the modality predictions,
``va = tanh(atanh(sum_m w_m va_m) + head(emb))`` with ``head`` initialised to zero, so training starts from the
prior-weighted average of what the modalities already predict instead of learning the VA mapping again from
a few videos. Outputs: ``va`` (B, T, 2), ``emb`` (B, T, d), ``weights`` (B, T, M)
and ``fallback`` (B, T) bool.

**DCMMoE** (:class:`DCMMoEFusion`). The face stream (projected, sinusoidal positions; frames without a face take
a learned "no face" vector) is the query; the behavior stream and, where configured, the per-frame audio stream
(projected, with positions) are concatenated along time as keys/values, masked where unavailable. Five layers
update the face stream residually: ``q = q + CrossAttn(LN(q), LN(kv))``, ``q = q + FFN(LN(q))`` (8 heads).
The adaptive weighting is a per-frame mixture of experts giving one VA estimate each: one per modality and
one reading the cross-attended face stream (Linear-GELU-Linear(2), tanh). A modality expert is, with
``pred_skip`` (default), that modality's own prediction corrected from its projection,
``tanh(atanh(va_m) + head_m(h_m))`` with ``head_m`` initialised to zero; without it (the plain form) a head
``tanh(head_m(h_m))`` reading only that modality's projection. A gate (Linear-GELU-Linear(E)) reads the cross-attended stream and
gives one logit per expert (with ``priors``, the task default, its last layer starts at zero weights and
log-prior biases: training starts from the prior mixture); the weights are the softmax of these logits over
the experts available at that
frame (a modality expert is available where its mask is True, the cross expert always), so an unavailable
modality gets weight exactly 0. The output is ``va = sum_e w_e va_e``; ``emb`` is the normalised
cross-attended stream (B, T, d) and ``weights`` (B, T, E) the expert weights in the order
``modalities + ("cross",)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from vaest.models import register_model

DEFAULT_PRIORS = {"face": 0.85, "behavior": 0.15}
# DCMMoE's expert gate starts from these (log) priors: the reference face/behavior split, and a small share for
# the audio and cross-attended experts, which have to earn their weight in training
DEFAULT_EXPERT_PRIORS = {"face": 0.85, "behavior": 0.15, "audio": 0.05, "cross": 0.05}


def sinusoidal_positions(n: int, d: int, device: torch.device | None = None) -> torch.Tensor:
    """Sinusoidal position encodings (n, d) (sin on even, cos on odd channels)."""
    pos = torch.arange(n, dtype=torch.float32, device=device)[:, None]
    div = torch.exp(torch.arange(0, d, 2, dtype=torch.float32, device=device) * (-math.log(10000.0) / d))
    pe = torch.zeros(n, d, device=device)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)[:, : d // 2]
    return pe


def masked_softmax(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis restricted to ``mask``; masked entries get exactly 0.

    A row with no True entry gives all zeros (and finite gradients), not NaN.
    """
    mask = mask.bool()
    any_ok = mask.any(-1, keepdim=True)
    x = logits.masked_fill(~mask, float("-inf"))
    x = torch.where(any_ok, x, torch.zeros_like(x))
    return torch.softmax(x, dim=-1) * any_ok


class CrossAttention(nn.Module):
    """Multi-head attention of queries (N, Q, d) over keys/values (N, K, d) with a key mask (N, K).

    Masked keys get weight exactly 0 (so their content cannot change the output); a query whose keys are all
    masked gets a zero output.
    """

    def __init__(self, d: int, heads: int, dropout: float = 0.0):
        super().__init__()
        if d % heads:
            raise ValueError(f"d={d} is not divisible by heads={heads}")
        self.h, self.dh = heads, d // heads
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * d)
        self.o = nn.Linear(d, d)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, mem: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        N, Q, _ = x.shape
        K = mem.shape[1]
        q = self.q(x).view(N, Q, self.h, self.dh).transpose(1, 2)  # (N, h, Q, dh)
        k, v = self.kv(mem).view(N, K, 2, self.h, self.dh).permute(2, 0, 3, 1, 4)  # (N, h, K, dh) each
        mask = mask.bool()
        any_ok = mask.any(-1)  # (N,)
        # a query with no valid key attends everywhere (finite) and its output is zeroed below
        keep = (mask | ~any_ok[:, None])[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep,
                                             dropout_p=self.dropout if self.training else 0.0)
        out = out.transpose(1, 2).reshape(N, Q, self.h * self.dh)
        return self.o(out) * any_ok[:, None, None]


class ModalityProjection(nn.Module):
    """Project a modality row ``[emb (H), va (2)]`` to ``d``: ``LN(W_e LN(emb) + W_v va)``."""

    def __init__(self, in_dim: int, d: int):
        super().__init__()
        self.emb_dim = in_dim - 2
        if self.emb_dim < 0:
            raise ValueError(f"modality input needs at least the 2 VA columns, got {in_dim}")
        self.norm_in = nn.LayerNorm(self.emb_dim) if self.emb_dim else None
        self.emb = nn.Linear(self.emb_dim, d) if self.emb_dim else None
        self.va = nn.Linear(2, d)
        self.out = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.va(x[..., -2:])
        if self.emb is not None:
            h = h + self.emb(self.norm_in(x[..., :-2]))
        return self.out(h)


def _clean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Zero the rows of ``x`` (..., D) where ``mask`` (...) is False (and any NaN), so nothing masked leaks."""
    x = torch.nan_to_num(x.float())
    return torch.where(mask.bool()[..., None], x, torch.zeros_like(x))


def _mlp_head(d: int, out: int, hidden: int | None = None) -> nn.Sequential:
    hidden = hidden or d
    return nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, out))


def _refine(base: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``tanh(atanh(base) + delta)``: a prediction in (-1, 1) moved by a learned correction (0 keeps it)."""
    return torch.tanh(torch.atanh(base.clamp(-0.995, 0.995)) + delta)


def _zero_last(head: nn.Sequential) -> nn.Sequential:
    """Zero the last layer of a head, so that it starts as the identity correction (outputs 0)."""
    nn.init.zeros_(head[-1].weight)
    nn.init.zeros_(head[-1].bias)
    return head


def _get_mask(inputs: dict, name: str, like: torch.Tensor) -> torch.Tensor:
    m = inputs.get(f"{name}_mask")
    if m is None:
        return torch.ones(like.shape[:-1], dtype=torch.bool, device=like.device)
    return m.bool()


# ---------------------------------------------------------------------------------------------------------
# RAAV
# ---------------------------------------------------------------------------------------------------------


@dataclass
class RAAVConfig:
    """Settings of :class:`RAAVFusion`, vaest's RAAV (sizes as the official: d 256, 4 heads, FFN 1024, 4 latents,
    priors 0.85/0.15; the official model itself is :class:`ReferenceRAAV`)."""

    modalities: tuple[str, ...] = ("face", "behavior")
    in_dims: tuple[int, ...] = (258, 258)
    priors: tuple[float, ...] = (0.85, 0.15)
    audio_dim: int = 0  # 0: no audio tokens
    n_latents: int = 4
    d_model: int = 256
    heads: int = 4
    ffn: int = 1024
    gate_hidden: int = 64
    dropout: float = 0.1
    pred_skip: bool = True


class AudioLatents(nn.Module):
    """``n_latents`` learned queries read the K tokens of each audio window: (U, K, H) -> (U, L, d)."""

    def __init__(self, in_dim: int, d: int, n_latents: int, heads: int, dropout: float):
        super().__init__()
        self.proj = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, d))
        self.latents = nn.Parameter(torch.randn(n_latents, d) * 0.02)
        self.norm = nn.LayerNorm(d)
        self.attn = CrossAttention(d, heads, dropout)
        self.ff = nn.Sequential(nn.LayerNorm(d), _mlp_head(d, d, 2 * d))

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        U = tokens.shape[0]
        t = self.proj(_clean(tokens, mask))
        lat = self.latents[None].expand(U, -1, -1)
        lat = lat + self.attn(self.norm(lat), t, mask)
        return lat + self.ff(lat)


@register_model("raav")
class RAAVFusion(nn.Module):
    """Reliability-aware audio-visual fusion (see the module docstring for the computation)."""

    Config = RAAVConfig

    def __init__(self, config: RAAVConfig = RAAVConfig()):
        super().__init__()
        self.config = config
        c = config
        if not (len(c.modalities) == len(c.in_dims) == len(c.priors)) or not c.modalities:
            raise ValueError("raav: modalities, in_dims and priors must be non-empty and of equal length")
        if min(c.priors) <= 0:
            raise ValueError(f"raav: priors must be positive, got {c.priors}")
        d = c.d_model
        self.proj = nn.ModuleDict({m: ModalityProjection(k, d) for m, k in zip(c.modalities, c.in_dims)})
        self.gate = _mlp_head(d, 1, c.gate_hidden)
        self.register_buffer("log_prior", torch.log(torch.tensor(c.priors, dtype=torch.float32)))
        self.null = nn.Parameter(torch.zeros(d))
        self.audio = AudioLatents(c.audio_dim, d, c.n_latents, c.heads, c.dropout) if c.audio_dim else None
        self.audio_norm = nn.LayerNorm(d)
        self.audio_attn = CrossAttention(d, c.heads, c.dropout) if c.audio_dim else None
        self.layer = nn.TransformerEncoderLayer(d, c.heads, c.ffn, c.dropout, activation="gelu",
                                                batch_first=True, norm_first=True)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, 2)
        if c.pred_skip:  # start as the gated average of the modality predictions
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def gate_weights(self, hs: torch.Tensor, avail: torch.Tensor) -> torch.Tensor:
        """Per-frame modality weights (B, T, M) from projections ``hs`` (B, T, M, d) and availability (B, T, M)."""
        logits = self.gate(hs).squeeze(-1) + self.log_prior
        return masked_softmax(logits, avail)

    def forward(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        c = self.config
        first = inputs[c.modalities[0]]
        B, T = first.shape[:2]
        hs, avail, vas = [], [], []
        for m in c.modalities:
            x = inputs.get(m)
            if x is None:  # a modality absent from this batch is unavailable everywhere
                hs.append(first.new_zeros(B, T, c.d_model))
                avail.append(torch.zeros(B, T, dtype=torch.bool, device=first.device))
                vas.append(first.new_zeros(B, T, 2))
                continue
            mask = _get_mask(inputs, m, x)
            xc = _clean(x, mask)
            hs.append(self.proj[m](xc))
            avail.append(mask)
            vas.append(xc[..., -2:])
        h = torch.stack(hs, 2)  # (B, T, M, d)
        av = torch.stack(avail, -1)  # (B, T, M)
        w = self.gate_weights(h, av)
        fallback = ~av.any(-1)
        z = (w[..., None] * h).sum(2) + fallback[..., None].float() * self.null
        if self.audio is not None and inputs.get("audio_index") is not None:
            z = z + self._audio(z, inputs["audio_tokens"], inputs["audio_token_mask"], inputs["audio_index"])
        z = z + sinusoidal_positions(T, c.d_model, z.device)
        z = self.layer(z)
        emb = self.norm(z)
        if c.pred_skip:
            base = (w[..., None] * torch.stack(vas, 2)).sum(2)  # (B, T, 2) gated average of the predictions
            va = _refine(base, self.head(emb))
        else:
            va = torch.tanh(self.head(emb))
        return {"va": va, "emb": emb, "weights": w, "fallback": fallback}

    def _audio(self, z: torch.Tensor, tokens: torch.Tensor, token_mask: torch.Tensor,
               index: torch.Tensor) -> torch.Tensor:
        """Cross-attention of frame tokens z (B, T, d) to the latents of their windows; 0 where none is valid."""
        B, T, d = z.shape
        index = index.long()
        W = index.shape[-1]
        L = self.config.n_latents
        if tokens.shape[0] == 0:
            return torch.zeros_like(z)
        lat = self.audio(tokens, token_mask)  # (U, L, d)
        win_ok = token_mask.bool().any(-1)  # (U,)
        safe = index.clamp(min=0)
        mem = lat[safe].reshape(B * T, W * L, d)
        ok = (index >= 0) & win_ok[safe]  # (B, T, W)
        ok = ok[..., None].expand(B, T, W, L).reshape(B * T, W * L)
        out = self.audio_attn(self.audio_norm(z).reshape(B * T, 1, d), mem, ok)
        return out.reshape(B, T, d)


# ---------------------------------------------------------------------------------------------------------
# DCMMoE
# ---------------------------------------------------------------------------------------------------------


@dataclass
class DCMMoEConfig:
    """Settings of :class:`DCMMoEFusion`, vaest's own fusion (sizes as the official directed fusion: 5 layers,
    8 heads, windows 400 / 150; the official model itself is :class:`vaest.models.directed.DirectedFusionRef`).

    ``modalities[0]`` is the query stream (face); the others are keys/values and experts.
    """

    modalities: tuple[str, ...] = ("face", "behavior")
    in_dims: tuple[int, ...] = (258, 258)
    d_model: int = 256
    heads: int = 8
    layers: int = 5
    ffn: int = 512
    dropout: float = 0.1
    pred_skip: bool = True
    priors: tuple[float, ...] | None = None  # one per expert (modalities, then cross); None = uniform start
    # dropout on the attention weights (None = ``dropout``). On CPU any value > 0 forces PyTorch's materialised
    # attention, 3.5x the cost of a whole training step; the demo sets 0 (same validation CCC per epoch within
    # 3e-4 on the demo corpus, see docs/performance.md)
    attn_dropout: float | None = None


class _CrossBlock(nn.Module):
    """Pre-LN residual cross-attention + FFN block updating the query stream."""

    def __init__(self, d: int, heads: int, ffn: int, dropout: float, attn_dropout: float | None = None):
        super().__init__()
        self.nq, self.nkv, self.nf = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = CrossAttention(d, heads, dropout if attn_dropout is None else attn_dropout)
        self.ff = nn.Sequential(nn.Linear(d, ffn), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn, d))
        self.drop = nn.Dropout(dropout)

    def forward(self, q: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q = q + self.drop(self.attn(self.nq(q), self.nkv(kv), mask))
        return q + self.drop(self.ff(self.nf(q)))


@register_model("dcmmoe")
class DCMMoEFusion(nn.Module):
    """Directed cross-modal fusion with a per-frame mixture of modality experts (see the module docstring)."""

    Config = DCMMoEConfig

    def __init__(self, config: DCMMoEConfig = DCMMoEConfig()):
        super().__init__()
        self.config = config
        c = config
        if len(c.modalities) != len(c.in_dims) or len(c.modalities) < 1:
            raise ValueError("dcmmoe: modalities and in_dims must be non-empty and of equal length")
        d = c.d_model
        self.proj = nn.ModuleDict({m: ModalityProjection(k, d) for m, k in zip(c.modalities, c.in_dims)})
        self.no_query = nn.Parameter(torch.zeros(d))
        self.blocks = nn.ModuleList(_CrossBlock(d, c.heads, c.ffn, c.dropout, c.attn_dropout)
                                    for _ in range(c.layers))
        self.norm = nn.LayerNorm(d)
        self.experts = nn.ModuleDict({m: _zero_last(_mlp_head(d, 2)) if c.pred_skip else _mlp_head(d, 2)
                                      for m in c.modalities})
        self.cross_head = _mlp_head(d, 2)
        self.gate = _mlp_head(d, len(c.modalities) + 1, d // 2)
        if c.priors is not None:
            if len(c.priors) != len(c.modalities) + 1 or min(c.priors) <= 0:
                raise ValueError(f"dcmmoe: priors needs {len(c.modalities) + 1} positive values (modalities, cross)")
            with torch.no_grad():  # the gate starts at the priors, whatever the frame
                self.gate[-1].weight.zero_()
                self.gate[-1].bias.copy_(torch.log(torch.tensor(c.priors, dtype=torch.float32)))

    @property
    def expert_names(self) -> tuple[str, ...]:
        return tuple(self.config.modalities) + ("cross",)

    def forward(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        c = self.config
        first = next(inputs[m] for m in c.modalities if inputs.get(m) is not None)
        B, T = first.shape[:2]
        pos = sinusoidal_positions(T, c.d_model, first.device)
        hs, masks, vas = {}, {}, {}
        for m in c.modalities:
            x = inputs.get(m)
            if x is None:
                hs[m] = first.new_zeros(B, T, c.d_model)
                masks[m] = torch.zeros(B, T, dtype=torch.bool, device=first.device)
                vas[m] = first.new_zeros(B, T, 2)
            else:
                masks[m] = _get_mask(inputs, m, x)
                xc = _clean(x, masks[m])
                hs[m] = self.proj[m](xc)
                vas[m] = xc[..., -2:]
        qm = c.modalities[0]
        q = torch.where(masks[qm][..., None], hs[qm], self.no_query.expand(B, T, -1)) + pos
        others = c.modalities[1:]
        if others:
            kv = torch.cat([hs[m] + pos for m in others], 1)  # (B, T * (M-1), d)
            kv_mask = torch.cat([masks[m] for m in others], 1)
            for blk in self.blocks:
                q = blk(q, kv, kv_mask)
        emb = self.norm(q)
        if c.pred_skip:  # modality expert = that modality's own prediction, corrected from its projection
            preds = [_refine(vas[m], self.experts[m](hs[m])) for m in c.modalities]
        else:
            preds = [torch.tanh(self.experts[m](hs[m])) for m in c.modalities]
        preds.append(torch.tanh(self.cross_head(emb)))
        avail = torch.stack([masks[m] for m in c.modalities] + [torch.ones_like(masks[qm])], -1)
        w = masked_softmax(self.gate(emb), avail)  # (B, T, E)
        va = (torch.stack(preds, -2) * w[..., None]).sum(-2)
        return {"va": va, "emb": emb, "weights": w}


# ---------------------------------------------------------------------------------------------------------
# RAAV, reference form (official ``MultimodalFusionModelV4``, ``configs/mm_cfg_va_s2s.yaml``)
# ---------------------------------------------------------------------------------------------------------


@dataclass
class ReferenceRAAVConfig:
    """Settings of :class:`ReferenceRAAV` (reference: face + qwen_mm frames, priors 0.85/0.15, hidden 256,
    4 heads, 1 temporal layer, 4 audio latents, dropout 0.1, predictions appended to every input).

    ``in_dims`` are the widths of the frame inputs as the model reads them (embedding plus, with
    ``use_predictions``, the 2 prediction columns); ``audio_dim`` likewise for the audio tokens.
    ``pred_skip`` (vaest's option, off in the reference): the head's last layer starts at zero and its output
    corrects the gate-weighted average of the modality predictions (the last 2 input columns),
    ``va = tanh(atanh(sum_m w_m va_m) + head(emb))``.
    """

    modalities: tuple[str, ...] = ("face", "behavior")
    in_dims: tuple[int, ...] = (258, 258)
    audio_dim: int = 258
    priors: tuple[float, ...] = (0.85, 0.15)
    hidden: int = 256
    heads: int = 4
    temporal_layers: int = 1
    n_latents: int = 4
    dropout: float = 0.1
    pred_skip: bool = False


@register_model("raav-reference")
class ReferenceRAAV(nn.Module):
    """The official RAAV on samples of one 4 s audio window and the L frames it covers.

    Inputs: ``<m>`` (B, L, in_dim_m) and ``<m>_mask`` (B, L) per frame modality; ``audio`` (B, T_a, audio_dim)
    and ``audio_mask`` (B, T_a) (the window's one-second tokens); ``frame_mask`` (B, L) real (not padded) frames.

    1. each modality: Linear to ``hidden``, zeroed where masked; a gate MLP of its own
       (Linear-GELU-Dropout-Linear(1), hidden 256) plus its log-prior (priors normalised to sum 1) gives a logit,
       -1e4 where masked; softmax over modalities, renormalised over the available ones; weighted sum, zero where
       none is available;
    2. audio tokens: Linear to ``hidden``, zeroed where masked; ``n_latents`` learned latents attend to them
       (post-LN residual ``LN(lat + attn)``, no FFN), frames then attend to the latents
       (``LN(frame + attn(LN(frame)))``); rows without audio keep the initial latents and their frame tokens;
    3. tokens zeroed outside ``frame_mask & any modality available``; pre-LN Transformer encoder (FFN 4 x hidden,
       GELU) with padding mask and no positional encoding; output zeroed on padding;
    4. head LN-Linear-GELU-Dropout-Linear(2) (no tanh).

    Outputs ``va`` (B, L, 2), ``emb`` (B, L, hidden), ``weights`` (B, L, M).
    """

    Config = ReferenceRAAVConfig

    def __init__(self, config: ReferenceRAAVConfig | None = None):
        super().__init__()
        self.config = c = config or ReferenceRAAVConfig()
        if not (len(c.modalities) == len(c.in_dims) == len(c.priors)) or not c.modalities:
            raise ValueError("raav-reference: modalities, in_dims and priors must be non-empty and of equal length")
        h = c.hidden
        self.frame_proj = nn.ModuleDict({m: nn.Linear(k, h) for m, k in zip(c.modalities, c.in_dims)})
        self.gates = nn.ModuleDict({m: nn.Sequential(nn.Linear(h, h), nn.GELU(), nn.Dropout(c.dropout),
                                                     nn.Linear(h, 1)) for m in c.modalities})
        self.audio_proj = nn.Linear(c.audio_dim, h)
        self.latents = nn.Parameter(torch.randn(1, c.n_latents, h) * 0.02)
        self.latent_attn = nn.MultiheadAttention(h, c.heads, dropout=c.dropout, batch_first=True)
        self.frame_attn = nn.MultiheadAttention(h, c.heads, dropout=c.dropout, batch_first=True)
        self.norm_query = nn.LayerNorm(h)
        self.norm_latents = nn.LayerNorm(h)
        self.norm_frames = nn.LayerNorm(h)
        layer = nn.TransformerEncoderLayer(h, c.heads, 4 * h, c.dropout, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.temporal = nn.TransformerEncoder(layer, c.temporal_layers, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.LayerNorm(h), nn.Linear(h, h), nn.GELU(), nn.Dropout(c.dropout), nn.Linear(h, 2))
        pri = torch.tensor([max(float(p), 1e-6) for p in c.priors], dtype=torch.float32)
        self.register_buffer("log_prior", torch.log(pri / pri.sum()))
        if c.pred_skip:
            _zero_last(self.head)

    def _frames(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        reps, logits, oks = [], [], []
        for i, m in enumerate(self.config.modalities):
            x = inputs.get(m)
            if x is None:
                continue
            ok = inputs[f"{m}_mask"].bool()
            r = self.frame_proj[m](x) * ok.unsqueeze(-1).to(x.dtype)
            s = (self.gates[m](r).squeeze(-1) + self.log_prior[i]).masked_fill(~ok, -1e4)
            reps.append(r)
            logits.append(s)
            oks.append(ok)
        if not reps:
            raise ValueError("raav-reference: no frame modality in the batch")
        r, ok = torch.stack(reps, 2), torch.stack(oks, 2)  # (B, L, M, H), (B, L, M)
        w = torch.softmax(torch.stack(logits, 2), dim=2) * ok.to(r.dtype)
        w = w / w.sum(dim=2, keepdim=True).clamp_min(1e-8)
        anyok = ok.any(dim=2)
        z = (r * w.unsqueeze(-1)).sum(dim=2) * anyok.unsqueeze(-1).to(r.dtype)
        return z, anyok, w

    def forward(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        seq = inputs["frame_mask"].bool()
        z, anyok, w = self._frames(inputs)
        amask = inputs["audio_mask"].bool()
        a = self.audio_proj(inputs["audio"]) * amask.unsqueeze(-1).to(z.dtype)
        B = z.shape[0]
        lat = self.latents.expand(B, -1, -1)
        has = amask.any(dim=1)
        out = z
        if bool(has.any()):
            lv = lat[has]
            upd, _ = self.latent_attn(lv, a[has], a[has], key_padding_mask=~amask[has], need_weights=False)
            lat = lat.clone()
            lat[has] = self.norm_latents(lv + upd)
            ctx, _ = self.frame_attn(self.norm_query(z[has]), lat[has], lat[has], need_weights=False)
            out = out.clone()
            out[has] = self.norm_frames(z[has] + ctx)
        out = out * (seq & anyok).unsqueeze(-1).to(out.dtype)
        emb = self.temporal(out, src_key_padding_mask=~seq) * seq.unsqueeze(-1).to(out.dtype)
        if self.config.pred_skip:
            vas = torch.stack([torch.nan_to_num(inputs[m][..., -2:]) * inputs[f"{m}_mask"].unsqueeze(-1)
                               for m in self.config.modalities if inputs.get(m) is not None], 2)  # (B, L, M, 2)
            va = _refine((w.unsqueeze(-1) * vas).sum(2), self.head(emb))
        else:
            va = self.head(emb)
        return {"va": va, "emb": emb, "weights": w}
