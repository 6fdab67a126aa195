"""Rich progress bars and logging set-up shared by every long loop."""

from __future__ import annotations

import logging
import os
import sys
from typing import Iterable, Iterator, TypeVar

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
        h = RichHandler(show_path=False, rich_tracebacks=False, markup=False)
        h.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(h)
    root.setLevel(level)


def _disabled() -> bool:
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
