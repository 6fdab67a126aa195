"""Many inputs through one :class:`~vaest.predictor.core.Predictor`: files, folders and globs expanded
(:func:`expand_inputs`) and predicted into ``OUT/<relative path>.csv/.json/.png`` with ``OUT/index.csv``
(:func:`predict_many`); one failing file never stops the batch.
"""

from __future__ import annotations

import glob as globmod
import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from vaest.corpus import AUDIO_EXTS
from vaest.corpus.affwild2 import VIDEO_EXTS
from vaest.errors import VaestError
from vaest.predictor.core import Predictor
from vaest.predictor.extract import IMAGE_EXTS, media_key
from vaest.predictor.result import PredictionResult

log = logging.getLogger(__name__)



def expand_inputs(inputs: Iterable[str | Path], exclude: str | Path | None = None) -> list[tuple[Path, Path]]:
    """(file, output stem relative to OUT) for every input: files as given, folders recursively (media and photo
    files by extension), glob patterns expanded. Output stems keep each file's
    path relative to the common folder of all inputs (a folder input counts as its own root), without suffix;
    files that would share a stem (``x.mp4`` and ``x.flv``) keep their suffix in it. Folder contents below
    ``exclude`` (the output folder, when it lies inside an input folder) are left out."""
    files: list[tuple[Path, Path]] = []  # (file, anchor folder)
    exts = VIDEO_EXTS + AUDIO_EXTS + IMAGE_EXTS
    for raw in inputs:
        s = str(raw)
        p = Path(s)
        if p.is_dir():
            skip = Path(exclude).resolve() if exclude is not None else None
            found = sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in exts
                           and not any(part.startswith(".") for part in q.relative_to(p).parts)
                           and not (skip is not None and q.resolve().is_relative_to(skip)))
            files += [(q, p) for q in found]
        elif not p.exists() and any(c in s for c in "*?["):
            hits = sorted(Path(h) for h in globmod.glob(s, recursive=True))
            files += [(h, h.parent) for h in hits if h.is_file()]
        else:
            files.append((p, p.parent))
    seen: set[Path] = set()
    uniq = []
    for f, a in files:
        r = f.resolve() if f.exists() else f.absolute()
        if r not in seen:
            seen.add(r)
            uniq.append((f, r, a.resolve()))
    if not uniq:
        return []
    root = Path(os.path.commonpath([str(a) for _, _, a in uniq]))
    rels = []
    for f, r, _ in uniq:
        try:
            rel = r.relative_to(root)
        except ValueError:
            rel = Path(r.name)
        rels.append(rel)
    stems = [rel.with_suffix("") for rel in rels]
    dup = {s for s in stems if stems.count(s) > 1}
    return [(f, rel if stem in dup else stem) for (f, _, _), rel, stem in zip(uniq, rels, stems)]



ENGINES = ("local", "ray")


def predictor_settings(kwargs: dict[str, Any]) -> str:
    """12-hex hash of the :class:`Predictor` options that change its outputs (model, fill, people, backbones):
    with :func:`media_key`, what lets a rerun into the same folder skip inputs predicted the same way."""
    import json

    keep = {k: kwargs.get(k) for k in ("model", "fill", "people", "face_backbone", "audio_backbone")}
    if keep["model"] is not None:
        keep["model"] = str(Path(keep["model"]).resolve())
    return hashlib.sha1(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:12]


def predict_file(pr: "Predictor", path: Path) -> tuple[bool, Any]:
    """``pr.predict(path)`` as (True, result) or (False, one-line error naming the file): what a worker sends
    back, so that one bad file never stops a batch."""
    try:
        return True, pr.predict(path)
    except Exception as e:  # one bad file must not stop a batch
        msg = str(e) if isinstance(e, VaestError) else f"{path}: {type(e).__name__}: {e}"
        return False, " ".join(msg.split())


def write_outputs(res: "PredictionResult", f: Path, stem: Path, out: Path, plot: bool, html: bool) -> dict[str, str]:
    """Write one input's ``OUT/<stem>.csv`` / ``.json`` (/ ``.png`` / ``.html``) and return its index row."""
    csv_path = out / f"{stem}.csv"
    res.to_csv(csv_path)
    res.to_json(out / f"{stem}.json")
    if plot:
        res.plot(out / f"{stem}.png")
    if html:
        from vaest.view import page_for, write_page

        if res.meta.get("kind") == "photo":
            res.to_html(page_for(csv_path), media=f)
        else:
            write_page(csv_path, f, page_for(csv_path), meta=res.meta)
    log.info("%s: %d frames (%d estimated) -> %s", f, res.meta["n_frames"], res.meta["frames_estimated"], csv_path)
    return {"input": str(f), "csv": str(csv_path.relative_to(out)), "status": "ok",
            "reason": "; ".join(n for n in res.meta["notes"] if n.startswith("no "))}


def _media_key_or_empty(f: Path) -> str:
    try:
        return media_key(f)
    except OSError:
        return ""


def predict_many(inputs: Sequence[str | Path], out: str | Path, predictor: "Predictor | dict[str, Any]",
                 plot: bool = True, html: bool = False, engine: str = "local", address: str | None = None,
                 workers: int | None = None, gpus_per_worker: float = 0.0, cpus_per_worker: float = 1.0,
                 file_timeout: float | None = None) -> list[dict[str, str]]:
    """Predict every input (see :func:`expand_inputs`) into ``out``; one failing file never stops the batch.

    Writes ``OUT/<stem>.csv`` / ``.json`` / ``.png`` per file and merges the run's rows into ``OUT/index.csv``
    (:mod:`vaest.folder_index`: every input ever predicted into ``out``, latest result per input, safe for
    runs into one folder at the same time); with ``html`` also ``OUT/<stem>.html`` per file
    (:func:`vaest.view.write_page` on the written CSV, the input as its media) and ``OUT/index.html`` (also
    kept up to date by later runs without ``html`` once it exists). Inputs whose index row says ``ok`` for the
    same :func:`media_key` and :func:`predictor_settings`, with their CSV still there, are skipped (the
    predictor's ``force`` redoes them).

    Args:
        predictor: a :class:`Predictor`, or the keyword arguments that build one (the Ray engine builds one per
            worker from them; a given Predictor's own ``init_kwargs`` are used there).
        engine: ``local`` (this process) or ``ray``: a pool of Ray actors, each holding one Predictor, while this
            process writes every output and the index as results arrive (:func:`vaest.actors.run_actor_pool`).
        address: Ray cluster address (``host:6379``, ``ray://host:10001`` or ``auto``); None starts a local Ray.
        workers: Ray actors (default: what the cluster can place, at most one per input).
        gpus_per_worker, cpus_per_worker: what each actor reserves (a GPU actor's Predictor runs on its GPU).
        file_timeout: seconds a Ray worker may spend on one file before it is replaced (the file is tried once
            more on a new worker, then recorded as failed); None = :data:`vaest.actors.DEFAULT_FILE_TIMEOUT`,
            0 or less = no limit. A worker that dies is handled the same way.
    Returns:
        This run's index rows (skipped inputs included, with their earlier row).
    """
    from vaest.folder_index import IndexWriter, done_inputs
    from vaest.progress import make_progress, progress_enabled

    if engine not in ENGINES:
        raise VaestError(f"unknown prediction engine {engine!r}; choose one of {', '.join(ENGINES)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    items = expand_inputs(inputs, exclude=out)
    if not items:
        raise VaestError("no input file found: " + ", ".join(map(str, inputs)))
    kwargs = dict(predictor.init_kwargs) if isinstance(predictor, Predictor) else dict(predictor)
    settings = predictor_settings(kwargs)
    keys = {str(f): (_media_key_or_empty(f), settings) for f, _ in items}
    done = {} if kwargs.get("force") else done_inputs(out, keys)
    todo = [(f, stem) for f, stem in items if str(f) not in done]
    if done:
        log.info("%d of %d inputs already predicted into %s with the same settings (skipped; force redoes them)",
                 len(done), len(items), out)

    def write_html(index_csv: Path) -> None:
        from vaest.view import write_index

        write_index(index_csv)

    index = IndexWriter(out, write_html if (html or (out / "index.html").is_file()) else None)
    rows: list[dict[str, str]] = [done[str(f)] for f, _ in items if str(f) in done]

    def finish(f: Path, stem: Path, ok: bool, res: Any) -> None:
        if ok:
            try:
                row = write_outputs(res, f, stem, out, plot, html)
            except Exception as e:  # e.g. disk full: recorded like a failed prediction
                ok, res = False, f"{f}: writing the outputs failed ({type(e).__name__}: {e})"
        if not ok:
            log.error("%s", res)
            row = {"input": str(f), "csv": "", "status": "failed", "reason": str(res)}
        row["media_key"], row["settings"] = keys[str(f)]
        index.add(row)

    try:
        if engine == "ray":
            cls = type(predictor) if isinstance(predictor, Predictor) else Predictor
            _predict_ray(todo, cls, kwargs, finish, address, workers, cpus_per_worker, gpus_per_worker,
                         file_timeout, total=len(items), completed=len(done))
        elif todo:
            if address:
                log.warning("--address %s is ignored by the local engine", address)
            pr = predictor if isinstance(predictor, Predictor) else Predictor(**kwargs)
            with progress_enabled(pr.progress), make_progress() as prog:
                task = prog.add_task("predict", total=len(items), completed=len(done))
                for f, stem in todo:
                    ok, res = predict_file(pr, f)
                    finish(f, stem, ok, res)
                    prog.advance(task)
    finally:
        index.close()  # what finished is listed even when the run stops midway
    return rows + index.rows


def _predict_ray(todo: list[tuple[Path, Path]], cls: type, kwargs: dict[str, Any], finish: Any, address: str | None,
                 workers: int | None, cpus_per_worker: float, gpus_per_worker: float, file_timeout: float | None,
                 total: int, completed: int) -> None:
    """The Ray engine of :func:`predict_many`: one ``cls(**kwargs)`` (a :class:`Predictor`) per actor, results
    written by ``finish`` in this process as they arrive."""
    import functools

    from vaest.actors import DEFAULT_FILE_TIMEOUT, PoolOutcome, cluster_room, connect_ray, run_actor_pool

    if not todo:
        return
    if file_timeout is None:
        file_timeout = DEFAULT_FILE_TIMEOUT
    kw = {**kwargs, "progress": False}
    if gpus_per_worker > 0 and kw.get("device") in (None, "auto", "cpu"):
        kw["device"] = "cuda"  # Ray gives each GPU actor its own GPU as cuda:0
    if address and kw.get("cache"):  # a remote worker cannot write this machine's cache folder
        kw["cache"] = None
    started = connect_ray(address, num_cpus=None if workers is None else max(1, int(workers * cpus_per_worker)))
    try:
        room = cluster_room(cpus_per_worker, gpus_per_worker)
        if room < 1:
            raise VaestError(f"--gpus-per-worker {gpus_per_worker:g}: the Ray cluster has no GPU room for a worker")
        n = min(workers or room, room)
        if workers and workers > room:
            log.warning("the Ray cluster has room for %d workers; using %d, not %d", room, room, workers)
        stems = {str(f): (f, stem) for f, stem in todo}

        def done(key: str, outcome: PoolOutcome) -> None:
            f, stem = stems[key]
            if outcome.ok:
                finish(f, stem, *outcome.result)
            else:
                finish(f, stem, False, f"{f}: {outcome.error} (tried {outcome.tries} times)")

        log.info("ray engine: %d files on %d workers", len(todo), min(n, len(todo)))
        from vaest.progress import progress_enabled

        with progress_enabled(bool(kwargs.get("progress"))):
            run_actor_pool([(str(f), (f,)) for f, _ in todo], functools.partial(cls, **kw), predict_file,
                           done, n, cpus_per_worker, gpus_per_worker, file_timeout if file_timeout > 0 else None,
                           retries=1, label="predict (ray)", total=total, completed=completed)
    finally:
        if started:
            import ray

            ray.shutdown()
