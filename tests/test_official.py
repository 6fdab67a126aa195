"""The vaest reference models against the official Team RAS modules (imported from ../shared/reference-code).

Each official module is built from its own file with random weights; its state_dict goes through
``vaest.models.official`` and both must give the same outputs (eval mode) and the same loss values.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from conftest import require_shared

from vaest.errors import ModelError
from vaest.metrics import ccc_loss_pooled, ccc_loss_windows
from vaest.models.official import behavior_from_official, dcm_from_official, face_from_official

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REF = Path(__file__).resolve().parents[2] / "shared" / "reference-code"
TOL = 1e-5


def official(rel: str) -> ModuleType:
    """Import one official file by path under a private module name (skips when ../shared is absent)."""
    path = require_shared(f"reference-code/{rel}")
    name = "official_" + rel.replace("/", "_").removesuffix(".py")
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def randomise(m: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter random (LayerNorm scales and biases too), so a mis-mapped tensor shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return m


def lengths_mask(lengths: list[int], t: int) -> torch.Tensor:
    return torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]


def maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().abs().max())


@pytest.mark.parametrize("head_type", ["mlp", "linear"])
def test_face_model_matches_official(head_type: str) -> None:
    mod = official("src_visual_dynamic_model/model.py")
    kw = dict(input_dim=12, hidden_dim=16, num_heads=4, tr_layers=3, dropout=0.1, out_dim=2, head_type=head_type)
    theirs = randomise(mod.VisualDynamicModel(**kw), 1).eval()
    ours = face_from_official(theirs.state_dict(), **kw)
    torch.manual_seed(2)
    x = torch.randn(3, 40, 12)
    mask = lengths_mask([40, 25, 3], 40)  # a full window, a short video and a very short one (padded)
    with torch.no_grad():
        emb, va = theirs.forward_with_embeddings(x, mask=mask)
        got = ours(x, mask=mask)
        assert maxdiff(got["va"], theirs(x, mask=mask)) < TOL
        assert maxdiff(got["va"], va) < TOL and maxdiff(got["emb"], emb) < TOL
        # no mask at all, and a different length
        assert maxdiff(ours(x[:, :17])["va"], theirs(x[:, :17])) < TOL
    # the padding really is masked: changing padded inputs leaves the real frames' outputs unchanged
    x2 = x.clone()
    x2[1, 25:] = 100.0
    with torch.no_grad():
        assert maxdiff(ours(x2, mask=mask)["va"][1, :25], got["va"][1, :25]) < TOL


def test_face_converter_is_strict() -> None:
    mod = official("src_visual_dynamic_model/model.py")
    kw = dict(input_dim=12, hidden_dim=16, num_heads=4, tr_layers=2)
    sd = mod.VisualDynamicModel(**kw).state_dict()
    with pytest.raises(ModelError, match="no place"):
        face_from_official({**sd, "extra.weight": torch.zeros(1)}, **kw)
    with pytest.raises(ModelError, match="missing"):
        face_from_official({k: v for k, v in sd.items() if not k.startswith("head.0")}, **kw)
    with pytest.raises(ModelError):  # wrong settings: 3 layers asked, 2 saved
        face_from_official(sd, **{**kw, "tr_layers": 3})
    bad = dict(sd)
    bad["transformer.0.positional_encoding.pe"] = bad["transformer.0.positional_encoding.pe"] + 1.0
    with pytest.raises(ModelError, match="position table"):
        face_from_official(bad, **kw)
    # an official training checkpoint holds the weights under "model"
    assert face_from_official({"model": sd, "epoch": 3}, **kw).config.layers == 2


@pytest.mark.parametrize("hidden_dim,heads", [(48, 4), (80, 8), (96, 6), (200, 8), (256, 8)])
def test_every_official_width_loads(hidden_dim: int, heads: int) -> None:
    """Official face and directed-fusion modules of widths whose position tables differ from vaest's by float32
    rounding (up to 2.5e-4 at the far rows; 48 and 80 were refused before) load and give the official outputs."""
    face_mod = official("src_visual_dynamic_model/model.py")
    kw = dict(input_dim=12, hidden_dim=hidden_dim, num_heads=heads, tr_layers=1)
    theirs = randomise(face_mod.VisualDynamicModel(**kw), 11).eval()
    ours = face_from_official(theirs.state_dict(), **kw)
    x = torch.randn(2, 50, 12, generator=torch.Generator().manual_seed(12))
    mask = lengths_mask([50, 20], 50)
    with torch.no_grad():
        assert maxdiff(ours(x, mask=mask)["va"], theirs(x, mask=mask)) < TOL
    dcm_mod = official("src_fusion_model/model.py")
    dims = {"face_features": 12, "llm_multimodal_featuress": 7}
    dkw = dict(modality_input_dims=dims, modalities=list(dims), q_modality="face_features",
               k_modality="llm_multimodal_featuress", v_modality="llm_multimodal_featuress", hidden_dim=hidden_dim,
               num_heads=heads, tr_layers=1)
    theirs_d = randomise(dcm_mod.FusionModel(**dkw), 13).eval()
    ours_d = dcm_from_official(theirs_d.state_dict(), **dkw)
    beh = torch.randn(2, 50, 7, generator=torch.Generator().manual_seed(14))
    with torch.no_grad():
        _, va = theirs_d.forward_with_embeddings({"face_features": x, "llm_multimodal_featuress": beh}, mask=mask)
        assert maxdiff(ours_d(face=x, behavior=beh, mask=mask)["va"], va) < TOL


def test_position_check_refuses_another_formula() -> None:
    """The width-independent tolerance still refuses a table of another formula (max period 1000, or shifted
    by one row), so a table vaest would not reproduce cannot slip through."""
    from vaest.models.official.common import check_positions
    from vaest.models.temporal import sinusoidal_positions

    check_positions("ok", sinusoidal_positions(5000, 48))
    other = torch.zeros(5000, 48)
    pos = torch.arange(5000.0)[:, None]
    freq = torch.exp(torch.arange(0, 48, 2) * (-torch.log(torch.tensor(1000.0)) / 48))
    other[:, 0::2], other[:, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq)
    with pytest.raises(ModelError, match="position table"):
        check_positions("period", other)
    with pytest.raises(ModelError, match="position table"):
        check_positions("shifted", sinusoidal_positions(5001, 48)[1:])


@pytest.mark.parametrize("head_hidden_dim", [24, 0])
def test_behavior_model_matches_official(head_hidden_dim: int) -> None:
    mod = official("src_behavior_model/src/models/transformer_model.py")
    kw = dict(input_dim=10, d_model=16, num_layers=3, dropout=0.2, head_hidden_dim=head_hidden_dim,
              head_dropout=0.2, mamba_d_state=4, mamba_kernel_size=5, mamba_d_discr=0)
    theirs = randomise(mod.TextMambaRegressor(**kw), 3).eval()
    ours = behavior_from_official(theirs.state_dict(), **kw)
    torch.manual_seed(4)
    x = torch.randn(3, 16, 10)
    valid = lengths_mask([16, 9, 1], 16)
    with torch.no_grad():
        ref = theirs(features=x, valid_mask=valid)
        got = ours(x, mask=valid)
        assert maxdiff(got["va"], ref) < TOL
        hidden = theirs.encode(features=x, valid_mask=valid)
        assert maxdiff(got["emb"], theirs.features_from_hidden(hidden, "head_dropout")) < TOL


def test_behavior_fresh_init_matches_official_scheme() -> None:
    """vaest's reference behavior model starts like the official one: xavier Linear weights, zero biases."""
    from vaest.models.mamba import BehaviorMambaRef, BehaviorMambaRefConfig

    m = BehaviorMambaRef(BehaviorMambaRefConfig(input_dim=10, d_model=16, layers=1, head_hidden=8))
    lin = m.head[0]
    bound = (6.0 / (lin.in_features + lin.out_features)) ** 0.5
    with torch.no_grad():
        assert float(lin.weight.abs().max()) <= bound and float(lin.bias.abs().max()) == 0.0
        assert float(lin.weight.std()) > 0.5 * bound / 3**0.5  # uniform(-b, b) has std b / sqrt(3)
        assert torch.equal(m.blocks[0].A[0], torch.arange(1, m.config.d_state + 1, dtype=torch.float32))


@pytest.mark.parametrize("streams", [("face_features", "llm_multimodal_featuress", "llm_multimodal_featuress"),
                                     ("fusion", "fusion", "fusion"),
                                     ("face_features", "face_features", "llm_multimodal_featuress")])
def test_dcm_model_matches_official(streams: tuple[str, str, str]) -> None:
    mod = official("src_fusion_model/model.py")
    dims = {"face_features": 14, "llm_multimodal_featuress": 9}
    kw = dict(modality_input_dims=dims, modalities=list(dims), q_modality=streams[0], k_modality=streams[1],
              v_modality=streams[2], hidden_dim=16, num_heads=4, tr_layers=3, dropout=0.1, head_type="mlp")
    theirs = randomise(mod.FusionModel(**kw), 5).eval()
    ours = dcm_from_official(theirs.state_dict(), **kw)
    torch.manual_seed(6)
    face, beh = torch.randn(2, 30, 14), torch.randn(2, 30, 9)
    mask = lengths_mask([30, 11], 30)
    with torch.no_grad():
        emb, va = theirs.forward_with_embeddings({"face_features": face, "llm_multimodal_featuress": beh}, mask=mask)
        got = ours(face=face, behavior=beh, mask=mask)
        assert maxdiff(got["va"], va) < TOL and maxdiff(got["emb"], emb) < TOL


def test_window_loss_matches_official() -> None:
    face_loss = official("src_visual_dynamic_model/losses.py").CCCLoss()
    fusion_loss = official("src_fusion_model/losses.py").CCCLoss()
    torch.manual_seed(7)
    pred, gold = torch.randn(4, 50, 2), torch.randn(4, 50, 2) * 0.5 + 0.1
    gold[0, 5] = float("nan")
    mask = lengths_mask([50, 30, 2, 1], 50)
    mask[0, 5] = False
    w = torch.tensor([1.0, 1.0])
    for loss in (face_loss, fusion_loss):
        for m in (mask, None):
            g = gold if m is not None else torch.nan_to_num(gold)
            ref = loss(g, pred, weights=w, mask=m)
            assert abs(float(ccc_loss_windows(pred, g, m)) - float(ref)) < TOL
    # per-window, not pooled: a constant offset per window is invisible to the pooled loss but not to this one
    assert abs(float(ccc_loss_windows(pred, gold, mask)) - float(ccc_loss_pooled(pred, torch.nan_to_num(gold), mask))) > 1e-3


def test_pooled_loss_matches_official_behavior_loss() -> None:
    crit = official("src_behavior_model/src/core/losses_metrics.py").CCCLoss()
    torch.manual_seed(8)
    pred, gold = torch.randn(3, 16, 2), torch.randn(3, 16, 2)
    valid = lengths_mask([16, 7, 2], 16)
    vp, vg = pred[valid], gold[valid]
    ref = 0.5 * (crit(vp[:, 0], vg[:, 0]) + crit(vp[:, 1], vg[:, 1]))
    assert abs(float(ccc_loss_pooled(pred, gold, valid)) - float(ref)) < TOL


def test_reference_prompt_is_the_official_one_word_for_word() -> None:
    """Read PROMPT_TEMPLATE out of the official script (parsed, not imported: it needs the Qwen stack)."""
    import ast

    from vaest.presets import get_preset
    from vaest.vlm import REFERENCE_PROMPT

    path = require_shared("reference-code/src_behavior_description/QwenVL-3-4B_train_embeddings.py")
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = [ast.literal_eval(n.value) for n in ast.walk(tree) if isinstance(n, ast.AnnAssign)
             and getattr(n.target, "id", None) == "PROMPT_TEMPLATE"]
    assert found == [REFERENCE_PROMPT]
    import vaest.features.behavior  # noqa: F401  (registers the behavior-vlm presets)

    p = get_preset("behavior-vlm", "reference")
    assert p.values["prompt"] == REFERENCE_PROMPT and p.values["text_branch"] == "separate"


@pytest.mark.parametrize("n", [1, 59, 60, 61, 130, 150, 401, 1000])
def test_end_aligned_windows_are_the_official_ones(n: int) -> None:
    """vaest's ``align_end`` windows = the official dataset's (``VideoWindowArranger``) for the same length."""
    import pandas as pd

    from vaest.windows import window_starts

    ds = official("src_visual_dynamic_model/dataset.py")
    df = pd.DataFrame({"video": "v", "frame": range(1, n + 1), "valence": 0.1, "arousal": 0.2})
    arr = ds.VideoWindowArranger(df, ds.WindowConfig(window_length=60, hop_length=25))
    assert [w["start"] for w in arr.windows] == window_starts(n, 60, 25, align_end=True)
    assert all(w["length"] == min(n, 60) for w in arr.windows)


def test_training_mode_draws_the_same_dropout_masks() -> None:
    """With dropout on, the reference models draw their random masks in the official order, so the same seed
    gives the same training-mode outputs (dropout on positions, residuals, FFN, projection and head)."""
    face = official("src_visual_dynamic_model/model.py")
    kw = dict(input_dim=12, hidden_dim=16, num_heads=4, tr_layers=2, dropout=0.3)
    theirs = randomise(face.VisualDynamicModel(**kw), 9)
    ours = face_from_official(theirs.state_dict(), **kw)
    x, mask = torch.randn(2, 20, 12), lengths_mask([20, 13], 20)
    torch.manual_seed(11)
    ref = theirs.train()(x, mask=mask)
    torch.manual_seed(11)
    got = ours.train()(x, mask=mask)["va"]
    assert maxdiff(got, ref) < TOL
    torch.manual_seed(12)
    assert maxdiff(ours(x, mask=mask)["va"], ref) > 1e-3  # other masks, other outputs: dropout is really on

    beh = official("src_behavior_model/src/models/transformer_model.py")
    kw = dict(input_dim=10, d_model=16, num_layers=2, dropout=0.3, head_hidden_dim=8, head_dropout=0.3,
              mamba_d_state=4, mamba_kernel_size=3)
    theirs = randomise(beh.TextMambaRegressor(**kw), 13)
    ours = behavior_from_official(theirs.state_dict(), **kw)
    x, valid = torch.randn(2, 16, 10), lengths_mask([16, 5], 16)
    torch.manual_seed(14)
    ref = theirs.train()(features=x, valid_mask=valid)
    torch.manual_seed(14)
    assert maxdiff(ours.train()(x, mask=valid)["va"], ref) < TOL

    fus = official("src_fusion_model/model.py")
    dims = {"face_features": 14, "llm_multimodal_featuress": 9}
    kw = dict(modality_input_dims=dims, modalities=list(dims), q_modality="face_features",
              k_modality="llm_multimodal_featuress", v_modality="llm_multimodal_featuress", hidden_dim=16,
              num_heads=4, tr_layers=2, dropout=0.3)
    theirs = randomise(fus.FusionModel(**kw), 15)
    ours = dcm_from_official(theirs.state_dict(), **kw)
    face_x, beh_x, mask = torch.randn(2, 20, 14), torch.randn(2, 20, 9), lengths_mask([20, 8], 20)
    torch.manual_seed(16)
    ref = theirs.train()({"face_features": face_x, "llm_multimodal_featuress": beh_x}, mask=mask)
    torch.manual_seed(16)
    assert maxdiff(ours.train()(face=face_x, behavior=beh_x, mask=mask)["va"], ref) < TOL
