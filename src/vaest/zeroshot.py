"""Zero-shot valence/arousal: estimates without a trained vaest model, for a fresh machine.

- face: :func:`zero_shot_face` maps a frame encoder's expression probabilities onto the circumplex;
- voice: :func:`zero_shot_audio` (see its docstring for what it measures and what it does not).

The :class:`vaest.predictor.Predictor` uses these when it is given no model.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from vaest.features.face import zero_shot_va


def zero_shot_face(probs: np.ndarray, classes: Sequence[str]) -> np.ndarray:
    """(n, C) expression probabilities -> (n, 2) valence/arousal (see :func:`vaest.features.face.zero_shot_va`)."""
    return zero_shot_va(probs, classes)


def zero_shot_audio(wav: np.ndarray, sr: int = 16000, fps: float = 30.0) -> np.ndarray:
    """Heuristic arousal from loudness, on a ``fps`` grid: (n, 2) with valence NaN.

    Arousal = tanh((dB - median dB) / 12) over 50 ms RMS frames of the file, where speech-level loudness is
    judged against the file's own median: a relative measure (louder than usual -> more aroused), not a
    calibrated one. It exists so audio-only files give a curve on a fresh machine; train an audio model for
    real estimates.
    """
    hop = int(round(sr / fps))
    n = max(1, int(math.ceil(len(wav) / hop)))
    pad = np.zeros(n * hop, np.float32)
    pad[: len(wav)] = wav[: n * hop]
    rms = np.sqrt(np.mean(pad.reshape(n, hop) ** 2, axis=1) + 1e-10)
    db = 20 * np.log10(rms)
    voiced = db > db.max() - 40
    ref = np.median(db[voiced]) if voiced.any() else np.median(db)
    ar = np.tanh((db - ref) / 12.0)
    out = np.full((n, 2), np.nan, np.float32)
    out[:, 1] = ar
    return out
