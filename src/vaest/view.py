"""Self-contained HTML pages: a video with its valence/arousal curves, opened from the file system.

A page inlines everything it needs (the uPlot plotting library, shipped in ``vaest/assets``, its own script
and the data as JSON), so it opens with no server and no network. The media is referenced by a path relative
to the page; when Chromium-family browsers cannot play the original (e.g. ``.flv``, ``.avi``, ``.wmv``,
``.mkv``/``.mov``, MPEG-4 part 2 or HEVC video), a small H.264/AAC proxy is written beside the page with ffmpeg.

Public functions:

- :func:`write_page`: one page from a prediction CSV (the ``vaest predict`` format) and its media;
- :func:`write_index`: ``index.html`` for a folder run (``index.csv``), linking each input's page;
- :func:`view_folder`: both, for every input listed in a folder run's ``index.csv``;
- :func:`render_page`: the generic page (panels of curves over a time base, a media file, metadata),
  also used by the evaluation report.
"""

from __future__ import annotations

import html
import json
import logging
import math
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import quote

import numpy as np

from vaest.errors import VaestError
from vaest.io import atomic_path, atomic_write_text, safe_name
from vaest.progress import track

log = logging.getLogger(__name__)

MODALITIES = ("face", "audio", "behavior")
COLORS = {"valence": "#d62728", "arousal": "#1f77b4", "face": "#9467bd", "audio": "#2ca02c",
          "behavior": "#ff7f0e", "true": "#000000"}
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
# Files a Chromium-family browser plays as they are (container by suffix, then codecs checked for video).
AUDIO_PLAYABLE = {".mp3", ".wav", ".flac", ".ogg", ".oga", ".opus", ".m4a", ".aac"}
VIDEO_CONTAINERS = {".mp4": {"h264", "av1", "vp9"}, ".m4v": {"h264", "av1", "vp9"},
                    ".webm": {"vp8", "vp9", "av1"}, ".ogv": {"theora", "vp8"}}
AUDIO_CODECS = {"aac", "mp3", "opus", "vorbis", "flac"}
REQUIRED = ("frame", "time", "valence", "arousal")


@dataclass
class Series:
    """One curve of a panel: values on the group's time base (NaN = no value, drawn as a gap)."""

    label: str
    values: np.ndarray
    color: str
    width: float = 1.0
    dash: list[int] | None = None


@dataclass
class Panel:
    """One plot: curves sharing a y range, over the group's time axis."""

    title: str
    series: list[Series]
    ylabel: str = ""
    range: tuple[float, float] = (-1.05, 1.05)
    height: int = 190


@dataclass
class Group:
    """Everything drawn for one person (or the whole input): a time base, frames, panels, the V/A plane."""

    name: str
    time: np.ndarray
    frame: np.ndarray
    panels: list[Panel]
    plane: tuple[np.ndarray, np.ndarray] | None = None
    source: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def asset(name: str) -> str:
    """The text of a packaged asset (``vaest/assets/<name>``), to inline into a self-contained page."""
    return resources.files("vaest").joinpath("assets", name).read_text(encoding="utf-8")


def _values(a: Any, digits: int = 4) -> list[float | None]:
    """Floats rounded for the page; NaN/inf become null (a gap)."""
    arr = np.round(np.asarray(a, dtype=np.float64), digits)
    return [None if not math.isfinite(x) else float(x) for x in arr.tolist()]


def _group_json(g: Group) -> dict[str, Any]:
    return {
        "name": g.name,
        "t": _values(g.time, 5),
        "frame": [int(f) for f in np.asarray(g.frame).tolist()],
        "source": list(g.source) if g.source is not None else None,
        "plane": {"valence": _values(g.plane[0]), "arousal": _values(g.plane[1])} if g.plane else None,
        "panels": [{"title": p.title, "ylabel": p.ylabel, "range": list(p.range), "height": p.height,
                    "series": [{"label": s.label, "color": s.color, "width": s.width, "dash": s.dash,
                                "values": _values(s.values)} for s in p.series]} for p in g.panels],
    }


# ---------------------------------------------------------------- media

def media_needs_proxy(path: str | Path) -> bool:
    """True when a Chromium-family browser cannot play ``path`` as it is (by suffix, then codecs)."""
    p = Path(path)
    ext = p.suffix.lower()
    if ext in AUDIO_PLAYABLE:
        return False
    if ext not in VIDEO_CONTAINERS:
        return True
    import av

    try:
        with av.open(str(p)) as c:
            vcodecs = {s.codec_context.name for s in c.streams.video if s.codec_context is not None}
            acodecs = {s.codec_context.name for s in c.streams.audio if s.codec_context is not None}
    except Exception as e:  # PyAV raises several types for unreadable files
        log.warning("%s: cannot read codecs (%s); making a proxy", p, e)
        return True
    return not vcodecs <= VIDEO_CONTAINERS[ext] or not acodecs <= AUDIO_CODECS


def make_proxy(src: str | Path, dst: str | Path, max_height: int = 480) -> Path:
    """Transcode ``src`` to a small browser-playable file ``dst`` (H.264 + AAC in MP4, or AAC in M4A).

    Frame times are kept (``-fps_mode passthrough``) so the page's time axis matches the original's.
    Reused when ``dst`` is newer than ``src``. Raises VaestError when ffmpeg is missing or fails.
    """
    src, dst = Path(src), Path(dst)
    if dst.exists() and dst.stat().st_mtime >= src.stat().st_mtime:
        return dst
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise VaestError(f"{src}: the browser cannot play this format and ffmpeg (to make a proxy) is not installed")
    if dst.suffix.lower() == ".m4a":
        codec = ["-vn", "-c:a", "aac", "-b:a", "96k"]
    else:
        scale = f"scale=-2:'min({max_height},trunc(ih/2)*2)'"
        codec = ["-map", "0:v:0", "-map", "0:a:0?", "-vf", scale, "-c:v", "libx264", "-preset", "veryfast",
                 "-crf", "27", "-pix_fmt", "yuv420p", "-fps_mode", "passthrough", "-c:a", "aac", "-b:a", "96k",
                 "-movflags", "+faststart"]
    with atomic_path(dst, suffix=dst.suffix) as tmp:
        cmd = [ffmpeg, "-nostdin", "-y", "-v", "error", "-i", str(src), *codec, str(tmp)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise VaestError(f"{src}: ffmpeg could not make a browser proxy: {r.stderr.strip()[-300:]}")
    return dst


def _is_audio_only(path: Path) -> bool:
    if path.suffix.lower() in AUDIO_PLAYABLE | {".wma", ".amr", ".aiff", ".aif", ".au"}:
        return True
    import av

    try:
        with av.open(str(path)) as c:
            return not c.streams.video
    except Exception:  # unreadable: let the browser try it as video
        return False


def prepare_media(media: str | Path | None, out_html: Path, proxy: bool = True) -> dict[str, Any]:
    """The page's media entry: a relative URL (original or proxy), the element kind, and a note."""
    if media is None:
        return {"src": None, "kind": None, "note": "no media file given"}
    m = Path(media)
    if not m.is_file():
        return {"src": None, "kind": None, "note": f"media not found: {m}"}
    kind = "audio" if _is_audio_only(m) else "video"
    target, note = m, f"media: {m.name}"
    if proxy and media_needs_proxy(m):
        dst = out_html.with_name(out_html.stem + (".media.m4a" if kind == "audio" else ".media.mp4"))
        try:
            target = make_proxy(m, dst)
            note = f"media: {m.name} (played from the H.264/AAC proxy {dst.name}; the browser cannot play the original)"
        except VaestError as e:
            log.warning("%s", e)
            note = f"media: {m.name} (no proxy: {e}; the browser may not play it)"
    rel = os.path.relpath(target.resolve(), out_html.resolve().parent)
    return {"src": quote(Path(rel).as_posix()), "kind": kind, "note": note}


# ---------------------------------------------------------------- pages

def _meta_rows(meta: dict[str, Any]) -> str:
    rows = []
    for k, v in meta.items():
        text = v if isinstance(v, str) else json.dumps(v, default=str)
        rows.append(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(text)}</td></tr>")
    return "\n".join(rows)


def _script_json(obj: Any) -> str:
    # '</' cannot appear inside a <script> element's text.
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")


def render_page(title: str, groups: Sequence[Group], media: dict[str, Any], meta: dict[str, Any],
                trail_seconds: float = 3.0, links: str = "") -> str:
    """The HTML text of one self-contained page (see module docstring)."""
    if not groups:
        raise VaestError(f"{title}: nothing to draw")
    data = {"title": title, "trail_seconds": trail_seconds, "groups": [_group_json(g) for g in groups]}
    if media.get("src"):
        tag = "audio" if media["kind"] == "audio" else "video"
        player = (f'<{tag} id="vaest-media" controls preload="auto" src="{html.escape(media["src"])}"></{tag}>')
    else:
        player = ""
    person = ""
    if len(groups) > 1:
        opts = "".join(f"<option>{html.escape(g.name)}</option>" for g in groups)
        person = f'<label>person <select id="vaest-person">{opts}</select></label>'
    plane = '<canvas id="vaest-plane" width="230" height="230" title="valence/arousal plane"></canvas>' \
        if any(g.plane is not None for g in groups) else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>{asset("uPlot.min.css")}</style>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 12px 18px; color: #222; }}
h1 {{ font-size: 18px; margin: 4px 0 8px; }}
#vaest-top {{ display: flex; gap: 16px; align-items: flex-start; flex-wrap: wrap; }}
#vaest-media {{ width: 480px; max-width: 100%; max-height: 360px; background: #000; }}
audio#vaest-media {{ width: 480px; background: none; }}
#vaest-plane {{ border: 1px solid #ddd; }}
#vaest-readout {{ font-family: ui-monospace, monospace; margin: 6px 0; min-height: 1.2em; }}
.vaest-note {{ color: #666; font-size: 12px; }}
.vaest-head {{ position: absolute; top: 0; bottom: 0; width: 2px; margin-left: -1px; background: #111;
  pointer-events: none; opacity: .75; }}
.u-over {{ cursor: pointer; }}
.u-title {{ font-size: 13px; }}
table.meta {{ border-collapse: collapse; font-size: 12px; }}
table.meta th, table.meta td {{ border: 1px solid #ddd; padding: 2px 6px; text-align: left; vertical-align: top; }}
</style></head>
<body>
<h1>{html.escape(title)}</h1>
{links}
<div id="vaest-top">
<div>{player}<div id="vaest-media-note" class="vaest-note">{html.escape(media.get("note") or "")}</div></div>
<div>{plane}<div class="vaest-note">last {trail_seconds:g} s of (valence, arousal)</div></div>
</div>
{person}
<div id="vaest-readout"></div>
<div class="vaest-note">Click or drag on a plot to seek; gaps are frames with no estimate.</div>
<div id="vaest-plots"></div>
<details open><summary>metadata</summary><table class="meta">
{_meta_rows(meta)}
</table></details>
<script id="vaest-data" type="application/json">{_script_json(data)}</script>
<script>{asset("uPlot.iife.min.js")}</script>
<script>{asset("plane.js")}</script>
<script>{asset("view.js")}</script>
</body></html>
"""


def read_prediction(csv_path: str | Path):
    """The prediction table of ``csv_path`` (pandas DataFrame); VaestError naming the file when unusable."""
    import pandas as pd

    p = Path(csv_path)
    if not p.is_file():
        raise VaestError(f"{p}: no such prediction file")
    try:
        df = pd.read_csv(p)
    except Exception as e:  # pandas raises several types for unreadable CSV
        raise VaestError(f"{p}: cannot read as CSV ({type(e).__name__}: {e})") from None
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise VaestError(f"{p}: missing column(s) {', '.join(missing)} (a vaest prediction CSV has "
                         f"{', '.join(REQUIRED)}, source, <modality>_valence, ...)")
    if df.empty:
        raise VaestError(f"{p}: no rows")
    for c in df.columns:
        if c in ("valence", "arousal", "time") or c.endswith(("_valence", "_arousal")) or c.startswith("weight_"):
            df[c] = pd.to_numeric(df[c], errors="coerce")
    return df


def prediction_groups(df) -> list[Group]:
    """Groups (one per tracked person, else one) with the final, per-modality and weight panels."""
    import pandas as pd

    frames = pd.DataFrame({"frame": np.sort(df["frame"].unique())})
    times = df.groupby("frame")["time"].first().reindex(frames["frame"]).to_numpy(np.float64)
    if "person" in df.columns and df["person"].nunique(dropna=True) > 1:
        parts = [(f"person {k}", d) for k, d in df.groupby("person", sort=True)]
    else:
        parts = [("all", df)]
    mods = [m for m in MODALITIES if f"{m}_valence" in df.columns or f"{m}_arousal" in df.columns]
    mods += sorted({c[: -len("_valence")] for c in df.columns if c.endswith("_valence")} - set(mods))
    weights = [c for c in df.columns if c.startswith("weight_")]
    groups = []
    for name, d in parts:
        d = frames.merge(d.drop_duplicates("frame"), on="frame", how="left")
        panels = []
        for dim in ("valence", "arousal"):
            ss = [Series(dim, d[dim].to_numpy(np.float64), COLORS[dim], 2.0)]
            for i, m in enumerate(mods):
                if f"{m}_{dim}" in d.columns:
                    ss.append(Series(m, d[f"{m}_{dim}"].to_numpy(np.float64),
                                     COLORS.get(m, PALETTE[i % len(PALETTE)]), 1.0))
            panels.append(Panel(dim, ss, dim))
        if weights:
            ws = []
            for i, c in enumerate(weights):
                m = c[len("weight_"):]
                base = m.rsplit("_", 1)[0] if m.endswith(("_valence", "_arousal")) else m
                ws.append(Series(m, d[c].to_numpy(np.float64), COLORS.get(base, PALETTE[i % len(PALETTE)]),
                                 1.0, [6, 3] if m.endswith("_arousal") else None))
            panels.append(Panel("fusion weights", ws, "weight", (-0.02, 1.02), 140))
        source = d["source"].fillna("none").astype(str).tolist() if "source" in d.columns else None
        groups.append(Group(name, times, frames["frame"].to_numpy(), panels,
                            (d["valence"].to_numpy(np.float64), d["arousal"].to_numpy(np.float64)), source))
    return groups


def _read_meta(csv_path: Path) -> dict[str, Any]:
    j = csv_path.with_suffix(".json")
    if not j.is_file():
        return {}
    try:
        meta = json.loads(j.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        log.warning("%s: unreadable metadata (%s); page shown without it", j, e)
        return {}
    return meta if isinstance(meta, dict) else {"meta": meta}


def write_page(csv_path: str | Path, media_path: str | Path | None, out_html: str | Path,
               meta: dict[str, Any] | None = None, proxy: bool = True) -> Path:
    """Write the page of one prediction CSV; returns ``out_html``.

    ``media_path``: the input's media; None takes ``meta["input"]`` (meta defaults to the JSON beside the
    CSV). A media file the browser cannot play gets a proxy ``<out stem>.media.mp4`` beside the page.
    This is the function for ``vaest predict --html``: call it on each written CSV.
    """
    csv_path = Path(csv_path)
    meta = dict(meta) if meta is not None else _read_meta(csv_path)
    df = read_prediction(csv_path)
    if media_path is None and meta.get("input"):
        cand = Path(str(meta["input"]))
        media_path = cand if cand.is_absolute() or cand.exists() else csv_path.parent / cand
    if meta.get("kind") == "photo":
        return write_photo_page(df, meta, media_path, out_html)
    return write_frame_page(df, meta, media_path, out_html, proxy, {"prediction": str(csv_path)})


def write_frame_page(df, meta: dict[str, Any], media_path: str | Path | None, out_html: str | Path,
                     proxy: bool = True, info: dict[str, Any] | None = None) -> Path:
    """Write the page of a prediction table already in memory (a :class:`vaest.predictor.PredictionResult`'s
    ``frame`` and ``meta``); :func:`write_page` reads them from a CSV and its JSON first."""
    out = Path(out_html)
    groups = prediction_groups(df)
    info = {**(info or {}), "frames": int(df["frame"].nunique())}
    if "source" in df.columns:
        info["source"] = ", ".join(f"{k}: {v}" for k, v in df["source"].fillna("none").value_counts().items())
    out.parent.mkdir(parents=True, exist_ok=True)
    media = prepare_media(media_path, out, proxy)
    title = Path(str(meta.get("input") or out.stem)).name
    atomic_write_text(out, render_page(title, groups, media, {**info, **meta}))
    log.info("page: %s", out)
    return out


def write_photo_page(df, meta: dict[str, Any], image_path: str | Path | None, out_html: str | Path) -> Path:
    """Write the page of a photo's prediction (one row per face, :mod:`vaest.photos`): the photo with each
    face's box, person id, valence and arousal drawn over it (SVG in the photo's displayed pixels; browsers show
    the image in its EXIF orientation, as the boxes are), and the table of the faces. The photo is referenced
    by a path relative to the page."""
    out = Path(out_html)
    out.parent.mkdir(parents=True, exist_ok=True)
    size = (meta.get("picture") or {}).get("display_size") or [0, 0]
    w, h = int(size[0]), int(size[1])
    img = ""
    note = "no photo file (an array was predicted)"
    if image_path is not None and Path(image_path).is_file():
        rel = quote(Path(os.path.relpath(Path(image_path).resolve(), out.resolve().parent)).as_posix())
        marks = []
        for r in df.itertuples(index=False):
            b = [getattr(r, c, math.nan) for c in ("box_x0", "box_y0", "box_x1", "box_y1")]
            if not all(math.isfinite(float(x)) for x in b):
                continue
            v, a = float(r.valence), float(r.arousal)
            label = f"{int(r.person)}: v {v:+.2f} a {a:+.2f}" if math.isfinite(v) and math.isfinite(a) \
                else f"{int(r.person)}"
            sw = max(2.0, max(w, h) / 300)
            marks.append(f'<rect x="{b[0]:.1f}" y="{b[1]:.1f}" width="{b[2] - b[0]:.1f}" height="{b[3] - b[1]:.1f}" '
                         f'fill="none" stroke="#ffc800" stroke-width="{sw:.1f}"/>'
                         f'<text x="{b[0]:.1f}" y="{max(b[1] - sw, 4 * sw):.1f}" font-size="{6 * sw:.0f}" '
                         f'fill="#ffc800" stroke="#000" stroke-width="{sw / 4:.1f}">{html.escape(label)}</text>')
        img = (f'<svg id="vaest-photo" viewBox="0 0 {w} {h}" style="max-width:100%;max-height:80vh" '
               f'xmlns="http://www.w3.org/2000/svg"><image href="{html.escape(rel)}" x="0" y="0" width="{w}" '
               f'height="{h}"/>{"".join(marks)}</svg>')
        note = f"photo: {Path(image_path).name} ({w}x{h} as shown)"
    cols = [c for c in df.columns if c not in ("frame", "time")]
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(getattr(r, c)))}</td>" for c in cols) + "</tr>"
                   for r in df[cols].itertuples(index=False))
    title = Path(str(meta.get("input") or out.stem)).name
    text = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 12px 18px; color: #222; }}
table {{ border-collapse: collapse; font-size: 12px; }} td, th {{ border: 1px solid #ddd; padding: 2px 6px; }}
.vaest-note {{ color: #666; font-size: 12px; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<div>{img}</div><div class="vaest-note">{html.escape(note)}</div>
<h2>faces</h2><table id="vaest-faces"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>
<details open><summary>metadata</summary><table class="meta">
{_meta_rows(meta)}
</table></details>
</body></html>
"""
    atomic_write_text(out, text)
    log.info("page: %s", out)
    return out


def _cell(x: Any) -> str:
    """A table cell: numbers with 4 decimals, NaN empty."""
    if isinstance(x, (float, np.floating)):
        return "" if not math.isfinite(float(x)) else f"{float(x):.4f}"
    return str(x)


# ---------------------------------------------------------------- folder runs

def _read_index(index_csv: Path):
    import pandas as pd

    if not index_csv.is_file():
        raise VaestError(f"{index_csv}: no such index (a folder run of `vaest predict` writes OUT/index.csv)")
    try:
        df = pd.read_csv(index_csv, dtype=str, keep_default_na=False)
    except Exception as e:  # pandas raises several types for unreadable CSV
        raise VaestError(f"{index_csv}: cannot read as CSV ({type(e).__name__}: {e})") from None
    missing = [c for c in ("input", "csv", "status") if c not in df.columns]
    if missing:
        raise VaestError(f"{index_csv}: missing column(s) {', '.join(missing)} (expected input,csv,status,reason)")
    if "reason" not in df.columns:
        df["reason"] = ""
    return df


def _resolve(base: Path, p: str) -> Path:
    """A path from index.csv: absolute, else relative to the index's folder, else to the working folder."""
    q = Path(p)
    if q.is_absolute() or (base / q).exists() or not q.exists():
        return q if q.is_absolute() else base / q
    return q.resolve()


def page_for(csv_path: Path) -> Path:
    """Where the page of a prediction CSV goes: beside it, same stem, ``.html``."""
    return csv_path.with_suffix(".html")


def write_index(index_csv: str | Path, out_html: str | Path | None = None) -> Path:
    """Write ``index.html`` for a folder run: every input with its status and reason, linked to its page
    (``<csv stem>.html`` beside the CSV) when that page exists, else to the input itself."""
    index_csv = Path(index_csv)
    out = Path(out_html) if out_html is not None else index_csv.with_name("index.html")
    df = _read_index(index_csv)
    base = out.resolve().parent
    rows = []
    for r in df.itertuples(index=False):
        page = page_for(_resolve(index_csv.parent, r.csv)) if r.csv else None
        target = page if page is not None and page.is_file() else _resolve(index_csv.parent, r.input)
        href = quote(Path(os.path.relpath(target.resolve(), base)).as_posix())
        cls = "ok" if r.status == "ok" else "failed"
        rows.append(f'<tr class="{cls}"><td><a href="{html.escape(href)}">{html.escape(r.input)}</a></td>'
                    f"<td>{html.escape(r.status)}</td><td>{html.escape(r.reason)}</td></tr>")
    n_ok = int((df["status"] == "ok").sum())
    text = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>vaest: {html.escape(str(index_csv.parent.name))}</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 12px 18px; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ddd; padding: 3px 8px; text-align: left; }}
tr.failed td {{ background: #fff0f0; }}
</style></head><body>
<h1>vaest predictions: {html.escape(str(index_csv.parent))}</h1>
<p>{len(df)} inputs, {n_ok} ok, {len(df) - n_ok} failed.</p>
<table><thead><tr><th>input</th><th>status</th><th>reason</th></tr></thead><tbody>
{chr(10).join(rows)}
</tbody></table></body></html>
"""
    atomic_write_text(out, text)
    return out


def view_folder(folder: str | Path, out_html: str | Path | None = None) -> Path:
    """Pages for every ok input of a folder run (``folder/index.csv``) and its ``index.html``.

    A page that cannot be written is logged and skipped (its row links to the input); the batch goes on.
    """
    folder = Path(folder)
    index_csv = folder / "index.csv"
    df = _read_index(index_csv)
    for r in track(list(df.itertuples(index=False)), "pages"):
        if r.status != "ok" or not r.csv:
            continue
        csv_path = _resolve(folder, r.csv)
        media = _resolve(folder, r.input)
        try:
            write_page(csv_path, media if media.is_file() else None, page_for(csv_path))
        except VaestError as e:
            log.error("%s", e)
    return write_index(index_csv, out_html)


# ---------------------------------------------------------------- evaluation report

def _table(head: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "") -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "\n".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>\n{body}\n</tbody></table>'


def _num(x: float) -> str:
    return "nan" if not math.isfinite(x) else f"{x:.4f}"


@dataclass
class EvalRun:
    """One run's predictions of one labelled video, scored by :func:`vaest.report.eval_videos`: its label, its
    smoothed predictions (n', 2) and the CCC of its raw and smoothed predictions (``valence``, ``arousal``,
    ``mean``)."""

    label: str
    smoothed: np.ndarray
    raw_ccc: dict[str, float]
    smoothed_ccc: dict[str, float]


@dataclass
class EvalVideo:
    """One labelled video of an evaluation, as its page draws it: ``times`` (n,) seconds at ``fps``, ``labels``
    (n, 2), each run's scored predictions (``runs``, first = the one drawn on the valence/arousal plane) and the
    run folders by label (``folders``)."""

    id: str
    media: Path | None
    fps: float
    times: np.ndarray
    labels: np.ndarray
    runs: list[EvalRun]
    folders: dict[str, str] = field(default_factory=dict)


def write_eval_report(stage_head: Sequence[str], stage_cells: Sequence[Sequence[str]], videos: Sequence[EvalVideo],
                      out_dir: str | Path, split: str = "val", corpus_root: Any = "", n_labelled: int = 0,
                      proxy: bool = True) -> Path:
    """Write ``out_dir/index.html`` for evaluated runs and one page per video of ``videos`` (rendering only: the
    scores come from :mod:`vaest.report`).

    The index holds the stage table (``stage_head`` / ``stage_cells``, one row per run and stage) and the CCC of
    each run on each video, raw and smoothed; each video's page (``video_<id>.html``) draws the true curves and
    every run's smoothed predictions under the video, when its media is found. Returns the index path.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    per_video: list[list[str]] = []
    for v in track(videos, "video pages"):
        n = len(v.times)
        page = f"video_{safe_name(v.id)}.html"
        preds = []
        for i, r in enumerate(v.runs):
            preds.append((r.label, r.smoothed, PALETTE[i % len(PALETTE)]))
            per_video.append([f'<a href="{quote(page)}">{html.escape(v.id)}</a>', html.escape(r.label),
                              *(_num(r.raw_ccc[d]) for d in ("valence", "arousal", "mean")),
                              *(_num(r.smoothed_ccc[d]) for d in ("valence", "arousal", "mean"))])
        panels = []
        for d, dim in enumerate(("valence", "arousal")):
            ss = [Series("true", v.labels[:, d], COLORS["true"], 2.0)]
            ss += [Series(lab, np.pad(p[:, d], (0, n - len(p)), constant_values=np.nan), col, 1.2)
                   for lab, p, col in preds]
            panels.append(Panel(f"{dim}: true vs smoothed predictions", ss, dim))
        best = preds[0][1]
        plane = (np.pad(best[:, 0], (0, n - len(best)), constant_values=np.nan),
                 np.pad(best[:, 1], (0, n - len(best)), constant_values=np.nan))
        page_path = out / page
        media = prepare_media(v.media, page_path, proxy)
        meta = {"video": v.id, "split": split, "media": str(v.media), "fps": v.fps,
                "plane": f"current point and trail: {preds[0][0]} (smoothed)", "runs": dict(v.folders)}
        text = render_page(f"{v.id}: true vs predicted", [Group(v.id, v.times, np.arange(1, n + 1), panels, plane)],
                           media, meta, links='<p><a href="index.html">back to the report</a></p>')
        atomic_write_text(page_path, text)
    stage_html = _table(stage_head, [[html.escape(c) for c in r] for r in stage_cells], "stages")
    video_html = _table(["video", "run", "raw valence", "raw arousal", "raw mean", "smoothed valence",
                         "smoothed arousal", "smoothed mean"], per_video)
    text = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>vaest evaluation ({html.escape(split)})</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 12px 18px; }}
table {{ border-collapse: collapse; margin-bottom: 16px; }}
td, th {{ border: 1px solid #ddd; padding: 3px 8px; text-align: right; }}
td:first-child, td:nth-child(2), th, table.stages td:nth-child(3) {{ text-align: left; }}
</style></head><body>
<h1>vaest evaluation ({html.escape(split)} split)</h1>
<p>Corpus: {html.escape(str(corpus_root))}; {n_labelled} labelled {html.escape(split)} videos.
CCC over all concatenated frames. Stages: raw stored predictions (no value = 0), filled (holes take the nearest
frame with input), smoothed (filled + per-dimension moving average with the kernels shown + clip).</p>
<h2>Per run</h2>
{stage_html}
<h2>Per video</h2>
<p>Each video links to its page: the video with the true and predicted curves.</p>
{video_html}
</body></html>
"""
    path = out / "index.html"
    atomic_write_text(path, text)
    return path
