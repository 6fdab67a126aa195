"""Decoding: video frames with their timestamps, and the audio track as 16 kHz mono float32.

Media is decoded once per video and streamed in batches to every extractor that needs frames, in display
orientation (the stream's display matrix, or the old ``rotate`` tag, applied; non-square pixels made square) and
at one working resolution (:data:`WORKING_SIDE`: large frames are reduced in the decoding thread by libswscale,
in the same pass that converts them to RGB), so that every stage sees what a player shows.
Tolerated with a warning: no audio track, variable frame rate, a corrupt tail (frames up to the damage are
returned). An unreadable file raises :class:`vaest.errors.MediaError` naming it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence, TypeVar

import numpy as np

from vaest.errors import MediaError

T = TypeVar("T")

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
MAX_BATCH_BYTES = 32 * 2**20  # decoded frames held per batch (32 frames of 480x360: 17 MB); larger frames get fewer
# The working resolution: frames whose longer side (in display orientation, pixels made square) exceeds this are
# reduced to it while decoding, and every stage works on that picture: detection, FaceMesh and the face
# encoder's crops too. 960 keeps a face that fills a third of a 16:9 picture's height at 180 px: three times the
# 48-64 px that the default encoders read (FER, mini-Xception), near FaceMesh's 256-px crop of the face with its
# margin; EfficientNet-class encoders (224-240 px) get their full input from close-ups (half the height). Crops
# from the full-size frames would tie the batches' memory to the source size for detail those encoders cannot
# use; a batch holds at most MAX_BATCH_BYTES (15 frames of 960x720) whatever the source.
WORKING_SIDE = 960
# libswscale filter of that reduction, done with the YUV -> RGB conversion in one pass: the cheapest of the ways
# measured on 2880x2160 H.264 (4.6 ms a frame against 10 for the area filter and 7 for OpenCV's area resize of
# the planes; docs/performance.md, "Phone and camera media"); the estimates of a 4K clip against its 720-line
# twin stay as close as with the area filter (tests/test_phone.py)
REDUCE_FILTER = "FAST_BILINEAR"


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
    orientation: Orientation | None = None
    sample_aspect: float = 1.0

    @property
    def display_size(self) -> tuple[int, int]:
        """(width, height) of the picture as a player shows it: pixels made square, then the orientation."""
        w, h = square_size(self.width, self.height, self.sample_aspect)
        return (self.orientation or Orientation()).display_size(w, h)

    def describe(self) -> dict[str, Any]:
        """The picture's geometry for a result's metadata: stored size, sample aspect ratio, orientation applied
        and the displayed size (the frames the stages see are this, reduced to the working size)."""
        o = self.orientation or Orientation()
        return {"stored_size": [self.width, self.height], "sample_aspect_ratio": round(self.sample_aspect, 6),
                "display_size": list(self.display_size), **o.describe()}


@dataclass(frozen=True)
class Orientation:
    """How the stored pixels of a video become the displayed picture: an optional transpose (rows <-> columns),
    then optional flips of the rows (upside down) and of the columns (mirror). The eight combinations are the
    eight orientations (rotations by 0/90/180/270 degrees, each optionally mirrored).

    Attributes:
        transpose, flip_rows, flip_cols: the operations, in this order, on a (H, W, C) frame.
        source: where it was read: ``display matrix`` (stream side data), ``rotate tag`` or ``none``.
    """

    transpose: bool = False
    flip_rows: bool = False
    flip_cols: bool = False
    source: str = "none"

    @classmethod
    def from_matrix(cls, m: Sequence[int], source: str = "display matrix") -> Orientation:
        """From a display matrix in FFmpeg's layout (9 integers ``a b u c d v x y w``; a stored pixel (p, q) is
        shown at (a p + c q, b p + d q) up to a shift). Angles that are not a multiple of 90 degrees are taken to
        the nearest one."""
        a, b, c, d = (float(m[i]) for i in (0, 1, 3, 4))
        if abs(a) + abs(d) >= abs(b) + abs(c):  # x' follows x: no transpose
            return cls(False, d < 0, a < 0, source)
        return cls(True, b < 0, c < 0, source)

    @classmethod
    def from_rotate_tag(cls, degrees: float) -> Orientation:
        """From the old ``rotate`` stream tag: the clockwise rotation (degrees) that shows the picture upright."""
        t = math.radians(-float(degrees))  # a clockwise turn is a negative (counter-clockwise) display rotation
        cos, sin = round(math.cos(t)), round(math.sin(t))
        return cls.from_matrix([cos, -sin, 0, sin, cos, 0, 0, 0, 1], "rotate tag")

    @property
    def identity(self) -> bool:
        return not (self.transpose or self.flip_rows or self.flip_cols)

    def display_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after the orientation of a stored (width, height) picture."""
        return (height, width) if self.transpose else (width, height)

    def apply(self, frame: np.ndarray) -> np.ndarray:
        """The displayed picture of a stored frame (H, W, C) -> (H', W', C), C-contiguous."""
        if self.identity:
            return frame
        out = frame.transpose(1, 0, 2) if self.transpose else frame
        if self.flip_rows:
            out = out[::-1]
        if self.flip_cols:
            out = out[:, ::-1]
        return np.ascontiguousarray(out)

    def describe(self) -> dict[str, Any]:
        """``rotation_cw`` (clockwise degrees, 0/90/180/270) then ``mirrored`` (left-right), and its ``source``."""
        probe_img = np.arange(6).reshape(2, 3, 1)
        got = self.apply(probe_img)
        for k in range(4):
            for mirror in (False, True):
                cand = np.rot90(probe_img, -k)
                cand = cand[:, ::-1] if mirror else cand
                if cand.shape == got.shape and (cand == got).all():
                    return {"rotation_cw": 90 * k, "mirrored": mirror, "orientation_source": self.source}
        raise AssertionError("unreachable: the eight orientations are covered")  # pragma: no cover


def square_size(width: int, height: int, sample_aspect: float) -> tuple[int, int]:
    """(width, height) of a stored picture with its pixels made square: the width times the sample aspect ratio."""
    if not (sample_aspect > 0 and math.isfinite(sample_aspect)) or abs(sample_aspect - 1.0) < 1e-3:
        return width, height
    return max(2, int(round(width * sample_aspect))), height


def working_size(width: int, height: int, sample_aspect: float = 1.0, max_side: int | None = WORKING_SIDE
                 ) -> tuple[int, int]:
    """(width, height), in the stored orientation, that a stored picture is scaled to: pixels made square, then
    reduced (never enlarged) so that the longer side is at most ``max_side`` (None or 0: no reduction)."""
    w, h = square_size(width, height, sample_aspect)
    if max_side and max(w, h) > max_side:
        s = max_side / max(w, h)
        w, h = max(2, int(round(w * s))), max(2, int(round(h * s)))
    return w, h


def _display_matrix(frame: Any) -> list[int] | None:
    """A decoded frame's display matrix (9 int32 in FFmpeg's layout), or None."""
    try:
        for sd in frame.side_data:
            if "DISPLAYMATRIX" in str(getattr(sd, "type", "")):
                raw = bytes(sd)
                if len(raw) >= 36:
                    return [int(x) for x in np.frombuffer(raw[:36], "<i4")]
    except Exception:  # side data this PyAV cannot read: no orientation from it
        return None
    return None


def orientation_of(stream: Any, frame: Any | None) -> Orientation:
    """The display orientation of a video stream: the display matrix of its (first) decoded ``frame`` (FFmpeg
    exports the container's matrix, e.g. MP4's track matrix, as frame side data), else the stream's old
    ``rotate`` tag (clockwise degrees), else none."""
    m = _display_matrix(frame) if frame is not None else None
    if m is not None:
        return Orientation.from_matrix(m)
    tag = (stream.metadata or {}).get("rotate")
    if tag not in (None, ""):
        try:
            return Orientation.from_rotate_tag(float(tag))
        except ValueError:
            log.warning("unreadable rotate tag %r; the picture is used as stored", tag)
    return Orientation()


def _sample_aspect(stream: Any) -> float:
    """The stream's sample (pixel) aspect ratio; 1.0 when unknown."""
    for src in (stream.codec_context, stream):
        try:
            sar = getattr(src, "sample_aspect_ratio", None)
        except Exception:  # some streams raise on unknown ratios
            sar = None
        if sar:
            return float(sar)
    return 1.0


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


def _check_file(p: Path, what: str = "media") -> None:
    """MediaError naming ``p`` when it is missing, a folder or empty."""
    if not p.exists():
        raise MediaError(f"{p}: no such file")
    if p.is_dir():
        raise MediaError(f"{p}: is a folder, not a{'n' if what[0] in 'aeiou' else ''} {what} file")
    if p.stat().st_size == 0:
        raise MediaError(f"{p}: file is empty")


def _open(path: Path):
    import av

    p = Path(path)
    _check_file(p)
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
        orient, sar = None, 1.0
        if vs is not None:
            sar = _sample_aspect(vs)
            first = None
            try:  # the display matrix travels as side data of the decoded frames: read the first one
                first = next(iter(c.decode(vs)), None)
            except Exception as e:  # a broken first frame: iter_frames says so; the orientation stays unknown
                log.debug("%s: first frame not decodable while probing (%s)", p, e)
            orient = orientation_of(vs, first)
        return MediaInfo(p, vs is not None, aus is not None, fps, n, duration, w, h,
                         int(aus.codec_context.sample_rate or 0) if aus is not None else 0, orient, sar)


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
    """Decode video frames in order, in batches, in display orientation and at the working resolution.

    Each frame is scaled once by libswscale (``frame.reformat`` with the :data:`REDUCE_FILTER` filter, in
    the thread that iterates this, e.g. :func:`prefetch`'s) from the decoder's YUV picture straight to an RGB
    array of the working size: pixels made square (sample aspect ratio), longer side at most ``max_side``. Then
    the stream's orientation (display matrix or ``rotate`` tag, :func:`orientation_of`) turns the small array.
    A frame that needs neither is converted as it is.

    Args:
        path: media file.
        batch_size: frames per batch (fewer for large frames: at most ``MAX_BATCH_BYTES`` per batch).
        max_side: the working resolution's longer side; None: :data:`WORKING_SIDE`; 0: full size.
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
        W, H = vs.codec_context.width or 0, vs.codec_context.height or 0
        sar = _sample_aspect(vs)
        if max_side is None:
            max_side = WORKING_SIDE
        out_w, out_h = working_size(W, H, sar, max_side)
        scale = (out_w, out_h) if (out_w, out_h) != (W, H) else None
        if out_w * out_h:  # a 32-frame batch of 4K frames would hold 0.8 GB (twice, while stacking)
            batch_size = max(1, min(batch_size, MAX_BATCH_BYTES // (out_w * out_h * 3)))
        orient: Orientation | None = None
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
                if orient is None:  # the first frame carries the display matrix
                    orient = orientation_of(vs, fr)
                    if not orient.identity:
                        log.info("%s: shown %s (%s); frames decoded in display orientation", p,
                                 ", ".join(f"{k} {v}" for k, v in orient.describe().items()
                                           if k != "orientation_source"), orient.source)
                if (fr.width, fr.height) != (W, H):  # a size change mid-stream: the working size follows it
                    W, H = fr.width, fr.height
                    out_w, out_h = working_size(W, H, sar, max_side)
                    scale = (out_w, out_h) if (out_w, out_h) != (W, H) else None
                if scale is not None:
                    arr = fr.reformat(width=scale[0], height=scale[1], format="rgb24",
                                      interpolation=REDUCE_FILTER).to_ndarray()
                else:
                    arr = fr.to_ndarray(format="rgb24")
                arr = orient.apply(arr)
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


# Still-image formats read as photos (by Pillow); the first frame of an animated file is used.
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
# EXIF orientation tag (0x0112) -> what it asks for, as (clockwise rotation, then mirrored left-right)
EXIF_ORIENTATIONS = {1: (0, False), 2: (0, True), 3: (180, False), 4: (180, True), 5: (90, True),
                     6: (90, False), 7: (270, True), 8: (270, False)}


@dataclass
class ImageInfo:
    """What a photo file says about its picture.

    Attributes:
        stored_size: (width, height) of the stored pixels.
        exif_orientation: the EXIF orientation tag (1-8; 1 when absent), already applied to the pixels returned.
        size: (width, height) of the picture as shown (after the orientation).
    """

    path: Path | None
    stored_size: tuple[int, int]
    exif_orientation: int
    size: tuple[int, int]

    def describe(self) -> dict[str, Any]:
        rot, mirror = EXIF_ORIENTATIONS.get(self.exif_orientation, (0, False))
        return {"stored_size": list(self.stored_size), "display_size": list(self.size), "rotation_cw": rot,
                "mirrored": mirror, "orientation_source": "exif" if self.exif_orientation != 1 else "none",
                "exif_orientation": self.exif_orientation}


def read_image(path: str | Path) -> tuple[np.ndarray, ImageInfo]:
    """A photo as an RGB array (H, W, 3) uint8 in display orientation (its EXIF orientation applied, as
    viewers show it; alpha dropped, grey and palette images expanded), and its :class:`ImageInfo`.

    Raises:
        MediaError: missing, empty or unreadable file (naming it).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    p = Path(path)
    _check_file(p, "image")
    try:
        with Image.open(p) as im:
            im.load()
            stored = im.size
            try:
                orient = int(im.getexif().get(0x0112, 1) or 1)
            except Exception:  # a broken EXIF block: the pixels as stored
                log.warning("%s: unreadable EXIF data; the picture is used as stored", p)
                orient = 1
            if orient not in EXIF_ORIENTATIONS:
                log.warning("%s: EXIF orientation %d is not one of 1-8; the picture is used as stored", p, orient)
                orient = 1
            shown = ImageOps.exif_transpose(im) if orient != 1 else im
            rgb = np.asarray(shown.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise MediaError(f"{p}: cannot read as an image ({type(e).__name__}: {e})") from None
    h, w = rgb.shape[:2]
    return np.ascontiguousarray(rgb), ImageInfo(p, (int(stored[0]), int(stored[1])), orient, (w, h))


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
