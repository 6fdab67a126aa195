"""Causal estimation over a live frame stream, with the predictor's own extractors and mappings.

Two engines, chosen by the predictor's model:

- :class:`ZeroShotEngine` (no model): the person tracker (:class:`vaest.features.persons.PersonTracker` with its
  :class:`~vaest.features.persons.FramePrep`, the ``persons`` extractor's settings), the predictor's warm face
  encoder on each chosen person's crops (:func:`~vaest.features.persons.encode_person_frames`), the zero-shot face
  mapping (:func:`vaest.zeroshot.face_outputs_va`), the zero-shot voice (the predictor's ``voice_track``: the built-in
  cues or its speech-emotion model) over a trailing window (:class:`CausalVoice`), the zero-shot fusion
  (:func:`vaest.zeroshot.zero_shot_video`) and a trailing moving average (:class:`CausalSmoother`), frame by
  frame. What differs from offline ``predict`` is listed in :data:`CAUSAL_NOTES` (and docs/live.md).
- :class:`WindowEngine` (a trained bundle): the bundle's models are windowed (a face transformer over seconds of
  frames, 4 s audio windows, fusion over windows), so every ``hop_s`` seconds the predictor's whole per-video
  path (its extractors, models and fusion: ``Predictor.predict_people``) runs on the last ``window_s`` seconds
  of frames and audio, and the frames of the newest hop are emitted: causal (nothing after a frame's hop is
  used), with a latency of about one hop plus the computation.

The engines only take the predictor object (a protocol: its ``extractors``, ``bundle``, ``kernels``, ``people``,
``voice_track`` and, for bundles, ``predict_people``); they import nothing above :mod:`vaest.features`/``zeroshot``.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vaest.live.source import Arrival, AudioRing

log = logging.getLogger(__name__)

MODALITIES = ("face", "audio", "behavior")
BOX_COLUMNS = ("box_x0", "box_y0", "box_x1", "box_y1")
VOICE_WINDOW_S = 3.0  # the zero-shot voice cues' window (vaest.zeroshot.AUDIO_WINDOW_S), here trailing
VOICE_HOP_S = 1.0  # the voice is recomputed every this many seconds of new audio (openSMILE on 3 s: ~3x
# the audio's duration in work at 1 s, 6x at 0.5 s)
CAUSAL_NOTES = (
    "live: causal estimates; each uses only frames and audio up to its own time",
    "live: the face's expression probabilities are pooled over the trailing 0.5 s (offline: centred), so the "
    "face values lag the offline ones by 7 frames at 30 fps",
    "live: smoothing is a trailing moving average of the same kernels (offline: centred), so the smoothed "
    "curve lags the offline one by (kernel - 1) / 2 frames more",
    "live: the voice's arousal at time t is that of the newest trailing 3 s window ending at a 1 s step <= t "
    "that was computed by the time the frame is processed (offline: the 3 s window centred on t), with the gain "
    "and activity thresholds of that window (offline: of the whole file)",
    "live: person ids are the online tracker's (offline merges tracks of one person after the end and drops "
    "flickers); main = the person visible on most frames so far (offline: over the whole file, speaking frames "
    "added)",
    "live: with several persons tracked the voice is left out (offline: attributed by voice activity and mouth "
    "motion over the whole file)",
)


@dataclass
class LiveResult:
    """One live estimate: one frame of one person.

    Attributes:
        frame: 1-based number of the frame among all frames the source delivered (dropped frames leave gaps).
        time: the frame's time (s) from the source's first frame.
        person: tracked person id (-1: nobody on screen, the voice alone).
        valence, arousal: the final (causally smoothed) estimate, NaN where none.
        source: ``estimated`` (some modality had input) or ``none``.
        modalities: each modality's raw (valence, arousal), NaN where it had no input.
        weights: the fusion's weight per modality (zero-shot: the arousal weights, as offline).
        box: the person's face box (x0, y0, x1, y1) in pixels, NaN where not visible.
        latency_ms: from the frame's arrival (decoded) to this estimate.
        delay_ms: how far this estimate comes after the frame's time on the stream's own clock, anchored where a
            frame arrived earliest relative to its time: the latency plus any backlog that built up before
            arrival (in the pipe, the socket, a reader behind). For a source that keeps real time it stays near
            the latency; a growing delay is a growing backlog.
    """

    frame: int
    time: float
    person: int
    valence: float
    arousal: float
    source: str
    modalities: dict[str, tuple[float, float]]
    weights: dict[str, float] = field(default_factory=dict)
    box: tuple[float, float, float, float] = (math.nan,) * 4
    latency_ms: float = math.nan
    delay_ms: float = math.nan
    arrived: float = 0.0

    def row(self) -> dict[str, Any]:
        """The result as a row of the ``predict`` CSV (columns as :class:`vaest.predictor.PredictionResult`)."""
        out: dict[str, Any] = {"frame": self.frame, "time": self.time, "valence": self.valence,
                               "arousal": self.arousal, "source": self.source}
        for m in MODALITIES:
            v, a = self.modalities.get(m, (math.nan, math.nan))
            out[f"{m}_valence"], out[f"{m}_arousal"] = v, a
        for k in sorted(self.weights):
            out[f"weight_{k}"] = self.weights[k]
        out["person"] = self.person
        for c, b in zip(BOX_COLUMNS, self.box):
            out[c] = b
        return out

    def to_json(self) -> dict[str, Any]:
        """The JSON line of this estimate: NaN as null, 4 decimals (times 6, latency 1)."""

        def num(x: float, d: int = 4) -> float | None:
            return round(float(x), d) if math.isfinite(x) else None

        out: dict[str, Any] = {"time": num(self.time, 6), "frame": self.frame, "person": self.person,
                               "valence": num(self.valence), "arousal": num(self.arousal), "source": self.source}
        for m in MODALITIES:
            v, a = self.modalities.get(m, (math.nan, math.nan))
            out[f"{m}_valence"], out[f"{m}_arousal"] = num(v), num(a)
        for k in sorted(self.weights):
            out[f"weight_{k}"] = num(self.weights[k])
        out["latency_ms"] = num(self.latency_ms, 1)
        out["delay_ms"] = num(self.delay_ms, 1)
        return out


class CausalSmoother:
    """Trailing moving average per dimension (kernels as :func:`vaest.postprocess.smooth`'s, NaN ignored): the
    causal form of the offline centred average; its value at frame i is the centred average at i - (k-1)/2."""

    def __init__(self, kernels: tuple[int, ...]):
        self.kernels = tuple(int(k) for k in kernels) or (1, 1)
        self._buf: collections.deque[np.ndarray] = collections.deque(maxlen=max(self.kernels))

    def push(self, raw: np.ndarray, ok: bool) -> np.ndarray:
        """Add one frame's raw (2,) value (``ok``: some modality had input) and return its smoothed (2,) value,
        NaN where not ``ok`` (as offline without ``fill``), clipped to [-1, 1]."""
        self._buf.append(np.asarray(raw, np.float64) if ok else np.full(2, np.nan))
        if not ok:
            return np.full(2, np.nan)
        arr = np.stack(self._buf)
        out = np.full(2, np.nan)
        for d, k in enumerate(self.kernels[:2]):
            col = arr[-k:, d]
            col = col[np.isfinite(col)]
            if col.size:
                out[d] = col.mean()
        return np.clip(out, -1.0, 1.0)


class CausalPool:
    """Trailing mean of the last ``length`` frames' expression probabilities over the frames with a face: the causal
    form of :func:`vaest.zeroshot.pool_expressions` (centred over the same number of frames), so its value at
    frame i is the offline one at i - (length - 1) / 2. A frame without a face stays NaN, as offline."""

    def __init__(self, length: int):
        self._buf: collections.deque[np.ndarray] = collections.deque(maxlen=max(1, int(length)))

    def push(self, rows: np.ndarray) -> np.ndarray:
        """(B, C) probabilities of the next frames (NaN rows: no face) -> (B, C) pooled."""
        out = np.full(rows.shape, np.nan, np.float64)
        for b, r in enumerate(np.asarray(rows, np.float64)):
            self._buf.append(r)
            if np.isfinite(r).all():
                arr = np.stack(self._buf)
                arr = arr[np.isfinite(arr).all(1)]
                out[b] = arr.mean(0)
        return out


def pool_length(fps: float) -> int:
    """Frames in the offline expression pooling window at ``fps`` (as :func:`vaest.zeroshot.pool_expressions`)."""
    from vaest.zeroshot import FACE_POOL_S

    w = int(round(FACE_POOL_S * fps))
    return 2 * (w // 2) + 1 if w > 1 else 1


class CausalVoice:
    """The zero-shot voice over trailing windows, computed in a worker thread as the audio arrives.

    Every ``hop_s`` of audio (window ends T = k * hop_s) the ``voice`` function (16 kHz waveform, fps -> (n, 2),
    the predictor's ``voice_track``) is run on the ``window_s`` seconds before T, with the frame rate that makes it one
    output row covering exactly that window. :meth:`at` gives a frame at time t the value of the last window ending
    at or before t (None when there is none from the last ``window_s``). When the computation falls behind, window
    ends are skipped (``skipped`` counts them) rather than queued."""

    def __init__(self, ring: AudioRing, voice: Any, window_s: float = VOICE_WINDOW_S, hop_s: float = VOICE_HOP_S):
        self.ring, self.voice, self.window_s, self.hop_s = ring, voice, window_s, hop_s
        self._values: collections.deque[tuple[float, np.ndarray]] = collections.deque(maxlen=64)
        self._lock = threading.Condition()
        self._stop = threading.Event()
        self._next = hop_s
        self.skipped = 0
        self.computed = 0
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, name="vaest-live-voice", daemon=True)

    def start(self) -> "CausalVoice":
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)

    def _run(self) -> None:
        while not self._stop.is_set():
            end = self.ring.end_time
            if not self.ring.started or end < self._next:
                self._stop.wait(0.05)
                continue
            if end - self._next >= 2 * self.hop_s:  # behind: jump to the newest complete window
                newest = math.floor(end / self.hop_s) * self.hop_s
                self.skipped += int(round((newest - self._next) / self.hop_s))
                self._next = newest
            T = self._next
            self._next += self.hop_s
            wav = self.ring.window(T, self.window_s)
            if len(wav) < 0.5 * self.ring.sr:
                continue
            try:
                va = np.asarray(self.voice(wav, self.ring.sr / len(wav)), np.float32)[0]
            except Exception as e:  # one failing window must not end the stream
                if self.error is None:
                    self.error = f"{type(e).__name__}: {e}"
                    log.warning("live voice: %s (windows failing are left out)", self.error)
                continue
            with self._lock:
                self._values.append((T, va))
                self.computed += 1
                self._lock.notify_all()

    def wait_computed(self, n: int, timeout: float) -> bool:
        """Wait (at most ``timeout`` s) until ``n`` windows have been computed; whether they have."""
        with self._lock:
            return self._lock.wait_for(lambda: self.computed >= n, timeout)

    def at(self, t: float) -> np.ndarray | None:
        """(2,) voice valence/arousal for a frame at ``t`` s (None: no window ended in (t - window_s, t])."""
        with self._lock:
            for T, va in reversed(self._values):
                if T <= t + 1e-9:
                    return va if T > t - self.window_s else None
        return None


def _nan2() -> np.ndarray:
    return np.full(2, np.nan, np.float32)


class ZeroShotEngine:
    """Zero-shot live estimation (see the module docstring): :meth:`step` takes consecutive frames and returns,
    per frame, one :class:`LiveResult` per chosen person."""

    kind = "zero-shot"

    def __init__(self, predictor: Any, ring: AudioRing | None):
        from vaest.features.person_tracker import FramePrep, PersonTrackConfig, PersonTracker

        pe = next((e for e in predictor.extractors if e.name == "persons"), None)
        if pe is None or pe.face_encoder is None:
            raise ValueError("the zero-shot live path needs the predictor's persons extractor with a face encoder")
        fields = {f.name for f in dataclasses.fields(PersonTrackConfig)}
        self.cfg = PersonTrackConfig(**{k: v for k, v in dataclasses.asdict(pe.config).items() if k in fields})
        self.fe = pe.face_encoder  # warm: the predictor loaded it once
        self.classes = list(self.fe.encoder.classes)
        self.people = str(predictor.people)
        self.kernels = tuple(predictor.kernels)
        self.prep = FramePrep(self.cfg)
        self.tracker = PersonTracker(self.cfg)
        self._warm_up()
        self.smoothers: dict[int, CausalSmoother] = {}
        self.pools: dict[tuple[int, str], CausalPool] = {}
        self.fps = 30.0  # the source's frame rate, set by the stream once known (the pooling window in frames)
        self.voice = CausalVoice(ring, predictor.voice_track).start() if ring is not None else None
        self.notes = list(CAUSAL_NOTES)

    def _warm_up(self) -> None:
        """Run the new detection and tracking graphs once on a blank frame (MediaPipe builds them on first use,
        ~1 s that would otherwise delay the first live frames), then start their frame count from 0 again."""
        from vaest.progress import native_noise_filtered

        blank = np.zeros((1, 64, 64, 3), np.uint8)
        with native_noise_filtered():
            self.tracker.process(blank, self.prep(blank))
            self.fe.encode_crops([np.zeros((64, 64, 3), np.uint8)])
        self.tracker.frame_no = self.prep.frame_no = 0
        self.tracker.drop_history()

    def flush(self) -> list[LiveResult]:
        """Nothing is held back: every frame was estimated when it was processed."""
        return []

    def close(self) -> None:
        if self.voice is not None:
            self.voice.close()
        self.tracker.close()
        self.prep.close()

    def _face_va(self, pid: int, enc: dict[str, np.ndarray] | None, B: int) -> np.ndarray:
        """(B, 2) zero-shot face valence/arousal of person ``pid`` from their encoder outputs (None: not visible):
        the encoder's own VA head where it has one, else :func:`vaest.zeroshot.zero_shot_face` of the expression
        probabilities pooled causally (:class:`CausalPool`; the pools see every frame, visible or not)."""
        from vaest.zeroshot import face_outputs_va, zero_shot_face

        if enc is not None and "va" in enc and np.isfinite(enc["va"]).any():
            return face_outputs_va(enc, self.classes).astype(np.float32)
        C = len(self.classes)
        pooled = {}
        for key in ("probs", "probs_arousal"):
            if key == "probs_arousal" and not getattr(self.fe.encoder, "arousal_probs", False):
                continue
            rows = enc[key] if enc is not None else np.full((B, C), np.nan, np.float32)
            pool = self.pools.setdefault((pid, key), CausalPool(pool_length(self.fps)))
            pooled[key] = pool.push(rows)
        return zero_shot_face(pooled["probs"], self.classes, None,
                              arousal_probs=pooled.get("probs_arousal")).astype(np.float32)

    def _voice_at(self, t: float) -> np.ndarray:
        va = self.voice.at(t) if self.voice is not None else None
        return va if va is not None else _nan2()

    def _chosen(self) -> list[int]:
        """The person ids to output now (``--people``, decided on what was seen so far)."""
        seen = [p for p in self.tracker.persons if p.n_found]
        if not seen:
            return []
        m = self.people
        if m == "all":
            return [p.pid for p in seen]
        if m == "main":
            return [max(seen, key=lambda p: (p.n_found, -p.pid)).pid]
        if m in ("left", "right"):
            pid = self.tracker.side_ids()[m]
            if pid is None:  # a lone person on the other half: as offline, a lone person is both
                pid = max(seen, key=lambda p: (p.n_found, -p.pid)).pid
            return [pid]
        return [int(m)] if any(p.pid == int(m) for p in seen) else []

    def prepare(self, items: list[Arrival]) -> Any:
        """The frame-only part of tracking of consecutive frames ``items`` (shot cuts, scheduled detections:
        :class:`~vaest.features.persons.FramePrep`, its own detection graph), run by :class:`~vaest.live.LiveStream`
        in a thread one batch ahead of :meth:`step` (MediaPipe computes without the GIL: on two cores detection
        overlaps with the tracker's FaceMesh, as offline in the decoding thread). Scheduled detections fall on the
        source's frame numbers, as offline; a dropped frame is skipped, not shifted onto the next one."""
        self.prep.frame_no = items[0].index
        return self.prep(np.stack([a.frame for a in items]))

    def step(self, items: list[Arrival], prepared: Any = None) -> list[LiveResult]:
        """Estimates of consecutive frames ``items`` (in order), per frame the chosen persons in id order;
        ``prepared``: :meth:`prepare` of the same items (computed here when None)."""
        from vaest.features.persons import encode_person_frames
        from vaest.zeroshot import zero_shot_video

        if prepared is None:
            prepared = self.prepare(items)
        frames = np.stack([a.frame for a in items])
        self.tracker.frame_no = items[0].index
        res = self.tracker.process(frames, prepared)
        self.tracker.drop_history()  # the tracks are read here, per batch: nothing kept for an end
        ids = self._chosen()
        B = len(items)
        face: dict[int, np.ndarray] = {}
        for pid in ids:
            bx = res.get(pid, (np.full((B, 4), np.nan, np.float32),))[0]
            enc = encode_person_frames(self.fe, frames, bx) if np.isfinite(bx).all(1).any() else None
            face[pid] = self._face_va(pid, enc, B)
        voice_ok = len(self.tracker.persons) <= 1  # several persons: the voice belongs to nobody in particular
        audio = np.stack([self._voice_at(a.time) for a in items]) if voice_ok else None
        if audio is not None and not np.isfinite(audio).any():
            audio = None
        out: list[LiveResult] = []
        keys = ids or [-1]
        per: dict[int, tuple[np.ndarray, dict[str, np.ndarray]]] = {}
        for pid in keys:
            f = face.get(pid)
            fused = zero_shot_video(f, audio)
            per[pid] = (fused.va, fused.weights)
        for b, a in enumerate(items):
            for pid in keys:
                va, w = per[pid]
                raw = va[b] if len(va) else _nan2()
                ok = bool(np.isfinite(raw).any())
                final = self.smoothers.setdefault(pid, CausalSmoother(self.kernels)).push(raw, ok)
                fv = face[pid][b] if pid in face else _nan2()
                av = audio[b] if audio is not None else _nan2()
                mods = {"face": (float(fv[0]), float(fv[1])), "audio": (float(av[0]), float(av[1]))}
                weights = {m: (float(ww[b, 1]) if np.isfinite(final[1]) else math.nan) for m, ww in w.items()} \
                    if len(va) else {"face": math.nan, "audio": math.nan}
                box = res[pid][0][b] if pid in res else np.full(4, np.nan)
                out.append(LiveResult(a.index + 1, a.time, pid, float(final[0]), float(final[1]),
                                      "estimated" if ok else "none", mods, weights,
                                      tuple(float(x) for x in box), arrived=a.arrived))
        return out


class WindowEngine:
    """A trained bundle live: every ``hop_s`` the predictor's per-video path on the last ``window_s`` seconds
    (see the module docstring). :meth:`step` only files the frames (cheap: the queue never overflows because of
    the models) and hands a completed hop's window to a worker thread; its rows come out of a later :meth:`step`
    (or :meth:`flush`) once computed. When the worker is still busy as the next hop completes, that hop is skipped
    (its frames get no row; ``hops_skipped`` counts them): the estimate stays current instead of queueing up."""

    kind = "window"

    def __init__(self, predictor: Any, ring: AudioRing | None, fps: float, size: tuple[int, int],
                 window_s: float = 8.0, hop_s: float = 4.0):
        from concurrent.futures import ThreadPoolExecutor

        self.p = predictor
        self.ring = ring
        self.fps = float(fps or 30.0)
        self.size = size
        self.window_s, self.hop_s = float(window_s), float(hop_s)
        self.frames: collections.deque[Arrival] = collections.deque()
        self.next_end: float | None = None
        self.windows_run = 0
        self.hops_skipped = 0
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="vaest-live-window")
        self._job: Any = None
        self.notes = [CAUSAL_NOTES[0],
                      f"live: the bundle's models run every {self.hop_s:g} s on the last {self.window_s:g} s of "
                      "frames and audio (offline: on the whole file); each frame's estimate is that of the window "
                      "ending with its hop, so windowed models see less context before a frame and none after it; "
                      "a hop that completes while the previous window is still computed is skipped",
                      CAUSAL_NOTES[4]]

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def _collect(self, wait: bool) -> list[LiveResult]:
        if self._job is None or not (wait or self._job.done()):
            return []
        job, self._job = self._job, None
        return job.result()

    def _submit(self, end: float, hop_s: float) -> None:
        win = [a for a in self.frames if a.time < end]
        if win:
            self._job = self._pool.submit(self._window, win, end, hop_s)
            self.windows_run += 1

    def flush(self) -> list[LiveResult]:
        """At the end of the stream: the window being computed, then the frames after the last complete hop."""
        out = self._collect(wait=True)
        if self.frames and self.next_end is not None:
            end = self.frames[-1].time + 1e-6
            self._submit(end, end - (self.next_end - self.hop_s))  # the partial hop
            out += self._collect(wait=True)
        self.frames.clear()
        return out

    prepare = None  # nothing to compute ahead: each window runs the predictor's whole path

    def step(self, items: list[Arrival], prepared: Any = None) -> list[LiveResult]:
        out = self._collect(wait=False)
        for a in items:
            if self.next_end is None:
                self.next_end = a.time + self.hop_s
            if a.time >= self.next_end and self.frames:
                out += self._collect(wait=False)
                if self._job is None:
                    self._submit(self.next_end, self.hop_s)
                else:
                    self.hops_skipped += 1
                self.next_end += self.hop_s * max(1, math.ceil((a.time - self.next_end) / self.hop_s + 1e-9))
            self.frames.append(a)
            while self.frames and self.frames[0].time < a.time - self.window_s:
                self.frames.popleft()
        return out

    def _window(self, win: list[Arrival], end: float, hop_s: float) -> list[LiveResult]:
        """Run the predictor on the frames ``win`` (those before ``end``, at most ``window_s``) and return the rows
        of those in the last ``hop_s``."""
        from pathlib import Path

        from vaest.corpus import Video
        from vaest.features.base import process_media, save_records, with_requirements
        from vaest.features.store import MemoryStore
        from vaest.media import FrameBatch, MediaInfo

        t0 = win[0].time
        times = np.array([a.time - t0 for a in win])
        wav = self.ring.window(end, end - t0) if self.ring is not None else np.zeros(0, np.float32)
        name = Path("live-window")
        info = MediaInfo(name, True, bool(len(wav)), self.fps, len(win), float(end - t0), self.size[0],
                         self.size[1], 16000 if len(wav) else 0)
        video = Video(id="live", media=name, split="predict", fps=self.fps, audio_only=False)
        exs = with_requirements(list(self.p.extractors))
        batches = [FrameBatch(np.stack([a.frame for a in win[i:i + 32]]), np.arange(i, min(i + 32, len(win))),
                              times[i:i + 32]) for i in range(0, len(win), 32)]
        recs, _ = process_media(name, [video], exs, frames=batches, wav=wav, info=info)
        store = MemoryStore("live")
        save_records(store, recs, force=True)
        res = self.p.predict_people(name, store, video, times, info, time.perf_counter())
        df = res.frame
        hop0 = end - hop_s
        out = []
        by_frame = {k: a for k, a in enumerate(win)}
        for r in df.itertuples(index=False):
            a = by_frame[int(r.frame) - 1]
            if a.time < hop0:
                continue
            d = r._asdict()
            mods = {m: (float(d.get(f"{m}_valence", math.nan)), float(d.get(f"{m}_arousal", math.nan)))
                    for m in MODALITIES}
            w = {c[len("weight_"):]: float(d[c]) for c in d if c.startswith("weight_")}
            box = tuple(float(d.get(c, math.nan)) for c in BOX_COLUMNS)
            out.append(LiveResult(a.index + 1, a.time, int(d.get("person", -1)), float(d["valence"]),
                                  float(d["arousal"]), str(d["source"]), mods, w, box, arrived=a.arrived))
        return out
