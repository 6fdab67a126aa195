"""The one Ray actor pool: stateful workers built once, jobs spread over them, results back to the driver.

Used by feature extraction (:mod:`vaest.scale`) and by prediction (:func:`vaest.predictor.predict_many` with
``engine="ray"``). A low-level module (it knows nothing of extractors or predictors: callers hand it a state
factory and a call), so both users import it without importing each other.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Callable

from vaest.errors import VaestError
from vaest.progress import make_progress

log = logging.getLogger(__name__)

# Seconds a Ray worker may spend on one media file before it is replaced (the file retried or recorded as failed): ten
# times what a 15-minute video (the longest in Aff-Wild2) takes with every CPU extractor (RTF ~0.4 on one core).
DEFAULT_FILE_TIMEOUT = 3600.0


def error_text(e: BaseException) -> str:
    """A job's error as one line: a :class:`VaestError`'s own message, else the exception type and text."""
    return str(e) if isinstance(e, VaestError) else f"{type(e).__name__}: {e}"


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


# Environment variables that size the thread pools of libraries loaded after they are set (OpenMP: torch's
# intra-op pool; the BLAS libraries numpy and torch link; numexpr)
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def worker_threads(cpus_per_worker: float) -> int:
    """Compute threads of a worker that reserves ``cpus_per_worker`` CPUs: their whole number, at least 1 (what
    Ray gives OpenMP: ``OMP_NUM_THREADS``)."""
    return max(1, int(cpus_per_worker))


def limit_threads(n: int) -> dict[str, int]:
    """Size this process's compute thread pools to ``n`` threads: the :data:`THREAD_ENV` variables (for libraries
    loaded later), torch's intra-op pool, OpenCV's and the BLAS / OpenMP pools already loaded (``threadpoolctl``).

    Why: a pool sized to the machine's cores in each of several workers on those cores oversubscribes them, and
    idle pool threads that spin-wait (OpenBLAS, OpenCV's pool, OpenMP) burn CPU for nothing. Ray caps only
    OpenMP (``OMP_NUM_THREADS``), and only for libraries loaded after the actor starts, while numpy's OpenBLAS
    and OpenCV are loaded earlier (a worker imports numpy with Ray) and keep one thread per core. Returns the
    pools' sizes as set (``torch``, ``opencv``, ``blas``: those found)."""
    for k in THREAD_ENV:
        os.environ[k] = str(n)
    out: dict[str, int] = {}
    try:
        import torch

        torch.set_num_threads(n)
        out["torch"] = torch.get_num_threads()
    except ImportError:
        pass
    try:
        import cv2

        cv2.setNumThreads(n)
        out["opencv"] = cv2.getNumThreads()
    except ImportError:
        pass
    try:
        from threadpoolctl import threadpool_info, threadpool_limits

        threadpool_limits(limits=n)  # kept for the life of the process
        out["blas"] = max((int(p["num_threads"]) for p in threadpool_info()), default=n)
    except ImportError:
        pass
    return out


class PoolWorker:
    """A Ray actor body for :func:`run_actor_pool`: sizes its thread pools to its CPUs (:func:`limit_threads`),
    builds its state once (``make_state()``: e.g. a :class:`vaest.predictor.Predictor` with its models loaded) and
    runs ``call(state, *args)`` per job."""

    def __init__(self, make_state: Callable[[], Any], threads: int = 1) -> None:
        import resource

        t0 = time.perf_counter()
        self.threads = limit_threads(threads)
        self.state = make_state()
        ru = resource.getrusage(resource.RUSAGE_SELF)
        self.started = {"pid": os.getpid(), "build_s": time.perf_counter() - t0,
                        "cpu_s": ru.ru_utime + ru.ru_stime, "threads": self.threads}

    def run(self, call: Callable[..., Any], args: tuple) -> Any:
        return call(self.state, *args)

    def pid(self) -> int:
        return os.getpid()

    def ready(self) -> dict[str, Any]:
        """How this worker started: ``pid``, ``build_s`` (wall seconds of ``make_state``), ``cpu_s`` (CPU seconds
        of the worker process until its state was built: Ray's worker start-up, imports, models) and
        ``threads`` (:func:`limit_threads`' pool sizes)."""
        return self.started


def log_ready(info: dict[str, Any]) -> None:
    """One log line per started worker (its start-up cost and thread pools; the driver logs it)."""
    log.info("ray worker %d ready: state built in %.1f s, %.1f CPU s since the worker started; threads: %s",
             info["pid"], info["build_s"], info["cpu_s"], ", ".join(f"{k} {v}" for k, v in info["threads"].items()) or "-")


@dataclass
class PoolOutcome:
    """What became of one job of :func:`run_actor_pool`: ``ok`` and the call's ``result``, or the ``error``
    text (the call raised, its worker died, or it ran past the per-job timeout), after ``tries`` attempts."""

    ok: bool
    result: Any = None
    error: str = ""
    tries: int = 1


def cluster_room(cpus_per_worker: float, gpus_per_worker: float) -> int:
    """Workers of this size that the connected Ray cluster can place now (GPU workers: by its GPUs)."""
    import ray

    res = ray.cluster_resources()
    if gpus_per_worker > 0:
        return int(res.get("GPU", 0) // gpus_per_worker)
    return max(1, int(res.get("CPU", 1) // max(cpus_per_worker, 1e-9)))


def run_actor_pool(jobs: list[tuple[Any, tuple]], make_state: Callable[[], Any], call: Callable[..., Any],
                   on_done: Callable[[Any, PoolOutcome], None], num_workers: int, cpus_per_worker: float = 1.0,
                   gpus_per_worker: float = 0.0, job_timeout: float | None = None, retries: int = 0,
                   label: str = "ray", total: int | None = None, completed: int = 0) -> None:
    """Run ``call(state, *args)`` for every ``(key, args)`` job on a pool of Ray actors (Ray already connected).

    Each actor builds its ``state`` once with ``make_state`` (its start-up does not count against a job's
    clock). Results come back to this process, which hands each to ``on_done(key, outcome)`` as it arrives
    (the caller writes its outputs there: workers need no shared file system). An actor that dies (a native
    crash, out of memory, SIGKILL) or is still busy with one job after ``job_timeout`` seconds is killed and
    replaced; its job is tried again up to ``retries`` times on a fresh actor, then reported as failed. A job
    whose call raises is reported as failed at once (``call`` should return errors it expects instead).

    Args:
        jobs: (key, args) pairs, done in this order as workers free up.
        make_state, call: picklable (module-level functions or classes; Ray ships them to the actors).
        on_done: called in this process, once per job, in completion order.
        num_workers: actors (at most one per job).
        cpus_per_worker, gpus_per_worker: resources each actor reserves; each actor's compute thread pools get
            :func:`worker_threads` threads (:func:`limit_threads`).
        job_timeout: seconds one job may run; None = no limit.
        retries: further tries of a job whose worker died or hung.
        label, total, completed: the progress bar.
    """
    import ray
    from ray.exceptions import RayActorError

    remote_cls = ray.remote(PoolWorker).options(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker)
    num_workers = max(1, min(num_workers, len(jobs)))
    threads = worker_threads(cpus_per_worker)
    actors: list[Any] = []

    def new_actor() -> Any:
        return remote_cls.remote(make_state, threads)

    try:
        actors = [new_actor() for _ in range(num_workers)]
        # a job's clock starts when its worker is up, so a slow actor start-up does not count against it
        for info in ray.get([a.ready.remote() for a in actors]):
            log_ready(info)
        queue: list[tuple[Any, tuple, int]] = [(k, a, 1) for k, a in jobs]
        inflight: dict[Any, tuple[int, Any, tuple, int]] = {}
        started_at: dict[Any, float] = {}

        def submit(slot: int) -> None:
            if not queue:
                return
            key, args, tries = queue.pop(0)
            ref = actors[slot].run.remote(call, args)
            inflight[ref] = (slot, key, args, tries)
            started_at[ref] = time.monotonic()

        def replace(slot: int) -> None:
            try:
                ray.kill(actors[slot], no_restart=True)
            except Exception:  # already gone
                pass
            actors[slot] = new_actor()
            log_ready(ray.get(actors[slot].ready.remote()))

        with make_progress() as prog:
            task = prog.add_task(label, total=total if total is not None else len(jobs), completed=completed)
            for slot in range(len(actors)):
                submit(slot)
            while inflight:
                oldest = min(inflight, key=started_at.__getitem__)  # the job whose worker has run longest
                wait_s = None
                if job_timeout is not None:
                    wait_s = max(0.0, started_at[oldest] + job_timeout - time.monotonic())
                ready, _ = ray.wait(list(inflight), num_returns=1, timeout=wait_s)
                stuck = not ready  # only the timeout returns nothing: the oldest job has run past job_timeout
                ref = oldest if stuck else ready[0]
                slot, key, args, tries = inflight.pop(ref)
                started_at.pop(ref, None)
                lost = ""
                if stuck:  # alive but stuck on this job: stop the worker
                    log.warning("%s: no result after %.0f s (--file-timeout); stopping its worker", key, job_timeout)
                    lost = f"timed out after {job_timeout:g} s (file timeout)"
                    replace(slot)
                    outcome = PoolOutcome(False, error=lost, tries=tries)
                else:
                    try:
                        outcome = PoolOutcome(True, ray.get(ref), tries=tries)
                    except RayActorError as e:  # the worker process died: replace it
                        lost = f"worker died ({type(e).__name__}: {' '.join(str(e).split())[:300]})"
                        replace(slot)
                        outcome = PoolOutcome(False, error=lost, tries=tries)
                    except Exception as e:  # the call raised, or its result was lost
                        outcome = PoolOutcome(False, error=error_text(e), tries=tries)
                if lost and tries <= retries:
                    log.warning("%s: %s; trying it again on a new worker", key, lost)
                    queue.insert(0, (key, args, tries + 1))
                else:
                    on_done(key, outcome)
                    prog.advance(task)
                submit(slot)
    finally:
        for a in actors:
            try:
                ray.kill(a, no_restart=True)
            except Exception:  # already gone
                pass
