"""Named presets: one switch that sets, for a training task, every setting that differs from the defaults.

A preset is a flat mapping of setting names (a task's settings dataclass and/or
:class:`vaest.training.TrainConfig`) to values, registered per task:

- ``reference``: exactly what the official Team RAS code does for that stage (each value cites its source);
- ``vaest``: vaest's own improvements that measurably help (see ``docs/reference.md``).

Precedence when a run is configured: task defaults < preset < config file (``run.yaml``) < command-line flags.
The preset's name comes from ``--preset`` or a ``preset:`` key of the config file; the resolved name and the
values it set are recorded in the run folder (``config.yaml`` and ``run.json``), so a run says what it used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vaest.errors import VaestError

# task -> preset name -> Preset
_PRESETS: dict[str, dict[str, "Preset"]] = {}


@dataclass(frozen=True)
class Preset:
    """Settings of one task under one preset name; ``sources`` maps a setting to where its value comes from
    (e.g. ``src_visual_dynamic_model/config_best.toml``), ``doc`` says what the preset is."""

    task: str
    name: str
    values: dict[str, Any]
    sources: dict[str, str] = field(default_factory=dict)
    doc: str = ""


def register_preset(task: str, name: str, values: dict[str, Any], sources: dict[str, str] | None = None,
                    doc: str = "") -> Preset:
    """Register (or replace) preset ``name`` for ``task`` (``face``, ``behavior``, ``audio``, ``fusion``, ...)."""
    p = Preset(task, name, dict(values), dict(sources or {}), doc)
    _PRESETS.setdefault(task, {})[name] = p
    return p


def get_preset(task: str, name: str | None) -> Preset | None:
    """The preset ``name`` of ``task``; None for no preset; a clear error for an unknown name."""
    if name is None or name == "" or name == "none":
        return None
    known = _PRESETS.get(task, {})
    if name not in known:
        raise VaestError(f"unknown preset {name!r} for {task}; known: {', '.join(sorted(known)) or 'none'}")
    return known[name]


def resolve_preset(task: str, file_cfg: dict[str, Any] | None, flags: dict[str, Any] | None
                   ) -> tuple[Preset | None, dict[str, Any], dict[str, Any]]:
    """Take the ``preset`` key out of a config file mapping and the flags (the flag wins).

    Returns (preset or None, file config without ``preset``, flags without ``preset``).
    """
    f = dict(file_cfg or {})
    g = dict(flags or {})
    name = g.pop("preset", None)
    fname = f.pop("preset", None)
    return get_preset(task, name if name is not None else fname), f, g


def preset_record(p: Preset | None) -> dict[str, Any]:
    """What a run records about its preset (name, the values it set, their sources)."""
    if p is None:
        return {"name": None}
    return {"name": p.name, "values": dict(p.values), "sources": dict(p.sources)}
