"""Face task: train a temporal model (or the per-frame baseline) on stored face features; export a run folder.

Inputs per frame: the encoder's embedding, its expression probabilities and the detector confidence
(``face-<encoder>`` record). Frames with no face take the nearest face frame's embedding and probabilities
(the reference rule) and keep confidence 0, so the model can tell filled frames from seen ones.

Optionally (``motion``, on by default; not part of the reference inputs) five face-track kinematics from the
``facetrack`` record are appended: horizontal and vertical velocity of the box centre and the rate of change
of the log box size (face widths per second), the eye-line roll angle and its rate. They do not depend on the
camera framing, and only a model with temporal context can turn them into what carries affect (head-motion
energy over a second or more goes with arousal); aligned face crops remove this information.

Inputs are standardised with train-split statistics, which travel in the checkpoint (``extra["norm"]``).
Frames labelled -5 are masked out of the loss. The run folder follows :mod:`vaest.inference`.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from vaest.corpus import Corpus, load_corpus
from vaest.errors import FeatureError, VaestError
from vaest.features.face_registry import face_key
from vaest.features.store import FeatureStore
from vaest.inputs.face import MOTION_FEATURES, input_parts, open_face_frames, to_sequence
from vaest.metrics import RunningMoments
from vaest.inputs.settings import FaceInputs, inference_record
from vaest.sequences import accepts_mask
from vaest.presets import get_preset, preset_record, register_preset, resolve_preset
from vaest.training import SequenceTask, TrainConfig, concat_frame_ccc, fit

log = logging.getLogger(__name__)


@dataclass
class FaceTrainSettings:
    """What the face task trains on and with which model (optimisation settings are in ``TrainConfig``).

    Attributes:
        encoder: frame encoder whose ``face-<encoder>`` features are read.
        model: registered model (``face-transformer`` or the per-frame baseline ``frame-mlp``).
        win, hop: training/inference windows in frames (reference: 400 / 150).
        model_config: model settings other than ``input_dim`` (which comes from the features).
        train_split, val_split: corpus splits to train on and to select the best epoch on.
        motion: append the face-track kinematics (see the module docstring) to the inputs.
        attn_span: for models with that setting (``face-transformer``, ``face-transformer-ref``): frames each attention layer may look
            at on either side (30 = 1 s at 30 fps, 5 s through the 5 layers); None or 0 = full windows (the
            reference). ``model_config`` wins when it sets it.
        jitter: each epoch, shift every training window by a random offset in [0, hop) frames, so the model
            does not see the same 400-frame windows at the same positions every epoch (a cheap augmentation
            for small corpora). Inference windows are unchanged.
        inputs: ``+``-joined parts of the per-frame input: ``emb`` (the encoder embedding), ``probs`` (its
            expression probabilities), ``conf`` (detector confidence, 0 without a face). The reference model
            reads ``emb`` only.
        standardize: standardise the inputs with train-split statistics (the reference feeds them raw).
        align_end: windows of a video longer than ``win`` are full windows, the last one ending at the video's
            end (the reference dataset); otherwise the last window runs past the end and is padded. A model
            whose forward takes ``mask`` (``face-transformer-ref``) always gets the padded frames masked.
        preset: the preset these settings were resolved with (recorded in the run; see :mod:`vaest.presets`).
    """

    encoder: str = "fer"
    model: str = "face-transformer"
    win: int = 400
    hop: int = 150
    model_config: dict[str, Any] = field(default_factory=dict)
    train_split: str = "train"
    val_split: str = "val"
    jitter: bool = True
    motion: bool = True
    attn_span: int | None = 30
    inputs: str = "emb+probs+conf"
    standardize: bool = True
    align_end: bool = False
    preset: str | None = None


class JitteredSequenceTask(SequenceTask):
    """:class:`vaest.training.SequenceTask` whose training windows start at a random offset in [0, hop) past
    their grid position each epoch (drawn from the epoch's generator, so runs stay reproducible); validation
    and inference use the windows on the grid."""

    def train_batches(self, rng: np.random.Generator, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
        grid = self.index
        shift = rng.integers(0, self.hop, size=len(grid))
        self.index = [(i, int(min(s + d, self.train[i].length - 1))) for (i, s), d in zip(grid, shift)]
        try:
            yield from super().train_batches(rng, batch_size)
        finally:
            self.index = grid


def train_face(corpus_root: str | Path | Corpus, features: str | Path, out: str | Path, encoder: str = "fer",
               model: str = "face-transformer", train_cfg: TrainConfig | None = None,
               settings: FaceTrainSettings | None = None, command: str = "vaest train face") -> dict[str, Any]:
    """Train the face temporal model (or the ``frame-mlp`` baseline) and write the run folder.

    Args:
        corpus_root: corpus with train/val labels.
        features: feature store holding ``face-<encoder>`` records.
        out: run folder (``model.pt``, ``preds/``, ``metrics.json``, ``run.json``, ``config.yaml``).
        encoder, model: override ``settings.encoder`` / ``settings.model``.
        train_cfg: optimisation settings (reference defaults).
    Returns:
        ``{"metrics": {valence, arousal, mean}, "best_epoch", "seconds", "run", "videos": {split: n}}``.
    """
    from vaest.config import write_run_info
    from vaest.inference import save_predictions, write_run_json
    from vaest.io import atomic_write_json
    from vaest.models import create_model, list_models, load_checkpoint

    st = dataclasses.replace(settings or FaceTrainSettings(), encoder=encoder, model=model)
    cfg = train_cfg or TrainConfig()
    out = Path(out)
    corpus: Corpus = load_corpus(corpus_root)
    store = FeatureStore(features)
    parts = input_parts(st.inputs)
    train_ids = {v.id for v in corpus if v.split == st.train_split and v.has_labels}
    moments = RunningMoments() if st.standardize else None
    loaded, missing = open_face_frames(list(corpus), store, st.encoder, motion=st.motion, parts=parts,
                                       moments=moments, stats_of=train_ids)
    if missing:
        log.warning("%d videos have no face-%s features in %s (skipped): %s", len(missing), st.encoder, features,
                    ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""))
    train = [t for t in loaded if t[0].split == st.train_split and t[0].has_labels]
    val = [t for t in loaded if t[0].split == st.val_split and t[0].has_labels]
    if not train:
        raise VaestError(f"{corpus_root}: no labelled '{st.train_split}' video has face-{st.encoder} features in {features} "
                         f"(run `vaest extract face --encoder {st.encoder}` first)")
    if not val:
        raise VaestError(f"{corpus_root}: no labelled '{st.val_split}' video has face-{st.encoder} features in {features}")
    input_dim = loaded[0][1].dim
    if moments is not None:
        if moments.count == 0:
            raise FeatureError("no training frame has a face: cannot fit the feature normalisation")
        norm = moments.norm(1e-6)
    else:  # identity: the checkpoint keeps the same form, so inference needs no special case
        norm = {"mean": [0.0] * input_dim, "std": [1.0] * input_dim}
    for _, frames, _ in loaded:
        frames.norm = norm  # standardised per window as batches are gathered
    seq = {v.id: to_sequence(v, frames, fps) for v, frames, fps in loaded}
    from vaest.training import seed_everything

    seed_everything(cfg.seed)  # same seed, same initial weights: a rerun reproduces the run
    model_cfg = dict(st.model_config)
    if st.model in list_models() and "attn_span" in _config_fields(st.model):
        model_cfg.setdefault("attn_span", st.attn_span)
    net = create_model(st.model, input_dim=input_dim, **model_cfg)
    task_cls = JitteredSequenceTask if st.jitter else SequenceTask
    task = task_cls([seq[t[0].id] for t in train], [seq[t[0].id] for t in val], st.win, st.hop,
                    align_end=st.align_end, with_mask=accepts_mask(net))
    n_params = sum(p.numel() for p in net.parameters())
    log.info("face %s on face-%s (%d inputs, %d parameters): %d train / %d val videos, %d train windows",
             st.model, st.encoder, input_dim, n_params, len(train), len(val), len(task.index))
    preset = preset_record(get_preset("face", st.preset))
    write_run_info(out, command, {"settings": dataclasses.asdict(st), "train": dataclasses.asdict(cfg),
                                  "preset": preset, "corpus": str(corpus.root), "features": str(features)})
    layout = list(parts) + (list(MOTION_FEATURES) if st.motion else [])
    first = loaded[0][1].rec
    extra = {"norm": norm, "inputs": {"store_key": face_key(st.encoder), "layout": layout, "dim": input_dim,
                                      "motion": st.motion, "parts": list(parts), "emb_dim": int(first.dim),
                                      "config_hash": first.config_hash,
                                      "features_hash": first.meta.get("features_hash")},
             "win": st.win, "hop": st.hop, "align_end": st.align_end}
    res = fit(net, task, cfg, out, extra=extra)
    best, _ = load_checkpoint(out / "model.pt", cfg.device)
    pairs = []
    for v, frames, fps in loaded:
        s = seq[v.id]
        pred = task.predict_frames(best, s, cfg.device)
        save_predictions(out, v.id, pred["va"], fps, emb=pred.get("emb"), mask=frames.found,
                         meta={"modality": "face", "encoder": st.encoder, "model": st.model, "split": v.split})
        if v.split == st.val_split and s.frame_labels is not None:
            pairs.append((pred["va"], s.frame_labels))
    metrics = concat_frame_ccc(pairs)
    atomic_write_json(out / "metrics.json", metrics)
    write_run_json(out, modality="face", corpus=corpus.location, features=Path(features), encoder=st.encoder,
                   model=st.model, store_key=face_key(st.encoder), val_split=st.val_split, preset=preset,
                   inference=inference_record(FaceInputs(st.encoder, st.motion, tuple(parts), st.win, st.hop)))
    log.info("face %s: validation CCC valence %.4f arousal %.4f mean %.4f (best epoch %d, %.0f s)", st.model,
             metrics["valence"], metrics["arousal"], metrics["mean"], res.best_epoch, res.seconds)
    return {"metrics": metrics, "best_epoch": res.best_epoch, "seconds": res.seconds, "run": str(out),
            "videos": {s: sum(1 for t in loaded if t[0].split == s) for s in corpus.splits}}


def _config_fields(model: str) -> set[str]:
    """Setting names of a registered model's config dataclass."""
    from vaest.models import _REGISTRY, list_models

    list_models()
    return {f.name for f in dataclasses.fields(_REGISTRY[model].Config)}


def settings_from(file_cfg: dict[str, Any], flags: dict[str, Any]) -> tuple[FaceTrainSettings, TrainConfig]:
    """Face settings and training settings from a run config and CLI flags (see
    :func:`vaest.training.split_settings`)."""
    from vaest.training import split_settings

    p, file_cfg, flags = resolve_preset("face", file_cfg, flags)
    st, cfg = split_settings(FaceTrainSettings, file_cfg, flags, "face", base=p.values if p else None)
    return dataclasses.replace(st, preset=p.name if p else None), cfg


_REF = "src_visual_dynamic_model/"
register_preset(
    "face", "reference",
    values={"model": "face-transformer-ref", "encoder": "grada", "inputs": "emb", "standardize": False, "motion": False,
            "attn_span": 0, "jitter": False, "win": 400, "hop": 150, "align_end": True,
            "epochs": 100, "batch_size": 8, "lr": 1e-4, "weight_decay": 0.01, "scheduler": "plateau",
            "plateau_factor": 0.1, "plateau_patience": 5, "early_stop": 15, "loss": "ccc-window",
            "loss_weights": (0.5, 0.5), "mse_weight": 0.0, "grad_clip": 0.0, "ema": 0.0, "seed": 42},
    sources={"model": _REF + "model.py (VisualDynamicModel); its settings (FaceTransformerRefConfig defaults) from "
                      "config_best.toml [Model]",
             "encoder": _REF + "config_best.toml grada_model_variant (GRADA EfficientNet-B1)",
             "inputs": _REF + "extract_grada_features.py (features = GRADA embedding) and dataset.py",
             "standardize": _REF + "dataset.py (features read as stored)",
             "motion": "not in the official inputs", "attn_span": _REF + "model.py (full attention)",
             "jitter": _REF + "dataset.py (fixed windows)",
             "win": _REF + "config_best.toml window_length", "hop": _REF + "config_best.toml hop_length",
             "align_end": _REF + "dataset.py VideoWindowArranger._build_windows",
             "epochs": _REF + "config_best.toml", "batch_size": _REF + "config_best.toml",
             "lr": _REF + "config_best.toml", "weight_decay": _REF + "config_best.toml",
             "scheduler": _REF + "train.py (ReduceLROnPlateau, mode max on va_score)",
             "plateau_factor": _REF + "config_best.toml scheduler_factor",
             "plateau_patience": _REF + "config_best.toml scheduler_patience",
             "early_stop": _REF + "config_best.toml early_stop_patience",
             "loss": _REF + "losses.py CCCLoss (per window, mean over windows and dims)",
             "loss_weights": _REF + "train.py weights [1, 1] averaged", "mse_weight": _REF + "losses.py (CCC only)",
             "grad_clip": _REF + "train.py (no clipping)", "ema": _REF + "train.py (no EMA)",
             "seed": _REF + "config_best.toml seed"},
    doc="The official face temporal model and its training (Team RAS, src_visual_dynamic_model).")
register_preset(
    "face", "vaest",
    values={"model": "face-transformer", "inputs": "emb+probs+conf", "standardize": True, "motion": False,
            "attn_span": 30, "jitter": False, "align_end": False},
    sources={"model": "vaest (nn.TransformerEncoder, pre-head embedding)", "inputs": "vaest (not ablated)",
             "standardize": "vaest (not ablated)",
             "motion": "off: docs/ablation.md (reference + motion within the seed spread)",
             "attn_span": "vaest; docs/ablation.md (reference + attn_span 30 helps)",
             "jitter": "off: docs/ablation.md (reference + jitter within the seed spread)",
             "align_end": "vaest (not ablated)"},
    doc="vaest's face model with a local attention span; motion inputs and window jitter stay available as "
        "settings but are off (they did not help in docs/ablation.md).")
