"""Evaluation report over run folders: CCC per run and post-processing stage, as text, JSON, Markdown and plots.

For each run (a modality, a learned fusion or a late fusion), the predictions of the scored split are read
from ``RUN/preds`` and scored at three stages over the same labelled frames (CCC over all concatenated frames):

- ``raw``: the stored per-frame values as exported (a frame with no value counts as 0, the neutral value);
- ``filled``: frames where the run had no real input (its mask) take the nearest frame that had;
- ``smoothed``: filled, then the per-dimension moving average (kernels chosen on the scored split by
  :func:`vaest.postprocess.choose_kernels` unless given), clipped to [-1, 1].

Choosing kernels on the split that is scored is what the reference does on the validation set; the report
says which kernels were used so they can be fixed for the test set.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vaest.corpus import Corpus, Video, load_corpus
from vaest.errors import VaestError
from vaest.inference import load_predictions, read_run_json
from vaest.io import atomic_write_json, atomic_write_text, safe_name
from vaest.metrics import va_ccc
from vaest.postprocess import choose_kernels, fill, postprocess
from vaest.view import EvalRun, EvalVideo, write_eval_report

log = logging.getLogger(__name__)

STAGES = ("raw", "filled", "smoothed")
COLUMNS = ("run", "modality", "stage", "valence", "arousal", "mean", "frames", "kernels")


def run_label(run: str | Path, info: dict[str, Any]) -> str:
    """Short label of a run: its folder name and, for fusions, the method."""
    name = Path(run).name
    method = info.get("method")
    return f"{name} ({method})" if method and info.get("modality") in ("fusion", "late") else name


def _load_split(run: Path, videos: list[Video]) -> list[tuple[Video, Any]]:
    out = []
    for v in videos:
        try:
            out.append((v, load_predictions(run, v.id)))
        except VaestError:
            continue
    return out


def stage_scores(run: str | Path, corpus: Corpus, split: str = "val",
                 kernels: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """Rows (one per stage) of CCC for one run over the labelled videos of ``split`` (see module docstring)."""
    run = Path(run)
    info = read_run_json(run)
    videos = [v for v in corpus.split(split) if v.has_labels]
    loaded = _load_split(run, videos)
    base = {"run": str(run), "name": run_label(run, info), "modality": str(info.get("modality", "?"))}
    if len(loaded) < len(videos):
        log.warning("%s: %d of %d %s videos have no predictions", run, len(videos) - len(loaded), len(videos), split)
    if not loaded:
        return [{**base, "stage": s, "valence": math.nan, "arousal": math.nan, "mean": math.nan, "frames": 0,
                 "kernels": None} for s in STAGES]
    labels = [v.labels_for(len(r.values)) for v, r in loaded]
    raw = [np.nan_to_num(np.asarray(r.values, dtype=np.float32)) for _, r in loaded]
    filled = []
    for (_, r), p in zip(loaded, raw):
        ok = np.asarray(r.mask, dtype=bool) & np.isfinite(r.values).all(1)
        filled.append(fill(r.values, ok) if ok.any() else p)
    filled = [np.nan_to_num(p) for p in filled]
    k = tuple(int(x) for x in kernels) if kernels is not None else choose_kernels(filled, labels)
    smoothed = [postprocess(p, None, k) for p in filled]
    y = np.concatenate(labels)
    frames = int(np.isfinite(y).all(1).sum())
    rows = []
    for stage, preds in zip(STAGES, (raw, filled, smoothed)):
        s = va_ccc(np.concatenate(preds), y)
        rows.append({**base, "stage": stage, **s, "frames": frames,
                     "kernels": list(k) if stage == "smoothed" else None})
    return rows


def evaluate_runs(runs: Sequence[str | Path], corpus: str | Path | Corpus | None = None, split: str = "val",
                  kernels: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """Stage rows for every run (corpus: given, or the one recorded in each run's run.json)."""
    rows: list[dict[str, Any]] = []
    cache: dict[str, Corpus] = {}
    for run in runs:
        if isinstance(corpus, Corpus):
            c = corpus
        else:
            root = str(corpus or read_run_json(run).get("corpus"))
            if root not in cache:
                cache[root] = load_corpus(root)
            c = cache[root]
        rows.extend(stage_scores(run, c, split, kernels))
    return rows


def _fmt(x: Any) -> str:
    if x is None:
        return ""
    if isinstance(x, float):
        return "nan" if not math.isfinite(x) else f"{x:.4f}"
    if isinstance(x, (list, tuple)):
        return "/".join(str(v) for v in x)
    return str(x)


def _cells(r: dict[str, Any]) -> list[str]:
    return [r["name"], r["modality"], r["stage"], _fmt(r["valence"]), _fmt(r["arousal"]), _fmt(r["mean"]),
            f"{r['frames']:,}", _fmt(r["kernels"])]


def format_markdown(rows: list[dict[str, Any]]) -> str:
    """The stage table as a Markdown table."""
    head = "| " + " | ".join(COLUMNS) + " |"
    sep = "|" + "|".join("---" if c in ("run", "modality", "stage") else "---:" for c in COLUMNS) + "|"
    return "\n".join([head, sep] + ["| " + " | ".join(_cells(r)) + " |" for r in rows])


def rich_table(rows: list[dict[str, Any]], title: str = "CCC by post-processing stage"):
    """The stage table as a rich Table (for the CLI)."""
    from rich.table import Table

    t = Table(title=title)
    for c in COLUMNS:
        t.add_column(c, justify="left" if c in ("run", "modality", "stage", "kernels") else "right")
    for r in rows:
        t.add_row(*_cells(r))
    return t


def _figure(nrows: int, ncols: int, w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h))
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def plot_curves(path: Path, video: Video, series: dict[str, np.ndarray], labels: np.ndarray, fps: float) -> None:
    """Predicted vs true valence and arousal over time for one video (one line per run)."""
    fig, axes = _figure(2, 1, 11, 5.5)
    t = np.arange(len(labels)) / fps
    for d, name in enumerate(("valence", "arousal")):
        ax = axes[d, 0]
        ax.plot(t, labels[:, d], color="black", lw=1.6, label="true")
        for label, p in series.items():
            ax.plot(t[: len(p)], p[:, d], lw=0.9, label=label)
        ax.set_ylim(-1.05, 1.05)
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[1, 0].set_xlabel("seconds")
    axes[0, 0].legend(loc="upper right", fontsize=7, ncol=3)
    fig.suptitle(f"{video.id}: predicted (smoothed) vs true")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def plot_weights(path: Path, title: str, weights: dict[str, np.ndarray], names: list[str], fps: float) -> None:
    """Per-modality fusion weights over time, one panel per video (a (n, M, 2) array: valence solid, arousal dashed)."""
    fig, axes = _figure(len(weights), 1, 11, 2.4 * len(weights) + 0.6)
    for ax, (vid, w) in zip(axes[:, 0], weights.items()):
        t = np.arange(len(w)) / fps
        for i in range(w.shape[1]):
            name = names[i] if i < len(names) else f"w{i}"
            if w.ndim == 3:
                line = ax.plot(t, w[:, i, 0], lw=1.0, label=f"{name} (valence)")[0]
                ax.plot(t, w[:, i, 1], lw=1.0, ls="--", color=line.get_color(), label=f"{name} (arousal)")
            else:
                ax.plot(t, w[:, i], lw=1.0, label=name)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(vid, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=7, ncol=4)
    axes[-1, 0].set_xlabel("seconds")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def write_report(rows: list[dict[str, Any]], runs: Sequence[str | Path], out_dir: str | Path,
                 corpus: str | Path | Corpus | None = None, split: str = "val", n_videos: int = 3) -> Path:
    """Write ``out_dir/report.md`` (the stage table), ``scores.json``, PNG plots and the interactive
    ``index.html`` with one page per labelled video (:func:`vaest.view.write_eval_report`); returns the report path.

    Plots: ``curves_<video>.png`` (true vs each run's smoothed predictions) for the first ``n_videos`` labelled
    videos of ``split``, and ``weights_<run>.png`` for each run that exports per-frame fusion weights.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = [Path(r) for r in runs]
    if isinstance(corpus, Corpus):
        c = corpus
    else:
        c = load_corpus(str(corpus or read_run_json(runs[0]).get("corpus")))
    kernels = {r["run"]: r["kernels"] for r in rows if r["stage"] == "smoothed"}
    infos = {str(r): read_run_json(r) for r in runs}
    videos = [v for v in c.split(split) if v.has_labels]
    shown = [v for v in videos if any(_load_split(r, [v]) for r in runs)][:n_videos]
    images: list[tuple[str, str]] = []
    for v in shown:
        series: dict[str, np.ndarray] = {}
        fps = 30.0
        n = None
        for r in runs:
            got = _load_split(r, [v])
            if not got:
                continue
            rec = got[0][1]
            fps = 1.0 / rec.base.hop
            n = len(rec.values) if n is None else n
            k = kernels.get(str(r)) or None
            series[run_label(r, infos[str(r)])] = postprocess(rec.values, rec.mask, tuple(k) if k else None)
        if n is None:
            continue
        name = f"curves_{safe_name(v.id)}.png"
        plot_curves(out / name, v, series, v.labels_for(n), fps)
        images.append((f"{v.id}: predicted vs true", name))
    for r in runs:
        ws: dict[str, np.ndarray] = {}
        names: list[str] = list(infos[str(r)].get("weight_names") or [])
        fps = 30.0
        for v, rec in _load_split(r, shown or videos[:n_videos]):
            if "weights" in rec.extras:
                ws[v.id] = np.asarray(rec.extras["weights"], dtype=np.float32)
                names = names or list(rec.meta.get("weight_names", []))
                fps = 1.0 / rec.base.hop
        if ws:
            name = f"weights_{safe_name(r.name)}.png"
            plot_weights(out / name, f"{run_label(r, infos[str(r)])}: per-frame modality weights", ws, names, fps)
            images.append((f"{run_label(r, infos[str(r)])}: fusion weights over time", name))
    lines = [f"# vaest evaluation ({split} split)", "",
             f"Corpus: `{c.root}`; {len(videos)} labelled {split} videos; CCC over all concatenated frames.", "",
             "Stages: `raw` stored predictions, `filled` holes filled from the nearest frame with input, "
             "`smoothed` filled + per-dimension moving average (kernels valence/arousal, chosen on this split) "
             "+ clip to [-1, 1].", "", format_markdown(rows), ""]
    best = max((r for r in rows if math.isfinite(r["mean"])), key=lambda r: r["mean"], default=None)
    if best is not None:
        lines += [f"Best: **{best['name']}** ({best['stage']}) mean CCC {best['mean']:.4f}.", ""]
    for caption, name in images:
        lines += [f"## {caption}", "", f"![{caption}]({name})", ""]
    atomic_write_json(out / "scores.json", rows)
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines))
    write_eval_report(COLUMNS, [_cells(r) for r in rows], eval_videos(rows, runs, c, split), out, split, c.root,
                      len(videos))
    return path


def eval_videos(rows: list[dict[str, Any]], runs: Sequence[str | Path], corpus: Corpus, split: str = "val"
                ) -> list[EvalVideo]:
    """Every labelled ``split`` video that some run predicts, scored for its page (:func:`vaest.view.write_eval_report`):
    each run's smoothed predictions (the kernels of ``rows``' smoothed stage) and the CCC of its raw and smoothed
    predictions on that video, on the first run's time base."""
    runs = [Path(r) for r in runs]
    labels_of = {str(r): run_label(r, read_run_json(r)) for r in runs}
    kernels = {r["run"]: r["kernels"] for r in rows if r["stage"] == "smoothed"}
    out: list[EvalVideo] = []
    for v in (v for v in corpus.split(split) if v.has_labels):
        got = [(r, rec) for r in runs for _, rec in _load_split(r, [v])]
        if not got:
            continue
        hop = float(got[0][1].base.hop)
        start = float(got[0][1].base.start)
        n = len(got[0][1].values)
        y = v.labels_for(n).astype(np.float64)
        scored = []
        for r, rec in got:
            k = kernels.get(str(r)) or None
            vals = np.asarray(rec.values, dtype=np.float64)[:n]
            sm = postprocess(vals, rec.mask, tuple(k) if k else None)
            scored.append(EvalRun(labels_of[str(r)], sm, va_ccc(np.nan_to_num(vals), y[: len(vals)]),
                                  va_ccc(sm, y[: len(sm)])))
        out.append(EvalVideo(v.id, v.media, 1.0 / hop, start + np.arange(n) * hop, y, scored,
                             {labels_of[str(r)]: str(r) for r, _ in got}))
    return out
