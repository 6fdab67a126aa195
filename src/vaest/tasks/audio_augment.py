"""Training-time waveform augmentation of the audio task (numpy, seeded by the caller's generator): noise,
gain, band filtering and reverb, in vaest's order or the official one (:class:`AugmentConfig`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from vaest.features.audio import AUDIO_SR


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
