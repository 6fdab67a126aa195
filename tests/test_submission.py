import numpy as np
import pytest

from vaest.submission import SubmissionError, read_submission, read_template, write_submission


def test_round_trip_default_order(tmp_path):
    preds = {"b": np.array([[0.1, 0.2], [np.nan, np.nan], [2.0, -0.5]]), "a_left": np.array([[0.0, 0.0]])}
    n = write_submission(tmp_path / "s.csv", preds)
    assert n == 4
    lines = (tmp_path / "s.csv").read_text().splitlines()
    assert lines[0] == "image_location,valence,arousal"
    assert lines[1].startswith("a_left/00001.jpg,") and lines[2].startswith("b/00001.jpg,")
    back = read_submission(tmp_path / "s.csv")
    # NaN frame filled from nearest (earlier on a tie), out of range clipped
    np.testing.assert_allclose(back["b"], [[0.1, 0.2], [0.1, 0.2], [1.0, -0.5]], atol=1e-6)


def test_template_order_and_expansion(tmp_path):
    t = tmp_path / "tpl.csv"
    t.write_text("image_location,valence,arousal\nz/00002.jpg,,\nz/00001.jpg,,\ny/00003.jpg,,\n")
    preds = {"z": np.zeros((2, 2)), "y": np.ones((2, 2)) * 0.5}
    write_submission(tmp_path / "s.csv", preds, t)
    rows = (tmp_path / "s.csv").read_text().splitlines()[1:]
    assert [r.split(",")[0] for r in rows] == ["z/00002.jpg", "z/00001.jpg", "y/00003.jpg"]
    assert rows[2].endswith("0.500000,0.500000")  # past the end -> last frame
    names = tmp_path / "names.txt"
    names.write_text("y\nz.mp4\n")
    assert read_template(names, {"y": 2, "z": 3}) == [("y", 1), ("y", 2), ("z", 1), ("z", 2), ("z", 3)]


def test_errors(tmp_path):
    t = tmp_path / "tpl.txt"
    t.write_text("missing/00001.jpg\n")
    with pytest.raises(SubmissionError, match="no predictions for 1 template video"):
        write_submission(tmp_path / "s.csv", {"a": np.zeros((1, 2))}, t)
    assert not (tmp_path / "s.csv").exists()
    with pytest.raises(SubmissionError, match="all NaN"):
        write_submission(tmp_path / "s.csv", {"a": np.full((2, 2), np.nan)})
    bad = tmp_path / "bad.csv"
    bad.write_text("image_location,valence,arousal\na/00001.jpg,0.1,0.2\na/00003.jpg,0,0\n")
    with pytest.raises(SubmissionError, match="gaps"):
        read_submission(bad)
    bad.write_text("image_location,valence,arousal\na/00001.jpg,1.5,0.2\n")
    with pytest.raises(SubmissionError, match="in \\[-1, 1\\]"):
        read_submission(bad)
    bad.write_text("loc,v,a\n")
    with pytest.raises(SubmissionError, match="header"):
        read_submission(bad)
