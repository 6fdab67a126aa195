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
) -> None:
    """Write a synthetic corpus in the Aff-Wild2 layout whose faces, voices and gestures carry VA labels."""
    from vaest.corpus.synthetic import synthesize

    summary = synthesize(out, n_videos=videos, seconds=seconds, seed=seed, fps=fps, workers=workers)
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
    if json_out:
        atomic_write_json(json_out, allscores)


# --- extraction engine options (vaest.scale.run_extraction), shared by every `vaest extract` command ---
EngineOpt = Annotated[str, typer.Option("--engine", help="local: this process; ray: spread the media files over a "
                                        "Ray cluster (same results, skips stored work, resumable).")]
AddressOpt = Annotated[Optional[str], typer.Option("--address", help="Ray cluster address (ray://head:10001, "
                                                   "head:6379 or auto); default: start a local Ray.")]
WorkersOpt = Annotated[Optional[int], typer.Option("--workers", help="Ray workers (default: one per CPU, or one per "
                                                   "GPU when the extractor runs on cuda).")]


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
