"""Presets (``--preset``) of the learned fusions and the keyword arguments they resolve to: RAAV (task
``fusion-raav``, :func:`raav_preset_kwargs`) and the directed cross-modal fusion (task ``fusion-dcmmoe``,
:func:`dcmmoe_preset_kwargs`), each value with the official source it comes from; the default optimisation per
method (:func:`default_train_config`). Importing this module registers them (:mod:`vaest.presets`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from vaest.config import build
from vaest.presets import register_preset, resolve_preset
from vaest.training import TrainConfig



def default_train_config(method: str) -> TrainConfig:
    """Default optimisation per method: RAAV AdamW 5e-5, loss 0.7/0.3 CCC + 0.01 MSE; DCMMoE AdamW 1e-4, mean CCC
    + 0.01 MSE; ``dcm-ref`` as the official fusion training (AdamW 1e-4, per-window CCC, no MSE)."""
    if method == "raav":
        return TrainConfig(lr=5e-5, loss_weights=(0.7, 0.3), mse_weight=0.01)
    if method == "dcm-ref":
        return TrainConfig(lr=1e-4, loss_weights=(0.5, 0.5), mse_weight=0.0, loss="ccc-window")
    return TrainConfig(lr=1e-4, loss_weights=(0.5, 0.5), mse_weight=0.01)


_MM = "src_audio_and_fusion/configs/mm_cfg_va_s2s.yaml"


_MMMODEL = "src_audio_and_fusion/src/fusion/models/multimodal_fusion_model.py"


_MMDATA = "src_audio_and_fusion/src/fusion/data/abaw_mm_dataset.py"


REFERENCE_RAAV: dict[str, tuple[Any, str]] = {
    "form": ("reference", f"{_MMMODEL} MultimodalFusionModelV4; {_MMDATA} (one item per audio window)"),
    "crossfit": (False, f"{_MM} data.params (the modality features of every split come from the full models)"),
    "val_smooth": ((7, 13), f"{_MM} multimodal_framewise_v2_callback smoothing_valence/arousal_param"),
    "hidden": (256, f"{_MM} model.params.hidden"),
    "heads": (4, f"{_MM} model.params.num_heads"),
    "temporal_layers": (1, f"{_MM} model.params.num_temporal_layers"),
    "n_latents": (4, f"{_MM} model.params.num_audio_latents"),
    "dropout": (0.1, f"{_MM} model.params.dropout"),
    "epochs": (50, f"{_MM} train.params.epochs"),
    "batch_size": (8, "src_audio_and_fusion/src/fusion/data/abaw_mm_datamodule.py batch_size default"),
    "lr": (5e-5, f"{_MM} optimizer.params.lr"),
    "weight_decay": (0.01, f"{_MM} optimizer.params.weight_decay"),
    "grad_clip": (1.0, f"{_MM} train.params.grad_clip_norm"),
    "early_stop": (6, f"{_MM} early_stopping_callback.patience"),
    "ema": (None, f"{_MM} (no ema_callback)"),
    "plateau_patience": (10**9, f"{_MM} (no scheduler block: constant learning rate)"),
    "loss_weights": ((0.7, 0.3), f"{_MM} loss.params v_weight, a_weight"),
    "mse_weight": (0.01, f"{_MM} loss.params.mse_weight"),
    "loss_min_valid": (4, "src_audio_and_fusion/src/losses/ccc_mse_mm_loss.py CCCMSEMMLoss min_valid"),
}


FUSION_SETTINGS_KEYS = ("form", "val_smooth", "win", "hop", "crossfit")



def split_fusion_preset(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Split a flat fusion preset into (TrainConfig fields, model settings, fusion settings ``form``,
    ``val_smooth``, ``win``, ``hop``, ``crossfit``). An explicit None (e.g. ``ema``) is kept as a value."""
    train_keys = {f.name for f in dataclasses.fields(TrainConfig)}
    tr = {k: v for k, v in values.items() if k in train_keys}
    st = {k: v for k, v in values.items() if k in FUSION_SETTINGS_KEYS}
    md = {k: v for k, v in values.items() if k not in train_keys and k not in FUSION_SETTINGS_KEYS}
    return tr, md, st


def raav_preset_kwargs(file_cfg: dict[str, Any], flags: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments of :func:`train_fusion` for RAAV under a preset (task ``fusion-raav``), the twin of
    :func:`dcmmoe_preset_kwargs`. The preset is named by ``flags["preset"]`` or the file's ``preset:`` key;
    precedence: :func:`default_train_config` < preset < config file (``form``, ``val_smooth``, ``win``, ``hop``,
    ``crossfit``, ``model:``, ``train:``) < flags (any :class:`TrainConfig` field; None ignored)."""
    p, f, g = resolve_preset("fusion-raav", file_cfg, flags)
    p_train, p_model, p_set = split_fusion_preset(p.values if p else {})
    p_set.update({k: f[k] for k in ("form", "val_smooth", "win", "hop", "crossfit") if f.get(k) is not None})
    t_names = {x.name for x in dataclasses.fields(TrainConfig)}
    cfg = build(TrainConfig, dataclasses.asdict(default_train_config("raav")), p_train, f.get("train"),
                {k: v for k, v in g.items() if k in t_names})
    smooth = p_set.get("val_smooth")
    return {"method": "raav", "train_cfg": cfg, "model_cfg": {**p_model, **(f.get("model") or {})},
            "win": int(p_set.get("win", 400)), "hop": int(p_set.get("hop", 150)),
            "form": str(p_set.get("form", "vaest")),
            "val_smooth": tuple(int(k) for k in smooth) if smooth else None, "preset": p.name if p else None,
            "crossfit": bool(p_set.get("crossfit", True))}


def dcmmoe_preset_kwargs(file_cfg: dict[str, Any], flags: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments of :func:`train_fusion` for the directed cross-modal fusion under a preset.

    The preset (task ``fusion-dcmmoe``) is named by ``flags["preset"]`` or the file's ``preset:`` key;
    precedence: the method's :func:`default_train_config` < preset < config file (``method``, ``win``, ``hop``,
    ``align_end``, ``model:``, ``train:``) < flags (``method`` and any :class:`TrainConfig` field; None ignored).
    ``method: dcmmoe`` names the directed-fusion family: with a preset it becomes the preset's model
    (``dcm-ref`` for ``reference``); ``dcm-ref`` is always taken as given.
    Returns ``method``, ``train_cfg``, ``model_cfg``, ``win``, ``hop``, ``align_end`` and ``preset`` (its name).
    """
    p, f, g = resolve_preset("fusion-dcmmoe", file_cfg, flags)
    vals = dict(p.values) if p else {}
    t_names = {x.name for x in dataclasses.fields(TrainConfig)}
    top = {k: v for k, v in {**vals, **{k: f[k] for k in ("method", "win", "hop", "align_end") if k in f},
                             **{k: v for k, v in g.items() if k == "method" and v}}.items() if k not in t_names}
    method = top.get("method", "dcmmoe")
    if p is not None and method == "dcmmoe":  # "--method dcmmoe --preset reference": the family, the preset's model
        method = vals.get("method", method)
    cfg = build(TrainConfig, dataclasses.asdict(default_train_config(method)),
                {k: v for k, v in vals.items() if k in t_names}, f.get("train"),
                {k: v for k, v in g.items() if k in t_names})
    return {"method": method, "train_cfg": cfg, "model_cfg": {**top.get("model", {}), **(f.get("model") or {})},
            "win": int(top.get("win", 400)), "hop": int(top.get("hop", 150)),
            "align_end": bool(top.get("align_end", False)), "preset": p.name if p else None}


def _register_presets() -> None:
    register_preset("fusion-raav", "reference", {k: v for k, (v, _) in REFERENCE_RAAV.items()},
                    {k: src for k, (_, src) in REFERENCE_RAAV.items()},
                    "the official RAAV (MultimodalFusionModelV4) on samples of one 4 s audio window")
    register_preset("fusion-raav", "vaest", {"form": "vaest", "pred_skip": True, "gate_hidden": 64},
                    {"form": "vaest RAAVFusion (frame windows 400/150, audio windows by frame index)",
                     "pred_skip": "vaest prediction skip (docs/reference-audio-fusion.md)",
                     "gate_hidden": "vaest shared gate"},
                    "vaest's RAAV: frame windows, shared gate, prediction skip")


_REF = "src_fusion_model/"


register_preset(
    "fusion-dcmmoe", "reference",
    values={"method": "dcm-ref", "win": 400, "hop": 150, "align_end": True,
            "epochs": 100, "batch_size": 8, "lr": 1e-4, "weight_decay": 0.01, "scheduler": "plateau",
            "plateau_factor": 0.1, "plateau_patience": 5, "early_stop": 15, "loss": "ccc-window",
            "loss_weights": (0.5, 0.5), "mse_weight": 0.0, "grad_clip": 0.0, "ema": 0.0, "seed": 42},
    sources={"method": _REF + "model.py FusionModel (q face_features, k/v llm_multimodal_featuress: config_best.toml); "
                              "its sizes (DirectedFusionRefConfig defaults) from config_best.toml",
             "win": _REF + "config_best.toml window_length", "hop": _REF + "config_best.toml hop_length",
             "align_end": _REF + "dataset.py (last window aligned to the video's end)",
             "epochs": _REF + "config_best.toml", "batch_size": _REF + "config_best.toml",
             "lr": _REF + "config_best.toml", "weight_decay": _REF + "config_best.toml",
             "scheduler": _REF + "train.py (ReduceLROnPlateau, mode max)",
             "plateau_factor": _REF + "config_best.toml scheduler_factor",
             "plateau_patience": _REF + "config_best.toml scheduler_patience",
             "early_stop": _REF + "config_best.toml early_stop_patience",
             "loss": _REF + "losses.py CCCLoss (per window)", "loss_weights": _REF + "train.py (mean of the two)",
             "mse_weight": _REF + "losses.py (CCC only)", "grad_clip": _REF + "train.py (no clipping)",
             "ema": _REF + "train.py (no EMA)", "seed": _REF + "config_best.toml seed"},
    doc="The official directed cross-modal fusion (Team RAS, src_fusion_model): no experts, no audio.")


register_preset(
    "fusion-dcmmoe", "vaest",
    values={"method": "dcm-ref", "align_end": False},
    sources={"method": "docs/ablation.md: vaest's dcmmoe (mixture of experts) instead of dcm-ref stayed within the "
                       "seed spread, so the vaest preset keeps the official directed fusion (dcmmoe: --method "
                       "dcmmoe without a preset)",
             "align_end": "vaest (not ablated)"},
    doc="The official directed fusion with vaest's window layout; vaest's own DCMMoE (experts, prediction skip, "
        "audio, a gate; not in the official code) did not help in docs/ablation.md and is --method dcmmoe.")

_register_presets()
