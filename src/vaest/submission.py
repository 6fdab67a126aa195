"""ABAW valence/arousal challenge files: write, read back and validate a submission.

Format: a CSV with header ``image_location,valence,arousal`` and one row per frame, ``image_location`` being
``<video>/<frame:05d>.jpg`` with 1-based frame numbers (``<video>`` is the label-track name, so two-person
videos appear as ``<name>_left`` / ``<name>_right``). When the organisers' template is given (a CSV whose first
column is ``image_location``, or a text file with one ``<video>/<frame>.jpg`` or one video name per line), rows
follow its order exactly; frames the predictions do not reach take the nearest predicted frame (counted and
logged). Values are finite and clipped to [-1, 1]; the file is validated before it is written (atomically).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import re
from pathlib import Path

import numpy as np

from vaest.errors import VaestError
from vaest.io import atomic_write_text

log = logging.getLogger(__name__)

HEADER = ("image_location", "valence", "arousal")
_LOC = re.compile(r"^(?P<video>.+)/(?P<frame>\d+)\.jpg$")


class SubmissionError(VaestError):
    """A submission or template file is malformed or inconsistent with the predictions."""


def parse_location(loc: str) -> tuple[str, int]:
    """``'video_left/00012.jpg'`` -> (``'video_left'``, 12)."""
    m = _LOC.match(loc.strip())
    if not m or int(m.group("frame")) < 1:
        raise SubmissionError(f"bad image_location {loc!r} (expected '<video>/<frame>.jpg', frames from 1)")
    return m.group("video"), int(m.group("frame"))


def read_template(path: str | Path, n_frames: dict[str, int] | None = None) -> list[tuple[str, int]]:
    """Rows (video, 1-based frame) in the organisers' order.

    A line holding only a video name expands to all its frames, which needs ``n_frames[video]``.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise SubmissionError(f"{p}: cannot read template ({e})") from None
    rows: list[tuple[str, int]] = []
    for i, line in enumerate(text.splitlines(), start=1):
        first = line.split(",")[0].strip()
        if not first or (i == 1 and first.lower() in ("image_location", "video", "name")):
            continue
        if first.endswith(".jpg"):
            try:
                rows.append(parse_location(first))
            except SubmissionError as e:
                raise SubmissionError(f"{p}:{i}: {e}") from None
        else:
            name = Path(first).stem if first.endswith((".mp4", ".avi")) else first
            if n_frames is None or name not in n_frames:
                raise SubmissionError(f"{p}:{i}: video {name!r} listed without frames and no prediction for it")
            rows.extend((name, k) for k in range(1, n_frames[name] + 1))
    if not rows:
        raise SubmissionError(f"{p}: template lists no frame")
    return rows


def build_rows(predictions: dict[str, np.ndarray], template: list[tuple[str, int]] | None = None) -> list[tuple[str, float, float]]:
    """Rows of the submission from per-video (n_frames, 2) predictions (NaN filled from the nearest frame)."""
    from vaest.timebase import fill_nearest

    clean: dict[str, np.ndarray] = {}
    for vid, va in predictions.items():
        va = np.asarray(va, dtype=np.float64)
        if va.ndim != 2 or va.shape[1] != 2 or len(va) == 0:
            raise SubmissionError(f"predictions for {vid!r} must be a non-empty (n, 2) array, got {va.shape}")
        ok = np.isfinite(va).all(1)
        if not ok.any():
            raise SubmissionError(f"predictions for {vid!r} are all NaN")
        clean[vid] = np.clip(fill_nearest(va, ok), -1.0, 1.0)
    if template is None:
        template = [(vid, k) for vid in sorted(clean) for k in range(1, len(clean[vid]) + 1)]
    missing = sorted({v for v, _ in template} - set(clean))
    if missing:
        raise SubmissionError(f"no predictions for {len(missing)} template video(s): {', '.join(missing[:5])}"
                              + (" ..." if len(missing) > 5 else ""))
    beyond = 0
    rows = []
    for vid, k in template:
        va = clean[vid]
        if k > len(va):
            beyond += 1
        v, a = va[min(k, len(va)) - 1]
        rows.append((f"{vid}/{k:05d}.jpg", float(v), float(a)))
    if beyond:
        log.warning("%d template frame(s) lie past the predicted frames; they take the last predicted frame", beyond)
    return rows


def validate_rows(rows: list[tuple[str, float, float]]) -> None:
    """Check locations are well formed and unique and values finite in [-1, 1]."""
    seen: set[str] = set()
    for loc, v, a in rows:
        parse_location(loc)
        if loc in seen:
            raise SubmissionError(f"duplicate row for {loc}")
        seen.add(loc)
        if not (math.isfinite(v) and math.isfinite(a) and -1 <= v <= 1 and -1 <= a <= 1):
            raise SubmissionError(f"{loc}: values must be finite in [-1, 1], got ({v}, {a})")


def write_submission(path: str | Path, predictions: dict[str, np.ndarray], template: str | Path | None = None) -> int:
    """Validate and write a submission file; returns the number of rows."""
    tpl = read_template(template, {k: len(v) for k, v in predictions.items()}) if template else None
    rows = build_rows(predictions, tpl)
    validate_rows(rows)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(HEADER)
    for loc, v, a in rows:
        w.writerow((loc, f"{v:.6f}", f"{a:.6f}"))
    atomic_write_text(path, buf.getvalue())
    return len(rows)


def read_submission(path: str | Path) -> dict[str, np.ndarray]:
    """Parse and validate a submission file into per-video (n_frames, 2) arrays (frames must be 1..n)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise SubmissionError(f"{p}: cannot read submission ({e})") from None
    lines = text.splitlines()
    if not lines or tuple(c.strip() for c in lines[0].split(",")) != HEADER:
        raise SubmissionError(f"{p}: header must be '{','.join(HEADER)}'")
    rows: list[tuple[str, float, float]] = []
    for i, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.split(",")
        if len(parts) != 3:
            raise SubmissionError(f"{p}:{i}: expected 3 columns, got {len(parts)}")
        try:
            rows.append((parts[0].strip(), float(parts[1]), float(parts[2])))
        except ValueError:
            raise SubmissionError(f"{p}:{i}: valence/arousal are not numbers") from None
    try:
        validate_rows(rows)
    except SubmissionError as e:
        raise SubmissionError(f"{p}: {e}") from None
    per: dict[str, dict[int, tuple[float, float]]] = {}
    for loc, v, a in rows:
        vid, k = parse_location(loc)
        per.setdefault(vid, {})[k] = (v, a)
    out = {}
    for vid, frames in per.items():
        n = max(frames)
        if len(frames) != n:
            raise SubmissionError(f"{p}: video {vid!r} has gaps in its frame numbers (1..{n}, {len(frames)} rows)")
        out[vid] = np.array([frames[k] for k in range(1, n + 1)], dtype=np.float32)
    return out
