"""A video's model inputs on a time base (:class:`Sequence`) and the sliding-window application of a trained
model to them (:func:`predict_sequence`, :func:`frames_from_steps`).

Shared by applying (:mod:`vaest.apply`) and training (:mod:`vaest.training`, whose validation runs the same
windows), so that applying a model never goes through training code. torch is imported only when a model runs.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import numpy as np

from vaest.timebase import TimeBase, TimeSeries, fill_nearest, to_frames
from vaest.windows import OverlapAverager, take_window, window_starts


def accepts_mask(model: Any) -> bool:
    """Whether ``model.forward`` takes a ``mask`` argument (step validity, True = real step, for padding)."""
    return "mask" in inspect.signature(model.forward).parameters


@dataclass
class Sequence:
    """One video's model inputs on a time base, with frame-level labels for validation.

    Attributes:
        id: video id.
        inputs: name -> (T, ...) arrays on ``base`` (all with the same T), or objects read by rows like them
            (``len``, ``shape``, ``x[i:j]`` and ``x[index_array]`` giving arrays: a
            :class:`~vaest.features.store.RowView`, whose rows stay on disk until a window asks for them).
        target: (T, 2) step targets (NaN invalid) for training.
        base: time base of the T steps.
        n_frames, fps: the video's frame grid.
        frame_labels: (n_frames, 2) labels on the frame grid (NaN invalid), for the frame-level metric.
    """

    id: str
    inputs: dict[str, np.ndarray]
    target: np.ndarray
    base: TimeBase
    n_frames: int
    fps: float
    frame_labels: np.ndarray | None = None

    @property
    def length(self) -> int:
        return len(self.target)


def predict_sequence(model: Any, inputs: dict[str, np.ndarray], win: int, hop: int, device: str = "cpu",
                     batch_size: int = 16, keys: tuple[str, ...] = ("va", "emb"),
                     align_end: bool = False) -> dict[str, np.ndarray]:
    """Sliding-window inference over one sequence with overlap-averaging.

    Args:
        inputs: name -> (T, ...) arrays.
        win, hop: window and hop in steps (reference face model: 400 / 150).
        align_end: windows as :func:`vaest.windows.window_starts` with ``align_end``.
    A model whose forward takes ``mask`` gets each window's (win,) validity (False on padded steps).
    Returns:
        name -> (T, D) float32 for each requested model output present (``va`` (T, 2), ``emb`` (T, H)).
    """
    T = len(next(iter(inputs.values())))
    starts = window_starts(T, win, hop, align_end)
    outs = {k: OverlapAverager(T) for k in keys}  # averaged as the windows come: no list of every window
    import torch

    with_mask = accepts_mask(model)
    model.eval()
    with torch.no_grad():
        for i in range(0, len(starts), batch_size):
            chunk = starts[i : i + batch_size]
            batch = {k: torch.from_numpy(np.stack([take_window(v, s, win)[0] for s in chunk])).to(device)
                     for k, v in inputs.items()}
            if with_mask:
                batch["mask"] = torch.from_numpy(np.stack([take_window(np.zeros(T), s, win)[1] for s in chunk])).to(device)
            res = model(**batch)
            for k in keys:
                if k in res:
                    for s, p in zip(chunk, res[k].float().cpu().numpy()):
                        outs[k].add(s, p)
    return {k: avg.result()[0] for k, avg in outs.items() if avg.started}  # outputs the model gave


def frames_from_steps(values: np.ndarray, base: TimeBase, n_frames: int, fps: float) -> np.ndarray:
    """Expand per-step predictions to the frame grid (overlaps averaged) and fill holes from the nearest frame."""
    vals, mask = to_frames(TimeSeries(values, base), n_frames, fps)
    return fill_nearest(vals, mask, inplace=True)  # to_frames' fresh array: no second copy
