"""Behavior inputs of one video, as the behavior model reads them in training and when applied.

Each video is a sequence of segments (hop 2 s, win 4 s) whose inputs come from the feature store
(``behavior-desc``, ``behavior-vlm`` with a chosen branch and pooling, ``behavior-text``, or a ``+``
combination; :class:`~vaest.inputs.settings.BehaviorInputs` names them), standardised with the train-split
statistics saved in the checkpoint; a missing value becomes the train mean. Segment predictions are expanded
onto the frames (:func:`frame_mask` marks the frames a valid segment covers).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np

from vaest.corpus import Video
from vaest.errors import FeatureError
from vaest.features.behavior import ENCODER_KEYS, encoder_parts, expression_key, load_segment_features
from vaest.features.segments import Segment, record_segments, segment_targets
from vaest.features.store import Expect, FeatureRecord, FeatureStore, RowView
from vaest.inputs.settings import BehaviorInputs
from vaest.sequences import Sequence
from vaest.timebase import TimeSeries, to_frames


@dataclass
class BehaviorItem:
    """One video's segment inputs (raw), validity, segment spans and frame grid."""

    video: Video
    x: RowView  # (S, D) unstandardised, NaN where missing; rows read from the store when asked for
    valid: np.ndarray  # (S,) bool
    record: FeatureRecord
    segments: list[Segment]
    n_frames: int
    fps: float


def load_items(videos: list[Video], store: FeatureStore, st: BehaviorInputs, expect: Expect | None = None
               ) -> tuple[list[BehaviorItem], list[str]]:
    """Segment inputs of every video with stored features, and the ids of those without. Records of another
    width or config hash than ``expect`` asks (default: the first video's), or of another features hash where it
    asks one (a trained model's), are refused."""
    keys = [ENCODER_KEYS[p] for p in encoder_parts(st.encoder) if p != "expr"]
    items, missing = [], []
    # one width and one extractor configuration for every video (the first record fixes them)
    expect = expect or Expect(f"behavior encoder {st.encoder!r} ({st.branch}/{st.pool})")
    for v in videos:
        need_expr = "expr" in encoder_parts(st.encoder)
        if not all(store.has(k, v.id) for k in keys) or (need_expr and expression_key(store, v.id) is None):
            missing.append(v.id)
            continue
        x, valid, rec = load_segment_features(store, v.id, st.encoder, st.branch, st.pool)
        fps = float(rec.meta.get("fps") or 0.0)
        n_frames = int(rec.meta.get("n_frames") or 0)
        if fps <= 0 or n_frames <= 0:
            raise FeatureError(f"{store.path(keys[0], v.id)}: record has no frame grid (meta n_frames/fps); re-extract it")
        expect.check(str(store.path(keys[0], v.id)) if keys else str(store.root), "+".join(keys) or st.encoder,
                     int(x.shape[1]), rec.config_hash, rec.meta.get("features_hash"))
        # the item keeps the record's time base, mask and meta; its features stay in the store (x: a RowView)
        slim = FeatureRecord(TimeSeries(np.zeros((len(x), 0), np.float32), rec.base, rec.mask), {}, rec.meta,
                             rec.config_hash)
        items.append(BehaviorItem(v, x, valid, slim, record_segments(rec, n_frames, fps), n_frames, fps))
    return items, missing


def apply_norm(norm: dict[str, list[float]], x: np.ndarray) -> np.ndarray:
    """Standardise (k, D) inputs row by row; missing values become 0 (the train mean)."""
    z = (x - np.asarray(norm["mean"], np.float32)) / np.asarray(norm["std"], np.float32)
    return np.nan_to_num(z, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)


def to_sequence(it: BehaviorItem, norm: dict[str, list[float]]) -> Sequence:
    """Segment sequence with per-segment targets (mean valid frame label) and frame labels for validation; its
    input ``x`` is the item's rows standardised as they are read (:func:`apply_norm` on each window)."""
    labels = it.video.labels_for(it.n_frames) if it.video.has_labels else None
    target = segment_targets(labels, it.segments) if labels is not None else np.full((len(it.x), 2), np.nan, np.float32)
    target[~it.valid] = np.nan
    x = RowView(it.x.parts, len(it.x), transform=partial(apply_norm, norm))
    return Sequence(id=it.video.id, inputs={"x": x}, target=target, base=it.record.base,
                    n_frames=it.n_frames, fps=it.fps, frame_labels=labels)


def frame_mask(it: BehaviorItem) -> np.ndarray:
    """(n_frames,) True where a valid segment covers the frame."""
    _, m = to_frames(TimeSeries(it.valid.astype(np.float32), it.record.base, it.valid), it.n_frames, it.fps)
    return m
