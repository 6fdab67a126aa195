"""Synthetic Aff-Wild2-like corpus whose media really carry their valence/arousal labels.

Why: the real Aff-Wild2 videos cannot ship with vaest, yet every stage (face, behavior, voice, fusion,
training, submission) needs end-to-end data to be developed, tested and benchmarked offline. This module
writes a small corpus in the ABAW layout whose labels are smooth random processes with the statistics of
the real Aff-Wild2 train labels, and whose video and audio are rendered from those labels:

* face: the public-domain photo ``skimage.data.astronaut()`` warped by smooth displacement fields
  (mouth corners and brows follow valence, eye opening and head-motion energy follow arousal, the jaw
  opens with the voice's syllables);
* voice: espeak-ng utterances whose pitch, loudness and rate follow arousal and whose spectral tilt
  (brightness) follows valence, placed in speaking turns, mixed with background noise;
* behavior: a drawn torso and two hands whose posture follows slow valence and whose gesture energy
  follows arousal during gesture bouts.

No modality carries both dimensions all the time (the face is hidden for stretches, the voice is silent
between turns, the hands rest out of view between gesture bouts, posture only follows slow valence).

Annotation reaction lag: the media are rendered from each person's *affect* trajectory, but the label files
hold that trajectory delayed by a per-video lag ``L`` seconds, ``label[t] = affect[t - L]`` (the first ``L``
seconds repeat ``affect[0]``). Why: human raters of continuous valence/arousal react late; published
estimates are of the order of 1-3 s (Mariooryad & Busso, IEEE TAC 2015), and the AVEC baselines shift
features by a few seconds to compensate. Without a lag, the face of frame ``t`` alone explains the label of
frame ``t`` and a temporal model has nothing to gain over a per-frame one; with it, a model must look back
about ``L`` seconds, as on real data. ``annotation_lag`` (seconds, default 1.0; 0 = labels equal the
rendered affect) sets the mean; each video draws ``L`` uniformly in [0.7, 1.3] x the mean from a random
stream of its own, so changing the lag changes only the label files and the truth's label fields, never
the media or any other random draw. ``L`` is recorded per video in ``synth.json``; the truth keeps the
undelayed trajectory as ``affect_valence`` / ``affect_arousal`` (``valence`` / ``arousal`` are the labels).

Layout written below ``OUT``::

    videos/<name>.mp4                                        H.264 yuv420p + AAC mono 16 kHz
    annotations/VA_Estimation_Challenge/{Train_Set,Validation_Set[,Test_Set]}/<label>.txt
    cropped_aligned/<label>/%05d.jpg                         112x112 aligned crops, 1-based, visible faces only
    synth_truth/<label>.npz                                  per-frame labels, rendered affect and latent signals
    videos_fps.csv                                           ``video_name,fps`` as the organisers ship it
    synth.json                                               settings, seed and per-video facts

``<label>`` is the video name, or ``<name>_left`` / ``<name>_right`` for the two-person video.

The module stays whole although it is longer than the project's ~600-line guide: it is one self-contained
generator (the face, voice and behavior renderers all draw from the same per-video latent trajectories and
random streams), and the rest of vaest uses it only through :func:`synthesize`.
"""

from __future__ import annotations

import logging
import math
import multiprocessing as mp
import os
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from vaest.errors import VaestError

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------------
# Statistics measured once on the 356 real Aff-Wild2 train label files of the ABAW VA challenge
# (1,682,057 frames; autocorrelations per video around the video mean, averaged over videos; lags at
# 30 fps). They are hard-coded here: the label files themselves are not part of vaest.
# ---------------------------------------------------------------------------------------------------------
REAL_LABEL_STATS: dict[str, float] = {
    "valence_mean": 0.074,  # pooled over frames
    "valence_std": 0.402,
    "arousal_mean": 0.297,
    "arousal_std": 0.298,
    "valence_video_mean_std": 0.300,  # spread of per-video means
    "arousal_video_mean_std": 0.197,
    "valence_within_std": 0.234,  # mean of per-video standard deviations
    "arousal_within_std": 0.224,
    "valence_autocorr_1s": 0.755,
    "arousal_autocorr_1s": 0.729,
    "valence_autocorr_5s": 0.344,
    "arousal_autocorr_5s": 0.341,
    "valence_autocorr_10s": 0.205,
    "arousal_autocorr_10s": 0.192,
    "va_corr_pooled": 0.029,  # correlation of V and A over all frames
    "va_corr_within_mean": 0.279,  # mean within-video correlation
    "invalid_share": 0.0013,  # share of -5 frames
    "invalid_run_median_frames": 287.0,  # median length of a -5 run (~9.6 s at 30 fps)
    "videos_with_invalid_share": 3 / 356,
    "video_frames_median": 3899.0,
    "fps_median": 29.97,
}

# Trajectory model fitted to the statistics above (sum of a fast and a slow Ornstein-Uhlenbeck process,
# lightly smoothed, around a per-video mean; fitted on 3,900-frame series at 30 fps).
_TAU_FAST_S = 1.9
_TAU_SLOW_S = 32.0
_FAST_WEIGHT = 0.41  # share of the within-video variance in the fast process
_TAU_SMOOTH_S = 0.056
_MEAN_CENTER = (0.065, 0.29)  # centre of the per-video means (valence, arousal)
_MEAN_SPREAD = (0.30, 0.135)  # sd of the per-video means
_MEAN_CORR = -0.15
_WITHIN_SCALE = (0.25, 0.24)  # median within-video process sd
_WITHIN_SCALE_LOGSD = 0.4
_WITHIN_CORR = 0.22

# Landmarks of skimage.data.astronaut() (512x512), measured with MediaPipe FaceMesh (source pixels).
_ASTRO_CROP = (158, 38, 292, 206)  # x0, y0, x1, y1 of the head crop
_ASTRO_FACE_WIDTH = 91.7  # cheek to cheek (landmarks 234-454)
_ASTRO_FACE_CENTER = (225.0, 124.0)
_ASTRO_FACE_BOX = (179.0, 71.2, 270.7, 177.4)
_ASTRO_HEAD_ELLIPSE = ((225.0, 120.0), (62.0, 84.0))  # centre, semi-axes of the head mask
_LM = {
    "mouth_l": (201.8, 139.2),
    "mouth_r": (245.0, 141.0),
    "lip_upper_in": (223.5, 143.2),
    "lip_lower_in": (223.0, 150.1),
    "chin": (221.3, 177.4),
    "brow_mid_l": (198.8, 86.9),
    "brow_mid_r": (253.0, 90.7),
    "brow_in_l": (215.9, 89.8),
    "brow_in_r": (235.8, 91.5),
    "eye_l": (203.1, 101.0),
    "eye_r": (247.5, 103.2),
}
# inner lip contour (FaceMesh 78 ... 308 along the upper lip, back along the lower lip)
_INNER_LIP = (
    (203.3, 139.9), (205.9, 140.1), (209.1, 140.7), (212.9, 141.5), (217.6, 142.4), (223.5, 143.2),
    (229.4, 142.9), (234.1, 142.3), (237.8, 141.8), (240.9, 141.6), (243.4, 141.5), (239.9, 144.6),
    (237.1, 146.6), (233.3, 148.5), (228.6, 149.7), (223.0, 150.1), (217.3, 149.3), (212.6, 147.7),
    (209.0, 145.5), (206.4, 143.2),
)
_MOUTH_CAVITY_RGB = (46, 18, 22)

# Rendering constants (fractions of the face width unless stated otherwise).
_JAW_MAX = 0.15  # lower lip + chin drop at mouth_open = 1
_CORNER_UP = 0.075
_CORNER_OUT = 0.035
_BROW_UP = 0.06
_FURROW = 0.035
_EYE_GAIN = 0.5  # vertical eye magnification at |arousal| = 1
_SINGLE_SIZE = (480, 360)
_DUAL_SIZE = (640, 360)
_SINGLE_FACE_W = 140.0  # pixels in the frame
_DUAL_FACE_W = 125.0
_CROP_SIZE = 112
_AUDIO_RATE = 16000
_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")

_VOICES = ("en+m3", "en-us+f2", "en+m1", "en+f4", "en-us+m7", "en+f3", "en+m5", "en-us+f5")
_WORDS = (
    "the a we they you people time morning evening house river garden window yellow little really "
    "never always maybe today tomorrow going coming running waiting looking thinking after before "
    "under over about because would could should might table paper music story letter number "
    "water money family children friend mother father brother sister country city station market "
    "open close happy quiet heavy simple early later almost every other another better little "
    "bring take make give find keep hold tell show call leave begin follow remember wonder "
    "minute hour week summer winter yesterday together between around along behind inside outside "
    "good bad old new long short small large warm cold bright dark fast slow easy hard "
    "talk walk sing play read write listen watch carry travel visit answer question moment"
).split()


# ---------------------------------------------------------------------------------------------------------
# Label trajectories and invalid runs
# ---------------------------------------------------------------------------------------------------------
def _ou(noise: np.ndarray, tau_frames: float, x0: np.ndarray) -> np.ndarray:
    """Unit-variance Ornstein-Uhlenbeck process driven by ``noise`` (n, d), started at ``x0`` (d,)."""
    from scipy.signal import lfilter

    phi = math.exp(-1.0 / max(tau_frames, 1e-6))
    return lfilter([math.sqrt(1.0 - phi * phi)], [1.0, -phi], noise, axis=0, zi=(phi * x0)[None, :])[0]


def _correlated_normal(rng: np.random.Generator, n: int, rho: float) -> np.ndarray:
    """(n, 2) standard normal pairs with correlation ``rho``."""
    e = rng.standard_normal((n, 2))
    e[:, 1] = rho * e[:, 0] + math.sqrt(1.0 - rho * rho) * e[:, 1]
    return e


def sample_trajectory(n_frames: int, fps: float, rng: np.random.Generator) -> np.ndarray:
    """One video's smooth valence/arousal trajectory with the statistics of real Aff-Wild2 labels.

    A per-video mean plus a fast (~1.9 s) and a slow (~32 s) Ornstein-Uhlenbeck process, lightly
    smoothed and clipped to [-1, 1]; constants were fitted to ``REAL_LABEL_STATS``.

    Returns:
        float32 array (n_frames, 2) of (valence, arousal), no invalid frames.
    """
    from scipy.signal import lfilter

    n = int(n_frames)
    if n <= 0:
        return np.zeros((0, 2), np.float32)
    mean_cov = np.array(
        [
            [_MEAN_SPREAD[0] ** 2, _MEAN_CORR * _MEAN_SPREAD[0] * _MEAN_SPREAD[1]],
            [_MEAN_CORR * _MEAN_SPREAD[0] * _MEAN_SPREAD[1], _MEAN_SPREAD[1] ** 2],
        ]
    )
    mu = rng.multivariate_normal(np.asarray(_MEAN_CENTER), mean_cov)
    scale_noise = rng.standard_normal()  # shared: within-video spreads of V and A are correlated (~0.66)
    scale = np.asarray(_WITHIN_SCALE) * np.exp(_WITHIN_SCALE_LOGSD * (0.8 * scale_noise + 0.6 * rng.standard_normal(2)))
    fast = _ou(_correlated_normal(rng, n, _WITHIN_CORR), _TAU_FAST_S * fps, _correlated_normal(rng, 1, _WITHIN_CORR)[0])
    slow = _ou(_correlated_normal(rng, n, _WITHIN_CORR), _TAU_SLOW_S * fps, _correlated_normal(rng, 1, _WITHIN_CORR)[0])
    z = math.sqrt(_FAST_WEIGHT) * fast + math.sqrt(1.0 - _FAST_WEIGHT) * slow
    phi = math.exp(-1.0 / max(_TAU_SMOOTH_S * fps, 1e-6))
    z = lfilter([1.0 - phi], [1.0, -phi], z, axis=0, zi=(phi * z[0])[None, :])[0]
    va = mu[None, :] + scale[None, :] * z
    return np.clip(va, -1.0, 1.0).astype(np.float32)


def sample_invalid_mask(n_frames: int, fps: float, rng: np.random.Generator, force: bool = False) -> np.ndarray:
    """Runs of invalid (``-5``) label frames, independent of what the media show.

    Real Aff-Wild2 has few but long runs (median ~9.6 s); here a video gets 1-2 runs with probability
    0.35 (always when ``force``), each lasting a log-normal time around that median, capped at a quarter
    of the video so short synthetic videos keep most of their labels.

    Returns:
        bool array (n_frames,), True = invalid.
    """
    n = int(n_frames)
    mask = np.zeros(n, bool)
    if n < 8 or not (force or rng.random() < 0.35):
        return mask
    n_runs = 1 + int(rng.random() < 0.3)
    median = REAL_LABEL_STATS["invalid_run_median_frames"] / 30.0 * fps
    for _ in range(n_runs):
        length = median * math.exp(0.5 * rng.standard_normal())
        length = int(np.clip(length, max(2, 0.5 * fps), max(2, n // 4)))
        start = int(rng.integers(0, max(1, n - length)))
        mask[start : start + length] = True
    return mask


# ---------------------------------------------------------------------------------------------------------
# Annotation reaction lag
# ---------------------------------------------------------------------------------------------------------
_LAG_SPREAD = (0.7, 1.3)  # a video's lag is uniform in this range times the mean lag
_LAG_STREAM = 4  # random stream of a video reserved for its lag (0-3 draw the media)


def draw_annotation_lag(mean_s: float, seed: int, index: int) -> float:
    """Reaction lag (seconds) of the raters of video ``index``: uniform in [0.7, 1.3] x ``mean_s``.

    Drawn from a stream of its own (``[seed, index, 4]``), so it never shifts the media's random draws;
    ``mean_s == 0`` gives 0 (labels equal the rendered affect).
    """
    if mean_s <= 0.0:
        return 0.0
    return float(mean_s * np.random.default_rng([int(seed), int(index), _LAG_STREAM]).uniform(*_LAG_SPREAD))


def lag_frames(lag_s: float, fps: float) -> int:
    """Whole frames of a lag of ``lag_s`` seconds at ``fps`` (rounded)."""
    return int(round(lag_s * fps))


def delay_labels(affect: np.ndarray, shift: int) -> np.ndarray:
    """Labels as late raters write them: ``out[t] = affect[t - shift]``, ``affect[0]`` for ``t < shift``.

    Args:
        affect: (n, ...) per-frame trajectory the media were rendered from.
        shift: lag in frames (>= 0).

    Returns:
        array of the same shape and dtype.
    """
    if shift < 0:
        raise ValueError(f"lag must be >= 0 frames, got {shift}")
    affect = np.asarray(affect)
    if shift == 0 or len(affect) == 0:
        return affect.copy()
    idx = np.maximum(np.arange(len(affect)) - shift, 0)
    return affect[idx]


def annotation_from_affect(affect: np.ndarray, invalid: np.ndarray, shift: int) -> np.ndarray:
    """The values a label file holds: ``affect`` (n, 2) delayed by ``shift`` frames, NaN (``-5``) where
    ``invalid`` (n,) bool; float64 (n, 2). Invalid runs live on the label timeline and are not shifted."""
    va = delay_labels(np.asarray(affect), shift).astype(np.float64)
    va[np.asarray(invalid, bool)] = np.nan
    return va


# ---------------------------------------------------------------------------------------------------------
# Small signal helpers
# ---------------------------------------------------------------------------------------------------------
def _smooth_noise(rng: np.random.Generator, n: int, tau_frames: float, dims: int = 1) -> np.ndarray:
    """Unit-variance smooth noise (n, dims): an OU process started in its stationary law."""
    return _ou(rng.standard_normal((n, dims)), tau_frames, rng.standard_normal(dims))


def _lowpass(x: np.ndarray, tau_frames: float) -> np.ndarray:
    """Zero-phase one-pole low-pass along axis 0 (forward-backward)."""
    from scipy.signal import filtfilt

    if len(x) < 16:
        return x.copy()
    phi = math.exp(-1.0 / max(tau_frames, 1e-6))
    return filtfilt([1.0 - phi], [1.0, -phi], x, axis=0, padlen=min(len(x) - 1, int(3 * tau_frames) + 1))


def _markov_bouts(rng: np.random.Generator, n: int, fps: float, mean_on_s: float, mean_off_s: float) -> np.ndarray:
    """Alternating on/off bouts with exponential durations; bool (n,)."""
    out = np.zeros(n, bool)
    t = 0
    on = bool(rng.random() < mean_on_s / (mean_on_s + mean_off_s))
    while t < n:
        d = max(1, int(rng.exponential(mean_on_s if on else mean_off_s) * fps))
        out[t : t + d] = on
        t += d
        on = not on
    return out


def _row_grid(h: int, w: int) -> np.ndarray:
    """Row index grid (h, w) float32."""
    return np.repeat(np.arange(h, dtype=np.float32)[:, None], w, axis=1)


# ---------------------------------------------------------------------------------------------------------
# Face model: the astronaut crop and its displacement basis
# ---------------------------------------------------------------------------------------------------------
class _FaceModel:
    """Scaled astronaut head crop (RGBA) with a displacement basis for the expression controls.

    Controls (coefficients, in order): jaw drop (mouth_open 0..1, negative closes the lips), mouth-corner
    lift (valence), extra corner drop (max(-valence, 0)), brow raise (valence), inner-brow furrow
    (max(-valence, 0)), eye opening (arousal); see ``controls``.
    """

    n_controls = 6

    def __init__(self, face_width: float, mirror: bool, tint: np.ndarray) -> None:
        import cv2
        from skimage import data

        s = face_width / _ASTRO_FACE_WIDTH
        x0, y0, x1, y1 = _ASTRO_CROP
        src = data.astronaut()[y0:y1, x0:x1]
        w, h = int(round((x1 - x0) * s)), int(round((y1 - y0) * s))
        rgb = cv2.resize(src, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32)
        rgb = np.clip(rgb * tint[None, None, :], 0, 255).astype(np.uint8)

        def to_crop(p: tuple[float, float]) -> np.ndarray:
            q = np.array([(p[0] - x0) * s, (p[1] - y0) * s], np.float32)
            if mirror:
                q[0] = (w - 1) - q[0]
            return q

        (ec, (ea, eb)) = _ASTRO_HEAD_ELLIPSE
        mask = np.zeros((h, w), np.uint8)
        c = to_crop(ec)
        cv2.ellipse(mask, (int(round(c[0])), int(round(c[1]))), (int(ea * s), int(eb * s)), 0, 0, 360, 255, -1)
        mask = cv2.GaussianBlur(mask, (0, 0), 0.03 * face_width)
        if mirror:
            rgb = rgb[:, ::-1]
        self.rgba = np.ascontiguousarray(np.dstack([rgb, mask]))
        # the same crop with the teeth between the inner lips shaded into a dark mouth cavity (the upper
        # teeth stay visible at the top); blended in as the mouth opens, so an open mouth looks dark
        lip = np.array([to_crop(p) for p in _INNER_LIP], np.float32)
        cav = np.zeros((h, w), np.float32)
        cv2.fillPoly(cav, [np.round(lip * 16).astype(np.int32)], 1.0, lineType=cv2.LINE_AA, shift=4)
        top, bot = float(lip[:, 1].min()), float(lip[:, 1].max())
        cav *= np.clip((_row_grid(h, w) - top) / max(0.45 * (bot - top), 1.0), 0.0, 1.0)
        cav = cv2.GaussianBlur(cav, (0, 0), 0.6) * 0.92
        dark = self.rgba.astype(np.float32)
        dark[..., :3] = dark[..., :3] * (1 - cav[..., None]) + np.array(_MOUTH_CAVITY_RGB, np.float32) * cav[..., None]
        self.rgba_dark = dark.astype(np.uint8)
        ys, xs = np.nonzero(cav > 0.01)
        self.mouth_roi = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        self.size = (w, h)
        self.fw = float(face_width)
        self.center = to_crop(_ASTRO_FACE_CENTER)
        bx0, by0, bx1, by1 = _ASTRO_FACE_BOX
        corners = np.array([to_crop((bx0, by0)), to_crop((bx1, by1))])
        self.box = np.array([corners[:, 0].min(), corners[:, 1].min(), corners[:, 0].max(), corners[:, 1].max()])
        self.lm = {k: to_crop(v) for k, v in _LM.items()}
        self.grid_x, self.grid_y = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
        self.basis = self._build_basis()

    def _gauss(self, c: np.ndarray, sx: float, sy: float) -> np.ndarray:
        fw = self.fw
        return np.exp(
            -((self.grid_x - c[0]) ** 2) / (2 * (sx * fw) ** 2) - ((self.grid_y - c[1]) ** 2) / (2 * (sy * fw) ** 2)
        )

    def _build_basis(self) -> np.ndarray:
        """Content displacement fields, (n_controls, 2*h*w) float32 (dx plane then dy plane)."""
        import cv2

        fw, lm = self.fw, self.lm
        xx, yy = self.grid_x, self.grid_y
        h, w = yy.shape
        fields = []
        # jaw: everything below the upper lip's inner edge slides down, a linear ramp across the lip gap
        drop = _JAW_MAX * fw
        yu, yl = float(lm["lip_upper_in"][1]), float(lm["lip_lower_in"][1])
        ramp = np.clip((yy - yu) / (yl - yu + drop), 0.0, 1.0)
        ramp = cv2.GaussianBlur(ramp, (0, 0), 1.0)
        mx = 0.5 * (lm["mouth_l"][0] + lm["mouth_r"][0])
        half = 0.5 * abs(lm["mouth_r"][0] - lm["mouth_l"][0])
        hx = np.exp(-np.maximum(np.abs(xx - mx) - 1.1 * half, 0.0) ** 2 / (2 * (0.15 * fw) ** 2))
        tail = np.exp(-np.maximum(yy - (lm["chin"][1] + drop), 0.0) ** 2 / (2 * (0.12 * fw) ** 2))
        fields.append((np.zeros_like(xx), drop * ramp * hx * tail))
        # mouth corners: up and outward for positive valence (down and inward for negative)
        dx = np.zeros_like(xx)
        dy = np.zeros_like(xx)
        for key in ("mouth_l", "mouth_r"):
            c = lm[key]
            out_sign = 1.0 if c[0] > mx else -1.0
            g = self._gauss(c, 0.11, 0.09)
            dx += out_sign * _CORNER_OUT * fw * g
            dy -= _CORNER_UP * fw * g
        fields.append((dx, dy))
        # mouth corners pulled further down for negative valence (the photo smiles at rest)
        fields.append((-0.5 * dx, -0.6 * dy))
        # brows raised for positive valence
        dy = np.zeros_like(xx)
        for key in ("brow_mid_l", "brow_mid_r"):
            dy -= _BROW_UP * fw * self._gauss(lm[key], 0.16, 0.07)
        fields.append((np.zeros_like(xx), dy))
        # inner brows down and together (frown) for negative valence
        dx = np.zeros_like(xx)
        dy = np.zeros_like(xx)
        cx = 0.5 * (lm["brow_in_l"][0] + lm["brow_in_r"][0])
        for key in ("brow_in_l", "brow_in_r"):
            c = lm[key]
            g = self._gauss(c, 0.08, 0.06)
            dx += (1.0 if c[0] < cx else -1.0) * _FURROW * fw * g
            dy += _FURROW * fw * g
        fields.append((dx, dy))
        # eyes: vertical magnification about each eye centre (wide open for high arousal)
        dy = np.zeros_like(xx)
        for key in ("eye_l", "eye_r"):
            c = lm[key]
            dy += _EYE_GAIN * (yy - c[1]) * self._gauss(c, 0.11, 0.075)
        fields.append((np.zeros_like(xx), dy))
        basis = np.stack([np.concatenate([fx.ravel(), fy.ravel()]) for fx, fy in fields]).astype(np.float32)
        assert basis.shape == (self.n_controls, 2 * h * w)
        return basis

    def warp(self, coeffs: np.ndarray, cavity: float = 0.0) -> np.ndarray:
        """Warped RGBA crop (h, w, 4) uint8 for control ``coeffs`` (n_controls,).

        ``cavity`` in [0, 1] shades the gap between the lips dark (an open mouth).
        """
        import cv2

        w, h = self.size
        src = self.rgba
        if cavity > 0.0:
            x0, y0, x1, y1 = self.mouth_roi
            src = self.rgba.copy()
            k = float(min(cavity, 1.0))
            src[y0:y1, x0:x1] = cv2.addWeighted(self.rgba[y0:y1, x0:x1], 1.0 - k, self.rgba_dark[y0:y1, x0:x1], k, 0.0)
        # einsum (no BLAS): BLAS worker threads spin and starve the other processes of the pool
        d = np.einsum("k,kn->n", coeffs.astype(np.float32), self.basis).reshape(2, h, w)
        return cv2.remap(src, self.grid_x - d[0], self.grid_y - d[1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)

    @staticmethod
    def controls(valence: float, arousal: float, mouth_open: float) -> np.ndarray:
        """Control coefficients (n_controls,) for one frame's valence, arousal and mouth opening."""
        neg = max(-valence, 0.0)
        return np.array([mouth_open - 0.3 * neg, valence, neg, valence, neg, arousal], np.float32)


# ---------------------------------------------------------------------------------------------------------
# Voice: espeak-ng utterances placed in speaking turns
# ---------------------------------------------------------------------------------------------------------
def _espeak_binary() -> str:
    """Path of espeak-ng, or a VaestError telling how to install it."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise VaestError(
            "espeak-ng is not installed; the synthetic corpus needs it for its voices. "
            "Run `bash scripts/setup.sh` (or `apt-get install espeak-ng`)."
        )
    return exe


@dataclass
class _Utterance:
    """One planned utterance of one person (times in seconds)."""

    person: int
    start: float
    planned: float  # planned duration (sets the number of words)
    slot: float = 0.0  # time allowed before the next utterance or the end (longer speech is cut)
    text: str = ""
    voice: str = ""
    pitch: int = 50
    wpm: int = 160
    amplitude: int = 100
    tilt: float = 0.0
    valence: float = 0.0
    arousal: float = 0.0
    end: float = 0.0  # actual end once placed


def _plan_utterances(rng: np.random.Generator, duration: float, n_persons: int) -> list[_Utterance]:
    """Speaking turns (1-3 s utterances separated by short pauses) alternating with silent gaps.

    The share of time inside turns is drawn per video in roughly 0.5-0.7; with two persons the turns
    alternate between them (mostly), never overlapping.
    """
    share = rng.uniform(0.5, 0.72)
    utts: list[_Utterance] = []
    t = rng.uniform(0.2, 0.9)
    person = int(rng.integers(n_persons))
    spoken = [False] * n_persons
    max_turn = 8.0 if n_persons == 1 else max(1.2, min(8.0, 0.4 * duration))
    while t < duration - 0.9:
        turn = float(np.clip(rng.gamma(2.0, 2.0), 1.2, max_turn))
        turn_end = min(t + turn, duration - 0.2)
        while t < turn_end - 0.6:
            d = min(rng.uniform(1.0, 2.8), turn_end - t)
            utts.append(_Utterance(person=person, start=float(t), planned=float(d)))
            spoken[person] = True
            t += d + rng.uniform(0.12, 0.35)
        t += float(np.clip(rng.exponential(turn * (1.0 - share) / share), 0.5, 6.0))
        if n_persons > 1 and (rng.random() < 0.75 or not all(spoken)):
            person = (person + 1) % n_persons
    for k, u in enumerate(utts):
        nxt = utts[k + 1].start if k + 1 < len(utts) else duration
        u.slot = max(0.2, min(nxt - u.start - 0.08, duration - u.start - 0.05, u.planned + 0.5))
    return utts


def _sentence(rng: np.random.Generator, n_words: int) -> str:
    """A random pronounceable sentence from the built-in word list."""
    words = [str(w) for w in rng.choice(_WORDS, size=max(2, n_words))]
    words[0] = words[0].capitalize()
    return " ".join(words) + "."


def _espeak(exe: str, u: _Utterance, workdir: Path, idx: int) -> np.ndarray:
    """Synthesize one utterance with espeak-ng; float32 mono at 16 kHz, leading/trailing silence trimmed."""
    import soundfile as sf
    from scipy.signal import resample_poly

    wav = workdir / f"u{idx:04d}.wav"
    cmd = [exe, "-v", u.voice, "-p", str(u.pitch), "-s", str(u.wpm), "-a", str(u.amplitude), "-w", str(wav), u.text]
    try:
        subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    except subprocess.CalledProcessError as e:
        err = e.stderr.decode(errors="replace").strip()
        raise VaestError(f"espeak-ng failed ({' '.join(cmd[:-1])}): {err}") from None
    x, sr = sf.read(str(wav), dtype="float32", always_2d=True)
    x = x.mean(axis=1)
    if sr != _AUDIO_RATE:
        g = math.gcd(int(sr), _AUDIO_RATE)
        x = resample_poly(x, _AUDIO_RATE // g, int(sr) // g).astype(np.float32)
    if len(x) == 0 or float(np.abs(x).max()) == 0.0:
        return np.zeros(0, np.float32)
    loud = np.flatnonzero(np.abs(x) > 0.02 * float(np.abs(x).max()))
    return x[loud[0] : loud[-1] + 1]


def _tilt(x: np.ndarray, amount: float) -> np.ndarray:
    """Spectral tilt: brighter (> 0) or darker (< 0) timbre at unchanged RMS."""
    from scipy.signal import butter, sosfilt

    if len(x) < 32 or amount == 0.0:
        return x
    sos = butter(2, 1200.0, btype="highpass", fs=_AUDIO_RATE, output="sos")
    y = x + amount * sosfilt(sos, x).astype(np.float32)
    ry = float(np.sqrt(np.mean(y * y))) + 1e-9
    return (y * (float(np.sqrt(np.mean(x * x))) / ry)).astype(np.float32)


def _pink_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """Unit-RMS 1/f noise (n,)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1.0 / _AUDIO_RATE)
    spec /= np.sqrt(np.maximum(f, 20.0))
    x = np.fft.irfft(spec, n)
    return (x / (np.std(x) + 1e-12)).astype(np.float32)


def _frame_envelope(x: np.ndarray, n_frames: int, fps: float) -> np.ndarray:
    """RMS of ``x`` in a 40 ms window around each frame time; (n_frames,)."""
    c = np.concatenate([[0.0], np.cumsum(x.astype(np.float64) ** 2)])
    centers = np.arange(n_frames) / fps * _AUDIO_RATE
    half = 0.02 * _AUDIO_RATE
    a = np.clip(np.round(centers - half), 0, len(x)).astype(np.int64)
    b = np.clip(np.round(centers + half), 0, len(x)).astype(np.int64)
    return np.sqrt((c[b] - c[a]) / np.maximum(b - a, 1))


@dataclass
class _Audio:
    """The mixed track and the per-person latent voice signals."""

    track: np.ndarray  # (n_samples,) float32 at 16 kHz
    speaking: list[np.ndarray]  # per person, bool (n_frames,)
    mouth_open: list[np.ndarray]  # per person, float32 (n_frames,) in [0, 1]
    utterances: list[_Utterance]
    snr_db: float
    quiet: tuple[float, float] | None  # near-silent stretch (seconds), if any


def _make_audio(rng: np.random.Generator, persons: list["_Person"], n_frames: int, fps: float) -> _Audio:
    """Plan, synthesize and mix the voices of ``persons`` plus background noise."""
    exe = _espeak_binary()
    duration = n_frames / fps
    n = int(round(duration * _AUDIO_RATE))
    utts = _plan_utterances(rng, duration, len(persons))
    for u in utts:
        p = persons[u.person]
        f0, f1 = int(u.start * fps), max(int(u.start * fps) + 1, int((u.start + u.planned) * fps))
        u.valence = float(p.va[f0:f1, 0].mean())
        u.arousal = float(p.va[f0:f1, 1].mean())
        u.voice = p.voice
        u.pitch = int(np.clip(round(p.base_pitch + 24 * u.arousal + rng.normal(0, 2)), 5, 95))
        u.wpm = int(np.clip(round(165 + 55 * u.arousal + rng.normal(0, 6)), 100, 240))
        u.amplitude = int(np.clip(round(100 + 50 * u.arousal + rng.normal(0, 4)), 30, 160))
        u.tilt = float(np.clip(0.9 * u.valence, -0.9, 0.9))
        u.text = _sentence(rng, int(round(u.planned * u.wpm / 60.0 * 0.9)))
    speech = [np.zeros(n, np.float32) for _ in persons]
    speaking = [np.zeros(n_frames, bool) for _ in persons]
    with tempfile.TemporaryDirectory(prefix="vaest-espeak-") as td:
        for k, u in enumerate(utts):
            x = _tilt(_espeak(exe, u, Path(td), k), u.tilt)
            s0 = int(round(u.start * _AUDIO_RATE))
            room = max(0, min(int(u.slot * _AUDIO_RATE), n - s0))
            if len(x) > room:
                x = x[:room].copy()
                fade = min(len(x), int(0.02 * _AUDIO_RATE))
                if fade:
                    x[-fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
            speech[u.person][s0 : s0 + len(x)] += x
            u.end = u.start + len(x) / _AUDIO_RATE
            f0 = int(math.ceil(u.start * fps))
            f1 = int(math.floor(u.end * fps)) + 1
            speaking[u.person][f0 : min(f1, n_frames)] = True
    mouth = []
    for p_idx in range(len(persons)):
        env = _frame_envelope(speech[p_idx], n_frames, fps)
        ref = float(np.percentile(env[speaking[p_idx]], 90)) if speaking[p_idx].any() else 1.0
        m = np.clip(env / max(ref, 1e-6), 0.0, 1.0) ** 0.8
        m[m < 0.06] = 0.0
        m = np.convolve(m, [0.25, 0.5, 0.25], mode="same")
        m[~speaking[p_idx]] = 0.0
        mouth.append(m.astype(np.float32))
    voice = np.sum(speech, axis=0)
    active = np.zeros(n, bool)
    for u in utts:
        active[int(u.start * _AUDIO_RATE) : int(u.end * _AUDIO_RATE)] = True
    speech_rms = float(np.sqrt(np.mean(voice[active] ** 2))) if active.any() else 0.05
    snr_db = float(rng.uniform(5.0, 25.0))
    noise = _pink_noise(rng, n) * (speech_rms / 10 ** (snr_db / 20.0))
    if rng.random() < 0.4:  # mains hum
        t = np.arange(n) / _AUDIO_RATE
        f = 50.0 if rng.random() < 0.5 else 60.0
        hum = sum(np.sin(2 * np.pi * f * h * t + rng.uniform(0, 6.3)) / h for h in (1, 2, 3))
        noise += (0.5 * speech_rms / 10 ** (snr_db / 20.0) * hum).astype(np.float32)
    # a near-silent stretch (the room goes quiet) in the longest gap between utterances
    quiet = None
    bounds = [0.0] + [x for u in utts for x in (u.start, u.end)] + [duration]
    gaps = [(bounds[i], bounds[i + 1]) for i in range(0, len(bounds) - 1, 2)]
    g0, g1 = max(gaps, key=lambda g: g[1] - g[0])
    if g1 - g0 >= 1.2 and rng.random() < 0.7:
        q0, q1 = g0 + 0.2, g1 - 0.2
        gain = np.ones(n, np.float32)
        a, b = int(q0 * _AUDIO_RATE), int(q1 * _AUDIO_RATE)
        gain[a:b] = 0.03
        gain = np.convolve(gain, np.ones(400, np.float32) / 400, mode="same")
        noise *= gain
        quiet = (q0, q1)
    mix = (voice + noise) * 10 ** (rng.uniform(-4.0, 4.0) / 20.0)
    peak = float(np.abs(mix).max()) if n else 0.0
    if peak > 0.95:
        mix *= 0.95 / peak
    return _Audio(mix.astype(np.float32), speaking, mouth, utts, snr_db, quiet)


# ---------------------------------------------------------------------------------------------------------
# People: label trajectories and the latent signals that drive their rendering
# ---------------------------------------------------------------------------------------------------------
_SHIRTS = ((40, 70, 140), (150, 40, 50), (40, 110, 70), (200, 200, 200), (60, 60, 60), (170, 120, 40))
_BOARDS = ((220, 210, 170), (120, 60, 40), (70, 90, 120), (180, 180, 190))


@dataclass
class _Person:
    """One person of a video: labels, latent signals and appearance (arrays are per frame)."""

    label: str
    va: np.ndarray  # (n, 2) float32 affect valence/arousal the media show (labels are it delayed)
    invalid: np.ndarray  # (n,) bool: label written as -5
    hidden: np.ndarray  # (n,) int8: 0 face visible, 1 occluded by a board, 2 turned away
    posture: np.ndarray  # (n,) float32 in [-1, 1]: slow valence
    bout: np.ndarray  # (n,) float32 in [0, 1]: hands gesturing
    hands: np.ndarray  # (n, 2, 2) float32: hand offsets from the rest position, in face widths
    head: np.ndarray  # (n, 3) float32: head translation x, y (px) and rotation (degrees)
    voice: str
    base_pitch: int
    mirror: bool
    tint: np.ndarray  # (3,) skin/hair colour gains
    shirt: tuple[int, int, int]
    board: tuple[int, int, int]
    cx: float  # frame x of the face centre at rest
    cy: float  # frame y of the face centre at rest
    face_w: float
    speaking: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    mouth_open: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))


def _hidden_episodes(rng: np.random.Generator, n: int, fps: float) -> np.ndarray:
    """Stretches (a few seconds) where the face is occluded (1) or turned away (2); int8 (n,)."""
    out = np.zeros(n, np.int8)
    duration = n / fps
    n_ep = 1 + int(duration > 20.0) + int(duration > 60.0 and rng.random() < 0.5)
    for _ in range(n_ep):
        d = min(rng.uniform(1.5, 3.5), 0.2 * duration)
        lo, hi = 0.5, duration - d - 0.5
        if hi <= lo:
            lo, hi = 0.0, max(0.0, duration - d)
        t0 = rng.uniform(lo, hi) if hi > lo else lo
        out[int(t0 * fps) : int((t0 + d) * fps)] = 1 + int(rng.random() < 0.5)
    return out


def _time_warped_noise(rng: np.random.Generator, speed: np.ndarray, fps: float, tau_s: float, dims: int) -> np.ndarray:
    """Smooth noise (n, dims) running faster where ``speed`` (n,) is higher (internal clock = cumsum speed)."""
    u = np.concatenate([[0.0], np.cumsum(speed[:-1])])  # internal time in frames
    m = int(math.ceil(u[-1])) + 2 if len(u) else 2
    base = _smooth_noise(rng, m, tau_s * fps, dims)
    return np.stack([np.interp(u, np.arange(m), base[:, d]) for d in range(dims)], axis=1)


def _make_person(
    rng: np.random.Generator, label: str, n: int, fps: float, force_invalid: bool, cx: float, cy: float, face_w: float,
    voice: str, mirror: bool,
) -> _Person:
    """Draw one person's labels and the latent behaviour signals that depend on them."""
    va = sample_trajectory(n, fps, rng)
    invalid = sample_invalid_mask(n, fps, rng, force=force_invalid)
    hidden = _hidden_episodes(rng, n, fps)
    v, a = va[:, 0].astype(np.float64), va[:, 1].astype(np.float64)
    a01 = (a + 1.0) / 2.0
    posture = np.clip(_lowpass(v, 1.5 * fps) + 0.15 * _smooth_noise(rng, n, 3.0 * fps)[:, 0], -1, 1)
    bout = _lowpass(_markov_bouts(rng, n, fps, 3.0, 2.5).astype(np.float64), 0.2 * fps)
    speed = 0.4 + 1.6 * a01
    amp = 0.06 + 0.4 * a01**1.3
    wiggle = _time_warped_noise(rng, speed, fps, 0.35, 4).reshape(n, 2, 2)
    hands = np.zeros((n, 2, 2))
    for h, side in ((0, -1.0), (1, 1.0)):
        hands[:, h, 0] = bout * (side * 0.12 * (posture + 1.0) / 2.0 + amp * wiggle[:, h, 0])
        hands[:, h, 1] = bout * (-(0.75 + 0.35 * posture) + amp * wiggle[:, h, 1])
    jitter = _time_warped_noise(rng, 0.5 + 1.5 * a01, fps, 0.5, 3)
    head = np.stack(
        [
            face_w * (0.01 + 0.05 * a01) * jitter[:, 0],
            face_w * (0.006 + 0.03 * a01) * jitter[:, 1],
            (1.0 + 4.0 * a01) * jitter[:, 2],
        ],
        axis=1,
    )
    tint = np.clip(1.0 + rng.normal(0.0, 0.06, 3), 0.85, 1.15).astype(np.float32)
    return _Person(
        label=label, va=va, invalid=invalid, hidden=hidden, posture=posture.astype(np.float32),
        bout=bout.astype(np.float32), hands=hands.astype(np.float32), head=head.astype(np.float32), voice=voice,
        base_pitch=int(rng.integers(35, 60)), mirror=mirror, tint=tint,
        shirt=_SHIRTS[int(rng.integers(len(_SHIRTS)))], board=_BOARDS[int(rng.integers(len(_BOARDS)))],
        cx=cx, cy=cy, face_w=face_w,
    )


# ---------------------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------------------
def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A static textured room-like background (height, width, 3) uint8."""
    import cv2

    base = rng.uniform(70, 190) * np.clip(1.0 + rng.normal(0, 0.18, 3), 0.6, 1.4)
    shade = rng.normal(0, 22, (6, 8, 1)) + rng.normal(0, 6, (6, 8, 3))  # mostly brightness, a little colour
    low = cv2.resize(shade.astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
    img = base[None, None, :] + low
    for _ in range(int(rng.integers(2, 6))):  # furniture, frames, windows
        x0, y0 = int(rng.integers(0, width - 40)), int(rng.integers(0, height - 40))
        x1, y1 = x0 + int(rng.integers(30, width // 2)), y0 + int(rng.integers(30, height // 2))
        col = np.clip(base + rng.normal(0, 45, 3), 0, 255)
        cv2.rectangle(img, (x0, y0), (x1, y1), tuple(float(c) for c in col), -1)
    grain = cv2.GaussianBlur(rng.normal(0, 6, (height, width, 3)).astype(np.float32), (0, 0), 0.8)
    return np.clip(img + grain, 0, 255).astype(np.uint8)


def _pt(x: float, y: float) -> tuple[int, int]:
    """Sub-pixel point for cv2 drawing with shift=4."""
    return int(round(x * 16)), int(round(y * 16))


class _Renderer:
    """Draws one frame: background, bodies, faces (or their nuisances), hands, camera noise."""

    def __init__(self, rng: np.random.Generator, persons: list[_Person], width: int, height: int) -> None:
        self.persons = persons
        self.width, self.height = width, height
        self.bg = _background(rng, width, height)
        self.faces = [_FaceModel(p.face_w, p.mirror, p.tint) for p in persons]
        noise = rng.normal(0, 2.5, (6, height, width, 3))
        self.noise_pos = np.clip(noise, 0, 255).astype(np.uint8)
        self.noise_neg = np.clip(-noise, 0, 255).astype(np.uint8)
        self.noise_order = rng.integers(0, 6, 1 << 16)
        self.flicker = 1.0 + 0.02 * _smooth_noise(rng, 1 << 12, 20.0)[:, 0]

    def head_matrix(self, k: int, i: int) -> np.ndarray:
        """2x3 affine mapping face-crop pixels of person ``k`` to frame pixels at frame ``i``."""
        import cv2

        p, fm = self.persons[k], self.faces[k]
        tx, ty, rot = (float(x) for x in p.head[i])
        dy = -0.07 * p.face_w * float(p.posture[i])
        m = cv2.getRotationMatrix2D((float(fm.center[0]), float(fm.center[1])), rot, 1.0)
        m[:, 2] += (p.cx + tx - fm.center[0], p.cy + ty + dy - fm.center[1])
        return m

    def _body(self, frame: np.ndarray, k: int, i: int) -> dict[str, Any]:
        import cv2

        p = self.persons[k]
        fw, pos = p.face_w, float(p.posture[i])
        chin_y = p.cy + 0.58 * fw - 0.07 * fw * pos + 0.3 * float(p.head[i, 1])
        cx = p.cx + 0.3 * float(p.head[i, 0])
        sh_y = chin_y + 0.30 * fw - 0.10 * fw * pos
        sw = fw * (0.95 + 0.12 * pos)
        droop = 0.12 * fw * (1.0 - pos) / 2.0
        skin = tuple(float(c) for c in np.clip(np.array([205, 160, 140]) * p.tint, 0, 255))
        neck = (_pt(cx - 0.21 * fw, chin_y - 0.2 * fw), _pt(cx + 0.21 * fw, sh_y + 0.1 * fw))
        cv2.rectangle(frame, neck[0], neck[1], skin, -1, cv2.LINE_AA, 4)
        torso = np.array(
            [
                _pt(cx - sw, sh_y + 0.14 * fw + droop), _pt(cx - 0.7 * sw, sh_y), _pt(cx + 0.7 * sw, sh_y),
                _pt(cx + sw, sh_y + 0.14 * fw + droop),
                _pt(cx + 0.92 * sw, self.height + 20),
                _pt(cx - 0.92 * sw, self.height + 20),
            ],
            np.int32,
        )
        cv2.fillConvexPoly(frame, torso, p.shirt, cv2.LINE_AA, 4)
        collar = tuple(float(c) * 0.7 for c in p.shirt)
        cv2.ellipse(frame, _pt(cx, sh_y), _pt(0.26 * fw, 0.1 * fw), 0, 0, 180, collar, -1, cv2.LINE_AA, 4)
        return {"cx": cx, "sh_y": sh_y, "sw": sw, "droop": droop, "chin_y": chin_y, "skin": skin}

    def _hands(self, frame: np.ndarray, k: int, i: int, geo: dict[str, Any]) -> np.ndarray:
        import cv2

        p = self.persons[k]
        fw, cx, sh_y = p.face_w, geo["cx"], geo["sh_y"]
        out = np.zeros((2, 2), np.float32)
        for h, side in ((0, -1.0), (1, 1.0)):
            shoulder = (cx + side * 0.9 * geo["sw"], sh_y + 0.12 * fw + geo["droop"])
            hx = cx + side * 1.0 * fw + float(p.hands[i, h, 0]) * fw
            hy = sh_y + 1.1 * fw + float(p.hands[i, h, 1]) * fw
            if hy < geo["chin_y"] + 0.35 * fw:  # keep hands beside, never over, the face
                lim = cx + side * 0.9 * fw
                hx = max(hx, lim) if side > 0 else min(hx, lim)
            elbow = (0.5 * (shoulder[0] + hx) + side * 0.25 * fw, 0.5 * (shoulder[1] + hy) + 0.15 * fw)
            sleeve = tuple(float(c) * 0.85 for c in p.shirt)
            th = max(2, int(0.22 * fw))
            cv2.line(frame, _pt(*shoulder), _pt(*elbow), sleeve, th, cv2.LINE_AA, 4)
            cv2.line(frame, _pt(*elbow), _pt(hx, hy), geo["skin"], max(2, int(0.15 * fw)), cv2.LINE_AA, 4)
            cv2.ellipse(frame, _pt(hx, hy), _pt(0.15 * fw, 0.19 * fw), 0, 0, 360, geo["skin"], -1, cv2.LINE_AA, 4)
            cv2.ellipse(frame, _pt(hx, hy), _pt(0.15 * fw, 0.19 * fw), 0, 0, 360, (90, 60, 50), 1, cv2.LINE_AA, 4)
            out[h] = (hx, hy)
        return out

    def _head(self, frame: np.ndarray, k: int, i: int, m: np.ndarray) -> None:
        import cv2

        p, fm = self.persons[k], self.faces[k]
        v, a = float(p.va[i, 0]), float(p.va[i, 1])
        mo = float(p.mouth_open[i])
        w, h = fm.size
        if p.hidden[i] == 2:  # turned away: the back of the head
            c = m @ np.array([fm.center[0], fm.center[1] - 0.1 * fm.fw, 1.0])
            hair = tuple(float(x) for x in np.clip(np.array([120, 88, 55]) * p.tint, 0, 255))
            cv2.ellipse(frame, _pt(c[0], c[1]), _pt(0.62 * fm.fw, 0.8 * fm.fw), 0, 0, 360, hair, -1, cv2.LINE_AA, 4)
            cv2.ellipse(frame, _pt(c[0], c[1] - 0.1 * fm.fw), _pt(0.35 * fm.fw, 0.45 * fm.fw), 0, 0, 360,
                        tuple(x * 0.85 for x in hair), -1, cv2.LINE_AA, 4)
            return
        crop = fm.warp(fm.controls(v, a, mo), cavity=min(1.0, 1.5 * mo))
        corners = np.array([[0, 0, 1], [w, 0, 1], [0, h, 1], [w, h, 1]], np.float64) @ m.T
        x0, y0 = (int(max(0, math.floor(c))) for c in corners.min(axis=0))
        x1 = int(min(self.width, math.ceil(corners[:, 0].max())))
        y1 = int(min(self.height, math.ceil(corners[:, 1].max())))
        if x1 <= x0 or y1 <= y0:
            return
        mr = m.copy()
        mr[:, 2] -= (x0, y0)
        warped = cv2.warpAffine(
            crop, mr, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0, 0)
        )
        alpha = warped[..., 3].astype(np.float32) * (1.0 / 255.0)
        roi = frame[y0:y1, x0:x1]
        frame[y0:y1, x0:x1] = cv2.blendLinear(np.ascontiguousarray(warped[..., :3]), roi, alpha, 1.0 - alpha)
        if p.hidden[i] == 1:  # occluded by a board held in front of the face
            c = m @ np.array([0.5 * (fm.box[0] + fm.box[2]), 0.5 * (fm.box[1] + fm.box[3]), 1.0])
            rect = ((float(c[0]), float(c[1])), (1.55 * fm.fw, 1.75 * fm.fw), 8.0)
            box = cv2.boxPoints(rect)
            cv2.fillConvexPoly(frame, np.round(box * 16).astype(np.int32), p.board, cv2.LINE_AA, 4)
            ink = tuple(x * 0.45 for x in p.board)
            for r in range(3):
                y = c[1] - 0.4 * fm.fw + r * 0.3 * fm.fw
                q0, q1 = _pt(c[0] - 0.5 * fm.fw, y), _pt(c[0] + 0.4 * fm.fw, y)
                cv2.line(frame, q0, q1, ink, max(1, int(0.05 * fm.fw)), cv2.LINE_AA, 4)

    def render(self, i: int) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
        """Frame ``i`` (H, W, 3) RGB uint8, per-person head matrices (2, 3) and hand positions (2, 2)."""
        import cv2

        frame = self.bg.copy()
        mats = [self.head_matrix(k, i) for k in range(len(self.persons))]
        geos = [self._body(frame, k, i) for k in range(len(self.persons))]
        for k in range(len(self.persons)):
            self._head(frame, k, i, mats[k])
        hands = [self._hands(frame, k, i, geos[k]) for k in range(len(self.persons))]
        j = int(self.noise_order[i % len(self.noise_order)])
        cv2.add(frame, self.noise_pos[j], dst=frame)
        cv2.subtract(frame, self.noise_neg[j], dst=frame)
        frame = cv2.convertScaleAbs(frame, alpha=float(self.flicker[i % len(self.flicker)]))
        return frame, mats, hands

    def aligned_crop(self, frame: np.ndarray, k: int, m: np.ndarray) -> np.ndarray:
        """112x112 RGB face crop, rotation removed, centred on the face box (like Aff-Wild2's)."""
        import cv2

        fm = self.faces[k]
        c = m @ np.array([0.5 * (fm.box[0] + fm.box[2]), 0.5 * (fm.box[1] + fm.box[3]), 1.0])
        rot = math.degrees(math.atan2(m[0, 1], m[0, 0]))
        side = 1.3 * max(fm.box[2] - fm.box[0], fm.box[3] - fm.box[1])
        a = cv2.getRotationMatrix2D((float(c[0]), float(c[1])), -rot, _CROP_SIZE / side)
        a[:, 2] += (_CROP_SIZE / 2 - c[0], _CROP_SIZE / 2 - c[1])
        return cv2.warpAffine(frame, a, (_CROP_SIZE, _CROP_SIZE), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE)

    def face_box(self, k: int, m: np.ndarray) -> np.ndarray:
        """Axis-aligned face box (x0, y0, x1, y1) in frame pixels under head matrix ``m``."""
        b = self.faces[k].box
        pts = np.array([[b[0], b[1], 1], [b[2], b[1], 1], [b[0], b[3], 1], [b[2], b[3], 1]], np.float64) @ m.T
        return np.array([pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()], np.float32)


# ---------------------------------------------------------------------------------------------------------
# One video: plan, render, encode, write labels and truth
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _VideoJob:
    """Everything a worker process needs to build one video."""

    out: str
    name: str
    index: int
    seed: int
    n_frames: int
    fps: float
    split: str  # "Train_Set" | "Validation_Set" | "Test_Set"
    two_person: bool
    force_invalid: bool
    threads: int
    annotation_lag: float = 0.0  # mean raters' lag, seconds


def _rng(job: _VideoJob, part: int) -> np.random.Generator:
    """Independent random stream ``part`` of a video (stable across runs and worker counts)."""
    return np.random.default_rng([job.seed, job.index, part])


def _encode(
    path: Path, renderer: _Renderer, n_frames: int, fps: float, audio: np.ndarray, threads: int, on_frame: Any
) -> None:
    """Render and encode every frame (H.264 yuv420p) interleaved with the audio (AAC mono 16 kHz)."""
    import av

    rate = Fraction(fps).limit_denominator(1001)
    for base in (24, 30, 60):  # NTSC rates: 29.97 means 30000/1001
        if abs(fps - base * 1000 / 1001) < 0.005:
            rate = Fraction(base * 1000, 1001)
    with av.open(str(path), mode="w", format="mp4") as container:
        vs = container.add_stream("libx264", rate=rate)
        vs.width, vs.height, vs.pix_fmt = renderer.width, renderer.height, "yuv420p"
        vs.options = {"preset": "ultrafast", "crf": "18", "threads": str(max(1, threads))}
        as_ = container.add_stream("aac", rate=_AUDIO_RATE, layout="mono")
        as_.bit_rate = 64000
        chunk, pos = 1024, 0
        for i in range(n_frames):
            frame, mats, hands = renderer.render(i)
            on_frame(i, frame, mats, hands)
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
            vf.pts = i
            for pkt in vs.encode(vf):
                container.mux(pkt)
            limit = len(audio) if i == n_frames - 1 else min(len(audio), int((i + 1) / fps * _AUDIO_RATE))
            while pos < limit:
                x = audio[pos : pos + chunk]
                af = av.AudioFrame.from_ndarray(np.ascontiguousarray(x[None, :]), format="fltp", layout="mono")
                af.sample_rate = _AUDIO_RATE
                af.pts = pos
                pos += len(x)
                for pkt in as_.encode(af):
                    container.mux(pkt)
        for pkt in vs.encode(None):
            container.mux(pkt)
        for pkt in as_.encode(None):
            container.mux(pkt)


def _build_video(job: _VideoJob) -> dict[str, Any]:
    """Build one video of the corpus and its labels, crops and truth; returns facts for synth.json."""
    import cv2

    from vaest.corpus.labels import write_va_file
    from vaest.io import atomic_path

    t0, c0 = time.perf_counter(), time.process_time()
    prev_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        out = Path(job.out)
        n, fps = job.n_frames, job.fps
        width, height = _DUAL_SIZE if job.two_person else _SINGLE_SIZE
        r_people, r_audio, r_render, r_voice = (_rng(job, k) for k in range(4))
        voices = list(r_voice.choice(len(_VOICES), size=2, replace=False))
        if job.two_person:
            layout = [("_left", width / 4, _DUAL_FACE_W), ("_right", 3 * width / 4, _DUAL_FACE_W)]
        else:
            layout = [("", width / 2, _SINGLE_FACE_W)]
        persons = []
        for k, (suffix, cx, fw) in enumerate(layout):
            persons.append(
                _make_person(
                    r_people, job.name + suffix, n, fps, job.force_invalid and k == 0, cx, 150.0, fw,
                    _VOICES[voices[k]], mirror=bool(r_voice.random() < 0.5),
                )
            )
        if len(persons) == 2 and persons[1].shirt == persons[0].shirt:
            persons[1].shirt = _SHIRTS[(_SHIRTS.index(persons[0].shirt) + 1) % len(_SHIRTS)]
        audio = _make_audio(r_audio, persons, n, fps)
        for k, p in enumerate(persons):
            p.speaking, p.mouth_open = audio.speaking[k], audio.mouth_open[k]
        renderer = _Renderer(r_render, persons, width, height)

        crop_dirs = []
        for p in persons:
            d = out / "cropped_aligned" / p.label
            if d.exists():
                shutil.rmtree(d)
            d.mkdir(parents=True)
            crop_dirs.append(d)
        boxes = np.full((len(persons), n, 4), np.nan, np.float32)
        hand_xy = np.zeros((len(persons), n, 2, 2), np.float32)

        def on_frame(i: int, frame: np.ndarray, mats: list[np.ndarray], hands: list[np.ndarray]) -> None:
            for k, p in enumerate(persons):
                hand_xy[k, i] = hands[k]
                if p.hidden[i] == 0:
                    boxes[k, i] = renderer.face_box(k, mats[k])
                    crop = renderer.aligned_crop(frame, k, mats[k])
                    cv2.imwrite(str(crop_dirs[k] / f"{i + 1:05d}.jpg"), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR),
                                [cv2.IMWRITE_JPEG_QUALITY, 92])

        video_path = out / "videos" / f"{job.name}.mp4"
        with atomic_path(video_path, suffix=".mp4.tmp") as tmp:
            _encode(tmp, renderer, n, fps, audio.track, job.threads, on_frame)

        lag_s = draw_annotation_lag(job.annotation_lag, job.seed, job.index)
        shift = lag_frames(lag_s, fps)
        labels = []
        for k, p in enumerate(persons):
            # the media above show p.va (the affect); raters write it down `shift` frames late
            va = annotation_from_affect(p.va, p.invalid, shift)
            write_va_file(out / "annotations" / "VA_Estimation_Challenge" / job.split / f"{p.label}.txt", va)
            label_va = delay_labels(p.va, shift)
            utts = [u for u in audio.utterances if u.person == k]
            speed = np.linalg.norm(np.diff(hand_xy[k], axis=0, prepend=hand_xy[k][:1]), axis=-1).mean(axis=1)
            truth = {
                "valence": label_va[:, 0].astype(np.float32),
                "arousal": label_va[:, 1].astype(np.float32),
                "affect_valence": p.va[:, 0].astype(np.float32),
                "affect_arousal": p.va[:, 1].astype(np.float32),
                "annotation_lag_frames": np.int64(shift),
                "face_visible": p.hidden == 0,
                "speaking": p.speaking.astype(bool),
                "mouth_open": p.mouth_open.astype(np.float32),
                "fps": np.float64(fps),
                "label_valid": ~p.invalid,
                "hidden_kind": p.hidden.astype(np.int8),
                "face_box": boxes[k],
                "posture": p.posture,
                "gesture": p.bout,
                "hand_speed": (speed / p.face_w).astype(np.float32),
                "head_motion": p.head,
                "utt_start": np.array([u.start for u in utts], np.float32),
                "utt_end": np.array([u.end for u in utts], np.float32),
                "utt_pitch": np.array([u.pitch for u in utts], np.float32),
                "utt_rate": np.array([u.wpm for u in utts], np.float32),
                "utt_amplitude": np.array([u.amplitude for u in utts], np.float32),
                "utt_tilt": np.array([u.tilt for u in utts], np.float32),
                "utt_valence": np.array([u.valence for u in utts], np.float32),
                "utt_arousal": np.array([u.arousal for u in utts], np.float32),
            }
            with atomic_path(out / "synth_truth" / f"{p.label}.npz") as tmp:
                with open(tmp, "wb") as fh:
                    np.savez(fh, **truth)
            labels.append(
                {
                    "label": p.label,
                    "voice": p.voice,
                    "base_pitch": p.base_pitch,
                    "invalid_frames": int(p.invalid.sum()),
                    "face_hidden_frames": int((p.hidden > 0).sum()),
                    "speaking_share": round(float(p.speaking.mean()), 3),
                    "utterances": len(utts),
                }
            )
        secs = time.perf_counter() - t0
        log.debug("%s: %d frames in %.1f s", job.name, n, secs)
        return {
            "name": job.name,
            "split": job.split,
            "frames": n,
            "size": [width, height],
            "two_person": job.two_person,
            "annotation_lag_s": round(lag_s, 4),
            "annotation_lag_frames": shift,
            "labels": labels,
            "snr_db": round(audio.snr_db, 2),
            "quiet_stretch_s": None if audio.quiet is None else [round(x, 3) for x in audio.quiet],
            "seconds": round(secs, 2),
            "cpu_seconds": round(time.process_time() - c0, 2),
        }
    finally:
        cv2.setNumThreads(prev_threads)


# ---------------------------------------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------------------------------------
def synthesize(
    out: Path,
    n_videos: int = 10,
    seconds: float = 30.0,
    seed: int = 0,
    fps: float = 30.0,
    val_fraction: float = 0.3,
    workers: int = 2,
    annotation_lag: float = 1.0,
    test_fraction: float = 0.0,
) -> dict:
    """Write a synthetic Aff-Wild2-layout corpus below ``out`` (see the module docstring for the layout).

    Videos are named ``synth-000``, ``synth-001``, ...; the last ``round(test_fraction * n_videos)`` go to a
    labelled test split (``Test_Set``: none by default), the ``round(val_fraction * n_videos)`` before them (at
    least one) to the validation split, the rest to train (at least one); video 4 (or the last one when there are fewer than 5)
    shows two people with labels ``<name>_left`` / ``<name>_right``. The same ``seed`` gives the same
    labels, truth and decoded media whatever ``workers`` is. ``annotation_lag`` is the raters' mean
    reaction lag in seconds (see the module docstring): it changes the label files only, never the media.

    Returns:
        summary dict: ``train`` / ``val`` / ``test`` (label names per split), ``videos`` (video names),
        ``frames`` (per video), ``total_frames``, ``seconds_taken`` (wall clock, also as ``seconds``),
        ``cpu_seconds`` (summed over the workers), ``out``.

    Raises:
        VaestError: espeak-ng is missing, or the settings are out of range.
    """
    t0 = time.perf_counter()
    out = Path(out)
    if n_videos < 2:
        raise VaestError(f"synthetic corpus needs at least 2 videos (one per split), got {n_videos}")
    if seconds < 4.0:
        raise VaestError(f"synthetic videos need at least 4 seconds, got {seconds}")
    if not (1.0 <= fps <= 120.0):
        raise VaestError(f"fps must lie in [1, 120], got {fps}")
    if not (0.0 <= annotation_lag <= seconds / (2 * _LAG_SPREAD[1])):
        raise VaestError(
            f"annotation_lag must lie in [0, {seconds / (2 * _LAG_SPREAD[1]):.2f}] s for {seconds} s videos "
            f"(at most half a video once varied), got {annotation_lag}"
        )
    if not (0.0 <= test_fraction < 1.0 and 0.0 <= val_fraction < 1.0):
        raise VaestError(f"val_fraction and test_fraction must lie in [0, 1), got {val_fraction}, {test_fraction}")
    n_test = int(round(test_fraction * n_videos))
    n_val = int(min(n_videos - 1 - n_test, max(1, round(val_fraction * n_videos))))
    if n_val < 1:
        raise VaestError(f"{n_videos} videos leave no training video with {n_val} validation and {n_test} test "
                         "videos; add videos or lower the fractions")
    _espeak_binary()
    n_train = n_videos - n_val - n_test
    two_idx = 4 if n_videos > 4 else n_videos - 1
    n_frames = int(round(seconds * fps))
    workers = max(1, int(workers))
    threads = 1  # x264's output depends on its thread count: keep it fixed so media do not depend on `workers`
    jobs = []
    for i in range(n_videos):
        split = "Train_Set" if i < n_train else "Validation_Set" if i < n_train + n_val else "Test_Set"
        jobs.append(
            _VideoJob(
                out=str(out), name=f"synth-{i:03d}", index=i, seed=int(seed), n_frames=n_frames, fps=float(fps),
                split=split, two_person=i == two_idx, force_invalid=i in (0, n_train, n_train + n_val),
                threads=threads,
                annotation_lag=float(annotation_lag),
            )
        )
    for sub in ("videos", "annotations/VA_Estimation_Challenge/Train_Set",
                "annotations/VA_Estimation_Challenge/Validation_Set", "cropped_aligned", "synth_truth") + (
                ("annotations/VA_Estimation_Challenge/Test_Set",) if n_test else ()):
        (out / sub).mkdir(parents=True, exist_ok=True)
    log.info("synthesizing %d videos of %.1f s at %.2f fps into %s (%d workers, annotation lag %.2f s)",
             n_videos, seconds, fps, out, workers, annotation_lag)

    from vaest.progress import track

    results: dict[str, dict[str, Any]] = {}
    if workers == 1:
        for job in track(jobs, "synthesizing videos"):
            results[job.name] = _build_video(job)
    else:
        # one video per process, one thread per process: keep BLAS/OpenMP pools of the children single-threaded
        saved = {k: os.environ.get(k) for k in _THREAD_ENV}
        os.environ.update({k: "1" for k in _THREAD_ENV})
        try:
            pool = ProcessPoolExecutor(max_workers=min(workers, n_videos), mp_context=mp.get_context("spawn"))
            futures = [pool.submit(_build_video, job) for job in jobs]
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        with pool:
            for fut in track(as_completed(futures), "synthesizing videos", total=len(futures)):
                res = fut.result()
                results[res["name"]] = res
    videos = [results[j.name] for j in jobs]
    taken = time.perf_counter() - t0
    summary = {
        "out": str(out),
        "train": [lab["label"] for v in videos if v["split"] == "Train_Set" for lab in v["labels"]],
        "val": [lab["label"] for v in videos if v["split"] == "Validation_Set" for lab in v["labels"]],
        "test": [lab["label"] for v in videos if v["split"] == "Test_Set" for lab in v["labels"]],
        "videos": [v["name"] for v in videos],
        "frames": {v["name"]: v["frames"] for v in videos},
        "total_frames": int(sum(v["frames"] for v in videos)),
        "seconds_taken": round(taken, 2),
        "seconds": round(taken, 2),  # alias of seconds_taken
        "cpu_seconds": round(sum(v["cpu_seconds"] for v in videos), 2),
    }
    from vaest.version import __version__
    from vaest.io import atomic_write_json, atomic_write_text

    # the organisers' fps table, as the real corpus ships it
    atomic_write_text(out / "videos_fps.csv", "video_name,fps\n" + "".join(f"{v['name']}.mp4,{fps}\n" for v in videos))

    atomic_write_json(
        out / "synth.json",
        {
            "generator": "vaest.corpus.synthetic",
            "vaest_version": __version__,
            "settings": {"n_videos": n_videos, "seconds": seconds, "seed": seed, "fps": fps,
                         "val_fraction": val_fraction, "test_fraction": test_fraction, "workers": workers, "annotation_lag": annotation_lag},
            "audio_rate": _AUDIO_RATE,
            "real_label_stats": REAL_LABEL_STATS,
            "videos": videos,
            "seconds_taken": summary["seconds_taken"],
        },
    )
    log.info(
        "synthetic corpus: %d videos, %d frames in %.1f s wall (%.1f s CPU in the workers) -> %s",
        n_videos, summary["total_frames"], taken, summary["cpu_seconds"], out,
    )
    return summary
