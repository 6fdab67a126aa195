"""One benchmark run over every measured path; writes the table into docs/benchmarks.md.

Measures, on this machine: frames per second of decoding, face detection/tracking and each face encoder;
real-time factor of the audio encoders and of the behavior encoder; training seconds per epoch of each model
(from a finished ``vaest demo`` folder); ``vaest predict`` real-time factor end to end (zero-shot, and with
the demo's trained bundle); peak memory of each end-to-end command (measured in a child process).
Inputs: the real talking-face clips in ``../shared/data/cremad-av`` where present, else generated media.

Usage: ``python benchmarks/run.py [--demo demo_out] [--out docs/benchmarks.md] [--json bench.json]``
(``make bench`` runs it after set-up).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
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

_CHILD = r"""
import json, resource, sys, time
from vaest.cli import app
t = time.perf_counter()
try:
    app(sys.argv[1:], standalone_mode=False)
finally:
    print("BENCH " + json.dumps({"seconds": time.perf_counter() - t,
                                 "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_cli(args: list[str]) -> dict[str, float]:
    """Run ``vaest ARGS`` in a child process; its wall time (after imports) and peak resident memory."""
    env = dict(os.environ, VAEST_NO_PROGRESS="1")
    p = subprocess.run([sys.executable, "-c", _CHILD, *args], capture_output=True, text=True, env=env)
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("BENCH ")), None)
    if p.returncode != 0 or line is None:
        raise RuntimeError(f"vaest {' '.join(args)} failed:\n{p.stderr[-2000:]}")
    return json.loads(line[6:])


def media_seconds(path: Path) -> float:
    from vaest.media import probe

    return probe(path).duration


def test_media(work: Path) -> tuple[list[Path], str]:
    """The real clips when present, else a generated 10 s synthetic video."""
    clips = sorted(SHARED.glob("1001_DFA_*_XX.flv")) if SHARED.exists() else []
    if clips:
        return clips, "CREMA-D clips (480x360, 29.97 fps)"
    from vaest.corpus.synthetic import synthesize

    synthesize(work / "syn", n_videos=2, seconds=10.0, seed=0, workers=1)
    return sorted((work / "syn" / "videos").glob("*.mp4")), "synthetic videos (generated)"


def training_per_epoch(demo: Path) -> dict[str, float]:
    """Seconds per epoch of each model trained by a finished demo (from its history.json)."""
    out = {}
    for h in sorted((demo / "runs").glob("*/history.json")):
        d = json.loads(h.read_text())
        n = len(d.get("history") or [])
        if n:
            out[h.parent.name] = d["seconds"] / n
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--demo", type=Path, default=ROOT / "demo_out", help="a finished `vaest demo` folder")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from benchmarks.audio import extraction_speed, wavlm_forward_speed
    from benchmarks.behavior import desc_speed, mamba_speed
    from benchmarks.face import benchmark_face

    res: dict[str, Any] = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                           "load_before": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        clips, what = test_media(work)
        res["media"] = what
        log.info("face stages on %s", clips[0])
        res["face"] = benchmark_face(clips[0], seconds=10.0)
        log.info("audio encoders")
        res["audio"] = extraction_speed(seconds=30.0, repeats=2)
        try:
            res["wavlm_large_cpu"] = wavlm_forward_speed(repeats=1)
        except Exception as e:  # a CPU too small for WavLM-Large is not fatal to the table
            res["wavlm_large_cpu"] = {"error": str(e)}
        log.info("behavior encoder and Mamba")
        res["behavior"] = desc_speed(seconds=10.0)
        res["mamba"] = mamba_speed()
        dur = sum(media_seconds(c) for c in clips)
        log.info("vaest predict (zero-shot) on %d clips, %.1f s of media", len(clips), dur)
        z = run_cli(["predict", *map(str, clips), "--out", str(work / "p0")])
        res["predict_zero_shot"] = {**z, "media_seconds": dur, "rtf": z["seconds"] / dur}
        if (a.demo / "model" / "bundle.json").exists():
            b = run_cli(["predict", *map(str, clips), "--out", str(work / "p1"), "--model", str(a.demo / "model")])
            res["predict_bundle"] = {**b, "media_seconds": dur, "rtf": b["seconds"] / dur}
            res["train_seconds_per_epoch"] = training_per_epoch(a.demo)
            m = json.loads((a.demo / "metrics.json").read_text())
            res["demo_seconds"] = m.get("seconds")
    res["load_after"] = os.getloadavg()[0]
    if a.json:
        a.json.write_text(json.dumps(res, indent=2, default=str))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(render(res))
    log.info("wrote %s", a.out)


def render(r: dict[str, Any]) -> str:
    """The Markdown page of a benchmark result."""
    L = ["# Benchmarks", "",
         f"Produced by `make bench` (`python benchmarks/run.py`) on {r['machine']}, CPU only, "
         f"{time.strftime('%Y-%m-%d')}; test media: {r['media']}. Load average before/after: "
         f"{r['load_before']:.1f}/{r['load_after']:.1f} (other work on the machine slows every figure).", "",
         "## Extraction speed", "", "| stage | frames/s | x real time (30 fps) |", "|---|---|---|"]
    for stage, fps in r["face"]["fps"].items():
        L.append(f"| face: {stage} | {fps:.0f} | {fps / 30:.1f} |")
    b = r["behavior"]
    for k, v in b.items():
        if isinstance(v, (int, float)) and ("fps" in k or "per_s" in k):
            L.append(f"| behavior: {k} | {v:.1f} | |")
    L += ["", "| audio encoder | real-time factor (compute s per audio s; lower is faster) |", "|---|---|"]
    for k, v in r["audio"].items():
        if isinstance(v, (int, float)):
            L.append(f"| {k} | {v:.4f} |")
    w = r.get("wavlm_large_cpu") or {}
    if w:
        L += ["", f"WavLM-Large (random weights, CPU, one 4 s window): `{json.dumps(w, default=str)}`"]
    L += ["", f"Behavior Mamba (reference size): `{json.dumps(r['mamba'], default=str)}`", "",
          "## End to end", "", "| command | wall s | media s | real-time factor | peak memory MB |", "|---|---|---|---|---|"]
    for key, name in (("predict_zero_shot", "vaest predict (zero-shot face)"),
                      ("predict_bundle", "vaest predict --model demo_out/model (all modalities + fusion)")):
        if key in r:
            p = r[key]
            L.append(f"| {name} | {p['seconds']:.1f} | {p['media_seconds']:.1f} | {p['rtf']:.2f} | {p['peak_mb']:.0f} |")
    if "train_seconds_per_epoch" in r:
        L += ["", "## Training (demo corpus)", "", "| model | seconds per epoch |", "|---|---|"]
        for k, v in r["train_seconds_per_epoch"].items():
            L.append(f"| {k} | {v:.1f} |")
    if r.get("demo_seconds"):
        L += ["", "Demo steps (s): " + ", ".join(f"{k} {v}" for k, v in r["demo_seconds"].items())]
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    main()
