"""Behavior per person: each person's behavior segments described from their own crop, in the decoding pass.

The ``persons`` extractor (:mod:`vaest.features.persons`) tracks every face with an id and shares, per batch,
each person's boxes and full FaceMesh landmarks (``shared["persons"]``) and its tracker
(``shared["persons_tracker"]``). The extractor here reads them in the same pass, so nothing is decoded twice:

- ``persons-behavior-desc``: the offline behavior descriptors (``behavior-desc``) of each person, every frame
  seen through that person's crop window (:func:`vaest.features.behavior.person_descriptor_rows`: face +- one
  face width, half a face above, two faces below), so another person's face, motion and body never enter.
  Rows are kept per online track and merged into the final persons with the tracker's own clean-up plan
  (:func:`vaest.features.persons.track_plan`), then aggregated per segment as ``behavior-desc`` does.

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
from vaest.features.behavior import (FRAME_FEATURES, BehaviorDescConfig, _segment_extras, _segment_meta,
                                     aggregate_descriptors, person_descriptor_rows, plan_segments, segment_base)
from vaest.features.store import FeatureRecord
from vaest.media import FrameBatch, MediaInfo, fps_or_default
from vaest.timebase import TimeSeries

log = logging.getLogger(__name__)

PERSON_DESC_KEY = "persons-behavior-desc"


@dataclass
class PersonBehaviorDescConfig(BehaviorDescConfig):
    """``behavior-desc`` settings plus the crop window around each person (:func:`vaest.features.persons.person_window`):
    ``margin`` face widths either side, ``below`` face heights under the face, re-centred when the face box
    overlaps the box the window was centred on by less than ``recentre_iou``
    (:func:`vaest.features.behavior.person_descriptor_rows`)."""

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
        from vaest.features.persons import merge_rows, track_plan

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
            meta = _segment_meta(v.id, segs, n, self.fps, self.config.segments)
            meta.update({"feature_names": names, "ids": list(range(P)), "dim": D,
                         "crop": {"margin": self.config.margin, "below": self.config.below,
                                  "recentre_iou": self.config.recentre_iou}})
            extras = {**_segment_extras(segs), "person_ok": person_ok}
            out[(self.name, v.id)] = FeatureRecord(
                TimeSeries(values, segment_base(self.config.segments), person_ok.any(1) if P else np.zeros(len(segs), bool)),
                extras, meta)
            log.debug("%s: behavior descriptors of %d persons over %d segments", v.id, P, len(segs))
        return out


def person_behavior_record(rec: FeatureRecord, pid: int) -> FeatureRecord:
    """Person ``pid``'s segments of a ``persons-behavior-desc`` record in the ``behavior-desc`` layout
    (values (n_segments, D), mask = the person is visible in the segment), for a one-person view of the store.
    VaestError when the record has no such person."""
    from vaest.errors import VaestError

    ids = [int(i) for i in rec.meta.get("ids", [])]
    if int(pid) not in ids:
        raise VaestError(f"no person {pid} in the per-person behavior record; persons: {ids}")
    k, D = ids.index(int(pid)), int(rec.meta["dim"])
    ok = np.asarray(rec.extras["person_ok"], bool)[:, k]
    meta = {m: x for m, x in rec.meta.items() if m not in ("ids", "dim", "crop")}
    extras = {e: x for e, x in rec.extras.items() if e != "person_ok"}
    return FeatureRecord(TimeSeries(np.asarray(rec.values[:, k * D:(k + 1) * D], np.float32), rec.base, ok),
                         extras, meta)


def person_desc_config(cfg: BehaviorDescConfig) -> PersonBehaviorDescConfig:
    """The per-person extractor's settings from a ``behavior-desc`` extractor's (same segments and sizes)."""
    return PersonBehaviorDescConfig(**dataclasses.asdict(cfg))
