"""Per-frame predictions of a trained run, their evaluation, and the run folder conventions.

A run folder (``vaest train ... --out RUN``) holds ``model.pt`` (best checkpoint), ``config.yaml`` and
``versions.yaml`` (resolved settings), ``run.json`` (modality, corpus and feature paths), ``metrics.json``
(validation CCC) and ``preds/<video>.npz``: per-frame predictions of every video of every split in the
feature-store format (key ``pred``: ``values`` (n_frames, 2) VA on the frame grid, ``mask`` frames where the
modality had data, extra ``emb`` (n_frames, H) the exported embedding). Fusion and evaluation read only these.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vaest.corpus import Corpus
from vaest.errors import FeatureError, VaestError
from vaest.features.store import FeatureRecord, FeatureStore, StoredArray
from vaest.io import atomic_write_json
from vaest.metrics import va_ccc
from vaest.timebase import TimeBase, TimeSeries

log = logging.getLogger(__name__)

PRED_KEY = "preds"


def pred_store(run_dir: str | Path) -> FeatureStore:
    return FeatureStore(Path(run_dir))


def save_predictions(run_dir: str | Path, video_id: str, va: np.ndarray, fps: float, emb: np.ndarray | None = None,
                     mask: np.ndarray | None = None, extras: dict[str, np.ndarray] | None = None,
                     meta: dict[str, Any] | None = None) -> None:
    """Store per-frame predictions of one video.

    Args:
        va: (n_frames, 2) valence/arousal on the video's frame grid.
        fps: the frame rate of that grid.
        emb: (n_frames, H) embedding exported for fusion, optional.
        mask: (n_frames,) True where the modality had real input (False where filled or missing).
        extras: further per-frame arrays (fusion weights, reliabilities).
    """
    ex = dict(extras or {})
    if emb is not None:
        ex["emb"] = np.asarray(emb, dtype=np.float32)
    rec = FeatureRecord(TimeSeries(np.asarray(va, dtype=np.float32), TimeBase.frames(fps), mask), ex, dict(meta or {}))
    pred_store(run_dir).save(PRED_KEY, video_id, rec)


def load_predictions(run_dir: str | Path, video_id: str) -> FeatureRecord:
    return pred_store(run_dir).load(PRED_KEY, video_id)


def run_finished(run_dir: str | Path) -> bool:
    """True when a training command finished writing ``run_dir`` (``run.json`` and ``metrics.json`` are written
    last), so a resumable pipeline can skip it."""
    return (Path(run_dir) / "metrics.json").exists() and (Path(run_dir) / "run.json").exists()


CROSSFIT_DIR = "crossfit"


def crossfit_dir(run: str | Path) -> Path:
    return Path(run) / CROSSFIT_DIR


def crossfit_source(run: str | Path, video_id: str) -> Path:
    """The folder to read ``video_id``'s predictions from for fusion training: ``RUN/crossfit`` when it holds
    that video's out-of-fold predictions, else ``RUN``."""
    cf = crossfit_dir(run)
    return cf if FeatureStore(cf).path(PRED_KEY, video_id).exists() else Path(run)


def write_run_json(run_dir: str | Path, **info: Any) -> None:
    atomic_write_json(Path(run_dir) / "run.json", {k: (str(v) if isinstance(v, Path) else v) for k, v in info.items()})


def read_run_json(run_dir: str | Path) -> dict[str, Any]:
    p = Path(run_dir) / "run.json"
    if not p.exists():
        raise VaestError(f"{run_dir}: not a vaest run folder (no run.json)")
    return json.loads(p.read_text())


def evaluate_predictions(run_dir: str | Path, corpus: Corpus, split: str = "val",
                         smooth: Any = None) -> dict[str, float]:
    """CCC over all concatenated labelled frames of ``split`` (valence, arousal, mean), and clip-level CCC
    (``clip_valence``, ``clip_arousal``, ``clip_mean`` over ``clips`` videos: per video the mean prediction vs
    the mean label over its labelled frames; what matters for corpora of short clips with one rating each).

    ``smooth`` optionally post-processes each video's (n, 2) predictions before scoring.
    """
    preds, labs = [], []
    missing = 0
    for v in corpus.split(split):
        if not v.has_labels:
            continue
        try:
            rec = load_predictions(run_dir, v.id)
        except VaestError:
            missing += 1
            continue
        p = rec.values
        if smooth is not None:
            p = smooth(p)
        preds.append(p)
        labs.append(v.labels_for(len(p)))
    if missing:
        log.warning("%s: %d %s videos have no predictions", run_dir, missing, split)
    nan = {"valence": math.nan, "arousal": math.nan, "mean": math.nan}
    if not preds:
        return {**nan, "frames": 0, **{f"clip_{k}": x for k, x in nan.items()}, "clips": 0}
    out: dict[str, float] = va_ccc(np.concatenate(preds), np.concatenate(labs))
    out["frames"] = int(np.isfinite(np.concatenate(labs)).all(1).sum())
    cp, cl = [], []
    for p, lab in zip(preds, labs):
        ok = np.isfinite(lab).all(1) & np.isfinite(p).all(1)
        if ok.any():
            cp.append(p[ok].mean(0))
            cl.append(lab[ok].mean(0))
    clip = va_ccc(np.array(cp), np.array(cl)) if len(cp) >= 2 else nan
    out.update({f"clip_{k}": clip[k] for k in ("valence", "arousal", "mean")})
    out["clips"] = len(cp)
    return out


# ---------------------------------------------------------------------------------------------------------
# One modality's per-frame predictions of one video (the unit fusion and the predictor combine)
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Track:
    """One modality's per-frame predictions of one video (from a run folder).

    Attributes:
        va: (n, 2) float32; mask: (n,) bool, real input; emb: (n, H) float32 or None; fps: frame rate;
        extras: other per-frame arrays of the record (``reliability``, ``weights``, ...).
    A track read from a run folder (:func:`load_track`) leaves ``emb`` on disk: a
    :class:`~vaest.features.store.StoredArray` that reads the rows asked for (``emb[:]`` for all of them).
    """

    va: np.ndarray
    mask: np.ndarray
    emb: "np.ndarray | StoredArray | None"
    fps: float
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.va)

    def resized(self, n: int) -> "Track":
        """The track cut or padded (masked, NaN) to ``n`` frames."""
        if n == len(self):
            return self

        def fit_len(a: Any, fill: Any) -> np.ndarray | None:
            if a is None:
                return None
            a = a[: min(len(a), n)]  # an array, also from a StoredArray (read here: the callers need it whole)
            if len(a) == n:
                return a
            pad = np.full((n - len(a),) + a.shape[1:], fill, dtype=a.dtype)
            return np.concatenate([a, pad])

        ex = {k: fit_len(v, 0) for k, v in self.extras.items() if np.ndim(v) >= 1 and len(v) == len(self)}
        return Track(fit_len(self.va, np.nan), fit_len(self.mask, False), fit_len(self.emb, 0), self.fps, ex)


def load_track(run: str | Path, video_id: str) -> Track | None:
    """The predictions of ``video_id`` in run folder ``run``; None when the run has none for that video.

    ``emb`` stays on disk (:class:`~vaest.features.store.StoredArray`, float32 as
    :func:`save_predictions` writes it): fusion training gathers its rows per window, so its memory does not
    grow with the corpus (256-d: 1 KB per frame). ``va`` (8 B/frame), the mask and the other extras are read."""
    try:
        rec = pred_store(run).open(PRED_KEY, video_id)
    except FeatureError:
        return None
    va = np.asarray(rec.values[:], dtype=np.float32)
    mask = np.asarray(rec.mask, dtype=bool) & np.isfinite(va).all(1)
    extras = {k: v[:] for k, v in rec.extras.items() if k != "emb"}
    emb = rec.extras.get("emb")
    if emb is not None and (emb.dtype != np.float32 or np.ndim(emb) != 2):
        emb = np.asarray(emb[:], dtype=np.float32)  # not as save_predictions writes it: read (and cast) whole
    return Track(va, mask, emb, 1.0 / rec.base.hop, extras)
