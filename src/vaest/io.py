"""Atomic file writes: finished work is either fully on disk or absent, never half-written."""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger(__name__)

# Temporary files of atomic_path are named ".<final name>.<writer's pid>.tmp-<random><suffix>", so a later run
# can tell a write in progress (its process is alive) from one killed midway (left behind: removed).
_TMP_NAME = re.compile(r"^\..+\.(?P<pid>\d+)\.tmp-[A-Za-z0-9_]{8}")
# the name atomic_path gave its temporary files before they carried the writer's pid: removed once this old
_LEGACY_TMP_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]{8}(\.tmp|.*\.tmp(\.[A-Za-z0-9]+)?)$")
LEGACY_TMP_AGE_S = 24 * 3600.0


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path`` (atomic on POSIX).

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    dst = Path(path)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.{os.getpid()}.tmp-", suffix=suffix or (dst.suffix + ".tmp"), dir=dst.parent)
    # mkstemp creates 0600; give the file the mode a plain open() would (0666 minus the user's umask)
    os.fchmod(fd, 0o666 & ~_umask())
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, dst)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process umask (read by setting and restoring it: there is no read-only call)."""
    m = os.umask(0)
    os.umask(m)
    return m


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files of :func:`atomic_path` under ``folder`` (recursively) whose writing process
    is gone, i.e. writes killed midway; writes still in progress are left alone. Returns the removed paths.

    Call it at the start of a run that writes into ``folder`` (the feature store does, for every extraction).
    """
    root = Path(folder)
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    now = time.time()
    for dirpath, _, files in os.walk(root):
        for name in files:
            if not name.startswith("."):
                continue
            p = Path(dirpath) / name
            m = _TMP_NAME.match(name)
            try:
                if m:
                    stale = not _alive(int(m["pid"]))
                else:
                    stale = bool(_LEGACY_TMP_NAME.match(name)) and now - p.stat().st_mtime > LEGACY_TMP_AGE_S
                if stale:
                    p.unlink()
                    removed.append(p)
            except FileNotFoundError:  # finished or removed meanwhile
                continue
    if removed:
        log.info("removed %d temporary file(s) left by interrupted writes under %s", len(removed), root)
    return removed


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def safe_name(s: str) -> str:
    """``s`` as a file-name part: every character other than letters, digits, ``-``, ``_`` and ``.`` becomes ``_``."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in s)


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file's bytes, read in 1 MiB blocks (the identity of a weights file wherever it
    lies: bundle sources, the feature identity of a face encoder's records)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def folder_fingerprint(folder: str | os.PathLike, samples: int = 16, chunk: int = 1 << 16) -> str:
    """SHA-256 identity of a model folder (multi-GB weights) that does not depend on where it lies: every
    ``*.json`` file's bytes, and per weights file its name, size and ``samples`` chunks of ``chunk`` bytes at
    evenly spaced offsets (1 MiB read per file by default, instead of hashing every byte). Two copies of the same
    checkpoint give the same value; two fine-tunes of one architecture (same names and sizes) differ in their
    sampled tensor bytes."""
    import hashlib

    root = Path(folder)
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(root).as_posix()
        if p.suffix == ".json":
            h.update(rel.encode() + b"\0" + p.read_bytes())
        elif p.suffix in WEIGHT_SUFFIXES:
            size = p.stat().st_size
            h.update(f"{rel}\0{size}".encode())
            with open(p, "rb") as f:
                for k in range(samples):
                    f.seek(max(0, (size - chunk) * k // max(1, samples - 1)))
                    h.update(f.read(chunk))
    return h.hexdigest()
