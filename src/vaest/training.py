"""The one training loop of the project, used by every model (face, behavior, audio, fusion).

A *task* owns the data, the sampling of training batches, the loss and the validation metric; the model knows
nothing about the data (as in pyannote.audio). :func:`fit` runs AdamW with optional parameter groups,
ReduceLROnPlateau on the validation CCC, early stopping, gradient clipping, an EMA of the weights, and keeps
the best checkpoint by validation CCC (computed over all concatenated validation frames). A run killed at any
moment resumes from its last finished epoch when the same command is run again.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Protocol, TypeVar

import numpy as np
import torch
from torch import nn

from vaest.config import build
from vaest.errors import VaestError
from vaest.io import atomic_path, atomic_write_json
from vaest.metrics import ccc_loss, ccc_loss_pooled, ccc_loss_windows, va_ccc
from vaest.progress import make_progress
from vaest.sequences import Sequence, frames_from_steps, predict_sequence
from vaest.windows import take_window, window_starts

log = logging.getLogger(__name__)

C = TypeVar("C")


@dataclass
class TrainConfig:
    """Optimisation settings shared by all models (defaults: the reference face model)."""

    epochs: int = 100
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 0.01
    plateau_factor: float = 0.1
    plateau_patience: int = 5
    plateau_threshold: float = 1e-4  # torch's default (relative); the reference audio model uses 5e-4
    plateau_groups: tuple[str, ...] | None = None  # parameter groups (by "name") the plateau rule lowers; None: all
    plateau_min_lr: float = 0.0  # floor of the lowered groups (reference audio: 1e-7)
    early_stop: int = 15
    grad_clip: float | None = None
    ema: float | None = None
    ema_warmup: bool = False  # decay min(ema, (1 + n) / (10 + n)) after n updates, so short runs are not stuck at init
    seed: int = 0
    device: str = "cpu"
    max_batches_per_epoch: int | None = None
    loss_weights: tuple[float, float] = (0.5, 0.5)
    mse_weight: float = 0.0
    loss_min_valid: int = 0  # fewer valid steps in a batch than this: plain MSE (reference audio/RAAV: 4)
    loss: str = "ccc"  # "ccc" (pooled over the batch), "ccc-window" (per window, face/fusion reference), "ccc-pooled"
    scheduler: str = "plateau"  # "plateau" (ReduceLROnPlateau on validation CCC) or "none" (behavior reference)


LOSSES = ("ccc", "ccc-window", "ccc-pooled")


def split_settings(settings_cls: type[C], file_cfg: dict[str, Any], flags: dict[str, Any], what: str,
                   train_defaults: dict[str, Any] | None = None, base: dict[str, Any] | None = None) -> tuple[C, TrainConfig]:
    """Split a run config (YAML mapping, then CLI flags; None flags ignored) into a task's settings dataclass and
    a :class:`TrainConfig`. Keys may be flat or grouped under ``settings:`` / ``train:``;
    ``train_defaults`` are the task's own optimisation defaults, ``base`` a flat mapping applied over them (a
    preset's values, :mod:`vaest.presets`); the file and then the flags override both."""
    s_names = {f.name for f in dataclasses.fields(settings_cls)}  # type: ignore[arg-type]
    t_names = {f.name for f in dataclasses.fields(TrainConfig)}
    s_src: dict[str, Any] = {}
    t_src: dict[str, Any] = dict(train_defaults or {})
    for k, v in (base or {}).items():
        (s_src if k in s_names else t_src)[k] = v
    s_src.update(file_cfg.get("settings") or {})
    t_src.update(file_cfg.get("train") or {})
    for src in (file_cfg, flags):
        for k, v in src.items():
            if k in ("settings", "train") or v is None:
                continue
            key = k.replace("-", "_")
            if key in s_names:
                s_src[key] = v
            elif key in t_names:
                t_src[key] = v
            else:
                raise VaestError(f"unknown setting {k!r} for {what} training; known: "
                                 f"{', '.join(sorted(s_names | t_names))}")
    return build(settings_cls, s_src), build(TrainConfig, t_src)


def batch_loss(cfg: TrainConfig, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The training loss named by ``cfg.loss`` (see :mod:`vaest.metrics`): ``ccc`` = :func:`ccc_loss` over all
    valid steps of the batch (plus ``mse_weight`` MSE), ``ccc-window`` = :func:`ccc_loss_windows` (mean over
    windows of per-window 1 - CCC), ``ccc-pooled`` = :func:`ccc_loss_pooled` (the behavior reference form)."""
    if cfg.loss == "ccc":
        return ccc_loss(pred, target, mask, cfg.loss_weights, cfg.mse_weight, cfg.loss_min_valid)
    if cfg.loss not in LOSSES:
        raise ValueError(f"unknown loss {cfg.loss!r}; known: {', '.join(LOSSES)}")
    fn = ccc_loss_windows if cfg.loss == "ccc-window" else ccc_loss_pooled
    return fn(pred, target, mask, cfg.loss_weights)


class Task(Protocol):
    """What :func:`fit` needs from a task."""

    def train_batches(self, rng: np.random.Generator, batch_size: int) -> Iterable[dict[str, torch.Tensor]]:
        """One epoch of batches: model inputs plus ``target`` (B, ..., 2) and ``target_mask`` (B, ...)."""

    def validate(self, model: nn.Module, device: str) -> dict[str, float]:
        """Validation CCC (``valence``, ``arousal``, ``mean``) over all concatenated frames."""


@dataclass
class FitResult:
    best_epoch: int
    best: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _to_device(batch: dict[str, torch.Tensor], device: str) -> dict[str, torch.Tensor]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """Everything in a batch that is not a target is passed to the model as keyword arguments."""
    return {k: v for k, v in batch.items() if not k.startswith("target")}


class EMA:
    """Exponential moving average of a model's floating-point parameters and buffers."""

    def __init__(self, model: nn.Module, decay: float, warmup: bool = False):
        self.decay = decay
        self.warmup = warmup
        self.updates = 0
        self.shadow = copy.deepcopy(model).eval()
        for p in self.shadow.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = min(self.decay, (1 + self.updates) / (10 + self.updates)) if self.warmup else self.decay
        self.updates += 1
        for s, p in zip(self.shadow.state_dict().values(), model.state_dict().values()):
            if s.dtype.is_floating_point:
                s.mul_(d).add_(p.detach(), alpha=1 - d)
            else:
                s.copy_(p)


def save_checkpoint(path: Path, model: nn.Module, **extra: Any) -> None:
    """Atomically save a model with its registry name and config (so it can be rebuilt with no code edits)."""
    payload = {
        "name": getattr(model, "registry_name", type(model).__name__),
        "config": dataclasses.asdict(model.config) if dataclasses.is_dataclass(getattr(model, "config", None)) else {},
        "state_dict": model.state_dict(),
        **extra,
    }
    with atomic_path(path, suffix=".tmp.pt") as tmp:
        torch.save(payload, tmp)


def fit(model: nn.Module, task: Task, cfg: TrainConfig, out_dir: str | Path,
        param_groups: list[dict[str, Any]] | None = None, extra: dict[str, Any] | None = None) -> FitResult:
    """Train ``model`` on ``task``; write ``out_dir/model.pt`` (best), ``last.pt`` (resume) and ``history.json``.

    Args:
        model: any module whose forward takes the task's batch inputs as keyword arguments and returns a dict
            with ``va`` shaped like the batch's ``target``.
        task: see :class:`Task`.
        cfg: optimisation settings.
        out_dir: run folder.
        param_groups: optional AdamW groups (each a dict with ``params`` and ``lr``); every trainable parameter
            must be in exactly one group (checked).
        extra: saved into the checkpoints (feature normalisation, data settings, ...).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    device = cfg.device
    model.to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if param_groups is None:
        param_groups = [{"params": trainable, "lr": cfg.lr}]
    grouped = [p for g in param_groups for p in g["params"]]
    if len({id(p) for p in grouped}) != len(grouped) or {id(p) for p in grouped} != {id(p) for p in trainable}:
        raise ValueError("param_groups must hold every trainable parameter exactly once")
    opt = torch.optim.AdamW(param_groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.scheduler not in ("plateau", "none"):
        raise ValueError(f"scheduler must be 'plateau' or 'none', got {cfg.scheduler!r}")
    # a group outside plateau_groups gets its own lr as floor, so the plateau rule never lowers it
    floors = [cfg.plateau_min_lr if cfg.plateau_groups is None or g.get("name") in cfg.plateau_groups else g["lr"]
              for g in opt.param_groups]
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=cfg.plateau_factor,
                                                       patience=cfg.plateau_patience,
                                                       threshold=cfg.plateau_threshold, min_lr=floors)
    ema = EMA(model, cfg.ema, cfg.ema_warmup) if cfg.ema else None
    rng = np.random.default_rng(cfg.seed)
    history: list[dict[str, Any]] = []
    best = {"valence": -math.inf, "arousal": -math.inf, "mean": -math.inf}
    best_epoch, start_epoch, stale = -1, 0, 0
    extra = dict(extra or {})
    train_cfg = dataclasses.asdict(cfg)
    last = out / "last.pt"
    if last.exists():
        ck = torch.load(last, map_location=device, weights_only=False)
        if ck.get("train_config") == train_cfg and ck.get("config") == (dataclasses.asdict(model.config) if dataclasses.is_dataclass(getattr(model, "config", None)) else {}):
            model.load_state_dict(ck["state_dict"])
            opt.load_state_dict(ck["optimizer"])
            sched.load_state_dict(ck["scheduler"])
            if ema is not None and ck.get("ema_state") is not None:
                ema.shadow.load_state_dict(ck["ema_state"])
                ema.updates = int(ck.get("ema_updates", 0))
            rng.bit_generator.state = ck["rng"]
            torch.set_rng_state(ck["torch_rng"])
            history, best, best_epoch, stale = ck["history"], ck["best"], ck["best_epoch"], ck["stale"]
            start_epoch = ck["epoch"] + 1
            log.info("resuming %s at epoch %d (best mean CCC %.4f at epoch %d)", out, start_epoch, best["mean"], best_epoch)
        else:
            log.warning("%s: settings changed since the interrupted run; starting afresh", last)
    t0 = time.time()
    with make_progress() as prog:
        ep_task = prog.add_task(f"train {out.name}", total=cfg.epochs, completed=start_epoch)
        for epoch in range(start_epoch, cfg.epochs):
            if stale >= cfg.early_stop:
                break
            model.train()
            losses = []
            for b, batch in enumerate(task.train_batches(rng, cfg.batch_size)):
                if cfg.max_batches_per_epoch and b >= cfg.max_batches_per_epoch:
                    break
                batch = _to_device(batch, device)
                pred = model(**model_inputs(batch))["va"]
                loss = batch_loss(cfg, pred, batch["target"], batch.get("target_mask"))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip:
                    nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
                opt.step()
                if ema is not None:
                    ema.update(model)
                losses.append(float(loss.detach()))
            eval_model = ema.shadow if ema is not None else model
            eval_model.eval()
            with torch.no_grad():
                scores = task.validate(eval_model, device)
            m = scores["mean"] if math.isfinite(scores["mean"]) else -math.inf
            if cfg.scheduler == "plateau":
                sched.step(m)
            rec = {"epoch": epoch, "loss": float(np.mean(losses)) if losses else math.nan, **scores,
                   "lr": opt.param_groups[0]["lr"]}
            history.append(rec)
            if m > best["mean"]:
                best, best_epoch, stale = dict(scores), epoch, 0
                save_checkpoint(out / "model.pt", eval_model, train_config=train_cfg, epoch=epoch, metrics=scores, **extra)
            else:
                stale += 1
            log.info("epoch %d loss %.4f val CCC v %.3f a %.3f mean %.3f%s", epoch, rec["loss"], scores["valence"],
                     scores["arousal"], scores["mean"], " *" if best_epoch == epoch else "")
            save_checkpoint(last, model, train_config=train_cfg, epoch=epoch, optimizer=opt.state_dict(),
                            scheduler=sched.state_dict(), ema_state=ema.shadow.state_dict() if ema else None,
                            ema_updates=ema.updates if ema else 0,
                            rng=rng.bit_generator.state, torch_rng=torch.get_rng_state(), history=history,
                            best=best, best_epoch=best_epoch, stale=stale)
            prog.advance(ep_task)
    secs = time.time() - t0
    atomic_write_json(out / "history.json", {"best_epoch": best_epoch, "best": best, "history": history, "seconds": secs})
    return FitResult(best_epoch, best, history, secs)


# ---------------------------------------------------------------------------------------------------------
# Sequence tasks: per-step features on a time base -> per-step VA (face frames, behavior segments, fusion)
# (the sequences themselves and their sliding-window application: vaest.sequences)
# ---------------------------------------------------------------------------------------------------------


def concat_frame_ccc(pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """CCC over all concatenated frames of (prediction (n, 2), labels (n, 2) with NaN invalid) pairs."""
    preds, labs = [], []
    for p, y in pairs:
        preds.append(p)
        labs.append(y)
    if not preds:
        return {"valence": math.nan, "arousal": math.nan, "mean": math.nan}
    return va_ccc(np.concatenate(preds), np.concatenate(labs))


class SequenceTask:
    """Windows of ``win`` steps with hop ``hop`` from training sequences; frame-level CCC on validation.

    ``align_end``: windows as :func:`vaest.windows.window_starts` with ``align_end`` (the official face data).
    ``with_mask``: training batches carry ``mask`` (B, win) bool, False on padded steps, for models that take it.
    """

    def __init__(self, train: list[Sequence], val: list[Sequence], win: int, hop: int, val_batch: int = 16,
                 align_end: bool = False, with_mask: bool = False):
        self.train, self.val, self.win, self.hop, self.val_batch = train, val, win, hop, val_batch
        self.align_end, self.with_mask = align_end, with_mask
        self.index = [(i, s) for i, seq in enumerate(train) for s in window_starts(seq.length, win, hop, align_end)
                      if np.isfinite(seq.target[s : s + win]).all(-1).any()]
        if not self.index:
            raise ValueError("no training window has a valid label")

    def train_batches(self, rng: np.random.Generator, batch_size: int) -> Iterable[dict[str, torch.Tensor]]:
        order = rng.permutation(len(self.index))
        for i in range(0, len(order), batch_size):
            items = [self.index[j] for j in order[i : i + batch_size]]
            batch: dict[str, list[np.ndarray]] = {}
            tgt, msk, pad = [], [], []
            for si, s in items:
                seq = self.train[si]
                for k, v in seq.inputs.items():
                    batch.setdefault(k, []).append(take_window(v, s, self.win)[0])
                y, valid = take_window(seq.target, s, self.win)
                tgt.append(y)
                pad.append(valid)
                msk.append(valid & np.isfinite(y).all(-1))
            out = {k: torch.from_numpy(np.stack(v)) for k, v in batch.items()}
            if self.with_mask:
                out["mask"] = torch.from_numpy(np.stack(pad))
            out["target"] = torch.from_numpy(np.nan_to_num(np.stack(tgt)).astype(np.float32))
            out["target_mask"] = torch.from_numpy(np.stack(msk))
            yield out

    def predict_frames(self, model: nn.Module, seq: Sequence, device: str) -> dict[str, np.ndarray]:
        """Per-frame outputs for one sequence (``va`` (n_frames, 2), ``emb`` (n_frames, H))."""
        res = predict_sequence(model, seq.inputs, self.win, self.hop, device, self.val_batch, align_end=self.align_end)
        return {k: frames_from_steps(v, seq.base, seq.n_frames, seq.fps) for k, v in res.items()}

    def validate(self, model: nn.Module, device: str) -> dict[str, float]:
        return concat_frame_ccc((self.predict_frames(model, s, device)["va"], s.frame_labels) for s in self.val
                                if s.frame_labels is not None)
