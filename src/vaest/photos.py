"""Photos: the valence and arousal of every face in a still picture (JPEG, PNG, WebP and other Pillow formats).

    >>> import vaest
    >>> p = vaest.Predictor()
    >>> res = p.predict("group.jpg")          # or p.predict(rgb_array) with an (H, W, 3) uint8 RGB array
    >>> res.frame                              # one row per detected face

A photo goes through the video path's own pieces, once: the picture in display orientation (its EXIF orientation
applied, :func:`vaest.media.read_image`), the MediaPipe full-range face detector with the person tracker's
settings (:func:`vaest.features.face_tracker.detect_faces`), the face crops of the predictor's face encoder (its crop
framing, mirror TTA and thread settings: :func:`vaest.features.persons.encode_person_frames`) and, zero-shot, the
same mapping of the encoder's outputs to valence/arousal (:func:`vaest.zeroshot.face_outputs_va`); with a trained
model bundle, its face model applied to each face as a one-frame sequence. No smoothing, no voice. The crops are
cut from the full-size picture: a photo is one array, so there is no batch to bound and nothing is reduced first
(the detector itself looks at a copy of at most ``det_side`` pixels).

Output (:attr:`vaest.predictor.PredictionResult.frame`, one row per face, ordered left to right):
``frame`` (1), ``time`` (0), ``person`` (0, 1, ... left to right; -1 on the one row of a photo without a face),
``box_x0, box_y0, box_x1, box_y1`` (pixels of the picture as shown), ``valence``, ``arousal``, ``source``
(``estimated`` / ``none``), ``face_valence``, ``face_arousal``, ``face_conf`` (detector score) and
``prob_<class>`` for each expression class of the encoder (its probabilities; encoders with a valence/arousal
head give those values directly).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from vaest.errors import MediaError, VaestError
from vaest.media import ImageInfo, read_image

log = logging.getLogger(__name__)

# The predictor's one-person store view (``vaest.predictor.person_view``): passed in by the predictor, which sits
# above this module, so that a trained face model is applied to a photo's faces as to a video's persons.
PersonView = Callable[..., Any]

PHOTO_FACE_NOTE = ("photo: every face found by the full-range face detector, each through the face encoder on its "
                   "own; no smoothing and no voice")
BOX = ("box_x0", "box_y0", "box_x1", "box_y1")


def as_rgb(image: np.ndarray) -> np.ndarray:
    """An image array as C-contiguous (H, W, 3) uint8 RGB: grey (H, W) is expanded, an alpha channel dropped;
    floats are taken as 0..1. Raises VaestError for anything else."""
    a = np.asarray(image)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4) or min(a.shape[:2]) < 2:
        raise VaestError(f"an image array must be (H, W, 3) RGB (or (H, W) grey, (H, W, 4) RGBA); got {a.shape}")
    a = a[:, :, :3]
    if a.dtype != np.uint8:
        if np.issubdtype(a.dtype, np.floating):
            a = np.clip(np.nan_to_num(a) * 255.0 + 0.5, 0, 255)
        a = np.clip(a, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(a)


def _persons(predictor: Any) -> Any:
    """The predictor's ``persons`` extractor (its tracker settings and face encoder serve photos too)."""
    ex = next((e for e in predictor.extractors if e.name == "persons"), None)
    if ex is None or getattr(ex, "face_encoder", None) is None:
        raise VaestError("this predictor has no face encoder for photos (its model has no face path)")
    return ex


def _detector(predictor: Any, cfg: Any) -> Any:
    """One MediaPipe detection graph per predictor, made on the first photo and reused (stateless per image)."""
    det = getattr(predictor, "_photo_detector", None)
    if det is None:
        from vaest.features.face_tracker import make_detector
        from vaest.progress import native_noise_filtered

        with native_noise_filtered():
            det = make_detector(cfg)
        predictor._photo_detector = det  # type: ignore[attr-defined]
    return det


def photo_faces(predictor: Any, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Faces of one RGB picture (H, W, 3): boxes (N, 4) in its pixels ordered by centre x, detector scores (N,)
    and the face encoder's outputs ``emb`` (N, E), ``probs`` (N, C) (and ``va`` (N, 2)); NaN rows for a face
    whose crop is empty."""
    from vaest.features.face_tracker import detect_faces
    from vaest.features.persons import encode_person_frames

    ex = _persons(predictor)
    boxes, scores = detect_faces(_detector(predictor, ex.config), rgb, int(ex.config.det_side))
    order = np.argsort(0.5 * (boxes[:, 0] + boxes[:, 2]), kind="stable")
    boxes, scores = boxes[order], scores[order]
    # the N crops all come from one picture: a broadcast view stands for N "frames" without copying it
    frames = np.broadcast_to(rgb[None], (len(boxes),) + rgb.shape)
    return boxes, scores, encode_person_frames(ex.face_encoder, frames, boxes)


def _bundle_face_va(predictor: Any, boxes: np.ndarray, scores: np.ndarray, enc: dict[str, np.ndarray],
                    size: tuple[int, int], name: str, person_view: PersonView) -> np.ndarray:
    """(N, 2) valence/arousal of each face from the bundle's trained face model, each face a one-frame sequence
    (a one-person view of the store built by ``person_view``, as the video path builds per person)."""
    from vaest.corpus import Video
    from vaest.features.face_geometry import LANDMARK_IDS
    from vaest.features.person_tracker import PersonTracks

    model = predictor.models.get("face")
    n = len(boxes)
    out = np.full((n, 2), np.nan, np.float32)
    if model is None or not n:
        return out
    tracks = PersonTracks(np.arange(n), boxes[:, None].astype(np.float32), scores[:, None].astype(np.float32),
                          np.full((n, 1, len(LANDMARK_IDS), 2), np.nan, np.float32), np.zeros((n, 1), np.float32),
                          30.0, size)
    video = Video(id=name, media=None, split="predict", fps=30.0)
    for i in range(n):
        one = {k: v[i:i + 1] for k, v in enc.items()}
        if not np.isfinite(one["emb"]).all():
            continue
        tr = model.apply(person_view(tracks, one, i, model.encoder, name), video)
        if tr is not None and tr.mask.any():
            out[i] = tr.va[0]
    return out


def predict_photo(predictor: Any, image: str | Path | np.ndarray, person_view: PersonView | None = None,
                  name: str | None = None) -> tuple[Any, dict[str, Any]]:
    """Valence/arousal of every face of a photo (a path, or an RGB array (H, W, 3) uint8) with a
    :class:`vaest.predictor.Predictor`'s models: (the table, one row per face, see the module docstring; its
    metadata), which the predictor wraps as its result. ``person_view``: the predictor's one-person store view,
    needed with a trained bundle. ``name`` labels an array in the metadata. Raises MediaError naming the file for
    an unreadable one."""
    import pandas as pd

    from vaest.config import versions
    from vaest.progress import native_noise_filtered

    t0 = time.perf_counter()
    if isinstance(image, (str, Path)):
        rgb, info = read_image(image)
        label = str(Path(image).resolve())
    else:
        rgb = as_rgb(image)
        info = ImageInfo(None, (rgb.shape[1], rgb.shape[0]), 1, (rgb.shape[1], rgb.shape[0]))
        label = name or "array"
    with native_noise_filtered():
        boxes, scores, enc = photo_faces(predictor, rgb)
    classes = list(_persons(predictor).face_encoder.encoder.classes)
    n = len(boxes)
    notes = [PHOTO_FACE_NOTE]
    if predictor.bundle is None:
        from vaest.zeroshot import face_outputs_va

        va = face_outputs_va(enc, classes) if n else np.zeros((0, 2), np.float32)
        notes.append(f"face: zero-shot {predictor.face_backbone}: its own valence/arousal head where it has one, "
                     "else its expression probabilities mapped onto the circumplex")
    else:
        if person_view is None:
            raise VaestError("a trained bundle's face model needs the predictor's person_view for photos")
        va = _bundle_face_va(predictor, boxes, scores, enc, info.size, Path(label).stem, person_view)
        notes.append("face: the bundle's face model, each face a one-frame sequence")
    ok = np.isfinite(va).all(1) if n else np.zeros(0, bool)
    cols: dict[str, Any] = {"frame": np.ones(max(n, 1), np.int64), "time": np.zeros(max(n, 1))}
    if n:
        cols["person"] = np.arange(n, dtype=np.int64)
        for j, c in enumerate(BOX):
            cols[c] = boxes[:, j].astype(np.float64)
        cols["valence"], cols["arousal"] = va[:, 0], va[:, 1]
        cols["source"] = np.where(ok, "estimated", "none")
        cols["face_valence"], cols["face_arousal"] = va[:, 0], va[:, 1]
        cols["face_conf"] = scores.astype(np.float64)
        for j, c in enumerate(classes):
            cols[f"prob_{c}"] = enc["probs"][:, j]
    else:
        notes.append("no face found in the photo (person -1 = nobody)")
        cols.update({"person": np.array([-1]), **{c: [np.nan] for c in BOX}, "valence": [np.nan],
                     "arousal": [np.nan], "source": ["none"], "face_valence": [np.nan], "face_arousal": [np.nan],
                     "face_conf": [np.nan], **{f"prob_{c}": [np.nan] for c in classes}})
    df = pd.DataFrame(cols)
    meta = {"input": label, "kind": "photo",
            "model": str(predictor.model_path.resolve()) if predictor.model_path else "zero-shot",
            "modalities": ["face"] if ok.any() else [], "faces": int(n), "frames_estimated": int(ok.any()),
            "n_frames": 1, "rows": int(len(df)), "classes": classes, "picture": info.describe(), "notes": notes,
            "device": predictor.device, "versions": versions(), "seconds": round(time.perf_counter() - t0, 3)}
    return df, meta


def draw_photo(image: str | Path | np.ndarray, df: Any, path: str | Path) -> Path:
    """Write the photo (display orientation) with each face's box and its person id, valence and arousal as a PNG,
    atomically; the picture is reduced to at most 1280 px on its longer side."""
    import cv2

    from vaest.io import atomic_path

    rgb = read_image(image)[0] if isinstance(image, (str, Path)) else as_rgb(image)
    s = min(1.0, 1280 / max(rgb.shape[:2]))
    img = cv2.resize(rgb, (round(rgb.shape[1] * s), round(rgb.shape[0] * s)), interpolation=cv2.INTER_AREA) \
        if s < 1 else rgb.copy()
    th = max(1, round(max(img.shape[:2]) / 400))
    for r in df.itertuples(index=False):
        b = [getattr(r, c) for c in BOX]
        if not np.isfinite(b).all():
            continue
        x0, y0, x1, y1 = (int(round(v * s)) for v in b)
        cv2.rectangle(img, (x0, y0), (x1, y1), (255, 200, 0), th)
        txt = f"{int(r.person)}: v {r.valence:+.2f} a {r.arousal:+.2f}" if np.isfinite(r.valence) else f"{int(r.person)}"
        cv2.putText(img, txt, (x0, max(12, y0 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.35 * th, (255, 200, 0), th)
    with atomic_path(path, suffix=".tmp.png") as tmp:
        if not cv2.imwrite(str(tmp), cv2.cvtColor(img, cv2.COLOR_RGB2BGR)):
            raise MediaError(f"{path}: could not write the image")
    return Path(path)
