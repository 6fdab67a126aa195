"""Selective state-space (Mamba) regressor for behavior segment sequences, in pure PyTorch.

Two models. ``behavior-mamba-ref`` (:class:`BehaviorMambaRef`, at the end of this module) is the official Team
RAS behavior model block for block (``src_behavior_model/src/models/transformer_model.py``; weights load with
:func:`vaest.models.official.behavior_from_official`). ``behavior-mamba`` is vaest's own variant with the
standard Mamba-1 mixer: per-segment features -> Linear to ``d_model`` (256) -> 12 residual Mamba blocks
(pre-norm, RMSNorm or LayerNorm) -> final norm -> MLP head (256 -> 512 -> 2). Each block is the Mamba-1 mixer
(Gu & Dao 2023): input projection to ``2 * expand * d_model`` (signal and gate), a causal depthwise convolution
(kernel 5), and a selective scan whose step ``dt`` and matrices ``B``, ``C`` depend on the input::

    h_t = exp(dt_t * A) * h_{t-1} + dt_t * B_t * x_t,      y_t = C_t . h_t + D * x_t,      out = y * silu(z)

Parameter names follow ``mamba_ssm`` / ``transformers.MambaMixer`` (``in_proj``, ``conv1d``, ``x_proj``,
``dt_proj``, ``A_log``, ``D``, ``out_proj``), so the scan can be checked against either. When the CUDA kernels of
``mamba-ssm`` are importable and the tensors are on a GPU, ``selective_scan_fn`` replaces the Python scan (same
outputs up to float rounding); everywhere else the scan is a short loop over time (sequences here are 16 steps).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from vaest.models import register_model
from vaest.models.temporal import ref_head_outputs

log = logging.getLogger(__name__)

_KERNEL: Callable[..., torch.Tensor] | None | bool = False  # False: not looked up yet; None: unavailable


def selective_scan_kernel() -> Callable[..., torch.Tensor] | None:
    """``mamba_ssm``'s CUDA ``selective_scan_fn`` when installed, else None (looked up once, lazily)."""
    global _KERNEL
    if _KERNEL is False:
        try:
            from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

            _KERNEL = selective_scan_fn
        except Exception:  # ImportError, or a broken CUDA build
            _KERNEL = None
    return _KERNEL  # type: ignore[return-value]


def selective_scan_ref(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                       D: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
    """Selective scan in plain PyTorch (float32 state), same layout as ``mamba_ssm.selective_scan_fn``.

    Args:
        u: (b, d, l) input signal.
        delta: (b, d, l) positive step sizes (softplus already applied).
        A: (d, n) negative state matrix (diagonal per channel).
        B, C: (b, n, l) input-dependent input and output matrices.
        D: (d,) skip connection.
        z: (b, d, l) gate; the output is multiplied by ``silu(z)`` when given.
    Returns:
        y: (b, d, l) in ``u``'s dtype.
    """
    dtype = u.dtype
    u, delta, B, C = u.float(), delta.float(), B.float(), C.float()
    dA = torch.exp(delta.unsqueeze(-1) * A.float()[None, :, None, :])  # (b, d, l, n)
    dBu = (delta * u).unsqueeze(-1) * B.transpose(1, 2).unsqueeze(1)  # (b, d, l, n)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    hs = []
    # unbind (not indexing) so that backward stacks the step gradients instead of zero-filling a full tensor each
    for dA_t, dBu_t in zip(dA.unbind(2), dBu.unbind(2)):
        h = torch.addcmul(dBu_t, dA_t, h)
        hs.append(h)
    y = (torch.stack(hs, dim=2) * C.transpose(1, 2).unsqueeze(1)).sum(-1)  # (b, d, l)
    y = y + D.float()[None, :, None] * u
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(dtype)


class RMSNorm(nn.Module):
    """Root-mean-square normalisation with a learned scale (no centring), as in Mamba."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var = x.float().pow(2).mean(-1, keepdim=True)
        return (x.float() * torch.rsqrt(var + self.eps)).to(x.dtype) * self.weight


class MambaMixer(nn.Module):
    """One Mamba-1 mixer: (B, L, d_model) -> (B, L, d_model), causal in L."""

    def __init__(self, d_model: int, d_state: int = 8, d_conv: int = 5, expand: int = 2, dt_rank: int | None = None,
                 dt_min: float = 1e-3, dt_max: float = 0.1, use_kernel: bool = True):
        super().__init__()
        self.d_inner = expand * d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.dt_rank = dt_rank or math.ceil(d_model / 16)
        self.use_kernel = use_kernel
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)
        # S4D-real initialisation of A, unit skip D, dt initialised log-uniformly in [dt_min, dt_max]
        A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(self.d_inner))
        with torch.no_grad():
            std = self.dt_rank ** -0.5
            nn.init.uniform_(self.dt_proj.weight, -std, std)
            dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
            dt = dt.clamp(min=1e-4)
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        L = x.shape[1]
        xz = self.in_proj(x).transpose(1, 2)  # (B, 2*d_inner, L)
        u, z = xz.chunk(2, dim=1)
        u = F.silu(self.conv1d(u)[..., :L])  # causal: keep the first L outputs of the left-padded conv
        dt, B, C = torch.split(self.x_proj(u.transpose(1, 2)), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.softplus(self.dt_proj(dt)).transpose(1, 2)  # (B, d_inner, L)
        A = -torch.exp(self.A_log.float())
        B, C = B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous()  # (B, n, L)
        kernel = selective_scan_kernel() if (self.use_kernel and x.is_cuda) else None
        if kernel is not None:
            y = kernel(u.contiguous(), delta.contiguous(), A, B, C, self.D.float(), z=z.contiguous(),
                       delta_bias=None, delta_softplus=False)
        else:
            y = selective_scan_ref(u, delta, A, B, C, self.D, z)
        return self.out_proj(y.transpose(1, 2).to(x.dtype))


class MambaBlock(nn.Module):
    """Pre-norm residual block: x + dropout(mixer(norm(x)))."""

    def __init__(self, d_model: int, norm: str, dropout: float, **mixer_kw: Any):
        super().__init__()
        self.norm = RMSNorm(d_model) if norm == "rms" else nn.LayerNorm(d_model)
        self.mixer = MambaMixer(d_model, **mixer_kw)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop(self.mixer(self.norm(x)))


@register_model("behavior-mamba")
class BehaviorMamba(nn.Module):
    """Segment features (B, S, input_dim) -> ``va`` (B, S, 2) in [-1, 1] and ``emb`` (B, S, d_model)."""

    @dataclass
    class Config:
        input_dim: int = 64
        d_model: int = 256
        n_layers: int = 12
        d_state: int = 8
        d_conv: int = 5
        expand: int = 2
        dt_rank: int = 0  # 0: ceil(d_model / 16)
        dropout: float = 0.2
        head_hidden: int = 512
        norm: str = "rms"  # "rms" or "layer"
        use_kernel: bool = True  # mamba-ssm's CUDA scan when importable and on GPU

    def __init__(self, config: "BehaviorMamba.Config | None" = None):
        super().__init__()
        cfg = config or self.Config()
        if cfg.norm not in ("rms", "layer"):
            raise ValueError(f"norm must be 'rms' or 'layer', got {cfg.norm!r}")
        self.config = cfg
        self.inp = nn.Sequential(nn.Linear(cfg.input_dim, cfg.d_model), nn.Dropout(cfg.dropout))
        self.blocks = nn.ModuleList(
            MambaBlock(cfg.d_model, cfg.norm, cfg.dropout, d_state=cfg.d_state, d_conv=cfg.d_conv, expand=cfg.expand,
                       dt_rank=cfg.dt_rank or None, use_kernel=cfg.use_kernel)
            for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model) if cfg.norm == "rms" else nn.LayerNorm(cfg.d_model)
        self.head = nn.Sequential(nn.Linear(cfg.d_model, cfg.head_hidden), nn.GELU(), nn.Dropout(cfg.dropout),
                                  nn.Linear(cfg.head_hidden, 2))

    def forward(self, x: torch.Tensor, **_: Any) -> dict[str, torch.Tensor]:
        """x: (B, S, input_dim) -> {"va": (B, S, 2), "emb": (B, S, d_model)}."""
        h = self.inp(x.float())
        for blk in self.blocks:
            h = blk(h)
        emb = self.norm(h)
        return {"va": torch.tanh(self.head(emb)), "emb": emb}


# ---------------------------------------------------------------------------------------------------------
# The reference behavior model (official src_behavior_model/src/models/transformer_model.py, TextMambaRegressor)
# ---------------------------------------------------------------------------------------------------------


class RefMambaBlock(nn.Module):
    """The Mamba block as the official behavior model writes it (differs from Mamba-1, see below).

    ``a, b = in_proj(x)`` (expand 1); ``u = silu(causal depthwise conv(a))``; the scan uses the skip vector
    ``D`` also as the step bias: ``dt = softplus(D + up(down(u)))`` (a rank-``d_discr`` bottleneck), the decay
    is ``exp(-A) * dt`` (not ``exp(-A * dt)``), ``h_t = decay_t * h_{t-1} + dt_t * B_t * u_t`` and
    ``y_t = C_t . h_t``; then ``out = LN(D * x + dropout(out_proj(y * silu(b))))`` (post-LN, no identity
    residual) and padded steps are set to 0.
    """

    def __init__(self, d_model: int, d_state: int = 8, d_discr: int | None = None, kernel: int = 5,
                 dropout: float = 0.2):
        super().__init__()
        d_discr = d_discr or max(1, d_model // 16)
        self.in_proj = nn.Linear(d_model, 2 * d_model, bias=False)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)
        self.B_proj = nn.Linear(d_model, d_state, bias=False)
        self.C_proj = nn.Linear(d_model, d_state, bias=False)
        self.dt_down = nn.Linear(d_model, d_discr, bias=False)
        self.dt_up = nn.Linear(d_discr, d_model, bias=False)
        self.conv1d = nn.Conv1d(d_model, d_model, kernel, padding=kernel - 1, groups=d_model, bias=True)
        self.A = nn.Parameter(torch.arange(1, d_state + 1, dtype=torch.float32).repeat(d_model, 1))
        self.D = nn.Parameter(torch.ones(d_model))
        self.norm = nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)

    def scan(self, u: torch.Tensor) -> torch.Tensor:
        """u (B, L, d) -> y (B, L, d), the official discretisation (see the class docstring)."""
        Bm, Cm = self.B_proj(u), self.C_proj(u)  # (B, L, n)
        dt = F.softplus(self.D + self.dt_up(self.dt_down(u)))  # (B, L, d)
        decay = torch.exp(-self.A)[None, None] * dt.unsqueeze(-1)  # (B, L, d, n)
        drive = Bm.unsqueeze(2) * dt.unsqueeze(-1) * u.unsqueeze(-1)  # (B, L, d, n)
        h = u.new_zeros(u.shape[0], u.shape[2], self.A.shape[1])
        ys = []
        for t in range(u.shape[1]):
            h = decay[:, t] * h + drive[:, t]
            ys.append((h * Cm[:, t].unsqueeze(1)).sum(-1))
        return torch.stack(ys, dim=1)

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, L, d), valid (B, L) bool True = real step -> (B, L, d)."""
        L = x.shape[1]
        a, b = self.in_proj(x).chunk(2, dim=-1)
        u = F.silu(self.conv1d(a.transpose(1, 2))[..., :L].transpose(1, 2))
        y = self.out_proj(self.scan(u) * F.silu(b))
        out = self.norm(self.D * x + self.drop(y))
        if valid is not None:
            out = out.masked_fill(~valid.unsqueeze(-1), 0.0)
        return out


@dataclass
class BehaviorMambaRefConfig:
    """Settings of :class:`BehaviorMambaRef` (defaults: ``src_behavior_model/configs/text_va.toml`` [model])."""

    input_dim: int = 64
    d_model: int = 256
    layers: int = 12
    d_state: int = 8
    kernel: int = 5
    d_discr: int = 0  # 0: d_model // 16
    dropout: float = 0.2
    head_hidden: int = 512  # 0: a linear head
    head_dropout: float = 0.2
    emb: str = "head"  # exported embedding: "head" (head's penultimate layer) or "hidden" (encoder output)


@register_model("behavior-mamba-ref")
class BehaviorMambaRef(nn.Module):
    """The reference behavior model (official ``TextMambaRegressor``).

    forward(x (B, S, input_dim), mask (B, S) bool True = real segment, optional) -> ``va`` (B, S, 2) (no tanh)
    and ``emb`` (B, S, head_hidden or d_model). Input Linear-LN-Dropout, padded steps zeroed, ``layers``
    :class:`RefMambaBlock`, padded steps zeroed, head Linear-LN-GELU-Dropout-Linear(2). Xavier-uniform Linear
    weights, zero biases (as the official ``_init_weights``).
    """

    Config = BehaviorMambaRefConfig

    def __init__(self, config: BehaviorMambaRefConfig | None = None):
        super().__init__()
        self.config = c = config or BehaviorMambaRefConfig()
        if c.emb not in ("head", "hidden"):
            raise ValueError(f"emb must be 'head' or 'hidden', got {c.emb!r}")
        self.inp = nn.Sequential(nn.Linear(c.input_dim, c.d_model), nn.LayerNorm(c.d_model), nn.Dropout(c.dropout))
        self.blocks = nn.ModuleList(RefMambaBlock(c.d_model, c.d_state, c.d_discr or None, c.kernel, c.dropout)
                                    for _ in range(c.layers))
        if c.head_hidden > 0:
            self.head: nn.Module = nn.Sequential(nn.Linear(c.d_model, c.head_hidden), nn.LayerNorm(c.head_hidden),
                                                 nn.GELU(), nn.Dropout(c.head_dropout), nn.Linear(c.head_hidden, 2))
        else:
            self.head = nn.Linear(c.d_model, 2)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, **_: Any) -> dict[str, torch.Tensor]:
        valid = None if mask is None else mask.bool()
        h = self.inp(x.float())
        if valid is not None:
            h = h.masked_fill(~valid.unsqueeze(-1), 0.0)
        for blk in self.blocks:
            h = blk(h, valid)
        if valid is not None:
            h = h.masked_fill(~valid.unsqueeze(-1), 0.0)
        pen, va = ref_head_outputs(self.head, h)
        return {"va": va, "emb": pen if self.config.emb == "head" else h}
