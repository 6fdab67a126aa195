"""Frame encoders by name: :func:`create_encoder` builds a registered encoder (loading the encoder modules,
which register themselves in :mod:`vaest.features.face_registry`), :func:`encoder_backend` picks torch or ONNX
Runtime, :func:`list_encoders` names them all.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vaest.errors import ModelError
from vaest.features.face_registry import ENCODERS

if TYPE_CHECKING:
    from vaest.features.face_nets import FrameEncoder


def _load_encoder_modules() -> None:
    """Import the torch encoder modules, which register themselves (``grada``, ``fer``, ``tiny``;
    ``minixception``, ``emotiefflib``)."""
    import vaest.features.face_nets  # noqa: F401
    import vaest.features.pretrained_face  # noqa: F401


def list_encoders() -> list[str]:
    """Names of the registered frame encoders (sorted)."""
    _load_encoder_modules()
    return sorted([*ENCODERS, "ensemble"])


ENCODER_BACKENDS = ("auto", "torch", "onnx")
# encoders that also run on ONNX Runtime (vaest.features.face_onnx), without importing torch
_ONNX_ENCODERS = ("minixception", "ensemble")


def encoder_backend(name: str, weights: str | Path | None = None, device: str = "cpu", backend: str = "auto") -> str:
    """``onnx`` or ``torch``: where encoder ``name`` runs. ``auto`` takes ONNX Runtime for the encoders that have
    an ONNX path (``minixception``) on the CPU, with Keras weights (the default), when ``onnxruntime`` and
    ``onnx`` are installed; torch otherwise."""
    if backend not in ENCODER_BACKENDS:
        raise ModelError(f"face encoder backend {backend!r}: expected one of {', '.join(ENCODER_BACKENDS)}")
    if backend == "torch":
        return "torch"
    from vaest.features.face_onnx import onnx_available

    keras = weights is None or Path(weights).suffix.lower() in (".hdf5", ".h5")
    has_path = name in _ONNX_ENCODERS and keras and device == "cpu"
    if backend == "auto":
        return "onnx" if has_path and onnx_available() else "torch"
    if not has_path:
        raise ModelError(f"face encoder {name!r} has no ONNX Runtime path here (it has one for "
                         f"{', '.join(_ONNX_ENCODERS)} on the CPU with Keras weights)")
    if not onnx_available():
        raise ModelError("the onnx backend needs onnxruntime and onnx (pip install 'vaest[face]')")
    return "onnx"


def create_encoder(name: str, weights: str | Path | None = None, device: str = "cpu", backend: str = "auto",
                   **config: Any) -> FrameEncoder:
    """Build a registered frame encoder, load its weights (``weights``, else its default location) and move it
    to ``device`` in eval mode. ``grada`` needs ``weights`` (a local ``affective_static_efficientNet_b1.pth``);
    ``fer`` defaults to the weights inside the facial-emotion-recognition package; ``tiny`` stays random.
    ``backend`` (:func:`encoder_backend`): ``minixception`` on the CPU runs on ONNX Runtime under ``auto``
    (:class:`vaest.features.face_onnx.MiniXceptionOnnx`: same outputs, no torch import)."""
    if name == "ensemble":  # the zero-shot face ensemble: ONNX Runtime only (vaest.features.face_onnx)
        if device != "cpu" or backend == "torch" or config:
            raise ModelError("the 'ensemble' face encoder runs on ONNX Runtime on the CPU, with no settings")
        from vaest.features.face_onnx import FaceEnsembleOnnx, onnx_available

        if not onnx_available():
            raise ModelError("the 'ensemble' face encoder needs onnxruntime and onnx (pip install 'vaest[face]')")
        return FaceEnsembleOnnx(weights)  # type: ignore[return-value]
    if not config and encoder_backend(name, weights, device, backend) == "onnx":
        from vaest.features.face_onnx import MiniXceptionOnnx

        return MiniXceptionOnnx(weights)  # type: ignore[return-value]
    _load_encoder_modules()
    name, _, variant = name.partition(":")
    if name not in ENCODERS:
        raise ModelError(f"unknown face encoder {name!r}; registered: {', '.join(list_encoders())}")
    cls = ENCODERS[name]
    if variant:  # "family:variant", e.g. emotiefflib:enet_b0_8_va_mtl or emotiefflib:/path/to/file
        if not hasattr(cls, "from_option"):
            raise ModelError(f"face encoder {name!r} takes no ':' variant (got {variant!r})")
        return cls.from_option(variant, weights, device, **config)
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    unknown = set(config) - fields
    if unknown:
        raise ModelError(f"face encoder {name!r} has no setting(s) {sorted(unknown)}; known: {sorted(fields)}")
    cfg = cls.Config(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in config.items()})
    enc = cls(cfg)
    if weights is not None:
        enc.load_weights(weights)
    elif callable(getattr(enc, "default_weights", None)):
        enc.load_weights(enc.default_weights())
    elif name == "grada":
        raise ModelError("the 'grada' encoder needs its checkpoint: pass --weights PATH to affective_static_efficientNet_b1.pth "
                         "(a state_dict, a dict with 'state_dict'/'model', or a whole model)")
    return enc.to(device).eval()
