"""Behavior modality: segments and their time base, offline descriptors, the training task and run folder."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from vaest.corpus.labels import write_va_file
from vaest.features.behavior import load_segment_features
from vaest.features.behavior_desc import (
    FRAME_FEATURES,
    BehaviorDescExtractor,
    aggregate_descriptors,
    landmark_descriptors,
)
from vaest.features.segments import SegmentConfig, plan_segments, segment_base, segment_targets
from vaest.features.store import FeatureRecord, FeatureStore
from vaest.media import FrameBatch, MediaInfo
from vaest.timebase import TimeSeries, to_frames

# ---------------------------------------------------------------------------------------------------------
# segments
# ---------------------------------------------------------------------------------------------------------


def test_segments_four_seconds_every_two_with_a_true_end():
    segs = plan_segments(300, 30.0)  # 10 s
    assert [(s.start, s.end) for s in segs] == [(0, 4), (2, 6), (4, 8), (6, 10), (8, 10)]
    assert segs[0].name("vid") == "vid@0.00-4.00" and segs[-1].name("vid") == "vid@8.00-10.00"
    assert [(s.first, s.stop) for s in segs] == [(0, 120), (60, 180), (120, 240), (180, 300), (240, 300)]
    # 16 frames at 4 fps inside a full clip: instants 0.125, 0.375, ... s
    assert segs[1].sample == tuple(int(math.floor((2 + (k + 0.5) * 0.25) * 30)) for k in range(16))
    # the short last clip spreads its 16 frames over its true 2 s
    assert segs[-1].sample[0] == 241 and segs[-1].sample[-1] == 298 and len(segs[-1].sample) == 16


def test_short_tail_is_dropped_and_tiny_videos_keep_one_segment():
    segs = plan_segments(255, 30.0)  # 8.5 s: the 8.0-8.5 tail is shorter than 1 s
    assert [(s.start, s.end) for s in segs][-1] == (6.0, 8.5) and len(segs) == 4
    segs = plan_segments(270, 30.0)  # 9 s: a 1 s tail is kept
    assert (segs[-1].start, segs[-1].end) == (8.0, 9.0)
    one = plan_segments(12, 30.0)  # 0.4 s video
    assert len(one) == 1 and (one[0].start, one[0].end) == (0.0, 0.4) and (one[0].first, one[0].stop) == (0, 12)
    assert plan_segments(0, 30.0) == []
    cfg = SegmentConfig(win=2.0, hop=1.0, n_sample=4)
    assert [(s.start, s.end) for s in plan_segments(75, 25.0, cfg=cfg)] == [(0, 2), (1, 3), (2, 3)]


def test_segments_expand_to_the_right_frames_including_the_last_short_one():
    n, fps = 255, 30.0
    segs = plan_segments(n, fps)
    base = segment_base()
    vals = np.arange(len(segs), dtype=np.float32)
    for k, s in enumerate(segs):
        only = np.zeros(len(segs), bool)
        only[k] = True
        _, m = to_frames(TimeSeries(vals, base, only), n, fps)
        assert np.flatnonzero(m).tolist() == list(range(s.first, s.stop)), k
    v, m = to_frames(TimeSeries(vals, base), n, fps)
    assert m.all()
    assert v[0, 0] == 0 and v[90, 0] == 0.5 and v[254, 0] == 3.0  # overlaps averaged; the tail has one segment


def test_variable_frame_rate_uses_decoded_times():
    times = np.cumsum(np.r_[0, np.full(99, 0.05)])  # 20 fps for 5 s ...
    segs = plan_segments(100, 30.0, frame_times=times)  # ... although the container says 30
    assert (segs[0].start, segs[0].end) == (0.0, 4.0) and segs[-1].end == pytest.approx(100 * 0.05 - 0.05 + 1 / 30)
    assert segs[0].stop == 80


def test_segment_targets_average_valid_frames():
    lab = np.zeros((300, 2), np.float32)
    lab[:, 0] = np.arange(300) / 300
    lab[:60] = np.nan
    lab[120:300, 1] = 1.0
    segs = plan_segments(300, 30.0)
    t = segment_targets(lab, segs)
    assert t.shape == (5, 2)
    assert t[0, 0] == pytest.approx(np.arange(60, 120).mean() / 300) and t[0, 1] == 0
    assert t[2, 1] == 1.0
    assert np.isnan(segment_targets(np.full((300, 2), np.nan), segs)).all()


# ---------------------------------------------------------------------------------------------------------
# descriptors
# ---------------------------------------------------------------------------------------------------------


def face_landmarks(cx=50.0, cy=40.0, s=20.0, roll=0.0, yaw=0.0, eyes=1.0, mouth=0.2, lift=0.0):
    """(478, 3) FaceMesh-like landmarks: the ids the descriptors read are placed on a simple face."""
    pts = {}
    e = 0.15 * eyes * 0.5  # eyelid offset: EAR = 2e / 0.3
    for side, ids in ((-1, (33, 160, 158, 133, 153, 144)), (1, (263, 387, 385, 362, 380, 373))):
        o, u1, u2, i, l1, l2 = ids
        pts[o], pts[i] = (side * 0.65, 0), (side * 0.35, 0)
        pts[u1], pts[u2] = (side * 0.55, -e), (side * 0.45, -e)
        pts[l2], pts[l1] = (side * 0.55, e), (side * 0.45, e)
    for i in (70, 63, 105, 66, 107):
        pts[i] = (-0.5, -0.35)
    for i in (300, 293, 334, 296, 336):
        pts[i] = (0.5, -0.35)
    pts[1], pts[152] = (yaw, 0.585), (0.0, 1.3)
    pts[13], pts[14] = (0.0, 0.9 - mouth / 2), (0.0, 0.9 + mouth / 2)
    pts[61], pts[291] = (-0.4, 0.9 - lift), (0.4, 0.9 - lift)
    lm = np.zeros((478, 3), np.float32)
    c, sn = math.cos(roll), math.sin(roll)
    for i, (x, y) in pts.items():
        lm[i, 0] = cx + s * (c * x - sn * y)
        lm[i, 1] = cy + s * (sn * x + c * y)
    return lm


def test_landmark_descriptors_read_pose_eyes_mouth_and_brows():
    lms = np.stack([face_landmarks(), face_landmarks(roll=0.3, yaw=0.2, eyes=0.4, mouth=0.5, lift=0.1, s=35)])
    d = landmark_descriptors(lms)
    names = ("yaw", "pitch", "roll", "ear", "mouth_open", "mouth_width", "mouth_lift", "brow_raise")
    a, b = dict(zip(names, d[0])), dict(zip(names, d[1]))
    assert a["roll"] == pytest.approx(0, abs=1e-5) and b["roll"] == pytest.approx(0.3, abs=1e-4)
    assert a["yaw"] == pytest.approx(0, abs=1e-5) and b["yaw"] == pytest.approx(0.2, abs=1e-4)
    assert a["pitch"] == pytest.approx(0, abs=1e-4)
    assert a["ear"] == pytest.approx(0.5, abs=1e-4) and b["ear"] == pytest.approx(0.2, abs=1e-4)
    assert a["mouth_open"] == pytest.approx(0.2, abs=1e-4) and b["mouth_open"] == pytest.approx(0.5, abs=1e-4)
    assert a["mouth_width"] == pytest.approx(0.8, abs=1e-4)
    assert a["mouth_lift"] == pytest.approx(0, abs=1e-5) and b["mouth_lift"] == pytest.approx(0.1, abs=1e-4)
    assert a["brow_raise"] == pytest.approx(0.35, abs=1e-4)
    assert np.isnan(landmark_descriptors(np.full((1, 478, 3), np.nan))).all()


def _obs(boxes, lms, frames):
    try:
        from vaest.features.face_geometry import FaceObs
    except ImportError:  # pragma: no cover - the face module is part of the package
        from types import SimpleNamespace as FaceObs
    conf = np.where(np.isfinite(boxes).all(1), 0.9, 0.0).astype(np.float32)
    return FaceObs(boxes=boxes, conf=conf, landmarks=lms, frames=frames)


def test_desc_extractor_sees_face_coverage_mouth_and_body_motion():
    from vaest.corpus import Video

    fps, n, W, H = 8.0, 80, 96, 72  # 10 s
    rng = np.random.default_rng(0)
    ex = BehaviorDescExtractor()
    ex.begin([Video("p", None, "train")], MediaInfo(Path("x.mp4"), True, False, fps, n, n / fps, W, H))
    box = np.array([36.0, 8.0, 60.0, 32.0], np.float32)
    for b0 in range(0, n, 16):
        idx = np.arange(b0, min(n, b0 + 16))
        frames = np.full((len(idx), H, W, 3), 90, np.uint8)
        frames[:, 8:32, 36:60] = 160  # the face
        boxes = np.tile(box, (len(idx), 1))
        lms = np.stack([face_landmarks(48, 18, 10, mouth=0.1 if k < 40 else 0.4) for k in idx])
        for j, k in enumerate(idx):
            if k >= 40:  # a hand moving below the face in the second half
                x = 20 + int(30 * abs(math.sin(k)))
                frames[j, 45:60, x : x + 12] = 250
            if 20 <= k < 28:  # face lost for 1 s
                boxes[j] = np.nan
                lms[j] = np.nan
        frames += rng.integers(0, 2, frames.shape, dtype=np.uint8)
        ex.update(FrameBatch(frames, idx, idx / fps), {"facetrack": {"p": _obs(boxes, lms, frames)}})
    rec = ex.end()[("behavior-desc", "p")]
    names = rec.meta["feature_names"]
    col = {k: rec.values[:, names.index(k)] for k in names}
    assert rec.values.shape == (5, 2 * len(FRAME_FEATURES) + 3) and rec.mask.all()
    assert rec.meta["names"][-1] == "p@8.00-10.00" and rec.meta["n_frames"] == n and rec.meta["fps"] == fps
    assert rec.base.hop == 2.0 and rec.base.win == 4.0
    assert col["face_coverage"][0] == pytest.approx(24 / 32) and col["face_coverage"][-1] == 1.0
    assert col["mouth_open_mean"][0] == pytest.approx(0.1, abs=1e-3) and col["mouth_open_mean"][-1] == pytest.approx(0.4, abs=1e-3)
    assert col["body_motion_mean"][-1] > 5 * col["body_motion_mean"][0]
    assert col["face_x_mean"][-1] == pytest.approx(0.5, abs=1e-3)
    assert np.isfinite(rec.values).all()


def test_aggregate_blinks_and_missing_faces():
    rows = np.full((40, len(FRAME_FEATURES)), np.nan, np.float32)
    rows[:, 0] = 0
    rows[:20, 0] = 1
    ear = FRAME_FEATURES.index("ear")
    rows[:20, ear] = 0.3
    rows[[3, 4], ear] = 0.05  # a blink
    segs = plan_segments(40, 10.0)  # 4 s: one full segment, then a 2 s one
    vals, names = aggregate_descriptors(rows, segs)
    assert vals[0, names.index("blink_rate")] == pytest.approx(2 / 20)
    assert vals[0, names.index("face_coverage")] == 0.5
    assert np.isnan(vals[1, names.index("ear_mean")]) and vals[1, names.index("face_coverage")] == 0.0


def test_desc_extractor_on_the_synthetic_corpus(request, tmp_path):
    pytest.importorskip("mediapipe")
    root = Path(request.getfixturevalue("synth_corpus"))  # after the mediapipe check: built only when it can run
    from vaest.corpus import load_corpus
    from vaest.features.base import create_extractor, run_extraction

    corpus = load_corpus(root)
    v = corpus.split("train")[0]
    store = FeatureStore(tmp_path / "feats")
    rep = run_extraction(store, [create_extractor("behavior-desc")], [v])
    assert not rep.failed and store.has("facetrack", v.id)
    rec = store.load("behavior-desc", v.id)
    n = rec.meta["n_frames"]
    assert len(rec.values) == len(plan_segments(n, rec.meta["fps"])) and rec.mask.all()
    truth = np.load(root / "synth_truth" / f"{v.id}.npz")
    cov = rec.values[:, rec.meta["feature_names"].index("face_coverage")]
    want = segment_targets(np.stack([truth["face_visible"][:n]] * 2, 1).astype(np.float32), plan_segments(n, rec.meta["fps"]))[:, 0]
    assert np.abs(cov - want).mean() < 0.15


# ---------------------------------------------------------------------------------------------------------
# training task and run folder
# ---------------------------------------------------------------------------------------------------------


def _fake_corpus(tmp_path, n_train=5, n_val=2, seconds=40, fps=30.0, seed=0):
    """Label files (ABAW layout) and behavior-desc / behavior-vlm records whose features carry the labels."""
    rng = np.random.default_rng(seed)
    root = tmp_path / "corpus"
    store = FeatureStore(tmp_path / "feats")
    n = int(seconds * fps)
    ids = []
    for split, folder, k in (("train", "Train_Set", n_train), ("val", "Validation_Set", n_val)):
        d = root / "annotations" / "VA_Estimation_Challenge" / folder
        d.mkdir(parents=True, exist_ok=True)
        for i in range(k):
            vid = f"{split}{i}"
            t = np.arange(n) / fps
            lab = np.stack([0.6 * np.sin(t / 3 + rng.uniform(0, 6)), 0.5 * np.cos(t / 5 + rng.uniform(0, 6))], 1)
            lab[:45] = np.nan  # an invalid stretch (-5)
            write_va_file(d / f"{vid}.txt", lab)
            segs = plan_segments(n, fps)
            y = segment_targets(np.nan_to_num(lab, nan=0.0), segs)
            x = np.concatenate([y + 0.1 * rng.normal(size=y.shape), rng.normal(size=(len(segs), 3))], 1)
            meta = {"n_frames": n, "fps": fps, "names": [s.name(vid) for s in segs]}
            ext = {"start": np.array([s.start for s in segs]), "end": np.array([s.end for s in segs])}
            store.save("behavior-desc", vid, FeatureRecord(TimeSeries(x.astype(np.float32), segment_base()), ext, meta))
            vlm = {"multimodal_last": rng.normal(size=(len(segs), 4)).astype(np.float32),
                   "visual_mean": np.concatenate([y, rng.normal(size=(len(segs), 2))], 1).astype(np.float32)}
            store.save("behavior-vlm", vid, FeatureRecord(TimeSeries(vlm["multimodal_last"], segment_base()),
                                                          {**vlm, **ext}, {**meta, "default_feature": "multimodal_last",
                                                                           "feature_names": sorted(vlm)}))
            ids.append(vid)
    return root, tmp_path / "feats", ids, n


SMALL = {"d_model": 32, "n_layers": 2, "head_hidden": 32, "dropout": 0.0}


def test_train_behavior_writes_a_complete_run(tmp_path):
    from vaest.inference import evaluate_predictions, load_predictions, read_run_json
    from vaest.corpus import load_corpus
    from vaest.tasks.behavior import BehaviorTrainSettings, behavior_train_config, train_behavior

    root, feats, ids, n = _fake_corpus(tmp_path)
    cfg = behavior_train_config(epochs=6, lr=3e-3, batch_size=4)
    assert (cfg.lr, cfg.weight_decay) == (3e-3, 1e-3) and behavior_train_config().lr == 3e-4
    res = train_behavior(root, feats, tmp_path / "run", train_cfg=cfg, settings=BehaviorTrainSettings(model_config=SMALL))
    run = tmp_path / "run"
    for f in ("model.pt", "config.yaml", "versions.yaml", "run.json", "metrics.json"):
        assert (run / f).exists(), f
    info = read_run_json(run)
    assert info["modality"] == "behavior" and info["encoder"] == "desc" and info["model"] == "behavior-mamba"
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) >= {"valence", "arousal", "mean"} and metrics == res["metrics"]
    assert metrics["valence"] > 0.5 and metrics["arousal"] > 0.5
    for vid in ids:  # every video of every split
        rec = load_predictions(run, vid)
        assert rec.values.shape == (n, 2) and rec.extras["emb"].shape == (n, 32) and rec.mask.all()
        assert np.isfinite(rec.values).all()
    again = evaluate_predictions(run, load_corpus(root), "val")
    assert again["mean"] == pytest.approx(metrics["mean"], abs=1e-6)


def test_applying_a_behavior_model_refuses_inputs_of_another_width(tmp_path):
    """A trained behavior model applied to descriptors of another width is refused before it runs, naming the
    store file, the model and both widths; records of its own width are served."""
    from vaest.apply import BehaviorModel
    from vaest.corpus import Video
    from vaest.errors import FeatureError
    from vaest.tasks.behavior import BehaviorTrainSettings, behavior_train_config, train_behavior

    root, feats, ids, n = _fake_corpus(tmp_path, n_train=2, n_val=1, seconds=20)
    train_behavior(root, feats, tmp_path / "run", train_cfg=behavior_train_config(epochs=1, batch_size=4),
                   settings=BehaviorTrainSettings(model_config=SMALL))
    model = BehaviorModel(tmp_path / "run")
    store = FeatureStore(feats)
    video = Video(id=ids[-1], media=None, split="Validation_Set")
    assert model.apply(store, video).va.shape == (n, 2)
    rec = store.load("behavior-desc", ids[-1])
    wide = FeatureRecord(TimeSeries(np.concatenate([rec.values, rec.values[:, :1]], 1), rec.base), rec.extras, rec.meta)
    other = FeatureStore(tmp_path / "other")
    other.save("behavior-desc", ids[-1], wide)
    with pytest.raises(FeatureError) as e:
        model.apply(other, video)
    msg = str(e.value)
    w = rec.values.shape[1]
    assert str(other.path("behavior-desc", ids[-1])) in msg and "the behavior model" in msg
    assert f"{w + 1}-d" in msg and f"expects {w}-d" in msg


def test_baseline_and_vlm_branch_selection(tmp_path):
    from vaest.errors import FeatureError
    from vaest.inference import read_run_json
    from vaest.tasks.behavior import behavior_train_config, train_behavior

    root, feats, ids, n = _fake_corpus(tmp_path, n_train=3, n_val=1)
    cfg = behavior_train_config(epochs=1, batch_size=4)
    res = train_behavior(root, feats, tmp_path / "mlp", model="frame-mlp", train_cfg=cfg)
    assert math.isfinite(res["metrics"]["mean"]) and read_run_json(tmp_path / "mlp")["model"] == "frame-mlp"
    x, ok, rec = load_segment_features(FeatureStore(feats), ids[0], "vlm", "visual", "mean")
    assert x.shape == (len(rec.values), 4) and ok.all()
    x2, _, _ = load_segment_features(FeatureStore(feats), ids[0], "desc+vlm", "multimodal", "last")
    assert x2.shape[1] == 5 + 4
    res = train_behavior(root, feats, tmp_path / "vlm", encoder="vlm", branch="visual", pool="mean", train_cfg=cfg,
                         settings=None, model="behavior-mamba")
    assert read_run_json(tmp_path / "vlm")["branch"] == "visual"
    with pytest.raises(FeatureError, match="text_std"):
        load_segment_features(FeatureStore(feats), ids[0], "vlm", "text", "std")


def test_behavior_inputs_are_read_from_the_store_by_rows_as_the_whole_standardised_array(tmp_path):
    """desc+vlm(visual/mean) segment inputs stay in the store (one chosen VLM variant of the record); the
    normalisation and every window of the sequence are the whole concatenated array's, computed by hand
    (missing values -> 0 after standardising)."""
    from vaest.features.store import RowView, StoredArray
    from vaest.inputs.behavior import load_items, to_sequence
    from vaest.inputs.settings import BehaviorInputs
    from vaest.corpus import load_corpus
    from vaest.tasks.behavior import fit_norm
    from vaest.windows import take_window

    root, feats, ids, n = _fake_corpus(tmp_path, n_train=2, n_val=1)
    store = FeatureStore(feats)
    rec = store.load("behavior-desc", ids[0])
    x0 = rec.values.copy()
    x0[3, 1] = np.nan  # a missing value
    store.save("behavior-desc", ids[0], FeatureRecord(TimeSeries(x0, rec.base, rec.mask), rec.extras, rec.meta))
    items, missing = load_items(load_corpus(root).videos, store, BehaviorInputs("desc+vlm", "visual", "mean"))
    assert not missing and len(items) == 3
    whole = {}
    for it in items:
        assert isinstance(it.x, RowView) and all(isinstance(p, StoredArray) for p in it.x.parts)
        whole[it.video.id] = np.concatenate([store.load("behavior-desc", it.video.id).values,
                                             store.load("behavior-vlm", it.video.id).extras["visual_mean"]], 1)
        np.testing.assert_array_equal(it.x[:], whole[it.video.id])
    train = [it for it in items if it.video.split == "train"]
    norm = fit_norm(train)
    rows = np.concatenate([whole[it.video.id][it.valid] for it in train]).astype(np.float64)
    np.testing.assert_allclose(norm["mean"], np.nanmean(rows, 0), rtol=1e-12)
    np.testing.assert_allclose(norm["std"], np.maximum(np.nanstd(rows, 0), 1e-6), rtol=1e-9)
    seq = to_sequence(items[0], norm)
    z = (whole[ids[0]] - np.float32(norm["mean"])) / np.float32(norm["std"])
    z = np.nan_to_num(z, nan=0.0).astype(np.float32)
    assert z[3, 1] == 0 and seq.inputs["x"].shape == z.shape
    np.testing.assert_array_equal(seq.inputs["x"][:], z)
    w, valid = take_window(seq.inputs["x"], len(z) - 3, 8)  # the last window, padded with its last row
    np.testing.assert_array_equal(w, z[np.minimum(np.arange(len(z) - 3, len(z) + 5), len(z) - 1)])


def test_cli_trains_behavior(tmp_path):
    from typer.testing import CliRunner

    from vaest.cli import app

    root, feats, ids, n = _fake_corpus(tmp_path, n_train=3, n_val=1)
    cfg = tmp_path / "run.yaml"
    cfg.write_text("settings:\n  model_config: {d_model: 16, n_layers: 1, head_hidden: 16}\ntrain:\n  batch_size: 4\n")
    r = CliRunner().invoke(app, ["train", "behavior", "--features", str(feats), "--corpus", str(root), "--out",
                                 str(tmp_path / "run"), "--epochs", "1", "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "run" / "preds").is_dir() and "validation CCC" in r.output


def test_expression_statistics_join_the_segments(tmp_path):
    from vaest.errors import FeatureError
    from vaest.features.behavior import expression_stats
    from vaest.timebase import TimeBase

    root, feats, ids, n = _fake_corpus(tmp_path, n_train=1, n_val=0)
    store = FeatureStore(feats)
    with pytest.raises(FeatureError, match="vaest extract face"):
        load_segment_features(store, ids[0], "desc+expr")
    with pytest.raises(FeatureError, match="adds to"):
        load_segment_features(store, ids[0], "expr")
    probs = np.zeros((n, 3), np.float32)
    probs[:, 0] = 1.0
    probs[600:, :] = [0.0, 0.5, 0.5]
    found = np.ones(n, bool)
    found[:120] = False  # no face in the first 4 s
    store.save("face-fer", ids[0], FeatureRecord(TimeSeries(np.zeros((n, 2), np.float32), TimeBase.frames(30.0), found),
                                                 {"probs": probs}, {}))
    x, ok, rec = load_segment_features(store, ids[0], "desc+expr")
    assert x.shape == (len(rec.values), 5 + 6)
    e = x[:, 5:]
    assert np.isnan(e[0]).all()  # segment 0-4 s has no face frame
    assert np.allclose(e[1, :3], [1, 0, 0]) and np.allclose(e[-1, :3], [0, 0.5, 0.5]) and np.allclose(e[-1, 3:], 0)
    segs = plan_segments(n, 30.0)
    assert np.allclose(expression_stats(probs, found, segs)[9, :3], [0.5, 0.25, 0.25])  # 18-22 s straddles 20 s


def _stamp_features_hash(store: FeatureStore, key: str, vid: str, h: str | None) -> None:
    """Rewrite one stored record with ``meta["features_hash"] = h`` (what extraction stamps on every record)."""
    rec = store.load(key, vid)
    meta = {k: v for k, v in rec.meta.items() if k != "features_hash"}
    if h is not None:
        meta["features_hash"] = h
    store.save(key, vid, FeatureRecord(rec.series, rec.extras, meta))


def test_applying_a_behavior_model_refuses_descriptors_of_another_configuration(tmp_path, caplog):
    """Trained on one behavior-desc configuration's records, the model records their features hash; applied to
    a store of another configuration it is refused naming the store file, the key, the run and both hashes; the
    same configuration is served; a checkpoint without the hash (trained before) warns once and applies, and so
    does a record without one. A person's slice (persons-behavior-desc) hashes like behavior-desc."""
    import logging

    import torch

    from vaest.apply import BehaviorModel
    from vaest.corpus import Video
    from vaest.errors import FeatureError
    from vaest.features.behavior_desc import BehaviorDescConfig, BehaviorDescExtractor
    from vaest.features.person_behavior import PersonBehaviorDescExtractor, person_desc_config
    from vaest.models import load_checkpoint
    from vaest.tasks.behavior import BehaviorTrainSettings, behavior_train_config, train_behavior

    trained = BehaviorDescExtractor().features_hash()
    other_cfg = BehaviorDescConfig(small_width=64)
    other_h = BehaviorDescExtractor(other_cfg).features_hash()
    assert trained != other_h
    # the per-person descriptors (the predictor's, another config hash) live in behavior-desc's space
    for cfg in (BehaviorDescConfig(), other_cfg):
        person = PersonBehaviorDescExtractor(person_desc_config(cfg))
        assert person.features_hash() == BehaviorDescExtractor(cfg).features_hash()
        assert person.config_hash() != BehaviorDescExtractor(cfg).config_hash()

    root, feats, ids, n = _fake_corpus(tmp_path, n_train=2, n_val=1, seconds=20)
    store = FeatureStore(feats)
    for vid in ids:
        _stamp_features_hash(store, "behavior-desc", vid, trained)
    run = tmp_path / "run"
    train_behavior(root, feats, run, train_cfg=behavior_train_config(epochs=1, batch_size=4),
                   settings=BehaviorTrainSettings(model_config=SMALL))
    assert load_checkpoint(run / "model.pt")[1]["inputs"]["features_hash"] == trained
    video = Video(id=ids[-1], media=None, split="Validation_Set")
    with caplog.at_level(logging.WARNING, logger="vaest"):
        model = BehaviorModel(run)
        assert model.apply(store, video).va.shape == (n, 2)  # same configuration: served
    assert not any("features hash" in r.getMessage() for r in caplog.records)

    other = FeatureStore(tmp_path / "other")
    other.save("behavior-desc", ids[-1], store.load("behavior-desc", ids[-1]))
    _stamp_features_hash(other, "behavior-desc", ids[-1], other_h)
    with pytest.raises(FeatureError) as e:
        model.apply(other, video)
    msg = str(e.value)
    assert str(other.path("behavior-desc", ids[-1])) in msg and "'behavior-desc'" in msg and str(run) in msg
    assert f"features hash {other_h}" in msg and f"trained on features hash {trained}" in msg

    # a record extracted before records carried the hash: served, one warning for the model's reader
    _stamp_features_hash(other, "behavior-desc", ids[-1], None)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vaest"):
        assert model.apply(other, video).va.shape == (n, 2)
        assert model.apply(other, video).va.shape == (n, 2)
    assert sum("features hash" in r.getMessage() for r in caplog.records) == 1

    # a checkpoint from before features hashes: warned once when loaded, never refused on it
    ck = torch.load(run / "model.pt", weights_only=False)
    del ck["inputs"]["features_hash"]
    torch.save(ck, run / "model.pt")
    _stamp_features_hash(other, "behavior-desc", ids[-1], other_h)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vaest"):
        old = BehaviorModel(run)
        assert old.apply(other, video).va.shape == (n, 2)
    assert sum("features hash" in r.getMessage() for r in caplog.records) == 1


def test_combined_inputs_carry_every_parts_features_hash(tmp_path):
    """desc+expr inputs are identified by both parts' features hashes (joined by '+'), None when a part's record
    has none; a single part keeps its own; the stored records' meta is not changed."""
    from vaest.features.store import MemoryStore
    from vaest.timebase import TimeBase

    root, feats, ids, n = _fake_corpus(tmp_path, n_train=1, n_val=0)
    disk = FeatureStore(feats)
    store = MemoryStore()
    store.save("behavior-desc", ids[0], disk.load("behavior-desc", ids[0]))
    store.load("behavior-desc", ids[0]).meta["features_hash"] = "d1"
    face = FeatureRecord(TimeSeries(np.zeros((n, 2), np.float32), TimeBase.frames(30.0)),
                         {"probs": np.full((n, 3), 1 / 3, np.float32)}, {})
    store.save("face-fer", ids[0], face)
    assert load_segment_features(store, ids[0], "desc+expr")[2].meta["features_hash"] is None
    face.meta["features_hash"] = "f1"
    assert load_segment_features(store, ids[0], "desc+expr")[2].meta["features_hash"] == "d1+f1"
    assert load_segment_features(store, ids[0], "desc")[2].meta["features_hash"] == "d1"
    assert store.load("behavior-desc", ids[0]).meta["features_hash"] == "d1"  # the stored record is untouched


def test_vlm_features_hash_names_the_model_by_content_not_by_folder_or_server(tmp_path):
    """behavior-vlm's features hash: the same model files in two folders hash the same, other weights of the same
    names and sizes differ, a hub id is its name; how the model is served (backend, vLLM server) is not in it,
    though it is in the config hash; per-person VLM records hash like behavior-vlm."""
    from vaest.features.behavior import BehaviorVLMConfig, BehaviorVLMExtractor
    from vaest.features.person_behavior import PersonBehaviorVLMConfig, PersonBehaviorVLMExtractor

    rng = np.random.default_rng(0)
    weights = rng.integers(0, 256, 3 << 20, dtype=np.uint8).tobytes()  # 3 MiB: more than the sampled chunks
    folders = [tmp_path / n for n in ("a", "b", "c")]
    for f in folders:
        (f / "sub").mkdir(parents=True)
        (f / "config.json").write_text('{"model_type": "qwen3_vl"}')
        (f / "sub" / "model.safetensors").write_bytes(weights)
    tuned = bytearray(weights)
    tuned[1 << 20 : (1 << 20) + 4096] = bytes(4096)  # another fine-tune: same names and size, other middle bytes
    (folders[2] / "sub" / "model.safetensors").write_bytes(bytes(tuned))

    def ex(model: str, **kw) -> BehaviorVLMExtractor:
        return BehaviorVLMExtractor(BehaviorVLMConfig(model=model, **kw))

    a, b, c = (ex(str(f)).features_hash() for f in folders)
    assert a == b and a != c
    served = ex(str(folders[1]), backend="vllm", vllm_url="http://127.0.0.1:8000/v1")
    assert served.features_hash() == a and served.config_hash() != ex(str(folders[1])).config_hash()
    assert ex("Qwen/Qwen3-VL-4B-Instruct").features_hash() != ex("Qwen/Qwen3-VL-8B-Instruct").features_hash()
    assert ex(str(folders[0]), prompt="another prompt").features_hash() != a  # what is asked changes the space
    person = PersonBehaviorVLMExtractor(PersonBehaviorVLMConfig(model=str(folders[1]), margin=2.0))
    assert person.features_hash() == a
