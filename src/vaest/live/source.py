"""Live sources: a camera, a network stream or a byte stream on stdin, decoded by PyAV in a reader thread.

The reader thread demuxes the source's first video stream (and its first audio stream, or a second input given
with ``audio=``), converts each frame to RGB, stamps it with its arrival time and puts it in a bounded
:class:`FrameQueue`; the audio goes, resampled to 16 kHz mono, into an :class:`AudioRing` on the same clock as
the frames (seconds from the first frame). The consumer (:mod:`vaest.live.engine`) takes frames in batches.

Drop policy: the queue holds at most ``queue_size`` frames; when a new frame arrives and the queue is full, the
OLDEST waiting frame is dropped (and counted): a live estimate should describe the present, so when processing
falls behind it skips what is stale rather than falling further behind. Nothing else is dropped.

Faults are raised to the consumer as :class:`SourceFault` (a :class:`~vaest.errors.VaestError` whose message
names the source): it ended, it stalled (no frame for ``stall_s`` seconds), it sent data that cannot be decoded,
or it could not be opened. Timestamps that jump back (a publisher that restarted) or far ahead are logged once
per jump and the timeline is kept continuous. With ``reconnect`` a network source is reopened with exponential
backoff (0.5 s doubling up to 8 s) after it ends, stalls or fails, and the timeline goes on.
"""

from __future__ import annotations

import collections
import logging
import math
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from vaest.errors import VaestError

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
NETWORK_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "srt", "udp", "rtp", "tcp", "http", "https", "hls")
BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0)
JUMP_BACK_S = 1.0  # a timestamp this far before the previous one: the publisher restarted
JUMP_AHEAD_S = 10.0  # a gap this long between consecutive frames: logged as a jump, timeline kept continuous


class SourceFault(VaestError):
    """The live source ended, stalled, could not be opened or sent undecodable data (``kind``)."""

    def __init__(self, source: str, kind: str, detail: str):
        super().__init__(f"{source}: {kind}: {detail}")
        self.source, self.kind, self.detail = source, kind, detail


@dataclass
class Arrival:
    """One decoded frame as it arrived.

    Attributes:
        frame: (H, W, 3) uint8 RGB.
        index: 0-based number of the frame among all frames the source delivered (dropped ones included).
        time: seconds from the source's first frame (its presentation time, kept continuous across restarts).
        arrived: ``time.monotonic()`` when the decoder handed the frame over.
    """

    frame: np.ndarray
    index: int
    time: float
    arrived: float


@dataclass
class SourceSpec:
    """How to open a SOURCE argument with PyAV (see :func:`parse_source`)."""

    name: str
    url: str
    format: str | None
    options: dict[str, str]
    network: bool


def parse_source(source: str) -> SourceSpec:
    """A SOURCE as given on the command line -> what to open: ``-`` (stdin: a Matroska or MPEG-TS byte stream),
    a camera (``/dev/videoN`` or an index ``N``, V4L2), ``FORMAT:DEVICE`` for an FFmpeg input device (``alsa:hw:1``,
    ``pulse:default``, ``v4l2:/dev/video2``), or any URL or file FFmpeg opens (``rtsp://``, ``udp://``, ...)."""
    s = str(source).strip()
    if s == "-":
        return SourceSpec("stdin", "pipe:0", None, {}, False)
    if s.isdigit():
        return SourceSpec(f"/dev/video{s}", f"/dev/video{s}", "v4l2", {}, False)
    if re.fullmatch(r"/dev/video\d+", s):
        return SourceSpec(s, s, "v4l2", {}, False)
    m = re.fullmatch(r"(alsa|pulse|v4l2|avfoundation|dshow|x11grab|lavfi):(.+)", s)
    if m:
        return SourceSpec(s, m.group(2), m.group(1), {}, False)
    scheme = s.split("://", 1)[0].lower() if "://" in s else ""
    opts: dict[str, str] = {}
    if scheme == "rtsp":
        opts["rtsp_transport"] = "tcp"
    if scheme == "udp":
        opts.update({"overrun_nonfatal": "1", "fifo_size": "1000000"})
    return SourceSpec(s, s, None, opts, scheme in NETWORK_SCHEMES)


class FrameQueue:
    """Bounded frame queue between the reader thread and the consumer; full: the oldest frame is dropped."""

    def __init__(self, size: int):
        if size < 1:
            raise VaestError(f"queue size must be >= 1, got {size}")
        self.size = size
        self._q: collections.deque[Arrival] = collections.deque()
        self._cv = threading.Condition()
        self.dropped = 0
        self.high_water = 0
        self._fault: SourceFault | None = None

    def put(self, item: Arrival) -> None:
        with self._cv:
            if len(self._q) >= self.size:
                self._q.popleft()
                self.dropped += 1
            self._q.append(item)
            self.high_water = max(self.high_water, len(self._q))
            self._cv.notify()

    def close(self, fault: SourceFault) -> None:
        """No more frames: the consumer gets ``fault`` once the queue is empty."""
        with self._cv:
            if self._fault is None:
                self._fault = fault
            self._cv.notify_all()

    def __len__(self) -> int:
        with self._cv:
            return len(self._q)

    def get_batch(self, max_n: int, timeout: float) -> list[Arrival]:
        """Up to ``max_n`` waiting frames, oldest first; waits up to ``timeout`` s for the first (then returns []).
        Raises the closing :class:`SourceFault` once the queue is closed and empty."""
        with self._cv:
            if not self._q and self._fault is None:
                self._cv.wait(timeout)
            if not self._q:
                if self._fault is not None:
                    raise self._fault
                return []
            n = min(max_n, len(self._q))
            return [self._q.popleft() for _ in range(n)]


class AudioRing:
    """The last ``keep_s`` seconds of 16 kHz mono audio on the frames' clock (seconds from the first frame).

    Samples are written in order; a chunk whose start lies after the current end is preceded by silence (a gap),
    one that starts before it overwrites nothing (its overlapping head is dropped)."""

    def __init__(self, keep_s: float = 12.0, sr: int = SAMPLE_RATE):
        self.sr = sr
        self._buf = np.zeros(int(keep_s * sr), np.float32)
        self._end = 0  # absolute sample index one past the last sample written
        self._start: int | None = None  # absolute index of the first sample ever written
        self._lock = threading.Lock()

    def write(self, samples: np.ndarray, t0: float) -> None:
        """Append ``samples`` (N,) float32 starting at ``t0`` s."""
        s0 = int(round(t0 * self.sr))
        x = np.asarray(samples, np.float32).reshape(-1)
        with self._lock:
            if self._start is None:
                self._start = self._end = max(0, s0)
            if s0 < self._end:  # overlap (rounding, a restart): drop the head
                x = x[self._end - s0:]
                s0 = self._end
            if s0 > self._end:  # a gap: silence (at most a ring's worth matters)
                gap = min(s0 - self._end, len(self._buf))
                self._put(np.zeros(gap, np.float32), s0 - gap)
            self._put(x, s0)

    def _put(self, chunk: np.ndarray, at: int) -> None:
        """Write ``chunk`` at absolute sample ``at`` (>= the current end); the end moves past it."""
        cap = len(self._buf)
        if len(chunk) > cap:
            at += len(chunk) - cap
            chunk = chunk[-cap:]
        if len(chunk):
            self._buf[(at + np.arange(len(chunk))) % cap] = chunk
            self._end = at + len(chunk)

    @property
    def end_time(self) -> float:
        """Seconds up to which audio has arrived (0 before any)."""
        with self._lock:
            return self._end / self.sr

    @property
    def started(self) -> bool:
        with self._lock:
            return self._start is not None

    def window(self, t_end: float, seconds: float) -> np.ndarray:
        """Samples of [t_end - seconds, t_end) (N,) float32; the part before the first sample or older than the
        ring holds is left out (so the result may be shorter)."""
        with self._lock:
            if self._start is None:
                return np.zeros(0, np.float32)
            cap = len(self._buf)
            e = min(int(round(t_end * self.sr)), self._end)
            s = max(e - int(round(seconds * self.sr)), self._start, self._end - cap)
            if e <= s:
                return np.zeros(0, np.float32)
            idx = np.arange(s, e) % cap
            return self._buf[idx].copy()


def _open(spec: SourceSpec, timeout_s: float) -> Any:
    import av

    try:
        return av.open(spec.url, format=spec.format, options=dict(spec.options),
                       timeout=(max(timeout_s, 10.0), max(timeout_s, 1.0) + 1.0) if spec.network else None)
    except av.error.ExitError:
        raise SourceFault(spec.name, "cannot open", f"nothing received for {max(timeout_s, 10.0):g} s") from None
    except Exception as e:  # PyAV raises one error type per FFmpeg error code
        raise SourceFault(spec.name, "cannot open", f"{type(e).__name__}: {e}") from None


class LiveSource:
    """Reads a live source in a thread (see the module docstring); :meth:`batch` hands frames to the consumer.

    Args:
        source: SOURCE as on the command line (:func:`parse_source`).
        queue_size: bound of the frame queue (frames); the oldest is dropped when it is full.
        stall_s: no frame for this long = stalled (a fault; with ``reconnect`` on a network source: reopened).
        reconnect: reopen a network source that ended, stalled or failed, with backoff (:data:`BACKOFF_S`).
        audio: a second input for the audio (``alsa:default``, a URL, ...) instead of the source's own track.
        max_side: downscale frames larger than this (keeping aspect), as ``iter_frames`` does.
    """

    def __init__(self, source: str, queue_size: int = 8, stall_s: float = 5.0, reconnect: bool = False,
                 audio: str | None = None, max_side: int | None = None, audio_keep_s: float = 12.0):
        self.spec = parse_source(source)
        self.audio_spec = parse_source(audio) if audio else None
        self.queue = FrameQueue(queue_size)
        self.audio = AudioRing(audio_keep_s)
        self.stall_s, self.reconnect, self.max_side = float(stall_s), bool(reconnect), max_side
        self.fps: float | None = None
        self.size: tuple[int, int] = (0, 0)
        self.has_audio = False
        self.n_arrived = 0
        self.faults: list[str] = []  # one line per fault, as logged
        self.on_fault: Any = None  # called with each fault line instead of logging it (the CLI: one stderr line)
        self.opened = threading.Event()  # set once the first frame arrived (fps/size known)
        self.finished = threading.Event()  # set when the reader thread has ended (the queue is closed)
        self._stop = threading.Event()
        self._offset = 0.0  # added to the stream's own times (restarts, reconnects)
        self._last_t: float | None = None
        self._t0: float | None = None  # first presentation time of the current connection
        self._clock: tuple[float, float] | None = None  # (monotonic, stream time) of the first frame
        self._threads: list[threading.Thread] = []

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def dropped(self) -> int:
        return self.queue.dropped

    def start(self) -> "LiveSource":
        t = threading.Thread(target=self._run, name="vaest-live-reader", daemon=True)
        t.start()
        self._threads.append(t)
        if self.audio_spec is not None:
            a = threading.Thread(target=self._run_audio, name="vaest-live-audio", daemon=True)
            a.start()
            self._threads.append(a)
        return self

    def close(self) -> None:
        """Ask the reader threads to stop (they end at their next packet or read timeout)."""
        self._stop.set()

    def batch(self, max_n: int) -> list[Arrival]:
        """Up to ``max_n`` frames (oldest first), waiting up to ``stall_s`` for one. Raises :class:`SourceFault`
        when the source ended or failed, or stalled (without ``reconnect``, or a non-network source)."""
        waited = 0.0
        while True:
            step = min(0.25, self.stall_s)
            items = self.queue.get_batch(max_n, step)
            if items or self._stop.is_set():
                return items
            waited += step
            # before the first frame, opening counts too (a network source: up to its open timeout)
            limit = self.stall_s if self.opened.is_set() else max(self.stall_s, 10.0 if self.spec.network else 0.0)
            if waited >= limit:
                if self.reconnect and self.spec.network:
                    self._fault("stalled", f"no frame for {waited:.1f} s; waiting for the reconnection")
                    waited = -1e9  # one line per stall
                    continue
                raise SourceFault(self.name, "stalled", f"no frame for {waited:.1f} s")

    def _fault(self, kind: str, detail: str) -> None:
        line = f"{self.name}: {kind}: {detail}"
        self.faults.append(line)
        if self.on_fault is not None:
            self.on_fault(line)
        else:
            log.warning("%s", line)

    # ------------------------------------------------------------------------------------------- reader
    def _run(self) -> None:
        try:
            self._read_loop()
        finally:
            self.finished.set()

    def _read_loop(self) -> None:
        tries = 0
        while not self._stop.is_set():
            try:
                got = self._read_once()
                tries = 0 if got else tries
                if self._stop.is_set():
                    break
                why = SourceFault(self.name, "ended", f"end of stream after {self.n_arrived} frames")
            except SourceFault as e:
                why = e
            except Exception as e:  # a read timeout (FFmpeg's interrupt) or a demuxer error the source caused
                import av

                if isinstance(e, av.error.ExitError):
                    why = SourceFault(self.name, "stalled", f"nothing read for {self.stall_s + 1:g} s")
                else:
                    why = SourceFault(self.name, "undecodable data", f"{type(e).__name__}: {e}")
            if not (self.reconnect and self.spec.network) or self._stop.is_set():
                self.queue.close(why)
                return
            wait = BACKOFF_S[min(tries, len(BACKOFF_S) - 1)]
            tries += 1
            self._fault(why.kind, f"{why.detail}; reconnecting in {wait:g} s (try {tries})")
            if self._stop.wait(wait):
                break
            self._t0 = None  # a new connection: its timestamps start anew, the timeline goes on
        self.queue.close(SourceFault(self.name, "ended", "stopped"))

    def _stamp(self, raw_t: float) -> float:
        """A frame's time on the continuous timeline from its presentation time in the current connection."""
        frame_s = 1.0 / (self.fps or 30.0)
        if self._t0 is None:
            self._t0 = raw_t
            if self._last_t is not None:  # reconnected: the timeline goes on one frame after the last one
                self._offset = self._last_t + frame_s
        t = raw_t - self._t0 + self._offset
        if self._last_t is not None:
            step = t - self._last_t
            if step < -JUMP_BACK_S or step > JUMP_AHEAD_S:
                kind = "restarted" if step < 0 else "time jump"
                self._fault(kind, f"timestamps jumped by {step:+.2f} s at frame {self.n_arrived + 1}; "
                                  "the timeline continues one frame later")
                self._offset += self._last_t + frame_s - t
                t = self._last_t + frame_s
        self._last_t = t
        return t

    def _read_once(self) -> bool:
        """One connection: demux and decode until the end; returns whether any frame arrived."""
        import av

        c = _open(self.spec, self.stall_s)
        got = False
        try:
            if not c.streams.video:
                raise SourceFault(self.name, "no video", "the source has no video stream")
            vs = c.streams.video[0]
            aus = c.streams.audio[0] if (c.streams.audio and self.audio_spec is None) else None
            rate = vs.average_rate or vs.guessed_rate or vs.base_rate
            if self.fps is None:
                self.fps = float(rate) if rate else 30.0
            tb = float(vs.time_base) if vs.time_base else None
            res = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE) if aus is not None else None
            self.has_audio = self.has_audio or aus is not None or self.audio_spec is not None
            streams = [s for s in (vs, aus) if s is not None]
            k = 0
            bad = 0
            for packet in c.demux(*streams):
                if self._stop.is_set():
                    break
                try:
                    frames = packet.decode()
                except av.error.InvalidDataError as e:
                    bad += 1
                    if bad == 1:
                        self._fault("undecodable data", f"{e}; skipping the damaged packets")
                    continue
                for fr in frames:
                    if packet.stream.type == "video":
                        raw_t = fr.pts * tb if (fr.pts is not None and tb) else k / (self.fps or 30.0)
                        k += 1
                        self._put_frame(fr, float(raw_t))
                        got = True
                    elif res is not None and fr.pts is not None and self._t0 is not None:
                        t = float(fr.pts * fr.time_base) - self._t0 + self._offset
                        for out in res.resample(fr):
                            self.audio.write(out.to_ndarray().reshape(-1), t)
                            t += out.samples / SAMPLE_RATE
        finally:
            c.close()
        return got

    def _put_frame(self, fr: Any, raw_t: float) -> None:
        W, H = fr.width, fr.height
        if self.max_side and max(W, H) > self.max_side:
            s = self.max_side / max(W, H)
            arr = fr.to_ndarray(format="rgb24", width=max(2, int(round(W * s / 2)) * 2),
                                height=max(2, int(round(H * s / 2)) * 2))
        else:
            arr = fr.to_ndarray(format="rgb24")
        now = time.monotonic()
        t = self._stamp(raw_t)
        if self._clock is None:
            self._clock = (now, t)
        self.size = (arr.shape[1], arr.shape[0])
        self.queue.put(Arrival(arr, self.n_arrived, t, now))
        self.n_arrived += 1
        self.opened.set()

    def _run_audio(self) -> None:
        """The ``audio=`` input: decoded on its own; placed on the frames' clock by arrival time."""
        import av

        assert self.audio_spec is not None
        try:
            c = _open(self.audio_spec, self.stall_s)
        except SourceFault as e:
            self._fault(e.kind, e.detail)
            return
        try:
            if not c.streams.audio:
                self._fault("no audio", f"{self.audio_spec.name} has no audio stream")
                return
            aus = c.streams.audio[0]
            res = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
            for fr in c.decode(aus):
                if self._stop.is_set():
                    break
                if self._clock is None:
                    continue  # before the first frame: nothing to align to
                m0, t0 = self._clock
                for out in res.resample(fr):
                    x = out.to_ndarray().reshape(-1)
                    # the chunk ends now: its start on the frames' clock
                    self.audio.write(x, t0 + time.monotonic() - m0 - len(x) / SAMPLE_RATE)
        except Exception as e:  # a device that goes away, a network input gone silent
            if isinstance(e, av.error.ExitError):
                self._fault("audio stalled", f"{self.audio_spec.name}: nothing read for {self.stall_s + 1:g} s")
            else:
                self._fault("audio input failed", f"{self.audio_spec.name}: {type(e).__name__}: {e}")
        finally:
            c.close()


def percentile_ms(hist: np.ndarray, q: float) -> float:
    """The ``q``-th percentile (0-100) of values counted in 1 ms bins (``hist[k]`` = count of [k, k+1) ms)."""
    n = int(hist.sum())
    if n == 0:
        return math.nan
    c = np.cumsum(hist)
    k = int(np.searchsorted(c, q / 100.0 * n, side="left"))
    return float(min(k, len(hist) - 1)) + 0.5
