"""Zero-shot valence/arousal on the real CREMA-D clips: what the face path costs, and what the voice adds.

Face: each clip is decoded once; faces are found by (a) vaest's MediaPipe tracker with vaest's crop and (b)
OpenCV's Haar detector with the ``fer`` package's crop (box squared, 10 px margin, image padded by 40 px of
its bottom rows' mean). Each crop set goes through (1) vaest's ``fer`` encoder (the facial-emotion-recognition
network, 48x48) and (2) ``minixception`` (the ``fer`` package's own mini-Xception, 64x64, loaded from its
hdf5 file), then the circumplex mapping with vaest's prototypes and with the plain ones of issue 15.
Per clip: the mean over frames with a face (pipeline smoothing does not change clip means much; it is
reported too). Voice: :func:`vaest.zeroshot.zero_shot_audio` on the clips' own audio and on the mp3s, and
:func:`vaest.zeroshot.zero_shot_video` (face + voice).

With 6 clips of one actor the AUCs are made of 4 (happy vs 4 negatives, neutral vs 4 negatives) or 4
(angry, fearful vs neutral, sad) pairs: one swapped pair moves an AUC by 0.25. Frame-level AUCs pool all
frames (not independent) and only break ties between clip-level results.

Usage: ``python benchmarks/zeroshot_face.py [--data ../shared/data/cremad-av] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("vaest.benchmarks.zeroshot_face")

# the plain circumplex prototypes of issue 15 (what the fer-package comparison used)
PLAIN = {"neutral": (0.0, 0.0), "happy": (0.8, 0.5), "sad": (-0.7, -0.4), "angry": (-0.6, 0.8),
         "fear": (-0.6, 0.7), "disgust": (-0.7, 0.3), "surprise": (0.2, 0.8)}
NEGATIVE = ("SAD", "ANG", "DIS", "FEA")
HIGH_A, LOW_A = ("ANG", "FEA"), ("NEU", "SAD")
HAAR_PAD, HAAR_OFFSET = 40, 10
DEFAULT = "mediapipe-ferframe/minixception/noflip"  # what vaest's zero-shot face path now does


def emotion_of(path: Path) -> str:
    """CREMA-D file names: ActorID_Sentence_EMO_Level."""
    return path.stem.split("_")[2]


def haar_crops(frames: np.ndarray) -> list[np.ndarray | None]:
    """The ``fer`` package's face crops (largest Haar face per frame), RGB, or None where no face."""
    import cv2

    from vaest.features.pretrained_face import fer_package_file

    det = cv2.CascadeClassifier(str(fer_package_file("haarcascade_frontalface_default.xml")))
    out: list[np.ndarray | None] = []
    for f in frames:
        gray = cv2.cvtColor(f, cv2.COLOR_RGB2GRAY)
        faces = det.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, flags=cv2.CASCADE_SCALE_IMAGE, minSize=(50, 50))
        if len(faces) == 0:
            out.append(None)
            continue
        x, y, w, h = max(faces, key=lambda b: b[2] * b[3])
        if h > w:
            x, w = x - (h - w) // 2, h
        elif w > h:
            y, h = y - (w - h) // 2, w
        mean = float(gray[-2:].mean())
        pad = cv2.copyMakeBorder(f, HAAR_PAD, HAAR_PAD, HAAR_PAD, HAAR_PAD, cv2.BORDER_CONSTANT, value=[mean] * 3)
        x0, y0 = max(0, x - HAAR_OFFSET + HAAR_PAD), max(0, y - HAAR_OFFSET + HAAR_PAD)
        out.append(pad[y0 : y + h + HAAR_OFFSET + HAAR_PAD, x0 : x + w + HAAR_OFFSET + HAAR_PAD])
    return out


# crop framings of MediaPipe boxes (scale, shift of :func:`vaest.features.face_geometry.crop_face`): vaest's default
# before issue 15, and the framing of the fer package's Haar crops measured on these clips (Haar box + 2 x 10 px
# = 1.26 x the MediaPipe box side, centre 0.087 side higher: shift -0.087 / 1.26)
FRAMINGS = {"mediapipe": (1.1, -0.05), "mediapipe-ferframe": (1.26, -0.07)}


def mediapipe_crops(frames: np.ndarray) -> dict[str, list[np.ndarray | None]]:
    """Face crops from vaest's MediaPipe tracker boxes, one list per framing in :data:`FRAMINGS`."""
    from vaest.features.face_geometry import crop_face
    from vaest.features.face_tracker import FaceTrackConfig, FaceTracker

    tr = FaceTracker(FaceTrackConfig(), [None])
    try:
        boxes = tr.process(frames)[None][0]
    finally:
        tr.close()
    return {name: [crop_face(f, b, sc, sh) if np.isfinite(b).all() else None for f, b in zip(frames, boxes)]
            for name, (sc, sh) in FRAMINGS.items()}


def encode(enc_name: str, crops: list[np.ndarray | None], flip: bool) -> tuple[np.ndarray, tuple[str, ...]]:
    """(n, C) expression probabilities (NaN rows where no crop) and the class names."""
    from vaest.features.face_encoders import create_encoder

    enc = create_encoder(enc_name)
    rows = [i for i, c in enumerate(crops) if c is not None]
    probs = np.full((len(crops), len(enc.classes)), np.nan, np.float32)
    if rows:
        probs[rows] = enc.encode([crops[i] for i in rows], flip=flip)["probs"]
    return probs, enc.classes


def plain_va(probs: np.ndarray, classes: tuple[str, ...]) -> np.ndarray:
    keys = {"anger": "angry", "fearful": "fear"}
    protos = np.array([PLAIN[keys.get(c.lower(), c.lower())] for c in classes], np.float64)
    return (probs / probs.sum(1, keepdims=True)) @ protos


def aucs(values: dict[str, np.ndarray]) -> dict[str, float]:
    """Clip-level (mean) and frame-level AUCs of issue 15's three comparisons; ``values`` emotion -> (n, 2)."""
    from vaest.metrics import auc

    res: dict[str, float] = {}
    for level in ("clip", "frame"):
        def pick(emos: tuple[str, ...], d: int) -> np.ndarray:
            parts = [values[e][:, d] for e in emos if e in values]
            if level == "clip":
                return np.array([np.nanmean(p) if np.isfinite(p).any() else np.nan for p in parts])
            return np.concatenate(parts) if parts else np.zeros(0)

        res[f"{level}_valence_happy_vs_negative"] = auc(pick(("HAP",), 0), pick(NEGATIVE, 0))
        res[f"{level}_valence_neutral_vs_negative"] = auc(pick(("NEU",), 0), pick(NEGATIVE, 0))
        res[f"{level}_arousal_high_vs_low"] = auc(pick(HIGH_A, 1), pick(LOW_A, 1))
    return res


# circumplex arousal of the acted emotions (the reference order for rank correlations)
PROTO_AROUSAL = {"ANG": 0.8, "FEA": 0.7, "HAP": 0.5, "DIS": 0.3, "NEU": 0.0, "SAD": -0.4}


def arousal_spearman(values: dict[str, np.ndarray]) -> float:
    """Spearman correlation of clip-mean arousal with :data:`PROTO_AROUSAL` over the clips present."""
    from scipy.stats import spearmanr

    emos = [e for e in PROTO_AROUSAL if e in values and np.isfinite(values[e][:, 1]).any()]
    if len(emos) < 3:
        return float("nan")
    return float(spearmanr([PROTO_AROUSAL[e] for e in emos], [np.nanmean(values[e][:, 1]) for e in emos]).statistic)


def clip_means(values: dict[str, np.ndarray]) -> dict[str, list[float]]:
    return {e: [round(float(np.nanmean(v[:, d])), 3) if np.isfinite(v[:, d]).any() else None for d in (0, 1)]
            for e, v in values.items()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import torch

    from vaest.media import iter_frames, probe, read_audio
    from vaest.postprocess import REFERENCE_KERNELS, postprocess
    from vaest.zeroshot import zero_shot_audio, zero_shot_face, zero_shot_video

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "cremad-av"))
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    data = Path(args.data)
    videos = sorted(data.glob("*.flv"))
    if not videos:
        raise SystemExit(f"{data}: no CREMA-D .flv clips")
    variants: dict[str, dict[str, np.ndarray]] = {}
    audio_va: dict[str, np.ndarray] = {}
    face_best: dict[str, np.ndarray] = {}
    for v in videos:
        emo = emotion_of(v)
        frames = np.concatenate([b.frames for b in iter_frames(v)])
        fps = probe(v).fps or 30.0
        crops = {**mediapipe_crops(frames), "haar": haar_crops(frames)}
        for crop_name, cr in crops.items():
            for enc_name in ("fer", "minixception"):
                for flip in (False, True):
                    probs, classes = encode(enc_name, cr, flip)
                    ok = np.isfinite(probs).all(1)
                    va = np.full((len(cr), 2), np.nan)
                    va[ok] = zero_shot_face(probs[ok], classes)
                    tag = f"{crop_name}/{enc_name}/{'flip' if flip else 'noflip'}"
                    variants.setdefault(f"{tag}/vaest-prototypes", {})[emo] = va
                    pv = np.full((len(cr), 2), np.nan)
                    pv[ok] = plain_va(probs[ok], classes)
                    variants.setdefault(f"{tag}/plain-prototypes", {})[emo] = pv
                    sm = postprocess(va.astype(np.float32), ok, REFERENCE_KERNELS)
                    variants.setdefault(f"{tag}/vaest-prototypes+smoothing", {})[emo] = np.where(ok[:, None], sm, np.nan)
        face_best[emo] = variants[f"{DEFAULT}/vaest-prototypes"][emo]
        wav = read_audio(v)
        audio_va[emo] = zero_shot_audio(wav, 16000, fps)[: len(frames)]
        log.info("%s: %d frames, faces: mediapipe %d, haar %d", v.name, len(frames),
                 sum(c is not None for c in crops["mediapipe"]), sum(c is not None for c in crops["haar"]))
    out: dict[str, Any] = {"clips": [v.name for v in videos], "face": {}}
    for name, vals in sorted(variants.items()):
        out["face"][name] = {"auc": {k: round(x, 3) for k, x in aucs(vals).items()}, "clip_means": clip_means(vals)}
    fused = {e: zero_shot_video(face_best[e], audio_va[e]).va for e in face_best}
    out["video"] = {k: {"auc": aucs(v), "clip_means": clip_means(v), "arousal_spearman": arousal_spearman(v)}
                    for k, v in (("face_only", face_best), ("voice_only", audio_va), ("face+voice", fused))}
    mp3 = {emotion_of(p): zero_shot_audio(read_audio(p)) for p in sorted(data.glob("*.mp3"))}
    out["audio_mp3"] = {"auc": aucs(mp3), "clip_means": clip_means(mp3), "arousal_spearman": arousal_spearman(mp3)}
    for name, r in out["face"].items():
        a = r["auc"]
        log.info("%-62s clip V hap %.2f neu %.2f A %.2f | frame V hap %.2f neu %.2f A %.2f", name,
                 a["clip_valence_happy_vs_negative"], a["clip_valence_neutral_vs_negative"], a["clip_arousal_high_vs_low"],
                 a["frame_valence_happy_vs_negative"], a["frame_valence_neutral_vs_negative"], a["frame_arousal_high_vs_low"])
    for k, r in [*(("video " + k, out["video"][k]) for k in out["video"]), ("mp3 voice", out["audio_mp3"])]:
        log.info("%-16s arousal Spearman %.2f, AUCs %s, clip means %s", k, r["arousal_spearman"],
                 {a: round(b, 3) for a, b in r["auc"].items() if np.isfinite(b)}, r["clip_means"])
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
