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
