"""Post-processing of per-frame VA predictions: fill holes, smooth per dimension, clip.

The reference pipeline fills frames without a prediction from the nearest predicted frame, applies a centred
moving average with one odd kernel per dimension (7 frames for valence, 13 for arousal, chosen on the
validation set), and clips to [-1, 1]. Near the ends of a video the window is truncated: frame t takes the mean
of the finite values in ``[t - k//2, t + k//2]`` that exist, so the ends are not pulled towards zero by padding
(``edge="truncate"``, vaest's default). The official code (``multimodal_framewise_v2_callback.py``,
``_moving_average_smooth_1d``) instead pads each end with ``k//2`` copies of the end value (``edge="replicate"``,
the reference preset), which weights the first and last values more near the ends.
"""

from __future__ import annotations

import logging
from typing import Iterable, Sequence

import numpy as np

from vaest.metrics import ccc
from vaest.timebase import fill_nearest

log = logging.getLogger(__name__)

REFERENCE_KERNELS = (7, 13)
EDGES = ("truncate", "replicate")
REFERENCE_EDGE = "replicate"
DEFAULT_CANDIDATES = tuple(range(1, 62, 2))


def _check_kernel(k: int) -> int:
    k = int(k)
    if k < 1 or k % 2 == 0:
        raise ValueError(f"moving-average kernels must be odd and >= 1, got {k}")
    return k


def moving_average(x: np.ndarray, kernel: int, edge: str = "truncate") -> np.ndarray:
    """Centred moving average of a 1-D series (T,), ignoring NaN; at the ends the window is truncated
    (``edge="truncate"``) or the series is padded with ``k//2`` copies of its end values (``"replicate"``, the
    official form; NaN ends are not replicated).

    A frame whose window holds no finite value stays NaN. Returns float32 (T,).
    """
    k = _check_kernel(kernel)
    if edge not in EDGES:
        raise ValueError(f"moving-average edge must be one of {EDGES}, got {edge!r}")
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    if k == 1 or len(x) <= 1:
        return x.astype(np.float32)
    r = k // 2
    if edge == "replicate":
        x = np.concatenate([np.repeat(x[:1], r), x, np.repeat(x[-1:], r)])
        return moving_average(x, k, "truncate")[r:-r]
    ok = np.isfinite(x)
    cs = np.concatenate([[0.0], np.cumsum(np.where(ok, x, 0.0))])
    cn = np.concatenate([[0], np.cumsum(ok)])
    t = np.arange(len(x))
    lo = np.clip(t - r, 0, len(x))
    hi = np.clip(t + r + 1, 0, len(x))
    n = cn[hi] - cn[lo]
    out = np.full(len(x), np.nan)
    has = n > 0
    out[has] = (cs[hi] - cs[lo])[has] / n[has]
    return out.astype(np.float32)


def smooth(va: np.ndarray, kernels: Sequence[int] = REFERENCE_KERNELS, edge: str = "truncate") -> np.ndarray:
    """Moving average of each column of ``va`` (T, D) with its own odd kernel (``kernels`` has D entries) and
    the edge rule ``edge`` (see :func:`moving_average`)."""
    va = np.asarray(va, dtype=np.float32)
    if va.ndim != 2 or va.shape[1] != len(kernels):
        raise ValueError(f"smooth: expected (T, {len(kernels)}) predictions, got {va.shape}")
    return np.stack([moving_average(va[:, d], k, edge) for d, k in enumerate(kernels)], 1)


def fill(va: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Fill frames where ``mask`` is False (or the prediction is not finite) from the nearest predicted frame."""
    va = np.asarray(va, dtype=np.float32)
    ok = np.isfinite(va).all(-1) if va.ndim == 2 else np.isfinite(va)
    if mask is not None:
        ok &= np.asarray(mask, dtype=bool)
    return fill_nearest(va, ok)


def postprocess(va: np.ndarray, mask: np.ndarray | None = None,
                kernels: Sequence[int] | None = REFERENCE_KERNELS, clip: bool = True,
                edge: str = "truncate") -> np.ndarray:
    """Post-processing of one video's (n_frames, 2) predictions: fill, smooth, clip to [-1, 1].

    ``kernels=None`` skips smoothing; ``edge`` is the moving average's end rule (``REFERENCE_EDGE`` for the
    official one). Frames left without any value (no predicted frame at all) are 0.
    """
    out = fill(va, mask)
    if kernels is not None:
        out = smooth(out, kernels, edge)
    out = np.nan_to_num(out, nan=0.0)
    return np.clip(out, -1.0, 1.0) if clip else out


def choose_kernels(preds: Iterable[np.ndarray], labels: Iterable[np.ndarray],
                   candidates: Sequence[int] = DEFAULT_CANDIDATES) -> tuple[int, ...]:
    """Per dimension, the odd kernel that maximises CCC over all concatenated labelled frames.

    Args:
        preds: per video (n, D) predictions (filled: no holes expected; NaN frames stay excluded).
        labels: per video (n, D) labels, NaN where invalid.
        candidates: odd kernels to try (default 1, 3, ..., 61).
    Returns:
        One kernel per dimension (the smallest among equal scores).
    """
    preds, labels = [np.asarray(p, dtype=np.float32) for p in preds], [np.asarray(y) for y in labels]
    if not preds:
        raise ValueError("choose_kernels: no predictions")
    cands = [_check_kernel(k) for k in candidates]
    dims = preds[0].shape[1]
    y_all = np.concatenate(labels)
    best: list[int] = []
    for d in range(dims):
        scores = []
        for k in cands:
            x = np.concatenate([np.clip(moving_average(p[:, d], k), -1, 1) for p in preds])
            scores.append(ccc(x, y_all[:, d]))
        s = np.nan_to_num(np.asarray(scores), nan=-np.inf)
        best.append(cands[int(np.argmax(s))])
        log.debug("dimension %d: kernel %d (CCC %.4f)", d, best[-1], float(s.max()))
    return tuple(best)
