"""Hand back the page cache of freshly installed native libraries, so the first runs map them as later runs do.

Run by ``scripts/setup.sh`` right after it installs packages. Why (the mechanism is our reading, the effect is
measured): on this project's Linux hosts (kernel 6.18, ext4 with large folios), the pages that ``pip`` has just written stay in the page cache as large folios, and a
process that maps a library built from them gets whole folios counted in its resident set (file-backed, shared,
reclaimable pages, but part of RSS and of its peak). Measured on a fresh clone: the same files, the same
anonymous memory (144 MB after importing numpy, OpenCV, PyAV, pandas, SciPy, MediaPipe and ONNX Runtime), but
194 MB file-backed right after installation against 132 MB once those pages had been read back from disk; whole
``vaest predict`` runs were 60-160 MB higher (zero-shot / with torch). Dropping the just-written pages
(``posix_fadvise(DONTNEED)`` after a ``sync``) makes the next import read them back at the normal size: the
figures of a fresh install then match those of an older one. Nothing is changed on disk.

Usage: ``python scripts/settle_page_cache.py VENV``
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def settle(root: Path) -> tuple[int, int]:
    """Drop the cached pages of every shared library under ``root``; returns (files, bytes)."""
    os.sync()  # dirty pages are not dropped: write them first
    n = size = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            if not (name.endswith(".so") or ".so." in name):
                continue
            p = os.path.join(dirpath, name)
            try:
                fd = os.open(p, os.O_RDONLY)
            except OSError:
                continue
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                n += 1
                size += os.fstat(fd).st_size
            except OSError:
                pass
            finally:
                os.close(fd)
    return n, size


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__.strip().splitlines()[-1])
    if not hasattr(os, "posix_fadvise"):
        return  # not Linux: nothing to do
    n, size = settle(Path(sys.argv[1]))
    print(f"[setup] page cache of {n} freshly installed libraries ({size / 2**20:.0f} MB on disk) handed back")


if __name__ == "__main__":
    main()
