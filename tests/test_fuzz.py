"""Property tests of the text parsers users feed by hand: annotation files, manifests, submissions.

Each parser either parses or raises a :class:`vaest.errors.VaestError` naming the file (never another
exception), keeps label line k on frame k, and reads back what the matching writer wrote.
"""

from __future__ import annotations

import csv
import io
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest

hyp = pytest.importorskip("hypothesis", reason="hypothesis is not installed (pip install 'vaest[dev]')")
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from vaest.corpus.labels import read_va_file, write_va_file  # noqa: E402
from vaest.corpus.manifest import load_manifest  # noqa: E402
from vaest.errors import VaestError  # noqa: E402

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_TMP = Path(tempfile.mkdtemp(prefix="vaest-fuzz-"))


def _file(name: str, data: bytes | str) -> Path:
    p = _TMP / name
    p.write_bytes(data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data)
    return p


def _parse_or_vaest_error(fn, path: Path):
    try:
        return fn(path)
    except VaestError as e:
        assert str(path) in str(e), f"message does not name the file: {e}"
        return None


# ------------------------------------------------------------------------------------------- annotations

number = st.floats(allow_nan=True, allow_infinity=True, width=32).map(lambda x: f"{x:.3f}")
pair = st.tuples(st.floats(-1, 1, width=32), st.floats(-1, 1, width=32))
junk = st.text(st.characters(exclude_characters="\n\r", codec="utf-8"), max_size=12)
body_line = st.one_of(
    pair.map(lambda p: f"{p[0]:.3f},{p[1]:.3f}"),
    st.just("-5,-5"),
    st.tuples(number, number).map(",".join),
    junk,
    st.tuples(junk, junk).map(",".join),
)
header = st.sampled_from(["valence,arousal", "Valence, Arousal", "\ufeffvalence,arousal", "valence;arousal",
                          "arousal,valence", "", "valence"])


@FUZZ
@given(st.binary(max_size=300))
def test_va_parser_never_crashes_on_bytes(data):
    out = _parse_or_vaest_error(read_va_file, _file("bytes.txt", data))
    if out is not None:
        assert out.dtype == np.float32 and out.ndim == 2 and out.shape[1] == 2
        assert (np.isnan(out).all(1) | (np.isfinite(out).all(1) & (np.abs(out) <= 1).all(1))).all()


@FUZZ
@given(header, st.lists(body_line, max_size=25), st.sampled_from(["\n", "\r\n"]), st.booleans())
@example("valence,arousal", ["0.1,0.2\x0c", "0.3,0.4"], "\n", True)  # str.splitlines broke lines at \x0c ...
@example("valence,arousal", ["\x1e0", "0.5,0.5", "0.1,0.2\u2028"], "\r\n", False)  # ... \x1e and \u2028
def test_va_parser_keeps_line_k_on_frame_k(head, lines, eol, final_eol):
    text = eol.join([head, *lines]) + (eol if final_eol else "")
    out = _parse_or_vaest_error(read_va_file, _file("lines.txt", text))
    ok_header = head.lstrip("\ufeff").replace(" ", "").lower() == "valence,arousal"
    assert (out is not None) == ok_header
    if out is None:
        return
    n = len(lines)
    while n and not lines[n - 1].strip():
        n -= 1  # trailing blank lines are not frames
    assert len(out) == n
    for k, line in enumerate(lines[:n]):
        parts = line.split(",")
        try:
            v, a = float(parts[0]), float(parts[1])
            valid = len(parts) == 2 and all(math.isfinite(x) and abs(x) <= 1 for x in (v, a))
        except (ValueError, IndexError):
            valid = False
        if valid:
            np.testing.assert_allclose(out[k], [v, a], rtol=1e-6, err_msg=f"line {k + 2}: {line!r}")
        else:
            assert np.isnan(out[k]).all(), f"line {k + 2}: {line!r} should be an invalid frame"


@FUZZ
@given(st.lists(st.one_of(pair, st.just((math.nan, math.nan))), max_size=40))
def test_va_round_trip(rows):
    va = np.array(rows, dtype=np.float32).reshape(-1, 2)
    p = _TMP / "rt.txt"
    write_va_file(p, va)
    back = read_va_file(p)
    assert back.shape == va.shape
    np.testing.assert_array_equal(np.isnan(back), np.isnan(va))
    np.testing.assert_allclose(back, va, atol=5e-4 + 1e-6)


# ------------------------------------------------------------------------------------------- manifests

cell = st.one_of(st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=10),
                 st.sampled_from(["train", "val", "test", "nan", "-1", "0.5", "2", "a.mp4", "x.wav", ""]))
columns = st.lists(st.sampled_from(["path", "split", "id", "labels", "valence", "arousal", "fps", "extra", ""]),
                   min_size=0, max_size=6)


@FUZZ
@given(st.binary(max_size=300))
@example(b"path\n\xe9.mp4\n")  # not UTF-8 (was UnicodeDecodeError)
@example(b"path\n" + b"a" * 200_000 + b"\n")  # csv field limit (was csv.Error)
def test_manifest_never_crashes_on_bytes(data):
    _parse_or_vaest_error(load_manifest, _file("bytes.csv", data))


@FUZZ
@given(columns, st.lists(st.lists(cell, max_size=8), max_size=6))
@example(["path"], [["a.mp4", "extra cell"]])  # was AttributeError
@example(["path", "fps"], [["a.mp4", "nan"]])  # was accepted
@example(["path", "path"], [["a.mp4", "b.mp4"]])  # was silently the last column
def test_manifest_parses_or_names_the_problem(cols, rows):
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(cols)
    w.writerows(rows)
    c = _parse_or_vaest_error(load_manifest, _file("rows.csv", buf.getvalue()))
    if c is not None:
        ids = [v.id for v in c.videos]
        assert len(set(ids)) == len(ids)
        for v in c.videos:
            assert v.split in ("train", "val", "test", "predict")
            assert v.fps is None or (math.isfinite(v.fps) and v.fps > 0)
            assert v.clip_label is None or all(math.isfinite(x) and -1 <= x <= 1 for x in v.clip_label)


name = st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc", "Zl", "Zp"], exclude_characters="/\\"),
               min_size=1, max_size=8).filter(lambda s: s.strip() == s and s not in (".", ".."))
manifest_row = st.fixed_dictionaries({
    "path": name.map(lambda s: f"media/{s}.mp4"),
    "split": st.sampled_from(["train", "val", "test"]),
    "valence": st.one_of(st.none(), st.floats(-1, 1)),
    "arousal": st.floats(-1, 1),
    "fps": st.one_of(st.none(), st.floats(1, 120)),
})


@FUZZ
@given(st.lists(manifest_row, max_size=6, unique_by=lambda r: r["path"]))
def test_manifest_round_trip(rows):
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["path", "split", "id", "valence", "arousal", "fps"])
    w.writeheader()
    for i, r in enumerate(rows):
        clip = r["valence"] is not None
        w.writerow({"path": r["path"], "split": r["split"], "id": f"v{i}",
                    "valence": repr(r["valence"]) if clip else "", "arousal": repr(r["arousal"]) if clip else "",
                    "fps": repr(r["fps"]) if r["fps"] is not None else ""})
    c = load_manifest(_file("rt.csv", buf.getvalue()))
    assert [v.id for v in c.videos] == [f"v{i}" for i in range(len(rows))]
    for v, r in zip(c.videos, rows):
        assert v.media == _TMP / r["path"] and v.split == r["split"] and v.fps == r["fps"]
        assert v.clip_label == ((r["valence"], r["arousal"]) if r["valence"] is not None else None)


# ------------------------------------------------------------------------------------------- submissions

from vaest import submission  # noqa: E402  (part of vaest: an import error fails the module)
vid_name = st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc", "Zl", "Zp", "Zs"],
                                 exclude_characters="/\\,\"'"), min_size=1, max_size=10)


@FUZZ
@given(st.binary(max_size=300))
@example(b"image_location,valence,arousal\n\xff/00001.jpg,0,0\n")  # not UTF-8 (was UnicodeDecodeError)
def test_submission_reader_never_crashes_on_bytes(data):
    p = _file("sub.csv", data)
    _parse_or_vaest_error(submission.read_submission, p)
    _parse_or_vaest_error(lambda q: submission.read_template(q, {"a": 3}), p)


@FUZZ
@given(st.lists(st.one_of(st.tuples(vid_name, st.integers(-2, 99999)).map(lambda t: f"{t[0]}/{t[1]:05d}.jpg"), junk),
                max_size=8),
       st.lists(st.tuples(number, number), min_size=8, max_size=8))
def test_submission_reader_parses_or_names_the_problem(locs, values):
    text = "image_location,valence,arousal\n" + "".join(f"{loc},{v},{a}\n" for loc, (v, a) in zip(locs, values))
    p = _file("sub2.csv", text)
    out = _parse_or_vaest_error(submission.read_submission, p)
    if out is not None:
        for vid, va in out.items():
            assert va.ndim == 2 and va.shape[1] == 2 and np.isfinite(va).all() and (np.abs(va) <= 1).all()


@FUZZ
@given(st.dictionaries(vid_name, st.lists(st.tuples(st.floats(-1, 1), st.floats(-1, 1)), min_size=1, max_size=6),
                       min_size=1, max_size=4))
def test_submission_round_trip(preds):
    arrays = {k: np.array(v, dtype=np.float64) for k, v in preds.items()}
    p = _TMP / "rt_sub.csv"
    n = submission.write_submission(p, arrays)
    assert n == sum(len(v) for v in arrays.values())
    back = submission.read_submission(p)
    assert set(back) == set(arrays)
    for k in arrays:
        np.testing.assert_allclose(back[k], arrays[k], atol=1e-6)
