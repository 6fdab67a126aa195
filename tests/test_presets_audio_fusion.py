"""``--preset reference`` for the audio, RAAV and late-fusion stages: the settings it selects, that a run records
them, and the reference-form pieces (augmentation chain, head-only plateau rule, zero-padded windows)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import require_shared

from vaest.presets import get_preset

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_reference_audio_preset_precedence_and_sources():
    from vaest.tasks.audio import REFERENCE_AUDIO, config_from

    cfg = config_from({"epochs": 3}, {"preset": "reference", "head_lr": 1e-3})
    assert cfg.preset == "reference" and cfg.epochs == 3 and cfg.head_lr == 1e-3  # file and flags win
    assert (cfg.early_stop, cfg.plateau_factor, cfg.plateau_patience, cfg.plateau_threshold) == (6, 0.5, 2, 5e-4)
    assert cfg.reference_model and cfg.plateau_head_only and cfg.loss_min_valid == 4 and cfg.dropout == 0.2
    p = get_preset("audio", "reference")
    assert set(p.values) == set(REFERENCE_AUDIO) and all(p.sources[k].startswith("src_audio") for k in p.values)
    assert config_from(None, None).preset is None and not config_from(None, None).reference_model


def test_head_only_plateau_keeps_the_backbone_lr(tmp_path):
    """The reference plateau rule lowers the head group (factor 0.5, floor 1e-7) and never the backbone group."""
    from vaest.training import TrainConfig, fit

    class Task:
        def train_batches(self, rng, batch_size):
            yield {"x": torch.ones(4, 1), "target": torch.zeros(4, 2)}

        def validate(self, model, device):
            return {"valence": 0.0, "arousal": 0.0, "mean": 0.0}  # never improves

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = torch.nn.Linear(1, 2)
            self.head = torch.nn.Linear(2, 2)

        def forward(self, x):
            return {"va": self.head(self.backbone(x))}

    m = M()
    groups = [{"params": list(m.backbone.parameters()), "lr": 5e-6, "name": "backbone"},
              {"params": list(m.head.parameters()), "lr": 2e-4, "name": "head"}]
    cfg = TrainConfig(epochs=8, plateau_factor=0.5, plateau_patience=0, plateau_groups=("head",),
                      plateau_min_lr=1e-7, early_stop=100)
    res = fit(m, Task(), cfg, tmp_path / "run", param_groups=groups)
    ck = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    lrs = [g["lr"] for g in ck["optimizer"]["param_groups"]]
    assert lrs[0] == 5e-6 and lrs[1] < 2e-4 * 0.5 ** 5
    assert len(res.history) == 8


def test_reference_augmentation_order_and_probabilities():
    """Every operation at probability 1 in the official order equals composing the single steps by hand."""
    from vaest.tasks.audio_augment import AugmentConfig, augment_waveform, fft_lowpass

    x = (np.sin(np.arange(16000) / 7.0) * 0.3).astype(np.float32)
    ref = AugmentConfig.reference()
    assert (ref.p_gain, ref.p_noise, ref.p_band, ref.p_reverb) == (0.3, 0.6, 0.3, 0.2)
    off = AugmentConfig(p_noise=0, p_gain=0, p_band=0, p_reverb=0, form="reference")
    assert np.array_equal(augment_waveform(x, np.random.default_rng(0), off), x)
    gain_only = AugmentConfig(p_noise=0, p_gain=1, p_band=0, p_reverb=0, gain_db=6.0, form="reference")
    rng = np.random.default_rng(1)
    r0, g = rng.random(), rng.uniform(-6, 6)
    y = augment_waveform(x, np.random.default_rng(1), gain_only)
    assert r0 < 1 and np.allclose(y, np.clip(x * 10 ** (g / 20), -1, 1), atol=1e-6)
    # noise at the drawn SNR against the window's power
    noise_only = AugmentConfig(p_noise=1, p_gain=0, p_band=0, p_reverb=0, form="reference")
    y = augment_waveform(x, np.random.default_rng(2), noise_only)
    rng = np.random.default_rng(2)
    rng.random(), rng.random()
    snr = rng.uniform(8, 25)
    got = 10 * math.log10(np.mean(x.astype(np.float64) ** 2) / np.mean((y - x).astype(np.float64) ** 2))
    assert abs(got - snr) < 0.05
    lp = fft_lowpass(x, 0.5)
    assert lp.shape == x.shape and np.abs(np.fft.rfft(lp)[len(np.fft.rfft(lp)) // 2 + 2:]).max() < 1e-3
    full = AugmentConfig(p_noise=1, p_gain=1, p_band=1, p_reverb=1, form="reference")
    y = augment_waveform(x * 8, np.random.default_rng(3), full)
    assert y.shape == x.shape and np.abs(y).max() <= 1.0


def _tiny_backbone(root: Path) -> tuple[Path, Path]:
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import save_file

    cfg = transformers.WavLMConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48, conv_dim=(32, 32),
        conv_stride=(16, 10), conv_kernel=(16, 10), conv_bias=False, num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2, do_stable_layer_norm=True, feat_extract_norm="layer", num_buckets=32,
        max_bucket_distance=100)
    torch.manual_seed(0)
    transformers.WavLMModel(cfg).save_pretrained(root / "wavlm")
    ser = transformers.WavLMModel(cfg)
    save_file({f"ssl_model.{k}": v.contiguous() for k, v in ser.state_dict().items()}, str(root / "ser.safetensors"))
    return root / "wavlm", root / "ser.safetensors"


def test_cli_train_audio_preset_reference_on_synthetic_corpus(synth_corpus, tmp_path):
    """`vaest train audio --preset reference` runs end to end and the run records the reference settings."""
    import yaml
    from typer.testing import CliRunner

    from vaest.cli import app
    from vaest.models import load_checkpoint

    bb, ser = _tiny_backbone(tmp_path)
    feats, run = tmp_path / "feats", tmp_path / "run"
    r = CliRunner().invoke(app, ["extract", "audio", "--corpus", str(synth_corpus), "--out", str(feats),
                                 "--encoder", "wavlm", "--model", str(bb), "--no-vad"])
    assert r.exit_code == 0, r.output
    (tmp_path / "run.yaml").write_text("max_batches_per_epoch: 1\nbatch_size: 2\n")
    r = CliRunner().invoke(app, ["train", "audio", "--features", str(feats), "--corpus", str(synth_corpus),
                                 "--out", str(run), "--preset", "reference", "--backbone", str(bb),
                                 "--ssl-checkpoint", str(ser), "--epochs", "1", "--no-filter",
                                 "--config", str(tmp_path / "run.yaml")])
    assert r.exit_code == 0, r.output
    info = json.loads((run / "run.json").read_text())
    assert info["preset"]["name"] == "reference" and info["model"] == "audio-wavlm-reference"
    assert info["preset"]["values"]["plateau_threshold"] == 5e-4
    assert "cfg_test_w_audio.yaml" in info["preset"]["sources"]["head_lr"]
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    flat = json.dumps(cfg)
    assert '"preset": "reference"' in flat and '"early_stop": 6' in flat and '"augment_form": "reference"' in flat
    model, ck = load_checkpoint(run / "model.pt")
    assert ck["train_config"]["plateau_groups"] == ["head"] or ck["train_config"]["plateau_groups"] == ("head",)
    assert ck["train_config"]["loss_min_valid"] == 4 and ck["train_config"]["epochs"] == 1
    assert model.config.head_dropout == 0.2 and model.takes_mask
    m = json.loads((run / "metrics.json").read_text())
    assert math.isfinite(m["mean"])


# ---------------------------------------------------------------------------------------------------------
# RAAV, reference form
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def token_runs(tmp_path_factory) -> dict:
    from test_fusion import make_synthetic_runs

    return make_synthetic_runs(tmp_path_factory.mktemp("refraav"), n_train=4, n_val=2, n_frames=300, emb_dim=8,
                               audio_tokens=True)


def test_window_samples_one_per_audio_window():
    from vaest.inputs.audio_windows import AUDIO_WIN_BASE, frame_window_index
    from vaest.inputs.fusion import window_samples
    from vaest.timebase import TimeBase
    from vaest.sequences import Sequence

    n, fps = 300, 30.0  # 10 s: windows start at 0, 2, 4, 6, 8 s
    idx = frame_window_index(n, fps, AUDIO_WIN_BASE, 5)
    seq = Sequence("v", {"face": np.zeros((n, 3), np.float32), "audio_index": idx + 10 * (idx >= 0)},
                   np.zeros((n, 2), np.float32), TimeBase.frames(fps), n, fps)
    ws = window_samples([seq])
    assert [w.row for w in ws] == [10, 11, 12, 13, 14]
    assert [len(w.frames) for w in ws] == [120, 120, 120, 120, 60]  # the last window runs past the end
    assert ws[1].frames[0] == 60 and ws[1].frames[-1] == 179
    nowin = Sequence("w", {"face": np.zeros((50, 3), np.float32)}, np.zeros((50, 2), np.float32),
                     TimeBase.frames(fps), 50, fps)
    assert [(w.row, len(w.frames)) for w in window_samples([nowin], 20)] == [(-1, 20), (-1, 20), (-1, 10)]


def test_cli_train_fusion_preset_reference(token_runs, tmp_path):
    """`vaest train fusion --preset reference` trains the official RAAV form end to end and records it."""
    import yaml
    from typer.testing import CliRunner

    from vaest.cli import app
    from vaest.inference import load_predictions
    from vaest.models import load_checkpoint
    from vaest.tasks.fusion import apply_fusion

    r = token_runs["runs"]
    cfg = tmp_path / "f.yaml"
    cfg.write_text("model: {hidden: 16}\ntrain: {max_batches_per_epoch: 2, batch_size: 4}\n")
    out = tmp_path / "raav_ref"
    res = CliRunner().invoke(app, ["train", "fusion", "--runs", f"face={r['face']}", "--runs",
                                   f"behavior={r['behavior']}", "--runs", f"audio={r['audio']}", "--out", str(out),
                                   "--epochs", "2", "--preset", "reference", "--config", str(cfg)])
    assert res.exit_code == 0, res.output
    info = json.loads((out / "run.json").read_text())
    assert info["form"] == "reference" and info["preset"]["name"] == "reference" and info["crossfit"] is False
    assert info["preset"]["values"]["val_smooth"] == [7, 13] or info["preset"]["values"]["val_smooth"] == (7, 13)
    saved = yaml.safe_load((out / "config.yaml").read_text())["config"]
    assert saved["train"]["early_stop"] == 6 and saved["train"]["grad_clip"] == 1.0 and saved["train"]["epochs"] == 2
    assert saved["train"]["loss_min_valid"] == 4 and saved["val_smooth"] == [7, 13] and saved["preset"]["name"] == "reference"
    model, ck = load_checkpoint(out / "model.pt")
    assert ck["name"] == "raav-reference" and model.config.hidden == 16 and model.config.temporal_layers == 1
    assert model.config.audio_dim == 8 + 2  # audio tokens carry the per-second audio prediction
    rec = load_predictions(out, "vid00")
    assert rec.values.shape == (300, 2) and rec.extras["weights"].shape == (300, 2)
    assert np.isfinite(rec.values).all()
    apply_fusion(out, [v for v in __import__("vaest.corpus", fromlist=["load_corpus"]).load_corpus(
        token_runs["corpus"]).videos if v.id == "vid00"], tmp_path / "again")
    np.testing.assert_allclose(load_predictions(tmp_path / "again", "vid00").values, rec.values, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# Late fusion, reference form
# ---------------------------------------------------------------------------------------------------------

LATE_SCRIPT = Path(__file__).resolve().parents[2] / "shared" / "reference-code" / "src_audio_and_fusion" / "scripts"


def test_reference_subset_search_equals_the_official_script(monkeypatch):
    """Same subsets, weights and scores as the official ``search_for_subset`` run in the official order."""
    require_shared("reference-code/src_audio_and_fusion/scripts/predictions_fusion.py")
    pytest.importorskip("pandas")
    import importlib
    import itertools

    from vaest.late_fusion import reference_subset_search

    monkeypatch.syspath_prepend(str(LATE_SCRIPT))
    off = importlib.import_module("predictions_fusion")
    rng = np.random.default_rng(0)
    y = rng.uniform(-1, 1, size=(500, 2))
    preds = {"a": y + rng.normal(0, 0.5, y.shape), "b": 0.5 * y + rng.normal(0, 0.4, y.shape),
             "c": rng.normal(0, 0.5, y.shape), "d": y[:, ::-1] * 0.3 + rng.normal(0, 0.3, y.shape)}
    ours = {r.sets: r for r in reference_subset_search(preds, y, n_samples=300, seed=42)}
    orng = np.random.default_rng(42)
    n = 0
    for k in (1, 2, 3):
        for subset in itertools.combinations(list(preds), k):
            res = off.search_for_subset(list(subset), preds, y, preds, y, 0.05, 300, 1.0, orng, channelwise=True)
            mine = ours[subset]
            np.testing.assert_allclose(mine.weights[:, 0], res.w_v, atol=1e-12)
            np.testing.assert_allclose(mine.weights[:, 1], res.w_a, atol=1e-12)
            assert abs(mine.ccc["mean"] - res.va_ccc_metric) < 1e-9
            n += 1
    assert n == len(ours) == 4 + 6 + 4
    best = reference_subset_search(preds, y, n_samples=300, seed=42)[0]
    assert "c" not in best.sets


def test_cli_train_late_preset_reference(token_runs, tmp_path):
    from typer.testing import CliRunner

    from vaest.cli import app

    r = token_runs["runs"]
    out = tmp_path / "late_ref"
    res = CliRunner().invoke(app, ["train", "late", "--runs", f"face={r['face']}", "--runs", f"audio={r['audio']}",
                                   "--runs", f"behavior={r['behavior']}", "--corpus", str(token_runs["corpus"]),
                                   "--out", str(out), "--preset", "reference", "--samples", "200"])
    assert res.exit_code == 0, res.output
    info = json.loads((out / "run.json").read_text())
    assert info["method"] == "reference" and info["preset"]["name"] == "reference"
    assert 1 <= len(info["subset"]) <= 3 and info["leaderboard"][0]["sets"] == info["subset"]
    w = np.array(list(info["weights"].values()))
    np.testing.assert_allclose(w.sum(0), [1, 1], atol=1e-9)
    for name, ww in info["weights"].items():  # sets outside the chosen subset get weight 0
        if name not in info["subset"]:
            assert ww == [0.0, 0.0]


# ---------------------------------------------------------------------------------------------------------
# Mouth-open rule, reference form
# ---------------------------------------------------------------------------------------------------------


def test_reference_mouth_rule_is_a_trailing_mean_over_detected_frames():
    """The official rule: pandas ``rolling(30).mean()`` over the detected frames' areas > the mean raw area."""
    pd = pytest.importorskip("pandas")
    from vaest.features.mouth import REFERENCE_MOUTH, MouthConfig, mouth_open

    rng = np.random.default_rng(0)
    n = 400
    area = 0.05 + 0.03 * np.sin(np.arange(n) / 9.0) + rng.normal(0, 0.01, n)
    area[100:160] = np.nan  # no face detected here
    area[rng.random(n) < 0.1] = np.nan
    ok = np.isfinite(area)
    det = pd.Series(area[ok])
    want = np.zeros(n, bool)
    want[ok] = (det.rolling(30).mean() > det.mean()).to_numpy()
    cfg = MouthConfig(**{**REFERENCE_MOUTH, "close_gap_s": 0.0, "min_run_s": 0.0})
    got = mouth_open(area, 30.0, cfg)
    assert np.array_equal(got, want)
    assert not got[np.flatnonzero(ok)[:29]].any()  # the first 29 detections have no full window
    assert not np.array_equal(got, mouth_open(area, 30.0, MouthConfig(close_gap_s=0.0, min_run_s=0.0)))


def test_reference_raav_prediction_skip_starts_from_the_gated_average():
    from vaest.models import create_model

    torch.manual_seed(0)
    m = create_model("raav-reference", modalities=("face", "behavior"), in_dims=(6, 5), audio_dim=4, hidden=16,
                     pred_skip=True).eval()
    g = torch.Generator().manual_seed(1)
    x = {"face": torch.rand(2, 10, 6, generator=g) * 1.6 - 0.8, "behavior": torch.rand(2, 10, 5, generator=g) - 0.5,
         "face_mask": torch.rand(2, 10, generator=g) > 0.3, "behavior_mask": torch.ones(2, 10, dtype=torch.bool),
         "audio": torch.randn(2, 4, 4, generator=g), "audio_mask": torch.ones(2, 4, dtype=torch.bool),
         "frame_mask": torch.ones(2, 10, dtype=torch.bool)}
    with torch.no_grad():
        out = m(**x)
    w = out["weights"]
    want = w[..., :1] * x["face"][..., -2:] * x["face_mask"][..., None] + w[..., 1:] * x["behavior"][..., -2:]
    assert torch.allclose(out["va"], want, atol=1e-5)
    assert torch.allclose(w[~x["face_mask"]][:, 0], torch.zeros(1))


def test_cli_submit_preset_reference_uses_official_smoothing(token_runs, tmp_path):
    """`vaest submit --preset reference`: kernels 7/13 with replicate edges, clipped."""
    import csv

    from typer.testing import CliRunner

    from vaest.cli import app
    from vaest.inference import load_predictions
    from vaest.postprocess import postprocess

    run = token_runs["runs"]["face"]
    out = tmp_path / "sub.txt"
    res = CliRunner().invoke(app, ["submit", str(run), "--out", str(out), "--corpus", str(token_runs["corpus"]),
                                   "--split", "val", "--preset", "reference"])
    assert res.exit_code == 0, res.output
    rows = list(csv.reader(out.open()))[1:]
    rec = load_predictions(run, "vid04")
    want = postprocess(rec.values, rec.mask, (7, 13), edge="replicate")
    got = np.array([[float(r[1]), float(r[2])] for r in rows if r[0].startswith("vid04/")])
    assert got.shape == want.shape and np.abs(got - want).max() < 1e-5
    trunc = postprocess(rec.values, rec.mask, (7, 13))
    assert np.abs(trunc[:3] - want[:3]).max() > 1e-6  # the ends differ from vaest's truncated windows
