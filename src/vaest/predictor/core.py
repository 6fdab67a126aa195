"""The :class:`Predictor`: per-frame valence/arousal of one media file, in memory, with models loaded once.

Flow of one call, in one direction: probe -> decode the frames in batches and feed every extractor
(:mod:`vaest.predictor.extract`, :mod:`vaest.features.base`) -> apply each trained modality model
(:mod:`vaest.apply`) -> fuse -> smooth (:func:`vaest.predictor.result.finalize`). A video with person tracks goes
through the per-person path (:mod:`vaest.predictor.people`); many files are :mod:`vaest.predictor.batch`.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from vaest.corpus import AUDIO_EXTS, Video
from vaest.errors import FeatureError, MediaError, VaestError
from vaest.features.store import FeatureStore, MemoryStore
from vaest.media import WORKING_SIDE, MediaInfo
from vaest.predictor.extract import AUDIO_ONLY_FPS, IMAGE_EXTS, FrameTimes, audio_beside, media_key, people_extractors
from vaest.predictor.people import PeoplePath, check_people
from vaest.predictor.result import MODALITIES, PredictionResult, finalize, frame_modalities

log = logging.getLogger(__name__)



def predictor_device(device: str, model: str | Path | None, face_backbone: str, audio_backbone: str | None) -> str:
    """The device a :class:`Predictor` runs on: ``device`` resolved (:func:`vaest.device.resolve_device`), except
    that zero-shot prediction whose models all run on ONNX Runtime (the default ``ensemble`` face encoder, the
    built-in voice cues) takes the CPU under ``auto`` without importing torch to ask for CUDA: MediaPipe, the
    encoders (60k and 2.4M parameters) and the voice cues all run on the CPU there."""
    from vaest.device import check_device, resolve_device
    from vaest.features.face_encoders import encoder_backend

    d = check_device(device)
    if (model is None and audio_backbone is None and d in ("auto", "cpu")
            and encoder_backend(face_backbone, None, "cpu") == "onnx"):
        return "cpu"
    return resolve_device(d)



class Predictor(PeoplePath):
    """Per-frame valence/arousal for media files, with models loaded once and reused across calls.

    Args:
        model: a model bundle folder (``bundle.json``, e.g. ``demo_out/model``) or one trained run folder; None =
            zero-shot (:mod:`vaest.zeroshot`): the face through ``face_backbone`` (its VA head where it has one,
            else its expression probabilities on the circumplex), the voice's arousal from gain-independent cues
            (spectral tilt, F0 range; no valence), both fused per frame for videos
            (:func:`vaest.zeroshot.zero_shot_video`).
        device: ``auto`` (CUDA when available, else CPU; zero-shot with the default face encoder: the CPU, see
            :func:`predictor_device`), ``cpu``, ``cuda`` or ``cuda:N``.
        progress: show progress bars.
        cache: folder for cached features (a feature store per media file, keyed by :func:`media_key`); None =
            everything in memory.
        fill: dense output (frames without input filled from the nearest estimate, ``source == "filled"``).
        force: recompute cached features.
        batch_size: decoded frames per batch fed to the extractors.
        people: which persons of a video to output (``docs/persons.md``): ``main`` (one person throughout: the one
            present and speaking most; frames without them are gaps), ``all`` (one row per frame and person),
            ``left`` / ``right``, or a person id.
        face_backbone: zero-shot face encoder: ``ensemble`` (None: the default,
            :data:`vaest.zeroshot.ZERO_SHOT_FACE_ENCODER`), ``minixception``, ``fer``, or ``emotiefflib:<model name or path to a
            downloaded file>`` (loaded offline). Only without ``model`` (a bundle fixes its own encoder).
        audio_backbone: zero-shot voice from a dimensional speech-emotion model (a ``save_pretrained`` folder
            or hub id, :class:`vaest.models.ser.SpeechEmotionPredictor`, e.g. audEERING's
            ``wav2vec2-large-robust-12-ft-emotion-msp-dim``) instead of :func:`vaest.zeroshot.zero_shot_audio`;
            it gives valence too (column ``audio_valence``; the video's valence still comes from the face).
        working_side: the working resolution's longer side (None: :data:`vaest.media.WORKING_SIDE`; 0: full
            size): frames are decoded in display orientation and reduced to it; boxes in the output are in the
            displayed picture's pixels all the same.
    """

    def __init__(self, model: str | Path | None = None, device: str = "auto", progress: bool = False,
                 cache: str | Path | None = None, fill: bool = False, force: bool = False, batch_size: int = 32,
                 people: str | int = "main", face_backbone: str | None = None,
                 audio_backbone: str | None = None, working_side: int | None = None):
        from vaest.apply import FusionModel, check_fusion_inputs, load_model, load_modality
        from vaest.features.base import default_extractors
        from vaest.postprocess import REFERENCE_KERNELS
        from vaest.zeroshot import ZERO_SHOT_FACE_ENCODER

        for opt, val in (("face_backbone", face_backbone), ("audio_backbone", audio_backbone)):
            if model is not None and val is not None:
                raise VaestError(f"{opt}={val!r} applies to zero-shot prediction only; the model {model} fixes "
                                 "its own encoders")
        # what rebuilds this predictor elsewhere (a Ray worker: see predict_many(engine="ray"))
        self.init_kwargs: dict[str, Any] = dict(model=None if model is None else str(model), device=device,
                                                progress=False, cache=None if cache is None else str(cache),
                                                fill=fill, force=force, batch_size=batch_size, people=people,
                                                face_backbone=face_backbone, audio_backbone=audio_backbone,
                                                working_side=working_side)
        self.face_backbone = face_backbone or ZERO_SHOT_FACE_ENCODER
        self.audio_backbone = audio_backbone

        self.device = predictor_device(device, model, self.face_backbone, audio_backbone)
        self._ser: Any = None
        self._voice_done: tuple[Path, float, np.ndarray] | None = None  # (media, fps, voice) of the last extraction
        if audio_backbone is not None:
            from vaest.models.ser import SpeechEmotionPredictor

            self._ser = SpeechEmotionPredictor(str(audio_backbone), device=self.device)
        self.progress, self.fill, self.force, self.batch_size = progress, fill, force, batch_size
        self.working_side = working_side  # None: vaest.media.WORKING_SIDE; 0: full size
        self.cache = Path(cache) if cache is not None else None
        self.people = check_people(people)
        self.model_path = Path(model) if model is not None else None
        t0 = time.perf_counter()
        self.models: dict[str, Any] = {}
        self.fusion: Any = None
        if model is None:
            self.bundle = None
            self.kernels = REFERENCE_KERNELS
            self.extractors = default_extractors(self.face_backbone, behavior=False, audio=False, mouth=False,
                                                 device=self.device)
        else:
            self.bundle = load_model(model)
            check_fusion_inputs(self.bundle)
            self.kernels = tuple(self.bundle.kernels)
            mods = self.bundle.modalities
            for m, run in mods.items():
                self.models[m] = load_modality(m, run, self.device)
            if self.bundle.fusion is not None:
                self.fusion = FusionModel(self.bundle.fusion, self.device)
            self.extractors = default_extractors(self.bundle.face_encoder, self.bundle.audio_encoder,
                                                 behavior="behavior" in mods, audio="audio" in mods,
                                                 face="face" in mods or "audio" in mods, device=self.device)
        self.extractors = people_extractors(self.extractors, zero_shot=self.bundle is None)
        self._warm_up()
        self.load_seconds = time.perf_counter() - t0

    def _warm_up(self) -> None:
        """Load what the extractors load lazily (frame encoder networks, the MediaPipe graphs and their module) now,
        so that no call to :meth:`predict` pays for model loading."""
        import pandas  # noqa: F401  (the result's table)

        import vaest.inference  # noqa: F401  (Track)
        import vaest.zeroshot  # noqa: F401
        for e in self.extractors:
            if hasattr(type(e), "encoder"):
                _ = e.encoder
            if getattr(e, "face_encoder", None) is not None:
                _ = e.face_encoder.encoder
            if e.name == "persons":
                from vaest.features.person_tracker import PersonTracker
                from vaest.progress import native_noise_filtered

                with native_noise_filtered():
                    ptr = PersonTracker()
                    ptr.process(np.zeros((1, 64, 64, 3), np.uint8))
                    ptr.close()
            if e.name == "facetrack" and not getattr(e, "derived_from", None):
                from vaest.features.face_tracker import FaceTracker
                from vaest.progress import native_noise_filtered

                with native_noise_filtered():
                    tracker = FaceTracker(e.config, [None])
                    tracker.process(np.zeros((1, 64, 64, 3), np.uint8))
                    close = getattr(tracker, "close", None)
                    if callable(close):
                        close()

    # -----------------------------------------------------------------------------------------------------
    def _store(self, path: Path) -> FeatureStore:
        if self.cache is None:
            return MemoryStore(path.name)
        key = media_key(path)
        if self.working_side is not None and self.working_side != WORKING_SIDE:
            key += f"-w{self.working_side}"  # features made at another working size are not reused
        return FeatureStore(self.cache / key)

    def _extract(self, store: FeatureStore, video: Video, info: MediaInfo) -> None:
        """Run the extractors that ``store`` lacks (all with ``force``) on the media (``info``: its probe),
        frames decoded once."""
        from vaest.features.base import (extract_media, media_todo, release_free_memory, save_records,
                                         with_requirements)
        from vaest.progress import progress_enabled

        exs = [e for e in self.extractors if not (video.audio_only and e.kind == "frames")]
        if not video.audio_only:
            exs = exs + [FrameTimes()]
        exs = with_requirements(exs)
        todo = media_todo(store, exs, [video], self.force or isinstance(store, MemoryStore))
        if not todo:
            log.info("%s: features from the cache %s", video.media, store.root)
            return
        on_audio = None
        if self.bundle is None and self._ser is None and not video.audio_only:  # the zero-shot voice, same read

            def on_audio(wav: np.ndarray) -> None:
                from vaest.media import fps_or_default

                fps = float(fps_or_default(video.fps))  # the persons tracks' rate (the frame grid of the output)
                if wav.size:
                    self._voice_done = (video.media, fps, self.voice_track(wav, fps))

        with progress_enabled(self.progress):
            recs, _, unfed, why = extract_media(video.media, [video], todo, self.batch_size, self.working_side,
                                                audio_beside=audio_beside(info.duration), on_audio=on_audio)
        save_records(store, recs, force=True)
        release_free_memory()  # the frame pipeline's buffers, before the models and the outputs allocate theirs
        if unfed:
            raise MediaError(why)

    def predict(self, path: str | Path | np.ndarray) -> PredictionResult:
        """Per-frame valence/arousal of one media file (see the module docstring for the columns).

        A photo (an image file, or an RGB array (H, W, 3) uint8) gives one row per face (:mod:`vaest.photos`).
        Raises :class:`~vaest.errors.VaestError` (naming the file) for a missing or broken file.
        """
        import pandas as pd

        from vaest.media import probe

        t0 = time.perf_counter()
        if isinstance(path, np.ndarray) or Path(path).suffix.lower() in IMAGE_EXTS:
            from vaest.photos import predict_photo
            from vaest.predictor.people import person_view

            return PredictionResult(*predict_photo(self, path, person_view))
        p = Path(path)
        if not p.exists():
            raise MediaError(f"{p}: no such file")
        if p.is_dir():
            raise MediaError(f"{p}: is a folder (use predict_many or `vaest predict FOLDER`)")
        info = probe(p)
        audio_only = p.suffix.lower() in AUDIO_EXTS or not info.has_video
        if audio_only and not info.has_audio:
            raise MediaError(f"{p}: neither a video nor an audio stream")
        video = Video(id=p.stem, media=p, split="predict", fps=info.fps, audio_only=audio_only)
        store = self._store(p)
        notes: list[str] = []
        parts: dict[str, Any] = {}
        if not (audio_only and self.bundle is None):
            self._extract(store, video, info)
        if audio_only:
            times = None
        else:
            times = store.load("frametimes", video.id).values[:, 0].astype(np.float64)
        if not audio_only and store.has("persons", video.id):
            return self.predict_people(p, store, video, times, info, t0)
        if self.bundle is None:
            parts, znotes = self._zero_shot(store, video)
            notes += znotes
        else:
            for m, mdl in self.models.items():
                tr = mdl.apply(store, video)
                if tr is not None and tr.mask.any():
                    parts[m] = tr
        n = len(times) if times is not None else max((len(t) for t in parts.values()), default=0)
        if n == 0 and audio_only:
            from vaest.media import read_audio

            n = max(1, int(math.ceil(len(read_audio(p)) / 16000 * AUDIO_ONLY_FPS)))
        fps = float(info.fps) if (info.fps and not audio_only) else AUDIO_ONLY_FPS
        if times is None:
            times = np.arange(n) / fps
        parts = {m: t.resized(n) for m, t in parts.items()}
        raw, mask, weights = self._fuse(parts, video, n, notes)
        final, source = finalize(raw, mask, self.kernels, self.fill)
        cols: dict[str, Any] = {"frame": np.arange(1, n + 1), "time": times[:n], "valence": final[:, 0],
                                "arousal": final[:, 1], "source": source}
        for m in MODALITIES:
            t = parts.get(m)
            va = np.where(t.mask[:, None], t.va, np.nan) if t is not None else np.full((n, 2), np.nan, np.float32)
            cols[f"{m}_valence"], cols[f"{m}_arousal"] = va[:, 0], va[:, 1]
        for name, w in weights.items():
            cols[f"weight_{name}"] = w
        df = pd.DataFrame(cols)
        if not mask.any():
            notes.append("no estimate: no modality had input in any frame")
        meta = self._meta(p, sorted(parts), fps, n, audio_only, source, notes, store, t0)
        meta["frame_modalities"] = frame_modalities(parts, n)
        return PredictionResult(df, meta)


    def stream(self, source: str, **options: Any) -> Any:
        """Live estimates of a camera, network stream or byte stream on stdin (``-``): a
        :class:`vaest.live.LiveStream` to iterate for per-frame :class:`vaest.live.LiveResult` objects (time, frame,
        person, valence, arousal, each modality, latency), causal (docs/live.md). ``options``: those of
        :class:`~vaest.live.LiveStream` (``rate``, ``out``, ``audio``, ``queue_size``, ``stall_s``, ``reconnect``,
        ``preview``, ``max_frames``, ...); ``stop()`` ends it cleanly."""
        from vaest.live import LiveStream

        return LiveStream(self, source, **options)

    def _zero_shot(self, store: FeatureStore, video: Video) -> tuple[dict[str, Any], list[str]]:
        """Zero-shot voice track of an audio-only file (videos go through :meth:`predict_people`: the person
        tracker, each person's face and the voice attributed to them)."""
        from vaest.media import read_audio
        from vaest.inference import Track

        if not video.audio_only:
            raise FeatureError(f"{video.media}: no 'persons' features for the zero-shot video path")
        wav = read_audio(video.media)
        if wav.size == 0:
            raise MediaError(f"{video.media}: no audio samples to analyse")
        va = self.voice_track(wav, AUDIO_ONLY_FPS)
        return {"audio": Track(va, np.isfinite(va[:, 1]), None, AUDIO_ONLY_FPS)}, [self._voice_note()]



