"""`vaest live` at real time: the 63 s benchmark video published by ffmpeg with ``-re`` (pipe or UDP on 127.0.0.1).

Each measured command is its own process tree (``bash -c "ffmpeg -re ... | vaest live - ..."``, or vaest on a
``udp://127.0.0.1`` port with ffmpeg publishing to it); its peak RSS is the largest VmHWM of the tree
(:func:`benchmarks.run.measure`) and, for the long stream, vaest's VmRSS is sampled every 5 s to show whether it
grows. Figures come from the recording's metadata (``OUT/live.json``: frames arrived, processed, dropped,
latency percentiles) and the JSON lines (latency over time: a backlog that grows shows as a latency that grows).
The load average is recorded before and after each run: on a shared machine the real-time figures are
pessimistic.

Runs (``--what``, comma-separated; default all but ``long``):

- ``zero``: zero-shot at real time (pipe): fps sustained, drops, latency median / p95, latency in the first and
  last 10 s;
- ``udp``: the same over UDP on 127.0.0.1;
- ``bundle``: the demo bundle (``--demo DIR``, its ``model``) at real time: the rate it sustains;
- ``long``: zero-shot over a 10.5-minute stream (the video looped 10 times at real time): RSS every 5 s;
- ``offline``: live at real time into a queue that never drops (a backlog may build up) against offline
  ``vaest predict`` on the same file: per-frame differences of each column, the smoothed curves also against
  offline (k - 1) / 2 frames earlier, the voice also against offline 1.5 s earlier.

Usage: ``PYTHONPATH=src python benchmarks/live.py [--what zero,udp,bundle,offline,long] [--demo demo_out]
[--json benchmarks/live_results.json]``
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.run import _exe, _hwm_kb, build_media, measure  # noqa: E402

log = logging.getLogger("vaest.benchmarks.live")


def _vaest() -> str:
    return " ".join(_exe(["vaest"]))


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _summary(out: Path, stdout: str) -> dict[str, Any]:
    """Figures of one live run from its recording and its JSON lines."""
    meta = json.loads((out / "live.json").read_text())
    live = meta["live"]
    lines = [json.loads(ln) for ln in stdout.splitlines() if ln.startswith("{")]
    t = np.array([d["time"] for d in lines], float)
    lat = np.array([d["latency_ms"] for d in lines], float)
    delay = np.array([d["delay_ms"] for d in lines], float)
    res: dict[str, Any] = {k: live[k] for k in ("frames_arrived", "frames_processed", "frames_dropped",
                                                "queue_size", "queue_high_water", "stream_seconds", "end",
                                                "voice_windows", "voice_windows_skipped")}
    res["latency_ms"] = live["latency_ms"]
    res["delay_ms"] = live["delay_ms"]
    res["dropped_share"] = live["frames_dropped"] / max(1, live["frames_arrived"])
    if live.get("stream_seconds"):
        res["processed_fps"] = live["frames_processed"] / live["stream_seconds"]
        res["arrived_fps"] = live["frames_arrived"] / live["stream_seconds"]
    if len(t):
        first, last = lat[t < t[0] + 10], lat[t > t[-1] - 10]
        res["latency_first_10s_median_ms"] = float(np.median(first))
        res["latency_last_10s_median_ms"] = float(np.median(last))
        res["latency_p95_ms_lines"] = float(np.percentile(lat, 95))
        # a backlog that grows shows as a delay behind the stream clock that grows
        res["delay_first_10s_median_ms"] = float(np.median(delay[t < t[0] + 10]))
        res["delay_last_10s_median_ms"] = float(np.median(delay[t > t[-1] - 10]))
    res["estimated_rows"] = meta["frames_estimated"]
    return res


def realtime(video: Path, work: Path, name: str, extra: str = "", loop: int = 0) -> dict[str, Any]:
    """``ffmpeg -re -i VIDEO -c copy -f mpegts - | vaest live - --out OUT EXTRA``, measured as one process tree."""
    out = work / name
    loops = f"-stream_loop {loop} " if loop else ""
    cmd = (f"ffmpeg -v error -nostdin -re {loops}-i {video} -c copy -f mpegts - | "
           f"{_vaest()} live - --out {out} {extra}")
    log.info("%s: %s", name, cmd)
    m = measure(["bash", "-o", "pipefail", "-c", cmd], timeout=3600)
    res = _summary(out, m.pop("stdout"))
    res["process"] = m
    res["command"] = cmd
    return res


def realtime_udp(video: Path, work: Path) -> dict[str, Any]:
    """vaest on ``udp://127.0.0.1:PORT``, ffmpeg publishing to it once vaest says it is reading."""
    port = _free_udp_port()
    url = f"udp://127.0.0.1:{port}"
    out = work / "udp"
    argv = [*_exe(["vaest"]), "live", url, "--out", str(out), "--stall", "3"]
    env = dict(os.environ, VAEST_NO_PROGRESS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]))
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as so:
        p = subprocess.Popen(argv, stdout=so, stderr=subprocess.PIPE, env=env)
        for line in p.stderr:  # wait for "reading": the models are loaded, the socket opens next
            if line.decode().startswith("vaest live: reading"):
                break
        pub = subprocess.Popen(["ffmpeg", "-v", "error", "-nostdin", "-re", "-i", str(video), "-c", "copy", "-f",
                                "mpegts", url])
        peak = 0.0
        while p.poll() is None:
            peak = max(peak, _hwm_kb(p.pid))
            time.sleep(0.05)  # sampling interval of the memory peak (a measurement, not synchronisation)
        pub.wait(timeout=60)
        so.seek(0)
        stdout = so.read().decode()
        err = p.stderr.read().decode()
    res = _summary(out, stdout)
    res["process"] = {"wall_s": time.perf_counter() - t0, "peak_rss_mb": peak / 1024, "load_before": load0,
                      "load_after": os.getloadavg()[0], "exit": p.returncode, "stderr_tail": err[-500:]}
    res["command"] = f"{' '.join(argv)}  <-  ffmpeg -re -i {video.name} -c copy -f mpegts {url}"
    return res


def long_stream(video: Path, work: Path, loops: int = 9) -> dict[str, Any]:
    """Zero-shot over the video looped ``loops`` more times at real time; vaest's RSS sampled every 5 s."""
    out = work / "long"
    argv_pub = ["ffmpeg", "-v", "error", "-nostdin", "-re", "-stream_loop", str(loops), "-i", str(video), "-c",
                "copy", "-f", "mpegts", "-"]
    argv = [*_exe(["vaest"]), "live", "-", "--out", str(out), "--rate", "1"]
    env = dict(os.environ, VAEST_NO_PROGRESS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]))
    pub = subprocess.Popen(argv_pub, stdout=subprocess.PIPE)
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as so:
        p = subprocess.Popen(argv, stdin=pub.stdout, stdout=so, stderr=subprocess.PIPE, env=env)
        pub.stdout.close()
        err: list[bytes] = []
        drain = threading.Thread(target=lambda: err.append(p.stderr.read()), daemon=True)
        drain.start()
        samples = []
        while p.poll() is None:
            try:
                with open(f"/proc/{p.pid}/status") as f:
                    st = {ln.split(":")[0]: ln.split()[1] for ln in f if ln.startswith(("VmRSS", "VmHWM"))}
                samples.append((round(time.perf_counter() - t0, 1), float(st["VmRSS"]) / 1024,
                                float(st["VmHWM"]) / 1024))
            except (OSError, KeyError):
                pass
            time.sleep(5.0)  # sampling interval of the RSS curve (a measurement, not synchronisation)
        pub.wait(timeout=60)
        drain.join(timeout=30)
    rss = np.array([s[1] for s in samples])
    t = np.array([s[0] for s in samples])
    res = {"samples": samples, "wall_s": time.perf_counter() - t0, "load_before": list(load0),
           "load_after": list(os.getloadavg()), "command": " ".join(argv_pub) + " | " + " ".join(argv)}
    meta = json.loads((out / "live.json").read_text())["live"]
    res.update({k: meta[k] for k in ("frames_arrived", "frames_processed", "frames_dropped", "latency_ms",
                                     "stream_seconds")})
    if len(rss) > 4:
        after1 = rss[t >= 60]
        res["rss_at_1min_mb"] = float(after1[0]) if len(after1) else None
        res["rss_last_mb"] = float(rss[-1])
        res["rss_max_mb"] = float(rss.max())
        res["peak_hwm_mb"] = float(samples[-1][2])
        if len(after1) > 2:  # slope of RSS after the first minute (MB per minute)
            tt = t[t >= 60] / 60
            res["rss_slope_mb_per_min"] = float(np.polyfit(tt, after1, 1)[0])
    return res


def offline_agreement(video: Path, work: Path) -> dict[str, Any]:
    """Live with no frame dropped (real time, a queue that never drops) vs offline predict on the same file."""
    import pandas as pd

    off_dir = work / "offline"
    subprocess.run([*_exe(["vaest"]), "predict", str(video), "--out", str(off_dir), "--no-plot", "--no-progress"],
                   check=True, env=dict(os.environ, PYTHONPATH=str(ROOT / "src")))
    off = pd.read_csv(off_dir / f"{video.stem}.csv")
    out = work / "nodrop"
    # at real time (the voice computed as the audio arrives, as live), into a queue that never drops: a backlog may
    # build up on a loaded machine, but every frame is estimated from the same frames as offline
    cmd = (f"ffmpeg -v error -nostdin -re -i {video} -c copy -f mpegts - | "
           f"{_vaest()} live - --out {out} --queue 1000000")
    subprocess.run(["bash", "-o", "pipefail", "-c", cmd], check=True, capture_output=True,
                   env=dict(os.environ, PYTHONPATH=str(ROOT / "src")))
    live = pd.read_csv(out / "live.csv")
    res: dict[str, Any] = {"frames_offline": len(off), "frames_live": len(live), "command": cmd}
    m = off.merge(live, on=["frame", "person"], suffixes=("_off", "_live"))
    res["frames_compared"] = len(m)
    for c in ("face_valence", "face_arousal", "valence", "arousal", "audio_arousal"):
        a, b = m[f"{c}_live"].to_numpy(float), m[f"{c}_off"].to_numpy(float)
        both = np.isfinite(a) & np.isfinite(b)
        d = np.abs(a - b)[both]
        res[c] = {"both_finite": int(both.sum()), "only_live": int((np.isfinite(a) & ~np.isfinite(b)).sum()),
                  "only_offline": int((~np.isfinite(a) & np.isfinite(b)).sum()),
                  "max_abs": float(d.max()) if d.size else None, "mean_abs": float(d.mean()) if d.size else None}
    # the voice: live at t is the trailing window ending <= t; offline centred on t: compare with offline at
    # t - 1.5 s (the same window's centre) as well
    fps = 30.0
    shift = int(round(1.5 * fps))
    a = m["audio_arousal_live"].to_numpy(float)[shift:]
    b = m["audio_arousal_off"].to_numpy(float)[:-shift]
    both = np.isfinite(a) & np.isfinite(b)
    if both.sum() > 10:
        res["audio_arousal_vs_offline_1p5s_earlier"] = {"frames": int(both.sum()),
                                                        "mean_abs": float(np.abs(a - b)[both].mean()),
                                                        "corr": float(np.corrcoef(a[both], b[both])[0, 1])}
    # the smoothing: live final = trailing mean (kernel k) of the raw; offline = centred mean: live at frame i
    # against offline at i - (k - 1) / 2 (equal where the raw values around agree: the face path),
    # and the face's expression pooling: trailing 0.5 s (15 frames) against centred: 7 frames
    for c, h in (("face_valence", 7), ("face_arousal", 7), ("valence", 10), ("arousal", 13)):
        a, b = m[f"{c}_live"].to_numpy(float)[2 * h:], m[f"{c}_off"].to_numpy(float)[h:-h]
        both = np.isfinite(a) & np.isfinite(b)
        d = np.abs(a - b)[both]
        res[f"{c}_vs_offline_{h}_frames_earlier"] = {"frames": int(both.sum()), "max_abs": float(d.max()),
                                                     "mean_abs": float(d.mean()),
                                                     "share_within_1e-3": float((d < 1e-3).mean())}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--what", default="zero,udp,bundle,offline")
    ap.add_argument("--demo", type=Path, default=ROOT / "demo_out")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "vaest-bench")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "live_results.json")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    video = build_media(a.cache, False, 1)["video"]
    what = a.what.split(",")
    res: dict[str, Any] = json.loads(a.json.read_text()) if a.json.exists() else {}
    res["machine"] = f"{os.cpu_count()} cores"
    with tempfile.TemporaryDirectory(prefix="vaest-live-bench-") as tmp:
        work = Path(tmp)
        for w in what:
            t = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
            load = list(os.getloadavg())
            if w == "zero":
                r = realtime(video, work, "zero")
            elif w == "udp":
                r = realtime_udp(video, work)
            elif w == "bundle":
                model = a.demo / "model"
                if not (model / "bundle.json").exists():
                    log.warning("no demo bundle at %s (make demo): the bundle run is skipped", model)
                    continue
                r = realtime(video, work, "bundle", f"--model {model}")
            elif w == "long":
                r = long_stream(video, work)
            elif w == "offline":
                r = offline_agreement(video, work)
            else:
                raise SystemExit(f"unknown run {w!r}")
            r["date"], r["loadavg_before"], r["loadavg_after"] = t, load, list(os.getloadavg())
            res[w] = r
            log.info("%s: %s", w, json.dumps({k: v for k, v in r.items() if k != "samples"}, default=str)[:1500])
            a.json.write_text(json.dumps(res, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
