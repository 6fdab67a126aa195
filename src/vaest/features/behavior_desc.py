"""Offline behavior descriptors (``behavior-desc``: CPU, no model download; needs ``facetrack``).

Per frame: head pose (yaw/pitch proxies and roll from FaceMesh landmarks), head motion, eye aspect ratio, mouth
opening, width and corner lift, brow raise, face size/position, body and hand motion energy outside the face box
(frame differences on small grey frames), a posture proxy (where the edge and motion energy sit below the face);
per segment (:mod:`vaest.features.segments`) their mean and std, plus face coverage, blink rate and mouth
activity.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np

from vaest.corpus import Video
from vaest.features.base import Extractor, register_extractor
from vaest.features.face_geometry import box_iou, person_window
from vaest.features.face_tracker import track_key
from vaest.features.segments import Segment, SegmentConfig, plan_segments, segment_base, segment_extras, segment_meta
from vaest.features.store import FeatureRecord
from vaest.media import FrameBatch, MediaInfo, fps_or_default
from vaest.timebase import TimeSeries

log = logging.getLogger(__name__)

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

    The window is :func:`vaest.features.face_geometry.person_window` (``margin`` face widths either side, half a face
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
            if track_key(v):  # one person of a two-person video: their own crop
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
            meta = segment_meta(v.id, segs, n, self.fps, self.config.segments)
            meta["feature_names"] = names
            ok = np.asarray([s.stop > s.first for s in segs], bool)
            out[(self.name, v.id)] = FeatureRecord(TimeSeries(vals, segment_base(self.config.segments), ok),
                                                   segment_extras(segs), meta)
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
