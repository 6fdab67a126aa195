"""Renaming official state_dict keys onto a vaest model, strictly (shared by the official converters)."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from vaest.errors import ModelError
from vaest.models.temporal import sinusoidal_positions


def official_state(obj: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The state_dict in ``obj``: ``obj`` itself, or its ``model`` / ``state_dict`` entry (official checkpoints)."""
    for key in ("model", "state_dict"):
        if key in obj and isinstance(obj[key], Mapping):
            return dict(obj[key])
    return dict(obj)


def check_positions(key: str, pe: torch.Tensor, tol: float = 1e-4) -> None:
    """An official fixed sinusoidal table (max_len, dim) must equal vaest's :func:`sinusoidal_positions`."""
    ours = sinusoidal_positions(pe.shape[0], pe.shape[1])
    diff = float((pe.float().cpu() - ours).abs().max()) if pe.numel() else 0.0
    if diff > tol:
        raise ModelError(f"{key}: position table differs from the sinusoidal one (max abs diff {diff:.2e})")


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
