"""Audio valence/arousal models: one VA pair per second of a 4 s window.

``audio-wavlm`` and ``audio-frames`` share vaest's head (modelled on the official one, not equal to it; the
official model is ``audio-wavlm-reference`` at the end of this module): the window's hidden frames are split into ``n_chunks`` (4)
consecutive one-second chunks, each pooled by attentive statistics pooling (:class:`AttentiveStatsPool`:
Linear(H, 128) -> tanh -> Linear(128, 1) -> softmax over the chunk's frames; weighted mean and std), then
LayerNorm(2H) -> Linear(2H, 256) -> GELU -> Linear(256, 2). The 256-d activation is the exported audio token.

- ``audio-wavlm``: a transformers speech backbone (WavLM / wav2vec2 / HuBERT, by local path or hub id, via
  ``AutoModel``) on the z-normalised waveform, last hidden state, top ``trainable_layers`` encoder layers trainable
  and the rest frozen. Input ``wav`` (B, S) at 16 kHz.
- ``audio-frames``: the offline path for cached frame features (``lmfb`` log-mel, ``egemaps`` LLDs): per-dimension
  normalisation (statistics of the training set, stored as buffers so they travel with the weights), a light
  Conv1d(D, 128, 5) + GELU frame projection, then the same pooling and head. Input ``feats`` (B, T, D).

Forward returns ``va`` (B, 4, 2) and ``emb`` (B, 4, 256); ``weights`` (B, 4, T) when ``return_weights=True``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from vaest.errors import ModelError
from vaest.models import register_model

log = logging.getLogger(__name__)


class AttentiveStatsPool(nn.Module):
    """Attentive statistics pooling over consecutive chunks of a frame sequence.

    Frame ``t`` of ``T`` belongs to chunk ``floor(t * C / T)``; attention logits come from
    Linear(H, att_dim) -> tanh -> Linear(att_dim, 1) and are soft-maxed within each chunk.
    """

    def __init__(self, dim: int, att_dim: int = 128):
        super().__init__()
        self.att = nn.Sequential(nn.Linear(dim, att_dim), nn.Tanh(), nn.Linear(att_dim, 1))

    def forward(self, x: torch.Tensor, n_chunks: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Pool ``x`` (B, T, H) into (B, C, 2H) statistics [weighted mean, weighted std] and weights (B, C, T).

        Each row of the weights sums to one over its chunk's frames and is zero elsewhere.
        """
        b, t, h = x.shape
        if t < n_chunks:
            raise ModelError(f"attentive pooling got {t} frames for {n_chunks} chunks")
        logits = self.att(x).squeeze(-1)  # (B, T)
        chunk_of = torch.div(torch.arange(t, device=x.device) * n_chunks, t, rounding_mode="floor")
        member = chunk_of[None, :] == torch.arange(n_chunks, device=x.device)[:, None]  # (C, T)
        scores = logits[:, None, :].masked_fill(~member[None], float("-inf"))
        w = torch.softmax(scores.float(), dim=-1).to(x.dtype)  # (B, C, T)
        mu = torch.bmm(w, x)  # (B, C, H)
        dev = (x - mu[:, chunk_of]) ** 2  # each frame against its own chunk's mean, (B, T, H)
        var = torch.bmm(w, dev)
        std = torch.sqrt(var.clamp_min(1e-6))
        return torch.cat([mu, std], dim=-1), w


class ChunkHead(nn.Module):
    """LayerNorm(2H) -> Linear(2H, emb) -> GELU -> [Dropout] -> Linear(emb, 2); returns (va, emb)."""

    def __init__(self, stat_dim: int, emb_dim: int = 256, dropout: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(stat_dim)
        self.proj = nn.Linear(stat_dim, emb_dim)
        self.act = nn.GELU()
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(emb_dim, 2)

    def forward(self, stats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.act(self.proj(self.norm(stats)))
        return self.out(self.drop(emb)), emb


def znorm(wav: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Zero mean, unit variance per row of (B, S) waveforms (what speech backbones are trained on)."""
    mu = wav.mean(dim=-1, keepdim=True)
    var = wav.var(dim=-1, keepdim=True, unbiased=False)
    return (wav - mu) / torch.sqrt(var + eps)


def load_backbone(path_or_id: str, config: dict[str, Any] | None = None) -> nn.Module:
    """A transformers speech encoder from a local folder / hub id, or built from a saved config (no weights).

    Raises:
        ModelError: the checkpoint cannot be found or loaded (with no network, give a local folder).
    """
    try:
        from transformers import AutoConfig, AutoModel
    except ImportError:
        raise ModelError("the WavLM audio model needs 'transformers' (pip install 'vaest[audio]')") from None
    if config is not None:
        cfg = dict(config)
        model_type = cfg.pop("model_type", None)
        if model_type is None:
            raise ModelError(f"saved backbone config for {path_or_id!r} has no 'model_type'")
        return AutoModel.from_config(AutoConfig.for_model(model_type, **cfg))
    try:
        return AutoModel.from_pretrained(path_or_id)
    except Exception as e:
        raise ModelError(f"{path_or_id}: cannot load a speech backbone ({type(e).__name__}: {e}); "
                         "give a local folder written by save_pretrained (no model hub is reachable offline)") from None


@dataclass
class WavLMAudioConfig:
    """Settings of ``audio-wavlm`` (vaest's form; default WavLM-Large, top 4 layers and the final LayerNorm trained).

    ``backbone_config`` is filled when the backbone is loaded, so a checkpoint rebuilds without the original
    folder or any download.
    """

    backbone: str = "microsoft/wavlm-large"
    trainable_layers: int = 4
    att_dim: int = 128
    emb_dim: int = 256
    n_chunks: int = 4
    dropout: float = 0.0
    backbone_config: dict | None = None


@register_model("audio-wavlm")
class WavLMAudioModel(nn.Module):
    """Speech backbone -> 4 x attentive statistics pooling -> head: ``wav`` (B, S) -> ``va`` (B, 4, 2)."""

    Config = WavLMAudioConfig

    def __init__(self, config: WavLMAudioConfig | None = None):
        super().__init__()
        self.config = config or WavLMAudioConfig()
        self.backbone = load_backbone(self.config.backbone, self.config.backbone_config)
        if self.config.backbone_config is None:
            self.config.backbone_config = self.backbone.config.to_dict()
        layers = getattr(getattr(self.backbone, "encoder", None), "layers", None)
        if layers is None:
            raise ModelError(f"{self.config.backbone}: not a WavLM/wav2vec2/HuBERT-style encoder (no encoder.layers)")
        hidden = int(self.backbone.config.hidden_size)
        self.pool = AttentiveStatsPool(hidden, self.config.att_dim)
        self.head = ChunkHead(2 * hidden, self.config.emb_dim, self.config.dropout)
        self.set_trainable(self.config.trainable_layers)

    def set_trainable(self, k: int) -> None:
        """Freeze the backbone except its top ``k`` encoder layers (and the final LayerNorm that follows them in
        stable-layer-norm encoders such as WavLM-Large)."""
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        enc = self.backbone.encoder
        if k > 0:
            for layer in list(enc.layers)[-k:]:
                for p in layer.parameters():
                    p.requires_grad_(True)
            if getattr(self.backbone.config, "do_stable_layer_norm", False) and hasattr(enc, "layer_norm"):
                for p in enc.layer_norm.parameters():
                    p.requires_grad_(True)

    def forward(self, wav: torch.Tensor, return_weights: bool = False) -> dict[str, torch.Tensor]:
        """``wav`` (B, S) 16 kHz windows -> ``va`` (B, C, 2), ``emb`` (B, C, emb_dim)."""
        hidden = self.backbone(input_values=znorm(wav.float())).last_hidden_state  # (B, T, H)
        stats, w = self.pool(hidden, self.config.n_chunks)
        va, emb = self.head(stats)
        out = {"va": va, "emb": emb}
        if return_weights:
            out["weights"] = w
        return out


@dataclass
class FrameAudioConfig:
    """Settings of ``audio-frames`` (cached lmfb / eGeMAPS frames)."""

    in_dim: int = 64
    proj_dim: int = 128
    kernel: int = 5
    att_dim: int = 128
    emb_dim: int = 256
    n_chunks: int = 4
    dropout: float = 0.0


@register_model("audio-frames")
class FrameAudioModel(nn.Module):
    """Normalised frame features -> Conv1d + GELU -> 4 x attentive statistics pooling -> head."""

    Config = FrameAudioConfig

    def __init__(self, config: FrameAudioConfig | None = None):
        super().__init__()
        self.config = config or FrameAudioConfig()
        c = self.config
        self.register_buffer("feat_mean", torch.zeros(c.in_dim))
        self.register_buffer("feat_std", torch.ones(c.in_dim))
        self.proj = nn.Conv1d(c.in_dim, c.proj_dim, c.kernel, padding=c.kernel // 2)
        self.act = nn.GELU()
        self.pool = AttentiveStatsPool(c.proj_dim, c.att_dim)
        self.head = ChunkHead(2 * c.proj_dim, c.emb_dim, c.dropout)

    def set_normalization(self, mean: np.ndarray, std: np.ndarray) -> None:
        """Per-dimension input statistics (D,), from the training set; a zero std is treated as one."""
        std = np.where(np.asarray(std) > 1e-8, std, 1.0)
        self.feat_mean.copy_(torch.as_tensor(np.asarray(mean), dtype=torch.float32))
        self.feat_std.copy_(torch.as_tensor(std, dtype=torch.float32))

    def forward(self, feats: torch.Tensor, return_weights: bool = False) -> dict[str, torch.Tensor]:
        """``feats`` (B, T, D) -> ``va`` (B, C, 2), ``emb`` (B, C, emb_dim)."""
        x = (feats.float() - self.feat_mean) / self.feat_std
        h = self.act(self.proj(x.transpose(1, 2))).transpose(1, 2)  # (B, T, proj_dim)
        stats, w = self.pool(h, self.config.n_chunks)
        va, emb = self.head(stats)
        out = {"va": va, "emb": emb}
        if return_weights:
            out["weights"] = w
        return out


def audio_param_groups(model: nn.Module, backbone_lr: float = 5e-6, head_lr: float = 2e-4) -> list[dict[str, Any]]:
    """AdamW groups: trainable backbone parameters at ``backbone_lr``; every other trainable parameter (frame
    projection, attentive pooling, head) at ``head_lr``. Together they hold every trainable parameter once."""
    bb, rest = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (bb if name.startswith("backbone.") else rest).append(p)
    groups = []
    if bb:
        groups.append({"params": bb, "lr": backbone_lr, "name": "backbone"})
    if rest:
        groups.append({"params": rest, "lr": head_lr, "name": "head"})
    return groups


# ---------------------------------------------------------------------------------------------------------
# The reference audio model (official Team RAS ``WavLMS2SModelV1`` with ``pooling: attn_stats``)
# ---------------------------------------------------------------------------------------------------------

SSL_PREFIX = "ssl_model."


def masked_normalize(wav: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Per-row z-normalisation of (B, S) waveforms over the valid samples of ``mask`` (B, S) (1 = real audio).

    The reference form: mean and variance over the valid samples only, ``std = sqrt(var + 1e-6)``, padded
    samples set to 0 afterwards. Without a mask: plain per-row mean/std (std clamped at 1e-6).
    """
    if mask is None:
        mu = wav.mean(dim=1, keepdim=True)
        sd = wav.std(dim=1, keepdim=True, unbiased=False).clamp_min(1e-6)
        return (wav - mu) / sd
    m = mask.to(wav.dtype)
    n = m.sum(dim=1, keepdim=True).clamp_min(1.0)
    mu = (wav * m).sum(dim=1, keepdim=True) / n
    var = ((wav - mu) ** 2 * m).sum(dim=1, keepdim=True) / n
    sd = torch.sqrt(var + 1e-6).clamp_min(1e-6)
    return (wav - mu) / sd * m


def reference_chunk_bounds(t: int, n_chunks: int) -> list[int]:
    """Chunk boundaries of a T-frame sequence as the reference computes them: ``round(i * T / C)`` for
    i = 0..C (Python rounding: halves to even). C + 1 integers."""
    return [int(round(i * t / n_chunks)) for i in range(n_chunks + 1)]


class MaskedAttnStatsPool(nn.Module):
    """Reference attentive statistics pooling of one chunk: scores Linear(H, A) -> tanh -> Dropout ->
    Linear(A, 1, no bias); padded frames get score -1e4; softmax over time; [weighted mean, sqrt(var + 1e-6)].

    A row whose mask is all zero uses its first frame (as the reference does), so no row is undefined.
    """

    def __init__(self, dim: int, att_dim: int = 128, dropout: float = 0.2):
        super().__init__()
        self.score = nn.Sequential(nn.Linear(dim, att_dim), nn.Tanh(), nn.Dropout(dropout),
                                   nn.Linear(att_dim, 1, bias=False))

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``h`` (B, T, H), ``mask`` (B, T) -> (B, 2H)."""
        s = self.score(h).squeeze(-1)  # (B, T)
        if mask is not None:
            m = mask.bool().clone()
            m[~m.any(dim=1), 0] = True
            s = s.masked_fill(~m, -1e4)
        w = torch.softmax(s, dim=1).unsqueeze(-1)
        mu = (h * w).sum(dim=1)
        var = ((h - mu.unsqueeze(1)) ** 2 * w).sum(dim=1)
        return torch.cat([mu, torch.sqrt(var + 1e-6).clamp_min(1e-6)], dim=-1)


class ReferenceAudioHead(nn.Module):
    """LayerNorm(2H) -> Dropout -> Linear(2H, 256) -> GELU -> Dropout -> Linear(256, 2); the GELU output is
    the exported 256-d audio token."""

    def __init__(self, stat_dim: int, emb_dim: int = 256, dropout: float = 0.2):
        super().__init__()
        self.norm = nn.LayerNorm(stat_dim)
        self.drop_in = nn.Dropout(dropout)
        self.proj = nn.Linear(stat_dim, emb_dim)
        self.act = nn.GELU()
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(emb_dim, 2)

    def forward(self, stats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.act(self.proj(self.drop_in(self.norm(stats))))
        return self.out(self.drop(emb)), emb


def load_ssl_weights(backbone: nn.Module, path_or_id: str) -> tuple[list[str], list[str]]:
    """Load the ``ssl_model.*`` tensors of a SER checkpoint over ``backbone`` (non-strict, as the reference does).

    ``path_or_id``: a ``.safetensors`` file, a folder holding ``model.safetensors``, or a hub id (reference:
    ``3loi/SER-Odyssey-Baseline-WavLM-Multi-Attributes``, downloaded through ``huggingface_hub``).
    Returns (missing, unexpected) backbone keys.

    Raises:
        ModelError: the file cannot be found or holds no ``ssl_model.*`` tensor.
    """
    from pathlib import Path

    from safetensors.torch import load_file

    p = Path(path_or_id)
    if p.is_dir():
        p = p / "model.safetensors"
    if not p.is_file():
        if Path(path_or_id).exists() or path_or_id.count("/") != 1:
            raise ModelError(f"{p}: no model.safetensors with the SER checkpoint's ssl_model.* weights")
        try:
            from huggingface_hub import hf_hub_download

            p = Path(hf_hub_download(repo_id=path_or_id, filename="model.safetensors"))
        except Exception as e:
            raise ModelError(f"{path_or_id}: cannot download model.safetensors ({type(e).__name__}: {e}); "
                             "give a local file or folder (no model hub is reachable offline)") from None
    sd = load_file(str(p))
    ssl = {k[len(SSL_PREFIX):]: v for k, v in sd.items() if k.startswith(SSL_PREFIX)}
    if not ssl:
        raise ModelError(f"{p}: no '{SSL_PREFIX}*' tensor in this checkpoint")
    res = backbone.load_state_dict(ssl, strict=False)
    log.info("%s: loaded %d ssl_model tensors over the backbone (%d backbone keys not in it)", p, len(ssl),
             len(res.missing_keys))
    return list(res.missing_keys), list(res.unexpected_keys)


@dataclass
class ReferenceAudioConfig:
    """Settings of ``audio-wavlm-reference`` (official ``configs/cfg_test_w_audio.yaml``: WavLM-Large with the
    ``ssl_model.*`` weights of the SER-Odyssey baseline, last 4 layers trainable, attn_stats pooling, dropout 0.2
    in the pooling and the head, masked input normalisation).

    ``train_pool``: the official two-group optimiser holds only backbone and head parameters, so the attention
    pooling keeps its initial weights there (False, the reference); True trains it with the head.
    """

    backbone: str = "microsoft/wavlm-large"
    ssl_checkpoint: str | None = "3loi/SER-Odyssey-Baseline-WavLM-Multi-Attributes"
    trainable_layers: int = 4
    att_dim: int = 128
    att_dropout: float = 0.2
    head_dropout: float = 0.2
    emb_dim: int = 256
    n_chunks: int = 4
    input_normalize: bool = True
    train_pool: bool = False
    backbone_config: dict | None = None


@register_model("audio-wavlm-reference")
class ReferenceWavLMAudioModel(nn.Module):
    """The official audio model: ``wav`` (B, S) zero-padded, ``mask`` (B, S) -> ``va`` (B, 4, 2), ``emb`` (B, 4, 256).

    Masked z-normalisation of the waveform, the backbone with the attention mask, the feature-level mask from the
    backbone's own length rule, 4 chunks cut at ``round(i * T / 4)``, :class:`MaskedAttnStatsPool` per chunk
    (one pooling module shared by the chunks) and :class:`ReferenceAudioHead`.
    """

    Config = ReferenceAudioConfig
    takes_mask = True  # callers pass zero-padded windows with their sample mask

    def __init__(self, config: ReferenceAudioConfig | None = None):
        super().__init__()
        self.config = config or ReferenceAudioConfig()
        c = self.config
        fresh = c.backbone_config is None
        self.backbone = load_backbone(c.backbone, c.backbone_config)
        if fresh:
            c.backbone_config = self.backbone.config.to_dict()
            if c.ssl_checkpoint:
                load_ssl_weights(self.backbone, c.ssl_checkpoint)
        hidden = int(getattr(self.backbone.config, "hidden_size", 0) or self.backbone.config.hidden_dim)
        self.pool = MaskedAttnStatsPool(hidden, c.att_dim, c.att_dropout)
        self.head = ReferenceAudioHead(2 * hidden, c.emb_dim, c.head_dropout)
        if c.trainable_layers > 0:  # reference: freeze the backbone, then unfreeze its last k layers
            for p in self.backbone.parameters():
                p.requires_grad_(False)
            for layer in list(self.backbone.encoder.layers)[-c.trainable_layers:]:
                for p in layer.parameters():
                    p.requires_grad_(True)
        if not c.train_pool:
            for p in self.pool.parameters():
                p.requires_grad_(False)

    def feature_mask(self, mask: torch.Tensor | None, n_frames: int) -> torch.Tensor | None:
        """Sample mask (B, S) -> frame mask (B, T) by the backbone's convolutional length rule."""
        if mask is None:
            return None
        fn = getattr(self.backbone, "_get_feature_vector_attention_mask", None)
        if callable(fn):
            return fn(n_frames, mask, add_adapter=False)
        if mask.shape[1] == n_frames:
            return mask
        idx = (torch.arange(n_frames, device=mask.device) * (mask.shape[1] / float(n_frames))).long()
        return mask.index_select(1, idx.clamp_max(mask.shape[1] - 1))

    def forward(self, wav: torch.Tensor, mask: torch.Tensor | None = None,
                lengths: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``wav`` (B, S); ``mask`` (B, S) 1 on real samples, or ``lengths`` (B,) valid samples per row."""
        x = wav.float()
        if mask is None and lengths is not None:
            mask = torch.arange(x.shape[1], device=x.device)[None, :] < lengths.to(x.device)[:, None]
        if mask is not None:
            mask = mask.long()
        if self.config.input_normalize:
            x = masked_normalize(x, mask)
        kw: dict[str, Any] = {"input_values": x, "return_dict": True}
        if mask is not None:
            kw["attention_mask"] = mask
        h = self.backbone(**kw).last_hidden_state  # (B, T, H)
        fm = self.feature_mask(mask, h.shape[1])
        cuts = reference_chunk_bounds(h.shape[1], self.config.n_chunks)
        stats = torch.stack([self.pool(h[:, a:b], None if fm is None else fm[:, a:b])
                             for a, b in zip(cuts[:-1], cuts[1:])], dim=1)  # (B, C, 2H)
        va, emb = self.head(stats)
        return {"va": va, "emb": emb}
