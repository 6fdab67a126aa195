"""Inference settings: what applying a trained run needs to know, apart from its weights.

One small frozen dataclass per kind of run (:class:`FaceInputs`, :class:`BehaviorInputs`, :class:`AudioInputs`,
:class:`FusionInputs`). Training writes its run's record under the key ``inference`` of ``run.json``
(:func:`inference_record`), so a model bundle (a folder of run folders) carries them; applying reads it back with
:func:`read_settings`. Runs written before this record existed are still applied: their settings are derived from
what they saved then (the checkpoint's ``inputs``/``win``/``hop``, the fusion run's ``run.json``), which is what
the ``from_checkpoint`` / ``from_run_json`` constructors do.

Training configurations (``vaest.tasks``) hold far more (optimisation, splits, presets); none of it is read here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from vaest.features.audio import FilterConfig
from vaest.inference import read_run_json

FACE_PARTS = ("emb", "probs", "conf")

S = TypeVar("S")


@dataclass(frozen=True)
class FaceInputs:
    """A face run's inputs: the ``face-<encoder>`` record, which parts of it (``emb``, ``probs``, ``conf``), the
    face-track kinematics (``motion``) and the frame windows ``win``/``hop``."""

    encoder: str = "fer"
    motion: bool = False
    parts: tuple[str, ...] = FACE_PARTS
    win: int = 400
    hop: int = 150

    @classmethod
    def from_checkpoint(cls, ck: dict[str, Any]) -> FaceInputs:
        """The settings of a face run written before the ``inference`` record (from its checkpoint's extras)."""
        inp = ck["inputs"]
        return cls(inp["store_key"].split("face-", 1)[1], bool(inp.get("motion", False)),
                   tuple(inp.get("parts") or FACE_PARTS), int(ck.get("win", 400)), int(ck.get("hop", 150)))


@dataclass(frozen=True)
class BehaviorInputs:
    """A behavior run's inputs: the segment encoder (``desc``, ``vlm``, ``text`` or a ``+`` combination), the VLM
    branch and pooling, and the segment windows ``win``/``hop``."""

    encoder: str = "desc"
    branch: str = "multimodal"
    pool: str = "last"
    win: int = 16
    hop: int = 8

    @classmethod
    def from_checkpoint(cls, ck: dict[str, Any]) -> BehaviorInputs:
        """The settings of a behavior run written before the ``inference`` record."""
        inp = ck["inputs"]
        return cls(inp["encoder"], inp["branch"], inp["pool"], int(ck.get("win", 16)), int(ck.get("hop", 8)))


@dataclass(frozen=True)
class AudioInputs:
    """An audio run's inputs: the audio encoder, the per-video feature normalisation, and the cross-modal
    filter (:class:`~vaest.features.audio.FilterConfig`) that decides which windows fusion may use."""

    encoder: str = "lmfb"
    filter: bool = True
    feature_norm: str = "video"
    min_valid_seconds: int = 2
    train_min_open_frac: float = 0.25
    min_coverage: float = 0.8
    fuse_min_open_s: float = 1.0
    speech_threshold: float = 0.5

    def filter_config(self) -> FilterConfig:
        """The cross-modal filter of these settings."""
        return FilterConfig(self.filter, self.train_min_open_frac, self.min_coverage, self.fuse_min_open_s,
                            self.speech_threshold)

    @classmethod
    def from_checkpoint(cls, ck: dict[str, Any]) -> AudioInputs:
        """The settings of an audio run written before the ``inference`` record (its checkpoint saved the encoder,
        the filter switch and the feature normalisation; the filter thresholds were the defaults)."""
        return cls(ck.get("encoder", "lmfb"), bool(ck.get("filter", True)), ck.get("feature_norm", "video"))


@dataclass(frozen=True)
class FusionInputs:
    """A fusion run's inputs: the modality runs it combines (``runs``, in order) and how.

    ``late``: a weighted average with per-set ``weights`` {name: [w_valence, w_arousal]}; otherwise a learned
    fusion model (``method``: its registered name, e.g. ``raav``, ``dcmmoe``, ``dcm-ref``, ``raav-reference``)
    applied on frame windows ``win``/``hop`` (``align_end``: the last window ends at the video's end)."""

    runs: tuple[str, ...] = ()
    late: bool = False
    weights: dict[str, list[float]] = field(default_factory=dict)
    method: str = ""
    win: int = 400
    hop: int = 150
    align_end: bool = False

    @classmethod
    def from_run_json(cls, info: dict[str, Any], ck: dict[str, Any] | None = None) -> FusionInputs:
        """The settings of a fusion run written before the ``inference`` record (its run.json, and for a learned
        fusion its checkpoint's registered name)."""
        late = info.get("modality") == "late"
        return cls(tuple(info.get("runs") or {}), late,
                   {k: [float(x) for x in v] for k, v in (info.get("weights") or {}).items()} if late else {},
                   "" if late or ck is None else str(ck["name"]), int(info.get("win", 400)),
                   int(info.get("hop", 150)), bool(info.get("align_end", False)))


def inference_record(settings: Any) -> dict[str, Any]:
    """The JSON form of a settings object, as written under ``run.json``'s ``inference`` key."""
    return dataclasses.asdict(settings)


def read_settings(run: str | Path, cls: type[S], info: dict[str, Any] | None = None) -> S | None:
    """The ``cls`` settings recorded in ``run``'s run.json (``info``: that file already read), or None when the run
    predates the record (the caller derives them from what the run saved then)."""
    rec = (info if info is not None else read_run_json(run)).get("inference")
    if not isinstance(rec, dict):
        return None
    kw: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in rec:
            v = rec[f.name]
            kw[f.name] = tuple(v) if isinstance(v, list) and f.name in ("parts", "runs") else v
    return cls(**kw)
