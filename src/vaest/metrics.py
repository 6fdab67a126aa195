"""Concordance correlation coefficient (CCC): the one implementation, in numpy and torch, with masks.

CCC = 2 cov(x, y) / (var x + var y + (mean x - mean y)^2), population (biased) moments, over the valid frames.
Edge cases: no valid frame -> NaN; zero denominator (both series constant and equal) -> 1.0.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

try:  # torch is a core dependency, but keep numpy metrics importable without it
    import torch
except ImportError:  # pragma: no cover
    torch = None  # type: ignore[assignment]

DIMS = ("valence", "arousal")


def ccc(pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> float:
    """CCC of two 1-D series over frames where ``mask`` is True and both values are finite.

    Args:
        pred, target: shape (T,).
        mask: (T,) bool, optional.
    """
    x = np.asarray(pred, dtype=np.float64).reshape(-1)
    y = np.asarray(target, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"ccc: shapes differ {x.shape} vs {y.shape}")
    ok = np.isfinite(x) & np.isfinite(y)
    if mask is not None:
        ok &= np.asarray(mask, dtype=bool).reshape(-1)
    if not ok.any():
        return float("nan")
    x, y = x[ok], y[ok]
    mx, my = x.mean(), y.mean()
    vx, vy = ((x - mx) ** 2).mean(), ((y - my) ** 2).mean()
    cov = ((x - mx) * (y - my)).mean()
    den = vx + vy + (mx - my) ** 2
    if den <= 1e-15:
        return 1.0
    return float(2.0 * cov / den)


def va_ccc(pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float]:
    """Valence, arousal and mean CCC for (T, 2) predictions and targets (NaN targets are invalid)."""
    pred = np.asarray(pred)
    target = np.asarray(target)
    out = {d: ccc(pred[:, i], target[:, i], mask) for i, d in enumerate(DIMS)}
    out["mean"] = float(np.mean([out["valence"], out["arousal"]]))
    return out


def ccc_torch(pred: "torch.Tensor", target: "torch.Tensor", mask: "torch.Tensor | None" = None,
              eps: float = 1e-8) -> "torch.Tensor":
    """Differentiable CCC over all elements where ``mask`` is True (any shape, flattened).

    Returns a 0-d tensor; NaN targets are excluded. With no valid element it returns 0 (so a loss
    ``1 - ccc`` contributes a constant, not NaN).
    """
    x = pred.reshape(-1).float()
    y = target.reshape(-1).float()
    ok = torch.isfinite(y) & torch.isfinite(x)
    if mask is not None:
        ok = ok & mask.reshape(-1).bool()
    n = ok.sum()
    if int(n) == 0:
        return x.sum() * 0.0
    w = ok.float()
    y = torch.where(ok, y, torch.zeros_like(y))
    x = torch.where(ok, x, torch.zeros_like(x))
    mx = (x * w).sum() / n
    my = (y * w).sum() / n
    vx = (((x - mx) ** 2) * w).sum() / n
    vy = (((y - my) ** 2) * w).sum() / n
    cov = ((x - mx) * (y - my) * w).sum() / n
    return 2.0 * cov / (vx + vy + (mx - my) ** 2 + eps)


def ccc_loss(pred: "torch.Tensor", target: "torch.Tensor", mask: "torch.Tensor | None" = None,
             weights: Sequence[float] = (0.5, 0.5), mse_weight: float = 0.0) -> "torch.Tensor":
    """The project's VA loss: sum_d w_d (1 - CCC_d) + mse_weight * MSE, over valid steps.

    Args:
        pred, target: (..., 2) valence/arousal; NaN targets are invalid.
        mask: (...) bool of valid steps (combined with finite targets).
        weights: per-dimension weights (reference: face 0.5/0.5 i.e. mean, audio 0.7/0.3).
        mse_weight: weight of the mean squared error term (audio 0.1, fusion 0.01).
    """
    total = pred.new_zeros(())
    for d, w in enumerate(weights):
        if w:
            total = total + w * (1.0 - ccc_torch(pred[..., d], target[..., d], mask))
    if mse_weight:
        ok = torch.isfinite(target).all(-1)
        if mask is not None:
            ok = ok & mask.bool()
        if ok.any():
            total = total + mse_weight * ((pred[ok] - target[ok]) ** 2).mean()
    return total


def mean_ccc(scores: dict[str, float]) -> float:
    """Mean of valence and arousal CCC (NaN-safe: NaN if either is NaN)."""
    v, a = scores.get("valence", math.nan), scores.get("arousal", math.nan)
    return float((v + a) / 2)


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Area under the ROC curve for scores ``pos`` (should be higher) vs ``neg``: the share of (pos, neg)
    pairs ordered right, ties counting half (Mann-Whitney U / (n_pos n_neg)); NaN when a side is empty."""
    p = np.asarray(pos, np.float64).ravel()
    n = np.asarray(neg, np.float64).ravel()
    p, n = p[np.isfinite(p)], n[np.isfinite(n)]
    if len(p) == 0 or len(n) == 0:
        return float("nan")
    d = p[:, None] - n[None, :]
    return float(((d > 0).sum() + 0.5 * (d == 0).sum()) / d.size)
