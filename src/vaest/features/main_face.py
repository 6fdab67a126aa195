"""The main face read off the person tracker: ``facetrack`` and ``face-<encoder>`` without a second tracking pass.

``vaest predict`` with a trained bundle needs both the per-person records (``persons``: every face with an id, the
face encoder run on each person's crops) and the single-face records that the bundle's models were trained on
(``facetrack``, ``face-<encoder>``, and ``mouth`` / ``behavior-desc``, which read ``shared["facetrack"]``). The
extractors here derive the single-face records from what the ``persons`` extractor already computed in the same
batch, so each face is detected, meshed and encoded once (issue 13, ``docs/performance.md``, "One tracking pass
with a trained bundle"):

- :class:`PersonsFaceTrackExtractor` (store key ``facetrack``): per frame the "main face" among the tracked
  persons (:class:`MainFacePicker`: the person chosen on the previous frame while they are visible, else what
  :func:`vaest.features.face_tracker.choose_faces` picks for the one-face track: the box overlapping the last main box,
  else the largest), published as ``shared["facetrack"] = {video_id: FaceObs}`` (the contract of
  :class:`vaest.features.face.FaceTrackExtractor`) and ``shared["facetrack_person"] = {video_id: (B,) person id,
  -1 = none}``.
- :class:`PersonsFaceEncoderExtractor` (store key ``face-<encoder>``): that person's encoder outputs on each
  frame, taken from the ``persons`` extractor's outputs (:meth:`PersonsExtractor.online_faces`, read at the end:
  its encoder runs one batch behind in a worker thread; nothing is encoded again).

Both records keep the meta keys of the ones they stand in for and add ``derived_from: "persons"``; their config
hashes differ from the tracker's and the encoder's own, so a cache written by either path never serves the other
(:func:`vaest.features.base.media_todo` compares hashes). Only the predictor's bundle path uses them
(:func:`vaest.predictor.extract.people_extractors`); ``vaest extract`` keeps the single-face tracker.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from vaest.corpus import Video
from vaest.errors import FeatureError
from vaest.features.face import FaceEncoderExtractor, FaceTrackExtractor
from vaest.features.face_geometry import LANDMARK_INDEX, N_LANDMARKS, FaceObs
from vaest.features.face_tracker import choose_faces
from vaest.features.persons import PersonsExtractor
from vaest.features.store import FeatureRecord, config_hash
from vaest.media import FrameBatch, MediaInfo, fps_or_default

if TYPE_CHECKING:
    from vaest.features.face_nets import FrameEncoder

log = logging.getLogger(__name__)

DERIVED_FROM = "persons"


class MainFacePicker:
    """Which tracked person is the video's main face on each frame, batch after batch (one per video).

    Mirrors the one-face track of :class:`vaest.features.face_tracker.FaceTracker`: the face followed so far is kept while
    it is visible (here: the same person id); when it is not, :func:`choose_faces` decides among the visible
    persons (the box overlapping the last main box by more than ``min_iou``, remembered for ``max_gap`` frames,
    else the largest box).
    """

    def __init__(self, min_iou: float = 0.2, max_gap: int = 30):
        self.min_iou, self.max_gap = min_iou, max_gap
        self.pid = -1  # person followed on the last frame with a face
        self.box: np.ndarray | None = None  # their last box
        self.age = 0  # frames since that box

    def pick(self, obs: dict[int, FaceObs], n: int) -> np.ndarray:
        """The main person per frame of a batch of ``n`` frames.

        Args:
            obs: online person id -> that person's :class:`FaceObs` of the batch (boxes (n, 4), NaN where not
                visible), as the ``persons`` extractor shares them.
        Returns:
            (n,) int64 person ids, -1 where nobody is visible.
        """
        out = np.full(n, -1, np.int64)
        pids = list(obs)
        found = np.stack([obs[p].found for p in pids]) if pids else np.zeros((0, n), bool)  # (P, n)
        for b in range(n):
            vis = [p for k, p in enumerate(pids) if found[k, b]]
            if not vis:
                self.age += 1
                if self.age > self.max_gap:
                    self.box = None
                continue
            if self.pid in vis:
                pid = self.pid
            else:
                boxes = np.stack([obs[p].boxes[b] for p in vis])
                # the frame width only matters for left / right tracks, not for the one main face
                i = choose_faces(boxes, [None], {None: self.box}, 0.0, self.min_iou)[None]
                pid = vis[int(i)]
            out[b] = pid
            self.pid, self.box, self.age = pid, obs[pid].boxes[b].copy(), 0
        return out


def main_face_obs(obs: dict[int, FaceObs], pick: np.ndarray, frames: np.ndarray) -> FaceObs:
    """The main face's :class:`FaceObs` of a batch: row b from person ``pick[b]`` (NaN / 0 where ``pick`` is -1).

    Args:
        obs: online person id -> :class:`FaceObs` (boxes (B, 4), conf (B,), landmarks (B, 478, 3)).
        pick: (B,) person id per frame (:meth:`MainFacePicker.pick`).
        frames: (B, H, W, 3) the batch's frames.
    """
    B = len(pick)
    boxes = np.full((B, 4), np.nan, np.float32)
    conf = np.zeros(B, np.float32)
    lms = np.full((B, N_LANDMARKS, 3), np.nan, np.float32)
    for pid in np.unique(pick[pick >= 0]):
        sel = pick == pid
        o = obs[int(pid)]
        boxes[sel], conf[sel], lms[sel] = o.boxes[sel], o.conf[sel], o.landmarks[sel]
    return FaceObs(boxes, conf, lms, frames)


@dataclass
class MainFaceConfig:
    """Settings of :class:`PersonsFaceTrackExtractor`.

    Attributes:
        min_iou, max_gap: :class:`MainFacePicker`'s (the defaults of ``choose_faces`` and ``FaceTrackConfig``).
        persons: config hash of the ``persons`` extractor read (part of this record's identity in the cache).
    """

    min_iou: float = 0.2
    max_gap: int = 30
    persons: str = ""


def _check_no_sides(videos: list[Video], what: str) -> None:
    sided = [v.id for v in videos if v.side in ("left", "right")]
    if sided:
        raise FeatureError(f"{what}: derives the main face only; {', '.join(sided)} follow a side "
                           "(run the facetrack extractor for _left / _right tracks)")


class PersonsFaceTrackExtractor(FaceTrackExtractor):
    """Store key ``facetrack`` (same layout and meta as :class:`FaceTrackExtractor`'s, plus ``derived_from``):
    the main face per frame, taken from the ``persons`` extractor's tracks of the same batch."""

    Config: ClassVar[type] = MainFaceConfig
    requires: ClassVar[tuple[str, ...]] = ("persons",)
    derived_from: ClassVar[str] = DERIVED_FROM

    def begin(self, videos: list[Video], info: MediaInfo) -> None:
        _check_no_sides(videos, "facetrack from persons")
        self.videos = videos
        self.info = info
        self.tracker = None  # nothing to track or close here: the persons extractor does it
        self.person_tracker = None
        self.parts = {None: []}
        self.pickers = {v.id: MainFacePicker(self.config.min_iou, self.config.max_gap) for v in videos}
        self.n = 0
        self.size = [info.width, info.height]

    def update(self, batch: FrameBatch, shared: dict[str, Any]) -> None:
        per = shared.get("persons")
        if per is None:
            raise FeatureError("facetrack from persons: the persons extractor must run before it")
        obs: dict[str, FaceObs] = {}
        picks: dict[str, np.ndarray] = {}
        for v in self.videos:
            picks[v.id] = self.pickers[v.id].pick(per[v.id], len(batch.index))
            obs[v.id] = main_face_obs(per[v.id], picks[v.id], batch.frames)
        shared["facetrack"] = obs
        shared["facetrack_person"] = picks
        o = obs[self.videos[0].id]
        self.parts[None].append((o.boxes, o.conf, o.landmarks[:, LANDMARK_INDEX, :2]))
        self.n += len(batch.index)
        self.size = [int(batch.frames.shape[2]), int(batch.frames.shape[1])]

    def end(self) -> dict[tuple[str, str], FeatureRecord]:
        out = super().end()
        for rec in out.values():
            rec.meta["derived_from"] = DERIVED_FROM
        return out


class PersonsFaceEncoderExtractor(FaceEncoderExtractor):
    """Store key ``face-<encoder>`` (same layout and meta as :class:`FaceEncoderExtractor`'s, plus
    ``derived_from``): on each frame, the encoder outputs of the person :class:`PersonsFaceTrackExtractor` chose,
    as the ``persons`` extractor computed them (its encoder, its crops; nothing is encoded here).

    Args:
        config: the face encoder settings (those of ``persons``' encoder).
        persons: the ``persons`` extractor of the same run (its encoder and config hash).
    """

    requires: ClassVar[tuple[str, ...]] = ("persons", "facetrack")
    derived_from: ClassVar[str] = DERIVED_FROM

    def __init__(self, config: Any, persons: PersonsExtractor):
        super().__init__(config)
        if persons.face_encoder is None:
            raise FeatureError("face from persons: the persons extractor runs no face encoder")
        self.persons = persons

    @property
    def encoder(self) -> FrameEncoder:
        return self.persons.face_encoder.encoder

    def config_hash(self) -> str:
        return config_hash({"name": self.name, "derived_from": DERIVED_FROM, "persons": self.persons.config_hash()})

    def begin(self, videos: list[Video], info: MediaInfo) -> None:
        _check_no_sides(videos, "face from persons")
        super().begin(videos, info)
        self._picks: dict[str, list[np.ndarray]] = {v.id: [] for v in videos}
        self._conf: dict[str, list[np.ndarray]] = {v.id: [] for v in videos}

    def update(self, batch: FrameBatch, shared: dict[str, Any]) -> None:
        picks, track = shared.get("facetrack_person"), shared.get("facetrack")
        if picks is None or track is None:
            raise FeatureError("face from persons: the persons extractor (with its face encoder) and facetrack "
                               "from persons must run before it")
        for v in self.videos:  # the chosen person per frame; their encodings are filled in at the end
            self._picks[v.id].append(picks[v.id].copy())
            self._conf[v.id].append(track[v.id].conf.copy())

    def end(self) -> dict[tuple[str, str], FeatureRecord]:
        """Per video: the chosen person's encoder outputs on each frame (:meth:`PersonsExtractor.online_faces`,
        views after the persons extractor's end), copied frame-masked into the record's arrays (no per-batch
        copies: a 10-minute video's embeddings are 19 MB)."""
        enc_net = self.encoder
        fps = fps_or_default(self.info.fps)
        key = self.outputs()[0]
        faces = self.persons.online_faces()
        out = {}
        for v in self.videos:
            pick = np.concatenate(self._picks[v.id]) if self._picks[v.id] else np.zeros(0, np.int64)
            conf = np.concatenate(self._conf[v.id]).astype(np.float32) if self._conf[v.id] else np.zeros(0, np.float32)
            n = len(pick)
            arrays = {"emb": np.full((n, enc_net.feature_dim), np.nan, np.float32),
                      "probs": np.full((n, len(enc_net.classes)), np.nan, np.float32),
                      "va": np.full((n, 2), np.nan, np.float32)}
            for pid in np.unique(pick[pick >= 0]):
                sel = (pick == pid)[:, None]
                for k, dst in arrays.items():
                    if k in faces[int(pid)]:
                        np.copyto(dst, faces[int(pid)][k][:n], where=sel)
            no_face = ~np.isfinite(arrays["emb"]).all(1)  # a face whose crop failed stays NaN in every output
            arrays["probs"][no_face] = np.nan
            arrays["va"][no_face] = np.nan
            rec = self._record(v, arrays["emb"], arrays["probs"], arrays["va"], conf, fps)
            rec.meta["derived_from"] = DERIVED_FROM
            rec.meta["persons_config_hash"] = self.persons.config_hash()
            out[(key, v.id)] = rec
        return out
