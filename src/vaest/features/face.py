"""Face modality extractors: ``facetrack`` (one face track per video) and ``face`` (a frame encoder on its crops).

- ``facetrack``: the :class:`vaest.features.face_tracker.FaceTracker` (MediaPipe detection + FaceMesh) on raw
  frames. One track per video: the largest face, kept by box overlap from frame to frame; ``<video>_left`` /
  ``<video>_right`` label tracks on one media file take the left / right person of
  :class:`vaest.features.person_tracker.PersonTracker` (identity tracks, ordered by mean box x). Frames with no
  face are marked (mask False), never dropped. Per batch it shares ``shared["facetrack"] = {video_id: FaceObs}``
  with the extractors that run after it (face encoder, mouth, behavior).
- ``face`` (store key ``face-<encoder>``): a frame encoder of the registry
  (:func:`vaest.features.face_encoders.create_encoder`: ``fer``: FER2013 network whose weights ship in a
  registry package, the offline default; ``minixception``, ``emotiefflib:<model>``; ``grada``: the reference
  EfficientNet-B1 affective encoder; ``tiny``: a small random CNN for tests) on face crops, or on the corpus'
  ``cropped_aligned`` images where it has them.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from vaest.corpus import Video
from vaest.device import torch_threads
from vaest.errors import FeatureError
from vaest.features.base import Extractor, register_extractor
from vaest.features.face_encoders import create_encoder
from vaest.features.face_geometry import LANDMARK_GROUPS, LANDMARK_IDS, LANDMARK_INDEX, N_LANDMARKS, FaceObs, crop_face
from vaest.features.face_registry import face_key
from vaest.features.face_tracker import FaceTrackConfig, FaceTracker, track_key
from vaest.features.person_tracker import PersonTrackConfig, PersonTracker
from vaest.features.store import FeatureRecord
from vaest.media import FrameBatch, MediaInfo, fps_or_default
from vaest.timebase import TimeBase, TimeSeries

if TYPE_CHECKING:
    from vaest.features.face_nets import FrameEncoder

log = logging.getLogger(__name__)


@register_extractor("facetrack")
class FaceTrackExtractor(Extractor):
    """Per-frame face box, detector confidence and FaceMesh landmarks of each video's face track."""

    Config: ClassVar[type] = FaceTrackConfig

    def begin(self, videos: list[Video], info: MediaInfo) -> None:
        self.videos = videos
        self.info = info
        keys = list(dict.fromkeys(track_key(v) for v in videos))
        # the main face: the single-face tracker (fast path); left/right: the person tracker (identity tracks,
        # left/right = the two persons ordered by mean box x, see vaest.features.person_tracker)
        self.tracker = FaceTracker(self.config, [None]) if None in keys else None
        self.person_tracker = None
        if any(k in ("left", "right") for k in keys):
            self.person_tracker = PersonTracker(PersonTrackConfig(**dataclasses.asdict(self.config)))
        self.parts: dict[str | None, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {s: [] for s in keys}
        self.n = 0
        self.size = [info.width, info.height]

    def _track(self, frames: np.ndarray) -> dict[str | None, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        res = self.tracker.process(frames) if self.tracker is not None else {}
        if self.person_tracker is not None:
            per = self.person_tracker.process(frames)
            B = len(frames)
            for side, pid in self.person_tracker.side_ids().items():
                res[side] = per[pid] if pid is not None else (
                    np.full((B, 4), np.nan, np.float32), np.zeros(B, np.float32),
                    np.full((B, N_LANDMARKS, 3), np.nan, np.float32))
        return res

    def update(self, batch: FrameBatch, shared: dict[str, Any]) -> None:
        res = self._track(batch.frames)
        obs: dict[str, FaceObs] = {}
        for v in self.videos:
            boxes, conf, lms = res[track_key(v)]
            obs[v.id] = FaceObs(boxes, conf, lms, batch.frames)
        shared["facetrack"] = obs
        for s in self.parts:
            boxes, conf, lms = res[s]
            self.parts[s].append((boxes, conf, lms[:, LANDMARK_INDEX, :2]))
        self.n += len(batch.index)
        self.size = [int(batch.frames.shape[2]), int(batch.frames.shape[1])]  # box coordinates are in these pixels

    def end(self) -> dict[tuple[str, str], FeatureRecord]:
        for t in (self.tracker, self.person_tracker):
            if t is not None:
                t.close()
        fps = fps_or_default(self.info.fps)
        out = {}
        for v in self.videos:
            parts = self.parts[track_key(v)]
            boxes = np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, 4), np.float32)
            conf = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.float32)
            lms = np.concatenate([p[2] for p in parts]) if parts else np.zeros((0, len(LANDMARK_IDS), 2), np.float32)
            found = np.isfinite(boxes).all(1)
            meta = {"landmark_ids": list(LANDMARK_IDS), "landmark_groups": {k: list(v_) for k, v_ in LANDMARK_GROUPS.items()},
                    "face_rate": float(found.mean()) if len(found) else 0.0, "side": v.side,
                    "frame_size": self.size}
            out[("facetrack", v.id)] = FeatureRecord(TimeSeries(boxes, TimeBase.frames(fps), found),
                                                     {"conf": conf, "landmarks": lms}, meta)
            log.debug("%s: face found in %.1f%% of %d frames", v.id, 100 * meta["face_rate"], len(found))
        return out


# ---------------------------------------------------------------------------------------------------------
# The face encoder extractor
# ---------------------------------------------------------------------------------------------------------


@dataclass
class FaceEncoderConfig:
    """Settings of the ``face`` extractor (store key ``face-<encoder>``).

    Attributes:
        encoder: registered frame encoder (``fer``, ``minixception``, ``emotiefflib:<model>``, ``grada``, ``tiny``).
        weights: weights file; None = the encoder's default (``fer``: the package's).
        device: ``cpu`` or ``cuda``.
        batch_size: crops per encoder forward.
        crop_scale, crop_shift: face crops are :func:`square_box` (side = scale x box side, centre moved by
            shift x side) of the detector box; None = the encoder's own ``crop_framing`` (1.1, -0.05; the
            ``minixception`` uses the framing of the ``fer`` package's Haar crops, 1.26, -0.07).
        flip_tta: also encode the mirrored crop and average the outputs; None = the encoder's ``flip_default``,
            else on for the small networks (``fer``, ``tiny``: it steadies their expression scores, at little
            cost), off for ``grada``.
        use_cropped_aligned: where a video has ``cropped_aligned`` images, encode them instead of crops.
        num_threads: torch CPU threads while encoding; None = 1 for the small ``fer`` / ``tiny`` networks
            (on a busy 2-core machine, thread hand-offs cost more than they gain for 48x48 inputs) and
            torch's default for ``grada``.
        backend: ``auto`` | ``torch`` | ``onnx`` (:func:`encoder_backend`): ``auto`` runs ``minixception`` on
            ONNX Runtime on the CPU (outputs equal to torch's to float rounding), every other encoder on torch.
    """

    encoder: str = "fer"
    weights: str | None = None
    device: str = "cpu"
    batch_size: int = 64
    crop_scale: float | None = None
    crop_shift: float | None = None
    flip_tta: bool | None = None
    use_cropped_aligned: bool = True
    num_threads: int | None = None
    backend: str = "auto"


def _read_rgb(path: Path) -> np.ndarray | None:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    return None if img is None else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


@register_extractor("face")
class FaceEncoderExtractor(Extractor):
    """Per-frame face embedding, expression probabilities, detector confidence (and VA where the encoder has a
    VA head). values (n_frames, D) NaN where no face, mask = face found; extras ``probs`` (n, C), ``conf`` (n,),
    ``va`` (n, 2)."""

    Config: ClassVar[type] = FaceEncoderConfig
    requires: ClassVar[tuple[str, ...]] = ("facetrack",)

    def __init__(self, config: Any = None):
        super().__init__(config)
        self._enc: FrameEncoder | None = None
        self._features_hash: str | None = None

    def outputs(self) -> list[str]:
        return [face_key(self.config.encoder)]

    @property
    def encoder(self) -> FrameEncoder:
        if self._enc is None:
            self._enc = create_encoder(self.config.encoder, self.config.weights, self.config.device,
                                       self.config.backend)
        return self._enc

    @property
    def flip(self) -> bool:
        if self.config.flip_tta is not None:
            return bool(self.config.flip_tta)
        enc = self.encoder
        return enc.light if enc.flip_default is None else bool(enc.flip_default)

    @property
    def framing(self) -> tuple[float, float]:
        """(scale, shift) of the face crops: the config's where set, else the encoder's ``crop_framing``."""
        sc, sh = self.encoder.crop_framing
        c = self.config
        return (sc if c.crop_scale is None else c.crop_scale, sh if c.crop_shift is None else c.crop_shift)

    def features_hash(self) -> str:
        """Identity of this encoder's feature space (see :meth:`Extractor.features_hash`): the encoder, its
        weights (the SHA-256 of the file given or of the encoder's default file: the same weights hash the same
        wherever they lie and however they were named; None for random weights),
        the crop framing and the mirror TTA as resolved (an explicit setting equal to the encoder's default
        hashes like the default). Not in it: runtime settings (device, batch size, threads, backend), the face
        tracker that found the faces (the predictor's person tracker or ``vaest extract``'s single-face one),
        whether a corpus's ``cropped_aligned`` images were the crops (``meta["source"]``) and the working
        resolution: they move the values within one space, and a model trained on one applies to the other."""
        if self._features_hash is None:
            from vaest.features.store import config_hash
            from vaest.io import file_sha256

            w = self.config.weights
            encoder = str(self.config.encoder)
            family, _, variant = encoder.partition(":")
            if w is None and variant and Path(variant).is_file():  # "emotiefflib:/path/to/enet_b0_8_va_mtl.pt"
                w, encoder = variant, f"{family}:{Path(variant).stem}"  # the model its stem names, as from_option
            if w is None:  # the file the encoder loaded by default (torch and ONNX Runtime builds alike)
                default = getattr(self.encoder, "default_weights", None)
                w = default() if callable(default) else getattr(self.encoder, "weights", None)
            weights = file_sha256(w) if w is not None and Path(w).is_file() else w
            self._features_hash = config_hash({"name": "face", "encoder": encoder, "weights": weights,
                                               "framing": [float(x) for x in self.framing], "flip": self.flip})
        return self._features_hash

    def begin(self, videos: list[Video], info: MediaInfo) -> None:
        self.videos = videos
        self.info = info
        _ = self.encoder
        self.parts: dict[str, list[tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]]] = {v.id: [] for v in videos}

    def _crops(self, v: Video, obs: FaceObs, batch: FrameBatch) -> tuple[list[np.ndarray], np.ndarray]:
        crops: list[np.ndarray] = []
        rows: list[int] = []
        scale, shift = self.framing
        aligned = v.face_dir if (self.config.use_cropped_aligned and v.face_dir is not None) else None
        for j, fi in enumerate(batch.index):
            img = None
            if aligned is not None:
                p = Path(aligned) / f"{int(fi) + 1:05d}.jpg"
                img = _read_rgb(p) if p.exists() else None
            elif obs.found[j]:
                img = crop_face(batch.frames[j], obs.boxes[j], scale, shift)
            if img is not None:
                crops.append(img)
                rows.append(j)
        return crops, np.asarray(rows, np.int64)

    def update(self, batch: FrameBatch, shared: dict[str, Any]) -> None:
        obs_map = shared.get("facetrack")
        if obs_map is None:
            raise FeatureError("the face encoder needs the facetrack extractor to run before it")
        for v in self.videos:
            obs = obs_map[v.id]
            crops, rows = self._crops(v, obs, batch)
            self.parts[v.id].append((rows, self.encode_crops(crops), obs.conf.copy()))

    def encode_crops(self, crops: list[np.ndarray]) -> dict[str, np.ndarray]:
        """Encode RGB face crops with this extractor's encoder, mirror TTA and CPU thread setting
        (:meth:`FrameEncoder.encode`'s outputs)."""
        enc = self.encoder
        n_threads = self.config.num_threads
        if n_threads is None and enc.light and self.config.device == "cpu":
            n_threads = 1
        # only where torch is loaded: a torch encoder always is; the ONNX Runtime one has its own single thread
        with torch_threads(n_threads, only_if_loaded=True):
            return enc.encode(crops, self.config.device, self.config.batch_size, flip=self.flip)

    def end(self) -> dict[tuple[str, str], FeatureRecord]:
        enc = self.encoder
        fps = fps_or_default(self.info.fps)
        key = self.outputs()[0]
        out = {}
        for v in self.videos:
            parts = self.parts[v.id]
            n = sum(len(p[2]) for p in parts)
            emb = np.full((n, enc.feature_dim), np.nan, np.float32)
            probs = np.full((n, len(enc.classes)), np.nan, np.float32)
            va = np.full((n, 2), np.nan, np.float32)
            conf = np.zeros(n, np.float32)
            off = 0
            for rows, res, c in parts:
                emb[off + rows] = res["emb"]
                probs[off + rows] = res["probs"]
                if "va" in res:
                    va[off + rows] = res["va"]
                conf[off : off + len(c)] = c
                off += len(c)
            out[(key, v.id)] = self._record(v, emb, probs, va, conf, fps)
        return out

    def _record(self, v: Video, emb: np.ndarray, probs: np.ndarray, va: np.ndarray, conf: np.ndarray, fps: float
                ) -> FeatureRecord:
        """The ``face-<encoder>`` record of one video from its per-frame arrays: emb (n, D), probs (n, C), va
        (n, 2) (NaN on frames without a face) and conf (n,)."""
        enc = self.encoder
        found = np.isfinite(emb).all(1)
        extras = {"probs": probs, "conf": conf}
        if enc.has_va:
            extras["va"] = va
        meta = {"encoder": self.config.encoder, "classes": list(enc.classes), "feature_dim": enc.feature_dim,
                "source": "cropped_aligned" if (self.config.use_cropped_aligned and v.face_dir) else "video",
                "face_rate": float(found.mean()) if len(emb) else 0.0}
        return FeatureRecord(TimeSeries(emb, TimeBase.frames(fps), found), extras, meta)
