"""The one device rule: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``, validated and resolved in one place."""

from __future__ import annotations

import contextlib
import re
import sys
from typing import Iterator

from vaest.errors import VaestError

DEVICE_HELP = "auto (CUDA when available, else CPU), cpu, cuda or cuda:N."
_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check_device(device: str) -> str:
    """``device`` normalised (lower case, stripped); VaestError when it is not one of the accepted spellings."""
    d = str(device).strip().lower()
    if not _PATTERN.match(d):
        raise VaestError(f"--device {device!r}: expected {DEVICE_HELP}")
    return d


def resolve_device(device: str = "auto") -> str:
    """The torch device to use: ``auto`` -> ``cuda`` when available, else ``cpu``; ``cuda[:N]`` must exist."""
    d = check_device(device)
    if d == "cpu":
        return d
    import torch

    if d == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available():
        raise VaestError(f"--device {device}: CUDA is not available on this machine (torch {torch.__version__}); "
                         "use --device cpu or auto")
    idx = int(d.split(":")[1]) if ":" in d else 0
    if idx >= torch.cuda.device_count():
        raise VaestError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) present")
    return d


@contextlib.contextmanager
def torch_threads(n: int | None, only_if_loaded: bool = False) -> Iterator[None]:
    """Temporarily set torch's CPU intra-op thread count (process-wide), restoring it after; None leaves it.
    With ``only_if_loaded`` nothing happens when torch has not been imported (no import for it)."""
    torch = sys.modules.get("torch")
    if n and torch is None and not only_if_loaded:
        import torch
    if not n or torch is None or torch.get_num_threads() == n:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
