"""Inference settings (vaest.inputs.settings): written by training into run.json, read back when applying, and
derived from what older runs saved when the record is absent."""

from pathlib import Path

import numpy as np

from vaest.apply import FusionModel
from vaest.inference import Track, read_run_json, write_run_json
from vaest.inputs.settings import (AudioInputs, BehaviorInputs, FaceInputs, FusionInputs, inference_record,
                                   read_settings)


def test_record_round_trips_through_run_json(tmp_path: Path) -> None:
    st = FaceInputs("grada", True, ("emb", "conf"), 300, 100)
    write_run_json(tmp_path, modality="face", inference=inference_record(st))
    assert read_settings(tmp_path, FaceInputs) == st  # tuples come back as tuples, not JSON lists
    write_run_json(tmp_path, modality="face")
    assert read_settings(tmp_path, FaceInputs) is None  # an old run: the caller derives the settings


def test_old_checkpoints_give_the_settings_their_training_used() -> None:
    """The checkpoint extras the face, behavior and audio tasks saved before the record existed."""
    face_ck = {"inputs": {"store_key": "face-fer", "motion": True, "parts": ["emb", "probs"]}, "win": 200, "hop": 50}
    assert FaceInputs.from_checkpoint(face_ck) == FaceInputs("fer", True, ("emb", "probs"), 200, 50)
    # a face checkpoint older still: no parts, no windows -> every part, the reference windows
    assert FaceInputs.from_checkpoint({"inputs": {"store_key": "face-minixception"}}) == FaceInputs("minixception")
    beh_ck = {"inputs": {"encoder": "desc+expr", "branch": "text", "pool": "mean"}, "win": 8, "hop": 4}
    assert BehaviorInputs.from_checkpoint(beh_ck) == BehaviorInputs("desc+expr", "text", "mean", 8, 4)
    aud = AudioInputs.from_checkpoint({"encoder": "egemaps", "filter": False, "feature_norm": "global"})
    assert (aud.encoder, aud.filter, aud.feature_norm) == ("egemaps", False, "global")
    assert aud.filter_config().enabled is False and aud.filter_config().min_coverage == 0.8


def test_fusion_settings_from_an_old_run_json() -> None:
    late = {"modality": "late", "runs": {"face": "/r/face", "audio": "/r/audio"},
            "weights": {"face": [0.7, 0.9], "audio": [0.3, 0.1]}}
    st = FusionInputs.from_run_json(late)
    assert st.late and st.runs == ("face", "audio") and st.weights["audio"] == [0.3, 0.1]
    learned = {"modality": "fusion", "runs": {"face": "f", "behavior": "b"}, "win": 300, "hop": 100,
               "align_end": True}
    st = FusionInputs.from_run_json(learned, {"name": "dcm-ref"})
    assert (st.late, st.method, st.win, st.hop, st.align_end) == (False, "dcm-ref", 300, 100, True)


def test_old_late_fusion_run_applies_like_a_new_one(tmp_path: Path) -> None:
    """A late-fusion run folder written before the record and one written with it fuse the same tracks to the
    same values (weights renormalised over the modalities present at each frame)."""
    n = 6
    face = Track(np.tile([[0.5, 0.2]], (n, 1)).astype(np.float32), np.array([1, 1, 1, 0, 0, 1], bool), None, 30.0)
    audio = Track(np.tile([[-0.5, 0.6]], (n, 1)).astype(np.float32), np.ones(n, bool), None, 30.0)
    weights = {"face": [0.75, 0.5], "audio": [0.25, 0.5]}
    old, new = tmp_path / "old", tmp_path / "new"
    write_run_json(old, modality="late", runs={"face": "x", "audio": "y"}, weights=weights)
    write_run_json(new, modality="late", runs={"face": "x", "audio": "y"}, weights=weights,
                   inference=inference_record(FusionInputs(("face", "audio"), True, weights)))
    assert "inference" not in read_run_json(old)
    video = type("V", (), {"id": "v"})()
    got = [FusionModel(r).apply({"face": face, "audio": audio}, video) for r in (old, new)]
    np.testing.assert_array_equal(got[0].va, got[1].va)
    # hand-computed: face present -> 0.75 * 0.5 + 0.25 * -0.5 (valence), 0.5 * 0.2 + 0.5 * 0.6 (arousal)
    np.testing.assert_allclose(got[0].va[0], [0.25, 0.4], atol=1e-6)
    np.testing.assert_allclose(got[0].va[3], [-0.5, 0.6], atol=1e-6)  # audio alone
