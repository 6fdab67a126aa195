"""Zero-shot video, face and voice: does the voice help the face rank arousal on real audio-visual clips?

On every real talking-face clip with sound the project has (the 6 CREMA-D videos of actor 1001), per frame: the
shipped zero-shot face (``ensemble`` encoder, :func:`vaest.zeroshot.face_outputs_va`), the zero-shot voice
(:func:`vaest.zeroshot.zero_shot_audio`), the face's reliability (:func:`vaest.zeroshot.face_reliability`: size,
detector score, pose) and the voice's (:func:`vaest.zeroshot.voice_reliability`: silero-vad speech share over the
cue window x the person's mouth motion). Rows: the face alone (the shipped rule: the voice only where no face is
seen), the voice alone, and face + voice with the voice's prior arousal weight 0.25 / 0.5 / 1 (face 1), each
with fixed weights and with per-frame reliability weighting (:func:`vaest.zeroshot.zero_shot_video`).

Figures: Spearman correlation of clip-mean arousal with the acted emotions' circumplex arousal (6 clips), clip and
frame AUC of angry + fearful vs neutral + sad. With 6 clips of one actor one swapped pair moves a clip AUC by 0.25.

Usage: ``python benchmarks/zeroshot_av.py [--data ../shared/data/cremad-av] [--json out.json]``.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repository root importable
from benchmarks.zeroshot_face import (FPS, HIGH_A, LOW_A, arousal_spearman, clip_crops, cli_videos,  # noqa: E402
                                      emotion_of, encode)

log = logging.getLogger("vaest.benchmarks.zeroshot_av")
PRIORS = (0.25, 0.5, 1.0)


def clip_parts(video: Path, ensemble: Any) -> dict[str, np.ndarray]:
    """Per-frame inputs of the fusion for one clip: ``face`` (n, 2), ``voice`` (n, 2), ``face_rel`` (n,),
    ``voice_rel`` (n,), ``speech`` (n,)."""
    from vaest.features.mouth import lip_area
    from vaest.features.persons import mouth_motion
    from vaest.features.vad import VAD_HOP, speech_probability
    from vaest.media import iter_frames, read_audio
    from vaest.zeroshot import face_outputs_va, face_reliability, voice_reliability, zero_shot_audio

    frames = np.concatenate([b.frames for b in iter_frames(video)])
    n = len(frames)
    crops, track = clip_crops(frames)
    out = {k: encode(ensemble, crops["mini"], False, k) for k in ("probs", "probs_arousal")}
    face = face_outputs_va(out, ensemble.classes, FPS)
    wav = read_audio(video)
    voice = np.full((n, 2), np.nan, np.float32)
    a = zero_shot_audio(wav, 16000, FPS)[:n]
    voice[: len(a)] = a
    sp = speech_probability(wav)
    t = (np.arange(n) + 0.5) / FPS
    speech = sp[np.clip((t / VAD_HOP).astype(int), 0, len(sp) - 1)] >= 0.5 if len(sp) else np.zeros(n, bool)
    lm = track["landmarks"][:, :, :2]
    motion = mouth_motion(lip_area(lm), FPS)
    return {"face": face, "voice": voice, "speech": speech,
            "face_rel": face_reliability(track["boxes"], track["conf"], lm),
            "voice_rel": voice_reliability(speech, motion, FPS)}


def fused_rows(parts: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, np.ndarray]]:
    """Row name -> emotion -> (n, 2) fused valence/arousal."""
    from vaest.zeroshot import zero_shot_video

    rows: dict[str, dict[str, np.ndarray]] = {
        "face alone (shipped: voice only where no face)": {e: zero_shot_video(p["face"], p["voice"]).va
                                                           for e, p in parts.items()},
        "voice alone": {e: p["voice"] for e, p in parts.items()},
    }
    for prior in PRIORS:
        w = {"face": (1.0, 1.0), "audio": (0.0, prior)}
        rows[f"face + voice, fixed, voice prior {prior}"] = {
            e: zero_shot_video(p["face"], p["voice"], weights=w).va for e, p in parts.items()}
        rows[f"face + voice, reliability-weighted, voice prior {prior}"] = {
            e: zero_shot_video(p["face"], p["voice"], weights=w,
                               reliability={"face": p["face_rel"], "audio": p["voice_rel"]}).va
            for e, p in parts.items()}
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from vaest.features.face_encoders import create_encoder
    from vaest.metrics import auc

    args, videos = cli_videos(__doc__, argv)
    ensemble = create_encoder("ensemble")
    parts = {emotion_of(v): clip_parts(v, ensemble) for v in videos}
    for e, p in parts.items():
        log.info("%s: face reliability %.2f, voice reliability %.2f, speech %.2f, voice estimate on %.0f%% of frames",
                 e, p["face_rel"].mean(), p["voice_rel"].mean(), p["speech"].mean(),
                 100 * np.isfinite(p["voice"][:, 1]).mean())
    res: dict[str, Any] = {"clips": [v.name for v in videos], "rows": {}}
    for name, vals in fused_rows(parts).items():
        cm = {e: float(np.nanmean(v[:, 1])) if np.isfinite(v[:, 1]).any() else float("nan") for e, v in vals.items()}
        r = {"arousal_spearman": round(arousal_spearman(vals), 3),
             "clip_auc": auc(np.array([cm[e] for e in HIGH_A]), np.array([cm[e] for e in LOW_A])),
             "frame_auc": round(auc(np.concatenate([vals[e][:, 1] for e in HIGH_A]),
                                    np.concatenate([vals[e][:, 1] for e in LOW_A])), 3),
             "clip_mean_arousal": {e: round(x, 3) for e, x in cm.items()}}
        res["rows"][name] = r
        log.info("%-58s Spearman %+.2f, clip AUC %.2f, frame AUC %.2f | %s", name, r["arousal_spearman"], r["clip_auc"],
                 r["frame_auc"], " ".join(f"{e} {x:+.2f}" for e, x in r["clip_mean_arousal"].items()))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
