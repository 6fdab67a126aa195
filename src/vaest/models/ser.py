"""Pretrained dimensional speech-emotion models, by local folder or hub id (transformers), as zero-shot voice
predictors.

audEERING ``wav2vec2-large-robust-12-ft-emotion-msp-dim`` (Wagner et al. 2023; CC BY-NC-SA 4.0): a
``Wav2Vec2Model`` (prefix ``wav2vec2.``) whose last hidden states are averaged over time and fed to
``classifier.dense`` (hidden -> hidden) -> tanh -> ``classifier.out_proj`` (hidden -> 3): arousal, dominance,
valence, each about 0..1 (its ``config.id2label``). The same folder also loads as a plain backbone through
:func:`vaest.models.audio.load_backbone` (transformers drops the ``wav2vec2.`` prefix).

3loi ``SER-Odyssey-Baseline-WavLM-Multi-Attributes`` (Goncalves et al., Odyssey 2024 SER challenge baseline;
MSP-Podcast): ``config.json`` (``ssl_type``, ``hidden_size``, ``classifier_hidden_layers``, ``num_classes``,
``classifier_dropout_prob``, waveform ``mean`` / ``std``, ``id2label``) and ``model.safetensors`` with
``ssl_model.*`` (a WavLM encoder), ``pool_model.sap_linear`` + ``pool_model.attention`` (attentive statistics
pooling: softmax over time of tanh(W h) . a, then weighted mean and standard deviation) and ``ser_model.fc.i.0/1``
+ ``ser_model.out.0`` (Linear -> LayerNorm -> ReLU blocks, then Linear to arousal, dominance, valence, each about
0..1). :func:`odyssey_ser_model` builds it; ``ssl_type`` ``microsoft/wavlm-large`` is built from the known
WavLM-Large configuration (no hub access), any other value is loaded as a transformers config (folder or id).
"""

from __future__ import annotations

import json
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


# microsoft/wavlm-large's encoder configuration, so that the Odyssey checkpoint loads without the hub
WAVLM_LARGE = dict(model_type="wavlm", hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                   intermediate_size=4096, feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True,
                   feat_extract_activation="gelu", hidden_act="gelu", num_buckets=320, max_bucket_distance=800)


class OdysseyPooling(nn.Module):
    """Attentive statistics pooling in the Odyssey baseline's layout: (B, T, H) -> (B, 2H) = weighted mean and
    standard deviation over time, weights softmax_t(tanh(sap_linear(h_t)) . attention)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.sap_linear = nn.Linear(hidden, hidden)
        self.attention = nn.Parameter(torch.zeros(hidden, 1))
        nn.init.normal_(self.attention)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        w = torch.softmax(torch.tanh(self.sap_linear(h)) @ self.attention, dim=1)  # (B, T, 1)
        mu = (h * w).sum(1)
        sd = torch.sqrt(((h * h) * w).sum(1).sub(mu * mu).clamp(min=1e-5))
        return torch.cat([mu, sd], 1)


class OdysseyHead(nn.Module):
    """The Odyssey baseline's regression head: ``fc`` blocks Linear -> LayerNorm -> ReLU -> Dropout, then ``out``."""

    def __init__(self, d_in: int, hidden: int, n_layers: int, n_out: int, dropout: float):
        super().__init__()
        dims = [d_in] + [hidden] * max(1, n_layers)
        self.fc = nn.ModuleList(nn.Sequential(nn.Linear(a, b), nn.LayerNorm(b), nn.ReLU(), nn.Dropout(dropout))
                                for a, b in zip(dims[:-1], dims[1:]))
        self.out = nn.Sequential(nn.Linear(hidden, n_out))
        self.inp_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inp_drop(x)
        for block in self.fc:
            x = block(x)
        return self.out(x)


class OdysseySER(nn.Module):
    """``ssl_model`` (WavLM) -> ``pool_model`` -> ``ser_model``: (B, S) raw 16 kHz waveform -> (B, num_classes);
    the waveform is normalised with the checkpoint's global ``mean`` / ``std`` inside."""

    def __init__(self, config: dict[str, Any], ssl_model: nn.Module):
        super().__init__()
        h = int(config.get("hidden_size", 1024))
        self.config = config
        self.ssl_model = ssl_model
        self.pool_model = OdysseyPooling(h)
        self.ser_model = OdysseyHead(2 * h, h, int(config.get("classifier_hidden_layers", 1)),
                                     int(config.get("num_classes", 3)), float(config.get("classifier_dropout_prob", 0.5)))
        self.mean, self.std = float(config.get("mean", 0.0)), float(config.get("std", 1.0))

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        x = (wav - self.mean) / (self.std + 1e-6)
        return self.ser_model(self.pool_model(self.ssl_model(x).last_hidden_state))


def is_odyssey_checkpoint(path: str) -> bool:
    """A local folder whose config.json carries the Odyssey baseline's ``ssl_type`` (or the hub id's name)."""
    from pathlib import Path

    p = Path(path)
    if p.is_dir() and (p / "config.json").is_file():
        try:
            return "ssl_type" in json.loads((p / "config.json").read_text())
        except (OSError, ValueError):
            return False
    return "SER-Odyssey" in path


def odyssey_ser_model(path_or_id: str) -> OdysseySER:
    """Build the Odyssey baseline from its folder (config.json + model.safetensors) or hub id, weights loaded.

    Raises:
        ModelError: files missing or not in the published layout.
    """
    from pathlib import Path

    from safetensors.torch import load_file

    from vaest.models.audio import load_backbone

    p = Path(path_or_id)
    if not p.is_dir():
        try:
            from huggingface_hub import snapshot_download

            p = Path(snapshot_download(path_or_id, allow_patterns=["config.json", "model.safetensors"]))
        except Exception as e:
            raise ModelError(f"{path_or_id}: cannot download the Odyssey SER model ({type(e).__name__}: {e}); "
                             "give the local folder with config.json and model.safetensors") from None
    try:
        cfg = json.loads((p / "config.json").read_text())
        sd = load_file(str(p / "model.safetensors"))
    except Exception as e:
        raise ModelError(f"{p}: not an Odyssey SER folder with config.json and model.safetensors "
                         f"({type(e).__name__}: {e})") from None
    ssl_type = str(cfg.get("ssl_type", "microsoft/wavlm-large"))
    ssl_cfg = dict(WAVLM_LARGE) if ssl_type == "microsoft/wavlm-large" else None
    if ssl_cfg is None:
        from transformers import AutoConfig

        try:
            ssl_cfg = AutoConfig.from_pretrained(ssl_type).to_dict()
        except Exception as e:
            raise ModelError(f"{p}: cannot read the config of its ssl_type {ssl_type!r} ({type(e).__name__}: {e})") from None
    model = OdysseySER(cfg, load_backbone(ssl_type, ssl_cfg))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if "masked_spec_embed" not in k]
    if missing or unexpected:
        raise ModelError(f"{p}: model.safetensors does not match the Odyssey SER layout (missing {missing[:4]}, "
                         f"unexpected {unexpected[:4]}, {len(missing)} / {len(unexpected)} in all)")
    return model.eval()


class SpeechEmotionPredictor:
    """A dimensional speech-emotion model applied to sliding windows: per-frame valence/arousal in [-1, 1].

    Args:
        path_or_id: local folder or hub id (needs the network once) of audEERING's model (``save_pretrained``
            layout) or of the Odyssey baseline (config.json with ``ssl_type`` + model.safetensors).
        window_s, hop_s: analysis windows; each frame gets the mean of the windows that cover it.
    """

    def __init__(self, path_or_id: str, window_s: float = 3.0, hop_s: float = 1.0, device: str = "cpu"):
        self.odyssey = is_odyssey_checkpoint(path_or_id)
        if self.odyssey:
            self.model: nn.Module = odyssey_ser_model(path_or_id).to(device)
            labels, n_out = self.model.config.get("id2label") or {}, int(self.model.config.get("num_classes", 3))
        else:
            cls = wav2vec2_dim_model_class()
            try:
                self.model = cls.from_pretrained(path_or_id).to(device).eval()
            except Exception as e:
                raise ModelError(f"{path_or_id}: cannot load a wav2vec2 dimensional emotion model ({type(e).__name__}: {e}); "
                                 "give a local folder (no model hub is reachable offline)") from None
            labels, n_out = getattr(self.model.config, "id2label", None) or {}, self.model.config.num_labels
        names = [str(labels.get(i, labels.get(str(i), ""))).lower() for i in range(n_out)]
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
            out = self.model(seg if self.odyssey else znorm(seg))[0].float().cpu().numpy()
            f0, f1 = int(s / sr * fps), int(math.ceil(min(len(wav), s + win) / sr * fps))
            acc[f0:f1] += [2 * out[iv] - 1, 2 * out[ia] - 1]
            cnt[f0:f1] += 1
        va = np.full((n, 2), np.nan, np.float32)
        ok = cnt > 0
        va[ok] = np.clip(acc[ok] / cnt[ok, None], -1, 1)
        return va
