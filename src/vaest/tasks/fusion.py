"""Learned fusion trained on modality run folders (``vaest train fusion``): RAAV and DCMMoE, and their export.

The per-video inputs (frame modalities ``[emb, va]``, audio tokens or per-frame audio, masks) are built by
:func:`vaest.inputs.fusion.build_fusion_data`, the same code that applies a trained fusion in the predictor; this
module adds what training needs: the window tasks (:class:`FusionTask` on frame windows, :class:`WindowFusionTask`
for the reference RAAV on one sample per 4 s audio window), the model settings that follow from the data, the
training run and the export of every video. Presets are :mod:`vaest.tasks.fusion_presets`; late fusion is
:mod:`vaest.tasks.late`.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence as Seq

import numpy as np
import torch
from torch import nn

from vaest.config import write_run_info
from vaest.corpus import Video, load_corpus
from vaest.errors import VaestError
from vaest.inference import evaluate_predictions, read_run_json, save_predictions, write_run_json
from vaest.inputs.fusion import (AUDIO, AudioTable, FusionData, ResolvedAudio, WindowSample, build_fusion_data,
                                 check_runs, fuse, predict_by_window, weight_names, window_batch, window_samples)
from vaest.inputs.settings import FusionInputs, inference_record
from vaest.io import atomic_write_json
from vaest.metrics import DIMS
from vaest.models import create_model, load_checkpoint
from vaest.models.fusion import ReferenceRAAVConfig
from vaest.presets import get_preset, preset_record
from vaest.progress import track
from vaest.sequences import Sequence, accepts_mask
from vaest.tasks.fusion_presets import default_train_config
from vaest.tasks.late import export_late
from vaest.training import SequenceTask, TrainConfig, fit

log = logging.getLogger(__name__)





class FusionTask(SequenceTask):
    """:class:`~vaest.training.SequenceTask` over fusion sequences that also resolves audio window tokens."""

    def __init__(self, train: list[Sequence], val: list[Sequence], win: int, hop: int,
                 table: AudioTable | None = None, val_batch: int = 16, align_end: bool = False,
                 with_mask: bool = False):
        super().__init__(train, val, win, hop, val_batch, align_end=align_end, with_mask=with_mask)
        self.table = table

    def wrap(self, model: nn.Module) -> nn.Module:
        """The model as the windows' batches must call it (audio rows resolved when there is a table)."""
        return ResolvedAudio(model, self.table) if self.table is not None else model

    def train_batches(self, rng: np.random.Generator, batch_size: int) -> Iterable[dict[str, torch.Tensor]]:
        for b in super().train_batches(rng, batch_size):
            yield self.table.resolve(b) if self.table is not None else b

    def predict_frames(self, model: nn.Module, seq: Sequence, device: str) -> dict[str, np.ndarray]:
        return super().predict_frames(self.wrap(model), seq, device)


class WindowFusionTask:
    """Training and validation of the reference RAAV on :func:`~vaest.inputs.fusion.window_samples` (batches
    padded to the longest sample, ``frame_mask`` False on padding); validation predicts every frame
    (:func:`~vaest.inputs.fusion.predict_by_window`), smooths it with ``val_smooth`` kernels (replicate edges, the
    official ``multimodal_framewise_v2_callback``) and scores CCC over all validation frames."""

    def __init__(self, train: list[Sequence], val: list[Sequence], modalities: Seq[str], table: AudioTable | None,
                 audio_dim: int, val_smooth: tuple[int, int] | None = (7, 13), val_batch: int = 16):
        self.train, self.val, self.modalities, self.table = train, val, list(modalities), table
        self.audio_dim, self.val_smooth, self.val_batch = audio_dim, val_smooth, val_batch
        self.samples = [w for w in window_samples(train)
                        if np.isfinite(train[w.seq].target[w.frames]).all(-1).any()]
        if train and not self.samples:
            raise VaestError("reference RAAV: no audio window of the training videos has a valid label")

    def batch(self, seqs: list[Sequence], items: list[WindowSample]) -> dict[str, torch.Tensor]:
        """Model inputs (and ``target``/``target_mask``) of a list of samples, padded to the longest."""
        return window_batch(seqs, items, self.modalities, self.table, self.audio_dim)

    def train_batches(self, rng: np.random.Generator, batch_size: int) -> Iterable[dict[str, torch.Tensor]]:
        order = rng.permutation(len(self.samples))
        for i in range(0, len(order), batch_size):
            yield self.batch(self.train, [self.samples[j] for j in order[i : i + batch_size]])

    def predict(self, model: nn.Module, seq: Sequence, device: str = "cpu") -> dict[str, np.ndarray]:
        """Per-frame ``va`` (n, 2), ``emb`` (n, H), ``weights`` (n, M) of one sequence (windows averaged)."""
        return predict_by_window(model, seq, self.modalities, self.table, self.audio_dim, device, self.val_batch)

    def validate(self, model: nn.Module, device: str) -> dict[str, float]:
        from vaest.postprocess import REFERENCE_EDGE, smooth
        from vaest.training import concat_frame_ccc

        pairs = []
        for sq in self.val:
            if sq.frame_labels is None:
                continue
            va = self.predict(model, sq, device)["va"]
            if self.val_smooth:
                va = smooth(va, self.val_smooth, REFERENCE_EDGE)
            pairs.append((va, sq.frame_labels))
        return concat_frame_ccc(pairs)


def export_window_fusion(model: nn.Module, data: FusionData, out: Path, device: str = "cpu") -> None:
    """Write ``out/preds/<video>.npz`` of the reference RAAV for every sequence (raw, unsmoothed ``va``; extras
    ``weights`` (n, M)); mask = any modality available."""
    names = list(model.config.modalities)
    model.to(device).eval()
    for seq in track(data.sequences, f"export {out.name}"):
        res = predict_by_window(model, seq, names, data.table, model.config.audio_dim, device)
        avail = data.available[seq.id]
        save_predictions(out, seq.id, res["va"], seq.fps, emb=res.get("emb"),
                         mask=np.any(list(avail.values()), axis=0), extras={"weights": res["weights"]},
                         meta={"weight_names": names})


def model_config(method: str, data: FusionData, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Model settings that follow from the data (modalities, input widths, priors, audio width) plus overrides."""
    from vaest.models.fusion import DEFAULT_EXPERT_PRIORS, DEFAULT_PRIORS

    names = [m for m in data.dims if m != AUDIO]
    cfg: dict[str, Any]
    if method == "raav":
        cfg = {"modalities": tuple(names), "in_dims": tuple(data.dims[m] for m in names),
               "priors": tuple(DEFAULT_PRIORS.get(m, 0.15) for m in names), "audio_dim": data.audio_dim}
    elif method == "dcm-ref":  # face queries over behavior keys/values (the official best run)
        q = "face" if "face" in names else names[0]
        kv = "behavior" if "behavior" in names else q
        cfg = {"input_dims": {m: data.dims[m] for m in names}, "q": q, "k": kv, "v": kv}
    else:
        mods = names + ([AUDIO] if AUDIO in data.dims else [])
        cfg = {"modalities": tuple(mods), "in_dims": tuple(data.dims[m] for m in mods),
               "priors": tuple(DEFAULT_EXPERT_PRIORS.get(m, 0.15) for m in (*mods, "cross"))}
    cfg.update(overrides or {})
    return cfg



def export_fusion(model: nn.Module, data: FusionData, out: Path, win: int, hop: int, device: str = "cpu",
                  batch_size: int = 16, align_end: bool = False) -> None:
    """Write ``out/preds/<video>.npz`` for every sequence: ``va``, ``emb``, extras ``weights`` (n, M) (models
    that weight modalities) and, for RAAV, ``fallback`` (n,) frames where no frame modality was available;
    mask = any modality available. ``align_end``: windows as :func:`vaest.windows.window_starts`."""
    for seq, (va, mask, extras) in zip(track(data.sequences, f"export {out.name}"),
                                       fuse(model, data, win, hop, device, batch_size, align_end)):
        emb = extras.pop("emb", None)
        save_predictions(out, seq.id, va, seq.fps, emb=emb, mask=mask, extras=extras,
                         meta={"weight_names": weight_names(model)})



@dataclass
class FusionSettings:
    """Everything :func:`train_fusion` was run with (written to config.yaml)."""

    method: str = "raav"
    runs: dict[str, str] = field(default_factory=dict)
    corpus: str = ""
    win: int = 400
    hop: int = 150
    model: dict[str, Any] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    align_end: bool = False
    form: str = "vaest"
    val_smooth: tuple[int, int] | None = None
    preset: dict[str, Any] = field(default_factory=dict)


def train_fusion(runs: dict[str, str | Path], corpus_root: str | Path, out: str | Path, method: str = "raav",
                 train_cfg: TrainConfig | None = None, model_cfg: dict[str, Any] | None = None, win: int = 400,
                 hop: int = 150, features_root: str | Path | None = None, crossfit: bool = True,
                 align_end: bool = False, form: str = "vaest", val_smooth: tuple[int, int] | None = None,
                 preset: str | None = None) -> dict[str, float]:
    """Train a learned fusion model on the modality runs' train-split predictions and export every video.

    Where a modality run holds out-of-fold predictions (``RUN/crossfit``, written by ``vaest train <modality>
    --crossfit K``), the train split is read from them (``crossfit=False`` ignores them); validation always
    reads the full runs, as inference does.

    Args:
        runs: modality name (``face``, ``behavior``, ``audio``, ...) -> run folder.
        corpus_root: corpus with the labels (train / val splits).
        out: run folder to write (model.pt, preds/, run.json, metrics.json, config.yaml, versions.yaml).
        method: ``raav`` or ``dcmmoe``.
        train_cfg: optimisation (default :func:`default_train_config`).
        model_cfg: model settings overriding the defaults (e.g. ``d_model``).
        win, hop: frame windows (reference 400 / 150).
        features_root: feature store with ``mouth`` / ``vad`` records for audio reliability (default: the one
            recorded in the audio run).
        align_end: windows as :func:`vaest.windows.window_starts` with ``align_end`` (the official fusion data).
        form: RAAV only: ``vaest`` (:class:`~vaest.models.fusion.RAAVFusion` on frame windows ``win``/``hop``)
            or ``reference`` (:class:`~vaest.models.fusion.ReferenceRAAV` on samples of one 4 s audio window,
            audio tokens carrying the audio prediction, :class:`WindowFusionTask`).
        val_smooth: reference form: moving-average kernels (valence, arousal) applied to the validation
            predictions before the CCC that selects the model (official 7 / 13); None scores them raw.
        preset: the preset name the settings came from (``fusion-raav`` for raav, ``fusion-dcmmoe`` otherwise;
            recorded in run.json with its values; see :func:`dcmmoe_preset_kwargs`).
    Returns:
        validation CCC (valence, arousal, mean) of the exported predictions.
    """
    out = Path(out)
    runs_p = check_runs(runs)
    corpus = load_corpus(corpus_root)
    cfg = train_cfg or default_train_config(method)
    if form not in ("vaest", "reference") or (form == "reference" and method != "raav"):
        raise VaestError(f"fusion form {form!r} is not available for method {method!r} (reference: raav only)")
    reference = form == "reference"
    data = build_fusion_data(runs_p, corpus.videos, method, Path(features_root) if features_root else None,
                             crossfit=crossfit, audio_va=reference)
    train = [s for s in data.sequences if data.split[s.id] == "train" and s.frame_labels is not None]
    val = [s for s in data.sequences if data.split[s.id] == "val" and s.frame_labels is not None]
    if not train or not val:
        raise VaestError(f"{corpus_root}: fusion needs labelled train and val videos with modality predictions "
                         f"(found {len(train)} train, {len(val)} val)")
    mcfg = model_config(method, data, model_cfg)
    from vaest.training import seed_everything

    seed_everything(cfg.seed)  # same seed, same initial weights: a rerun reproduces the run
    if reference:
        mcfg = {k: v for k, v in mcfg.items() if k in {f.name for f in dataclasses.fields(ReferenceRAAVConfig)}}
    model = create_model("raav-reference" if reference else method, **mcfg)
    prec = preset_record(get_preset("fusion-raav" if method == "raav" else "fusion-dcmmoe", preset))
    settings = FusionSettings(method, {k: str(v) for k, v in runs_p.items()}, str(corpus_root), win, hop, mcfg, cfg,
                              align_end, form, val_smooth, prec)
    write_run_info(out, f"vaest train fusion --method {method}", settings)
    log.info("fusion %s (%s): %d train / %d val videos, modalities %s", method, form, len(train), len(val),
             list(data.dims))
    task: Any = (WindowFusionTask(train, val, [m for m in data.dims if m != AUDIO], data.table, data.audio_dim,
                                  val_smooth) if reference
                 else FusionTask(train, val, win, hop, data.table, align_end=align_end, with_mask=accepts_mask(model)))
    fit(model, task, cfg, out, extra={"fusion": {"method": method, "win": win, "hop": hop, "form": form,
                                                 "align_end": align_end, "runs": settings.runs}})
    best, _ = load_checkpoint(out / "model.pt", cfg.device)
    if reference:
        export_window_fusion(best, data, out, cfg.device)
    else:
        export_fusion(best, data, out, win, hop, cfg.device, align_end=align_end)
    scores = evaluate_predictions(out, corpus, "val")
    metrics = {k: scores[k] for k in ("valence", "arousal", "mean")}
    atomic_write_json(out / "metrics.json", metrics)
    write_run_json(out, modality="fusion", method=method, corpus=str(corpus_root), features=settings.runs,
                   runs=settings.runs, win=win, hop=hop, weight_names=weight_names(best),
                   features_root=str(features_root) if features_root else None, crossfit=crossfit, form=form,
                   align_end=align_end, preset=prec,
                   inference=inference_record(FusionInputs(tuple(settings.runs), False, {}, best.registry_name, win, hop,
                                                           align_end)))
    log.info("fusion %s validation CCC v %.4f a %.4f mean %.4f", method, *(metrics[k] for k in (*DIMS, "mean")))
    return metrics


def apply_fusion(fusion_run: str | Path, videos: list[Video], out: str | Path | None = None,
                 runs: dict[str, str | Path] | None = None, device: str = "cpu") -> None:
    """Run a trained fusion run (learned or late) on ``videos`` and write ``out/preds/<video>.npz``.

    Args:
        fusion_run: run folder written by :func:`train_fusion` or :func:`late_fusion`.
        videos: the videos to fuse (their modality predictions must exist in the modality runs).
        out: where to write predictions (default: the fusion run itself).
        runs: modality runs to read (default: those recorded in the fusion run's run.json).
    """
    fusion_run = Path(fusion_run)
    info = read_run_json(fusion_run)
    out = Path(out) if out is not None else fusion_run
    runs_p = check_runs(runs or info.get("runs") or {})
    if info.get("modality") == "late":
        weights = {k: np.asarray(v, dtype=np.float64) for k, v in info["weights"].items()}
        export_late(runs_p, weights, videos, out)
        return
    model, ck = load_checkpoint(fusion_run / "model.pt", device)
    method = ck["name"]
    fr = info.get("features_root")
    if method == "raav-reference":
        data = build_fusion_data(runs_p, videos, "raav", Path(fr) if fr else None, audio_va=True)
        export_window_fusion(model, data, out, device)
        return
    data = build_fusion_data(runs_p, videos, method, Path(fr) if fr else None)
    export_fusion(model, data, out, int(info.get("win", 400)), int(info.get("hop", 150)), device,
                  align_end=bool(info.get("align_end", False)))
