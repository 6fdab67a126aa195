"""Mouth signal for cross-modal filtering: per-frame inner-lip area and the mouth-open rule (vaest and official forms).

The inner-lip area comes from FaceMesh landmarks (the polygon of the 20 inner-lip points, shoelace formula)
divided by the squared inter-ocular distance (outer eye corners 33-263), so it does not depend on the face's
size in the frame. The rule: the mouth is open where the 30-frame rolling mean of that area exceeds the video's
mean over its face frames (vaest: centred over the frame grid; the official data: trailing over the last 30
detected frames, :data:`REFERENCE_MOUTH`); gaps of at most 0.15 s between open runs are closed, then open runs of
at most 0.20 s are dropped. The audio modality uses the open flags and the face coverage to decide which
audio windows train and which audio tokens fusion may use.

The run-length helpers (:func:`runs`, :func:`close_gaps`, :func:`drop_short_runs`) work on any bool array
with a frame rate and are shared with the voice-activity code.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np

from vaest.corpus import Video
from vaest.errors import FeatureError
from vaest.features.base import Extractor, register_extractor
from vaest.features.face_geometry import EYE_OUTER, LANDMARK_GROUPS, FaceObs
from vaest.features.store import FeatureRecord
from vaest.media import FrameBatch, MediaInfo, fps_or_default
from vaest.timebase import TimeBase, TimeSeries

log = logging.getLogger(__name__)

INNER_LIP = LANDMARK_GROUPS["inner_lips"]
_EPS = 1e-6


# ---------------------------------------------------------------------------------------------------------
# Run-length helpers (bool arrays on a frame grid)
# ---------------------------------------------------------------------------------------------------------


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Half-open ``[start, end)`` index ranges of the True runs of a 1-D bool array, in order."""
    m = np.asarray(mask, dtype=bool).reshape(-1)
    if m.size == 0:
        return []
    d = np.diff(np.concatenate([[0], m.astype(np.int8), [0]]))
    starts = np.flatnonzero(d == 1)
    ends = np.flatnonzero(d == -1)
    return [(int(s), int(e)) for s, e in zip(starts, ends)]


def close_gaps(mask: np.ndarray, fps: float, max_gap_s: float) -> np.ndarray:
    """Set to True every False gap of at most ``max_gap_s`` seconds that lies between two True runs.

    Gaps before the first or after the last True run are left alone. Returns a new bool array.
    """
    m = np.asarray(mask, dtype=bool).reshape(-1).copy()
    limit = max_gap_s * fps + _EPS
    r = runs(m)
    for (_, e0), (s1, _) in zip(r[:-1], r[1:]):
        if s1 - e0 <= limit:
            m[e0:s1] = True
    return m


def drop_short_runs(mask: np.ndarray, fps: float, max_len_s: float) -> np.ndarray:
    """Set to False every True run of at most ``max_len_s`` seconds. Returns a new bool array."""
    m = np.asarray(mask, dtype=bool).reshape(-1).copy()
    limit = max_len_s * fps + _EPS
    for s, e in runs(m):
        if e - s <= limit:
            m[s:e] = False
    return m


def rolling_nanmean(x: np.ndarray, window: int, center: bool = True, min_periods: int = 1) -> np.ndarray:
    """Mean of the finite values in a ``window``-frame window around (``center``) or ending at each frame.

    NaN where the window holds fewer than ``min_periods`` (at least 1) finite values. Shape (n,) -> (n,).
    """
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    n = len(x)
    ok = np.isfinite(x)
    cs = np.concatenate([[0.0], np.cumsum(np.where(ok, x, 0.0))])
    cn = np.concatenate([[0], np.cumsum(ok)])
    i = np.arange(n)
    if center:
        lo = i - window // 2
        hi = lo + window
    else:
        hi = i + 1
        lo = hi - window
    lo = np.clip(lo, 0, n)
    hi = np.clip(hi, 0, n)
    cnt = cn[hi] - cn[lo]
    out = np.full(n, np.nan)
    has = cnt >= max(1, min_periods)
    out[has] = (cs[hi] - cs[lo])[has] / cnt[has]
    return out


# ---------------------------------------------------------------------------------------------------------
# Lip area and the mouth-open rule
# ---------------------------------------------------------------------------------------------------------


def polygon_area(pts: np.ndarray) -> np.ndarray:
    """Shoelace area of polygons (..., K, 2) -> (...); NaN where any vertex is NaN."""
    x, y = pts[..., 0], pts[..., 1]
    return 0.5 * np.abs(np.sum(x * np.roll(y, -1, axis=-1) - np.roll(x, -1, axis=-1) * y, axis=-1))


def lip_area(landmarks: np.ndarray, ids: Sequence[int] | None = None) -> np.ndarray:
    """Inner-lip area over squared inter-ocular distance, per frame.

    Args:
        landmarks: (n, K, >=2) landmark x, y in pixels: the 478 FaceMesh points (``ids`` None), or a subset
            whose FaceMesh ids are ``ids`` (e.g. the stored ``facetrack`` record with its ``landmark_ids``).
    Returns:
        (n,) float64, NaN where landmarks are missing.
    """
    lm = np.asarray(landmarks, dtype=np.float64)[..., :2]
    if ids is not None:
        pos = {int(k): j for j, k in enumerate(ids)}
        missing = [k for k in (*INNER_LIP, *EYE_OUTER) if k not in pos]
        if missing:
            raise FeatureError(f"landmark subset lacks FaceMesh ids {missing} needed for the lip area")
        take = lambda ks: lm[:, [pos[k] for k in ks]]  # noqa: E731
    else:
        take = lambda ks: lm[:, list(ks)]  # noqa: E731
    area = polygon_area(take(INNER_LIP))
    eyes = take(EYE_OUTER)
    iod2 = np.sum((eyes[:, 0] - eyes[:, 1]) ** 2, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = area / iod2
    out[~np.isfinite(out) | (iod2 <= 0)] = np.nan
    return out


@dataclass
class MouthConfig:
    """The mouth-open rule (defaults: vaest's form; :data:`REFERENCE_MOUTH`: the official one).

    Attributes:
        window: frames of the rolling mean of the lip area.
        center: centred window (True, no lag against the audio) or trailing (pandas' default).
        close_gap_s: gaps between open runs of at most this many seconds are closed.
        min_run_s: open runs of at most this many seconds are dropped (after gap closing).
        detected_only: the rolling window runs over the detected (face-found) frames only, skipping frames
            without a face, as a per-detection table does (the reference); False: over the frame grid.
        min_periods: frames with fewer finite values in their window get no mean (not open); the reference's
            trailing rolling mean (pandas ``rolling(30)``) needs the full 30 (:data:`REFERENCE_MOUTH`).

    vaest's default is a centred window over the frame grid (no lag against the audio, defined from the first
    frame); ``REFERENCE_MOUTH`` is the official form: a trailing mean over the last 30 detected frames compared
    with the video's mean raw area.
    """

    window: int = 30
    center: bool = True
    close_gap_s: float = 0.15
    min_run_s: float = 0.20
    detected_only: bool = False
    min_periods: int = 1


REFERENCE_MOUTH: dict[str, Any] = {"window": 30, "center": False, "detected_only": True, "min_periods": 30,
                                   "close_gap_s": 0.15, "min_run_s": 0.20}


def mouth_open(area: np.ndarray, fps: float, cfg: MouthConfig | None = None) -> np.ndarray:
    """Apply the mouth-open rule to a per-frame lip area (n,) with NaN where no face -> (n,) bool."""
    cfg = cfg or MouthConfig()
    a = np.asarray(area, dtype=np.float64).reshape(-1)
    ok = np.isfinite(a)
    if not ok.any():
        return np.zeros(len(a), dtype=bool)
    if cfg.detected_only:
        roll = np.full(len(a), np.nan)
        roll[ok] = rolling_nanmean(a[ok], cfg.window, cfg.center, cfg.min_periods)
    else:
        roll = rolling_nanmean(a, cfg.window, cfg.center, cfg.min_periods)
    with np.errstate(invalid="ignore"):
        open_ = ok & (roll > a[ok].mean())
    open_ = close_gaps(open_, fps, cfg.close_gap_s)
    return drop_short_runs(open_, fps, cfg.min_run_s)


# ---------------------------------------------------------------------------------------------------------
# Extractor
# ---------------------------------------------------------------------------------------------------------


@register_extractor("mouth")
class MouthExtractor(Extractor):
    """Store key ``mouth``: values (n, 1) normalised inner-lip area (NaN / masked where no landmarks); extras
    ``open`` (n,) bool (the mouth-open rule) and ``coverage`` (n,) bool (a face was found)."""

    Config: ClassVar[type] = MouthConfig
    requires: ClassVar[tuple[str, ...]] = ("facetrack",)

    def begin(self, videos: list[Video], info: MediaInfo) -> None:
        self.videos = videos
        self.info = info
        self.area: dict[str, list[np.ndarray]] = {v.id: [] for v in videos}
        self.found: dict[str, list[np.ndarray]] = {v.id: [] for v in videos}

    def update(self, batch: FrameBatch, shared: dict[str, Any]) -> None:
        obs_map: dict[str, FaceObs] | None = shared.get("facetrack")
        if obs_map is None:
            raise FeatureError("the mouth extractor needs the facetrack extractor to run before it")
        for v in self.videos:
            obs = obs_map[v.id]
            self.area[v.id].append(lip_area(obs.landmarks))
            self.found[v.id].append(obs.found)

    def end(self) -> dict[tuple[str, str], FeatureRecord]:
        fps = fps_or_default(self.info.fps)
        out = {}
        for v in self.videos:
            area = np.concatenate(self.area[v.id]) if self.area[v.id] else np.zeros(0)
            cov = np.concatenate(self.found[v.id]) if self.found[v.id] else np.zeros(0, bool)
            flags = mouth_open(area, fps, self.config)
            meta = {"open_share": float(flags.mean()) if len(flags) else 0.0,
                    "coverage": float(cov.mean()) if len(cov) else 0.0, "fps": fps}
            out[("mouth", v.id)] = FeatureRecord(
                TimeSeries(area.astype(np.float32), TimeBase.frames(fps), np.isfinite(area)),
                {"open": flags, "coverage": cov.astype(bool)}, meta)
        return out
