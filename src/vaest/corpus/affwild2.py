"""Aff-Wild2 / ABAW valence-arousal layout: annotation files, video lookup, face-crop folders.

Layout (any of the annotation roots below ``ROOT`` is accepted)::

    ROOT/annotations/VA_Estimation_Challenge/{Train_Set,Validation_Set,Test_Set}/<name>.txt
    ROOT/<videos folder>/<name>.mp4|.avi|...        (one or more folders, searched recursively)
    ROOT/cropped_aligned/<name>/00001.jpg ...       (optional; 1-based frame numbers)

Annotation files are read by :func:`vaest.corpus.labels.read_va_file`. ``<name>_left`` / ``<name>_right`` label
files both belong to video ``<name>``.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from vaest.corpus.records import Corpus, Video

log = logging.getLogger(__name__)

SPLIT_DIRS = {"Train_Set": "train", "Validation_Set": "val", "Test_Set": "test"}
VIDEO_EXTS = (".mp4", ".avi", ".mkv", ".mov", ".flv", ".webm", ".m4v", ".mpg")
_SIDE_RE = re.compile(r"^(?P<base>.+?)_(?P<side>left|right)$")


def split_side(name: str) -> tuple[str, str | None]:
    """``'135-24-1920x1080_left'`` -> (``'135-24-1920x1080'``, ``'left'``); other names -> (name, None)."""
    m = _SIDE_RE.match(name)
    if m:
        return m.group("base"), m.group("side")
    return name, None


def find_annotation_dirs(root: Path) -> dict[str, Path]:
    """Locate the split folders (Train_Set, Validation_Set, Test_Set) below ``root``.

    Returns a mapping split -> folder for the splits present. ``root`` may be the corpus root, the
    ``annotations`` folder, ``VA_Estimation_Challenge`` itself, or a folder holding the split folders.
    """
    root = Path(root)
    candidates = [
        root / "annotations" / "VA_Estimation_Challenge",
        root / "VA_Estimation_Challenge",
        root,
    ]
    for c in candidates:
        found = {SPLIT_DIRS[d.name]: d for d in sorted(c.glob("*")) if d.is_dir() and d.name in SPLIT_DIRS}
        if found:
            return found
    return {}


def _nfc(name: str) -> str:
    """Unicode NFC form: file names copied from macOS are NFD, annotation names usually NFC."""
    import unicodedata

    return unicodedata.normalize("NFC", name)


def index_videos(root: Path) -> dict[str, Path]:
    """Map video stem (NFC) -> path for every video file below ``root`` (first found wins, sorted order)."""
    out: dict[str, Path] = {}
    root = Path(root)
    if not root.exists():
        return out
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in ("cropped_aligned", "annotations") and not d.startswith("."))
        for f in sorted(filenames):
            if f.lower().endswith(VIDEO_EXTS):
                out.setdefault(_nfc(Path(f).stem), Path(dirpath) / f)
    return out


def read_fps_table(path: Path) -> dict[str, float]:
    """Read a ``video_name,fps`` CSV (the organisers' ``videos_fps.csv``) into stem -> fps."""
    import csv

    out: dict[str, float] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            try:
                out[Path(row["video_name"]).stem] = float(row["fps"])
            except (KeyError, ValueError, TypeError):
                continue
    return out


def load_affwild2(root: str | os.PathLike, video_dirs: list[Path] | None = None):
    """Read an ABAW VA corpus into a :class:`vaest.corpus.records.Corpus`.

    Videos are looked up by name below ``root`` (or in ``video_dirs``); a label file whose video is not
    found still yields a record (``media=None``), so statistics work on an annotation folder alone.
    The frame rate comes from a ``videos_fps.csv`` found below the root, else from the video when probed.
    """
    root = Path(root)
    splits = find_annotation_dirs(root)
    vids: dict[str, Path] = {}
    for d in (video_dirs or [root]):
        for k, v in index_videos(Path(d)).items():
            vids.setdefault(k, v)
    fps_table: dict[str, float] = {}
    for cand in sorted(root.rglob("videos_fps.csv"))[:1]:
        fps_table = read_fps_table(cand)
    crop_root = next((p for p in [root / "cropped_aligned", root.parent / "cropped_aligned"] if p.is_dir()), None)
    videos = []
    for split, folder in splits.items():
        for f in sorted(folder.glob("*.txt")):
            name = f.stem
            base, side = split_side(name)
            media = vids.get(_nfc(base)) or vids.get(_nfc(name))
            face_dir = None
            if crop_root is not None:
                for cand in (crop_root / name, crop_root / base):
                    if cand.is_dir():
                        face_dir = cand
                        break
            videos.append(Video(id=name, media=media, split=split, fps=fps_table.get(base) or fps_table.get(name),
                                label_path=f, face_dir=face_dir, side=side))
    return Corpus(videos=videos, root=root, kind="affwild2")
