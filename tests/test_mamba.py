import numpy as np
import pytest
import torch

from vaest.models import create_model, load_checkpoint
from vaest.models.mamba import BehaviorMamba, MambaMixer, selective_scan_kernel, selective_scan_ref
from vaest.timebase import TimeBase
from vaest.sequences import Sequence
from vaest.training import SequenceTask, TrainConfig, fit


def _small(**kw):
    cfg = dict(input_dim=6, d_model=16, n_layers=2, d_state=8, d_conv=5, expand=2, dropout=0.0, head_hidden=32)
    cfg.update(kw)
    return create_model("behavior-mamba", **cfg)


def test_reference_defaults_and_shapes():
    cfg = BehaviorMamba.Config()
    assert (cfg.d_model, cfg.n_layers, cfg.d_state, cfg.d_conv, cfg.expand, cfg.dropout, cfg.head_hidden) == \
        (256, 12, 8, 5, 2, 0.2, 512)
    m = create_model("behavior-mamba", input_dim=10).eval()
    out = m(x=torch.randn(3, 16, 10))
    assert out["va"].shape == (3, 16, 2) and out["emb"].shape == (3, 16, 256)
    assert out["va"].abs().max() <= 1.0
    assert len(m.blocks) == 12 and m.blocks[0].mixer.conv1d.kernel_size == (5,)


@pytest.mark.parametrize("norm", ["rms", "layer"])
def test_causal(norm):
    torch.manual_seed(0)
    m = _small(norm=norm).eval()
    x = torch.randn(2, 16, 6)
    y = x.clone()
    y[:, 10:] = torch.randn(2, 6, 6)  # change the future only
    a, b = m(x=x)["va"], m(x=y)["va"]
    assert torch.allclose(a[:, :10], b[:, :10], atol=1e-6)
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_mixer_matches_transformers_mamba_mixer():
    """Same parameters, same outputs as the reference implementation in transformers (pure-torch path)."""
    tm = pytest.importorskip("transformers.models.mamba.modeling_mamba")
    from transformers import MambaConfig

    torch.manual_seed(1)
    mine = MambaMixer(16, d_state=8, d_conv=5, expand=2, dt_rank=4).eval()
    cfg = MambaConfig(hidden_size=16, state_size=8, conv_kernel=5, expand=2, time_step_rank=4, use_conv_bias=True,
                      use_bias=False, hidden_act="silu", num_hidden_layers=1)
    ref = tm.MambaMixer(cfg, layer_idx=0).eval()
    ref.load_state_dict(mine.state_dict(), strict=True)
    x = torch.randn(2, 13, 16)
    with torch.no_grad():
        assert torch.allclose(mine(x), ref(x), atol=1e-5)


def test_scan_matches_naive_recurrence():
    torch.manual_seed(2)
    b, d, n, L = 2, 3, 4, 7
    u, dt, z = torch.randn(b, d, L), torch.rand(b, d, L) * 0.5, torch.randn(b, d, L)
    A, B, C, D = -torch.rand(d, n) - 0.1, torch.randn(b, n, L), torch.randn(b, n, L), torch.randn(d)
    y = selective_scan_ref(u, dt, A, B, C, D, z)
    want = torch.zeros(b, d, L)
    for i in range(b):
        for c in range(d):
            h = torch.zeros(n)
            for t in range(L):
                h = torch.exp(dt[i, c, t] * A[c]) * h + dt[i, c, t] * B[i, :, t] * u[i, c, t]
                want[i, c, t] = (h * C[i, :, t]).sum() + D[c] * u[i, c, t]
    want = want * torch.nn.functional.silu(z)
    assert torch.allclose(y, want, atol=1e-5)


def test_cuda_kernel_gives_the_same_outputs():
    if selective_scan_kernel() is None:
        pytest.skip("mamba-ssm CUDA kernels are not installed here (they need a GPU); the pure-PyTorch scan is used")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: the mamba-ssm kernel cannot run")
    torch.manual_seed(3)
    m = _small().cuda().eval()
    x = torch.randn(4, 16, 6, device="cuda")
    with torch.no_grad():
        fast = m(x=x)["va"]
        for blk in m.blocks:
            blk.mixer.use_kernel = False
        slow = m(x=x)["va"]
    assert torch.allclose(fast, slow, atol=1e-4)


def test_learns_a_sequence_task_and_reloads(tmp_path):
    rng = np.random.default_rng(0)

    def seqs(n):
        out = []
        for i in range(n):
            x = rng.normal(size=(40, 6)).astype(np.float32)
            # the target depends on the current and the previous step: needs the temporal path
            y = np.tanh(np.stack([0.8 * x[:, 0], 0.5 * x[:, 1] + 0.5 * np.roll(x[:, 2], 1)], 1)).astype(np.float32)
            n_frames = 40 * 60 + 60
            fl = np.repeat(y, 60, axis=0)
            fl = np.concatenate([fl, fl[-60:]])
            out.append(Sequence(f"s{i}", {"x": x}, y, TimeBase(hop=2.0, win=2.0), n_frames, 30.0, fl))
        return out

    torch.manual_seed(0)
    task = SequenceTask(seqs(8), seqs(2), win=16, hop=8)
    model = _small(n_layers=2)
    res = fit(model, task, TrainConfig(epochs=12, lr=3e-3, weight_decay=1e-3, batch_size=8), tmp_path)
    assert res.best["mean"] > 0.5
    m2, ck = load_checkpoint(tmp_path / "model.pt")
    assert isinstance(m2, BehaviorMamba) and ck["name"] == "behavior-mamba"
