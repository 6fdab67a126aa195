"""`vaest train face|behavior --preset reference` end to end on tiny corpora: the run uses and records every
setting of the preset; the config file and flags still override it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from test_behavior import _fake_corpus
from test_face import _toy_face_corpus
from vaest.cli import app
from vaest.errors import VaestError
from vaest.models import load_checkpoint
from vaest.presets import get_preset
from vaest.windows import window_starts

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _recorded(run) -> tuple[dict, dict]:
    doc = yaml.safe_load((run / "config.yaml").read_text())["config"]
    return doc, json.loads((run / "run.json").read_text())


def _check_record(run, task: str, overridden: set[str]) -> dict:
    """Every preset value is in the run's resolved settings (except those the test overrides) and the preset
    itself (name, values, sources) is recorded in config.yaml and run.json."""
    doc, info = _recorded(run)
    p = get_preset(task, "reference")
    resolved = {**doc["settings"], **doc["train"]}
    for k, v in p.values.items():
        if k in overridden:
            continue
        want = list(v) if isinstance(v, tuple) else v
        assert resolved[k] == want, (k, resolved[k], want)
    assert doc["settings"]["preset"] == "reference"
    for rec in (doc["preset"], info["preset"]):
        assert rec["name"] == "reference" and set(rec["values"]) == set(p.values)
        assert all(rec["sources"][k] for k in p.values)  # every value says where it comes from
    return resolved


def test_face_reference_preset_end_to_end(tmp_path):
    root = _toy_face_corpus(tmp_path / "corpus", n_train=2, n_val=1, n=130)
    cfg = tmp_path / "run.yaml"
    cfg.write_text("settings:\n  win: 60\n  hop: 25\n  model_config: {hidden_dim: 16, heads: 2, layers: 1}\n"
                   "train:\n  batch_size: 4\n")
    run = tmp_path / "run"
    r = CliRunner().invoke(app, ["train", "face", "--features", str(root / "feats"), "--corpus", str(root),
                                 "--out", str(run), "--encoder", "toy", "--epochs", "2", "--preset", "reference",
                                 "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    res = _check_record(run, "face", {"encoder", "win", "hop", "epochs", "batch_size"})
    assert (res["win"], res["hop"], res["epochs"], res["batch_size"]) == (60, 25, 2, 4)  # file and flags win
    model, ck = load_checkpoint(run / "model.pt")
    assert ck["name"] == "face-transformer-ref" and model.config.hidden_dim == 16
    assert ck["train_config"]["loss"] == "ccc-window" and ck["train_config"]["lr"] == 1e-4
    assert ck["inputs"]["parts"] == ["emb"] and ck["inputs"]["dim"] == 8  # embedding only, no probs/conf/motion
    assert ck["norm"]["mean"] == [0.0] * 8 and ck["norm"]["std"] == [1.0] * 8  # raw features
    assert ck["align_end"] is True and window_starts(130, 60, 25, True) == [0, 25, 50, 70]
    from vaest.inference import load_predictions

    p = load_predictions(run, "tra0")
    assert p.values.shape == (130, 2) and np.isfinite(p.values).all() and p.extras["emb"].shape == (130, 16)


def test_behavior_reference_preset_from_run_yaml(tmp_path):
    root, feats, ids, n = _fake_corpus(tmp_path, n_train=2, n_val=1, seconds=24)
    cfg = tmp_path / "run.yaml"
    cfg.write_text("preset: reference\nsettings:\n  model_config: {d_model: 16, layers: 2, head_hidden: 8}\n")
    run = tmp_path / "run"
    r = CliRunner().invoke(app, ["train", "behavior", "--features", str(feats), "--corpus", str(root), "--out",
                                 str(run), "--epochs", "2", "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    res = _check_record(run, "behavior", {"epochs"})
    assert (res["encoder"], res["branch"], res["pool"]) == ("vlm", "multimodal", "last")
    model, ck = load_checkpoint(run / "model.pt")
    assert ck["name"] == "behavior-mamba-ref" and model.config.d_model == 16
    tc = ck["train_config"]
    assert (tc["scheduler"], tc["early_stop"], tc["loss"], tc["lr"], tc["weight_decay"]) == ("none", 12, "ccc-pooled", 3e-4, 1e-3)
    hist = json.loads((run / "history.json").read_text())["history"]
    assert all(h["lr"] == 3e-4 for h in hist)  # no scheduler


def test_unknown_preset_is_a_clear_error(tmp_path):
    from vaest.tasks.face import settings_from

    with pytest.raises(VaestError, match="unknown preset 'official' for face; known: reference, vaest"):
        settings_from({}, {"preset": "official"})
    st, cfg = settings_from({"preset": "reference"}, {"lr": 5e-4})
    assert st.preset == "reference" and st.model == "face-transformer-ref" and cfg.lr == 5e-4 and cfg.loss == "ccc-window"
    st, _ = settings_from({}, {})
    assert st.preset is None and st.model == "face-transformer"  # no preset: today's defaults
    vst, vcfg = settings_from({}, {"preset": "vaest"})
    assert vst.preset == "vaest" and (vst.attn_span, vst.motion, vst.jitter) == (30, False, False)  # docs/ablation.md
    from vaest.tasks.behavior import settings_from as behavior_settings

    bst, bcfg = behavior_settings({}, {"preset": "vaest"})
    assert bst.model == "behavior-mamba" and bcfg.scheduler == "plateau" and bcfg.lr == 3e-4


from test_fusion import synth_runs  # noqa: E402,F401  (module-scoped fixture: face/behavior/audio runs)


def test_dcmmoe_reference_preset_trains_the_official_directed_fusion(synth_runs, tmp_path):  # noqa: F811
    from vaest.corpus import load_corpus
    from vaest.inference import load_predictions, read_run_json
    from vaest.tasks.fusion import apply_fusion, train_fusion
    from vaest.tasks.fusion_presets import dcmmoe_preset_kwargs

    file_cfg = {"preset": "reference", "win": 120, "hop": 50, "model": {"hidden_dim": 16, "heads": 2, "layers": 1},
                "train": {"batch_size": 4}}
    kw = dcmmoe_preset_kwargs(file_cfg, {"epochs": 2, "seed": None})
    assert kw["method"] == "dcm-ref" and kw["align_end"] and (kw["win"], kw["hop"]) == (120, 50)
    assert (kw["train_cfg"].loss, kw["train_cfg"].mse_weight, kw["train_cfg"].epochs) == ("ccc-window", 0.0, 2)
    out = tmp_path / "dcm"
    metrics = train_fusion(synth_runs["runs"], synth_runs["corpus"], out, **kw)
    assert np.isfinite(metrics["mean"])
    model, ck = load_checkpoint(out / "model.pt")
    assert ck["name"] == "dcm-ref" and set(model.config.input_dims) == {"face", "behavior"}  # no audio
    assert (model.config.q, model.config.k, model.config.v) == ("face", "behavior", "behavior")
    info = read_run_json(out)
    assert info["preset"]["name"] == "reference" and info["align_end"] is True and info["weight_names"] == []
    doc = yaml.safe_load((out / "config.yaml").read_text())["config"]
    assert doc["preset"]["values"]["method"] == "dcm-ref" and doc["train"]["loss"] == "ccc-window"
    rec = load_predictions(out, "vid00")
    assert rec.values.shape == (360, 2) and np.isfinite(rec.values).all() and rec.extras["emb"].shape == (360, 16)
    vids = load_corpus(synth_runs["corpus"]).split("val")[:1]
    apply_fusion(out, vids, tmp_path / "applied")
    np.testing.assert_allclose(load_predictions(tmp_path / "applied", vids[0].id).values,
                               load_predictions(out, vids[0].id).values, atol=1e-5)
    # without a preset the command keeps vaest's own DCMMoE; `--method dcmmoe --preset reference` is the official one
    assert dcmmoe_preset_kwargs({}, {})["method"] == "dcmmoe"
    assert dcmmoe_preset_kwargs({}, {"method": "dcmmoe", "preset": "reference"})["method"] == "dcm-ref"
    # the vaest preset keeps the official directed fusion too (dcmmoe did not help in docs/ablation.md)
    assert dcmmoe_preset_kwargs({"method": "dcmmoe"}, {"preset": "vaest"})["method"] == "dcm-ref"
