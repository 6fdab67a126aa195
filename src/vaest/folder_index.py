"""The index of a prediction folder: every input ever predicted into ``OUT``, merged by input, safe across runs.

``OUT/index.csv`` has one row per input (``input, csv, status, reason, media_key, settings, time``). Each run
merges its rows into what is there instead of rewriting the file: rows of other inputs are kept, and for an
input predicted again the row with the later ``time`` wins (so two runs that finish the same input in either
order leave the newer result listed). The read-merge-write happens under an exclusive lock on
``OUT/.index.lock`` (``fcntl.flock`` on POSIX, ``msvcrt.locking`` of its first byte on Windows; both released
by the system if the process dies), and the file is replaced
atomically, so runs into one folder at the same time, local or on Ray, never lose each other's rows and a
reader never sees a half-written index.

``media_key`` (:func:`vaest.predictor.media_key`) and ``settings`` (a hash of what changes a prediction: the
model and the predictor's options) let a rerun skip inputs already predicted the same way
(:func:`done_inputs`).
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import os
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

from vaest.errors import VaestError
from vaest.io import atomic_write_text

log = logging.getLogger(__name__)

INDEX_FIELDS = ("input", "csv", "status", "reason", "media_key", "settings", "time")
LOCK_NAME = ".index.lock"


def now_stamp() -> str:
    """UTC time with microseconds, sortable as text (``2026-12-06T11:20:00.123456Z``): a row's ``time``."""
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"


# Windows: msvcrt.locking does not wait by itself beyond its own 10 x 1 s (LK_LOCK); the lock is taken with
# LK_NBLCK, retried every LOCK_RETRY_S up to LOCK_WAIT_S (a merge holds it for milliseconds, an HTML rebuild of
# a large index for well under a second)
LOCK_WAIT_S = 120.0
LOCK_RETRY_S = 0.05


@contextlib.contextmanager
def index_lock(out: str | os.PathLike) -> Iterator[None]:
    """Hold the exclusive lock of folder ``out``'s index (blocks while another process holds it; on Windows for
    at most :data:`LOCK_WAIT_S`, then :class:`~vaest.errors.VaestError` naming the lock file)."""
    path = Path(out) / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        try:
            import fcntl
        except ImportError:  # Windows
            with _msvcrt_lock(f, path):
                yield
            return
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def _msvcrt_lock(f: io.BufferedRandom, path: Path) -> Iterator[None]:
    """Hold ``msvcrt.locking`` of the lock file's first byte (the region every run locks), retried up to
    :data:`LOCK_WAIT_S`."""
    import msvcrt

    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        f.seek(0)  # locking() locks from the current position
        try:
            msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
            break
        except OSError:
            if time.monotonic() >= deadline:
                raise VaestError(f"{path}: another process has held the index lock for over {LOCK_WAIT_S:.0f} s "
                                 "(a vaest run writing into this folder); try again when it is done") from None
            time.sleep(LOCK_RETRY_S)
    try:
        yield
    finally:
        f.seek(0)
        msvcrt.locking(f.fileno(), msvcrt.LK_UNLCK, 1)


def read_index(out: str | os.PathLike) -> list[dict[str, str]]:
    """Rows of ``OUT/index.csv`` (missing columns of older indexes read as empty); [] when there is none."""
    p = Path(out) / "index.csv"
    if not p.is_file():
        return []
    try:
        with open(p, newline="") as f:
            return [{k: (r.get(k) or "") for k in INDEX_FIELDS} for r in csv.DictReader(f)]
    except (OSError, csv.Error) as e:
        log.warning("%s: unreadable index, starting a new one (%s)", p, e)
        return []


def merge_rows(old: Iterable[dict[str, str]], new: Iterable[dict[str, str]]) -> list[dict[str, str]]:
    """``old`` rows updated with ``new`` ones, one row per input: the later ``time`` wins (a row without a time
    loses to one with it; between equal times the new row wins). Inputs keep their first-seen order."""
    merged: dict[str, dict[str, str]] = {}
    for r in old:
        merged[r["input"]] = {k: r.get(k, "") for k in INDEX_FIELDS}
    for r in new:
        r = {k: str(r.get(k, "") or "") for k in INDEX_FIELDS}
        cur = merged.get(r["input"])
        if cur is None or r["time"] >= cur["time"]:
            merged[r["input"]] = r
    return list(merged.values())


def merge_index(out: str | os.PathLike, rows: Iterable[dict[str, str]],
                write_html: Callable[[Path], None] | None = None) -> list[dict[str, str]]:
    """Merge ``rows`` into ``OUT/index.csv`` under the folder's lock and write it atomically; then, with
    ``write_html``, rebuild the HTML index from the merged CSV (still under the lock). Returns the merged rows."""
    out = Path(out)
    with index_lock(out):
        merged = merge_rows(read_index(out), rows)
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(INDEX_FIELDS), lineterminator="\n")
        w.writeheader()
        w.writerows(merged)
        atomic_write_text(out / "index.csv", buf.getvalue())
        if write_html is not None:
            write_html(out / "index.csv")
    return merged


def done_inputs(out: str | os.PathLike, keys: dict[str, tuple[str, str]]) -> dict[str, dict[str, str]]:
    """Index rows of the inputs already predicted into ``out`` the same way: ``keys`` maps an input to its
    (media key, settings hash); an input counts as done when its row says ``ok`` with both equal and its CSV
    is still there."""
    out = Path(out)
    done = {}
    for r in read_index(out):
        k = keys.get(r["input"])
        if (k is not None and r["status"] == "ok" and (r["media_key"], r["settings"]) == k and r["csv"]
                and (out / r["csv"]).is_file()):
            done[r["input"]] = r
    return done


class IndexWriter:
    """Collects a run's index rows and merges them into the folder's index as they come: at once for the first
    row, then at most every ``every`` seconds, and at :meth:`close` (a killed run loses at most the rows of the
    last ``every`` seconds from the index; their CSVs are on disk and a rerun lists them again)."""

    def __init__(self, out: str | os.PathLike, write_html: Callable[[Path], None] | None = None,
                 every: float = 2.0):
        self.out, self.write_html, self.every = Path(out), write_html, every
        self.pending: list[dict[str, str]] = []
        self.rows: list[dict[str, str]] = []
        self._last = 0.0

    def add(self, row: dict[str, str]) -> None:
        row = {**row, "time": row.get("time") or now_stamp()}
        self.pending.append(row)
        self.rows.append(row)
        if time.monotonic() - self._last >= self.every:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            merge_index(self.out, self.pending, self.write_html)
            self.pending = []
        self._last = time.monotonic()

    def close(self) -> None:
        self.flush()
