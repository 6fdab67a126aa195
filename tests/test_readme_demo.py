"""The README's demo table is generated from the committed demo metrics (docs/demo/metrics-seed<N>.json) by
scripts/demo_table.py; the claim that a fusion beats every single modality is made only from test scores of at
least three seeds where it holds in each."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from vaest.errors import VaestError
from vaest.pipeline import DEMO_RUNS, demo_table, load_demo_metrics, readme_demo_block

ROOT = Path(__file__).resolve().parents[1]


def test_readme_demo_table_is_generated_from_the_committed_metrics():
    metrics = load_demo_metrics(ROOT / "docs" / "demo")
    assert all(m["reported"] == "test" and m["chosen_on"] == "val" for m in metrics)
    assert readme_demo_block((ROOT / "README.md").read_text(encoding="utf-8")) == demo_table(metrics), \
        "README demo table is stale: run `PYTHONPATH=src python scripts/demo_table.py`"


def _metrics(seed: int, scores: dict[str, float]) -> dict:
    stage = {"valence": 0.5, "arousal": 0.5}
    runs = {n: {"modality": n, "test": {"raw": {**stage, "mean": s}, "smoothed": {**stage, "mean": s}},
                "val": {"raw": {**stage, "mean": s + 0.1}, "smoothed": {**stage, "mean": s + 0.1}}}
            for n, s in scores.items()}
    return {"reported": "test", "chosen_on": "val", "runs": runs, "seconds": {"synth": 1.0}, "total_seconds": 1.0,
            "splits": {"val": {"videos": ["a"], "frames": 9}, "test": {"videos": ["b"], "frames": 9}},
            "config": {"seed": seed, "videos": 14, "seconds": 30.0}}


def test_fusion_claim_needs_three_seeds_and_every_seed():
    base = {n: 0.5 for n in DEMO_RUNS} | {"raav": 0.6, "face": 0.55}
    three = [_metrics(s, base) for s in range(3)]
    assert "raav beats every single modality in every seed on test" in demo_table(three)
    assert "raav beats every single modality in every seed" not in demo_table(three[:2])  # two seeds: no claim
    worse = copy.deepcopy(three)
    worse[1]["runs"]["raav"]["test"]["smoothed"]["mean"] = 0.54  # one seed where face wins
    text = demo_table(worse)
    assert "raav beats every single modality in 2 of 3 seed(s)" in text and "-0.010" in text
    assert "No demo metrics are committed yet" in demo_table([])  # no file, no figure
    bad = copy.deepcopy(three)
    bad[2]["reported"] = "val"
    with pytest.raises(VaestError, match="different splits"):
        demo_table(bad)
