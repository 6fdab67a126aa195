"""Bring-your-own data: a CSV manifest, one row per media file.

Columns (header required; only ``path`` is mandatory):

``path``      media file (video, or audio-only: wav/mp3/flac/...), relative to the manifest's folder or absolute
``split``     train / val / test (default ``train``)
``id``        unique name (default: the file stem)
``labels``    per-frame label file in ABAW format (``valence,arousal`` header, line k = frame k, ``-5`` invalid)
``valence``, ``arousal``   one pair for the whole clip (used when ``labels`` is empty)
``fps``       rate of the label grid; needed for audio-only files with a per-frame label file
              (e.g. 25 for RECOLA's 40 ms annotations); videos default to their own frame rate
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from vaest.corpus.records import AUDIO_EXTS, Corpus, Video
from vaest.errors import CorpusError

VALID_SPLITS = ("train", "val", "test", "predict")


def load_manifest(path: str | Path) -> Corpus:
    """Read a manifest CSV into a corpus; raises CorpusError naming the file and row on bad rows."""
    path = Path(path)
    try:
        f = open(path, newline="", encoding="utf-8-sig")
    except OSError as e:
        raise CorpusError(f"{path}: cannot open manifest ({e})") from None
    with f:
        try:
            return _parse_manifest(path, csv.DictReader(f))
        except UnicodeDecodeError as e:
            raise CorpusError(f"{path}: manifest is not UTF-8 text ({e})") from None
        except csv.Error as e:
            raise CorpusError(f"{path}: not a readable CSV manifest ({e})") from None


def _parse_manifest(path: Path, reader: csv.DictReader) -> Corpus:
    base = path.parent
    videos: list[Video] = []
    ids: set[str] = set()
    if not reader.fieldnames or "path" not in [c.strip() for c in reader.fieldnames]:
        raise CorpusError(f"{path}: manifest needs a header with at least a 'path' column")
    names = [c.strip() for c in reader.fieldnames if c.strip()]
    if len(set(names)) != len(names):
        raise CorpusError(f"{path}: header repeats a column ({', '.join(reader.fieldnames)})")
    for line_no, raw in enumerate(reader, start=2):
        if None in raw:  # DictReader puts the cells past the header's columns under the key None
            raise CorpusError(f"{path}:{line_no}: more cells than the header has columns")
        row = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
        if not row.get("path"):
            raise CorpusError(f"{path}:{line_no}: empty 'path'")
        if "\x00" in row["path"]:
            raise CorpusError(f"{path}:{line_no}: 'path' holds a NUL character")
        media = Path(row["path"])
        media = media if media.is_absolute() else base / media
        split = row.get("split") or "train"
        if split not in VALID_SPLITS:
            raise CorpusError(f"{path}:{line_no}: split {split!r} is not one of {VALID_SPLITS}")
        vid = row.get("id") or media.stem
        if vid in ids:
            raise CorpusError(f"{path}:{line_no}: duplicate id {vid!r}")
        ids.add(vid)
        label_path = None
        if row.get("labels"):
            lp = Path(row["labels"])
            label_path = lp if lp.is_absolute() else base / lp
        clip = None
        if row.get("valence") or row.get("arousal"):
            try:
                clip = (float(row["valence"]), float(row["arousal"]))
            except (KeyError, ValueError):
                raise CorpusError(f"{path}:{line_no}: valence/arousal must both be numbers") from None
            if not all(math.isfinite(x) and -1 <= x <= 1 for x in clip):
                raise CorpusError(f"{path}:{line_no}: valence/arousal must lie in [-1, 1], got {clip}")
        fps = None
        if row.get("fps"):
            try:
                fps = float(row["fps"])
            except ValueError:
                raise CorpusError(f"{path}:{line_no}: fps {row['fps']!r} is not a number") from None
            if not (math.isfinite(fps) and fps > 0):
                raise CorpusError(f"{path}:{line_no}: fps must be a positive number, got {row['fps']!r}")
        audio_only = media.suffix.lower() in AUDIO_EXTS
        if audio_only and label_path is not None and fps is None:
            raise CorpusError(f"{path}:{line_no}: audio-only file with a per-frame label file needs an 'fps' column")
        videos.append(Video(id=vid, media=media, split=split, fps=fps, label_path=label_path,
                            clip_label=clip, audio_only=audio_only))
    return Corpus(videos=videos, root=base, kind="manifest", source=path)
