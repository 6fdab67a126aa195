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
from vaest.features.store import Expect, FeatureRecord, FeatureStore, LazyRecord
from vaest.metrics import RunningMoments
from vaest.sequences import Sequence
from vaest.timebase import TimeBase, nearest_index


INPUT_PARTS = ("emb", "probs", "conf")


def input_parts(inputs: str) -> tuple[str, ...]:
    """The parts named by a ``+``-joined ``inputs`` setting, in the fixed order emb, probs, conf."""
    parts = {p.strip() for p in str(inputs).split("+") if p.strip()}
    unknown = parts - set(INPUT_PARTS)
    if unknown or "emb" not in parts:
        raise VaestError(f"face inputs {inputs!r}: parts are {'+'.join(INPUT_PARTS)} and must include emb")
    return tuple(p for p in INPUT_PARTS if p in parts)


class FaceFrames:
    """One video's per-frame face inputs, built on demand from its record, rows at a time.

    Row ``t`` = [embedding, probabilities (both taken from the nearest face frame where frame ``t`` has none),
    confidence (0 where no face), extra columns], standardised with ``norm`` when set. Reading ``x[a:b]``
    gathers just those rows from the record (a :class:`~vaest.features.store.LazyRecord` whose arrays stay on
    disk, or an in-memory :class:`FeatureRecord`), so a training run holds the inputs of one batch, not of the
    corpus. Supports ``len``, ``shape`` and slicing, which is all :func:`vaest.windows.take_window` and
    :func:`vaest.sequences.predict_sequence` use.

    Args:
        rec: the ``face-<encoder>`` record.
        parts: which of ``emb``, ``probs``, ``conf`` to include (see :func:`input_parts`).
        extra: (n_frames, K) columns appended as they are (the motion inputs), in memory.
        moments: when given, the unstandardised rows of the face frames are added to it (one streaming pass).
        chunk: rows read at a time by that pass.
    Attributes:
        found: (n_frames,) bool, the face mask (record mask and finite embedding).
        norm: ``{"mean", "std"}`` applied to every row read (None = raw rows); rows still NaN (no face in the
            whole video) become 0 once standardised.
    """

    def __init__(self, rec: FeatureRecord | LazyRecord, parts: tuple[str, ...] = INPUT_PARTS,
                 extra: np.ndarray | None = None, moments: RunningMoments | None = None, chunk: int = 4096):
        self.rec, self.parts, self.extra = rec, parts, extra
        self.probs = rec.extras.get("probs") if "probs" in parts else None
        self.conf = rec.extras.get("conf") if "conf" in parts else None
        n = len(rec.mask)
        self.found = np.zeros(n, bool)
        mask = np.asarray(rec.mask, bool)
        for a in range(0, n, chunk):  # one pass over the record: the face mask (and the statistics)
            b = min(a + chunk, n)
            v = np.asarray(rec.values[a:b])
            f = mask[a:b] & np.isfinite(v).all(1)
            self.found[a:b] = f
            if moments is not None and f.any():
                rows = np.flatnonzero(f) + a  # face frames are their own source
                moments.add(self._assemble(v[f], rows, rows, f[f]))
        self.src = nearest_index(self.found)  # the frame each frame's embedding and probabilities come from
        self.norm: dict[str, list[float]] | None = None
        self.dim = int(rec.values.shape[1]) + (0 if self.probs is None else int(self.probs.shape[1])) + \
            ("conf" in parts) + (0 if extra is None else int(extra.shape[1]))

    def __len__(self) -> int:
        return len(self.found)

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.found), self.dim)

    def _assemble(self, emb: np.ndarray, rows: np.ndarray, src: np.ndarray, found: np.ndarray) -> np.ndarray:
        """Unstandardised inputs of frames ``rows`` (float32, (len(rows), dim)) from the embeddings ``emb`` of
        their source frames ``src`` and their face mask ``found``."""
        if self.probs is None and "conf" not in self.parts and self.extra is None:  # the embedding alone
            return np.asarray(emb, dtype=np.float32)
        cols = [emb]
        if self.probs is not None:
            cols.append(np.asarray(self.probs[src]))
        if "conf" in self.parts:
            conf = (found.astype(np.float32) if self.conf is None
                    else np.asarray(self.conf[rows], np.float32).reshape(-1))
            cols.append(np.where(found, np.nan_to_num(conf), 0.0)[:, None])
        if self.extra is not None:
            cols.append(self.extra[rows])
        return np.concatenate(cols, axis=1, dtype=np.float32)

    def raw(self, start: int, stop: int) -> np.ndarray:
        """Unstandardised rows ``start:stop``, (stop - start, dim) float32."""
        rows = np.arange(start, min(stop, len(self.found)))
        src = self.src[rows]
        return self._assemble(np.asarray(self.rec.values[src]), rows, src, self.found[rows])

    def __getitem__(self, idx: slice) -> np.ndarray:
        """Rows ``idx`` (a slice with step 1), standardised with ``norm`` when set; (rows, dim) float32."""
        if not isinstance(idx, slice) or idx.step not in (None, 1):
            raise IndexError("FaceFrames takes slices with step 1")
        start, stop, _ = idx.indices(len(self.found))
        x = self.raw(start, max(start, stop))
        return x if self.norm is None else apply_norm(x, self.norm, inplace=True)


def face_inputs(rec: FeatureRecord, parts: tuple[str, ...] = INPUT_PARTS, extra: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Unstandardised per-frame inputs of one whole video from its ``face-<encoder>`` record (:class:`FaceFrames`
    read at once).

    Returns:
        x (n_frames, D [+ C] [+ 1] [+ K]) float32 (see :class:`FaceFrames`); NaN rows only when the video has no
        face at all. found (n_frames,) bool, the face mask.
    """
    frames = FaceFrames(rec, parts, extra)
    return frames.raw(0, len(frames)), frames.found


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


def face_expect(encoder: str, dim: int | None = None, config_hash: str | None = None,
                who: str | None = None, features_hash: str | None = None, same_hash: bool = True) -> Expect:
    """What a reader of ``face-<encoder>`` records asks of them: the width given, else the encoder's own width
    where it is known without loading weights (:func:`vaest.features.face.encoder_feature_dim`); one config
    hash for every record (``config_hash``, else with ``same_hash`` the first record's: a training run); and,
    applying a trained model, the feature-space identity its checkpoint recorded (``features_hash``)."""
    from vaest.features.face_encoders import encoder_feature_dim

    return Expect(who or f"face encoder {encoder!r}", dim if dim is not None else encoder_feature_dim(encoder),
                  config_hash, same_hash, features_hash)


def open_face_frames(videos: list[Video], store: FeatureStore, encoder: str, motion: bool = False,
                     parts: tuple[str, ...] = INPUT_PARTS, expect: Expect | None = None,
                     moments: RunningMoments | None = None, stats_of: set[str] | None = None
                     ) -> tuple[list[tuple[Video, FaceFrames, float]], list[str]]:
    """(video, :class:`FaceFrames`, fps) for every video with stored features (their arrays left on disk), and
    the ids without.

    ``parts`` as in :class:`FaceFrames`; ``motion`` appends :func:`face_motion` from the video's ``facetrack``
    record (required then). ``expect`` (default :func:`face_expect`) refuses records of another width or
    config. ``moments``: the unstandardised face-frame rows of the videos in ``stats_of`` (all when None) are
    added to it while each record is opened (the one streaming pass of the normalisation statistics).
    """
    key = face_key(encoder)
    expect = expect or face_expect(encoder)
    out, missing = [], []
    for v in videos:
        if not store.path(key, v.id).exists() and not store.has(key, v.id):
            missing.append(v.id)
            continue
        rec = store.open(key, v.id, expect)
        declared = rec.meta.get("feature_dim")
        if declared is not None and int(declared) != rec.dim:
            raise FeatureError(f"{store.path(key, v.id)}: {rec.dim}-d values, but the record says its encoder "
                               f"{rec.meta.get('encoder', encoder)!r} gives {declared}-d features")
        fps = float(rec.base.rate)
        mot = None
        if motion:
            if not store.has("facetrack", v.id):
                raise FeatureError(f"{store.path('facetrack', v.id)}: no facetrack record for '{v.id}' (needed by the "
                                   "motion inputs; run `vaest extract face`, or train with motion: false)")
            mot = face_motion(store.load("facetrack", v.id), fps)
            if len(mot) != len(rec.mask):
                raise FeatureError(f"{store.path('facetrack', v.id)}: {len(mot)} frames, but {key} has "
                                   f"{len(rec.mask)}")
        add = moments if (moments is not None and (stats_of is None or v.id in stats_of)) else None
        out.append((v, FaceFrames(rec, parts, mot, moments=add), fps))
    return out, missing


def load_face_sequences(videos: list[Video], store: FeatureStore, encoder: str, motion: bool = False,
                        parts: tuple[str, ...] = INPUT_PARTS, expect: Expect | None = None
                        ) -> tuple[list[tuple[Video, np.ndarray, np.ndarray, float]], list[str]]:
    """(video, raw inputs in memory, face mask, fps) for every video with stored features, and the ids without
    (:func:`open_face_frames` read whole: for applying a model to a video or two)."""
    opened, missing = open_face_frames(videos, store, encoder, motion, parts, expect)
    return [(v, f.raw(0, len(f)), f.found, fps) for v, f, fps in opened], missing


def to_sequence(v: Video, x: "np.ndarray | FaceFrames", fps: float) -> Sequence:
    """A :class:`vaest.training.Sequence` on the frame grid with the video's labels (NaN where invalid)."""
    labels = v.labels_for(len(x)) if v.has_labels else np.full((len(x), 2), np.nan, np.float32)
    return Sequence(id=v.id, inputs={"x": x}, target=labels, base=TimeBase.frames(fps), n_frames=len(x), fps=fps,
                    frame_labels=labels if v.has_labels else None)
