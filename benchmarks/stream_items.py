"""What audio and behavior training hold in memory before their first batch, per hour of media.

Builds a manifest corpus of audio-only media (10-minute items, 30 fps labels) with a feature store holding, per
item, ``audio-lmfb`` (100 steps/s x 64, what ``vaest extract audio`` writes) and ``behavior-desc`` segment
features (one per 2 s, ``--behavior-dim`` wide: 2560 by default, a VLM hidden-state width), at each of
``--hours``. Each child is its own process under ``/usr/bin/time -v`` (peak RSS = its "Maximum resident set
size") and does what training does before its first batch: audio = ``vaest.tasks.audio.load_items`` and the
model's input normalisation (``build_model``); behavior = ``load_items``, ``fit_norm`` and ``to_sequence`` of
every item. The floor is the same imports alone. ``--old SRC`` runs another checkout's ``src`` on the same
stores.

Usage::

    python benchmarks/stream_items.py --hours 2,8 --old OLD_SRC --work /tmp/vaest-items
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ITEM_S = 600
FPS = 30


def build(root: Path, hours: float, behavior_dim: int, seed: int = 0) -> Path:
    """The corpus (``manifest.csv``, label files) and the store under ``root``."""
    from vaest.corpus.labels import write_va_file
    from vaest.features.segments import plan_segments, segment_base
    from vaest.features.store import FeatureRecord, FeatureStore
    from vaest.timebase import TimeBase, TimeSeries

    if (root / "built.json").exists():
        return root
    rng = np.random.default_rng(seed)
    store = FeatureStore(root / "store")
    n_items = max(2, int(round(hours * 3600 / ITEM_S)))
    rows = ["path,split,id,labels,fps"]
    n = ITEM_S * FPS
    segs = plan_segments(n, FPS)
    for i in range(n_items):
        vid = f"a{i:04d}"
        lab = np.tanh(np.cumsum(rng.standard_normal((n, 2)) * 0.05, 0)).astype(np.float32)
        write_va_file(root / f"{vid}.txt", lab)
        rows.append(f"{vid}.wav,{'val' if i % 5 == 0 else 'train'},{vid},{vid}.txt,{FPS}")
        feats = rng.standard_normal((ITEM_S * 100, 64), dtype=np.float32)
        store.save("audio-lmfb", vid, FeatureRecord(TimeSeries(feats, TimeBase(0.01, 0.025)), {},
                                                    {"duration": float(ITEM_S), "has_video": False}))
        x = rng.standard_normal((len(segs), behavior_dim), dtype=np.float32)
        ext = {"start": np.array([s.start for s in segs]), "end": np.array([s.end for s in segs])}
        store.save("behavior-desc", vid, FeatureRecord(TimeSeries(x, segment_base()), ext,
                                                       {"n_frames": n, "fps": float(FPS)}))
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    (root / "built.json").write_text(json.dumps({"hours": hours, "items": n_items}))
    return root


def child(task: str, root: Path) -> None:
    """Load what ``task`` training holds before its first batch; print a JSON line."""
    c0 = time.process_time()
    from vaest.corpus import load_corpus
    from vaest.features.store import FeatureStore

    corpus = load_corpus(root / "manifest.csv")
    store = FeatureStore(root / "store")
    if task == "floor":
        import vaest.tasks.audio  # noqa: F401
        import vaest.tasks.behavior  # noqa: F401
        print(json.dumps({"items": 0}))
        return
    if task == "audio":
        from vaest.tasks.audio import AudioTrainConfig, build_model, load_items

        cfg = AudioTrainConfig(filter=False)
        items, _ = load_items(store, corpus, cfg)
        build_model(cfg, items, store)
    else:
        from vaest.inputs.behavior import load_items, to_sequence
        from vaest.inputs.settings import BehaviorInputs
        from vaest.tasks.behavior import fit_norm

        items, _ = load_items(list(corpus), store, BehaviorInputs("desc"))
        norm = fit_norm([it for it in items if it.video.split == "train"])
        seqs = [to_sequence(it, norm) for it in items]
        assert len(seqs) == len(items)
    print(json.dumps({"items": len(items), "cpu_s": round(time.process_time() - c0, 2)}))


def measured(cmd: list[str], env: dict[str, str]) -> dict:
    load = os.getloadavg()[0]
    p = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"{cmd}: exit {p.returncode}\n{p.stderr[-3000:]}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr).group(1)) / 1024
    cpu = sum(float(re.search(rf"{k} time \(seconds\): ([\d.]+)", p.stderr).group(1)) for k in ("User", "System"))
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    return {"peak_rss_mb": round(rss), "process_cpu_s": round(cpu, 1), "load_avg_start": round(load, 2),
            **(json.loads(lines[-1]) if lines else {})}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hours", default="2,8")
    ap.add_argument("--behavior-dim", type=int, default=2560)
    ap.add_argument("--work", default="/tmp/vaest-items")
    ap.add_argument("--old", default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", default=None)
    ap.add_argument("--root", default=None)
    args = ap.parse_args()
    if args.child:
        child(args.child, Path(args.root))
        return
    here = Path(__file__).resolve()
    srcs = [("new", str(here.parents[1] / "src"))] + ([("old", args.old)] if args.old else [])
    results = []
    for h in [float(x) for x in args.hours.split(",")]:
        root = build(Path(args.work) / f"h{h:g}-d{args.behavior_dim}", h, args.behavior_dim)
        for task in ("floor", "audio", "behavior"):
            for name, src in srcs:
                if task == "floor" and name == "old":
                    continue
                env = {**os.environ, "PYTHONPATH": src, "VAEST_NO_PROGRESS": "1", "OMP_NUM_THREADS": "2"}
                r = measured([sys.executable, str(here), "--child", task, "--root", str(root)], env)
                r.update(task=task, code=name, hours=h, behavior_dim=args.behavior_dim)
                print(json.dumps(r), flush=True)
                results.append(r)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
