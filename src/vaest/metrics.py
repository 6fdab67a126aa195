"""Concordance correlation coefficient (CCC): the one implementation, in numpy and torch, with masks.

CCC = 2 cov(x, y) / (var x + var y + (mean x - mean y)^2), population (biased) moments, over the valid frames.
Edge cases: no valid frame -> NaN; zero denominator (both series constant and equal) -> 1.0.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:  # the torch losses import it where they run: the numpy CCC is on torch-free paths (predict)
    import torch

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
    import torch

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
             weights: Sequence[float] = (0.5, 0.5), mse_weight: float = 0.0, min_valid: int = 0) -> "torch.Tensor":
    """The project's VA loss: sum_d w_d (1 - CCC_d) + mse_weight * MSE, over valid steps.

    Args:
        pred, target: (..., 2) valence/arousal; NaN targets are invalid.
        mask: (...) bool of valid steps (combined with finite targets).
        weights: per-dimension weights (reference: face 0.5/0.5 i.e. mean, audio 0.7/0.3).
        mse_weight: weight of the mean squared error term (audio 0.1, fusion 0.01).
        min_valid: with fewer valid steps than this (steps whose two targets are finite), the loss is the plain
            MSE over them (the reference audio and RAAV losses use 4: a CCC over 1-3 points is meaningless);
            0 turns the fallback off.
    """
    import torch

    if min_valid > 0:
        ok = torch.isfinite(target).all(-1)
        if mask is not None:
            ok = ok & mask.bool()
        n = int(ok.sum())
        if n == 0:
            return pred.sum() * 0.0
        if n < min_valid:
            return ((pred[ok].float() - target[ok].float()) ** 2).mean()
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


def ccc_loss_windows(pred: "torch.Tensor", target: "torch.Tensor", mask: "torch.Tensor | None" = None,
                     weights: Sequence[float] = (0.5, 0.5), eps: float = 1e-8) -> "torch.Tensor":
    """The reference loss of the face and fusion models: 1 - CCC computed within each window, averaged over
    the windows, ``sum_d w_d mean_b (1 - CCC_bd)`` (weights 0.5/0.5 = the official mean over windows and dims).

    Args:
        pred, target: (B, T, 2); NaN values count as 0 (as in the official loss), so mask them.
        mask: (B, T) bool of valid steps; a window with none valid has CCC 0 (loss 1).
    """
    import torch

    x = torch.nan_to_num(pred.float())
    y = torch.nan_to_num(target.float())
    w = (torch.ones_like(y[..., 0]) if mask is None else mask.float()).unsqueeze(-1)  # (B, T, 1)
    n = w.sum(1).clamp(min=1.0)  # (B, 1)
    mx, my = (x * w).sum(1) / n, (y * w).sum(1) / n
    dx, dy = (x - mx.unsqueeze(1)) * w, (y - my.unsqueeze(1)) * w
    cov = (dx * dy).sum(1) / n
    c = 2.0 * cov / ((dx**2).sum(1) / n + (dy**2).sum(1) / n + (mx - my) ** 2 + eps)  # (B, 2)
    loss = (1.0 - c).mean(0)
    return sum(wd * loss[d] for d, wd in enumerate(weights) if wd)


def ccc_loss_pooled(pred: "torch.Tensor", target: "torch.Tensor", mask: "torch.Tensor | None" = None,
                    weights: Sequence[float] = (0.5, 0.5), eps: float = 1e-8) -> "torch.Tensor":
    """The reference loss of the behavior model: 1 - CCC over all valid steps of the batch pooled, in the
    official form ``2 rho s_x s_y / (s_x^2 + s_y^2 + (m_x - m_y)^2)`` with sample (n - 1) standard deviations.

    Args:
        pred, target: (..., 2); mask: (...) bool of valid steps (default: all).
    """
    import torch

    ok = torch.ones_like(pred[..., 0], dtype=torch.bool) if mask is None else mask.bool()
    total = pred.new_zeros(())
    for d, wd in enumerate(weights):
        if not wd:
            continue
        x, y = pred[..., d][ok].float(), target[..., d][ok].float()
        vx, vy = x - x.mean(), y - y.mean()
        rho = (vx * vy).sum() / (vx.pow(2).sum().sqrt() * vy.pow(2).sum().sqrt() + eps)
        sx, sy = x.std(), y.std()
        c = 2 * rho * sx * sy / (sx.pow(2) + sy.pow(2) + (x.mean() - y.mean()).pow(2) + eps)
        total = total + wd * (1.0 - c)
    return total


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
