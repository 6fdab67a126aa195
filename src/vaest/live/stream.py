"""A live stream of estimates: source -> bounded queue -> engine -> results (and the recording), one object.

:class:`LiveStream` is what ``Predictor.stream(source, ...)`` returns: iterate it for :class:`LiveResult` objects
(one per processed frame and chosen person, or fewer with ``rate``); :meth:`LiveStream.stop` ends it cleanly from
another thread or a signal handler (the recording is completed); :meth:`LiveStream.meta` is the metadata written
beside the recording (frames arrived / processed / dropped, latency percentiles, faults, the causal notes).

Iteration ends normally when the source ends or :meth:`stop` is called; it raises
:class:`~vaest.live.source.SourceFault` (after the files are complete) when the source stalls, cannot be
opened or sends undecodable data.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import queue
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from vaest.errors import VaestError
from vaest.live.engine import LiveResult, WindowEngine, ZeroShotEngine
from vaest.live.record import LiveRecorder
from vaest.live.source import LiveSource, SourceFault, percentile_ms

log = logging.getLogger(__name__)

DROP_POLICY = ("bounded queue of decoded frames; when it is full the oldest waiting frame is dropped (a live "
               "estimate describes the present); dropped frames get no row")


def _now_utc() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class LiveStream:
    """Live estimates of one source with a predictor's models (see the module docstring).

    Args:
        predictor: a :class:`vaest.predictor.Predictor` (zero-shot or a bundle); used through its extractors,
            mappings and per-video path (:mod:`vaest.live.engine`).
        source: ``-`` (stdin), a camera (``/dev/video0``, ``0``), a URL or file FFmpeg opens.
        audio: audio from another input (``alsa:default``, ``pulse:default``, a URL) instead of the source's.
        rate: emit at most this many estimates per second of stream time per person (None: every processed frame);
            the recording keeps every processed frame.
        out: folder for ``<stem>.csv`` / ``<stem>.json`` (as ``vaest predict``), flushed every second.
        stem: their name (default ``live``).
        queue_size: frames the queue holds before it drops the oldest.
        batch_max: most queued frames processed together (a backlog is worked off in bigger batches).
        stall_s: a source silent this long is stalled.
        reconnect: reopen a network source that ends, stalls or fails (backoff 0.5 s doubling to 8 s).
        preview: called with the newest processed frame (H, W, 3) and its time (the live page's camera image).
        max_frames: stop after this many processed frames (tests, benchmarks).
        on_fault: called with each fault line the stream survives (a restart, a reconnection, damaged packets)
            instead of logging it as a warning.
        window_s, hop_s: the bundle engine's window and hop (:class:`~vaest.live.engine.WindowEngine`).
    """

    def __init__(self, predictor: Any, source: str, audio: str | None = None, rate: float | None = None,
                 out: str | Path | None = None, stem: str = "live", queue_size: int = 8, batch_max: int = 8,
                 stall_s: float = 5.0, reconnect: bool = False,
                 preview: Callable[[np.ndarray, float], None] | None = None, max_frames: int | None = None,
                 window_s: float = 8.0, hop_s: float = 4.0, on_fault: Callable[[str], None] | None = None):
        if rate is not None and not rate > 0:
            raise VaestError(f"rate must be > 0 estimates per second, got {rate}")
        self.predictor = predictor
        self.source = LiveSource(source, queue_size=queue_size, stall_s=stall_s, reconnect=reconnect, audio=audio)
        self.source.on_fault = on_fault
        self.rate, self.out, self.stem = rate, out, stem
        self.batch_max, self.preview, self.max_frames = max(1, batch_max), preview, max_frames
        self.window_s, self.hop_s = window_s, hop_s
        self.engine: Any = None
        self.recorder: LiveRecorder | None = None
        self._stop = threading.Event()
        self.latency_hist = np.zeros(60_000, np.int64)  # 1 ms bins up to 60 s (bounded memory over any length)
        self.delay_hist = np.zeros(60_000, np.int64)
        self._clock0 = math.inf  # earliest (arrival - stream time) seen: the stream clock's anchor
        self.processed = 0
        self.emitted = 0
        self.rows = 0
        self.estimated = 0
        self.end_reason: str | None = None
        self.fault: SourceFault | None = None
        self.started = _now_utc()
        self._t0 = time.perf_counter()
        self._last_emit: dict[int, float] = {}
        self._last_time = math.nan

    def stop(self) -> None:
        """End the stream at the next batch (safe from a signal handler or another thread)."""
        self._stop.set()
        self.source.close()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def _engine(self) -> Any:
        ring = self.source.audio
        if self.predictor.bundle is None:
            return ZeroShotEngine(self.predictor, ring)
        return WindowEngine(self.predictor, ring, self.source.fps or 30.0, self.source.size, self.window_s,
                            self.hop_s)

    def _due(self, r: LiveResult) -> bool:
        if self.rate is None:
            return True
        last = self._last_emit.get(r.person)
        if last is not None and r.time < last + 1.0 / self.rate - 1e-6:
            return False
        self._last_emit[r.person] = r.time
        return True

    def _ahead(self, handoff: queue.Queue, prepare: Callable[[list[Any]], Any] | None) -> None:
        """Thread: take batches from the source and run the engine's frame-only work on them (``prepare``), one
        batch ahead of the estimation; hands over (items, prepared), then a fault, an error or None (done)."""

        def put(x: Any) -> None:
            while not self._stop.is_set():
                try:
                    handoff.put(x, timeout=0.25)
                    return
                except queue.Full:
                    continue

        taken = 0
        try:
            while not self._stop.is_set():
                want = self.batch_max if self.max_frames is None else min(self.batch_max, self.max_frames - taken)
                if want <= 0:
                    break
                items = self.source.batch(want)
                if items:
                    taken += len(items)
                    put((items, prepare(items) if prepare is not None else None))
            put(None)
        except BaseException as e:  # a source fault or an error: the estimation loop raises or reports it
            put(e)

    def __iter__(self) -> Iterator[LiveResult]:
        src = self.source
        if self.predictor.bundle is None:  # built (and warmed up) before the first frame arrives
            self.engine = self._engine()
        src.start()
        if self.out is not None:
            self.recorder = LiveRecorder(self.out, self.stem, self.meta)
        # one batch in hand-over: at most queue_size + 2 batches are held between the source and the estimate
        handoff: queue.Queue = queue.Queue(maxsize=1)
        ahead = threading.Thread(target=self._ahead, args=(handoff, getattr(self.engine, "prepare", None)),
                                 name="vaest-live-prepare", daemon=True)
        ahead.start()
        try:
            while True:
                try:
                    got = handoff.get(timeout=0.25)
                except queue.Empty:
                    if self._stop.is_set():
                        break
                    continue
                if got is None:
                    if self.max_frames is not None and self.processed >= self.max_frames:
                        self.end_reason = f"{src.name}: stopped after {self.processed} frames (max_frames)"
                    break
                if isinstance(got, SourceFault):
                    if got.kind == "ended":
                        log.debug("%s", got)
                    else:
                        self.fault = got
                    self.end_reason = str(got)
                    break
                if isinstance(got, BaseException):
                    raise got
                items, prepared = got
                if self.engine is None:
                    self.engine = self._engine()
                self.engine.fps = float(src.fps or 30.0)
                self._clock0 = min(self._clock0, min(a.arrived - a.time for a in items))
                results = self.engine.step(items, prepared)
                yield from self._deliver(results, items)
            if self._stop.is_set() and self.end_reason is None:
                self.end_reason = f"{src.name}: stopped (signal or stop()) after {self.processed} frames"
            if self.engine is not None and self.fault is None:  # a windowed engine's last partial hop
                yield from self._deliver(self.engine.flush(), [])
        finally:
            self._stop.set()
            src.close()
            ahead.join(timeout=10.0)
            if self.engine is not None:
                self.engine.close()
            if self.recorder is not None:
                self.recorder.close()
        if self.fault is not None:
            raise self.fault

    def _deliver(self, results: list[LiveResult], items: list[Any]) -> Iterator[LiveResult]:
        """Stamp the latency and delay of ``results`` (from the processed ``items``), record them, yield the
        due ones."""
        now = time.monotonic()
        for r in results:
            r.latency_ms = (now - r.arrived) * 1000.0
            r.delay_ms = (now - self._clock0 - r.time) * 1000.0
            self.latency_hist[min(int(r.latency_ms), len(self.latency_hist) - 1)] += 1
            self.delay_hist[min(max(int(r.delay_ms), 0), len(self.delay_hist) - 1)] += 1
        self.processed += len(items)
        self.rows += len(results)
        self.estimated += sum(r.source == "estimated" for r in results)
        if items:
            self._last_time = items[-1].time
        if self.recorder is not None:
            self.recorder.add([r.row() for r in results])
        if self.preview is not None and items:
            self.preview(items[-1].frame, items[-1].time)
        for r in results:
            if self._due(r):
                self.emitted += 1
                yield r

    def latency(self, delay: bool = False) -> dict[str, float | int]:
        """Latency from a frame's arrival to its estimate (ms): count, median, p95, max bin; ``delay``: the same of
        the delay behind the stream's clock (:attr:`LiveResult.delay_ms`)."""
        h = self.delay_hist if delay else self.latency_hist
        nz = np.flatnonzero(h)
        return {"n": int(h.sum()), "median_ms": percentile_ms(h, 50), "p95_ms": percentile_ms(h, 95),
                "max_ms": float(nz[-1] + 1) if len(nz) else math.nan}

    def meta(self) -> dict[str, Any]:
        """The recording's metadata: ``vaest predict``'s keys plus ``live`` (see the module docstring)."""
        p, src = self.predictor, self.source
        eng = self.engine
        notes = list(getattr(eng, "notes", []))
        voice = getattr(eng, "voice", None)
        lat = self.latency()
        delay = self.latency(delay=True)
        modalities = ["face", "audio"] if p.bundle is None else sorted(p.models)
        elapsed = time.perf_counter() - self._t0
        complete = self.end_reason is not None and self.fault is None
        return {
            "input": src.name, "model": str(p.model_path.resolve()) if p.model_path else "zero-shot",
            "modalities": modalities, "missing": [], "fusion": str(p.bundle.fusion) if p.bundle is not None and
            p.bundle.fusion else None, "fps": src.fps, "n_frames": self.processed, "audio_only": False,
            "kernels": list(p.kernels), "fill": False, "device": p.device, "frames_estimated": self.estimated,
            "frames_filled": 0, "notes": notes, "rows": self.rows, "seconds": round(elapsed, 3),
            "people": {"mode": p.people},
            "live": {
                "source": src.name, "started": self.started, "updated": _now_utc(),
                "complete": complete, "end": self.end_reason,
                "engine": getattr(eng, "kind", None), "stream_seconds": None if math.isnan(self._last_time)
                else round(self._last_time, 3),
                "frames_arrived": src.n_arrived, "frames_processed": self.processed,
                "frames_dropped": src.dropped, "drop_policy": DROP_POLICY, "queue_size": src.queue.size,
                "queue_high_water": src.queue.high_water, "estimates_emitted": self.emitted,
                "rate_hz": self.rate, "latency_ms": {k: (round(v, 1) if isinstance(v, float) and math.isfinite(v)
                                                         else (None if isinstance(v, float) else v))
                                                     for k, v in lat.items()},
                "latency_definition": "from the frame's arrival (decoded by the reader thread) to its estimate",
                "delay_ms": {k: (round(v, 1) if isinstance(v, float) and math.isfinite(v)
                                 else (None if isinstance(v, float) else v)) for k, v in delay.items()},
                "delay_definition": "from the frame's time on the stream's clock (anchored at the frame that arrived "
                                    "earliest relative to its time) to its estimate: the latency plus any backlog "
                                    "before arrival",
                "audio": src.has_audio, "voice_windows": getattr(voice, "computed", None),
                "voice_windows_skipped": getattr(voice, "skipped", None), "faults": list(src.faults),
                "windows_run": getattr(eng, "windows_run", None), "hops_skipped": getattr(eng, "hops_skipped", None),
            },
        }
