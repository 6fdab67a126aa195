"""The ``vaest`` command line: synth | corpus | features | extract | train | evaluate | predict | submit | demo | view.

One Typer app (:mod:`vaest.cli.common`), its commands in one module per concern: corpora, features and extraction
(:mod:`.data`), training (:mod:`.train`), evaluation, prediction, submission, the demo and pages (:mod:`.run`).
Importing this package registers them all; :func:`main` is the console entry point.
"""

from __future__ import annotations

import os
import sys

from vaest.cli import data, run, train  # noqa: F401  (importing a command module registers its commands)
from vaest.cli.common import FAST_EXIT, app
from vaest.errors import VaestError

__all__ = ["app", "main"]


def _exit_now(code: int) -> None:
    import logging as _logging

    _logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def main() -> None:
    """Console entry point: user-facing errors become one clear line and exit code 2."""
    FAST_EXIT[0] = False
    try:
        app()
    except VaestError as e:
        msg = " ".join(str(e).split())
        sys.stderr.write(f"error: {msg}\n")
        sys.exit(2)
    except SystemExit as e:
        if FAST_EXIT[0] and isinstance(e.code, (int, type(None))):
            _exit_now(int(e.code or 0))
        raise
