"""Ablation rows: the ``reference`` preset vs the reference plus one vaest option, over several seeds.

On a synthetic corpus it makes itself (:func:`vaest.corpus.synthetic.synthesize`) and one feature extraction
(:func:`vaest.pipeline.extract_all`, vaest's offline encoders: ``fer`` faces, ``desc`` behavior descriptors),
it trains, for every option and seed, the reference configuration and the reference with that one option
switched to vaest's value:

- face (``vaest train face --preset reference``): ``attn_span``, ``motion``, ``jitter``, ``inputs``,
  ``standardize``;
- behavior (``--preset reference``): ``model`` (``behavior-mamba`` instead of ``behavior-mamba-ref``),
  ``standardize``, ``scheduler``;
- directed fusion (preset ``fusion-dcmmoe`` ``reference``, on the seed-0 reference face and behavior runs):
  ``moe`` (``dcmmoe`` instead of ``dcm-ref``, same training) and ``crossfit`` (``dcm-ref`` trained on 2-fold
  out-of-fold predictions of the modality runs, :mod:`vaest.tasks.crossfit`).

The reference encoders (GRADA, Qwen3-VL-4B, WavLM-Large) cannot be loaded offline, so every run reads vaest's
offline features (``encoder: fer`` / ``desc`` override the preset's encoder); epochs are few (``--epochs``) to
fit a CPU budget. Each run is a run folder under ``OUT/runs/<stage>/<option>/seed<k>``; a finished run
(:func:`vaest.inference.run_finished`) is skipped, so the command resumes. Results: ``OUT/ablation.json`` (every
run and every row) and ``OUT/ablation.md`` (the table); ``--doc FILE`` also replaces the block between
``<!-- ablation:begin -->`` and ``<!-- ablation:end -->`` in FILE with the table.

Usage::

    PYTHONPATH=src python benchmarks/ablate.py --out runs/ablation --jobs 2 --doc docs/ablation.md
    PYTHONPATH=src python benchmarks/ablate.py --out /tmp/abl --quick     # tiny smoke run (< 1 min)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import re
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

log = logging.getLogger("vaest.benchmarks.ablate")

STAGES = ("face", "fusion", "behavior")  # run order when the budget is short: face first, then fusion, behavior
REFERENCE = "reference"
BEGIN, END = "<!-- ablation:begin -->", "<!-- ablation:end -->"


@dataclass(frozen=True)
class Option:
    """One ablation row: ``stage``, its ``name``, the settings it changes from the reference (``values``) and
    what it is (``doc``)."""

    stage: str
    name: str
    values: dict[str, Any]
    doc: str


# The option values are vaest's own defaults (FaceTrainSettings, BehaviorTrainSettings, behavior_train_config,
# the dcmmoe method); each row changes exactly one of them on top of the reference preset.
OPTIONS: tuple[Option, ...] = (
    Option("face", "attn_span", {"attn_span": 30}, "local attention, +-30 frames (1 s) per layer"),
    Option("face", "motion", {"motion": True}, "5 face-track kinematics appended to the inputs"),
    Option("face", "jitter", {"jitter": True}, "training windows shifted by a random offset in [0, hop) per epoch"),
    Option("face", "inputs", {"inputs": "emb+probs+conf"}, "embedding + expression probabilities + confidence"),
    Option("face", "standardize", {"standardize": True}, "inputs standardised with train statistics"),
    Option("fusion", "moe", {"method": "dcmmoe"}, "vaest's mixture-of-experts fusion instead of dcm-ref"),
    Option("fusion", "crossfit", {"crossfit": True}, "fusion trained on 2-fold out-of-fold modality predictions"),
    Option("behavior", "model", {"model": "behavior-mamba"}, "vaest's Mamba-1 model instead of behavior-mamba-ref"),
    Option("behavior", "standardize", {"standardize": True}, "inputs standardised with train statistics"),
    Option("behavior", "scheduler", {"scheduler": "plateau"}, "ReduceLROnPlateau 0.1 / 5 (reference: none)"),
)


@dataclass
class AblationConfig:
    """Size and budget of an ablation (defaults: the full run documented in ``docs/ablation.md``)."""

    out: str = "runs/ablation"
    videos: int = 10
    seconds: float = 24.0
    lag: float = 1.0
    corpus_seed: int = 0
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int = 8
    early_stop: int = 4
    fusion_epochs: int = 8
    crossfit_folds: int = 2
    jobs: int = 2
    stages: tuple[str, ...] = STAGES
    options: tuple[str, ...] = ()  # "stage.name" to run only those rows; empty = all
    face_model: dict[str, Any] = field(default_factory=dict)
    behavior_model: dict[str, Any] = field(default_factory=dict)  # applied to both behavior models
    fusion_model: dict[str, Any] = field(default_factory=dict)  # applied to both fusion models
    win: int | None = None  # face / fusion window override (None: the preset's 400 / 150)
    hop: int | None = None


def quick_config(out: str) -> AblationConfig:
    """A tiny smoke configuration: 3 videos of 4 s, 2 seeds, 1 epoch, small models, the fusion rows and one
    option of each modality, trained in this process."""
    return AblationConfig(out=out, videos=3, seconds=4.0, lag=0.5, seeds=(0, 1), epochs=1, early_stop=1,
                          fusion_epochs=1, stages=STAGES, jobs=1,
                          options=("face.attn_span", "fusion.moe", "fusion.crossfit", "behavior.model"),
                          face_model={"hidden_dim": 16, "heads": 2, "layers": 1},
                          behavior_model={"d_model": 16, "head_hidden": 16},
                          fusion_model={"hidden_dim": 16, "heads": 2, "layers": 1, "d_model": 16, "ffn": 16},
                          win=60, hop=30)


def selected(cfg: AblationConfig) -> list[Option]:
    """The options of the configured stages (and ``cfg.options`` when set), in stage order."""
    out = [o for s in cfg.stages for o in OPTIONS if o.stage == s]
    if cfg.options:
        out = [o for o in out if f"{o.stage}.{o.name}" in cfg.options]
    return out


# ---------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------


def prepare(cfg: AblationConfig) -> tuple[Path, Path]:
    """Synthesise the corpus and extract the offline features once (both skipped when already there);
    returns (corpus folder, feature store folder)."""
    from vaest.corpus import load_corpus
    from vaest.corpus.synthetic import synthesize
    from vaest.features.store import FeatureStore
    from vaest.features.base import default_extractors
    from vaest.pipeline import extract_all

    out = Path(cfg.out)
    corpus_dir, feats = out / "corpus", out / "features"
    if not (corpus_dir / "synth.json").exists():
        log.info("ablation: synthesising %d videos of %.0f s", cfg.videos, cfg.seconds)
        synthesize(corpus_dir, n_videos=cfg.videos, seconds=cfg.seconds, seed=cfg.corpus_seed,
                   workers=max(1, cfg.jobs), annotation_lag=cfg.lag)
    corpus = load_corpus(corpus_dir)
    rep = extract_all(corpus.videos, FeatureStore(feats), default_extractors(audio=False))
    if rep.failed:
        log.warning("ablation: %d media failed extraction: %s", len(rep.failed), list(rep.failed))
    return corpus_dir, feats


# ---------------------------------------------------------------------------------------------------------
# One training run (runs in a worker process)
# ---------------------------------------------------------------------------------------------------------


def run_dir(cfg: AblationConfig, stage: str, config: str, seed: int) -> Path:
    """``OUT/runs/<stage>/<config>/seed<seed>`` (``config`` = ``reference`` or an option name)."""
    return Path(cfg.out) / "runs" / stage / config / f"seed{seed}"


def _window(cfg: AblationConfig) -> dict[str, int]:
    return {k: v for k, v in (("win", cfg.win), ("hop", cfg.hop)) if v is not None}


def _train_face(cfg: AblationConfig, corpus: Any, feats: Path, out: Path, values: dict[str, Any], seed: int) -> None:
    from vaest.tasks.face import settings_from, train_face

    flags = {"preset": REFERENCE, "encoder": "fer", "epochs": cfg.epochs, "early_stop": cfg.early_stop,
             "seed": seed, **_window(cfg), **values}
    if cfg.face_model:
        flags["model_config"] = dict(cfg.face_model)
    st, tc = settings_from({}, flags)
    train_face(corpus, feats, out, encoder=st.encoder, model=st.model, train_cfg=tc, settings=st,
               command="benchmarks/ablate.py face")


def _train_behavior(cfg: AblationConfig, corpus: Any, feats: Path, out: Path, values: dict[str, Any],
                    seed: int) -> None:
    from vaest.tasks.behavior import settings_from, train_behavior

    flags = {"preset": REFERENCE, "encoder": "desc", "epochs": cfg.epochs, "early_stop": cfg.early_stop,
             "seed": seed, **values}
    if cfg.behavior_model:
        flags["model_config"] = dict(cfg.behavior_model)  # keys both behavior models take
    st, tc = settings_from({}, flags)
    train_behavior(corpus, feats, out, encoder=st.encoder, model=st.model, train_cfg=tc, settings=st,
                   command="benchmarks/ablate.py behavior")


def _train_fusion(cfg: AblationConfig, corpus_dir: Path, feats: Path, out: Path, values: dict[str, Any],
                  seed: int) -> None:
    from vaest.tasks.fusion import train_fusion
    from vaest.tasks.fusion_presets import dcmmoe_preset_kwargs

    kw = dcmmoe_preset_kwargs({"preset": REFERENCE}, {"epochs": cfg.fusion_epochs, "early_stop": cfg.early_stop,
                                                      "seed": seed})
    kw.update(_window(cfg))
    method = values.get("method", kw.pop("method"))
    kw.pop("method", None)
    fields = {"dcm-ref": {"hidden_dim", "heads", "layers"}, "dcmmoe": {"d_model", "heads", "layers", "ffn"}}[method]
    kw["model_cfg"] = {**kw["model_cfg"], **{k: v for k, v in cfg.fusion_model.items() if k in fields}}
    runs = {m: run_dir(cfg, m, REFERENCE, 0) for m in ("face", "behavior")}
    train_fusion(runs, corpus_dir, out, method, features_root=feats, crossfit=bool(values.get("crossfit", False)),
                 **kw)


def _crossfit(cfg: AblationConfig, corpus_dir: Path, feats: Path, stage: str) -> None:
    """Out-of-fold predictions (``cfg.crossfit_folds`` folds) of the seed-0 reference run of ``stage``."""
    from vaest.tasks.crossfit import crossfit

    train = _train_face if stage == "face" else _train_behavior
    crossfit(lambda c, o: train(cfg, c, feats, Path(o), {}, 0), corpus_dir, run_dir(cfg, stage, REFERENCE, 0),
             folds=cfg.crossfit_folds, seed=0)


def _job(cfg: AblationConfig, kind: str, stage: str, config: str, seed: int) -> tuple[str, float]:
    """Run one job in a worker: ``train`` (one run folder) or ``crossfit`` (out-of-fold predictions)."""
    import torch

    from vaest.corpus import load_corpus

    torch.set_num_threads(1)
    t0 = time.time()
    out = Path(cfg.out)
    corpus_dir, feats = out / "corpus", out / "features"
    if kind == "crossfit":
        _crossfit(cfg, corpus_dir, feats, stage)
        return f"crossfit {stage}", time.time() - t0
    values = {} if config == REFERENCE else next(o.values for o in OPTIONS if o.stage == stage and o.name == config)
    dst = run_dir(cfg, stage, config, seed)
    if stage == "face":
        _train_face(cfg, load_corpus(corpus_dir), feats, dst, values, seed)
    elif stage == "behavior":
        _train_behavior(cfg, load_corpus(corpus_dir), feats, dst, values, seed)
    else:
        _train_fusion(cfg, corpus_dir, feats, dst, values, seed)
    return f"{stage}/{config}/seed{seed}", time.time() - t0


def _init_worker() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    logging.getLogger("vaest").setLevel(logging.WARNING)


def _run_jobs(cfg: AblationConfig, jobs: list[tuple[str, str, str, int]]) -> None:
    """Run ``jobs`` (kind, stage, config, seed) with at most ``cfg.jobs`` processes; a failed job is logged
    and the others go on."""
    from vaest.inference import run_finished
    from vaest.progress import track

    todo = [j for j in jobs if j[0] == "crossfit" or not run_finished(run_dir(cfg, *j[1:]))]
    if len(todo) < len(jobs):
        log.info("ablation: %d of %d runs already finished (skipped)", len(jobs) - len(todo), len(jobs))
    if not todo:
        return
    if cfg.jobs <= 1 or len(todo) == 1:
        for j in track(todo, "ablation runs"):
            _report(j, lambda: _job(cfg, *j))
        return
    import multiprocessing as mp

    with ProcessPoolExecutor(max_workers=cfg.jobs, mp_context=mp.get_context("spawn"),
                             initializer=_init_worker) as pool:
        futures = [(j, pool.submit(_job, cfg, *j)) for j in todo]
        for j, f in track(futures, "ablation runs"):
            _report(j, f.result)


def _report(job: tuple[str, str, str, int], result: Any) -> None:
    try:
        name, secs = result()
        log.info("ablation: %s finished in %.0f s", name, secs)
    except Exception as e:  # one failed run must not stop the others: the table shows it as missing
        log.error("ablation: %s failed: %s: %s", "/".join(map(str, job[1:])), type(e).__name__, e)


def run_all(cfg: AblationConfig) -> dict[str, Any]:
    """Prepare the data, run every missing run (face, then the modality inputs of the fusion, fusion,
    behavior), and write ``OUT/ablation.json`` and ``OUT/ablation.md``; returns the JSON content."""
    import torch

    torch.set_num_threads(1)
    t0 = time.time()
    corpus_dir, feats = prepare(cfg)
    opts = selected(cfg)
    stages = [s for s in cfg.stages if any(o.stage == s for o in opts)]

    def train_jobs(stage: str, seeds: Sequence[int] | None = None) -> list[tuple[str, str, str, int]]:
        names = [REFERENCE] + [o.name for o in opts if o.stage == stage]
        return [("train", stage, n, s) for n in names for s in (seeds or cfg.seeds)]

    for stage in stages:
        if stage == "fusion":  # its inputs: the seed-0 reference face and behavior runs (+ their cross-fits)
            _run_jobs(cfg, [("train", m, REFERENCE, 0) for m in ("face", "behavior")])
            if any(o.name == "crossfit" for o in opts if o.stage == "fusion"):
                _run_jobs(cfg, [("crossfit", m, REFERENCE, 0) for m in ("face", "behavior")])
        _run_jobs(cfg, train_jobs(stage))
    result = summarize(cfg, opts)
    result["seconds"] = round(time.time() - t0, 1)
    from vaest.io import atomic_write_json, atomic_write_text

    atomic_write_json(Path(cfg.out) / "ablation.json", result)
    atomic_write_text(Path(cfg.out) / "ablation.md", markdown_table(result))
    return result


# ---------------------------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------------------------

METRICS = ("mean", "valence", "arousal")


def _stats(values: list[float]) -> dict[str, float]:
    """Mean, min, max and population std of finite values (NaN when there are none)."""
    v = [x for x in values if x is not None and math.isfinite(x)]
    if not v:
        return {"mean": math.nan, "min": math.nan, "max": math.nan, "std": math.nan, "n": 0}
    m = sum(v) / len(v)
    return {"mean": m, "min": min(v), "max": max(v), "std": math.sqrt(sum((x - m) ** 2 for x in v) / len(v)),
            "n": len(v)}


def _read_metrics(run: Path) -> dict[str, float] | None:
    from vaest.inference import run_finished

    if not run_finished(run):
        return None
    m = json.loads((run / "metrics.json").read_text())
    return {k: float(m[k]) for k in METRICS}


def paired(ref: list[float], opt: list[float]) -> dict[str, float]:
    """Per-seed differences option - reference (seeds where both ran): mean, sample std (ddof 1; 0 for one
    seed), min, max, n. Same seed = same data order and, where the option keeps the model's shapes, the same
    initial weights, so the paired difference removes most of the seed-to-seed spread."""
    d = [o - r for r, o in zip(ref, opt) if math.isfinite(r) and math.isfinite(o)]
    if not d:
        return {"mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan, "n": 0}
    m = sum(d) / len(d)
    sd = math.sqrt(sum((x - m) ** 2 for x in d) / (len(d) - 1)) if len(d) > 1 else 0.0
    return {"mean": m, "std": sd, "min": min(d), "max": max(d), "n": len(d)}


def verdict(diff: dict[str, float]) -> str:
    """From the per-seed differences of mean CCC (:func:`paired`): ``helps`` when their mean is positive and
    larger than their standard deviation over seeds, ``hurts`` when negative and larger, else ``within spread``."""
    if not diff["n"]:
        return "not run"
    if diff["n"] < 2:
        return "one seed"
    return ("helps" if diff["mean"] > diff["std"] else "hurts" if -diff["mean"] > diff["std"]
            else "within spread")


def summarize(cfg: AblationConfig, opts: Sequence[Option]) -> dict[str, Any]:
    """Every run's validation CCC and one row per option: reference and option (mean/min/max/std over seeds of
    mean, valence and arousal CCC), the difference of the means, the per-seed differences (:func:`paired`) and
    the :func:`verdict`."""
    runs, rows = [], []
    per: dict[tuple[str, str], dict[str, list[float]]] = {}
    for stage in dict.fromkeys(o.stage for o in opts):
        for name in [REFERENCE] + [o.name for o in opts if o.stage == stage]:
            for s in cfg.seeds:
                m = _read_metrics(run_dir(cfg, stage, name, s))
                runs.append({"stage": stage, "config": name, "seed": s, "run": str(run_dir(cfg, stage, name, s)),
                             **({k: m[k] for k in METRICS} if m else {k: None for k in METRICS})})
                for k in METRICS:
                    per.setdefault((stage, name), {}).setdefault(k, []).append(m[k] if m else math.nan)
    for o in opts:
        ref = {k: _stats(per[(o.stage, REFERENCE)][k]) for k in METRICS}
        opt = {k: _stats(per[(o.stage, o.name)][k]) for k in METRICS}
        diff = {k: paired(per[(o.stage, REFERENCE)][k], per[(o.stage, o.name)][k]) for k in METRICS}
        rows.append({"stage": o.stage, "option": o.name, "values": o.values, "doc": o.doc, "reference": ref,
                     "with_option": opt, "delta": {k: opt[k]["mean"] - ref[k]["mean"] for k in METRICS},
                     "paired": diff, "verdict": verdict(diff["mean"])})
    conf = dataclasses.asdict(cfg)
    return {"config": conf, "seeds": list(cfg.seeds), "runs": runs, "rows": rows}


def _f(x: float) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.3f}"


def _cell(st: dict[str, float]) -> str:
    return "n/a" if not st["n"] else f"{_f(st['mean'])} ({_f(st['min'])}-{_f(st['max'])}, sd {_f(st['std'])})"


def _diff(d: dict[str, float]) -> str:
    if not d["n"]:
        return "n/a"
    return f"{d['mean']:+.3f} +- {d['std']:.3f} ({d['min']:+.3f}..{d['max']:+.3f})"


def markdown_table(result: dict[str, Any]) -> str:
    """The ablation table: one row per option, validation CCC mean over seeds (min-max, std)."""
    lines = ["| Stage | Option (setting: value) | Reference: mean CCC (min-max, sd) | + option: mean CCC (min-max, sd) "
             "| Delta per seed: mean +- sd (min..max) | Valence ref -> opt | Arousal ref -> opt | Verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        setting = ", ".join(f"`{k}: {v}`" for k, v in r["values"].items())
        lines.append(f"| {r['stage']} | {r['option']} ({setting}) | {_cell(r['reference']['mean'])} | "
                     f"{_cell(r['with_option']['mean'])} | {_diff(r['paired']['mean'])} | "
                     f"{_f(r['reference']['valence']['mean'])} -> {_f(r['with_option']['valence']['mean'])} | "
                     f"{_f(r['reference']['arousal']['mean'])} -> {_f(r['with_option']['arousal']['mean'])} | "
                     f"{r['verdict']} |")
    n = len(result["seeds"])
    lines.append("")
    lines.append(f"Validation mean CCC over {n} seeds ({', '.join(map(str, result['seeds']))}); sd = population "
                 "std over seeds. Delta = option - reference with the same seed (sample sd over seeds); verdict "
                 "`helps` = the mean delta is positive and larger than its sd (`hurts`: negative and larger).")
    return "\n".join(lines) + "\n"


def update_doc(doc: str | Path, table: str) -> None:
    """Replace the block between the ablation markers in ``doc`` with ``table`` (the markers must exist)."""
    from vaest.errors import VaestError
    from vaest.io import atomic_write_text

    p = Path(doc)
    text = p.read_text()
    if BEGIN not in text or END not in text:
        raise VaestError(f"{p}: no '{BEGIN}' ... '{END}' block to put the ablation table in")
    new = re.sub(re.escape(BEGIN) + r".*?" + re.escape(END), lambda _: f"{BEGIN}\n{table}{END}", text, flags=re.S)
    atomic_write_text(p, new)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command line: see the module docstring."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/ablation")
    ap.add_argument("--quick", action="store_true", help="tiny smoke run (3 videos of 4 s, 1 epoch, 2 seeds)")
    ap.add_argument("--jobs", type=int, default=None, help="trainings at once (default 2)")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--stages", default=None, help="comma-separated, among face,fusion,behavior")
    ap.add_argument("--options", default=None, help="comma-separated stage.option, e.g. face.jitter,fusion.moe")
    ap.add_argument("--doc", default=None, help="Markdown file whose ablation block gets the table")
    a = ap.parse_args(argv)
    from vaest.progress import setup_logging

    setup_logging()
    cfg = quick_config(a.out) if a.quick else AblationConfig(out=a.out)
    if a.jobs is not None:
        cfg.jobs = a.jobs
    if a.epochs is not None:
        cfg.epochs = cfg.fusion_epochs = a.epochs
    if a.stages:
        cfg.stages = tuple(s.strip() for s in a.stages.split(",") if s.strip())
        bad = set(cfg.stages) - set(STAGES)
        if bad:
            ap.error(f"unknown stages {sorted(bad)}; known: {', '.join(STAGES)}")
    if a.options:
        cfg.options = tuple(s.strip() for s in a.options.split(",") if s.strip())
    result = run_all(cfg)
    if a.doc:
        update_doc(a.doc, markdown_table(result))
    log.info("ablation finished in %.0f s: %s", result["seconds"], Path(cfg.out) / "ablation.md")
    return result


if __name__ == "__main__":
    main()
