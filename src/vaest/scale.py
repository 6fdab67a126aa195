"""Scale-out extraction: the same job as :func:`vaest.features.base.run_extraction`, spread over a Ray cluster.

Engines:

- ``local``: :func:`vaest.features.base.run_extraction` in this process (decode once, feed every extractor).
- ``ray``: a pool of Ray actors (:func:`vaest.actors.run_actor_pool`, the pool prediction uses too), one per
  worker (one CPU each by default, or one GPU each when an extractor's
  config asks for ``cuda``, or for ``auto`` on a cluster with GPUs; Ray sets ``CUDA_VISIBLE_DEVICES`` so
  ``cuda`` means the worker's own GPU). Workers are capped to what the cluster can place now. Each actor
  builds every extractor once from its (registry name, config) spec and keeps it for all the media it is given;
  it processes whole media files with :func:`vaest.features.base.process_media` (through ``extract_media``,
  which also runs the audio extractors of a file without a video stream) and sends the records back.

Who writes the store: **the driver**. Records travel back to the driver, which writes them with
:meth:`FeatureStore.save` (atomic) as results arrive, so the store needs no shared file system and a record on
disk is always complete; only the media files must be readable by the workers at the same paths (one machine,
or a shared file system for a multi-node cluster). The driver plans the work exactly like the local engine
(:func:`vaest.features.base.media_todo`: stored work with the same config hash is skipped), records a failing
media file with :meth:`FeatureStore.record_failure` and goes on (an actor that dies, e.g. a native crash or
out of memory, is replaced and its media file recorded as failed; an actor still busy with one file after
``file_timeout`` seconds, e.g. a decoder stuck on a damaged stream, is killed, replaced and the file recorded as
failed the same way), and reports the failures at the end.
Killing the driver at any moment loses at most the media files in flight; rerunning the command finishes them.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from vaest.corpus import Video
from vaest.errors import VaestError
from vaest.features.base import (
    ExtractionReport,
    Extractor,
    extract_media,
    media_todo,
    record_media_failure,
    save_records,
    with_requirements,
)
from vaest.features.base import run_extraction as run_local
from vaest.actors import DEFAULT_FILE_TIMEOUT, PoolOutcome, cluster_room, connect_ray, error_text, run_actor_pool
from vaest.features.store import FeatureRecord, FeatureStore

log = logging.getLogger(__name__)

ENGINES = ("local", "ray")


@dataclass(frozen=True)
class ExtractorSpec:
    """What a worker needs to rebuild an extractor: its registry name, class and config (pickled to the worker;
    the class travels by reference to its module, so workers import the same registered extractors)."""

    name: str
    cls: type
    config: Any

    @classmethod
    def of(cls, e: Extractor) -> "ExtractorSpec":
        return cls(e.registry_name or e.name, type(e), e.config)

    def key(self) -> tuple[str, str, str]:
        return (self.name, f"{self.cls.__module__}.{self.cls.__qualname__}", repr(self.config))

    def build(self) -> Extractor:
        return self.cls(self.config)


def extractor_devices(extractors: Iterable[Extractor]) -> set[str]:
    """Every ``device`` setting in the extractors' configs (nested config dataclasses included)."""
    found: set[str] = set()

    def walk(o: Any) -> None:
        if isinstance(o, dict):
            for k, v in o.items():
                if k == "device" and isinstance(v, str):
                    found.add(v)
                else:
                    walk(v)
        elif isinstance(o, (list, tuple)):
            for v in o:
                walk(v)

    for e in extractors:
        cfg = e.config
        if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
            cfg = dataclasses.asdict(cfg)
        walk(cfg if isinstance(cfg, dict) else getattr(cfg, "__dict__", {}))
    return found


def wants_cuda(extractors: Iterable[Extractor]) -> bool:
    """True when any extractor's config asks for a CUDA device (``device: cuda`` / ``cuda:1``)."""
    return any(d.startswith("cuda") for d in extractor_devices(extractors))


def _extraction_state() -> dict:
    return {}


def _extract_call(built: dict, media: Path, videos: list[Video], specs: list[ExtractorSpec], batch_size: int,
                  max_side: int | None) -> tuple[bool, dict[tuple[str, str], FeatureRecord] | str, int, list[int], str]:
    """One media file on a pool worker; ``built`` keeps the worker's extractors across files (built once from
    their specs). Returns (ok, records or error message, frames decoded, positions in ``specs`` of the
    extractors that could not run on this file, why)."""
    try:
        extractors = []
        for spec in specs:
            if spec.key() not in built:
                built[spec.key()] = spec.build()
            extractors.append(built[spec.key()])
        recs, n, unfed, why = extract_media(media, videos, extractors, batch_size, max_side)
    except Exception as e:  # reported to the driver, which records the failure and goes on
        return False, error_text(e), 0, [], ""
    return True, recs, n, [extractors.index(e) for e in unfed], why


def run_extraction(store: FeatureStore, extractors: list[Extractor], videos: Iterable[Video],
                   engine: str = "local", address: str | None = None, num_workers: int | None = None,
                   batch_size: int = 32, max_side: int | None = None, force: bool = False,
                   cpus_per_worker: float = 1.0, gpus_per_worker: float | None = None,
                   runtime_env: dict | None = None, file_timeout: float | None = None) -> ExtractionReport:
    """Extract features for every media file of ``videos`` with the ``local`` or ``ray`` engine.

    Both engines store identical records, skip what is stored with the same config, record failing media and go
    on, and return an :class:`ExtractionReport`.

    Args:
        store: the feature store (written by this process only).
        extractors: built extractors (their required extractors are added as in the local engine).
        videos: the videos (label tracks sharing a media file are processed together).
        engine: ``local`` or ``ray``.
        address: Ray cluster address (``ray://host:10001``, ``host:6379`` or ``auto``); None starts a local Ray.
        num_workers: Ray actors (default: as many as the cluster's CPUs / ``cpus_per_worker``, or its GPUs /
            ``gpus_per_worker`` when an extractor asks for cuda; never more than the media files to do). With a
            local Ray it also sets the CPUs the local Ray gets.
        batch_size, max_side: decoding settings passed to :func:`vaest.features.base.process_media`.
        force: recompute and rewrite everything.
        cpus_per_worker: CPUs each actor reserves (Ray limits its OpenMP/torch threads to them).
        gpus_per_worker: GPUs each actor reserves (default 1 when an extractor's device is cuda, or is auto and
            the cluster has GPUs; else 0).
        runtime_env: Ray runtime environment for the job (e.g. ``{"working_dir": ...}``).
        file_timeout: seconds a Ray worker may spend on one media file (its extractors' set-up included)
            before it is killed and replaced and the file recorded as failed (None = ``DEFAULT_FILE_TIMEOUT``;
            0 or less = no limit). The local engine runs in this process and has no per-file limit.
    """
    if engine not in ENGINES:
        raise VaestError(f"unknown extraction engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if engine == "local":
        if address:
            log.warning("--address %s is ignored by the local engine", address)
        return run_local(store, extractors, videos, batch_size=batch_size, max_side=max_side, force=force)
    if file_timeout is None:
        file_timeout = DEFAULT_FILE_TIMEOUT
    return _run_ray(store, extractors, videos, address, num_workers, batch_size, max_side, force,
                    cpus_per_worker, gpus_per_worker, runtime_env, file_timeout if file_timeout > 0 else None)


def _run_ray(store: FeatureStore, extractors: list[Extractor], videos: Iterable[Video], address: str | None,
             num_workers: int | None, batch_size: int, max_side: int | None, force: bool,
             cpus_per_worker: float, gpus_per_worker: float | None, runtime_env: dict | None,
             file_timeout: float | None) -> ExtractionReport:
    extractors = with_requirements(list(extractors))
    from vaest.features.base import group_media

    groups = group_media(videos)
    rep = ExtractionReport()
    t0 = time.time()
    store.remove_stale_temporaries()
    # plan in the driver, exactly as the local engine does
    jobs: list[tuple[Path, list[Video], list[Extractor]]] = []
    for media, vids in groups.items():
        todo = media_todo(store, extractors, vids, force)
        if todo:
            jobs.append((media, vids, todo))
        else:
            rep.skipped.append(str(media))
    label = f"extract {'+'.join(e.name for e in extractors)} (ray)"
    if not jobs:
        rep.seconds = time.time() - t0
        log.info("extraction: %s", rep.summary())
        return rep

    import ray

    devices = extractor_devices(extractors)
    started = connect_ray(address, num_cpus=None if num_workers is None else max(1, int(num_workers * cpus_per_worker)),
                          runtime_env=runtime_env)
    try:
        res = ray.cluster_resources()
        if gpus_per_worker is None:  # cuda asks for a GPU; "auto" takes one where the cluster has them
            want = wants_cuda(extractors) or ("auto" in devices and res.get("GPU", 0) > 0)
            gpus_per_worker = 1.0 if want else 0.0
        gpus = float(gpus_per_worker)
        room = cluster_room(cpus_per_worker, gpus)
        if gpus > 0 and room < 1:
            raise VaestError(f"an extractor asks for cuda but the Ray cluster has no GPU ({res}); "
                             "set device: cpu or connect to a cluster with GPUs")
        if num_workers is None:
            num_workers = room
        elif num_workers > room:  # actors the cluster cannot place would hold their media files forever
            log.warning("the Ray cluster has room for %d workers (%s); using %d, not %d", room, res, room, num_workers)
            num_workers = room
        num_workers = max(1, min(num_workers, len(jobs)))
        log.info("ray engine: %d media files on %d workers (%g CPU%s each)", len(jobs), num_workers,
                 cpus_per_worker, f", {gpus:g} GPU" if gpus else "")
        specs_of = {id(e): ExtractorSpec.of(e) for e in extractors}
        plan = {str(media): (media, vids, todo) for media, vids, todo in jobs}

        def done(key: str, outcome: PoolOutcome) -> None:
            media, vids, todo = plan[key]
            if outcome.ok:
                ok, out, n, unfed, why = outcome.result
            else:
                ok, out, n, unfed, why = False, outcome.error, 0, [], ""
            if ok:
                try:
                    save_records(store, out, force)  # type: ignore[arg-type]
                    rep.frames += n
                    if unfed:
                        record_media_failure(store, rep, media, vids, [todo[i] for i in unfed], why)
                    else:
                        rep.done.append(str(media))
                except Exception as e:  # e.g. disk full: recorded like any failure
                    record_media_failure(store, rep, media, vids, todo, error_text(e))
            else:
                record_media_failure(store, rep, media, vids, todo, str(out))

        run_actor_pool([(str(media), (media, vids, [specs_of[id(e)] for e in todo], batch_size, max_side))
                        for media, vids, todo in jobs], _extraction_state, _extract_call, done, num_workers,
                       cpus_per_worker, gpus, file_timeout, retries=0, label=label, total=len(groups),
                       completed=len(rep.skipped))
    finally:
        if started:
            ray.shutdown()
    rep.seconds = time.time() - t0
    log.info("extraction: %s", rep.summary())
    for m, err in rep.failed.items():
        log.error("failed: %s: %s", m, err)
    return rep

