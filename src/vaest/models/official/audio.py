"""Official Team RAS audio model checkpoints -> :class:`vaest.models.audio.ReferenceWavLMAudioModel`.

The official module is ``WavLMS2SModelV1`` (``src_audio_and_fusion/src/audio/models/wavlm_s2s_model.py``,
``pooling: attn_stats``). Its state_dict keys map one to one:

=========================  ==========================
official                   vaest
=========================  ==========================
``backbone.*``             ``backbone.*``
``pool.proj.{0,3}.*``      ``pool.score.{0,3}.*``
``head.0.*`` (LayerNorm)   ``head.norm.*``
``head.2.*`` (Linear)      ``head.proj.*``
``head.5.*`` (Linear)      ``head.out.*``
=========================  ==========================
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from vaest.errors import ModelError
from vaest.models.audio import ReferenceAudioConfig, ReferenceWavLMAudioModel

AUDIO_KEY_MAP: tuple[tuple[str, str], ...] = (
    ("backbone.", "backbone."),
    ("pool.proj.", "pool.score."),
    ("head.0.", "head.norm."),
    ("head.2.", "head.proj."),
    ("head.5.", "head.out."),
)


def rename_state_dict(state_dict: Mapping[str, torch.Tensor], rules: tuple[tuple[str, str], ...],
                      what: str) -> dict[str, torch.Tensor]:
    """Rename every key of an official state_dict by the first matching (official prefix, vaest prefix) rule.

    Raises:
        ModelError: a key matches no rule (the checkpoint is not the official module ``what``).
    """
    out: dict[str, torch.Tensor] = {}
    for k, v in state_dict.items():
        for src, dst in rules:
            if k.startswith(src):
                out[dst + k[len(src):]] = v
                break
        else:
            raise ModelError(f"{what}: unexpected tensor {k!r} in the official state_dict")
    return out


def load_strict(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], what: str) -> None:
    """``load_state_dict(strict=True)`` with one clear error listing what is missing or left over."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    extra = sorted(set(state_dict) - set(own))
    bad = [k for k in set(own) & set(state_dict) if own[k].shape != state_dict[k].shape]
    if missing or extra or bad:
        raise ModelError(f"{what}: official state_dict does not match the vaest reference model "
                         f"(missing {missing[:5]}, unused {extra[:5]}, shape mismatch {sorted(bad)[:5]})")
    model.load_state_dict(state_dict, strict=True)


def audio_from_official(state_dict: Mapping[str, torch.Tensor], backbone_config: Any, *,
                        attn_hidden_dim: int = 128, attn_dropout: float = 0.2, head_dropout: float = 0.2,
                        input_normalize: bool = True, unfreeze_last_n_layers: int = 4,
                        pooling: str = "attn_stats") -> ReferenceWavLMAudioModel:
    """Build the vaest reference audio model from an official ``WavLMS2SModelV1`` state_dict.

    Args:
        state_dict: ``official_model.state_dict()`` (backbone included).
        backbone_config: the official backbone's config (``official_model.backbone.config``, a transformers
            ``PretrainedConfig``, or its ``to_dict()``); no weights are downloaded.
        attn_hidden_dim, attn_dropout, head_dropout, input_normalize, unfreeze_last_n_layers, pooling: the
            official constructor's settings (``configs/cfg_test_w_audio.yaml``); only ``attn_stats`` pooling.
    Returns:
        :class:`ReferenceWavLMAudioModel` (eval mode) holding every official tensor; forward
        ``wav`` (B, S), ``mask`` (B, S) -> ``va`` (B, 4, 2) = the official ``preds``, ``emb`` (B, 4, 256) = its
        ``aux["features"]``.
    """
    if pooling != "attn_stats":
        raise ModelError(f"audio_from_official: pooling {pooling!r} is not the reference (attn_stats)")
    cfg = backbone_config.to_dict() if hasattr(backbone_config, "to_dict") else dict(backbone_config)
    model = ReferenceWavLMAudioModel(ReferenceAudioConfig(
        backbone="official", ssl_checkpoint=None, trainable_layers=int(unfreeze_last_n_layers),
        att_dim=int(attn_hidden_dim), att_dropout=float(attn_dropout), head_dropout=float(head_dropout),
        input_normalize=bool(input_normalize), backbone_config=cfg))
    load_strict(model, rename_state_dict(state_dict, AUDIO_KEY_MAP, "audio"), "audio")
    return model.eval()


__all__ = ["AUDIO_KEY_MAP", "audio_from_official", "load_strict", "rename_state_dict"]
