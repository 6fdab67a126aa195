"""The one windowing helper: fixed windows with a hop, padding, and overlap-averaging back to a timeline."""

from __future__ import annotations

import numpy as np


def window_starts(n: int, win: int, hop: int, align_end: bool = False) -> list[int]:
    """Start indices of windows of ``win`` steps every ``hop`` that together cover ``range(n)``.

    The last window may run past ``n`` (it is padded by the caller); no window starts at or after ``n``.
    With ``align_end`` (the official face and fusion datasets) a sequence longer than ``win`` gets full
    windows only: those of the grid that fit, plus one ending exactly at ``n`` when the grid misses the end;
    a sequence of at most ``win`` steps is one (padded) window. ``n == 0`` gives no windows.
    """
    if win <= 0 or hop <= 0:
        raise ValueError(f"win and hop must be positive, got win={win}, hop={hop}")
    if align_end:
        if n <= 0:
            return []
        if n <= win:
            return [0]
        starts = list(range(0, n - win + 1, hop))
        return starts if starts[-1] == n - win else starts + [n - win]
    starts: list[int] = []
    s = 0
    while s < n:
        starts.append(s)
        if s + win >= n:
            break
        s += hop
    return starts


def take_window(x: np.ndarray, start: int, win: int) -> tuple[np.ndarray, np.ndarray]:
    """Slice ``x[start:start+win]`` along axis 0, padding a short tail by repeating the last row.

    Returns:
        window (win, ...) and valid (win,) bool (False on padded rows).
    """
    seg = x[start : start + win]
    valid = np.zeros(win, dtype=bool)
    valid[: len(seg)] = True
    if len(seg) < win:
        if len(seg) == 0:
            raise ValueError("empty window")
        pad = np.repeat(seg[-1:], win - len(seg), axis=0)
        seg = np.concatenate([seg, pad], axis=0)
    return seg, valid


class OverlapAverager:
    """Window predictions averaged onto ``n`` steps as they come (the running sums of :func:`overlap_average`,
    without keeping every window: for a 10-minute video a face model's 256-wide embeddings over 400-frame
    windows every 150 frames are 52 MB of windows against 39 MB of sums)."""

    def __init__(self, n: int):
        self.n = n
        self.acc: np.ndarray | None = None
        self.cnt = np.zeros(n, dtype=np.int64)

    def add(self, start: int, pred: np.ndarray) -> None:
        """One window's (win, D) predictions starting at step ``start``; rows past ``n`` (padding) are ignored."""
        if self.acc is None:
            self.acc = np.zeros((self.n, pred.shape[-1]), dtype=np.float64)
        e = min(start + len(pred), self.n)
        self.acc[start:e] += pred[: e - start]
        self.cnt[start:e] += 1

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(n, D) float32 averages (NaN where no window covers) and (n,) coverage counts."""
        if self.acc is None:
            return np.full((self.n, 0), np.nan, dtype=np.float32), self.cnt
        out = np.full(self.acc.shape, np.nan, dtype=np.float32)
        ok = self.cnt > 0
        out[ok] = (self.acc[ok] / self.cnt[ok, None]).astype(np.float32)
        return out, self.cnt


def overlap_average(n: int, starts: list[int], preds: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Average window predictions back onto ``n`` steps (:class:`OverlapAverager` over all windows at once).

    Args:
        n: timeline length.
        starts: window start indices.
        preds: per window an array (win, D); rows past ``n`` (padding) are ignored.
    Returns:
        (n, D) float32 averages (NaN where no window covers) and (n,) coverage counts.
    """
    avg = OverlapAverager(n)
    for s, p in zip(starts, preds):
        avg.add(s, p)
    return avg.result()
