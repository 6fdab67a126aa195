"""What the predictor extracts from one media file, and under which identity it caches it: the extractor list
with the person tracker (:func:`people_extractors`), the frames' own times (:class:`FrameTimes`), whether the
audio work runs beside the frames (:func:`audio_beside`) and the cache key of a media file (:func:`media_key`).
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from vaest.corpus import Video
from vaest.features.base import Extractor
from vaest.features.store import FeatureRecord
from vaest.media import IMAGE_EXTS, FrameBatch, MediaInfo  # noqa: F401  (IMAGE_EXTS: this package's name for it)
from vaest.timebase import TimeBase, TimeSeries

AUDIO_ONLY_FPS = 30.0



class FrameTimes(Extractor):
    """Pseudo-extractor: each decoded frame's presentation time (s), so ``time`` is the frame's own time.

    Record ``frametimes``: values (n_frames, 1) seconds from the first frame.
    """

    registry_name = "frametimes"
    kind = "frames"

    def begin(self, videos: list[Video], info: MediaInfo) -> None:
        self._ids = [v.id for v in videos]
        self._fps = float(info.fps or AUDIO_ONLY_FPS)
        self._times: list[np.ndarray] = []

    def update(self, batch: FrameBatch, shared: dict[str, Any]) -> None:
        self._times.append(np.asarray(batch.times, np.float64))

    def end(self) -> dict[tuple[str, str], FeatureRecord]:
        t = np.concatenate(self._times) if self._times else np.zeros(0)
        rec = FeatureRecord(TimeSeries(t.reshape(-1, 1).astype(np.float64), TimeBase.frames(self._fps)),
                            meta={"n_frames": int(len(t)), "fps": self._fps})
        return {(self.name, vid): rec for vid in self._ids}


# Media up to this long have their audio work run beside the frames (a second core takes it off the critical
# path: 16.0 -> 12.8 s on the 63 s benchmark video); longer ones after the frames, once the frames' buffers are
# handed back: the whole track and its VAD/openSMILE work grow with the length, and beside the frames they
# stacked on the frame pipeline's memory (10-minute video, zero-shot: peak 785 MB beside, 657 MB after; RTF
# 0.129 vs 0.153, both far below real time). docs/performance.md.
AUDIO_BESIDE_MAX_S = 180.0



def audio_beside(duration_s: float | None) -> bool:
    """Whether the predictor runs the audio work of media this long beside its frames (see
    :data:`AUDIO_BESIDE_MAX_S`); an unknown duration (None or 0) is treated as long."""
    return 0.0 < float(duration_s or 0.0) <= AUDIO_BESIDE_MAX_S



def media_key(path: str | Path) -> str:
    """Identity of a media file for the feature cache: hash of (resolved path, size, modification time in ns).

    Why not a content hash: hashing a multi-GB video on every call costs as much I/O as decoding it. Path + size
    + mtime is what build tools use: another file (other path), an edited or replaced file (new size or mtime)
    never reuses stale features. A file copied elsewhere is recomputed (different path), which is only slower.
    """
    p = Path(path).resolve()
    st = p.stat()
    blob = f"{p}\0{st.st_size}\0{st.st_mtime_ns}".encode()
    return f"{p.stem}-{hashlib.sha1(blob).hexdigest()[:16]}"



def people_extractors(extractors: list[Extractor], zero_shot: bool, one_pass: bool = True) -> list[Extractor]:
    """The extractor list with the person tracker in place of the single face path.

    The ``persons`` extractor tracks every face with an id and runs the face encoder (same settings) on each
    person's crops. Zero-shot, it replaces ``facetrack`` and ``face-<encoder>``, so one face costs what it cost
    before (one FaceMesh per person and frame, the encoder once per face; docs/persons.md), and ``vad`` (silero,
    when installed) is added: the speech flags that give the voice to the person who speaks. With a trained
    bundle the single-face records stay (the face model, the mouth filter and behavior read them), but with
    ``one_pass`` (the default) ``facetrack`` and ``face-<encoder>`` are derived from the person tracker's batches
    (:mod:`vaest.features.main_face`: the main face, its encoder outputs), so each face is tracked and encoded
    once; ``one_pass=False`` keeps the single-face tracker and encoder as a second pass (the path before issue 13,
    kept for comparison). With ``behavior-desc`` among them, ``persons-behavior-desc`` is added (each person's
    descriptors from their own crop, for the behavior model per person)."""
    import importlib.util

    from vaest.features.base import create_extractor
    from vaest.features.behavior_desc import BehaviorDescExtractor
    from vaest.features.face import FaceEncoderExtractor
    from vaest.features.person_behavior import PersonBehaviorDescExtractor, person_desc_config

    face = next((e for e in extractors if isinstance(e, FaceEncoderExtractor)), None)
    if zero_shot:
        rest = [e for e in extractors if e is not face]
        if not any("facetrack" in getattr(type(e), "requires", ()) for e in rest):
            rest = [e for e in rest if e.name != "facetrack"]
    else:  # a trained bundle keeps the single-face records (derived from persons below unless one_pass is off)
        rest = list(extractors)
    cfg = dataclasses.asdict(face.config) if face is not None else None
    persons = create_extractor("persons", face=cfg)
    if not zero_shot and one_pass:
        rest = [_from_persons(e, persons) for e in rest]
    out = rest + [persons]
    desc = next((e for e in rest if isinstance(e, BehaviorDescExtractor)), None)
    if desc is not None:  # behavior per person: each person's descriptors from their own crop, same pass
        out.append(PersonBehaviorDescExtractor(person_desc_config(desc.config)))
    if zero_shot and not any(e.name == "vad" for e in out) and importlib.util.find_spec("silero_vad") is not None:
        out.append(create_extractor("vad"))
    return out



def _from_persons(e: Extractor, persons: Extractor) -> Extractor:
    """``e`` itself, or for the single-face tracker / face encoder their stand-ins that read ``persons``' batches
    (:mod:`vaest.features.main_face`)."""
    from vaest.features.face import FaceEncoderExtractor, FaceTrackExtractor
    from vaest.features.main_face import MainFaceConfig, PersonsFaceEncoderExtractor, PersonsFaceTrackExtractor

    if type(e) is FaceTrackExtractor:
        return PersonsFaceTrackExtractor(MainFaceConfig(max_gap=e.config.max_gap, persons=persons.config_hash()))
    if type(e) is FaceEncoderExtractor:
        return PersonsFaceEncoderExtractor(e.config, persons)
    return e
