"""Scale-out extraction: the same job as :func:`vaest.features.base.run_extraction`, spread over a Ray cluster.

Engines:

- ``local``: :func:`vaest.features.base.run_extraction` in this process (decode once, feed every extractor).
- ``ray``: a pool of Ray actors, one per worker (one CPU each by default, or one GPU each when an extractor's
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
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from vaest.corpus import Video
from vaest.errors import VaestError
from vaest.features.base import (
    ExtractionReport,
    Extractor,
    _with_requirements,
    extract_media,
    media_todo,
    record_media_failure,
    save_records,
)
from vaest.features.base import run_extraction as run_local
from vaest.features.store import FeatureRecord, FeatureStore
from vaest.progress import make_progress

log = logging.getLogger(__name__)

ENGINES = ("local", "ray")
# Seconds a Ray worker may spend on one media file before it is killed and the file recorded as failed: ten
# times what a 15-minute video (the longest in Aff-Wild2) takes with every CPU extractor (RTF ~0.4 on one core).
DEFAULT_FILE_TIMEOUT = 3600.0


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


def _error_text(e: BaseException) -> str:
    return str(e) if isinstance(e, VaestError) else f"{type(e).__name__}: {e}"


class ExtractionWorker:
    """A Ray actor body: keeps built extractors across calls and processes one media file per call."""

    def __init__(self) -> None:
        # Ray sets OMP_NUM_THREADS to the actor's CPUs, so torch in a worker uses only its share of the cores
        self._built: dict[tuple[str, str, str], Extractor] = {}

    def _get(self, spec: ExtractorSpec) -> Extractor:
        k = spec.key()
        if k not in self._built:
            self._built[k] = spec.build()
        return self._built[k]

    def run(self, media: Path, videos: list[Video], specs: list[ExtractorSpec], batch_size: int,
            max_side: int | None) -> tuple[bool, dict[tuple[str, str], FeatureRecord] | str, int, list[int], str]:
        """Extract one media file.

        Returns (ok, records or error message, frames decoded, positions in ``specs`` of the extractors that
        could not run on this file, why).
        """
        try:
            extractors = [self._get(s) for s in specs]
            recs, n, unfed, why = extract_media(media, videos, extractors, batch_size, max_side)
        except Exception as e:  # reported to the driver, which records the failure and goes on
            return False, _error_text(e), 0, [], ""
        return True, recs, n, [extractors.index(e) for e in unfed], why

    def pid(self) -> int:
        return os.getpid()


def connect_ray(address: str | None = None, num_cpus: int | None = None, runtime_env: dict | None = None) -> bool:
    """Connect to the Ray cluster at ``address`` or start a local one (``num_cpus`` CPUs, no dashboard).

    Returns True when this call started or connected Ray (the caller then shuts it down), False when Ray was
    already initialised in this process (it is reused and left running).
    """
    try:
        import ray
    except ImportError:
        raise VaestError("the Ray engine needs Ray: pip install 'vaest[scale]'") from None
    if ray.is_initialized():
        return False
    kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True}
    if runtime_env:
        kw["runtime_env"] = runtime_env
    if address:
        try:
            ray.init(address=address, **kw)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise VaestError(f"cannot connect to the Ray cluster at {address!r} ({e})") from None
        log.info("connected to Ray at %s: %s", address, ray.cluster_resources())
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count() or 1, **kw)
        log.info("started a local Ray: %s", ray.cluster_resources())
    return True


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
    extractors = _with_requirements(list(extractors))
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
    from ray.exceptions import RayActorError

    devices = extractor_devices(extractors)
    started = connect_ray(address, num_cpus=None if num_workers is None else max(1, int(num_workers * cpus_per_worker)),
                          runtime_env=runtime_env)
    actors: list[Any] = []
    try:
        res = ray.cluster_resources()
        if gpus_per_worker is None:  # cuda asks for a GPU; "auto" takes one where the cluster has them
            want = wants_cuda(extractors) or ("auto" in devices and res.get("GPU", 0) > 0)
            gpus_per_worker = 1.0 if want else 0.0
        gpus = float(gpus_per_worker)
        if gpus > 0:
            room = int(res.get("GPU", 0) // gpus)
            if room < 1:
                raise VaestError(f"an extractor asks for cuda but the Ray cluster has no GPU ({res}); "
                                 "set device: cpu or connect to a cluster with GPUs")
        else:
            room = max(1, int(res.get("CPU", 1) // max(cpus_per_worker, 1e-9)))
        if num_workers is None:
            num_workers = room
        elif num_workers > room:  # actors the cluster cannot place would hold their media files forever
            log.warning("the Ray cluster has room for %d workers (%s); using %d, not %d", room, res, room, num_workers)
            num_workers = room
        num_workers = max(1, min(num_workers, len(jobs)))
        remote_cls = ray.remote(ExtractionWorker).options(num_cpus=cpus_per_worker, num_gpus=gpus)

        def new_actor() -> Any:
            return remote_cls.remote()

        actors = [new_actor() for _ in range(num_workers)]
        # a file's clock starts when its worker is up, so a slow actor start-up does not count against it
        ray.get([a.pid.remote() for a in actors])
        log.info("ray engine: %d media files on %d workers (%g CPU%s each)", len(jobs), num_workers,
                 cpus_per_worker, f", {gpus:g} GPU" if gpus else "")
        specs_of = {id(e): ExtractorSpec.of(e) for e in extractors}
        queue = list(jobs)
        inflight: dict[Any, tuple[int, Path, list[Video], list[Extractor]]] = {}
        started_at: dict[Any, float] = {}

        def submit(slot: int) -> None:
            if not queue:
                return
            media, vids, todo = queue.pop(0)
            ref = actors[slot].run.remote(media, vids, [specs_of[id(e)] for e in todo], batch_size, max_side)
            inflight[ref] = (slot, media, vids, todo)
            started_at[ref] = time.monotonic()

        def replace(slot: int) -> None:
            ray.kill(actors[slot], no_restart=True)
            actors[slot] = new_actor()
            ray.get(actors[slot].pid.remote())

        with make_progress() as prog:
            task = prog.add_task(label, total=len(groups), completed=len(rep.skipped))
            for slot in range(len(actors)):
                submit(slot)
            while inflight:
                oldest = min(inflight, key=started_at.__getitem__)  # the file whose worker has run longest
                wait_s = None
                if file_timeout is not None:
                    wait_s = max(0.0, started_at[oldest] + file_timeout - time.monotonic())
                ready, _ = ray.wait(list(inflight), num_returns=1, timeout=wait_s)
                stuck = not ready  # only the timeout returns nothing: the oldest file has run past file_timeout
                ref = oldest if stuck else ready[0]
                slot, media, vids, todo = inflight.pop(ref)
                started_at.pop(ref, None)
                if stuck:  # alive but stuck on this file: stop the worker, record the file, go on
                    log.warning("%s: no result after %.0f s (--file-timeout); stopping its worker", media,
                                file_timeout)
                    ok, out, n, unfed, why = False, f"timed out after {file_timeout:g} s (file timeout)", 0, [], ""
                    replace(slot)
                else:
                    try:
                        ok, out, n, unfed, why = ray.get(ref)
                    except RayActorError as e:  # the worker process died: replace it, record this media file
                        ok, out, n, unfed, why = (False, f"worker died while extracting ({type(e).__name__}: {e})",
                                                  0, [], "")
                        replace(slot)
                    except Exception as e:  # a lost or unreadable result: recorded, the job goes on
                        ok, out, n, unfed, why = False, f"result lost ({type(e).__name__}: {e})", 0, [], ""
                if ok:
                    try:
                        save_records(store, out, force)  # type: ignore[arg-type]
                        rep.frames += n
                        if unfed:
                            record_media_failure(store, rep, media, vids, [todo[i] for i in unfed], why)
                        else:
                            rep.done.append(str(media))
                    except Exception as e:  # e.g. disk full: recorded like any failure
                        record_media_failure(store, rep, media, vids, todo, _error_text(e))
                else:
                    record_media_failure(store, rep, media, vids, todo, str(out))
                prog.advance(task)
                submit(slot)
    finally:
        for a in actors:
            try:
                ray.kill(a, no_restart=True)
            except Exception:  # already gone
                pass
        if started:
            ray.shutdown()
    rep.seconds = time.time() - t0
    log.info("extraction: %s", rep.summary())
    for m, err in rep.failed.items():
        log.error("failed: %s: %s", m, err)
    return rep

