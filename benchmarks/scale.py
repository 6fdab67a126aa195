"""Training at Aff-Wild2 scale and prediction on Ray: peak memory, epoch time, load time, files per second.

Training (``train``): builds Aff-Wild2-shaped corpora (ABAW label files ``VA_Estimation_Challenge/{Train_Set,
Validation_Set}/<video>.txt``, videos of 5,000 frames at 30 fps, 81 % train / 19 % val videos, about 5 % of
frames labelled -5 in runs) with feature stores written through :meth:`FeatureStore.save` (per-frame
embeddings with a learnable share of the labels, about 2 % of frames without a face), at fractions of
Aff-Wild2's 2.9M frames and at 256-d (``face-grada``) and 1280-d (``face-emotiefflib``) features. Each run of
``vaest train face --preset reference --epochs 1`` is its own process under ``/usr/bin/time -v`` (peak RSS =
its "Maximum resident set size"); the child reports its load time (start to the first training batch: corpus,
records, normalisation), its epoch time (training + validation, from ``history.json``) and its wall time. The
floor is ``python -c "import torch, vaest.tasks.face"`` in the same way (the libraries alone).
``--old SRC`` also runs another checkout's ``src`` (e.g. ``git archive main src``) on the same stores.

float16 (``demo-face``): a ``vaest demo`` output's face features copied into a float32 and a float16 store,
the demo's face training on each (and the old code on float32): validation CCC and store size.

Prediction (``ray``): 40 short clips (1.5 s) cut from CREMA-D's six videos (``--clips``), zero-shot ``vaest predict`` in one process
(local engine) vs ``--engine ray --workers 1`` and ``--workers 2``, each a separate process: files per second,
CPU seconds per file (the process and all its children, Ray workers included, from ``os.wait4``), peak RSS of
the driver and of each worker, and Ray's start-up (connect + first worker ready). ``--kill`` SIGKILLs one Ray
worker once the first outputs are written and checks that the batch completes with every output.

Usage::

    python benchmarks/scale.py train --sizes 0.01,0.05,0.2 --dims 256,1280 --work /tmp/vaest-scale
    python benchmarks/scale.py train --sizes 0.01,0.05,0.2 --dims 1280 --small   # memory at size, less CPU
    python benchmarks/scale.py train --sizes 0.01,0.05 --dims 256 --fusion-only --old OLD_SRC   # fusion (DCMMoE)
    python benchmarks/scale.py ray --clips /work/shared/data/cremad-av --work /tmp/vaest-ray [--kill]
    python benchmarks/scale.py demo-face --demo DEMO_OUT [--old OLD_SRC]   # float16 vs float32 face features
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

AFFWILD2_FRAMES = 2_900_000
VIDEO_FRAMES = 5000
ENCODERS = {256: "grada", 1280: "emotiefflib"}


# ---------------------------------------------------------------------------------------------------------
# Aff-Wild2-shaped corpora
# ---------------------------------------------------------------------------------------------------------


def build(root: Path, frames: int, dim: int, seed: int = 0, dtype: str | None = None, store_too: bool = True) -> Path:
    """Write the corpus (labels, ``videos_fps.csv``) and the store under ``root``; returns ``root``.
    ``store_too=False``: the corpus only (what fusion needs), the same labels."""
    try:
        from vaest.corpus.labels import write_va_file
    except ImportError:  # a checkout from before the corpus split
        from vaest.corpus.affwild2 import write_va_file
    from vaest.features.store import FeatureRecord, FeatureStore
    from vaest.timebase import TimeBase, TimeSeries

    enc = ENCODERS[dim]
    done = root / f"built-{enc}.json"
    if done.exists() or (not store_too and (root / "built-corpus.json").exists()):
        return root
    rng = np.random.default_rng(seed)
    sizes = [VIDEO_FRAMES] * (frames // VIDEO_FRAMES) + ([frames % VIDEO_FRAMES] if frames % VIDEO_FRAMES else [])
    if len(sizes) < 2:  # one train and one val video at least
        sizes = [frames - frames // 2, frames // 2]
    n_videos = len(sizes)
    n_val = max(1, round(0.19 * n_videos))
    store = FeatureStore(root / "store", dtype=dtype)
    proj = rng.standard_normal((2, dim)).astype(np.float32)
    fps_rows = ["video,fps"]
    for i, n in enumerate(sizes):
        vid = f"vid{i:04d}"
        split = "Validation_Set" if i < n_val else "Train_Set"
        # smooth VA: a random walk low-passed, in [-1, 1]
        walk = np.cumsum(rng.standard_normal((n, 2)) * 0.05, 0)
        va = np.tanh(walk - walk.mean(0)).astype(np.float32)
        invalid = np.zeros(n, bool)
        for s in rng.integers(0, n, size=max(1, n // 400)):  # about 5 % in runs of ~20 frames
            invalid[s : s + 20] = True
        lab = va.copy()
        lab[invalid] = -5
        write_va_file(root / "corpus" / "VA_Estimation_Challenge" / split / f"{vid}.txt", lab)
        fps_rows.append(f"{vid},30")
        if not store_too:
            continue
        emb = rng.standard_normal((n, dim), dtype=np.float32)
        emb += va @ proj
        found = rng.random(n) > 0.02
        emb[~found] = np.nan
        probs = rng.dirichlet(np.ones(8), size=n).astype(np.float32)
        probs[~found] = np.nan
        rec = FeatureRecord(TimeSeries(emb, TimeBase.frames(30.0), found),
                            {"probs": probs, "conf": found.astype(np.float32)},
                            {"encoder": enc, "feature_dim": dim}, "bench")
        store.save(f"face-{enc}", vid, rec)
    (root / "corpus" / "videos_fps.csv").write_text("\n".join(fps_rows) + "\n")
    (done if store_too else root / "built-corpus.json").write_text(
        json.dumps({"frames": frames, "dim": dim, "videos": n_videos}))
    return root


def build_runs(root: Path, seed: int = 1) -> dict[str, Path]:
    """Face and behavior prediction runs for the corpus under ``root`` (what fusion trains on), written through
    :func:`vaest.inference.save_predictions`: per frame a VA pair near the label and a 256-d embedding."""
    from vaest.corpus import load_corpus
    from vaest.inference import save_predictions, write_run_json

    runs = {m: root / f"runs-{m}" for m in ("face", "behavior")}
    if all((r / "run.json").exists() for r in runs.values()):
        return runs
    rng = np.random.default_rng(seed)
    corpus = load_corpus(root / "corpus")
    proj = rng.standard_normal((2, 256)).astype(np.float32)
    for v in corpus:
        lab = np.nan_to_num(v.labels, nan=0.0).astype(np.float32)
        n = len(lab)
        for m, noise in (("face", 0.3), ("behavior", 0.5)):
            va = np.clip(lab + noise * rng.standard_normal((n, 2), dtype=np.float32), -1, 1)
            emb = rng.standard_normal((n, 256), dtype=np.float32) + va @ proj
            save_predictions(runs[m], v.id, va, 30.0, emb=emb, mask=np.ones(n, bool), meta={"modality": m})
    for m, r in runs.items():
        write_run_json(r, modality=m, corpus=str(root / "corpus"))
    return runs


# ---------------------------------------------------------------------------------------------------------
# measured children
# ---------------------------------------------------------------------------------------------------------


SMALL_MODEL = {"hidden_dim": 32, "heads": 2, "layers": 1}


def child_face(root: Path, dim: int, out: Path, max_batches: int | None = None, small: bool = False) -> None:
    """One epoch of reference face training (this process is the measured one); prints a JSON line.
    ``max_batches``: stop the epoch's training after that many batches (validation and the export of every
    video's predictions still run over the whole corpus). ``small``: the reference model at a small size
    (:data:`SMALL_MODEL`: the same data path, a fraction of the compute) for memory runs at large sizes."""
    t0 = time.perf_counter()
    marks: dict[str, float] = {}

    class Mark(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "train windows" in record.getMessage() and "load" not in marks:
                marks["load"] = time.perf_counter() - t0

    logging.getLogger("vaest").addHandler(Mark())
    logging.getLogger("vaest").setLevel(logging.INFO)
    from vaest.tasks.face import settings_from, train_face

    st, cfg = settings_from({}, {"preset": "reference", "epochs": 1, "encoder": ENCODERS[dim], "device": "cpu",
                                 "max_batches_per_epoch": max_batches,
                                 "model_config": SMALL_MODEL if small else None})
    import vaest.training as training

    fit = training.fit

    def timed_fit(*a, **k):  # CPU seconds of the epoch (training + validation), robust to other load
        c = time.process_time()
        try:
            return fit(*a, **k)
        finally:
            marks["epoch_cpu"] = time.process_time() - c
            marks["load_cpu"] = c

    import vaest.tasks.face as face_task

    face_task.fit = timed_fit
    res = train_face(root / "corpus", root / "store", out, encoder=st.encoder, model=st.model, train_cfg=cfg,
                     settings=st)
    hist = json.loads((out / "history.json").read_text())
    print(json.dumps({"load_s": marks.get("load"), "load_cpu_s": marks.get("load_cpu"), "epoch_s": hist["seconds"],
                      "epoch_cpu_s": marks.get("epoch_cpu"), "wall_s": time.perf_counter() - t0,
                      "ccc": res["metrics"]["mean"]}))


def child_fusion(root: Path, out: Path, max_batches: int | None = None, small: bool = False) -> None:
    """One epoch of DCMMoE fusion training on the face and behavior runs of ``root``; prints a JSON line."""
    t0 = time.perf_counter()
    import vaest.tasks.fusion as tf
    from vaest.tasks.fusion import default_train_config, train_fusion

    inner, load_cpu = tf.build_fusion_data, []

    def timed_build(*a, **k):  # CPU seconds of reading the runs and building the inputs
        c0 = time.process_time()
        try:
            return inner(*a, **k)
        finally:
            load_cpu.append(time.process_time() - c0)

    tf.build_fusion_data = timed_build
    runs = {m: root / f"runs-{m}" for m in ("face", "behavior")}
    cfg = dataclasses.replace(default_train_config("dcmmoe"), epochs=1, max_batches_per_epoch=max_batches,
                              device="cpu")
    c = time.process_time()
    res = train_fusion(runs, root / "corpus", out, method="dcmmoe", train_cfg=cfg, crossfit=False,
                       model_cfg={"d_model": 32, "heads": 2, "layers": 1, "ffn": 64} if small else None)
    hist = json.loads((out / "history.json").read_text())
    print(json.dumps({"epoch_s": hist["seconds"], "cpu_s": time.process_time() - c, "wall_s": time.perf_counter() - t0,
                      "load_cpu_s": round(load_cpu[0], 2) if load_cpu else None, "ccc": res["mean"]}))


def measured(cmd: list[str], env: dict[str, str] | None = None, ok_codes: tuple[int, ...] = (0,)) -> dict:
    """Run ``cmd`` under /usr/bin/time -v; its peak RSS (MB), wall time and the JSON line it printed last."""
    load = os.getloadavg()[0]  # the machine is shared: the 1-minute load average when the run starts
    p = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, env=env)
    if p.returncode not in ok_codes:
        raise RuntimeError(f"{cmd}: exit {p.returncode}\n{p.stderr[-3000:]}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr).group(1)) / 1024
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", p.stderr).group(1)
    parts = [float(x) for x in wall.split(":")]
    secs = sum(x * 60 ** i for i, x in enumerate(reversed(parts)))
    cpu = sum(float(re.search(rf"{k} time \(seconds\): ([\d.]+)", p.stderr).group(1)) for k in ("User", "System"))
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    return {"peak_rss_mb": round(rss), "process_wall_s": round(secs, 1), "process_cpu_s": round(cpu, 1),
            "load_avg_start": round(load, 2), "load_avg_end": round(os.getloadavg()[0], 2),
            **(json.loads(lines[-1]) if lines else {})}


def run_train(args: argparse.Namespace) -> list[dict]:
    work = Path(args.work)
    here = Path(__file__).resolve()
    results = []
    srcs = [("new", str(here.parents[1] / "src"))] + ([("old", args.old)] if args.old else [])
    floor = measured([sys.executable, "-c", f"import torch, vaest.tasks.{'fusion' if args.fusion_only else 'face'}"],
                     env={**os.environ, "PYTHONPATH": srcs[0][1]})
    print(json.dumps({"floor": floor}), flush=True)
    for dim in [int(d) for d in args.dims.split(",")]:
        for frac in [float(f) for f in args.sizes.split(",")]:
            frames = int(round(frac * AFFWILD2_FRAMES))
            root = work / f"f{frames}-d{dim}"
            t = time.perf_counter()
            build(root, frames, dim, dtype=args.dtype, store_too=not args.fusion_only)
            build_s = time.perf_counter() - t
            for name, src in srcs:
                if args.fusion_only:
                    break
                if name == "old" and frames > args.old_max_frames:
                    continue
                out = root / f"run-{name}"
                shutil.rmtree(out, ignore_errors=True)
                env = {**os.environ, "PYTHONPATH": src, "VAEST_NO_PROGRESS": "1", "OMP_NUM_THREADS": "2"}
                cap = (["--max-batches", str(args.max_batches)] if args.max_batches else []) + \
                    (["--small"] if args.small else [])
                r = measured([sys.executable, str(here), "child-face", "--root", str(root), "--dim", str(dim),
                              "--out", str(out), *cap], env=env)
                r.update(task="face", code=name, frames=frames, dim=dim, build_s=round(build_s, 1), floor_rss_mb=floor["peak_rss_mb"],
                         max_batches=args.max_batches, small_model=args.small,
                         epoch_us_per_frame=round(1e6 * r["epoch_s"] / frames, 1),
                         epoch_cpu_us_per_frame=round(1e6 * r["epoch_cpu_s"] / frames, 1))
                print(json.dumps(r), flush=True)
                results.append(r)
                shutil.rmtree(out, ignore_errors=True)
            if (args.fusion or args.fusion_only) and dim == max(int(d) for d in args.dims.split(",")):
                build_runs(root)
                for name, src in srcs:
                    if name == "old" and frames > args.old_max_frames:
                        continue
                    out = root / f"fusion-{name}"
                    shutil.rmtree(out, ignore_errors=True)
                    env = {**os.environ, "PYTHONPATH": src, "VAEST_NO_PROGRESS": "1", "OMP_NUM_THREADS": "2"}
                    cap = (["--max-batches", str(args.max_batches)] if args.max_batches else []) + \
                        (["--small"] if args.small else [])
                    r = measured([sys.executable, str(here), "child-fusion", "--root", str(root), "--out", str(out),
                                  *cap], env=env)
                    r.update(task="fusion", code=name, frames=frames, max_batches=args.max_batches,
                             small_model=args.small)
                    print(json.dumps(r), flush=True)
                    results.append(r)
                    shutil.rmtree(out, ignore_errors=True)
            if not args.keep:
                shutil.rmtree(root, ignore_errors=True)
    return results


def child_demo_face(corpus: Path, store: Path, out: Path) -> None:
    """The demo's face training (``vaest demo``'s settings: 12 epochs, early stop 5, seed 0) on ``store``;
    prints a JSON line with the validation CCC."""
    from vaest.tasks.face import train_face
    from vaest.training import TrainConfig

    res = train_face(corpus, store, out, train_cfg=TrainConfig(epochs=12, early_stop=5, seed=0))
    print(json.dumps({"ccc": res["metrics"], "best_epoch": res["best_epoch"]}))


def run_demo_face(args: argparse.Namespace) -> list[dict]:
    """float32 vs float16 face features (and the old code on float32) with the demo's face training."""
    from vaest.features.store import FeatureStore

    work, demo = Path(args.work), Path(args.demo)
    corpus = work / "corpus"
    if not corpus.exists():
        shutil.copytree(demo / "corpus", corpus)
    stores = {}
    for dtype in ("float32", "float16"):
        st = FeatureStore(work / f"features-{dtype}", dtype=dtype)
        src = FeatureStore(demo / "features")
        for key in ("face-fer", "facetrack"):
            for vid in src.videos(key):
                if not st.path(key, vid).exists():
                    st.save(key, vid, src.load(key, vid))
        stores[dtype] = st.root
    here = Path(__file__).resolve()
    srcs = [("new", str(here.parents[1] / "src"))] + ([("old", args.old)] if args.old else [])
    results = []
    for name, src_dir in srcs:
        for dtype, root in stores.items():
            if name == "old" and dtype == "float16":
                continue
            out = work / f"run-{name}-{dtype}"
            shutil.rmtree(out, ignore_errors=True)
            env = {**os.environ, "PYTHONPATH": src_dir, "VAEST_NO_PROGRESS": "1"}
            r = measured([sys.executable, str(here), "child-demo-face", "--corpus", str(corpus), "--store", str(root),
                          "--out", str(out)], env=env)
            r.update(code=name, dtype=dtype, store_mb=round(sum(p.stat().st_size for p in (root / "face-fer").glob("*.npz")) / 2**20, 1))
            print(json.dumps(r), flush=True)
            results.append(r)
    return results


# ---------------------------------------------------------------------------------------------------------
# Ray prediction
# ---------------------------------------------------------------------------------------------------------


def make_clips(src: Path, dest: Path, n: int = 40, seconds: float = 1.5) -> list[Path]:
    """``n`` short real clips cut from CREMA-D's audio-visual files (``.flv``, about 2 s each) with ffmpeg into
    ``dest``: clip ``i`` is ``seconds`` of video ``i mod len(videos)`` from 0.05 x (i // len(videos)) s on, so
    every clip is a different file with its own content."""
    dest.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in src.iterdir() if p.suffix.lower() in (".mp4", ".flv", ".avi", ".mkv"))
    if not files:
        raise SystemExit(f"{src}: no video files")
    out = []
    for i in range(n):
        f = files[i % len(files)]
        start = 0.05 * (i // len(files))
        o = dest / f"{f.stem}_{i:02d}.mp4"
        if not o.exists():
            # CREMA-D's flv holds a data stream, mp3 audio and VP6 video: map both media streams, seek after
            # opening (the VP6 decoder needs the stream from its start)
            subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(f), "-map", "0:v:0", "-map", "0:a:0",
                            "-ss", f"{start:.2f}", "-t", str(seconds), "-c:v", "libx264", "-preset", "veryfast",
                            "-pix_fmt", "yuv420p", "-c:a", "aac", str(o)], check=True)
        out.append(o)
    return out


def _tree(pid: int) -> dict[int, tuple[int, float]]:
    """(RSS kB, CPU seconds so far) of ``pid`` and each of its descendants, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    kids: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            stats[int(d.name)] = fields
            kids.setdefault(int(fields[1]), []).append(int(d.name))
    out, todo = {}, [pid]
    while todo:
        p = todo.pop()
        f = stats.get(p)
        if f is not None:
            # fields after the name: state ppid ... utime (12th) stime (13th) ... rss (22nd, pages)
            out[p] = (int(f[21]) * os.sysconf("SC_PAGE_SIZE") // 1024, (int(f[11]) + int(f[12])) / tick)
        todo.extend(kids.get(p, []))
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def run_predict(clips: list[Path], out: Path, extra: list[str], kill: bool = False) -> dict:
    """One ``vaest predict`` process (and its Ray workers): wall, CPU s (process tree), peak RSS per process."""
    shutil.rmtree(out, ignore_errors=True)
    exe = Path(sys.executable).with_name("vaest")
    env = {**os.environ, "VAEST_NO_PROGRESS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    t0 = time.perf_counter()
    p = subprocess.Popen([str(exe), "predict", *map(str, clips), "--out", str(out), "--no-plot", "--device", "cpu",
                          *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                         start_new_session=True)
    peaks: dict[int, int] = {}
    cpu: dict[int, float] = {}
    names: dict[int, str] = {}
    killed = None
    while p.poll() is None:
        for pid, (kb, c) in _tree(p.pid).items():
            peaks[pid] = max(peaks.get(pid, 0), kb)
            cpu[pid] = max(cpu.get(pid, 0.0), c)
            if "PoolWorker" not in names.get(pid, ""):  # an idle Ray worker becomes the actor later
                names[pid] = _cmdline(pid)
        if kill and killed is None and len([q for q in out.glob("*.csv") if q.name != "index.csv"]) >= 4:
            workers = [pid for pid in _tree(p.pid) if "PoolWorker" in _cmdline(pid)]
            if workers:
                killed = workers[0]
                os.kill(killed, signal.SIGKILL)
        time.sleep(0.2)
    _, err = p.communicate()
    wall = time.perf_counter() - t0
    reaped = _children_cpu()  # the driver and what it reaped (Ray's workers are not its children)
    workers = [pid for pid in peaks if "PoolWorker" in names.get(pid, "")]
    rows = (out / "index.csv").read_text().splitlines()[1:] if (out / "index.csv").exists() else []
    # each Ray worker's start-up (vaest.actors.log_ready: CPU s of the worker until its Predictor was built, and
    # its thread pools), from the driver's log (whitespace collapsed: the log handler wraps long lines)
    ready = re.findall(r"ray worker (\d+) ready: state built in [\d.]+ s, ([\d.]+) CPU s since the worker started; "
                       r"threads: ((?:[a-z]+ \d+,? ?)+)", " ".join(err.split()))
    return {"rc": p.returncode,
            "cpu_worker_startup_s": round(sum(float(c) for _, c, _ in ready), 1),
            "worker_threads": sorted({t.strip() for _, _, t in ready}), "wall_s": round(wall, 1), "cpu_s": round(max(sum(cpu.values()), reaped), 1),
            "cpu_workers_s": round(sum(cpu[q] for q in workers), 1), "cpu_driver_s": round(cpu.get(p.pid, 0.0), 1),
            "files_ok": sum(",ok," in r for r in rows), "files": len(rows),
            "driver_peak_rss_mb": peaks.get(p.pid, 0) // 1024,
            "worker_peak_rss_mb": sorted((peaks[q] // 1024 for q in workers), reverse=True),
            "processes": len(peaks), "killed_worker": killed, "log_tail": err[-400:]}


_CPU_SEEN = [0.0]


def _children_cpu() -> float:
    """CPU seconds of the children reaped since the last call (their descendants included, when they waited)."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = ru.ru_utime + ru.ru_stime
    d = total - _CPU_SEEN[0]
    _CPU_SEEN[0] = total
    return d


def ray_startup() -> dict:
    """Seconds to start a local Ray (2 CPUs) and get one actor up, then to shut it down (a separate process)."""
    code = ("import time, ray; t=time.perf_counter(); ray.init(num_cpus=2, include_dashboard=False, "
            "log_to_driver=False); t1=time.perf_counter()\n"
            "@ray.remote\nclass A:\n    def pid(self): return 1\n"
            "a=A.remote(); ray.get(a.pid.remote()); t2=time.perf_counter(); ray.shutdown(); t3=time.perf_counter()\n"
            "import json; print(json.dumps({'init_s': round(t1-t, 2), 'first_actor_s': round(t2-t1, 2), "
            "'shutdown_s': round(t3-t2, 2)}))")
    return measured([sys.executable, "-c", code])


def local_startup(work: Path) -> dict:
    """CPU seconds and wall time of ``vaest predict`` on an empty folder: the command starts, builds its Predictor
    (models loaded) and stops with "no input file found" (exit 2); the one-process path's start-up, taken off
    its CPU to give its CPU per file."""
    empty = work / "empty"
    empty.mkdir(parents=True, exist_ok=True)
    exe = Path(sys.executable).with_name("vaest")
    env = {**os.environ, "VAEST_NO_PROGRESS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    return measured([str(exe), "predict", str(empty), "--out", str(work / "out-empty"), "--no-plot", "--device", "cpu"],
                    env=env, ok_codes=(2,))


def run_ray(args: argparse.Namespace) -> list[dict]:
    work = Path(args.work)
    clips = make_clips(Path(args.clips), work / "clips", args.n)
    # a busy machine starts Ray's processes slowly: give the raylet longer than its default to register
    os.environ.setdefault("RAY_raylet_start_wait_time_s", "180")
    try:
        results = [{"case": "ray start-up", **ray_startup()}]
    except RuntimeError as e:
        results = [{"case": "ray start-up", "error": str(e)[-300:]}]
    print(json.dumps(results[-1]), flush=True)
    startup = local_startup(work)
    results.append({"case": "local start-up (vaest predict on an empty folder)", **startup})
    print(json.dumps(results[-1]), flush=True)
    _children_cpu()
    cases = [("local (one process)", []), ("ray, 1 worker", ["--engine", "ray", "--workers", "1"]),
             ("ray, 2 workers", ["--engine", "ray", "--workers", "2"])]
    if args.kill:
        cases.append(("ray, 2 workers, one SIGKILLed", ["--engine", "ray", "--workers", "2"]))
    for name, extra in cases:
        r = run_predict(clips, work / "out", extra, kill="SIGKILL" in name)
        n_ok = max(r["files_ok"], 1)
        r.update(case=name, files_per_s=round(r["files_ok"] / r["wall_s"], 3),
                 cpu_s_per_file=round(r["cpu_s"] / n_ok, 2))
        # CPU per file once started: the local process less its start-up; the Ray workers less theirs
        if extra:
            r["cpu_s_per_file_started"] = round((r["cpu_workers_s"] - r["cpu_worker_startup_s"]) / n_ok, 3)
        else:
            r["cpu_s_per_file_started"] = round((r["cpu_s"] - startup["process_cpu_s"]) / n_ok, 3)
        print(json.dumps(r), flush=True)
        results.append(r)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--sizes", default="0.01,0.05,0.2", help="fractions of Aff-Wild2's 2.9M frames")
    t.add_argument("--dims", default="256,1280")
    t.add_argument("--work", default="/tmp/vaest-scale")
    t.add_argument("--dtype", default=None, help="float16: stores written in half precision")
    t.add_argument("--old", default=None, help="another checkout's src folder, run on the same stores")
    t.add_argument("--old-max-frames", type=int, default=150_000, help="largest size the old code is run at")
    t.add_argument("--keep", action="store_true", help="keep the stores")
    t.add_argument("--json", default=None, help="write the results here")
    t.add_argument("--max-batches", type=int, default=None,
                   help="cap the epoch's training batches (memory runs at large sizes on a busy machine)")
    t.add_argument("--small", action="store_true", help="the reference model at a small size (memory runs)")
    t.add_argument("--fusion", action="store_true", help="also one epoch of DCMMoE fusion at each size (largest dim)")
    t.add_argument("--fusion-only", action="store_true",
                   help="only the DCMMoE fusion epoch (the corpus and the two 256-d prediction runs; no face store)")
    cf = sub.add_parser("child-fusion")
    cf.add_argument("--root", required=True)
    cf.add_argument("--out", required=True)
    cf.add_argument("--max-batches", type=int, default=None)
    cf.add_argument("--small", action="store_true")
    c = sub.add_parser("child-face")
    c.add_argument("--root", required=True)
    c.add_argument("--dim", type=int, required=True)
    c.add_argument("--out", required=True)
    c.add_argument("--max-batches", type=int, default=None)
    c.add_argument("--small", action="store_true")
    d = sub.add_parser("demo-face")
    d.add_argument("--demo", required=True, help="a `vaest demo` output folder (its corpus and face features)")
    d.add_argument("--work", default="/tmp/vaest-f16")
    d.add_argument("--old", default=None)
    d.add_argument("--json", default=None)
    cd = sub.add_parser("child-demo-face")
    cd.add_argument("--corpus", required=True)
    cd.add_argument("--store", required=True)
    cd.add_argument("--out", required=True)
    r = sub.add_parser("ray")
    r.add_argument("--clips", default="/work/shared/data/cremad-av")
    r.add_argument("--n", type=int, default=40)
    r.add_argument("--work", default="/tmp/vaest-ray")
    r.add_argument("--kill", action="store_true")
    r.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.cmd == "child-face":
        child_face(Path(args.root), args.dim, Path(args.out), args.max_batches, args.small)
        return
    if args.cmd == "child-fusion":
        child_fusion(Path(args.root), Path(args.out), args.max_batches, args.small)
        return
    if args.cmd == "child-demo-face":
        child_demo_face(Path(args.corpus), Path(args.store), Path(args.out))
        return
    res = {"train": run_train, "ray": run_ray, "demo-face": run_demo_face}[args.cmd](args)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
