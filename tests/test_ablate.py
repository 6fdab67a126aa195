"""The ablation script (benchmarks/ablate.py): a --quick run end to end, its JSON and table, resuming, and the
``attn_span`` option of the reference face model it ablates."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[1]


def _ablate():
    spec = importlib.util.spec_from_file_location("vaest_bench_ablate", ROOT / "benchmarks" / "ablate.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_quick_ablation_writes_rows_table_and_doc(tmp_path):
    ab = _ablate()
    doc = tmp_path / "doc.md"
    doc.write_text(f"# Ablation\n\nbefore\n{ab.BEGIN}\nold table\n{ab.END}\nafter\n")
    out = tmp_path / "abl"
    res = ab.main(["--quick", "--out", str(out), "--doc", str(doc)])

    on_disk = json.loads((out / "ablation.json").read_text())
    assert on_disk["rows"] == json.loads(json.dumps(res["rows"]))
    quick = ab.quick_config(str(out))
    assert [f"{r['stage']}.{r['option']}" for r in res["rows"]] == list(quick.options)
    assert res["seeds"] == [0, 1]
    # every run of every row finished: two seeds of the reference and of each option, each with finite CCC
    configs = {(r["stage"], r["config"]) for r in res["runs"]}
    assert configs == {("face", "reference"), ("face", "attn_span"), ("fusion", "reference"), ("fusion", "moe"),
                       ("fusion", "crossfit"), ("behavior", "reference"), ("behavior", "model")}
    assert len(res["runs"]) == 2 * len(configs)
    for r in res["runs"]:
        assert all(math.isfinite(r[k]) and -1.0 <= r[k] <= 1.0 for k in ("mean", "valence", "arousal")), r
        assert (Path(r["run"]) / "metrics.json").exists()
    for row in res["rows"]:
        for side in ("reference", "with_option"):
            st = row[side]["mean"]
            assert st["n"] == 2 and st["min"] <= st["mean"] <= st["max"]
            runs = [r["mean"] for r in res["runs"] if r["stage"] == row["stage"]
                    and r["config"] == (row["option"] if side == "with_option" else "reference")]
            assert st["mean"] == pytest.approx(sum(runs) / 2)
        assert row["delta"]["mean"] == pytest.approx(row["with_option"]["mean"]["mean"]
                                                     - row["reference"]["mean"]["mean"])
        d = row["paired"]["mean"]
        assert d["n"] == 2 and d["min"] <= d["mean"] <= d["max"]
        assert row["verdict"] in ("helps", "hurts", "within spread")
    # the runs are what their row says: reference preset recorded, the option's value applied
    face_ref = json.loads((out / "runs/face/reference/seed0/run.json").read_text())
    assert face_ref["preset"]["name"] == "reference" and face_ref["model"] == "face-transformer-ref"
    assert json.loads((out / "runs/behavior/model/seed1/run.json").read_text())["model"] == "behavior-mamba"
    assert json.loads((out / "runs/fusion/moe/seed0/run.json").read_text())["method"] == "dcmmoe"
    fus = json.loads((out / "runs/fusion/crossfit/seed0/run.json").read_text())
    assert fus["method"] == "dcm-ref" and fus["crossfit"] is True
    assert json.loads((out / "runs/fusion/reference/seed0/run.json").read_text())["crossfit"] is False
    assert (out / "runs/face/reference/seed0/crossfit/crossfit.json").exists()

    table = (out / "ablation.md").read_text()
    body = [ln for ln in table.splitlines() if ln.startswith("| ") and not ln.startswith("| Stage")]
    assert len(body) == len(res["rows"])
    assert "| face | attn_span (`attn_span: 30`) |" in table
    text = doc.read_text()
    assert text.startswith("# Ablation\n\nbefore\n") and text.endswith(f"{ab.END}\nafter\n")
    assert "old table" not in text and table in text

    # resuming: every run is finished, so a rerun trains nothing and gives the same rows
    stamp = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*/seed*/metrics.json")}
    again = ab.main(["--quick", "--out", str(out)])
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*/seed*/metrics.json")} == stamp
    assert again["rows"] == res["rows"]


def test_verdict_compares_the_paired_difference_with_its_spread():
    ab = _ablate()
    d = ab.paired([0.10, 0.20, 0.30, math.nan], [0.15, 0.22, 0.36, 0.5])  # seed 3: reference missing
    assert d["n"] == 3 and d["mean"] == pytest.approx((0.05 + 0.02 + 0.06) / 3)
    assert d["min"] == pytest.approx(0.02) and d["max"] == pytest.approx(0.06)
    assert d["std"] == pytest.approx(0.0208167, abs=1e-6)  # sample std of (0.05, 0.02, 0.06)
    assert ab.verdict(d) == "helps"
    assert ab.verdict(ab.paired([0.1, 0.2, 0.3], [0.2, 0.1, 0.32])) == "within spread"
    assert ab.verdict(ab.paired([0.3, 0.3, 0.3], [0.2, 0.25, 0.22])) == "hurts"
    assert ab.verdict(ab.paired([0.3], [0.4])) == "one seed"
    assert ab.verdict(ab.paired([math.nan], [0.4])) == "not run"


def test_update_doc_needs_the_markers(tmp_path):
    from vaest.errors import VaestError

    ab = _ablate()
    p = tmp_path / "d.md"
    p.write_text("no markers\n")
    with pytest.raises(VaestError, match="d.md"):
        ab.update_doc(p, "| table |\n")


def test_reference_face_model_attn_span_is_local_and_off_by_default():
    from vaest.models.temporal import FaceTransformerRef, FaceTransformerRefConfig

    torch.manual_seed(0)
    kw = dict(input_dim=6, hidden_dim=16, heads=2, layers=2)
    local = FaceTransformerRef(FaceTransformerRefConfig(**kw, attn_span=3)).eval()
    full = FaceTransformerRef(FaceTransformerRefConfig(**kw)).eval()
    full.load_state_dict(local.state_dict())
    x = torch.randn(2, 24, 6)
    mask = torch.ones(2, 24, dtype=torch.bool)
    mask[1, 14:] = False
    base = local(x, mask=mask)["va"]
    assert torch.isfinite(base).all()  # padded frames attend to themselves: no empty softmax row
    far = x.clone()
    far[0, 23] += 10.0  # 2 layers x span 3: frames 0..16 cannot see frame 23
    with torch.no_grad():
        assert torch.equal(local(far, mask=mask)["va"][0, :17], base[0, :17])
        assert not torch.allclose(full(far, mask=mask)["va"][0, :17], full(x, mask=mask)["va"][0, :17])
        pad = x.clone()
        pad[1, 14:] += 10.0  # padded frames never reach the real ones
        assert torch.allclose(local(pad, mask=mask)["va"][1, :14], base[1, :14], atol=1e-6)
        # a span covering the whole window is the full model (the official one)
        wide = FaceTransformerRef(FaceTransformerRefConfig(**kw, attn_span=100)).eval()
        wide.load_state_dict(local.state_dict())
        assert torch.allclose(wide(x, mask=mask)["va"][:, :14], full(x, mask=mask)["va"][:, :14], atol=1e-5)
