"""Late fusion: a weighted average of prediction sets, and the search for its weights.

:func:`combine_sets` averages S sets with per-set, per-dimension weights renormalised over the sets present at
each frame (:func:`late_combine`: frames no set has filled from the nearest fused frame). The weights are
searched on validation frames: :func:`search_weights` (per dimension, a simplex grid for few sets or seeded
Dirichlet samples, :func:`candidate_weights`) or :func:`reference_subset_search` (the official search over
subsets of 1-3 sets). Pure numpy; training the weights on a corpus is :mod:`vaest.tasks.late`, applying them
:class:`vaest.apply.FusionModel`.
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass

import numpy as np

from vaest.errors import VaestError
from vaest.timebase import fill_nearest

log = logging.getLogger(__name__)

LATE_METHODS = ("dirichlet", "grid", "reference")



def _presence(preds: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Sets that count at each frame: those with real input; where none has, those with a finite value."""
    fin = np.isfinite(preds).all(-1)
    pres = np.asarray(present, dtype=bool) & fin
    none = ~pres.any(1)
    pres[none] = fin[none]
    return pres



def combine_sets(preds: np.ndarray, present: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted average of S prediction sets with weights renormalised over the sets present at each frame.

    Args:
        preds: (n, S, 2) predictions (NaN where a set has none).
        present: (n, S) bool, the set had real input at that frame.
        weights: (S, 2) per-set, per-dimension weights (>= 0).
    Returns:
        va (n, 2) (NaN where no set has a value) and the effective weights (n, S, 2) (each frame's sum 1 or 0).
        A frame where no set has real input uses every set with a finite value; a frame where the present sets
        all have weight 0 averages them equally.
    """
    preds = np.asarray(preds, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    pres = _presence(preds, present)
    eff = pres[..., None] * w[None]  # (n, S, 2)
    den = eff.sum(1, keepdims=True)
    eq = pres[..., None] / np.maximum(pres.sum(1), 1)[:, None, None]
    eff = np.where(den > 0, eff / np.where(den > 0, den, 1), eq)
    va = (eff * np.nan_to_num(preds)).sum(1)
    va[~pres.any(1)] = np.nan
    return va.astype(np.float32), eff.astype(np.float32)


def late_combine(P: np.ndarray, M: np.ndarray, W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Late fusion of one video: :func:`combine_sets` with frames no set has filled from the nearest fused frame.
    Returns va (n, 2) and effective weights (n, S, 2)."""
    va, eff = combine_sets(P, M, W)
    ok = np.isfinite(va).all(1)
    if not ok.all() and ok.any():
        va = fill_nearest(va, ok)
    return va, eff


def simplex_grid(n_sets: int, step: float = 0.05) -> np.ndarray:
    """All weight vectors on the simplex with entries that are multiples of ``step``: (K, n_sets)."""
    k = int(round(1.0 / step))
    if abs(k * step - 1.0) > 1e-9:
        raise ValueError(f"grid step {step} does not divide 1")
    rows = [c for c in itertools.product(range(k + 1), repeat=n_sets - 1) if sum(c) <= k]
    return np.array([list(c) + [k - sum(c)] for c in rows], dtype=np.float64) / k



def candidate_weights(n_sets: int, method: str = "dirichlet", n_samples: int = 8000, seed: int = 0,
                      step: float = 0.05) -> np.ndarray:
    """Weight vectors to try (K, n_sets): a simplex grid, or the uniform vector, each single set and
    ``n_samples`` seeded Dirichlet(1, ..., 1) samples (the same seed gives the same candidates)."""
    if method == "grid":
        if n_sets > 3:
            log.warning("grid search over %d sets tries %d weightings; consider --method dirichlet", n_sets,
                        math.comb(int(round(1 / step)) + n_sets - 1, n_sets - 1))
        return simplex_grid(n_sets, step)
    if method != "dirichlet":
        raise VaestError(f"unknown late-fusion method {method!r}; choose one of {', '.join(LATE_METHODS)}")
    rng = np.random.default_rng(seed)
    samples = rng.dirichlet(np.ones(n_sets), size=n_samples)
    return np.vstack([np.full((1, n_sets), 1.0 / n_sets), np.eye(n_sets), samples])



def _ccc_columns(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """CCC of each column of x (N, K) with y (N,) (population moments, as :func:`vaest.metrics.ccc`)."""
    mx, my = x.mean(0), y.mean()
    dx, dy = x - mx, y - my
    vx, vy = (dx**2).mean(0), (dy**2).mean()
    cov = (dx * dy[:, None]).mean(0)
    den = vx + vy + (mx - my) ** 2
    return np.where(den > 1e-15, 2 * cov / np.where(den > 1e-15, den, 1), 1.0)



def search_weights(preds: np.ndarray, present: np.ndarray, labels: np.ndarray, method: str = "dirichlet",
                   n_samples: int = 8000, seed: int = 0, step: float = 0.05,
                   chunk_elems: int = 20_000_000) -> tuple[np.ndarray, np.ndarray]:
    """Per dimension, the weights among :func:`candidate_weights` maximising CCC of :func:`combine_sets`.

    Args:
        preds: (N, S, 2) predictions of S sets on N concatenated validation frames.
        present: (N, S) bool real input; labels: (N, 2) with NaN invalid.
    Returns:
        weights (S, 2) and the best CCC per dimension (2,).
    """
    preds = np.asarray(preds, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    S = preds.shape[1]
    cands = candidate_weights(S, method, n_samples, seed, step)
    pres = _presence(preds, present)
    best_w = np.zeros((S, 2))
    best_s = np.full(2, -np.inf)
    for d in range(2):
        ok = np.isfinite(labels[:, d]) & pres.any(1)
        P = np.nan_to_num(preds[ok, :, d])
        M = pres[ok].astype(np.float64)
        y = labels[ok, d]
        if len(y) == 0:
            raise VaestError("late fusion: no validation frame has both a label and a prediction")
        eq = (M * P).sum(1) / np.maximum(M.sum(1), 1)
        step_k = max(1, chunk_elems // max(len(y), 1))
        for i in range(0, len(cands), step_k):
            W = cands[i : i + step_k]
            den = M @ W.T
            x = np.where(den > 0, ((M * P) @ W.T) / np.where(den > 0, den, 1), eq[:, None])
            s = _ccc_columns(x, y)
            j = int(np.argmax(s))
            if s[j] > best_s[d]:
                best_s[d], best_w[:, d] = s[j], W[j]
    return best_w, best_s



@dataclass
class SubsetResult:
    """One late-fusion subset of the reference search: its sets, weights (k, 2) (columns valence, arousal) and
    its CCC on the fitting frames (``valence``, ``arousal``, ``mean``)."""

    sets: tuple[str, ...]
    weights: np.ndarray
    ccc: dict[str, float]



def _ccc_eps(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """CCC of each column of x (N, K) with y (N,), the official formula (population moments, +1e-8)."""
    mx, my = x.mean(0), y.mean()
    cov = ((x - mx) * (y - my)[:, None]).mean(0)
    return 2.0 * cov / (x.var(0) + y.var() + (mx - my) ** 2 + 1e-8)



def reference_subset_search(preds: dict[str, np.ndarray], labels: np.ndarray, max_size: int = 3,
                            step: float = 0.05, n_samples: int = 8000, alpha: float = 1.0, seed: int = 42,
                            channelwise: bool = True) -> list[SubsetResult]:
    """The official late-fusion search (``scripts/predictions_fusion.py``) over prediction sets.

    Every subset of 1..``max_size`` sets (``itertools.combinations`` of the names in the given order) is fitted:
    one set alone weight 1; two sets a grid of step ``step`` (with ``channelwise`` every valence weight with
    every arousal weight); three or more ``n_samples`` Dirichlet(``alpha``) draws for valence paired with as
    many draws for arousal (one generator seeded ``seed`` shared by all subsets, in search order), then the
    uniform weights and each one-hot. A candidate is ranked by (mean CCC, arousal CCC, valence CCC); the first
    best wins.

    Args:
        preds: set name -> (N, 2) predictions on the fitting frames (every set has a value on each frame).
        labels: (N, 2), all finite.
    Returns:
        every subset's best, best first (ranked the same way).
    """
    names = list(preds)
    y = np.asarray(labels, dtype=np.float64)
    P = {m: np.asarray(preds[m], dtype=np.float64) for m in names}
    rng = np.random.default_rng(seed)
    out: list[SubsetResult] = []
    for k in range(1, min(max_size, len(names)) + 1):
        for subset in itertools.combinations(names, k):
            if k == 1:
                pairs = [(np.ones(1), np.ones(1))]
            elif k == 2:
                g = [np.array([x, 1.0 - x]) for x in np.arange(0.0, 1.0 + 1e-9, step)]
                pairs = [(a, b) for a in g for b in g] if channelwise else [(a, a) for a in g]
            else:
                wv = rng.dirichlet(np.full(k, alpha), size=n_samples)
                wa = rng.dirichlet(np.full(k, alpha), size=n_samples) if channelwise else wv
                pairs = list(zip(wv, wa)) + [(np.full(k, 1.0 / k), np.full(k, 1.0 / k))]
                pairs += [(np.eye(k)[i], np.eye(k)[i]) for i in range(k)]
            Wv = np.stack([a / a.sum() for a, _ in pairs])  # (K, k)
            Wa = np.stack([b / b.sum() for _, b in pairs])
            X = np.stack([P[m] for m in subset], 1)  # (N, k, 2)
            cv = _ccc_eps(X[:, :, 0] @ Wv.T, y[:, 0])
            ca = _ccc_eps(X[:, :, 1] @ Wa.T, y[:, 1])
            keys = [(0.5 * (v + a), a, v) for v, a in zip(cv, ca)]
            j = max(range(len(keys)), key=lambda i: (keys[i], -i))
            out.append(SubsetResult(subset, np.stack([Wv[j], Wa[j]], 1),
                                    {"valence": float(cv[j]), "arousal": float(ca[j]), "mean": float(keys[j][0])}))
    out.sort(key=lambda r: (r.ccc["mean"], r.ccc["arousal"], r.ccc["valence"]), reverse=True)
    return out
