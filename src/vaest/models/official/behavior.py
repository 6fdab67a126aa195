"""Official behavior model (``src_behavior_model/src/models/transformer_model.py``, ``TextMambaRegressor``) -> vaest."""

from __future__ import annotations

from typing import Any, Mapping

from vaest.models.mamba import BehaviorMambaRef, BehaviorMambaRefConfig
from vaest.models.official.common import convert_state_dict


def behavior_from_official(state: Mapping[str, Any], input_dim: int, d_model: int = 256, num_layers: int = 2,
                           dropout: float = 0.1, head_hidden_dim: int = 0, head_dropout: float = 0.1,
                           mamba_d_state: int = 8, mamba_kernel_size: int = 3, mamba_d_discr: int = 0,
                           emb: str = "head") -> BehaviorMambaRef:
    """:class:`BehaviorMambaRef` (eval mode) holding the official model's weights.

    The keyword arguments are the official constructor's (same names, same defaults; ``d_model <= 0`` means
    ``input_dim``), plus ``emb`` (what vaest exports as the embedding). The result maps ``x`` (B, S, input_dim)
    and ``mask`` (B, S) bool (the official ``valid_mask``) to ``va`` = official ``forward(features, valid_mask)``.
    """
    d = int(d_model) if int(d_model) > 0 else int(input_dim)
    cfg = BehaviorMambaRefConfig(input_dim=int(input_dim), d_model=d, layers=int(num_layers), d_state=int(mamba_d_state),
                                 kernel=int(mamba_kernel_size), d_discr=max(0, int(mamba_d_discr)),
                                 dropout=float(dropout), head_hidden=max(0, int(head_hidden_dim)),
                                 head_dropout=float(head_dropout), emb=emb)
    parts = [("in_proj.", "in_proj."), ("out_proj.", "out_proj."), ("s_B.", "B_proj."), ("s_C.", "C_proj."),
             ("s_D.0.", "dt_down."), ("s_D.1.", "dt_up."), ("conv.", "conv1d."), ("A", "A"), ("D", "D"),
             ("add_norm.norm.", "norm.")]
    renames = [("image_proj.", "inp."), ("head.", "head.")]
    renames += [(f"mamba.{i}.{a}", f"blocks.{i}.{b}") for i in range(cfg.layers) for a, b in parts]
    return convert_state_dict(BehaviorMambaRef(cfg), state, renames, what="official TextMambaRegressor")
