"""The audio task: 4 s windows every 2 s with one valence/arousal target per second, cross-modal filtering,
waveform augmentation (:mod:`vaest.tasks.audio_augment`), frame-level validation, and the run folder the fusion
model reads.

Windows and targets follow the reference rules of :mod:`vaest.inputs.audio` (which builds each video's
:class:`~vaest.inputs.audio.AudioItem` for training and applying alike):

- window ``k`` covers seconds ``[2k, 2k + 4)`` of the media; its 1 s chunks' targets are the mean valid frame
  labels of that second (:func:`vaest.inputs.audio.second_targets`);
- a window trains only if at least 2 of its 4 seconds have valid labels (:func:`~vaest.inputs.audio.label_rule`)
  and, with filtering,
  if it passes the training rule of :func:`vaest.features.audio.window_reliability` (mouth open >= 1 s of the
  4 s and face coverage >= 0.8). Windows failing a rule are kept in the exports, masked, with their statistics.

Validation expands each video's per-second predictions (overlapping windows averaged per second) to the frame grid
with :func:`vaest.timebase.to_frames` and scores CCC over all concatenated validation frames.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from vaest.corpus import Corpus, Video, load_corpus
from vaest.errors import CorpusError, FeatureError
from vaest.features.audio import FilterConfig, audio_key
from vaest.inputs.audio import TOKENS_KEY, AudioItem, apply_item, input_key, load_item, predict_windows, record_grid
from vaest.inputs.audio import frames_from_seconds, seconds_from_windows
from vaest.inputs.settings import AudioInputs, inference_record
from vaest.tasks.audio_augment import AugmentConfig, augment_waveform
from vaest.features.store import Expect, FeatureStore
from vaest.media import fps_or_default
from vaest.progress import track
from vaest.training import concat_frame_ccc

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------------
# The task
# ---------------------------------------------------------------------------------------------------------


class AudioTask:
    """Training windows (4 s, targets (4, 2)) and frame-level validation for :func:`vaest.training.fit`."""

    def __init__(self, train: list[AudioItem], val: list[AudioItem], filtering: bool = True,
                 augment: AugmentConfig | None = None, val_batch: int = 16, zero_pad: bool = False):
        self.train, self.val, self.filtering, self.augment, self.val_batch = train, val, filtering, augment, val_batch
        self.zero_pad = zero_pad  # reference model: zero-padded windows plus their sample mask
        self.index = [(i, int(k)) for i, it in enumerate(train) for k in np.flatnonzero(it.train_mask(filtering))]
        if not self.index:
            raise CorpusError("no audio window passes the training rules (labels on >= 2 of 4 s"
                              + (", mouth open >= 1 s, face coverage >= 0.8" if filtering else "")
                              + "); check the labels and the mouth/vad features, or train with --no-filter")

    @property
    def n_candidates(self) -> int:
        """Training windows that pass the label rule and have audio (before cross-modal filtering)."""
        return int(sum((it.label_ok & it.has_audio.any(1)).sum() for it in self.train))

    def train_batches(self, rng: np.random.Generator, batch_size: int) -> Iterable[dict[str, torch.Tensor]]:
        """Shuffled batches: ``feats`` (B, T, D) or ``wav`` (B, S), ``target`` (B, 4, 2), ``target_mask`` (B, 4);
        with ``zero_pad`` also ``mask`` (B, S) real samples."""
        order = rng.permutation(len(self.index))
        for i in range(0, len(order), batch_size):
            xs, ys, ms, sm = [], [], [], []
            key = "feats"
            for j in order[i : i + batch_size]:
                it_i, k = self.index[j]
                it = self.train[it_i]
                key = input_key(it)
                x = it.window_input(k, self.zero_pad)
                if key == "wav" and self.augment is not None:
                    x = augment_waveform(x, rng, self.augment)
                y = it.targets[k]
                xs.append(x)
                ys.append(np.nan_to_num(y))
                ms.append(np.isfinite(y).all(-1) & it.has_audio[k])
                sm.append(it.window_mask(k))
            batch = {key: torch.from_numpy(np.stack(xs).astype(np.float32)),
                     "target": torch.from_numpy(np.stack(ys).astype(np.float32)),
                     "target_mask": torch.from_numpy(np.stack(ms))}
            if self.zero_pad:
                batch["mask"] = torch.from_numpy(np.stack(sm))
            yield batch

    def predict_frames(self, model: nn.Module, item: AudioItem, device: str = "cpu") -> dict[str, np.ndarray]:
        """Per-frame ``va`` (n_frames, 2), ``emb`` (n_frames, E) and per-window ``win_va``/``win_emb``."""
        win_va, win_emb = predict_windows(model, item, device, self.val_batch)
        va, _ = frames_from_seconds(seconds_from_windows(item, win_va), item.n_frames, item.fps)
        out = {"va": va, "win_va": win_va, "win_emb": win_emb}
        if win_emb.shape[-1]:
            out["emb"], _ = frames_from_seconds(seconds_from_windows(item, win_emb), item.n_frames, item.fps)
        return out

    def validate(self, model: nn.Module, device: str) -> dict[str, float]:
        """CCC over all concatenated labelled validation frames."""
        pairs = []
        for it in self.val:
            if it.frame_labels is None:
                continue
            win_va, _ = predict_windows(model, it, device, self.val_batch)
            va, _ = frames_from_seconds(seconds_from_windows(it, win_va), it.n_frames, it.fps)
            pairs.append((va, it.frame_labels))
        return concat_frame_ccc(pairs)


# ---------------------------------------------------------------------------------------------------------
# Training and export (``vaest train audio``)
# ---------------------------------------------------------------------------------------------------------


@dataclass
class AudioTrainConfig:
    """Settings of ``vaest train audio`` (defaults: vaest's; ``--preset reference`` sets the official ones).

    ``feature_norm`` (offline encoders): ``video`` z-scores each feature dimension within each video before the
    model's global normalisation (removes channel and speaker offsets; on the synthetic corpus it lifts the
    validation arousal CCC of ``lmfb`` from ~0.15 to ~0.4), ``global`` uses the training-set statistics only.
    ``ema_warmup``: the EMA decay ramps up to ``ema`` (0.998) over the first updates, so that small corpora with
    few steps per epoch do not validate a copy of the initial weights.

    Reference-form options (all set by ``--preset reference``, see :data:`REFERENCE_AUDIO`):
    ``reference_model`` trains ``audio-wavlm-reference`` (zero-padded windows with their sample mask, masked
    normalisation, official pooling/head) instead of ``audio-wavlm``; ``ssl_checkpoint`` is the SER checkpoint
    whose ``ssl_model.*`` tensors are loaded over the backbone (file, folder or hub id); ``augment_form`` picks
    the augmentation chain (:class:`AugmentConfig`); ``plateau_head_only`` lowers only the head group's learning
    rate on a plateau; ``loss_min_valid`` switches a batch with fewer valid seconds to plain MSE.
    ``preset`` is the preset name the run was configured with (recorded in config.yaml and run.json).
    """

    encoder: str = "lmfb"
    backbone: str | None = None
    trainable_layers: int = 4
    filter: bool = True
    train_min_open_frac: float = 0.25
    min_coverage: float = 0.8
    fuse_min_open_s: float = 1.0
    speech_threshold: float = 0.5
    min_valid_seconds: int = 2
    augment: bool = True
    proj_dim: int = 128
    dropout: float = 0.0
    feature_norm: str = "video"
    epochs: int = 30
    batch_size: int = 8
    backbone_lr: float = 5e-6
    head_lr: float = 2e-4
    weight_decay: float = 0.01
    ema: float | None = 0.998
    ema_warmup: bool = True
    grad_clip: float = 1.0
    loss_weights: tuple[float, float] = (0.7, 0.3)
    mse_weight: float = 0.1
    plateau_patience: int = 5
    early_stop: int = 10
    max_batches_per_epoch: int | None = None
    seed: int = 0
    device: str = "cpu"
    reference_model: bool = False
    ssl_checkpoint: str | None = None
    augment_form: str = "vaest"
    plateau_factor: float = 0.1
    plateau_threshold: float = 1e-4
    plateau_head_only: bool = False
    plateau_min_lr: float = 0.0
    loss_min_valid: int = 0
    preset: str | None = None

    def inputs(self) -> AudioInputs:
        """The inference settings of a run trained with this configuration (saved in its run.json)."""
        return AudioInputs(self.encoder, self.filter, self.feature_norm, self.min_valid_seconds,
                           self.train_min_open_frac, self.min_coverage, self.fuse_min_open_s, self.speech_threshold)

    def filter_config(self) -> FilterConfig:
        return self.inputs().filter_config()

    def train_config(self):
        from vaest.training import TrainConfig

        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.head_lr,
                           weight_decay=self.weight_decay, plateau_patience=self.plateau_patience,
                           plateau_factor=self.plateau_factor, plateau_threshold=self.plateau_threshold,
                           plateau_groups=("head",) if self.plateau_head_only else None,
                           plateau_min_lr=self.plateau_min_lr, loss_min_valid=self.loss_min_valid,
                           early_stop=self.early_stop, grad_clip=self.grad_clip, ema=self.ema,
                           ema_warmup=self.ema_warmup, seed=self.seed,
                           device=self.device, max_batches_per_epoch=self.max_batches_per_epoch,
                           loss_weights=tuple(self.loss_weights), mse_weight=self.mse_weight)


def load_items(store: FeatureStore, corpus: Corpus, cfg: AudioTrainConfig,
               expect: Expect | None = None) -> tuple[list[AudioItem], list[Video]]:
    """Items of every video with stored audio features, and the videos without them. Records of another width or
    config hash than ``expect`` asks (default: the first video's; it then holds them) are refused."""
    key = audio_key(cfg.encoder)
    expect = expect if expect is not None else Expect(f"audio encoder {cfg.encoder!r}")
    items, missing = [], []
    filt = cfg.filter_config()
    no_mouth = 0
    for v in track(corpus.videos, "load audio features"):
        if v.media is None or not store.has(key, v.id):
            missing.append(v)
            continue
        it = load_item(store, v, cfg.encoder, filt, cfg.min_valid_seconds, cfg.feature_norm, expect)
        if it.stats.source != "mouth" and not v.audio_only:
            no_mouth += 1
        items.append(it)
    if no_mouth:
        log.warning("%d video(s) have no 'mouth' record in %s: their windows are filtered by voice activity "
                    "instead of mouth opening (run `vaest extract mouth` for the reference rule)", no_mouth, store.root)
    if missing:
        log.warning("%d video(s) have no '%s' features in %s (e.g. %s); their predictions are masked",
                    len(missing), key, store.root, missing[0].id)
    return items, missing


def training_inputs(store: FeatureStore, encoder: str, video_id: str, expect: Expect) -> dict[str, Any]:
    """What the checkpoint records of the features it was trained on (``inputs``): the store key, the width and
    config hash every record read had (``expect``), and the features hash of a training record (applying the model
    refuses records of another one: :class:`~vaest.apply.AudioModel`)."""
    rec = store.open(audio_key(encoder), video_id)
    return {"store_key": audio_key(encoder), "dim": expect.dim, "config_hash": expect.config_hash,
            "features_hash": rec.meta.get("features_hash")}


def build_model(cfg: AudioTrainConfig, items: list[AudioItem], store: FeatureStore) -> nn.Module:
    """The registered model for the encoder: ``audio-wavlm`` on waveforms, ``audio-frames`` on cached frames
    (with input normalisation from the training items)."""
    from vaest.models import create_model
    from vaest.training import seed_everything

    seed_everything(cfg.seed)  # same seed, same initial weights: a rerun reproduces the run
    if cfg.encoder == "wavlm":
        backbone = cfg.backbone
        if backbone is None:
            for it in items:
                backbone = store.load(audio_key("wavlm"), it.id).meta.get("model")
                break
        if not backbone:
            raise FeatureError("the wavlm encoder needs --backbone PATH_OR_ID (a WavLM/wav2vec2/HuBERT checkpoint)")
        if cfg.reference_model:
            return create_model("audio-wavlm-reference", backbone=backbone, ssl_checkpoint=cfg.ssl_checkpoint,
                                trainable_layers=cfg.trainable_layers, att_dropout=cfg.dropout,
                                head_dropout=cfg.dropout)
        return create_model("audio-wavlm", backbone=backbone, trainable_layers=cfg.trainable_layers,
                            dropout=cfg.dropout)
    dim = next(it.x.shape[1] for it in items)
    model = create_model("audio-frames", in_dim=int(dim), proj_dim=cfg.proj_dim, dropout=cfg.dropout)
    from vaest.metrics import RunningMoments

    train = [it.x for it in items if it.split == "train" and len(it.x)] or [it.x for it in items if len(it.x)]
    mom = RunningMoments()  # one float64 pass, video by video (each read from the store): no copy of the corpus
    for x in train:
        mom.add(x[:])
    model.set_normalization(mom.mean, mom.std())
    return model


def export_run(model: nn.Module, items: list[AudioItem], missing: list[Video], store: FeatureStore,
               run: Path, cfg: AudioTrainConfig, device: str = "cpu") -> None:
    """Write per-frame predictions of every video (``save_predictions``) and the per-window audio tokens
    (store key ``audio-tokens`` in the run folder: values (n_windows, 4, 256), mask = usable windows, time base
    hop 2 s / win 4 s, extras: per-second ``va``, ``has_audio`` and the window statistics)."""
    from vaest.inference import save_predictions

    run_store = FeatureStore(run)
    for it in track(items, "export audio predictions"):
        frames, tokens = apply_item(model, it, cfg.filter, cfg.encoder, device)
        save_predictions(run, it.id, frames.values, it.fps, emb=frames.extras.get("emb"), mask=frames.mask,
                         extras={"reliability": frames.extras["reliability"]}, meta=frames.meta)
        run_store.save(TOKENS_KEY, it.id, tokens)
    for v in missing:
        n = v.n_label_frames if v.label_path is not None else None
        got = record_grid(store, v)
        if got is not None:
            n, fps = got
        else:
            fps = fps_or_default(v.fps)
        if not n:
            log.warning("%s: no audio features and no frame count; no prediction written", v.id)
            continue
        emb_dim = int(getattr(model.config, "emb_dim", 256))
        save_predictions(run, v.id, np.zeros((n, 2), np.float32), fps, emb=np.zeros((n, emb_dim), np.float32),
                         mask=np.zeros(n, bool), extras={"reliability": np.zeros(n, np.float32)},
                         meta={"modality": "audio", "missing": True})


def _reliable_ccc(run: Path, corpus: Corpus) -> dict[str, float]:
    from vaest.inference import load_predictions
    from vaest.metrics import va_ccc

    preds, labs = [], []
    for v in corpus.split("val"):
        if not v.has_labels:
            continue
        try:
            rec = load_predictions(run, v.id)
        except FeatureError:
            continue
        lab = v.labels_for(len(rec.values))
        preds.append(rec.values[rec.mask])
        labs.append(lab[rec.mask])
    if not preds:
        return {"valence": math.nan, "arousal": math.nan, "mean": math.nan, "frames": 0}
    p, y = np.concatenate(preds), np.concatenate(labs)
    out: dict[str, float] = va_ccc(p, y)
    out["frames"] = int(np.isfinite(y).all(1).sum())
    return out


def train_audio(features: str | Path, corpus: str | Path | Corpus, out: str | Path,
                cfg: AudioTrainConfig | None = None) -> dict[str, Any]:
    """Train the audio model and write the run folder (model, predictions, tokens, metrics, run info).

    Returns the validation metrics written to ``metrics.json``: CCC over all validation frames (``valence``,
    ``arousal``, ``mean``), CCC over the frames of usable windows (``reliable``) and the share of training
    windows kept by the filter.
    """
    from vaest.config import write_run_info
    from vaest.inference import evaluate_predictions, write_run_json
    from vaest.io import atomic_write_json
    from vaest.models import load_checkpoint
    from vaest.models.audio import audio_param_groups
    from vaest.training import fit

    cfg = cfg or AudioTrainConfig()
    run = Path(out)
    run.mkdir(parents=True, exist_ok=True)
    store = FeatureStore(features)
    corp = load_corpus(corpus)
    expect = Expect(f"audio encoder {cfg.encoder!r}")  # one width and one extractor configuration for the run
    items, missing = load_items(store, corp, cfg, expect)
    train = [it for it in items if it.split == "train" and it.frame_labels is not None]
    val = [it for it in items if it.split == "val" and it.frame_labels is not None]
    if not train:
        raise CorpusError(f"{corpus}: no labelled training video has '{audio_key(cfg.encoder)}' features in {features}"
                          f" (run `vaest extract audio --encoder {cfg.encoder}` first)")
    if not val:
        raise CorpusError(f"{corpus}: no labelled validation video with audio features; validation selects the model")
    augment = None
    if cfg.augment and cfg.encoder == "wavlm":
        augment = AugmentConfig.reference() if cfg.augment_form == "reference" else AugmentConfig()
    task = AudioTask(train, val, cfg.filter, augment, zero_pad=cfg.reference_model and cfg.encoder == "wavlm")
    kept, cand = len(task.index), task.n_candidates
    log.info("audio windows: %d of %d labelled training windows kept (%.1f%%)%s", kept, cand,
             100.0 * kept / max(cand, 1), "" if cfg.filter else " (filter off)")
    model = build_model(cfg, items, store)
    groups = audio_param_groups(model, cfg.backbone_lr, cfg.head_lr)
    write_run_info(run, "vaest train audio", cfg)
    res = fit(model, task, cfg.train_config(), run, param_groups=groups,
              extra={"encoder": cfg.encoder, "features": str(features), "filter": cfg.filter,
                     "feature_norm": cfg.feature_norm, "inputs": training_inputs(store, cfg.encoder, train[0].id,
                                                                                 expect)})
    best, _ = load_checkpoint(run / "model.pt", cfg.device)
    export_run(best, items, missing, store, run, cfg, cfg.device)
    from vaest.presets import get_preset, preset_record

    write_run_json(run, modality="audio", corpus=str(corp.location), features=str(features), encoder=cfg.encoder,
                   model=getattr(best, "registry_name", ""), tokens=TOKENS_KEY,
                   preset=preset_record(get_preset("audio", cfg.preset)), inference=inference_record(cfg.inputs()))
    metrics: dict[str, Any] = dict(evaluate_predictions(run, corp, "val"))
    metrics["reliable"] = _reliable_ccc(run, corp)
    metrics.update({"train_windows": cand, "train_windows_kept": kept, "kept_share": kept / max(cand, 1),
                    "filter": cfg.filter, "encoder": cfg.encoder, "best_epoch": res.best_epoch,
                    "train_seconds": res.seconds})
    atomic_write_json(run / "metrics.json", metrics)
    log.info("audio validation CCC: valence %.3f arousal %.3f mean %.3f (usable-window frames: mean %.3f)",
             metrics["valence"], metrics["arousal"], metrics["mean"], metrics["reliable"]["mean"])
    return metrics


def config_from(file_cfg: dict[str, Any] | None, flags: dict[str, Any] | None) -> AudioTrainConfig:
    """Build the config: defaults < preset (``preset`` key of the flags or of the file) < YAML mapping < flags."""
    from vaest.config import build
    from vaest.presets import resolve_preset

    p, file_cfg, flags = resolve_preset("audio", file_cfg, flags)
    return build(AudioTrainConfig, p.values if p else None, file_cfg, flags, {"preset": p.name if p else None})


_CFG = "src_audio_and_fusion/configs/cfg_test_w_audio.yaml"
_S2S = "src_audio_and_fusion/configs/cfg_va_s2s.yaml"
_MODEL = "src_audio_and_fusion/src/audio/models/wavlm_s2s_model.py"
_LOSS = "src_audio_and_fusion/src/losses/ccc_mse_loss.py"
_SCHED = "src_audio_and_fusion/src/schedulers/named_reduceonplateau_scheduler.py"
_DATA = "src_audio_and_fusion/src/audio/data/abaw_va_dataset.py"

REFERENCE_AUDIO: dict[str, tuple[Any, str]] = {
    "encoder": ("wavlm", f"{_CFG} model.name wavlm_s2s_model_v1"),
    "backbone": ("microsoft/wavlm-large", f"{_MODEL} AutoModel.from_pretrained"),
    "ssl_checkpoint": ("3loi/SER-Odyssey-Baseline-WavLM-Multi-Attributes", f"{_CFG} model.params.model_name"),
    "reference_model": (True, f"{_MODEL} (attn_stats pooling, masked normalisation, zero padding + mask)"),
    "trainable_layers": (4, f"{_CFG} unfreeze_last_n_layers"),
    "dropout": (0.2, f"{_CFG} head_dropout, attn_dropout"),
    "epochs": (50, f"{_CFG} train.params.epochs"),
    "batch_size": (8, f"{_CFG} data.params.batch_size"),
    "backbone_lr": (5e-6, f"{_CFG} optimizer.params.lr_backbone"),
    "head_lr": (2e-4, f"{_CFG} optimizer.params.lr_head"),
    "weight_decay": (0.01, f"{_CFG} optimizer.params.weight_decay"),
    "grad_clip": (1.0, f"{_CFG} train.params.grad_clip_norm"),
    "ema": (0.998, f"{_S2S} callbacks ema_callback.decay"),
    "ema_warmup": (False, f"{_S2S} ema_callback (constant decay)"),
    "loss_weights": ((0.7, 0.3), f"{_CFG} loss.params v_weight, a_weight"),
    "mse_weight": (0.1, f"{_CFG} loss.params.mse_weight"),
    "loss_min_valid": (4, f"{_LOSS} CCCMSELoss min_valid"),
    "plateau_factor": (0.5, f"{_CFG} scheduler.params.factor"),
    "plateau_patience": (2, f"{_CFG} scheduler.params.patience"),
    "plateau_threshold": (5e-4, f"{_CFG} scheduler.params.threshold"),
    "plateau_min_lr": (1e-7, f"{_CFG} scheduler.params.min_lr"),
    "plateau_head_only": (True, f"{_CFG} scheduler.params.target_group_names; {_SCHED}"),
    "early_stop": (6, f"{_S2S} early_stopping_callback.patience"),
    "augment": (True, f"{_S2S} data.params.augment"),
    "augment_form": ("reference", f"{_S2S} augment_params; {_DATA} _apply_augmentations"),
}


def _register_presets() -> None:
    from vaest.presets import register_preset

    register_preset("audio", "reference", {k: v for k, (v, _) in REFERENCE_AUDIO.items()},
                    {k: src for k, (_, src) in REFERENCE_AUDIO.items()},
                    "the official Team RAS audio model: WavLM-Large + SER-Odyssey ssl_model weights, 4 s windows")
    register_preset("audio", "vaest", {"reference_model": False, "augment_form": "vaest", "ema_warmup": True,
                                       "feature_norm": "video", "plateau_head_only": False},
                    {k: "vaest (docs/reference-audio-fusion.md)" for k in
                     ("reference_model", "augment_form", "ema_warmup", "feature_norm", "plateau_head_only")},
                    "vaest's audio settings (task defaults, spelled out)")


_register_presets()


__all__ = ["AudioTask", "AudioTrainConfig", "build_model", "config_from", "export_run", "load_items", "train_audio"]
