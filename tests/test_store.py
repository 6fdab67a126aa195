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


def test_records_read_in_place_by_rows_from_old_and_new_files(tmp_path):
    """open() leaves values and per-step extras on disk: slices and index arrays read just those rows, the same
    values as load(); a file written by plain np.savez (a store from before) reads the same way."""
    from vaest.features.store import StoredArray

    fs = FeatureStore(tmp_path)
    rng = np.random.default_rng(0)
    vals = rng.standard_normal((300, 7)).astype(np.float32)
    rec = FeatureRecord(TimeSeries(vals, TimeBase.frames(25.0), np.arange(300) % 7 != 0),
                        {"probs": rng.random((300, 3)).astype(np.float32), "lm": np.zeros((300, 4, 2))}, {"k": 1}, "h1")
    fs.save("face-x", "v", rec)
    lazy = fs.open("face-x", "v")
    assert isinstance(lazy.values, StoredArray) and lazy.dim == 7 and lazy.config_hash == "h1"
    np.testing.assert_array_equal(lazy.values[10:50], vals[10:50])
    idx = np.array([299, 3, 4, 5, 3, 120])
    np.testing.assert_array_equal(lazy.values[idx], vals[idx])
    np.testing.assert_array_equal(lazy.extras["probs"][idx], rec.extras["probs"][idx])
    np.testing.assert_array_equal(lazy.values.memmap(), vals)
    np.testing.assert_array_equal(lazy.mask, rec.mask)
    assert lazy.values[290:400].shape == (10, 7) and lazy.base.rate == 25.0
    # an archive written directly with np.savez (the store's format before this change) opens the same way
    old = tmp_path / "face-y" / "w.npz"
    old.parent.mkdir()
    np.savez(old, values=vals, mask=np.ones(300, bool), hop=np.float64(0.04), win=np.float64(0.04),
             start=np.float64(0.0), config_hash=np.array("h0"), meta=np.array("{}"))
    np.testing.assert_array_equal(fs.open("face-y", "w").values[[5, 6, 200]], vals[[5, 6, 200]])
    # a truncated file is reported, naming it
    data = old.read_bytes()
    old.write_bytes(data[: len(data) // 2])
    with pytest.raises(FeatureError, match="w.npz"):
        fs.open("face-y", "w").values[250:300]


def test_float16_store_halves_feature_vectors_only(tmp_path):
    rng = np.random.default_rng(1)
    emb = rng.standard_normal((50, 32)).astype(np.float32)
    boxes = (rng.random((50, 4)) * 1000).astype(np.float32)
    fs = FeatureStore(tmp_path, dtype="float16")
    fs.save("face-x", "v", FeatureRecord(TimeSeries(emb, TimeBase.frames(30.0)), {"conf": np.ones(50, np.float32)}))
    fs.save("facetrack", "v", FeatureRecord(TimeSeries(boxes, TimeBase.frames(30.0))))
    got = fs.load("face-x", "v")
    assert got.values.dtype == np.float16 and got.extras["conf"].dtype == np.float32
    assert np.abs(got.values.astype(np.float32) - emb).max() < 4e-3
    assert fs.load("facetrack", "v").values.dtype == np.float32  # boxes (4 wide) keep their precision
    with pytest.raises(FeatureError, match="float8"):
        FeatureStore(tmp_path, dtype="float8")


def test_expect_refuses_another_width_or_config_naming_store_asker_and_values(tmp_path):
    from vaest.features.store import Expect

    fs = FeatureStore(tmp_path / "store")
    fs.save("face-grada", "a", FeatureRecord(TimeSeries(np.zeros((4, 1280), np.float32), TimeBase.frames(30.0)),
                                             config_hash="aaa"))
    fs.save("face-grada", "b", FeatureRecord(TimeSeries(np.zeros((4, 256), np.float32), TimeBase.frames(30.0)),
                                             config_hash="bbb"))
    with pytest.raises(FeatureError) as e:
        fs.open("face-grada", "a", Expect("face encoder 'grada'", dim=256))
    msg = str(e.value)
    assert "store" in msg and "a.npz" in msg and "face encoder 'grada'" in msg and "1280" in msg and "256" in msg
    ex = Expect("face encoder 'grada'", dim=256)
    with pytest.raises(FeatureError, match="config hash bbb.*expects aaa"):
        ex.config_hash = "aaa"
        fs.load("face-grada", "b", ex)
    # without a given width or hash, the first record served fixes both for the rest
    first = Expect("a training run")
    fs.open("face-grada", "a", first)
    with pytest.raises(FeatureError, match="256-d.*expects 1280-d"):
        fs.open("face-grada", "b", first)


def test_face_training_refuses_records_of_another_width(tmp_path):
    """1280-d records under face-grada (whose encoder gives 256-d) are refused before any training, naming the
    store file, the encoder and both widths."""
    from vaest.corpus.labels import write_va_file
    from vaest.tasks.face import FaceTrainSettings, train_face

    fs = FeatureStore(tmp_path / "store")
    for vid, split in (("a", "Train_Set"), ("b", "Validation_Set")):
        write_va_file(tmp_path / "c" / "VA_Estimation_Challenge" / split / f"{vid}.txt", np.zeros((20, 2), np.float32))
        fs.save("face-grada", vid, FeatureRecord(TimeSeries(np.zeros((20, 1280), np.float32), TimeBase.frames(30.0)),
                                                 config_hash="x"))
    (tmp_path / "c" / "videos_fps.csv").write_text("video,fps\na,30\nb,30\n")
    with pytest.raises(FeatureError, match=r"store/face-grada/a.npz.*1280-d.*face encoder 'grada' expects 256-d"):
        train_face(tmp_path / "c", tmp_path / "store", tmp_path / "run", encoder="grada",
                   settings=FaceTrainSettings(motion=False, inputs="emb"))


def test_expect_checks_the_features_hash_and_serves_older_records_with_one_warning(tmp_path, caplog):
    """A reader given a features hash (a trained model's) refuses a record of another, naming the store file, the
    asker and both hashes; records written before records carried one are served, with one warning per reader;
    the in-memory store checks the same."""
    import logging

    from vaest.features.store import Expect, MemoryStore

    fs = FeatureStore(tmp_path / "store")

    def rec(meta):
        return FeatureRecord(TimeSeries(np.zeros((4, 8), np.float32), TimeBase.frames(30.0)), meta=meta,
                             config_hash="c1")

    fs.save("face-x", "a", rec({"features_hash": "f1"}))
    fs.save("face-x", "b", rec({"features_hash": "f2"}))
    fs.save("face-x", "old1", rec({}))
    fs.save("face-x", "old2", rec({}))
    ex = Expect("the face model runs/m (encoder 'x')", dim=8, same_hash=False, features_hash="f1")
    assert fs.open("face-x", "a", ex).dim == 8
    with pytest.raises(FeatureError) as e:
        fs.load("face-x", "b", ex)
    msg = str(e.value)
    assert str(tmp_path / "store" / "face-x" / "b.npz") in msg and "encoder 'x'" in msg and "f2" in msg and "f1" in msg
    with caplog.at_level(logging.WARNING, logger="vaest.features.store"):
        fs.open("face-x", "old1", ex)
        fs.load("face-x", "old2", ex)
    assert sum("written before" in r.getMessage() for r in caplog.records) == 1
    mem = MemoryStore()
    mem.save("face-x", "b", rec({"features_hash": "f2"}))
    with pytest.raises(FeatureError, match="features hash f2.*trained on features hash f1"):
        mem.open("face-x", "b", ex)
    # without a features hash to check (a checkpoint from before): nothing is refused on it
    assert fs.load("face-x", "b", Expect("old model", dim=8, same_hash=False)).series.dim == 8
