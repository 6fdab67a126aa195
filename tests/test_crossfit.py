"""Cross-fitting (out-of-fold train predictions) and its use by fusion training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vaest.corpus import Corpus, Video, load_corpus
from vaest.errors import VaestError
from vaest.features.store import FeatureRecord, FeatureStore
from vaest.inference import load_predictions, save_predictions, write_run_json
from vaest.inference import crossfit_source
from vaest.tasks.crossfit import HOLDOUT, crossfit, fold_assignment
from vaest.timebase import TimeBase, TimeSeries


def _videos(n: int, two_person: bool = True) -> list[Video]:
    out = []
    for i in range(n):
        lab = np.zeros((100 + 10 * i, 2), np.float32)
        out.append(Video(f"v{i}", Path(f"/data/v{i}.mp4"), "train", 30.0, _labels=lab))
    if two_person:
        lab = np.zeros((500, 2), np.float32)
        out += [Video(f"duo_{s}", Path("/data/duo.mp4"), "train", 30.0, side=s, _labels=lab) for s in ("left", "right")]
    return out


def test_fold_assignment_keeps_media_together_is_deterministic_and_balanced() -> None:
    vids = _videos(7)
    a = fold_assignment(vids, 2, seed=3)
    assert a == fold_assignment(vids, 2, seed=3)
    flat = [i for f in a for i in f]
    assert sorted(flat) == sorted(v.id for v in vids) and len(flat) == len(set(flat))
    # both tracks of the two-person video in the same fold
    assert any({"duo_left", "duo_right"} <= set(f) for f in a)
    frames = {v.id: len(v.labels) for v in vids}
    loads = [sum(frames[i] for i in f) for f in a]
    assert max(loads) - min(loads) <= max(frames.values())  # greedy balance: within one group of each other
    with pytest.raises(VaestError, match="at least 2 folds"):
        fold_assignment(vids, 1)
    with pytest.raises(VaestError, match="training media"):
        fold_assignment(vids[:2], 3)


def _corpus(root: Path) -> Corpus:
    vids = _videos(5, two_person=False) + [Video("val0", Path("/data/val0.mp4"), "val", 30.0,
                                                 _labels=np.zeros((90, 2), np.float32))]
    return Corpus(vids, root)


def test_crossfit_predicts_each_train_video_with_the_model_that_did_not_see_it(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path / "corpus")
    calls: list[dict[str, str]] = []

    def fake_train(c: Corpus, out: Path) -> None:
        # what a training function sees: the held-out videos are out of the train split, still predicted
        splits = {v.id: v.split for v in c}
        calls.append(splits)
        trained_on = sorted(k for k, s in splits.items() if s == "train")
        code = float(len(calls))
        for v in c:
            n = len(v.labels)
            save_predictions(out, v.id, np.full((n, 2), code, np.float32), 30.0, emb=np.zeros((n, 3), np.float32),
                             meta={"trained_on": trained_on})
            FeatureStore(out).save("audio-tokens", v.id, FeatureRecord(
                TimeSeries(np.full((2, 4, 3), code, np.float32), TimeBase(hop=2.0, win=4.0))))
        write_run_json(out, modality="face")
        (out / "metrics.json").write_text("{}")

    run = tmp_path / "runs" / "face"
    cf = crossfit(fake_train, corpus, run, folds=2, seed=0)
    assert cf == run / "crossfit" and len(calls) == 2
    for k, splits in enumerate(calls):
        assert splits["val0"] == "val"  # validation untouched
        held = [i for i, s in splits.items() if s == HOLDOUT]
        for vid in held:
            rec = load_predictions(cf, vid)
            assert np.all(rec.values == k + 1)  # came from the fold that held it out
            assert vid not in rec.meta["trained_on"]
            assert np.all(FeatureStore(cf).load("audio-tokens", vid).values == k + 1)
    held_all = sorted(i for s in calls for i, x in s.items() if x == HOLDOUT)
    assert held_all == sorted(v.id for v in corpus.split("train"))
    assert not (cf / "preds" / "val0.npz").exists()
    assert crossfit_source(run, "v0") == cf and crossfit_source(run, "val0") == run
    # a rerun skips the finished folds
    crossfit(fake_train, corpus, run, folds=2, seed=0)
    assert len(calls) == 2
    # other folds than the finished ones: refused instead of mixing
    with pytest.raises(VaestError, match="other folds"):
        crossfit(fake_train, corpus, run, folds=3, seed=0)


def test_corpus_with_splits_and_load_corpus_passthrough(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path)
    view = corpus.with_splits({"v1": HOLDOUT})
    assert view.get("v1").split == HOLDOUT and corpus.get("v1").split == "train"
    assert np.array_equal(view.get("v1").labels, corpus.get("v1").labels)
    assert load_corpus(view) is view
    assert str(view) == str(tmp_path)


def test_fusion_trains_on_out_of_fold_predictions(tmp_path: Path) -> None:
    from test_fusion import make_synthetic_runs
    from vaest.inputs.fusion import build_fusion_data

    info = make_synthetic_runs(tmp_path, n_train=4, n_val=2, n_frames=120)
    corpus = load_corpus(info["corpus"])
    face = info["runs"]["face"]
    # out-of-fold predictions for two of the train videos only: recognisable constant values
    oof = [v.id for v in corpus.split("train")][:2]
    for vid in oof:
        rec = load_predictions(face, vid)
        save_predictions(face / "crossfit", vid, np.full_like(rec.values, 0.321), 30.0, emb=rec.extras["emb"],
                         mask=rec.mask)
    runs = {m: info["runs"][m] for m in ("face", "behavior")}
    plain = build_fusion_data(runs, corpus.videos, "raav")
    cf = build_fusion_data(runs, corpus.videos, "raav", crossfit=True)
    for s_plain, s_cf in zip(plain.sequences, cf.sequences):
        va_plain, va_cf = s_plain.inputs["face"][:, -2:], s_cf.inputs["face"][:, -2:]
        if s_cf.id in oof:
            assert np.allclose(va_cf, 0.321) and not np.allclose(va_plain, 0.321)
        else:  # the other train videos and all validation videos read the full run
            assert np.array_equal(va_plain, va_cf)


def test_fold_embeddings_are_mapped_into_the_full_models_space(tmp_path: Path) -> None:
    """A fold model whose embedding is an affine transform of the full model's: the fitted map undoes it."""
    from vaest.tasks.crossfit import _aligned, fit_alignment

    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 6))
    shift = rng.normal(size=6)
    full, fold = tmp_path / "full", tmp_path / "fold"
    truth = {}
    for i in range(4):
        e = rng.normal(size=(200, 6)).astype(np.float32)
        truth[f"v{i}"] = e
        save_predictions(full, f"v{i}", np.zeros((200, 2), np.float32), 30.0, emb=e)
        save_predictions(fold, f"v{i}", np.zeros((200, 2), np.float32), 30.0, emb=(e @ a + shift).astype(np.float32))
    fit = fit_alignment(FeatureStore(fold), FeatureStore(full), "preds", ["v0", "v1", "v2"], ridge=1e-6)
    assert fit is not None and fit[1] > 0.999
    # the video left out of the fit comes back in the full model's coordinates
    mapped = _aligned(FeatureStore(fold).load("preds", "v3"), "preds", fit[0]).extras["emb"]
    np.testing.assert_allclose(mapped, truth["v3"], atol=1e-3)
    assert fit_alignment(FeatureStore(fold), FeatureStore(full), "preds", ["nope"]) is None
