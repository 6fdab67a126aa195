"""Behavior segments: the 4 s clips of a video that the behavior extractors describe and the behavior models score.

Reference layout: 4 s clips every 2 s, at least 1 s long, 16 frames sampled at 4 fps. Segment ``i`` starts at
``i * hop`` and ends at ``min(start + win, duration)``; a tail shorter than ``min_len`` is dropped (the segment
before it already reaches the end), except that a video shorter than ``min_len`` keeps one segment. Segments are
stored on ``TimeBase(hop=2, win=4)``; the last, shorter segment is clipped by the video's end, so
:func:`vaest.timebase.to_frames` expands it onto exactly the frames of its true span ``[start, end)`` (its true
end is also stored, extra ``end``). Segment names are ``<video>@<start>-<end>`` (seconds, 2 decimals).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from vaest.features.store import FeatureRecord, LazyRecord
from vaest.timebase import TimeBase, frame_midpoints


@dataclass
class SegmentConfig:
    """Segment layout (reference: 4 s clips, 2 s hop, >= 1 s, 16 frames per clip = 4 fps over 4 s)."""

    win: float = 4.0
    hop: float = 2.0
    min_len: float = 1.0
    n_sample: int = 16


@dataclass(frozen=True)
class Segment:
    """One clip: ``[start, end)`` seconds, the frames whose midpoints lie inside (``first:stop``) and the
    ``n_sample`` frame indices shown to a VLM (evenly spread over the true span)."""

    index: int
    start: float
    end: float
    first: int
    stop: int
    sample: tuple[int, ...]

    @property
    def duration(self) -> float:
        return self.end - self.start

    def name(self, video_id: str) -> str:
        return f"{video_id}@{self.start:.2f}-{self.end:.2f}"


def segment_base(cfg: SegmentConfig | None = None) -> TimeBase:
    """Time base of the segment series (sample i covers ``[i*hop, i*hop + win)``)."""
    cfg = cfg or SegmentConfig()
    return TimeBase(hop=cfg.hop, win=cfg.win, start=0.0)


def _frame_times(n_frames: int, fps: float, frame_times: np.ndarray | None) -> np.ndarray:
    if frame_times is None:
        return np.arange(n_frames, dtype=np.float64) / fps
    t = np.asarray(frame_times, dtype=np.float64)[:n_frames]
    if len(t) < n_frames:
        raise ValueError(f"frame_times has {len(t)} entries for {n_frames} frames")
    return t


def media_duration(n_frames: int, fps: float, frame_times: np.ndarray | None = None) -> float:
    """End of the last frame in seconds (its start plus ``1/fps``)."""
    if n_frames == 0:
        return 0.0
    return round(float(_frame_times(n_frames, fps, frame_times)[-1] + 1.0 / fps), 9)


def sample_frames(times: np.ndarray, start: float, end: float, n: int) -> tuple[int, ...]:
    """Indices of the frames on screen at ``n`` instants spread evenly over ``[start, end)`` (cell centres:
    4 fps for 16 frames over 4 s). ``times``: start times of the frames known so far (sorted)."""
    t = start + (np.arange(n) + 0.5) * (end - start) / n
    idx = np.searchsorted(times, t, side="right") - 1
    return tuple(int(i) for i in np.clip(idx, 0, len(times) - 1))


def make_segment(index: int, start: float, end: float, times: np.ndarray, mids: np.ndarray, n: int) -> Segment:
    """Segment ``index`` over ``[start, end)``: frames by midpoint (``mids``), ``n`` sampled by start (``times``)."""
    first = int(np.searchsorted(mids, start, side="left"))
    stop = int(np.searchsorted(mids, end, side="left"))
    return Segment(index, float(start), float(end), first, stop, sample_frames(times, start, end, n))


def plan_segments(n_frames: int, fps: float, frame_times: np.ndarray | None = None,
                  cfg: SegmentConfig | None = None) -> list[Segment]:
    """Every segment of a video with ``n_frames`` frames (constant ``fps``, or decoded ``frame_times``)."""
    cfg = cfg or SegmentConfig()
    if n_frames <= 0:
        return []
    times = _frame_times(n_frames, fps, frame_times)
    mids = frame_midpoints(n_frames, fps, frame_times)
    dur = media_duration(n_frames, fps, frame_times)
    segs: list[Segment] = []
    i = 0
    while True:
        start = i * cfg.hop
        if start >= dur - 1e-9:
            break
        end = min(start + cfg.win, dur)
        if end - start >= cfg.min_len - 1e-9 or i == 0:
            segs.append(make_segment(i, start, end, times, mids, cfg.n_sample))
        else:
            break  # the remaining tail is shorter than min_len: dropped
        i += 1
    return segs


def segment_targets(labels: np.ndarray, segments: Sequence[Segment]) -> np.ndarray:
    """Mean valid frame label of each segment: (n_segments, 2), NaN where a segment has no valid frame."""
    lab = np.asarray(labels, dtype=np.float64)
    ok = np.isfinite(lab).all(1)
    csum = np.concatenate([np.zeros((1, 2)), np.cumsum(np.where(ok[:, None], lab, 0.0), 0)])
    ccnt = np.concatenate([[0], np.cumsum(ok)])
    out = np.full((len(segments), 2), np.nan, dtype=np.float32)
    for k, s in enumerate(segments):
        a, b = min(s.first, len(lab)), min(s.stop, len(lab))
        n = ccnt[b] - ccnt[a]
        if n > 0:
            out[k] = (csum[b] - csum[a]) / n
    return out


def segment_meta(video_id: str, segs: Sequence[Segment], n_frames: int, fps: float, cfg: SegmentConfig) -> dict[str, Any]:
    """The segment part of a segment record's meta: ``names``, ``n_frames``, ``fps`` and the ``segments`` layout."""
    return {"names": [s.name(video_id) for s in segs], "n_frames": int(n_frames), "fps": float(fps),
            "segments": dataclasses.asdict(cfg)}


def segment_extras(segs: Sequence[Segment]) -> dict[str, np.ndarray]:
    """The segment part of a segment record's extras: true ``start`` and ``end`` (S,) and ``sample`` (S, n_sample)."""
    return {"start": np.asarray([s.start for s in segs], np.float64),
            "end": np.asarray([s.end for s in segs], np.float64),
            "sample": np.asarray([s.sample for s in segs], np.int64).reshape(len(segs), -1)}


def record_segments(rec: "FeatureRecord | LazyRecord", n_frames: int, fps: float) -> list[Segment]:
    """Segment spans of a stored record (loaded or opened): true ``start``/``end`` (extras), frames by midpoint
    (``first:stop``)."""
    n = len(rec.values)
    starts, ends = rec.base.spans(n)
    if "start" in rec.extras and "end" in rec.extras:
        starts, ends = np.asarray(rec.extras["start"][:], float), np.asarray(rec.extras["end"][:], float)
    mids = frame_midpoints(n_frames, fps)
    out = []
    for i, (a, b) in enumerate(zip(starts, ends)):
        first, stop = int(np.searchsorted(mids, a, "left")), int(np.searchsorted(mids, b, "left"))
        out.append(Segment(i, float(a), float(b), first, stop, ()))
    return out
