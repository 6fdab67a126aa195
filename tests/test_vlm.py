"""VLM backends on a tiny random Qwen3-VL (saved with save_pretrained and reloaded), and the behavior-vlm
extractor end to end on a generated video. vLLM paths run only where vLLM and a GPU exist."""

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")

from vaest.errors import ModelError
from vaest.vlm import (BRANCHES, POOLS, RemoteDescriber, VLMConfig, branch_masks_from_ids, feature_names, load_vlm,
                       pool_hidden, save_random_qwen3vl, vllm_prompt)

sys.path.insert(0, str(Path(__file__).parent))
from mediautil import make_video  # noqa: E402


def vllm_available() -> bool:
    """vLLM is installed (the precondition of the in-process vLLM tests)."""
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory):
    return save_random_qwen3vl(str(tmp_path_factory.mktemp("qwen3vl")), "tiny", seed=0)


@pytest.fixture(scope="module")
def tiny_vlm(tiny_qwen):
    return load_vlm(VLMConfig(model=tiny_qwen, max_new_tokens=6, device="cpu"))


def _clips(n, rng, hw=(48, 64)):
    return [rng.integers(0, 255, (16, *hw, 3), dtype=np.uint8) for _ in range(n)]


def test_pool_hidden_means_stds_and_last_tokens():
    h = np.arange(2 * 5 * 3, dtype=np.float32).reshape(2, 5, 3)
    m = np.array([[0, 1, 1, 0, 1], [1, 0, 0, 0, 0]], bool)
    out = pool_hidden(h, {"b": m, "none": np.zeros_like(m)})
    sel = h[0, [1, 2, 4]]
    assert np.allclose(out["b_mean"][0], sel.mean(0)) and np.allclose(out["b_std"][0], sel.std(0))
    assert np.allclose(out["b_last"][0], h[0, 4]) and np.allclose(out["b_last"][1], h[1, 0])
    assert np.allclose(out["b_std"][1], 0) and np.isnan(out["none_mean"]).all()


def test_branch_masks_from_token_ids():
    V, VE, IE = 7, 5, 2
    ids = np.array([[1, 9, 4, V, V, VE, 4, V, VE, 20, 21, 22, IE, 1, 9]])
    m = branch_masks_from_ids(ids, np.ones_like(ids, bool), V, VE, IE)
    assert m["visual"][0].sum() == 3 and m["multimodal"][0].all()
    assert np.flatnonzero(m["text"][0]).tolist() == [9, 10, 11]


def test_transformers_backend_every_branch_and_pooling(tiny_vlm):
    rng = np.random.default_rng(0)
    out = tiny_vlm.encode(_clips(3, rng), [4.0, 4.0, 2.5])
    H = tiny_vlm.hidden_size
    assert sorted(out.features) == sorted(feature_names())
    for name in feature_names(BRANCHES, POOLS):
        assert out.features[name].shape == (3, H) and np.isfinite(out.features[name]).all(), name
    assert not np.allclose(out.features["multimodal_last"], out.features["text_last"])
    assert not np.allclose(out.features["visual_mean"], out.features["multimodal_mean"])
    assert isinstance(out.texts, list) and len(out.texts) == 3 and all(isinstance(t, str) for t in out.texts)
    assert any(out.texts) and all(len(t.split()) <= 6 for t in out.texts)


def test_token_branches_cover_video_and_instruction(tiny_vlm):
    rng = np.random.default_rng(1)
    inputs, masks = tiny_vlm.prepare(_clips(2, rng), [4.0, 4.0])
    ids = inputs["input_ids"].numpy()
    n_prompt = len(tiny_vlm.tokenizer(tiny_vlm.cfg.prompt, add_special_tokens=False)["input_ids"])
    assert (masks["text"].sum(1) == n_prompt).all()
    assert (masks["visual"] == (ids == tiny_vlm.video_token_id)).all()
    grid = inputs["video_grid_thw"].numpy()
    assert (masks["visual"].sum(1) == grid.prod(1) // 4).all()
    assert (inputs["mm_token_type_ids"].numpy() == 2 * masks["visual"]).all()
    assert grid[0, 0] == 8  # 16 frames, temporal patch 2


def test_features_from_generation_prefill_equal_a_plain_forward(tiny_qwen, tiny_vlm):
    rng = np.random.default_rng(2)
    clips = _clips(2, rng)
    a = tiny_vlm.encode(clips, [4.0, 3.0])
    b = load_vlm(VLMConfig(model=tiny_qwen, generate=False, device="cpu")).encode(clips, [4.0, 3.0])
    assert b.texts is None
    for k in a.features:
        assert np.allclose(a.features[k], b.features[k], atol=1e-5), k


def test_branch_selection_and_errors(tiny_qwen, tmp_path):
    vlm = load_vlm(VLMConfig(model=tiny_qwen, generate=False, branches=("visual",), device="cpu"))
    out = vlm.encode(_clips(1, np.random.default_rng(3)), [4.0])
    assert sorted(out.features) == ["visual_last", "visual_mean", "visual_std"]
    with pytest.raises(ModelError, match="backend"):
        load_vlm(VLMConfig(model=tiny_qwen, backend="nope"))
    with pytest.raises(ModelError, match=str(tmp_path / "missing")):
        load_vlm(VLMConfig(model=str(tmp_path / "missing")))


def test_behavior_vlm_extractor_end_to_end(tiny_qwen, tmp_path):
    from vaest.corpus import Video
    from vaest.features.base import create_extractor, process_media
    from vaest.features.segments import plan_segments
    from vaest.features.store import FeatureStore

    media = make_video(tmp_path / "v.mp4", n_frames=54, fps=6, size=(64, 48), audio=False)  # 9 s
    ex = create_extractor("behavior-vlm", model=tiny_qwen, max_new_tokens=5, batch_size=2, device="cpu")
    assert ex.outputs() == ["behavior-vlm", "behavior-text"]
    vids = [Video("v_left", media, "train", side="left"), Video("v_right", media, "train", side="right")]
    recs, n = process_media(media, vids, [ex], batch_size=8)
    assert n == 54
    segs = plan_segments(54, 6.0)
    assert [(s.start, s.end) for s in segs] == [(0, 4), (2, 6), (4, 8), (6, 9), (8, 9)]
    rec = recs[("behavior-vlm", "v_left")]
    H = ex.vlm.hidden_size
    assert rec.values.shape == (5, H) and rec.mask.all() and rec.base.hop == 2.0 and rec.base.win == 4.0
    for name in feature_names():
        assert rec.extras[name].shape == (5, H), name
    assert np.allclose(rec.values, rec.extras["multimodal_last"])
    # frames streamed to the VLM before the end are the ones the full plan samples
    assert (rec.extras["sample"] == np.array([s.sample for s in segs])).all()
    assert rec.meta["names"][-1] == "v_left@8.00-9.00" and len(rec.meta["texts"]) == 5
    assert np.allclose(rec.values, recs[("behavior-vlm", "v_right")].values)
    txt = recs[("behavior-text", "v_left")]
    assert txt.values.shape == (5, 384)
    ok = np.array([bool(t) for t in rec.meta["texts"]])
    assert np.allclose(np.linalg.norm(txt.values[ok], axis=1), 1.0, atol=1e-4)
    # the store round trip keeps every branch and the texts
    store = FeatureStore(tmp_path / "feats")
    for (key, vid), r in recs.items():
        r.config_hash = ex.config_hash()
        store.save(key, vid, r)
    back = store.load("behavior-vlm", "v_left")
    assert back.meta["texts"] == rec.meta["texts"] and back.extras["visual_std"].shape == (5, H)


class _FakeVLLMServer(BaseHTTPRequestHandler):
    seen: list = []

    def log_message(self, *a):  # keep pytest output clean
        pass

    def _send(self, obj):
        data = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        assert self.path == "/v1/models"
        self._send({"data": [{"id": "served-qwen"}]})

    def do_POST(self):
        assert self.path == "/v1/chat/completions"
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append(body)
        n = body["messages"][0]["content"][0]["video_url"]["url"].count(",")
        self._send({"choices": [{"message": {"content": f" calm, {n} frames "}}]})


def test_remote_describer_talks_openai_chat_to_a_vllm_server():
    srv = HTTPServer(("127.0.0.1", 0), _FakeVLLMServer)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    try:
        cfg = VLMConfig(vllm_url=f"http://127.0.0.1:{srv.server_port}", max_new_tokens=100)
        texts = RemoteDescriber(cfg).describe(_clips(2, np.random.default_rng(4)), [4.0, 2.0])
    finally:
        srv.shutdown()
    assert texts == ["calm, 16 frames", "calm, 16 frames"]  # "data:video/jpeg;base64," + 16 comma-joined frames
    body = _FakeVLLMServer.seen[-1]
    assert body["model"] == "served-qwen" and body["max_tokens"] == 100 and body["temperature"] == 0.0
    assert body["messages"][0]["content"][0]["video_url"]["url"].startswith("data:video/jpeg;base64,")
    assert body["messages"][0]["content"][1]["text"] == cfg.prompt
    assert body["mm_processor_kwargs"]["do_sample_frames"] is False


def test_vllm_prompt_has_one_video_placeholder():
    p = vllm_prompt("describe")
    assert p.count("<|video_pad|>") == 1 and p.endswith("<|im_start|>assistant\n") and "describe" in p


def test_vllm_backend_matches_transformers(tiny_qwen):
    if not vllm_available():
        print("vLLM is not installed here (it needs a CUDA GPU); the vLLM backend is not exercised")
        pytest.skip("vLLM not installed (needs a CUDA GPU)")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("vLLM is installed but no CUDA device is visible")
    rng = np.random.default_rng(5)
    clips = _clips(2, rng)
    ref = load_vlm(VLMConfig(model=tiny_qwen, generate=False, device="cuda", dtype="bfloat16")).encode(clips, [4.0, 4.0])
    got = load_vlm(VLMConfig(model=tiny_qwen, backend="vllm", generate=True, max_new_tokens=5,
                             gpu_memory_utilization=0.3, max_model_len=2048)).encode(clips, [4.0, 4.0])
    a, b = ref.features["multimodal_last"], got.features["multimodal_last"]
    assert a.shape == b.shape and got.texts is not None and len(got.texts) == 2
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert (cos > 0.98).all()


def test_vllm_backend_says_what_is_missing():
    if vllm_available():
        pytest.skip("vLLM is installed")
    with pytest.raises(ModelError, match="vLLM"):
        load_vlm(VLMConfig(backend="vllm"))


def test_separate_text_branch_is_a_text_only_pass(tiny_qwen):
    """The reference text branch: the instruction alone (no video) in its own forward pass, pooled over all its
    tokens, the same for every clip; the other branches are unchanged."""
    import torch

    from vaest.vlm import REFERENCE_PROMPT

    cfg = VLMConfig(model=tiny_qwen, generate=False, device="cpu", prompt=REFERENCE_PROMPT)
    sep = load_vlm(VLMConfig(**{**cfg.__dict__, "text_branch": "separate"}))
    ctx = load_vlm(cfg)
    clips = _clips(2, np.random.default_rng(5))
    a, b = sep.encode(clips, [4.0, 3.0]), ctx.encode(clips, [4.0, 3.0])
    for k in a.features:
        if not k.startswith("text_"):
            assert np.allclose(a.features[k], b.features[k], atol=1e-5), k
    assert np.allclose(a.features["text_last"][0], a.features["text_last"][1])  # no video in it
    assert not np.allclose(a.features["text_last"], b.features["text_last"])
    ids = sep.tokenizer("<|im_start|>user\n" + REFERENCE_PROMPT + "<|im_end|>\n<|im_start|>assistant\n",
                        add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        h = sep.model.model(input_ids=torch.tensor([ids])).last_hidden_state[0].numpy()
    assert np.allclose(a.features["text_mean"][0], h.mean(0), atol=1e-5)
    assert np.allclose(a.features["text_last"][0], h[-1], atol=1e-5)
    with pytest.raises(ModelError, match="text_branch"):
        load_vlm(VLMConfig(model=tiny_qwen, text_branch="nope"))
