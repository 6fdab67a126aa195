"""The floor of each prediction path: the least work any implementation must do on a video, in one Python process.

- ``face``: PyAV decode to RGB at the working resolution (a frame larger than ``vaest.media.WORKING_SIDE`` on
  its longer side is reduced by libswscale in the same conversion, with vaest's filter; smaller
  frames are converted as they are), MediaPipe full-range face detection on every ``detect_every``-th frame and
  FaceMesh in video mode (its own tracking between frames) on every frame. Nothing else: no crops, no frame
  encoder, no files written.
- ``audio``: PyAV decode of the audio track to 16 kHz mono and the log-mel encoder (``lmfb``) alone.

Run as its own process by :mod:`benchmarks.run` (so its start-up and memory are its own); prints one line
``FLOOR {json}`` with the seconds of each stage (model set-up excluded) and the frames or samples seen.

Usage: ``python benchmarks/floor.py face|audio MEDIA [--detect-every 3]``
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any


def face_floor(path: Path, detect_every: int = 3, working_side: int | None = None) -> dict[str, Any]:
    """Seconds spent decoding (with the reduction to the working size), detecting and meshing every frame of
    ``path`` (set-up of the models excluded).

    Returns ``{"frames", "decode_s", "detect_s", "mesh_s", "seconds", "size"}`` (``seconds`` = the three summed;
    ``size`` the frames' width x height).
    """
    import av
    import mediapipe as mp

    from vaest.media import REDUCE_FILTER, WORKING_SIDE, working_size

    side = WORKING_SIDE if working_side is None else working_side

    det = mp.solutions.face_detection.FaceDetection(model_selection=1, min_detection_confidence=0.5)
    mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=False, max_num_faces=1, refine_landmarks=True)
    t_dec = t_det = t_mesh = 0.0
    n = 0
    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        vs.thread_type = "AUTO"
        it = c.decode(vs)
        size = None
        while True:
            t0 = time.perf_counter()
            try:
                fr = next(it)
            except StopIteration:
                break
            if size is None:
                size = working_size(fr.width, fr.height, 1.0, side)
            if size != (fr.width, fr.height):
                frame = fr.reformat(width=size[0], height=size[1], format="rgb24",
                                    interpolation=REDUCE_FILTER).to_ndarray()
            else:
                frame = fr.to_ndarray(format="rgb24")
            t1 = time.perf_counter()
            if n % detect_every == 0:
                det.process(frame)
            t2 = time.perf_counter()
            mesh.process(frame)
            t3 = time.perf_counter()
            t_dec, t_det, t_mesh = t_dec + t1 - t0, t_det + t2 - t1, t_mesh + t3 - t2
            n += 1
    det.close()
    mesh.close()
    return {"frames": n, "decode_s": t_dec, "detect_s": t_det, "mesh_s": t_mesh, "seconds": t_dec + t_det + t_mesh,
            "detect_every": detect_every, "size": f"{size[0]}x{size[1]}" if size else ""}


def audio_floor(path: Path) -> dict[str, Any]:
    """Seconds to decode the audio track to 16 kHz mono and compute its log-mel spectrogram.

    Returns ``{"samples", "decode_s", "encode_s", "seconds"}``.
    """
    import av
    import numpy as np

    from vaest.features.audio import AUDIO_SR, log_mel_spectrogram

    t0 = time.perf_counter()
    parts = []
    with av.open(str(path)) as c:
        rs = av.AudioResampler(format="flt", layout="mono", rate=AUDIO_SR)
        for frame in c.decode(c.streams.audio[0]):
            for f in rs.resample(frame):
                parts.append(f.to_ndarray().reshape(-1))
        for f in rs.resample(None):
            parts.append(f.to_ndarray().reshape(-1))
    wav = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    t1 = time.perf_counter()
    log_mel_spectrogram(wav, AUDIO_SR)
    t2 = time.perf_counter()
    return {"samples": int(len(wav)), "decode_s": t1 - t0, "encode_s": t2 - t1, "seconds": t2 - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("path", choices=["face", "audio"])
    ap.add_argument("media", type=Path)
    ap.add_argument("--detect-every", type=int, default=3)
    a = ap.parse_args()
    res = face_floor(a.media, a.detect_every) if a.path == "face" else audio_floor(a.media)
    print("FLOOR " + json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
