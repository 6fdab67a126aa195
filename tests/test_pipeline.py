"""End to end: `vaest predict` (zero-shot and with a trained bundle) and `vaest demo` in a tiny configuration."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mediautil import make_video, make_wav
from vaest.cli import app

pytest.importorskip("mediapipe", reason="the face path needs mediapipe (vaest[face])")


def _rows(p: Path) -> list[dict]:
    with open(p, newline="") as f:
        return list(csv.DictReader(f))


def test_predict_zero_shot_mixed_inputs(synth_corpus, tmp_path):
    from vaest.corpus import load_corpus
    from mediautil import count_frames

    v = load_corpus(synth_corpus).split("train")[0]
    silent = make_video(tmp_path / "no_audio.mp4", n_frames=20, audio=False)
    wav = make_wav(tmp_path / "speech.wav", seconds=2.0)
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00" * 100)
    out = tmp_path / "preds"
    r = CliRunner().invoke(app, ["predict", str(v.media), str(silent), str(wav), str(bad), "--out", str(out),
                                 "--no-progress", "--device", "cpu"])
    assert r.exit_code == 1  # one file failed, the others were written
    index = {Path(x["input"]).name: x for x in _rows(out / "index.csv")}
    assert index[bad.name]["status"] == "failed" and str(bad) in index[bad.name]["reason"]
    assert all(index[n]["status"] == "ok" for n in (v.media.name, silent.name, wav.name))
    rows = _rows(out / index[v.media.name]["csv"])
    assert len(rows) == count_frames(v.media)
    assert list(rows[0])[:5] == ["frame", "time", "valence", "arousal", "source"] and "face_valence" in rows[0]
    est = [x for x in rows if x["source"] == "estimated"]
    # an estimated frame has the face (valence and arousal) or, zero-shot, only the voice (arousal, no valence)
    va = np.array([[float(x["valence"] or "nan"), float(x["arousal"])] for x in est])
    face = np.array([x["face_valence"] != "" for x in est])
    assert len(est) > len(rows) // 2 and np.isfinite(va[face]).all() and np.isfinite(va[:, 1]).all()
    assert np.nanmax(np.abs(va)) <= 1 and np.nanstd(va, 0).max() > 0
    # frames without a face are empty, never 0.0, and say so
    assert all(x["valence"] == "" and x["arousal"] == "" for x in rows if x["source"] == "none")
    assert rows[1]["frame"] == "2" and float(rows[30]["time"]) == pytest.approx(1.0, abs=1e-3)
    assert (out / index[v.media.name]["csv"]).with_suffix(".png").stat().st_size > 10_000
    # a flat grey video has no face: every row empty and labelled none, not zeros
    grey = _rows(out / index[silent.name]["csv"])
    assert len(grey) == 20 and all(x["source"] == "none" and x["valence"] == "" for x in grey)
    a = _rows(out / index[wav.name]["csv"])
    assert len(a) == pytest.approx(60, abs=2) and a[0]["valence"] == "" and a[0]["audio_valence"] == ""
    meta = json.loads((out / index[wav.name]["csv"]).with_suffix(".json").read_text())
    assert any("voice arousal from gain-independent cues" in n for n in meta["notes"])
    assert not any("loudness-only" in n for n in meta["notes"])
    assert index[bad.name]["csv"] == "" and not list(out.rglob("broken.csv"))


@pytest.mark.slow
def test_demo_tiny_end_to_end(synth_corpus, tmp_path):
    """The whole method (synth -> ... -> predict) with one or two epochs per model: every artefact exists and
    is consistent; a rerun of the same command recomputes nothing."""
    import shutil

    out = tmp_path / "demo"
    # reuse the session corpus (generation is tested elsewhere): the demo skips synthesis when it exists
    shutil.copytree(synth_corpus, out / "corpus")
    cfg = tmp_path / "demo.yaml"
    cfg.write_text("face_epochs: 2\naudio_epochs: 1\nbehavior_epochs: 2\nfusion_epochs: 1\n")
    r = CliRunner().invoke(app, ["demo", str(out), "--videos", "4", "--seconds", "8", "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["runs"]) == {"face", "audio", "behavior", "raav", "dcmmoe", "late", "average"}
    # the session corpus has no test split: the demo then reports val, where it also chose everything
    assert m["reported"] == "val" and m["chosen_on"] == "val" and set(m["splits"]) == {"val"}
    for name, run in m["runs"].items():
        for stage in ("raw", "filled", "smoothed"):
            assert -1 <= run["val"][stage]["mean"] <= 1, (name, stage)
    report = (out / "report.md").read_text()
    assert "| raav |" in report and "val_predictions.csv" in report
    sub = out / "submission" / "val_predictions.csv"
    assert sub.read_text().startswith("image_location,valence,arousal\n")
    # fusion trained on out-of-fold predictions: every train video of every modality has one
    train_ids = {p.stem for p in (out / "corpus" / "annotations" / "VA_Estimation_Challenge" / "Train_Set").glob("*.txt")}
    for mod in ("face", "audio", "behavior"):
        assert {p.stem for p in (out / "runs" / mod / "crossfit" / "preds").glob("*.npz")} == train_ids, mod
    bundle = json.loads((out / "model" / "bundle.json").read_text())
    assert set(bundle["modalities"]) == {"face", "audio", "behavior"} and bundle["fusion"]
    pred_csv = next((out / "predict").glob("*.csv"))
    assert pred_csv.with_suffix(".html").is_file() and (out / "predict" / "index.html").is_file()
    assert (out / "report" / "index.html").is_file()
    rows = _rows(pred_csv)
    assert {"face_valence", "audio_arousal", "behavior_valence"} <= set(rows[0])
    assert any(k.startswith("weight_") for k in rows[0])
    # one way through: the in-memory model objects reproduce the training exports of the run folders exactly
    from vaest.apply import FusionModel, load_model, load_modality
    from vaest.corpus import load_corpus
    from vaest.features.store import FeatureStore
    from vaest.inference import load_predictions

    store = FeatureStore(out / "features")
    val = next(v for v in load_corpus(out / "corpus").split("val") if v.media is not None)
    b = load_model(out / "model")
    tracks, windows = {}, None
    for mod, run in b.modalities.items():
        obj = load_modality(mod, run)
        tracks[mod] = obj.apply(store, val)
        if mod == "audio":
            windows = obj.windows
        rec = load_predictions(run, val.id)
        np.testing.assert_allclose(tracks[mod].va, rec.values, atol=1e-4, err_msg=mod)
        np.testing.assert_array_equal(tracks[mod].mask, rec.mask & np.isfinite(rec.values).all(1), err_msg=mod)
    fused = FusionModel(b.fusion).apply(tracks, val, windows)
    np.testing.assert_allclose(fused.va, load_predictions(b.fusion, val.id).values, atol=1e-4)
    # every run records its inference settings; without that record (a run written before it) the same settings
    # are derived from its checkpoint and run.json
    from vaest.inference import read_run_json, write_run_json

    for mod, run in [*b.modalities.items(), ("fusion", b.fusion)]:
        info = read_run_json(run)
        recorded = (FusionModel(run) if mod == "fusion" else load_modality(mod, run)).settings
        assert info["inference"] and recorded.__class__.__name__.lower().startswith(mod), mod
        write_run_json(run, **{k: v for k, v in info.items() if k != "inference"})
        derived = (FusionModel(run) if mod == "fusion" else load_modality(mod, run)).settings
        write_run_json(run, **info)
        assert derived == recorded, mod
    # the Predictor: one row per decoded frame, modality columns equal to the modality models' outputs
    import time

    import vaest
    from mediautil import count_frames

    t0 = time.perf_counter()
    p = vaest.Predictor(model=out / "model", device="cpu")
    t1 = time.perf_counter()
    res = p.predict(val.media)
    t2 = time.perf_counter()
    res2 = p.predict(val.media)
    t3 = time.perf_counter()
    print(f"bundle predictor: load {t1 - t0:.2f} s, first call {t2 - t1:.2f} s, second call {t3 - t2:.2f} s")
    df = res.frame
    assert len(df) == count_frames(val.media) and {"weight_face", "weight_behavior"} <= set(df.columns)
    # a one-person video (the validation one has two tracked faces), without the corpus's pre-cropped faces (a
    # user's file has none): the Predictor's in-memory features equal those the on-disk extraction stores
    import dataclasses

    from vaest.features.base import default_extractors, run_extraction
    from vaest.predictor.extract import people_extractors

    one = next(v for v in load_corpus(out / "corpus").videos if v.side is None and v.media is not None)
    one = dataclasses.replace(one, face_dir=None)
    disk = FeatureStore(tmp_path / "user_features")
    # the bundle's single-face records come from the person tracker's pass (issue 13), on disk as in memory
    run_extraction(disk, people_extractors(default_extractors(b.face_encoder, b.audio_encoder), zero_shot=False), [one])
    df = p.predict(one.media).frame
    face = load_modality("face", b.modalities["face"]).apply(disk, one)
    np.testing.assert_allclose(df["face_valence"].to_numpy(), np.where(face.mask, face.va[:, 0], np.nan),
                               atol=1e-4)
    np.testing.assert_allclose(res2.frame["valence"].to_numpy(), res.frame["valence"].to_numpy(), equal_nan=True)
    before = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("model.pt")}
    r2 = CliRunner().invoke(app, ["demo", str(out), "--videos", "4", "--seconds", "8", "--config", str(cfg)])
    assert r2.exit_code == 0, r2.output
    assert before == {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("model.pt")}
