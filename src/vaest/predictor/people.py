"""The per-person path of the predictor (``docs/persons.md``, "In vaest predict"): a video with a ``persons``
record gives one series per chosen person, from their own face, the voice attributed to them and (a trained
``desc`` behavior model) the behavior of their own crop. :class:`PeoplePath` holds these steps as methods of
:class:`~vaest.predictor.core.Predictor` (which inherits them); :func:`person_view` makes one person look like a
video's only face to a trained face model.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vaest.corpus import Video
from vaest.errors import MediaError, VaestError
from vaest.features.store import FeatureRecord, FeatureStore, MemoryStore
from vaest.media import MediaInfo
from vaest.predictor.steps import PredictorSteps
from vaest.predictor.result import BOX_COLUMNS, MODALITIES, PredictionResult, finalize, frame_modalities
from vaest.timebase import TimeBase, TimeSeries

log = logging.getLogger(__name__)

PEOPLE_MODES = ("main", "all", "left", "right")
ZERO_SHOT_FACE_NOTE = ("face: zero-shot {backbone}: its own valence/arousal head where it has one, else its "
                       "expression probabilities mapped onto the circumplex")
ZERO_SHOT_VIDEO_NOTE = ("video: the face first (valence and arousal); the voice's arousal only on frames where no "
                        "face is seen; weight_face/weight_audio are the arousal weights")


def check_people(people: str | int) -> str:
    """A ``--people`` choice normalised (``main``, ``all``, ``left``, ``right`` or digits); VaestError otherwise."""
    m = str(people).strip().lower()
    if m in PEOPLE_MODES or m.isdigit():
        return m
    raise VaestError(f"people={people!r}: expected one of {', '.join(PEOPLE_MODES)} or a person id (0, 1, ...)")


def to_display(df: Any, frame_size: Sequence[int], info: MediaInfo) -> None:
    """Scale the box columns of ``df`` in place from the working frames' pixels (``frame_size``: width, height)
    to the displayed picture's (:attr:`vaest.media.MediaInfo.display_size`): the frames were already turned to
    display orientation, only their size differs."""
    dw, dh = info.display_size
    fw, fh = (int(x) for x in frame_size)
    if not (fw and fh and dw and dh) or (fw, fh) == (dw, dh):
        return
    for c, s in zip(BOX_COLUMNS, (dw / fw, dh / fh, dw / fw, dh / fh)):
        df[c] = df[c] * s


def person_view(tracks: Any, enc: dict[str, np.ndarray], pid: int, encoder: str, video_id: str,
                features_hash: str | None = None) -> MemoryStore:
    """A feature store holding one person as if they were the video's only face: ``face-<encoder>`` (their
    encoder outputs ``enc``: ``emb`` (n, E), ``probs`` (n, C); ``features_hash``: the ``persons`` record's, the
    identity of its encoder's space) and ``facetrack`` (their boxes and landmarks), so a trained face model applies
    to that person alone."""
    from vaest.features.face_registry import face_key

    k = tracks.index(pid)
    found = tracks.found[k]
    base = TimeBase.frames(float(tracks.fps))
    view = MemoryStore(f"person-{pid}")
    extras = {"probs": np.asarray(enc["probs"], np.float32), "conf": np.where(found, tracks.conf[k], 0).astype(np.float32)}
    if "va" in enc:
        extras["va"] = np.asarray(enc["va"], np.float32)
    emb = np.asarray(enc["emb"], np.float32)
    view.save(face_key(encoder), video_id, FeatureRecord(TimeSeries(emb, base, found & np.isfinite(emb).all(1)),
                                                         extras, {"encoder": encoder,
                                                                 "features_hash": features_hash}))
    view.save("facetrack", video_id, FeatureRecord(TimeSeries(tracks.boxes[k].astype(np.float32), base, found),
                                                   {"conf": tracks.conf[k], "landmarks": tracks.landmarks[k]},
                                                   {"landmark_ids": list(tracks.landmark_ids),
                                                    "frame_size": list(tracks.frame_size)}))
    return view


class PeoplePath(PredictorSteps):
    """The per-person steps of :class:`~vaest.predictor.core.Predictor` (its base class; they use its models and
    settings, and the shared steps of :class:`~vaest.predictor.steps.PredictorSteps`)."""

    bundle: Any
    models: dict[str, Any]
    people: str
    kernels: Any
    fill: bool
    face_backbone: str
    _voice_done: Any
    _persons_features_hash: str | None  # the persons record's (identity of its face encoder's space)


    # -----------------------------------------------------------------------------------------------------
    # Several people: one series per person (docs/persons.md, "In vaest predict")
    # -----------------------------------------------------------------------------------------------------
    def predict_people(self, p: Path, store: FeatureStore, video: Video, times: np.ndarray, info: MediaInfo,
                        t0: float) -> PredictionResult:
        """Per-person prediction of a video with a ``persons`` record: the per-video computation (voice,
        behavior) once, then per chosen person their own face, the voice attributed to them, fusion, smoothing.

        Frames where a person is not visible are gaps in their series (``source`` ``none`` unless the voice
        attributed to them or ``fill`` gives a value); ids never switch: each series is one person's."""
        import pandas as pd

        from vaest.features.person_tracker import person_tracks_from_record
        from vaest.features.persons import OFFSCREEN, attribute_speech, person_rows, select_people, speech_on_frames

        notes: list[str] = []
        persons = store.load("persons", video.id)
        tracks, faces = person_tracks_from_record(persons)
        self._persons_features_hash = persons.meta.get("features_hash")
        del persons
        n = len(times)
        fps = float(info.fps) if info.fps else float(tracks.fps)
        if tracks.n_frames != n:
            raise MediaError(f"{p}: the person tracks cover {tracks.n_frames} frames, the decoded frames {n}")
        shared = self._video_parts(store, video, n, fps, notes)
        several = len(tracks.ids) >= 2
        attribution = None
        if len(tracks.ids) and store.has("vad", video.id):
            speech = speech_on_frames(store.load("vad", video.id).series, n, fps, frame_times=times)
            attribution = attribute_speech(tracks.lip_area(), speech, fps, tracks.ids)
        behavior_per_person = False
        if several and "behavior" in shared:
            shared.pop("behavior")
            behavior_per_person = self._behavior_per_person(store, video)
            notes.append("behavior: described per person, from each person's own crop (docs/persons.md)"
                         if behavior_per_person else
                         "behavior: left out with several persons (no per-person behavior features for this "
                         "behavior model: its segments are described over the whole frame)")
        if several and "audio" in shared and attribution is None:
            shared.pop("audio")
            notes.append("audio: left out with several persons (no voice-activity record to attribute it)")
        if several and "audio" in shared and attribution is not None:
            off = attribution.offscreen_share
            notes.append(f"voice attributed per frame to the person whose mouth moves; {100 * off:.0f}% of the "
                         "speech frames to nobody (no visible mouth moves: off-screen voice)")
        ids, why = select_people(tracks, self.people, attribution)
        notes.append(why)
        if not ids:  # no face at all: the per-video parts (the voice) belong to nobody on screen
            notes.append("no face found in any frame; the series is the whole video's (person -1 = nobody)")
        per_person: dict[int, dict[str, np.ndarray]] = {}
        sources: dict[int, np.ndarray] = {}
        present: set[str] = set()
        frame_mods: dict[str, int] = {}
        keys = ids or [-1]
        for pid in keys:
            parts = dict(shared)
            if pid < 0 and "face" in self.models:  # no person tracked: the single-face path's face, if any
                face = self.models["face"].apply(store, video)
                if face is not None and face.mask.any():
                    parts["face"] = face.resized(n)
            if pid >= 0:
                face = self._person_face(store, video, tracks, faces, pid, n)
                if face is not None and face.mask.any():
                    parts["face"] = face
                else:
                    parts.pop("face", None)
                if behavior_per_person:
                    beh = self._person_behavior(store, video, tracks, faces, pid, n)
                    if beh is not None:
                        parts["behavior"] = beh
                if several and "audio" in parts and attribution is not None:
                    from dataclasses import replace

                    a = parts["audio"]
                    parts["audio"] = replace(a, mask=a.mask & attribution.audio_mask(pid)[:n])
            if pid == keys[-1] and isinstance(store, MemoryStore):
                store.keep_only(video.id, ("persons",))  # every model has read its features: only the tracks stay
            parts = {m: t for m, t in parts.items() if t.mask.any()}
            present |= set(parts)
            for k, c in frame_modalities(parts, n).items():  # summed over the chosen persons' rows
                frame_mods[k] = frame_mods.get(k, 0) + c
            raw, mask, weights = self._fuse_person(parts, video, n, notes)
            final, source = finalize(raw, mask, self.kernels, self.fill)
            cols = {"valence": final[:, 0], "arousal": final[:, 1]}
            for m in MODALITIES:
                t = parts.get(m)
                va = np.where(t.mask[:, None], t.va, np.nan) if t is not None else np.full((n, 2), np.nan, np.float32)
                cols[f"{m}_valence"], cols[f"{m}_arousal"] = va[:, 0], va[:, 1]
            for name, w in weights.items():
                cols[f"weight_{name}"] = np.asarray(w, np.float64)
            per_person[pid], sources[pid] = cols, source
        if ids:
            table = person_rows(tracks, ids, per_person, times)
        else:
            table = {"frame": np.arange(1, n + 1), "time": times, "person": np.full(n, -1, np.int64),
                     **{c: np.full(n, np.nan) for c in BOX_COLUMNS}, **per_person[-1]}
        table["source"] = np.stack([sources[k] for k in keys], 1).reshape(-1)  # frame-major, as person_rows
        wcols = sorted({c for c in table if c.startswith("weight_")})
        order = (["frame", "time", "valence", "arousal", "source"] + [f"{m}_{d}" for m in MODALITIES
                                                                      for d in ("valence", "arousal")]
                 + wcols + ["person", *BOX_COLUMNS])
        df = pd.DataFrame({c: table[c] for c in order})
        to_display(df, tracks.frame_size, info)
        df["frame"] = df["frame"].astype(np.int64)
        df["person"] = df["person"].astype(np.int64)
        source_all = df["source"].to_numpy()
        if not (source_all == "estimated").any():
            notes.append("no estimate: no modality had input in any frame")
        share = tracks.share()
        spk = attribution.speaks if attribution is not None else {}
        sshare = attribution.share if attribution is not None else {}
        meta = self._meta(p, sorted(present), fps, n, False, source_all, notes, store, t0)
        for kind in ("estimated", "filled"):  # frames (not rows) with at least one person's value of that kind
            meta[f"frames_{kind}"] = int(df.loc[df["source"] == kind, "frame"].nunique())
        meta["rows"] = int(len(df))
        meta["frame_modalities"] = dict(sorted(frame_mods.items(), key=lambda kv: -kv[1]))
        meta["people"] = {
            "mode": self.people, "chosen": [int(i) for i in ids], "reason": why, "n_persons": int(len(tracks.ids)),
            "persons": {str(int(pid)): {"share": round(share[int(pid)], 4),
                                        "speaks": spk.get(int(pid)) if attribution is not None else None,
                                        "speech_share": round(sshare.get(int(pid), 0.0), 4)
                                        if attribution is not None else None,
                                        "mean_x": round(tracks.mean_x()[int(pid)], 1)} for pid in tracks.ids},
            "speech_frames": int((attribution.speaker != -1).sum()) if attribution is not None else None,
            "offscreen_speech_frames": int((attribution.speaker == OFFSCREEN).sum()) if attribution is not None
            else None,
            "audio_attributed": bool(several and "audio" in shared and attribution is not None),
            "cuts": [int(c) for c in tracks.cuts], "frame_size": list(tracks.frame_size),
        }
        meta["picture"] = {**info.describe(), "working_size": list(tracks.frame_size)}
        return PredictionResult(df, meta)

    def _video_parts(self, store: FeatureStore, video: Video, n: int, fps: float, notes: list[str]
                     ) -> dict[str, Any]:
        """The modalities computed once per video (the voice, behavior), on the frame grid (n frames); the face
        is per person (:meth:`_person_face`)."""
        from vaest.inference import Track

        parts: dict[str, Any] = {}
        if self.bundle is None:
            info_audio = store.has("vad", video.id) and not store.load("vad", video.id).meta.get("no_audio", False)
            if info_audio:
                from vaest.media import read_audio

                done, self._voice_done = self._voice_done, None
                if done is not None and done[0] == video.media and done[1] == fps:
                    va = done[2]  # computed beside the frames, from the extraction's read of the audio
                else:
                    wav = read_audio(video.media)
                    va = self.voice_track(wav, fps) if wav.size else None
                if va is not None:
                    parts["audio"] = Track(va, np.isfinite(va[:, 1]), None, fps)
                    notes.append(self._voice_note())
            notes.append(ZERO_SHOT_FACE_NOTE.format(backbone=self.face_backbone))
        else:
            for m, mdl in self.models.items():
                if m == "face":
                    continue
                tr = mdl.apply(store, video)
                if tr is not None and tr.mask.any():
                    parts[m] = tr
        return {m: t.resized(n) for m, t in parts.items()}

    def _person_face(self, store: FeatureStore, video: Video, tracks: Any, faces: dict[int, dict[str, np.ndarray]],
                     pid: int, n: int) -> Any:
        """Person ``pid``'s face :class:`~vaest.inference.Track` (n frames), from their own crops only: zero-shot
        mapping of their expression probabilities, or the trained face model applied to their encoder outputs
        and face track (a one-person view of the store)."""
        from vaest.features.face_registry import face_key
        from vaest.inference import Track

        k = tracks.index(pid)
        found = tracks.found[k]
        enc = faces.get(int(pid), {})
        if self.bundle is None:
            from vaest.zeroshot import face_outputs_va

            rec = store.load("persons", video.id)
            if "probs" not in enc:
                return None
            va = np.where(found[:, None], face_outputs_va(enc, rec.meta["classes"], float(tracks.fps)), np.nan).astype(np.float32)
            return Track(va, found & np.isfinite(va).all(1), None, float(tracks.fps)).resized(n)
        model = self.models.get("face")
        if model is None:
            return None
        if len(tracks.ids) == 1 and store.has(face_key(model.encoder), video.id):  # one face: as before
            tr = model.apply(store, video)
            return tr.resized(n) if tr is not None else None
        if "emb" not in enc:
            return None
        view = person_view(tracks, enc, pid, model.encoder, video.id, self._persons_features_hash)
        tr = model.apply(view, video)
        return tr.resized(n) if tr is not None else None

    def _behavior_per_person(self, store: FeatureStore, video: Video) -> bool:
        """Whether the trained behavior model can be applied per person: it reads the offline descriptors (``desc``,
        optionally ``+expr``) and the store has their per-person record (``persons-behavior-desc``)."""
        from vaest.features.behavior import encoder_parts
        from vaest.features.person_behavior import PERSON_DESC_KEY

        model = self.models.get("behavior")
        settings = getattr(model, "settings", None)
        if settings is None or not store.has(PERSON_DESC_KEY, video.id):
            return False
        return set(encoder_parts(settings.encoder)) <= {"desc", "expr"}

    def _person_behavior(self, store: FeatureStore, video: Video, tracks: Any,
                         faces: dict[int, dict[str, np.ndarray]], pid: int, n: int) -> Any:
        """Person ``pid``'s behavior :class:`~vaest.inference.Track` (n frames): the trained behavior model applied
        to a one-person view of the store holding their own segment descriptors (``behavior-desc`` from their
        crop) and, for ``+expr``, their own face encoder outputs; None where they have no valid segment."""
        from vaest.features.person_behavior import PERSON_DESC_KEY, person_behavior_record

        rec = person_behavior_record(store.load(PERSON_DESC_KEY, video.id), pid)
        if not rec.mask.any():
            return None
        enc = faces.get(int(pid), {})
        if "emb" in enc and "probs" in enc:
            view = person_view(tracks, enc, pid, store.load("persons", video.id).meta.get("encoder", "fer"), video.id,
                               self._persons_features_hash)
        else:
            view = MemoryStore(f"person-{pid}")
        view.save("behavior-desc", video.id, rec)
        tr = self.models["behavior"].apply(view, video)
        return tr.resized(n) if tr is not None and tr.mask.any() else None

    def _fuse_person(self, parts: dict[str, Any], video: Video, n: int, notes: list[str]
                     ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """:meth:`_fuse`; zero-shot: face and voice through :func:`vaest.zeroshot.zero_shot_video` (its prior
        weights, renormalised per frame over the modalities present), so every person gets ``weight_<m>``."""
        if self.bundle is None and parts:
            from vaest.zeroshot import zero_shot_video

            def masked(m: str) -> np.ndarray | None:
                t = parts.get(m)
                return np.where(t.mask[:, None], t.va, np.nan) if t is not None else None

            fused = zero_shot_video(masked("face"), masked("audio"))
            va = fused.va[:n]
            mask = np.isfinite(va).any(1)
            if "face" in parts and "audio" in parts and ZERO_SHOT_VIDEO_NOTE not in notes:
                notes.append(ZERO_SHOT_VIDEO_NOTE)
            # the arousal weights (valence comes from the face alone wherever it has one)
            return va, mask, {m: np.where(np.isfinite(va[:, 1]), w[:n, 1], np.nan) for m, w in fused.weights.items()}
        return self._fuse(parts, video, n, notes)
