"""Model registry (timm-style): ``create_model(name, **config)`` and checkpoint loading.

Every registered model is an ``nn.Module`` with a ``config`` dataclass attribute (``Config`` class attribute
gives its type), a ``registry_name``, and a forward that takes keyword inputs and returns a dict with ``va``
(..., 2) and, where it has one, ``emb`` (..., H): the exported pre-head embedding.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch
from torch import nn

from vaest.errors import ModelError

_REGISTRY: dict[str, type[nn.Module]] = {}
M = TypeVar("M", bound=type)


def register_model(name: str) -> Callable[[M], M]:
    """Class decorator: make a model creatable by name."""

    def deco(cls: M) -> M:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"model name {name!r} already registered")
        _REGISTRY[name] = cls  # type: ignore[assignment]
        cls.registry_name = name  # type: ignore[attr-defined]
        return cls

    return deco


def _import_all() -> None:
    # importing the modules registers their models; optional ones may be missing
    import importlib

    for mod in ("temporal", "mamba", "audio", "fusion", "baseline", "directed"):
        try:
            importlib.import_module(f"vaest.models.{mod}")
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith("vaest.models"):
                continue
            raise


def list_models() -> list[str]:
    _import_all()
    return sorted(_REGISTRY)


def create_model(name: str, **config: Any) -> nn.Module:
    """Build a registered model from config keyword arguments (unknown keys are an error)."""
    _import_all()
    if name not in _REGISTRY:
        raise ModelError(f"unknown model {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
    cls = _REGISTRY[name]
    cfg_cls = getattr(cls, "Config")
    fields = {f.name for f in dataclasses.fields(cfg_cls)}
    unknown = set(config) - fields
    if unknown:
        raise ModelError(f"model {name!r} has no setting(s) {sorted(unknown)}; known: {sorted(fields)}")
    return cls(cfg_cls(**config))


def load_checkpoint(path: str | Path, device: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model from a checkpoint written by :func:`vaest.training.save_checkpoint`.

    Returns the model (eval mode) and the whole checkpoint dict (metrics, training and data settings).
    """
    p = Path(path)
    if not p.exists():
        raise ModelError(f"{p}: checkpoint not found")
    try:
        ck = torch.load(p, map_location=device, weights_only=False)
    except Exception as e:
        raise ModelError(f"{p}: cannot read checkpoint ({e})") from None
    model = create_model(ck["name"], **ck.get("config", {}))
    model.load_state_dict(ck["state_dict"])
    model.to(device).eval()
    return model, ck
