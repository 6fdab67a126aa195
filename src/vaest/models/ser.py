"""Pretrained dimensional speech-emotion models, by local folder or hub id (transformers), as zero-shot voice
predictors.

audEERING ``wav2vec2-large-robust-12-ft-emotion-msp-dim`` (Wagner et al. 2023; CC BY-NC-SA 4.0): a
``Wav2Vec2Model`` (prefix ``wav2vec2.``) whose last hidden states are averaged over time and fed to
``classifier.dense`` (hidden -> hidden) -> tanh -> ``classifier.out_proj`` (hidden -> 3): arousal, dominance,
valence, each about 0..1 (its ``config.id2label``). The same folder also loads as a plain backbone through
:func:`vaest.models.audio.load_backbone` (transformers drops the ``wav2vec2.`` prefix).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from vaest.errors import ModelError
from vaest.models.audio import znorm

log = logging.getLogger(__name__)

DEFAULT_ORDER = ("arousal", "dominance", "valence")


def _classes() -> tuple[type, type]:
    try:
        from transformers import Wav2Vec2Model, Wav2Vec2PreTrainedModel
    except ImportError:
        raise ModelError("speech-emotion models need 'transformers' (pip install 'vaest[audio]')") from None

    class RegressionHead(nn.Module):
        """audEERING's head: dense -> tanh -> dropout -> out_proj."""

        def __init__(self, config: Any):
            super().__init__()
            self.dense = nn.Linear(config.hidden_size, config.hidden_size)
            self.dropout = nn.Dropout(getattr(config, "final_dropout", 0.0))
            self.out_proj = nn.Linear(config.hidden_size, config.num_labels)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out_proj(self.dropout(torch.tanh(self.dense(self.dropout(x)))))

    class Wav2Vec2DimEmotion(Wav2Vec2PreTrainedModel):
        """(B, S) z-normalised 16 kHz waveform -> (B, num_labels) dimensions (time-averaged last hidden state)."""

        def __init__(self, config: Any):
            super().__init__(config)
            self.wav2vec2 = Wav2Vec2Model(config)
            self.classifier = RegressionHead(config)
            self.post_init()

        def forward(self, input_values: torch.Tensor) -> torch.Tensor:
            h = self.wav2vec2(input_values).last_hidden_state
            return self.classifier(h.mean(1))

    return RegressionHead, Wav2Vec2DimEmotion


def wav2vec2_dim_model_class() -> type:
    """The ``Wav2Vec2DimEmotion`` class (built lazily: transformers is an optional dependency)."""
    return _classes()[1]


class SpeechEmotionPredictor:
    """A dimensional speech-emotion model applied to sliding windows: per-frame valence/arousal in [-1, 1].

    Args:
        path_or_id: local folder written by ``save_pretrained`` or a hub id (needs the network once).
        window_s, hop_s: analysis windows; each frame gets the mean of the windows that cover it.
    """

    def __init__(self, path_or_id: str, window_s: float = 3.0, hop_s: float = 1.0, device: str = "cpu"):
        cls = wav2vec2_dim_model_class()
        try:
            self.model = cls.from_pretrained(path_or_id).to(device).eval()
        except Exception as e:
            raise ModelError(f"{path_or_id}: cannot load a wav2vec2 dimensional emotion model ({type(e).__name__}: {e}); "
                             "give a local folder (no model hub is reachable offline)") from None
        labels = getattr(self.model.config, "id2label", None) or {}
        names = [str(labels.get(i, labels.get(str(i), ""))).lower() for i in range(self.model.config.num_labels)]
        self.order = names if {"arousal", "valence"} <= set(names) else list(DEFAULT_ORDER)
        self.window_s, self.hop_s, self.device = window_s, hop_s, device

    @torch.no_grad()
    def predict(self, wav: np.ndarray, sr: int = 16000, fps: float = 30.0) -> np.ndarray:
        """(S,) 16 kHz waveform -> (n, 2) valence, arousal on the ``fps`` grid (n = ceil(S / (sr / fps))),
        each output o in 0..1 mapped to 2 o - 1."""
        if sr != 16000:
            raise ModelError(f"speech-emotion models take 16 kHz audio, got {sr} Hz")
        wav = np.asarray(wav, np.float32).reshape(-1)
        n = max(1, int(math.ceil(len(wav) / (sr / fps))))
        acc = np.zeros((n, 2))
        cnt = np.zeros(n)
        win, hop = int(self.window_s * sr), int(self.hop_s * sr)
        starts = list(range(0, max(1, len(wav) - win + 1), hop)) or [0]
        if starts[-1] + win < len(wav):
            starts.append(max(0, len(wav) - win))
        iv, ia = self.order.index("valence"), self.order.index("arousal")
        for s in starts:
            seg = torch.from_numpy(wav[s : s + win])[None].to(self.device)
            if seg.shape[1] < 400 or float(seg.std()) == 0.0:
                continue
            out = self.model(znorm(seg))[0].float().cpu().numpy()
            f0, f1 = int(s / sr * fps), int(math.ceil(min(len(wav), s + win) / sr * fps))
            acc[f0:f1] += [2 * out[iv] - 1, 2 * out[ia] - 1]
            cnt[f0:f1] += 1
        va = np.full((n, 2), np.nan, np.float32)
        ok = cnt > 0
        va[ok] = np.clip(acc[ok] / cnt[ok, None], -1, 1)
        return va
