"""The extractor interface and registry, and the one extraction driver (decode once, feed every extractor).

An extractor is a small class with a config dataclass, a ``name`` (its key in the feature store), the records
it writes (``outputs``), and what it consumes:

- frame extractors get the decoded frames of a media file in batches (``begin`` / ``update`` / ``end``);
  they can read what an earlier extractor put into the per-batch ``shared`` dict (the face tracker puts
  its per-frame boxes and landmarks there, which the face encoder, the mouth and the behavior descriptors use);
- audio extractors get the 16 kHz mono track once (``extract_audio``).

A media file may carry several label tracks (``<video>_left`` / ``_right``); ``begin`` receives all of them and
``end`` returns one record per (output, video id). Records are written atomically as soon as a media file is
done, so a killed job loses at most the file in progress, and a rerun skips what is stored with the same config.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable

import numpy as np

from vaest.corpus import Video
from vaest.device import torch_threads
from vaest.errors import VaestError
from vaest.features.store import FeatureRecord, FeatureStore, config_hash
from vaest.media import FrameBatch, MediaInfo, iter_frames, prefetch, probe, read_audio, SAMPLE_RATE
from vaest.progress import make_progress

log = logging.getLogger(__name__)

_EXTRACTORS: dict[str, type["Extractor"]] = {}


def register_extractor(name: str) -> Callable[[type], type]:
    """Class decorator: make an extractor creatable by ``name`` (e.g. ``face``, ``mouth``, ``audio-lmfb``)."""

    def deco(cls: type) -> type:
        _EXTRACTORS[name] = cls
        cls.registry_name = name
        return cls

    return deco


def _import_all() -> None:
    import importlib

    for mod in ("face", "mouth", "audio", "behavior", "behavior_desc", "persons", "person_behavior"):
        try:
            importlib.import_module(f"vaest.features.{mod}")
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith("vaest.features"):
                continue
            raise


def list_extractors() -> list[str]:
    """Names of the registered extractors (sorted; every extractor module imported first)."""
    _import_all()
    return sorted(_EXTRACTORS)


def create_extractor(name: str, **config: Any) -> "Extractor":
    """Build a registered extractor from config keyword arguments."""
    if name not in list_extractors():
        raise VaestError(f"unknown extractor {name!r}; registered: {', '.join(list_extractors())}")
    cls = _EXTRACTORS[name]
    return cls(cls.Config(**config))


def default_extractors(face_encoder: str = "fer", audio_encoder: str = "lmfb", behavior: bool = True,
                       audio: bool = True, face: bool = True, device: str = "cpu", mouth: bool = True) -> list:
    """The offline default extractors: facetrack, face-<encoder>, mouth, behavior-desc, audio-<encoder>, vad."""
    ex = []
    if face or behavior or (mouth and audio):
        ex.append(create_extractor("facetrack"))
    if face:
        ex.append(create_extractor("face", encoder=face_encoder, device=device))
    if mouth and (face or audio):
        ex.append(create_extractor("mouth"))
    if behavior:
        ex.append(create_extractor("behavior-desc"))
    if audio:
        ex.append(create_extractor(f"audio-{audio_encoder}"))
        ex.append(create_extractor("vad"))
    return ex


class Extractor:
    """Base class. Subclasses set ``Config`` (a dataclass), ``kind`` (``frames`` or ``audio``) and implement
    the methods of their kind. ``outputs()`` names the store keys written (default: ``[self.name]``)."""

    Config: ClassVar[type] = object
    kind: ClassVar[str] = "frames"
    registry_name: ClassVar[str] = ""
    requires: ClassVar[tuple[str, ...]] = ()  # frame extractors that must run before this one (by registry name)

    def __init__(self, config: Any = None):
        self.config = config if config is not None else self.Config()

    @property
    def name(self) -> str:
        return self.registry_name

    def outputs(self) -> list[str]:
        return [self.name]

    def config_hash(self) -> str:
        cfg = dataclasses.asdict(self.config) if dataclasses.is_dataclass(self.config) else {}
        # settings that do not change results (device, batch size, workers, the encoder's runtime) are excluded
        for k in ("device", "batch_size", "num_threads", "workers", "backend"):
            cfg.pop(k, None)
        return config_hash({"name": self.name, **cfg})

    def features_hash(self) -> str:
        """Identity of the space the feature values live in, stamped on every record as ``meta["features_hash"]``
        and recorded by training in its checkpoint, so that applying a trained model refuses features of another
        space (:class:`vaest.features.store.Expect`). Unlike :meth:`config_hash` (the cache identity: which
        extractor wrote the record, with which tracker), it covers only what changes the values' meaning, so the
        same features hash the same whichever command made them. Default: the config hash."""
        return self.config_hash()

    # frame extractors
    def begin(self, videos: list[Video], info: MediaInfo) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def update(self, batch: FrameBatch, shared: dict[str, Any]) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def end(self) -> dict[tuple[str, str], FeatureRecord]:  # pragma: no cover - interface
        """Records keyed by (output name, video id)."""
        raise NotImplementedError

    # optional: per-batch work that depends on the frames alone, run in the decoding thread one batch ahead of
    # ``update`` (batches in order, after ``begin``); its result reaches ``update`` as ``shared[prepared_key(name)]``
    prepare: ClassVar[Callable[..., Any] | None] = None

    # audio extractors
    def extract_audio(self, videos: list[Video], wav: np.ndarray, sr: int,
                      info: MediaInfo) -> dict[tuple[str, str], FeatureRecord]:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass
class ExtractionReport:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    frames: int = 0

    def summary(self) -> str:
        s = f"{len(self.done)} media extracted, {len(self.skipped)} already stored, {len(self.failed)} failed"
        if self.frames and self.seconds:
            s += f" ({self.frames / self.seconds:.0f} frames/s)"
        return s


def with_requirements(extractors: list[Extractor]) -> list[Extractor]:
    """Add missing required frame extractors (default config) and order them so requirements run first."""
    by_name = {e.name: e for e in extractors}
    ordered: list[Extractor] = []

    def visit(e: Extractor) -> None:
        for r in e.requires:
            if r not in by_name:
                by_name[r] = create_extractor(r)
            visit(by_name[r])
        if e not in ordered:
            ordered.append(e)

    for e in extractors:
        visit(e)
    return ordered


def pending(store: FeatureStore, extractors: list[Extractor], videos: list[Video]) -> list[Extractor]:
    """The extractors that still have an output to write for these videos (stale or missing)."""
    out = []
    for e in extractors:
        h = e.config_hash()
        if any(not store.has(o, v.id, h) for o in e.outputs() for v in videos):
            out.append(e)
    return out


def media_todo(store: FeatureStore, extractors: list[Extractor], videos: list[Video],
               force: bool = False) -> list[Extractor]:
    """The extractors to run on one media file (shared by the local and the Ray engine): those with a missing
    or stale output, plus the already stored ones that feed them (``requires``), in run order; all with ``force``."""
    if force:
        return list(extractors)
    todo = pending(store, extractors, videos)
    if todo:
        # a required extractor that is already stored still has to run to feed its dependants
        todo = [e for e in extractors if e in todo or any(e.name in d.requires for d in todo)]
    return todo


def save_records(store: FeatureStore, records: dict[tuple[str, str], FeatureRecord], force: bool = False) -> int:
    """Write the records of one media file (atomically, one file each); a record already stored with the
    same config hash is left untouched unless ``force`` (finished files are never rewritten). Returns the
    number of files written."""
    n = 0
    for (key, vid), rec in records.items():
        if not force and store.has(key, vid, rec.config_hash):
            continue
        store.save(key, vid, rec)
        n += 1
    return n


def _stamp(e: Extractor, recs: dict[tuple[str, str], FeatureRecord]) -> dict[tuple[str, str], FeatureRecord]:
    h = e.config_hash()
    for rec in recs.values():
        rec.config_hash = h
        rec.meta.setdefault("extractor", e.name)
        rec.meta.setdefault("features_hash", e.features_hash())
        rec.meta.setdefault("config", dataclasses.asdict(e.config) if dataclasses.is_dataclass(e.config) else {})
    return recs


def release_free_memory() -> None:
    """Hand the C heap's free pages back to the system (glibc ``malloc_trim``; a no-op elsewhere).

    Why: memory freed by the frame pipeline's threads (decoded batches, MediaPipe and torch buffers) otherwise
    stays in the process and adds to what comes after it (the audio when it runs after the frames; in the
    predictor the models, the table and the plot: on the 63 s video with the demo bundle the peak RSS of the
    whole command rose by ~80 MB after the frames were done)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        trim = getattr(libc, "malloc_trim", None)
    except OSError:
        trim = None
    if trim is not None:
        trim(0)


def prepared_key(name: str) -> str:
    """The ``shared`` key under which an extractor's :attr:`Extractor.prepare` result for the batch is passed."""
    return f"prepared:{name}"


def _with_prepared(batches: Iterable[FrameBatch], extractors: list[Extractor]
                   ) -> Iterable[tuple[FrameBatch, dict[str, Any]]]:
    """Each batch with the ``prepare`` results of the extractors that have one (run where this is iterated:
    in the decoding thread)."""
    preps = [e for e in extractors if e.prepare is not None]
    for batch in batches:
        yield batch, {prepared_key(e.name): e.prepare(batch) for e in preps}


def process_media(media: Path, videos: list[Video], extractors: list[Extractor], batch_size: int = 32,
                  max_side: int | None = None, audio_beside: bool = False,
                  on_audio: Callable[[np.ndarray], None] | None = None, frames: Iterable[FrameBatch] | None = None,
                  wav: np.ndarray | None = None, info: MediaInfo | None = None
                  ) -> tuple[dict[tuple[str, str], FeatureRecord], int]:
    """Run extractors on one media file, decoding frames once. Returns records and the number of frames.

    ``frames``, ``wav`` (16 kHz mono) and ``info`` given together stand for media already in memory (the live
    window of :mod:`vaest.live.engine`): nothing is decoded or read from ``media``, which only names it.

    The audio track is read once (16 kHz mono) for the audio extractors and ``on_audio`` (called with it after
    them, e.g. the predictor's zero-shot voice). With ``audio_beside`` that audio work runs in a thread while the
    frames are processed (the predictor: on two cores it takes the audio off the critical path; torch then runs
    on one thread per pipeline), else after the frames (extraction of corpora: least memory)."""
    info = info if info is not None else probe(media)
    records: dict[tuple[str, str], FeatureRecord] = {}
    frame_ex = [e for e in extractors if e.kind == "frames"]
    audio_ex = [e for e in extractors if e.kind == "audio"]
    n = 0

    def audio_work() -> dict[tuple[str, str], FeatureRecord]:
        audio = read_audio(media, SAMPLE_RATE) if wav is None else wav
        recs: dict[tuple[str, str], FeatureRecord] = {}
        for e in audio_ex:
            recs.update(_stamp(e, e.extract_audio(videos, audio, SAMPLE_RATE, info)))
        if on_audio is not None:
            on_audio(audio)
        return recs

    has_audio_work = bool(audio_ex) or on_audio is not None
    if frame_ex:
        if not info.has_video:
            raise VaestError(f"{media}: has no video stream (needed by {', '.join(e.name for e in frame_ex)})")
        beside = None
        if audio_beside and has_audio_work:
            from concurrent.futures import ThreadPoolExecutor

            beside = ThreadPoolExecutor(1, thread_name_prefix="vaest-audio")
        # while the audio runs beside the frames, each pipeline gets one core: torch on one intra-op thread,
        # set once for the section so that no extractor changes the process-wide count under the other's feet
        with torch_threads(1 if beside is not None else None, only_if_loaded=True):
            job = beside.submit(audio_work) if beside is not None else None
            before = {id(e): set(vars(e)) for e in frame_ex}  # the state begin() adds is this media's only
            try:
                for e in frame_ex:
                    e.begin(videos, info)
                # decoding (and the extractors' frame-only `prepare`) runs one batch ahead in a thread
                # (vaest.media.prefetch): it overlaps with the extractors
                source = frames if frames is not None else iter_frames(media, batch_size=batch_size,
                                                                       max_side=max_side)
                for batch, shared in prefetch(iter(_with_prepared(source, frame_ex))):
                    for e in frame_ex:
                        e.update(batch, shared)
                    n += len(batch.index)
                for e in frame_ex:
                    records.update(_stamp(e, e.end()))
                    release_free_memory()  # the per-batch chunks it joined: freed inside the heap
            finally:
                if beside is not None:
                    beside.shutdown(wait=True)  # a frame error waits for the audio, then is raised
                for e in frame_ex:  # a long-lived extractor (the predictor's) must not keep this media's arrays
                    for k in set(vars(e)) - before[id(e)]:
                        delattr(e, k)
            if job is not None:
                records.update(job.result())  # an audio error is raised here
                has_audio_work = False
    if has_audio_work:
        if frame_ex:
            release_free_memory()  # the frames' buffers, before the whole audio track is read
        records.update(audio_work())
    return records, n


def extract_media(media: Path, videos: list[Video], extractors: list[Extractor], batch_size: int = 32,
                  max_side: int | None = None, audio_beside: bool = False,
                  on_audio: Callable[[np.ndarray], None] | None = None
                  ) -> tuple[dict[tuple[str, str], FeatureRecord], int, list[Extractor], str]:
    """:func:`process_media` as the extraction engines call it: a file with no video stream (an audio-only item)
    still gets its audio extractors run in a job that also has frame extractors.

    Returns (records, frames decoded, the extractors that could not run, why) - the last two empty when all ran.
    """
    from vaest.progress import native_noise_filtered

    frame_ex = [e for e in extractors if e.kind == "frames"]
    audio_ex = [e for e in extractors if e.kind == "audio"]
    with native_noise_filtered():  # MediaPipe / absl / TF Lite log lines, unless --verbose
        if frame_ex and audio_ex and not probe(media).has_video:
            msg = f"{media}: has no video stream (needed by {', '.join(e.name for e in frame_ex)})"
            recs, n = process_media(media, videos, audio_ex, batch_size, max_side, on_audio=on_audio)
            return recs, n, frame_ex, msg
        recs, n = process_media(media, videos, extractors, batch_size, max_side, audio_beside, on_audio)
    return recs, n, [], ""


def record_media_failure(store: FeatureStore, rep: ExtractionReport, media: Path, videos: list[Video],
                         extractors: list[Extractor], msg: str) -> None:
    """Log a failed media file, add it to the report and leave a failure marker for each output not written."""
    log.error("%s: extraction failed: %s", media, msg)
    rep.failed[str(media)] = msg
    for ex in extractors:
        for o in ex.outputs():
            for v in videos:
                store.record_failure(o, v.id, msg)


def group_media(videos: Iterable[Video]) -> dict[Path, list[Video]]:
    """Videos grouped by media file (the label tracks of a two-person video share one); media-less ones are
    logged and left out."""
    groups: dict[Path, list[Video]] = {}
    for v in videos:
        if v.media is not None:
            groups.setdefault(v.media, []).append(v)
        else:
            log.warning("%s: no media file found; skipped", v.id)
    return groups


def run_extraction(store: FeatureStore, extractors: list[Extractor], videos: Iterable[Video],
                   batch_size: int = 32, max_side: int | None = None, force: bool = False) -> ExtractionReport:
    """Extract features for every media file of ``videos`` with the local engine (see :mod:`vaest.scale`
    for Ray). Finished media are skipped; a failing media file is recorded and the job goes on."""
    extractors = with_requirements(list(extractors))
    groups = group_media(videos)
    rep = ExtractionReport()
    t0 = time.time()
    store.remove_stale_temporaries()
    with make_progress() as prog:
        task = prog.add_task(f"extract {'+'.join(e.name for e in extractors)}", total=len(groups))
        for media, vids in groups.items():
            todo = media_todo(store, extractors, vids, force)
            if not todo:
                rep.skipped.append(str(media))
                prog.advance(task)
                continue
            try:
                recs, n, unfed, why = extract_media(media, vids, todo, batch_size, max_side)
                save_records(store, recs, force)
                rep.frames += n
                if unfed:
                    record_media_failure(store, rep, media, vids, unfed, why)
                else:
                    rep.done.append(str(media))
            except Exception as e:  # one bad file must not stop a batch job
                msg = f"{type(e).__name__}: {e}" if not isinstance(e, VaestError) else str(e)
                record_media_failure(store, rep, media, vids, todo, msg)
            prog.advance(task)
    rep.seconds = time.time() - t0
    log.info("extraction: %s", rep.summary())
    for m, err in rep.failed.items():
        log.error("failed: %s: %s", m, err)
    return rep
