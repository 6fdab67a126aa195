"""Rich progress bars and logging set-up shared by every long loop."""

from __future__ import annotations

import logging
import os
import re
import sys
from contextlib import contextmanager
from typing import Iterable, Iterator, TypeVar

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")


def setup_logging(level: int | str = logging.INFO) -> None:
    """Route vaest's logs through rich (once); ``VAEST_LOG`` overrides the level."""
    level = os.environ.get("VAEST_LOG", level)
    root = logging.getLogger("vaest")
    if not any(isinstance(h, RichHandler) for h in root.handlers):
        # logs (warnings, errors) on stderr, so stdout stays for results
        h = RichHandler(console=Console(stderr=True), show_path=False, rich_tracebacks=False, markup=False)
        h.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(h)
    root.setLevel(level)


_ENABLED: list[bool] = []  # innermost progress_enabled() setting wins


@contextmanager
def progress_enabled(enabled: bool) -> Iterator[None]:
    """Within this block, show progress bars or not (the Python API's ``progress=`` switch); without it the
    environment decides (``VAEST_NO_PROGRESS=1`` turns them off)."""
    _ENABLED.append(bool(enabled))
    try:
        yield
    finally:
        _ENABLED.pop()


def _disabled() -> bool:
    if _ENABLED:
        return not _ENABLED[-1]
    return os.environ.get("VAEST_NO_PROGRESS") == "1" or not sys.stderr.isatty() and os.environ.get("CI") == "true"


def make_progress(transient: bool = False) -> Progress:
    """A Progress with the project's columns (description, bar, n/N, elapsed, remaining)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        transient=transient,
        disable=_disabled(),
    )


def track(items: Iterable[T], description: str, total: int | None = None, transient: bool = True) -> Iterator[T]:
    """Iterate ``items`` with a rich progress bar (disabled in CI logs or with ``VAEST_NO_PROGRESS=1``)."""
    if total is None:
        try:
            total = len(items)  # type: ignore[arg-type]
        except TypeError:
            total = None
    with make_progress(transient=transient) as p:
        task = p.add_task(description, total=total)
        for it in items:
            yield it
            p.advance(task)


NATIVE_NOISE = re.compile(r"^(?:[IWE]\d{4} [\d:.]+ +\d+ \S+:\d+\]|INFO: Created TensorFlow Lite|"
                          r"WARNING: All log messages before absl::InitializeLog)")
_SHOW_NATIVE: list[bool] = [False]


def show_native_logs(show: bool) -> None:
    """Let third-party native log lines (MediaPipe / absl / TF Lite) through (``--verbose``) or filter them."""
    _SHOW_NATIVE[0] = bool(show)


@contextmanager
def native_noise_piped() -> Iterator[None]:
    """As :func:`native_noise_filtered`, for a long-running section whose own stderr lines must come out at once
    (``vaest live``): file descriptor 2 goes into a pipe that a thread reads line by line, writing every line but
    the native log noise to the real stderr as it comes. Safe with several threads (nothing swaps the descriptor
    while the section runs)."""
    if _SHOW_NATIVE[0]:
        yield
        return
    import threading

    sys.stderr.flush()
    saved = os.dup(2)
    r, w = os.pipe()
    os.dup2(w, 2)
    os.close(w)

    def pump() -> None:
        with os.fdopen(r, "rb") as src:
            for line in src:
                if not NATIVE_NOISE.match(line.decode(errors="replace")):
                    os.write(saved, line)

    t = threading.Thread(target=pump, name="vaest-stderr", daemon=True)
    t.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # the pipe's last writer closes: the pump sees its end
        t.join(timeout=5.0)
        os.close(saved)


@contextmanager
def native_noise_filtered() -> Iterator[None]:
    """Capture file descriptor 2 while native libraries run, then write back every line except their log noise
    (lines such as ``W0000 00:00:... inference_feedback_manager.cc:114] ...``). Off after ``show_native_logs(True)``."""
    if _SHOW_NATIVE[0]:
        yield
        return
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = [ln for ln in tmp.read().decode(errors="replace").splitlines() if not NATIVE_NOISE.match(ln)]
            if kept:
                sys.stderr.write("\n".join(kept) + "\n")
                sys.stderr.flush()
