"""Behavior per person: each person's behavior segments described from their own crop, in the decoding pass.

The ``persons`` extractor (:mod:`vaest.features.persons`) tracks every face with an id and shares, per batch,
each person's boxes and full FaceMesh landmarks (``shared["persons"]``) and its tracker
(``shared["persons_tracker"]``). The extractor here reads them in the same pass, so nothing is decoded twice:

- ``persons-behavior-vlm``: each person's segments sent to the VLM as :func:`vaest.features.face_geometry.person_window`
  crops of the buffered segment frames (one window per person and segment, over all the segment's frames).
- ``persons-behavior-desc``: the offline behavior descriptors (``behavior-desc``) of each person, every frame
  seen through that person's crop window (:func:`vaest.features.behavior_desc.person_descriptor_rows`: face +- one
  face width, half a face above, two faces below), so another person's face, motion and body never enter.
  Rows are kept per online track and merged into the final persons with the tracker's own clean-up plan
  (:func:`vaest.features.person_tracker.track_plan`), then aggregated per segment as ``behavior-desc`` does.

:func:`person_behavior_record` reads one person back in the ``behavior-desc`` layout, so a trained behavior
model applies to that person alone (``docs/persons.md``, "Behavior per person").
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from vaest.corpus import Video
from vaest.features.base import Extractor, register_extractor
from vaest.features.behavior import BehaviorVLMConfig, BehaviorVLMExtractor
from vaest.features.behavior_desc import (FRAME_FEATURES, BehaviorDescConfig, BehaviorDescExtractor,
                                          aggregate_descriptors, person_descriptor_rows)
from vaest.features.person_tracker import merge_rows, track_plan
from vaest.features.segments import Segment, plan_segments, segment_base, segment_extras, segment_meta
from vaest.features.store import FeatureRecord
from vaest.media import FrameBatch, MediaInfo, fps_or_default
from vaest.timebase import TimeSeries

log = logging.getLogger(__name__)

PERSON_DESC_KEY = "persons-behavior-desc"


@dataclass
class PersonBehaviorDescConfig(BehaviorDescConfig):
    """``behavior-desc`` settings plus the crop window around each person
    (:func:`vaest.features.face_geometry.person_window`): ``margin`` face widths either side, ``below`` face heights under the face, re-centred when the face box
    overlaps the box the window was centred on by less than ``recentre_iou``
    (:func:`vaest.features.behavior_desc.person_descriptor_rows`)."""

    margin: float = 1.0
    below: float = 2.0
    recentre_iou: float = 0.5


@register_extractor(PERSON_DESC_KEY)
class PersonBehaviorDescExtractor(Extractor):
    """Store key ``persons-behavior-desc``: the ``behavior-desc`` segment descriptors of every person of a video,
    each from their own crop. values (n_segments, P * D) the P persons' descriptors side by side (person order
    of the ``persons`` record's ids); extras ``start``, ``end``, ``sample`` and ``person_ok`` (n_segments, P):
    the person is visible in the segment; meta as ``behavior-desc`` plus ``ids`` and ``dim`` (D)."""

    Config: ClassVar[type] = PersonBehaviorDescConfig
    requires: ClassVar[tuple[str, ...]] = ("persons",)

    def features_hash(self) -> str:
        """The features hash of ``behavior-desc`` with the same settings: a person's crop window moves the values
        within that space (as the tracker that found the faces does for the face encoder), and a behavior model
        trained on ``behavior-desc`` is applied to each person's slice of this record."""
        own = {f.name: getattr(self.config, f.name) for f in dataclasses.fields(BehaviorDescConfig)}
        return BehaviorDescExtractor(BehaviorDescConfig(**own)).features_hash()

    def begin(self, videos: list[Video], info: MediaInfo) -> None:
        self.videos = videos
        self.fps = fps_or_default(info.fps)
        self.rows: dict[int, list[np.ndarray]] = {}
        self.state: dict[int, dict[str, Any]] = {}
        self.prev_frame: np.ndarray | None = None
        self.times: list[np.ndarray] = []
        self.tracker: Any = None
        self.n = 0

    def update(self, batch: FrameBatch, shared: dict[str, Any]) -> None:
        B = len(batch.index)
        self.times.append(np.asarray(batch.times, np.float64))
        obs = (shared.get("persons") or {}).get(self.videos[0].id, {})
        self.tracker = shared.get("persons_tracker", self.tracker)
        for pid, o in obs.items():
            if pid not in self.rows:  # a person first seen in this batch: absent before
                gap = np.full((self.n, len(FRAME_FEATURES)), np.nan, np.float32)
                gap[:, 0] = 0.0
                self.rows[pid] = [gap]
            rows = person_descriptor_rows(batch.frames, self.prev_frame, o.boxes, o.landmarks,
                                          self.state.setdefault(pid, {}), self.config.small_width,
                                          self.config.margin, self.config.below, self.config.recentre_iou)
            self.rows[pid].append(rows)
        self.prev_frame = batch.frames[-1]
        self.n += B

    def end(self) -> dict[tuple[str, str], FeatureRecord]:
        times = np.concatenate(self.times) if self.times else np.zeros(0)
        n = len(times)
        segs = plan_segments(n, self.fps, times, self.config.segments)
        F = len(FRAME_FEATURES)
        per: list[np.ndarray] = []
        if self.tracker is not None and self.rows:
            raw = self.tracker.result(self.fps)
            plan = track_plan(raw, self.tracker.cfg)
            arr = np.stack([np.concatenate(self.rows[int(pid)])[:n] for pid in raw.ids])  # (P_raw, n, F)
            per = list(merge_rows(arr, raw.found[:, :n], plan))
        names: list[str] = []
        vals, ok = [], []
        for rows in per:
            v, names = aggregate_descriptors(rows, segs, self.config.blink_ratio)
            vals.append(v)
            ok.append(np.nan_to_num(v[:, -1]) > 0)  # face coverage: the person is visible in the segment
        if not names:
            names = aggregate_descriptors(np.zeros((0, F)), [], self.config.blink_ratio)[1]
        D = len(names)
        P = len(per)
        values = np.concatenate(vals, 1) if P else np.zeros((len(segs), 0), np.float32)
        person_ok = np.stack(ok, 1) if P else np.zeros((len(segs), 0), bool)
        out: dict[tuple[str, str], FeatureRecord] = {}
        for v in self.videos:
            meta = segment_meta(v.id, segs, n, self.fps, self.config.segments)
            meta.update({"feature_names": names, "ids": list(range(P)), "dim": D,
                         "crop": {"margin": self.config.margin, "below": self.config.below,
                                  "recentre_iou": self.config.recentre_iou}})
            extras = {**segment_extras(segs), "person_ok": person_ok}
            out[(self.name, v.id)] = FeatureRecord(
                TimeSeries(values, segment_base(self.config.segments), person_ok.any(1) if P else np.zeros(len(segs), bool)),
                extras, meta)
            log.debug("%s: behavior descriptors of %d persons over %d segments", v.id, P, len(segs))
        return out


def person_behavior_record(rec: FeatureRecord, pid: int) -> FeatureRecord:
    """Person ``pid``'s segments of a ``persons-behavior-desc`` (``persons-behavior-vlm``) record in the
    ``behavior-desc`` (``behavior-vlm``) layout: values (n_segments, D), mask = the person is visible in the
    segment, per-feature extras and descriptions of that person only; for a one-person view of the store.
    VaestError when the record has no such person."""
    from vaest.errors import VaestError

    ids = [int(i) for i in rec.meta.get("ids", [])]
    if int(pid) not in ids:
        raise VaestError(f"no person {pid} in the per-person behavior record; persons: {ids}")
    k, D = ids.index(int(pid)), int(rec.meta["dim"])
    ok = np.asarray(rec.extras["person_ok"], bool)[:, k]
    sliced = set(rec.meta.get("per_person_extras", []))
    meta = {m: x for m, x in rec.meta.items() if m not in ("ids", "dim", "crop", "per_person_extras")}
    if meta.get("texts"):  # VLM descriptions: one list per person
        meta["texts"] = list(meta["texts"][k])
    extras = {e: (np.asarray(x)[:, k * D:(k + 1) * D] if e in sliced else x) for e, x in rec.extras.items()
              if e != "person_ok"}
    return FeatureRecord(TimeSeries(np.asarray(rec.values[:, k * D:(k + 1) * D], np.float32), rec.base, ok),
                         extras, meta)


def person_desc_config(cfg: BehaviorDescConfig) -> PersonBehaviorDescConfig:
    """The per-person extractor's settings from a ``behavior-desc`` extractor's (same segments and sizes)."""
    return PersonBehaviorDescConfig(**dataclasses.asdict(cfg))


# ---------------------------------------------------------------------------------------------------------
# VLM per person (persons-behavior-vlm)
# ---------------------------------------------------------------------------------------------------------

PERSON_VLM_KEY = "persons-behavior-vlm"


@dataclass
class PersonBehaviorVLMConfig(BehaviorVLMConfig):
    """``behavior-vlm`` settings plus the crop window around each person (``margin`` face widths either side,
    ``below`` face heights under the face; :func:`vaest.features.face_geometry.person_window`)."""

    margin: float = 1.0
    below: float = 2.0


@register_extractor(PERSON_VLM_KEY)
class PersonBehaviorVLMExtractor(BehaviorVLMExtractor):
    """Store key ``persons-behavior-vlm``: the VLM features of every person's segments, each segment's frames
    cropped to one window around that person (the union of their face boxes over the segment, with margin:
    :func:`vaest.features.face_geometry.person_window`), in the ``persons`` decoding pass. values (n_segments, P * H)
    the default feature of the P persons side by side; extras ``start``, ``end``, ``sample``, ``person_ok``
    (n_segments, P) and every ``<branch>_<pool>`` (n_segments, P * H); meta as ``behavior-vlm`` (``texts``: one
    list per person) plus ``ids``, ``dim`` and ``per_person_extras``. A person absent from a whole segment gets
    no VLM call there (NaN). One VLM call per person and segment, ``batch_size`` at a time."""

    Config: ClassVar[type] = PersonBehaviorVLMConfig
    requires: ClassVar[tuple[str, ...]] = ("persons",)

    def outputs(self) -> list[str]:
        return [self.name]

    def begin(self, videos: list[Video], info: MediaInfo) -> None:
        super().begin(videos, info)
        self.side_boxes = {}  # the persons are the views here, not ABAW sides
        self.boxes: dict[int, list[np.ndarray]] = {}  # online person id -> boxes (frame pixels) per batch
        self.tracker: Any = None
        self.n = 0

    def update(self, batch: FrameBatch, shared: dict[str, Any]) -> None:
        obs = (shared.get("persons") or {}).get(self.videos[0].id, {})
        self.tracker = shared.get("persons_tracker", self.tracker)
        for pid, o in obs.items():
            self.boxes.setdefault(pid, [np.full((self.n, 4), np.nan, np.float32)]).append(np.asarray(o.boxes, np.float32))
        self.n += len(batch.index)
        super().update(batch, shared)

    def _views(self, s: Segment) -> list[tuple[Any, np.ndarray]]:
        """One crop per online person present in segment ``s`` (view = the online person id)."""
        out = []
        for pid in sorted(self.boxes):
            if len(self.boxes[pid]) > 1:
                self.boxes[pid] = [np.concatenate(self.boxes[pid])]
            clip = self._crop(s, self.boxes[pid][0])
            if clip is not None:
                out.append((pid, clip))
        return out

    def end(self) -> dict[tuple[str, str], FeatureRecord]:
        times, segs, got, names, main, H = self._finish()  # answers keyed by (segment index, person id)
        n = len(times)
        plan: list[list[int]] = []
        raw_ids: list[int] = []
        found = np.zeros((0, n), bool)
        if self.tracker is not None and self.boxes:
            raw = self.tracker.result(self.fps)
            plan, raw_ids, found = track_plan(raw, self.tracker.cfg), [int(i) for i in raw.ids], raw.found[:, :n]
        P, S = len(plan), len(segs)
        feats = {k: np.full((S, P * H), np.nan, np.float32) for k in names}
        texts: list[list[str]] = [[""] * S for _ in range(P)]
        ok = np.zeros((S, P), bool)
        for k, rows in enumerate(plan):  # per segment, the person's raw track seen most in it
            for r, s in enumerate(segs):
                cands = [(int(found[row, s.first:s.stop].sum()), raw_ids[row]) for row in rows]
                cands = [(c, pid) for c, pid in cands if c > 0 and (s.index, pid) in got]
                if not cands:
                    continue
                f, t = got[(s.index, max(cands)[1])]
                for nm in names:
                    feats[nm][r, k * H:(k + 1) * H] = f[nm]
                texts[k][r] = t or ""
                ok[r, k] = bool(np.isfinite(f[main]).all())
        base = segment_base(self.config.segments)
        out: dict[tuple[str, str], FeatureRecord] = {}
        values = feats[main] if names else np.zeros((S, 0), np.float32)
        for v in self.videos:
            meta = segment_meta(v.id, segs, n, self.fps, self.config.segments)
            meta.update({"texts": texts if self.config.generate else [], "model": self.config.model,
                         "backend": self.config.backend, "default_feature": main, "feature_names": names,
                         "ids": list(range(P)), "dim": H, "per_person_extras": names,
                         "crop": {"margin": self.config.margin, "below": self.config.below}})
            extras = {**{k: feats[k] for k in names}, **segment_extras(segs), "person_ok": ok}
            out[(self.name, v.id)] = FeatureRecord(TimeSeries(values, base, ok.any(1) if P else np.zeros(S, bool)),
                                                   extras, meta)
        return out
