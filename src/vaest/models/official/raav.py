"""Official Team RAS RAAV checkpoints -> :class:`vaest.models.fusion.ReferenceRAAV`.

The official module is ``MultimodalFusionModelV4`` (``src_audio_and_fusion/src/fusion/models/
multimodal_fusion_model.py``). Its lazy projections must have been materialised (one forward) before its
state_dict is saved; their input widths are read from the weights.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from vaest.errors import ModelError
from vaest.models.fusion import ReferenceRAAV, ReferenceRAAVConfig
from vaest.models.official.audio import load_strict, rename_state_dict


def _raav_rules(official: Sequence[str], ours: Sequence[str]) -> tuple[tuple[str, str], ...]:
    rules: list[tuple[str, str]] = []
    for o, m in zip(official, ours):
        rules += [(f"frame_projectors.{o}.", f"frame_proj.{m}."), (f"frame_gate_mlps.{o}.", f"gates.{m}.")]
    return tuple(rules) + (
        ("audio_projector.", "audio_proj."),
        ("audio_latents", "latents"),
        ("audio_latent_attn.", "latent_attn."),
        ("frame_to_audio_attn.", "frame_attn."),
        ("norm_frame_pre.", "norm_query."),
        ("norm_audio_latents.", "norm_latents."),
        ("norm_after_audio.", "norm_frames."),
        ("temporal_encoder.", "temporal."),
        ("head.", "head."),
        ("modality_log_priors", "log_prior"),
    )


def raav_from_official(state_dict: Mapping[str, torch.Tensor], frame_modalities: Sequence[str], *,
                       rename: Mapping[str, str] | None = None, dropout: float = 0.1,
                       num_heads: int = 4) -> ReferenceRAAV:
    """Build the vaest reference RAAV from an official ``MultimodalFusionModelV4`` state_dict.

    Args:
        state_dict: ``official_model.state_dict()`` after one forward (lazy layers materialised).
        frame_modalities: the official ``frame_modalities`` (e.g. ``["face", "qwen_mm"]``), in order.
        rename: official modality name -> vaest input name (e.g. ``{"qwen_mm": "behavior"}``); default: same.
        dropout, num_heads: the official constructor's settings (hidden size, number of temporal layers and
            latents, input widths and priors are read from the tensors).
    Returns:
        :class:`ReferenceRAAV` (eval mode). Its inputs for an official batch: ``<m>`` = ``<m>_embedding``
        concatenated with ``<m>_prediction`` when the official model had ``use_predictions`` (B, L, D_m),
        ``<m>_mask`` = ``input_valid_mask[m]``, ``audio`` = audio embedding (+ prediction) (B, T_a, D_a),
        ``audio_mask`` = ``input_valid_mask["audio"]``, ``frame_mask`` = ``targets_sequence_mask``.
    """
    official = list(frame_modalities)
    ours = [(rename or {}).get(m, m) for m in official]
    sd = dict(state_dict)
    for k, v in sd.items():
        if isinstance(v, torch.nn.parameter.UninitializedParameter):
            raise ModelError(f"raav: {k} is uninitialised; run the official model once before saving its state_dict")
    try:
        in_dims = tuple(int(sd[f"frame_projectors.{m}.weight"].shape[1]) for m in official)
        hidden, audio_dim = (int(s) for s in sd["audio_projector.weight"].shape)
        n_latents = int(sd["audio_latents"].shape[1])
        priors = tuple(float(p) for p in torch.exp(sd["modality_log_priors"]))
    except KeyError as e:
        raise ModelError(f"raav: official state_dict lacks {e}") from None
    n_layers = len({k.split(".")[2] for k in sd if k.startswith("temporal_encoder.layers.")})
    model = ReferenceRAAV(ReferenceRAAVConfig(
        modalities=tuple(ours), in_dims=in_dims, audio_dim=audio_dim, priors=priors, hidden=hidden,
        heads=int(num_heads), temporal_layers=n_layers, n_latents=n_latents, dropout=float(dropout)))
    load_strict(model, rename_state_dict(sd, _raav_rules(official, ours), "raav"), "raav")
    return model.eval()


__all__ = ["raav_from_official"]
