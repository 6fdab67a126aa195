"""Audio features, audio windows and cross-modal window reliability.

Encoders (extractors of kind ``audio``, store key ``audio-<encoder>``, one record per video, values (n_steps, D)
on the encoder's own time base):

- ``lmfb``: log-mel filterbank, 64 bands, 25 ms frames every 10 ms (numpy; no download) -> (n, 64).
- ``egemaps``: openSMILE eGeMAPSv02 low-level descriptors, 20 ms frames every 10 ms -> (n, 25).
- ``wavlm``: the 16 kHz waveform itself (float16, (N, 1), hop 1/16000 s); the WavLM / wav2vec2 / HuBERT backbone
  is fine-tuned, so the model reads waveform windows rather than cached embeddings.

Audio windows: 4 s every 2 s over the 1 s bins of the media (``audio_window_starts``); window ``k`` covers
``[2k, 2k + 4)`` seconds and its four 1 s chunks get one valence/arousal pair each.

Cross-modal filtering (:func:`window_reliability`): per window, the seconds the mouth is open (``mouth`` record),
the share of frames with a face (``facetrack`` mask), the share of 32 ms chunks with speech (``vad``), and a
reliability score. Rules of the reference system: a window trains only if open time >= 0.25 x window and face
coverage >= 0.8; at fusion, windows with < 1 s open or coverage < 0.8 are masked.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from vaest.corpus import Video
from vaest.errors import FeatureError
from vaest.features import vad as _vad  # noqa: F401  (registers the ``vad`` extractor with the audio ones)
from vaest.features.base import Extractor, register_extractor
from vaest.features.store import FeatureRecord, FeatureStore
from vaest.media import MediaInfo
from vaest.timebase import TimeBase, TimeSeries
from vaest.windows import window_starts

log = logging.getLogger(__name__)

AUDIO_SR = 16000
WIN_S = 4  # audio window length (seconds)
HOP_S = 2  # audio window hop (seconds)
N_CHUNKS = 4  # one-second chunks per window
ENCODERS = ("lmfb", "egemaps", "wavlm")
WINDOW_BASE = TimeBase(hop=float(HOP_S), win=float(WIN_S))
SECOND_BASE = TimeBase(hop=1.0, win=1.0)


def audio_key(encoder: str) -> str:
    """Store key (and extractor name) of an audio encoder: ``audio-<encoder>``."""
    if encoder not in ENCODERS:
        raise FeatureError(f"unknown audio encoder {encoder!r}; choose one of {', '.join(ENCODERS)}")
    return f"audio-{encoder}"


# ---------------------------------------------------------------------------------------------------------
# Windows
# ---------------------------------------------------------------------------------------------------------


def n_seconds(duration: float) -> int:
    """Number of 1 s bins that cover ``duration`` seconds (the last one may be partial; at least 1)."""
    return max(1, int(math.ceil(float(duration) - 1e-6)))


def audio_window_starts(duration: float, win: int = WIN_S, hop: int = HOP_S) -> list[int]:
    """Start seconds of the 4 s / 2 s audio windows covering ``duration`` seconds (the last may run past the end)."""
    return window_starts(n_seconds(duration), win, hop)


# ---------------------------------------------------------------------------------------------------------
# Log-mel filterbank (lmfb)
# ---------------------------------------------------------------------------------------------------------


def _hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    return 1127.0 * np.log1p(np.asarray(f, dtype=np.float64) / 700.0)


def mel_filterbank(n_mels: int = 64, n_fft: int = 512, sr: int = AUDIO_SR, fmin: float = 20.0,
                   fmax: float | None = None) -> np.ndarray:
    """Triangular filters equally spaced on the mel scale, evaluated at each FFT bin's mel value.

    Returns:
        (n_mels, n_fft // 2 + 1) float32 weights.
    """
    fmax = sr / 2 if fmax is None else fmax
    if not 0 <= fmin < fmax <= sr / 2:
        raise ValueError(f"need 0 <= fmin < fmax <= sr/2, got fmin={fmin}, fmax={fmax}, sr={sr}")
    edges = np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2)
    bins = _hz_to_mel(np.arange(n_fft // 2 + 1) * sr / n_fft)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (bins[None] - lo) / (mid - lo)
    down = (hi - bins[None]) / (hi - mid)
    return np.clip(np.minimum(up, down), 0.0, None).astype(np.float32)


def log_mel_spectrogram(wav: np.ndarray, sr: int = AUDIO_SR, n_mels: int = 64, win_s: float = 0.025,
                        hop_s: float = 0.01, n_fft: int = 512, fmin: float = 20.0, fmax: float | None = None,
                        preemphasis: float = 0.97, floor: float = 1e-6, block: int = 1024) -> np.ndarray:
    """Log-mel filterbank energies of a mono waveform.

    Frame ``i`` covers samples ``[i * hop, i * hop + win)`` (no centring, so it sits at ``[0.01 i, 0.01 i + 0.025)``
    seconds); each frame has its DC removed, is pre-emphasised, Hann-windowed and zero-padded to ``n_fft``.
    A waveform shorter than one frame is zero-padded to one frame.

    Args:
        wav: (N,) float waveform.
        block: frames computed at a time (the bound on the working memory: 1024 frames of a 10-minute track
            take ~10 MB where 8192 took ~160 MB, and run faster; values agree with other blocks to ~1e-6).
    Returns:
        (n_frames, n_mels) float32 ``log(mel energy + floor)``; n_frames = 1 + (N - win) // hop.
    """
    wav = np.asarray(wav, dtype=np.float32).reshape(-1)
    win, hop = int(round(win_s * sr)), int(round(hop_s * sr))
    if n_fft < win:
        raise ValueError(f"n_fft={n_fft} is shorter than the {win}-sample frame")
    if len(wav) < win:
        wav = np.pad(wav, (0, win - len(wav)))
    frames_all = np.lib.stride_tricks.sliding_window_view(wav, win)[::hop]
    fb = mel_filterbank(n_mels, n_fft, sr, fmin, fmax).T  # (F, n_mels)
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)).astype(np.float32)
    out = np.empty((len(frames_all), n_mels), dtype=np.float32)
    for s in range(0, len(frames_all), block):
        fr = frames_all[s : s + block].astype(np.float32)
        fr = fr - fr.mean(axis=1, keepdims=True)
        if preemphasis:
            fr = np.concatenate([fr[:, :1] * (1 - preemphasis), fr[:, 1:] - preemphasis * fr[:, :-1]], axis=1)
        spec = np.fft.rfft(fr * window, n=n_fft, axis=1)
        power = (spec.real ** 2 + spec.imag ** 2).astype(np.float32)
        out[s : s + block] = np.log(power @ fb + floor)
    return out


# ---------------------------------------------------------------------------------------------------------
# openSMILE eGeMAPS low-level descriptors (egemaps)
# ---------------------------------------------------------------------------------------------------------

_SMILE: Any = None


EGEMAPS_CHUNK_S = 60  # egemaps_lld runs openSMILE on chunks of this many seconds (+ context) for longer input
EGEMAPS_PAD_S = 5


def egemaps_lld(wav: np.ndarray, sr: int = AUDIO_SR, gain: float = 1.0) -> tuple[np.ndarray, TimeBase, list[str]]:
    """eGeMAPSv02 low-level descriptors every 10 ms via the ``opensmile`` package, of ``wav * gain`` (the gain
    applied chunk by chunk: no scaled copy of a long signal).

    Returns:
        values (n, 25) float32, their time base (hop 0.01 s, win 0.02 s) and the descriptor names.
    """
    global _SMILE
    try:
        import opensmile
    except ImportError:
        raise FeatureError("the 'egemaps' encoder needs the 'opensmile' package (pip install 'vaest[audio]')") from None
    if _SMILE is None:
        _SMILE = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02,
                                 feature_level=opensmile.FeatureLevel.LowLevelDescriptors)
    wav = np.asarray(wav, dtype=np.float32).reshape(-1)
    min_len = int(0.06 * sr)  # openSMILE yields nothing for very short input
    if len(wav) < min_len:
        wav = np.pad(wav, (0, min_len - len(wav)))
    hop_n = int(round(0.01 * sr))
    if sr % 100 or len(wav) <= (EGEMAPS_CHUNK_S + 2 * EGEMAPS_PAD_S) * sr:
        df = _SMILE.process_signal(wav if gain == 1.0 else (wav * gain).astype(np.float32), sr)
        names = [str(c) for c in df.columns]
        vals = np.nan_to_num(df.to_numpy(dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        starts = df.index.get_level_values("start").total_seconds().to_numpy()
        ends = df.index.get_level_values("end").total_seconds().to_numpy()
    else:
        # long input in chunks with EGEMAPS_PAD_S of context either side (openSMILE holds several copies of the
        # whole signal: +480 MB for 10 min); each chunk keeps the 10 ms frames that start inside it
        step, pad = EGEMAPS_CHUNK_S * sr, EGEMAPS_PAD_S * sr
        parts, names, win = [], [], 0.02
        for s0 in range(0, len(wav), step):
            c0 = max(0, s0 - pad)
            chunk = wav[c0 : s0 + step + pad]
            df = _SMILE.process_signal(chunk if gain == 1.0 else (chunk * gain).astype(np.float32), sr)
            names = [str(c) for c in df.columns]
            st = c0 // hop_n + np.rint(df.index.get_level_values("start").total_seconds().to_numpy() * 100).astype(np.int64)
            win = float((df.index.get_level_values("end") - df.index.get_level_values("start")).total_seconds()[0])
            keep = (st >= s0 // hop_n) & ((st < (s0 + step) // hop_n) | (s0 + step >= len(wav)))
            parts.append(np.nan_to_num(df.to_numpy(dtype=np.float32)[keep], nan=0.0, posinf=0.0, neginf=0.0))
        vals = np.concatenate(parts)
        starts = np.arange(len(vals)) * 0.01
        ends = starts + win
    hop = float(np.median(np.diff(starts))) if len(starts) > 1 else 0.01
    win = float(ends[0] - starts[0]) if len(starts) else 0.02
    return vals, TimeBase(hop=round(hop, 6), win=round(win, 6), start=float(starts[0]) if len(starts) else 0.0), names


# ---------------------------------------------------------------------------------------------------------
# Extractors
# ---------------------------------------------------------------------------------------------------------


def _media_meta(wav: np.ndarray, sr: int, info: MediaInfo, encoder: str) -> dict[str, Any]:
    return {"encoder": encoder, "sr": sr, "duration": len(wav) / sr if sr else 0.0, "no_audio": len(wav) == 0,
            "has_video": bool(info.has_video), "fps": info.fps, "n_frames": int(info.n_frames),
            "media_duration": float(info.duration)}


class _AudioEncoder(Extractor):
    kind = "audio"
    encoder: str = ""

    def features(self, wav: np.ndarray, sr: int) -> tuple[np.ndarray, TimeBase, dict[str, Any]]:
        """(n_steps, D) values, their time base, extra meta."""
        raise NotImplementedError

    def extract_audio(self, videos: list[Video], wav: np.ndarray, sr: int,
                      info: MediaInfo) -> dict[tuple[str, str], FeatureRecord]:
        if sr != AUDIO_SR:
            raise FeatureError(f"{info.path}: audio must be decoded at {AUDIO_SR} Hz, got {sr} Hz")
        meta = _media_meta(wav, sr, info, self.encoder)
        if len(wav) == 0:
            log.warning("%s: no audio; an empty '%s' record is stored", info.path, self.name)
            vals, base, extra = np.zeros((0, self.dim), np.float32), self.base, {}
        else:
            vals, base, extra = self.features(wav, sr)
        meta.update(extra)
        return {(self.name, v.id): FeatureRecord(TimeSeries(vals, base), {}, dict(meta)) for v in videos}

    @property
    def dim(self) -> int:
        raise NotImplementedError

    @property
    def base(self) -> TimeBase:
        raise NotImplementedError


@dataclass
class LmfbConfig:
    """Log-mel filterbank settings (defaults: 64 bands, 25 ms / 10 ms)."""

    n_mels: int = 64
    win_s: float = 0.025
    hop_s: float = 0.01
    n_fft: int = 512
    fmin: float = 20.0
    fmax: float | None = None
    preemphasis: float = 0.97


@register_extractor("audio-lmfb")
class LmfbExtractor(_AudioEncoder):
    """Log-mel filterbank frames: values (n, 64), hop 10 ms, win 25 ms."""

    Config = LmfbConfig
    encoder = "lmfb"

    @property
    def dim(self) -> int:
        return self.config.n_mels

    @property
    def base(self) -> TimeBase:
        return TimeBase(hop=self.config.hop_s, win=self.config.win_s)

    def features(self, wav: np.ndarray, sr: int) -> tuple[np.ndarray, TimeBase, dict[str, Any]]:
        c = self.config
        vals = log_mel_spectrogram(wav, sr, c.n_mels, c.win_s, c.hop_s, c.n_fft, c.fmin, c.fmax, c.preemphasis)
        return vals, self.base, {}


@dataclass
class EgemapsConfig:
    """openSMILE eGeMAPSv02 low-level descriptors (no settings; the feature set fixes them)."""

    feature_set: str = "eGeMAPSv02"


@register_extractor("audio-egemaps")
class EgemapsExtractor(_AudioEncoder):
    """eGeMAPSv02 low-level descriptors: values (n, 25), hop 10 ms, win 20 ms."""

    Config = EgemapsConfig
    encoder = "egemaps"

    @property
    def dim(self) -> int:
        return 25

    @property
    def base(self) -> TimeBase:
        return TimeBase(hop=0.01, win=0.02)

    def features(self, wav: np.ndarray, sr: int) -> tuple[np.ndarray, TimeBase, dict[str, Any]]:
        vals, base, names = egemaps_lld(wav, sr)
        return vals, base, {"names": names}


@dataclass
class WaveformConfig:
    """``model``: the backbone the waveform is meant for (recorded as the default for training)."""

    model: str = "microsoft/wavlm-large"


@register_extractor("audio-wavlm")
class WaveformExtractor(_AudioEncoder):
    """The 16 kHz waveform for a fine-tuned WavLM / wav2vec2 / HuBERT: values (N, 1) float16, hop 1/16000 s."""

    Config = WaveformConfig
    encoder = "wavlm"

    def config_hash(self) -> str:  # the waveform does not depend on which backbone will read it
        from vaest.features.store import config_hash

        return config_hash({"name": self.name, "sr": AUDIO_SR})

    @property
    def dim(self) -> int:
        return 1

    @property
    def base(self) -> TimeBase:
        return TimeBase(hop=1.0 / AUDIO_SR, win=1.0 / AUDIO_SR)

    def features(self, wav: np.ndarray, sr: int) -> tuple[np.ndarray, TimeBase, dict[str, Any]]:
        return wav.astype(np.float16)[:, None], self.base, {"model": self.config.model}


def audio_extractors(encoder: str, model: str | None = None, vad: bool = True) -> list[Extractor]:
    """The extractors ``vaest extract audio`` runs: the encoder (``audio-<encoder>``) and, by default, ``vad``."""
    from vaest.features.base import create_extractor

    cfg = {"model": model} if (encoder == "wavlm" and model) else {}
    out = [create_extractor(audio_key(encoder), **cfg)]
    if vad:
        out.append(create_extractor("vad"))
    return out


# ---------------------------------------------------------------------------------------------------------
# Cross-modal window reliability
# ---------------------------------------------------------------------------------------------------------


@dataclass
class FilterConfig:
    """Cross-modal filtering rules (reference values).

    Attributes:
        enabled: apply the rules (``--no-filter`` turns them off; the statistics are still computed).
        train_min_open_frac: a window trains only if the mouth is open for at least this share of it.
        min_coverage: ... and a face is found on at least this share of its frames (training and fusion).
        fuse_min_open_s: at fusion, a window is masked when the mouth is open for less than this many seconds.
        speech_threshold: a VAD chunk is speech at or above this probability.
        speech_close_gap_s, speech_min_run_s: run-length smoothing of the speech flags (as for mouth opening).
    """

    enabled: bool = True
    train_min_open_frac: float = 0.25
    min_coverage: float = 0.8
    fuse_min_open_s: float = 1.0
    speech_threshold: float = 0.5
    speech_close_gap_s: float = 0.15
    speech_min_run_s: float = 0.20


@dataclass
class WindowStats:
    """Per-window evidence that the voice belongs to the visible, talking face.

    Attributes (each (n_windows,)):
        starts: window start (seconds).
        open_seconds: seconds of mouth opening in the window (for ``source == "vad"``: seconds of speech).
        coverage: share of the window's frames with a face (1.0 when the media has no video: ``source == "vad"``).
        speech_ratio: share of the window's 32 ms chunks with speech (silero-vad, smoothed; NaN without a
            ``vad`` record).
        reliability: ``min(1, open_seconds / fuse_min_open_s) * min(1, coverage / min_coverage)`` in [0, 1]:
            1 exactly when the fusion rule keeps the window, falling linearly to 0 as opening or coverage vanish.
        train_ok: the training rule (open >= 0.25 x window and coverage >= 0.8).
        fuse_ok: the fusion rule (open >= 1 s and coverage >= 0.8).
        source: where opening came from: ``mouth`` (video with a mouth record), ``vad`` (audio-only media, or video
            without a mouth record: speech activity stands in for mouth opening, coverage 1), ``none`` (no evidence:
            every window kept, reliability 1).
    """

    starts: np.ndarray
    open_seconds: np.ndarray
    coverage: np.ndarray
    speech_ratio: np.ndarray
    reliability: np.ndarray
    train_ok: np.ndarray
    fuse_ok: np.ndarray
    source: str = "mouth"
    extras: dict[str, Any] = field(default_factory=dict)

    def as_arrays(self) -> dict[str, np.ndarray]:
        """The per-window arrays (for storing as record extras)."""
        return {"open_seconds": self.open_seconds, "coverage": self.coverage, "speech_ratio": self.speech_ratio,
                "reliability": self.reliability, "train_ok": self.train_ok, "fuse_ok": self.fuse_ok}


def _window_counts(flags: np.ndarray, base: TimeBase, starts: np.ndarray, win: float) -> tuple[np.ndarray, np.ndarray]:
    """For each window ``[s, s + win)``: how many samples (by midpoint) lie in it and how many of those are True."""
    n = len(flags)
    if n == 0:
        z = np.zeros(len(starts), dtype=np.int64)
        return z, z.copy()
    s, e = base.spans(n)
    mids = 0.5 * (s + e)
    lo = np.searchsorted(mids, starts, side="left")
    hi = np.searchsorted(mids, starts + win, side="left")
    csum = np.concatenate([[0], np.cumsum(flags.astype(np.int64))])
    return hi - lo, csum[hi] - csum[lo]


def speech_activity(speech: TimeSeries, cfg: FilterConfig | None = None) -> np.ndarray:
    """Speech flags (n_chunks,) from silero-vad probabilities: probability >= threshold, then the mouth rule's
    run-length smoothing (gaps <= 0.15 s closed, runs <= 0.20 s dropped) so speech stands in for mouth opening."""
    from vaest.features.mouth import close_gaps, drop_short_runs

    cfg = cfg or FilterConfig()
    flags = speech.mask & (np.nan_to_num(speech.values[:, 0]) >= cfg.speech_threshold)
    rate = 1.0 / speech.base.hop
    flags = close_gaps(flags, rate, cfg.speech_close_gap_s)
    return drop_short_runs(flags, rate, cfg.speech_min_run_s)


def window_reliability(starts: Sequence[float], *, mouth_open: TimeSeries | None = None,
                       face: TimeSeries | None = None, speech: TimeSeries | None = None,
                       win: float = WIN_S, cfg: FilterConfig | None = None) -> WindowStats:
    """Per-window open seconds, face coverage, speech ratio and reliability (see :class:`WindowStats`).

    Args:
        starts: window start times in seconds (n_windows,), e.g. :func:`audio_window_starts`.
        mouth_open: per-frame mouth-open flags (n_frames, 1) on the frame time base; its mask is the frames
            where a face was found (a frame without a face counts as closed). From the ``mouth`` record.
        face: per-frame face-found flags (n_frames, 1) (or a series whose mask says so), from the ``facetrack``
            record; when omitted, the mask of ``mouth_open`` stands in.
        speech: silero-vad speech probability (n_chunks, 1) every 32 ms (the ``vad`` record).
        win: window length in seconds.
        cfg: thresholds.
    Fallback (audio-only media, or no mouth record): speech seconds replace open seconds and coverage is 1.
    With no evidence at all every window is kept with reliability 1.
    """
    cfg = cfg or FilterConfig()
    st = np.asarray(starts, dtype=np.float64).reshape(-1)
    nw = len(st)
    speech_ratio = np.full(nw, np.nan)
    speech_s = None
    if speech is not None:
        is_sp = speech_activity(speech, cfg)
        n_in, n_sp = _window_counts(is_sp, speech.base, st, win)
        speech_ratio = np.where(n_in > 0, n_sp / np.maximum(n_in, 1), 0.0)
        speech_s = n_sp * speech.base.hop
    if mouth_open is not None:
        flags = mouth_open.mask & (np.nan_to_num(mouth_open.values[:, 0]) > 0.5)
        _, n_open = _window_counts(flags, mouth_open.base, st, win)
        open_s = n_open * mouth_open.base.hop
        if face is not None:
            found, fbase = face.mask & (np.nan_to_num(face.values[:, 0]) != 0), face.base
        else:
            found, fbase = mouth_open.mask, mouth_open.base
        n_fr, n_face = _window_counts(found, fbase, st, win)
        coverage = np.where(n_fr > 0, n_face / np.maximum(n_fr, 1), 0.0)
        source = "mouth"
    elif speech_s is not None:
        open_s = speech_s.astype(np.float64)
        coverage = np.ones(nw)
        source = "vad"
    else:
        ones = np.ones(nw)
        return WindowStats(st, np.full(nw, np.nan), np.full(nw, np.nan), speech_ratio, ones,
                           np.ones(nw, bool), np.ones(nw, bool), "none")
    open_s = np.asarray(open_s, dtype=np.float64)
    rel = np.clip(open_s / cfg.fuse_min_open_s, 0, 1) * np.clip(coverage / cfg.min_coverage, 0, 1)
    eps = 1e-9
    cov_ok = coverage >= cfg.min_coverage - eps
    train_ok = (open_s >= cfg.train_min_open_frac * win - eps) & cov_ok
    fuse_ok = (open_s >= cfg.fuse_min_open_s - eps) & cov_ok
    return WindowStats(st, open_s, coverage, speech_ratio, rel, train_ok, fuse_ok, source)


def reliability_from_store(store: FeatureStore, video: Video, starts: Sequence[float], win: float = WIN_S,
                           cfg: FilterConfig | None = None) -> WindowStats:
    """:func:`window_reliability` for one video from its stored ``mouth``, ``facetrack`` and ``vad`` records.

    Audio-only media (``video.audio_only``) ignore mouth/face records and fall back to voice activity; a video
    without a ``mouth`` record falls back the same way (the caller should warn: run the mouth extractor).
    """
    vid = video.id
    mouth = face = speech = None
    if not video.audio_only and store.has("mouth", vid):
        m = store.load("mouth", vid)
        is_open = m.extras.get("open")
        if is_open is None:
            raise FeatureError(f"{store.path('mouth', vid)}: 'mouth' record has no 'open' flags")
        cov = m.extras.get("coverage")
        found = np.asarray(cov, dtype=bool) if cov is not None else m.mask
        mouth = TimeSeries(np.asarray(is_open, dtype=np.float32), m.base, found)
        if store.has("facetrack", vid):
            f = store.load("facetrack", vid)
            face = TimeSeries(f.mask.astype(np.float32), f.base, np.ones(len(f.mask), bool))
    if store.has("vad", vid):
        speech = store.load("vad", vid).series
    return window_reliability(starts, mouth_open=mouth, face=face, speech=speech, win=win, cfg=cfg)
