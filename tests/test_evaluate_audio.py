"""`vaest evaluate` on an audio-only manifest corpus: the run records the manifest (not its folder), and the
scores include frame-level and clip-level CCC."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from mediautil import make_wav
from vaest.cli import app

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_evaluate_audio_only_manifest_frame_and_clip_ccc(tmp_path):
    import soundfile as sf

    from vaest.corpus import load_corpus
    from vaest.features.audio import audio_extractors
    from vaest.features.base import run_extraction
    from vaest.features.store import FeatureStore
    from vaest.inference import load_predictions, read_run_json
    from vaest.metrics import va_ccc
    from vaest.tasks.audio import AudioTrainConfig, train_audio

    root = tmp_path / "c"
    root.mkdir()
    rows = ["path,split,id,valence,arousal"]
    for i in range(7):
        w = make_wav(root / f"tmp{i}.wav", seconds=4.0, sr=16000, tone_hz=150 + 20 * i)
        wav, sr = sf.read(str(w))
        sf.write(str(root / f"a{i}.wav"), wav * 10 ** ((i - 3) * 4 / 20), sr)  # louder = more aroused
        rows.append(f"a{i}.wav,{'train' if i < 4 else 'val'},a{i},{0.1 * (i % 3) - 0.1:.1f},{(i - 3) / 4:.2f}")
    manifest = root / "clips.csv"
    manifest.write_text("\n".join(rows) + "\n")
    feats = tmp_path / "feats"
    run_extraction(FeatureStore(feats), audio_extractors("lmfb", vad=False), load_corpus(manifest).videos)
    run = tmp_path / "run"
    train_audio(feats, manifest, run, AudioTrainConfig(encoder="lmfb", epochs=1, ema=None, batch_size=8))
    assert read_run_json(run)["corpus"] == str(manifest)  # the manifest itself: its folder has no labels
    out = tmp_path / "scores.json"
    r = CliRunner().invoke(app, ["evaluate", str(run), "--json", str(out), "--no-stages"])
    assert r.exit_code == 0, r.output
    s = json.loads(out.read_text())[str(run)]
    assert s["frames"] > 0 and s["clips"] == 3
    assert all(np.isfinite(s[k]) for k in ("valence", "arousal", "clip_valence", "clip_arousal"))
    corpus = load_corpus(manifest)
    preds = {v.id: load_predictions(run, v.id).values for v in corpus.split("val")}
    assert s["frames"] == sum(len(p) for p in preds.values())
    clip_p = np.array([p.mean(0) for p in preds.values()])
    clip_l = np.array([v.clip_label for v in corpus.split("val")])
    want = va_ccc(clip_p, clip_l)
    assert s["clip_arousal"] == pytest.approx(want["arousal"], abs=1e-6)
    assert s["clip_valence"] == pytest.approx(want["valence"], abs=1e-6)
