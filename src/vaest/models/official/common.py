"""Renaming official state_dict keys onto a vaest model, strictly (shared by the official converters)."""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from torch import nn

from vaest.errors import ModelError


def official_state(obj: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The state_dict in ``obj``: ``obj`` itself, or its ``model`` / ``state_dict`` / ``model_state_dict`` entry
    (official checkpoints: the face and fusion scripts save ``model``, the behavior script ``state_dict``, the
    chimera_ml trainer of the audio model and RAAV ``model_state_dict``)."""
    for key in ("model", "state_dict", "model_state_dict"):
        if key in obj and isinstance(obj[key], Mapping):
            return dict(obj[key])
    return dict(obj)


def check_positions(key: str, pe: torch.Tensor, max_period: float = 10000.0) -> None:
    """An official fixed sinusoidal table (max_len, dim) must be the sinusoidal formula, up to the float32 rounding
    with which the official code (and vaest's :func:`sinusoidal_positions`) computes it.

    The reference is the formula in float64; the allowed error of each entry is a few float32 steps of its angle
    ``pos * freq`` (the angle is rounded to float32 before sin/cos, so far positions of a 5000-row table differ by
    up to ~2.5e-4 whatever the width; a table of another formula differs by far more).
    """
    n, dim = pe.shape
    if not pe.numel():
        return
    pos = torch.arange(n, dtype=torch.float64)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64) * (-math.log(max_period) / dim))
    angle = pos * freq
    ref = torch.zeros(n, dim, dtype=torch.float64)
    ref[:, 0::2] = torch.sin(angle)
    ref[:, 1::2] = torch.cos(angle[:, : dim // 2])
    tol = torch.zeros(n, dim, dtype=torch.float64)
    step = 4 * torch.finfo(torch.float32).eps * (1.0 + angle)
    tol[:, 0::2] = step
    tol[:, 1::2] = step[:, : dim // 2]
    err = (pe.double().cpu() - ref).abs()
    if bool((err > tol).any()):
        i, j = divmod(int((err - tol).argmax()), dim)
        raise ModelError(f"{key}: position table is not the sinusoidal one: entry ({i}, {j}) differs by "
                         f"{float(err[i, j]):.2e} (float32 rounding allows {float(tol[i, j]):.2e})")


def convert_state_dict(model: nn.Module, state: Mapping[str, Any], renames: list[tuple[str, str]],
                       position_suffix: str = ".positional_encoding.pe", what: str = "official") -> nn.Module:
    """Load ``state`` into ``model`` after renaming keys by the first matching prefix of ``renames``.

    Args:
        model: the vaest reference model (built with the matching settings).
        state: official state_dict (or a checkpoint holding it, see :func:`official_state`).
        renames: (official prefix, vaest prefix) pairs; a key matching none is an error.
        position_suffix: keys ending so are fixed position tables: checked, not loaded (vaest computes them).
    Returns:
        ``model`` in eval mode with every tensor loaded (strict both ways).
    """
    src = official_state(state)
    out: dict[str, torch.Tensor] = {}
    unused = []
    for key, val in src.items():
        if key.endswith(position_suffix):
            check_positions(key, val)
            continue
        for old, new in renames:
            if key.startswith(old):
                out[new + key[len(old):]] = val
                break
        else:
            unused.append(key)
    if unused:
        raise ModelError(f"{what} state_dict: {len(unused)} tensor(s) with no place in {type(model).__name__}: "
                         f"{unused[:8]}")
    missing, unexpected = model.load_state_dict(out, strict=False)
    if missing or unexpected:
        raise ModelError(f"{what} state_dict does not fit {type(model).__name__} (check the constructor settings): "
                         f"missing {list(missing)[:8]}, unexpected {list(unexpected)[:8]}")
    return model.eval()


def layer_renames(official: str, ours: str, n_layers: int) -> list[tuple[str, str]]:
    """Renames of the official Transformer layer (face and fusion models) onto :class:`RefAttentionLayer`."""
    parts = [("self_attention.", "attn."), ("feed_forward.layer_1.", "ff_in."), ("feed_forward.layer_2.", "ff_out."),
             ("add_norm_after_attention.norm.", "norm_attn."), ("add_norm_after_ff.norm.", "norm_ff.")]
    return [(f"{official}.{i}.{a}", f"{ours}.{i}.{b}") for i in range(n_layers) for a, b in parts]
