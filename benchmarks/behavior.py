"""Behavior benchmarks and development checks (not part of the product path).

- ``desc``: speed of the offline encoder (``behavior-desc`` on top of ``facetrack``) on a generated 640x480
  video with a real face photo: frames/s and segments/s with and without the descriptors.
- ``vlm``: segments/s of the VLM encoder for a model folder / hub id, or random weights of the real
  Qwen3-VL-4B shapes (``--preset 4b``, built from its config: no download), with the ``transformers`` or the
  ``vllm`` backend (``load_format=dummy``); with and without the 100-token description. Needs a GPU for real
  sizes (``--preset tiny`` runs anywhere).
- ``mamba``: forward (inference) and training-step speed of the behavior Mamba (reference size).
- ``synth``: DEVELOPMENT evaluation on a synthetic corpus: the Mamba on ``behavior-desc`` features against the
  per-segment ``frame-mlp`` baseline (no temporal model), validation CCC of both.

Usage: ``python benchmarks/behavior.py desc|vlm|mamba|synth [...] [--json OUT]``; each function returns a dict.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("vaest.benchmarks.behavior")


def _device_name(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def make_face_video(path: Path, seconds: float = 20.0, fps: int = 30, size: tuple[int, int] = (640, 480)) -> Path:
    """A test video: the astronaut photo's face (MediaPipe finds it) over a moving 'hand' box."""
    import av
    import cv2
    from skimage import data

    w, h = size
    face = cv2.resize(data.astronaut()[0:260, 120:380], (220, 220))
    c = av.open(str(path), "w")
    vs = c.add_stream("libx264", rate=fps)
    vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
    vs.options = {"preset": "ultrafast", "crf": "18"}
    for k in range(int(seconds * fps)):
        img = np.full((h, w, 3), 70, np.uint8)
        x0 = (w - 220) // 2 + int(6 * np.sin(k / 9))
        img[30:250, x0 : x0 + 220] = face
        hx = int(w / 2 + 180 * np.sin(k / 7))
        cv2.rectangle(img, (hx - 30, 320), (hx + 30, 400), (230, 190, 160), -1)
        for p in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
            c.mux(p)
    for p in vs.encode():
        c.mux(p)
    c.close()
    return path


def desc_speed(media: str | None = None, seconds: float = 20.0) -> dict[str, Any]:
    """Frames/s and segments/s of the offline encoder on one video: facetrack + behavior-desc together, and the
    time spent inside behavior-desc alone (its update/end calls are timed)."""
    from vaest.corpus import Video
    from vaest.features.base import create_extractor, process_media
    from vaest.media import probe

    tmp = Path(tempfile.mkdtemp())
    path = Path(media) if media else make_face_video(tmp / "face.mp4", seconds)
    vids = [Video("bench", path, "predict")]
    info = probe(path)
    ft, desc = create_extractor("facetrack"), create_extractor("behavior-desc")
    spent = [0.0]

    def timed(fn):
        def run(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[0] += time.perf_counter() - t
        return run

    desc.update, desc.end = timed(desc.update), timed(desc.end)  # type: ignore[method-assign]
    t0 = time.perf_counter()
    recs, n = process_media(path, vids, [ft, desc])
    total = time.perf_counter() - t0
    segs = len(recs[("behavior-desc", "bench")].values)
    return {"media": str(path), "size": [info.width, info.height], "device": _device_name("cpu"), "frames": n,
            "segments": segs, "seconds_total": round(total, 2), "seconds_desc": round(spent[0], 2),
            "frames_per_s_total": round(n / total, 1), "segments_per_s_total": round(segs / total, 2),
            "frames_per_s_desc_only": round(n / spent[0], 1), "segments_per_s_desc_only": round(segs / spent[0], 1),
            "face_rate": float(recs[("facetrack", "bench")].mask.mean())}


def vlm_speed(model: str | None = None, preset: str = "4b", backend: str = "transformers", segments: int = 16,
              batch_size: int = 4, device: str = "auto", frame_side: int = 448, new_tokens: int = 100) -> dict[str, Any]:
    """Segments/s of the VLM encoder (features only, and features + description) on random 16-frame clips."""
    import torch

    from vaest.vlm import VLMConfig, load_vlm, random_qwen3vl_config, save_random_qwen3vl, TransformersVLM

    rng = np.random.default_rng(0)
    h, w = frame_side * 3 // 4, frame_side
    clips = [rng.integers(0, 255, (16, h, w, 3), dtype=np.uint8) for _ in range(segments)]
    durs = [4.0] * segments
    path = model
    built = None
    if path is None:
        path = save_random_qwen3vl(tempfile.mkdtemp(prefix=f"qwen3vl-{preset}-"), preset, weights=False)
        log.info("random Qwen3-VL (%s shapes) in %s", preset, path)
    out: dict[str, Any] = {"model": model or f"random Qwen3-VL ({preset} shapes)", "backend": backend,
                           "segments": segments, "batch_size": batch_size, "frame": [h, w]}
    for gen in (False, True):
        cfg = VLMConfig(model=path, backend=backend, generate=gen, max_new_tokens=new_tokens, device=device,
                        batch_size=batch_size, vllm_load_format="dummy" if model is None else "auto")
        if backend == "transformers":
            if model is None and built is None:
                dev = "cuda" if (device == "auto" and torch.cuda.is_available()) else (device if device != "auto" else "cpu")
                dtype = torch.bfloat16 if dev.startswith("cuda") else torch.float32
                from transformers import Qwen3VLForConditionalGeneration

                with torch.device(dev):
                    built = Qwen3VLForConditionalGeneration(random_qwen3vl_config(preset)).to(dtype)
            vlm = TransformersVLM(cfg, model=built)
        else:
            vlm = load_vlm(cfg)
        vlm.encode(clips[:batch_size], durs[:batch_size])  # warm-up
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for i in range(0, segments, batch_size):
            vlm.encode(clips[i : i + batch_size], durs[i : i + batch_size])
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        secs = time.perf_counter() - t0
        key = "features+description" if gen else "features"
        out[key] = {"seconds": round(secs, 2), "segments_per_s": round(segments / secs, 3)}
        out["device"] = _device_name(getattr(vlm, "device", "cuda"))
        if torch.cuda.is_available():
            out["max_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        del vlm
    return out


def mamba_speed(batch: int = 8, seq: int = 16, input_dim: int = 64, device: str = "cpu", repeats: int = 5,
                threads: int = 2) -> dict[str, Any]:
    """Behavior Mamba (reference size): sequences/s for inference and for training steps (fwd+bwd+AdamW)."""
    import torch

    from vaest.models import create_model
    from vaest.models.mamba import selective_scan_kernel

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    m = create_model("behavior-mamba", input_dim=input_dim).to(device)
    x = torch.randn(batch, seq, input_dim, device=device)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-4, weight_decay=1e-3)

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    m.eval()
    with torch.no_grad():
        m(x=x)
        sync()
        t0 = time.perf_counter()
        for _ in range(repeats):
            m(x=x)
        sync()
    fwd = (time.perf_counter() - t0) / repeats
    m.train()
    loss = m(x=x)["va"].square().mean()
    loss.backward()
    t0 = time.perf_counter()
    for _ in range(repeats):
        opt.zero_grad()
        m(x=x)["va"].square().mean().backward()
        opt.step()
    sync()
    step = (time.perf_counter() - t0) / repeats
    return {"device": _device_name(device), "params": sum(p.numel() for p in m.parameters()),
            "batch": batch, "seq": seq, "cuda_kernel": bool(selective_scan_kernel()) and device.startswith("cuda"),
            "forward_ms": round(1000 * fwd, 1), "forward_sequences_per_s": round(batch / fwd, 1),
            "train_step_ms": round(1000 * step, 1), "train_sequences_per_s": round(batch / step, 1)}


def synth_eval(corpus: str, features: str, out: str, epochs: int = 100, extract: bool = True,
               seed: int = 0) -> dict[str, Any]:
    """DEVELOPMENT: behavior-desc features -> behavior Mamba vs the per-segment frame-mlp baseline."""
    from vaest.corpus import load_corpus
    from vaest.features.base import create_extractor, run_extraction
    from vaest.features.store import FeatureStore
    from vaest.tasks.behavior import behavior_train_config, train_behavior

    res: dict[str, Any] = {"corpus": corpus}
    if extract:
        t0 = time.perf_counter()
        rep = run_extraction(FeatureStore(features), [create_extractor("behavior-desc")], load_corpus(corpus).videos)
        res["extraction"] = {"seconds": round(time.perf_counter() - t0, 1), "summary": rep.summary()}
    for model in ("behavior-mamba", "frame-mlp"):
        r = train_behavior(corpus, features, Path(out) / model, model=model,
                           train_cfg=behavior_train_config(epochs=epochs, seed=seed))
        res[model] = {"metrics": r["metrics"], "best_epoch": r["best_epoch"], "seconds": round(r["seconds"], 1)}
    return res


def main() -> None:
    from vaest.progress import setup_logging

    setup_logging()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    d = sub.add_parser("desc")
    d.add_argument("--media")
    d.add_argument("--seconds", type=float, default=20.0)
    v = sub.add_parser("vlm")
    v.add_argument("--model", help="Qwen3-VL folder or hub id (default: random weights of --preset shapes)")
    v.add_argument("--preset", default="4b", choices=["4b", "tiny"])
    v.add_argument("--backend", default="transformers", choices=["transformers", "vllm"])
    v.add_argument("--segments", type=int, default=16)
    v.add_argument("--batch-size", type=int, default=4)
    v.add_argument("--device", default="auto")
    m = sub.add_parser("mamba")
    m.add_argument("--device", default="cpu")
    m.add_argument("--batch", type=int, default=8)
    m.add_argument("--input-dim", type=int, default=64)
    s = sub.add_parser("synth")
    s.add_argument("corpus")
    s.add_argument("--features", default="/tmp/vaest-behavior-feats")
    s.add_argument("--out", default="/tmp/vaest-behavior-runs")
    s.add_argument("--epochs", type=int, default=100)
    s.add_argument("--no-extract", action="store_true")
    for p in (d, v, m, s):
        p.add_argument("--json", help="also write the result here")
    a = ap.parse_args()
    if a.what == "desc":
        res = desc_speed(a.media, a.seconds)
    elif a.what == "vlm":
        res = vlm_speed(a.model, a.preset, a.backend, a.segments, a.batch_size, a.device)
    elif a.what == "mamba":
        res = mamba_speed(a.batch, input_dim=a.input_dim, device=a.device)
    else:
        res = synth_eval(a.corpus, a.features, a.out, a.epochs, not a.no_extract)
    text = json.dumps(res, indent=2)
    log.info("%s", text)
    if a.json:
        Path(a.json).write_text(text)


if __name__ == "__main__":
    main()
