"""Training-speed changes compute the same function: banded attention equals the masked full attention."""

from __future__ import annotations

import pytest
import torch

from vaest.models.temporal import FaceTransformer, FaceTransformerConfig, banded_self_attention

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("T,span,block", [(400, 30, None), (97, 10, 16), (37, 5, 64), (50, 1, 16)])
def test_banded_attention_equals_masked_full_attention(T, span, block):
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(32, 4, batch_first=True)
    x = torch.randn(3, T, 32, requires_grad=True)
    t = torch.arange(T)
    full = mha(x, x, x, attn_mask=(t[None] - t[:, None]).abs() > span, need_weights=False)[0]
    (g_full,) = torch.autograd.grad(full.square().sum(), x)
    band = banded_self_attention(x, mha, span, block)
    (g_band,) = torch.autograd.grad(band.square().sum(), x)
    torch.testing.assert_close(band, full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_band, g_full, rtol=1e-4, atol=1e-4)
    # a frame's output does not depend on frames beyond the span (the band really is a band)
    x2 = x.detach().clone()
    x2[:, -1] += 100.0
    far = T - 1 - span - 1
    if far >= 0:
        torch.testing.assert_close(banded_self_attention(x2, mha, span, block)[:, : far + 1],
                                   band.detach()[:, : far + 1], rtol=1e-5, atol=1e-5)


def test_face_transformer_trains_on_the_same_function():
    """In training mode (dropout off to compare) the banded path gives the outputs and gradients of the masked
    full attention; the state dict is unchanged (old checkpoints load)."""
    torch.manual_seed(0)
    m = FaceTransformer(FaceTransformerConfig(input_dim=12, d_model=32, layers=2, heads=4, ffn=32, dropout=0.0,
                                              attn_span=7))
    x = torch.randn(2, 90, 12)
    m.train()
    out = m(x)["va"]
    g = torch.autograd.grad(out.sum(), list(m.parameters()))
    for layer in m.encoder.layers:
        layer.span = None  # the stock PyTorch path with the band mask
    ref = m(x)["va"]
    g_ref = torch.autograd.grad(ref.sum(), list(m.parameters()))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert all(k.startswith(("proj", "norm", "encoder.layers", "head")) for k in m.state_dict())
    assert "encoder.layers.0.self_attn.in_proj_weight" in m.state_dict()


def test_dcmmoe_attention_dropout_setting():
    """``attn_dropout`` sets the dropout on DCMMoE's attention weights alone (None: the model's ``dropout``);
    the demo trains without it (it forces the slow attention path on CPU)."""
    from vaest.models.fusion import DCMMoEConfig, DCMMoEFusion
    from vaest.pipeline import DemoConfig

    base = DCMMoEFusion(DCMMoEConfig(d_model=32, heads=4, ffn=32, layers=2))
    assert all(b.attn.dropout == 0.1 for b in base.blocks)
    fast = DCMMoEFusion(DCMMoEConfig(d_model=32, heads=4, ffn=32, layers=2, attn_dropout=0.0))
    assert all(b.attn.dropout == 0.0 and b.drop.p == 0.1 for b in fast.blocks)
    assert sorted(base.state_dict()) == sorted(fast.state_dict())
    assert DemoConfig().dcmmoe_attn_dropout == 0.0
