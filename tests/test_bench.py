"""The benchmark script (benchmarks/run.py): each command measured as its own process, JSON and page written.

These check the script, not the speed: `--quick` runs every command on a few seconds of media.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import run as bench  # noqa: E402


def test_measure_reports_the_childs_own_peak_memory_and_wall_time():
    """A child that holds 300 MB reports at least that; a small child run afterwards, from this process grown to
    400 MB, reports its own small peak, not this process's or the previous child's high-water mark (Linux puts
    the RSS a child had at fork into its ru_maxrss: the benchmark reads each process's own VmHWM instead)."""
    import numpy as np

    big = bench.measure(["python", "-c", "import numpy as np; a = np.ones(300 * 2**20 // 8); print(a.sum())"])
    ballast = np.ones(400 * 2**20 // 8)  # this process is now large: a child forked from it must not inherit that
    small = bench.measure(["python", "-c", "print(1)"])
    assert ballast.sum() > 0
    assert big["peak_rss_mb"] >= 300 and small["peak_rss_mb"] < 100, (big, small)
    assert big["wall_s"] > 0 and big["cpu_s"] > 0 and small["stdout"].strip() == "1"
    with pytest.raises(RuntimeError, match="exited with 3"):
        bench.measure(["python", "-c", "import sys; sys.exit(3)"])


def test_fill_expands_clips_and_placeholders():
    argv = bench.fill(bench.COMMANDS["predict_clips_one_call"], clips=[Path("a.mp4"), Path("b.mp4")], out="O")
    assert argv == ["vaest", "predict", "a.mp4", "b.mp4", "--out", "O"]
    assert bench.fill(bench.COMMANDS["predict_bundle"], video="v.mp4", out="O", model="M")[2:] == [
        "v.mp4", "--model", "M", "--out", "O"]


def test_quick_run_writes_the_json_and_the_page(tmp_path):
    js, md = tmp_path / "results.json", tmp_path / "benchmarks.md"
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--clips", "2",
                        "--demo", str(tmp_path / "no_demo"), "--json", str(js), "--out", str(md),
                        "--cache", str(tmp_path / "cache")], capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(js.read_text())
    assert r["quick"] is True and r["bundle"] is None and r["media"]["source"] in ("CREMA-D", "synthetic")
    assert len(r["load_before"]) == 3 and len(r["load_after"]) == 3
    face = r["floors"]["63s"]["face"]
    assert face["frames"] > 0 and face["seconds"] == pytest.approx(face["decode_s"] + face["detect_s"] + face["mesh_s"])
    assert r["floors"]["63s"]["audio"]["samples"] > 0
    runs = r["runs"]
    assert set(runs) == {"help", "predict_zero_shot_63s", "predict_clips_one_call", "predict_clips_one_by_one"}
    z = runs["predict_zero_shot_63s"]
    assert z["wall_s"] > 0 and z["peak_rss_mb"] > runs["help"]["peak_rss_mb"] > 0
    assert z["rtf"] == pytest.approx(z["wall_s"] / r["media"]["video_s"])
    assert z["ratio_to_floor"] == pytest.approx(z["wall_s"] / face["seconds"])
    assert runs["predict_clips_one_by_one"]["per_clip_s"] > 0 and r["media"]["clips"] == 2
    page = md.read_text()
    assert "| command | media | media s | wall s | CPU s | RTF | floor s | x floor | peak RSS MB |" in page
    assert "`vaest --help` (cold start)" in page and ("no GPU" in page or "GPU present" in page)
    row = next(ln for ln in page.splitlines() if ln.startswith("| `vaest predict` zero-shot | 63s"))
    assert f"{z['wall_s']:.2f}" in row and f"{z['peak_rss_mb']:.0f}" in row
    # the page is regenerated from the JSON alone
    md2 = tmp_path / "again.md"
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--render-only", "--json", str(js),
                        "--out", str(md2)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert md2.read_text() == page
