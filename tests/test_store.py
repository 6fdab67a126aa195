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
