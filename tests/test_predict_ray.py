"""`predict_many(..., engine="ray")`: one Predictor per Ray actor, outputs written by the driver as they arrive;
a worker SIGKILLed mid-batch or stuck past the file timeout is replaced, its file tried once more, nothing
finished is lost; the outputs equal the local engine's."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mediautil import make_video

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'vaest[scale]')")

from vaest.folder_index import read_index  # noqa: E402
from vaest.predictor import Predictor, predict_many  # noqa: E402


class Flaky(Predictor):
    """A Predictor that, on its first attempt at a file named ``die*``, SIGKILLs its own process (once per file,
    remembered by a marker file beside the input), and sleeps past any timeout on a file named ``hang*``."""

    def predict(self, path):  # type: ignore[override]
        path = Path(path)
        marker = path.with_suffix(".tried")
        if path.name.startswith(("die", "hang")) and not marker.exists():
            marker.write_text(str(os.getpid()))
            if path.name.startswith("die"):
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(600)
        return super().predict(path)


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray (2 CPUs, 127.0.0.1) for the module; predict_many reuses it and leaves it running."""
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    yield
    ray.shutdown()


def test_ray_engine_survives_a_killed_and_a_stuck_worker(tmp_path, local_ray, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="vaest.actors")
    media = tmp_path / "in"
    media.mkdir()
    for name in ("a", "die", "b", "hang", "c"):
        make_video(media / f"{name}.mp4", n_frames=12)
    (media / "broken.mp4").write_bytes(b"not a video")
    out = tmp_path / "out"
    pr = Flaky(device="cpu")
    t0 = time.monotonic()
    rows = predict_many([media], out, pr, plot=False, engine="ray", workers=2, file_timeout=10)
    assert time.monotonic() - t0 < 1200  # a guard against a hang, not a speed target (a loaded 2-core machine took 523 s)
    status = {Path(r["input"]).name: r["status"] for r in rows}
    assert status == {"a.mp4": "ok", "b.mp4": "ok", "c.mp4": "ok", "die.mp4": "ok", "hang.mp4": "ok",
                      "broken.mp4": "failed"}
    # the killed and the stuck file were really tried first in a worker (not the driver), then redone
    assert int((media / "die.tried").read_text()) != os.getpid()
    assert (media / "hang.tried").exists()
    # each worker (the two started, the two replacements) ran its pools with one thread: its 1 CPU of the 2
    ready = [r.getMessage() for r in caplog.records if "ready: state built" in r.getMessage()]
    assert len(ready) == 4 and all("threads: torch 1, opencv 1" in m for m in ready), ready
    index = {Path(r["input"]).name: r for r in read_index(out)}
    assert sorted(index) == sorted(status) and all((out / index[n]["csv"]).is_file() for n in status if n != "broken.mp4")
    # the same results as the local engine
    local = predict_many([media / "a.mp4", media / "die.mp4"], tmp_path / "local", Predictor(device="cpu"), plot=False)
    assert all(r["status"] == "ok" for r in local)
    import pandas as pd

    for n in ("a", "die"):
        r, loc = pd.read_csv(out / f"{n}.csv"), pd.read_csv(tmp_path / "local" / f"{n}.csv")
        assert list(r.columns) == list(loc.columns)
        np.testing.assert_allclose(r["valence"].to_numpy(float), loc["valence"].to_numpy(float), atol=1e-5)
    # a rerun skips everything predicted, retries only the failed file
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("*.csv") if p.name != "index.csv"}
    rows = predict_many([media], out, pr, plot=False, engine="ray", workers=2)
    assert {Path(r["input"]).name: r["status"] for r in rows} == status
    assert {p: p.stat().st_mtime_ns for p in out.glob("*.csv") if p.name != "index.csv"} == mtimes
