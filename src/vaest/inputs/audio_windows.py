"""The audio tokens fusion reads: per video, 4 s windows every 2 s of 4 one-second tokens with their masks.

They come from the audio run's store record ``audio-tokens`` when it exists (values (W, 4, H) or (W, 4*H), or
extra ``tokens``; mask = the window is usable (audio and the fusion rule); per-token mask from extra
``token_mask`` or ``has_audio`` (W, 4)), otherwise from the per-frame audio ``emb`` averaged over each second
(:func:`windows_from_track`). A window is reliable when the fusion rule of
:func:`vaest.features.audio.window_reliability` keeps it (>= 1 s mouth open and face coverage >= 0.8), read from
the feature store recorded in the audio run. :func:`frame_window_index` tells each frame which (up to two)
windows cover it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vaest.corpus import Video
from vaest.errors import FeatureError
from vaest.features.store import FeatureRecord, FeatureStore
from vaest.inference import Track
from vaest.timebase import TimeBase, frame_midpoints
from vaest.windows import window_starts

AUDIO_TOKEN_KEY = "audio-tokens"
N_TOKENS = 4
AUDIO_WIN_BASE = TimeBase(hop=2.0, win=4.0)



@dataclass
class AudioWindows:
    """The audio tokens of one video: ``tokens`` (W, K, H), ``token_mask`` (W, K), ``ok`` (W,) reliable windows."""

    tokens: np.ndarray
    token_mask: np.ndarray
    ok: np.ndarray
    base: TimeBase = AUDIO_WIN_BASE



def _window_ok_from_features(features_root: Path | None, video: Video | None, starts: np.ndarray,
                             win: float) -> np.ndarray | None:
    """Fusion rule per window from the feature store's mouth / face / vad records (None when unavailable)."""
    if features_root is None or video is None:
        return None
    try:
        from vaest.features.audio import reliability_from_store
    except ImportError:  # pragma: no cover - audio features not installed
        return None
    store = FeatureStore(features_root)
    if not (store.has("mouth", video.id) or store.has("vad", video.id)):
        return None
    stats = reliability_from_store(store, video, starts, win=win)
    return np.asarray(stats.fuse_ok, dtype=bool)



def audio_windows(run: Path, video_id: str, track: Track, features_root: Path | None = None,
                  video: Video | None = None, with_va: bool = False) -> AudioWindows:
    """The 4 s audio windows of one video with their 4 one-second tokens and masks (see module docstring).

    ``with_va`` appends each second's audio prediction (2 columns) to its token, as the reference RAAV reads
    them (``audio_embedding`` + ``audio_prediction``)."""
    aw = _audio_windows(run, video_id, track, features_root, video)
    if not with_va:
        return aw
    store = FeatureStore(run)
    va = None
    if store.has(AUDIO_TOKEN_KEY, video_id):
        va = store.load(AUDIO_TOKEN_KEY, video_id).extras.get("va")
    return with_token_va(aw, va)



def with_token_va(aw: AudioWindows, va: np.ndarray | None) -> AudioWindows:
    """``aw`` with each token's audio prediction ``va`` (W, K, 2) appended (the reference RAAV's audio input:
    ``audio_embedding`` + ``audio_prediction``); zeros where ``va`` is missing or of another shape."""
    if va is None or np.shape(va) != aw.tokens.shape[:2] + (2,):
        va = np.zeros(aw.tokens.shape[:2] + (2,), np.float32)
    tok = np.concatenate([aw.tokens, np.nan_to_num(np.asarray(va, np.float32))], -1)
    return AudioWindows(tok, aw.token_mask, aw.ok, aw.base)



def _audio_windows(run: Path, video_id: str, track: Track, features_root: Path | None = None,
                   video: Video | None = None) -> AudioWindows:
    store = FeatureStore(run)
    if store.has(AUDIO_TOKEN_KEY, video_id):
        return windows_from_record(store.load(AUDIO_TOKEN_KEY, video_id), str(store.path(AUDIO_TOKEN_KEY, video_id)))
    return windows_from_track(track, features_root, video)



def windows_from_record(rec: FeatureRecord, where: str = "audio tokens") -> AudioWindows:
    """The :class:`AudioWindows` of an audio run's token record (``where`` names it in errors)."""
    tok = rec.extras.get("tokens")
    if tok is None:
        tok = np.asarray(rec.values, dtype=np.float32)
        if tok.ndim == 2:  # (W, K*H) flattened
            if tok.shape[1] % N_TOKENS:
                raise FeatureError(f"{where}: values of width {tok.shape[1]} are not {N_TOKENS} tokens")
            tok = tok.reshape(len(tok), N_TOKENS, -1)
    tok = np.asarray(tok, dtype=np.float32)
    if tok.ndim != 3:
        raise FeatureError(f"{where}: tokens of shape {tok.shape}, expected (windows, tokens, dim)")
    ok = np.asarray(rec.mask, dtype=bool)
    # per-token mask: an explicit token_mask, else the seconds that have audio (has_audio), else all
    tm = next((np.asarray(rec.extras[k], dtype=bool) for k in ("token_mask", "has_audio")
               if k in rec.extras and np.shape(rec.extras[k]) == tok.shape[:2]), np.ones(tok.shape[:2], bool))
    tm = tm & ok[:, None] & np.isfinite(tok).all(-1)
    return AudioWindows(tok, tm, ok, rec.base)



def windows_from_track(track: Track, features_root: Path | None = None, video: Video | None = None) -> AudioWindows:
    """Fallback without a token record: one token per second from the per-frame audio embedding."""
    emb = (track.emb if track.emb is not None else track.va)[:]  # a stored emb is read whole: one video
    n = len(track)
    mids = frame_midpoints(n, track.fps)
    n_sec = max(1, int(math.ceil(n / track.fps - 1e-6)))
    sec = np.minimum((mids // 1.0).astype(np.int64), n_sec - 1)
    use = track.mask & np.isfinite(emb).all(1)
    acc = np.zeros((n_sec, emb.shape[1]), dtype=np.float64)
    cnt = np.zeros(n_sec, dtype=np.int64)
    np.add.at(acc, sec[use], emb[use])
    np.add.at(cnt, sec[use], 1)
    sec_tok = (acc / np.maximum(cnt, 1)[:, None]).astype(np.float32)
    hop, win = int(AUDIO_WIN_BASE.hop), int(AUDIO_WIN_BASE.win)
    starts = window_starts(n_sec, win, hop)
    W = len(starts)
    tokens = np.zeros((W, N_TOKENS, emb.shape[1]), dtype=np.float32)
    present = np.zeros((W, N_TOKENS), dtype=bool)
    for w, s in enumerate(starts):
        for k in range(N_TOKENS):
            j = s + k
            if j < n_sec and cnt[j] > 0:
                tokens[w, k] = sec_tok[j]
                present[w, k] = True
    ok = _window_ok_from_features(features_root, video, np.asarray(starts, float), AUDIO_WIN_BASE.win)
    if ok is None and "reliability" in track.extras:
        # per-frame reliability exported by the audio run: a window is kept when its frames average >= 0.5
        rel = np.nan_to_num(np.asarray(track.extras["reliability"], dtype=np.float64).reshape(-1))
        ok = np.array([rel[(mids >= s) & (mids < s + win)].mean() >= 0.5 if ((mids >= s) & (mids < s + win)).any()
                       else False for s in starts])
    if ok is None:
        ok = np.ones(W, dtype=bool)
    return AudioWindows(tokens, present & ok[:, None], ok, AUDIO_WIN_BASE)



def frame_window_index(n: int, fps: float, base: TimeBase, n_windows: int, slots: int = 2) -> np.ndarray:
    """For each frame, the windows whose span holds its midpoint: (n, slots) int64, -1 where fewer."""
    mids = frame_midpoints(n, fps)
    out = np.full((n, slots), -1, dtype=np.int64)
    if n_windows == 0:
        return out
    hi = np.floor((mids - base.start) / base.hop).astype(np.int64)  # last window starting at or before mid
    for j in range(slots):
        k = hi - j
        s = base.start + k * base.hop
        ok = (k >= 0) & (k < n_windows) & (mids >= s) & (mids < s + base.win)
        out[ok, j] = k[ok]
    return out



def covered_by(index: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """(n,) True where a frame lies in at least one window flagged ``ok`` (index from :func:`frame_window_index`)."""
    if len(ok) == 0:
        return np.zeros(len(index), dtype=bool)
    return ((index >= 0) & ok[np.clip(index, 0, None)]).any(1)
