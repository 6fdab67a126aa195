"""The reference directed cross-modal fusion model (official ``src_fusion_model/model.py``, ``FusionModel``).

Each modality's per-frame input (its ``emb`` and ``va`` concatenated, as exported by the run folders) is
projected to ``hidden_dim`` (Linear-LayerNorm-Dropout). The query stream (``q``: a modality name, or ``fusion``
= the mean of all projected streams) is updated ``layers`` times by ``q = q + layer(q, k, v)`` with the official
layer form (:class:`vaest.models.temporal.RefAttentionLayer`); keys and values come from the ``k`` / ``v``
streams (the best official run: face queries over behavior keys and values). When ``q`` names a modality, that
modality's stream is replaced by the updated query after each layer (so a key/value stream that is the query's
own modality follows it, as in the official code). An MLP head gives ``va``; ``emb`` is its penultimate layer.
No experts, no audio. vaest's own mixture-of-experts fusion is :class:`vaest.models.fusion.DCMMoEFusion`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from vaest.models import register_model
from vaest.models.temporal import RefAttentionLayer, ref_head, ref_head_outputs, ref_projection

FUSION_STREAM = "fusion"


@dataclass
class DirectedFusionRefConfig:
    """Settings of :class:`DirectedFusionRef` (defaults: ``src_fusion_model/config_best.toml``; input widths
    are those of the vaest run folders and are set from the data)."""

    input_dims: dict[str, int] = field(default_factory=lambda: {"face": 258, "behavior": 258})
    q: str = "face"
    k: str = "behavior"
    v: str = "behavior"
    hidden_dim: int = 256
    heads: int = 8
    layers: int = 5
    dropout: float = 0.1
    head: str = "mlp"
    pos_dropout: float = 0.1


@register_model("dcm-ref")
class DirectedFusionRef(nn.Module):
    """forward(<m> (B, T, D_m) for every modality m, mask (B, T) bool True = real frame, optional)
    -> ``va`` (B, T, 2), ``emb`` (B, T, hidden_dim). Other keyword inputs (``<m>_mask``, ...) are ignored."""

    Config = DirectedFusionRefConfig

    def __init__(self, config: DirectedFusionRefConfig | None = None):
        super().__init__()
        self.config = c = config or DirectedFusionRefConfig()
        self.modalities = list(c.input_dims)
        if not self.modalities:
            raise ValueError("input_dims is empty: the fusion needs at least one modality")
        for s in (c.q, c.k, c.v):
            if s != FUSION_STREAM and s not in c.input_dims:
                raise ValueError(f"stream {s!r} is neither a modality ({self.modalities}) nor {FUSION_STREAM!r}")
        self.proj = nn.ModuleDict({m: ref_projection(int(d), c.hidden_dim, c.dropout) for m, d in c.input_dims.items()})
        self.layers = nn.ModuleList(RefAttentionLayer(c.hidden_dim, c.heads, c.dropout, c.pos_dropout)
                                    for _ in range(c.layers))
        self.head = ref_head(c.hidden_dim, c.dropout, c.head)

    def _stream(self, name: str, states: dict[str, torch.Tensor]) -> torch.Tensor:
        if name == FUSION_STREAM:
            return torch.stack([states[m] for m in self.modalities]).mean(0)
        return states[name]

    def forward(self, mask: torch.Tensor | None = None, **inputs: Any) -> dict[str, torch.Tensor]:
        missing = [m for m in self.modalities if m not in inputs]
        if missing:
            raise KeyError(f"dcm-ref: missing modality input(s) {missing}; got {sorted(inputs)}")
        c = self.config
        pad = None if mask is None else ~mask.bool()
        states = {m: self.proj[m](inputs[m].float()) for m in self.modalities}
        q = self._stream(c.q, states)
        for layer in self.layers:
            q = q + layer(q, self._stream(c.k, states), self._stream(c.v, states), pad)
            if c.q in states:
                states[c.q] = q
        emb, va = ref_head_outputs(self.head, q)
        return {"va": va, "emb": emb}
