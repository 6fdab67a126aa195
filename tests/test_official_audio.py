"""The official Team RAS audio model and RAAV (imported from ``../shared/reference-code``) load into vaest's
reference models and give the same outputs and the same losses.

The official files import four names from ``chimera_ml`` (plus the loss/metric base classes for the losses);
chimera-ml needs Python 3.12, so :func:`chimera_stub` injects a minimal stand-in with its documented behaviour:
``Batch(inputs, targets=None, meta=None)`` and ``ModelOutput(preds, aux=None)`` dataclasses, ``BaseModel`` an
``nn.Module``, and registries whose ``register(name)`` decorator returns the function unchanged.
The official audio constructor's two hub calls are patched to a tiny random WavLM and a local safetensors file.
"""

from __future__ import annotations

import importlib
import logging
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from vaest.metrics import ccc_loss

pytestmark = pytest.mark.usefixtures("one_torch_thread")
log = logging.getLogger(__name__)

REF = Path(__file__).resolve().parents[2] / "shared" / "reference-code" / "src_audio_and_fusion" / "src"
if not REF.is_dir():
    from conftest import SHARED, in_ci

    if in_ci():  # CI always has ../shared: its absence fails the run instead of skipping
        pytest.fail(f"official reference code not found at {REF}; CI must have {SHARED}", pytrace=False)
    pytest.skip(f"official reference code not found at {REF}", allow_module_level=True)
transformers = pytest.importorskip("transformers", reason="the audio model needs transformers")


class _Registry:
    """A name -> factory registry; ``register(name)`` stores and returns the function."""

    def __init__(self) -> None:
        self.items: dict[str, Any] = {}

    def register(self, name: str):
        def deco(fn):
            self.items[name] = fn
            return fn
        return deco


@dataclass
class _Batch:
    inputs: dict[str, Any]
    targets: Any = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class _ModelOutput:
    preds: Any
    aux: dict[str, Any] | None = None


class _BaseModel(nn.Module):
    pass


class _BaseLoss:
    pass


class _BaseMetric:
    pass


@pytest.fixture
def chimera_stub(monkeypatch):
    """Inject the stand-in ``chimera_ml`` and the official ``src`` folder; restore sys.modules afterwards."""
    names = {
        "chimera_ml": {}, "chimera_ml.core": {}, "chimera_ml.models": {}, "chimera_ml.losses": {},
        "chimera_ml.metrics": {},
        "chimera_ml.core.batch": {"Batch": _Batch},
        "chimera_ml.core.types": {"ModelOutput": _ModelOutput},
        "chimera_ml.core.registry": {"MODELS": _Registry(), "LOSSES": _Registry(), "METRICS": _Registry()},
        "chimera_ml.models.base": {"BaseModel": _BaseModel},
        "chimera_ml.losses.base": {"BaseLoss": _BaseLoss},
        "chimera_ml.metrics.base": {"BaseMetric": _BaseMetric},
    }
    for name, attrs in names.items():
        mod = types.ModuleType(name)
        for k, v in attrs.items():
            setattr(mod, k, v)
        monkeypatch.setitem(sys.modules, name, mod)
    before = set(sys.modules)
    monkeypatch.syspath_prepend(str(REF))
    yield
    for name in set(sys.modules) - before:  # the official packages (audio, fusion, losses, utils) go away again
        if name.split(".")[0] in {"audio", "fusion", "losses", "utils"}:
            del sys.modules[name]


def _tiny_wavlm_config():
    return transformers.WavLMConfig(
        hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=48,
        conv_dim=(16, 16, 16), conv_stride=(5, 4, 4), conv_kernel=(10, 8, 4), num_conv_pos_embeddings=8,
        num_conv_pos_embedding_groups=2, feat_extract_norm="layer", do_stable_layer_norm=True,
        num_buckets=32, max_bucket_distance=64, hidden_dropout=0.1, attention_dropout=0.1, feat_proj_dropout=0.1)


@pytest.fixture
def official_audio(chimera_stub, monkeypatch, tmp_path):
    """The official WavLMS2SModelV1 (reference settings) on a tiny random WavLM with local ssl_model weights."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    cfg = _tiny_wavlm_config()
    donor = transformers.WavLMModel(cfg)
    ckpt = tmp_path / "model.safetensors"
    tensors = {f"ssl_model.{k}": v.contiguous() for k, v in donor.state_dict().items()}
    tensors["head.weight"] = torch.randn(3, 4)  # not backbone: ignored by both
    save_file(tensors, str(ckpt))
    calls = []

    def fake_from_pretrained(name, *a, **k):
        calls.append(name)
        return transformers.WavLMModel(cfg)

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", fake_from_pretrained)
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo_id, filename, **k: str(ckpt))
    wm = importlib.import_module("audio.models.wavlm_s2s_model")
    model = wm.wavlm_s2s_model_v1(model_name="3loi/SER-Odyssey-Baseline-WavLM-Multi-Attributes",
                                  unfreeze_last_n_layers=2, pooling="attn_stats", head_dropout=0.2,
                                  input_normalize=True, attn_hidden_dim=16, attn_dropout=0.2)
    assert calls == ["microsoft/wavlm-large"]
    for k, v in donor.state_dict().items():  # the official constructor loaded the ssl weights over the backbone
        assert torch.equal(model.backbone.state_dict()[k], v), k
    with torch.no_grad():  # random head and pooling so that a wrong mapping shows
        for p in list(model.head.parameters()) + list(model.pool.parameters()):
            p.add_(torch.randn_like(p) * 0.1)
    return model, wm, ckpt, donor


def _wav_batch(lengths: list[int], s: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    wav = torch.randn(len(lengths), s, generator=g) * 0.3
    lens = torch.tensor(lengths)
    mask = torch.arange(s)[None, :] < lens[:, None]
    return wav * mask, lens


def test_official_audio_state_dict_loads_and_matches(official_audio):
    from vaest.models.official import audio_from_official

    model, wm, _, _ = official_audio
    model.eval()
    ours = audio_from_official(model.state_dict(), model.backbone.config, attn_hidden_dim=16, attn_dropout=0.2,
                               head_dropout=0.2, unfreeze_last_n_layers=2)
    assert not ours.training
    wav, lens = _wav_batch([8000, 5200, 2100], 8000)
    with torch.no_grad():
        ref = model(wm.Batch(inputs={"audio": wav}, meta={"audio_len": lens}))
        got = ours(wav, lengths=lens)
        ref_m = model(wm.Batch(inputs={"audio": wav}, meta={"attention_mask": (wav != 0).long() | (
            torch.arange(8000)[None] < lens[:, None]).long()}))
        got_m = ours(wav, mask=torch.arange(8000)[None] < lens[:, None])
        ref_n = model(wm.Batch(inputs={"audio": wav[:1]}, meta={}))
        got_n = ours(wav[:1])
    assert ref.preds.shape == got["va"].shape == (3, 4, 2)
    assert (ref.preds - got["va"]).abs().max() < 1e-5
    assert (ref.aux["features"] - got["emb"]).abs().max() < 1e-5
    assert (ref_m.preds - got_m["va"]).abs().max() < 1e-5
    assert (ref_n.preds - got_n["va"]).abs().max() < 1e-5
    # the padding really matters: the short rows differ from an unmasked run on the same padded samples
    with torch.no_grad():
        unmasked = ours(wav)["va"]
    assert (unmasked[2] - got["va"][2]).abs().max() > 1e-4
    # the same parameters are trainable (last 2 layers + head; the pooling is outside the official optimiser)
    assert {n for n, p in ours.backbone.named_parameters() if p.requires_grad} == \
        {n for n, p in model.backbone.named_parameters() if p.requires_grad}
    assert not any(p.requires_grad for p in ours.pool.parameters())


def test_official_audio_rejects_foreign_state_dict(official_audio):
    from vaest.errors import ModelError
    from vaest.models.official import audio_from_official

    model, _, _, _ = official_audio
    sd = dict(model.state_dict())
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(ModelError, match="extra.weight"):
        audio_from_official(sd, model.backbone.config, attn_hidden_dim=16)
    sd = dict(model.state_dict())
    del sd["head.5.bias"]
    with pytest.raises(ModelError, match="missing"):
        audio_from_official(sd, model.backbone.config, attn_hidden_dim=16)


def test_reference_audio_model_loads_ssl_checkpoint_by_path(official_audio, tmp_path):
    """vaest's own constructor initialises the backbone as the official one: base weights, then ssl_model.*."""
    from vaest.models import create_model

    _, _, ckpt, donor = official_audio
    base = tmp_path / "base"
    transformers.WavLMModel(_tiny_wavlm_config()).save_pretrained(base)
    for src in (ckpt, ckpt.parent):
        m = create_model("audio-wavlm-reference", backbone=str(base), ssl_checkpoint=str(src), att_dim=16,
                         trainable_layers=2)
        for k, v in donor.state_dict().items():
            assert torch.equal(m.backbone.state_dict()[k], v), k
    assert m.config.backbone_config["model_type"] == "wavlm"


def _targets(b: int, t: int, n_bad: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    y = torch.rand(b, t, 2, generator=g) * 2 - 1
    flat = y.view(-1, 2)
    flat[:n_bad] = -5.0
    return y


@pytest.mark.parametrize("n_bad", [0, 5, 10])  # 12 steps: all valid, 7 valid, 2 valid (MSE-only fallback)
def test_official_audio_loss_equals_vaest_loss(chimera_stub, n_bad):
    loss_mod = importlib.import_module("losses.ccc_mse_loss")
    official = loss_mod.ccc_mse_loss(ccc_weight=1, mse_weight=0.1, v_weight=0.7, a_weight=0.3)
    g = torch.Generator().manual_seed(4)
    pred = torch.randn(3, 4, 2, generator=g) * 0.5
    y = _targets(3, 4, n_bad)
    ref = official(_ModelOutput(preds=pred), _Batch(inputs={}, targets=y))
    ok = (y != -5.0).all(-1)
    ours = ccc_loss(pred, torch.where(ok[..., None], y, torch.nan), ok, (0.7, 0.3), 0.1, min_valid=4)
    assert abs(float(ref) - float(ours)) < 1e-5
    if n_bad == 10:  # the fallback is the plain MSE of the valid steps
        assert abs(float(ours) - float(((pred[ok] - y[ok]) ** 2).mean())) < 1e-6


# ---------------------------------------------------------------------------------------------------------
# RAAV
# ---------------------------------------------------------------------------------------------------------


def _raav_batch(b: int = 4, L: int = 12, ta: int = 4, dims=(10, 7), da: int = 9):
    g = torch.Generator().manual_seed(5)
    inputs = {"face_embedding": torch.randn(b, L, dims[0] - 2, generator=g),
              "face_prediction": torch.rand(b, L, 2, generator=g) * 2 - 1,
              "qwen_mm_embedding": torch.randn(b, L, dims[1] - 2, generator=g),
              "qwen_mm_prediction": torch.rand(b, L, 2, generator=g) * 2 - 1,
              "audio_embedding": torch.randn(b, ta, da - 2, generator=g),
              "audio_prediction": torch.rand(b, ta, 2, generator=g) * 2 - 1}
    seq = torch.ones(b, L, dtype=torch.bool)
    seq[1, 9:] = False  # a padded sample
    seq[3, 5:] = False
    face = seq.clone()
    face[0, 2:5] = False  # frames without a face
    beh = seq.clone()
    beh[2, :] = False  # no behavior at all
    beh[0, 3:4] = False  # a frame with neither
    audio = torch.ones(b, ta, dtype=torch.bool)
    audio[1, 2:] = False
    audio[3, :] = False  # no audio in this sample
    masks = {"targets_sequence_mask": seq, "input_valid_mask": {"face": face, "qwen_mm": beh, "audio": audio}}
    return inputs, masks


def _ours_inputs(inputs, masks):
    iv = masks["input_valid_mask"]
    return {"face": torch.cat([inputs["face_embedding"], inputs["face_prediction"]], -1), "face_mask": iv["face"],
            "behavior": torch.cat([inputs["qwen_mm_embedding"], inputs["qwen_mm_prediction"]], -1),
            "behavior_mask": iv["qwen_mm"],
            "audio": torch.cat([inputs["audio_embedding"], inputs["audio_prediction"]], -1),
            "audio_mask": iv["audio"], "frame_mask": masks["targets_sequence_mask"]}


@pytest.mark.parametrize("layers", [1, 2])
def test_official_raav_state_dict_loads_and_matches(chimera_stub, layers):
    from vaest.models.official import raav_from_official

    fm = importlib.import_module("fusion.models.multimodal_fusion_model")
    torch.manual_seed(0)
    model = fm.multimodal_fusion_model_v4(frame_modalities=["face", "qwen_mm"], use_predictions=True, hidden=16,
                                          dropout=0.1, num_heads=4, num_temporal_layers=layers,
                                          num_audio_latents=4, modality_priors={"face": 0.85, "qwen_mm": 0.15})
    inputs, masks = _raav_batch()
    batch = _Batch(inputs=inputs, meta={"masks": masks})
    model.eval()
    with torch.no_grad():
        model(batch)  # materialise the lazy layers
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        ref = model(batch)
    ours = raav_from_official(model.state_dict(), ["face", "qwen_mm"], rename={"qwen_mm": "behavior"},
                              dropout=0.1, num_heads=4)
    with torch.no_grad():
        got = ours(**_ours_inputs(inputs, masks))
    assert got["va"].shape == ref.preds.shape == (4, 12, 2)
    assert (ref.preds - got["va"]).abs().max() < 1e-5
    assert (ref.aux["embs"] - got["emb"]).abs().max() < 1e-5
    # the frames without any modality and the padded frames are as in the official model; the weights use
    # only available modalities
    assert torch.all(got["weights"][2, :, 1] == 0)
    assert torch.allclose(ours.log_prior, torch.log(torch.tensor([0.85, 0.15])), atol=1e-6)


def test_official_raav_loss_equals_vaest_loss(chimera_stub):
    loss_mod = importlib.import_module("losses.ccc_mse_mm_loss")
    official = loss_mod.ccc_mse_mm_loss(ccc_weight=1, mse_weight=0.01, v_weight=0.7, a_weight=0.3)
    _, masks = _raav_batch()
    g = torch.Generator().manual_seed(6)
    pred = torch.randn(4, 12, 2, generator=g) * 0.5
    y = _targets(4, 12, 7)
    valid = masks["input_valid_mask"]["face"]
    masks = {**masks, "targets_valid_mask": valid}
    ref = official(_ModelOutput(preds=pred), _Batch(inputs={}, targets=y, meta={"masks": masks}))
    ok = (y != -5.0).all(-1) & masks["targets_sequence_mask"] & valid
    ours = ccc_loss(pred, torch.where(ok[..., None], y, torch.nan), ok, (0.7, 0.3), 0.01, min_valid=4)
    assert abs(float(ref) - float(ours)) < 1e-5
