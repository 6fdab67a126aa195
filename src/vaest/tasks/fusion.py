"""Fusion of modality run folders: learned fusion (RAAV, DCMMoE) and late fusion (searched weighted averages).

Inputs are run folders of modality models (``vaest train face|behavior|audio``): each holds
``preds/<video>.npz`` with per-frame ``va`` (n_frames, 2), ``mask`` (frames where the modality had real input)
and extras ``emb`` (n_frames, H) (audio also ``reliability``). Everything meets on the video's frame grid.

Learned fusion (:func:`train_fusion`) builds one :class:`~vaest.training.Sequence` per video whose per-frame
inputs are, for every frame modality m (all runs except ``audio``), ``m`` = ``[emb, va]`` (n, H+2) and
``m_mask`` (n,). Audio enters in one of two forms:

- RAAV: windows of 4 one-second tokens (4 s windows every 2 s). They come from the audio run's store record
  ``audio-tokens`` when it exists (values (W, 4, H) or (W, 4*H), or extra ``tokens``; mask = the window is
  usable (audio and the fusion rule); per-token mask from extra ``token_mask`` or ``has_audio`` (W, 4)),
  otherwise from the per-frame audio ``emb`` averaged over each second.
  A window is reliable when the fusion rule of :func:`vaest.features.audio.window_reliability` keeps it
  (>= 1 s mouth open and face coverage >= 0.8), read from the feature store recorded in the audio run.
  Each frame refers to the (up to two) windows covering it by a global row index (``audio_index`` (n, 2));
  :class:`FusionTask` turns those rows into the batch's ``audio_tokens`` / ``audio_token_mask``.
- DCMMoE: per-frame audio ``[emb, va]`` with mask = audio input present and covered by a reliable window.
- ``dcm-ref`` (the official directed cross-modal model, :class:`vaest.models.directed.DirectedFusionRef`): no
  audio (an audio run is ignored); face queries over behavior keys/values, padded frames masked.

Frames where a modality has no real input are masked, never zero-filled as if real.

Late fusion (:func:`late_fusion`) averages prediction sets with per-dimension weights searched on the
validation split (grid for few sets, seeded Dirichlet sampling otherwise); at a frame where some sets have no
real input the weights are renormalised over the sets present (see :func:`combine_sets`).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence as Seq

import numpy as np
import torch
from torch import nn

from vaest.config import write_run_info
from vaest.corpus import Video, load_corpus
from vaest.errors import FeatureError, VaestError
from vaest.features.store import FeatureRecord, FeatureStore
from vaest.inference import (Track, evaluate_predictions, load_track,  # noqa: F401
                             read_run_json, save_predictions, write_run_json)
from vaest.io import atomic_write_json
from vaest.metrics import DIMS
from vaest.models import create_model, load_checkpoint
from vaest.models.fusion import ReferenceRAAVConfig
from vaest.presets import get_preset, preset_record, register_preset
from vaest.progress import track
from vaest.timebase import TimeBase, frame_midpoints
from vaest.training import Sequence, SequenceTask, TrainConfig, accepts_mask, fit, predict_sequence
from vaest.windows import window_starts

log = logging.getLogger(__name__)

AUDIO = "audio"
FRAME_ORDER = ("face", "behavior")
METHODS = ("raav", "dcmmoe", "dcm-ref")
LATE_METHODS = ("dirichlet", "grid", "reference")
AUDIO_TOKEN_KEY = "audio-tokens"
N_TOKENS = 4
AUDIO_WIN_BASE = TimeBase(hop=2.0, win=4.0)


# ---------------------------------------------------------------------------------------------------------
# Reading modality runs
# ---------------------------------------------------------------------------------------------------------


def _check_runs(runs: dict[str, str | Path]) -> dict[str, Path]:
    if not runs:
        raise VaestError("fusion needs at least one modality run (--runs NAME=RUN)")
    out = {}
    for name, r in runs.items():
        p = Path(r)
        if not (p / "preds").is_dir():
            raise VaestError(f"{p}: run folder of '{name}' has no preds/ folder (train that modality first)")
        out[name] = p
    return out


def _run_info(run: Path) -> dict[str, Any]:
    try:
        return read_run_json(run)
    except VaestError:
        return {}


def frame_modalities(names: Iterable[str]) -> list[str]:
    """Frame modalities (all but audio), face and behavior first, then the others in name order."""
    names = [n for n in names if n != AUDIO]
    return [n for n in FRAME_ORDER if n in names] + sorted(n for n in names if n not in FRAME_ORDER)


# ---------------------------------------------------------------------------------------------------------
# Audio windows and their reliability
# ---------------------------------------------------------------------------------------------------------


@dataclass
class AudioWindows:
    """The audio tokens of one video: ``tokens`` (W, K, H), ``token_mask`` (W, K), ``ok`` (W,) reliable windows."""

    tokens: np.ndarray
    token_mask: np.ndarray
    ok: np.ndarray
    base: TimeBase = AUDIO_WIN_BASE


def _window_ok_from_features(features_root: Path | None, video: Video | None, starts: np.ndarray,
                             win: float) -> np.ndarray | None:
    """Fusion rule per window from the feature store's mouth / face / vad records (None when unavailable)."""
    if features_root is None or video is None:
        return None
    try:
        from vaest.features.audio import reliability_from_store
    except ImportError:  # pragma: no cover - audio features not installed
        return None
    store = FeatureStore(features_root)
    if not (store.has("mouth", video.id) or store.has("vad", video.id)):
        return None
    stats = reliability_from_store(store, video, starts, win=win)
    return np.asarray(stats.fuse_ok, dtype=bool)


def audio_windows(run: Path, video_id: str, track: Track, features_root: Path | None = None,
                  video: Video | None = None, with_va: bool = False) -> AudioWindows:
    """The 4 s audio windows of one video with their 4 one-second tokens and masks (see module docstring).

    ``with_va`` appends each second's audio prediction (2 columns) to its token, as the reference RAAV reads
    them (``audio_embedding`` + ``audio_prediction``)."""
    aw = _audio_windows(run, video_id, track, features_root, video)
    if not with_va:
        return aw
    store = FeatureStore(run)
    va = None
    if store.has(AUDIO_TOKEN_KEY, video_id):
        va = store.load(AUDIO_TOKEN_KEY, video_id).extras.get("va")
    return with_token_va(aw, va)


def with_token_va(aw: AudioWindows, va: np.ndarray | None) -> AudioWindows:
    """``aw`` with each token's audio prediction ``va`` (W, K, 2) appended (the reference RAAV's audio input:
    ``audio_embedding`` + ``audio_prediction``); zeros where ``va`` is missing or of another shape."""
    if va is None or np.shape(va) != aw.tokens.shape[:2] + (2,):
        va = np.zeros(aw.tokens.shape[:2] + (2,), np.float32)
    tok = np.concatenate([aw.tokens, np.nan_to_num(np.asarray(va, np.float32))], -1)
    return AudioWindows(tok, aw.token_mask, aw.ok, aw.base)


def _audio_windows(run: Path, video_id: str, track: Track, features_root: Path | None = None,
                   video: Video | None = None) -> AudioWindows:
    store = FeatureStore(run)
    if store.has(AUDIO_TOKEN_KEY, video_id):
        return windows_from_record(store.load(AUDIO_TOKEN_KEY, video_id), str(store.path(AUDIO_TOKEN_KEY, video_id)))
    return windows_from_track(track, features_root, video)


def windows_from_record(rec: FeatureRecord, where: str = "audio tokens") -> AudioWindows:
    """The :class:`AudioWindows` of an audio run's token record (``where`` names it in errors)."""
    tok = rec.extras.get("tokens")
    if tok is None:
        tok = np.asarray(rec.values, dtype=np.float32)
        if tok.ndim == 2:  # (W, K*H) flattened
            if tok.shape[1] % N_TOKENS:
                raise FeatureError(f"{where}: values of width {tok.shape[1]} are not {N_TOKENS} tokens")
            tok = tok.reshape(len(tok), N_TOKENS, -1)
    tok = np.asarray(tok, dtype=np.float32)
    if tok.ndim != 3:
        raise FeatureError(f"{where}: tokens of shape {tok.shape}, expected (windows, tokens, dim)")
    ok = np.asarray(rec.mask, dtype=bool)
    # per-token mask: an explicit token_mask, else the seconds that have audio (has_audio), else all
    tm = next((np.asarray(rec.extras[k], dtype=bool) for k in ("token_mask", "has_audio")
               if k in rec.extras and np.shape(rec.extras[k]) == tok.shape[:2]), np.ones(tok.shape[:2], bool))
    tm = tm & ok[:, None] & np.isfinite(tok).all(-1)
    return AudioWindows(tok, tm, ok, rec.base)


def windows_from_track(track: Track, features_root: Path | None = None, video: Video | None = None) -> AudioWindows:
    """Fallback without a token record: one token per second from the per-frame audio embedding."""
    emb = track.emb if track.emb is not None else track.va
    n = len(track)
    mids = frame_midpoints(n, track.fps)
    n_sec = max(1, int(math.ceil(n / track.fps - 1e-6)))
    sec = np.minimum((mids // 1.0).astype(np.int64), n_sec - 1)
    use = track.mask & np.isfinite(emb).all(1)
    acc = np.zeros((n_sec, emb.shape[1]), dtype=np.float64)
    cnt = np.zeros(n_sec, dtype=np.int64)
    np.add.at(acc, sec[use], emb[use])
    np.add.at(cnt, sec[use], 1)
    sec_tok = (acc / np.maximum(cnt, 1)[:, None]).astype(np.float32)
    hop, win = int(AUDIO_WIN_BASE.hop), int(AUDIO_WIN_BASE.win)
    starts = window_starts(n_sec, win, hop)
    W = len(starts)
    tokens = np.zeros((W, N_TOKENS, emb.shape[1]), dtype=np.float32)
    present = np.zeros((W, N_TOKENS), dtype=bool)
    for w, s in enumerate(starts):
        for k in range(N_TOKENS):
            j = s + k
            if j < n_sec and cnt[j] > 0:
                tokens[w, k] = sec_tok[j]
                present[w, k] = True
    ok = _window_ok_from_features(features_root, video, np.asarray(starts, float), AUDIO_WIN_BASE.win)
    if ok is None and "reliability" in track.extras:
        # per-frame reliability exported by the audio run: a window is kept when its frames average >= 0.5
        rel = np.nan_to_num(np.asarray(track.extras["reliability"], dtype=np.float64).reshape(-1))
        ok = np.array([rel[(mids >= s) & (mids < s + win)].mean() >= 0.5 if ((mids >= s) & (mids < s + win)).any()
                       else False for s in starts])
    if ok is None:
        ok = np.ones(W, dtype=bool)
    return AudioWindows(tokens, present & ok[:, None], ok, AUDIO_WIN_BASE)


def frame_window_index(n: int, fps: float, base: TimeBase, n_windows: int, slots: int = 2) -> np.ndarray:
    """For each frame, the windows whose span holds its midpoint: (n, slots) int64, -1 where fewer."""
    mids = frame_midpoints(n, fps)
    out = np.full((n, slots), -1, dtype=np.int64)
    if n_windows == 0:
        return out
    hi = np.floor((mids - base.start) / base.hop).astype(np.int64)  # last window starting at or before mid
    for j in range(slots):
        k = hi - j
        s = base.start + k * base.hop
        ok = (k >= 0) & (k < n_windows) & (mids >= s) & (mids < s + base.win)
        out[ok, j] = k[ok]
    return out


def covered_by(index: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """(n,) True where a frame lies in at least one window flagged ``ok`` (index from :func:`frame_window_index`)."""
    if len(ok) == 0:
        return np.zeros(len(index), dtype=bool)
    return ((index >= 0) & ok[np.clip(index, 0, None)]).any(1)


# ---------------------------------------------------------------------------------------------------------
# Fusion sequences
# ---------------------------------------------------------------------------------------------------------


class AudioTable:
    """All audio tokens of a set of videos; turns global window rows into per-batch token tensors."""

    def __init__(self, tokens: np.ndarray, mask: np.ndarray):
        self.tokens = torch.from_numpy(np.ascontiguousarray(tokens, dtype=np.float32))
        self.mask = torch.from_numpy(np.asarray(mask, dtype=bool))

    def resolve(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Replace ``audio_index`` (B, T, 2) global rows by batch rows and add ``audio_tokens`` (U, K, H) and
        ``audio_token_mask`` (U, K) for the U distinct windows the batch refers to."""
        idx = batch.get("audio_index")
        if idx is None:
            return batch
        idx = torch.as_tensor(idx)
        valid = idx >= 0
        uniq, inv = torch.unique(idx[valid], return_inverse=True)
        local = torch.full_like(idx, -1)
        local[valid] = inv
        out = dict(batch)
        u = uniq.cpu()
        out["audio_index"] = local
        out["audio_tokens"] = self.tokens[u].to(idx.device)
        out["audio_token_mask"] = self.mask[u].to(idx.device)
        return out


class _Resolved(nn.Module):
    """Inference adapter: resolves audio window rows of each batch before calling the fusion model."""

    def __init__(self, model: nn.Module, table: AudioTable):
        super().__init__()
        self.model = model
        self.table = table

    def forward(self, **batch: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model(**self.table.resolve(batch))


@dataclass
class FusionData:
    """Fusion inputs of a set of videos.

    Attributes:
        sequences: one per video (inputs on the frame grid, labels as targets).
        available: video id -> modality name -> (n,) bool real input (audio: present and reliable).
        dims: modality -> input width (H + 2).
        table: the audio tokens (RAAV with an audio run), else None.
        audio_dim: token width H (0 without audio tokens).
        split: video id -> split.
    """

    sequences: list[Sequence]
    available: dict[str, dict[str, np.ndarray]]
    dims: dict[str, int]
    table: AudioTable | None = None
    audio_dim: int = 0
    split: dict[str, str] = field(default_factory=dict)


def _modality_input(t: Track | None, n: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """``[emb, va]`` (n, width) float32 and mask (n,); zeros and all-False when the modality has no track."""
    if t is None:
        return np.zeros((n, width), dtype=np.float32), np.zeros(n, dtype=bool)
    parts = ([t.emb] if t.emb is not None else []) + [t.va]
    x = np.nan_to_num(np.concatenate(parts, 1, dtype=np.float32), copy=False)  # one (n, width) array, no copies
    if x.shape[1] != width:
        raise FeatureError(f"modality input width {x.shape[1]} differs from {width} in other videos of the run")
    return x, t.mask.copy()


def build_fusion_data(runs: dict[str, Path], videos: list[Video], method: str = "raav",
                      features_root: Path | None = None, crossfit: bool = False,
                      tracks_in: dict[str, dict[str, Track | None]] | None = None,
                      windows_in: dict[str, AudioWindows] | None = None,
                      widths_in: dict[str, int] | None = None,
                      audio_va: bool = False) -> FusionData:
    """Read the modality runs for ``videos`` and build the per-video fusion sequences (see module docstring).

    With ``crossfit``, train-split videos are read from a run's out-of-fold predictions (``RUN/crossfit``,
    see :mod:`vaest.tasks.crossfit`) where it has them. Videos that no frame modality covers are skipped with a
    warning.

    In memory (prediction): ``tracks_in`` (video id -> modality -> :class:`Track`), ``windows_in`` (video id ->
    :class:`AudioWindows`) and ``widths_in`` (modality -> input width, from the trained model) replace reading the
    run folders; ``runs`` then only names the modalities.
    """
    from vaest.tasks.crossfit import crossfit_source

    def source(run: Path, v: Video) -> Path:
        return crossfit_source(run, v.id) if crossfit and v.split == "train" else run

    if method not in METHODS:
        raise VaestError(f"unknown fusion method {method!r}; choose one of {', '.join(METHODS)}")
    names = frame_modalities(runs)
    if not names:
        raise VaestError("fusion needs at least one frame modality run (face or behavior), not only audio")
    if method == "dcm-ref" and AUDIO in runs:
        log.info("fusion dcm-ref: the official directed cross-modal model has no audio input; the audio run is not read")
        runs = {m: r for m, r in runs.items() if m != AUDIO}
    audio_run = runs.get(AUDIO)
    if audio_run is not None and features_root is None and tracks_in is None:
        feats = _run_info(audio_run).get("features")
        features_root = Path(feats) if isinstance(feats, str) and Path(feats).is_dir() else None
    tracks: dict[str, dict[str, Track | None]] = {}
    widths: dict[str, int] = dict(widths_in or {})
    n_oof: dict[str, int] = {m: 0 for m in runs}
    for v in track(videos, "read modality predictions"):
        if tracks_in is not None:
            src = dict(runs)
            tr = {m: tracks_in.get(v.id, {}).get(m) for m in runs}
        else:
            src = {m: source(r, v) for m, r in runs.items()}
            tr = {m: load_track(src[m], v.id) for m in runs}
        for m, r in runs.items():
            n_oof[m] += int(src[m] != r)
        if all(tr[m] is None for m in names):
            log.warning("%s: no frame-modality predictions in %s; skipped", v.id, ", ".join(map(str, runs.values())))
            continue
        tracks[v.id] = tr
        for m, t in tr.items():
            if t is not None and m not in widths:
                widths[m] = (t.emb.shape[1] if t.emb is not None else 0) + 2
    if crossfit:
        n_train = sum(1 for v in videos if v.split == "train" and v.id in tracks)
        for m in runs:
            if n_oof[m] < n_train:
                log.warning("fusion: %d of %d train videos of '%s' have no out-of-fold predictions (%s); the fusion "
                            "learns from that model's in-sample predictions there, which flatter it (train the "
                            "modality with --crossfit K)", n_train - n_oof[m], n_train, m, runs[m] / "crossfit")
            else:
                log.info("fusion: '%s' enters training through out-of-fold predictions (%d videos)", m, n_oof[m])
    seqs: list[Sequence] = []
    available: dict[str, dict[str, np.ndarray]] = {}
    tok_rows: list[np.ndarray] = []
    tok_masks: list[np.ndarray] = []
    offset = 0
    by_id = {v.id: v for v in videos}
    for vid in list(tracks):
        tr = tracks.pop(vid)  # a video's tracks are dropped once its inputs are built: one copy of the data, not two
        ref = next(tr[m] for m in names if tr[m] is not None)
        n, fps = len(ref), ref.fps
        for m, t in tr.items():
            if t is not None and len(t) != n:
                log.warning("%s: %s predictions have %d frames, %s has %d; aligned to %d", vid, m, len(t),
                            names[0], n, n)
                tr[m] = t.resized(n)
        inputs: dict[str, np.ndarray] = {}
        avail: dict[str, np.ndarray] = {}
        for m in names:
            inputs[m], inputs[f"{m}_mask"] = _modality_input(tr[m], n, widths[m])
            avail[m] = inputs[f"{m}_mask"]
        at = tr.get(AUDIO)
        if audio_run is not None and AUDIO in widths:
            if at is None:
                avail[AUDIO] = np.zeros(n, dtype=bool)
                if method == "raav":
                    inputs["audio_index"] = np.full((n, 2), -1, dtype=np.int64)
                else:
                    inputs[AUDIO], inputs["audio_mask"] = _modality_input(None, n, widths[AUDIO])
            else:
                aw = (windows_in[vid] if windows_in is not None and vid in windows_in else
                      audio_windows(source(audio_run, by_id[vid]), vid, at, features_root, by_id.get(vid),
                                    with_va=audio_va))
                index = frame_window_index(n, fps, aw.base, len(aw.tokens))
                avail[AUDIO] = at.mask & covered_by(index, aw.token_mask.any(1))
                if method == "raav":
                    inputs["audio_index"] = np.where(index >= 0, index + offset, -1)
                    tok_rows.append(aw.tokens)
                    tok_masks.append(aw.token_mask)
                    offset += len(aw.tokens)
                else:
                    inputs[AUDIO], _ = _modality_input(at, n, widths[AUDIO])
                    inputs["audio_mask"] = avail[AUDIO]
        v = by_id[vid]
        labels = v.labels_for(n) if v.has_labels else np.full((n, 2), np.nan, dtype=np.float32)
        seqs.append(Sequence(vid, inputs, labels.astype(np.float32), TimeBase.frames(fps), n, fps,
                             labels if v.has_labels else None))
        available[vid] = avail
    table = None
    audio_dim = 0
    if tok_rows:
        tokens = np.concatenate(tok_rows)
        table = AudioTable(tokens, np.concatenate(tok_masks))
        audio_dim = int(tokens.shape[-1])
    elif method == "raav" and audio_run is not None:
        for s in seqs:
            s.inputs.pop("audio_index", None)
    dims = {m: widths[m] for m in names}
    if method == "dcmmoe" and audio_run is not None and AUDIO in widths:
        dims[AUDIO] = widths[AUDIO]
    return FusionData(seqs, available, dims, table, audio_dim, {v.id: v.split for v in videos})


class FusionTask(SequenceTask):
    """:class:`~vaest.training.SequenceTask` over fusion sequences that also resolves audio window tokens."""

    def __init__(self, train: list[Sequence], val: list[Sequence], win: int, hop: int,
                 table: AudioTable | None = None, val_batch: int = 16, align_end: bool = False,
                 with_mask: bool = False):
        super().__init__(train, val, win, hop, val_batch, align_end=align_end, with_mask=with_mask)
        self.table = table

    def wrap(self, model: nn.Module) -> nn.Module:
        """The model as the windows' batches must call it (audio rows resolved when there is a table)."""
        return _Resolved(model, self.table) if self.table is not None else model

    def train_batches(self, rng: np.random.Generator, batch_size: int) -> Iterable[dict[str, torch.Tensor]]:
        for b in super().train_batches(rng, batch_size):
            yield self.table.resolve(b) if self.table is not None else b

    def predict_frames(self, model: nn.Module, seq: Sequence, device: str) -> dict[str, np.ndarray]:
        return super().predict_frames(self.wrap(model), seq, device)


# ---------------------------------------------------------------------------------------------------------
# Training and export
# ---------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------
# RAAV, reference form: one sample per 4 s audio window
# ---------------------------------------------------------------------------------------------------------


@dataclass
class WindowSample:
    """One reference RAAV sample: the frames ``frames`` (L,) of sequence ``seq`` covered by audio window ``row``
    (a global row of the audio table, -1 for a video without audio windows)."""

    seq: int
    row: int
    frames: np.ndarray


def window_samples(seqs: list[Sequence], n_frames_max: int = 400) -> list[WindowSample]:
    """Samples of one 4 s audio window each (the official fusion dataset: one item per audio window, with the
    frames that window covers). A frame belongs to every window holding its midpoint (``audio_index``); a video
    without audio windows is cut into runs of ``n_frames_max`` frames without audio."""
    out: list[WindowSample] = []
    for i, sq in enumerate(seqs):
        idx = sq.inputs.get("audio_index")
        rows = np.unique(idx[idx >= 0]) if idx is not None else np.zeros(0, np.int64)
        for r in rows:
            out.append(WindowSample(i, int(r), np.flatnonzero((idx == r).any(1))))
        covered = (idx >= 0).any(1) if idx is not None else np.zeros(sq.length, bool)
        rest = np.flatnonzero(~covered)
        for a in range(0, len(rest), n_frames_max):
            out.append(WindowSample(i, -1, rest[a : a + n_frames_max]))
    return out


class WindowFusionTask:
    """Training and validation of the reference RAAV on :func:`window_samples` (batches padded to the longest
    sample, ``frame_mask`` False on padding); validation predicts every frame (overlapping windows averaged,
    holes filled from the nearest frame), smooths it with ``val_smooth`` kernels (replicate edges, the official
    ``multimodal_framewise_v2_callback``) and scores CCC over all validation frames."""

    def __init__(self, train: list[Sequence], val: list[Sequence], modalities: Seq[str], table: AudioTable | None,
                 audio_dim: int, val_smooth: tuple[int, int] | None = (7, 13), val_batch: int = 16):
        self.train, self.val, self.modalities, self.table = train, val, list(modalities), table
        self.audio_dim, self.val_smooth, self.val_batch = audio_dim, val_smooth, val_batch
        self.samples = [w for w in window_samples(train)
                        if np.isfinite(train[w.seq].target[w.frames]).all(-1).any()]
        if train and not self.samples:
            raise VaestError("reference RAAV: no audio window of the training videos has a valid label")

    def batch(self, seqs: list[Sequence], items: list[WindowSample]) -> dict[str, torch.Tensor]:
        """Model inputs (and ``target``/``target_mask``) of a list of samples, padded to the longest."""
        L = max(1, max(len(w.frames) for w in items))
        B = len(items)
        out: dict[str, np.ndarray] = {"frame_mask": np.zeros((B, L), bool)}
        tgt = np.zeros((B, L, 2), np.float32)
        tmask = np.zeros((B, L), bool)
        ta = self.table.tokens.shape[1] if self.table is not None else N_TOKENS
        out[AUDIO] = np.zeros((B, ta, self.audio_dim), np.float32)
        out["audio_mask"] = np.zeros((B, ta), bool)
        for b, w in enumerate(items):
            sq, n = seqs[w.seq], len(w.frames)
            out["frame_mask"][b, :n] = True
            for m in self.modalities:
                x = sq.inputs[m]
                out.setdefault(m, np.zeros((B, L, x.shape[1]), np.float32))[b, :n] = x[w.frames]
                out.setdefault(f"{m}_mask", np.zeros((B, L), bool))[b, :n] = sq.inputs[f"{m}_mask"][w.frames]
            y = sq.target[w.frames]
            tgt[b, :n] = np.nan_to_num(y)
            tmask[b, :n] = np.isfinite(y).all(-1)
            if w.row >= 0 and self.table is not None:
                out[AUDIO][b] = self.table.tokens[w.row].numpy()
                out["audio_mask"][b] = self.table.mask[w.row].numpy()
        res = {k: torch.from_numpy(v) for k, v in out.items()}
        res["target"], res["target_mask"] = torch.from_numpy(tgt), torch.from_numpy(tmask)
        return res

    def train_batches(self, rng: np.random.Generator, batch_size: int) -> Iterable[dict[str, torch.Tensor]]:
        order = rng.permutation(len(self.samples))
        for i in range(0, len(order), batch_size):
            yield self.batch(self.train, [self.samples[j] for j in order[i : i + batch_size]])

    def predict(self, model: nn.Module, seq: Sequence, device: str = "cpu") -> dict[str, np.ndarray]:
        """Per-frame ``va`` (n, 2), ``emb`` (n, H), ``weights`` (n, M) of one sequence (windows averaged)."""
        items = window_samples([seq])
        sums: dict[str, np.ndarray] = {}
        cnt = np.zeros(seq.length)
        model.eval()
        with torch.no_grad():
            for i in range(0, len(items), self.val_batch):
                chunk = items[i : i + self.val_batch]
                b = {k: v.to(device) for k, v in self.batch([seq], chunk).items() if not k.startswith("target")}
                res = model(**b)
                for j, w in enumerate(chunk):
                    n = len(w.frames)
                    for k in ("va", "emb", "weights"):
                        v = res[k][j, :n].float().cpu().numpy()
                        sums.setdefault(k, np.zeros((seq.length, v.shape[1])))[w.frames] += v
                    cnt[w.frames] += 1
        ok = cnt > 0
        from vaest.timebase import fill_nearest

        return {k: fill_nearest((v / np.maximum(cnt, 1)[:, None]).astype(np.float32), ok) for k, v in sums.items()}

    def validate(self, model: nn.Module, device: str) -> dict[str, float]:
        from vaest.postprocess import REFERENCE_EDGE, smooth
        from vaest.training import concat_frame_ccc

        pairs = []
        for sq in self.val:
            if sq.frame_labels is None:
                continue
            va = self.predict(model, sq, device)["va"]
            if self.val_smooth:
                va = smooth(va, self.val_smooth, REFERENCE_EDGE)
            pairs.append((va, sq.frame_labels))
        return concat_frame_ccc(pairs)


def export_window_fusion(model: nn.Module, data: FusionData, out: Path, device: str = "cpu") -> None:
    """Write ``out/preds/<video>.npz`` of the reference RAAV for every sequence (raw, unsmoothed ``va``; extras
    ``weights`` (n, M)); mask = any modality available."""
    names = list(model.config.modalities)
    task = WindowFusionTask([], [], names, data.table, model.config.audio_dim)
    model.to(device).eval()
    for seq in track(data.sequences, f"export {out.name}"):
        res = task.predict(model, seq, device)
        avail = data.available[seq.id]
        save_predictions(out, seq.id, res["va"], seq.fps, emb=res.get("emb"),
                         mask=np.any(list(avail.values()), axis=0), extras={"weights": res["weights"]},
                         meta={"weight_names": names})


def default_train_config(method: str) -> TrainConfig:
    """Default optimisation per method: RAAV AdamW 5e-5, loss 0.7/0.3 CCC + 0.01 MSE; DCMMoE AdamW 1e-4, mean CCC
    + 0.01 MSE; ``dcm-ref`` as the official fusion training (AdamW 1e-4, per-window CCC, no MSE)."""
    if method == "raav":
        return TrainConfig(lr=5e-5, loss_weights=(0.7, 0.3), mse_weight=0.01)
    if method == "dcm-ref":
        return TrainConfig(lr=1e-4, loss_weights=(0.5, 0.5), mse_weight=0.0, loss="ccc-window")
    return TrainConfig(lr=1e-4, loss_weights=(0.5, 0.5), mse_weight=0.01)


def model_config(method: str, data: FusionData, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Model settings that follow from the data (modalities, input widths, priors, audio width) plus overrides."""
    from vaest.models.fusion import DEFAULT_EXPERT_PRIORS, DEFAULT_PRIORS

    names = [m for m in data.dims if m != AUDIO]
    cfg: dict[str, Any]
    if method == "raav":
        cfg = {"modalities": tuple(names), "in_dims": tuple(data.dims[m] for m in names),
               "priors": tuple(DEFAULT_PRIORS.get(m, 0.15) for m in names), "audio_dim": data.audio_dim}
    elif method == "dcm-ref":  # face queries over behavior keys/values (the official best run)
        q = "face" if "face" in names else names[0]
        kv = "behavior" if "behavior" in names else q
        cfg = {"input_dims": {m: data.dims[m] for m in names}, "q": q, "k": kv, "v": kv}
    else:
        mods = names + ([AUDIO] if AUDIO in data.dims else [])
        cfg = {"modalities": tuple(mods), "in_dims": tuple(data.dims[m] for m in mods),
               "priors": tuple(DEFAULT_EXPERT_PRIORS.get(m, 0.15) for m in (*mods, "cross"))}
    cfg.update(overrides or {})
    return cfg


def weight_names(model: nn.Module) -> list[str]:
    """Names of the columns of a fusion model's ``weights`` output."""
    if hasattr(model, "expert_names"):
        return list(model.expert_names)
    return list(getattr(model.config, "modalities", ()))  # none for dcm-ref (no weighting)


def export_fusion(model: nn.Module, data: FusionData, out: Path, win: int, hop: int, device: str = "cpu",
                  batch_size: int = 16, align_end: bool = False) -> None:
    """Write ``out/preds/<video>.npz`` for every sequence: ``va``, ``emb``, extras ``weights`` (n, M) (models
    that weight modalities) and, for RAAV, ``fallback`` (n,) frames where no frame modality was available;
    mask = any modality available. ``align_end``: windows as :func:`vaest.windows.window_starts`."""
    for seq, (va, mask, extras) in zip(track(data.sequences, f"export {out.name}"),
                                       fuse(model, data, win, hop, device, batch_size, align_end)):
        emb = extras.pop("emb", None)
        save_predictions(out, seq.id, va, seq.fps, emb=emb, mask=mask, extras=extras,
                         meta={"weight_names": weight_names(model)})


def fuse(model: nn.Module, data: FusionData, win: int, hop: int, device: str = "cpu", batch_size: int = 16,
         align_end: bool = False, with_emb: bool = True
         ) -> Iterator[tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]]:
    """A trained fusion model applied to each sequence of ``data``, in memory: per sequence ``va`` (n, 2),
    ``mask`` (n,) frames where any modality had input, and extras ``weights`` (n, M) (columns
    :func:`weight_names`; models that weight modalities), ``emb`` (n, H) when the model gives one and
    ``with_emb`` (the predictor does not need it: 19 MB on a 10-minute video), and for RAAV ``fallback`` (n,)
    frames without any frame modality. ``align_end``: windows as :func:`vaest.windows.window_starts`."""
    runner = _Resolved(model, data.table) if data.table is not None else model
    model.to(device).eval()
    for seq in data.sequences:
        keys = ("va", "emb", "weights") if with_emb else ("va", "weights")
        res = predict_sequence(runner, seq.inputs, win, hop, device, batch_size, keys=keys, align_end=align_end)
        avail = data.available[seq.id]
        frame_any = np.any([a for m, a in avail.items() if m != AUDIO], axis=0)
        any_mod = np.any(list(avail.values()), axis=0)
        extras = {"weights": res["weights"].astype(np.float32)} if "weights" in res else {}
        if "emb" in res:
            extras["emb"] = res["emb"]
        if getattr(model, "registry_name", "") == "raav":
            extras["fallback"] = ~frame_any
        yield res["va"], any_mod, extras


@dataclass
class FusionSettings:
    """Everything :func:`train_fusion` was run with (written to config.yaml)."""

    method: str = "raav"
    runs: dict[str, str] = field(default_factory=dict)
    corpus: str = ""
    win: int = 400
    hop: int = 150
    model: dict[str, Any] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    align_end: bool = False
    form: str = "vaest"
    val_smooth: tuple[int, int] | None = None
    preset: dict[str, Any] = field(default_factory=dict)


def train_fusion(runs: dict[str, str | Path], corpus_root: str | Path, out: str | Path, method: str = "raav",
                 train_cfg: TrainConfig | None = None, model_cfg: dict[str, Any] | None = None, win: int = 400,
                 hop: int = 150, features_root: str | Path | None = None, crossfit: bool = True,
                 align_end: bool = False, form: str = "vaest", val_smooth: tuple[int, int] | None = None,
                 preset: str | None = None) -> dict[str, float]:
    """Train a learned fusion model on the modality runs' train-split predictions and export every video.

    Where a modality run holds out-of-fold predictions (``RUN/crossfit``, written by ``vaest train <modality>
    --crossfit K``), the train split is read from them (``crossfit=False`` ignores them); validation always
    reads the full runs, as inference does.

    Args:
        runs: modality name (``face``, ``behavior``, ``audio``, ...) -> run folder.
        corpus_root: corpus with the labels (train / val splits).
        out: run folder to write (model.pt, preds/, run.json, metrics.json, config.yaml, versions.yaml).
        method: ``raav`` or ``dcmmoe``.
        train_cfg: optimisation (default :func:`default_train_config`).
        model_cfg: model settings overriding the defaults (e.g. ``d_model``).
        win, hop: frame windows (reference 400 / 150).
        features_root: feature store with ``mouth`` / ``vad`` records for audio reliability (default: the one
            recorded in the audio run).
        align_end: windows as :func:`vaest.windows.window_starts` with ``align_end`` (the official fusion data).
        form: RAAV only: ``vaest`` (:class:`~vaest.models.fusion.RAAVFusion` on frame windows ``win``/``hop``)
            or ``reference`` (:class:`~vaest.models.fusion.ReferenceRAAV` on samples of one 4 s audio window,
            audio tokens carrying the audio prediction, :class:`WindowFusionTask`).
        val_smooth: reference form: moving-average kernels (valence, arousal) applied to the validation
            predictions before the CCC that selects the model (official 7 / 13); None scores them raw.
        preset: the preset name the settings came from (``fusion-raav`` for raav, ``fusion-dcmmoe`` otherwise;
            recorded in run.json with its values; see :func:`dcmmoe_preset_kwargs`).
    Returns:
        validation CCC (valence, arousal, mean) of the exported predictions.
    """
    out = Path(out)
    runs_p = _check_runs(runs)
    corpus = load_corpus(corpus_root)
    cfg = train_cfg or default_train_config(method)
    if form not in ("vaest", "reference") or (form == "reference" and method != "raav"):
        raise VaestError(f"fusion form {form!r} is not available for method {method!r} (reference: raav only)")
    reference = form == "reference"
    data = build_fusion_data(runs_p, corpus.videos, method, Path(features_root) if features_root else None,
                             crossfit=crossfit, audio_va=reference)
    train = [s for s in data.sequences if data.split[s.id] == "train" and s.frame_labels is not None]
    val = [s for s in data.sequences if data.split[s.id] == "val" and s.frame_labels is not None]
    if not train or not val:
        raise VaestError(f"{corpus_root}: fusion needs labelled train and val videos with modality predictions "
                         f"(found {len(train)} train, {len(val)} val)")
    mcfg = model_config(method, data, model_cfg)
    from vaest.training import seed_everything

    seed_everything(cfg.seed)  # same seed, same initial weights: a rerun reproduces the run
    if reference:
        mcfg = {k: v for k, v in mcfg.items() if k in {f.name for f in dataclasses.fields(ReferenceRAAVConfig)}}
    model = create_model("raav-reference" if reference else method, **mcfg)
    prec = preset_record(get_preset("fusion-raav" if method == "raav" else "fusion-dcmmoe", preset))
    settings = FusionSettings(method, {k: str(v) for k, v in runs_p.items()}, str(corpus_root), win, hop, mcfg, cfg,
                              align_end, form, val_smooth, prec)
    write_run_info(out, f"vaest train fusion --method {method}", settings)
    log.info("fusion %s (%s): %d train / %d val videos, modalities %s", method, form, len(train), len(val),
             list(data.dims))
    task: Any = (WindowFusionTask(train, val, [m for m in data.dims if m != AUDIO], data.table, data.audio_dim,
                                  val_smooth) if reference
                 else FusionTask(train, val, win, hop, data.table, align_end=align_end, with_mask=accepts_mask(model)))
    fit(model, task, cfg, out, extra={"fusion": {"method": method, "win": win, "hop": hop, "form": form,
                                                 "align_end": align_end, "runs": settings.runs}})
    best, _ = load_checkpoint(out / "model.pt", cfg.device)
    if reference:
        export_window_fusion(best, data, out, cfg.device)
    else:
        export_fusion(best, data, out, win, hop, cfg.device, align_end=align_end)
    scores = evaluate_predictions(out, corpus, "val")
    metrics = {k: scores[k] for k in ("valence", "arousal", "mean")}
    atomic_write_json(out / "metrics.json", metrics)
    write_run_json(out, modality="fusion", method=method, corpus=str(corpus_root), features=settings.runs,
                   runs=settings.runs, win=win, hop=hop, weight_names=weight_names(best),
                   features_root=str(features_root) if features_root else None, crossfit=crossfit, form=form,
                   align_end=align_end, preset=prec)
    log.info("fusion %s validation CCC v %.4f a %.4f mean %.4f", method, *(metrics[k] for k in (*DIMS, "mean")))
    return metrics


def dcmmoe_preset_kwargs(file_cfg: dict[str, Any], flags: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments of :func:`train_fusion` for the directed cross-modal fusion under a preset.

    The preset (task ``fusion-dcmmoe``) is named by ``flags["preset"]`` or the file's ``preset:`` key;
    precedence: the method's :func:`default_train_config` < preset < config file (``method``, ``win``, ``hop``,
    ``align_end``, ``model:``, ``train:``) < flags (``method`` and any :class:`TrainConfig` field; None ignored).
    ``method: dcmmoe`` names the directed-fusion family: with a preset it becomes the preset's model
    (``dcm-ref`` for ``reference``); ``dcm-ref`` is always taken as given.
    Returns ``method``, ``train_cfg``, ``model_cfg``, ``win``, ``hop``, ``align_end`` and ``preset`` (its name).
    """
    from vaest.config import build
    from vaest.presets import resolve_preset

    p, f, g = resolve_preset("fusion-dcmmoe", file_cfg, flags)
    vals = dict(p.values) if p else {}
    t_names = {x.name for x in dataclasses.fields(TrainConfig)}
    top = {k: v for k, v in {**vals, **{k: f[k] for k in ("method", "win", "hop", "align_end") if k in f},
                             **{k: v for k, v in g.items() if k == "method" and v}}.items() if k not in t_names}
    method = top.get("method", "dcmmoe")
    if p is not None and method == "dcmmoe":  # "--method dcmmoe --preset reference": the family, the preset's model
        method = vals.get("method", method)
    cfg = build(TrainConfig, dataclasses.asdict(default_train_config(method)),
                {k: v for k, v in vals.items() if k in t_names}, f.get("train"),
                {k: v for k, v in g.items() if k in t_names})
    return {"method": method, "train_cfg": cfg, "model_cfg": {**top.get("model", {}), **(f.get("model") or {})},
            "win": int(top.get("win", 400)), "hop": int(top.get("hop", 150)),
            "align_end": bool(top.get("align_end", False)), "preset": p.name if p else None}


_REF = "src_fusion_model/"
register_preset(
    "fusion-dcmmoe", "reference",
    values={"method": "dcm-ref", "win": 400, "hop": 150, "align_end": True,
            "epochs": 100, "batch_size": 8, "lr": 1e-4, "weight_decay": 0.01, "scheduler": "plateau",
            "plateau_factor": 0.1, "plateau_patience": 5, "early_stop": 15, "loss": "ccc-window",
            "loss_weights": (0.5, 0.5), "mse_weight": 0.0, "grad_clip": 0.0, "ema": 0.0, "seed": 42},
    sources={"method": _REF + "model.py FusionModel (q face_features, k/v llm_multimodal_featuress: config_best.toml); "
                              "its sizes (DirectedFusionRefConfig defaults) from config_best.toml",
             "win": _REF + "config_best.toml window_length", "hop": _REF + "config_best.toml hop_length",
             "align_end": _REF + "dataset.py (last window aligned to the video's end)",
             "epochs": _REF + "config_best.toml", "batch_size": _REF + "config_best.toml",
             "lr": _REF + "config_best.toml", "weight_decay": _REF + "config_best.toml",
             "scheduler": _REF + "train.py (ReduceLROnPlateau, mode max)",
             "plateau_factor": _REF + "config_best.toml scheduler_factor",
             "plateau_patience": _REF + "config_best.toml scheduler_patience",
             "early_stop": _REF + "config_best.toml early_stop_patience",
             "loss": _REF + "losses.py CCCLoss (per window)", "loss_weights": _REF + "train.py (mean of the two)",
             "mse_weight": _REF + "losses.py (CCC only)", "grad_clip": _REF + "train.py (no clipping)",
             "ema": _REF + "train.py (no EMA)", "seed": _REF + "config_best.toml seed"},
    doc="The official directed cross-modal fusion (Team RAS, src_fusion_model): no experts, no audio.")
register_preset(
    "fusion-dcmmoe", "vaest",
    values={"method": "dcm-ref", "align_end": False},
    sources={"method": "docs/ablation.md: vaest's dcmmoe (mixture of experts) instead of dcm-ref stayed within the "
                       "seed spread, so the vaest preset keeps the official directed fusion (dcmmoe: --method "
                       "dcmmoe without a preset)",
             "align_end": "vaest (not ablated)"},
    doc="The official directed fusion with vaest's window layout; vaest's own DCMMoE (experts, prediction skip, "
        "audio, a gate; not in the official code) did not help in docs/ablation.md and is --method dcmmoe.")


def apply_fusion(fusion_run: str | Path, videos: list[Video], out: str | Path | None = None,
                 runs: dict[str, str | Path] | None = None, device: str = "cpu") -> None:
    """Run a trained fusion run (learned or late) on ``videos`` and write ``out/preds/<video>.npz``.

    Args:
        fusion_run: run folder written by :func:`train_fusion` or :func:`late_fusion`.
        videos: the videos to fuse (their modality predictions must exist in the modality runs).
        out: where to write predictions (default: the fusion run itself).
        runs: modality runs to read (default: those recorded in the fusion run's run.json).
    """
    fusion_run = Path(fusion_run)
    info = read_run_json(fusion_run)
    out = Path(out) if out is not None else fusion_run
    runs_p = _check_runs(runs or info.get("runs") or {})
    if info.get("modality") == "late":
        weights = {k: np.asarray(v, dtype=np.float64) for k, v in info["weights"].items()}
        _export_late(runs_p, weights, videos, out)
        return
    model, ck = load_checkpoint(fusion_run / "model.pt", device)
    method = ck["name"]
    fr = info.get("features_root")
    if method == "raav-reference":
        data = build_fusion_data(runs_p, videos, "raav", Path(fr) if fr else None, audio_va=True)
        export_window_fusion(model, data, out, device)
        return
    data = build_fusion_data(runs_p, videos, method, Path(fr) if fr else None)
    export_fusion(model, data, out, int(info.get("win", 400)), int(info.get("hop", 150)), device,
                  align_end=bool(info.get("align_end", False)))


# ---------------------------------------------------------------------------------------------------------
# Late fusion
# ---------------------------------------------------------------------------------------------------------


def _presence(preds: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Sets that count at each frame: those with real input; where none has, those with a finite value."""
    fin = np.isfinite(preds).all(-1)
    pres = np.asarray(present, dtype=bool) & fin
    none = ~pres.any(1)
    pres[none] = fin[none]
    return pres


def combine_sets(preds: np.ndarray, present: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted average of S prediction sets with weights renormalised over the sets present at each frame.

    Args:
        preds: (n, S, 2) predictions (NaN where a set has none).
        present: (n, S) bool, the set had real input at that frame.
        weights: (S, 2) per-set, per-dimension weights (>= 0).
    Returns:
        va (n, 2) (NaN where no set has a value) and the effective weights (n, S, 2) (each frame's sum 1 or 0).
        A frame where no set has real input uses every set with a finite value; a frame where the present sets
        all have weight 0 averages them equally.
    """
    preds = np.asarray(preds, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    pres = _presence(preds, present)
    eff = pres[..., None] * w[None]  # (n, S, 2)
    den = eff.sum(1, keepdims=True)
    eq = pres[..., None] / np.maximum(pres.sum(1), 1)[:, None, None]
    eff = np.where(den > 0, eff / np.where(den > 0, den, 1), eq)
    va = (eff * np.nan_to_num(preds)).sum(1)
    va[~pres.any(1)] = np.nan
    return va.astype(np.float32), eff.astype(np.float32)


def simplex_grid(n_sets: int, step: float = 0.05) -> np.ndarray:
    """All weight vectors on the simplex with entries that are multiples of ``step``: (K, n_sets)."""
    k = int(round(1.0 / step))
    if abs(k * step - 1.0) > 1e-9:
        raise ValueError(f"grid step {step} does not divide 1")
    rows = [c for c in itertools.product(range(k + 1), repeat=n_sets - 1) if sum(c) <= k]
    return np.array([list(c) + [k - sum(c)] for c in rows], dtype=np.float64) / k


def candidate_weights(n_sets: int, method: str = "dirichlet", n_samples: int = 8000, seed: int = 0,
                      step: float = 0.05) -> np.ndarray:
    """Weight vectors to try (K, n_sets): a simplex grid, or the uniform vector, each single set and
    ``n_samples`` seeded Dirichlet(1, ..., 1) samples (the same seed gives the same candidates)."""
    if method == "grid":
        if n_sets > 3:
            log.warning("grid search over %d sets tries %d weightings; consider --method dirichlet", n_sets,
                        math.comb(int(round(1 / step)) + n_sets - 1, n_sets - 1))
        return simplex_grid(n_sets, step)
    if method != "dirichlet":
        raise VaestError(f"unknown late-fusion method {method!r}; choose one of {', '.join(LATE_METHODS)}")
    rng = np.random.default_rng(seed)
    samples = rng.dirichlet(np.ones(n_sets), size=n_samples)
    return np.vstack([np.full((1, n_sets), 1.0 / n_sets), np.eye(n_sets), samples])


def _ccc_columns(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """CCC of each column of x (N, K) with y (N,) (population moments, as :func:`vaest.metrics.ccc`)."""
    mx, my = x.mean(0), y.mean()
    dx, dy = x - mx, y - my
    vx, vy = (dx**2).mean(0), (dy**2).mean()
    cov = (dx * dy[:, None]).mean(0)
    den = vx + vy + (mx - my) ** 2
    return np.where(den > 1e-15, 2 * cov / np.where(den > 1e-15, den, 1), 1.0)


def search_weights(preds: np.ndarray, present: np.ndarray, labels: np.ndarray, method: str = "dirichlet",
                   n_samples: int = 8000, seed: int = 0, step: float = 0.05,
                   chunk_elems: int = 20_000_000) -> tuple[np.ndarray, np.ndarray]:
    """Per dimension, the weights among :func:`candidate_weights` maximising CCC of :func:`combine_sets`.

    Args:
        preds: (N, S, 2) predictions of S sets on N concatenated validation frames.
        present: (N, S) bool real input; labels: (N, 2) with NaN invalid.
    Returns:
        weights (S, 2) and the best CCC per dimension (2,).
    """
    preds = np.asarray(preds, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    S = preds.shape[1]
    cands = candidate_weights(S, method, n_samples, seed, step)
    pres = _presence(preds, present)
    best_w = np.zeros((S, 2))
    best_s = np.full(2, -np.inf)
    for d in range(2):
        ok = np.isfinite(labels[:, d]) & pres.any(1)
        P = np.nan_to_num(preds[ok, :, d])
        M = pres[ok].astype(np.float64)
        y = labels[ok, d]
        if len(y) == 0:
            raise VaestError("late fusion: no validation frame has both a label and a prediction")
        eq = (M * P).sum(1) / np.maximum(M.sum(1), 1)
        step_k = max(1, chunk_elems // max(len(y), 1))
        for i in range(0, len(cands), step_k):
            W = cands[i : i + step_k]
            den = M @ W.T
            x = np.where(den > 0, ((M * P) @ W.T) / np.where(den > 0, den, 1), eq[:, None])
            s = _ccc_columns(x, y)
            j = int(np.argmax(s))
            if s[j] > best_s[d]:
                best_s[d], best_w[:, d] = s[j], W[j]
    return best_w, best_s


@dataclass
class SubsetResult:
    """One late-fusion subset of the reference search: its sets, weights (k, 2) (columns valence, arousal) and
    its CCC on the fitting frames (``valence``, ``arousal``, ``mean``)."""

    sets: tuple[str, ...]
    weights: np.ndarray
    ccc: dict[str, float]


def _ccc_eps(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """CCC of each column of x (N, K) with y (N,), the official formula (population moments, +1e-8)."""
    mx, my = x.mean(0), y.mean()
    cov = ((x - mx) * (y - my)[:, None]).mean(0)
    return 2.0 * cov / (x.var(0) + y.var() + (mx - my) ** 2 + 1e-8)


def reference_subset_search(preds: dict[str, np.ndarray], labels: np.ndarray, max_size: int = 3,
                            step: float = 0.05, n_samples: int = 8000, alpha: float = 1.0, seed: int = 42,
                            channelwise: bool = True) -> list[SubsetResult]:
    """The official late-fusion search (``scripts/predictions_fusion.py``) over prediction sets.

    Every subset of 1..``max_size`` sets (``itertools.combinations`` of the names in the given order) is fitted:
    one set alone weight 1; two sets a grid of step ``step`` (with ``channelwise`` every valence weight with
    every arousal weight); three or more ``n_samples`` Dirichlet(``alpha``) draws for valence paired with as
    many draws for arousal (one generator seeded ``seed`` shared by all subsets, in search order), then the
    uniform weights and each one-hot. A candidate is ranked by (mean CCC, arousal CCC, valence CCC); the first
    best wins.

    Args:
        preds: set name -> (N, 2) predictions on the fitting frames (every set has a value on each frame).
        labels: (N, 2), all finite.
    Returns:
        every subset's best, best first (ranked the same way).
    """
    names = list(preds)
    y = np.asarray(labels, dtype=np.float64)
    P = {m: np.asarray(preds[m], dtype=np.float64) for m in names}
    rng = np.random.default_rng(seed)
    out: list[SubsetResult] = []
    for k in range(1, min(max_size, len(names)) + 1):
        for subset in itertools.combinations(names, k):
            if k == 1:
                pairs = [(np.ones(1), np.ones(1))]
            elif k == 2:
                g = [np.array([x, 1.0 - x]) for x in np.arange(0.0, 1.0 + 1e-9, step)]
                pairs = [(a, b) for a in g for b in g] if channelwise else [(a, a) for a in g]
            else:
                wv = rng.dirichlet(np.full(k, alpha), size=n_samples)
                wa = rng.dirichlet(np.full(k, alpha), size=n_samples) if channelwise else wv
                pairs = list(zip(wv, wa)) + [(np.full(k, 1.0 / k), np.full(k, 1.0 / k))]
                pairs += [(np.eye(k)[i], np.eye(k)[i]) for i in range(k)]
            Wv = np.stack([a / a.sum() for a, _ in pairs])  # (K, k)
            Wa = np.stack([b / b.sum() for _, b in pairs])
            X = np.stack([P[m] for m in subset], 1)  # (N, k, 2)
            cv = _ccc_eps(X[:, :, 0] @ Wv.T, y[:, 0])
            ca = _ccc_eps(X[:, :, 1] @ Wa.T, y[:, 1])
            keys = [(0.5 * (v + a), a, v) for v, a in zip(cv, ca)]
            j = max(range(len(keys)), key=lambda i: (keys[i], -i))
            out.append(SubsetResult(subset, np.stack([Wv[j], Wa[j]], 1),
                                    {"valence": float(cv[j]), "arousal": float(ca[j]), "mean": float(keys[j][0])}))
    out.sort(key=lambda r: (r.ccc["mean"], r.ccc["arousal"], r.ccc["valence"]), reverse=True)
    return out


def _late_inputs(runs: dict[str, Path], video: Video) -> tuple[np.ndarray, np.ndarray, float] | None:
    """(n, S, 2) predictions, (n, S) presence and fps of one video over the sets (None when no set has it)."""
    return stack_tracks({m: load_track(r, video.id) for m, r in runs.items()})


def stack_tracks(tr: dict[str, Track | None]) -> tuple[np.ndarray, np.ndarray, float] | None:
    """(n, S, 2) predictions, (n, S) presence and fps of the sets ``tr`` (in its order; None when all are None)."""
    ref = next((t for t in tr.values() if t is not None), None)
    if ref is None:
        return None
    n = len(ref)
    P = np.full((n, len(tr), 2), np.nan, dtype=np.float32)
    M = np.zeros((n, len(tr)), dtype=bool)
    for i, (m, t) in enumerate(tr.items()):
        if t is None:
            continue
        t = t.resized(n)
        P[:, i] = t.va
        M[:, i] = t.mask
    return P, M, ref.fps


def _export_late(runs: dict[str, Path], weights: dict[str, np.ndarray], videos: list[Video], out: Path) -> None:
    names = list(runs)
    W = np.stack([np.asarray(weights[m], dtype=np.float64) for m in names])
    for v in track(videos, f"late fusion {out.name}"):
        got = _late_inputs(runs, v)
        if got is None:
            log.warning("%s: no predictions in any of the runs; skipped", v.id)
            continue
        P, M, fps = got
        va, eff = late_combine(P, M, W)
        save_predictions(out, v.id, va, fps, mask=M.any(1), extras={"weights": eff},
                         meta={"weight_names": names})


def late_combine(P: np.ndarray, M: np.ndarray, W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Late fusion of one video: :func:`combine_sets` with frames no set has filled from the nearest fused frame.
    Returns va (n, 2) and effective weights (n, S, 2)."""
    va, eff = combine_sets(P, M, W)
    ok = np.isfinite(va).all(1)
    if not ok.all() and ok.any():
        from vaest.timebase import fill_nearest

        va = fill_nearest(va, ok)
    return va, eff


def late_fusion(runs: dict[str, str | Path], corpus_root: str | Path, out: str | Path, method: str = "dirichlet",
                n_samples: int = 8000, seed: int = 0, step: float = 0.05,
                preset: str | None = None) -> dict[str, Any]:
    """Search per-dimension late-fusion weights on the validation split and write a run folder.

    Args:
        runs: set name -> run folder (modality or fusion runs).
        corpus_root: corpus with validation labels.
        out: run folder: preds/ for every video of every split (extras ``weights`` (n, S, 2), the effective
            per-frame weights), run.json (``modality: "late"``, ``weights`` {set: [w_valence, w_arousal]}),
            metrics.json, config.yaml, versions.yaml.
        method: ``dirichlet`` (``n_samples`` seeded samples), ``grid`` (simplex step ``step``) or ``reference``
            (:func:`reference_subset_search`: the best subset of 1-3 sets, fitted on the validation frames every
            set predicts, as the official script with its default ``--fit-split val``; sets outside the subset
            get weight 0; run.json adds ``subset`` and ``leaderboard``).
        preset: the preset name the settings came from (recorded in run.json).
    Returns:
        {"weights": {set: [w_v, w_a]}, "metrics": validation CCC}.
    """
    out = Path(out)
    runs_p = _check_runs(runs)
    corpus = load_corpus(corpus_root)
    if method not in LATE_METHODS:
        raise VaestError(f"unknown late-fusion method {method!r}; choose one of {', '.join(LATE_METHODS)}")
    settings = {"method": method, "runs": {k: str(v) for k, v in runs_p.items()}, "corpus": str(corpus_root),
                "n_samples": n_samples, "seed": seed, "step": step, "preset": preset}
    write_run_info(out, f"vaest train late --method {method}", settings)
    Ps, Ms, Ys = [], [], []
    for v in corpus.split("val"):
        if not v.has_labels:
            continue
        got = _late_inputs(runs_p, v)
        if got is None:
            continue
        P, M, _ = got
        Ps.append(P)
        Ms.append(M)
        Ys.append(v.labels_for(len(P)))
    if not Ps:
        raise VaestError(f"{corpus_root}: no labelled validation video has predictions in the runs")
    extra: dict[str, Any] = {}
    if method == "reference":
        P, M, Y = np.concatenate(Ps), np.concatenate(Ms), np.concatenate(Ys)
        ok = M.all(1) & np.isfinite(P).all((1, 2)) & np.isfinite(Y).all(1)  # frames every set predicts
        if not ok.any():
            raise VaestError(f"{corpus_root}: no labelled validation frame has a prediction from every run")
        board = reference_subset_search({m: P[ok, i] for i, m in enumerate(runs_p)}, Y[ok], step=step,
                                        n_samples=n_samples, seed=seed)
        W = np.zeros((len(runs_p), 2))
        for i, m in enumerate(board[0].sets):
            W[list(runs_p).index(m)] = board[0].weights[i]
        best = np.array([board[0].ccc["valence"], board[0].ccc["arousal"]])
        extra["subset"] = list(board[0].sets)
        extra["leaderboard"] = [{"sets": list(r.sets), "weights": r.weights.tolist(), **r.ccc} for r in board[:30]]
    else:
        W, best = search_weights(np.concatenate(Ps), np.concatenate(Ms), np.concatenate(Ys), method, n_samples,
                                 seed, step)
    weights = {m: [float(W[i, 0]), float(W[i, 1])] for i, m in enumerate(runs_p)}
    log.info("late fusion weights (valence, arousal): %s", {m: [round(x, 3) for x in w] for m, w in weights.items()})
    _export_late(runs_p, {m: np.asarray(w) for m, w in weights.items()}, corpus.videos, out)
    scores = evaluate_predictions(out, corpus, "val")
    metrics = {k: scores[k] for k in ("valence", "arousal", "mean")}
    atomic_write_json(out / "metrics.json", metrics)
    write_run_json(out, modality="late", method=method, corpus=str(corpus_root), features=settings["runs"],
                   runs=settings["runs"], weights=weights, weight_names=list(runs_p),
                   search_ccc={"valence": float(best[0]), "arousal": float(best[1])},
                   preset=preset_record(get_preset("late", preset)), **extra)
    return {"weights": weights, "metrics": metrics}


# ---------------------------------------------------------------------------------------------------------
# Presets (``--preset``): RAAV and late fusion
# ---------------------------------------------------------------------------------------------------------

_MM = "src_audio_and_fusion/configs/mm_cfg_va_s2s.yaml"
_MMMODEL = "src_audio_and_fusion/src/fusion/models/multimodal_fusion_model.py"
_MMDATA = "src_audio_and_fusion/src/fusion/data/abaw_mm_dataset.py"
_LATE = "src_audio_and_fusion/scripts/predictions_fusion.py"

REFERENCE_RAAV: dict[str, tuple[Any, str]] = {
    "form": ("reference", f"{_MMMODEL} MultimodalFusionModelV4; {_MMDATA} (one item per audio window)"),
    "crossfit": (False, f"{_MM} data.params (the modality features of every split come from the full models)"),
    "val_smooth": ((7, 13), f"{_MM} multimodal_framewise_v2_callback smoothing_valence/arousal_param"),
    "hidden": (256, f"{_MM} model.params.hidden"),
    "heads": (4, f"{_MM} model.params.num_heads"),
    "temporal_layers": (1, f"{_MM} model.params.num_temporal_layers"),
    "n_latents": (4, f"{_MM} model.params.num_audio_latents"),
    "dropout": (0.1, f"{_MM} model.params.dropout"),
    "epochs": (50, f"{_MM} train.params.epochs"),
    "batch_size": (8, "src_audio_and_fusion/src/fusion/data/abaw_mm_datamodule.py batch_size default"),
    "lr": (5e-5, f"{_MM} optimizer.params.lr"),
    "weight_decay": (0.01, f"{_MM} optimizer.params.weight_decay"),
    "grad_clip": (1.0, f"{_MM} train.params.grad_clip_norm"),
    "early_stop": (6, f"{_MM} early_stopping_callback.patience"),
    "ema": (None, f"{_MM} (no ema_callback)"),
    "plateau_patience": (10**9, f"{_MM} (no scheduler block: constant learning rate)"),
    "loss_weights": ((0.7, 0.3), f"{_MM} loss.params v_weight, a_weight"),
    "mse_weight": (0.01, f"{_MM} loss.params.mse_weight"),
    "loss_min_valid": (4, "src_audio_and_fusion/src/losses/ccc_mse_mm_loss.py CCCMSEMMLoss min_valid"),
}

REFERENCE_LATE: dict[str, tuple[Any, str]] = {
    "method": ("reference", f"{_LATE} search_for_subset (subsets of 1-3 sets, grid / paired Dirichlet)"),
    "step": (0.05, f"{_LATE} --pair-grid-step"),
    "n_samples": (8000, "src_audio_and_fusion/README.md step 10 --dirichlet-samples 8000 (script default 5000)"),
    "seed": (42, f"{_LATE} --seed default"),
}

FUSION_SETTINGS_KEYS = ("form", "val_smooth", "win", "hop", "crossfit")


def split_fusion_preset(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Split a flat fusion preset into (TrainConfig fields, model settings, fusion settings ``form``,
    ``val_smooth``, ``win``, ``hop``, ``crossfit``). An explicit None (e.g. ``ema``) is kept as a value."""
    train_keys = {f.name for f in dataclasses.fields(TrainConfig)}
    tr = {k: v for k, v in values.items() if k in train_keys}
    st = {k: v for k, v in values.items() if k in FUSION_SETTINGS_KEYS}
    md = {k: v for k, v in values.items() if k not in train_keys and k not in FUSION_SETTINGS_KEYS}
    return tr, md, st


def raav_preset_kwargs(file_cfg: dict[str, Any], flags: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments of :func:`train_fusion` for RAAV under a preset (task ``fusion-raav``), the twin of
    :func:`dcmmoe_preset_kwargs`. The preset is named by ``flags["preset"]`` or the file's ``preset:`` key;
    precedence: :func:`default_train_config` < preset < config file (``form``, ``val_smooth``, ``win``, ``hop``,
    ``crossfit``, ``model:``, ``train:``) < flags (any :class:`TrainConfig` field; None ignored)."""
    from vaest.config import build
    from vaest.presets import resolve_preset

    p, f, g = resolve_preset("fusion-raav", file_cfg, flags)
    p_train, p_model, p_set = split_fusion_preset(p.values if p else {})
    p_set.update({k: f[k] for k in ("form", "val_smooth", "win", "hop", "crossfit") if f.get(k) is not None})
    t_names = {x.name for x in dataclasses.fields(TrainConfig)}
    cfg = build(TrainConfig, dataclasses.asdict(default_train_config("raav")), p_train, f.get("train"),
                {k: v for k, v in g.items() if k in t_names})
    smooth = p_set.get("val_smooth")
    return {"method": "raav", "train_cfg": cfg, "model_cfg": {**p_model, **(f.get("model") or {})},
            "win": int(p_set.get("win", 400)), "hop": int(p_set.get("hop", 150)),
            "form": str(p_set.get("form", "vaest")),
            "val_smooth": tuple(int(k) for k in smooth) if smooth else None, "preset": p.name if p else None,
            "crossfit": bool(p_set.get("crossfit", True))}


def _register_presets() -> None:
    register_preset("fusion-raav", "reference", {k: v for k, (v, _) in REFERENCE_RAAV.items()},
                    {k: src for k, (_, src) in REFERENCE_RAAV.items()},
                    "the official RAAV (MultimodalFusionModelV4) on samples of one 4 s audio window")
    register_preset("fusion-raav", "vaest", {"form": "vaest", "pred_skip": True, "gate_hidden": 64},
                    {"form": "vaest RAAVFusion (frame windows 400/150, audio windows by frame index)",
                     "pred_skip": "vaest prediction skip (docs/reference-audio-fusion.md)",
                     "gate_hidden": "vaest shared gate"},
                    "vaest's RAAV: frame windows, shared gate, prediction skip")
    register_preset("late", "reference", {k: v for k, (v, _) in REFERENCE_LATE.items()},
                    {k: src for k, (_, src) in REFERENCE_LATE.items()},
                    "the official late-fusion subset search, fitted on the validation split (--fit-split val)")
    register_preset("late", "vaest", {"method": "dirichlet", "n_samples": 8000, "seed": 0},
                    {k: "vaest: per-dimension weights over all sets, renormalised where a set is missing"
                     for k in ("method", "n_samples", "seed")},
                    "vaest's late fusion: one weighting of all sets")


_register_presets()
