"""Audio inputs of one video and the audio model's per-video application, shared by training and applying.

Windows and targets (reference rules):

- window ``k`` covers seconds ``[2k, 2k + 4)`` of the media (:func:`vaest.features.audio.audio_window_starts`);
  the last one may run past the end (its input is padded by :func:`vaest.windows.take_window`, its missing
  seconds are masked);
- the target of each 1 s chunk is the mean of the valid frame labels whose frame midpoint lies in that second
  (:func:`second_targets`); a chunk without a valid label, or without audio, is masked;
- a window trains only if at least 2 of its 4 seconds have valid labels (:func:`label_rule`) and, with filtering,
  if it passes the training rule of :func:`vaest.features.audio.window_reliability`; fusion uses the windows of
  its fusion rule (:meth:`AudioItem.token_mask`).

:func:`apply_item` runs a trained audio model over one item: per-second outputs (overlapping windows averaged)
expanded to the frame grid, and the per-window tokens the RAAV fusion attends to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any, Iterable

import numpy as np

from vaest.corpus import Video
from vaest.errors import FeatureError
from vaest.features.audio import (
    N_CHUNKS,
    SECOND_BASE,
    WIN_S,
    WINDOW_BASE,
    FilterConfig,
    WindowStats,
    audio_key,
    audio_window_starts,
    n_seconds,
    reliability_from_store,
)
from vaest.features.store import Expect, FeatureRecord, FeatureStore, RowView
from vaest.media import fps_or_default
from vaest.timebase import TimeBase, TimeSeries, fill_nearest, frame_midpoints, to_frames
from vaest.windows import overlap_average, take_window

TOKENS_KEY = "audio-tokens"


def second_targets(labels: np.ndarray, fps: float, n_sec: int, frame_times: np.ndarray | None = None) -> np.ndarray:
    """Mean valid label of each 1 s bin.

    Args:
        labels: (n_frames, 2) on the video's frame grid, NaN where invalid.
        fps: frame rate of that grid; frame ``j`` falls in second ``floor(midpoint_j)``.
        n_sec: number of bins.
    Returns:
        (n_sec, 2) float32, NaN for bins without a valid frame.
    """
    lab = np.asarray(labels, dtype=np.float64).reshape(-1, 2)
    out = np.full((n_sec, 2), np.nan, dtype=np.float32)
    if len(lab) == 0 or n_sec <= 0:
        return out
    b = np.floor(frame_midpoints(len(lab), fps, frame_times)).astype(np.int64)
    ok = np.isfinite(lab).all(1) & (b >= 0) & (b < n_sec)
    sums = np.zeros((n_sec, 2))
    cnt = np.zeros(n_sec)
    np.add.at(sums, b[ok], lab[ok])
    np.add.at(cnt, b[ok], 1)
    has = cnt > 0
    out[has] = (sums[has] / cnt[has, None]).astype(np.float32)
    return out


def window_targets(sec_targets: np.ndarray, starts: Iterable[int], n_chunks: int = N_CHUNKS) -> np.ndarray:
    """Per-window targets (n_windows, n_chunks, 2) from per-second targets; seconds past the end are NaN."""
    out = []
    for s in starts:
        seg, valid = take_window(sec_targets, int(s), n_chunks)
        seg = seg.copy()
        seg[~valid] = np.nan
        out.append(seg)
    return np.stack(out).astype(np.float32) if out else np.zeros((0, n_chunks, 2), np.float32)


def label_rule(targets: np.ndarray, min_valid: int = 2) -> np.ndarray:
    """Reference rule: a window trains if at least ``min_valid`` of its seconds have a valid target. (n_w,) bool."""
    return np.isfinite(targets).all(-1).sum(-1) >= min_valid


# ---------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------


def _zscore(mean: np.ndarray, std: np.ndarray, x: np.ndarray) -> np.ndarray:
    """(k, D) rows standardised with a video's (D,) float32 mean and std."""
    return (x - mean) / std


def video_standardized(x: Any) -> RowView:
    """Cached frame features (T, D) z-scored within their video (``feature_norm="video"``), read by rows on
    demand: the statistics come from one whole read of that video (float32 mean and std, std floored at 1e-5,
    as standardising the whole array), then only they are kept; a window's rows are ``(x - mean) / std``."""
    whole = np.asarray(x[:]).astype(np.float32)
    return RowView([x], transform=partial(_zscore, whole.mean(0), np.maximum(whole.std(0), 1e-5)))


@dataclass
class AudioItem:
    """One video's audio input, windows, targets and window statistics.

    Attributes:
        x: (n_steps, D) cached frame features, or (n_samples, 1) waveform (float16) for the waveform models;
            left in the store (a :class:`~vaest.features.store.StoredArray`, or :func:`video_standardized`'s
            :class:`~vaest.features.store.RowView` over one) and read by window, so training's memory does not
            grow with hours of audio.
        rate, offset: steps per second of ``x`` and the time of its first step (its time base).
        starts: (n_windows,) window start seconds; ``n_sec``: 1 s bins of the media.
        targets: (n_windows, 4, 2) per-second targets (NaN invalid); ``has_audio``: (n_windows, 4) second has audio.
        label_ok: (n_windows,) the >= 2 valid seconds rule; ``stats``: cross-modal statistics of each window.
        n_frames, fps, frame_labels: the video's frame grid and its labels (NaN invalid; None when unlabelled).
    """

    id: str
    split: str
    x: np.ndarray
    rate: float
    offset: float
    starts: np.ndarray
    n_sec: int
    targets: np.ndarray
    has_audio: np.ndarray
    label_ok: np.ndarray
    stats: WindowStats
    n_frames: int
    fps: float
    frame_labels: np.ndarray | None
    audio_seconds: float = 0.0

    @property
    def n_windows(self) -> int:
        return len(self.starts)

    def train_mask(self, filtering: bool) -> np.ndarray:
        """Windows that train: label rule, some audio, and (with filtering) the cross-modal training rule."""
        m = self.label_ok & self.has_audio.any(1)
        return m & self.stats.train_ok if filtering else m

    def token_mask(self, filtering: bool) -> np.ndarray:
        """Windows fusion may use: some audio and (with filtering) the cross-modal fusion rule."""
        m = self.has_audio.any(1)
        return m & self.stats.fuse_ok if filtering else m

    def window_input(self, k: int, zero_pad: bool = False) -> np.ndarray:
        """Input of window ``k``: (win_steps, D) features or (win_samples,) float32 waveform.

        A window running past the audio is padded by repeating the last step, or with zeros (``zero_pad``, the
        reference audio model, which also receives :meth:`window_mask`)."""
        w = int(round(WIN_S * self.rate))
        i0 = int(round((float(self.starts[k]) - self.offset) * self.rate))
        if len(self.x) == 0:
            seg = np.zeros((w,) + self.x.shape[1:], dtype=np.float32)
        elif i0 >= len(self.x):
            seg = np.repeat(self.x[-1:], w, axis=0)
        else:
            seg = take_window(self.x, max(i0, 0), w)[0]
        seg = seg.astype(np.float32)
        if zero_pad:
            seg = seg * self.window_mask(k).reshape((-1,) + (1,) * (seg.ndim - 1))
        return seg[:, 0] if self.rate >= 1000 else seg

    def window_mask(self, k: int) -> np.ndarray:
        """(win_steps,) bool: the steps of window ``k`` that hold real audio (not padding)."""
        w = int(round(WIN_S * self.rate))
        i0 = int(round((float(self.starts[k]) - self.offset) * self.rate))
        idx = i0 + np.arange(w)
        return (idx >= 0) & (idx < len(self.x))


def record_grid(store: FeatureStore, video: Video) -> tuple[int, float] | None:
    for key in ("mouth", "facetrack"):
        if not video.audio_only and store.has(key, video.id):
            rec = store.load(key, video.id)
            return len(rec.values), 1.0 / rec.base.hop
    return None


def frame_grid(store: FeatureStore, video: Video, audio_meta: dict[str, Any]) -> tuple[int, float]:
    """The video's frame grid (n_frames, fps): the decoded count of a stored ``mouth``/``facetrack`` record, else
    the container's count and rate, else the label count. Audio-only media use the labels' rate (or 30 fps) and
    the label count (or the audio duration)."""
    dur = float(audio_meta.get("duration") or 0.0)
    if video.audio_only or not audio_meta.get("has_video", True):
        fps = fps_or_default(video.fps)
        n = video.n_label_frames
        return int(n if n else max(1, math.ceil(dur * fps))), fps
    got = record_grid(store, video)
    if got is not None:
        return got
    fps = fps_or_default(audio_meta.get("fps") or video.fps)
    n = int(audio_meta.get("n_frames") or 0)
    if n <= 0:
        n = int(video.n_label_frames or 0)
    if n <= 0:
        n = max(1, math.ceil(max(dur, float(audio_meta.get("media_duration") or 0.0)) * fps))
    return n, fps


def load_item(store: FeatureStore, video: Video, encoder: str, filt: FilterConfig | None = None,
              min_valid_seconds: int = 2, feature_norm: str = "video", expect: Expect | None = None) -> AudioItem:
    """Build the :class:`AudioItem` of one video from the feature store (audio record, mouth/face/vad records).

    ``feature_norm="video"`` z-scores each dimension of cached frame features within the video (not waveforms);
    inference must use the setting the model was trained with (saved in its checkpoint as ``feature_norm``).
    The features stay in the store (:meth:`FeatureStore.open`): windows read their rows when asked for.
    ``expect`` checks the audio record's width, config hash and features hash before anything is read
    (:class:`~vaest.features.store.Expect`: one per training run or applied model).
    """
    if feature_norm not in ("global", "video"):
        raise FeatureError(f"feature_norm must be 'global' or 'video', got {feature_norm!r}")
    rec = store.open(audio_key(encoder), video.id, expect)
    meta = rec.meta
    x: Any = rec.values
    if feature_norm == "video" and encoder != "wavlm" and len(x):
        x = video_standardized(x)
    n_frames, fps = frame_grid(store, video, meta)
    labels = video.labels_for(n_frames) if video.has_labels else None
    audio_s = float(meta.get("duration") or len(rec.values) * rec.base.hop)
    duration = max(audio_s, n_frames / fps)
    n_sec = n_seconds(duration)
    starts = np.asarray(audio_window_starts(duration), dtype=np.int64)
    if labels is not None:
        targets = window_targets(second_targets(labels, fps, n_sec), starts)
    else:
        targets = np.full((len(starts), N_CHUNKS, 2), np.nan, dtype=np.float32)
    sec = starts[:, None] + np.arange(N_CHUNKS)[None, :]
    has_audio = (sec + 0.5 <= audio_s + 1e-9) & (sec < n_sec)
    stats = reliability_from_store(store, video, starts.astype(np.float64), WIN_S, filt)
    return AudioItem(video.id, video.split, x, 1.0 / rec.base.hop, rec.base.start, starts, n_sec, targets,
                     has_audio, label_rule(targets, min_valid_seconds), stats, n_frames, fps, labels, audio_s)


# ---------------------------------------------------------------------------------------------------------
# Prediction helpers
# ---------------------------------------------------------------------------------------------------------


def input_key(item: AudioItem) -> str:
    """Model keyword for an item's input: ``wav`` for waveforms, ``feats`` for frame features."""
    return "wav" if item.rate >= 1000 else "feats"


def predict_windows(model: Any, item: AudioItem, device: str = "cpu",
                    batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Run the model over every window of an item: ``va`` (n_windows, 4, 2) and ``emb`` (n_windows, 4, E)."""
    import torch

    key = input_key(item)
    vas, embs = [], []
    model.eval()
    with torch.no_grad():
        for i in range(0, item.n_windows, batch_size):
            ks = range(i, min(i + batch_size, item.n_windows))
            masked = bool(getattr(model, "takes_mask", False))
            x = np.stack([item.window_input(k, masked) for k in ks])
            kw = {key: torch.from_numpy(x).to(device)}
            if masked:
                kw["mask"] = torch.from_numpy(np.stack([item.window_mask(k) for k in ks])).to(device)
            out = model(**kw)
            vas.append(out["va"].float().cpu().numpy())
            embs.append(out["emb"].float().cpu().numpy())
    if not vas:
        return np.zeros((0, N_CHUNKS, 2), np.float32), np.zeros((0, N_CHUNKS, 0), np.float32)
    return np.concatenate(vas), np.concatenate(embs)


def seconds_from_windows(item: AudioItem, per_window: np.ndarray) -> np.ndarray:
    """Average per-window, per-second outputs (n_windows, 4, D) onto the media's seconds -> (n_sec, D).

    Seconds without audio (and seconds no window covers) are NaN.
    """
    vals = np.asarray(per_window, dtype=np.float32).copy()
    vals[~item.has_audio] = np.nan
    out, _ = overlap_average(item.n_sec, [int(s) for s in item.starts], list(vals))
    return out


def frames_from_seconds(sec_values: np.ndarray, n_frames: int, fps: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-second values (n_sec, D) -> frame grid (n_frames, D), filled from the nearest covered frame, and the
    (n_frames,) mask of frames a second with a value covers. A series with no value gives zeros."""
    ok = np.isfinite(sec_values).all(1)
    vals, mask = to_frames(TimeSeries(sec_values, SECOND_BASE, ok), n_frames, fps)
    vals = fill_nearest(vals, mask, inplace=True)  # to_frames' fresh float32 array: filled and cleaned in place
    return np.nan_to_num(vals, nan=0.0, copy=False), mask


def apply_item(model: Any, it: AudioItem, filtering: bool, encoder: str, device: str = "cpu"
               ) -> tuple[FeatureRecord, FeatureRecord]:
    """A trained audio model applied to one item, in memory: the per-frame record (values (n_frames, 2) VA,
    mask = frames in a usable window with audio, extras ``emb`` (n_frames, E) and ``reliability`` (n_frames,))
    and the per-window token record (values (n_windows, 4, E), mask = windows fusion may use, extras per-second
    ``va``, ``has_audio`` and the window statistics). :func:`export_run` writes exactly these two records."""
    win_va, win_emb = predict_windows(model, it, device)
    va, covered = frames_from_seconds(seconds_from_windows(it, win_va), it.n_frames, it.fps)
    emb, _ = frames_from_seconds(seconds_from_windows(it, win_emb), it.n_frames, it.fps)
    tok = it.token_mask(filtering)
    _, fmask = to_frames(TimeSeries(np.ones(it.n_windows, np.float32), WINDOW_BASE, tok), it.n_frames, it.fps)
    rel, rmask = to_frames(TimeSeries(it.stats.reliability.astype(np.float32), WINDOW_BASE, it.has_audio.any(1)),
                           it.n_frames, it.fps)
    rel = np.where(rmask, rel[:, 0], 0.0).astype(np.float32)
    meta = {"modality": "audio", "encoder": encoder, "source": it.stats.source, "filter": filtering}
    frames = FeatureRecord(TimeSeries(np.asarray(va, np.float32), TimeBase.frames(it.fps), fmask & covered),
                           {"emb": np.asarray(emb, np.float32), "reliability": rel}, meta)
    extras = {"va": win_va.astype(np.float32), "has_audio": it.has_audio, "label_ok": it.label_ok,
              "train_ok": it.train_mask(filtering), **{k: np.asarray(v) for k, v in it.stats.as_arrays().items()}}
    tokens = FeatureRecord(TimeSeries(win_emb.astype(np.float32), WINDOW_BASE, tok), extras,
                           {**meta, "n_frames": it.n_frames, "fps": it.fps, "n_sec": it.n_sec})
    return frames, tokens
