"""Several people in one video: the face encoder per person, the voice given to whoever speaks, one person at a time.

The identity tracks themselves come from :mod:`vaest.features.person_tracker` (see ``docs/persons.md`` for the
rules and figures). Here:

- :func:`encode_person_frames` / :func:`encode_persons` run a face encoder on each person's crops.
- :func:`attribute_speech` gives each speech frame to the person whose mouth moves, or to nobody (off-screen
  voice); :func:`speech_on_frames` puts the ``vad`` series on the frame grid.
- :func:`person_rows` lays per-person series out as the Predictor's long table.
- :func:`select_people` implements ``--people all|main|left|right|N``.
- the ``persons`` extractor (:class:`PersonsExtractor`) does tracking and the face encoder per person in the
  extraction driver's one decoding pass; :func:`vaest.features.person_tracker.person_tracks_from_record` reads
  its record back.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vaest.corpus import Video
from vaest.errors import VaestError
from vaest.features.base import Extractor, prepared_key, register_extractor
from vaest.features.face import FaceEncoderConfig, FaceEncoderExtractor
from vaest.features.face_geometry import FaceObs, crop_face
from vaest.features.mouth import rolling_nanmean
from vaest.features.person_tracker import (ENCODER_OUTPUTS, FramePrep, PersonTrackConfig, PersonTracker, PersonTracks,
                                           Prepared, finalize_tracks, merge_rows, track_plan)
from vaest.features.store import FeatureRecord, config_hash
from vaest.media import FrameBatch, MediaInfo, fps_or_default
from vaest.timebase import TimeBase, TimeSeries, to_frames

log = logging.getLogger(__name__)

NO_SPEECH = -1  # speaker code: no speech on this frame
OFFSCREEN = -2  # speaker code: speech, but no visible mouth moves (off-screen voice)


# ---------------------------------------------------------------------------------------------------------
# The face encoder on each person's crops
# ---------------------------------------------------------------------------------------------------------


def encode_person_frames(fe: FaceEncoderExtractor, frames: np.ndarray, boxes: np.ndarray) -> dict[str, np.ndarray]:
    """A face encoder's outputs for one person over frames (B, H, W, 3) with that person's boxes (B, 4).

    Crops are :func:`vaest.features.face_geometry.crop_face` with ``fe``'s crop framing (config or encoder
    default), encoded by :meth:`FaceEncoderExtractor.encode_crops` (its TTA and thread settings).

    Returns:
        ``emb`` (B, D), ``probs`` (B, C) (and ``va`` (B, 2)), NaN where the box is NaN.
    """
    enc = fe.encoder
    B = len(boxes)
    out = {"emb": np.full((B, enc.feature_dim), np.nan, np.float32),
           "probs": np.full((B, len(enc.classes)), np.nan, np.float32)}
    if enc.has_va:
        out["va"] = np.full((B, 2), np.nan, np.float32)
    if getattr(enc, "arousal_probs", False):  # the zero-shot ensemble's arousal reading (one of its networks)
        out["probs_arousal"] = np.full((B, len(enc.classes)), np.nan, np.float32)
    crops, rows = [], []
    for j in np.flatnonzero(np.isfinite(boxes).all(1)):
        c = crop_face(frames[j], boxes[j], *fe.framing)
        if c is not None:
            crops.append(c)
            rows.append(int(j))
    if crops:
        res = fe.encode_crops(crops)
        for k in out:
            out[k][rows] = res[k]
    return out


def encode_persons(path: str | Path, tracks: PersonTracks, face: FaceEncoderConfig | FaceEncoderExtractor | None = None,
                   max_side: int | None = None) -> dict[int, dict[str, np.ndarray]]:
    """Run a face encoder (default: ``fer``) on each person's face crops of a media file.

    Decodes the file again (pass the same ``max_side`` as the tracking, so the boxes fit); the ``persons``
    extractor does the same in the tracking pass.

    Returns:
        person id -> ``emb`` (n, D), ``probs`` (n, C) (and ``va`` (n, 2) when the encoder has a VA head), NaN
        on the frames where that person is not visible.
    """
    from vaest.media import iter_frames

    fe = face if isinstance(face, FaceEncoderExtractor) else FaceEncoderExtractor(face or FaceEncoderConfig())
    n = tracks.n_frames
    parts: dict[int, list[dict[str, np.ndarray]]] = {int(p): [] for p in tracks.ids}
    for batch in iter_frames(path, max_side=max_side):
        idx = batch.index[batch.index < n]
        for k, pid in enumerate(tracks.ids):
            parts[int(pid)].append(encode_person_frames(fe, batch.frames[: len(idx)], tracks.boxes[k, idx]))
    return {pid: {key: np.concatenate([r[key] for r in rs]) for key in rs[0]} for pid, rs in parts.items() if rs}


# ---------------------------------------------------------------------------------------------------------
# Speaker attribution
# ---------------------------------------------------------------------------------------------------------


@dataclass
class SpeakerConfig:
    """The speaker rule (see :func:`attribute_speech`).

    Attributes:
        window_s: mouth motion is the standard deviation of the lip area over a centred window this long.
        min_motion: a mouth moves when that motion is at least this (lip area is in squared inter-ocular
            distances: a talking mouth moves by ~0.01-0.05, a still face by < 0.003).
        min_share: a person "speaks" when given at least this share of the video's speech frames ...
        min_speech_s: ... and at least this many seconds of it.
    """

    window_s: float = 0.5
    min_motion: float = 0.006
    min_share: float = 0.2
    min_speech_s: float = 0.3


@dataclass
class SpeakerAttribution:
    """Who speaks on each frame.

    Attributes:
        speaker: (n,) int: the person id the frame's audio belongs to; :data:`NO_SPEECH` (-1) where no speech is
            detected, :data:`OFFSCREEN` (-2) where speech is detected but no visible mouth moves.
        motion: (P, n) mouth motion per person (NaN where not visible).
        ids: (P,) the person ids of ``motion``'s rows.
        share: person id -> share of the speech frames given to them; ``offscreen_share`` likewise.
        speaks: person id -> whether the person speaks (see :class:`SpeakerConfig`).
    """

    speaker: np.ndarray
    motion: np.ndarray
    ids: np.ndarray
    share: dict[int, float]
    offscreen_share: float
    speaks: dict[int, bool]

    def audio_mask(self, pid: int) -> np.ndarray:
        """(n,) bool: frames whose audio is attributed to person ``pid`` (fusion uses audio only there)."""
        return self.speaker == pid


def mouth_motion(area: np.ndarray, fps: float, window_s: float = 0.5) -> np.ndarray:
    """Rolling standard deviation of a lip-area series (n,) over a centred ``window_s`` window; NaN where the
    frame has no lip area. Talking moves the lips; a face that keeps its mouth open or shut does not."""
    a = np.asarray(area, np.float64).reshape(-1)
    w = max(3, int(round(window_s * fps)))
    m = rolling_nanmean(a, w)
    m2 = rolling_nanmean(a * a, w)
    sd = np.sqrt(np.clip(m2 - m * m, 0.0, None))
    sd[~np.isfinite(a)] = np.nan
    return sd


def speech_on_frames(vad: TimeSeries, n_frames: int, fps: float, threshold: float = 0.5,
                     frame_times: np.ndarray | None = None) -> np.ndarray:
    """(n_frames,) bool speech flags from the ``vad`` record's probability series (any time base): a frame is
    speech when the mean probability of the chunks covering its midpoint is >= ``threshold``."""
    vals, mask = to_frames(vad, n_frames, fps, frame_times, how="mean")
    return mask & (np.nan_to_num(vals[:, 0], nan=0.0) >= threshold)


def attribute_speech(area: np.ndarray, speech: np.ndarray, fps: float, ids: Sequence[int] | None = None,
                     cfg: SpeakerConfig | None = None) -> SpeakerAttribution:
    """Give each speech frame's audio to the person whose mouth moves, or to nobody.

    Rule: on a frame with speech, the candidates are the visible persons whose :func:`mouth_motion` is at
    least ``min_motion``; the audio goes to the one whose mouth moves most, and to nobody (:data:`OFFSCREEN`)
    when there is no candidate (an off-screen voice, or faces that do not talk). Frames without speech are
    :data:`NO_SPEECH`.

    Args:
        area: (P, n) per-person lip area (:meth:`PersonTracks.lip_area`), NaN where not visible.
        speech: (n,) bool speech flags on the same frame grid (:func:`speech_on_frames`).
        fps: frame rate of the grid.
        ids: (P,) person ids of the rows (default 0..P-1).
    """
    cfg = cfg or SpeakerConfig()
    area = np.asarray(area, np.float64).reshape(len(area), -1) if len(area) else np.zeros((0, len(speech)))
    speech = np.asarray(speech, bool).reshape(-1)
    if area.shape[1] != len(speech):
        raise ValueError(f"lip area covers {area.shape[1]} frames but the speech flags {len(speech)}")
    ids_a = np.arange(len(area), dtype=np.int64) if ids is None else np.asarray(ids, np.int64)
    motion = np.stack([mouth_motion(a, fps, cfg.window_s) for a in area]) if len(area) else area.copy()
    speaker = np.full(len(speech), NO_SPEECH, np.int64)
    speaker[speech] = OFFSCREEN
    if len(area):
        m = np.where(np.isfinite(motion) & (motion >= cfg.min_motion), motion, -np.inf)
        best = np.argmax(m, axis=0)
        ok = speech & np.isfinite(m[best, np.arange(len(speech))])
        speaker[ok] = ids_a[best[ok]]
    n_speech = int(speech.sum())
    share = {int(p): float((speaker == p).sum() / n_speech) if n_speech else 0.0 for p in ids_a}
    speaks = {int(p): bool(share[int(p)] >= cfg.min_share and (speaker == p).sum() >= cfg.min_speech_s * fps)
              for p in ids_a}
    off = float((speaker == OFFSCREEN).sum() / n_speech) if n_speech else 0.0
    return SpeakerAttribution(speaker, motion, ids_a, share, off, speaks)


# ---------------------------------------------------------------------------------------------------------
# The long per-person table and the --people choice
# ---------------------------------------------------------------------------------------------------------


def person_rows(tracks: PersonTracks, ids: Sequence[int], columns: dict[int, dict[str, np.ndarray]] | None = None,
                times: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per-person series as one long table (one row per frame and person, ordered by frame, then person), in the
    Predictor's output layout: ``frame`` (1-based), ``time`` (when ``times`` (n,) is given), ``person``,
    ``box_x0, box_y0, box_x1, box_y1`` (NaN where the person is not visible), then every column of
    ``columns[pid]`` (each (n,)). Every frame gets a row for every chosen person, visible or not: frames where a
    person is absent are gaps in their series, never another face. ``pandas.DataFrame(person_rows(...))``."""
    n = tracks.n_frames
    ids = [int(p) for p in ids]
    P = len(ids)
    rows = tracks.boxes[[tracks.index(p) for p in ids]] if P else np.zeros((0, n, 4), np.float32)  # (P, n, 4)
    out: dict[str, np.ndarray] = {"frame": np.repeat(np.arange(1, n + 1), P)}
    if times is not None:
        out["time"] = np.repeat(np.asarray(times, np.float64)[:n], P)
    out["person"] = np.tile(np.asarray(ids, np.int64), n)
    for c, name in enumerate(("box_x0", "box_y0", "box_x1", "box_y1")):
        out[name] = rows[:, :, c].T.reshape(-1)
    names = list(dict.fromkeys(k for p in ids for k in (columns or {}).get(p, {})))
    for name in names:
        col = np.full((n, P), np.nan)
        for j, p in enumerate(ids):
            if name in (columns or {}).get(p, {}):
                col[:, j] = np.asarray(columns[p][name], np.float64)[:n]
        out[name] = col.reshape(-1)
    return out


def select_people(tracks: PersonTracks, mode: str | int = "main",
                  attribution: SpeakerAttribution | None = None) -> tuple[list[int], str]:
    """The person ids a ``--people`` choice keeps, and a sentence saying why (for the output's notes).

    - ``all``: every person.
    - ``main``: the one person with the highest (visible frames + speaking frames): present and speaking most;
      ties go to the lower id. One id for the whole video: where that person is absent, the output has gaps.
    - ``left`` / ``right``: of the two persons visible longest, the one whose mean box centre is further left /
      right (Aff-Wild2's ``_left`` / ``_right`` labels); a lone person is both.
    - ``N`` (an int or digits): that person id; VaestError if there is none.
    """
    m = str(mode).strip().lower()
    if not len(tracks.ids):
        return [], "no person found in the video"
    n_vis = {int(p): int(f.sum()) for p, f in zip(tracks.ids, tracks.found)}
    if m == "all":
        return [int(p) for p in tracks.ids], f"all {len(tracks.ids)} persons"
    if m == "main":
        spk = {p: int((attribution.speaker == p).sum()) if attribution is not None else 0 for p in n_vis}
        pid = max(n_vis, key=lambda p: (n_vis[p] + spk[p], -p))
        return [pid], (f"person {pid}: visible on {n_vis[pid]} and speaking on {spk[pid]} of {tracks.n_frames} frames "
                       f"(the most of {len(n_vis)} persons)")
    if m in ("left", "right"):
        two = sorted(n_vis, key=lambda p: (-n_vis[p], p))[:2]
        mx = tracks.mean_x()
        two.sort(key=lambda p: mx[p])
        pid = two[0] if m == "left" else two[-1]
        return [pid], f"person {pid}: the {m} one of the {len(two)} persons visible longest"
    if m.isdigit():
        tracks.index(int(m))
        return [int(m)], f"person {int(m)} as asked"
    raise VaestError(f"--people {mode!r}: expected all, main, left, right or a person id")


# ---------------------------------------------------------------------------------------------------------
# Extractor: per-person tracks (+ face encoder outputs) in one decoding pass
# ---------------------------------------------------------------------------------------------------------


@dataclass
class PersonsConfig(PersonTrackConfig):
    """Settings of the ``persons`` extractor: the tracker's, plus ``face``: the face encoder run on each person's
    crops (:class:`vaest.features.face.FaceEncoderConfig`; its ``use_cropped_aligned`` does not apply), or None
    for tracks only."""

    face: FaceEncoderConfig | None = field(default_factory=FaceEncoderConfig)

    def __post_init__(self) -> None:
        if isinstance(self.face, dict):  # from a config file / create_extractor(face={...})
            self.face = FaceEncoderConfig(**self.face)


@register_extractor("persons")
class PersonsExtractor(Extractor):
    """Store key ``persons``: every person of a video with a stable id (see :func:`person_tracks_from_record`).

    values (n, 4P) the P persons' boxes side by side (NaN where not visible), mask = someone is visible;
    extras ``conf`` (n, P), ``landmarks`` (n, P, K, 2), ``lip_area`` (n, P), ``appearance`` (P, D) and, with a
    face encoder, ``probs`` (n, P, C), ``emb`` (n, P, E) (and ``va`` (n, P, 2)); meta ``ids``, ``share``,
    ``mean_x``, ``cuts``, ``frame_size``, ``landmark_ids``, ``classes``. Per batch it shares
    ``shared["persons"] = {video_id: {online person id: FaceObs}}`` (online ids: before :func:`finalize_tracks`),
    ``shared["persons_tracker"]`` (the :class:`PersonTracker`: :func:`track_plan` of its ``result`` maps
    online ids to the final persons, as :meth:`end` does). The face encoder runs one batch behind, in a worker
    thread; :meth:`online_faces` gives its outputs per online person id once the frames are done (what
    :mod:`vaest.features.main_face` reads instead of encoding again).
    """

    Config = PersonsConfig

    def __init__(self, config: Any = None):
        super().__init__(config)
        self.face_encoder = FaceEncoderExtractor(self.config.face) if self.config.face is not None else None

    def config_hash(self) -> str:
        cfg = dataclasses.asdict(self.config)
        for k in ("device", "batch_size", "num_threads"):
            (cfg["face"] or {}).pop(k, None)
        return config_hash({"name": self.name, **cfg})

    def begin(self, videos: list[Video], info: MediaInfo) -> None:
        self.videos = videos
        self.info = info
        track_fields = {f.name for f in dataclasses.fields(PersonTrackConfig)}
        self.tracker = PersonTracker(PersonTrackConfig(**{k: v for k, v in dataclasses.asdict(self.config).items()
                                                          if k in track_fields}))
        self._prep = FramePrep(self.tracker.cfg)  # fed by prepare(), in the decoding thread
        self.face: dict[int, dict[str, list[np.ndarray]]] = {}
        # end(): per online person id, views of the joined encoder outputs
        self._faces_done: dict[int, dict[str, np.ndarray]] | None = None
        self.n = 0
        # the encoder runs in a worker thread, one batch behind the tracker: torch and MediaPipe both compute
        # without the GIL, so on two cores the encoder is off the tracking's critical path; at most one batch
        # waits for it (its frames stay referenced until then: memory stays bounded)
        self._pool: Any = None
        self._pending: Any = None
        if self.face_encoder is not None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(1, thread_name_prefix="vaest-encode")

    def _encode(self, obs: dict[int, FaceObs]) -> dict[int, dict[str, np.ndarray]]:
        return {pid: encode_person_frames(self.face_encoder, o.frames, o.boxes) for pid, o in obs.items()}

    def _collect(self) -> None:
        """Wait for the batch being encoded and file its outputs (an encoder error is raised here)."""
        if self._pending is None:
            return
        job, n0 = self._pending
        self._pending = None
        for pid, enc in job.result().items():
            parts = self.face.setdefault(pid, {k: [np.full((n0,) + v.shape[1:], np.nan, np.float32)]
                                               for k, v in enc.items()})
            for k, v in enc.items():
                parts[k].append(v)

    def prepare(self, batch: FrameBatch) -> Prepared:  # type: ignore[override]
        """The batch's shot cuts and scheduled detections (:class:`FramePrep`), in the decoding thread."""
        return self._prep(batch.frames)

    def update(self, batch: FrameBatch, shared: dict[str, Any]) -> None:
        res = self.tracker.process(batch.frames, shared.get(prepared_key(self.name)))
        obs = {pid: FaceObs(bx, cf, lm, batch.frames) for pid, (bx, cf, lm) in res.items()}
        shared["persons"] = {v.id: obs for v in self.videos}
        shared["persons_tracker"] = self.tracker  # its raw tracks and clean-up plan, for per-person extractors
        if self._pool is not None:
            self._collect()
            self._pending = (self._pool.submit(self._encode, obs), self.n)
        self.n += len(batch.index)

    def online_faces(self) -> dict[int, dict[str, np.ndarray]]:
        """Encoder outputs per online person id (before :func:`finalize_tracks`) over every frame so far:
        ``emb`` (n, E), ``probs`` (n, C) (and ``va`` (n, 2)), NaN where that person is not visible. Waits for
        the batch still being encoded. After :meth:`end` (which joins them once): views of its arrays."""
        done = getattr(self, "_faces_done", None)
        if done is not None:
            return done
        self._collect()
        return {pid: {k: np.concatenate(v) for k, v in parts.items()} for pid, parts in self.face.items()}

    def end(self) -> dict[tuple[str, str], FeatureRecord]:
        self._prep.close()
        if self._pool is not None:
            try:
                self._collect()
            finally:
                self._pool.shutdown(wait=True)
                self._pool = None
        fps = fps_or_default(self.info.fps)
        raw = self.tracker.result(fps)
        self.tracker.close()
        plan = track_plan(raw, self.config)
        tr = finalize_tracks(raw, self.config)
        P, n = len(tr.ids), tr.n_frames
        extras: dict[str, np.ndarray] = {
            "conf": tr.conf.T.copy(), "landmarks": np.ascontiguousarray(tr.landmarks.transpose(1, 0, 2, 3)),
            "lip_area": tr.lip_area().T.astype(np.float32).reshape(n, P), "appearance": tr.appearance}
        meta: dict[str, Any] = {"ids": [int(i) for i in tr.ids], "share": {str(k): v for k, v in tr.share().items()},
                                "mean_x": {str(k): v for k, v in tr.mean_x().items()}, "cuts": tr.cuts,
                                "frame_size": list(tr.frame_size), "landmark_ids": list(tr.landmark_ids), "fps": fps}
        if self.face_encoder is not None:
            meta["encoder"] = self.face_encoder.config.encoder
            meta["classes"] = list(self.face_encoder.encoder.classes)
            meta["features_hash"] = self.face_encoder.features_hash()  # the space of the emb/probs extras
            raw_found = raw.found
            self._faces_done = {}
            for k in ENCODER_OUTPUTS:
                if not self.face or k not in next(iter(self.face.values())):
                    continue
                per = _stack_parts([self.face[int(pid)].pop(k) for pid in raw.ids], n)
                for i, pid in enumerate(raw.ids):  # online_faces() after the end: views, not a second copy
                    self._faces_done.setdefault(int(pid), {})[k] = per[i]
                merged = merge_rows(per, raw_found, plan)
                extras[k] = np.ascontiguousarray(merged.transpose(1, 0, 2))  # one person: already contiguous
        values = tr.boxes.transpose(1, 0, 2).reshape(n, 4 * P)
        series = TimeSeries(values, TimeBase.frames(fps), tr.found.any(0) if P else np.zeros(n, bool))
        out = {}
        for v in self.videos:
            out[("persons", v.id)] = FeatureRecord(series, dict(extras), dict(meta))
            log.debug("%s: %d persons (%s of the frames)", v.id, P, meta["share"])
        return out


def _stack_parts(parts: list[list[np.ndarray]], n: int) -> np.ndarray:
    """Each person's (n_i, D) chunks joined into one (P, n, D) array, each list emptied once copied (at most one
    person's chunks and the output are held at once)."""
    if not parts:
        return np.zeros((0, n, 1), np.float32)
    first = parts[0][0]
    out = np.empty((len(parts), n) + first.shape[1:], first.dtype)
    for i, chunks in enumerate(parts):
        np.concatenate(chunks, out=out[i])
        chunks.clear()
    return out
