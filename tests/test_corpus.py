import json
import math
from pathlib import Path

import numpy as np
import pytest

from vaest.corpus import load_corpus
from vaest.corpus.affwild2 import split_side
from vaest.corpus.labels import read_va_file, write_va_file
from vaest.corpus.records import reconcile_labels
from vaest.corpus.stats import corpus_stats
from vaest.errors import CorpusError, LabelError
from conftest import require_shared

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _abaw(tmp_path: Path) -> Path:
    ann = tmp_path / "annotations" / "VA_Estimation_Challenge"
    (ann / "Train_Set").mkdir(parents=True)
    (ann / "Validation_Set").mkdir(parents=True)
    (ann / "Train_Set" / "a.txt").write_text("valence,arousal\n0.5,0.1\n-5,-5\n0.1,0.3\n")
    (ann / "Train_Set" / "b_left.txt").write_text("valence,arousal\n-0.5,0.2\n")
    (ann / "Train_Set" / "b_right.txt").write_text("valence,arousal\n0.25,-0.2\n0.75,0.4\n")
    (ann / "Validation_Set" / "c.txt").write_text("valence,arousal\n0,0\n1,1\n")
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "b.mp4").write_bytes(b"")
    (tmp_path / "cropped_aligned" / "b_left").mkdir(parents=True)
    return tmp_path


def test_read_write_va(tmp_path):
    va = np.array([[0.1, 0.2], [np.nan, np.nan], [-1.0, 1.0]])
    write_va_file(tmp_path / "x.txt", va)
    txt = (tmp_path / "x.txt").read_text().splitlines()
    assert txt == ["valence,arousal", "0.100,0.200", "-5,-5", "-1.000,1.000"]
    back = read_va_file(tmp_path / "x.txt")
    np.testing.assert_allclose(back, va, atol=1e-6)


def test_bad_label_files(tmp_path, caplog):
    p = tmp_path / "bad.txt"
    p.write_text("v,a\n0,0\n")
    with pytest.raises(LabelError, match="bad.txt.*header"):
        read_va_file(p)
    p.write_text("")
    with pytest.raises(LabelError, match="empty"):
        read_va_file(p)
    with pytest.raises(LabelError, match="not found"):
        read_va_file(tmp_path / "nope.txt")
    p.write_text("valence,arousal\n0.1,nan\n2.0,0\nabc,0.1\n0.2,0.3\n-5,0.4\n")
    lab = read_va_file(p)
    assert np.isnan(lab[:3]).all() and np.isnan(lab[4]).all()
    np.testing.assert_allclose(lab[3], [0.2, 0.3])


def test_split_side():
    assert split_side("135-24-1920x1080_left") == ("135-24-1920x1080", "left")
    assert split_side("10-60-1280x720_right") == ("10-60-1280x720", "right")
    assert split_side("video_leftish") == ("video_leftish", None)


def test_abaw_layout(tmp_path):
    c = load_corpus(_abaw(tmp_path))
    assert c.kind == "affwild2"
    ids = {v.id: v for v in c}
    assert set(ids) == {"a", "b_left", "b_right", "c"}
    assert ids["b_left"].media == ids["b_right"].media == tmp_path / "videos" / "b.mp4"
    assert ids["b_left"].side == "left" and ids["b_left"].face_dir is not None and ids["b_right"].face_dir is None
    assert ids["a"].media is None and ids["c"].split == "val"
    assert len(c.media_items()) == 1


def test_reconcile_rule():
    lab = np.arange(10, dtype=np.float32).reshape(5, 2)
    np.testing.assert_array_equal(reconcile_labels(lab, 3), lab[:3])
    out = reconcile_labels(lab, 7)
    np.testing.assert_array_equal(out[:5], lab)
    assert np.isnan(out[5:]).all()


def test_stats_exact(tmp_path):
    st = corpus_stats(load_corpus(_abaw(tmp_path)))
    tr = st["train"]
    assert tr["videos"] == 3 and tr["frames"] == 6 and tr["valid_frames"] == 5
    v = np.array([0.5, 0.1, -0.5, 0.25, 0.75])
    assert tr["valence_mean"] == pytest.approx(v.mean()) and tr["valence_std"] == pytest.approx(v.std())
    assert st["val"]["frames"] == 2 and st["all"]["frames"] == 8


def test_stats_cli_json(tmp_path):
    from typer.testing import CliRunner

    from vaest.cli import app

    root = _abaw(tmp_path)
    r = CliRunner().invoke(app, ["corpus", "stats", str(root), "--json", str(tmp_path / "s.json")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "s.json").read_text())["train"]["valid_frames"] == 5


def test_manifest(tmp_path):
    (tmp_path / "a.wav").write_bytes(b"")
    (tmp_path / "labs.txt").write_text("valence,arousal\n0.1,0.2\n0.3,0.4\n")
    m = tmp_path / "m.csv"
    m.write_text("path,split,labels,valence,arousal,fps\na.wav,train,labs.txt,,,25\nclip.mp4,val,,0.5,-0.5,\n")
    c = load_corpus(m)
    a, b = c.videos
    assert a.audio_only and a.fps == 25 and a.labels.shape == (2, 2)
    assert b.clip_label == (0.5, -0.5) and b.labels_for(3).tolist() == [[0.5, -0.5]] * 3
    m.write_text("path,split\nx.mp4,holdout\n")
    with pytest.raises(CorpusError, match="m.csv:2: split"):
        load_corpus(m)
    m.write_text("path,labels\nx.wav,l.txt\n")
    with pytest.raises(CorpusError, match="needs an 'fps'"):
        load_corpus(m)


def test_folder_and_missing(tmp_path):
    (tmp_path / "x.mp4").write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "y.flac").write_bytes(b"")
    c = load_corpus(tmp_path)
    ids = {v.id: v for v in c}
    assert set(ids) == {"x", "y"} and ids["y"].audio_only and not ids["x"].audio_only
    with pytest.raises(CorpusError, match="no such"):
        load_corpus(tmp_path / "nope")


def test_real_affwild2_annotations():
    root = require_shared("data/affwild2-va-labels")
    c = load_corpus(root)
    assert len(c) == 356
    st = corpus_stats(c)
    # independent count: every non-header line, and those without -5
    frames = valid = 0
    for f in sorted((root / "Train_Set").glob("*.txt")):
        lines = f.read_text().splitlines()[1:]
        frames += len(lines)
        valid += sum(1 for ln in lines if "-5" not in ln.split(","))
    assert st["train"]["frames"] == frames and st["train"]["valid_frames"] == valid
    assert -1 < st["train"]["valence_mean"] < 1 and st["train"]["arousal_std"] > 0
    fps = {v.id: v.fps for v in c}
    assert fps["10-60-1280x720_right"] == 30.0
