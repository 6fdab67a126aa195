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


class _Clock:
    """Wall-clock and process CPU time of a block (CPU time counts every thread of this process, so
    frames per CPU-second is what one free core would do, whatever else shares the machine)."""

    def __enter__(self) -> "_Clock":
        self.w0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.wall = time.perf_counter() - self.w0
        self.cpu = time.process_time() - self.c0


def benchmark_face(video: str | Path | None = None, seconds: float = 10.0,
                   encoders: Sequence[str] = ("fer", "tiny", "grada"), grada_frames: int = 48,
                   batch_size: int = 64, max_frames: int = 900) -> dict[str, Any]:
    """Measure each stage of face extraction on one video.

    Args:
        video: media file; None = a synthetic ``seconds`` long video is written to a temporary folder.
        encoders: frame encoders to time on face crops (``grada`` with random weights: same cost).
        grada_frames: crops timed for ``grada`` (it is ~100x slower than ``fer`` on CPU).
        max_frames: frames kept in memory for the per-stage timings (decoding and the whole path use all).
    Returns:
        ``{"video", "frames", "size", "fps": {stage: frames per wall-clock second}, "fps_per_cpu_second":
        {stage: frames per CPU-second of this process}, "load_avg", "torch_threads", "cpus"}``.
    """
    import torch

    from vaest.corpus import Video
    from vaest.device import torch_threads
    from vaest.features.face import FaceEncoderExtractor, FaceTrackExtractor
    from vaest.features.face_encoders import create_encoder
    from vaest.features.face_geometry import crop_face
    from vaest.features.face_registry import ENCODERS
    from vaest.features.face_tracker import FaceTrackConfig, FaceTracker
    from vaest.features.base import run_extraction
    from vaest.features.mouth import MouthExtractor
    from vaest.features.store import FeatureStore
    from vaest.media import iter_frames, probe

    tmp = tempfile.TemporaryDirectory(prefix="vaest-bench-face-")
    try:
        if video is None:
            from vaest.corpus.synthetic import synthesize

            synthesize(Path(tmp.name) / "synth", n_videos=2, seconds=seconds, seed=0, workers=1)
            video = sorted((Path(tmp.name) / "synth" / "videos").glob("*.mp4"))[0]  # a one-person video
        video = Path(video)
        fps: dict[str, float] = {}
        cpu_fps: dict[str, float] = {}

        def record(stage: str, n_frames: int, clk: _Clock) -> None:
            fps[stage] = _rate(n_frames, clk.wall)
            cpu_fps[stage] = _rate(n_frames, clk.cpu)

        with _Clock() as clk:
            n = sum(len(b.index) for b in iter_frames(video, batch_size=32))
        record("decode", n, clk)
        # later stages run on frames held in memory (at most max_frames of them)
        held: list[np.ndarray] = []
        for b in iter_frames(video, batch_size=32):
            held.append(b.frames)
            if sum(len(h) for h in held) >= max_frames:
                break
        frames = np.concatenate(held)[:max_frames]
        n = len(frames)

        cfg = FaceTrackConfig()
        tr = FaceTracker(cfg, [None])
        tr.detect(frames[0])
        with _Clock() as clk:
            dets = [tr.detect(f) for f in frames]
        record("detect (full-range)", n, clk)
        boxes = [d[0][int(np.argmax((d[0][:, 2] - d[0][:, 0])))] if len(d[0]) else None for d in dets]
        track = tr.tracks[None]
        with_face = [(f, b) for f, b in zip(frames, boxes) if b is not None]
        with _Clock() as clk:
            for f, b in with_face:
                tr._mesh(track, f, b)
        record("facemesh (refined, on crops)", len(with_face), clk)
        tr.close()

        for every in (1, cfg.detect_every):
            tr = FaceTracker(FaceTrackConfig(detect_every=every), [None])
            with _Clock() as clk:
                res = tr.process(frames)[None]
            record(f"facetrack (detect every {every})", n, clk)
            tr.close()
        found = np.isfinite(res[0]).all(1)
        crops = [crop_face(f, b) for f, b, ok in zip(frames, res[0], found) if ok]
        crops = [c for c in crops if c is not None]

        for name in encoders:
            enc = ENCODERS[name]().eval() if name == "grada" else create_encoder(name)
            use = crops[:grada_frames] if name == "grada" else crops
            flip = enc.light
            threads = 1 if enc.light else None
            with torch_threads(threads):
                enc.encode(use[:4], flip=flip)
                with _Clock() as clk:
                    enc.encode(use, batch_size=batch_size, flip=flip)
            record(f"encoder {name}{' (+flip)' if flip else ''}", len(use), clk)

        v = Video(id=video.stem, media=video, split="predict")
        for label, extra in (("extract face (decode+facetrack+fer)", []), ("extract face + mouth", [MouthExtractor()])):
            store = FeatureStore(Path(tmp.name) / f"feats-{len(extra)}")
            with _Clock() as clk:
                rep = run_extraction(store, [FaceTrackExtractor(), FaceEncoderExtractor(), *extra], [v])
            record(label, rep.frames, clk)
        info = probe(video)
        return {"video": str(video), "frames": int(n), "size": [info.width, info.height], "video_fps": info.fps,
                "face_rate": float(found.mean()), "fps": fps, "fps_per_cpu_second": cpu_fps, "load_avg": list(os.getloadavg()),
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
        log.info("%s: %.1f frames/s wall (%.1fx real time), %.1f frames per CPU-second", stage, r,
                 r / (res["video_fps"] or 30.0), res["fps_per_cpu_second"][stage])
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
