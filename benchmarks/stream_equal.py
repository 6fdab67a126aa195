"""Training results of two checkouts on the same inputs: do the streamed inputs give the same floats?

``fusion``: RAAV (vaest and reference forms), DCMMoE and dcm-ref, 3 epochs each, on the fixed corpus of
tests/test_fusion_learning.py (``make_synthetic_runs``: face, behavior and audio runs with audio-token records;
written once by ``gen``). ``modalities``: audio (``feature_norm`` video and global) and behavior, 3 epochs (2 for
global audio), on a `vaest demo` output's corpus and feature store (DEMO/corpus, DEMO/features). Each writes
OUT/<name>/ run folders and OUT/digest.json: metrics, every epoch's loss and validation CCC, and a SHA-1 of
every exported array; ``compare`` says which entries are identical (timings left out). ``demo-fusion``: the
demo's RAAV and DCMMoE training with its settings on a copy of a demo output's modality runs (DEMO/runs).

Usage (run each with the checkout's ``src`` on PYTHONPATH)::

    PYTHONPATH=OLD/src python benchmarks/stream_equal.py gen DATA
    PYTHONPATH=OLD/src python benchmarks/stream_equal.py fusion DATA OUT_OLD
    PYTHONPATH=NEW/src python benchmarks/stream_equal.py fusion DATA OUT_NEW
    PYTHONPATH=NEW/src python benchmarks/stream_equal.py modalities DEMO OUT  # likewise old and new
    PYTHONPATH=NEW/src python benchmarks/stream_equal.py demo-fusion DEMO OUT  # likewise old and new
    python benchmarks/stream_equal.py compare OUT_OLD/digest.json OUT_NEW/digest.json
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np


def digest(run: Path) -> dict[str, Any]:
    """Metrics, per-epoch loss and validation CCC, and a SHA-1 over every array the run exported."""
    h = hashlib.sha1()
    for f in sorted(run.rglob("*.npz")):
        with np.load(f) as z:
            for k in sorted(z.files):
                if k != "meta":
                    h.update(f.name.encode() + k.encode() + np.ascontiguousarray(z[k]).tobytes())
    hist = json.loads((run / "history.json").read_text())
    return {"metrics": json.loads((run / "metrics.json").read_text()), "sha1": h.hexdigest(),
            "losses": [r["loss"] for r in hist["history"]], "val": [r["mean"] for r in hist["history"]]}


def run_all(jobs: dict[str, Callable[[Path], Any]], out: Path) -> None:
    res = {}
    for name, job in jobs.items():
        job(out / name)
        res[name] = digest(out / name)
        print(name, json.dumps(res[name]), flush=True)
    (out / "digest.json").write_text(json.dumps(res, indent=1))


def fusion_jobs(data: Path) -> dict[str, Callable[[Path], Any]]:
    from vaest.tasks.fusion import train_fusion
    from vaest.training import TrainConfig

    runs = {k: Path(v) for k, v in json.loads((data / "runs.json").read_text()).items()}
    jobs = {}
    for name, method, form, mcfg in [
            ("raav", "raav", "vaest", {"d_model": 32, "ffn": 64, "heads": 4}),
            ("raav-ref", "raav", "reference", {"d_model": 32, "ffn": 64, "heads": 4}),
            ("dcmmoe", "dcmmoe", "vaest", {"d_model": 32, "ffn": 64, "layers": 2}),
            ("dcm-ref", "dcm-ref", "vaest", {})]:
        def job(o: Path, method=method, form=form, mcfg=mcfg) -> Any:
            cfg = TrainConfig(epochs=3, lr=1e-3, batch_size=4, loss_weights=(0.7, 0.3), mse_weight=0.01, early_stop=5)
            return train_fusion(runs, data / "corpus", o, method=method, train_cfg=cfg, model_cfg=mcfg, win=150,
                                hop=75, form=form, features_root=runs["audio"],
                                val_smooth=(7, 13) if form == "reference" else None)
        jobs[name] = job
    return jobs


def modality_jobs(demo: Path) -> dict[str, Callable[[Path], Any]]:
    from vaest.corpus import load_corpus
    from vaest.tasks.audio import AudioTrainConfig, train_audio
    from vaest.tasks.behavior import behavior_train_config, train_behavior

    corpus = load_corpus(demo / "corpus")
    feats = demo / "features"
    return {
        "audio": lambda o: train_audio(feats, corpus, o, AudioTrainConfig(epochs=3, early_stop=5, seed=0)),
        "audio-global": lambda o: train_audio(feats, corpus, o, AudioTrainConfig(epochs=2, early_stop=5, seed=0,
                                                                                 feature_norm="global")),
        "behavior": lambda o: train_behavior(corpus, feats, o, train_cfg=dataclasses.replace(
            behavior_train_config(), epochs=3, early_stop=5, seed=0)),
    }


def demo_fusion_jobs(demo: Path) -> dict[str, Callable[[Path], Any]]:
    """The demo's own fusion training (``vaest demo`` defaults: 12 epochs, early stop 5, seed 0, lr 2e-4 for
    RAAV and 1e-4 for DCMMoE, DCMMoE d_model 128 without attention dropout, out-of-fold train predictions) on a
    copy of its modality runs (DEMO/runs/{face,behavior,audio}) and features."""
    from vaest.tasks.fusion import default_train_config, train_fusion

    runs = {m: demo / "runs" / m for m in ("face", "behavior", "audio")}

    def job(method: str) -> Callable[[Path], Any]:
        cfg = dataclasses.replace(default_train_config(method), epochs=12, early_stop=5, seed=0,
                                  lr=2e-4 if method == "raav" else 1e-4)
        mcfg = {"d_model": 128, "attn_dropout": 0.0} if method == "dcmmoe" else None
        return lambda o: train_fusion(runs, demo / "corpus", o, method, train_cfg=cfg, features_root=demo / "features",
                                      model_cfg=mcfg)

    return {"raav": job("raav"), "dcmmoe": job("dcmmoe")}


def compare(a_path: str, b_path: str) -> bool:
    def clean(d: Any) -> Any:
        return {k: clean(v) for k, v in d.items() if k != "train_seconds"} if isinstance(d, dict) else d

    a, b = (json.loads(Path(p).read_text()) for p in (a_path, b_path))
    same_all = True
    for k in a:
        same = clean(a[k]) == clean(b.get(k))
        same_all &= same
        print(f"{k}: {'identical' if same else 'DIFFERENT'}  mean CCC {a[k]['metrics']['mean']!r} / "
              f"{(b.get(k) or {}).get('metrics', {}).get('mean')!r}")
    return same_all


def main() -> None:
    cmd = sys.argv[1]
    if cmd == "compare":
        sys.exit(0 if compare(sys.argv[2], sys.argv[3]) else 1)
    import torch

    torch.set_num_threads(1)
    src = Path(sys.argv[2])
    if cmd == "gen":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from test_fusion import make_synthetic_runs

        d = make_synthetic_runs(src, n_train=8, n_val=3, n_test=2, n_frames=600, emb_dim=8, seed=3, audio_tokens=True)
        (src / "runs.json").write_text(json.dumps({k: str(v) for k, v in d["runs"].items()}))
        return
    import vaest

    print("vaest from", vaest.__file__, flush=True)
    jobs = {"fusion": fusion_jobs, "modalities": modality_jobs, "demo-fusion": demo_fusion_jobs}[cmd](src)
    run_all(jobs, Path(sys.argv[3]))


if __name__ == "__main__":
    main()
