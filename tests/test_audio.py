"""Audio modality: windows and targets, pooling, models, augmentation, cross-modal filtering, training, export."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import require_shared

from vaest.corpus import Video
from vaest.features.audio import (
    FilterConfig,
    audio_window_starts,
    log_mel_spectrogram,
    mel_filterbank,
    n_seconds,
    speech_activity,
    window_reliability,
)
from vaest.features.store import FeatureRecord, FeatureStore
from vaest.models.audio import AttentiveStatsPool, audio_param_groups
from vaest.inputs.audio import label_rule, load_item, second_targets, window_targets
from vaest.tasks.audio import AudioTask, AudioTrainConfig
from vaest.tasks.audio_augment import AugmentConfig, add_noise, add_reverb, apply_gain, augment_waveform, band_filter
from vaest.timebase import TimeBase, TimeSeries

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SR = 16000


# ---------------------------------------------------------------------------------------------------------
# windows and targets
# ---------------------------------------------------------------------------------------------------------


def test_second_targets_mean_valid_labels_per_bin():
    # 4 fps: frames 0-3 in second 0, 4-7 in second 1, 8-9 in second 2 (by frame midpoint)
    lab = np.array([[0.1, 0.2], [0.3, 0.4], [np.nan, np.nan], [0.5, 0.6],
                    [np.nan, np.nan], [np.nan, np.nan], [np.nan, np.nan], [np.nan, np.nan],
                    [-0.2, 1.0], [0.0, 0.0]], dtype=np.float32)
    t = second_targets(lab, fps=4.0, n_sec=4)
    assert t.shape == (4, 2)
    np.testing.assert_allclose(t[0], [0.3, 0.4], atol=1e-6)  # mean of the three valid frames
    assert np.isnan(t[1]).all()  # no valid frame in second 1
    np.testing.assert_allclose(t[2], [-0.1, 0.5], atol=1e-6)
    assert np.isnan(t[3]).all()  # past the labels


def test_second_targets_frame_midpoint_decides_bin():
    # 3 fps: frame 2 spans [0.667, 1.0) -> second 0; frame 3 spans [1.0, 1.333) -> second 1
    lab = np.array([[0, 0], [0, 0], [1, 1], [2, 2], [2, 2], [2, 2]], dtype=np.float32)
    t = second_targets(lab, fps=3.0, n_sec=2)
    np.testing.assert_allclose(t[:, 0], [1 / 3, 2.0])


def test_window_starts_and_last_short_window():
    assert n_seconds(60.0) == 60 and n_seconds(60.01) == 61 and n_seconds(0.2) == 1
    assert audio_window_starts(60.0) == list(range(0, 57, 2))  # last window [56, 60)
    assert audio_window_starts(61.0)[-1] == 58  # [58, 62) runs past the end: a short last window
    assert audio_window_starts(3.2) == [0]


def test_window_targets_and_reference_rule():
    sec = np.full((7, 2), np.nan, np.float32)
    sec[[0, 1, 4, 6]] = [[0.1, 0.1], [0.2, 0.2], [0.5, 0.5], [0.7, 0.7]]
    starts = audio_window_starts(7.0)
    assert starts == [0, 2, 4]
    wt = window_targets(sec, starts)
    assert wt.shape == (3, 4, 2)
    np.testing.assert_allclose(wt[2, :3, 0], [0.5, np.nan, 0.7])
    assert np.isnan(wt[2, 3]).all()  # second 7 is past the end: invalid, not a repeat of second 6
    # valid seconds per window: [0,1] -> 2 ; [4] -> 1 ; [4,6] -> 2
    np.testing.assert_array_equal(label_rule(wt), [True, False, True])
    np.testing.assert_array_equal(label_rule(wt, min_valid=3), [False, False, False])


# ---------------------------------------------------------------------------------------------------------
# features
# ---------------------------------------------------------------------------------------------------------


def test_log_mel_shapes_and_tone_band():
    t = np.arange(SR) / SR
    wav = (0.3 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    m = log_mel_spectrogram(wav)
    assert m.shape == (1 + (SR - 400) // 160, 64) and m.dtype == np.float32
    fb = mel_filterbank()
    assert fb.shape == (64, 257) and (fb.sum(1) > 0).all()
    centre = int(np.argmax(fb[:, int(round(1000 * 512 / SR))]))
    assert abs(int(np.argmax(m.mean(0))) - centre) <= 1  # the tone lands in the band around 1 kHz
    assert log_mel_spectrogram(np.zeros(100, np.float32)).shape == (1, 64)  # shorter than a frame


# ---------------------------------------------------------------------------------------------------------
# pooling and models
# ---------------------------------------------------------------------------------------------------------


def test_attentive_stats_pool_chunks_and_weights():
    torch.manual_seed(0)
    pool = AttentiveStatsPool(3, att_dim=8)
    x = torch.randn(2, 10, 3)
    stats, w = pool(x, n_chunks=4)
    assert stats.shape == (2, 4, 6) and w.shape == (2, 4, 10)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 4))
    chunk_of = (torch.arange(10) * 4) // 10  # [0,0,0,1,1,2,2,2,3,3]
    outside = chunk_of[None, :] != torch.arange(4)[:, None]
    assert (w[:, outside] == 0).all()
    # uniform attention -> plain per-chunk mean and population std
    torch.nn.init.zeros_(pool.att[2].weight)
    torch.nn.init.zeros_(pool.att[2].bias)
    stats, _ = pool(x, n_chunks=4)
    for c in range(4):
        seg = x[:, chunk_of == c]
        torch.testing.assert_close(stats[:, c, :3], seg.mean(1))
        torch.testing.assert_close(stats[:, c, 3:], seg.std(1, unbiased=False).clamp_min(1e-3), atol=1e-4, rtol=1e-4)


def test_frame_model_shapes_and_param_groups_cover_pooling():
    from vaest.models import create_model

    m = create_model("audio-frames", in_dim=25)
    out = m(feats=torch.randn(3, 400, 25), return_weights=True)
    assert out["va"].shape == (3, 4, 2) and out["emb"].shape == (3, 4, 256) and out["weights"].shape == (3, 4, 400)
    groups = audio_param_groups(m)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in m.parameters() if p.requires_grad}
    assert {id(p) for p in m.pool.parameters()} <= set(ids)


def _tiny_wavlm(path: Path, layers: int = 3) -> Path:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.WavLMConfig(
        hidden_size=32, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=64, conv_dim=(32, 32),
        conv_stride=(16, 10), conv_kernel=(16, 10), conv_bias=False, num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2, do_stable_layer_norm=True, feat_extract_norm="layer", num_buckets=32,
        max_bucket_distance=100)
    transformers.WavLMModel(cfg).save_pretrained(path)
    return path


def test_tiny_wavlm_round_trip_trainable_layers_and_groups(tmp_path):
    from vaest.models import create_model, load_checkpoint
    from vaest.training import save_checkpoint

    src = _tiny_wavlm(tmp_path / "wavlm")
    m = create_model("audio-wavlm", backbone=str(src), trainable_layers=2)
    m.eval()
    wav = torch.randn(2, SR)  # 1 s windows are enough for the shapes (4 chunks of 25 frames)
    out = m(wav=wav, return_weights=True)
    assert out["va"].shape == (2, 4, 2) and out["emb"].shape == (2, 4, 256)
    torch.testing.assert_close(out["weights"].sum(-1), torch.ones(2, 4))
    # the input is z-normalised: scaling the waveform does not change the output
    torch.testing.assert_close(m(wav=wav * 7.0)["va"], out["va"], atol=1e-4, rtol=1e-4)
    layers = m.backbone.encoder.layers
    assert not any(p.requires_grad for p in layers[0].parameters())
    assert all(p.requires_grad for lay in layers[1:] for p in lay.parameters())
    assert not any(p.requires_grad for p in m.backbone.feature_extractor.parameters())
    groups = {g["name"]: g for g in audio_param_groups(m, 5e-6, 2e-4)}
    assert groups["backbone"]["lr"] == 5e-6 and groups["head"]["lr"] == 2e-4
    head_ids = {id(p) for p in groups["head"]["params"]}
    assert {id(p) for p in m.pool.parameters()} <= head_ids and {id(p) for p in m.head.parameters()} <= head_ids
    all_ids = [id(p) for g in groups.values() for p in g["params"]]
    assert sorted(all_ids) == sorted(id(p) for p in m.parameters() if p.requires_grad)
    torch.optim.AdamW(list(groups.values()))
    # checkpoint rebuilds from the saved backbone config, without the original folder
    save_checkpoint(tmp_path / "model.pt", m)
    shutil.rmtree(src)
    m2, ck = load_checkpoint(tmp_path / "model.pt")
    assert ck["name"] == "audio-wavlm"
    torch.testing.assert_close(m2(wav=wav)["va"], out["va"])


# ---------------------------------------------------------------------------------------------------------
# augmentation
# ---------------------------------------------------------------------------------------------------------


def _speechlike(seconds: float, rng: np.random.Generator, gain: np.ndarray | float = 1.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    f0 = 140 + 20 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SR
    x = sum(np.sin(k * phase) / k for k in range(1, 8))
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2
    return (0.1 * np.asarray(gain) * env * x + 0.002 * rng.standard_normal(len(t))).astype(np.float32)


@pytest.mark.parametrize("snr", [8.0, 15.0, 25.0])
def test_add_noise_hits_requested_snr(snr):
    rng = np.random.default_rng(1)
    x = _speechlike(2.0, rng)
    for color in ("white", "pink"):
        y = add_noise(x, snr, rng, color)
        assert y.shape == x.shape and y.dtype == np.float32
        got = 10 * np.log10(np.mean(x.astype(np.float64) ** 2) / np.mean((y.astype(np.float64) - x) ** 2))
        assert abs(got - snr) < 0.05
    assert np.array_equal(add_noise(np.zeros(100, np.float32), 10.0, rng), np.zeros(100, np.float32))


def test_gain_band_reverb_keep_shape_and_do_what_they_say():
    rng = np.random.default_rng(2)
    x = _speechlike(1.0, rng)
    np.testing.assert_allclose(apply_gain(x, 6.0), x * 10 ** (6 / 20), rtol=1e-5)
    t = np.arange(SR) / SR
    tones = (np.sin(2 * np.pi * 200 * t) + np.sin(2 * np.pi * 5000 * t)).astype(np.float32)
    lp = band_filter(tones, None, 1000.0)
    spec_in, spec_out = np.abs(np.fft.rfft(tones)), np.abs(np.fft.rfft(lp))
    assert lp.shape == tones.shape
    assert spec_out[5000] < 0.01 * spec_in[5000] and spec_out[200] > 0.95 * spec_in[200]
    hp = band_filter(tones, 1000.0, None)
    assert np.abs(np.fft.rfft(hp))[200] < 0.01 * spec_in[200]
    rv = add_reverb(x, 0.5, rng)
    assert rv.shape == x.shape
    np.testing.assert_allclose(np.sqrt(np.mean(rv**2)), np.sqrt(np.mean(x**2)), rtol=1e-4)
    assert not np.allclose(rv, x)


def test_augment_waveform_is_seeded_and_keeps_shape():
    x = _speechlike(4.0, np.random.default_rng(3))
    cfg = AugmentConfig(p_noise=1, p_gain=1, p_band=1, p_reverb=1)
    a = augment_waveform(x, np.random.default_rng(7), cfg)
    b = augment_waveform(x, np.random.default_rng(7), cfg)
    c = augment_waveform(x, np.random.default_rng(8), cfg)
    assert a.shape == x.shape and a.dtype == np.float32 and np.isfinite(a).all()
    assert np.array_equal(a, b) and not np.allclose(a, c)


# ---------------------------------------------------------------------------------------------------------
# cross-modal filtering
# ---------------------------------------------------------------------------------------------------------


def _flags(n: int, on: list[tuple[int, int]]) -> np.ndarray:
    f = np.zeros(n, bool)
    for s, e in on:
        f[s:e] = True
    return f


def test_window_reliability_reference_rules_on_hand_made_arrays():
    fps, n = 10.0, 100  # 10 s video; windows [0,4) [2,6) [4,8) [6,10)
    face_found = ~_flags(n, [(20, 30)])  # no face during [2, 3) s
    is_open = _flags(n, [(0, 15), (45, 50), (70, 100)]) & face_found
    base = TimeBase.frames(fps)
    mouth = TimeSeries(is_open.astype(np.float32), base, face_found)
    face = TimeSeries(face_found.astype(np.float32), base)
    starts = audio_window_starts(10.0)
    st = window_reliability(starts, mouth_open=mouth, face=face)
    assert st.source == "mouth"
    np.testing.assert_allclose(st.open_seconds, [1.5, 0.5, 1.5, 3.0])
    np.testing.assert_allclose(st.coverage, [0.75, 0.75, 1.0, 1.0])
    np.testing.assert_array_equal(st.train_ok, [False, False, True, True])  # open >= 1 s, coverage >= 0.8
    np.testing.assert_array_equal(st.fuse_ok, [False, False, True, True])
    np.testing.assert_allclose(st.reliability, [0.9375, 0.5 * 0.9375, 1.0, 1.0])
    assert np.isnan(st.speech_ratio).all()
    # training and fusion thresholds are separate settings
    st2 = window_reliability(starts, mouth_open=mouth, face=face, cfg=FilterConfig(fuse_min_open_s=2.0))
    np.testing.assert_array_equal(st2.train_ok, [False, False, True, True])
    np.testing.assert_array_equal(st2.fuse_ok, [False, False, False, True])
    # without a facetrack series the mouth mask gives the coverage
    st3 = window_reliability(starts, mouth_open=mouth)
    np.testing.assert_allclose(st3.coverage, st.coverage)


def test_window_reliability_audio_only_falls_back_to_speech():
    hop = 0.032
    t = np.arange(int(10 / hop)) * hop
    p = np.where(t < 2.5, 0.9, 0.1)
    p[(t >= 6.0) & (t < 6.1)] = 0.95  # a 0.1 s blip: dropped by the run-length smoothing
    speech = TimeSeries(p[:, None], TimeBase(hop, hop))
    flags = speech_activity(speech)
    assert flags[t < 2.4].all() and not flags[(t >= 6.0) & (t < 6.1)].any()
    st = window_reliability(audio_window_starts(10.0), speech=speech)
    assert st.source == "vad"
    np.testing.assert_allclose(st.coverage, 1.0)
    np.testing.assert_allclose(st.open_seconds[:2], [79 * hop, 17 * hop], atol=1e-9)  # chunks by midpoint
    np.testing.assert_array_equal(st.fuse_ok, [True, False, False, False])
    assert abs(st.speech_ratio[0] - 79 / 125) < 1e-9 and st.speech_ratio[3] == 0
    # no evidence at all: every window kept
    none = window_reliability([0, 2, 4])
    assert none.source == "none" and none.fuse_ok.all() and none.train_ok.all()


# ---------------------------------------------------------------------------------------------------------
# task: items from the store, batches, training that learns arousal from loudness
# ---------------------------------------------------------------------------------------------------------


def _smooth_arousal(seconds: float, fps: float, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(seconds * fps)) / fps
    a = sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi)) for f in (0.05, 0.11, 0.23))
    return (0.8 * a / 3).astype(np.float32)


def _loud_corpus(root: Path, n: int = 6, seconds: float = 30.0, fps: float = 25.0, seed: int = 0) -> Path:
    """Audio-only manifest corpus whose loudness follows arousal (+-12 dB); valence is unrelated noise."""
    import soundfile as sf

    from vaest.corpus.labels import write_va_file

    rng = np.random.default_rng(seed)
    rows = ["path,split,id,labels,fps"]
    for i in range(n):
        a = _smooth_arousal(seconds, fps, rng)
        v = np.clip(rng.normal(0, 0.3, len(a)), -1, 1).astype(np.float32)
        lab = np.stack([v, a], 1)
        lab[: int(fps)] = np.nan  # first second unlabelled
        gain = 10 ** (np.repeat(a, SR // int(fps))[: int(seconds * SR)] * 12 / 20)
        wav = _speechlike(seconds, rng, gain)
        sf.write(str(root / f"c{i}.wav"), wav, SR)
        write_va_file(root / f"c{i}.txt", lab)
        rows.append(f"c{i}.wav,{'train' if i < n - 2 else 'val'},c{i},c{i}.txt,{fps}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root / "manifest.csv"


def test_items_and_batches_from_the_store(tmp_path):
    store = FeatureStore(tmp_path / "feats")
    fps, secs = 10.0, 9.0
    lab = np.zeros((int(fps * secs), 2), np.float32)
    lab[:, 1] = np.repeat(np.arange(9), 10) / 10.0
    lab[25:35] = np.nan  # second 2 half invalid, second 3 half invalid
    v = Video("v", Path("v.wav"), "train", fps=fps, audio_only=True, _labels=lab)
    feats = np.random.default_rng(0).normal(size=(int(secs * 100) - 2, 8)).astype(np.float32)
    store.save("audio-lmfb", "v", FeatureRecord(TimeSeries(feats, TimeBase(0.01, 0.025)), {},
                                                {"duration": secs, "has_video": False}))
    it = load_item(store, v, "lmfb")
    assert it.n_sec == 9 and list(it.starts) == [0, 2, 4, 6]
    np.testing.assert_allclose(it.targets[1, :, 1], [0.2, 0.3, 0.4, 0.5], atol=1e-6)
    np.testing.assert_array_equal(it.has_audio[3], [True, True, True, False])  # second 9 is past the end
    assert np.isnan(it.targets[3, 3]).all()
    assert it.window_input(3).shape == (400, 8)  # the short last window is padded
    task = AudioTask([it], [], filtering=True)
    b = next(iter(task.train_batches(np.random.default_rng(0), 8)))
    assert b["feats"].shape == (4, 400, 8) and b["target"].shape == (4, 4, 2) and b["target_mask"].shape == (4, 4)
    assert int(b["target_mask"].sum()) == 4 * 4 - 1


def test_item_reads_its_windows_from_the_store_standardised_as_the_whole_video(tmp_path):
    """The item's features stay in the store; each window's rows are the whole video z-scored (float32 mean,
    std floored at 1e-5), by hand, including the padded last window and a window past the audio; the
    ``global`` form reads the stored rows as they are (here float16, cast per window)."""
    from vaest.features.store import RowView, StoredArray

    store = FeatureStore(tmp_path / "feats")
    fps, secs = 10.0, 9.0
    v = Video("v", Path("v.wav"), "train", fps=fps, audio_only=True, _labels=np.zeros((90, 2), np.float32))
    feats = np.random.default_rng(1).normal(3.0, 2.0, size=(598, 6)).astype(np.float32)
    feats[:, 5] = 7.0  # a constant column: std floored
    store.save("audio-lmfb", "v", FeatureRecord(TimeSeries(feats, TimeBase(0.01, 0.025)), {},
                                                {"duration": secs, "has_video": False}))
    it = load_item(store, v, "lmfb")
    assert isinstance(it.x, RowView) and isinstance(it.x.parts[0], StoredArray) and len(it.x) == 598
    mean, std = feats.mean(0), np.maximum(feats.std(0), 1e-5)
    assert std[5] == np.float32(1e-5)
    z = (feats - mean) / std
    np.testing.assert_array_equal(it.x[:], z)
    np.testing.assert_array_equal(it.window_input(0), z[0:400])
    # window 1 = rows 200..600 of 598: the last row repeated twice; window 2: 198 rows and 202 repeats
    np.testing.assert_array_equal(it.window_input(1), np.concatenate([z[200:598], z[[597, 597]]]))
    np.testing.assert_array_equal(it.window_input(2), z[np.minimum(np.arange(400, 800), 597)])
    np.testing.assert_array_equal(it.window_input(2, zero_pad=True)[198:], 0)
    np.testing.assert_array_equal(it.window_input(3), np.repeat(z[-1:], 400, 0))  # starts past the audio
    half = FeatureStore(tmp_path / "half")
    half.save("audio-lmfb", "v", FeatureRecord(TimeSeries(feats.astype(np.float16), TimeBase(0.01, 0.025)), {},
                                               {"duration": secs, "has_video": False}))
    g = load_item(half, v, "lmfb", feature_norm="global")
    assert isinstance(g.x, StoredArray) and g.x.dtype == np.float16
    np.testing.assert_array_equal(g.window_input(2), feats.astype(np.float16)[400:598].astype(np.float32)[
        np.minimum(np.arange(400), 197)])


def test_training_learns_arousal_from_loudness_and_writes_run(tmp_path):
    from vaest.corpus import load_corpus
    from vaest.features.audio import audio_extractors
    from vaest.features.base import run_extraction
    from vaest.inference import load_predictions, read_run_json
    from vaest.tasks.audio import train_audio

    (tmp_path / "c").mkdir()
    manifest = _loud_corpus(tmp_path / "c", n=6, seconds=24.0)
    feats = tmp_path / "feats"
    rep = run_extraction(FeatureStore(feats), audio_extractors("lmfb", vad=False), load_corpus(manifest).videos)
    assert not rep.failed and len(rep.done) == 6
    cfg = AudioTrainConfig(encoder="lmfb", epochs=6, ema=None, head_lr=2e-3, batch_size=8)
    run = tmp_path / "run"
    m = train_audio(feats, manifest, run, cfg)
    assert m["arousal"] > 0.6, m
    assert m["kept_share"] == 1.0  # audio-only, no vad record: nothing to filter on
    assert read_run_json(run)["modality"] == "audio"
    assert set(json.loads((run / "metrics.json").read_text())) >= {"valence", "arousal", "mean"}
    for i in range(6):
        rec = load_predictions(run, f"c{i}")
        assert rec.values.shape == (600, 2) and rec.extras["emb"].shape == (600, 256)
        assert rec.extras["reliability"].shape == (600,) and rec.mask.all()
    tok = FeatureStore(run).load("audio-tokens", "c0")
    assert tok.values.shape == (11, 4, 256) and tok.base.hop == 2.0 and tok.base.win == 4.0
    assert tok.mask.all() and tok.extras["va"].shape == (11, 4, 2)


def test_wavlm_encoder_trains_one_step_end_to_end(tmp_path):
    from vaest.corpus import load_corpus
    from vaest.features.audio import audio_extractors
    from vaest.features.base import run_extraction
    from vaest.inference import load_predictions
    from vaest.tasks.audio import train_audio

    bb = _tiny_wavlm(tmp_path / "wavlm", layers=2)
    (tmp_path / "c").mkdir()
    manifest = _loud_corpus(tmp_path / "c", n=3, seconds=6.0)
    feats = tmp_path / "feats"
    run_extraction(FeatureStore(feats), audio_extractors("wavlm", str(bb), vad=False), load_corpus(manifest).videos)
    rec = FeatureStore(feats).load("audio-wavlm", "c0")
    assert rec.values.shape == (6 * SR, 1) and rec.meta["model"] == str(bb)
    cfg = AudioTrainConfig(encoder="wavlm", epochs=1, max_batches_per_epoch=1, batch_size=2, trainable_layers=1)
    m = train_audio(feats, manifest, tmp_path / "run", cfg)
    assert math.isfinite(m["mean"])
    assert load_predictions(tmp_path / "run", "c2").values.shape == (150, 2)


# ---------------------------------------------------------------------------------------------------------
# voice activity on real speech
# ---------------------------------------------------------------------------------------------------------


def test_vad_finds_espeak_speech_and_filters_silence(tmp_path):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    pytest.importorskip("silero_vad")
    import soundfile as sf
    from scipy.signal import resample_poly

    from vaest.features.vad import VAD_BASE, speech_probability

    out = tmp_path / "s.wav"
    subprocess.run(["espeak-ng", "-w", str(out), "The quick brown fox jumps over the lazy dog again and again."],
                   check=True, capture_output=True)
    x, sr = sf.read(str(out), dtype="float32")
    x = resample_poly(x, SR, sr).astype(np.float32) if sr != SR else x
    sil = np.zeros(6 * SR, np.float32)
    wav = np.concatenate([sil, x, sil])
    p = speech_probability(wav)
    assert len(p) == math.ceil(len(wav) / 512)
    t = np.arange(len(p)) * VAD_BASE.hop
    speech_end = 6 + len(x) / SR
    assert p[t < 5.5].max() < 0.5 and p[(t > 6.5) & (t < speech_end - 0.5)].mean() > 0.5
    st = window_reliability(audio_window_starts(len(wav) / SR), speech=TimeSeries(p[:, None], VAD_BASE))
    silent = (st.starts + 4 <= 6) | (st.starts >= speech_end)
    assert silent.any() and not st.fuse_ok[silent].any()
    assert st.fuse_ok[(st.starts >= 6) & (st.starts + 4 <= speech_end)].all()


def test_vad_chunk_by_chunk_equals_silero_whole_signal_forward():
    """speech_probability's torch path runs silero's per-chunk forward with its state carried (no whole-signal copies);
    it must give exactly what silero's own audio_forward gives on the whole signal, for every length."""
    pytest.importorskip("silero_vad")
    import torch

    from vaest.features.vad import VAD_CHUNK, _load_model, speech_probability

    rng = np.random.default_rng(3)
    t = np.arange(3 * SR) / SR
    voiced = (0.3 * np.sin(2 * np.pi * 140 * t) * (np.sin(2 * np.pi * 1.5 * t) > 0)).astype(np.float32)
    wav = voiced + 0.01 * rng.standard_normal(len(t)).astype(np.float32)
    model = _load_model()
    for n in (len(wav), len(wav) - 100, VAD_CHUNK, VAD_CHUNK + 1, 2 * VAD_CHUNK - 7):  # (its audio_forward refuses very short input)
        w = np.ascontiguousarray(wav[:n])
        with torch.no_grad():
            ref = model.audio_forward(torch.from_numpy(w), SR).reshape(-1).numpy()
        got = speech_probability(w, backend="torch")  # (the ONNX Runtime path: tests/test_torch_free.py)
        assert got.shape == ref.shape == (-(-n // VAD_CHUNK),)
        np.testing.assert_array_equal(got, ref)


# ---------------------------------------------------------------------------------------------------------
# real clips (CREMA-D, in ../shared; skipped when absent)
# ---------------------------------------------------------------------------------------------------------


def _cremad() -> Path:
    return require_shared("data/cremad-av")


def test_cremad_silence_around_real_speech_is_filtered():
    pytest.importorskip("silero_vad")
    from vaest.features.vad import VAD_BASE, speech_probability
    from vaest.media import read_audio

    d = _cremad()
    # each clip holds about 1 s of speech: three in a row give windows with >= 1 s of it, between 5 s silences
    speech = np.concatenate([read_audio(d / f"1002_DFA_{e}_XX.mp3") for e in ("DIS", "HAP", "NEU")])
    sil = np.zeros(5 * SR, np.float32)
    wav = np.concatenate([sil, speech, sil])
    p = speech_probability(wav)
    st = window_reliability(audio_window_starts(len(wav) / SR), speech=TimeSeries(p[:, None], VAD_BASE))
    end = 5 + len(speech) / SR
    silent = (st.starts + 4 <= 5) | (st.starts >= end)
    assert silent.sum() >= 2 and not st.fuse_ok[silent].any()
    assert st.fuse_ok[~silent].any() and (st.reliability[silent] == 0).all()


def test_cremad_mouth_opening_agrees_with_speech(tmp_path):
    pytest.importorskip("silero_vad")
    pytest.importorskip("mediapipe")
    from vaest.corpus.folder import load_files
    from vaest.features.base import create_extractor, run_extraction
    from vaest.timebase import to_frames

    d = _cremad()
    flvs = sorted(d.glob("1001_*.flv"))[:3]
    store = FeatureStore(tmp_path / "feats")
    corpus = load_files(flvs)
    rep = run_extraction(store, [create_extractor("mouth"), create_extractor("vad")], corpus.videos)
    assert not rep.failed, rep.failed
    agree = []
    for v in corpus.videos:
        mouth = store.load("mouth", v.id)
        vad = store.load("vad", v.id)
        sp, ok = to_frames(TimeSeries(speech_activity(vad.series).astype(np.float32), vad.base), len(mouth.values),
                           1.0 / mouth.base.hop)
        m = ok & mouth.extras["coverage"]
        agree.append(np.mean(mouth.extras["open"][m] == (sp[m, 0] > 0.5)))
    assert np.mean(agree) > 0.6, agree


def test_ema_warmup_follows_early_updates():
    from torch import nn

    from vaest.training import EMA

    m = nn.Linear(1, 1, bias=False)
    nn.init.zeros_(m.weight)
    slow, warm = EMA(m, 0.998), EMA(m, 0.998, warmup=True)
    with torch.no_grad():
        m.weight.fill_(1.0)
    slow.update(m)
    warm.update(m)
    assert abs(float(slow.shadow.weight) - 0.002) < 1e-6  # plain EMA: still at the initial weights
    assert abs(float(warm.shadow.weight) - 0.9) < 1e-6  # first update uses decay 1/10
    for _ in range(5000):
        warm.update(m)
    assert warm.updates == 5001 and min(warm.decay, (1 + warm.updates) / (10 + warm.updates)) == 0.998


def test_cli_extract_and_train_on_synthetic_corpus(synth_corpus, tmp_path):
    """`vaest extract audio` / `extract mouth` / `train audio` / `evaluate` on the shared synthetic corpus."""
    pytest.importorskip("silero_vad")
    from typer.testing import CliRunner

    from vaest.cli import app
    from vaest.corpus import load_corpus
    from vaest.inference import load_predictions

    feats, run = tmp_path / "feats", tmp_path / "run"
    r = CliRunner().invoke(app, ["extract", "audio", "--corpus", str(synth_corpus), "--out", str(feats)])
    assert r.exit_code == 0, r.output
    with_mouth = True
    try:
        import mediapipe  # noqa: F401
    except ImportError:
        with_mouth = False
    if with_mouth:
        r = CliRunner().invoke(app, ["extract", "mouth", "--corpus", str(synth_corpus), "--out", str(feats)])
        assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["train", "audio", "--features", str(feats), "--corpus", str(synth_corpus),
                                 "--out", str(run), "--epochs", "2"])
    assert r.exit_code == 0, r.output
    m = json.loads((run / "metrics.json").read_text())
    assert {"valence", "arousal", "mean", "kept_share"} <= set(m) and 0 < m["kept_share"] <= 1
    toks = FeatureStore(run)
    for v in load_corpus(synth_corpus):
        rec = load_predictions(run, v.id)
        assert rec.values.shape[1] == 2 and np.isfinite(rec.values).all()
        tok = toks.load("audio-tokens", v.id)
        assert tok.values.shape[1:] == (4, 256)
        assert tok.meta["source"] == ("mouth" if with_mouth else "vad")
        # a window fusion may use passes the rule on its stored statistics
        ok = tok.mask
        assert (tok.extras["open_seconds"][ok] >= 1.0 - 1e-9).all() and (tok.extras["coverage"][ok] >= 0.8 - 1e-9).all()
    r = CliRunner().invoke(app, ["evaluate", str(run)])
    assert r.exit_code == 0, r.output


def test_audio_model_refuses_features_of_another_extractor_configuration(tmp_path, caplog):
    """Trained on one log-mel configuration's records, the checkpoint records their width and features hash;
    applied to a store of another configuration (same width, other pre-emphasis; or other width) it is refused
    naming the store file, the key, the run and both values; the same configuration is served; a checkpoint
    without the hash (trained before) warns once and applies. Training on a store mixing two configurations is
    refused."""
    import logging

    from vaest.apply import AudioModel
    from vaest.corpus import load_corpus
    from vaest.errors import FeatureError
    from vaest.features.base import create_extractor, run_extraction
    from vaest.models import load_checkpoint
    from vaest.tasks.audio import train_audio

    (tmp_path / "c").mkdir()
    manifest = _loud_corpus(tmp_path / "c", n=3, seconds=10.0)
    videos = load_corpus(manifest).videos
    feats = tmp_path / "feats"
    lmfb = create_extractor("audio-lmfb")
    assert not run_extraction(FeatureStore(feats), [lmfb], videos).failed
    run = tmp_path / "run"
    train_audio(feats, manifest, run, AudioTrainConfig(encoder="lmfb", epochs=1, ema=None, batch_size=8))
    inputs = load_checkpoint(run / "model.pt")[1]["inputs"]
    assert inputs["features_hash"] == lmfb.features_hash() and inputs["dim"] == 64

    with caplog.at_level(logging.WARNING, logger="vaest"):
        model = AudioModel(run)
        assert model.apply(FeatureStore(feats), videos[-1]).va.shape == (250, 2)  # same configuration: served
    assert not any("features hash" in r.getMessage() for r in caplog.records)

    other = FeatureStore(tmp_path / "other")
    pre = create_extractor("audio-lmfb", preemphasis=0.9)
    assert not run_extraction(other, [pre], videos[-1:]).failed
    with pytest.raises(FeatureError) as e:
        model.apply(other, videos[-1])
    msg = str(e.value)
    assert str(other.path("audio-lmfb", videos[-1].id)) in msg and "'audio-lmfb'" in msg and str(run) in msg
    assert f"features hash {pre.features_hash()}" in msg and f"trained on features hash {lmfb.features_hash()}" in msg
    narrow = FeatureStore(tmp_path / "narrow")
    assert not run_extraction(narrow, [create_extractor("audio-lmfb", n_mels=32)], videos[-1:]).failed
    with pytest.raises(FeatureError, match=r"32-d, but the audio model .* expects 64-d"):
        model.apply(narrow, videos[-1])

    # a checkpoint from before features hashes: warned once when loaded, never refused on it
    ck = torch.load(run / "model.pt", weights_only=False)
    del ck["inputs"]
    torch.save(ck, run / "model.pt")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vaest"):
        assert AudioModel(run).apply(other, videos[-1]).va.shape == (250, 2)
    assert sum("features hash" in r.getMessage() for r in caplog.records) == 1

    # training reads one configuration: a store where one video was re-extracted otherwise is refused
    assert not run_extraction(FeatureStore(feats), [pre], videos[-1:], force=True).failed
    with pytest.raises(FeatureError, match="config hash"):
        train_audio(feats, manifest, tmp_path / "mixed", AudioTrainConfig(encoder="lmfb", epochs=1, ema=None))
