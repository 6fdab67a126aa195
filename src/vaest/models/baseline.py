"""The no-temporal-context baseline every modality compares against: a per-frame (per-step) MLP."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vaest.models import register_model


@dataclass
class FrameMLPConfig:
    """Settings of :class:`FrameMLP`."""

    input_dim: int = 256
    hidden: int = 256
    layers: int = 2
    dropout: float = 0.1


@register_model("frame-mlp")
class FrameMLP(nn.Module):
    """Each step on its own: [Linear -> LayerNorm -> GELU -> Dropout] x layers, then Linear(2).

    forward(x (..., input_dim)) -> ``va`` (..., 2), ``emb`` (..., hidden).
    """

    Config = FrameMLPConfig

    def __init__(self, config: FrameMLPConfig | None = None):
        super().__init__()
        self.config = c = config or FrameMLPConfig()
        blocks: list[nn.Module] = []
        d = c.input_dim
        for _ in range(max(1, c.layers)):
            blocks += [nn.Linear(d, c.hidden), nn.LayerNorm(c.hidden), nn.GELU(), nn.Dropout(c.dropout)]
            d = c.hidden
        self.body = nn.Sequential(*blocks)
        self.out = nn.Linear(c.hidden, 2)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.body(x.float())
        return {"va": self.out(h), "emb": h}
