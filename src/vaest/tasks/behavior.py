"""Behavior task: a temporal model over 4 s segment features (VLM or offline descriptors); export a run folder.

Each video is a sequence of segments (hop 2 s, win 4 s). Inputs per segment come from the feature store
(``behavior-desc``, ``behavior-vlm`` with a chosen branch and pooling, ``behavior-text``, or a ``+``
combination), standardised with train-split statistics (saved in the checkpoint, ``extra["norm"]``); a missing
value becomes the train mean. The target of a segment is the mean of its valid frame labels. Training uses
sequences of 16 consecutive segments with stride 8 (:class:`vaest.training.SequenceTask`), loss
0.5(1-CCC_v) + 0.5(1-CCC_a), AdamW 3e-4 / weight decay 1e-3; the best epoch is chosen by frame-level validation
CCC, segment predictions being expanded onto the frames and averaged where segments overlap.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vaest.corpus import Corpus, load_corpus
from vaest.errors import FeatureError, VaestError
from vaest.features.behavior import ENCODER_KEYS, encoder_parts
from vaest.features.store import FeatureStore
from vaest.inputs.behavior import BehaviorItem, frame_mask, load_items, to_sequence
from vaest.inputs.settings import BehaviorInputs, inference_record
from vaest.sequences import accepts_mask
from vaest.presets import get_preset, preset_record, register_preset, resolve_preset
from vaest.training import SequenceTask, TrainConfig, concat_frame_ccc, fit

log = logging.getLogger(__name__)


@dataclass
class BehaviorTrainSettings:
    """What the behavior task trains on and with which model (optimisation settings are in ``TrainConfig``).

    Attributes:
        encoder: ``desc`` (offline descriptors), ``vlm``, ``text`` (description embeddings) or a ``+`` combination;
            ``+expr`` adds per-segment statistics of the face encoder's expression probabilities.
        branch, pool: the VLM feature (``multimodal``/``text``/``visual`` x ``mean``/``std``/``last``).
        model: registered model (``behavior-mamba`` or the per-step baseline ``frame-mlp``).
        win, hop: sequences of ``win`` consecutive segments every ``hop`` segments (reference 16 / 8).
        model_config: model settings other than ``input_dim``.
        train_split, val_split: corpus splits to train on and to select the best epoch on.
        standardize: standardise the inputs with train-split statistics (the reference feeds them raw; missing
            values become 0 either way).
        preset: the preset these settings were resolved with (recorded in the run; see :mod:`vaest.presets`).
    """

    encoder: str = "desc"
    branch: str = "multimodal"
    pool: str = "last"
    model: str = "behavior-mamba"
    win: int = 16
    hop: int = 8
    model_config: dict[str, Any] = field(default_factory=dict)
    train_split: str = "train"
    val_split: str = "val"
    standardize: bool = True
    preset: str | None = None


def behavior_train_config(**overrides: Any) -> TrainConfig:
    """vaest's optimisation settings of the behavior model: AdamW 3e-4, weight decay 1e-3 (as the official code),
    plus ReduceLROnPlateau and early stopping after 15 epochs (official: no scheduler, 12; preset ``reference``)."""
    base = dict(lr=3e-4, weight_decay=1e-3, batch_size=8, epochs=100, early_stop=15, plateau_patience=5)
    base.update(overrides)
    return TrainConfig(**base)


def fit_norm(items: list[BehaviorItem]) -> dict[str, list[float]]:
    """Per-column mean and std over the valid training segments (NaN values ignored; std floored at 1e-6),
    accumulated video by video in float64 (:class:`vaest.metrics.RunningMoments`: no copy of the corpus)."""
    from vaest.metrics import RunningMoments

    mom = RunningMoments(ignore_nan=True)
    for it in items:
        if it.valid.any():
            mom.add(it.x[it.valid])
    if mom.n is None:
        raise FeatureError("no valid training segment: cannot fit the feature normalisation")
    return mom.norm(1e-6)


def train_behavior(corpus_root: str | Path | Corpus, features: str | Path, out: str | Path, encoder: str = "desc",
                   model: str = "behavior-mamba", branch: str | None = None, pool: str | None = None,
                   train_cfg: TrainConfig | None = None, settings: BehaviorTrainSettings | None = None,
                   command: str = "vaest train behavior") -> dict[str, Any]:
    """Train the behavior temporal model (or the ``frame-mlp`` baseline) and write the run folder.

    Args:
        corpus_root: corpus with train/val labels.
        features: feature store with the encoder's ``behavior-*`` records.
        out: run folder (``model.pt``, ``preds/``, ``metrics.json``, ``run.json``, ``config.yaml``).
        encoder, model, branch, pool: override the corresponding ``settings`` fields (None keeps them).
        train_cfg: optimisation settings (default :func:`behavior_train_config`).
    Returns:
        ``{"metrics": {valence, arousal, mean}, "best_epoch", "seconds", "run", "videos": {split: n}}``.
    """
    from vaest.config import write_run_info
    from vaest.inference import save_predictions, write_run_json
    from vaest.io import atomic_write_json
    from vaest.models import create_model, load_checkpoint

    st = settings or BehaviorTrainSettings()
    st = dataclasses.replace(st, encoder=encoder or st.encoder, model=model or st.model,
                             branch=branch or st.branch, pool=pool or st.pool)
    cfg = train_cfg or behavior_train_config()
    out = Path(out)
    corpus: Corpus = load_corpus(corpus_root)
    store = FeatureStore(features)
    inputs = BehaviorInputs(st.encoder, st.branch, st.pool, st.win, st.hop)
    items, missing = load_items(list(corpus), store, inputs)
    keys = "+".join(ENCODER_KEYS[p] for p in encoder_parts(st.encoder))  # "face-*" stands for the expression part
    if missing:
        log.warning("%d videos have no %s features in %s (skipped): %s", len(missing), keys, features,
                    ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""))
    train = [it for it in items if it.video.split == st.train_split and it.video.has_labels]
    val = [it for it in items if it.video.split == st.val_split and it.video.has_labels]
    hint = f"(run `vaest extract behavior --encoder {encoder_parts(st.encoder)[0]}` first)"
    if not train:
        raise VaestError(f"{corpus_root}: no labelled '{st.train_split}' video has {keys} features in {features} {hint}")
    if not val:
        raise VaestError(f"{corpus_root}: no labelled '{st.val_split}' video has {keys} features in {features} {hint}")
    norm = fit_norm(train)
    if not st.standardize:  # identity: the checkpoint keeps the same form, so inference needs no special case
        norm = {"mean": [0.0] * len(norm["mean"]), "std": [1.0] * len(norm["std"])}
    seq = {it.video.id: to_sequence(it, norm) for it in items}
    input_dim = int(train[0].x.shape[1])
    from vaest.training import seed_everything

    seed_everything(cfg.seed)  # same seed, same initial weights: a rerun reproduces the run
    net = create_model(st.model, input_dim=input_dim, **st.model_config)
    task = SequenceTask([seq[it.video.id] for it in train], [seq[it.video.id] for it in val], st.win, st.hop,
                        with_mask=accepts_mask(net))
    log.info("behavior %s on %s (%d inputs, %d parameters): %d train / %d val videos, %d train windows", st.model,
             keys, input_dim, sum(p.numel() for p in net.parameters()), len(train), len(val), len(task.index))
    preset = preset_record(get_preset("behavior", st.preset))
    write_run_info(out, command, {"settings": dataclasses.asdict(st), "train": dataclasses.asdict(cfg),
                                  "preset": preset, "corpus": str(corpus.root), "features": str(features)})
    extra = {"norm": norm, "inputs": {"store_keys": keys, "encoder": st.encoder, "branch": st.branch,
                                      "pool": st.pool, "dim": input_dim, "config_hash": train[0].record.config_hash,
                                      "features_hash": train[0].record.meta.get("features_hash")},
             "win": st.win, "hop": st.hop}
    res = fit(net, task, cfg, out, extra=extra)
    best, _ = load_checkpoint(out / "model.pt", cfg.device)
    pairs = []
    for it in items:
        s = seq[it.video.id]
        pred = task.predict_frames(best, s, cfg.device)
        save_predictions(out, it.video.id, pred["va"], it.fps, emb=pred.get("emb"), mask=frame_mask(it),
                         meta={"modality": "behavior", "encoder": st.encoder, "model": st.model,
                               "split": it.video.split, "segments": len(it.x)})
        if it.video.split == st.val_split and s.frame_labels is not None:
            pairs.append((pred["va"], s.frame_labels))
    metrics = concat_frame_ccc(pairs)
    atomic_write_json(out / "metrics.json", metrics)
    write_run_json(out, modality="behavior", corpus=corpus.location, features=Path(features), encoder=st.encoder,
                   branch=st.branch, pool=st.pool, model=st.model, store_key=keys, val_split=st.val_split,
                   preset=preset, inference=inference_record(inputs))
    log.info("behavior %s: validation CCC valence %.4f arousal %.4f mean %.4f (best epoch %d, %.0f s)", st.model,
             metrics["valence"], metrics["arousal"], metrics["mean"], res.best_epoch, res.seconds)
    return {"metrics": metrics, "best_epoch": res.best_epoch, "seconds": res.seconds, "run": str(out),
            "videos": {s: sum(1 for it in items if it.video.split == s) for s in corpus.splits}}


def settings_from(file_cfg: dict[str, Any], flags: dict[str, Any]) -> tuple[BehaviorTrainSettings, TrainConfig]:
    """Behavior settings and training settings (reference behavior defaults) from a run config and CLI flags
    (see :func:`vaest.training.split_settings`)."""
    from vaest.training import split_settings

    p, file_cfg, flags = resolve_preset("behavior", file_cfg, flags)
    st, cfg = split_settings(BehaviorTrainSettings, file_cfg, flags, "behavior",
                             dataclasses.asdict(behavior_train_config()), base=p.values if p else None)
    return dataclasses.replace(st, preset=p.name if p else None), cfg


_REF = "src_behavior_model/"
_TOML = _REF + "configs/text_va.toml"
register_preset(
    "behavior", "reference",
    values={"model": "behavior-mamba-ref", "encoder": "vlm", "branch": "multimodal", "pool": "last",
            "win": 16, "hop": 8, "standardize": False,
            "epochs": 100, "batch_size": 8, "lr": 3e-4, "weight_decay": 1e-3, "scheduler": "none",
            "early_stop": 12, "loss": "ccc-pooled", "loss_weights": (0.5, 0.5), "mse_weight": 0.0,
            "grad_clip": 0.0, "ema": 0.0, "seed": 42},
    sources={"model": _REF + "src/models/transformer_model.py (TextMambaRegressor); its settings "
                      "(BehaviorMambaRefConfig defaults) from " + _TOML + " [model]",
             "encoder": _TOML + " [embeddings] source = qwen", "branch": _TOML + " qwen_branch",
             "pool": _TOML + " qwen_pool", "win": _TOML + " window_size", "hop": _TOML + " window_stride",
             "standardize": _REF + "src/datasets/transformer_data.py (embeddings read as stored)",
             "epochs": _TOML + " [train]", "batch_size": _TOML + " [train]", "lr": _TOML + " [train]",
             "weight_decay": _TOML + " [train]",
             "scheduler": _REF + "src/trainers/transformer_trainer.py (no LR scheduler)",
             "early_stop": _TOML + " early_stopping_patience",
             "loss": _REF + "src/core/losses_metrics.py CCCLoss over the batch's valid steps "
                            "(transformer_trainer.py _masked_ccc_loss)",
             "loss_weights": _REF + "src/trainers/transformer_trainer.py (0.5 valence + 0.5 arousal)",
             "mse_weight": _REF + "src/trainers/transformer_trainer.py (CCC only)",
             "grad_clip": _REF + "src/trainers/transformer_trainer.py (no clipping)",
             "ema": _REF + "src/trainers/transformer_trainer.py (no EMA)", "seed": _TOML + " seed"},
    doc="The official behavior model and its training (Team RAS, src_behavior_model).")
register_preset(
    "behavior", "vaest",
    values={"model": "behavior-mamba", "standardize": False, "scheduler": "plateau", "loss": "ccc",
            "early_stop": 15},
    sources={"model": "vaest (Mamba-1 mixer, pre-norm residual blocks, tanh head); docs/ablation.md "
                      "(reference + behavior-mamba helps)",
             "standardize": "off: docs/ablation.md (reference + standardize within the seed spread)",
             "scheduler": "vaest (its ablation row never reached the plateau patience: not measured)",
             "loss": "vaest (not ablated)", "early_stop": "vaest (not ablated)"},
    doc="vaest's behavior model (see docs/reference.md).")
