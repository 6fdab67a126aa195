"""Voice activity: silero-vad speech probability per 32 ms chunk (extractor ``vad``, kind ``audio``).

silero-vad's model ships inside its package, so this runs with no download. It is run on the 16 kHz mono track
in consecutive 512-sample chunks (the last one zero-padded), giving one probability per chunk on the time base
``hop = win = 0.032 s``. The record holds ``values`` (n_chunks, 1) speech probability and the extra ``speech``
(n_chunks,) bool (probability >= ``threshold``). Cross-modal filtering uses it for the speech ratio of each audio
window and, for audio-only media, in place of mouth opening (see :func:`vaest.features.audio.window_reliability`).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from vaest.corpus import Video
from vaest.device import torch_threads
from vaest.errors import FeatureError
from vaest.features.base import Extractor, register_extractor
from vaest.features.store import FeatureRecord
from vaest.media import MediaInfo
from vaest.timebase import TimeBase, TimeSeries

log = logging.getLogger(__name__)

VAD_SR = 16000
VAD_CHUNK = 512
VAD_HOP = VAD_CHUNK / VAD_SR  # 0.032 s
VAD_BASE = TimeBase(hop=VAD_HOP, win=VAD_HOP)

_MODEL: Any = None
_LOCK = threading.Lock()


def _load_model() -> Any:
    """The packaged silero-vad TorchScript model, loaded once per process.

    Importing ``silero_vad`` calls ``torch.set_num_threads(1)`` as a side effect; the previous thread count is
    restored so that training in the same process keeps its cores.
    """
    global _MODEL
    with _LOCK:
        if _MODEL is None:
            import torch

            threads = torch.get_num_threads()
            try:
                from silero_vad import load_silero_vad
            except ImportError:
                raise FeatureError("voice activity needs the 'silero-vad' package "
                                   "(pip install 'vaest[audio]')") from None
            finally:
                torch.set_num_threads(threads)
            _MODEL = load_silero_vad()
            torch.set_num_threads(threads)
    return _MODEL


def speech_probability(wav: np.ndarray, sr: int = VAD_SR) -> np.ndarray:
    """Speech probability of each 512-sample chunk of a 16 kHz mono waveform.

    Args:
        wav: (N,) float waveform in [-1, 1].
        sr: its sample rate (must be 16000).
    Returns:
        (ceil(N / 512),) float32 probabilities; chunk ``i`` covers ``[0.032 i, 0.032 (i + 1))`` seconds.
    """
    if sr != VAD_SR:
        raise ValueError(f"silero-vad is run at {VAD_SR} Hz here, got {sr} Hz")
    wav = np.asarray(wav, dtype=np.float32).reshape(-1)
    if len(wav) == 0:
        return np.zeros(0, dtype=np.float32)
    import torch

    model = _load_model()
    # silero's audio_forward pads and stacks the whole signal at once (+2 copies: +83 MB for 10 minutes); its
    # own loop is reset + forward per 512-sample chunk with the state carried, which is what runs here, chunk
    # by chunk over views of ``wav`` (bit-identical outputs, no copy). 1875 tiny sequential steps per minute:
    # one thread is ~20x faster than two on a busy machine, which is also what silero-vad itself sets.
    n = -(-len(wav) // VAD_CHUNK)
    probs = np.empty(n, np.float32)
    with _LOCK, torch.no_grad(), torch_threads(1):
        model.reset_states()
        x = torch.from_numpy(wav)
        full = len(wav) // VAD_CHUNK
        for i in range(full):
            probs[i] = float(model(x[i * VAD_CHUNK:(i + 1) * VAD_CHUNK][None], VAD_SR))
        if full < n:  # the last chunk, zero-padded
            last = torch.zeros(1, VAD_CHUNK)
            last[0, : len(wav) - full * VAD_CHUNK] = x[full * VAD_CHUNK:]
            probs[full] = float(model(last, VAD_SR))
    return probs


@dataclass
class VadConfig:
    """``threshold``: a chunk counts as speech when its probability is at least this."""

    threshold: float = 0.5


@register_extractor("vad")
class VadExtractor(Extractor):
    """silero-vad speech probability every 32 ms: values (n_chunks, 1), extra ``speech`` (n_chunks,) bool."""

    Config = VadConfig
    kind = "audio"

    def extract_audio(self, videos: list[Video], wav: np.ndarray, sr: int,
                      info: MediaInfo) -> dict[tuple[str, str], FeatureRecord]:
        probs = speech_probability(wav, sr)
        out: dict[tuple[str, str], FeatureRecord] = {}
        for v in videos:
            rec = FeatureRecord(
                TimeSeries(probs[:, None].copy(), VAD_BASE),
                extras={"speech": probs >= self.config.threshold},
                meta={"sr": sr, "duration": len(wav) / sr if sr else 0.0, "no_audio": len(wav) == 0,
                      "speech_seconds": float((probs >= self.config.threshold).sum() * VAD_HOP)},
            )
            out[(self.name, v.id)] = rec
        return out
