"""The live recording: ``OUT/<stem>.csv`` and ``OUT/<stem>.json`` as ``vaest predict`` writes them, valid at any
moment.

The CSV is created with its header (atomically), then rows are appended in whole lines, one ``os.write`` per
flush (at most every ``flush_s`` seconds): a write to a regular file is never left half-done by a signal, so a
killed process leaves a CSV that ends with a complete row, short of at most the last ``flush_s`` of rows. The
JSON metadata is rewritten atomically (:func:`vaest.io.atomic_write_json`) at each flush, ``complete: false``
until the stream ends cleanly.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Callable

from vaest.io import atomic_write_json, atomic_write_text


def _cell(name: str, x: Any) -> str:
    """One CSV cell as ``PredictionResult.to_csv`` writes it: NaN empty, floats 4 decimals, times 6."""
    if isinstance(x, float):
        if not math.isfinite(x):
            return ""
        return f"{x:.6f}" if name == "time" else f"{x:.4f}"
    return str(x)


class LiveRecorder:
    """Appends live rows to ``OUT/<stem>.csv`` and keeps ``OUT/<stem>.json`` current (see the module docstring).

    Args:
        out: output folder (created).
        stem: file name stem.
        meta: called at each flush for the metadata to write.
        flush_s: most seconds between flushes.
    """

    def __init__(self, out: str | Path, stem: str, meta: Callable[[], dict[str, Any]], flush_s: float = 1.0):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.csv = self.out / f"{stem}.csv"
        self.json = self.out / f"{stem}.json"
        self.meta, self.flush_s = meta, float(flush_s)
        self.columns: list[str] | None = None
        self._fd: int | None = None
        self._pending: list[str] = []
        self._last = time.monotonic()
        self.rows = 0

    def add(self, rows: list[dict[str, Any]]) -> None:
        """Queue rows (dicts of the CSV columns; the first row fixes the columns); flushes when due."""
        if rows and self.columns is None:
            self.columns = list(rows[0])
            atomic_write_text(self.csv, ",".join(self.columns) + "\n")
            self._fd = os.open(self.csv, os.O_WRONLY | os.O_APPEND)
        for r in rows:
            self._pending.append(",".join(_cell(c, r.get(c, math.nan)) for c in self.columns or []) + "\n")
        if time.monotonic() - self._last >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        """Append the queued rows in one write and rewrite the metadata."""
        if self._pending and self._fd is not None:
            data = "".join(self._pending).encode()
            view = memoryview(data)
            while view:  # a regular file takes it in one write; loop only for the letter of the API
                view = view[os.write(self._fd, view):]
            self.rows += len(self._pending)
            self._pending = []
        atomic_write_json(self.json, self.meta())
        self._last = time.monotonic()

    def close(self) -> None:
        """Last flush (rows and metadata), file closed."""
        self.flush()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
