"""Generate small media files for tests (PyAV): no media is committed to the repository."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np


def make_video(path: Path, n_frames: int = 30, fps: int = 30, size: tuple[int, int] = (64, 48), audio: bool = True,
               audio_seconds: float | None = None, sr: int = 16000, tone_hz: float = 440.0,
               pts_seconds: list[float] | None = None, codec: str = "libx264") -> Path:
    """Write an H.264 (+ AAC) file whose frame k has mean brightness 4k mod 256 (frames identifiable).

    ``pts_seconds`` gives explicit frame start times (variable frame rate).
    """
    import av

    w, h = size
    c = av.open(str(path), "w")
    vs = c.add_stream(codec, rate=fps)
    vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
    vs.options = {"preset": "ultrafast", "crf": "10"}
    if pts_seconds is not None:
        vs.codec_context.time_base = Fraction(1, 1000)
    as_ = None
    if audio:
        as_ = c.add_stream("aac", rate=sr)
        as_.layout = "mono"
    for k in range(n_frames):
        img = np.full((h, w, 3), (4 * k) % 256, dtype=np.uint8)
        fr = av.VideoFrame.from_ndarray(img, format="rgb24")
        if pts_seconds is not None:
            fr.pts = int(round(pts_seconds[k] * 1000))
            fr.time_base = Fraction(1, 1000)
        for p in vs.encode(fr):
            c.mux(p)
    for p in vs.encode():
        c.mux(p)
    if as_ is not None:
        secs = audio_seconds if audio_seconds is not None else n_frames / fps
        t = np.arange(int(secs * sr)) / sr
        wav = (0.3 * np.sin(2 * np.pi * tone_hz * t)).astype(np.float32)
        step = 1024
        for i in range(0, len(wav), step):
            chunk = wav[i : i + step]
            af = av.AudioFrame.from_ndarray(chunk[None, :], format="flt", layout="mono")
            af.sample_rate = sr
            af.pts = i
            for p in as_.encode(af):
                c.mux(p)
        for p in as_.encode():
            c.mux(p)
    c.close()
    return Path(path)


def write_frames(path: Path, frames: list[np.ndarray], fps: int = 30, crf: int = 16, rotation: int | None = None,
                 hflip: bool = False, sar: Fraction | None = None) -> Path:
    """Write RGB frames (H, W, 3) uint8 as a near-lossless H.264 file (no audio).

    ``rotation`` / ``hflip``: a display matrix (counter-clockwise degrees, then a mirror), as phones write;
    ``sar``: a sample aspect ratio (non-square pixels)."""
    import av

    c = av.open(str(path), "w")
    vs = c.add_stream("libx264", rate=fps)
    vs.width, vs.height, vs.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
    vs.options = {"preset": "ultrafast", "crf": str(crf)}
    if rotation is not None or hflip:
        vs.set_display_rotation(rotation or 0, hflip=hflip)
    if sar is not None:
        vs.codec_context.sample_aspect_ratio = sar
    for f in frames:
        for p in vs.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
            c.mux(p)
    for p in vs.encode():
        c.mux(p)
    c.close()
    return Path(path)


def make_wav(path: Path, seconds: float = 2.0, sr: int = 22050, tone_hz: float = 220.0) -> Path:
    import soundfile as sf

    t = np.arange(int(seconds * sr)) / sr
    sf.write(str(path), 0.2 * np.sin(2 * np.pi * tone_hz * t), sr)
    return Path(path)


def count_frames(path: Path) -> int:
    """Number of decodable video frames, counted with PyAV directly (the oracle the tests compare row counts with)."""
    import av

    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(c.streams.video[0]))
