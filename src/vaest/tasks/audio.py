"""The audio task: 4 s windows every 2 s with one valence/arousal target per second, cross-modal filtering,
waveform augmentation, frame-level validation, and the run folder the fusion model reads.

Windows and targets (reference rules):

- window ``k`` covers seconds ``[2k, 2k + 4)`` of the media (:func:`vaest.features.audio.audio_window_starts`);
  the last one may run past the end (its input is padded by :func:`vaest.windows.take_window`, its missing
  seconds are masked);
- the target of each 1 s chunk is the mean of the valid frame labels whose frame midpoint lies in that second
  (:func:`second_targets`); a chunk without a valid label, or without audio, is masked;
- a window trains only if at least 2 of its 4 seconds have valid labels (:func:`label_rule`) and, with filtering,
  if it passes the training rule of :func:`vaest.features.audio.window_reliability` (mouth open >= 1 s of the
  4 s and face coverage >= 0.8). Windows failing a rule are kept in the exports, masked, with their statistics.

Validation expands each video's per-second predictions (overlapping windows averaged per second) to the frame grid
with :func:`vaest.timebase.to_frames` and scores CCC over all concatenated validation frames.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from vaest.corpus import Corpus, Video, load_corpus
from vaest.errors import CorpusError, FeatureError
from vaest.features.audio import (
    AUDIO_SR,
    N_CHUNKS,
    SECOND_BASE,
    WIN_S,
    WINDOW_BASE,
    FilterConfig,
    WindowStats,
    audio_key,
    audio_window_starts,
    n_seconds,
    reliability_from_store,
)
from vaest.features.store import FeatureRecord, FeatureStore
from vaest.media import fps_or_default
from vaest.progress import track
from vaest.timebase import TimeBase, TimeSeries, fill_nearest, frame_midpoints, to_frames
from vaest.training import concat_frame_ccc
from vaest.windows import overlap_average, take_window

log = logging.getLogger(__name__)

TOKENS_KEY = "audio-tokens"


# ---------------------------------------------------------------------------------------------------------
# Waveform augmentation (numpy, seeded by the caller's generator)
# ---------------------------------------------------------------------------------------------------------


@dataclass
class AugmentConfig:
    """Training-time waveform augmentations, each applied with its probability.

    ``form="vaest"``: reverb (synthetic RIR, rt60), Butterworth-shaped band filter, gain, white/pink noise, in
    that order. ``form="reference"`` (:func:`augment_waveform_reference`): the official order and operations,
    gain (p 0.3, +-6 dB) -> white noise (p 0.6, 8-25 dB SNR) -> FFT band limit (p 0.3) -> short reverb (p 0.2),
    then clipping to [-1, 1] (``src/audio/data/abaw_va_dataset.py``, ``configs/cfg_va_s2s.yaml``).
    """

    p_noise: float = 0.5
    snr_db: tuple[float, float] = (8.0, 25.0)
    p_gain: float = 0.5
    gain_db: float = 6.0
    p_band: float = 0.3
    p_reverb: float = 0.3
    rt60: tuple[float, float] = (0.2, 0.8)
    form: str = "vaest"

    @classmethod
    def reference(cls) -> "AugmentConfig":
        """The official probabilities (``augment_params`` of ``configs/cfg_va_s2s.yaml``)."""
        return cls(p_noise=0.6, snr_db=(8.0, 25.0), p_gain=0.3, gain_db=6.0, p_band=0.3, p_reverb=0.2,
                   form="reference")


def _power(x: np.ndarray) -> float:
    return float(np.mean(np.square(x, dtype=np.float64)))


def add_noise(x: np.ndarray, snr_db: float, rng: np.random.Generator, color: str = "white") -> np.ndarray:
    """Add white or pink noise scaled so that ``10 log10(P_signal / P_noise) == snr_db`` exactly on this clip.

    A silent clip (zero power) is returned unchanged: it has no SNR to set.
    """
    x = np.asarray(x, dtype=np.float32)
    px = _power(x)
    if px <= 0 or len(x) == 0:
        return x.copy()
    n = rng.standard_normal(len(x))
    if color == "pink":
        spec = np.fft.rfft(n)
        f = np.arange(len(spec), dtype=np.float64)
        f[0] = 1.0
        n = np.fft.irfft(spec / np.sqrt(f), n=len(x))
    elif color != "white":
        raise ValueError(f"unknown noise color {color!r}")
    n = n - n.mean()
    pn = _power(n)
    if pn <= 0:
        return x.copy()
    scale = math.sqrt(px / (pn * 10.0 ** (snr_db / 10.0)))
    return (x + scale * n).astype(np.float32)


def apply_gain(x: np.ndarray, gain_db: float) -> np.ndarray:
    """Scale by ``gain_db`` decibels."""
    return (np.asarray(x, dtype=np.float32) * np.float32(10.0 ** (gain_db / 20.0))).astype(np.float32)


def band_filter(x: np.ndarray, low_hz: float | None, high_hz: float | None, sr: int = AUDIO_SR,
                order: int = 4) -> np.ndarray:
    """Zero-phase Butterworth-shaped band filter applied in the frequency domain (high-pass at ``low_hz``,
    low-pass at ``high_hz``; either may be None). Same shape as ``x``."""
    x = np.asarray(x, dtype=np.float32)
    if len(x) == 0:
        return x.copy()
    spec = np.fft.rfft(x.astype(np.float64))
    f = np.fft.rfftfreq(len(x), 1.0 / sr)
    gain = np.ones_like(f)
    if high_hz:
        gain /= np.sqrt(1.0 + (f / high_hz) ** (2 * order))
    if low_hz:
        with np.errstate(divide="ignore"):
            gain /= np.sqrt(1.0 + (low_hz / np.maximum(f, 1e-9)) ** (2 * order))
    return np.fft.irfft(spec * gain, n=len(x)).astype(np.float32)


def synthetic_rir(rt60: float, rng: np.random.Generator, sr: int = AUDIO_SR) -> np.ndarray:
    """A room impulse response: a direct path then exponentially decaying noise (-60 dB after ``rt60`` s)."""
    n = max(2, int(min(1.2 * rt60, 1.0) * sr))
    t = np.arange(n) / sr
    h = rng.standard_normal(n) * np.exp(-6.907755 * t / rt60) * 0.3
    h[0] = 1.0
    return h / np.sqrt(np.sum(h**2))


def add_reverb(x: np.ndarray, rt60: float, rng: np.random.Generator, sr: int = AUDIO_SR) -> np.ndarray:
    """Convolve with :func:`synthetic_rir`, keep the first ``len(x)`` samples and the input's RMS."""
    from scipy.signal import fftconvolve

    x = np.asarray(x, dtype=np.float32)
    px = _power(x)
    if len(x) == 0 or px <= 0:
        return x.copy()
    y = fftconvolve(x.astype(np.float64), synthetic_rir(rt60, rng, sr))[: len(x)]
    py = _power(y)
    return (y * math.sqrt(px / py) if py > 0 else y).astype(np.float32)


def fft_lowpass(x: np.ndarray, keep: float) -> np.ndarray:
    """Keep the lowest ``keep`` share of the rFFT bins (at least one), zero the rest: (S,) -> (S,)."""
    spec = np.fft.rfft(np.asarray(x, dtype=np.float64))
    k = max(1, int(len(spec) * keep))
    spec[k:] = 0
    return np.fft.irfft(spec, n=len(x)).astype(np.float32)


def augment_waveform_reference(x: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig,
                               sr: int = AUDIO_SR) -> np.ndarray:
    """The official augmentation chain on a zero-padded window (S,) -> (S,), clipped to [-1, 1].

    Gain U(-g, g) dB; white noise at U(snr) dB against the window's power (both powers floored at 1e-8); band
    limit: half the time a low-pass keeping U(0.15, 0.45) of the spectrum, else "telephone" = low-pass
    U(0.18, 0.5) minus low-pass U(0.03, 0.12); reverb: an exponentially decaying noise RIR of U(50, 200) ms
    (decay U(2, 8) over its length, L1-normalised) mixed in with a wet share U(0.1, 0.4).
    """
    y = np.asarray(x, dtype=np.float32).copy()
    if rng.random() < cfg.p_gain:
        y = apply_gain(y, float(rng.uniform(-cfg.gain_db, cfg.gain_db)))
    if rng.random() < cfg.p_noise:
        snr = float(rng.uniform(*cfg.snr_db))
        n = rng.standard_normal(len(y))
        ps, pn = max(_power(y), 1e-8), max(float(np.mean(n**2)), 1e-8)
        y = (y + n * math.sqrt(ps / (10.0 ** (snr / 10.0) * pn))).astype(np.float32)
    if rng.random() < cfg.p_band:
        if rng.random() < 0.5:
            y = fft_lowpass(y, float(rng.uniform(0.15, 0.45)))
        else:
            hi, lo = float(rng.uniform(0.18, 0.5)), float(rng.uniform(0.03, 0.12))
            y = fft_lowpass(y, hi) - fft_lowpass(y, lo)
    if rng.random() < cfg.p_reverb and len(y):
        n_rir = min(max(16, int(rng.uniform(0.05, 0.20) * sr)), len(y))
        rir = rng.standard_normal(n_rir) * np.exp(-np.linspace(0.0, float(rng.uniform(2.0, 8.0)), n_rir))
        rir /= max(np.abs(rir).sum(), 1e-6)
        wet = np.convolve(y.astype(np.float64), rir[::-1])[: len(y)]  # the official conv1d is a correlation
        mix = float(rng.uniform(0.1, 0.4))
        y = ((1.0 - mix) * y + mix * wet).astype(np.float32)
    return np.clip(y, -1.0, 1.0).astype(np.float32)


def augment_waveform(x: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig | None = None,
                     sr: int = AUDIO_SR) -> np.ndarray:
    """Random reverb, band filtering, gain and noise (in that order), each with its probability. (S,) -> (S,).

    ``cfg.form == "reference"`` runs :func:`augment_waveform_reference` instead."""
    cfg = cfg or AugmentConfig()
    if cfg.form == "reference":
        return augment_waveform_reference(x, rng, cfg, sr)
    y = np.asarray(x, dtype=np.float32)
    if rng.random() < cfg.p_reverb:
        y = add_reverb(y, float(rng.uniform(*cfg.rt60)), rng, sr)
    if rng.random() < cfg.p_band:
        kind = rng.integers(3)
        low = float(rng.uniform(80, 400)) if kind in (0, 2) else None
        high = float(rng.uniform(2500, 7000)) if kind in (1, 2) else None
        y = band_filter(y, low, high, sr)
    if rng.random() < cfg.p_gain:
        y = apply_gain(y, float(rng.uniform(-cfg.gain_db, cfg.gain_db)))
    if rng.random() < cfg.p_noise:
        y = add_noise(y, float(rng.uniform(*cfg.snr_db)), rng, "pink" if rng.random() < 0.5 else "white")
    return y


# ---------------------------------------------------------------------------------------------------------
# Windows and targets
# ---------------------------------------------------------------------------------------------------------


def second_targets(labels: np.ndarray, fps: float, n_sec: int, frame_times: np.ndarray | None = None) -> np.ndarray:
    """Mean valid label of each 1 s bin.

    Args:
        labels: (n_frames, 2) on the video's frame grid, NaN where invalid.
        fps: frame rate of that grid; frame ``j`` falls in second ``floor(midpoint_j)``.
        n_sec: number of bins.
    Returns:
        (n_sec, 2) float32, NaN for bins without a valid frame.
    """
    lab = np.asarray(labels, dtype=np.float64).reshape(-1, 2)
    out = np.full((n_sec, 2), np.nan, dtype=np.float32)
    if len(lab) == 0 or n_sec <= 0:
        return out
    b = np.floor(frame_midpoints(len(lab), fps, frame_times)).astype(np.int64)
    ok = np.isfinite(lab).all(1) & (b >= 0) & (b < n_sec)
    sums = np.zeros((n_sec, 2))
    cnt = np.zeros(n_sec)
    np.add.at(sums, b[ok], lab[ok])
    np.add.at(cnt, b[ok], 1)
    has = cnt > 0
    out[has] = (sums[has] / cnt[has, None]).astype(np.float32)
    return out


def window_targets(sec_targets: np.ndarray, starts: Iterable[int], n_chunks: int = N_CHUNKS) -> np.ndarray:
    """Per-window targets (n_windows, n_chunks, 2) from per-second targets; seconds past the end are NaN."""
    out = []
    for s in starts:
        seg, valid = take_window(sec_targets, int(s), n_chunks)
        seg = seg.copy()
        seg[~valid] = np.nan
        out.append(seg)
    return np.stack(out).astype(np.float32) if out else np.zeros((0, n_chunks, 2), np.float32)


def label_rule(targets: np.ndarray, min_valid: int = 2) -> np.ndarray:
    """Reference rule: a window trains if at least ``min_valid`` of its seconds have a valid target. (n_w,) bool."""
    return np.isfinite(targets).all(-1).sum(-1) >= min_valid


# ---------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------


@dataclass
class AudioItem:
    """One video's audio input, windows, targets and window statistics.

    Attributes:
        x: (n_steps, D) cached frame features, or (n_samples, 1) waveform (float16) for the waveform models.
        rate, offset: steps per second of ``x`` and the time of its first step (its time base).
        starts: (n_windows,) window start seconds; ``n_sec``: 1 s bins of the media.
        targets: (n_windows, 4, 2) per-second targets (NaN invalid); ``has_audio``: (n_windows, 4) second has audio.
        label_ok: (n_windows,) the >= 2 valid seconds rule; ``stats``: cross-modal statistics of each window.
        n_frames, fps, frame_labels: the video's frame grid and its labels (NaN invalid; None when unlabelled).
    """

    id: str
    split: str
    x: np.ndarray
    rate: float
    offset: float
    starts: np.ndarray
    n_sec: int
    targets: np.ndarray
    has_audio: np.ndarray
    label_ok: np.ndarray
    stats: WindowStats
    n_frames: int
    fps: float
    frame_labels: np.ndarray | None
    audio_seconds: float = 0.0

    @property
    def n_windows(self) -> int:
        return len(self.starts)

    def train_mask(self, filtering: bool) -> np.ndarray:
        """Windows that train: label rule, some audio, and (with filtering) the cross-modal training rule."""
        m = self.label_ok & self.has_audio.any(1)
        return m & self.stats.train_ok if filtering else m

    def token_mask(self, filtering: bool) -> np.ndarray:
        """Windows fusion may use: some audio and (with filtering) the cross-modal fusion rule."""
        m = self.has_audio.any(1)
        return m & self.stats.fuse_ok if filtering else m

    def window_input(self, k: int, zero_pad: bool = False) -> np.ndarray:
        """Input of window ``k``: (win_steps, D) features or (win_samples,) float32 waveform.

        A window running past the audio is padded by repeating the last step, or with zeros (``zero_pad``, the
        reference audio model, which also receives :meth:`window_mask`)."""
        w = int(round(WIN_S * self.rate))
        i0 = int(round((float(self.starts[k]) - self.offset) * self.rate))
        if len(self.x) == 0:
            seg = np.zeros((w,) + self.x.shape[1:], dtype=np.float32)
        elif i0 >= len(self.x):
            seg = np.repeat(self.x[-1:], w, axis=0)
        else:
            seg = take_window(self.x, max(i0, 0), w)[0]
        seg = seg.astype(np.float32)
        if zero_pad:
            seg = seg * self.window_mask(k).reshape((-1,) + (1,) * (seg.ndim - 1))
        return seg[:, 0] if self.rate >= 1000 else seg

    def window_mask(self, k: int) -> np.ndarray:
        """(win_steps,) bool: the steps of window ``k`` that hold real audio (not padding)."""
        w = int(round(WIN_S * self.rate))
        i0 = int(round((float(self.starts[k]) - self.offset) * self.rate))
        idx = i0 + np.arange(w)
        return (idx >= 0) & (idx < len(self.x))


def _record_grid(store: FeatureStore, video: Video) -> tuple[int, float] | None:
    for key in ("mouth", "facetrack"):
        if not video.audio_only and store.has(key, video.id):
            rec = store.load(key, video.id)
            return len(rec.values), 1.0 / rec.base.hop
    return None


def frame_grid(store: FeatureStore, video: Video, audio_meta: dict[str, Any]) -> tuple[int, float]:
    """The video's frame grid (n_frames, fps): the decoded count of a stored ``mouth``/``facetrack`` record, else
    the container's count and rate, else the label count. Audio-only media use the labels' rate (or 30 fps) and
    the label count (or the audio duration)."""
    dur = float(audio_meta.get("duration") or 0.0)
    if video.audio_only or not audio_meta.get("has_video", True):
        fps = fps_or_default(video.fps)
        n = video.n_label_frames
        return int(n if n else max(1, math.ceil(dur * fps))), fps
    got = _record_grid(store, video)
    if got is not None:
        return got
    fps = fps_or_default(audio_meta.get("fps") or video.fps)
    n = int(audio_meta.get("n_frames") or 0)
    if n <= 0:
        n = int(video.n_label_frames or 0)
    if n <= 0:
        n = max(1, math.ceil(max(dur, float(audio_meta.get("media_duration") or 0.0)) * fps))
    return n, fps


def load_item(store: FeatureStore, video: Video, encoder: str, filt: FilterConfig | None = None,
              min_valid_seconds: int = 2, feature_norm: str = "video") -> AudioItem:
    """Build the :class:`AudioItem` of one video from the feature store (audio record, mouth/face/vad records).

    ``feature_norm="video"`` z-scores each dimension of cached frame features within the video (not waveforms);
    inference must use the setting the model was trained with (saved in its checkpoint as ``feature_norm``).
    """
    if feature_norm not in ("global", "video"):
        raise FeatureError(f"feature_norm must be 'global' or 'video', got {feature_norm!r}")
    rec = store.load(audio_key(encoder), video.id)
    meta = rec.meta
    x = rec.values
    if feature_norm == "video" and encoder != "wavlm" and len(x):
        x = x.astype(np.float32)
        x = (x - x.mean(0)) / np.maximum(x.std(0), 1e-5)
    n_frames, fps = frame_grid(store, video, meta)
    labels = video.labels_for(n_frames) if video.has_labels else None
    audio_s = float(meta.get("duration") or len(rec.values) * rec.base.hop)
    duration = max(audio_s, n_frames / fps)
    n_sec = n_seconds(duration)
    starts = np.asarray(audio_window_starts(duration), dtype=np.int64)
    if labels is not None:
        targets = window_targets(second_targets(labels, fps, n_sec), starts)
    else:
        targets = np.full((len(starts), N_CHUNKS, 2), np.nan, dtype=np.float32)
    sec = starts[:, None] + np.arange(N_CHUNKS)[None, :]
    has_audio = (sec + 0.5 <= audio_s + 1e-9) & (sec < n_sec)
    stats = reliability_from_store(store, video, starts.astype(np.float64), WIN_S, filt)
    return AudioItem(video.id, video.split, x, 1.0 / rec.base.hop, rec.base.start, starts, n_sec, targets,
                     has_audio, label_rule(targets, min_valid_seconds), stats, n_frames, fps, labels, audio_s)


# ---------------------------------------------------------------------------------------------------------
# Prediction helpers
# ---------------------------------------------------------------------------------------------------------


def input_key(item: AudioItem) -> str:
    """Model keyword for an item's input: ``wav`` for waveforms, ``feats`` for frame features."""
    return "wav" if item.rate >= 1000 else "feats"


def predict_windows(model: nn.Module, item: AudioItem, device: str = "cpu",
                    batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Run the model over every window of an item: ``va`` (n_windows, 4, 2) and ``emb`` (n_windows, 4, E)."""
    key = input_key(item)
    vas, embs = [], []
    model.eval()
    with torch.no_grad():
        for i in range(0, item.n_windows, batch_size):
            ks = range(i, min(i + batch_size, item.n_windows))
            masked = bool(getattr(model, "takes_mask", False))
            x = np.stack([item.window_input(k, masked) for k in ks])
            kw = {key: torch.from_numpy(x).to(device)}
            if masked:
                kw["mask"] = torch.from_numpy(np.stack([item.window_mask(k) for k in ks])).to(device)
            out = model(**kw)
            vas.append(out["va"].float().cpu().numpy())
            embs.append(out["emb"].float().cpu().numpy())
    if not vas:
        return np.zeros((0, N_CHUNKS, 2), np.float32), np.zeros((0, N_CHUNKS, 0), np.float32)
    return np.concatenate(vas), np.concatenate(embs)


def seconds_from_windows(item: AudioItem, per_window: np.ndarray) -> np.ndarray:
    """Average per-window, per-second outputs (n_windows, 4, D) onto the media's seconds -> (n_sec, D).

    Seconds without audio (and seconds no window covers) are NaN.
    """
    vals = np.asarray(per_window, dtype=np.float32).copy()
    vals[~item.has_audio] = np.nan
    out, _ = overlap_average(item.n_sec, [int(s) for s in item.starts], list(vals))
    return out


def frames_from_seconds(sec_values: np.ndarray, n_frames: int, fps: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-second values (n_sec, D) -> frame grid (n_frames, D), filled from the nearest covered frame, and the
    (n_frames,) mask of frames a second with a value covers. A series with no value gives zeros."""
    ok = np.isfinite(sec_values).all(1)
    vals, mask = to_frames(TimeSeries(sec_values, SECOND_BASE, ok), n_frames, fps)
    vals = fill_nearest(vals, mask, inplace=True)  # to_frames' fresh float32 array: filled and cleaned in place
    return np.nan_to_num(vals, nan=0.0, copy=False), mask


# ---------------------------------------------------------------------------------------------------------
# The task
# ---------------------------------------------------------------------------------------------------------


class AudioTask:
    """Training windows (4 s, targets (4, 2)) and frame-level validation for :func:`vaest.training.fit`."""

    def __init__(self, train: list[AudioItem], val: list[AudioItem], filtering: bool = True,
                 augment: AugmentConfig | None = None, val_batch: int = 16, zero_pad: bool = False):
        self.train, self.val, self.filtering, self.augment, self.val_batch = train, val, filtering, augment, val_batch
        self.zero_pad = zero_pad  # reference model: zero-padded windows plus their sample mask
        self.index = [(i, int(k)) for i, it in enumerate(train) for k in np.flatnonzero(it.train_mask(filtering))]
        if not self.index:
            raise CorpusError("no audio window passes the training rules (labels on >= 2 of 4 s"
                              + (", mouth open >= 1 s, face coverage >= 0.8" if filtering else "")
                              + "); check the labels and the mouth/vad features, or train with --no-filter")

    @property
    def n_candidates(self) -> int:
        """Training windows that pass the label rule and have audio (before cross-modal filtering)."""
        return int(sum((it.label_ok & it.has_audio.any(1)).sum() for it in self.train))

    def train_batches(self, rng: np.random.Generator, batch_size: int) -> Iterable[dict[str, torch.Tensor]]:
        """Shuffled batches: ``feats`` (B, T, D) or ``wav`` (B, S), ``target`` (B, 4, 2), ``target_mask`` (B, 4);
        with ``zero_pad`` also ``mask`` (B, S) real samples."""
        order = rng.permutation(len(self.index))
        for i in range(0, len(order), batch_size):
            xs, ys, ms, sm = [], [], [], []
            key = "feats"
            for j in order[i : i + batch_size]:
                it_i, k = self.index[j]
                it = self.train[it_i]
                key = input_key(it)
                x = it.window_input(k, self.zero_pad)
                if key == "wav" and self.augment is not None:
                    x = augment_waveform(x, rng, self.augment)
                y = it.targets[k]
                xs.append(x)
                ys.append(np.nan_to_num(y))
                ms.append(np.isfinite(y).all(-1) & it.has_audio[k])
                sm.append(it.window_mask(k))
            batch = {key: torch.from_numpy(np.stack(xs).astype(np.float32)),
                     "target": torch.from_numpy(np.stack(ys).astype(np.float32)),
                     "target_mask": torch.from_numpy(np.stack(ms))}
            if self.zero_pad:
                batch["mask"] = torch.from_numpy(np.stack(sm))
            yield batch

    def predict_frames(self, model: nn.Module, item: AudioItem, device: str = "cpu") -> dict[str, np.ndarray]:
        """Per-frame ``va`` (n_frames, 2), ``emb`` (n_frames, E) and per-window ``win_va``/``win_emb``."""
        win_va, win_emb = predict_windows(model, item, device, self.val_batch)
        va, _ = frames_from_seconds(seconds_from_windows(item, win_va), item.n_frames, item.fps)
        out = {"va": va, "win_va": win_va, "win_emb": win_emb}
        if win_emb.shape[-1]:
            out["emb"], _ = frames_from_seconds(seconds_from_windows(item, win_emb), item.n_frames, item.fps)
        return out

    def validate(self, model: nn.Module, device: str) -> dict[str, float]:
        """CCC over all concatenated labelled validation frames."""
        pairs = []
        for it in self.val:
            if it.frame_labels is None:
                continue
            win_va, _ = predict_windows(model, it, device, self.val_batch)
            va, _ = frames_from_seconds(seconds_from_windows(it, win_va), it.n_frames, it.fps)
            pairs.append((va, it.frame_labels))
        return concat_frame_ccc(pairs)


# ---------------------------------------------------------------------------------------------------------
# Training and export (``vaest train audio``)
# ---------------------------------------------------------------------------------------------------------


@dataclass
class AudioTrainConfig:
    """Settings of ``vaest train audio`` (defaults: vaest's; ``--preset reference`` sets the official ones).

    ``feature_norm`` (offline encoders): ``video`` z-scores each feature dimension within each video before the
    model's global normalisation (removes channel and speaker offsets; on the synthetic corpus it lifts the
    validation arousal CCC of ``lmfb`` from ~0.15 to ~0.4), ``global`` uses the training-set statistics only.
    ``ema_warmup``: the EMA decay ramps up to ``ema`` (0.998) over the first updates, so that small corpora with
    few steps per epoch do not validate a copy of the initial weights.

    Reference-form options (all set by ``--preset reference``, see :data:`REFERENCE_AUDIO`):
    ``reference_model`` trains ``audio-wavlm-reference`` (zero-padded windows with their sample mask, masked
    normalisation, official pooling/head) instead of ``audio-wavlm``; ``ssl_checkpoint`` is the SER checkpoint
    whose ``ssl_model.*`` tensors are loaded over the backbone (file, folder or hub id); ``augment_form`` picks
    the augmentation chain (:class:`AugmentConfig`); ``plateau_head_only`` lowers only the head group's learning
    rate on a plateau; ``loss_min_valid`` switches a batch with fewer valid seconds to plain MSE.
    ``preset`` is the preset name the run was configured with (recorded in config.yaml and run.json).
    """

    encoder: str = "lmfb"
    backbone: str | None = None
    trainable_layers: int = 4
    filter: bool = True
    train_min_open_frac: float = 0.25
    min_coverage: float = 0.8
    fuse_min_open_s: float = 1.0
    speech_threshold: float = 0.5
    min_valid_seconds: int = 2
    augment: bool = True
    proj_dim: int = 128
    dropout: float = 0.0
    feature_norm: str = "video"
    epochs: int = 30
    batch_size: int = 8
    backbone_lr: float = 5e-6
    head_lr: float = 2e-4
    weight_decay: float = 0.01
    ema: float | None = 0.998
    ema_warmup: bool = True
    grad_clip: float = 1.0
    loss_weights: tuple[float, float] = (0.7, 0.3)
    mse_weight: float = 0.1
    plateau_patience: int = 5
    early_stop: int = 10
    max_batches_per_epoch: int | None = None
    seed: int = 0
    device: str = "cpu"
    reference_model: bool = False
    ssl_checkpoint: str | None = None
    augment_form: str = "vaest"
    plateau_factor: float = 0.1
    plateau_threshold: float = 1e-4
    plateau_head_only: bool = False
    plateau_min_lr: float = 0.0
    loss_min_valid: int = 0
    preset: str | None = None

    def filter_config(self) -> FilterConfig:
        return FilterConfig(self.filter, self.train_min_open_frac, self.min_coverage, self.fuse_min_open_s,
                            self.speech_threshold)

    def train_config(self):
        from vaest.training import TrainConfig

        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.head_lr,
                           weight_decay=self.weight_decay, plateau_patience=self.plateau_patience,
                           plateau_factor=self.plateau_factor, plateau_threshold=self.plateau_threshold,
                           plateau_groups=("head",) if self.plateau_head_only else None,
                           plateau_min_lr=self.plateau_min_lr, loss_min_valid=self.loss_min_valid,
                           early_stop=self.early_stop, grad_clip=self.grad_clip, ema=self.ema,
                           ema_warmup=self.ema_warmup, seed=self.seed,
                           device=self.device, max_batches_per_epoch=self.max_batches_per_epoch,
                           loss_weights=tuple(self.loss_weights), mse_weight=self.mse_weight)


def load_items(store: FeatureStore, corpus: Corpus, cfg: AudioTrainConfig) -> tuple[list[AudioItem], list[Video]]:
    """Items of every video with stored audio features, and the videos without them."""
    key = audio_key(cfg.encoder)
    items, missing = [], []
    filt = cfg.filter_config()
    no_mouth = 0
    for v in track(corpus.videos, "load audio features"):
        if v.media is None or not store.has(key, v.id):
            missing.append(v)
            continue
        it = load_item(store, v, cfg.encoder, filt, cfg.min_valid_seconds, cfg.feature_norm)
        if it.stats.source != "mouth" and not v.audio_only:
            no_mouth += 1
        items.append(it)
    if no_mouth:
        log.warning("%d video(s) have no 'mouth' record in %s: their windows are filtered by voice activity "
                    "instead of mouth opening (run `vaest extract mouth` for the reference rule)", no_mouth, store.root)
    if missing:
        log.warning("%d video(s) have no '%s' features in %s (e.g. %s); their predictions are masked",
                    len(missing), key, store.root, missing[0].id)
    return items, missing


def build_model(cfg: AudioTrainConfig, items: list[AudioItem], store: FeatureStore) -> nn.Module:
    """The registered model for the encoder: ``audio-wavlm`` on waveforms, ``audio-frames`` on cached frames
    (with input normalisation from the training items)."""
    from vaest.models import create_model
    from vaest.training import seed_everything

    seed_everything(cfg.seed)  # same seed, same initial weights: a rerun reproduces the run
    if cfg.encoder == "wavlm":
        backbone = cfg.backbone
        if backbone is None:
            for it in items:
                backbone = store.load(audio_key("wavlm"), it.id).meta.get("model")
                break
        if not backbone:
            raise FeatureError("the wavlm encoder needs --backbone PATH_OR_ID (a WavLM/wav2vec2/HuBERT checkpoint)")
        if cfg.reference_model:
            return create_model("audio-wavlm-reference", backbone=backbone, ssl_checkpoint=cfg.ssl_checkpoint,
                                trainable_layers=cfg.trainable_layers, att_dropout=cfg.dropout,
                                head_dropout=cfg.dropout)
        return create_model("audio-wavlm", backbone=backbone, trainable_layers=cfg.trainable_layers,
                            dropout=cfg.dropout)
    dim = next(it.x.shape[1] for it in items)
    model = create_model("audio-frames", in_dim=int(dim), proj_dim=cfg.proj_dim, dropout=cfg.dropout)
    from vaest.metrics import RunningMoments

    train = [it.x for it in items if it.split == "train" and len(it.x)] or [it.x for it in items if len(it.x)]
    mom = RunningMoments()  # one float64 pass, video by video: no concatenated copy of the corpus
    for x in train:
        mom.add(x)
    model.set_normalization(mom.mean, mom.std())
    return model


def apply_item(model: nn.Module, it: AudioItem, filtering: bool, encoder: str, device: str = "cpu"
               ) -> tuple[FeatureRecord, FeatureRecord]:
    """A trained audio model applied to one item, in memory: the per-frame record (values (n_frames, 2) VA,
    mask = frames in a usable window with audio, extras ``emb`` (n_frames, E) and ``reliability`` (n_frames,))
    and the per-window token record (values (n_windows, 4, E), mask = windows fusion may use, extras per-second
    ``va``, ``has_audio`` and the window statistics). :func:`export_run` writes exactly these two records."""
    win_va, win_emb = predict_windows(model, it, device)
    va, covered = frames_from_seconds(seconds_from_windows(it, win_va), it.n_frames, it.fps)
    emb, _ = frames_from_seconds(seconds_from_windows(it, win_emb), it.n_frames, it.fps)
    tok = it.token_mask(filtering)
    _, fmask = to_frames(TimeSeries(np.ones(it.n_windows, np.float32), WINDOW_BASE, tok), it.n_frames, it.fps)
    rel, rmask = to_frames(TimeSeries(it.stats.reliability.astype(np.float32), WINDOW_BASE, it.has_audio.any(1)),
                           it.n_frames, it.fps)
    rel = np.where(rmask, rel[:, 0], 0.0).astype(np.float32)
    meta = {"modality": "audio", "encoder": encoder, "source": it.stats.source, "filter": filtering}
    frames = FeatureRecord(TimeSeries(np.asarray(va, np.float32), TimeBase.frames(it.fps), fmask & covered),
                           {"emb": np.asarray(emb, np.float32), "reliability": rel}, meta)
    extras = {"va": win_va.astype(np.float32), "has_audio": it.has_audio, "label_ok": it.label_ok,
              "train_ok": it.train_mask(filtering), **{k: np.asarray(v) for k, v in it.stats.as_arrays().items()}}
    tokens = FeatureRecord(TimeSeries(win_emb.astype(np.float32), WINDOW_BASE, tok), extras,
                           {**meta, "n_frames": it.n_frames, "fps": it.fps, "n_sec": it.n_sec})
    return frames, tokens


def export_run(model: nn.Module, items: list[AudioItem], missing: list[Video], store: FeatureStore,
               run: Path, cfg: AudioTrainConfig, device: str = "cpu") -> None:
    """Write per-frame predictions of every video (``save_predictions``) and the per-window audio tokens
    (store key ``audio-tokens`` in the run folder: values (n_windows, 4, 256), mask = usable windows, time base
    hop 2 s / win 4 s, extras: per-second ``va``, ``has_audio`` and the window statistics)."""
    from vaest.inference import save_predictions

    run_store = FeatureStore(run)
    for it in track(items, "export audio predictions"):
        frames, tokens = apply_item(model, it, cfg.filter, cfg.encoder, device)
        save_predictions(run, it.id, frames.values, it.fps, emb=frames.extras.get("emb"), mask=frames.mask,
                         extras={"reliability": frames.extras["reliability"]}, meta=frames.meta)
        run_store.save(TOKENS_KEY, it.id, tokens)
    for v in missing:
        n = v.n_label_frames if v.label_path is not None else None
        got = _record_grid(store, v)
        if got is not None:
            n, fps = got
        else:
            fps = fps_or_default(v.fps)
        if not n:
            log.warning("%s: no audio features and no frame count; no prediction written", v.id)
            continue
        emb_dim = int(getattr(model.config, "emb_dim", 256))
        save_predictions(run, v.id, np.zeros((n, 2), np.float32), fps, emb=np.zeros((n, emb_dim), np.float32),
                         mask=np.zeros(n, bool), extras={"reliability": np.zeros(n, np.float32)},
                         meta={"modality": "audio", "missing": True})


def _reliable_ccc(run: Path, corpus: Corpus) -> dict[str, float]:
    from vaest.inference import load_predictions
    from vaest.metrics import va_ccc

    preds, labs = [], []
    for v in corpus.split("val"):
        if not v.has_labels:
            continue
        try:
            rec = load_predictions(run, v.id)
        except FeatureError:
            continue
        lab = v.labels_for(len(rec.values))
        preds.append(rec.values[rec.mask])
        labs.append(lab[rec.mask])
    if not preds:
        return {"valence": math.nan, "arousal": math.nan, "mean": math.nan, "frames": 0}
    p, y = np.concatenate(preds), np.concatenate(labs)
    out: dict[str, float] = va_ccc(p, y)
    out["frames"] = int(np.isfinite(y).all(1).sum())
    return out


def train_audio(features: str | Path, corpus: str | Path | Corpus, out: str | Path,
                cfg: AudioTrainConfig | None = None) -> dict[str, Any]:
    """Train the audio model and write the run folder (model, predictions, tokens, metrics, run info).

    Returns the validation metrics written to ``metrics.json``: CCC over all validation frames (``valence``,
    ``arousal``, ``mean``), CCC over the frames of usable windows (``reliable``) and the share of training
    windows kept by the filter.
    """
    from vaest.config import write_run_info
    from vaest.inference import evaluate_predictions, write_run_json
    from vaest.io import atomic_write_json
    from vaest.models import load_checkpoint
    from vaest.models.audio import audio_param_groups
    from vaest.training import fit

    cfg = cfg or AudioTrainConfig()
    run = Path(out)
    run.mkdir(parents=True, exist_ok=True)
    store = FeatureStore(features)
    corp = load_corpus(corpus)
    items, missing = load_items(store, corp, cfg)
    train = [it for it in items if it.split == "train" and it.frame_labels is not None]
    val = [it for it in items if it.split == "val" and it.frame_labels is not None]
    if not train:
        raise CorpusError(f"{corpus}: no labelled training video has '{audio_key(cfg.encoder)}' features in {features}"
                          f" (run `vaest extract audio --encoder {cfg.encoder}` first)")
    if not val:
        raise CorpusError(f"{corpus}: no labelled validation video with audio features; validation selects the model")
    augment = None
    if cfg.augment and cfg.encoder == "wavlm":
        augment = AugmentConfig.reference() if cfg.augment_form == "reference" else AugmentConfig()
    task = AudioTask(train, val, cfg.filter, augment, zero_pad=cfg.reference_model and cfg.encoder == "wavlm")
    kept, cand = len(task.index), task.n_candidates
    log.info("audio windows: %d of %d labelled training windows kept (%.1f%%)%s", kept, cand,
             100.0 * kept / max(cand, 1), "" if cfg.filter else " (filter off)")
    model = build_model(cfg, items, store)
    groups = audio_param_groups(model, cfg.backbone_lr, cfg.head_lr)
    write_run_info(run, "vaest train audio", cfg)
    res = fit(model, task, cfg.train_config(), run, param_groups=groups,
              extra={"encoder": cfg.encoder, "features": str(features), "filter": cfg.filter,
                     "feature_norm": cfg.feature_norm})
    best, _ = load_checkpoint(run / "model.pt", cfg.device)
    export_run(best, items, missing, store, run, cfg, cfg.device)
    from vaest.presets import get_preset, preset_record

    write_run_json(run, modality="audio", corpus=str(corp.location), features=str(features), encoder=cfg.encoder,
                   model=getattr(best, "registry_name", ""), tokens=TOKENS_KEY,
                   preset=preset_record(get_preset("audio", cfg.preset)))
    metrics: dict[str, Any] = dict(evaluate_predictions(run, corp, "val"))
    metrics["reliable"] = _reliable_ccc(run, corp)
    metrics.update({"train_windows": cand, "train_windows_kept": kept, "kept_share": kept / max(cand, 1),
                    "filter": cfg.filter, "encoder": cfg.encoder, "best_epoch": res.best_epoch,
                    "train_seconds": res.seconds})
    atomic_write_json(run / "metrics.json", metrics)
    log.info("audio validation CCC: valence %.3f arousal %.3f mean %.3f (usable-window frames: mean %.3f)",
             metrics["valence"], metrics["arousal"], metrics["mean"], metrics["reliable"]["mean"])
    return metrics


def config_from(file_cfg: dict[str, Any] | None, flags: dict[str, Any] | None) -> AudioTrainConfig:
    """Build the config: defaults < preset (``preset`` key of the flags or of the file) < YAML mapping < flags."""
    from vaest.config import build
    from vaest.presets import resolve_preset

    p, file_cfg, flags = resolve_preset("audio", file_cfg, flags)
    return build(AudioTrainConfig, p.values if p else None, file_cfg, flags, {"preset": p.name if p else None})


_CFG = "src_audio_and_fusion/configs/cfg_test_w_audio.yaml"
_S2S = "src_audio_and_fusion/configs/cfg_va_s2s.yaml"
_MODEL = "src_audio_and_fusion/src/audio/models/wavlm_s2s_model.py"
_LOSS = "src_audio_and_fusion/src/losses/ccc_mse_loss.py"
_SCHED = "src_audio_and_fusion/src/schedulers/named_reduceonplateau_scheduler.py"
_DATA = "src_audio_and_fusion/src/audio/data/abaw_va_dataset.py"

REFERENCE_AUDIO: dict[str, tuple[Any, str]] = {
    "encoder": ("wavlm", f"{_CFG} model.name wavlm_s2s_model_v1"),
    "backbone": ("microsoft/wavlm-large", f"{_MODEL} AutoModel.from_pretrained"),
    "ssl_checkpoint": ("3loi/SER-Odyssey-Baseline-WavLM-Multi-Attributes", f"{_CFG} model.params.model_name"),
    "reference_model": (True, f"{_MODEL} (attn_stats pooling, masked normalisation, zero padding + mask)"),
    "trainable_layers": (4, f"{_CFG} unfreeze_last_n_layers"),
    "dropout": (0.2, f"{_CFG} head_dropout, attn_dropout"),
    "epochs": (50, f"{_CFG} train.params.epochs"),
    "batch_size": (8, f"{_CFG} data.params.batch_size"),
    "backbone_lr": (5e-6, f"{_CFG} optimizer.params.lr_backbone"),
    "head_lr": (2e-4, f"{_CFG} optimizer.params.lr_head"),
    "weight_decay": (0.01, f"{_CFG} optimizer.params.weight_decay"),
    "grad_clip": (1.0, f"{_CFG} train.params.grad_clip_norm"),
    "ema": (0.998, f"{_S2S} callbacks ema_callback.decay"),
    "ema_warmup": (False, f"{_S2S} ema_callback (constant decay)"),
    "loss_weights": ((0.7, 0.3), f"{_CFG} loss.params v_weight, a_weight"),
    "mse_weight": (0.1, f"{_CFG} loss.params.mse_weight"),
    "loss_min_valid": (4, f"{_LOSS} CCCMSELoss min_valid"),
    "plateau_factor": (0.5, f"{_CFG} scheduler.params.factor"),
    "plateau_patience": (2, f"{_CFG} scheduler.params.patience"),
    "plateau_threshold": (5e-4, f"{_CFG} scheduler.params.threshold"),
    "plateau_min_lr": (1e-7, f"{_CFG} scheduler.params.min_lr"),
    "plateau_head_only": (True, f"{_CFG} scheduler.params.target_group_names; {_SCHED}"),
    "early_stop": (6, f"{_S2S} early_stopping_callback.patience"),
    "augment": (True, f"{_S2S} data.params.augment"),
    "augment_form": ("reference", f"{_S2S} augment_params; {_DATA} _apply_augmentations"),
}


def _register_presets() -> None:
    from vaest.presets import register_preset

    register_preset("audio", "reference", {k: v for k, (v, _) in REFERENCE_AUDIO.items()},
                    {k: src for k, (_, src) in REFERENCE_AUDIO.items()},
                    "the official Team RAS audio model: WavLM-Large + SER-Odyssey ssl_model weights, 4 s windows")
    register_preset("audio", "vaest", {"reference_model": False, "augment_form": "vaest", "ema_warmup": True,
                                       "feature_norm": "video", "plateau_head_only": False},
                    {k: "vaest (docs/reference-audio-fusion.md)" for k in
                     ("reference_model", "augment_form", "ema_warmup", "feature_norm", "plateau_head_only")},
                    "vaest's audio settings (task defaults, spelled out)")


_register_presets()


__all__ = [
    "AudioItem", "AudioTask", "AudioTrainConfig", "AugmentConfig", "add_noise", "add_reverb", "apply_gain",
    "augment_waveform", "band_filter", "export_run", "frames_from_seconds", "label_rule", "load_item",
    "predict_windows", "second_targets", "seconds_from_windows", "train_audio", "window_targets",
]
