"""Trained vaest models as objects that apply themselves to in-memory inputs.

Each object is loaded once (checkpoint read, network built, moved to the device) and then applied to any number
of videos: features in (a feature store, in memory or on disk, holding one video's extractor records), per-frame
predictions out (a :class:`~vaest.inference.Track`: ``va`` (n, 2), ``mask`` (n,) frames with real input,
``emb`` (n, H), ``fps``). Nothing is written to disk. The :class:`vaest.predictor.Predictor` composes them:

    decode -> extract -> FaceModel / AudioModel / BehaviorModel -> FusionModel -> smoothing

The data flow is one way and never goes through training code: this module reads each run's inference
settings (:mod:`vaest.inputs.settings`) and calls the per-video input builders of :mod:`vaest.inputs` and the
sliding-window application of :mod:`vaest.sequences`; the training tasks' exports use the same per-video code
(:func:`vaest.inputs.audio.apply_item`, :func:`vaest.inputs.fusion.fuse`, :func:`vaest.late_fusion.late_combine`).

A *model bundle* is a folder with ``bundle.json``: the run folders of each modality, the fusion run, the
post-processing kernels and the extractors they need (paths relative to the bundle); a single run folder
(``run.json``) also works as a model (its modality alone is applied). Each run folder carries the settings it is
applied with (``run.json``'s ``inference`` record); runs written before that record have them derived from their
checkpoint and run.json.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vaest.corpus import Video
from vaest.errors import ModelError, VaestError
from vaest.features.store import FeatureStore
from vaest.inference import read_run_json
from vaest.io import atomic_write_json
from vaest.postprocess import REFERENCE_KERNELS

log = logging.getLogger(__name__)

MODALITIES = ("face", "audio", "behavior")
BUNDLE_FILE = "bundle.json"


@dataclass
class Bundle:
    """Trained runs that make one predictor (paths absolute once loaded)."""

    root: Path
    modalities: dict[str, Path] = field(default_factory=dict)
    fusion: Path | None = None
    kernels: tuple[int, int] = REFERENCE_KERNELS
    face_encoder: str = "fer"
    audio_encoder: str = "lmfb"

    def save(self) -> None:
        """Write ``root/bundle.json`` (paths inside the bundle folder stored relative to it)."""
        root = self.root.resolve()

        def rel(p: Path) -> str:
            q = Path(p).resolve()
            return str(q.relative_to(root)) if q.is_relative_to(root) else str(q)

        atomic_write_json(self.root / BUNDLE_FILE, {
            "modalities": {k: rel(v) for k, v in self.modalities.items()},
            "fusion": rel(self.fusion) if self.fusion else None, "kernels": list(self.kernels),
            "face_encoder": self.face_encoder, "audio_encoder": self.audio_encoder})


def load_model(path: str | Path) -> Bundle:
    """A bundle folder (``bundle.json``) or a single run folder (``run.json``) as a :class:`Bundle`."""
    p = Path(path)
    if not p.exists():
        raise ModelError(f"{p}: no such model folder")
    if (p / BUNDLE_FILE).exists():
        d = json.loads((p / BUNDLE_FILE).read_text())

        def res(s: str) -> Path:
            return Path(s) if Path(s).is_absolute() else p / s

        return Bundle(p, {k: res(v) for k, v in d["modalities"].items()}, res(d["fusion"]) if d.get("fusion") else None,
                      tuple(d.get("kernels") or REFERENCE_KERNELS), d.get("face_encoder", "fer"),
                      d.get("audio_encoder", "lmfb"))
    info = read_run_json(p)
    mod = info.get("modality")
    if mod not in MODALITIES:
        raise ModelError(f"{p}: a {mod!r} run cannot be applied alone; use the bundle folder that holds it")
    b = Bundle(p, {mod: p})
    if mod == "face":
        b.face_encoder = info.get("encoder", "fer")
    if mod == "audio":
        b.audio_encoder = info.get("encoder", "lmfb")
    return b


def _checkpoint(run: Path, device: str) -> tuple[Any, dict[str, Any]]:
    from vaest.models import load_checkpoint

    return load_checkpoint(Path(run) / "model.pt", device)


def _trained_expect(run: Path, ck: dict[str, Any], who: str, dim: int | None) -> Any:
    """What a trained model asks of the records it is applied to (one :class:`~vaest.features.store.Expect`
    for every video): the width ``dim`` and the features hash its checkpoint recorded; records of another are
    refused, naming the store file, the run and both values. A checkpoint from before features hashes warns once
    here and is checked for width only."""
    from vaest.features.store import Expect

    expect = Expect(who, dim, same_hash=False, features_hash=ck.get("inputs", {}).get("features_hash"))
    if expect.features_hash is None:
        log.warning("%s: trained before checkpoints recorded their features hash: the extractor configuration of "
                    "the features it is applied to is not checked (width only)", run)
    return expect


def _then_release(apply: Callable[..., Any]) -> Callable[..., Any]:
    """A model's ``apply`` that hands the C heap's freed pages back when it returns
    (:func:`~vaest.features.base.release_free_memory`): each apply's temporaries (a long video's inputs, their
    standardised copy, the windows' outputs) are freed in the middle of the heap, where they would otherwise stay
    resident under the next apply's (10-minute video with the demo bundle: up to 115 MB per apply)."""

    @functools.wraps(apply)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        from vaest.features.base import release_free_memory

        try:
            return apply(*args, **kwargs)
        finally:
            release_free_memory()

    return wrapped


def windows_per_batch(device: str) -> int:
    """Frame windows (400 frames for the face model and the fusions) per forward when applying a model: 2 on CPU,
    where a batch of 16 holds ~16 x heads x 400 x 400 attention weights at once (peak RSS of a bundle predict
    on the 63 s benchmark video, in-process VmHWM, 864 -> 724 MB, same time, same outputs;
    docs/performance.md), else 16."""
    return 2 if str(device).startswith("cpu") else 16


class FaceModel:
    """A trained face run: face-encoder features (+ face-track kinematics) -> per-frame VA and embedding."""

    modality = "face"

    def __init__(self, run: str | Path, device: str = "cpu"):
        from vaest.inputs.settings import FaceInputs, read_settings

        self.run, self.device = Path(run), device
        self.model, self.ck = _checkpoint(self.run, device)
        self.settings = read_settings(self.run, FaceInputs) or FaceInputs.from_checkpoint(self.ck)
        self.encoder = self.settings.encoder
        from vaest.features.face_encoders import encoder_feature_dim

        dim = self.ck.get("inputs", {}).get("emb_dim")
        self.expect = _trained_expect(self.run, self.ck, f"the face model {self.run} (encoder {self.encoder!r})",
                                      dim if dim is not None else encoder_feature_dim(self.encoder))

    @_then_release
    def apply(self, store: FeatureStore, video: Video):
        """The :class:`~vaest.inference.Track` of ``video`` (None when it has no face features)."""
        from vaest.inference import Track
        from vaest.inputs.face import apply_norm, load_face_sequences
        from vaest.sequences import predict_sequence

        st = self.settings
        loaded, _ = load_face_sequences([video], store, st.encoder, motion=st.motion, parts=st.parts,
                                        expect=self.expect)
        if not loaded:
            return None
        _, x, found, fps = loaded[0]
        x = apply_norm(x, self.ck["norm"], inplace=True)  # x is this call's own array
        res = predict_sequence(self.model, {"x": x}, st.win, st.hop, self.device, windows_per_batch(self.device))
        va = np.asarray(res["va"], np.float32)
        return Track(va, np.asarray(found, bool) & np.isfinite(va).all(1), res.get("emb"), fps)


class BehaviorModel:
    """A trained behavior run: segment descriptors -> segment VA expanded to frames."""

    modality = "behavior"

    def __init__(self, run: str | Path, device: str = "cpu"):
        from vaest.inputs.settings import BehaviorInputs, read_settings

        self.run, self.device = Path(run), device
        self.model, self.ck = _checkpoint(self.run, device)
        self.settings = read_settings(self.run, BehaviorInputs) or BehaviorInputs.from_checkpoint(self.ck)
        st = self.settings
        self.expect = _trained_expect(self.run, self.ck, f"the behavior model {self.run} (encoder {st.encoder!r}, "
                                      f"{st.branch}/{st.pool})", self.ck.get("inputs", {}).get("dim"))

    @_then_release
    def apply(self, store: FeatureStore, video: Video):
        """The :class:`~vaest.inference.Track` of ``video`` (None when it has no behavior features)."""
        from vaest.inference import Track
        from vaest.inputs.behavior import frame_mask, load_items, to_sequence
        from vaest.sequences import frames_from_steps, predict_sequence

        items, _ = load_items([video], store, self.settings, self.expect)
        if not items:
            return None
        it = items[0]
        seq = to_sequence(it, self.ck["norm"])
        res = predict_sequence(self.model, seq.inputs, self.settings.win, self.settings.hop, self.device)
        va = frames_from_steps(res["va"], seq.base, seq.n_frames, seq.fps)
        emb = frames_from_steps(res["emb"], seq.base, seq.n_frames, seq.fps) if "emb" in res else None
        return Track(np.asarray(va, np.float32), frame_mask(it) & np.isfinite(va).all(1), emb, it.fps)


class AudioModel:
    """A trained audio run: audio-encoder frames (+ mouth/vad reliability) -> per-frame VA, embedding and the
    per-window tokens the RAAV fusion attends to."""

    modality = "audio"

    def __init__(self, run: str | Path, device: str = "cpu"):
        from vaest.inputs.settings import AudioInputs, read_settings

        self.run, self.device = Path(run), device
        self.model, self.ck = _checkpoint(self.run, device)
        self.settings = read_settings(self.run, AudioInputs) or AudioInputs.from_checkpoint(self.ck)
        self.expect = _trained_expect(self.run, self.ck, f"the audio model {self.run} (encoder "
                                      f"{self.settings.encoder!r})", self.ck.get("inputs", {}).get("dim"))
        self.windows: Any = None  # AudioWindows of the last applied video
        self.token_va: np.ndarray | None = None  # (W, 4, 2) per-token audio predictions of the last video

    @_then_release
    def apply(self, store: FeatureStore, video: Video):
        """The :class:`~vaest.inference.Track` of ``video`` (None without audio); sets ``self.windows``."""
        from vaest.features.audio import audio_key
        from vaest.inference import Track
        from vaest.inputs.audio import apply_item, load_item
        from vaest.inputs.audio_windows import windows_from_record

        st = self.settings
        self.windows, self.token_va = None, None
        if not store.has(audio_key(st.encoder), video.id):
            return None
        it = load_item(store, video, st.encoder, st.filter_config(), st.min_valid_seconds, st.feature_norm,
                       self.expect)
        if it.audio_seconds <= 0:
            return None
        frames, tokens = apply_item(self.model, it, st.filter, st.encoder, self.device)
        self.windows = windows_from_record(tokens)
        self.token_va = tokens.extras.get("va")
        va = np.asarray(frames.values, np.float32)
        return Track(va, np.asarray(frames.mask, bool) & np.isfinite(va).all(1), frames.extras.get("emb"), it.fps,
                     {"reliability": frames.extras["reliability"]})


MODALITY_MODELS = {"face": FaceModel, "audio": AudioModel, "behavior": BehaviorModel}


def load_modality(modality: str, run: str | Path, device: str = "cpu"):
    """The applied-model object of one modality run."""
    if modality not in MODALITY_MODELS:
        raise ModelError(f"{run}: unknown modality {modality!r} (expected one of {', '.join(MODALITY_MODELS)})")
    return MODALITY_MODELS[modality](run, device)


class FusionModel:
    """A trained fusion run (RAAV, DCMMoE, late, or the reference forms ``raav-reference`` and ``dcm-ref``):
    modality tracks of one video -> fused per-frame VA and per-frame modality weights.

    ``raav-reference`` is applied as its export does: one sample per 4 s audio window, the audio tokens carrying
    the audio model's per-second prediction, overlapping windows averaged
    (:func:`~vaest.inputs.fusion.predict_by_window`); ``dcm-ref`` reads no audio and cuts windows as recorded in
    its settings (``align_end``). Both reproduce the training exports (``vaest.tasks.fusion.apply_fusion``)."""

    def __init__(self, run: str | Path, device: str = "cpu"):
        from vaest.inputs.settings import FusionInputs, read_settings

        self.run, self.device = Path(run), device
        info = read_run_json(self.run)
        recorded = read_settings(self.run, FusionInputs, info)
        late = recorded.late if recorded is not None else info.get("modality") == "late"
        self.model: Any = None
        if not late:
            self.model, self.ck = _checkpoint(self.run, device)
        self.settings = recorded or FusionInputs.from_run_json(info, None if late else self.ck)
        self.names = list(self.settings.runs)
        self.late = self.settings.late
        if self.late:
            self.weights = np.stack([np.asarray(self.settings.weights[m], np.float64) for m in self.names])
            self.weight_names = list(self.names)
        else:
            from vaest.inputs.fusion import weight_names

            self.method = self.settings.method
            self.weight_names = weight_names(self.model)
            cfg = self.ck.get("config", {})
            dims = cfg.get("input_dims")  # dcm-ref: {modality: width}
            self.widths = dict(dims) if isinstance(dims, dict) else dict(zip(cfg.get("modalities", ()),
                                                                             cfg.get("in_dims", ())))

    @_then_release
    def apply(self, tracks: dict[str, Any], video: Video, audio_windows: Any = None, token_va: Any = None):
        """Fused :class:`~vaest.inference.Track` (extras ``weights`` (n, M) in ``self.weight_names`` order),
        or None when no modality the fusion uses has a track. ``audio_windows``: the audio model's
        :class:`~vaest.inputs.audio_windows.AudioWindows` of this video; ``token_va`` (W, 4, 2): its per-token
        predictions (``raav-reference`` only; None = zeros, as the export reads a run without them)."""
        from vaest.inference import Track
        from vaest.inputs.audio_windows import with_token_va
        from vaest.inputs.fusion import build_fusion_data, fuse, predict_by_window, stack_tracks
        from vaest.late_fusion import late_combine

        use = {m: tracks.get(m) for m in self.names}
        if all(t is None for t in use.values()):
            return None
        if self.late:
            P, M, fps = stack_tracks(use)
            va, eff = late_combine(P, M, self.weights)
            return Track(va.astype(np.float32), M.any(1) & np.isfinite(va).all(1), None, fps,
                         {"weights": eff.mean(-1).astype(np.float32)})
        st = self.settings
        reference = self.method == "raav-reference"
        if reference and audio_windows is not None:
            audio_windows = with_token_va(audio_windows, token_va)
        data = build_fusion_data({m: Path(m) for m in self.names}, [video], "raav" if reference else self.method,
                                 tracks_in={video.id: use},
                                 windows_in={video.id: audio_windows} if audio_windows is not None else {},
                                 widths_in=self.widths)
        if not data.sequences:
            return None
        seq = data.sequences[0]
        if reference:
            cfg = self.model.config
            res = predict_by_window(self.model.to(self.device), seq, list(cfg.modalities), data.table, cfg.audio_dim,
                                    self.device)
            va, extras = res["va"], res
            mask = np.any(list(data.available[seq.id].values()), axis=0)
        else:
            va, mask, extras = next(fuse(self.model, data, st.win, st.hop, self.device,
                                         windows_per_batch(self.device), align_end=st.align_end, with_emb=False))
        va = np.asarray(va, np.float32)
        w = extras.get("weights")
        return Track(va, np.asarray(mask, bool) & np.isfinite(va).all(1), extras.get("emb"), seq.fps,
                     {"weights": np.asarray(w, np.float32)} if w is not None else {})


def check_fusion_inputs(bundle: Bundle) -> None:
    """Fail early when a bundle's fusion needs a modality the bundle does not have."""
    if bundle.fusion is None:
        return
    need = read_run_json(bundle.fusion).get("runs") or {}
    lacking = [m for m in need if m not in bundle.modalities]
    if lacking:
        raise VaestError(f"{bundle.root}: fusion run {bundle.fusion} needs modality run(s) {', '.join(lacking)}, "
                         "which the bundle does not list")
