"""The corpus records: :class:`Video` (one labelled or unlabelled media item) and :class:`Corpus` (a list of them).

Label/video length rule (documented, never a silent shift): label line k is frame k. When a label file has
more lines than the decoded video has frames, the extra lines are dropped; when it has fewer, the frames past
its end are marked invalid. Both cases log a warning naming the file.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from vaest.corpus.labels import read_va_file

log = logging.getLogger(__name__)

AUDIO_EXTS = (".wav", ".mp3", ".flac", ".ogg", ".m4a", ".opus")


@dataclass
class Video:
    """One labelled (or unlabelled) media item.

    Attributes:
        id: unique name, the annotation file's stem for ABAW (``<video>_left`` for a two-person video).
        media: the media file (video, or audio for audio-only items); None when only labels exist.
        split: ``train``, ``val``, ``test`` or ``predict``.
        fps: frame rate of the label grid (the video's frame rate), when known.
        label_path: per-frame annotation file (ABAW format), when any.
        clip_label: one (valence, arousal) for the whole clip, when the corpus gives that instead.
        face_dir: folder of pre-cropped faces ``%05d.jpg`` (1-based), when any.
        side: ``left``/``right`` for two-person videos.
        audio_only: the media has no video stream to use.
    """

    id: str
    media: Path | None
    split: str
    fps: float | None = None
    label_path: Path | None = None
    clip_label: tuple[float, float] | None = None
    face_dir: Path | None = None
    side: str | None = None
    audio_only: bool = False
    _labels: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def has_labels(self) -> bool:
        return self.label_path is not None or self.clip_label is not None or self._labels is not None

    @property
    def labels(self) -> np.ndarray | None:
        """(n, 2) float32 per-frame labels with NaN for invalid frames, loaded on first use.

        A clip-level label has no frame count of its own: use :meth:`labels_for` with the frame count.
        """
        if self._labels is None and self.label_path is not None:
            self._labels = read_va_file(self.label_path)
        return self._labels

    @property
    def n_label_frames(self) -> int | None:
        lab = self.labels
        return None if lab is None else len(lab)

    def labels_for(self, n_frames: int) -> np.ndarray:
        """Labels reconciled to ``n_frames`` decoded frames (see this module's length rule).

        Returns (n_frames, 2) float32, NaN where invalid or unlabelled.
        """
        if self.clip_label is not None and self.label_path is None:
            return np.tile(np.asarray(self.clip_label, dtype=np.float32), (n_frames, 1))
        lab = self.labels
        if lab is None:
            return np.full((n_frames, 2), np.nan, dtype=np.float32)
        return reconcile_labels(lab, n_frames, str(self.label_path))


def reconcile_labels(labels: np.ndarray, n_frames: int, name: str = "labels") -> np.ndarray:
    """Apply the length rule: drop lines past the video's end, mark frames past the labels' end invalid."""
    n = len(labels)
    if n == n_frames:
        return labels
    if n > n_frames:
        log.warning("%s: %d label lines for %d decoded frames; the last %d lines are ignored",
                    name, n, n_frames, n - n_frames)
        return labels[:n_frames]
    log.warning("%s: %d label lines for %d decoded frames; frames %d..%d are marked invalid",
                name, n, n_frames, n + 1, n_frames)
    out = np.full((n_frames, 2), np.nan, dtype=np.float32)
    out[:n] = labels
    return out


@dataclass
class Corpus:
    """A list of :class:`Video` records with the folder they came from."""

    videos: list[Video]
    root: Path
    kind: str = "affwild2"
    source: Path | None = None  # the file it was read from when that is not ``root`` (a manifest CSV)

    @property
    def location(self) -> Path:
        """What :func:`load_corpus` must be given to open this corpus again (runs record it): the manifest
        file for a manifest corpus (its folder alone would read as an unlabelled folder of media), else root."""
        return self.source or self.root

    def __iter__(self) -> Iterator[Video]:
        return iter(self.videos)

    def __len__(self) -> int:
        return len(self.videos)

    def __str__(self) -> str:
        return str(self.root)

    def with_splits(self, splits: dict[str, str]) -> "Corpus":
        """A copy whose videos named in ``splits`` (id -> split) move to that split; media and labels unchanged.

        Used to train on part of a split (cross-fitting) without touching the corpus on disk.
        """
        return Corpus([dataclasses.replace(v, split=splits[v.id]) if v.id in splits else v for v in self.videos],
                      self.root, self.kind, self.source)

    def split(self, *names: str) -> list[Video]:
        """Videos of the given split(s), in corpus order."""
        return [v for v in self.videos if v.split in names]

    @property
    def splits(self) -> list[str]:
        seen: list[str] = []
        for v in self.videos:
            if v.split not in seen:
                seen.append(v.split)
        return seen

    def get(self, video_id: str) -> Video:
        for v in self.videos:
            if v.id == video_id:
                return v
        raise KeyError(video_id)

    def media_items(self, videos: Iterable[Video] | None = None) -> dict[Path, list[Video]]:
        """Group videos by media file (a two-person video has two label tracks on one file)."""
        out: dict[Path, list[Video]] = {}
        for v in videos if videos is not None else self.videos:
            if v.media is not None:
                out.setdefault(v.media, []).append(v)
        return out
