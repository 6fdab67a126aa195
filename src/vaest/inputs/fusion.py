"""Fusion inputs of a set of videos, and a trained fusion model applied to them (training and applying alike).

Inputs are the modality tracks of each video (:class:`~vaest.inference.Track`: per-frame ``va`` (n, 2),
``mask`` (frames where the modality had real input) and ``emb`` (n, H)), read from the modality run folders
(``preds/<video>.npz``; train videos from the out-of-fold predictions ``RUN/crossfit`` where asked) or handed
over in memory by the predictor. Everything meets on the video's frame grid: :func:`build_fusion_data` builds one
:class:`~vaest.sequences.Sequence` per video whose inputs are, for every frame modality m (all but ``audio``),
``m`` = ``[emb, va]`` (n, H+2) and ``m_mask`` (n,). Audio enters in one of two forms:

- RAAV: windows of 4 one-second tokens (:mod:`vaest.inputs.audio_windows`); each frame refers to the (up to two)
  windows covering it by a global row index (``audio_index`` (n, 2)); :class:`AudioTable` turns those rows into
  the batch's ``audio_tokens`` / ``audio_token_mask``.
- DCMMoE: per-frame audio ``[emb, va]`` with mask = audio input present and covered by a reliable window.
- ``dcm-ref`` (the official directed cross-modal model): no audio (an audio run is ignored).

Frames where a modality has no real input are masked, never zero-filled as if real.

Memory: a frame modality's input is a :class:`~vaest.features.store.RowView` over the track's ``emb`` left in
the run folder (``preds/<video>.npz`` is uncompressed, :func:`vaest.inference.load_track`) and its ``va``: a
training window or batch reads its rows, so the 1 KB per frame of a 256-d embedding is never held for the
corpus. Held per frame: ``va`` (8 B per modality), masks (1 B each), labels (target and frame labels, 16 B) and
RAAV's ``audio_index`` (16 B). The audio tokens (:class:`AudioTable`) stay in memory: 4 tokens of H (+2) floats
per 4 s window every 2 s, ~2 KB per second of audio at H = 256 (~200 MB for Aff-Wild2's 27 hours, against
~6 GB of frame inputs read whole before).

:func:`fuse` applies a fusion model on frame windows; the reference RAAV (one sample per 4 s audio window,
:func:`window_samples`) is applied by :func:`predict_by_window`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence as Seq

import numpy as np
import torch
from torch import nn

from vaest.corpus import Video
from vaest.errors import VaestError
from vaest.features.store import RowView
from vaest.inference import Track, crossfit_source, load_track, read_run_json
from vaest.inputs.audio_windows import (N_TOKENS, AudioWindows, audio_windows, covered_by,
                                        frame_window_index)
from vaest.progress import track
from vaest.sequences import Sequence, predict_sequence
from vaest.timebase import TimeBase, fill_nearest

log = logging.getLogger(__name__)

AUDIO = "audio"
FRAME_ORDER = ("face", "behavior")
METHODS = ("raav", "dcmmoe", "dcm-ref")



def check_runs(runs: dict[str, str | Path]) -> dict[str, Path]:
    """The run folders by name, each checked to hold a ``preds/`` folder (VaestError naming the run otherwise)."""
    if not runs:
        raise VaestError("fusion needs at least one modality run (--runs NAME=RUN)")
    out = {}
    for name, r in runs.items():
        p = Path(r)
        if not (p / "preds").is_dir():
            raise VaestError(f"{p}: run folder of '{name}' has no preds/ folder (train that modality first)")
        out[name] = p
    return out


def frame_modalities(names: Iterable[str]) -> list[str]:
    """Frame modalities (all but audio), face and behavior first, then the others in name order."""
    names = [n for n in names if n != AUDIO]
    return [n for n in FRAME_ORDER if n in names] + sorted(n for n in names if n not in FRAME_ORDER)



def _run_info(run: Path) -> dict[str, Any]:
    try:
        return read_run_json(run)
    except VaestError:
        return {}



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



class ResolvedAudio(nn.Module):
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



def finite(x: np.ndarray) -> np.ndarray:
    """NaN -> 0 and +-inf -> the largest float32 (:func:`numpy.nan_to_num`), in place: fusion's input rule."""
    return np.nan_to_num(x, copy=False)


def _fit(mask: np.ndarray, n: int) -> np.ndarray:
    """A (m,) bool mask cut or padded (False) to ``n``."""
    out = np.zeros(n, dtype=bool)
    k = min(n, len(mask))
    out[:k] = mask[:k]
    return out


def _modality_input(t: Track | None, n: int, width: int) -> tuple[RowView, np.ndarray]:
    """``[emb, va]`` (n, width) float32 with NaN -> 0 (:func:`finite`) and mask (n,) of a track of any length
    (cut, or zeros and False past its end: what :meth:`~vaest.inference.Track.resized` pads, made finite); a
    :class:`~vaest.features.store.RowView`, so a stored ``emb`` is read by the rows a window asks for. Zeros and
    all-False (and no memory) when the modality has no track."""
    if t is None:
        return RowView([], n, width, finite), np.zeros(n, dtype=bool)
    parts = ([t.emb] if t.emb is not None else []) + [t.va]
    return RowView(parts, n, width, finite), _fit(t.mask, n)



def build_fusion_data(runs: dict[str, Path], videos: list[Video], method: str = "raav",
                      features_root: Path | None = None, crossfit: bool = False,
                      tracks_in: dict[str, dict[str, Track | None]] | None = None,
                      windows_in: dict[str, AudioWindows] | None = None,
                      widths_in: dict[str, int] | None = None,
                      audio_va: bool = False) -> FusionData:
    """Read the modality runs for ``videos`` and build the per-video fusion sequences (see module docstring).

    With ``crossfit``, train-split videos are read from a run's out-of-fold predictions (``RUN/crossfit``,
    :func:`vaest.inference.crossfit_source`) where it has them. Videos that no frame modality covers are skipped with a
    warning.

    In memory (prediction): ``tracks_in`` (video id -> modality -> :class:`Track`), ``windows_in`` (video id ->
    :class:`AudioWindows`) and ``widths_in`` (modality -> input width, from the trained model) replace reading the
    run folders; ``runs`` then only names the modalities.
    """

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
        inputs: dict[str, Any] = {}
        avail: dict[str, np.ndarray] = {}
        for m in names:  # the input's RowView cuts or pads a track of another length to n itself
            inputs[m], inputs[f"{m}_mask"] = _modality_input(tr[m], n, widths[m])
            avail[m] = inputs[f"{m}_mask"]
        at = tr.get(AUDIO)
        a_in = at
        if at is not None and len(at) != n:
            at = at.resized(n)  # its emb read whole for this video's windows (the audio tokens are built here)
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
                    inputs[AUDIO], _ = _modality_input(a_in, n, widths[AUDIO])
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


def window_batch(seqs: list[Sequence], items: list[WindowSample], modalities: Seq[str], table: AudioTable | None,
                 audio_dim: int) -> dict[str, torch.Tensor]:
    """Model inputs of the reference RAAV (and ``target``/``target_mask``) of a list of :func:`window_samples`,
    padded to the longest (``frame_mask`` False on padding)."""
    L = max(1, max(len(w.frames) for w in items))
    B = len(items)
    out: dict[str, np.ndarray] = {"frame_mask": np.zeros((B, L), bool)}
    tgt = np.zeros((B, L, 2), np.float32)
    tmask = np.zeros((B, L), bool)
    ta = table.tokens.shape[1] if table is not None else N_TOKENS
    out[AUDIO] = np.zeros((B, ta, audio_dim), np.float32)
    out["audio_mask"] = np.zeros((B, ta), bool)
    for b, w in enumerate(items):
        sq, n = seqs[w.seq], len(w.frames)
        out["frame_mask"][b, :n] = True
        for m in modalities:
            x = sq.inputs[m]
            out.setdefault(m, np.zeros((B, L, x.shape[1]), np.float32))[b, :n] = x[w.frames]
            out.setdefault(f"{m}_mask", np.zeros((B, L), bool))[b, :n] = sq.inputs[f"{m}_mask"][w.frames]
        y = sq.target[w.frames]
        tgt[b, :n] = np.nan_to_num(y)
        tmask[b, :n] = np.isfinite(y).all(-1)
        if w.row >= 0 and table is not None:
            out[AUDIO][b] = table.tokens[w.row].numpy()
            out["audio_mask"][b] = table.mask[w.row].numpy()
    res = {k: torch.from_numpy(v) for k, v in out.items()}
    res["target"], res["target_mask"] = torch.from_numpy(tgt), torch.from_numpy(tmask)
    return res


def predict_by_window(model: nn.Module, seq: Sequence, modalities: Seq[str], table: AudioTable | None, audio_dim: int,
                      device: str = "cpu", batch_size: int = 16) -> dict[str, np.ndarray]:
    """The reference RAAV applied to one sequence, one sample per 4 s audio window: per-frame ``va`` (n, 2),
    ``emb`` (n, H), ``weights`` (n, M) (overlapping windows averaged, frames no window covers filled from the
    nearest covered frame)."""
    items = window_samples([seq])
    sums: dict[str, np.ndarray] = {}
    cnt = np.zeros(seq.length)
    model.eval()
    with torch.no_grad():
        for i in range(0, len(items), batch_size):
            chunk = items[i : i + batch_size]
            inputs = window_batch([seq], chunk, modalities, table, audio_dim)
            b = {k: v.to(device) for k, v in inputs.items() if not k.startswith("target")}
            res = model(**b)
            for j, w in enumerate(chunk):
                n = len(w.frames)
                for k in ("va", "emb", "weights"):
                    v = res[k][j, :n].float().cpu().numpy()
                    sums.setdefault(k, np.zeros((seq.length, v.shape[1])))[w.frames] += v
                cnt[w.frames] += 1
    ok = cnt > 0
    return {k: fill_nearest((v / np.maximum(cnt, 1)[:, None]).astype(np.float32), ok) for k, v in sums.items()}


def weight_names(model: nn.Module) -> list[str]:
    """Names of the columns of a fusion model's ``weights`` output."""
    if hasattr(model, "expert_names"):
        return list(model.expert_names)
    return list(getattr(model.config, "modalities", ()))  # none for dcm-ref (no weighting)



def fuse(model: nn.Module, data: FusionData, win: int, hop: int, device: str = "cpu", batch_size: int = 16,
         align_end: bool = False, with_emb: bool = True
         ) -> Iterator[tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]]:
    """A trained fusion model applied to each sequence of ``data``, in memory: per sequence ``va`` (n, 2),
    ``mask`` (n,) frames where any modality had input, and extras ``weights`` (n, M) (columns
    :func:`weight_names`; models that weight modalities), ``emb`` (n, H) when the model gives one and
    ``with_emb`` (the predictor does not need it: 19 MB on a 10-minute video), and for RAAV ``fallback`` (n,)
    frames without any frame modality. ``align_end``: windows as :func:`vaest.windows.window_starts`."""
    runner = ResolvedAudio(model, data.table) if data.table is not None else model
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
