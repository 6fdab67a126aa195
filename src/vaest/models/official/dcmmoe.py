"""Official directed cross-modal fusion model (``src_fusion_model/model.py``, ``FusionModel``) -> vaest.

The official model has no experts; vaest's mixture-of-experts variant (``dcmmoe``) is vaest's own.
"""

from __future__ import annotations

from typing import Any, Mapping

from vaest.errors import ModelError
from vaest.models.directed import DirectedFusionRef, DirectedFusionRefConfig
from vaest.models.official.common import convert_state_dict, layer_renames

#: official modality folder names -> vaest modality names (used unless ``names`` says otherwise)
OFFICIAL_NAMES = {"face_features": "face", "llm_multimodal_featuress": "behavior"}


def dcm_from_official(state: Mapping[str, Any], modality_input_dims: Mapping[str, int], modalities: list[str],
                      q_modality: str = "fusion", k_modality: str = "fusion", v_modality: str = "fusion",
                      hidden_dim: int = 256, num_heads: int = 8, tr_layers: int = 5, dropout: float = 0.1,
                      out_dim: int = 2, head_type: str = "mlp",
                      names: Mapping[str, str] | None = None) -> DirectedFusionRef:
    """:class:`DirectedFusionRef` (eval mode) holding the official model's weights.

    The keyword arguments are the official constructor's (same names, same defaults). ``names`` renames the
    official modalities to vaest's input names (default :data:`OFFICIAL_NAMES`, other names kept). The result
    maps ``<name>`` (B, T, D) per modality and ``mask`` (B, T) bool (True = real frame) to ``va`` = official
    ``forward({official name: tensor}, mask)`` and ``emb`` = the first output of ``forward_with_embeddings``.
    """
    if out_dim != 2:
        raise ModelError(f"official fusion model with out_dim={out_dim}: vaest predicts valence and arousal (2)")
    rename = {**OFFICIAL_NAMES, **dict(names or {})}
    mods = [str(m) for m in modalities]
    to = {m: rename.get(m, m) for m in mods}

    def stream(s: str) -> str:
        return s if s == "fusion" else to.get(s, s)

    cfg = DirectedFusionRefConfig(input_dims={to[m]: int(modality_input_dims[m]) for m in mods},
                                  q=stream(q_modality), k=stream(k_modality), v=stream(v_modality),
                                  hidden_dim=int(hidden_dim), heads=int(num_heads), layers=int(tr_layers),
                                  dropout=float(dropout), head=str(head_type).lower())
    renames = [(f"projections.{m}.", f"proj.{to[m]}.") for m in mods] + [("head.", "head.")]
    renames += layer_renames("transformer", "layers", cfg.layers)
    return convert_state_dict(DirectedFusionRef(cfg), state, renames, what="official FusionModel")
