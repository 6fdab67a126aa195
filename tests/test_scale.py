"""The Ray extraction engine gives the same store as the local engine, skips stored work, survives failures."""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from mediautil import make_video, make_wav
from vaest.corpus import Video
from vaest.errors import VaestError
from vaest.features.base import Extractor
from vaest.features.store import FeatureRecord, FeatureStore
from vaest.timebase import TimeBase, TimeSeries

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'vaest[scale]')")

from vaest import scale  # noqa: E402


@dataclass
class BrightConfig:
    gain: float = 1.0
    device: str = "cpu"
    crash_on: str = ""  # a media file name that makes the worker process exit (tests a dying worker)
    hang_on: str = ""  # a media file name that makes the worker wait forever, alive (tests the file timeout)


class Bright(Extractor):
    """Per-frame mean brightness; puts it into ``shared`` for :class:`Dark`."""

    Config = BrightConfig
    kind = "frames"
    registry_name = "test-bright"

    def begin(self, videos, info):
        if self.config.crash_on and self.config.crash_on == Path(info.path).name:
            os._exit(3)
        if self.config.hang_on and self.config.hang_on == Path(info.path).name:
            threading.Event().wait()  # stuck, not crashed: only the driver's file timeout ends this
        self.videos, self.fps, self.vals = videos, info.fps, []

    def update(self, batch, shared):
        v = batch.frames.reshape(len(batch.index), -1).mean(1).astype(np.float32) * self.config.gain
        self.vals.append(v)
        shared["bright"] = v

    def end(self):
        vals = np.concatenate(self.vals)[:, None]
        return {(self.name, v.id): FeatureRecord(TimeSeries(vals, TimeBase.frames(self.fps)),
                                                 {"pid": np.array(os.getpid())}, {"side": v.side})
                for v in self.videos}


@dataclass
class DarkConfig:
    offset: float = 255.0


class Dark(Extractor):
    """Depends on :class:`Bright` through ``shared`` (a required extractor)."""

    Config = DarkConfig
    kind = "frames"
    registry_name = "test-dark"
    requires = ("test-bright",)

    def begin(self, videos, info):
        self.videos, self.fps, self.vals = videos, info.fps, []

    def update(self, batch, shared):
        self.vals.append(self.config.offset - shared["bright"])

    def end(self):
        vals = np.concatenate(self.vals)[:, None]
        return {(self.name, v.id): FeatureRecord(TimeSeries(vals, TimeBase.frames(self.fps))) for v in self.videos}


@dataclass
class RmsConfig:
    hop: float = 0.5


class Rms(Extractor):
    """RMS of the 16 kHz audio per ``hop`` seconds (masked out when the file has no audio)."""

    Config = RmsConfig
    kind = "audio"
    registry_name = "test-rms"

    def extract_audio(self, videos, wav, sr, info):
        step = int(self.config.hop * sr)
        n = max(1, len(wav) // step)
        vals = np.array([np.sqrt(np.mean(wav[i * step:(i + 1) * step] ** 2)) if len(wav) else 0.0
                         for i in range(n)], np.float32)[:, None]
        mask = np.full(n, len(wav) > 0)
        return {(self.name, v.id): FeatureRecord(TimeSeries(vals, TimeBase(self.config.hop, self.config.hop), mask))
                for v in videos}


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module (the engine reuses an initialised Ray and leaves it running)."""
    # classes defined in this test module are shipped to the workers by value (workers cannot import tests/)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """Four label tracks on three media files (one two-person video) plus one empty file that must fail."""
    d = tmp_path_factory.mktemp("media")
    a = make_video(d / "a.mp4", n_frames=20, size=(32, 24))
    b = make_video(d / "b.mp4", n_frames=33, size=(48, 32), tone_hz=880.0)
    c = make_video(d / "c.mp4", n_frames=12, size=(32, 32), audio=False)
    bad = d / "empty.mp4"
    bad.write_bytes(b"")
    return [Video("a", a, "train"), Video("b_left", b, "train", side="left"), Video("b_right", b, "train", side="right"),
            Video("c", c, "val"), Video("empty", bad, "val")]


def _snapshot(root: Path) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    for p in sorted(root.rglob("*.npz")):
        with np.load(p) as z:
            out[str(p.relative_to(root))] = {k: z[k] for k in z.files if k != "x_pid"}
    return out


def _extractors(**bright):
    return [Bright(BrightConfig(**bright)), Dark(), Rms()]


def test_ray_matches_local_and_skips_stored_work(tmp_path, media, local_ray):
    rep_local = scale.run_extraction(FeatureStore(tmp_path / "local"), _extractors(), media, engine="local")
    store = FeatureStore(tmp_path / "ray")
    rep = scale.run_extraction(store, _extractors(), media, engine="ray", num_workers=2)
    assert sorted(rep.done) == sorted(rep_local.done) and len(rep.done) == 3
    assert list(rep.failed) == list(rep_local.failed) == [str(media[-1].media)]
    assert "file is empty" in rep.failed[str(media[-1].media)]
    # byte-for-byte the same arrays, time bases, masks, config hashes and meta
    loc, dist = _snapshot(tmp_path / "local"), _snapshot(tmp_path / "ray")
    assert sorted(loc) == sorted(dist) and len(loc) == 3 * 4
    for k in loc:
        assert sorted(loc[k]) == sorted(dist[k]), k
        for a in loc[k]:
            np.testing.assert_array_equal(loc[k][a], dist[k][a], err_msg=f"{k}:{a}")
    # the work really ran in Ray worker processes, not in the driver
    assert int(store.load("test-bright", "a").extras["pid"]) != os.getpid()
    assert {f["video"] for f in store.failures()} == {"empty"}
    assert store.load("test-bright", "b_left").meta["side"] == "left"
    # a rerun skips every stored media file and rewrites nothing
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "ray").rglob("*.npz")}
    rep2 = scale.run_extraction(store, _extractors(), media, engine="ray")
    assert len(rep2.skipped) == 3 and rep2.done == [] and list(rep2.failed) == [str(media[-1].media)]
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "ray").rglob("*.npz")} == mtimes


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_redoes_only_missing_or_stale(tmp_path, media, local_ray, engine):
    store = FeatureStore(tmp_path)
    good = media[:4]
    scale.run_extraction(store, _extractors(), good, engine=engine)
    store.path("test-dark", "c").unlink()  # one missing output: c is redone (test-bright reruns to feed test-dark)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.npz")}
    rep = scale.run_extraction(store, _extractors(), good, engine=engine)
    assert rep.done == [str(media[3].media)] and len(rep.skipped) == 2
    after = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.npz")}
    changed = {p.relative_to(tmp_path).as_posix() for p in after if before.get(p) != after[p]}
    assert changed == {"test-dark/c.npz"}  # the stored test-bright/c.npz is not rewritten
    # a changed config makes the records of that extractor stale everywhere
    rep = scale.run_extraction(store, _extractors(gain=2.0), good, engine=engine)
    assert len(rep.done) == 3
    np.testing.assert_allclose(store.load("test-bright", "a").values[:, 0],
                               2 * (255.0 - store.load("test-dark", "a").values[:, 0]), rtol=1e-5)


def test_dying_worker_is_replaced_and_recorded(tmp_path, media, local_ray):
    store = FeatureStore(tmp_path)
    rep = scale.run_extraction(store, _extractors(crash_on="b.mp4"), media[:4], engine="ray", num_workers=1)
    assert list(rep.failed) == [str(media[1].media)] and "worker died" in rep.failed[str(media[1].media)]
    assert sorted(rep.done) == sorted(str(v.media) for v in (media[0], media[3]))
    assert store.has("test-bright", "c") and not store.has("test-bright", "b_left")
    assert {f["video"] for f in store.failures("test-bright")} == {"b_left", "b_right"}


def test_stuck_worker_is_stopped_after_the_file_timeout(tmp_path, media, local_ray):
    """A worker alive but stuck on one file is killed after --file-timeout; the file is failed, the batch goes on."""
    store = FeatureStore(tmp_path)
    t0 = time.monotonic()
    rep = scale.run_extraction(store, _extractors(hang_on="a.mp4"), media[:4], engine="ray", num_workers=1,
                               file_timeout=3.0)
    assert time.monotonic() - t0 < 120
    assert list(rep.failed) == [str(media[0].media)] and "timed out after 3 s" in rep.failed[str(media[0].media)]
    # the files after the stuck one were done by the replacement worker, in a new process
    assert sorted(rep.done) == sorted(str(v.media) for v in (media[1], media[3]))
    assert store.has("test-bright", "b_left") and store.has("test-dark", "c") and not store.has("test-bright", "a")
    assert [f["video"] for f in store.failures("test-bright")] == ["a"]
    # a rerun retries only the failed file (still stuck: failed again, nothing else redone)
    rep = scale.run_extraction(store, _extractors(hang_on="a.mp4"), media[:4], engine="ray", num_workers=1,
                               file_timeout=2.0)
    assert list(rep.failed) == [str(media[0].media)] and len(rep.skipped) == 2


def test_limit_threads_sizes_every_pool_a_worker_runs():
    """A Ray worker's thread budget (in a fresh process: the pools are process-wide): torch's, OpenCV's and the
    BLAS/OpenMP pools already loaded are set to it, and the environment asks it of libraries loaded later."""
    import json
    import subprocess

    code = ("import json, os, cv2, torch, numpy\n"
            "from vaest.actors import THREAD_ENV, limit_threads\n"
            "got = limit_threads(1)\n"
            "print(json.dumps({'got': got, 'torch': torch.get_num_threads(),\n"
            "                  'opencv': cv2.getNumThreads(), 'env': [os.environ[k] for k in THREAD_ENV]}))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    d = json.loads(r.stdout.strip().splitlines()[-1])
    assert d["torch"] == d["opencv"] == 1 and d["got"]["torch"] == d["got"]["opencv"] == 1
    assert d["got"].get("blas", 1) == 1 and d["env"] == ["1"] * 4
    from vaest.actors import worker_threads

    assert [worker_threads(c) for c in (0.25, 1.0, 1.5, 4.0)] == [1, 1, 1, 4]


def test_engine_errors(tmp_path, local_ray):
    vid = Video("w", make_wav(tmp_path / "w.wav"), "train", audio_only=True)
    with pytest.raises(VaestError, match="unknown extraction engine"):
        scale.run_extraction(FeatureStore(tmp_path), [Rms()], [vid], engine="spark")
    with pytest.raises(VaestError, match="no GPU"):
        scale.run_extraction(FeatureStore(tmp_path), [Bright(BrightConfig(device="cuda"))],
                             [Video("a", make_video(tmp_path / "a.mp4", 4), "train")], engine="ray")
    assert scale.wants_cuda([Bright(BrightConfig(device="cuda:1"))]) and not scale.wants_cuda([Rms(), Bright()])
    nested = Rms(RmsConfig())
    nested.config = {"vlm": {"device": "auto"}, "hop": 0.5}  # nested settings are found too
    assert scale.extractor_devices([nested, Bright()]) == {"auto", "cpu"}
    # "auto" takes a GPU only where the cluster has one: here it runs on CPU workers; too many workers are capped
    v = Video("a", tmp_path / "a.mp4", "train")
    rep = scale.run_extraction(FeatureStore(tmp_path / "auto"), [Bright(BrightConfig(device="auto"))], [v],
                               engine="ray", num_workers=64)
    assert rep.done == [str(v.media)]
    # an audio-only item runs its audio extractors on Ray; a frame extractor reports the missing video stream
    rep = scale.run_extraction(FeatureStore(tmp_path / "s"), [Rms()], [vid], engine="ray")
    assert rep.done == [str(vid.media)]
    rep = scale.run_extraction(FeatureStore(tmp_path / "s"), [Bright()], [vid], engine="ray")
    assert "no video stream" in rep.failed[str(vid.media)]


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_audio_only_item_in_a_job_with_frame_extractors(tmp_path, local_ray, engine):
    """The frame extractors fail for it (named), its audio extractors still run and are stored."""
    vid = Video("w", make_wav(tmp_path / "w.wav"), "train", audio_only=True)
    store = FeatureStore(tmp_path / "s")
    rep = scale.run_extraction(store, [Bright(), Rms()], [vid], engine=engine)
    assert rep.done == [] and "w.wav: has no video stream (needed by test-bright)" in rep.failed[str(vid.media)]
    assert store.has("test-rms", "w") and not store.has("test-bright", "w")
    assert [f["extractor"] for f in store.failures()] == ["test-bright"]
    # a rerun retries only what is missing (the frame extractor) and fails the same way
    rep = scale.run_extraction(store, [Bright(), Rms()], [vid], engine=engine)
    assert list(rep.failed) == [str(vid.media)]


def test_cli_engine_options(tmp_path, media, local_ray):
    """`vaest extract audio --engine ray` stores what `--engine local` stores (to float32 rounding: the log-mel
    FFT in a one-CPU Ray worker and in this process may differ in the last bit); a bad engine name is a clear
    error."""
    from typer.testing import CliRunner

    from vaest.cli import app
    from vaest.features.base import list_extractors

    if "audio-lmfb" not in list_extractors():
        pytest.skip("the audio extractors are not available")
    folder = tmp_path / "in"
    folder.mkdir()
    for v in media[:2]:
        (folder / v.media.name).write_bytes(v.media.read_bytes())
    common = ["extract", "audio", "--corpus", str(folder), "--no-vad"]
    r1 = CliRunner().invoke(app, common + ["--out", str(tmp_path / "local")])
    r2 = CliRunner().invoke(app, common + ["--out", str(tmp_path / "ray"), "--engine", "ray", "--workers", "2",
                                         "--file-timeout", "600"])
    assert r1.exit_code == 0 and r2.exit_code == 0, (r1.output, r2.output)
    loc, dist = _snapshot(tmp_path / "local"), _snapshot(tmp_path / "ray")
    assert sorted(loc) == sorted(dist) == ["audio-lmfb/a.npz", "audio-lmfb/b.npz"]
    for k in loc:
        for a in loc[k]:
            if loc[k][a].dtype.kind == "f":
                np.testing.assert_allclose(loc[k][a], dist[k][a], rtol=1e-6, atol=1e-6, err_msg=f"{k}:{a}")
            else:
                np.testing.assert_array_equal(loc[k][a], dist[k][a], err_msg=f"{k}:{a}")
    r3 = CliRunner().invoke(app, common + ["--out", str(tmp_path / "x"), "--engine", "spark"])
    assert r3.exit_code != 0 and isinstance(r3.exception, VaestError) and "spark" in str(r3.exception)
