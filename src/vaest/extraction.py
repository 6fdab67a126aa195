"""Corpus extraction entry points of ``vaest extract face|mouth|behavior``: the extractors of one modality run over
a corpus into a feature store, on the local loop or a Ray cluster (:func:`vaest.scale.run_extraction`).

They sit above :mod:`vaest.features` and :mod:`vaest.scale` (the extractors know nothing of the engines).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from vaest.corpus import load_corpus
from vaest.errors import FeatureError
from vaest.features.base import ExtractionReport, create_extractor
from vaest.features.behavior import BehaviorVLMExtractor, behavior_extractor
from vaest.features.face import FaceEncoderConfig, FaceEncoderExtractor, FaceTrackExtractor
from vaest.features.face_tracker import FaceTrackConfig, track_key
from vaest.features.mouth import REFERENCE_MOUTH, MouthConfig, MouthExtractor
from vaest.features.store import FeatureStore
from vaest.scale import run_extraction


def extract_face_features(corpus_root: str | Path, out: str | Path, encoder: str = "fer", device: str = "cpu",
                          weights: str | Path | None = None, batch_size: int = 64, force: bool = False,
                          track: FaceTrackConfig | None = None, splits: Sequence[str] | None = None,
                          engine: str = "local", address: str | None = None, num_workers: int | None = None,
                          file_timeout: float | None = None) -> ExtractionReport:
    """Run ``facetrack`` + the ``face`` encoder over a corpus into the feature store at ``out``.

    ``engine``/``address``/``num_workers`` choose the local loop or Ray (:func:`run_extraction`).
    Returns the :class:`vaest.features.base.ExtractionReport`.
    """
    corpus = load_corpus(corpus_root)
    videos = corpus.split(*splits) if splits else list(corpus)
    ft = FaceTrackExtractor(track or FaceTrackConfig())
    fe = FaceEncoderExtractor(FaceEncoderConfig(encoder=encoder, weights=str(weights) if weights else None,
                                                device=device, batch_size=batch_size))
    _ = fe.encoder  # fail early (missing weights) before decoding anything
    fe._enc = None  # built again where it runs (a Ray actor, or here on the first media file)
    return run_extraction(FeatureStore(out), [ft, fe], videos, engine=engine, address=address,
                          num_workers=num_workers, force=force, file_timeout=file_timeout)


# the torch networks moved to features/face_nets.py; their names still resolve here, importing torch on first use


def extract_mouth(corpus_root: str | Path, out: str | Path, force: bool = False, splits: Sequence[str] | None = None,
                  engine: str = "local", address: str | None = None, num_workers: int | None = None,
                  preset: str | None = None, file_timeout: float | None = None) -> ExtractionReport:
    """Run ``facetrack`` + ``mouth`` over a corpus into the feature store at ``out`` (local loop or Ray, see
    :func:`run_extraction`); returns the extraction report. ``preset="reference"`` applies the
    official mouth-open rule (:data:`REFERENCE_MOUTH`)."""
    corpus = load_corpus(corpus_root)
    videos = corpus.split(*splits) if splits else list(corpus)
    if preset not in (None, "vaest", "reference"):
        raise FeatureError(f"unknown mouth preset {preset!r}; known: reference, vaest")
    mouth = MouthExtractor(MouthConfig(**REFERENCE_MOUTH) if preset == "reference" else None)
    return run_extraction(FeatureStore(out), [create_extractor("facetrack"), mouth], videos,
                          engine=engine, address=address, num_workers=num_workers, force=force,
                          file_timeout=file_timeout)


def extract_behavior(corpus_root: str | Path, out: str | Path, encoder: str = "desc", settings: dict[str, Any] | None = None,
                     splits: Sequence[str] | None = None, force: bool = False, engine: str = "local",
                     address: str | None = None, num_workers: int | None = None,
                     file_timeout: float | None = None) -> ExtractionReport:
    """Extract behavior features for a corpus into the feature store at ``out``.

    ``desc`` also runs ``facetrack`` (stored too); ``vlm`` loads the model once, before decoding. Returns the
    :class:`vaest.features.base.ExtractionReport` (see :func:`run_extraction` for the engines).
    """
    corpus = load_corpus(corpus_root)
    videos = corpus.split(*splits) if splits else list(corpus)
    ex = behavior_extractor(encoder, settings)
    if isinstance(ex, BehaviorVLMExtractor) and any(track_key(v) for v in videos):
        ex.requires = ("facetrack",)  # type: ignore[misc]  # ABAW _left / _right: crops around each side's person
    if isinstance(ex, BehaviorVLMExtractor) and engine == "local":
        _ = ex.vlm  # fail early (bad model path, no vLLM) before decoding anything
    return run_extraction(FeatureStore(out), [ex], videos, force=force, engine=engine, address=address,
                          num_workers=num_workers, file_timeout=file_timeout)
