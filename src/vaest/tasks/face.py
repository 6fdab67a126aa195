"""Face task: train a temporal model (or the per-frame baseline) on stored face features; export a run folder.

Inputs per frame: the encoder's embedding, its expression probabilities and the detector confidence
(``face-<encoder>`` record). Frames with no face take the nearest face frame's embedding and probabilities
(the reference rule) and keep confidence 0, so the model can tell filled frames from seen ones. Inputs are
standardised with train-split statistics, which travel in the checkpoint (``extra["norm"]``). Frames labelled
-5 are masked out of the loss. The run folder follows :mod:`vaest.inference`.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vaest.corpus import Corpus, Video, load_corpus
from vaest.errors import FeatureError, VaestError
from vaest.features.store import FeatureRecord, FeatureStore
from vaest.timebase import TimeBase, fill_nearest
from vaest.training import Sequence, SequenceTask, TrainConfig, concat_frame_ccc, fit

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
    """

    encoder: str = "fer"
    model: str = "face-transformer"
    win: int = 400
    hop: int = 150
    model_config: dict[str, Any] = field(default_factory=dict)
    train_split: str = "train"
    val_split: str = "val"


def face_inputs(rec: FeatureRecord) -> tuple[np.ndarray, np.ndarray]:
    """Unstandardised per-frame inputs of one video from its ``face-<encoder>`` record.

    Returns:
        x (n_frames, D + C + 1) float32 = [embedding, probabilities (filled from the nearest face frame),
        confidence (0 where no face)]; NaN rows only when the video has no face at all.
        found (n_frames,) bool, the face mask.
    """
    found = np.asarray(rec.mask, bool) & np.isfinite(rec.values).all(1)
    parts = [np.asarray(rec.values, np.float32)]
    if "probs" in rec.extras:
        parts.append(np.asarray(rec.extras["probs"], np.float32))
    feats = fill_nearest(np.concatenate(parts, axis=1), found)
    conf = np.asarray(rec.extras.get("conf", found.astype(np.float32)), np.float32).reshape(-1, 1)
    conf = np.where(found[:, None], np.nan_to_num(conf), 0.0).astype(np.float32)
    return np.concatenate([feats, conf], axis=1).astype(np.float32), found


def fit_norm(xs: list[np.ndarray], founds: list[np.ndarray]) -> dict[str, list[float]]:
    """Per-column mean and std over the face frames of the given videos (std floored at 1e-6)."""
    rows = [x[f] for x, f in zip(xs, founds) if f.any()]
    if not rows:
        raise FeatureError("no training frame has a face: cannot fit the feature normalisation")
    allx = np.concatenate(rows).astype(np.float64)
    return {"mean": allx.mean(0).tolist(), "std": np.maximum(allx.std(0), 1e-6).tolist()}


def apply_norm(x: np.ndarray, norm: dict[str, list[float]]) -> np.ndarray:
    """Standardise (n, D) inputs; rows that are still NaN (video without any face) become 0 (the train mean)."""
    z = (x - np.asarray(norm["mean"], np.float32)) / np.asarray(norm["std"], np.float32)
    return np.nan_to_num(z, nan=0.0).astype(np.float32)


def load_face_sequences(videos: list[Video], store: FeatureStore, encoder: str
                        ) -> tuple[list[tuple[Video, np.ndarray, np.ndarray, float]], list[str]]:
    """(video, raw inputs, face mask, fps) for every video with stored features, and the ids without."""
    key = f"face-{encoder}"
    out, missing = [], []
    for v in videos:
        if not store.has(key, v.id):
            missing.append(v.id)
            continue
        rec = store.load(key, v.id)
        x, found = face_inputs(rec)
        out.append((v, x, found, float(rec.base.rate)))
    return out, missing


def to_sequence(v: Video, x: np.ndarray, fps: float) -> Sequence:
    """A :class:`vaest.training.Sequence` on the frame grid with the video's labels (NaN where invalid)."""
    labels = v.labels_for(len(x)) if v.has_labels else np.full((len(x), 2), np.nan, np.float32)
    return Sequence(id=v.id, inputs={"x": x}, target=labels, base=TimeBase.frames(fps), n_frames=len(x), fps=fps,
                    frame_labels=labels if v.has_labels else None)


def train_face(corpus_root: str | Path, features: str | Path, out: str | Path, encoder: str = "fer",
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
    from vaest.models import create_model, load_checkpoint

    st = dataclasses.replace(settings or FaceTrainSettings(), encoder=encoder, model=model)
    cfg = train_cfg or TrainConfig()
    out = Path(out)
    corpus: Corpus = load_corpus(corpus_root)
    store = FeatureStore(features)
    loaded, missing = load_face_sequences(list(corpus), store, st.encoder)
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
    norm = fit_norm([t[1] for t in train], [t[2] for t in train])
    seq = {t[0].id: to_sequence(t[0], apply_norm(t[1], norm), t[3]) for t in loaded}
    task = SequenceTask([seq[t[0].id] for t in train], [seq[t[0].id] for t in val], st.win, st.hop)
    input_dim = int(next(iter(seq.values())).inputs["x"].shape[1])
    from vaest.training import seed_everything

    seed_everything(cfg.seed)  # same seed, same initial weights: a rerun reproduces the run
    net = create_model(st.model, input_dim=input_dim, **st.model_config)
    n_params = sum(p.numel() for p in net.parameters())
    log.info("face %s on face-%s (%d inputs, %d parameters): %d train / %d val videos, %d train windows",
             st.model, st.encoder, input_dim, n_params, len(train), len(val), len(task.index))
    write_run_info(out, command, {"settings": dataclasses.asdict(st), "train": dataclasses.asdict(cfg),
                                  "corpus": str(corpus_root), "features": str(features)})
    extra = {"norm": norm, "inputs": {"store_key": f"face-{st.encoder}", "layout": ["emb", "probs", "conf"],
                                      "dim": input_dim}, "win": st.win, "hop": st.hop}
    res = fit(net, task, cfg, out, extra=extra)
    best, _ = load_checkpoint(out / "model.pt", cfg.device)
    pairs = []
    for v, x, found, fps in loaded:
        s = seq[v.id]
        pred = task.predict_frames(best, s, cfg.device)
        save_predictions(out, v.id, pred["va"], fps, emb=pred.get("emb"), mask=found,
                         meta={"modality": "face", "encoder": st.encoder, "model": st.model, "split": v.split})
        if v.split == st.val_split and s.frame_labels is not None:
            pairs.append((pred["va"], s.frame_labels))
    metrics = concat_frame_ccc(pairs)
    atomic_write_json(out / "metrics.json", metrics)
    write_run_json(out, modality="face", corpus=Path(corpus_root), features=Path(features), encoder=st.encoder,
                   model=st.model, store_key=f"face-{st.encoder}", val_split=st.val_split)
    log.info("face %s: validation CCC valence %.4f arousal %.4f mean %.4f (best epoch %d, %.0f s)", st.model,
             metrics["valence"], metrics["arousal"], metrics["mean"], res.best_epoch, res.seconds)
    return {"metrics": metrics, "best_epoch": res.best_epoch, "seconds": res.seconds, "run": str(out),
            "videos": {s: sum(1 for t in loaded if t[0].split == s) for s in corpus.splits}}


def settings_from(file_cfg: dict[str, Any], flags: dict[str, Any]) -> tuple[FaceTrainSettings, TrainConfig]:
    """Split a run config (YAML mapping, then CLI flags; None flags ignored) into face settings and training
    settings. Keys may be flat or grouped under ``settings:`` / ``train:``."""
    from vaest.config import build

    s_names = {f.name for f in dataclasses.fields(FaceTrainSettings)}
    t_names = {f.name for f in dataclasses.fields(TrainConfig)}
    s_src: dict[str, Any] = dict(file_cfg.get("settings") or {})
    t_src: dict[str, Any] = dict(file_cfg.get("train") or {})
    for src in (file_cfg, flags):
        for k, v in src.items():
            if k in ("settings", "train") or v is None:
                continue
            key = k.replace("-", "_")
            if key in s_names:
                s_src[key] = v
            elif key in t_names:
                t_src[key] = v
            else:
                raise VaestError(f"unknown setting {k!r} for face training; known: {', '.join(sorted(s_names | t_names))}")
    return build(FaceTrainSettings, s_src), build(TrainConfig, t_src)
