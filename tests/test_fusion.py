"""Fusion models (RAAV, DCMMoE), fusion training from run folders, late fusion."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vaest.corpus.labels import write_va_file
from vaest.errors import FeatureError
from vaest.inference import load_predictions, save_predictions, write_run_json
from vaest.models import create_model
from vaest.sequences import predict_sequence
from vaest.training import TrainConfig

# ---------------------------------------------------------------------------------------------------------
# Synthetic modality runs (also used by the fusion dev script and tests/test_report.py)
# ---------------------------------------------------------------------------------------------------------


def smooth_noise(rng: np.random.Generator, n: int, width: float) -> np.ndarray:
    """A smooth random process (n,) with unit-ish scale (white noise through a Gaussian kernel)."""
    k = np.exp(-0.5 * (np.arange(-3 * width, 3 * width + 1) / width) ** 2)
    x = np.convolve(rng.normal(size=n + len(k)), k / np.sqrt((k**2).sum()), mode="same")[: n]
    return x / (x.std() + 1e-9)


def stretches(rng: np.random.Generator, n: int, share: float, min_len: int, max_len: int) -> np.ndarray:
    """(n,) bool with random runs covering about ``share`` of the frames."""
    m = np.zeros(n, dtype=bool)
    while m.mean() < share:
        L = int(rng.integers(min_len, max_len))
        s = int(rng.integers(0, max(1, n - L)))
        m[s : s + L] = True
    return m


def make_synthetic_runs(root: Path, n_train: int = 8, n_val: int = 4, n_frames: int = 600, fps: float = 30.0,
                        emb_dim: int = 16, seed: int = 0, audio_tokens: bool = False, n_test: int = 0) -> dict:
    """An ABAW-layout label corpus and three modality run folders with known reliability structure.

    face: truth + noise where the face is visible (mask False and stale values in hidden stretches);
    audio: truth (per second) + small noise while speaking, uninformative in silence; mask True throughout,
    extra ``reliability`` = speaking; behavior: weak (valence through posture, arousal barely).
    ``audio_tokens`` also writes the audio run's ``audio-tokens`` records as the audio task does (values
    (W, 4, H) per-second embeddings of 4 s / 2 s windows, mask = window with >= 1 s of speech, extra
    ``has_audio`` (W, 4)). ``n_test`` more videos (after train and val) go to a labelled ``Test_Set``.
    Returns {"corpus": root, "runs": {name: run}, "truth": {vid: dict}}.
    """
    rng = np.random.default_rng(seed)
    corpus = root / "corpus"
    ann = corpus / "annotations" / "VA_Estimation_Challenge"
    runs = {m: root / "runs" / m for m in ("face", "behavior", "audio")}
    proj = {m: rng.normal(size=(2, emb_dim)).astype(np.float32) for m in runs}
    truth = {}
    for i in range(n_train + n_val + n_test):
        split = "Train_Set" if i < n_train else "Validation_Set" if i < n_train + n_val else "Test_Set"
        vid = f"vid{i:02d}"
        n = n_frames
        y = np.stack([0.6 * np.tanh(smooth_noise(rng, n, 40)), 0.5 * np.tanh(smooth_noise(rng, n, 25))], 1)
        y = y.astype(np.float32)
        labels = y.copy()
        labels[:5] = np.nan
        write_va_file(ann / split / f"{vid}.txt", labels)
        hidden = stretches(rng, n, 0.3, n // 8, n // 4)
        speaking = stretches(rng, n, 0.45, int(2 * fps), int(5 * fps))
        # face: accurate where visible, stale (last value) where hidden
        f = y + rng.normal(scale=0.12, size=y.shape).astype(np.float32)
        f[:, 1] = 0.7 * f[:, 1]  # the face under-estimates arousal a little
        vis_idx = np.flatnonzero(~hidden)
        last = vis_idx[np.clip(np.searchsorted(vis_idx, np.arange(n), side="right") - 1, 0, None)]
        f = f[last]
        # audio: one value per second; informative only while speaking
        sec = (np.arange(n) / fps).astype(int)
        a = np.zeros_like(y)
        for s in np.unique(sec):
            fr = sec == s
            if speaking[fr].mean() > 0.5:
                a[fr] = y[fr].mean(0) + rng.normal(scale=0.05, size=2)
            else:
                a[fr] = rng.normal(scale=0.3, size=2)
        # behavior: weak and slow
        b = np.stack([0.5 * y[:, 0] + 0.25 * smooth_noise(rng, n, 30), 0.2 * y[:, 1] + 0.2 * smooth_noise(rng, n, 30)], 1)
        masks = {"face": ~hidden, "behavior": np.ones(n, bool), "audio": np.ones(n, bool)}
        for m, p in (("face", f), ("behavior", b.astype(np.float32)), ("audio", a)):
            emb = np.tanh(p @ proj[m] + rng.normal(scale=0.1, size=(n, emb_dim))).astype(np.float32)
            extras = {"reliability": speaking.astype(np.float32)} if m == "audio" else None
            save_predictions(runs[m], vid, p, fps, emb=emb, mask=masks[m], extras=extras)
            if m == "audio" and audio_tokens:
                _save_tokens(runs[m], vid, emb, speaking, fps)
        truth[vid] = {"va": y, "hidden": hidden, "speaking": speaking, "split": split}
    for m, r in runs.items():
        write_run_json(r, modality=m, corpus=str(corpus), features=str(root / "features"))
    return {"corpus": corpus, "runs": runs, "truth": truth}


def _save_tokens(run: Path, vid: str, emb: np.ndarray, speaking: np.ndarray, fps: float) -> None:
    from vaest.features.store import FeatureRecord, FeatureStore
    from vaest.timebase import TimeBase, TimeSeries
    from vaest.windows import window_starts

    sec = (np.arange(len(emb)) / fps).astype(int)
    n_sec = int(sec.max()) + 1
    per_sec = np.stack([emb[sec == j].mean(0) for j in range(n_sec)])
    spk_sec = np.array([speaking[sec == j].mean() for j in range(n_sec)])
    starts = window_starts(n_sec, 4, 2)
    tok = np.zeros((len(starts), 4, emb.shape[1]), np.float32)
    has = np.zeros((len(starts), 4), bool)
    for w, s0 in enumerate(starts):
        for k in range(4):
            if s0 + k < n_sec:
                tok[w, k], has[w, k] = per_sec[s0 + k], True
    ok = np.array([spk_sec[s0 : s0 + 4].sum() >= 1.0 for s0 in starts])
    FeatureStore(run).save("audio-tokens", vid, FeatureRecord(TimeSeries(tok, TimeBase(2.0, 4.0), ok),
                                                              {"has_audio": has}))


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small tensors on a shared 2-core machine: one intra-op thread avoids OpenMP spin contention."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def synth_runs(tmp_path_factory) -> dict:
    return make_synthetic_runs(tmp_path_factory.mktemp("fusion"), n_train=6, n_val=3, n_frames=360, emb_dim=8)


def _raav(**kw):
    cfg = dict(modalities=("face", "behavior"), in_dims=(10, 6), d_model=32, heads=4, ffn=64, dropout=0.0)
    cfg.update(kw)
    torch.manual_seed(0)
    m = create_model("raav", **cfg).eval()
    _live(m)
    return m


def _live(m):
    """Give the zero-initialised correction heads of a prediction-skip model random weights, so that every
    path of the model reaches the output (a freshly built one starts as the gated average of predictions)."""
    heads = [m.head] if hasattr(m, "head") else [e[-1] for e in m.experts.values()]
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for h in heads:
            h.weight.copy_(torch.randn(h.weight.shape, generator=g) * 0.3)
            h.bias.copy_(torch.randn(h.bias.shape, generator=g) * 0.3)


def _inputs(B=2, T=40, seed=0, audio=False):
    g = torch.Generator().manual_seed(seed)
    x = {"face": torch.randn(B, T, 10, generator=g), "face_mask": torch.rand(B, T, generator=g) > 0.3,
         "behavior": torch.randn(B, T, 6, generator=g), "behavior_mask": torch.rand(B, T, generator=g) > 0.3}
    if audio:
        U = 6
        x["audio_tokens"] = torch.randn(U, 4, 8, generator=g)
        tm = torch.rand(U, 4, generator=g) > 0.4
        tm[2] = False  # a window with no valid token
        tm[3] = True
        x["audio_token_mask"] = tm
        x["audio_index"] = torch.randint(-1, U, (B, T, 2), generator=g)
    return x


# ---------------------------------------------------------------------------------------------------------
# RAAV
# ---------------------------------------------------------------------------------------------------------


def test_gate_log_priors_and_masked_modalities_get_zero_weight():
    m = _raav()
    with torch.no_grad():  # a gate that scores every modality 0: the weights are the priors renormalised
        m.gate[-1].weight.zero_()
        m.gate[-1].bias.zero_()
    x = _inputs()
    w = m(**x)["weights"]
    both = x["face_mask"] & x["behavior_mask"]
    torch.testing.assert_close(w[both], torch.tensor([0.85, 0.15]).expand(int(both.sum()), 2))
    only_b = ~x["face_mask"] & x["behavior_mask"]
    assert only_b.any()
    assert torch.equal(w[only_b], torch.tensor([0.0, 1.0]).expand(int(only_b.sum()), 2))
    # priors enter as log-priors: scaling both priors leaves the weights unchanged
    m2 = _raav(priors=(8.5, 1.5))
    m2.load_state_dict({k: v for k, v in m.state_dict().items() if k != "log_prior"}, strict=False)
    torch.testing.assert_close(m2(**x)["weights"], w)


def test_masked_modality_has_exactly_zero_weight_and_no_influence():
    m = _raav()
    x = _inputs(seed=1)
    out = m(**x)
    w = out["weights"]
    assert torch.all(w[..., 0][~x["face_mask"]] == 0) and torch.all(w[..., 1][~x["behavior_mask"]] == 0)
    avail = x["face_mask"] | x["behavior_mask"]
    torch.testing.assert_close(w.sum(-1)[avail], torch.ones(int(avail.sum())))
    # what a masked frame holds cannot matter
    y = dict(x)
    y["face"] = torch.where(x["face_mask"][..., None], x["face"], torch.full_like(x["face"], 1e3))
    y["face"][~x["face_mask"]] = float("nan")
    assert torch.equal(m(**y)["va"], out["va"])


def test_frame_with_no_modality_is_finite_and_flagged():
    m = _raav()
    x = _inputs(seed=2)
    x["face_mask"][0, :10] = False
    x["behavior_mask"][0, :10] = False
    x["face"][0, :10] = float("nan")
    out = m(**x)
    assert torch.isfinite(out["va"]).all() and torch.isfinite(out["emb"]).all()
    assert out["fallback"][0, :10].all()
    assert torch.equal(out["fallback"], ~(x["face_mask"] | x["behavior_mask"]))
    assert torch.all(out["weights"][0, :10] == 0)
    # gradients stay finite with such frames in the batch
    m.train()
    m(**x)["va"].sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


def test_masked_audio_tokens_cannot_change_the_output():
    m = _raav(audio_dim=8)
    x = _inputs(seed=3, audio=True)
    ref = m(**x)["va"]
    y = dict(x)
    tok = x["audio_tokens"].clone()
    tok[~x["audio_token_mask"]] = torch.randn(int((~x["audio_token_mask"]).sum()), 8) * 100
    y["audio_tokens"] = tok
    assert torch.equal(m(**y)["va"], ref)
    # a valid token does matter (the audio path is live)
    z = dict(x)
    tok2 = x["audio_tokens"].clone()
    tok2[3] = torch.randn(4, 8)
    z["audio_tokens"] = tok2
    assert not torch.allclose(m(**z)["va"], ref)
    # frames whose windows are all invalid (or none) get nothing from audio: same as a model run without audio
    none = torch.full_like(x["audio_index"], -1)
    w = dict(x, audio_index=none)
    no_audio = {k: v for k, v in x.items() if not k.startswith("audio")}
    torch.testing.assert_close(m(**w)["va"], m(**no_audio)["va"])


# ---------------------------------------------------------------------------------------------------------
# DCMMoE
# ---------------------------------------------------------------------------------------------------------


def _dcm(**kw):
    cfg = dict(modalities=("face", "behavior", "audio"), in_dims=(10, 6, 8), d_model=32, heads=8, layers=5,
               ffn=64, dropout=0.0)
    cfg.update(kw)
    torch.manual_seed(0)
    m = create_model("dcmmoe", **cfg).eval()
    _live(m)
    return m


def test_dcmmoe_shapes_experts_and_masks():
    m = _dcm()
    assert len(m.blocks) == 5 and m.blocks[0].attn.h == 8
    x = _inputs(B=3, T=50, seed=4)
    x["audio"] = torch.randn(3, 50, 8)
    x["audio_mask"] = torch.rand(3, 50) > 0.5
    out = m(**x)
    assert out["va"].shape == (3, 50, 2) and out["emb"].shape == (3, 50, 32) and out["weights"].shape == (3, 50, 4)
    w = out["weights"]
    torch.testing.assert_close(w.sum(-1), torch.ones(3, 50))
    assert torch.all(w[..., 1][~x["behavior_mask"]] == 0) and torch.all(w[..., 2][~x["audio_mask"]] == 0)
    assert m.expert_names == ("face", "behavior", "audio", "cross")
    y = dict(x)
    y["audio"] = torch.where(x["audio_mask"][..., None], x["audio"], torch.full_like(x["audio"], 50.0))
    assert torch.equal(m(**y)["va"], out["va"])


@pytest.mark.parametrize("T", [50, 400, 1000])
def test_dcmmoe_windowed_inference_covers_every_frame(T):
    m = _dcm(modalities=("face", "behavior"), in_dims=(10, 6))
    rng = np.random.default_rng(0)
    inputs = {"face": rng.normal(size=(T, 10)).astype(np.float32), "face_mask": rng.random(T) > 0.2,
              "behavior": rng.normal(size=(T, 6)).astype(np.float32), "behavior_mask": np.ones(T, bool)}
    res = predict_sequence(m, inputs, win=400, hop=150, keys=("va", "emb", "weights"))
    assert res["va"].shape == (T, 2) and res["weights"].shape == (T, 3) and np.isfinite(res["va"]).all()
    # with exactly one window the overlap average is the plain forward pass
    if T == 400:
        with torch.no_grad():
            direct = m(**{k: torch.from_numpy(v)[None] for k, v in inputs.items()})["va"][0].numpy()
        np.testing.assert_allclose(res["va"], direct, atol=1e-6)
    # windows 400 / hop 150: frame 200 is covered by the windows starting at 0 and 150 only, and averages them
    if T == 1000:
        with torch.no_grad():
            w = [m(**{k: torch.from_numpy(v[s : s + 400])[None] for k, v in inputs.items()})["va"][0].numpy()
                 for s in (0, 150)]
        np.testing.assert_allclose(res["va"][200], 0.5 * (w[0][200] + w[1][50]), atol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# Training from run folders
# ---------------------------------------------------------------------------------------------------------


def test_build_fusion_data_aligns_audio_windows(synth_runs):
    from vaest.corpus import load_corpus
    from vaest.inputs.audio_windows import AUDIO_WIN_BASE, frame_window_index
    from vaest.inputs.fusion import build_fusion_data

    idx = frame_window_index(150, 30.0, AUDIO_WIN_BASE, 3)
    assert tuple(idx[0]) == (0, -1) and tuple(idx[59]) == (0, -1) and tuple(idx[60]) == (1, 0)
    assert tuple(idx[149]) == (2, 1)
    c = load_corpus(synth_runs["corpus"])
    data = build_fusion_data(synth_runs["runs"], c.videos, "raav")
    seq = data.sequences[0]
    t = synth_runs["truth"][seq.id]
    assert seq.inputs["face"].shape == (360, 10) and np.array_equal(seq.inputs["face_mask"], ~t["hidden"])
    assert data.audio_dim == 8 and data.table is not None
    # audio windows where the speaker is silent are unreliable: their frames are not 'available'
    spk = t["speaking"]
    assert data.available[seq.id]["audio"][spk].mean() > data.available[seq.id]["audio"][~spk].mean()


def test_build_fusion_data_reads_audio_token_records(tmp_path):
    from vaest.corpus import load_corpus
    from vaest.features.store import FeatureStore
    from vaest.inference import load_track
    from vaest.inputs.audio_windows import audio_windows
    from vaest.inputs.fusion import build_fusion_data

    s = make_synthetic_runs(tmp_path, n_train=1, n_val=1, n_frames=330, emb_dim=6, audio_tokens=True)
    rec = FeatureStore(s["runs"]["audio"]).load("audio-tokens", "vid00")
    aw = audio_windows(s["runs"]["audio"], "vid00", load_track(s["runs"]["audio"], "vid00"))
    assert aw.tokens.shape == (5, 4, 6) and np.array_equal(aw.tokens, rec.values)
    # 11 s of audio: the last window holds 3 seconds; unusable windows mask all their tokens
    assert np.array_equal(aw.token_mask, rec.extras["has_audio"] & rec.mask[:, None])
    assert not aw.token_mask[-1, 3]
    data = build_fusion_data(s["runs"], load_corpus(s["corpus"]).videos, "raav")
    seq = next(q for q in data.sequences if q.id == "vid00")
    idx = seq.inputs["audio_index"]
    rows = np.unique(idx[idx >= 0])
    np.testing.assert_array_equal(data.table.tokens[torch.from_numpy(rows)].numpy(), rec.values[rows - rows.min()])
    # the frame at 5.5 s lies in windows 1 ([2, 6)) and 2 ([4, 8))
    assert set(idx[int(5.5 * 30)] - rows.min()) == {1, 2}


def test_fusion_input_reads_the_rows_of_the_whole_input_from_disk(tmp_path):
    """A track stored in a run folder, 5 frames of 2-d emb with NaN and inf, read into a video grid of 7 frames
    (shorter track: zeros past its end) and of 3 frames (longer track: cut); the rows of every way of indexing
    equal the hand-written input ``[emb, va]`` with NaN -> 0 and inf -> float32's largest."""
    from vaest.features.store import RowView, StoredArray
    from vaest.inference import load_track
    from vaest.inputs.fusion import _modality_input
    from vaest.windows import take_window

    big = np.finfo(np.float32).max
    emb = np.array([[1, 2], [3, np.nan], [5, 6], [np.inf, 8], [9, 10]], np.float32)
    va = np.array([[.1, .2], [.3, .4], [np.nan, np.nan], [.7, .8], [.9, -1]], np.float32)
    save_predictions(tmp_path, "v", va, 30.0, emb=emb, mask=np.array([1, 1, 0, 1, 1], bool))
    t = load_track(tmp_path, "v")
    assert isinstance(t.emb, StoredArray)  # left on disk
    want = np.array([[1, 2, .1, .2], [3, 0, .3, .4], [5, 6, 0, 0], [big, 8, .7, .8], [9, 10, .9, -1],
                     [0, 0, 0, 0], [0, 0, 0, 0]], np.float32)
    x, mask = _modality_input(t, 7, 4)
    assert isinstance(x, RowView) and x.shape == (7, 4) and len(x) == 7
    np.testing.assert_array_equal(mask, [1, 1, 0, 1, 1, 0, 0])
    np.testing.assert_array_equal(x[:], want)
    np.testing.assert_array_equal(x[2:6], want[2:6])
    np.testing.assert_array_equal(x[np.array([6, 0, 3, 3, 5])], want[[6, 0, 3, 3, 5]])
    np.testing.assert_array_equal(x[-1], want[6])
    np.testing.assert_array_equal(x[::3], want[::3])
    pick = np.array([1, 0, 0, 1, 0, 0, 1], bool)  # a boolean mask selects rows (not rows 0 and 1)
    np.testing.assert_array_equal(x[pick], want[[0, 3, 6]])
    np.testing.assert_array_equal(x[pick, 1:3], want[[0, 3, 6], 1:3])
    np.testing.assert_array_equal(t.emb[pick[:5]], emb[[0, 3]])
    with pytest.raises(IndexError):
        t.emb[pick]
    # a window running past the end repeats the last row (the windowing helper, on the lazy input)
    w, valid = take_window(x, 5, 4)
    np.testing.assert_array_equal(w, want[[5, 6, 6, 6]])
    np.testing.assert_array_equal(valid, [1, 1, 0, 0])
    cut, cmask = _modality_input(t, 3, 4)
    np.testing.assert_array_equal(cut[:], want[:3])
    np.testing.assert_array_equal(cut[np.array([2, 1])], want[[2, 1]])
    np.testing.assert_array_equal(cmask, [1, 1, 0])
    with pytest.raises(IndexError):
        cut[np.array([3])]
    none, nmask = _modality_input(None, 4, 4)
    assert none.shape == (4, 4) and not none[1:3].any() and not nmask.any()
    with pytest.raises(FeatureError, match="width 4 differs from 6"):
        _modality_input(t, 7, 6)


def test_fusion_batches_from_disk_equal_those_of_inputs_in_memory(synth_runs):
    """build_fusion_data leaves every frame modality's embedding in the run folders; the training batches of both
    tasks (frame windows with audio tokens, reference samples of one audio window) and the windowed predictions
    are the same as from the whole inputs read into memory (the former path)."""
    from vaest.corpus import load_corpus
    from vaest.features.store import RowView, StoredArray
    from vaest.inputs.fusion import build_fusion_data, fuse
    from vaest.sequences import Sequence
    from vaest.tasks.fusion import FusionTask, WindowFusionTask

    c = load_corpus(synth_runs["corpus"])
    for method in ("raav", "dcmmoe"):
        data = build_fusion_data(synth_runs["runs"], c.videos, method)
        lazy = data.sequences
        for sq in lazy:
            for m in ("face", "behavior") + (("audio",) if method == "dcmmoe" else ()):
                x = sq.inputs[m]
                assert isinstance(x, RowView) and isinstance(x.parts[0], StoredArray), (method, m)
                rec = load_predictions(synth_runs["runs"][m], sq.id)  # the whole stored record, by hand
                whole = np.nan_to_num(np.concatenate([rec.extras["emb"], rec.values], 1, dtype=np.float32))
                np.testing.assert_array_equal(x[:], whole)
        eager = [Sequence(s.id, {k: v.read() if isinstance(v, RowView) else v for k, v in s.inputs.items()},
                          s.target, s.base, s.n_frames, s.fps, s.frame_labels) for s in lazy]
        assert all(isinstance(v, np.ndarray) for s in eager for v in s.inputs.values())
        if method == "raav":
            tasks = [WindowFusionTask(lazy[:4], [], ["face", "behavior"], data.table, data.audio_dim),
                     WindowFusionTask(eager[:4], [], ["face", "behavior"], data.table, data.audio_dim)]
        else:
            tasks = [FusionTask(lazy[:4], [], 100, 40, data.table), FusionTask(eager[:4], [], 100, 40, data.table)]
        a, b = (list(t.train_batches(np.random.default_rng(5), 3)) for t in tasks)
        assert len(a) == len(b) > 2
        for ba, bb in zip(a, b):
            assert ba.keys() == bb.keys()
            for k in ba:
                torch.testing.assert_close(ba[k], bb[k], rtol=0, atol=0, equal_nan=True, msg=f"{method} {k}")
        if method == "dcmmoe":
            model = create_model("dcmmoe", modalities=tuple(data.dims), in_dims=tuple(data.dims.values()),
                                 d_model=8, ffn=16, layers=1)
            data_eager = type(data)(eager, data.available, data.dims, data.table, data.audio_dim, data.split)
            for (va1, m1, e1), (va2, m2, e2) in zip(fuse(model, data, 100, 40), fuse(model, data_eager, 100, 40)):
                np.testing.assert_array_equal(va1, va2)
                np.testing.assert_array_equal(e1["weights"], e2["weights"])


def test_fusion_reads_a_shorter_track_as_masked_zeros_past_its_end(synth_runs, tmp_path, caplog):
    """A behavior run whose predictions of a video stop 50 frames early: the video's behavior input is the
    stored rows, then zeros, masked there (as the whole track padded and NaN-filled used to be)."""
    import shutil

    from vaest.corpus import load_corpus
    from vaest.inputs.fusion import build_fusion_data

    runs = {m: tmp_path / m for m in ("face", "behavior")}
    for m in runs:
        shutil.copytree(synth_runs["runs"][m], runs[m])
    rec = load_predictions(runs["behavior"], "vid00")
    n = len(rec.values)
    save_predictions(runs["behavior"], "vid00", rec.values[: n - 50], 30.0, emb=rec.extras["emb"][: n - 50],
                     mask=rec.mask[: n - 50])
    vids = [v for v in load_corpus(synth_runs["corpus"]).videos if v.id == "vid00"]
    with caplog.at_level("WARNING"):
        seq = build_fusion_data(runs, vids, "dcmmoe").sequences[0]
    assert "behavior predictions have 310 frames" in caplog.text
    x = seq.inputs["behavior"]
    assert x.shape[0] == n == 360
    np.testing.assert_array_equal(x[: n - 50], np.concatenate([rec.extras["emb"], rec.values], 1)[: n - 50])
    assert not x[n - 50 :].any() and not seq.inputs["behavior_mask"][n - 50 :].any()
    np.testing.assert_array_equal(seq.inputs["behavior_mask"][: n - 50], rec.mask[: n - 50])


@pytest.mark.parametrize("method", ["raav", "dcmmoe"])
def test_train_fusion_writes_a_run_folder(synth_runs, tmp_path, method):
    from vaest.inference import read_run_json
    from vaest.tasks.fusion import apply_fusion, train_fusion

    out = tmp_path / method
    cfg = TrainConfig(epochs=2, lr=1e-3, batch_size=4, loss_weights=(0.7, 0.3), mse_weight=0.01)
    small = {"d_model": 16, "ffn": 32, "heads": 4} if method == "raav" else {"d_model": 16, "ffn": 32, "layers": 2}
    metrics = train_fusion(synth_runs["runs"], synth_runs["corpus"], out, method=method, train_cfg=cfg,
                           model_cfg=small, win=120, hop=60)
    assert set(metrics) == {"valence", "arousal", "mean"} and np.isfinite(metrics["mean"])
    for f in ("model.pt", "run.json", "metrics.json", "config.yaml", "versions.yaml"):
        assert (out / f).exists(), f
    info = read_run_json(out)
    assert info["modality"] == "fusion" and info["method"] == method and set(info["runs"]) == {"face", "behavior", "audio"}
    assert json.loads((out / "metrics.json").read_text())["mean"] == pytest.approx(metrics["mean"])
    for vid in synth_runs["truth"]:
        rec = load_predictions(out, vid)
        M = len(info["weight_names"])
        assert rec.values.shape == (360, 2) and rec.extras["emb"].shape == (360, 16)
        assert rec.extras["weights"].shape == (360, M)
    if method == "raav":
        assert info["weight_names"] == ["face", "behavior"]
        rec = load_predictions(out, "vid00")
        hidden = synth_runs["truth"]["vid00"]["hidden"]
        assert np.all(rec.extras["weights"][hidden, 0] == 0)
    # applying the trained run to videos writes the same predictions elsewhere
    from vaest.corpus import load_corpus

    vids = load_corpus(synth_runs["corpus"]).split("val")[:1]
    apply_fusion(out, vids, tmp_path / "applied")
    np.testing.assert_allclose(load_predictions(tmp_path / "applied", vids[0].id).values,
                               load_predictions(out, vids[0].id).values, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# Late fusion
# ---------------------------------------------------------------------------------------------------------


def test_combine_sets_renormalises_over_present_sets():
    from vaest.late_fusion import combine_sets

    P = np.array([[[0.2, 0.4], [0.6, 0.0], [1.0, -1.0]]] * 3, dtype=np.float32)
    M = np.array([[True, True, True], [True, False, True], [False, False, False]])
    W = np.array([[0.5, 0.2], [0.3, 0.3], [0.2, 0.5]])
    va, eff = combine_sets(P, M, W)
    np.testing.assert_allclose(va[0], [0.5 * 0.2 + 0.3 * 0.6 + 0.2 * 1.0, 0.2 * 0.4 + 0.3 * 0.0 - 0.5], atol=1e-6)
    np.testing.assert_allclose(va[1], [(0.5 * 0.2 + 0.2 * 1.0) / 0.7, (0.2 * 0.4 - 0.5) / 0.7], atol=1e-6)
    assert np.all(eff[1, 1] == 0) and np.allclose(eff.sum(1), 1)
    # no set with real input: every set with a value counts
    np.testing.assert_allclose(va[2], va[0], atol=1e-6)
    # a set with no value at all (NaN) is skipped
    P2 = P.copy()
    P2[1, 0] = np.nan
    va2, _ = combine_sets(P2, np.ones((3, 3), bool), W)
    np.testing.assert_allclose(va2[1], [(0.3 * 0.6 + 0.2 * 1.0) / 0.5, (0.3 * 0.0 - 0.5) / 0.8], atol=1e-6)


def _known_weight_data(seed=0, N=1500):
    rng = np.random.default_rng(seed)
    P = rng.normal(size=(N, 3, 2)) * 0.3
    W = np.array([[0.6, 0.1], [0.3, 0.25], [0.1, 0.65]])
    y = np.einsum("nsd,sd->nd", P, W)
    return P, np.ones((N, 3), bool), y, W


def test_grid_search_recovers_known_weights():
    from vaest.late_fusion import search_weights

    P, M, y, W = _known_weight_data()
    got, best = search_weights(P, M, y, "grid", step=0.05)
    np.testing.assert_allclose(got, W, atol=1e-9)
    np.testing.assert_allclose(best, [1.0, 1.0])


def test_dirichlet_search_is_seeded_and_close():
    from vaest.late_fusion import candidate_weights, search_weights

    P, M, y, W = _known_weight_data(1)
    a, _ = search_weights(P, M, y, "dirichlet", n_samples=8000, seed=3)
    b, _ = search_weights(P, M, y, "dirichlet", n_samples=8000, seed=3)
    assert np.array_equal(a, b)
    assert np.abs(a - W).max() < 0.06
    assert np.array_equal(candidate_weights(3, seed=5), candidate_weights(3, seed=5))
    assert not np.array_equal(candidate_weights(3, seed=5), candidate_weights(3, seed=6))
    assert candidate_weights(3, n_samples=8000).shape == (8004, 3)


def test_search_uses_renormalised_frames():
    """Weights searched with missing frames reproduce the renormalised combination of combine_sets."""
    from vaest.metrics import va_ccc
    from vaest.late_fusion import combine_sets, search_weights

    P, M, y, W = _known_weight_data(2)
    M[::3, 0] = False
    w, best = search_weights(P, M, y, "grid", step=0.05)
    va, _ = combine_sets(P, M, w)
    s = va_ccc(va, y)
    np.testing.assert_allclose([s["valence"], s["arousal"]], best, atol=1e-5)


def test_late_fusion_run_folder_and_search_score(synth_runs, tmp_path):
    from vaest.corpus import load_corpus
    from vaest.inference import evaluate_predictions, read_run_json
    from vaest.tasks.late import late_fusion

    out = tmp_path / "late"
    res = late_fusion(synth_runs["runs"], synth_runs["corpus"], out, method="dirichlet", n_samples=500)
    info = read_run_json(out)
    assert info["modality"] == "late" and set(info["weights"]) == {"face", "behavior", "audio"}
    assert all(len(w) == 2 for w in info["weights"].values())
    np.testing.assert_allclose(np.sum(list(info["weights"].values()), 0), [1, 1], atol=1e-9)
    # the searched weights' own score (on the frames they were searched on) is at least each one-hot candidate's;
    # that the weights generalise is tested on held-out videos in tests/test_fusion_learning.py
    c = load_corpus(synth_runs["corpus"])
    singles = [evaluate_predictions(r, c, "val")["mean"] for r in synth_runs["runs"].values()]
    assert res["metrics"]["mean"] >= max(singles) - 1e-6
    rec = load_predictions(out, "vid00")
    assert rec.extras["weights"].shape == (360, 3, 2) and len(rec.values) == 360


def test_cli_train_late(synth_runs, tmp_path):
    from typer.testing import CliRunner

    from vaest.cli import app

    r = synth_runs["runs"]
    out = tmp_path / "late_cli"
    res = CliRunner().invoke(app, ["train", "late", "--runs", f"face={r['face']}", "--runs", f"audio={r['audio']}",
                                   "--corpus", str(synth_runs["corpus"]), "--out", str(out), "--method", "grid"])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "run.json").read_text())["method"] == "grid"
    res = CliRunner().invoke(app, ["train", "late", "--runs", "face", "--out", str(out)])
    assert res.exit_code != 0


def test_cli_train_fusion_with_config(synth_runs, tmp_path):
    from typer.testing import CliRunner

    from vaest.cli import app

    r = synth_runs["runs"]
    cfg = tmp_path / "fusion.yaml"
    cfg.write_text("win: 120\nhop: 60\nmodel: {d_model: 16, ffn: 32}\ntrain: {batch_size: 4, max_batches_per_epoch: 2}\n")
    out = tmp_path / "raav_cli"
    res = CliRunner().invoke(app, ["train", "fusion", "--runs", f"face={r['face']}", "--runs", f"behavior={r['behavior']}",
                                   "--runs", f"audio={r['audio']}", "--out", str(out), "--epochs", "1",
                                   "--config", str(cfg)])
    assert res.exit_code == 0, res.output
    info = json.loads((out / "run.json").read_text())
    assert info["method"] == "raav" and info["win"] == 120 and info["corpus"] == str(synth_runs["corpus"])
    import yaml

    saved = yaml.safe_load((out / "config.yaml").read_text())["config"]
    assert saved["train"]["lr"] == 5e-5 and saved["train"]["loss_weights"] == [0.7, 0.3] and saved["train"]["epochs"] == 1


def test_prediction_skip_starts_from_the_gated_average_of_the_modality_predictions():
    """A fresh RAAV outputs the gate-weighted average of the modalities' own VA predictions (the correction
    head starts at zero); a fresh DCMMoE's modality experts are the modalities' predictions."""
    torch.manual_seed(0)
    m = create_model("raav", modalities=("face", "behavior"), in_dims=(10, 6), d_model=32, heads=4, ffn=64,
                     dropout=0.0).eval()
    x = _inputs(seed=5)
    for k in ("face", "behavior"):  # VA columns inside (-1, 1), as real predictions are
        x[k][..., -2:] = torch.tanh(x[k][..., -2:])
    out = m(**x)
    va_f = torch.where(x["face_mask"][..., None], x["face"][..., -2:], torch.zeros(1))
    va_b = torch.where(x["behavior_mask"][..., None], x["behavior"][..., -2:], torch.zeros(1))
    w = out["weights"]
    expect = (w[..., :1] * va_f + w[..., 1:] * va_b).clamp(-0.995, 0.995)
    torch.testing.assert_close(out["va"], expect, atol=1e-5, rtol=0)
    # the plain reference head does not have that property
    torch.manual_seed(0)
    plain = create_model("raav", modalities=("face", "behavior"), in_dims=(10, 6), d_model=32, heads=4, ffn=64,
                         dropout=0.0, pred_skip=False).eval()
    assert not torch.allclose(plain(**x)["va"], expect, atol=1e-3)

    torch.manual_seed(0)
    d = create_model("dcmmoe", modalities=("face", "behavior"), in_dims=(10, 6), d_model=32, heads=4, layers=2,
                     ffn=64, dropout=0.0).eval()
    o = d(**x)
    wd = o["weights"]  # (B, T, 3): face, behavior, cross
    cross = torch.tanh(d.cross_head(o["emb"]))
    expect_d = wd[..., :1] * va_f.clamp(-0.995, 0.995) + wd[..., 1:2] * va_b.clamp(-0.995, 0.995) + wd[..., 2:] * cross
    torch.testing.assert_close(o["va"], expect_d, atol=1e-5, rtol=0)
