import logging

import numpy as np
import pytest

from mediautil import count_frames, make_video, make_wav
from vaest.errors import MediaError
from vaest.media import iter_frames, probe, read_audio


def test_frames_timestamps_and_audio(tmp_path):
    p = make_video(tmp_path / "v.mp4", n_frames=45, fps=30, audio=True)
    info = probe(p)
    assert info.has_video and info.has_audio and info.fps == pytest.approx(30)
    batches = list(iter_frames(p, batch_size=16))
    idx = np.concatenate([b.index for b in batches])
    t = np.concatenate([b.times for b in batches])
    assert idx.tolist() == list(range(45))
    np.testing.assert_allclose(t, np.arange(45) / 30, atol=1e-3)
    frames = np.concatenate([b.frames for b in batches])
    assert frames.shape == (45, 48, 64, 3) and frames.dtype == np.uint8
    # frame identity survives encoding: brightness 4k
    np.testing.assert_allclose(frames[:, 10:20, 10:20].mean(axis=(1, 2, 3)), 4 * np.arange(45), atol=4)
    wav = read_audio(p)
    assert wav.dtype == np.float32 and abs(len(wav) - 1.5 * 16000) < 2048
    assert 0.1 < np.abs(wav).max() < 0.5
    assert count_frames(p) == 45


def test_no_audio_track_warns(tmp_path, caplog):
    p = make_video(tmp_path / "silent.mp4", n_frames=10, audio=False)
    with caplog.at_level(logging.WARNING):
        wav = read_audio(p)
    assert wav.size == 0 and "no audio track" in caplog.text and "silent.mp4" in caplog.text


def test_audio_only_file(tmp_path):
    p = make_wav(tmp_path / "a.wav", seconds=1.0, sr=22050)
    assert len(read_audio(p)) == pytest.approx(16000, abs=32)
    with pytest.raises(MediaError, match="a.wav: has no video stream"):
        list(iter_frames(p))


def test_unreadable_files(tmp_path):
    with pytest.raises(MediaError, match="no such file"):
        probe(tmp_path / "missing.mp4")
    e = tmp_path / "empty.mp4"
    e.write_bytes(b"")
    with pytest.raises(MediaError, match="empty.mp4: file is empty"):
        probe(e)
    g = tmp_path / "garbage.mp4"
    g.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(MediaError, match="garbage.mp4"):
        list(iter_frames(g))


def test_corrupt_tail_returns_what_was_read(tmp_path, caplog):
    p = make_video(tmp_path / "t.mp4", n_frames=60, size=(64, 48), audio=False, codec="libx264")
    data = p.read_bytes()
    # mp4 puts the index at the end with faststart off; cut inside the data instead of the header
    q = tmp_path / "cut.mp4"
    q.write_bytes(data[: int(len(data) * 0.6)])
    try:
        n = sum(len(b.index) for b in iter_frames(q))
    except MediaError as e:
        assert "cut.mp4" in str(e)
        return
    assert 0 < n <= 60


def test_variable_frame_rate(tmp_path, caplog):
    pts = [0.0, 0.033, 0.066, 0.2, 0.233, 0.5, 0.533, 0.566, 0.9, 1.0]
    p = make_video(tmp_path / "vfr.mkv", n_frames=10, fps=30, audio=False, pts_seconds=pts)
    with caplog.at_level(logging.WARNING):
        t = np.concatenate([b.times for b in iter_frames(p)])
    np.testing.assert_allclose(t, pts, atol=2e-3)
    assert "variable frame rate" in caplog.text


def test_audio_longer_than_its_stated_duration_is_read_whole(tmp_path):
    """An MP3 without a Xing header states a duration estimated from its first frames' bitrate: loud noise first,
    then long silence, says ~17 s for 126 s. read_audio sizes its buffer from the stated duration (+10 % + 30 s)
    and must grow it for the rest: every sample, equal to a plain decode of the same file."""
    import subprocess

    import av

    p = tmp_path / "vbr.mp3"
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    "anoisesrc=d=6:c=white:a=0.5:r=44100", "-f", "lavfi", "-i", "anullsrc=r=44100:cl=mono",
                    "-filter_complex", "[1:a]atrim=duration=120[s];[0:a][s]concat=n=2:v=0:a=1", "-ac", "1",
                    "-c:a", "libmp3lame", "-q:a", "0", "-write_xing", "0", str(p)], check=True)
    with av.open(str(p)) as c:
        st = c.streams.audio[0]
        stated = float(st.duration * st.time_base) if st.duration else c.duration / 1e6
        res = av.AudioResampler(format="flt", layout="mono", rate=16000)
        chunks = [o.to_ndarray().reshape(-1) for fr in c.decode(st) for o in res.resample(fr)]
        chunks += [o.to_ndarray().reshape(-1) for o in res.resample(None)]
    plain = np.concatenate(chunks)
    assert len(plain) / 16000 > stated * 1.1 + 30  # the file really runs past the buffer's first size
    wav = read_audio(p)
    np.testing.assert_array_equal(wav, plain)
