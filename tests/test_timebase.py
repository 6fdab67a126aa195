import numpy as np
import pytest

from vaest.timebase import TimeBase, TimeSeries, fill_nearest, frame_midpoints, to_frames
from vaest.windows import overlap_average, take_window, window_starts


def test_same_rate_is_identity():
    x = np.arange(10, dtype=np.float32)
    v, m = to_frames(TimeSeries(x, TimeBase.frames(30)), 10, 30)
    assert m.all()
    np.testing.assert_array_equal(v[:, 0], x)


def test_one_second_steps_onto_30fps():
    # 3 one-second values -> frames 0..29 take value 0, 30..59 value 1, 60..89 value 2; frame 90+ uncovered
    s = TimeSeries(np.array([10.0, 20.0, 30.0]), TimeBase(hop=1.0, win=1.0))
    v, m = to_frames(s, 95, 30)
    assert (v[:30, 0] == 10).all() and (v[30:60, 0] == 20).all() and (v[60:90, 0] == 30).all()
    assert m[:90].all() and not m[90:].any()
    assert np.isnan(v[90:]).all()


def test_overlapping_segments_are_averaged():
    # 4 s windows every 2 s at 1 fps: frame midpoints 0.5, 1.5, ...
    s = TimeSeries(np.array([0.0, 4.0, 8.0]), TimeBase(hop=2.0, win=4.0))
    v, m = to_frames(s, 9, 1.0)
    # frames 0,1 -> seg0 only; 2,3 -> seg0+seg1; 4,5 -> seg1+seg2; 6,7 -> seg2; 8 -> none
    np.testing.assert_allclose(v[:8, 0], [0, 0, 2, 2, 6, 6, 8, 8])
    assert not m[8]


def test_boundary_frame_goes_to_later_sample():
    # 25 fps series onto 30 fps: frame j midpoint (j+0.5)/30 falls in sample floor(((j+0.5)/30)*25)
    s = TimeSeries(np.arange(25, dtype=float), TimeBase.frames(25))
    v, m = to_frames(s, 30, 30)
    expect = np.floor((np.arange(30) + 0.5) / 30 * 25)
    np.testing.assert_array_equal(v[:, 0], expect)


def test_start_offset_and_mask():
    s = TimeSeries(np.array([1.0, 2.0, 3.0]), TimeBase(hop=1.0, win=1.0, start=0.5), mask=np.array([True, False, True]))
    v, m = to_frames(s, 4, 1.0)  # midpoints 0.5,1.5,2.5,3.5
    # 0.5 in [0.5,1.5) -> sample0; 1.5 -> sample1 (masked); 2.5 -> sample2; 3.5 -> none
    np.testing.assert_array_equal(m, [True, False, True, False])
    assert v[0, 0] == 1 and v[2, 0] == 3


def test_nearest_mode():
    s = TimeSeries(np.array([1.0, 5.0]), TimeBase(hop=2.0, win=1.0))  # centres 0.5, 2.5
    v, m = to_frames(s, 4, 1.0, how="nearest")  # mids .5 1.5 2.5 3.5
    np.testing.assert_array_equal(v[:, 0], [1, 1, 5, 5])
    assert m.all()


def test_variable_frame_rate_timestamps():
    times = np.array([0.0, 0.1, 0.5, 0.55, 1.2])
    s = TimeSeries(np.array([7.0, 9.0]), TimeBase(hop=1.0, win=1.0))
    mids = frame_midpoints(5, 10.0, times)
    np.testing.assert_allclose(mids, [0.05, 0.3, 0.525, 0.875, 1.25])
    v, m = to_frames(s, 5, 10.0, frame_times=times)
    np.testing.assert_array_equal(v[:, 0], [7, 7, 7, 7, 9])


def test_empty_and_all_invalid():
    s = TimeSeries(np.array([1.0]), TimeBase(1, 1), mask=np.array([False]))
    v, m = to_frames(s, 3, 1.0)
    assert not m.any()
    v, m = to_frames(s, 0, 1.0)
    assert v.shape == (0, 1)


def test_fill_nearest():
    x = np.array([np.nan, 1.0, np.nan, np.nan, 4.0, np.nan])
    m = np.isfinite(x)
    np.testing.assert_array_equal(fill_nearest(x, m), [1, 1, 1, 4, 4, 4])


def test_window_starts_cover_everything():
    assert window_starts(0, 400, 150) == []
    assert window_starts(100, 400, 150) == [0]
    assert window_starts(400, 400, 150) == [0]
    assert window_starts(401, 400, 150) == [0, 150]
    assert window_starts(1000, 400, 150) == [0, 150, 300, 450, 600]
    for n in range(1, 50):
        st = window_starts(n, 7, 3)
        covered = set()
        for s in st:
            covered |= set(range(s, min(s + 7, n)))
        assert covered == set(range(n))


def test_take_window_pads_with_last_row():
    x = np.arange(5)[:, None].astype(float)
    w, valid = take_window(x, 3, 4)
    np.testing.assert_array_equal(w[:, 0], [3, 4, 4, 4])
    np.testing.assert_array_equal(valid, [True, True, False, False])


def test_overlap_average():
    preds = [np.ones((4, 1)), 3 * np.ones((4, 1))]
    out, cnt = overlap_average(6, [0, 2], preds)
    np.testing.assert_array_equal(out[:, 0], [1, 1, 2, 2, 3, 3])
    np.testing.assert_array_equal(cnt, [1, 1, 2, 2, 1, 1])


def test_timebase_validation():
    with pytest.raises(ValueError):
        TimeBase(hop=0, win=1)


def test_overlap_averager_streams_to_the_same_bits_as_whole_sums():
    """The streaming averager writes each step once no later window can reach it; its averages must equal, to the
    bit, float64 sums over the whole length divided by the counts (the computation it replaces), on windows that
    overlap, leave a gap, run past the end and carry NaN."""
    from vaest.windows import OverlapAverager

    rng = np.random.default_rng(3)
    n, win = 50, 12
    starts = [0, 5, 10, 25, 30, 33, 44]  # 22..24 is covered by no window; the last window runs past n
    preds = [rng.standard_normal((win, 5)).astype(np.float32) for _ in starts]
    preds[2][3, 1] = np.nan
    acc, cnt = np.zeros((n, 5)), np.zeros(n, np.int64)
    for s, p in zip(starts, preds):
        e = min(s + win, n)
        acc[s:e] += p[: e - s]
        cnt[s:e] += 1
    want = np.full((n, 5), np.nan, np.float32)
    want[cnt > 0] = (acc[cnt > 0] / cnt[cnt > 0, None]).astype(np.float32)
    avg = OverlapAverager(n)
    for s, p in zip(starts, preds):
        avg.add(s, p)
    got, got_cnt = avg.result()
    np.testing.assert_array_equal(got_cnt, cnt)
    assert np.isnan(got[22:25]).all() and np.isnan(got[13, 1])
    np.testing.assert_array_equal(got, want)  # NaN in the same places, every other value bit-equal
    with pytest.raises(ValueError, match="non-decreasing"):
        avg2 = OverlapAverager(n)
        avg2.add(10, preds[0])
        avg2.add(20, preds[1])
        avg2.add(15, preds[2])


def test_to_frames_wide_series_is_blocked_without_changing_values():
    """A series wider than one block of columns (a 256-wide embedding) resamples each column as a narrow one
    would: hand-computed means of the samples covering each frame's midpoint."""
    from vaest import timebase

    rng = np.random.default_rng(0)
    d = timebase._TO_FRAMES_COLUMNS * 2 + 3
    vals = rng.standard_normal((6, d)).astype(np.float32)
    mask = np.array([True, True, False, True, True, True])
    # samples every 0.5 s, 1 s long (overlapping by half); frames at 4 fps -> midpoints 0.125, 0.375, ...
    out, m = to_frames(TimeSeries(vals, TimeBase(hop=0.5, win=1.0), mask), 14, 4.0)
    mids = (np.arange(14) + 0.5) / 4.0
    for j, t in enumerate(mids):
        cover = [i for i in range(6) if mask[i] and 0.5 * i <= t < 0.5 * i + 1.0]
        assert m[j] == bool(cover)
        if cover:
            np.testing.assert_allclose(out[j], vals[cover].astype(np.float64).mean(0), rtol=1e-6)
            for c in (0, d - 1):  # a column of the first and of the last block, alone: the same bits
                one, _ = to_frames(TimeSeries(vals[:, c:c + 1], TimeBase(hop=0.5, win=1.0), mask), 14, 4.0)
                assert one[j, 0] == out[j, c]
        else:
            assert np.isnan(out[j]).all()


def test_fill_nearest_in_place_fills_only_the_holes():
    x = np.array([[np.nan], [2.0], [np.nan], [np.nan], [5.0], [np.nan]])
    m = np.isfinite(x[:, 0])
    copy = fill_nearest(x, m)
    assert np.isnan(x[0, 0])  # the copying form leaves its input alone
    same = fill_nearest(x, m, inplace=True)
    assert same is x
    np.testing.assert_array_equal(x[:, 0], [2, 2, 2, 5, 5, 5])
    np.testing.assert_array_equal(copy, x)
