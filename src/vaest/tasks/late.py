"""Late fusion trained on a corpus (``vaest train late``): search per-dimension weights on the validation split
(:mod:`vaest.late_fusion`) and export every video's combined predictions as a run folder; its presets.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from vaest.config import write_run_info
from vaest.corpus import Video, load_corpus
from vaest.errors import VaestError
from vaest.inference import evaluate_predictions, load_track, save_predictions, write_run_json
from vaest.inputs.fusion import check_runs, stack_tracks
from vaest.inputs.settings import FusionInputs, inference_record
from vaest.io import atomic_write_json
from vaest.late_fusion import LATE_METHODS, late_combine, reference_subset_search, search_weights
from vaest.presets import get_preset, preset_record, register_preset
from vaest.progress import track

log = logging.getLogger(__name__)



def _late_inputs(runs: dict[str, Path], video: Video) -> tuple[np.ndarray, np.ndarray, float] | None:
    """(n, S, 2) predictions, (n, S) presence and fps of one video over the sets (None when no set has it)."""
    return stack_tracks({m: load_track(r, video.id) for m, r in runs.items()})


def export_late(runs: dict[str, Path], weights: dict[str, np.ndarray], videos: list[Video], out: Path) -> None:
    """Write ``out/preds/<video>.npz``: the runs' predictions of each video combined with ``weights``
    ({run: (2,) [w_valence, w_arousal]}; extras ``weights`` (n, S, 2), the effective per-frame weights)."""
    names = list(runs)
    W = np.stack([np.asarray(weights[m], dtype=np.float64) for m in names])
    for v in track(videos, f"late fusion {out.name}"):
        got = _late_inputs(runs, v)
        if got is None:
            log.warning("%s: no predictions in any of the runs; skipped", v.id)
            continue
        P, M, fps = got
        va, eff = late_combine(P, M, W)
        save_predictions(out, v.id, va, fps, mask=M.any(1), extras={"weights": eff},
                         meta={"weight_names": names})


def late_fusion(runs: dict[str, str | Path], corpus_root: str | Path, out: str | Path, method: str = "dirichlet",
                n_samples: int = 8000, seed: int = 0, step: float = 0.05,
                preset: str | None = None) -> dict[str, Any]:
    """Search per-dimension late-fusion weights on the validation split and write a run folder.

    Args:
        runs: set name -> run folder (modality or fusion runs).
        corpus_root: corpus with validation labels.
        out: run folder: preds/ for every video of every split (extras ``weights`` (n, S, 2), the effective
            per-frame weights), run.json (``modality: "late"``, ``weights`` {set: [w_valence, w_arousal]}),
            metrics.json, config.yaml, versions.yaml.
        method: ``dirichlet`` (``n_samples`` seeded samples), ``grid`` (simplex step ``step``) or ``reference``
            (:func:`reference_subset_search`: the best subset of 1-3 sets, fitted on the validation frames every
            set predicts, as the official script with its default ``--fit-split val``; sets outside the subset
            get weight 0; run.json adds ``subset`` and ``leaderboard``).
        preset: the preset name the settings came from (recorded in run.json).
    Returns:
        {"weights": {set: [w_v, w_a]}, "metrics": validation CCC}.
    """
    out = Path(out)
    runs_p = check_runs(runs)
    corpus = load_corpus(corpus_root)
    if method not in LATE_METHODS:
        raise VaestError(f"unknown late-fusion method {method!r}; choose one of {', '.join(LATE_METHODS)}")
    settings = {"method": method, "runs": {k: str(v) for k, v in runs_p.items()}, "corpus": str(corpus_root),
                "n_samples": n_samples, "seed": seed, "step": step, "preset": preset}
    write_run_info(out, f"vaest train late --method {method}", settings)
    Ps, Ms, Ys = [], [], []
    for v in corpus.split("val"):
        if not v.has_labels:
            continue
        got = _late_inputs(runs_p, v)
        if got is None:
            continue
        P, M, _ = got
        Ps.append(P)
        Ms.append(M)
        Ys.append(v.labels_for(len(P)))
    if not Ps:
        raise VaestError(f"{corpus_root}: no labelled validation video has predictions in the runs")
    extra: dict[str, Any] = {}
    if method == "reference":
        P, M, Y = np.concatenate(Ps), np.concatenate(Ms), np.concatenate(Ys)
        ok = M.all(1) & np.isfinite(P).all((1, 2)) & np.isfinite(Y).all(1)  # frames every set predicts
        if not ok.any():
            raise VaestError(f"{corpus_root}: no labelled validation frame has a prediction from every run")
        board = reference_subset_search({m: P[ok, i] for i, m in enumerate(runs_p)}, Y[ok], step=step,
                                        n_samples=n_samples, seed=seed)
        W = np.zeros((len(runs_p), 2))
        for i, m in enumerate(board[0].sets):
            W[list(runs_p).index(m)] = board[0].weights[i]
        best = np.array([board[0].ccc["valence"], board[0].ccc["arousal"]])
        extra["subset"] = list(board[0].sets)
        extra["leaderboard"] = [{"sets": list(r.sets), "weights": r.weights.tolist(), **r.ccc} for r in board[:30]]
    else:
        W, best = search_weights(np.concatenate(Ps), np.concatenate(Ms), np.concatenate(Ys), method, n_samples,
                                 seed, step)
    weights = {m: [float(W[i, 0]), float(W[i, 1])] for i, m in enumerate(runs_p)}
    log.info("late fusion weights (valence, arousal): %s", {m: [round(x, 3) for x in w] for m, w in weights.items()})
    export_late(runs_p, {m: np.asarray(w) for m, w in weights.items()}, corpus.videos, out)
    scores = evaluate_predictions(out, corpus, "val")
    metrics = {k: scores[k] for k in ("valence", "arousal", "mean")}
    atomic_write_json(out / "metrics.json", metrics)
    write_run_json(out, modality="late", method=method, corpus=str(corpus_root), features=settings["runs"],
                   runs=settings["runs"], weights=weights, weight_names=list(runs_p),
                   search_ccc={"valence": float(best[0]), "arousal": float(best[1])},
                   preset=preset_record(get_preset("late", preset)),
                   inference=inference_record(FusionInputs(tuple(runs_p), True, weights)), **extra)
    return {"weights": weights, "metrics": metrics}

_LATE = "src_audio_and_fusion/scripts/predictions_fusion.py"

REFERENCE_LATE: dict[str, tuple[Any, str]] = {
    "method": ("reference", f"{_LATE} search_for_subset (subsets of 1-3 sets, grid / paired Dirichlet)"),
    "step": (0.05, f"{_LATE} --pair-grid-step"),
    "n_samples": (8000, "src_audio_and_fusion/README.md step 10 --dirichlet-samples 8000 (script default 5000)"),
    "seed": (42, f"{_LATE} --seed default"),
}


def _register_presets() -> None:
    register_preset("late", "reference", {k: v for k, (v, _) in REFERENCE_LATE.items()},
                    {k: src for k, (_, src) in REFERENCE_LATE.items()},
                    "the official late-fusion subset search, fitted on the validation split (--fit-split val)")
    register_preset("late", "vaest", {"method": "dirichlet", "n_samples": 8000, "seed": 0},
                    {k: "vaest: per-dimension weights over all sets, renormalised where a set is missing"
                     for k in ("method", "n_samples", "seed")},
                    "vaest's late fusion: one weighting of all sets")


_register_presets()
