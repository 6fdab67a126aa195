"""`make bench`: every measured command as its own process, against the floor of its path on the same media.

Each command in :data:`COMMANDS` runs as a child process; its wall time includes start-up (imports, model
loading) and its peak resident memory is that child's own (``ru_maxrss`` from ``os.wait4``, the largest
process of its tree), as is its CPU time. The floor of each path (:mod:`benchmarks.floor`: decode + face
detection every 3rd frame + FaceMesh for the face path; decode + log-mel for the audio path) is measured in
the same run on the same media, also as a child process, and each command is reported as a ratio to it. The
load average is recorded before and after every command. Results go to ``benchmarks/results.json`` and
``docs/benchmarks.md`` is regenerated from that JSON (``--render-only`` re-renders an existing JSON).

Media (built once into a cache folder with ffmpeg): the six CREMA-D clips of ``../shared/data/cremad-av``
concatenated five times (63 s, 480x360, 30 fps), the same video at 2160 lines (2880x2160, 30 fps, H.264: the
4:3 picture scaled up, as a phone or camera records it; decoded at the working resolution), that video ten times
(10.5 min), a 2 s clip, and N 2 s clips cut from the long video (default 140) predicted in one call and one by
one. Without the shared data a synthetic
talking-face video takes their place (the JSON and the page say which). ``--quick`` shrinks everything to a few
seconds of media (for the test of this script, not for figures).

Usage: ``python benchmarks/run.py [--demo demo_out] [--quick] [--clips 140] [--no-components] [--sizes 63s,2160]
[--no-clips]``
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "cremad-av"
sys.path.insert(0, str(ROOT))
log = logging.getLogger("vaest.benchmarks")

# The commands measured, one line each ({video}, {out}, {model} and {clips} are filled in). `vaest` is the
# console script beside this Python (or `python -m vaest.cli` where it is missing).
COMMANDS: dict[str, list[str]] = {
    "help": ["vaest", "--help"],
    "predict_zero_shot": ["vaest", "predict", "{video}", "--out", "{out}"],
    "predict_bundle": ["vaest", "predict", "{video}", "--model", "{model}", "--out", "{out}"],
    "predict_clips_one_call": ["vaest", "predict", "{clips}", "--out", "{out}"],
}
FLOORS: dict[str, list[str]] = {
    "face": ["python", str(ROOT / "benchmarks" / "floor.py"), "face", "{video}"],
    "audio": ["python", str(ROOT / "benchmarks" / "floor.py"), "audio", "{video}"],
}


def _exe(argv: list[str]) -> list[str]:
    head, rest = argv[0], argv[1:]
    if head == "python":
        return [sys.executable, *rest]
    if head == "vaest":
        script = Path(sys.executable).parent / "vaest"
        return [str(script), *rest] if script.exists() else [sys.executable, "-m", "vaest.cli", *rest]
    return argv


def fill(argv: list[str], **values: Any) -> list[str]:
    """The command line with its ``{placeholders}`` filled; ``{clips}`` expands to one argument per clip."""
    out: list[str] = []
    for a in argv:
        if a == "{clips}":
            out += [str(c) for c in values["clips"]]
        else:
            out.append(a.format(**{k: v for k, v in values.items() if k != "clips"}))
    return out


def _hwm_kb(pid: int) -> float:
    """VmHWM (peak resident set of the process's own address space since its last exec) of ``pid``, in kB; 0 when
    the process is gone or the field is missing."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1])
    except OSError:
        pass
    return 0.0


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def measure(argv: list[str], timeout: float = 3600.0, poll: float = 0.02) -> dict[str, Any]:
    """Run ``argv`` as a child process; its wall seconds (start-up included), CPU seconds and peak RSS (MB).

    The peak is the command's own high-water mark, never this process's: ``ru_maxrss`` of a child on Linux keeps
    the RSS the child had when it was forked (a copy of this process, however large) across ``exec``, so it is
    not used. Instead the kernel's per-address-space peak ``VmHWM`` (reset by ``exec``) of the child and of its
    own children is read from ``/proc`` every ``poll`` seconds while it runs, and the largest is reported (a
    growth in the last ``poll`` seconds before exit can be missed). Without ``/proc`` it falls back to
    ``ru_maxrss`` (``peak_rss_source`` says which). CPU seconds are user + system of the child and the children
    it waited for. Raises RuntimeError with the child's stderr on failure.
    """
    env = dict(os.environ, VAEST_NO_PROGRESS="1", PYTHONPATH=os.pathsep.join(
        [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]))
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    peak = 0.0
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        p = subprocess.Popen(_exe(argv), stdout=out, stderr=err, env=env)
        deadline = time.monotonic() + timeout
        nap = 0.001  # fast polls at start-up (short commands), then every ``poll`` seconds
        while True:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                p.kill()
            tree = [p.pid]
            for q in tree:  # the child and the processes below it
                tree.extend(_children(q))
            peak = max([peak, *(_hwm_kb(q) for q in tree)])
            time.sleep(nap)
            nap = min(poll, nap * 1.5)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    peak_kb, source = (peak, "VmHWM of the command's processes (/proc)") if peak else (
        float(ru.ru_maxrss), "ru_maxrss (includes this process's RSS at fork)")
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} ... exited with {p.returncode}:\n{stderr[-3000:]}")
    return {"wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime, "peak_rss_mb": peak_kb / 1024,
            "peak_rss_source": source,
            "load_before": load0, "load_after": os.getloadavg()[0], "stdout": stdout}


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True)


def media_seconds(path: Path) -> float:
    """Duration of a media file (s), from its container."""
    from vaest.media import probe

    return float(probe(path).duration)


def build_media(cache: Path, quick: bool, n_clips: int) -> dict[str, Any]:
    """The benchmark's media, built once into ``cache`` (a later run reuses them).

    Returns ``{"source", "video", "long", "short", "clips": [...], "note"}``: ``video`` the base talking-face
    video (63 s from CREMA-D), ``long`` it ten times, ``short`` a 2 s clip, ``clips`` N 2 s clips.
    """
    if shutil.which("ffmpeg") is None:
        raise SystemExit("the benchmark builds its media with ffmpeg, which is not on PATH")
    tag = "quick" if quick else "full"
    cache = cache / tag
    cache.mkdir(parents=True, exist_ok=True)
    srcs = sorted(SHARED.glob("1001_DFA_*_XX.flv")) if SHARED.exists() else []
    if srcs:
        source, note = "CREMA-D", f"the six CREMA-D clips of {SHARED} concatenated"
    else:
        source = "synthetic"
        note = f"synthetic talking-face video (vaest synth): {SHARED} is absent, so the CREMA-D video is skipped"
        log.warning(note)
        syn = cache / "syn"
        if not (syn / "synth.json").exists():
            from vaest.corpus.synthetic import synthesize

            synthesize(syn, n_videos=2, seconds=4.0 if quick else 21.0, seed=0, workers=1)
        srcs = sorted((syn / "videos").glob("*.mp4"))[:1]
    repeats = 1 if quick else (5 if source == "CREMA-D" else 3)
    if quick:  # two CREMA-D clips (~4.5 s): a "video" and two 2 s clips
        srcs = srcs[:2]
    video = cache / "video.mp4"
    if not video.exists():
        lst = cache / "sources.txt"
        lst.write_text("".join(f"file '{s}'\n" for _ in range(repeats) for s in srcs))
        tmp = cache / "video.tmp.mp4"
        _ffmpeg("-f", "concat", "-safe", "0", "-i", str(lst), "-vf", "fps=30,scale=480:360", "-c:v", "libx264",
                "-preset", "veryfast", "-crf", "20", "-g", "30", "-pix_fmt", "yuv420p", "-c:a", "aac",
                "-ar", "44100", "-ac", "1", str(tmp))
        tmp.replace(video)
    uhd = cache / "video_2160.mp4"
    if not quick and not uhd.exists():
        _ffmpeg("-i", str(video), "-vf", "scale=2880:2160:flags=bicubic", "-c:v", "libx264", "-preset", "veryfast",
                "-crf", "20", "-g", "30", "-pix_fmt", "yuv420p", "-c:a", "copy", str(cache / "uhd.tmp.mp4"))
        (cache / "uhd.tmp.mp4").replace(uhd)
    long = cache / "video_x10.mp4"
    if not quick and not long.exists():
        lst = cache / "ten.txt"
        lst.write_text(f"file '{video}'\n" * (2 if quick else 10))
        _ffmpeg("-f", "concat", "-safe", "0", "-i", str(lst), "-c", "copy", str(cache / "long.tmp.mp4"))
        (cache / "long.tmp.mp4").replace(long)
    clip_dir = cache / "clips"
    if not (clip_dir / "done").exists():
        shutil.rmtree(clip_dir, ignore_errors=True)
        clip_dir.mkdir()
        _ffmpeg("-i", str(video if quick else long), "-f", "segment", "-segment_time", "2", "-reset_timestamps", "1", "-c", "copy",
                str(clip_dir / "clip_%04d.mp4"))
        (clip_dir / "done").write_text("")
    clips = sorted(clip_dir.glob("clip_*.mp4"))
    clips = [c for c in clips if media_seconds(c) > 1.5][:n_clips]
    return {"source": source, "note": note, "video": video, "long": None if quick else long, "short": clips[0],
            "clips": clips, "uhd": None if quick else uhd}


def floor_of(path: str, video: Path) -> dict[str, Any]:
    """The floor of ``path`` (face or audio) on ``video``: its processing seconds and its own process."""
    m = measure(fill(FLOORS[path], video=video))
    line = next(ln for ln in m.pop("stdout").splitlines() if ln.startswith("FLOOR "))
    return {**json.loads(line[6:]), "process": m}


def run_command(name: str, media_s: float, floor_s: float | None, **values: Any) -> dict[str, Any]:
    """Measure one command of :data:`COMMANDS`; its real-time factor and ratio to ``floor_s``."""
    argv = fill(COMMANDS[name], **values)
    log.info("%s: %s", name, " ".join(argv[:6]) + (" ..." if len(argv) > 6 else ""))
    m = measure(argv)
    m.pop("stdout")
    m["command"] = " ".join(COMMANDS[name])
    m["media_s"] = media_s
    if media_s:
        m["rtf"] = m["wall_s"] / media_s
    if floor_s:
        m["floor_s"] = floor_s
        m["ratio_to_floor"] = m["wall_s"] / floor_s
    log.info("%s: wall %.2f s, RTF %s, %s x floor, peak RSS %.0f MB, load %.1f->%.1f", name, m["wall_s"],
             _f(m.get("rtf"), "{:.3f}"), _f(m.get("ratio_to_floor")), m["peak_rss_mb"], m["load_before"],
             m["load_after"])
    return m


def training_per_epoch(demo: Path) -> dict[str, float]:
    """Seconds per epoch of each model trained by a finished demo (from its history.json)."""
    out = {}
    for h in sorted((demo / "runs").glob("*/history.json")):
        d = json.loads(h.read_text())
        n = len(d.get("history") or [])
        if n:
            out[h.parent.name] = d["seconds"] / n
    return out


def components(video: Path) -> dict[str, Any]:
    """In-process throughput of each stage (benchmarks/face.py, audio.py, behavior.py), for finding where time
    goes; these exclude start-up and are not the end-to-end figures."""
    from benchmarks.audio import extraction_speed
    from benchmarks.behavior import desc_speed
    from benchmarks.face import benchmark_face

    res: dict[str, Any] = {}
    res["face"] = benchmark_face(video, encoders=("fer", "tiny"))
    res["audio"] = extraction_speed(seconds=30.0, repeats=2)
    res["behavior"] = desc_speed(seconds=10.0)
    return res


def run(a: argparse.Namespace) -> dict[str, Any]:
    """Every measurement; the result dictionary written to the JSON."""
    res: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "quick": a.quick, "skip_long": a.skip_long, "load_before": list(os.getloadavg()), "gpu": gpu_note()}
    m = build_media(a.cache, a.quick, a.clips)
    res["media"] = {"source": m["source"], "note": m["note"], "video_s": media_seconds(m["video"]),
                    "long_s": media_seconds(m["long"]) if m["long"] else None,
                    "short_s": media_seconds(m["short"]),
                    "uhd_s": media_seconds(m["uhd"]) if m["uhd"] else None,
                    "clips": len(m["clips"]), "clips_s": sum(media_seconds(c) for c in m["clips"])}
    log.info("media: %s", res["media"])
    model = a.demo / "model"
    has_bundle = (model / "bundle.json").exists()
    res["bundle"] = str(model) if has_bundle else None
    runs: dict[str, Any] = {}
    floors: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="vaest-bench-") as tmp:
        work = Path(tmp)
        runs["help"] = run_command("help", 0.0, None)
        sizes = [("63s", m["video"], res["media"]["video_s"])]
        if not a.quick:  # --quick: the short video alone stands for every size
            sizes.append(("2160", m["uhd"], res["media"]["uhd_s"]))
            if not a.skip_long:
                sizes.append(("10min", m["long"], res["media"]["long_s"]))
            sizes.append(("2s", m["short"], res["media"]["short_s"]))
        if a.sizes:
            sizes = [s for s in sizes if s[0] in a.sizes.split(",")]
        res["sizes"] = [s[0] for s in sizes]
        for key, video, secs in sizes:
            log.info("floors on %s", video.name)
            floors[key] = {"face": floor_of("face", video), "audio": floor_of("audio", video)}
            face_s = floors[key]["face"]["seconds"]
            both_s = face_s + floors[key]["audio"]["seconds"]
            runs[f"predict_zero_shot_{key}"] = run_command("predict_zero_shot", secs, face_s, video=video,
                                                           out=work / f"z{key}")
            if has_bundle:
                runs[f"predict_bundle_{key}"] = run_command("predict_bundle", secs, both_s, video=video,
                                                            out=work / f"b{key}", model=model)
        clips = m["clips"] if not a.no_clips else []
        if clips:
            one = run_command("predict_clips_one_call", res["media"]["clips_s"], None, clips=clips, out=work / "c1")
            runs["predict_clips_one_call"] = one
            walls, peaks = [], []
            for i, c in enumerate(clips):
                r = run_command("predict_zero_shot", media_seconds(c), None, video=c, out=work / f"c{i}")
                walls.append(r["wall_s"])
                peaks.append(r["peak_rss_mb"])
            runs["predict_clips_one_by_one"] = {"command": " ".join(COMMANDS["predict_zero_shot"]) + " (once per clip)",
                                                "wall_s": sum(walls), "media_s": res["media"]["clips_s"],
                                                "rtf": sum(walls) / res["media"]["clips_s"],
                                                "peak_rss_mb": max(peaks), "per_clip_s": sum(walls) / len(walls)}
            one["per_clip_s"] = one["wall_s"] / len(clips)
    res["floors"] = floors
    res["runs"] = runs
    if not a.no_components and not a.quick:
        log.info("in-process stage throughputs")
        res["components"] = components(m["video"])
    if (a.demo / "metrics.json").exists():
        res["train_seconds_per_epoch"] = training_per_epoch(a.demo)
        res["demo_seconds"] = json.loads((a.demo / "metrics.json").read_text()).get("seconds")
    res["load_after"] = list(os.getloadavg())
    return res


def gpu_note() -> str:
    """Why there are no GPU figures (or which GPU there is: the GPU benchmark is not part of this script)."""
    if shutil.which("nvidia-smi"):
        p = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                           text=True)
        if p.returncode == 0 and p.stdout.strip():
            return f"GPU present ({p.stdout.strip()}); this script measures the CPU paths only"
    return "no GPU on this machine: no GPU figures were measured"


def _f(x: Any, fmt: str = "{:.2f}") -> str:
    return fmt.format(x) if isinstance(x, (int, float)) else ""


_NAMES = {
    "help": "`vaest --help` (cold start)",
    "predict_zero_shot": "`vaest predict` zero-shot",
    "predict_bundle": "`vaest predict --model` bundle (all modalities + fusion)",
}


def render(r: dict[str, Any]) -> str:
    """The Markdown page of a benchmark result (docs/benchmarks.md is this, regenerated from the JSON)."""
    md = r["media"]
    L = ["# Benchmarks", "",
         "<!-- generated by `make bench` (benchmarks/run.py) from benchmarks/results.json: do not edit by hand -->",
         "",
         f"Run {r['date']} on {r['machine']}, Python {r['python']}{' (**--quick**: not figures)' if r['quick'] else ''}. "
         f"Media: {md['note']}: {md['video_s']:.1f} s (480x360, 30 fps), the same at 2160 lines (`2160`: "
         "2880x2160 H.264, the picture scaled up; decoded at the working resolution), the same ten times "
         f"({_f(md['long_s'], '{:.0f}')} s), a {md['short_s']:.1f} s clip and {md['clips']} clips of ~2 s. "
         f"Load average (1 min) before/after the run: {r['load_before'][0]:.1f}/{r['load_after'][0]:.1f} "
         "(other work on the machine slows every figure; each row has its own below). GPU: " + r["gpu"] + "."
         + (" **The 10-min video was not run (`--skip-long`).**" if r.get("skip_long") else "")
         + ("" if r.get("bundle") else " No demo bundle was found (`make demo` writes demo_out/model): the bundle "
            "rows are missing."), "",
         "Every command runs as its own process: *wall* includes start-up (imports, model loading); *peak RSS* is "
         "that process's own high-water mark (the kernel's VmHWM of the command's processes, polled from /proc; "
         "the benchmark's own memory is not in it); *CPU* is its user+system time. "
         "RTF = wall / media seconds. *Floor* = the least work of the path in one process on the same media in "
         "the same run (face: PyAV decode to RGB + MediaPipe full-range detection every 3rd frame + FaceMesh "
         "video mode on every frame, all at the working resolution: larger frames are reduced while decoding, as "
         "vaest does; the bundle's floor adds the audio path: decode to 16 kHz + log-mel), "
         "model set-up excluded; *x floor* = wall / floor.", "",
         "## Floors", "",
         "| media | frames | decode s | detect s | mesh s | face floor s | face floor RTF | audio floor s | floor process wall s | floor peak RSS MB |",
         "|---|---|---|---|---|---|---|---|---|---|"]
    secs = {"63s": md["video_s"], "10min": md["long_s"], "2s": md["short_s"], "2160": md.get("uhd_s")}
    for k, f in r["floors"].items():
        fa, au = f["face"], f["audio"]
        L.append(f"| {k} | {fa['frames']} | {_f(fa['decode_s'])} | {_f(fa['detect_s'])} | {_f(fa['mesh_s'])} | "
                 f"{_f(fa['seconds'])} | {_f(fa['seconds'] / secs[k], '{:.3f}')} | {_f(au['seconds'])} | "
                 f"{_f(fa['process']['wall_s'])} | {_f(fa['process']['peak_rss_mb'], '{:.0f}')} |")
    L += ["", "## Commands (whole process)", "",
          "| command | media | media s | wall s | CPU s | RTF | floor s | x floor | peak RSS MB | load before/after |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for key, p in r["runs"].items():
        base, _, media = key.rpartition("_") if key.endswith(("63s", "10min", "2s", "2160")) else (key, "", "")
        media = "63s at 2880x2160" if media == "2160" else media
        name = _NAMES.get(base, f"`{p['command']}`")
        if key.startswith("predict_clips"):
            name = f"{md['clips']} clips of 2 s, {'one call' if key.endswith('one_call') else 'one process each'}"
            media = f"{p.get('per_clip_s', 0):.2f} s/clip"
        lb = f"{p['load_before']:.1f}/{p['load_after']:.1f}" if "load_before" in p else ""
        L.append(f"| {name} | {media} | {_f(p.get('media_s'), '{:.1f}')} | {_f(p['wall_s'])} | {_f(p.get('cpu_s'))} "
                 f"| {_f(p.get('rtf'), '{:.3f}')} | {_f(p.get('floor_s'))} | {_f(p.get('ratio_to_floor'))} | "
                 f"{_f(p['peak_rss_mb'], '{:.0f}')} | {lb} |")
    c = r.get("components")
    if c:
        L += ["", "## Stage throughput (in one process, start-up excluded: where the time goes)", "",
              "| stage | frames/s (wall) | frames per CPU-second |", "|---|---|---|"]
        for stage, fps in c["face"]["fps"].items():
            L.append(f"| face: {stage} | {fps:.0f} | {c['face']['fps_per_cpu_second'][stage]:.0f} |")
        for k, v in c["behavior"].items():
            if isinstance(v, (int, float)) and ("fps" in k or "per_s" in k):
                L.append(f"| behavior: {k} | {v:.1f} | |")
        L += ["", "| audio encoder | compute s per audio s |", "|---|---|"]
        for k, v in c["audio"].items():
            if isinstance(v, (int, float)):
                L.append(f"| {k} | {v:.4f} |")
    if r.get("train_seconds_per_epoch"):
        L += ["", "## Training (from the demo folder's history.json: wall time of that run, under whatever load it had)",
              "", "| model | seconds per epoch |", "|---|---|"]
        for k, v in r["train_seconds_per_epoch"].items():
            L.append(f"| {k} | {v:.1f} |")
    if r.get("demo_seconds"):
        L += ["", "Demo steps (s) of the benchmarked demo folder (its own run; the README's demo figures and times are "
              "those of `docs/demo/metrics-seed*.json`): " + ", ".join(f"{k} {v}" for k, v in r["demo_seconds"].items())]
    L += ["", "## GPU", "", r["gpu"] + ". The reference-size models (GRADA, WavLM-Large, Qwen3-VL-4B, Mamba with "
          "CUDA kernels) have no measured GPU throughput here; no estimate for an Aff-Wild2-sized corpus is given "
          "without one."]
    return "\n".join(L) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", type=Path, default=ROOT / "demo_out", help="a finished `vaest demo` folder "
                    "(its model bundle is benchmarked when present)")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results.json")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "vaest-bench",
                    help="folder for the built media (reused by later runs)")
    ap.add_argument("--clips", type=int, default=140, help="2 s clips predicted in one call and one by one")
    ap.add_argument("--quick", action="store_true", help="a few seconds of media: checks the script, not speed")
    ap.add_argument("--no-components", action="store_true", help="skip the in-process stage throughputs")
    ap.add_argument("--skip-long", action="store_true", help="skip the 10-minute video (its commands take ~10 min)")
    ap.add_argument("--render-only", action="store_true", help="re-render --out from an existing --json")
    ap.add_argument("--sizes", default="", help="only these media, comma-separated (63s, 2160, 10min, 2s)")
    ap.add_argument("--no-clips", action="store_true", help="skip the runs on the 2 s clips")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if a.quick:
        a.clips = min(a.clips, 3)
    if a.render_only:
        res = json.loads(a.json.read_text())
    else:
        res = run(a)
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(res, indent=2, default=str) + "\n")
        log.info("wrote %s", a.json)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(render(res))
    log.info("wrote %s", a.out)


if __name__ == "__main__":
    main()
