"""Post-processing: nearest-frame hole filling, per-dimension moving average, kernel choice, clipping."""

from __future__ import annotations

import numpy as np
import pytest

from vaest.postprocess import choose_kernels, fill, moving_average, postprocess, smooth


def test_moving_average_by_hand():
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    # truncated centred windows: [1,2] [1,2,3] [2,3,4] [3,4,5] [4,5]
    np.testing.assert_allclose(moving_average(x, 3), [1.5, 2.0, 3.0, 4.0, 4.5])
    np.testing.assert_allclose(moving_average(x, 5), [2.0, 2.5, 3.0, 3.5, 4.0])
    np.testing.assert_allclose(moving_average(x, 1), x)
    np.testing.assert_allclose(moving_average(np.array([0.0, 9.0, 0.0, 0.0]), 7), [2.25] * 4)
    # NaN values are skipped, not propagated
    np.testing.assert_allclose(moving_average(np.array([1.0, np.nan, 3.0]), 3), [1.0, 2.0, 3.0])
    with pytest.raises(ValueError):
        moving_average(x, 4)


def test_smooth_uses_one_kernel_per_dimension():
    va = np.array([[0, 0], [0, 0], [0.9, 0.9], [0, 0], [0, 0]], dtype=np.float32)
    out = smooth(va, (1, 3))
    np.testing.assert_allclose(out[:, 0], va[:, 0])
    np.testing.assert_allclose(out[:, 1], [0, 0.3, 0.3, 0.3, 0], atol=1e-7)
    with pytest.raises(ValueError):
        smooth(va, (3,))


def test_fill_takes_the_nearest_predicted_frame():
    va = np.array([[9, 9], [0.1, 0.2], [9, 9], [9, 9], [9, 9], [0.5, 0.6], [np.nan, np.nan]], dtype=np.float32)
    mask = np.array([False, True, False, False, False, True, True])
    out = fill(va, mask)
    # frame 0 <- 1; 2 <- 1; 3 is equidistant (tie -> earlier frame 1); 4 <- 5; 6 is NaN -> 5
    np.testing.assert_allclose(out[:, 0], [0.1, 0.1, 0.1, 0.1, 0.5, 0.5, 0.5])


def test_postprocess_fills_smooths_and_clips():
    va = np.array([[1.5, -2.0], [1.5, -2.0], [1.5, -2.0], [0.0, 0.0]], dtype=np.float32)
    mask = np.array([True, True, True, False])
    out = postprocess(va, mask, (1, 1))
    np.testing.assert_allclose(out, [[1, -1]] * 4)
    out = postprocess(va, mask, (3, 1), clip=False)
    np.testing.assert_allclose(out[:, 0], [1.5] * 4)
    # nothing predicted at all: zeros, finite
    assert np.all(postprocess(va, np.zeros(4, bool), (3, 3)) == np.clip(smooth(va, (3, 3)), -1, 1))
    assert np.isfinite(postprocess(np.full((3, 2), np.nan), None, (3, 3))).all()


def test_choose_kernels_finds_the_known_best():
    """Labels are the predictions smoothed with 7 (valence) and 13 (arousal): those kernels give CCC 1."""
    rng = np.random.default_rng(0)
    preds, labels = [], []
    for n in (400, 350, 500):
        p = np.cumsum(rng.normal(scale=0.05, size=(n, 2)), 0) + rng.normal(scale=0.3, size=(n, 2))
        p = np.clip(p, -0.9, 0.9).astype(np.float32)
        preds.append(p)
        labels.append(smooth(p, (7, 13)))
    assert choose_kernels(preds, labels) == (7, 13)
    assert choose_kernels(preds, labels, candidates=(1, 3, 5)) == (5, 5)


def test_choose_kernels_on_noisy_predictions_prefers_smoothing():
    rng = np.random.default_rng(1)
    t = np.linspace(0, 12, 900)
    y = np.stack([0.6 * np.sin(t), 0.5 * np.cos(0.7 * t)], 1).astype(np.float32)
    p = y + rng.normal(scale=0.4, size=y.shape).astype(np.float32)
    kv, ka = choose_kernels([p], [y])
    assert kv > 9 and ka > 9
    from vaest.metrics import va_ccc

    assert va_ccc(smooth(p, (kv, ka)), y)["mean"] > va_ccc(p, y)["mean"] + 0.1


def test_replicate_edge_is_the_official_padded_convolution():
    """``edge="replicate"``: each end padded with k//2 copies of the end value, then a plain k-tap mean (what the
    official smoothing computes with F.pad(mode="replicate") and conv1d)."""
    import torch
    from torch.nn import functional as F

    from vaest.postprocess import moving_average, smooth

    rng = np.random.default_rng(0)
    x = rng.normal(size=40).astype(np.float32)
    for k in (3, 7, 13, 61):
        xx = F.pad(torch.from_numpy(x).view(1, 1, -1), (k // 2, k // 2), mode="replicate")
        want = F.conv1d(xx, torch.ones(1, 1, k) / k).view(-1).numpy()
        got = moving_average(x, k, "replicate")
        assert np.abs(got - want).max() < 1e-5
    trunc = moving_average(x, 13)
    assert abs(trunc[0] - x[:7].mean()) < 1e-5 and abs(trunc[0] - moving_average(x, 13, "replicate")[0]) > 1e-3
    assert np.allclose(smooth(np.stack([x, x], 1), (7, 13), "replicate")[:, 1], moving_average(x, 13, "replicate"))
    with pytest.raises(ValueError, match="edge"):
        moving_average(x, 7, "reflect")
