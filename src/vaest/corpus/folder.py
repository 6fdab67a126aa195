"""A plain folder (or list) of media files, without labels, for inference."""

from __future__ import annotations

import os
from pathlib import Path

from vaest.corpus.records import AUDIO_EXTS, Corpus, Video
from vaest.corpus.affwild2 import VIDEO_EXTS


def _video_for(path: Path, vid: str | None = None) -> Video:
    return Video(id=vid or path.stem, media=path, split="predict",
                 audio_only=path.suffix.lower() in AUDIO_EXTS)


def load_files(paths: list[Path]) -> Corpus:
    """A corpus of the given media files (ids are file stems, made unique with a counter)."""
    seen: dict[str, int] = {}
    videos = []
    for p in paths:
        p = Path(p)
        stem = p.stem
        if stem in seen:
            seen[stem] += 1
            stem = f"{stem}-{seen[stem]}"
        else:
            seen[stem] = 0
        videos.append(_video_for(p, stem))
    root = Path(os.path.commonpath([str(Path(p).resolve().parent) for p in paths])) if paths else Path(".")
    return Corpus(videos=videos, root=root, kind="files")


def load_folder(root: str | os.PathLike) -> Corpus:
    """Every video or audio file below ``root`` (sorted), split ``predict``."""
    root = Path(root)
    exts = VIDEO_EXTS + AUDIO_EXTS
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in exts
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    c = load_files(files)
    c.root, c.kind = root, "folder"
    return c
