"""Official face temporal model (``src_visual_dynamic_model/model.py``, ``VisualDynamicModel``) -> vaest."""

from __future__ import annotations

from typing import Any, Mapping

from vaest.errors import ModelError
from vaest.models.official.common import convert_state_dict, layer_renames
from vaest.models.temporal import FaceTransformerRef, FaceTransformerRefConfig


def face_from_official(state: Mapping[str, Any], input_dim: int, hidden_dim: int = 256, num_heads: int = 8,
                       tr_layers: int = 5, dropout: float = 0.1, out_dim: int = 2,
                       head_type: str = "mlp") -> FaceTransformerRef:
    """:class:`FaceTransformerRef` (eval mode) holding the official model's weights.

    The keyword arguments are the official constructor's (same names, same defaults). The result maps
    ``features`` (B, T, input_dim) and ``mask`` (B, T) bool (True = real frame) to ``va`` = official
    ``forward(features, mask)`` and ``emb`` = the first output of ``forward_with_embeddings``.
    """
    if out_dim != 2:
        raise ModelError(f"official face model with out_dim={out_dim}: vaest predicts valence and arousal (2)")
    cfg = FaceTransformerRefConfig(input_dim=int(input_dim), hidden_dim=int(hidden_dim), heads=int(num_heads),
                                   layers=int(tr_layers), dropout=float(dropout), head=str(head_type).lower())
    renames = [("image_proj.", "proj."), ("head.", "head.")] + layer_renames("transformer", "layers", cfg.layers)
    return convert_state_dict(FaceTransformerRef(cfg), state, renames, what="official VisualDynamicModel")
