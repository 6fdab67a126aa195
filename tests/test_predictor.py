"""The Python prediction API (vaest.Predictor), the media-identity cache, folders and the CLI's conventions."""

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mediautil import make_video
from vaest.cli import app


def _rows(p: Path) -> list[dict]:
    with open(p, newline="") as f:
        return list(csv.DictReader(f))


def test_import_vaest_is_light_and_exposes_predictor():
    code = "import sys, vaest; assert 'torch' not in sys.modules; assert vaest.Predictor.__name__ == 'Predictor'"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})


def test_atomic_write_respects_umask(tmp_path):
    from vaest.io import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        os.umask(0o077)
        atomic_write_text(tmp_path / "b.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o600


def test_device_rule():
    from vaest.device import check_device, resolve_device
    from vaest.errors import VaestError

    assert check_device(" CUDA:1 ") == "cuda:1" and check_device("auto") == "auto"
    for bad in ("gpu", "cuda:", "tpu", "cuda:x"):
        with pytest.raises(VaestError, match="--device"):
            check_device(bad)
    import torch

    if not torch.cuda.is_available():
        assert resolve_device("auto") == "cpu"
        with pytest.raises(VaestError, match="CUDA is not available"):
            resolve_device("cuda")
    r = CliRunner().invoke(app, ["predict", "x.mp4", "--device", "gpu"])
    assert r.exit_code == 2 and "gpu" in r.output


def test_version_and_errors_on_stderr(tmp_path):
    r = CliRunner().invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.startswith("vaest ")
    exe = Path(sys.executable).with_name("vaest")
    if not exe.exists():
        pytest.skip(f"no installed vaest console script beside {sys.executable}")
    p = subprocess.run([str(exe), "predict", str(tmp_path / "nothing*.mp4"), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.count("\n") == 1 and "nothing*.mp4" in p.stderr


def test_expand_inputs_keeps_relative_paths(tmp_path):
    from vaest.predictor import expand_inputs

    for rel in ("a/clip.mp4", "b/clip.mp4", "b/sub/x.wav", "b/x.mp4", "b/x.flv", "b/notes.txt", "b/.hidden/y.mp4",
                "b/pic.jpg"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"0")
    got = {str(f.relative_to(tmp_path)): str(s) for f, s in expand_inputs([tmp_path])}
    assert got == {"a/clip.mp4": "a/clip", "b/clip.mp4": "b/clip", "b/sub/x.wav": "b/sub/x",
                   "b/x.mp4": "b/x.mp4", "b/x.flv": "b/x.flv", "b/pic.jpg": "b/pic"}
    # a folder is its own root; files share their common parent; globs expand; duplicates collapse
    assert {str(s) for _, s in expand_inputs([tmp_path / "b"])} >= {"clip", "sub/x"}
    got = expand_inputs([tmp_path / "a" / "clip.mp4", tmp_path / "b" / "clip.mp4", str(tmp_path / "a" / "*.mp4")])
    assert [str(s) for _, s in got] == ["a/clip", "b/clip"]
    # the output folder inside an input folder is not read back as input
    assert {str(s) for _, s in expand_inputs([tmp_path], exclude=tmp_path / "b")} == {"a/clip"}


def test_variable_frame_rate_times(tmp_path):
    pytest.importorskip("mediapipe", reason="the zero-shot face path needs mediapipe (vaest[face])")
    import vaest

    pts = [0.0, 0.04, 0.1, 0.5, 0.52, 1.0, 1.0006, 1.3]
    f = make_video(tmp_path / "vfr.mp4", n_frames=len(pts), pts_seconds=pts, audio=False)
    res = vaest.Predictor(device="cpu").predict(f)
    assert res.frame["time"].to_numpy() == pytest.approx(pts, abs=1e-3)
    assert (res.frame["source"] == "none").all() and res.frame["valence"].isna().all()  # grey frames: no face
    res.to_csv(tmp_path / "vfr.csv")
    rows = _rows(tmp_path / "vfr.csv")
    assert float(rows[6]["time"]) == pytest.approx(1.0006, abs=1e-3)  # the container's ms clock, not 6 / fps
    assert rows[0]["valence"] == "" and rows[0]["source"] == "none"


@pytest.mark.slow
def test_same_name_in_two_folders_and_cache_identity(synth_corpus, tmp_path):
    """Two different videos called clip.mp4 predicted into one --out: two outputs, each its own input's result;
    a file replaced in place (new mtime/size) is recomputed, an unchanged one is read from the cache."""
    pytest.importorskip("mediapipe", reason="the zero-shot face path needs mediapipe (vaest[face])")
    import vaest
    from vaest.corpus import load_corpus

    vids = [v for v in load_corpus(synth_corpus).videos if v.media is not None]
    media = sorted({v.media for v in vids})[:2]
    inp = tmp_path / "in"
    for d, m in zip(("a", "b"), media):
        (inp / d).mkdir(parents=True)
        shutil.copy(m, inp / d / "clip.mp4")
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["predict", str(inp), "--out", str(out), "--no-progress", "--no-plot",
                                 "--device", "cpu"])
    assert r.exit_code == 0, r.output
    index = _rows(out / "index.csv")
    assert [(Path(x["input"]).parent.name, x["csv"], x["status"]) for x in index] == [
        ("a", "a/clip.csv", "ok"), ("b", "b/clip.csv", "ok")]
    p = vaest.Predictor(device="cpu")  # in memory, no cache
    ref = {d: p.predict(m).frame for d, m in zip(("a", "b"), media)}
    got = {d: _rows(out / d / "clip.csv") for d in ("a", "b")}
    for d in ("a", "b"):
        assert len(got[d]) == len(ref[d])
        v = np.array([float(x["valence"]) if x["valence"] else np.nan for x in got[d]])
        np.testing.assert_allclose(v, ref[d]["valence"].to_numpy(), atol=1e-4)
    assert not np.allclose(ref["a"]["valence"].fillna(0).to_numpy()[:50], ref["b"]["valence"].fillna(0).to_numpy()[:50])
    # overwrite a/clip.mp4 with b's video: the cache must not hand back a's features
    shutil.copy(media[1], inp / "a" / "clip.mp4")
    os.utime(inp / "a" / "clip.mp4", ns=(1, 1))
    r = CliRunner().invoke(app, ["predict", str(inp / "a" / "clip.mp4"), "--out", str(out), "--no-progress",
                                 "--no-plot", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    v = np.array([float(x["valence"]) if x["valence"] else np.nan for x in _rows(out / "clip.csv")])
    np.testing.assert_allclose(v, ref["b"]["valence"].to_numpy(), atol=1e-4)


@pytest.mark.slow
def test_predictor_reuses_loaded_models(synth_corpus):
    pytest.importorskip("mediapipe", reason="the zero-shot face path needs mediapipe (vaest[face])")
    import time

    import vaest
    from vaest.corpus import load_corpus
    from mediautil import count_frames

    media = sorted({v.media for v in load_corpus(synth_corpus).videos if v.media is not None})
    p = vaest.Predictor(device="cpu")
    ex = list(p.extractors)
    t0 = time.perf_counter()
    r1 = p.predict(media[0])
    t1 = time.perf_counter()
    r2 = p.predict(media[0])
    t2 = time.perf_counter()
    assert p.extractors == ex  # same objects, nothing rebuilt
    assert len(r1.frame) == count_frames(media[0])
    assert list(r1.frame.columns[:5]) == ["frame", "time", "valence", "arousal", "source"]
    np.testing.assert_allclose(r1.frame["valence"].to_numpy(), r2.frame["valence"].to_numpy(), equal_nan=True)
    print(f"first call {t1 - t0:.2f} s, second {t2 - t1:.2f} s")


def test_corpus_stats_without_labels_writes_valid_json(tmp_path):
    import json

    (tmp_path / "media").mkdir()
    make_video(tmp_path / "media" / "a.mp4", n_frames=5)
    r = CliRunner().invoke(app, ["corpus", "stats", str(tmp_path / "media"), "--json", str(tmp_path / "s.json")])
    assert r.exit_code == 0, r.output
    text = (tmp_path / "s.json").read_text()
    assert "NaN" not in text
    stats = json.loads(text)
    assert all(row["valence_mean"] is None for row in stats.values())


def test_stream_copied_cut_is_not_called_truncated(tmp_path, caplog):
    """A cut made with ``ffmpeg -ss ... -c copy`` holds packets before its first keyframe that an edit list hides:
    fewer frames decode than packets exist, and that is not truncation."""
    import logging

    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        pytest.skip("ffmpeg not installed (needed to make a stream-copied cut)")
    from vaest.media import iter_frames

    src = make_video(tmp_path / "long.mp4", n_frames=90, audio=False)
    cut = tmp_path / "cut.mp4"
    subprocess.run([ffmpeg, "-v", "error", "-y", "-ss", "1.5", "-t", "1.0", "-i", str(src), "-c", "copy", str(cut)],
                   check=True)
    with caplog.at_level(logging.WARNING, logger="vaest"):
        n = sum(len(b.index) for b in iter_frames(cut))
    assert 0 < n < 90
    assert "truncated" not in caplog.text


def test_config_file_gives_defaults_flags_override(tmp_path, monkeypatch):
    import vaest.corpus.synthetic as synthetic

    seen = {}
    monkeypatch.setattr(synthetic, "synthesize", lambda out, **kw: seen.update(kw) or {})
    cfg = tmp_path / "c.yaml"
    cfg.write_text("videos: 3\nseconds: 2\nannotation-lag: 0\n")
    r = CliRunner().invoke(app, ["synth", str(tmp_path / "o"), "--config", str(cfg), "--seconds", "5"])
    assert r.exit_code == 0, r.output
    assert (seen["n_videos"], seen["seconds"], seen["annotation_lag"]) == (3, 5.0, 0.0)
    cfg.write_text("vidoes: 3\n")
    r = CliRunner().invoke(app, ["synth", str(tmp_path / "o"), "--config", str(cfg)])
    assert r.exit_code == 2 and "vidoes" in r.output


def test_finalize_gaps_stay_empty_unless_fill():
    from vaest.predictor.result import finalize

    raw = np.tile(np.array([[0.5, -0.2]], np.float32), (10, 1))
    raw[6:] = [0.9, 0.9]  # what a model emits on frames without input (its own nearest filling)
    mask = np.array([0, 0, 1, 1, 1, 1, 0, 0, 0, 0], bool)
    final, source = finalize(raw, mask, (3, 3))
    assert list(source) == ["none"] * 2 + ["estimated"] * 4 + ["none"] * 4
    assert np.isnan(final[~mask]).all() and final[mask] == pytest.approx(np.tile([0.5, -0.2], (4, 1)))
    final, source = finalize(raw, mask, (1, 1), fill=True)
    assert list(source) == ["filled"] * 2 + ["estimated"] * 4 + ["filled"] * 4
    assert final == pytest.approx(np.tile([0.5, -0.2], (10, 1)))  # the nearest estimate, not the model's 0.9
    arousal_only = np.full((4, 2), np.nan, np.float32)
    arousal_only[:, 1] = [0.1, 0.2, 0.3, 0.4]
    final, source = finalize(arousal_only, np.ones(4, bool), None, fill=True)
    assert (source == "estimated").all() and np.isnan(final[:, 0]).all() and final[:, 1] == pytest.approx([0.1, 0.2, 0.3, 0.4])
    final, source = finalize(np.full((3, 2), np.nan, np.float32), np.zeros(3, bool), (3, 3), fill=True)
    assert (source == "none").all() and np.isnan(final).all()


# ---------------------------------------------------------------------------------------------------------
# Reference fusions (raav-reference, dcm-ref) as the fusion of a bundle, applied in memory
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ref_fusion_runs(tmp_path_factory) -> dict:
    """Tiny synthetic modality runs (with audio tokens) and the two reference fusions trained on them."""
    from test_fusion import make_synthetic_runs

    root = tmp_path_factory.mktemp("reffusion")
    syn = make_synthetic_runs(root / "data", n_train=3, n_val=2, n_frames=300, emb_dim=8, audio_tokens=True)
    r = syn["runs"]
    runs = [a for m in ("face", "behavior", "audio") for a in ("--runs", f"{m}={r[m]}")]
    out = {}
    for method, name, text in (
            ("raav", "raav-reference", "model: {hidden: 16}\ntrain: {max_batches_per_epoch: 2, batch_size: 4}\n"),
            ("dcm-ref", "dcm-ref", "win: 120\nhop: 50\nmodel: {hidden_dim: 16, heads: 2, layers: 1}\n"
                                   "train: {max_batches_per_epoch: 2, batch_size: 4}\n")):
        cfg = root / f"{name}.yaml"
        cfg.write_text(text)
        out[name] = root / name
        res = CliRunner().invoke(app, ["train", "fusion", *runs, "--method", method, "--out", str(out[name]),
                                       "--epochs", "1", "--preset", "reference", "--config", str(cfg)])
        assert res.exit_code == 0, res.output
    return {**syn, "fusions": out, "root": root}


@pytest.mark.parametrize("method", ["raav-reference", "dcm-ref"])
def test_bundle_with_reference_fusion_applies_in_memory_like_its_export(ref_fusion_runs, method, one_torch_thread):
    """A bundle whose fusion is a reference fusion loads, and FusionModel.apply on the modality tracks in memory
    reproduces the fusion run's exported predictions (the audio tokens with their predictions for RAAV, the
    end-aligned windows for dcm-ref)."""
    from vaest.apply import Bundle, FusionModel, check_fusion_inputs, load_model
    from vaest.corpus import load_corpus
    from vaest.features.store import FeatureStore
    from vaest.inference import load_predictions, read_run_json
    from vaest.inference import load_track
    from vaest.inputs.audio_windows import AUDIO_TOKEN_KEY, windows_from_record

    run = ref_fusion_runs["fusions"][method]
    info = read_run_json(run)
    assert (method == "dcm-ref") == bool(info.get("align_end"))
    bdir = ref_fusion_runs["root"] / f"bundle-{method}"
    Bundle(bdir, modalities=dict(ref_fusion_runs["runs"]), fusion=run).save()
    b = load_model(bdir)
    check_fusion_inputs(b)
    fm = FusionModel(b.fusion)
    assert fm.method == method
    audio_run = ref_fusion_runs["runs"]["audio"]
    videos = [v for v in load_corpus(ref_fusion_runs["corpus"]).videos if v.split == "val"]
    assert videos
    for v in videos:
        tracks = {m: load_track(r, v.id) for m, r in b.modalities.items()}
        tok = FeatureStore(audio_run).load(AUDIO_TOKEN_KEY, v.id)
        fused = fm.apply(tracks, v, windows_from_record(tok), tok.extras.get("va"))
        rec = load_predictions(run, v.id)
        assert fused.va.shape == rec.values.shape
        np.testing.assert_allclose(fused.va, rec.values, atol=1e-4, err_msg=f"{method} {v.id}")
        if method == "raav-reference":
            np.testing.assert_allclose(fused.extras["weights"], rec.extras["weights"], atol=1e-4)
        else:
            assert "weights" not in fused.extras  # the directed fusion weights no modality


def test_console_script_ends_fast_with_every_output_written(tmp_path):
    """`vaest predict` ends with os._exit once its outputs are written (cli._FAST_EXIT): the files, the index,
    the log lines on stderr and the exit code (1: one of two inputs failed) must all still be there."""
    exe = Path(sys.executable).with_name("vaest")
    if not exe.exists():
        pytest.skip(f"no installed vaest console script beside {sys.executable}")
    good = make_video(tmp_path / "good.mp4", n_frames=20)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    out = tmp_path / "o"
    p = subprocess.run([str(exe), "predict", str(good), str(bad), "--out", str(out)], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "VAEST_NO_PROGRESS": "1",
                            "COLUMNS": "200"})
    assert p.returncode == 1, p.stderr[-2000:]
    assert (out / "good.csv").exists() and (out / "good.json").exists() and (out / "good.png").exists()
    index = (out / "index.csv").read_text()
    assert "good.mp4" in index and "bad.mp4" in index
    assert "good.csv" in p.stderr and "bad.mp4" in p.stderr


def test_audio_runs_beside_the_frames_only_for_short_media(tmp_path):
    """Short media get their audio work beside the frames (speed), long ones after the frames (memory: the whole
    track and its analysis grow with the length); an unknown duration is not run beside."""
    from vaest.media import probe
    from vaest.predictor.extract import AUDIO_BESIDE_MAX_S, audio_beside

    short = make_video(tmp_path / "short.mp4", n_frames=20)
    long = tmp_path / "long.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "color=color=gray:size=32x32:rate=1",
                    "-f", "lavfi", "-i", "sine=frequency=200:sample_rate=8000", "-t", str(AUDIO_BESIDE_MAX_S + 10),
                    "-c:v", "libx264", "-c:a", "aac", "-shortest", str(long)], check=True)
    assert audio_beside(probe(short).duration) and not audio_beside(probe(long).duration)
    assert not audio_beside(None) and not audio_beside(0.0)


def test_cache_key_names_a_non_default_working_size(tmp_path):
    """Features made at one working size are never served to a run at another: a non-default
    ``working_side`` gets its own cache folder, the default keeps the plain media key (old caches stay valid)."""
    import vaest
    from vaest.media import WORKING_SIDE
    from vaest.predictor.extract import media_key

    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"not decoded here")
    stores = {side: vaest.Predictor(device="cpu", cache=tmp_path / "cache", working_side=side)._store(clip).root
              for side in (None, WORKING_SIDE, 480, 0)}
    assert stores[None] == stores[WORKING_SIDE] == tmp_path / "cache" / media_key(clip)
    assert stores[480].name == media_key(clip) + "-w480" and stores[0].name == media_key(clip) + "-w0"
