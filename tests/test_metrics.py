import math

import numpy as np
import pytest
import torch

from vaest.metrics import ccc, ccc_loss, ccc_torch, va_ccc


def test_hand_computed():
    x = np.array([1.0, 2.0, 3.0])
    y = np.array([2.0, 2.0, 5.0])
    # means 2, 3; var x 2/3, var y 2; cov ((-1)(-1)+0+(1)(2))/3 = 1
    expect = 2 * 1 / (2 / 3 + 2 + 1)
    assert ccc(x, y) == pytest.approx(expect)
    assert float(ccc_torch(torch.tensor(x), torch.tensor(y))) == pytest.approx(expect, rel=1e-5)


def test_perfect_and_anti():
    x = np.linspace(-1, 1, 50)
    assert ccc(x, x) == pytest.approx(1.0)
    assert ccc(x, -x) == pytest.approx(-1.0)
    # shifted: CCC penalises bias, Pearson would not
    assert ccc(x, x + 0.5) < 0.9


def test_mask_and_nan():
    x = np.array([1.0, 2.0, 3.0, 100.0])
    y = np.array([2.0, 2.0, 5.0, np.nan])
    assert ccc(x, y) == pytest.approx(ccc(x[:3], y[:3]))
    m = np.array([True, True, True, False])
    assert ccc(x, np.nan_to_num(y), m) == pytest.approx(ccc(x[:3], y[:3]))


def test_edge_cases():
    assert math.isnan(ccc(np.array([1.0, 2.0]), np.array([np.nan, np.nan])))
    assert ccc(np.ones(5), np.ones(5)) == 1.0
    assert ccc(np.ones(5), 2 * np.ones(5)) == 0.0
    assert ccc(np.array([0.3]), np.array([0.3])) == 1.0
    assert ccc(np.array([0.3]), np.array([0.1])) == 0.0
    t = ccc_torch(torch.zeros(3), torch.full((3,), float("nan")))
    assert float(t) == 0.0


def test_torch_matches_numpy_with_mask():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(2, 200))
    m = rng.random(200) > 0.3
    assert float(ccc_torch(torch.tensor(x), torch.tensor(y), torch.tensor(m))) == pytest.approx(ccc(x, y, m), rel=1e-4)


def test_loss_and_gradient():
    torch.manual_seed(0)
    y = torch.randn(4, 10, 2)
    p = torch.zeros(4, 10, 2, requires_grad=True)
    mask = torch.ones(4, 10, dtype=torch.bool)
    mask[0, :5] = False
    loss = ccc_loss(p + 0.01 * torch.randn(4, 10, 2), y, mask, weights=(0.7, 0.3), mse_weight=0.1)
    loss.backward()
    assert p.grad is not None and torch.isfinite(p.grad).all()
    assert float(ccc_loss(y, y, mask)) == pytest.approx(0.0, abs=1e-5)


def test_va_ccc():
    y = np.stack([np.linspace(-1, 1, 20), np.linspace(0, 1, 20)], 1)
    s = va_ccc(y, y)
    assert s["valence"] == pytest.approx(1) and s["mean"] == pytest.approx(1)


def test_running_moments_match_the_whole_array_batch_by_batch():
    from vaest.metrics import RunningMoments

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((5003, 4)) * [1, 10, 1e-3, 5] + [0, 1e4, 3, -2]).astype(np.float32)
    m = RunningMoments()
    for i in range(0, len(x), 777):
        m.add(x[i : i + 777])
    ref = x.astype(np.float64)
    np.testing.assert_allclose(m.mean, ref.mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(m.std(), ref.std(0), rtol=1e-9)
    assert m.count == 5003
    x[::3, 1] = np.nan
    m = RunningMoments(ignore_nan=True)
    for i in range(0, len(x), 500):
        m.add(x[i : i + 500])
    np.testing.assert_allclose(m.mean, np.nanmean(x.astype(np.float64), 0), rtol=1e-12)
    np.testing.assert_allclose(m.std(), np.nanstd(x.astype(np.float64), 0), rtol=1e-9)
    norm = m.norm(1e-6)
    assert len(norm["mean"]) == 4 and min(norm["std"]) >= 1e-6
