"""Evaluation report: stage table (raw, filled, smoothed) per run, JSON, Markdown and PNG plots."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_fusion import make_synthetic_runs

from vaest.corpus import load_corpus
from vaest.inference import evaluate_predictions
from vaest.report import STAGES, evaluate_runs, format_markdown, stage_scores, write_report


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    s = make_synthetic_runs(root, n_train=2, n_val=3, n_frames=300, emb_dim=4, seed=5)
    from vaest.tasks.late import late_fusion

    late = root / "runs" / "late"
    late_fusion(s["runs"], s["corpus"], late, method="grid", step=0.1)
    s["late"] = late
    return s


def test_stage_rows_follow_their_definitions(runs):
    c = load_corpus(runs["corpus"])
    rows = stage_scores(runs["runs"]["face"], c, "val")
    assert [r["stage"] for r in rows] == list(STAGES)
    by = {r["stage"]: r for r in rows}
    # raw = the stored predictions, as the basic evaluate scores them
    assert by["raw"]["mean"] == pytest.approx(evaluate_predictions(runs["runs"]["face"], c, "val")["mean"])
    # the synthetic face holds stale values where hidden: filling from the nearest visible frame changes them
    assert by["filled"]["mean"] != pytest.approx(by["raw"]["mean"])
    # smoothing with kernels chosen on this split cannot do worse than kernel 1 (which is a candidate)
    assert by["smoothed"]["mean"] >= by["filled"]["mean"] - 1e-9
    assert len(by["smoothed"]["kernels"]) == 2 and all(k % 2 == 1 for k in by["smoothed"]["kernels"])
    fixed = stage_scores(runs["runs"]["face"], c, "val", kernels=(7, 13))
    assert fixed[2]["kernels"] == [7, 13]


def test_report_writes_markdown_json_and_pngs(runs, tmp_path):
    all_runs = [*runs["runs"].values(), runs["late"]]
    rows = evaluate_runs(all_runs)
    assert len(rows) == 3 * len(all_runs)
    md = format_markdown(rows)
    assert md.count("\n") == len(rows) + 1 and "smoothed" in md and "late" in md
    path = write_report(rows, all_runs, tmp_path / "rep")
    text = path.read_text()
    assert path.name == "report.md" and "| run |" in text and "late (grid)" in text
    pngs = sorted(p.name for p in (tmp_path / "rep").glob("*.png"))
    assert sum(p.startswith("curves_") for p in pngs) == 3
    assert "weights_late.png" in pngs
    for p in pngs:
        assert f"]({p})" in text
        assert (tmp_path / "rep" / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    scores = json.loads((tmp_path / "rep" / "scores.json").read_text())
    assert len(scores) == len(rows)


def test_cli_evaluate_keeps_metrics_and_adds_stages(runs, tmp_path):
    from typer.testing import CliRunner

    from vaest.cli import app

    face = runs["runs"]["face"]
    out = tmp_path / "scores.json"
    res = CliRunner().invoke(app, ["evaluate", str(face), str(runs["late"]), "--json", str(out),
                                   "--report", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    m = json.loads((face / "metrics.json").read_text())
    assert set(m) == {"valence", "arousal", "mean"}
    js = json.loads(out.read_text())
    assert js[str(face)]["mean"] == pytest.approx(m["mean"])
    assert set(js[str(face)]["stages"]) == set(STAGES)
    assert (tmp_path / "rep" / "report.md").exists()
    assert np.isfinite(js[str(runs["late"])]["stages"]["smoothed"]["mean"])
