"""Face inputs of one video, as the face model reads them in training and when applied.

Inputs per frame: the encoder's embedding, its expression probabilities and the detector confidence
(``face-<encoder>`` record). Frames with no face take the nearest face frame's embedding and probabilities
(the reference rule) and keep confidence 0, so the model can tell filled frames from seen ones. Optionally
(``motion``) five face-track kinematics from the ``facetrack`` record are appended (:func:`face_motion`).
Inputs are standardised with the train-split statistics saved in the checkpoint (:func:`apply_norm`).
"""

from __future__ import annotations

import numpy as np

from vaest.corpus import Video
from vaest.errors import FeatureError, VaestError
from vaest.features.face_registry import face_key
from vaest.features.store import FeatureRecord, FeatureStore
from vaest.sequences import Sequence
from vaest.timebase import TimeBase, fill_nearest


INPUT_PARTS = ("emb", "probs", "conf")


def input_parts(inputs: str) -> tuple[str, ...]:
    """The parts named by a ``+``-joined ``inputs`` setting, in the fixed order emb, probs, conf."""
    parts = {p.strip() for p in str(inputs).split("+") if p.strip()}
    unknown = parts - set(INPUT_PARTS)
    if unknown or "emb" not in parts:
        raise VaestError(f"face inputs {inputs!r}: parts are {'+'.join(INPUT_PARTS)} and must include emb")
    return tuple(p for p in INPUT_PARTS if p in parts)


def face_inputs(rec: FeatureRecord, parts: tuple[str, ...] = INPUT_PARTS, extra: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Unstandardised per-frame inputs of one video from its ``face-<encoder>`` record.

    Args:
        parts: which of ``emb``, ``probs``, ``conf`` to include (see :func:`input_parts`).
        extra: (n_frames, K) columns appended as they are (the motion inputs).
    Returns:
        x (n_frames, D [+ C] [+ 1] [+ K]) float32 = [embedding, probabilities (both filled from the nearest face
        frame), confidence (0 where no face), extra]; NaN rows only when the video has no face at all. Built in
        one array (a 10-minute video's inputs are ~20 MB: no copies of them).
        found (n_frames,) bool, the face mask.
    """
    found = np.asarray(rec.mask, bool) & np.isfinite(rec.values).all(1)
    cols = [rec.values]
    if "probs" in parts and "probs" in rec.extras:
        cols.append(rec.extras["probs"])
    filled = sum(c.shape[1] for c in cols)  # the embedding and probabilities: filled from the nearest face frame
    if "conf" in parts:
        conf = np.asarray(rec.extras.get("conf", found.astype(np.float32)), np.float32).reshape(-1, 1)
        cols.append(np.where(found[:, None], np.nan_to_num(conf), 0.0))
    if extra is not None:
        cols.append(extra)
    x = np.concatenate(cols, axis=1, dtype=np.float32)
    fill_nearest(x[:, :filled], found, inplace=True)
    return x, found


MOTION_FEATURES = ("vx", "vy", "vscale", "roll", "vroll")


def face_motion(track: FeatureRecord, fps: float) -> np.ndarray:
    """Face-track kinematics per frame from a ``facetrack`` record, shape (n_frames, 5) float32.

    Columns: box-centre velocity x and y and log box-size rate (face widths per second), the roll of the line
    through the outer eye corners (radians, 0 = level) and its rate (radians per second). Velocities are 0
    where this frame or the previous one has no face; roll is 0 where there are no landmarks.
    """
    from vaest.features.face_geometry import EYE_OUTER

    boxes = np.asarray(track.values, np.float64)
    n = len(boxes)
    found = np.asarray(track.mask, bool) & np.isfinite(boxes).all(1)
    out = np.zeros((n, len(MOTION_FEATURES)), np.float32)
    if n == 0:
        return out
    w = np.where(found, np.maximum(boxes[:, 2] - boxes[:, 0], 1.0), np.nan)
    cx, cy = 0.5 * (boxes[:, 0] + boxes[:, 2]), 0.5 * (boxes[:, 1] + boxes[:, 3])
    both = found & np.concatenate([[False], found[:-1]])
    scale = np.where(both, np.concatenate([[np.nan], w[:-1]]), np.nan)  # previous frame's face width
    with np.errstate(invalid="ignore", divide="ignore"):
        out[:, 0] = np.nan_to_num(np.diff(cx, prepend=np.nan) / scale * fps)
        out[:, 1] = np.nan_to_num(np.diff(cy, prepend=np.nan) / scale * fps)
        out[:, 2] = np.nan_to_num(np.where(both, np.diff(np.log(w), prepend=np.nan), np.nan) * fps)
    lms, ids = track.extras.get("landmarks"), track.meta.get("landmark_ids")
    if lms is not None and ids is not None:
        pos = {int(k): j for j, k in enumerate(ids)}
        if all(k in pos for k in EYE_OUTER):
            e = lms[:, pos[EYE_OUTER[1]]] - lms[:, pos[EYE_OUTER[0]]]
            roll = np.arctan2(e[:, 1], e[:, 0])
            ok = np.isfinite(roll)
            prev_ok = np.concatenate([[False], ok[:-1]])
            out[:, 3] = np.where(ok, roll, 0.0)
            out[:, 4] = np.where(ok & prev_ok, np.diff(np.where(ok, roll, 0.0), prepend=0.0) * fps, 0.0)
    return out


def apply_norm(x: np.ndarray, norm: dict[str, list[float]], inplace: bool = False) -> np.ndarray:
    """Standardise (n, D) inputs; rows that are still NaN (video without any face) become 0 (the train mean).

    ``inplace`` (a float32 ``x`` the caller owns): standardise ``x`` itself, no copy of a long sequence."""
    mean, std = np.asarray(norm["mean"], np.float32), np.asarray(norm["std"], np.float32)
    if inplace and x.dtype == np.float32:
        z = x
        z -= mean
    else:
        z = x - mean
    z /= std
    return np.nan_to_num(z, nan=0.0, copy=False).astype(np.float32, copy=False)


def load_face_sequences(videos: list[Video], store: FeatureStore, encoder: str, motion: bool = False,
                        parts: tuple[str, ...] = INPUT_PARTS
                        ) -> tuple[list[tuple[Video, np.ndarray, np.ndarray, float]], list[str]]:
    """(video, raw inputs, face mask, fps) for every video with stored features, and the ids without.

    ``parts`` as in :func:`face_inputs`; ``motion`` appends :func:`face_motion` from the video's ``facetrack``
    record (required then).
    """
    key = face_key(encoder)
    out, missing = [], []
    for v in videos:
        if not store.has(key, v.id):
            missing.append(v.id)
            continue
        rec = store.load(key, v.id)
        fps = float(rec.base.rate)
        mot = None
        if motion:
            if not store.has("facetrack", v.id):
                raise FeatureError(f"{store.path('facetrack', v.id)}: no facetrack record for '{v.id}' (needed by the "
                                   "motion inputs; run `vaest extract face`, or train with motion: false)")
            mot = face_motion(store.load("facetrack", v.id), fps)
            if len(mot) != len(rec.values):
                raise FeatureError(f"{store.path('facetrack', v.id)}: {len(mot)} frames, but {key} has "
                                   f"{len(rec.values)}")
        x, found = face_inputs(rec, parts, mot)
        out.append((v, x, found, fps))
    return out, missing


def to_sequence(v: Video, x: np.ndarray, fps: float) -> Sequence:
    """A :class:`vaest.training.Sequence` on the frame grid with the video's labels (NaN where invalid)."""
    labels = v.labels_for(len(x)) if v.has_labels else np.full((len(x), 2), np.nan, np.float32)
    return Sequence(id=v.id, inputs={"x": x}, target=labels, base=TimeBase.frames(fps), n_frames=len(x), fps=fps,
                    frame_labels=labels if v.has_labels else None)
