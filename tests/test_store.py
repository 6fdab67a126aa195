import numpy as np
import pytest

from vaest.errors import FeatureError
from vaest.features.store import FeatureRecord, FeatureStore, config_hash
from vaest.timebase import TimeBase, TimeSeries


def _rec(h="abc", n=5):
    return FeatureRecord(TimeSeries(np.arange(n * 3, dtype=np.float32).reshape(n, 3), TimeBase(2.0, 4.0, 0.5),
                                    np.array([True] * (n - 1) + [False])),
                         {"conf": np.linspace(0, 1, n)}, {"texts": ["é ok"] * n}, h)


def test_round_trip(tmp_path):
    fs = FeatureStore(tmp_path)
    fs.save("face-x", "vid_ü/1", _rec())
    r = fs.load("face-x", "vid_ü/1")
    assert r.values.shape == (5, 3) and r.base == TimeBase(2.0, 4.0, 0.5)
    assert r.mask.tolist() == [True] * 4 + [False]
    assert r.meta["texts"][0] == "é ok" and r.config_hash == "abc"
    np.testing.assert_allclose(r.extras["conf"], np.linspace(0, 1, 5))
    assert fs.has("face-x", "vid_ü/1", "abc") and not fs.has("face-x", "vid_ü/1", "other")
    items = list(fs.items())
    assert len(items) == 1 and items[0].n == 5 and items[0].dim == 3
    # no temporary file left behind
    assert [p.name for p in (tmp_path / "face-x").iterdir()] == ["vid_ü__1.npz"]


def test_config_hash_stable_and_sensitive():
    assert config_hash({"a": 1, "b": 2}) == config_hash({"b": 2, "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})


def test_missing_and_damaged(tmp_path):
    fs = FeatureStore(tmp_path)
    with pytest.raises(FeatureError, match="no 'face' features"):
        fs.load("face", "v")
    p = fs.path("face", "v")
    p.parent.mkdir(parents=True)
    p.write_bytes(b"not a zip")
    assert not fs.has("face", "v")
    with pytest.raises(FeatureError, match="damaged"):
        fs.load("face", "v")


def test_failed_write_leaves_old_file(tmp_path, monkeypatch):
    fs = FeatureStore(tmp_path)
    fs.save("e", "v", _rec("old"))

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(RuntimeError):
        fs.save("e", "v", _rec("new"))
    monkeypatch.undo()
    assert fs.load("e", "v").config_hash == "old"
    assert len(list((tmp_path / "e").iterdir())) == 1


def test_failures(tmp_path):
    fs = FeatureStore(tmp_path)
    fs.record_failure("audio", "v1", "no audio track")
    assert fs.failures("audio")[0]["error"] == "no audio track"
    fs.save("audio", "v1", _rec())
    assert fs.failures("audio") == []


def test_temporaries_of_a_killed_write_are_removed_on_the_next_run(tmp_path):
    """A writer killed inside atomic_path leaves its temporary file; the next extraction run removes it, while a
    write in progress (a live process) and ordinary files are left alone."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from vaest.features.base import run_extraction
    from vaest.io import atomic_path, remove_stale_temporaries

    fs = FeatureStore(tmp_path)
    fs.save("face-x", "keep", _rec())
    code = ("import os, signal, sys\nfrom vaest.io import atomic_path\n"
            "with atomic_path(sys.argv[1], suffix='.tmp.npz') as tmp:\n"
            "    tmp.write_bytes(b'half a record')\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    p = subprocess.Popen([sys.executable, "-c", code, str(fs.path("face-x", "killed"))],
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert p.wait(timeout=120) == -signal.SIGKILL
    left = [q for q in (tmp_path / "face-x").iterdir() if q.name.startswith(".")]
    assert len(left) == 1 and str(p.pid) in left[0].name and not fs.path("face-x", "killed").exists()
    # an older temporary name (no writer pid) is removed only once it is a day old
    legacy = tmp_path / "face-x" / ".old.npz.a1b2c3d4.tmp.npz"
    legacy.write_bytes(b"x")
    fresh_legacy = tmp_path / "face-x" / ".new.npz.e5f6g7h8.tmp.npz"
    fresh_legacy.write_bytes(b"x")
    old = time.time() - 2 * 24 * 3600
    os.utime(legacy, (old, old))
    with atomic_path(tmp_path / "face-x" / "busy.npz") as busy:  # this process is alive: not touched
        busy.write_bytes(b"in progress")
        rep = run_extraction(fs, [], [])  # a run with nothing to do still cleans the store first
        assert rep.done == [] and busy.exists()
        assert not left[0].exists() and not legacy.exists() and fresh_legacy.exists()
    assert sorted(q.name for q in (tmp_path / "face-x").iterdir()) == [".new.npz.e5f6g7h8.tmp.npz", "busy.npz",
                                                                      "keep.npz"]
    assert fs.load("face-x", "keep").values.shape == (5, 3)
    assert remove_stale_temporaries(tmp_path / "absent") == []


def test_memory_store_keep_only_forgets_one_videos_other_records():
    from vaest.features.store import MemoryStore

    s = MemoryStore("m")
    for key in ("persons", "face-fer", "audio-lmfb"):
        s.save(key, "a", _rec(n=4))
    s.save("face-fer", "b", _rec(n=4))
    s.keep_only("a", ("persons",))
    assert s.has("persons", "a") and not s.has("face-fer", "a") and not s.has("audio-lmfb", "a")
    assert s.has("face-fer", "b")  # another video's records are not touched
    with pytest.raises(FeatureError, match="face-fer"):
        s.load("face-fer", "a")
