"""Voice activity: silero-vad speech probability per 32 ms chunk (extractor ``vad``, kind ``audio``).

silero-vad's model ships inside its package, so this runs with no download. It is run on the 16 kHz mono track
in consecutive 512-sample chunks (the last one zero-padded), giving one probability per chunk on the time base
``hop = win = 0.032 s``. The record holds ``values`` (n_chunks, 1) speech probability and the extra ``speech``
(n_chunks,) bool (probability >= ``threshold``). Cross-modal filtering uses it for the speech ratio of each audio
window and, for audio-only media, in place of mouth opening (see :func:`vaest.features.audio.window_reliability`).
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
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

VAD_CONTEXT = 64  # samples of the previous chunk that silero-vad prepends to each 512-sample chunk at 16 kHz
VAD_BACKENDS = ("auto", "onnx", "torch")

_MODEL: Any = None
_ONNX: Any = None
_LOCK = threading.Lock()


def _silero_data(name: str) -> Path:
    """A file of the installed ``silero_vad`` package's ``data`` folder, found without importing the package
    (its ``__init__`` imports torch)."""
    from vaest.config import package_dir

    pkg = package_dir("silero_vad")
    if pkg is None:
        raise FeatureError("voice activity needs the 'silero-vad' package (pip install 'vaest[audio]')")
    p = pkg / "data" / name
    if not p.is_file():
        raise FeatureError(f"{p}: silero-vad is installed but its model file is missing")
    return p


def vad_backend(backend: str = "auto") -> str:
    """``onnx`` (silero's packaged ONNX model on ONNX Runtime) or ``torch`` (its TorchScript model); the two agree
    to ~3e-6. ``auto``: ``torch`` where torch is already imported (a trained bundle's models: ONNX Runtime would
    add ~20 MB resident for nothing else), else ``onnx`` when ``onnxruntime`` is installed (the zero-shot path: no
    torch import, 0.7-0.9 s), else ``torch``."""
    if backend not in VAD_BACKENDS:
        raise FeatureError(f"VAD backend {backend!r}: expected one of {', '.join(VAD_BACKENDS)}")
    if backend == "auto":
        if "torch" in sys.modules or importlib.util.find_spec("onnxruntime") is None:
            return "torch"
        return "onnx"
    return backend


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


def _load_onnx() -> Any:
    """An ONNX Runtime session of the packaged ``silero_vad.onnx`` (one thread, as silero itself sets), once per
    process."""
    global _ONNX
    with _LOCK:
        if _ONNX is None:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 1
            opts.inter_op_num_threads = 1
            opts.log_severity_level = 3
            _ONNX = ort.InferenceSession(str(_silero_data("silero_vad.onnx")), opts,
                                         providers=["CPUExecutionProvider"])
    return _ONNX


def _probs_onnx(wav: np.ndarray, n: int) -> np.ndarray:
    """silero-vad on ONNX Runtime, chunk by chunk with its recurrent state and the 64-sample context carried
    (what its own ONNX wrapper does per call): (n,) float32."""
    sess = _load_onnx()
    probs = np.empty(n, np.float32)
    x = np.zeros((1, VAD_CONTEXT + VAD_CHUNK), np.float32)  # [context | chunk]
    state = np.zeros((2, 1, 128), np.float32)
    sr = np.array(VAD_SR, np.int64)
    for i in range(n):  # the recurrent state lives here, not in the session: no lock needed
        chunk = wav[i * VAD_CHUNK:(i + 1) * VAD_CHUNK]
        x[0, VAD_CONTEXT:VAD_CONTEXT + len(chunk)] = chunk
        if len(chunk) < VAD_CHUNK:  # the last chunk, zero-padded
            x[0, VAD_CONTEXT + len(chunk):] = 0.0
        out, state = sess.run(None, {"input": x, "state": state, "sr": sr})
        probs[i] = out[0, 0]
        x[0, :VAD_CONTEXT] = x[0, -VAD_CONTEXT:]
    return probs


def _probs_torch(wav: np.ndarray, n: int) -> np.ndarray:
    """silero-vad's TorchScript model, chunk by chunk (reset, then forward per chunk with the state carried):
    (n,) float32."""
    import torch

    model = _load_model()
    # silero's audio_forward pads and stacks the whole signal at once (+2 copies: +83 MB for 10 minutes); its
    # own loop is reset + forward per 512-sample chunk with the state carried, which is what runs here, chunk
    # by chunk over views of ``wav`` (bit-identical outputs, no copy). 1875 tiny sequential steps per minute:
    # one thread is ~20x faster than two on a busy machine, which is also what silero-vad itself sets.
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


def speech_probability(wav: np.ndarray, sr: int = VAD_SR, backend: str = "auto") -> np.ndarray:
    """Speech probability of each 512-sample chunk of a 16 kHz mono waveform.

    Args:
        wav: (N,) float waveform in [-1, 1].
        sr: its sample rate (must be 16000).
        backend: :func:`vad_backend` (``auto``: torch where it is loaded, else ONNX Runtime).
    Returns:
        (ceil(N / 512),) float32 probabilities; chunk ``i`` covers ``[0.032 i, 0.032 (i + 1))`` seconds.
    """
    if sr != VAD_SR:
        raise ValueError(f"silero-vad is run at {VAD_SR} Hz here, got {sr} Hz")
    wav = np.asarray(wav, dtype=np.float32).reshape(-1)
    if len(wav) == 0:
        return np.zeros(0, dtype=np.float32)
    n = -(-len(wav) // VAD_CHUNK)
    return _probs_onnx(wav, n) if vad_backend(backend) == "onnx" else _probs_torch(wav, n)


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
