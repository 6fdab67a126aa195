"""Cross-fitting: out-of-fold predictions of the train split, so that fusion learns from honest inputs.

Why: a modality model predicts the videos it was trained on far better than unseen ones (in the demo the face
Transformer reaches mean CCC ~0.87 on its own training videos and ~0.6 on validation). A fusion model fitted on
those in-sample predictions learns to trust whichever modality over-fits most and then misweights the
modalities on new videos. Cross-fitting (stacked generalisation with out-of-fold predictions) fixes this: the
train videos are split into K folds; for each fold a model with the same settings is trained on the other
folds (the validation split still selects its epoch) and predicts the held-out fold. The fusion then trains on
predictions each of which comes from a model that never saw that video, while validation, test and inference
keep using the full model. Videos sharing one media file (the ``_left`` / ``_right`` tracks of a two-person
video) always fall in the same fold.

Layout written under ``RUN/crossfit/`` (``RUN`` = the full modality run)::

    crossfit.json      folds (video ids per fold), seed, split, finished folds
    folds/<k>/         the run folder of fold k's model (trained without fold k)
    preds/<id>.npz     the out-of-fold predictions of every train video (from the fold that held it out)
    <key>/<id>.npz     the fold run's other per-video records for the same videos (e.g. ``audio-tokens``)

Embeddings: fold models are separate networks, so their exported embeddings (``emb`` of ``preds``, the values
of ``audio-tokens``) live in different coordinates from the full model's, which the fusion reads at validation
and inference time. Before the copy, each fold's embeddings are mapped into the full model's space by a ridge
least-squares linear map fitted on the frames of every video that fold did not hold out (no labels used: it
only relates two representations of the same frames); the fit's R^2 is recorded in ``crossfit.json``. VA
predictions are copied as they are.

Each fold's run and each copied file are written atomically; a rerun skips finished folds.
:func:`vaest.inputs.fusion.build_fusion_data` reads ``RUN/crossfit`` for train-split videos when it is there
(:func:`vaest.inference.crossfit_source`).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np

from vaest.corpus import Corpus, Video, load_corpus
from vaest.errors import VaestError
from vaest.features.store import FeatureRecord, FeatureStore
from vaest.inference import PRED_KEY, crossfit_dir, run_finished
from vaest.io import atomic_path, atomic_write_json
from vaest.timebase import TimeSeries

log = logging.getLogger(__name__)

HOLDOUT = "holdout"

TrainFn = Callable[[Corpus, Path], Any]


def fold_assignment(videos: list[Video], folds: int, seed: int = 0) -> list[list[str]]:
    """Split labelled videos into ``folds`` groups of video ids, balanced by labelled frames.

    Tracks on one media file stay together; groups are shuffled with ``seed`` and each goes to the fold with
    the fewest frames so far (largest groups first), so the result is deterministic and balanced.
    """
    if folds < 2:
        raise VaestError(f"cross-fitting needs at least 2 folds, got {folds}")
    groups: dict[str, list[Video]] = {}
    for v in videos:
        groups.setdefault(str(v.media) if v.media is not None else v.id, []).append(v)
    if len(groups) < folds:
        raise VaestError(f"cross-fitting with {folds} folds needs at least {folds} training media, "
                         f"found {len(groups)}")
    keys = sorted(groups)
    rng = np.random.default_rng(seed)
    keys = [keys[i] for i in rng.permutation(len(keys))]
    size = {k: sum(v.n_label_frames or 1 for v in groups[k]) for k in keys}
    keys.sort(key=lambda k: -size[k])  # stable: ties keep the shuffled order
    out: list[list[str]] = [[] for _ in range(folds)]
    load = [0] * folds
    for k in keys:
        f = int(np.argmin(load))
        out[f].extend(v.id for v in groups[k])
        load[f] += size[k]
    return out


# store key -> where that record keeps the model's embedding ("emb" extra, or the values themselves)
EMBEDDINGS = {PRED_KEY: "emb", "audio-tokens": "values"}


def _embedding(rec: FeatureRecord, where: str) -> np.ndarray | None:
    x = rec.extras.get("emb") if where == "emb" else rec.values
    return None if x is None or np.ndim(x) < 2 else np.asarray(x, dtype=np.float64)


def fit_alignment(src: FeatureStore, dst: FeatureStore, key: str, video_ids: list[str],
                  ridge: float = 1e-3) -> tuple[np.ndarray, float] | None:
    """Linear map from ``src``'s embedding space to ``dst``'s for records ``key``, fitted on ``video_ids``.

    Returns ``(W, r2)``: W (H_src + 1, H_dst) applied as ``[emb, 1] @ W`` (ridge ``ridge`` x mean diagonal),
    and the R^2 of the fit; None when no video has both embeddings.
    """
    where = EMBEDDINGS[key]
    xs, ys = [], []
    for vid in video_ids:
        if not (src.path(key, vid).exists() and dst.path(key, vid).exists()):
            continue
        a, b = _embedding(src.load(key, vid), where), _embedding(dst.load(key, vid), where)
        if a is None or b is None or a.shape[:-1] != b.shape[:-1]:
            continue
        a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
        ok = np.isfinite(a).all(1) & np.isfinite(b).all(1)
        xs.append(a[ok])
        ys.append(b[ok])
    if not xs or not sum(len(x) for x in xs):
        return None
    x = np.concatenate(xs)
    y = np.concatenate(ys)
    x1 = np.concatenate([x, np.ones((len(x), 1))], 1)
    gram = x1.T @ x1
    reg = ridge * np.trace(gram) / len(gram) * np.eye(len(gram))
    reg[-1, -1] = 0.0  # the bias is not shrunk
    w = np.linalg.solve(gram + reg, x1.T @ y)
    resid = ((x1 @ w - y) ** 2).sum()
    total = ((y - y.mean(0)) ** 2).sum()
    return w, float(1.0 - resid / max(total, 1e-12))


def _aligned(rec: FeatureRecord, key: str, w: np.ndarray) -> FeatureRecord:
    """``rec`` with its embedding mapped by ``w`` (see :func:`fit_alignment`)."""
    where = EMBEDDINGS[key]
    x = _embedding(rec, where)
    if x is None:
        return rec
    flat = x.reshape(-1, x.shape[-1])
    y = (np.concatenate([flat, np.ones((len(flat), 1))], 1) @ w).astype(np.float32)
    y = y.reshape(x.shape[:-1] + (w.shape[1],))
    y[~np.isfinite(x).all(-1)] = np.nan
    if where == "emb":
        return FeatureRecord(rec.series, {**rec.extras, "emb": y}, rec.meta, rec.config_hash)
    return FeatureRecord(TimeSeries(y, rec.base, rec.mask), rec.extras, rec.meta, rec.config_hash)


def _copy_atomic(src: Path, dst: Path) -> None:
    with atomic_path(dst, suffix=".tmp.npz") as tmp:
        shutil.copyfile(src, tmp)


def crossfit(train: TrainFn, corpus_root: str | Path | Corpus, run: str | Path, folds: int = 2, seed: int = 0,
             split: str = "train") -> Path:
    """Out-of-fold predictions of ``split`` for the modality run ``run``; returns ``RUN/crossfit``.

    Args:
        train: ``train(corpus, out)`` trains the modality with the full run's settings on ``corpus``'s train
            split and writes a run folder at ``out`` with predictions of every video (e.g. a closure over
            :func:`vaest.tasks.face.train_face`). Held-out videos are moved to the split ``holdout``, so the
            training functions neither train nor select on them but still predict them.
        corpus_root: the corpus the full run was trained on.
        run: the full run folder (the result goes to ``run/crossfit``).
        folds: K (2 halves the cost of each fold model; 5 is the usual choice when time allows).
        seed: fold assignment seed.
    """
    corpus = load_corpus(corpus_root)
    videos = [v for v in corpus.split(split) if v.has_labels]
    out = crossfit_dir(run)
    out.mkdir(parents=True, exist_ok=True)
    info_path = out / "crossfit.json"
    assignment = fold_assignment(videos, folds, seed)
    if info_path.exists():
        old = json.loads(info_path.read_text())
        if old.get("folds") != assignment:
            raise VaestError(f"{info_path}: an earlier cross-fit used other folds (different videos, K or seed); "
                             "remove that folder to start again")
    info: dict[str, Any] = {"folds": assignment, "seed": seed, "split": split, "finished": [], "alignment_r2": {}}
    full_store = FeatureStore(run)
    atomic_write_json(info_path, info)
    for k, held in enumerate(assignment):
        fold_run = out / "folds" / str(k)
        if run_finished(fold_run):
            log.info("cross-fit %s: fold %d/%d already trained", Path(run).name, k + 1, folds)
        else:
            log.info("cross-fit %s: fold %d/%d, training without %d videos (%s)", Path(run).name, k + 1, folds,
                     len(held), ", ".join(held[:4]) + (" ..." if len(held) > 4 else ""))
            train(corpus.with_splits({vid: HOLDOUT for vid in held}), fold_run)
        fold_store, out_store = FeatureStore(fold_run), FeatureStore(out)
        shared = [v.id for v in corpus if v.id not in held]
        for key in fold_store.extractors():
            fit = fit_alignment(fold_store, full_store, key, shared) if key in EMBEDDINGS else None
            if fit is not None:
                info["alignment_r2"].setdefault(key, []).append(round(fit[1], 4))
                log.info("cross-fit %s: fold %d %s embeddings mapped to the full model's (R^2 %.3f on %d "
                         "videos)", Path(run).name, k, key, fit[1], len(shared))
            for vid in held:
                src = fold_store.path(key, vid)
                if not src.exists():
                    continue
                if fit is None:
                    _copy_atomic(src, out_store.path(key, vid))
                else:
                    out_store.save(key, vid, _aligned(fold_store.load(key, vid), key, fit[0]))
        missing = [vid for vid in held if not out_store.path(PRED_KEY, vid).exists()]
        if missing:
            log.warning("cross-fit %s: fold %d wrote no predictions for %s", Path(run).name, k, ", ".join(missing))
        info["finished"].append(k)
        atomic_write_json(info_path, info)
    return out


__all__ = ["HOLDOUT", "crossfit", "fold_assignment"]
