"""Face extraction speed, stage by stage (frames per second on this machine).

Stages: decoding (PyAV -> RGB), MediaPipe face detection alone (full-range model), FaceMesh alone (on face
crops), the face tracker (detection every frame, and every ``detect_every`` frames with FaceMesh tracking in
between), each frame encoder on face crops, and the whole ``vaest extract face`` path (decode + facetrack +
fer encoder, and + mouth) through :func:`vaest.features.base.run_extraction`.

Usage: ``python benchmarks/face.py [--video PATH] [--seconds 10] [--json out.json]``; without ``--video`` a
synthetic video (480x360, 30 fps) is generated first.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

log = logging.getLogger("vaest.benchmarks.face")


def _rate(n: int, seconds: float) -> float:
    return float(n / seconds) if seconds > 0 else float("nan")


def benchmark_face(video: str | Path | None = None, seconds: float = 10.0,
                   encoders: Sequence[str] = ("fer", "tiny", "grada"), grada_frames: int = 48,
                   batch_size: int = 64) -> dict[str, Any]:
    """Measure each stage of face extraction on one video.

    Args:
        video: media file; None = a synthetic ``seconds`` long video is written to a temporary folder.
        encoders: frame encoders to time on face crops (``grada`` with random weights: same cost).
        grada_frames: crops timed for ``grada`` (it is ~100x slower than ``fer`` on CPU).
    Returns:
        ``{"video", "frames", "size", "fps": {stage: frames/s}, "load_avg", "torch_threads"}``.
    """
    import torch

    from vaest.corpus import Video
    from vaest.features import face as F
    from vaest.features.base import run_extraction
    from vaest.features.mouth import MouthExtractor
    from vaest.features.store import FeatureStore
    from vaest.media import iter_frames, probe

    tmp = tempfile.TemporaryDirectory(prefix="vaest-bench-face-")
    try:
        if video is None:
            from vaest.corpus.synthetic import synthesize

            synthesize(Path(tmp.name) / "synth", n_videos=1, seconds=seconds, seed=0, workers=1)
            video = next((Path(tmp.name) / "synth" / "videos").glob("*.mp4"))
        video = Path(video)
        fps: dict[str, float] = {}

        t0 = time.perf_counter()
        frames = np.concatenate([b.frames for b in iter_frames(video, batch_size=32)])
        fps["decode"] = _rate(len(frames), time.perf_counter() - t0)
        n = len(frames)

        cfg = F.FaceTrackConfig()
        tr = F.FaceTracker(cfg, [None])
        tr.detect(frames[0])
        t0 = time.perf_counter()
        dets = [tr.detect(f) for f in frames]
        fps["detect (full-range)"] = _rate(n, time.perf_counter() - t0)
        boxes = [d[0][int(np.argmax((d[0][:, 2] - d[0][:, 0])))] if len(d[0]) else None for d in dets]
        track = tr.tracks[None]
        with_face = [(f, b) for f, b in zip(frames, boxes) if b is not None]
        t0 = time.perf_counter()
        for f, b in with_face:
            tr._mesh(track, f, b)
        fps["facemesh (refined, on crops)"] = _rate(len(with_face), time.perf_counter() - t0)
        tr.close()

        for every in (1, cfg.detect_every):
            tr = F.FaceTracker(F.FaceTrackConfig(detect_every=every), [None])
            t0 = time.perf_counter()
            res = tr.process(frames)[None]
            fps[f"facetrack (detect every {every})"] = _rate(n, time.perf_counter() - t0)
            tr.close()
        found = np.isfinite(res[0]).all(1)
        crops = [F.crop_face(f, b) for f, b, ok in zip(frames, res[0], found) if ok]
        crops = [c for c in crops if c is not None]

        for name in encoders:
            enc = F._ENCODERS[name]().eval() if name == "grada" else F.create_encoder(name)
            use = crops[:grada_frames] if name == "grada" else crops
            flip = enc.light
            threads = 1 if enc.light else None
            with F.torch_threads(threads):
                enc.encode(use[:4], flip=flip)
                t0 = time.perf_counter()
                enc.encode(use, batch_size=batch_size, flip=flip)
            fps[f"encoder {name}{' (+flip)' if flip else ''}"] = _rate(len(use), time.perf_counter() - t0)

        v = Video(id=video.stem, media=video, split="predict")
        for label, extra in (("extract face (decode+facetrack+fer)", []), ("extract face + mouth", [MouthExtractor()])):
            store = FeatureStore(Path(tmp.name) / f"feats-{len(extra)}")
            t0 = time.perf_counter()
            rep = run_extraction(store, [F.FaceTrackExtractor(), F.FaceEncoderExtractor(), *extra], [v])
            fps[label] = _rate(rep.frames, time.perf_counter() - t0)
        info = probe(video)
        return {"video": str(video), "frames": int(n), "size": [info.width, info.height], "video_fps": info.fps,
                "face_rate": float(found.mean()), "fps": fps, "load_avg": list(os.getloadavg()),
                "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count()}
    finally:
        tmp.cleanup()


def main() -> None:
    from vaest.progress import setup_logging

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--video", type=Path, default=None, help="media file (default: a generated synthetic video)")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of the generated video")
    ap.add_argument("--encoders", default="fer,tiny,grada", help="comma-separated frame encoders to time")
    ap.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    args = ap.parse_args()
    setup_logging()
    res = benchmark_face(args.video, args.seconds, tuple(e for e in args.encoders.split(",") if e))
    log.info("%s: %d frames %dx%d, face in %.0f%% (load average %.1f on %s CPUs)", res["video"], res["frames"],
             *res["size"], 100 * res["face_rate"], res["load_avg"][0], res["cpus"])
    for stage, r in res["fps"].items():
        log.info("%-40s %8.1f frames/s  (%.1fx real time)", stage, r, r / (res["video_fps"] or 30.0))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
