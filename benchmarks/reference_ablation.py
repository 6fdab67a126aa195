"""Ablation rows for the reference audio-fusion stages on a synthetic run set (development check).

Rows: the reference RAAV (``--preset reference``) against reference + vaest's prediction skip, and the reference
late-fusion subset search against vaest's Dirichlet weighting of all sets; 3 training seeds each, mean and
spread of the validation CCC (frames of the validation videos, raw predictions).
The modality runs are the synthetic ones of ``tests/test_fusion.py::make_synthetic_runs`` (face: truth + noise
where the face is visible; audio: truth while speaking; behavior: weak), so the rows say how each option
behaves on data whose reliability structure is known, not how it does on Aff-Wild2.

Usage: ``python benchmarks/reference_ablation.py [--epochs 15] [--json OUT]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
log = logging.getLogger("vaest.benchmarks.reference_ablation")


def _raav(runs: dict, out: Path, seed: int, epochs: int, pred_skip: bool) -> dict[str, float]:
    from vaest.presets import get_preset
    from vaest.tasks.fusion import train_fusion
    from vaest.tasks.fusion_presets import default_train_config, split_fusion_preset
    from vaest.config import build
    from vaest.training import TrainConfig
    import dataclasses

    p = get_preset("fusion-raav", "reference")
    tr, md, st = split_fusion_preset(p.values)
    cfg = build(TrainConfig, dataclasses.asdict(default_train_config("raav")), tr, {"epochs": epochs, "seed": seed})
    return train_fusion(runs["runs"], runs["corpus"], out, "raav", cfg, {**md, "pred_skip": pred_skip},
                        form="reference", val_smooth=tuple(st["val_smooth"]), preset="reference", crossfit=False)


def _late(runs: dict, out: Path, seed: int, method: str) -> dict[str, float]:
    from vaest.tasks.late import late_fusion

    return late_fusion(runs["runs"], runs["corpus"], out, method=method, n_samples=2000, seed=seed)["metrics"]


def _row(name: str, scores: list[dict[str, float]]) -> dict[str, Any]:
    a = np.array([[s["valence"], s["arousal"], s["mean"]] for s in scores])
    return {"row": name, "n": len(scores), "mean": a.mean(0).round(4).tolist(), "std": a.std(0).round(4).tolist()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch

    torch.set_num_threads(1)
    from test_fusion import make_synthetic_runs

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        runs = make_synthetic_runs(t / "runs", n_train=8, n_val=4, n_frames=450, emb_dim=8, audio_tokens=True)
        for skip in (False, True):
            res = [_raav(runs, t / f"raav_{skip}_{s}", s, args.epochs, skip) for s in range(3)]
            rows.append(_row("RAAV reference" + (" + pred_skip" if skip else ""), res))
        rows.append(_row("late reference (subset search, seeds 0-2)",
                         [_late(runs, t / f"late_ref_{s}", s, "reference") for s in range(3)]))
        rows.append(_row("late vaest dirichlet (all sets, seeds 0-2)",
                         [_late(runs, t / f"late_dir_{s}", s, "dirichlet") for s in range(3)]))
    for r in rows:
        print(f"| {r['row']} | {r['n']} | " + " | ".join(f"{m:.3f} ± {s:.3f}" for m, s in zip(r["mean"], r["std"]))
              + " |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
