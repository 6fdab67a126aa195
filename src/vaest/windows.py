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


def overlap_average(n: int, starts: list[int], preds: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Average window predictions back onto ``n`` steps.

    Args:
        n: timeline length.
        starts: window start indices.
        preds: per window an array (win, D); rows past ``n`` (padding) are ignored.
    Returns:
        (n, D) float32 averages (NaN where no window covers) and (n,) coverage counts.
    """
    if not preds:
        return np.full((n, 0), np.nan, dtype=np.float32), np.zeros(n, dtype=np.int64)
    d = preds[0].shape[-1]
    acc = np.zeros((n, d), dtype=np.float64)
    cnt = np.zeros(n, dtype=np.int64)
    for s, p in zip(starts, preds):
        e = min(s + len(p), n)
        acc[s:e] += p[: e - s]
        cnt[s:e] += 1
    out = np.full((n, d), np.nan, dtype=np.float32)
    ok = cnt > 0
    out[ok] = (acc[ok] / cnt[ok, None]).astype(np.float32)
    return out, cnt
