"""vaest: continuous valence/arousal estimation from face, behavior and voice.

Python API (imported lazily, so ``import vaest`` stays light)::

    import vaest
    result = vaest.Predictor(model=None, device="auto").predict("clip.mp4")
    result.frame          # pandas DataFrame, one row per decoded frame
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from vaest.version import __version__

# library use is quiet: no output unless the application configures logging (the CLI does)
logging.getLogger("vaest").addHandler(logging.NullHandler())

__all__ = ["Predictor", "PredictionResult", "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from vaest.predictor import PredictionResult, Predictor


def __getattr__(name: str) -> Any:
    if name in ("Predictor", "PredictionResult"):
        from vaest import predictor

        return getattr(predictor, name)
    raise AttributeError(f"module 'vaest' has no attribute {name!r}")
