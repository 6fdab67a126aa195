"""Decoding: video frames with their timestamps, and the audio track as 16 kHz mono float32.

Media is decoded once per video and streamed in batches to every extractor that needs frames.
Tolerated with a warning: no audio track, variable frame rate, a corrupt tail (frames up to the damage are
returned). An unreadable file raises :class:`vaest.errors.MediaError` naming it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, TypeVar

import numpy as np

from vaest.errors import MediaError

T = TypeVar("T")

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
MAX_BATCH_BYTES = 256 * 2**20  # decoded frames held per batch; very large frames get smaller batches


@dataclass
class MediaInfo:
    """What a container says about itself (frame count may be an estimate; decoding is the truth)."""

    path: Path
    has_video: bool
    has_audio: bool
    fps: float | None
    n_frames: int
    duration: float
    width: int = 0
    height: int = 0
    audio_rate: int = 0


@dataclass
class FrameBatch:
    """Consecutive decoded frames.

    Attributes:
        frames: (B, H, W, 3) uint8 RGB.
        index: (B,) int64 0-based frame numbers.
        times: (B,) float64 presentation times (seconds) of the frame starts, relative to the first frame.
    """

    frames: np.ndarray
    index: np.ndarray
    times: np.ndarray


def _open(path: Path):
    import av

    p = Path(path)
    if not p.exists():
        raise MediaError(f"{p}: no such file")
    if p.is_dir():
        raise MediaError(f"{p}: is a folder, not a media file")
    if p.stat().st_size == 0:
        raise MediaError(f"{p}: file is empty")
    try:
        return av.open(str(p))
    except Exception as e:  # av raises several error types for unreadable input
        raise MediaError(f"{p}: cannot open as media ({type(e).__name__}: {e})") from None


def _check_codec(p: Path, vs) -> None:
    if vs is not None and vs.codec_context is None:
        raise MediaError(f"{p}: the video stream has no known codec (damaged header or unsupported format)")


def probe(path: str | Path) -> MediaInfo:
    """Read container metadata; raises MediaError when the file cannot be opened."""
    p = Path(path)
    with _open(p) as c:
        vs = c.streams.video[0] if c.streams.video else None
        aus = c.streams.audio[0] if c.streams.audio else None
        _check_codec(p, vs)
        if aus is not None and aus.codec_context is None:
            log.warning("%s: the audio stream has no known codec (damaged header?); treated as no audio", p)
            aus = None
        duration = float(c.duration / 1e6) if c.duration else 0.0
        fps = None
        n = 0
        w = h = 0
        if vs is not None:
            rate = vs.average_rate or vs.base_rate or vs.guessed_rate
            fps = float(rate) if rate else None
            n = int(vs.frames or 0)
            if vs.duration and vs.time_base:
                duration = max(duration, float(vs.duration * vs.time_base))
            if n == 0 and fps and duration:
                n = int(round(duration * fps))
            w, h = int(vs.codec_context.width or 0), int(vs.codec_context.height or 0)
        return MediaInfo(p, vs is not None, aus is not None, fps, n, duration, w, h,
                         int(aus.codec_context.sample_rate or 0) if aus is not None else 0)


def _announced_frames(vs, fps: float) -> int:
    """Frame count the video stream's header announces (0 when unknown), to notice a silently truncated file."""
    secs = float(vs.duration * vs.time_base) if vs.duration and vs.time_base else 0.0
    if vs.frames:
        # a stream-copied cut keeps the packets before its first keyframe (hidden by an edit list, not decoded):
        # the packet count then exceeds what the presented duration holds, so the smaller of the two counts
        return min(int(vs.frames), int(round(secs * fps))) if secs else int(vs.frames)
    tag = (vs.metadata or {}).get("DURATION", "")  # Matroska keeps the stream duration as a tag
    if not secs and tag.count(":") == 2:
        try:
            h, m, sec = tag.split(":")
            secs = int(h) * 3600 + int(m) * 60 + float(sec)
        except ValueError:
            secs = 0.0
    return int(round(secs * fps))


def iter_frames(path: str | Path, batch_size: int = 32, max_side: int | None = None) -> Iterator[FrameBatch]:
    """Decode video frames in order, in batches.

    Args:
        path: media file.
        batch_size: frames per batch (fewer for very large frames: at most ``MAX_BATCH_BYTES`` per batch).
        max_side: if given, frames larger than this are downscaled (keeping aspect) while decoding.
    Yields:
        :class:`FrameBatch` objects; a corrupt tail ends the stream with a warning.
    Raises:
        MediaError: unreadable file, or no video stream.
    """
    p = Path(path)
    c = _open(p)
    try:
        if not c.streams.video:
            raise MediaError(f"{p}: has no video stream")
        vs = c.streams.video[0]
        _check_codec(p, vs)
        vs.thread_type = "AUTO"
        tb = float(vs.time_base) if vs.time_base else None
        rate = vs.average_rate or vs.guessed_rate
        fps = float(rate) if rate else 30.0
        scale = None
        W, H = vs.codec_context.width or 0, vs.codec_context.height or 0
        if max_side and max(W, H) > max_side:
            s = max_side / max(W, H)
            scale = (max(2, int(round(W * s / 2)) * 2), max(2, int(round(H * s / 2)) * 2))
        out_w, out_h = scale or (W, H)
        if out_w * out_h:  # a 32-frame batch of 4K frames would hold 0.8 GB (twice, while stacking)
            batch_size = max(1, min(batch_size, MAX_BATCH_BYTES // (out_w * out_h * 3)))
        frames: list[np.ndarray] = []
        idx: list[int] = []
        times: list[float] = []
        t0 = None
        k = 0
        gaps: list[float] = []
        stopped = False
        try:
            for fr in c.decode(vs):
                if fr.pts is not None and tb is not None:
                    t = fr.pts * tb
                else:
                    t = k / fps
                if t0 is None:
                    t0 = t
                if scale is not None:
                    arr = fr.to_ndarray(format="rgb24", width=scale[0], height=scale[1])
                else:
                    arr = fr.to_ndarray(format="rgb24")
                if times:
                    gaps.append(t - t0 - times[-1])
                frames.append(arr)
                idx.append(k)
                times.append(t - t0)
                k += 1
                if len(frames) >= batch_size:
                    yield FrameBatch(np.stack(frames), np.asarray(idx, np.int64), np.asarray(times))
                    frames, idx, times = [], [], []
        except MediaError:
            raise
        except Exception as e:
            stopped = True
            log.warning("%s: decoding stopped at frame %d (%s: %s); using the %d frames read",
                        p, k, type(e).__name__, e, k)
        if frames:
            yield FrameBatch(np.stack(frames), np.asarray(idx, np.int64), np.asarray(times))
        if k == 0:
            raise MediaError(f"{p}: no decodable video frame")
        announced = _announced_frames(vs, fps)
        if not stopped and announced and k < announced - max(1, 0.01 * announced):
            log.warning("%s: %d frames decoded but the stream announces %d; the file looks truncated (the frames "
                        "read are used, the missing ones count as absent)", p, k, announced)
        if gaps:
            g = np.asarray(gaps)
            if g.size > 2 and (np.abs(g - 1.0 / fps) > 0.5 / fps).mean() > 0.01:
                log.warning("%s: variable frame rate (frame gaps %.4f..%.4f s); timestamps are used for alignment",
                            p, float(g.min()), float(g.max()))
    finally:
        c.close()


def prefetch(items: Iterator[T], depth: int = 1) -> Iterator[T]:
    """``items`` produced in a background thread, at most ``depth`` ahead of the consumer.

    Why: decoding (PyAV decodes and converts colours without the GIL) then overlaps with the consumer's work
    (MediaPipe, the face encoder) on a second core, while memory stays bounded to ``depth`` + 2 items (e.g.
    batches of frames). An exception of the producer is raised in the consumer; a consumer that stops early
    stops the producer at its next item.
    """
    import queue
    import threading

    q: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(item: tuple[str, Any]) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for x in items:
                if not put(("item", x)):
                    return
            put(("end", None))
        except BaseException as e:  # handed to the consumer
            put(("error", e))
        finally:
            close = getattr(items, "close", None)
            if callable(close):
                close()

    th = threading.Thread(target=produce, name="vaest-prefetch", daemon=True)
    th.start()
    try:
        while True:
            kind, x = q.get()
            if kind == "end":
                return
            if kind == "error":
                raise x
            yield x
    finally:
        stop.set()
        th.join()


def read_audio(path: str | Path, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Decode the first audio track as mono float32 at ``sr`` Hz, shape (N,).

    A file without an audio track returns an empty array and logs a warning; a corrupt tail returns what was
    decoded before it. Raises MediaError when the file cannot be opened.
    """
    import av

    p = Path(path)
    c = _open(p)
    try:
        if not c.streams.audio:
            log.warning("%s: no audio track; the audio modality is skipped for it", p)
            return np.zeros(0, dtype=np.float32)
        st = c.streams.audio[0]
        res = av.AudioResampler(format="flt", layout="mono", rate=sr)
        # decoded straight into one buffer sized from the container's duration with a margin (+10% + 30 s: a
        # concatenated MP4 decoded 12 s past its stated 632 s), so a long file is never held twice (decoded chunks
        # + their concatenation: +38 MB at 16 kHz for 10 minutes); pages of the margin that are never written are
        # never resident. Audio past the margin (a wrong or missing duration) grows the buffer by copying it.
        dur = float(st.duration * st.time_base) if st.duration and st.time_base else (c.duration or 0) / 1e6
        buf = np.empty(int(dur * 1.1 * sr) + 30 * sr if 0 < dur < 4 * 3600 else 0, np.float32)
        pos = 0

        def put(a: np.ndarray) -> None:
            nonlocal pos, buf
            if pos + len(a) > len(buf):
                grown = np.empty(max(pos + len(a), 2 * len(buf), 60 * sr), np.float32)
                grown[:pos] = buf[:pos]
                buf = grown
            buf[pos:pos + len(a)] = a
            pos += len(a)

        try:
            for fr in c.decode(st):
                for out in res.resample(fr):
                    put(out.to_ndarray().reshape(-1))
            for out in res.resample(None):
                put(out.to_ndarray().reshape(-1))
        except Exception as e:
            log.warning("%s: audio decoding stopped early (%s: %s); using %.1f s read", p, type(e).__name__, e,
                        pos / sr)
        wav = buf[:pos]
        bad = 0
        for i in range(0, len(wav), 1 << 20):  # non-finite samples, block by block (no mask of the whole file)
            blk = wav[i:i + (1 << 20)]
            nf = ~np.isfinite(blk)
            if nf.any():
                bad += int(nf.sum())
                blk[nf] = 0.0
        if bad:
            log.warning("%s: %d non-finite audio samples set to 0", p, bad)
        return wav
    finally:
        c.close()


def fps_or_default(fps: float | None, default: float = 30.0) -> float:
    """A usable frame rate (``default`` when unknown or not finite)."""
    if fps is None or not math.isfinite(fps) or fps <= 0:
        return default
    return float(fps)
