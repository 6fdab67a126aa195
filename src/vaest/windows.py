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
    """Window predictions averaged onto ``n`` steps as they come, in bounded memory.

    Windows must come in non-decreasing start order (as :func:`window_starts` gives them): the steps before the
    newest window's start can get no more windows, so their averages are final and written out at once
    (float32), and only the running sums of the open steps are kept (float64, about one window's rows). For a
    10-minute video a face model's 256-wide embeddings need 19 MB of output instead of 39 MB of sums and their
    division's copies. Each step's sum is added in the same order as a whole-length sum, so the averages are the
    same to the bit.
    """

    def __init__(self, n: int):
        self.n = n
        self.out: np.ndarray | None = None  # (n, D) float32, final rows filled as windows pass them
        self.cnt = np.zeros(n, dtype=np.int64)
        self._sums = np.zeros((0, 0), dtype=np.float64)  # running sums of steps [self._base, self._base + len)
        self._base = 0  # first step whose average is not yet final

    def add(self, start: int, pred: np.ndarray) -> None:
        """One window's (win, D) predictions starting at step ``start``; rows past ``n`` (padding) are ignored."""
        if start < self._base:
            raise ValueError(f"window start {start} comes after a window starting at {self._base}: "
                             "windows must come in non-decreasing start order")
        if self.out is None:
            self.out = np.full((self.n, pred.shape[-1]), np.nan, dtype=np.float32)
            self._sums = np.zeros((0, pred.shape[-1]), dtype=np.float64)
        self._finish(min(start, self.n))
        e = min(start + len(pred), self.n)
        need = e - self._base
        if need > len(self._sums):  # grow the open region (zeros: steps no window has reached yet)
            grown = np.zeros((need, self._sums.shape[1]), dtype=np.float64)
            grown[: len(self._sums)] = self._sums
            self._sums = grown
        self._sums[start - self._base : need] += pred[: e - start]
        self.cnt[start:e] += 1

    def _finish(self, upto: int) -> None:
        """Write the averages of steps ``[self._base, upto)`` and drop their sums."""
        k = upto - self._base
        if k <= 0 or self.out is None:
            return
        m = min(k, len(self._sums))  # steps past the open region (a gap no window reached) stay NaN
        done = self._sums[:m]
        ok = self.cnt[self._base : self._base + m] > 0
        rows = np.flatnonzero(ok)
        self.out[self._base + rows] = (done[ok] / self.cnt[self._base + rows, None]).astype(np.float32)
        self._sums = self._sums[k:].copy() if k < len(self._sums) else self._sums[:0]
        self._base = upto

    @property
    def started(self) -> bool:
        """Whether any window was added."""
        return self.out is not None

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(n, D) float32 averages (NaN where no window covers) and (n,) coverage counts."""
        if self.out is None:
            return np.full((self.n, 0), np.nan, dtype=np.float32), self.cnt
        self._finish(self.n)
        return self.out, self.cnt


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
