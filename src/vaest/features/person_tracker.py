"""Identity tracks of every face in a video (see ``docs/persons.md`` for the rules and figures).

- :class:`PersonTracker` follows every face of a video with a stable person id: box overlap from frame to
  frame, gated by an appearance descriptor (:func:`appearance`), and re-identification by that descriptor
  after a miss, an occlusion or a cut. Between detections FaceMesh follows each person, as the single-face
  :class:`vaest.features.face_tracker.FaceTracker` does.
- :func:`finalize_tracks` drops flickers and merges tracks of one person the online pass kept apart;
  :func:`track_persons` runs the whole thing over a media file -> :class:`PersonTracks`;
  :func:`person_tracks_from_record` reads the ``persons`` extractor's record back into one.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vaest.errors import VaestError
from vaest.features.face_geometry import LANDMARK_IDS, LANDMARK_INDEX, N_LANDMARKS, box_iou, square_box
from vaest.features.face_tracker import FaceTrackConfig, FaceTracker, TrackState, detect_faces, make_detector
from vaest.features.mouth import lip_area
from vaest.features.store import FeatureRecord

# face encoder outputs kept per person: embedding, class probabilities, a valence/arousal head's output, and the
# zero-shot ensemble's arousal reading (vaest.features.face_onnx.FaceEnsembleOnnx)
ENCODER_OUTPUTS = ("emb", "probs", "va", "probs_arousal")

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------------
# Appearance descriptor
# ---------------------------------------------------------------------------------------------------------

_HIST_BINS = (12, 4)  # hue x saturation bins
_GREY_BINS = 8  # value bins of the unsaturated pixels


def _region_hist(img: np.ndarray) -> np.ndarray:
    """Hue-saturation histogram of an RGB region plus a brightness histogram of its grey pixels, L1 = 1."""
    import cv2

    small = cv2.resize(np.ascontiguousarray(img), (24, 24), interpolation=cv2.INTER_AREA)
    hsv = cv2.cvtColor(small, cv2.COLOR_RGB2HSV).reshape(-1, 3).astype(np.int32)
    h, s, v = hsv[:, 0], hsv[:, 1], hsv[:, 2]
    colour = s >= 40
    hs = np.zeros(_HIST_BINS[0] * _HIST_BINS[1], np.float64)
    idx = (h[colour] * _HIST_BINS[0] // 180) * _HIST_BINS[1] + (s[colour] * _HIST_BINS[1] // 256)
    np.add.at(hs, idx, 1.0)
    grey = np.bincount(v[~colour] * _GREY_BINS // 256, minlength=_GREY_BINS).astype(np.float64)
    out = np.concatenate([hs, grey])
    return out / max(out.sum(), 1.0)


def appearance(frame: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Appearance descriptor of the person whose face box is ``box`` in an RGB ``frame`` (H, W, 3).

    Colour histograms (12 hue x 4 saturation bins + 8 brightness bins of the grey pixels) of two regions: the
    face square and the chest below it (as wide as 1.6 faces, one face high, starting 0.2 face below the chin).
    Each is square-rooted (Hellinger) and the pair is L2-normalised, so the dot product of two descriptors is a
    similarity in [0, 1]. Skin tone, hair and clothes are what tells people apart here; unlike the expression
    encoder's features, the descriptor does not move when the person smiles. ~0.1 ms per face.

    Returns:
        (2 * 56,) float32.
    """
    H, W = frame.shape[:2]
    sq = square_box(box, 1.0, 0.0)
    side = sq[2] - sq[0]
    cx = 0.5 * (sq[0] + sq[2])
    chest = np.array([cx - 0.8 * side, sq[3] + 0.2 * side, cx + 0.8 * side, sq[3] + 1.2 * side], np.float32)
    parts = []
    for b in (sq, chest):
        x0, y0 = int(max(0, math.floor(b[0]))), int(max(0, math.floor(b[1])))
        x1, y1 = int(min(W, math.ceil(b[2]))), int(min(H, math.ceil(b[3])))
        if x1 - x0 < 4 or y1 - y0 < 4:
            parts.append(np.zeros(_HIST_BINS[0] * _HIST_BINS[1] + _GREY_BINS))
        else:
            parts.append(np.sqrt(_region_hist(frame[y0:y1, x0:x1])))
    d = np.concatenate(parts)
    return (d / max(float(np.linalg.norm(d)), 1e-9)).astype(np.float32)


def _thumb(frame: np.ndarray) -> np.ndarray:
    """(36, 64, 3) float32 colour thumbnail for cut detection."""
    import cv2

    return cv2.resize(np.ascontiguousarray(frame), (64, 36), interpolation=cv2.INTER_AREA).astype(np.float32)


def cut_fraction(prev: np.ndarray, cur: np.ndarray, level: float = 24.0) -> float:
    """Share of thumbnail pixels whose colour changed by more than ``level`` (any channel) between two frames:
    ~0 within a shot (talking, small head motion), most of the frame at a cut."""
    return float((np.abs(cur - prev).max(-1) > level).mean())


def scheduled_detection(cfg: PersonTrackConfig, frame_no: int, cut: bool) -> bool:
    """Whether frame ``frame_no`` is detected whatever the tracker's state: at a cut, every ``detect_every``-th
    frame, every frame without FaceMesh (the tracker also detects while a person is lost)."""
    return cut or not cfg.mesh or frame_no % max(1, cfg.detect_every) == 0


def detect_with_appearance(detector: Any, frame: np.ndarray, det_side: int
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Faces of one RGB frame (:func:`vaest.features.face_tracker.detect_faces`) with their :func:`appearance`:
    boxes (N, 4), scores (N,), appearance descriptors (N, D)."""
    boxes, scores = detect_faces(detector, frame, det_side)
    apps = np.stack([appearance(frame, bx) for bx in boxes]) if len(boxes) else np.zeros((0, 1), np.float32)
    return boxes, scores, apps


class ShotCuts:
    """Shot-cut flags of a stream of frames: a frame starts a new shot when at least ``share`` of its
    thumbnail's pixels changed (:func:`cut_fraction`) from the frame before. It depends on the frames alone
    (state: the last thumbnail), so the ``persons`` extractor computes it in the decoding thread."""

    def __init__(self, share: float):
        self.share = share
        self._prev: np.ndarray | None = None

    def flags(self, frames: np.ndarray) -> np.ndarray:
        """(B,) bool for the next consecutive frames (B, H, W, 3)."""
        out = np.zeros(len(frames), bool)
        for b in range(len(frames)):
            th = _thumb(frames[b])
            out[b] = self._prev is not None and cut_fraction(self._prev, th) >= self.share
            self._prev = th
        return out


@dataclass
class Prepared:
    """What the tracker needs of a batch that depends on its frames alone (:class:`FramePrep`).

    Attributes:
        cuts: (B,) bool shot-cut flags.
        dets: batch row -> (boxes (N, 4), scores (N,), appearances (N, D)) on the frames where the tracker
            detects whatever its state (every ``detect_every``-th frame, cuts; every frame without FaceMesh).
    """

    cuts: np.ndarray
    dets: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]


class FramePrep:
    """Shot cuts and the scheduled face detections (with their appearance descriptors) of consecutive batches,
    computed ahead of :meth:`PersonTracker.process` (the ``persons`` extractor runs it in the decoding thread,
    with its own detection graph: MediaPipe computes without the GIL, so on two cores detection overlaps
    with the tracker's FaceMesh). Detection is stateless, so the tracker gets exactly what it would compute."""

    def __init__(self, cfg: PersonTrackConfig):
        self.cfg = cfg
        self.shots = ShotCuts(cfg.cut_share)
        self.detector = make_detector(cfg)
        self.frame_no = 0

    def close(self) -> None:
        self.detector.close()

    def __call__(self, frames: np.ndarray) -> Prepared:
        cuts = self.shots.flags(frames)
        dets = {b: detect_with_appearance(self.detector, frames[b], self.cfg.det_side) for b in range(len(frames))
                if scheduled_detection(self.cfg, self.frame_no + b, bool(cuts[b]))}
        self.frame_no += len(frames)
        return Prepared(cuts, dets)


# ---------------------------------------------------------------------------------------------------------
# Online tracker
# ---------------------------------------------------------------------------------------------------------


@dataclass
class PersonTrackConfig(FaceTrackConfig):
    """Settings of the person tracker (the detection / FaceMesh settings are :class:`FaceTrackConfig`'s).

    Attributes:
        det_side: as in :class:`FaceTrackConfig`, but 640 by default: frames with several people are often wide
            (two 480 x 360 clips side by side make 960 x 360) and a 320-pixel copy leaves each face too few pixels
            for stable boxes (the side-by-side test: mean zero-shot valence of the right person -0.16 at 320, -0.26
            at 640, -0.33 for the clip alone).
        iou_min: a detection continues a track when its box overlaps the track's last box by at least this ...
        app_min: ... and its appearance similarity to the person is at least this ...
        app_margin: ... and not lower than its best similarity to any person by more than this (a different
            person who steps into the same place, or is there after a cut, is not taken for the one who was
            there; two people who look alike are told apart by position).
        reid_min: a detection that continues no track takes the id of the most similar person not on this frame
            when the similarity is at least this; else it starts a new person.
        cut_share: a frame is a cut when at least this share of the pixels of a 64x36 colour thumbnail changed
            by more than 24 levels since the previous frame (:func:`cut_fraction`): the detector runs there
            (FaceMesh would follow the old places into the new shot) and the matching rules decide. A false cut
            costs one detection.
        app_momentum: a person's descriptor is the running mean ``m * old + (1 - m) * new`` over detections.
        min_track_s: after tracking, persons seen on fewer frames than this many seconds are dropped (flickers,
            false detections).
        merge_min: after tracking, two persons never on screen together whose mean descriptors are at least this
            similar are merged into the earlier one.
    """

    det_side: int = 640
    iou_min: float = 0.3
    app_min: float = 0.6
    app_margin: float = 0.1
    reid_min: float = 0.8
    cut_share: float = 0.12
    app_momentum: float = 0.9
    min_track_s: float = 0.5
    merge_min: float = 0.9


class _Person(TrackState):
    """One person's tracking state: the face track plus identity."""

    def __init__(self, pid: int, mesh: Any | None, app: np.ndarray, first: int):
        super().__init__(mesh)
        self.pid = pid
        self.app = app
        self.first = first
        self.n_app = 1
        self.n_found = 0  # frames visible so far
        self.sum_cx = 0.0  # sum of the box centre x over those frames


@dataclass
class PersonTracks:
    """Per-person face tracks of one video.

    Attributes:
        ids: (P,) person ids, stable within the video (0, 1, ... by first appearance after :func:`finalize_tracks`).
        boxes: (P, n, 4) float32 pixel boxes [x0, y0, x1, y1], NaN where the person is not visible.
        conf: (P, n) float32 detector confidence (0 where not visible).
        landmarks: (P, n, K, 2) float32 FaceMesh landmark x, y (the ``landmark_ids`` subset), NaN where missing.
        appearance: (P, D) float32 mean appearance descriptor of each person.
        fps: frame rate of the frame grid.
        frame_size: (width, height) of the frames the boxes are in.
        landmark_ids: the K FaceMesh ids of ``landmarks``.
        cuts: frame indices detected as cuts.
    """

    ids: np.ndarray
    boxes: np.ndarray
    conf: np.ndarray
    landmarks: np.ndarray
    appearance: np.ndarray
    fps: float
    frame_size: tuple[int, int]
    landmark_ids: tuple[int, ...] = LANDMARK_IDS
    cuts: list[int] = field(default_factory=list)

    @property
    def n_frames(self) -> int:
        return int(self.boxes.shape[1])

    @property
    def found(self) -> np.ndarray:
        """(P, n) bool: the person is visible."""
        return np.isfinite(self.boxes).all(-1)

    def index(self, pid: int) -> int:
        """Row of person ``pid``; VaestError if the video has no such person."""
        hit = np.flatnonzero(self.ids == pid)
        if not len(hit):
            raise VaestError(f"no person {pid} in this video; persons: {', '.join(map(str, self.ids)) or 'none'}")
        return int(hit[0])

    def share(self) -> dict[int, float]:
        """Fraction of the video's frames on which each person is visible."""
        n = max(self.n_frames, 1)
        return {int(p): float(f.sum() / n) for p, f in zip(self.ids, self.found)}

    def mean_x(self) -> dict[int, float]:
        """Mean horizontal box centre of each person over the frames they are visible on (pixels)."""
        cx = 0.5 * (self.boxes[..., 0] + self.boxes[..., 2])
        return {int(p): float(np.nanmean(c)) if np.isfinite(c).any() else math.nan for p, c in zip(self.ids, cx)}

    def lip_area(self) -> np.ndarray:
        """(P, n) inner-lip area over squared inter-ocular distance (:func:`vaest.features.mouth.lip_area`)."""
        if not len(self.ids):
            return np.zeros((0, self.n_frames))
        return np.stack([lip_area(lm, self.landmark_ids) for lm in self.landmarks])


class PersonTracker(FaceTracker):
    """Detection + FaceMesh tracking of every person of one media file (create one per media file).

    Per frame: detect (every ``detect_every`` frames, and on every frame while a person is lost or after a
    cut), match detections to persons (see :meth:`_assign`), and between detections follow each person's face
    with its own FaceMesh graph. Call :meth:`process` on consecutive batches, then :meth:`result`.
    """

    def __init__(self, cfg: PersonTrackConfig | None = None):
        super().__init__(cfg or PersonTrackConfig(), [])
        self.cfg: PersonTrackConfig
        self.persons: list[_Person] = []
        self._shots = ShotCuts(self.cfg.cut_share)
        self._boxes: dict[int, list[np.ndarray]] = {}
        self._conf: dict[int, list[np.ndarray]] = {}
        self._lms: dict[int, list[np.ndarray]] = {}
        self._n_done = 0
        self._result: tuple[tuple[int, float], PersonTracks] | None = None  # result()'s, for its state
        self.cuts: list[int] = []
        self.size = (0, 0)

    def close(self) -> None:
        super().close()
        for p in self.persons:
            if p.mesh is not None:
                p.mesh.close()
                p.mesh = None

    def _new_person(self, app: np.ndarray) -> _Person:
        p = _Person(len(self.persons), self._make_mesh(), app, self.frame_no)
        self.persons.append(p)
        return p

    def _assign(self, boxes: np.ndarray, apps: np.ndarray) -> dict[int, int]:
        """Detection index -> person list index for one detection frame.

        1. Continuation: pairs (person with a last box, detection) with box IoU >= ``iou_min``, appearance
           similarity >= ``app_min`` and not lower than the detection's best similarity to anyone by more than
           ``app_margin`` (it does not clearly look like someone else), taken greedily by IoU + similarity.
        2. Re-identification: each remaining detection (largest first) takes the most similar person not yet
           assigned on this frame when the similarity is >= ``reid_min``.
        3. Anything left starts a new person.
        """
        cfg = self.cfg
        out: dict[int, int] = {}
        taken: set[int] = set()
        if len(boxes) and self.persons:
            sims = apps @ np.stack([p.app for p in self.persons]).T  # (N, P)
            best = sims.max(1)
            pairs = []
            for j, p in enumerate(self.persons):
                if p.box is None:
                    continue
                for i in range(len(boxes)):
                    iou = box_iou(p.box, boxes[i])
                    if iou >= cfg.iou_min and sims[i, j] >= max(cfg.app_min, best[i] - cfg.app_margin):
                        pairs.append((iou + sims[i, j], i, j))
            for _, i, j in sorted(pairs, reverse=True):
                if i not in out and j not in taken:
                    out[i] = j
                    taken.add(j)
            area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            for i in np.argsort(-area, kind="stable"):
                i = int(i)
                if i in out:
                    continue
                cand = [(sims[i, j], j) for j in range(len(self.persons))
                        if j not in taken and sims[i, j] >= cfg.reid_min]
                if cand:
                    _, j = max(cand)
                    out[i] = j
                    taken.add(j)
        for i in range(len(boxes)):
            if i not in out:
                self._new_person(apps[i])
                out[i] = len(self.persons) - 1
        return out

    def process(self, frames: np.ndarray, prepared: Prepared | None = None
                ) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Track the persons over consecutive frames (B, H, W, 3); ``prepared``: their shot cuts and scheduled
        detections when computed beforehand by a :class:`FramePrep` fed the same frames (else computed here).

        Returns:
            person id -> (boxes (B, 4), conf (B,), landmarks (B, 478, 3)) for every person known so far (NaN / 0
            where not visible on a frame). The same arrays are kept for :meth:`result`.
        """
        B, H, W = frames.shape[:3]
        self.size = (W, H)
        cfg = self.cfg
        out: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

        def slot(pid: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            if pid not in out:
                out[pid] = (np.full((B, 4), np.nan, np.float32), np.zeros(B, np.float32),
                            np.full((B, N_LANDMARKS, 3), np.nan, np.float32))
            return out[pid]

        cuts = prepared.cuts if prepared is not None else self._shots.flags(frames)
        dets = prepared.dets if prepared is not None else {}
        for b in range(B):
            frame = frames[b]
            cut = bool(cuts[b])
            if cut:  # FaceMesh must not follow the old place into the new shot: detect, match by appearance
                self.cuts.append(self.frame_no)
            lost = not self.persons or any(p.age > 0 and p.box is not None for p in self.persons)
            detect = lost or scheduled_detection(cfg, self.frame_no, cut)
            assigned: dict[int, tuple[np.ndarray, float]] = {}
            if detect:
                # prepared ahead where scheduled; here when a person was lost (or nothing was prepared)
                boxes, scores, apps = dets[b] if b in dets else detect_with_appearance(self.detector, frame,
                                                                                         cfg.det_side)
                for i, j in self._assign(boxes, apps).items():
                    assigned[j] = (boxes[i], float(scores[i]))
                    p = self.persons[j]
                    m = cfg.app_momentum
                    a = m * p.app + (1 - m) * apps[i]
                    p.app = (a / max(float(np.linalg.norm(a)), 1e-9)).astype(np.float32)
                    p.n_app += 1
            for j, p in enumerate(self.persons):
                if j in assigned and p.mesh is None:
                    p.mesh = self._make_mesh()  # back after a long absence
                step = self._step(p, frame, detect, assigned.get(j))
                if p.box is None and p.mesh is not None:  # gone for more than max_gap: free its FaceMesh graph
                    p.mesh.close()
                    p.mesh = None
                if step is None:
                    continue
                box, conf, lm = step
                p.n_found += 1
                p.sum_cx += 0.5 * float(box[0] + box[2])
                bx, cf, lms = slot(p.pid)
                bx[b], cf[b] = box, conf
                if lm is not None:
                    lms[b] = lm
            self.frame_no += 1
        for p in self.persons:
            bx, cf, lms = slot(p.pid)
            self._boxes.setdefault(p.pid, [np.full((self._n_done, 4), np.nan, np.float32)]).append(bx)
            self._conf.setdefault(p.pid, [np.zeros(self._n_done, np.float32)]).append(cf)
            self._lms.setdefault(p.pid, [np.full((self._n_done, len(LANDMARK_IDS), 2), np.nan, np.float32)]).append(
                lms[:, LANDMARK_INDEX, :2])
        self._n_done += B
        return out

    def drop_history(self) -> None:
        """Forget the per-frame arrays kept for :meth:`result` (the tracking state itself stays): live use, where
        the stream has no end and memory must stay flat; :meth:`result` then covers the frames since."""
        self._boxes.clear()
        self._conf.clear()
        self._lms.clear()
        self.cuts.clear()
        self._n_done = 0
        self._result = None

    def side_ids(self) -> dict[str, int | None]:
        """The ``left`` / ``right`` person ids now (Aff-Wild2's ``_left`` / ``_right`` label tracks): of the two
        persons visible longest so far, ordered by their mean box centre x so far; a lone person goes to the
        half of the frame its mean centre lies in. Ids are stable, so the answer settles once both were seen."""
        seen = sorted((p for p in self.persons if p.n_found), key=lambda p: (-p.n_found, p.pid))[:2]
        out: dict[str, int | None] = {"left": None, "right": None}
        if len(seen) == 2:
            a, b = sorted(seen, key=lambda p: p.sum_cx / p.n_found)
            out["left"], out["right"] = a.pid, b.pid
        elif seen:
            p = seen[0]
            out["left" if p.sum_cx / p.n_found < self.size[0] / 2 else "right"] = p.pid
        return out

    def result(self, fps: float) -> PersonTracks:
        """The raw online tracks so far (before :func:`finalize_tracks`). Joined once per state: the persons
        extractor and the per-person descriptors both read them at the end (on a 10-minute video ~11 MB)."""
        if self._result is not None and self._result[0] == (self._n_done, fps):
            return self._result[1]
        tracks = self._joined(fps)
        self._result = ((self._n_done, fps), tracks)
        return tracks

    def _joined(self, fps: float) -> PersonTracks:
        P = len(self.persons)
        n = self._n_done
        K = len(LANDMARK_IDS)
        if not P:
            return PersonTracks(np.zeros(0, np.int64), np.zeros((0, n, 4), np.float32), np.zeros((0, n), np.float32),
                                np.zeros((0, n, K, 2), np.float32), np.zeros((0, 0), np.float32), fps, self.size,
                                cuts=list(self.cuts))
        ids = np.array([p.pid for p in self.persons], np.int64)
        return PersonTracks(ids, np.stack([np.concatenate(self._boxes[i]) for i in ids]),
                            np.stack([np.concatenate(self._conf[i]) for i in ids]),
                            np.stack([np.concatenate(self._lms[i]) for i in ids]),
                            np.stack([p.app for p in self.persons]), fps, self.size, cuts=list(self.cuts))


# ---------------------------------------------------------------------------------------------------------
# Offline clean-up: drop flickers, merge one person's tracks, renumber
# ---------------------------------------------------------------------------------------------------------


def track_plan(tr: PersonTracks, cfg: PersonTrackConfig | None = None) -> list[list[int]]:
    """Which raw tracks become which person (the rules of :func:`finalize_tracks`).

    Returns:
        one list of raw row indices per final person, in final id order (the first row is the earliest).
    """
    cfg = cfg or PersonTrackConfig()
    found = tr.found
    keep = [k for k in range(len(tr.ids)) if found[k].sum() >= max(2, cfg.min_track_s * tr.fps)]
    keep.sort(key=lambda k: int(np.argmax(found[k])))
    groups = {k: [k] for k in keep}
    seen = {k: found[k].copy() for k in keep}
    app = {k: tr.appearance[k].astype(np.float64) for k in keep}
    for a in keep:
        if a not in groups:
            continue
        for b in [k for k in keep if k in groups and keep.index(k) > keep.index(a)]:
            sim = float(app[a] @ app[b] / max(np.linalg.norm(app[a]) * np.linalg.norm(app[b]), 1e-9))
            if (seen[a] & seen[b]).any() or sim < cfg.merge_min:
                continue
            log.debug("person tracks %d and %d merged (appearance similarity %.2f)", tr.ids[a], tr.ids[b], sim)
            na, nb = seen[a].sum(), seen[b].sum()
            app[a] = (na * app[a] + nb * app[b]) / max(na + nb, 1)
            seen[a] |= seen[b]
            groups[a] += groups.pop(b)

    def order(k: int) -> tuple[int, float]:  # first appearance, then left to right where first seen
        i = int(np.argmax(seen[k]))
        row = next(r for r in groups[k] if found[r, i])
        return i, float(tr.boxes[row, i, 0] + tr.boxes[row, i, 2])

    return [groups[k] for k in sorted(groups, key=order)]


def merge_rows(arr: np.ndarray, found: np.ndarray, plan: Sequence[Sequence[int]]) -> np.ndarray:
    """Apply a :func:`track_plan` to any per-raw-track array (P, n, ...) -> (P', n, ...): each final person's
    rows are the first raw track's, filled from the others where they are visible (``found`` (P, n)). Written
    into one output array (no per-person copies to stack: a 10-minute video's embeddings are 19 MB a person);
    a plan that keeps every raw track as it is (one person throughout) gives ``arr`` itself, not a copy."""
    if [list(rows) for rows in plan] == [[i] for i in range(len(arr))]:
        return arr
    out = np.empty((len(plan),) + arr.shape[1:], arr.dtype)
    for i, rows in enumerate(plan):
        out[i] = arr[rows[0]]
        for r in rows[1:]:
            out[i][found[r]] = arr[r][found[r]]
    return out


def finalize_tracks(tr: PersonTracks, cfg: PersonTrackConfig | None = None) -> PersonTracks:
    """Clean raw tracks. Rules, in order (:func:`track_plan`):

    1. Drop: a person visible on fewer than ``min_track_s * fps`` frames (at least 2) is dropped (a flicker
       or a false detection).
    2. Merge: persons (earliest first) absorb later persons that are never visible on the same frame as them
       and whose mean appearance is at least ``merge_min`` similar (one person the online pass kept apart,
       e.g. after a long absence). The merged person's boxes fill the frames where the earlier one is absent.
    3. Renumber: ids become 0, 1, ... in order of first appearance (left to right among persons who appear on
       the same frame).
    """
    plan = track_plan(tr, cfg)
    found = tr.found
    apps = []
    for rows in plan:
        w = found[rows].sum(1).astype(np.float64)
        a = (w[:, None] * tr.appearance[rows]).sum(0) / max(w.sum(), 1.0)
        apps.append(a / max(float(np.linalg.norm(a)), 1e-9))
    D = tr.appearance.shape[-1] if tr.appearance.ndim == 2 else 0
    return PersonTracks(np.arange(len(plan), dtype=np.int64), merge_rows(tr.boxes, found, plan),
                        merge_rows(tr.conf, found, plan), merge_rows(tr.landmarks, found, plan),
                        np.stack(apps).astype(np.float32) if apps else np.zeros((0, D), np.float32),
                        tr.fps, tr.frame_size, tr.landmark_ids, list(tr.cuts))


def track_persons(path: str | Path, cfg: PersonTrackConfig | None = None, batch_size: int = 32,
                  max_side: int | None = None) -> PersonTracks:
    """Decode a media file and track every person in it (online :class:`PersonTracker` + :func:`finalize_tracks`)."""
    from vaest.media import fps_or_default, iter_frames, probe

    cfg = cfg or PersonTrackConfig()
    info = probe(path)
    tracker = PersonTracker(cfg)
    try:
        for batch in iter_frames(path, batch_size=batch_size, max_side=max_side):
            tracker.process(batch.frames)
        raw = tracker.result(fps_or_default(info.fps))
    finally:
        tracker.close()
    return finalize_tracks(raw, cfg)


def person_tracks_from_record(rec: FeatureRecord) -> tuple[PersonTracks, dict[int, dict[str, np.ndarray]]]:
    """A stored ``persons`` record -> (:class:`PersonTracks`, person id -> face encoder outputs ``probs`` (n, C),
    ``emb`` (n, E) (and ``va``), NaN where that person is not visible; empty without an encoder)."""
    ids = np.asarray(rec.meta["ids"], np.int64)
    P, n = len(ids), len(rec.values)
    boxes = rec.values.reshape(n, P, 4).transpose(1, 0, 2).astype(np.float32)
    lms = rec.extras["landmarks"].transpose(1, 0, 2, 3)
    tr = PersonTracks(ids, boxes, rec.extras["conf"].T.astype(np.float32), lms, rec.extras["appearance"],
                      float(rec.meta["fps"]), tuple(rec.meta["frame_size"]), tuple(rec.meta["landmark_ids"]),
                      list(rec.meta.get("cuts", [])))
    face = {int(p): {k: rec.extras[k][:, i] for k in ENCODER_OUTPUTS if k in rec.extras}
            for i, p in enumerate(ids)}
    return tr, face
