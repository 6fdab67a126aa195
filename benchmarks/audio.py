"""Audio benchmarks and development checks (not part of the product path).

- ``speed``: real-time factor of the offline audio extractors (lmfb, egemaps, vad, waveform cache) on this CPU.
- ``wavlm``: forward time of a randomly initialised WavLM-Large audio model on one 4 s window (CPU).
- ``cremad``: on the real CREMA-D clips in ``../shared/data/cremad-av``: per-frame agreement of mouth opening
  (``mouth`` extractor) with speech activity (``vad``) on the talking-face videos, and how silent stretches
  around real speech are filtered.
- ``synth``: DEVELOPMENT evaluation on a synthetic corpus: the offline audio model with filtering on and off,
  against a per-second RMS-loudness baseline. The optional mouth check compares the product's mouth-open flags
  with the generator's truth files ``synth_truth/<name>.npz`` - those files are read only here, never in ``vaest``.

Usage: ``python benchmarks/audio.py speed|wavlm|cremad|synth [...] [--json OUT]``; each function returns a dict.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("vaest.benchmarks.audio")

SR = 16000
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _speechlike(seconds: float, seed: int = 0) -> np.ndarray:
    """A harmonic, syllable-modulated test signal (pitch ~140 Hz) with a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    phase = 2 * np.pi * np.cumsum(140 + 20 * np.sin(2 * np.pi * 0.7 * t)) / SR
    x = sum(np.sin(k * phase) / k for k in range(1, 8))
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2
    return (0.1 * env * x + 0.002 * rng.standard_normal(len(t))).astype(np.float32)


def _best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def extraction_speed(seconds: float = 60.0, repeats: int = 3, threads: int = 2) -> dict[str, Any]:
    """Real-time factor (compute seconds per audio second; lower is faster) of each offline audio extractor.

    Returns ``{extractor: rtf}`` (floats) plus ``details`` (seconds, x real time, threads, load average).
    """
    import torch

    from vaest.features.audio import egemaps_lld, log_mel_spectrogram
    from vaest.features.vad import speech_probability

    torch.set_num_threads(threads)
    wav = _speechlike(seconds)
    speech_probability(wav[:SR])  # load the model outside the timing
    egemaps_lld(wav[:SR])
    out: dict[str, Any] = {}
    details: dict[str, Any] = {"audio_seconds": seconds, "threads": threads, "cpu_count": os.cpu_count()}
    runs = {"lmfb": lambda: log_mel_spectrogram(wav), "egemaps": lambda: egemaps_lld(wav),
            "vad": lambda: speech_probability(wav), "wavlm (waveform cache)": lambda: wav.astype(np.float16)}
    for name, fn in runs.items():
        t = _best_time(fn, repeats)
        out[name] = t / seconds
        details[name] = {"seconds": t, "x_realtime": seconds / t if t > 0 else float("inf")}
    try:
        details["load_avg_1min"] = os.getloadavg()[0]
    except OSError:
        pass
    out["details"] = details
    return out


def wavlm_large_config() -> dict[str, Any]:
    """The architecture of WavLM-Large (random weights; no download)."""
    from transformers import WavLMConfig

    cfg = WavLMConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                      conv_dim=(512,) * 7, conv_stride=(5, 2, 2, 2, 2, 2, 2), conv_kernel=(10, 3, 3, 3, 3, 2, 2),
                      conv_bias=False, feat_extract_norm="layer", do_stable_layer_norm=True, num_buckets=320,
                      max_bucket_distance=800)
    return cfg.to_dict()


def wavlm_forward_speed(seconds: float = 4.0, repeats: int = 3, threads: int = 2, device: str = "cpu",
                        train_step: bool = True) -> dict[str, Any]:
    """Time one 4 s window through a random WavLM-Large audio model (inference, and a top-4 fine-tuning step)."""
    import torch

    from vaest.models import create_model
    from vaest.models.audio import audio_param_groups

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = create_model("audio-wavlm", backbone="random-wavlm-large", backbone_config=wavlm_large_config(),
                         trainable_layers=4).to(device)
    build_s = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    x = torch.randn(1, int(seconds * SR), device=device)
    model.eval()
    with torch.no_grad():
        model(wav=x)
        fwd = _best_time(lambda: model(wav=x), repeats)
    out: dict[str, Any] = {"device": device, "threads": threads, "window_seconds": seconds, "params": n_params,
                           "trainable_params": n_train, "build_seconds": build_s, "forward_seconds": fwd,
                           "forward_rtf": fwd / seconds}
    if train_step:
        model.train()
        opt = torch.optim.AdamW(audio_param_groups(model))

        def step() -> None:
            opt.zero_grad()
            model(wav=x)["va"].sum().backward()
            opt.step()

        step()
        out["train_step_seconds"] = _best_time(step, max(1, repeats - 1))
    return out


# ---------------------------------------------------------------------------------------------------------
# Real clips
# ---------------------------------------------------------------------------------------------------------


def cremad_checks(data_dir: Path | None = None, work: Path | None = None) -> dict[str, Any]:
    """Mouth-open vs speech agreement on the talking-face clips, and silence filtering around real speech."""
    import tempfile

    from vaest.corpus.folder import load_files
    from vaest.features.audio import audio_window_starts, speech_activity, window_reliability
    from vaest.features.base import create_extractor, run_extraction
    from vaest.features.store import FeatureStore
    from vaest.features.vad import VAD_BASE, speech_probability
    from vaest.media import read_audio
    from vaest.timebase import TimeSeries, to_frames

    d = Path(data_dir or SHARED / "cremad-av")
    if not d.is_dir():
        raise SystemExit(f"{d}: CREMA-D clips not found")
    work = Path(work or tempfile.mkdtemp(prefix="vaest-cremad-"))
    store = FeatureStore(work / "feats")
    vids = load_files(sorted(d.glob("*.flv")))
    run_extraction(store, [create_extractor("mouth"), create_extractor("vad")], vids.videos)
    per_clip = {}
    tot_agree = tot_n = 0
    for v in vids.videos:
        mouth = store.load("mouth", v.id)
        vad = store.load("vad", v.id)
        fps = 1.0 / mouth.base.hop
        sp, ok = to_frames(TimeSeries(speech_activity(vad.series).astype(np.float32), vad.base), len(mouth.values), fps)
        m = ok & mouth.extras["coverage"]
        is_open, is_sp = mouth.extras["open"][m], sp[m, 0] > 0.5
        agree = float(np.mean(is_open == is_sp))
        tot_agree += int(np.sum(is_open == is_sp))
        tot_n += int(m.sum())
        per_clip[v.id] = {"frames": int(m.sum()), "agreement": agree, "open_share": float(is_open.mean()),
                          "speech_share": float(is_sp.mean()), "face_coverage": float(mouth.extras["coverage"].mean()),
                          "both": float(np.mean(is_open & is_sp)), "open_only": float(np.mean(is_open & ~is_sp)),
                          "speech_only": float(np.mean(~is_open & is_sp))}
    # silence filtering: the six audio-only clips in a row (about 1 s of speech each) between 5 s silences
    speech = np.concatenate([read_audio(p) for p in sorted(d.glob("*.mp3"))])
    sil = np.zeros(5 * SR, np.float32)
    wav = np.concatenate([sil, speech, sil])
    p = speech_probability(wav)
    st = window_reliability(audio_window_starts(len(wav) / SR), speech=TimeSeries(p[:, None], VAD_BASE))
    end = 5 + len(speech) / SR
    silent = (st.starts + 4 <= 5) | (st.starts >= end)
    return {"mouth_vs_speech_agreement": tot_agree / max(tot_n, 1), "frames": tot_n, "clips": per_clip,
            "silence_test": {"windows": len(st.starts), "silent_windows": int(silent.sum()),
                             "silent_kept": int(st.fuse_ok[silent].sum()),
                             "speech_windows": int((~silent).sum()), "speech_kept": int(st.fuse_ok[~silent].sum()),
                             "speech_ratio": [round(float(x), 3) for x in st.speech_ratio]}}


# ---------------------------------------------------------------------------------------------------------
# DEVELOPMENT evaluation on a synthetic corpus
# ---------------------------------------------------------------------------------------------------------


def loudness_baseline(corpus_root: Path, features: Path, encoder: str = "lmfb",
                      per_video: bool = False) -> dict[str, Any]:
    """Constant-loudness baseline: per-second RMS level (dB) -> linear least squares to each of valence/arousal
    on the training seconds; validation CCC over all frames, exactly as the audio model is scored.
    ``per_video`` z-scores the levels within each video first (as ``feature_norm="video"`` does for features)."""
    from vaest.corpus import load_corpus
    from vaest.features.store import FeatureStore
    from vaest.media import read_audio
    from vaest.inputs.audio import frames_from_seconds, load_item, second_targets
    from vaest.training import concat_frame_ccc

    corpus = load_corpus(corpus_root)
    store = FeatureStore(features)
    cache: dict[Path, np.ndarray] = {}
    rows: dict[str, list] = {"train": [], "val": []}
    for v in corpus.split("train", "val"):
        it = load_item(store, v, encoder)
        if v.media not in cache:
            cache[v.media] = read_audio(v.media)
        wav = cache[v.media]
        n = it.n_sec
        seg = np.zeros(n)
        for s in range(n):
            x = wav[s * SR : (s + 1) * SR]
            seg[s] = 10 * np.log10(np.mean(x.astype(np.float64) ** 2) + 1e-10) if len(x) else np.nan
        if per_video:
            seg = (seg - np.nanmean(seg)) / max(float(np.nanstd(seg)), 1e-6)
        rows[v.split].append((it, seg, second_targets(it.frame_labels, it.fps, n)))
    X = np.concatenate([s for _, s, _ in rows["train"]])
    Y = np.concatenate([t for _, _, t in rows["train"]])
    coefs = []
    for d in range(2):
        ok = np.isfinite(X) & np.isfinite(Y[:, d])
        A = np.stack([X[ok], np.ones(ok.sum())], 1)
        coefs.append(np.linalg.lstsq(A, Y[ok, d], rcond=None)[0])
    pairs = []
    for it, seg, _ in rows["val"]:
        pred = np.stack([c[0] * np.nan_to_num(seg, nan=np.nanmean(seg)) + c[1] for c in coefs], 1)
        va, _ = frames_from_seconds(pred.astype(np.float32), it.n_frames, it.fps)
        pairs.append((va, it.frame_labels))
    return {**concat_frame_ccc(pairs), "coef_valence": coefs[0].tolist(), "coef_arousal": coefs[1].tolist()}


def mouth_vs_truth(corpus_root: Path, features: Path) -> dict[str, Any]:
    """DEVELOPMENT ONLY: the product's mouth-open flags and face coverage against the synthetic generator's truth."""
    from vaest.corpus import load_corpus
    from vaest.features.store import FeatureStore

    store = FeatureStore(features)
    agree = cov = n = n_vis = 0
    for v in load_corpus(corpus_root):
        truth = Path(corpus_root) / "synth_truth" / f"{v.id}.npz"
        if not truth.exists() or not store.has("mouth", v.id):
            continue
        z = np.load(truth)
        m = store.load("mouth", v.id)
        k = min(len(m.values), len(z["mouth_open"]))
        vis = z["face_visible"][:k].astype(bool)
        agree += int(np.sum(m.extras["open"][:k][vis] == z["speaking"][:k][vis].astype(bool)))
        cov += int(np.sum(m.extras["coverage"][:k] == vis))
        n += k
        n_vis += int(vis.sum())
    return {"frames": n, "coverage_agreement": cov / max(n, 1),
            "open_vs_truth_speaking_on_visible_frames": agree / max(n_vis, 1)}


def synthetic_eval(corpus_root: Path, features: Path, out: Path, encoder: str = "lmfb", epochs: int = 30,
                   seed: int = 0, check_mouth: bool = True) -> dict[str, Any]:
    """DEVELOPMENT: train the offline audio model with filtering on and off, and the loudness baseline."""
    from vaest.tasks.audio import AudioTrainConfig, train_audio

    res: dict[str, Any] = {"encoder": encoder, "epochs": epochs}
    for filt in (True, False):
        cfg = AudioTrainConfig(encoder=encoder, filter=filt, epochs=epochs, seed=seed)
        t0 = time.perf_counter()
        m = train_audio(features, corpus_root, Path(out) / f"{encoder}-{'filter' if filt else 'nofilter'}", cfg)
        m["wall_seconds"] = time.perf_counter() - t0
        res["filter" if filt else "no_filter"] = m
    res["loudness_baseline"] = loudness_baseline(corpus_root, features, encoder)
    res["loudness_baseline_per_video"] = loudness_baseline(corpus_root, features, encoder, per_video=True)
    if check_mouth:
        res["mouth_vs_synth_truth"] = mouth_vs_truth(corpus_root, features)
    return res


def main() -> None:
    from vaest.progress import setup_logging

    setup_logging()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=["speed", "wavlm", "cremad", "synth"])
    ap.add_argument("--corpus", type=Path)
    ap.add_argument("--features", type=Path)
    ap.add_argument("--out", type=Path, default=Path("/tmp/vaest-audio-bench"))
    ap.add_argument("--encoder", default="lmfb")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    if a.what == "speed":
        res = extraction_speed(a.seconds, threads=a.threads)
    elif a.what == "wavlm":
        res = wavlm_forward_speed(threads=a.threads, device=a.device)
    elif a.what == "cremad":
        res = cremad_checks()
    else:
        if a.corpus is None or a.features is None:
            ap.error("synth needs --corpus and --features")
        res = synthetic_eval(a.corpus, a.features, a.out, a.encoder, a.epochs)
    text = json.dumps(res, indent=2, default=float)
    log.info("%s", text)
    if a.json:
        a.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
