"""Zero-shot valence/arousal: estimates without a trained vaest model, for a fresh machine.

- face: :func:`zero_shot_face` maps a frame encoder's expression probabilities onto the circumplex;
- voice: :func:`zero_shot_audio` (see its docstring for what it measures and what it does not).

The :class:`vaest.predictor.Predictor` uses these when it is given no model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from vaest.features.face import zero_shot_va


def zero_shot_face(probs: np.ndarray, classes: Sequence[str]) -> np.ndarray:
    """(n, C) expression probabilities -> (n, 2) valence/arousal (see :func:`vaest.features.face.zero_shot_va`)."""
    return zero_shot_va(probs, classes)


# ---------------------------------------------------------------------------------------------------------
# Voice: arousal from gain-independent prosodic and spectral-tilt cues
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AudioCue:
    """One arousal cue: ``sign * (value - centre) / scale`` is its standard score (0 = typical speech)."""

    name: str
    centre: float
    scale: float
    sign: float


# Cues the speech literature ties to arousal (Banse & Scherer 1996; Juslin & Laukka 2003; Eyben et al. 2016,
# eGeMAPS) that do not change with recording gain: spectral tilt of voiced speech (alpha ratio up, Hammarberg
# index down: more energy above 1 kHz in tense, loud voices) and loudness dynamics (coefficient of variation of
# openSMILE loudness, unchanged when the waveform is scaled). Centre and scale are round values of the typical
# range of each cue in conversational speech (alpha ratio about -16..0 dB, Hammarberg index about 5..25 dB,
# loudness CV about 0.5..1.3); they are NOT fitted to any corpus (see docs/real-data.md). F0 level is left out:
# without a reference for the speaker it mostly measures sex and age, not arousal.
AUDIO_CUES: tuple[AudioCue, ...] = (
    AudioCue("alpha_ratio", centre=-8.0, scale=4.0, sign=+1.0),
    AudioCue("hammarberg", centre=15.0, scale=4.0, sign=-1.0),
    AudioCue("loudness_cv", centre=0.9, scale=0.2, sign=+1.0),
)
AUDIO_GAIN = 0.5  # arousal = tanh(AUDIO_GAIN x mean cue score): a mean score of +-2 gives +-0.76
AUDIO_WINDOW_S = 3.0  # cues are measured over a centred window of this length around each output frame


def audio_cues(wav: np.ndarray, sr: int = 16000, fps: float = 30.0,
               window_s: float = AUDIO_WINDOW_S) -> tuple[np.ndarray, list[str]]:
    """Per-frame arousal cues on a ``fps`` grid: (n, 3) alpha ratio, Hammarberg index (both over voiced
    10 ms frames) and loudness coefficient of variation (over active frames), each measured over a centred
    ``window_s`` window; NaN where the window holds no voiced / active speech.

    n = ceil(len(wav) / (sr / fps)) (frame k covers [k / fps, (k + 1) / fps)).
    """
    from vaest.features.audio import egemaps_lld

    wav = np.asarray(wav, np.float32).reshape(-1)
    hop = sr / fps
    n = max(1, int(math.ceil(len(wav) / hop)))
    names = [c.name for c in AUDIO_CUES]
    out = np.full((n, len(names)), np.nan, np.float32)
    if len(wav) == 0 or not np.any(wav):
        return out, names
    # openSMILE's voicing decision has absolute thresholds: bring the loud part of the file (95th percentile of
    # 20 ms RMS) to -20 dBFS first, so that the recording gain changes nothing
    k = max(1, int(0.02 * sr))
    frames = wav[: len(wav) // k * k].reshape(-1, k) if len(wav) >= k else wav[None]
    level = float(np.percentile(np.sqrt(np.mean(frames.astype(np.float64) ** 2, 1)), 95))
    if level > 0:
        wav = (wav * (0.1 / level)).astype(np.float32)
    vals, base, lld = egemaps_lld(wav, sr)
    col = {k: i for i, k in enumerate(lld)}
    loud = vals[:, col["Loudness_sma3"]].astype(np.float64)
    f0 = vals[:, col["F0semitoneFrom27.5Hz_sma3nz"]]
    # active: louder than 5 % of the file's loud (95th percentile) level: a ratio, so gain does not move it
    active = loud > 0.05 * max(float(np.percentile(loud, 95)), 1e-12)
    voiced = (f0 > 0) & active
    alpha = np.where(voiced, vals[:, col["alphaRatio_sma3"]], 0.0)
    hamm = np.where(voiced, vals[:, col["hammarbergIndex_sma3"]], 0.0)
    la = np.where(active, loud, 0.0)

    def csum(x: np.ndarray) -> np.ndarray:
        return np.concatenate([[0.0], np.cumsum(x, dtype=np.float64)])

    cv, ca, ch, cn, cl, cl2 = map(csum, (voiced.astype(np.float64), alpha, hamm, active.astype(np.float64), la, la * la))
    centres = (np.arange(n) + 0.5) / fps
    t_lld = base.start + (np.arange(len(loud)) + 0.5) * base.hop
    lo = np.searchsorted(t_lld, centres - window_s / 2)
    hi = np.searchsorted(t_lld, centres + window_s / 2)
    nv, na = cv[hi] - cv[lo], cn[hi] - cn[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        out[:, 0] = np.where(nv >= 10, (ca[hi] - ca[lo]) / nv, np.nan)
        out[:, 1] = np.where(nv >= 10, (ch[hi] - ch[lo]) / nv, np.nan)
        mean = (cl[hi] - cl[lo]) / na
        var = np.maximum((cl2[hi] - cl2[lo]) / na - mean**2, 0.0)
        out[:, 2] = np.where(na >= 10, np.sqrt(var) / np.maximum(mean, 1e-12), np.nan)
    return out, names


def zero_shot_audio(wav: np.ndarray, sr: int = 16000, fps: float = 30.0) -> np.ndarray:
    """Zero-shot arousal of speech on a ``fps`` grid: (n, 2) with valence NaN (not estimated: no cue tested here
    ranks valence), arousal NaN where a frame's window holds no speech.

    Arousal = tanh(:data:`AUDIO_GAIN` x mean standard score of the available :data:`AUDIO_CUES`), from
    :func:`audio_cues`: spectral tilt of the voice and loudness dynamics, all independent of recording gain
    (a calm clip recorded loud is not made aroused, unlike a loudness level would). Frame k covers
    [k / fps, (k + 1) / fps); n = ceil(len(wav) / (sr / fps)).
    """
    cues, _ = audio_cues(wav, sr, fps)
    z = np.stack([c.sign * (cues[:, i] - c.centre) / c.scale for i, c in enumerate(AUDIO_CUES)], 1)
    ok = np.isfinite(z)
    score = np.where(ok, z, 0.0).sum(1) / np.maximum(ok.sum(1), 1)
    out = np.full((len(cues), 2), np.nan, np.float32)
    out[:, 1] = np.where(ok.any(1), np.tanh(AUDIO_GAIN * score), np.nan)
    return out
