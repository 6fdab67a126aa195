"""The ``vaest`` command line: synth | corpus | features | extract | train | evaluate | predict | submit | demo."""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from vaest.errors import VaestError
from vaest.progress import setup_logging

log = logging.getLogger("vaest")
console = Console(stderr=False)

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Continuous valence/arousal from face, behavior and voice.")
corpus_app = typer.Typer(no_args_is_help=True, help="Inspect corpora.")
features_app = typer.Typer(no_args_is_help=True, help="Inspect the feature store.")
extract_app = typer.Typer(no_args_is_help=True, help="Extract per-modality features into a feature store.")
train_app = typer.Typer(no_args_is_help=True, help="Train a modality or fusion model.")
app.add_typer(corpus_app, name="corpus")
app.add_typer(features_app, name="features")
app.add_typer(extract_app, name="extract")
app.add_typer(train_app, name="train")

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="YAML file with settings; flags override it.")]
CrossfitOpt = Annotated[int, typer.Option("--crossfit", help="After training, also write out-of-fold predictions of "
                                          "the train split with K fold models (RUN/crossfit), which fusion "
                                          "training then uses instead of the model's in-sample predictions; "
                                          "0 = off.")]


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    setup_logging(logging.DEBUG if verbose else logging.INFO)


def _fmt(x: float | int) -> str:
    if isinstance(x, int):
        return f"{x:,}"
    return "nan" if not math.isfinite(x) else f"{x:.4f}"


def print_stats(stats: dict[str, dict]) -> None:
    t = Table(title="corpus statistics")
    cols = ["split", "videos", "frames", "valid_frames", "valence_mean", "valence_std", "arousal_mean", "arousal_std"]
    for c in cols:
        t.add_column(c, justify="right" if c != "split" else "left")
    for split, row in stats.items():
        t.add_row(split, *[_fmt(row[c]) for c in cols[1:]])
    console.print(t)


@app.command()
def synth(
    out: Annotated[Path, typer.Argument(help="Folder to write the synthetic corpus into.")],
    videos: Annotated[int, typer.Option(help="Number of videos.")] = 10,
    seconds: Annotated[float, typer.Option(help="Length of each video in seconds.")] = 30.0,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same corpus).")] = 0,
    fps: Annotated[float, typer.Option(help="Frame rate.")] = 30.0,
    workers: Annotated[int, typer.Option(help="Parallel worker processes.")] = 2,
    annotation_lag: Annotated[float, typer.Option(
        help="Raters' mean reaction lag in seconds: labels trail the rendered affect by 0.7-1.3x this per video "
             "(0 = labels equal the affect shown).")] = 1.0,
) -> None:
    """Write a synthetic corpus in the Aff-Wild2 layout whose faces, voices and gestures carry VA labels."""
    from vaest.corpus.synthetic import synthesize

    summary = synthesize(out, n_videos=videos, seconds=seconds, seed=seed, fps=fps, workers=workers,
                         annotation_lag=annotation_lag)
    log.info("synthetic corpus written to %s in %.1f s", out, summary.get("seconds", float("nan")))


@corpus_app.command("stats")
def corpus_stats_cmd(
    root: Annotated[Path, typer.Argument(help="Corpus root, annotations folder, manifest CSV or media folder.")],
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the statistics as JSON.")] = None,
) -> None:
    """Per split: videos, frames, valid frames, valence/arousal mean and std."""
    from vaest.corpus import load_corpus
    from vaest.corpus.stats import corpus_stats
    from vaest.io import atomic_write_json

    stats = corpus_stats(load_corpus(root))
    print_stats(stats)
    if json_out:
        atomic_write_json(json_out, stats)


@features_app.command("ls")
def features_ls(store: Annotated[Path, typer.Argument(help="Feature store folder.")]) -> None:
    """List stored features (extractor, videos, steps, dim, config hash) and failures."""
    from collections import defaultdict

    from vaest.features.store import FeatureStore

    fs = FeatureStore(store)
    agg: dict[tuple[str, str, int, float, float], list[int]] = defaultdict(list)
    for it in fs.items():
        agg[(it.extractor, it.config_hash, it.dim, it.hop, it.win)].append(it.n)
    t = Table(title=f"features in {store}")
    for c in ("extractor", "config", "videos", "steps", "dim", "hop s", "win s"):
        t.add_column(c)
    for (ex, h, d, hop, win), ns in sorted(agg.items()):
        t.add_row(ex, h, str(len(ns)), f"{sum(ns):,}", str(d), f"{hop:.4g}", f"{win:.4g}")
    console.print(t)
    for f in fs.failures():
        console.print(f"[red]failed[/red] {f['extractor']} {f['video']}: {f['error']}")


@app.command()
def evaluate(
    runs: Annotated[list[Path], typer.Argument(help="Run folder(s) written by `vaest train`.")],
    corpus: Annotated[Optional[Path], typer.Option(help="Corpus root (default: the one recorded in the run).")] = None,
    split: Annotated[str, typer.Option(help="Split to score.")] = "val",
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write all scores as JSON.")] = None,
    stages: Annotated[bool, typer.Option(help="Also score the post-processing stages (raw, filled, smoothed).")] = True,
    report: Annotated[Optional[Path], typer.Option("--report", help="Write DIR/report.md with the stage table and "
                                                   "PNG plots (curves, fusion weights).")] = None,
) -> None:
    """Print the CCC table of one or more runs and write RUN/metrics.json for each."""
    from vaest.corpus import load_corpus
    from vaest.inference import evaluate_predictions, read_run_json
    from vaest.io import atomic_write_json

    t = Table(title=f"{split} CCC")
    for c in ("run", "modality", "valence", "arousal", "mean", "frames"):
        t.add_column(c, justify="left" if c in ("run", "modality") else "right")
    allscores = {}
    cache: dict[str, object] = {}
    for run in runs:
        info = read_run_json(run)
        root = str(corpus or info.get("corpus"))
        if root not in cache:
            cache[root] = load_corpus(root)
        scores = evaluate_predictions(run, cache[root], split)  # type: ignore[arg-type]
        atomic_write_json(Path(run) / "metrics.json", {k: scores[k] for k in ("valence", "arousal", "mean")})
        allscores[str(run)] = {"modality": info.get("modality"), **scores}
        t.add_row(str(run), str(info.get("modality", "?")), _fmt(scores["valence"]), _fmt(scores["arousal"]),
                  _fmt(scores["mean"]), _fmt(int(scores.get("frames", 0))))
    console.print(t)
    if stages or report:
        from vaest.report import evaluate_runs, rich_table, write_report

        rows = evaluate_runs(runs, corpus, split)
        console.print(rich_table(rows, f"{split} CCC by post-processing stage"))
        for r in rows:
            allscores[r["run"]].setdefault("stages", {})[r["stage"]] = {
                k: r[k] for k in ("valence", "arousal", "mean", "kernels")}
        if report:
            console.print(f"report: {write_report(rows, runs, report, corpus, split)}")
    if json_out:
        atomic_write_json(json_out, allscores)


@extract_app.command("audio")
def extract_audio_cmd(
    corpus: Annotated[Path, typer.Option(help="Corpus root, manifest CSV or media folder.")],
    out: Annotated[Path, typer.Option(help="Feature store folder.")],
    encoder: Annotated[str, typer.Option(help="lmfb (log-mel), egemaps (openSMILE LLDs) or wavlm (waveform).")] = "lmfb",
    model: Annotated[Optional[str], typer.Option(help="wavlm: backbone path or hub id recorded for training.")] = None,
    vad: Annotated[bool, typer.Option(help="Also store silero-vad speech probability (key 'vad').")] = True,
    force: Annotated[bool, typer.Option(help="Recompute features already stored.")] = False,
    engine: EngineOpt = "local",
    address: AddressOpt = None,
    workers: WorkersOpt = None,
    file_timeout: FileTimeoutOpt = None,
) -> None:
    """Audio features per video (store key audio-<encoder>) and voice activity (vad)."""
    from vaest.corpus import load_corpus
    from vaest.features.audio import audio_extractors
    from vaest.features.store import FeatureStore
    from vaest.scale import run_extraction

    rep = run_extraction(FeatureStore(out), audio_extractors(encoder, model, vad), load_corpus(corpus).videos,
                         force=force, engine=engine, address=address, num_workers=workers,
                         file_timeout=file_timeout)
    if rep.failed:
        raise typer.Exit(1)


@train_app.command("audio")
def train_audio_cmd(
    features: Annotated[Path, typer.Option(help="Feature store with audio-<encoder> (and mouth, facetrack, vad).")],
    corpus: Annotated[Path, typer.Option(help="Corpus root with train/val labels.")],
    out: Annotated[Path, typer.Option(help="Run folder to write.")],
    encoder: Annotated[Optional[str], typer.Option(help="lmfb, egemaps or wavlm.")] = None,
    backbone: Annotated[Optional[str], typer.Option(help="wavlm: WavLM/wav2vec2/HuBERT path or hub id.")] = None,
    no_filter: Annotated[bool, typer.Option("--no-filter", help="Train on every labelled window (no cross-modal filter).")] = False,
    epochs: Annotated[Optional[int], typer.Option(help="Maximum epochs.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Windows per batch.")] = None,
    device: Annotated[Optional[str], typer.Option(help="cpu or cuda.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed.")] = None,
    config: ConfigOpt = None,
    crossfit: CrossfitOpt = 0,
) -> None:
    """Train the audio model (4 s windows, one VA pair per second) and write its run folder."""
    from vaest.config import load_config
    from vaest.tasks.audio import config_from, train_audio

    flags = {"encoder": encoder, "backbone": backbone, "epochs": epochs, "batch_size": batch_size, "device": device,
             "seed": seed, "filter": False if no_filter else None}
    cfg = config_from(load_config(config), flags)
    train_audio(features, corpus, out, cfg)
    if crossfit:
        from vaest.tasks.crossfit import crossfit as run_crossfit

        run_crossfit(lambda c, o: train_audio(features, c, o, cfg), corpus, out, crossfit, cfg.seed)


@extract_app.command("face")
def extract_face_cmd(
    corpus: Annotated[Path, typer.Option(help="Corpus root, manifest CSV or media folder.")],
    out: Annotated[Path, typer.Option(help="Feature store folder.")],
    encoder: Annotated[str, typer.Option(help="Frame encoder: fer (offline default), grada (needs --weights), tiny.")] = "fer",
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    weights: Annotated[Optional[Path], typer.Option(help="Encoder weights file (grada: affective_static_efficientNet_b1.pth).")] = None,
    batch_size: Annotated[int, typer.Option(help="Face crops per encoder forward.")] = 64,
    force: Annotated[bool, typer.Option(help="Recompute features already stored.")] = False,
    engine: EngineOpt = "local",
    address: AddressOpt = None,
    workers: WorkersOpt = None,
    file_timeout: FileTimeoutOpt = None,
) -> None:
    """Face track (facetrack) and per-frame face features (store key face-<encoder>)."""
    from vaest.features.face import extract_face_features

    rep = extract_face_features(corpus, out, encoder=encoder, device=device, weights=weights, batch_size=batch_size,
                                force=force, engine=engine, address=address, num_workers=workers,
                                file_timeout=file_timeout)
    if rep.failed:
        raise typer.Exit(1)


@extract_app.command("mouth")
def extract_mouth_cmd(
    corpus: Annotated[Path, typer.Option(help="Corpus root, manifest CSV or media folder.")],
    out: Annotated[Path, typer.Option(help="Feature store folder.")],
    force: Annotated[bool, typer.Option(help="Recompute features already stored.")] = False,
    engine: EngineOpt = "local",
    address: AddressOpt = None,
    workers: WorkersOpt = None,
    file_timeout: FileTimeoutOpt = None,
) -> None:
    """Per-frame inner-lip area and mouth-open flags (store key mouth; runs facetrack too)."""
    from vaest.features.mouth import extract_mouth

    rep = extract_mouth(corpus, out, force=force, engine=engine, address=address, num_workers=workers,
                        file_timeout=file_timeout)
    if rep.failed:
        raise typer.Exit(1)


@train_app.command("face")
def train_face_cmd(
    features: Annotated[Path, typer.Option(help="Feature store with face-<encoder> records.")],
    corpus: Annotated[Path, typer.Option(help="Corpus root with train/val labels.")],
    out: Annotated[Path, typer.Option(help="Run folder to write.")],
    encoder: Annotated[Optional[str], typer.Option(help="Encoder whose features to use (default fer).")] = None,
    model: Annotated[Optional[str], typer.Option(help="face-transformer or frame-mlp (per-frame baseline).")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Maximum epochs.")] = None,
    device: Annotated[Optional[str], typer.Option(help="cpu or cuda.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed.")] = None,
    config: ConfigOpt = None,
    crossfit: CrossfitOpt = 0,
) -> None:
    """Train the face temporal model (or the per-frame baseline) and write its run folder."""
    from vaest.config import load_config
    from vaest.tasks.face import settings_from, train_face

    st, cfg = settings_from(load_config(config), {"encoder": encoder, "model": model, "epochs": epochs,
                                                  "device": device, "seed": seed})
    res = train_face(corpus, features, out, encoder=st.encoder, model=st.model, train_cfg=cfg, settings=st)
    if crossfit:
        from vaest.tasks.crossfit import crossfit as run_crossfit

        run_crossfit(lambda c, o: train_face(c, features, o, encoder=st.encoder, model=st.model, train_cfg=cfg,
                                             settings=st), corpus, out, crossfit, cfg.seed)
    m = res["metrics"]
    console.print(f"face {st.model}: validation CCC valence {m['valence']:.4f} arousal {m['arousal']:.4f} "
                  f"mean {m['mean']:.4f} -> {out}")


# --- extraction engine options (vaest.scale.run_extraction), shared by every `vaest extract` command ---
EngineOpt = Annotated[str, typer.Option("--engine", help="local: this process; ray: spread the media files over a "
                                        "Ray cluster (same results, skips stored work, resumable).")]
AddressOpt = Annotated[Optional[str], typer.Option("--address", help="Ray cluster address (ray://head:10001, "
                                                   "head:6379 or auto); default: start a local Ray.")]
WorkersOpt = Annotated[Optional[int], typer.Option("--workers", help="Ray workers (default: one per CPU, or one per "
                                                   "GPU when the extractor runs on cuda).")]
FileTimeoutOpt = Annotated[Optional[float], typer.Option("--file-timeout", help="ray: seconds a worker may spend on "
                                                         "one media file before it is stopped and the file recorded "
                                                         "as failed (default 3600; 0 = no limit).")]


# --- fusion (vaest.tasks.fusion): `vaest train fusion`, `vaest train late` ---
RunsOpt = Annotated[list[str], typer.Option("--runs", help="NAME=RUN_FOLDER, repeated (face=..., behavior=..., "
                                            "audio=...; late fusion takes any prediction runs).")]


def _parse_runs(items: list[str], corpus: Optional[Path]) -> tuple[dict[str, Path], Path]:
    from vaest.inference import read_run_json

    runs: dict[str, Path] = {}
    for it in items:
        name, sep, path = it.partition("=")
        if not sep or not name or not path:
            raise VaestError(f"--runs {it!r}: expected NAME=RUN_FOLDER, e.g. face=runs/face")
        runs[name.strip()] = Path(path)
    if corpus is None:
        recorded = read_run_json(next(iter(runs.values()))).get("corpus") if runs else None
        if not recorded:
            raise VaestError("no --corpus given and the first run records none")
        corpus = Path(recorded)
    return runs, corpus


@train_app.command("fusion")
def train_fusion_cmd(
    runs: RunsOpt,
    out: Annotated[Path, typer.Option(help="Run folder to write.")],
    corpus: Annotated[Optional[Path], typer.Option(help="Corpus root with train/val labels (default: from the runs).")] = None,
    method: Annotated[Optional[str], typer.Option(help="raav (reliability-aware, default) or dcmmoe (directed cross-modal).")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Maximum epochs.")] = None,
    lr: Annotated[Optional[float], typer.Option(help="AdamW learning rate (reference RAAV 5e-5).")] = None,
    device: Annotated[Optional[str], typer.Option(help="cpu or cuda.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed.")] = None,
    config: ConfigOpt = None,
) -> None:
    """Train a fusion model on modality run folders and write its run folder (preds with per-frame weights)."""
    import dataclasses

    from vaest.config import build, load_config
    from vaest.tasks.fusion import default_train_config, train_fusion
    from vaest.training import TrainConfig

    file_cfg = load_config(config)
    runs_p, root = _parse_runs(runs, corpus)
    method = method or file_cfg.get("method", "raav")
    cfg = build(TrainConfig, dataclasses.asdict(default_train_config(method)), file_cfg.get("train"),
                {"epochs": epochs, "lr": lr, "device": device, "seed": seed})
    m = train_fusion(runs_p, root, out, method=method, train_cfg=cfg, model_cfg=file_cfg.get("model"),
                     win=int(file_cfg.get("win", 400)), hop=int(file_cfg.get("hop", 150)),
                     features_root=file_cfg.get("features_root"))
    console.print(f"fusion {method}: validation CCC valence {m['valence']:.4f} arousal {m['arousal']:.4f} "
                  f"mean {m['mean']:.4f} -> {out}")


@train_app.command("late")
def train_late_cmd(
    runs: RunsOpt,
    out: Annotated[Path, typer.Option(help="Run folder to write.")],
    corpus: Annotated[Optional[Path], typer.Option(help="Corpus root with validation labels (default: from the runs).")] = None,
    method: Annotated[str, typer.Option(help="dirichlet (seeded random search) or grid (simplex grid).")] = "dirichlet",
    samples: Annotated[int, typer.Option(help="Dirichlet samples.")] = 8000,
    step: Annotated[float, typer.Option(help="Grid step.")] = 0.05,
    seed: Annotated[int, typer.Option(help="Random seed of the Dirichlet search.")] = 0,
) -> None:
    """Late fusion: per-dimension weights of prediction runs searched on validation CCC; writes a run folder."""
    from vaest.tasks.fusion import late_fusion

    runs_p, root = _parse_runs(runs, corpus)
    res = late_fusion(runs_p, root, out, method=method, n_samples=samples, seed=seed, step=step)
    m = res["metrics"]
    for name, w in res["weights"].items():
        console.print(f"  {name}: valence {w[0]:.3f} arousal {w[1]:.3f}")
    console.print(f"late {method}: validation CCC valence {m['valence']:.4f} arousal {m['arousal']:.4f} "
                  f"mean {m['mean']:.4f} -> {out}")


@extract_app.command("behavior")
def extract_behavior_cmd(
    corpus: Annotated[Path, typer.Option(help="Corpus root, manifest CSV or media folder.")],
    out: Annotated[Path, typer.Option(help="Feature store folder.")],
    encoder: Annotated[str, typer.Option(help="desc: offline behavior descriptors (CPU, runs facetrack); "
                                              "vlm: Qwen3-VL hidden states + descriptions.")] = "desc",
    backend: Annotated[Optional[str], typer.Option(help="vlm: transformers (default) or vllm (GPU).")] = None,
    model: Annotated[Optional[str], typer.Option(help="vlm: Qwen3-VL folder or hub id "
                                                      "(default Qwen/Qwen3-VL-4B-Instruct).")] = None,
    vllm_url: Annotated[Optional[str], typer.Option("--vllm-url", help="vlm: descriptions from a `vllm serve` "
                                                    "OpenAI-compatible server, e.g. http://localhost:8000.")] = None,
    branch: Annotated[Optional[list[str]], typer.Option(help="vlm: token branches to store (repeatable: "
                                                        "multimodal, text, visual; default all).")] = None,
    no_text: Annotated[bool, typer.Option("--no-text", help="vlm: features only, no descriptions.")] = False,
    device: Annotated[Optional[str], typer.Option(help="vlm: auto, cpu or cuda.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="vlm: segments per forward pass.")] = None,
    force: Annotated[bool, typer.Option(help="Recompute features already stored.")] = False,
    engine: EngineOpt = "local",
    address: AddressOpt = None,
    workers: WorkersOpt = None,
    file_timeout: FileTimeoutOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Per-segment behavior features (4 s clips, 2 s hop): behavior-desc, or behavior-vlm + behavior-text."""
    from vaest.config import load_config
    from vaest.features.behavior import extract_behavior

    flags = {"backend": backend, "model": model, "vllm_url": vllm_url, "branches": branch or None,
             "generate": False if no_text else None, "device": device, "batch_size": batch_size}
    settings = {**load_config(config), **{k: v for k, v in flags.items() if v is not None}}
    rep = extract_behavior(corpus, out, encoder, settings, force=force, engine=engine, address=address,
                           num_workers=workers, file_timeout=file_timeout)
    if rep.failed:
        raise typer.Exit(1)


@train_app.command("behavior")
def train_behavior_cmd(
    features: Annotated[Path, typer.Option(help="Feature store with behavior-* records.")],
    corpus: Annotated[Path, typer.Option(help="Corpus root with train/val labels.")],
    out: Annotated[Path, typer.Option(help="Run folder to write.")],
    encoder: Annotated[Optional[str], typer.Option(help="desc (default), vlm, text or a '+' combination; "
                                                        "+expr adds face expression statistics.")] = None,
    branch: Annotated[Optional[str], typer.Option(help="vlm: multimodal (default), text or visual.")] = None,
    pool: Annotated[Optional[str], typer.Option(help="vlm: last (default), mean or std.")] = None,
    model: Annotated[Optional[str], typer.Option(help="behavior-mamba (default) or frame-mlp (baseline).")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Maximum epochs.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Sequences per batch.")] = None,
    device: Annotated[Optional[str], typer.Option(help="cpu or cuda.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed.")] = None,
    config: ConfigOpt = None,
    crossfit: CrossfitOpt = 0,
) -> None:
    """Train the behavior Mamba (or the per-segment baseline) and write its run folder."""
    from vaest.config import load_config
    from vaest.tasks.behavior import settings_from, train_behavior

    st, cfg = settings_from(load_config(config), {"encoder": encoder, "branch": branch, "pool": pool, "model": model,
                                                  "epochs": epochs, "batch_size": batch_size, "device": device,
                                                  "seed": seed})
    res = train_behavior(corpus, features, out, train_cfg=cfg, settings=st,
                         encoder=st.encoder, model=st.model, branch=st.branch, pool=st.pool)
    if crossfit:
        from vaest.tasks.crossfit import crossfit as run_crossfit

        run_crossfit(lambda c, o: train_behavior(c, features, o, train_cfg=cfg, settings=st, encoder=st.encoder,
                                                 model=st.model, branch=st.branch, pool=st.pool),
                     corpus, out, crossfit, cfg.seed)
    m = res["metrics"]
    console.print(f"behavior {st.model} ({st.encoder}): validation CCC valence {m['valence']:.4f} "
                  f"arousal {m['arousal']:.4f} mean {m['mean']:.4f} -> {out}")


@extract_app.command("all")
def extract_all_cmd(
    corpus: Annotated[Path, typer.Option(help="Corpus root, manifest CSV or media folder.")],
    out: Annotated[Path, typer.Option(help="Feature store folder.")],
    face_encoder: Annotated[str, typer.Option(help="Face frame encoder (fer, grada, tiny).")] = "fer",
    audio_encoder: Annotated[str, typer.Option(help="Audio encoder (lmfb, egemaps).")] = "lmfb",
    device: Annotated[str, typer.Option(help="cpu or cuda for the face encoder.")] = "cpu",
    engine: EngineOpt = "local",
    address: AddressOpt = None,
    workers: WorkersOpt = None,
    file_timeout: FileTimeoutOpt = None,
) -> None:
    """Every offline default modality in one decoding pass: facetrack, face, mouth, behavior-desc, audio, vad."""
    from vaest.corpus import load_corpus
    from vaest.features.store import FeatureStore
    from vaest.pipeline import default_extractors, extract_all

    rep = extract_all(load_corpus(corpus).videos, FeatureStore(out),
                      default_extractors(face_encoder, audio_encoder, device=device), engine, address, workers,
                      file_timeout=file_timeout)
    if rep.failed:
        raise typer.Exit(1)


@app.command()
def predict(
    media: Annotated[list[Path], typer.Argument(help="Video or audio file(s).")],
    out: Annotated[Path, typer.Option(help="Folder for <name>.csv and <name>.png.")] = Path("vaest_out"),
    model: Annotated[Optional[Path], typer.Option(help="Model bundle (bundle.json, e.g. demo_out/model) or one run folder; none = zero-shot face.")] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
) -> None:
    """Per-frame valence/arousal for any media file(s): CSV (frame,time,valence,arousal,...) and a plot."""
    from vaest.pipeline import predict as run_predict

    written = run_predict(media, out, model, device)
    if len(written) < len(media):
        raise typer.Exit(1)


@app.command()
def submit(
    run: Annotated[Path, typer.Argument(help="Run folder whose predictions to submit (a fusion or late run).")],
    out: Annotated[Path, typer.Option(help="Submission file to write.")],
    corpus: Annotated[Optional[Path], typer.Option(help="Corpus root (default: the run's).")] = None,
    split: Annotated[str, typer.Option(help="Split to submit.")] = "test",
    template: Annotated[Optional[Path], typer.Option(help="Organisers' template: rows are written in its order.")] = None,
    kernels: Annotated[Optional[str], typer.Option(help="Smoothing kernels 'V,A' (default: chosen on validation).")] = None,
) -> None:
    """Write an ABAW challenge file (image_location,valence,arousal), post-processed and validated."""
    from vaest.corpus import load_corpus
    from vaest.errors import VaestError
    from vaest.inference import load_predictions, read_run_json
    from vaest.postprocess import REFERENCE_KERNELS, choose_kernels, fill, postprocess
    from vaest.submission import write_submission

    c = load_corpus(corpus or read_run_json(run)["corpus"])
    if kernels:
        k = tuple(int(x) for x in kernels.split(","))
    else:
        P, Y = [], []
        for v in c.split("val"):
            if v.has_labels:
                try:
                    rec = load_predictions(run, v.id)
                except VaestError:
                    continue
                P.append(fill(rec.values, rec.mask))
                Y.append(v.labels_for(len(rec.values)))
        k = choose_kernels(P, Y) if P else REFERENCE_KERNELS
    preds = {}
    for v in c.split(split):
        try:
            rec = load_predictions(run, v.id)
        except VaestError as e:
            log.error("%s", e)
            continue
        preds[v.id] = postprocess(rec.values, rec.mask, k)
    if not preds:
        raise VaestError(f"{run}: no predictions for any '{split}' video")
    n = write_submission(out, preds, template)
    log.info("wrote %s: %d rows for %d videos (smoothing kernels %s)", out, n, len(preds), k)


@app.command()
def demo(
    out: Annotated[Path, typer.Argument(help="Output folder.")] = Path("demo_out"),
    videos: Annotated[int, typer.Option(help="Synthetic videos.")] = 10,
    seconds: Annotated[float, typer.Option(help="Seconds per video.")] = 30.0,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    config: ConfigOpt = None,
) -> None:
    """The whole method on a fresh synthetic corpus: synth, extract, train, fuse, evaluate, submit, predict."""
    from vaest.config import build, load_config
    from vaest.pipeline import DemoConfig, demo as run_demo

    cfg = build(DemoConfig, load_config(config), {"videos": videos, "seconds": seconds, "seed": seed})
    m = run_demo(out, cfg)
    t = Table(title="demo: validation CCC (smoothed)")
    for col in ("run", "valence", "arousal", "mean"):
        t.add_column(col)
    for name, r in m["runs"].items():
        sm = r["smoothed"]
        t.add_row(name, _fmt(sm["valence"]), _fmt(sm["arousal"]), _fmt(sm["mean"]))
    console.print(t)
    console.print(f"report: {out / 'report.md'}")


# --- modality commands are registered below by their modules (keep this marker) ---


def main() -> None:
    """Console entry point: user-facing errors become one clear line and exit code 2."""
    try:
        app()
    except VaestError as e:
        setup_logging()
        log.error("%s", e)
        sys.exit(2)


if __name__ == "__main__":
    main()
