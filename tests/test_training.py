import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from vaest.timebase import TimeBase
from vaest.sequences import Sequence
from vaest.training import SequenceTask, TrainConfig, fit


@dataclasses.dataclass
class _Cfg:
    dim: int = 3


class _Lin(nn.Module):
    registry_name = "test-linear"

    def __init__(self, cfg=_Cfg()):
        super().__init__()
        self.config = cfg
        self.lin = nn.Linear(cfg.dim, 2)

    def forward(self, x):
        return {"va": torch.tanh(self.lin(x)), "emb": x}


def _seqs(n, rng, T=120):
    out = []
    for i in range(n):
        x = rng.normal(size=(T, 3)).astype(np.float32)
        y = np.tanh(np.stack([x[:, 0] * 0.8, -x[:, 1] * 0.5], 1)).astype(np.float32)
        y[:7] = np.nan
        out.append(Sequence(f"s{i}", {"x": x}, y, TimeBase.frames(30), T, 30.0, y))
    return out


def test_fit_learns_and_saves(tmp_path):
    rng = np.random.default_rng(0)
    task = SequenceTask(_seqs(6, rng), _seqs(2, rng), win=40, hop=20)
    model = _Lin()
    before = task.validate(model, "cpu")["mean"]
    res = fit(model, task, TrainConfig(epochs=15, lr=5e-2, batch_size=4), tmp_path)
    assert res.best["mean"] > max(before, 0.8)
    assert (tmp_path / "model.pt").exists() and (tmp_path / "history.json").exists()
    ck = torch.load(tmp_path / "model.pt", weights_only=False)
    assert ck["name"] == "test-linear" and ck["metrics"]["mean"] == pytest.approx(res.best["mean"])


def test_resume_continues_where_it_stopped(tmp_path):
    rng = np.random.default_rng(1)
    tr, va = _seqs(4, rng), _seqs(2, rng)
    cfg = TrainConfig(epochs=6, lr=1e-2, batch_size=4, seed=3)
    torch.manual_seed(0)
    full = fit(_Lin(), SequenceTask(tr, va, 40, 20), cfg, tmp_path / "full")
    # interrupted run: a run with fewer epochs leaves last.pt; the same command (same config) finishes it
    part = tmp_path / "part"
    torch.manual_seed(0)
    fit(_Lin(), SequenceTask(tr, va, 40, 20), dataclasses.replace(cfg, epochs=3), part)
    ck = torch.load(part / "last.pt", weights_only=False)
    ck["train_config"] = dataclasses.asdict(cfg)  # as if the 6-epoch run had been killed after epoch 2
    torch.save(ck, part / "last.pt")
    resumed = fit(_Lin(), SequenceTask(tr, va, 40, 20), cfg, part)
    assert [h["epoch"] for h in resumed.history] == list(range(6))
    np.testing.assert_allclose([h["mean"] for h in resumed.history], [h["mean"] for h in full.history], rtol=1e-5)


def test_param_groups_must_cover_all(tmp_path):
    rng = np.random.default_rng(2)
    model = _Lin()
    task = SequenceTask(_seqs(2, rng), _seqs(1, rng), 40, 20)
    with pytest.raises(ValueError, match="every trainable parameter"):
        fit(model, task, TrainConfig(epochs=1), tmp_path, param_groups=[{"params": [model.lin.weight], "lr": 1e-3}])


def test_task_needs_labels():
    rng = np.random.default_rng(3)
    s = _seqs(1, rng)[0]
    s.target[:] = np.nan
    with pytest.raises(ValueError, match="no training window"):
        SequenceTask([s], [], 40, 20)
