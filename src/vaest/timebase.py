"""Time bases and alignment of any time series onto a video's frame grid.

Every series in vaest carries its time base: sample ``i`` covers the interval
``[start + i*hop, start + i*hop + win)`` seconds. Frame-rate features have ``hop = win = 1/fps``; the audio
model's 1 s outputs have ``hop = win = 1``; behavior segments have ``hop = 2, win = 4``.

A video frame ``j`` is shown during ``[t_j, t_j + 1/fps)`` and is represented by its midpoint
``t_j + 0.5/fps`` (``t_j = j/fps`` for constant frame rate, or the decoded timestamps for variable frame
rate). A sample covers a frame when the frame's midpoint lies inside the sample's interval. Using the
midpoint keeps same-rate alignment exact (frame ``j`` <- sample ``j``) with no floating-point edge cases.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np


@dataclass(frozen=True)
class TimeBase:
    """Where samples sit in time: sample ``i`` covers ``[start + i*hop, start + i*hop + win)`` seconds."""

    hop: float
    win: float
    start: float = 0.0

    def __post_init__(self) -> None:
        if not (self.hop > 0 and self.win > 0):
            raise ValueError(f"TimeBase needs hop > 0 and win > 0, got hop={self.hop}, win={self.win}")

    @classmethod
    def frames(cls, fps: float, start: float = 0.0) -> "TimeBase":
        """The time base of per-frame values at ``fps``."""
        return cls(hop=1.0 / fps, win=1.0 / fps, start=start)

    @property
    def rate(self) -> float:
        """Samples per second."""
        return 1.0 / self.hop

    def spans(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Start and end times (seconds), each shape (n,), of the first ``n`` samples."""
        s = self.start + np.arange(n, dtype=np.float64) * self.hop
        return s, s + self.win

    def to_dict(self) -> dict[str, float]:
        return {"hop": float(self.hop), "win": float(self.win), "start": float(self.start)}

    @classmethod
    def from_dict(cls, d: dict) -> "TimeBase":
        return cls(hop=float(d["hop"]), win=float(d["win"]), start=float(d.get("start", 0.0)))


@dataclass
class TimeSeries:
    """Values with their time base and a validity mask.

    Attributes:
        values: (T, D) array (a (T,) array is promoted to (T, 1)).
        base: the series' time base.
        mask: (T,) bool, True where the sample is valid; all True when omitted.
    """

    values: np.ndarray
    base: TimeBase
    mask: np.ndarray | None = None

    def __post_init__(self) -> None:
        v = np.asarray(self.values)
        if v.ndim == 1:
            v = v[:, None]
        self.values = v
        if self.mask is None:
            self.mask = np.ones(len(v), dtype=bool)
        else:
            self.mask = np.asarray(self.mask, dtype=bool).reshape(-1)
            if len(self.mask) != len(v):
                raise ValueError(f"mask length {len(self.mask)} != {len(v)} samples")

    def __len__(self) -> int:
        return len(self.values)

    @property
    def dim(self) -> int:
        return int(self.values.shape[1])

    @property
    def duration(self) -> float:
        """Seconds from ``start`` to the end of the last sample."""
        if len(self) == 0:
            return 0.0
        return float((len(self) - 1) * self.base.hop + self.base.win)


def frame_midpoints(n_frames: int, fps: float, frame_times: np.ndarray | None = None) -> np.ndarray:
    """Midpoint time (seconds) of each frame, shape (n_frames,).

    ``frame_times`` (decoded presentation times of the frame starts, seconds) supports variable frame rate;
    each frame's duration is then the gap to the next frame (the last one lasts ``1/fps``).
    """
    if frame_times is None:
        return (np.arange(n_frames, dtype=np.float64) + 0.5) / fps
    t = np.asarray(frame_times, dtype=np.float64)[:n_frames]
    if len(t) < n_frames:
        raise ValueError(f"frame_times has {len(t)} entries for {n_frames} frames")
    dur = np.empty_like(t)
    dur[:-1] = np.diff(t)
    if len(t):
        dur[-1] = 1.0 / fps
    return t + 0.5 * dur


_TO_FRAMES_COLUMNS = 16  # columns per block in to_frames' running sums


def to_frames(
    series: TimeSeries,
    n_frames: int,
    fps: float,
    frame_times: np.ndarray | None = None,
    how: Literal["mean", "nearest"] = "mean",
) -> tuple[np.ndarray, np.ndarray]:
    """Resample a series onto a video's frame grid.

    ``how="mean"``: each frame takes the mean of the valid samples whose interval covers its midpoint
    (overlapping windows are averaged); frames no valid sample covers are masked.
    ``how="nearest"``: each frame takes the valid sample whose interval centre is nearest to its midpoint
    (no frame is masked unless the series has no valid sample).

    Returns:
        values (n_frames, D) float32 (NaN where masked) and mask (n_frames,) bool.
    """
    mids = frame_midpoints(n_frames, fps, frame_times)
    d = series.dim
    out = np.full((n_frames, d), np.nan, dtype=np.float32)
    mask = np.zeros(n_frames, dtype=bool)
    valid = series.mask & np.all(np.isfinite(series.values), axis=1)
    if n_frames == 0 or not valid.any():
        return out, mask
    starts, ends = series.base.spans(len(series))
    starts, ends = starts[valid], ends[valid]
    vals = series.values[valid]
    if how == "nearest":
        vals = vals.astype(np.float64)
        centres = 0.5 * (starts + ends)
        order = np.argsort(centres, kind="stable")
        centres, vals = centres[order], vals[order]
        pos = np.clip(np.searchsorted(centres, mids), 1, len(centres)) if len(centres) > 1 else np.zeros(n_frames, int)
        if len(centres) > 1:
            left = pos - 1
            right = np.minimum(pos, len(centres) - 1)
            pick = np.where(np.abs(mids - centres[left]) <= np.abs(centres[right] - mids), left, right)
        else:
            pick = pos
        out[:] = vals[pick]
        mask[:] = True
        return out, mask
    if how != "mean":
        raise ValueError(f"unknown how={how!r}")
    # frames j with starts <= mid_j < ends, found by binary search (mids are sorted)
    lo = np.searchsorted(mids, starts, side="left")
    hi = np.searchsorted(mids, ends, side="left")
    cnt = np.zeros(n_frames + 1, dtype=np.int64)
    np.add.at(cnt, lo, 1)
    np.add.at(cnt, hi, -1)
    cnt = np.cumsum(cnt)[:n_frames]
    mask = cnt > 0
    rows = np.flatnonzero(mask)
    # a few columns at a time: the float64 running sums of a wide series (a 256-wide embedding on the frames of
    # a 10-minute video) would otherwise take 39 MB, plus as much for each of their copies; each column is
    # computed on its own either way, so the values do not depend on the block
    for c in range(0, d, _TO_FRAMES_COLUMNS):
        v = vals[:, c : c + _TO_FRAMES_COLUMNS].astype(np.float64)
        acc = np.zeros((n_frames + 1, v.shape[1]), dtype=np.float64)
        np.add.at(acc, lo, v)
        np.add.at(acc, hi, -v)
        acc = np.cumsum(acc, axis=0)[:n_frames]
        out[rows, c : c + v.shape[1]] = (acc[rows] / cnt[rows, None]).astype(np.float32)
    return out, mask


def nearest_index(mask: np.ndarray) -> np.ndarray:
    """For each of the T rows, the index of the nearest row where ``mask`` is True (ties go to the earlier row):
    the rule of :func:`fill_nearest`, as (T,) int64, for readers that gather filled rows themselves. A mask
    with no True row gives ``arange(T)`` (nothing to fill from)."""
    mask = np.asarray(mask, dtype=bool)
    t = np.arange(len(mask))
    if mask.all() or not mask.any():
        return t
    idx = np.flatnonzero(mask)
    pos = np.searchsorted(idx, t)
    left = idx[np.clip(pos - 1, 0, len(idx) - 1)]
    right = idx[np.clip(pos, 0, len(idx) - 1)]
    return np.where(np.abs(t - left) <= np.abs(right - t), left, right)


def fill_nearest(values: np.ndarray, mask: np.ndarray, inplace: bool = False) -> np.ndarray:
    """Fill masked rows with the nearest valid row (ties go to the earlier frame).

    Args:
        values: (T, D) or (T,) array.
        mask: (T,) bool, True where valid.
        inplace: fill ``values`` itself (only its masked rows are written: no copy of a long array).
    Returns:
        A filled copy (``values`` itself with ``inplace``); unchanged (all masked rows kept) when no row is valid.
    """
    values = np.asarray(values)
    mask = np.asarray(mask, dtype=bool)
    if mask.all() or not mask.any():
        return values if inplace else values.copy()
    pick = nearest_index(mask)
    if inplace:
        holes = ~mask
        values[holes] = values[pick[holes]]
        return values
    return values[pick]
