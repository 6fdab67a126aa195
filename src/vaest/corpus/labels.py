"""The per-frame valence/arousal annotation file (ABAW format), read and written by every corpus layout.

The file has the header ``valence,arousal`` and line k (1-based) holds frame k; ``-5`` marks an invalid frame.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np

from vaest.errors import LabelError
from vaest.io import atomic_write_text

log = logging.getLogger(__name__)

INVALID = -5.0
HEADER = "valence,arousal"


def read_va_file(path: str | os.PathLike) -> np.ndarray:
    """Read one VA annotation file.

    Returns:
        float32 array (n_frames, 2) of (valence, arousal); invalid frames (``-5``, values outside
        [-1, 1], NaN or unparsable numbers) are NaN in both columns.

    Raises:
        LabelError: the file is missing, empty, or has a header other than ``valence,arousal``.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise LabelError(f"{p}: annotation file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise LabelError(f"{p}: cannot read annotation file ({e})") from None
    # split on line ends only: str.splitlines also breaks at \x0c, \x1c-\x1e, \x85, \u2028..., which would
    # shift every later frame by one
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if not text.strip():
        raise LabelError(f"{p}: annotation file is empty (expected header '{HEADER}')")
    header = lines[0].strip().replace(" ", "").lower()
    if header != HEADER:
        raise LabelError(f"{p}: unexpected header {lines[0].strip()!r}, expected '{HEADER}'")
    body = lines[1:]
    while body and not body[-1].strip():
        body.pop()
    out = np.full((len(body), 2), np.nan, dtype=np.float32)
    bad = 0
    for k, line in enumerate(body):
        parts = line.strip().split(",")
        if len(parts) != 2:
            bad += 1
            continue
        try:
            v, a = float(parts[0]), float(parts[1])
        except ValueError:
            bad += 1
            continue
        if v == INVALID or a == INVALID:
            continue
        if not (math.isfinite(v) and math.isfinite(a)) or abs(v) > 1.0 or abs(a) > 1.0:
            bad += 1
            continue
        out[k] = (v, a)
    if bad:
        log.warning("%s: %d malformed or out-of-range line(s) treated as invalid frames", p, bad)
    return out


def write_va_file(path: str | os.PathLike, va: np.ndarray) -> None:
    """Write a VA annotation file (NaN rows become ``-5,-5``), atomically."""
    va = np.asarray(va, dtype=np.float64)
    if va.ndim != 2 or va.shape[1] != 2:
        raise ValueError(f"expected (n, 2) valence/arousal array, got shape {va.shape}")
    rows = [HEADER]
    for v, a in va:
        if not (np.isfinite(v) and np.isfinite(a)):
            rows.append("-5,-5")
        else:
            rows.append(f"{v:.3f},{a:.3f}")
    atomic_write_text(path, "\n".join(rows) + "\n")
