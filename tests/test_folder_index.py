"""The prediction folder's index lists every input ever predicted into it: merged by input (latest wins), safe
for runs at the same time, and a rerun skips what is already predicted the same way."""

from __future__ import annotations

import csv
import multiprocessing as mp
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mediautil import make_video
from vaest.folder_index import INDEX_FIELDS, merge_index, merge_rows, read_index


def _row(inp: str, t: str, status: str = "ok") -> dict[str, str]:
    return {"input": inp, "csv": inp + ".csv", "status": status, "reason": "", "media_key": "k", "settings": "s",
            "time": t}


def test_merge_keeps_every_input_and_the_later_result():
    old = [_row("a", "2026-01-01T00:00:01.000000Z"), _row("b", "2026-01-01T00:00:05.000000Z", "failed")]
    new = [_row("b", "2026-01-01T00:00:03.000000Z"), _row("c", "2026-01-01T00:00:02.000000Z"),
           _row("a", "2026-01-01T00:00:09.000000Z", "failed")]
    got = {r["input"]: r["status"] for r in merge_rows(old, new)}
    # b's newer row (failed at :05) beats the older ok row that arrived later; a's newer failure wins
    assert got == {"a": "failed", "b": "failed", "c": "ok"}
    assert [r["input"] for r in merge_rows(old, new)] == ["a", "b", "c"]


def test_an_old_index_without_the_new_columns_is_merged(tmp_path):
    (tmp_path / "index.csv").write_text("input,csv,status,reason\nold.mp4,old.csv,ok,\n")
    merge_index(tmp_path, [_row("new.mp4", "2026-01-01T00:00:00.000000Z")])
    rows = read_index(tmp_path)
    assert [r["input"] for r in rows] == ["old.mp4", "new.mp4"] and list(rows[0]) == list(INDEX_FIELDS)


def _writer(out: str, worker: int, n: int) -> None:
    from vaest.folder_index import merge_index, now_stamp

    for i in range(n):
        merge_index(out, [{"input": f"w{worker}-{i}", "csv": "", "status": "ok", "reason": "", "time": now_stamp()}])


def test_concurrent_merges_lose_no_row(tmp_path):
    """Four processes merging 25 rows each, one at a time, into one folder: all 100 inputs are listed."""
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w, 25)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    with open(tmp_path / "index.csv", newline="") as f:
        inputs = [r["input"] for r in csv.DictReader(f)]
    assert sorted(inputs) == sorted(f"w{w}-{i}" for w in range(4) for i in range(25))


def _vaest(*args: str) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("vaest")
    return subprocess.Popen([str(exe), "predict", *args, "--no-plot", "--device", "cpu"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "VAEST_NO_PROGRESS": "1"})


def test_two_runs_into_one_folder_list_both_and_a_rerun_skips(tmp_path):
    """Two `vaest predict` runs at the same time into one --out, then a third one after them with one of the
    same files and a new one: the index lists all five inputs; the repeated file is skipped, not redone."""
    if not Path(sys.executable).with_name("vaest").exists():
        pytest.skip(f"no installed vaest console script beside {sys.executable}")
    vids = [make_video(tmp_path / f"v{i}.mp4", n_frames=12) for i in range(5)]
    out = tmp_path / "out"
    runs = [_vaest(str(vids[0]), str(vids[1]), "--out", str(out)), _vaest(str(vids[2]), str(vids[3]), "--out", str(out))]
    for p in runs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
    first = (out / "v0.csv").stat().st_mtime_ns
    p = _vaest(str(vids[0]), str(vids[4]), "--out", str(out), "--html")
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-2000:]
    rows = {Path(r["input"]).name: r for r in read_index(out)}
    assert sorted(rows) == [f"v{i}.mp4" for i in range(5)]
    assert all(r["status"] == "ok" and (out / r["csv"]).is_file() and r["media_key"] for r in rows.values())
    assert (out / "v0.csv").stat().st_mtime_ns == first  # predicted the same way before: skipped
    assert "1 of 2 inputs already predicted" in err
    html = (out / "index.html").read_text()
    assert all(f"v{i}.mp4" in html for i in range(5))


class _FakeMsvcrt:
    """Stands in for Windows' ``msvcrt``: records each ``locking`` call (mode, file position, bytes) and refuses
    the first ``busy`` lock attempts as a lock held elsewhere does (OSError)."""

    LK_UNLCK, LK_LOCK, LK_NBLCK = 0, 1, 2

    def __init__(self, busy: int = 0):
        self.calls: list[tuple[int, int, int]] = []
        self.busy = busy

    def locking(self, fd: int, mode: int, nbytes: int) -> None:
        self.calls.append((mode, os.lseek(fd, 0, os.SEEK_CUR), nbytes))
        if mode == self.LK_NBLCK and self.busy:
            self.busy -= 1
            raise OSError(36, "Resource deadlock avoided")


def test_windows_lock_takes_and_releases_the_first_byte_retrying_while_held(tmp_path, monkeypatch):
    """Without fcntl (Windows) the index lock is msvcrt.locking of the lock file's first byte: retried while
    another process holds it, released after the merge, and a lock held past the bounded wait is one clear
    error naming the lock file (nothing merged)."""
    import vaest.folder_index as fi

    fake = _FakeMsvcrt(busy=2)
    monkeypatch.setitem(sys.modules, "fcntl", None)  # `import fcntl` raises ImportError, as on Windows
    monkeypatch.setitem(sys.modules, "msvcrt", fake)
    monkeypatch.setattr(fi, "LOCK_RETRY_S", 0.0)
    (tmp_path / fi.LOCK_NAME).write_bytes(b"xyz")  # an existing lock file: the append mode must not move the lock
    merge_index(tmp_path, [_row("a.mp4", "2026-01-01T00:00:00.000000Z")])
    assert fake.calls == [(fake.LK_NBLCK, 0, 1)] * 3 + [(fake.LK_UNLCK, 0, 1)]
    assert [r["input"] for r in read_index(tmp_path)] == ["a.mp4"]
    held = _FakeMsvcrt(busy=10 ** 9)
    monkeypatch.setitem(sys.modules, "msvcrt", held)
    monkeypatch.setattr(fi, "LOCK_WAIT_S", 0.05)
    with pytest.raises(fi.VaestError, match=r"\.index\.lock: another process has held the index lock"):
        merge_index(tmp_path, [_row("b.mp4", "2026-01-01T00:00:01.000000Z")])
    assert all(c[0] == held.LK_NBLCK for c in held.calls) and len(held.calls) >= 2
    assert [r["input"] for r in read_index(tmp_path)] == ["a.mp4"]
