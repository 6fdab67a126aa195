"""End to end: trained runs applied to new media (``vaest predict``) and the whole method on a synthetic corpus
(``vaest demo``).

A *model bundle* is a folder with ``bundle.json``: the run folders of each modality, the fusion run, the
post-processing kernels and the extractors they need (paths relative to the bundle). ``vaest demo`` writes one
(``OUT/model``); ``vaest predict --model BUNDLE`` reads it. A single run folder (``run.json``) also works as a
model: its modality alone is applied. Prediction itself lives in :mod:`vaest.predictor` (the Python API) and
:mod:`vaest.apply` (trained models as objects); :func:`predict` here is the CLI's thin wrapper over them.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vaest.apply import MODALITIES, Bundle
from vaest.corpus import Video
from vaest.errors import VaestError
from vaest.features.base import default_extractors
from vaest.features.store import FeatureStore
from vaest.inference import load_predictions, run_finished
from vaest.io import atomic_write_json, atomic_write_text
from vaest.postprocess import REFERENCE_KERNELS, postprocess

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------------
# Extraction of every modality in one decoding pass
# ---------------------------------------------------------------------------------------------------------


def extract_all(videos: Sequence[Video], store: FeatureStore, extractors: list | None = None,
                engine: str = "local", address: str | None = None, num_workers: int | None = None,
                file_timeout: float | None = None):
    """Extract all default modalities for ``videos`` (frames decoded once per media file); returns the report."""
    from vaest.scale import run_extraction

    return run_extraction(store, extractors or default_extractors(), list(videos), engine=engine, address=address,
                          num_workers=num_workers, file_timeout=file_timeout)


def predict(paths: Sequence[str | Path], out: str | Path, model: str | Path | None = None,
            device: str = "auto", fill: bool = False, force: bool = False, progress: bool = True,
            plot: bool = True, people: str | int = "main", html: bool = False, face_backbone: str | None = None,
            audio_backbone: str | None = None, engine: str = "local", address: str | None = None,
            workers: int | None = None, gpus_per_worker: float = 0.0, file_timeout: float | None = None,
            rows: bool = False, working_side: int | None = None) -> Any:
    """Run vaest on media files, folders or globs; a thin wrapper over :class:`vaest.predictor.Predictor` and
    :func:`vaest.predictor.predict_many` (``OUT/<relative path>.csv|.json|.png`` and ``OUT/index.csv``); photos
    give one row per face (:mod:`vaest.photos`). ``working_side``: the working resolution (None: the default).

    ``html`` also writes a viewer page per input and ``OUT/index.html``; ``face_backbone`` picks the zero-shot
    face encoder, ``audio_backbone`` a speech-emotion model as the zero-shot voice (see
    :class:`~vaest.predictor.Predictor`).
    Features are cached under ``OUT/.features/<media identity>`` (``force`` recomputes them and redoes inputs
    already predicted into ``out``). ``engine="ray"`` (with ``address``, ``workers``, ``gpus_per_worker``,
    ``file_timeout``) spreads the files over Ray workers (:func:`vaest.predictor.predict_many`). Returns input
    path -> CSV path for this run's inputs that succeeded (``rows``: the run's index rows instead).
    """
    from vaest.predictor import Predictor, predict_many

    out = Path(out)
    kwargs = dict(model=model, device=device, progress=progress, cache=out / ".features", fill=fill, force=force,
                  people=people, face_backbone=face_backbone, audio_backbone=audio_backbone,
                  working_side=working_side)
    # the Ray engine builds its Predictors in the workers: none is loaded here
    pr: Any = Predictor(**kwargs) if engine == "local" else kwargs
    got = predict_many(paths, out, pr, plot=plot, html=html, engine=engine, address=address, workers=workers,
                       gpus_per_worker=gpus_per_worker, file_timeout=file_timeout)
    return got if rows else {r["input"]: out / r["csv"] for r in got if r["status"] == "ok"}


# ---------------------------------------------------------------------------------------------------------
# The demo: the whole method on a fresh synthetic corpus
# ---------------------------------------------------------------------------------------------------------


@dataclass
class DemoConfig:
    """Size and training budget of ``vaest demo`` (defaults finish in well under 15 minutes on 2 CPU cores).

    The corpus has three splits: ``train`` fits the models, ``val`` chooses everything that is chosen (early
    stopping, the best fusion, late-fusion weights, smoothing kernels) and ``test`` is only scored. 14 videos give
    8 / 3 / 3 (``test_fraction`` 0 gives the old train / val corpus, scored on val)."""

    videos: int = 14
    seconds: float = 30.0
    seed: int = 0
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    workers: int = 2
    face_epochs: int = 12
    audio_epochs: int = 12
    behavior_epochs: int = 25
    fusion_epochs: int = 12
    early_stop: int = 5
    # Fusion learning rate: RAAV at this rate, DCMMoE at half of it (None = the reference rates, RAAV 5e-5 and
    # DCMMoE 1e-4). With the prediction skip both fusions start from the prior-weighted average of the modality
    # predictions; the demo's 12 epochs move RAAV's gate too little at 5e-5, hence 2e-4 (DCMMoE: 1e-4, the
    # reference). DCMMoE runs narrower than the reference (d_model 256) to fit the CPU budget.
    fusion_lr: float | None = 2e-4
    dcmmoe_d_model: int = 128
    # No dropout on DCMMoE's attention weights: on CPU it forces the materialised attention (3.5x the cost of a
    # training step) and changed the demo's validation CCC by < 3e-4 per epoch (docs/performance.md)
    dcmmoe_attn_dropout: float = 0.0
    # Out-of-fold predictions of the train videos for fusion training (vaest.tasks.crossfit); 0 = fusion learns
    # from the modality models' in-sample predictions, which flatter the model that over-fits most.
    crossfit_folds: int = 2


def _masked_ccc(runs: dict[str, Path], modality_runs: dict[str, Path], videos: list[Video]) -> dict[str, dict]:
    """CCC of each run over the validation frames where the face or the voice is missing (the hard frames)."""
    from vaest.metrics import va_ccc

    out: dict[str, dict] = {}
    sel: dict[str, np.ndarray] = {}
    for v in videos:
        masks = []
        for m in ("face", "audio"):
            if m in modality_runs:
                try:
                    masks.append(~load_predictions(modality_runs[m], v.id).mask)
                except VaestError:
                    continue
        if masks:
            n = min(len(x) for x in masks)
            sel[v.id] = np.logical_or.reduce([x[:n] for x in masks])
    for name, run in runs.items():
        P, Y = [], []
        for v in videos:
            if v.id not in sel:
                continue
            try:
                rec = load_predictions(run, v.id)
            except VaestError:
                continue
            n = min(len(rec.values), len(sel[v.id]))
            keep = sel[v.id][:n]
            P.append(np.nan_to_num(rec.values[:n][keep]))
            Y.append(v.labels_for(len(rec.values))[:n][keep])
        if P:
            s = va_ccc(np.concatenate(P), np.concatenate(Y))
            s["frames"] = int(np.isfinite(np.concatenate(Y)).all(1).sum())
            out[name] = s
    return out


def _plain_average(modality_runs: dict[str, Path], corpus_root: Path, videos: list[Video], out: Path) -> None:
    """Equal-weight, mask-aware average of the modality predictions (the baseline fusion has to beat)."""
    from vaest.config import write_run_info
    from vaest.inference import write_run_json
    from vaest.tasks.late import export_late

    w = {m: np.array([1.0, 1.0]) for m in modality_runs}
    write_run_info(out, "plain average", {"runs": {k: str(v) for k, v in modality_runs.items()}})
    export_late(dict(modality_runs), w, videos, out)
    write_run_json(out, modality="late", method="average", corpus=str(corpus_root),
                   runs={k: str(v) for k, v in modality_runs.items()}, weights={m: [1.0, 1.0] for m in modality_runs},
                   weight_names=list(modality_runs))


def _fmt(x: Any) -> str:
    return "nan" if x is None or not math.isfinite(float(x)) else f"{float(x):.3f}"


def demo(out: str | Path, cfg: DemoConfig | None = None) -> dict[str, Any]:
    """synth -> extract all modalities -> train face, audio, behavior -> RAAV, DCMMoE, late fusion ->
    post-processing -> evaluate -> submission -> predict on one video. Writes ``OUT/report.md`` and
    ``OUT/metrics.json``. Every step skips what a previous run of the same command finished."""
    from vaest.config import write_run_info
    from vaest.corpus import load_corpus
    from vaest.io import remove_stale_temporaries
    from vaest.corpus.synthetic import synthesize
    from vaest.report import evaluate_runs, stage_scores, write_report
    from vaest.submission import read_submission, write_submission
    from vaest.tasks.audio import AudioTrainConfig, train_audio
    from vaest.tasks.behavior import behavior_train_config, train_behavior
    from vaest.tasks.crossfit import crossfit, fold_assignment
    from vaest.tasks.face import train_face
    from vaest.tasks.fusion import train_fusion
    from vaest.tasks.fusion_presets import default_train_config
    from vaest.tasks.late import late_fusion
    from vaest.training import TrainConfig
    import dataclasses

    cfg = cfg or DemoConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)  # left by a run killed midway
    write_run_info(out, "vaest demo", cfg)
    t_start, load_start = time.time(), os.getloadavg()[0]
    times: dict[str, float] = {}

    def step(name: str):
        class _T:
            def __enter__(self):
                self.t = time.time()
                log.info("demo: %s", name)

            def __exit__(self, *a):
                times[name] = round(time.time() - self.t, 1)

        return _T()

    corpus_dir = out / "corpus"
    with step("synth"):
        if not (corpus_dir / "synth.json").exists():
            synthesize(corpus_dir, n_videos=cfg.videos, seconds=cfg.seconds, seed=cfg.seed, workers=cfg.workers,
                       val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction)
    corpus = load_corpus(corpus_dir)
    feats = out / "features"
    store = FeatureStore(feats)
    with step("extract"):
        rep = extract_all(corpus.videos, store)
        if rep.failed:
            log.warning("demo: %d media failed extraction: %s", len(rep.failed), list(rep.failed))
    runs_dir = out / "runs"
    mod_runs = {m: runs_dir / m for m in MODALITIES}

    def tc(epochs: int, base: TrainConfig | None = None) -> TrainConfig:
        return dataclasses.replace(base or TrainConfig(), epochs=epochs, early_stop=cfg.early_stop, seed=cfg.seed)

    trainers = {
        "face": lambda c, o: train_face(c, feats, o, train_cfg=tc(cfg.face_epochs)),
        "audio": lambda c, o: train_audio(feats, c, o, AudioTrainConfig(epochs=cfg.audio_epochs,
                                                                         early_stop=cfg.early_stop, seed=cfg.seed)),
        "behavior": lambda c, o: train_behavior(c, feats, o, train_cfg=tc(cfg.behavior_epochs,
                                                                          behavior_train_config())),
    }
    for m in MODALITIES:
        with step(f"train {m}"):
            if not run_finished(mod_runs[m]):
                trainers[m](corpus, mod_runs[m])
    can_crossfit = bool(cfg.crossfit_folds)
    if can_crossfit:
        try:  # the one rule for enough training media: the fold assignment's own check
            fold_assignment([v for v in corpus.split("train") if v.has_labels], cfg.crossfit_folds, cfg.seed)
        except VaestError as e:
            log.warning("demo: %s; fusion trains on in-sample predictions", e)
            can_crossfit = False
    if can_crossfit:
        for m in MODALITIES:
            with step(f"crossfit {m}"):
                crossfit(trainers[m], corpus, mod_runs[m], folds=cfg.crossfit_folds, seed=cfg.seed)
    fusion_runs = {"raav": runs_dir / "raav", "dcmmoe": runs_dir / "dcmmoe"}
    for method, run in fusion_runs.items():
        with step(f"fusion {method}"):
            if not run_finished(run):
                ftc = tc(cfg.fusion_epochs, default_train_config(method))
                if cfg.fusion_lr:
                    ftc = dataclasses.replace(ftc, lr=cfg.fusion_lr if method == "raav" else cfg.fusion_lr / 2)
                train_fusion(mod_runs, corpus_dir, run, method, train_cfg=ftc, features_root=feats,
                             model_cfg={"d_model": cfg.dcmmoe_d_model, "attn_dropout": cfg.dcmmoe_attn_dropout}
                             if method == "dcmmoe" else None)
    late_run, avg_run = runs_dir / "late", runs_dir / "average"
    with step("late fusion"):
        if not run_finished(late_run):
            late_fusion(mod_runs, corpus_dir, late_run, "dirichlet", seed=cfg.seed)
        if not (avg_run / "run.json").exists():
            _plain_average(mod_runs, corpus_dir, corpus.videos, avg_run)
    all_runs = {**mod_runs, **fusion_runs, "late": late_run, "average": avg_run}
    # everything chosen is chosen on val (kernels per run included); test, when the corpus has one, is scored with
    # those choices fixed
    splits = ["val"] + (["test"] if any(v.has_labels for v in corpus.split("test")) else [])
    shown = splits[-1]
    with step("evaluate"):
        rows = {"val": evaluate_runs(list(all_runs.values()), corpus, "val")}
        chosen = {r["run"]: r["kernels"] for r in rows["val"] if r["stage"] == "smoothed"}
        if "test" in splits:
            rows["test"] = [r for run in all_runs.values()
                            for r in stage_scores(run, corpus, "test", chosen[str(run)])]
        write_report(rows[shown], list(all_runs.values()), out / "report", corpus, shown)
        hard = {s: _masked_ccc(all_runs, mod_runs, [v for v in corpus.split(s) if v.has_labels]) for s in splits}
    table: dict[str, dict[str, Any]] = {}
    for s in splits:
        for r in rows[s]:
            name = Path(r["run"]).name
            table.setdefault(name, {"modality": r["modality"]}).setdefault(s, {})[r["stage"]] = {
                k: r[k] for k in ("valence", "arousal", "mean")} | ({"kernels": r["kernels"]} if r["kernels"] else {})
    best_single = max(MODALITIES, key=lambda m: table[m]["val"]["raw"]["mean"])
    best_fusion = max(("raav", "dcmmoe"), key=lambda m: table[m]["val"]["raw"]["mean"])
    final_name = max(("raav", "dcmmoe", "late"), key=lambda m: table[m]["val"]["smoothed"]["mean"])
    kernels = tuple(table[final_name]["val"]["smoothed"].get("kernels") or REFERENCE_KERNELS)
    with step("submission"):
        preds = {}
        for v in corpus.split(shown):
            try:
                rec = load_predictions(all_runs[final_name], v.id)
            except VaestError:
                continue
            preds[v.id] = postprocess(rec.values, rec.mask, kernels)
        sub = out / "submission" / f"{shown}_predictions.csv"
        n_rows = write_submission(sub, preds)
        back = read_submission(sub)
        assert set(back) == set(preds)
    bundle = Bundle(out / "model", dict(mod_runs), fusion_runs[best_fusion], kernels)
    (out / "model").mkdir(exist_ok=True)
    bundle.save()
    with step("predict"):
        one = next(v for v in corpus.split(shown) if v.media is not None)
        predict([one.media], out / "predict", out / "model", html=True)
    metrics = {"splits": {s: {"videos": [v.id for v in corpus.split(s) if v.has_labels],
                              "frames": rows[s][0]["frames"] if rows[s] else 0} for s in splits},
               "chosen_on": "val", "reported": shown, "runs": table, "hard_frames": hard,
               "best_single": best_single, "best_fusion": best_fusion, "final": final_name,
               "kernels": list(kernels), "submission": sub.relative_to(out).as_posix(), "submission_rows": n_rows,
               "seconds": times, "total_seconds": round(time.time() - t_start, 1),
               "load": [round(load_start, 2), round(os.getloadavg()[0], 2)], "config": dataclasses.asdict(cfg)}
    atomic_write_json(out / "metrics.json", metrics)
    atomic_write_text(out / "report.md", _demo_report(metrics, out))
    log.info("demo finished in %.0f s: %s", sum(times.values()), out / "report.md")
    return metrics


def _demo_report(m: dict[str, Any], out: Path) -> str:
    """``OUT/report.md`` of one demo run: per-run CCC on the reported split with val beside it."""
    rep = m["reported"]
    c = m["config"]
    lines = ["# vaest demo report", "",
             f"Synthetic corpus: {c['videos']} videos x {c['seconds']:.0f} s (seed {c['seed']}); "
             + ", ".join(f"{s} {len(d['videos'])} videos / {d['frames']} frames" for s, d in m["splits"].items())
             + f". Everything chosen (epochs, best runs, late-fusion weights, kernels) is chosen on "
             f"{m['chosen_on']}; CCC over all concatenated frames of a split.", "",
             f"| run | kind | {rep} raw V | {rep} raw A | {rep} raw mean | {rep} smoothed V | {rep} smoothed A | "
             f"{rep} smoothed mean | val raw mean | val smoothed mean | kernels (chosen on val) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in m["runs"].items():
        raw, sm, vr, vs = r[rep]["raw"], r[rep]["smoothed"], r["val"]["raw"], r["val"]["smoothed"]
        lines.append(f"| {name} | {r['modality']} | {_fmt(raw['valence'])} | {_fmt(raw['arousal'])} | "
                     f"{_fmt(raw['mean'])} | {_fmt(sm['valence'])} | {_fmt(sm['arousal'])} | {_fmt(sm['mean'])} | "
                     f"{_fmt(vr['mean'])} | {_fmt(vs['mean'])} | {vs.get('kernels', '')} |")
    lines += ["", f"Frames where the face or the voice is missing ({rep}):", "",
              "| run | V | A | mean | frames |", "|---|---|---|---|---|"]
    for name, s in m["hard_frames"][rep].items():
        lines.append(f"| {name} | {_fmt(s['valence'])} | {_fmt(s['arousal'])} | {_fmt(s['mean'])} | {s['frames']} |")
    bs, bf = m["best_single"], m["best_fusion"]
    lines += ["", f"Chosen on val: best single modality **{bs}**, best learned fusion **{bf}**, final predictions "
              f"**{m['final']}** smoothed with kernels {m['kernels']} ({rep} smoothed mean "
              f"{_fmt(m['runs'][m['final']][rep]['smoothed']['mean'])}).", "",
              f"Submission ({rep} split, ABAW format): `{m['submission']}`, {m['submission_rows']} rows, "
              "validated by reading it back.", "",
              f"Per-stage plots and the stage table ({rep}): `report/report.md`. Prediction on one {rep} video with "
              "the trained bundle `model/`: `predict/` (open `predict/index.html`; stage pages: "
              "`report/index.html`).", "", "Time per step (s): " +
              ", ".join(f"{k} {v}" for k, v in m["seconds"].items()) + f"; total {m['total_seconds']:.0f} s.", ""]
    pngs = sorted(p.name for p in (out / "report").glob("*.png"))
    for p in pngs[:4]:
        lines.append(f"![{p}](report/{p})")
    preds = sorted((out / "predict").glob("*.png"))
    if preds:
        lines.append(f"![prediction](predict/{preds[0].name})")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------
# The README's demo table, generated from committed demo metrics (docs/demo/metrics-seed<N>.json)
# ---------------------------------------------------------------------------------------------------------

DEMO_RUNS = {
    "face": "face: FER encoder + Transformer",
    "audio": "voice: log-mel + attentive pooling, filtered",
    "behavior": "behavior: descriptors + Mamba",
    "raav": "reliability-aware fusion",
    "dcmmoe": "directed cross-modal fusion (vaest's experts)",
    "late": "late fusion (Dirichlet weights searched on val)",
    "average": "plain average of the modalities",
}
FUSIONS = ("raav", "dcmmoe", "late")
README_BEGIN = "<!-- demo-table:begin (generated by scripts/demo_table.py from docs/demo/*.json) -->"
README_END = "<!-- demo-table:end -->"


def demo_table(metrics: Sequence[dict[str, Any]]) -> str:
    """Markdown of the README's demo section from demo ``metrics.json`` files (one per seed, the first shown in
    full): per-run test CCC with val beside it; test smoothed mean per seed with mean and spread; which fusion
    beats every single modality on test in every seed (a claim made only when it holds in all seeds)."""
    if not metrics:
        return ("No demo metrics are committed yet (`docs/demo/` has no `metrics-seed<N>.json`), so no demo figure "
                "is stated here. To fill this table: `vaest demo demo_s<N> --seed <N>` for seeds 0, 1 and 2, copy each "
                "`demo_s<N>/metrics.json` to `docs/demo/metrics-seed<N>.json`, then `PYTHONPATH=src python "
                "scripts/demo_table.py`.")
    m0 = metrics[0]
    rep = m0["reported"]
    if any(m["reported"] != rep for m in metrics):
        raise VaestError("demo metrics report different splits; rerun them with the same settings")
    c = m0["config"]
    split_txt = ", ".join(f"{s} {len(d['videos'])} videos ({d['frames']} frames)" for s, d in m0["splits"].items())
    lines = [f"{rep.capitalize()} CCC of `make demo` (seed {c['seed']}: {c['videos']} videos x {c['seconds']:.0f} s; "
             f"{split_txt}; train the rest). Epochs, the best fusion, late-fusion weights and smoothing kernels are "
             f"all chosen on val; {rep} is only scored. Smoothed = nearest-fill, then the per-run kernels chosen "
             "on val.", "",
             f"| run | what it is | {rep} valence | {rep} arousal | {rep} mean (raw) | {rep} mean (smoothed) | "
             "val mean (raw) | val mean (smoothed) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, label in DEMO_RUNS.items():
        r = m0["runs"][name]
        t, v = r[rep], r["val"]
        lines.append(f"| {name} | {label} | {_fmt(t['smoothed']['valence'])} | {_fmt(t['smoothed']['arousal'])} | "
                     f"{_fmt(t['raw']['mean'])} | {_fmt(t['smoothed']['mean'])} | {_fmt(v['raw']['mean'])} | "
                     f"{_fmt(v['smoothed']['mean'])} |")
    seeds = [m["config"]["seed"] for m in metrics]
    lines += ["", f"{rep.capitalize()} mean CCC (smoothed) over {len(metrics)} seed(s) (each seed its own corpus "
              "and training):", "",
              "| run | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | sd | min |",
              "|---|" + "---|" * (len(seeds) + 3)]
    per: dict[str, np.ndarray] = {}
    for name in DEMO_RUNS:
        x = np.array([m["runs"][name][rep]["smoothed"]["mean"] for m in metrics], dtype=float)
        per[name] = x
        sd = float(x.std(ddof=1)) if len(x) > 1 else math.nan
        sd_cell = _fmt(sd) if len(x) > 1 else "–"  # one seed has no spread
        lines.append(f"| {name} | " + " | ".join(_fmt(v) for v in x) +
                     f" | {_fmt(x.mean())} | {sd_cell} | {_fmt(x.min())} |")
    best_single = np.max(np.stack([per[m] for m in MODALITIES]), axis=0)
    lines.append("")
    for f in FUSIONS:
        margin = per[f] - best_single
        wins = int((margin > 0).sum())
        verdict = ("beats every single modality in every seed" if wins == len(metrics) and len(metrics) >= 3
                   else f"beats every single modality in {wins} of {len(metrics)} seed(s)")
        lines.append(f"- {f} {verdict} on {rep} (margin over the best single modality of each seed: "
                     + ", ".join(f"{d:+.3f}" for d in margin) + ").")
    hard = m0.get("hard_frames", {}).get(rep, {})
    if hard:
        n_hard = max(h["frames"] for h in hard.values())
        lines += ["", f"On the {n_hard} {rep} frames of seed {c['seed']} where the face is hidden or the voice is silent "
                  "(mean CCC): " + ", ".join(f"{k} {_fmt(h['mean'])}" for k, h in hard.items()) + "."]
    t = m0["seconds"]
    load = m0.get("load")
    lines += ["", f"Wall time of seed {c['seed']}: **{m0['total_seconds']:.0f} s** for `vaest demo` ("
              + ", ".join(f"{k} {v}" for k, v in t.items()) + " s"
              + (f"; 1-minute load average {load[0]:.1f} at the start, {load[1]:.1f} at the end" if load else "")
              + ")."]
    return "\n".join(lines)


def load_demo_metrics(folder: str | Path) -> list[dict[str, Any]]:
    """The committed demo metrics files ``FOLDER/metrics-seed<N>.json``, seed 0 first then by seed."""
    import json

    files = sorted(Path(folder).glob("metrics-seed*.json"), key=lambda p: int(p.stem.split("seed")[-1]))
    return [json.loads(p.read_text()) for p in files]


def readme_demo_block(readme: str) -> str:
    """The generated part of the README's demo section (between :data:`README_BEGIN` and :data:`README_END`)."""
    if README_BEGIN not in readme or README_END not in readme:
        raise VaestError("README has no generated demo table (markers missing)")
    return readme.split(README_BEGIN, 1)[1].split(README_END, 1)[0].strip("\n")
