"""End to end: trained runs applied to new media (``vaest predict``) and the whole method on a synthetic corpus
(``vaest demo``).

A *model bundle* is a folder with ``bundle.json``: the run folders of each modality, the fusion run, the
post-processing kernels and the extractors they need (paths relative to the bundle). ``vaest demo`` writes one
(``OUT/model``); ``vaest predict --model BUNDLE`` reads it. A single run folder (``run.json``) also works as a
model: its modality alone is applied. With no model, the zero-shot face path maps the offline FER network's
expression probabilities to valence/arousal on the circumplex (:func:`vaest.features.face.zero_shot_va`), so a
fresh machine gives a meaningful curve; audio-only files then get a loudness-based arousal heuristic (documented
in :func:`zero_shot_audio`) and no valence.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vaest.corpus import Corpus, Video
from vaest.errors import VaestError
from vaest.features.store import FeatureStore
from vaest.inference import load_predictions, read_run_json, run_finished, save_predictions
from vaest.io import atomic_write_json, atomic_write_text
from vaest.postprocess import REFERENCE_KERNELS, postprocess
from vaest.zeroshot import zero_shot_audio

log = logging.getLogger(__name__)

MODALITIES = ("face", "audio", "behavior")
BUNDLE_FILE = "bundle.json"


# ---------------------------------------------------------------------------------------------------------
# Extraction of every modality in one decoding pass
# ---------------------------------------------------------------------------------------------------------


def default_extractors(face_encoder: str = "fer", audio_encoder: str = "lmfb", behavior: bool = True,
                       audio: bool = True, face: bool = True, device: str = "cpu", mouth: bool = True) -> list:
    """The offline default extractors: facetrack, face-<encoder>, mouth, behavior-desc, audio-<encoder>, vad."""
    from vaest.features.base import create_extractor

    ex = []
    if face or behavior or (mouth and audio):
        ex.append(create_extractor("facetrack"))
    if face:
        ex.append(create_extractor("face", encoder=face_encoder, device=device))
    if mouth and (face or audio):
        ex.append(create_extractor("mouth"))
    if behavior:
        ex.append(create_extractor("behavior-desc"))
    if audio:
        ex.append(create_extractor(f"audio-{audio_encoder}"))
        ex.append(create_extractor("vad"))
    return ex


def extract_all(videos: Sequence[Video], store: FeatureStore, extractors: list | None = None,
                engine: str = "local", address: str | None = None, num_workers: int | None = None,
                file_timeout: float | None = None):
    """Extract all default modalities for ``videos`` (frames decoded once per media file); returns the report."""
    from vaest.scale import run_extraction

    return run_extraction(store, extractors or default_extractors(), list(videos), engine=engine, address=address,
                          num_workers=num_workers, file_timeout=file_timeout)


# ---------------------------------------------------------------------------------------------------------
# Applying trained modality runs to new videos
# ---------------------------------------------------------------------------------------------------------


def _checkpoint(run: Path, device: str):
    from vaest.models import load_checkpoint

    return load_checkpoint(Path(run) / "model.pt", device)


def apply_face(run: str | Path, store: FeatureStore, videos: Sequence[Video], out: str | Path,
               device: str = "cpu") -> list[str]:
    """Per-frame predictions of a face run for ``videos`` (features in ``store``) into run folder ``out``.

    Returns the ids that had no face features (nothing written for them).
    """
    from vaest.tasks.face import apply_norm, load_face_sequences
    from vaest.training import predict_sequence

    model, ck = _checkpoint(Path(run), device)
    encoder = ck["inputs"]["store_key"].split("face-", 1)[1]
    motion = bool(ck["inputs"].get("motion", False))  # face-track kinematics appended at training time
    if motion:
        loaded, missing = load_face_sequences(list(videos), store, encoder, motion=True)
    else:
        loaded, missing = load_face_sequences(list(videos), store, encoder)
    for v, x, found, fps in loaded:
        res = predict_sequence(model, {"x": apply_norm(x, ck["norm"])}, int(ck.get("win", 400)),
                               int(ck.get("hop", 150)), device)
        save_predictions(out, v.id, res["va"], fps, emb=res.get("emb"), mask=found,
                         meta={"modality": "face", "encoder": encoder})
    return missing


def apply_behavior(run: str | Path, store: FeatureStore, videos: Sequence[Video], out: str | Path,
                   device: str = "cpu") -> list[str]:
    """Per-frame predictions of a behavior run (segment predictions expanded to frames) into ``out``."""
    from vaest.tasks.behavior import BehaviorTrainSettings, frame_mask, load_items, to_sequence
    from vaest.training import frames_from_steps, predict_sequence

    model, ck = _checkpoint(Path(run), device)
    inp = ck["inputs"]
    st = BehaviorTrainSettings(encoder=inp["encoder"], branch=inp["branch"], pool=inp["pool"])
    items, missing = load_items(list(videos), store, st)
    for it in items:
        seq = to_sequence(it, ck["norm"])
        res = predict_sequence(model, seq.inputs, int(ck.get("win", 16)), int(ck.get("hop", 8)), device)
        va = frames_from_steps(res["va"], seq.base, seq.n_frames, seq.fps)
        emb = frames_from_steps(res["emb"], seq.base, seq.n_frames, seq.fps) if "emb" in res else None
        save_predictions(out, it.video.id, va, it.fps, emb=emb, mask=frame_mask(it),
                         meta={"modality": "behavior", "encoder": st.encoder})
    return missing


def apply_audio(run: str | Path, store: FeatureStore, videos: Sequence[Video], out: str | Path,
                device: str = "cpu") -> list[str]:
    """Per-frame predictions and audio tokens of an audio run into ``out`` (same layout as training exports)."""
    from vaest.features.audio import audio_key
    from vaest.tasks.audio import AudioTrainConfig, export_run, load_item

    model, ck = _checkpoint(Path(run), device)
    cfg = AudioTrainConfig(encoder=ck.get("encoder", "lmfb"), filter=bool(ck.get("filter", True)), device=device,
                           feature_norm=ck.get("feature_norm", "video"))
    items, missing = [], []
    for v in videos:
        if v.media is None or not store.has(audio_key(cfg.encoder), v.id):
            missing.append(v)
            continue
        it = load_item(store, v, cfg.encoder, cfg.filter_config(), cfg.min_valid_seconds, cfg.feature_norm)
        if it.audio_seconds <= 0:
            missing.append(v)
            continue
        items.append(it)
    export_run(model, items, [], store, Path(out), cfg, device)
    return [v.id for v in missing]


APPLY = {"face": apply_face, "audio": apply_audio, "behavior": apply_behavior}


# ---------------------------------------------------------------------------------------------------------
# Bundles
# ---------------------------------------------------------------------------------------------------------


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
        rel = lambda p: str(Path(p).resolve().relative_to(self.root.resolve())) if Path(p).resolve().is_relative_to(self.root.resolve()) else str(Path(p).resolve())  # noqa: E731
        atomic_write_json(self.root / BUNDLE_FILE, {
            "modalities": {k: rel(v) for k, v in self.modalities.items()},
            "fusion": rel(self.fusion) if self.fusion else None, "kernels": list(self.kernels),
            "face_encoder": self.face_encoder, "audio_encoder": self.audio_encoder})


def load_model(path: str | Path) -> Bundle:
    """A bundle folder (``bundle.json``) or a single run folder (``run.json``) as a :class:`Bundle`."""
    p = Path(path)
    if (p / BUNDLE_FILE).exists():
        d = json.loads((p / BUNDLE_FILE).read_text())
        res = lambda s: (p / s) if not Path(s).is_absolute() else Path(s)  # noqa: E731
        return Bundle(p, {k: res(v) for k, v in d["modalities"].items()}, res(d["fusion"]) if d.get("fusion") else None,
                      tuple(d.get("kernels") or REFERENCE_KERNELS), d.get("face_encoder", "fer"),
                      d.get("audio_encoder", "lmfb"))
    info = read_run_json(p)
    mod = info.get("modality")
    if mod not in MODALITIES:
        raise VaestError(f"{p}: a {mod!r} run cannot be applied alone; use the bundle folder that holds it")
    b = Bundle(p, {mod: p})
    if mod == "face":
        b.face_encoder = info.get("encoder", "fer")
    if mod == "audio":
        b.audio_encoder = info.get("encoder", "lmfb")
    return b


# ---------------------------------------------------------------------------------------------------------
# Prediction outputs
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Prediction:
    """Per-frame output of one media file."""

    video: str
    fps: float
    va: np.ndarray  # (n, 2) final, post-processed
    parts: dict[str, np.ndarray] = field(default_factory=dict)  # modality -> (n, 2), NaN where it had no input
    weights: dict[str, np.ndarray] = field(default_factory=dict)  # modality -> (n,) fusion weight
    note: str = ""


def write_csv(path: Path, pred: Prediction) -> None:
    """``frame,time,valence,arousal`` (frame 1-based, time = frame start in seconds), then per-modality
    predictions and fusion weights."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    cols = ["frame", "time", "valence", "arousal"]
    for m in pred.parts:
        cols += [f"{m}_valence", f"{m}_arousal"]
    cols += [f"weight_{m}" for m in pred.weights]
    w.writerow(cols)
    n = len(pred.va)

    def f(x: float) -> str:
        return "" if not math.isfinite(float(x)) else f"{float(x):.4f}"

    for i in range(n):
        row = [str(i + 1), f"{i / pred.fps:.3f}", f(pred.va[i, 0]), f(pred.va[i, 1])]
        for p in pred.parts.values():
            row += [f(p[i, 0]), f(p[i, 1])]
        row += [f(wt[i]) for wt in pred.weights.values()]
        w.writerow(row)
    atomic_write_text(path, buf.getvalue())


def plot_prediction(path: Path, pred: Prediction) -> None:
    """Valence and arousal over time (final curve bold, modalities thin), fusion weights underneath."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.arange(len(pred.va)) / pred.fps
    rows = 3 if pred.weights else 2
    fig, axes = plt.subplots(rows, 1, figsize=(10, 2.4 * rows), sharex=True)
    for d, (ax, name) in enumerate(zip(axes, ("valence", "arousal"))):
        for m, p in pred.parts.items():
            ax.plot(t, p[:, d], lw=0.8, alpha=0.7, label=m)
        ax.plot(t, pred.va[:, d], lw=2.0, color="black", label="vaest")
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_ylim(-1.05, 1.05)
        ax.set_ylabel(name)
        ax.legend(loc="upper right", fontsize=7, ncol=4)
    if pred.weights:
        ax = axes[2]
        ax.stackplot(t, *[np.nan_to_num(w) for w in pred.weights.values()], labels=list(pred.weights), alpha=0.8)
        ax.set_ylim(0, 1)
        ax.set_ylabel("fusion weight")
        ax.legend(loc="upper right", fontsize=7, ncol=4)
    axes[-1].set_xlabel("time (s)")
    fig.suptitle(f"{pred.video}{'  (' + pred.note + ')' if pred.note else ''}", fontsize=10)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(path)


# ---------------------------------------------------------------------------------------------------------
# Zero-shot paths (no trained model)
# ---------------------------------------------------------------------------------------------------------


def _zero_shot(videos: Sequence[Video], store: FeatureStore) -> dict[str, Prediction]:
    from vaest.features.face import zero_shot_va
    from vaest.media import read_audio

    out: dict[str, Prediction] = {}
    vids = [v for v in videos if not v.audio_only]
    if vids:
        extract_all(vids, store, default_extractors(behavior=False, audio=False, mouth=False))
    for v in videos:
        if v.audio_only:
            wav = read_audio(v.media) if v.media else np.zeros(0, np.float32)
            if wav.size == 0:
                log.error("%s: no audio to analyse", v.media)
                continue
            va = zero_shot_audio(wav)
            out[v.id] = Prediction(v.id, 30.0, np.nan_to_num(postprocess(va, np.isfinite(va[:, 1]), REFERENCE_KERNELS), nan=0.0),
                                   {"audio": va}, note="zero-shot loudness arousal; valence not estimated")
            continue
        try:
            rec = store.load("face-fer", v.id)
        except VaestError as e:
            log.error("%s: %s", v.media, e)
            continue
        found = rec.mask & np.isfinite(rec.values).all(1)
        raw = zero_shot_va(rec.extras["probs"], rec.meta.get("classes") or rec.meta.get("config", {}).get("classes")
                           or ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"])
        raw = np.where(found[:, None], raw, np.nan).astype(np.float32)
        if not found.any():
            log.warning("%s: no face found in any frame; the zero-shot face path has nothing to say", v.media)
        final = postprocess(raw, found, REFERENCE_KERNELS)
        out[v.id] = Prediction(v.id, float(rec.base.rate), np.nan_to_num(final, nan=0.0), {"face": raw},
                               note="zero-shot face (circumplex mapping of FER probabilities)")
    return out


# ---------------------------------------------------------------------------------------------------------
# Trained bundle path
# ---------------------------------------------------------------------------------------------------------


def _with_bundle(videos: Sequence[Video], store: FeatureStore, bundle: Bundle, work: Path,
                 device: str) -> dict[str, Prediction]:
    from vaest.tasks.fusion import apply_fusion

    mods = bundle.modalities
    extract_all(videos, store, default_extractors(bundle.face_encoder, bundle.audio_encoder,
                                                  behavior="behavior" in mods, audio="audio" in mods,
                                                  face="face" in mods or "audio" in mods, device=device))
    runs: dict[str, Path] = {}
    for m, run in mods.items():
        out = work / m
        missing = APPLY[m](run, store, videos, out, device)
        if missing:
            log.info("%s: no %s input for %s", m, m, ", ".join(map(str, missing)))
        runs[m] = out
    fused_dir = None
    if bundle.fusion is not None:
        fused_dir = work / "fusion"
        fusion_info = read_run_json(bundle.fusion)
        sub = {k: runs[k] for k in (fusion_info.get("runs") or {}) if k in runs}
        try:
            apply_fusion(bundle.fusion, list(videos), fused_dir, runs=sub, device=device)
        except Exception as e:  # a video the fusion cannot take falls back to its modalities
            log.warning("fusion failed (%s: %s); using the best available modality per video", type(e).__name__, e)
            fused_dir = None
    preds: dict[str, Prediction] = {}
    for v in videos:
        parts: dict[str, np.ndarray] = {}
        masks: dict[str, np.ndarray] = {}
        fps = None
        for m, d in runs.items():
            try:
                rec = load_predictions(d, v.id)
            except VaestError:
                continue
            if not rec.mask.any():
                continue
            parts[m] = np.where(rec.mask[:, None], rec.values, np.nan).astype(np.float32)
            masks[m] = rec.mask
            fps = fps or float(rec.base.rate)
        if not parts:
            log.error("%s: no modality could be computed (no face, no audio?)", v.media)
            continue
        n = min(len(p) for p in parts.values())
        parts = {k: p[:n] for k, p in parts.items()}
        weights: dict[str, np.ndarray] = {}
        raw, mask, note = None, None, ""
        if fused_dir is not None:
            try:
                rec = load_predictions(fused_dir, v.id)
                raw, mask = rec.values[:n], rec.mask[:n]
                wts = rec.extras.get("weights")
                names = read_run_json(bundle.fusion).get("weight_names") or []
                if wts is not None and wts.ndim == 3:  # late fusion: (n, sets, 2) -> mean over dimensions
                    wts = wts.mean(-1)
                if wts is not None and wts.ndim == 2 and len(names) == wts.shape[1]:
                    weights = {nm: wts[:n, i] for i, nm in enumerate(names)}
            except VaestError:
                raw = None
        if raw is None:  # no fusion: mask-aware mean of the modalities present
            stack = np.stack(list(parts.values()))
            with np.errstate(all="ignore"):
                raw = np.nanmean(stack, axis=0)
            mask = np.isfinite(raw).all(1)
            note = "mean of available modalities" if len(parts) > 1 else f"{next(iter(parts))} only"
        final = postprocess(raw, mask, bundle.kernels)
        preds[v.id] = Prediction(v.id, fps or 30.0, np.nan_to_num(final, nan=0.0), parts, weights, note)
    return preds


def predict(paths: Sequence[str | Path], out: str | Path, model: str | Path | None = None,
            device: str = "cpu") -> dict[str, Path]:
    """Run vaest on media files; write ``out/<name>.csv`` and ``out/<name>.png`` per file.

    Features are cached under ``out/.features`` (a rerun skips finished extraction). A file that fails is
    reported and skipped; the others go on. Returns name -> CSV path for the files that succeeded.
    """
    from vaest.corpus.folder import load_files

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for p in paths:
        p = Path(p)
        if not p.exists():
            log.error("%s: no such file (skipped)", p)
            continue
        files.append(p)
    if not files:
        raise VaestError("no input file exists: " + ", ".join(map(str, paths)))
    corpus: Corpus = load_files(files)
    from vaest.media import probe

    videos = []
    for v in corpus:
        try:
            info = probe(v.media)
        except VaestError as e:
            log.error("%s", e)
            continue
        if not v.audio_only and not info.has_video:
            v.audio_only = True
        if v.audio_only and not info.has_audio:
            log.error("%s: neither a video nor an audio stream", v.media)
            continue
        videos.append(v)
    store = FeatureStore(out / ".features")
    t0 = time.time()
    if model is None:
        preds = _zero_shot(videos, store)
    else:
        bundle = load_model(model)
        work = out / ".runs"
        preds = _with_bundle(videos, store, bundle, work, device)
    written: dict[str, Path] = {}
    for vid, pred in preds.items():
        csv_path = out / f"{vid}.csv"
        write_csv(csv_path, pred)
        plot_prediction(out / f"{vid}.png", pred)
        written[vid] = csv_path
        dur = len(pred.va) / pred.fps
        log.info("%s: %d frames (%.1f s) -> %s", vid, len(pred.va), dur, csv_path)
    failed = [v.id for v in corpus if v.id not in written]
    if failed:
        log.error("no prediction for %d file(s): %s", len(failed), ", ".join(failed))
    log.info("predict: %d file(s) in %.1f s", len(written), time.time() - t0)
    return written


# ---------------------------------------------------------------------------------------------------------
# The demo: the whole method on a fresh synthetic corpus
# ---------------------------------------------------------------------------------------------------------


@dataclass
class DemoConfig:
    """Size and training budget of ``vaest demo`` (defaults finish in well under 15 minutes on 2 CPU cores)."""

    videos: int = 10
    seconds: float = 30.0
    seed: int = 0
    workers: int = 2
    face_epochs: int = 12
    audio_epochs: int = 12
    behavior_epochs: int = 25
    fusion_epochs: int = 12
    early_stop: int = 5
    # Fusion learning rate: RAAV at this rate, DCMMoE at half of it (None = the reference rates, RAAV 5e-5 and
    # DCMMoE 1e-4). With the prediction skip both fusions start from the prior-weighted average of the modality
    # predictions; the demo's 12 epochs move RAAV's gate too little at 5e-5, hence 2e-4 (DCMMoE: 1e-4, the
    # reference). DCMMoE runs narrower than the reference (d_model 256) to fit the CPU budget.
    fusion_lr: float | None = 2e-4
    dcmmoe_d_model: int = 128
    # No dropout on DCMMoE's attention weights: on CPU it forces the materialised attention (3.5x the cost of a
    # training step) and changed the demo's validation CCC by < 3e-4 per epoch (docs/performance.md)
    dcmmoe_attn_dropout: float = 0.0
    # Out-of-fold predictions of the train videos for fusion training (vaest.tasks.crossfit); 0 = fusion learns
    # from the modality models' in-sample predictions, which flatter the model that over-fits most.
    crossfit_folds: int = 2


def _masked_ccc(runs: dict[str, Path], modality_runs: dict[str, Path], videos: list[Video]) -> dict[str, dict]:
    """CCC of each run over the validation frames where the face or the voice is missing (the hard frames)."""
    from vaest.metrics import va_ccc

    out: dict[str, dict] = {}
    sel: dict[str, np.ndarray] = {}
    for v in videos:
        masks = []
        for m in ("face", "audio"):
            if m in modality_runs:
                try:
                    masks.append(~load_predictions(modality_runs[m], v.id).mask)
                except VaestError:
                    continue
        if masks:
            n = min(len(x) for x in masks)
            sel[v.id] = np.logical_or.reduce([x[:n] for x in masks])
    for name, run in runs.items():
        P, Y = [], []
        for v in videos:
            if v.id not in sel:
                continue
            try:
                rec = load_predictions(run, v.id)
            except VaestError:
                continue
            n = min(len(rec.values), len(sel[v.id]))
            keep = sel[v.id][:n]
            P.append(np.nan_to_num(rec.values[:n][keep]))
            Y.append(v.labels_for(len(rec.values))[:n][keep])
        if P:
            s = va_ccc(np.concatenate(P), np.concatenate(Y))
            s["frames"] = int(np.isfinite(np.concatenate(Y)).all(1).sum())
            out[name] = s
    return out


def _plain_average(modality_runs: dict[str, Path], corpus_root: Path, videos: list[Video], out: Path) -> None:
    """Equal-weight, mask-aware average of the modality predictions (the baseline fusion has to beat)."""
    from vaest.config import write_run_info
    from vaest.inference import write_run_json
    from vaest.tasks.fusion import _export_late

    w = {m: np.array([1.0, 1.0]) for m in modality_runs}
    write_run_info(out, "plain average", {"runs": {k: str(v) for k, v in modality_runs.items()}})
    _export_late(dict(modality_runs), w, videos, out)
    write_run_json(out, modality="late", method="average", corpus=str(corpus_root),
                   runs={k: str(v) for k, v in modality_runs.items()}, weights={m: [1.0, 1.0] for m in modality_runs},
                   weight_names=list(modality_runs))


def _fmt(x: Any) -> str:
    return "nan" if x is None or not math.isfinite(float(x)) else f"{float(x):.3f}"


def demo(out: str | Path, cfg: DemoConfig | None = None) -> dict[str, Any]:
    """synth -> extract all modalities -> train face, audio, behavior -> RAAV, DCMMoE, late fusion ->
    post-processing -> evaluate -> submission -> predict on one video. Writes ``OUT/report.md`` and
    ``OUT/metrics.json``. Every step skips what a previous run of the same command finished."""
    from vaest.config import write_run_info
    from vaest.corpus import load_corpus
    from vaest.io import remove_stale_temporaries
    from vaest.corpus.synthetic import synthesize
    from vaest.report import evaluate_runs, write_report
    from vaest.submission import read_submission, write_submission
    from vaest.tasks.audio import AudioTrainConfig, train_audio
    from vaest.tasks.behavior import behavior_train_config, train_behavior
    from vaest.tasks.crossfit import crossfit, fold_assignment
    from vaest.tasks.face import train_face
    from vaest.tasks.fusion import default_train_config, late_fusion, train_fusion
    from vaest.training import TrainConfig
    import dataclasses

    cfg = cfg or DemoConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)  # left by a run killed midway
    write_run_info(out, "vaest demo", cfg)
    times: dict[str, float] = {}

    def step(name: str):
        class _T:
            def __enter__(self):
                self.t = time.time()
                log.info("demo: %s", name)

            def __exit__(self, *a):
                times[name] = round(time.time() - self.t, 1)

        return _T()

    corpus_dir = out / "corpus"
    with step("synth"):
        if not (corpus_dir / "synth.json").exists():
            synthesize(corpus_dir, n_videos=cfg.videos, seconds=cfg.seconds, seed=cfg.seed, workers=cfg.workers)
    corpus = load_corpus(corpus_dir)
    feats = out / "features"
    store = FeatureStore(feats)
    with step("extract"):
        rep = extract_all(corpus.videos, store)
        if rep.failed:
            log.warning("demo: %d media failed extraction: %s", len(rep.failed), list(rep.failed))
    runs_dir = out / "runs"
    mod_runs = {m: runs_dir / m for m in MODALITIES}

    def tc(epochs: int, base: TrainConfig | None = None) -> TrainConfig:
        return dataclasses.replace(base or TrainConfig(), epochs=epochs, early_stop=cfg.early_stop, seed=cfg.seed)

    trainers = {
        "face": lambda c, o: train_face(c, feats, o, train_cfg=tc(cfg.face_epochs)),
        "audio": lambda c, o: train_audio(feats, c, o, AudioTrainConfig(epochs=cfg.audio_epochs,
                                                                         early_stop=cfg.early_stop, seed=cfg.seed)),
        "behavior": lambda c, o: train_behavior(c, feats, o, train_cfg=tc(cfg.behavior_epochs,
                                                                          behavior_train_config())),
    }
    for m in MODALITIES:
        with step(f"train {m}"):
            if not run_finished(mod_runs[m]):
                trainers[m](corpus, mod_runs[m])
    can_crossfit = bool(cfg.crossfit_folds)
    if can_crossfit:
        try:  # the one rule for enough training media: the fold assignment's own check
            fold_assignment([v for v in corpus.split("train") if v.has_labels], cfg.crossfit_folds, cfg.seed)
        except VaestError as e:
            log.warning("demo: %s; fusion trains on in-sample predictions", e)
            can_crossfit = False
    if can_crossfit:
        for m in MODALITIES:
            with step(f"crossfit {m}"):
                crossfit(trainers[m], corpus, mod_runs[m], folds=cfg.crossfit_folds, seed=cfg.seed)
    fusion_runs = {"raav": runs_dir / "raav", "dcmmoe": runs_dir / "dcmmoe"}
    for method, run in fusion_runs.items():
        with step(f"fusion {method}"):
            if not run_finished(run):
                ftc = tc(cfg.fusion_epochs, default_train_config(method))
                if cfg.fusion_lr:
                    ftc = dataclasses.replace(ftc, lr=cfg.fusion_lr if method == "raav" else cfg.fusion_lr / 2)
                train_fusion(mod_runs, corpus_dir, run, method, train_cfg=ftc, features_root=feats,
                             model_cfg={"d_model": cfg.dcmmoe_d_model, "attn_dropout": cfg.dcmmoe_attn_dropout}
                             if method == "dcmmoe" else None)
    late_run, avg_run = runs_dir / "late", runs_dir / "average"
    with step("late fusion"):
        if not run_finished(late_run):
            late_fusion(mod_runs, corpus_dir, late_run, "dirichlet", seed=cfg.seed)
        if not (avg_run / "run.json").exists():
            _plain_average(mod_runs, corpus_dir, corpus.videos, avg_run)
    all_runs = {**mod_runs, **fusion_runs, "late": late_run, "average": avg_run}
    with step("evaluate"):
        rows = evaluate_runs(list(all_runs.values()), corpus, "val")
        write_report(rows, list(all_runs.values()), out / "report", corpus, "val")
        val_videos = [v for v in corpus.split("val") if v.has_labels]
        hard = _masked_ccc(all_runs, mod_runs, val_videos)
    table: dict[str, dict[str, Any]] = {}
    for r in rows:
        name = Path(r["run"]).name
        table.setdefault(name, {"modality": r["modality"]})[r["stage"]] = {
            k: r[k] for k in ("valence", "arousal", "mean")} | ({"kernels": r["kernels"]} if r["kernels"] else {})
    best_single = max(MODALITIES, key=lambda m: table[m]["raw"]["mean"])
    best_fusion = max(("raav", "dcmmoe"), key=lambda m: table[m]["raw"]["mean"])
    final_name = max(("raav", "dcmmoe", "late"), key=lambda m: table[m]["smoothed"]["mean"])
    kernels = tuple(table[final_name]["smoothed"].get("kernels") or REFERENCE_KERNELS)
    with step("submission"):
        preds = {}
        for v in corpus.split("val"):
            try:
                rec = load_predictions(all_runs[final_name], v.id)
            except VaestError:
                continue
            preds[v.id] = postprocess(rec.values, rec.mask, kernels)
        sub = out / "submission" / "val_predictions.csv"
        n_rows = write_submission(sub, preds)
        back = read_submission(sub)
        assert set(back) == set(preds)
    bundle = Bundle(out / "model", dict(mod_runs), fusion_runs[best_fusion], kernels)
    (out / "model").mkdir(exist_ok=True)
    bundle.save()
    with step("predict"):
        one = next(v for v in corpus.split("val") if v.media is not None)
        predict([one.media], out / "predict", out / "model")
    metrics = {"runs": table, "hard_frames": hard, "best_single": best_single, "best_fusion": best_fusion,
               "final": final_name, "kernels": list(kernels), "submission_rows": n_rows, "seconds": times,
               "config": dataclasses.asdict(cfg)}
    atomic_write_json(out / "metrics.json", metrics)
    atomic_write_text(out / "report.md", _demo_report(metrics, out))
    log.info("demo finished in %.0f s: %s", sum(times.values()), out / "report.md")
    return metrics


def _demo_report(m: dict[str, Any], out: Path) -> str:
    lines = ["# vaest demo report", "",
             f"Synthetic corpus: {m['config']['videos']} videos x {m['config']['seconds']:.0f} s (seed {m['config']['seed']}); "
             "validation CCC over all concatenated validation frames.", "",
             "| run | kind | raw V | raw A | raw mean | smoothed V | smoothed A | smoothed mean | kernels |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in m["runs"].items():
        raw, sm = r["raw"], r["smoothed"]
        lines.append(f"| {name} | {r['modality']} | {_fmt(raw['valence'])} | {_fmt(raw['arousal'])} | {_fmt(raw['mean'])} | "
                     f"{_fmt(sm['valence'])} | {_fmt(sm['arousal'])} | {_fmt(sm['mean'])} | {sm.get('kernels', '')} |")
    lines += ["", "Frames where the face or the voice is missing (validation):", "",
              "| run | V | A | mean | frames |", "|---|---|---|---|---|"]
    for name, s in m["hard_frames"].items():
        lines.append(f"| {name} | {_fmt(s['valence'])} | {_fmt(s['arousal'])} | {_fmt(s['mean'])} | {s['frames']} |")
    bs, bf = m["best_single"], m["best_fusion"]
    lines += ["", f"Best single modality: **{bs}** (raw mean {_fmt(m['runs'][bs]['raw']['mean'])}); "
              f"best learned fusion: **{bf}** (raw mean {_fmt(m['runs'][bf]['raw']['mean'])}); "
              f"final predictions: **{m['final']}** smoothed with kernels {m['kernels']}.", "",
              f"Submission (validation split, ABAW format): `submission/val_predictions.csv`, {m['submission_rows']} rows, "
              "validated by reading it back.", "",
              "Per-stage plots and the stage table: `report/report.md`. Prediction on one video with the trained "
              "bundle `model/`: `predict/`.", "", "Time per step (s): " +
              ", ".join(f"{k} {v}" for k, v in m["seconds"].items()) + f"; total {sum(m['seconds'].values()):.0f} s.", ""]
    pngs = sorted(p.name for p in (out / "report").glob("*.png"))
    for p in pngs[:4]:
        lines.append(f"![{p}](report/{p})")
    preds = sorted((out / "predict").glob("*.png"))
    if preds:
        lines.append(f"![prediction](predict/{preds[0].name})")
    return "\n".join(lines) + "\n"
