"""Calibrate the zero-shot voice arousal constants (vaest.zeroshot.AUDIO_CUES, AUDIO_BIAS) on RAVDESS speech.

RAVDESS (Livingstone & Russo 2018, PLoS ONE; CC BY-NC-SA 4.0): 24 actors x 60 acted sentences, files named
``03-01-EE-II-SS-RR-AA.wav`` (EE emotion, II intensity, AA actor). Each clip's cues are measured with vaest's own
:func:`vaest.zeroshot.audio_cues` (clip mean of the per-frame cues); the label is the circumplex arousal of the
acted emotion (:data:`LABEL_AROUSAL`: the circumplex prototypes the shipped constants were fitted with). The fit is a ridge regression of
atanh(label) on the cues' standard scores, so that tanh(score) estimates the label. Reported: leave-one-speaker-out
Spearman / Pearson of the clip-mean arousal that ``zero_shot_audio`` would give, and the same for the CREMA-D
clips in /work/shared/data/cremad-av (not used in the fit). Prints the constants to paste into zeroshot.py.

    python scripts/calibrate_zeroshot_audio.py --ravdess DIR [--cremad DIR] [--cache cues.npz] [--ridge 1.0]
"""

from __future__ import annotations

import argparse
import logging
import re
import warnings
from pathlib import Path

import numpy as np
from scipy.stats import pearsonr, spearmanr

from vaest.io import atomic_path
from vaest.media import read_audio
from vaest.progress import track
from vaest.zeroshot import AUDIO_CUES, AudioCue, arousal_from_cues, audio_cues

log = logging.getLogger("calibrate_zeroshot_audio")
RAVDESS_EMOTIONS = {1: "neutral", 2: "calm", 3: "happy", 4: "sad", 5: "angry", 6: "fearful", 7: "disgust",
                    8: "surprised"}
CREMAD_EMOTIONS = {"ANG": "angry", "DIS": "disgust", "FEA": "fearful", "HAP": "happy", "NEU": "neutral", "SAD": "sad"}
SR = 16000
FPS = 30.0


# arousal label per acted emotion: vaest's circumplex prototypes when the shipped voice constants were fitted
# (issue 15; the face mapping has since moved to published means, vaest.zeroshot.CIRCUMPLEX, which would change
# the fit a little: these keep the script reproducing the shipped constants)
LABEL_AROUSAL = {"angry": 0.7, "fearful": 0.6, "happy": 0.5, "disgust": 0.3, "surprised": 0.8, "neutral": 0.0,
                 "calm": 0.0, "sad": -0.4}


def label_arousal(emotion: str) -> float:
    """Arousal label of an emotion name (:data:`LABEL_AROUSAL`)."""
    return LABEL_AROUSAL[emotion]


def frame_cues(paths: list[Path], cache: Path | None) -> list[np.ndarray]:
    """Per-frame cues (n_i, n_cues) of each file; cached by file name in ``cache`` (resumable)."""
    done: dict[str, np.ndarray] = {}
    if cache is not None and cache.exists():
        with np.load(cache) as z:
            done = {k: z[k] for k in z.files}
    todo = [p for p in paths if p.name not in done]
    for i, p in enumerate(track(todo, description="cues")):
        done[p.name] = audio_cues(read_audio(p, SR), SR, FPS)[0]
        if cache is not None and (i % 200 == 199 or i == len(todo) - 1):
            with atomic_path(cache, suffix=".npz") as tmp:
                np.savez(tmp, **done)
    return [done[p.name] for p in paths]


def clip_means(frames: list[np.ndarray]) -> np.ndarray:
    """(n_clips, n_cues) mean of each cue over the frames where it is finite."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a cue that is NaN on every frame stays NaN
        return np.stack([np.nanmean(f, 0) for f in frames])


def fit(x: np.ndarray, y: np.ndarray, ridge: float, use: np.ndarray) -> tuple[tuple[AudioCue, ...], float]:
    """Ridge fit of atanh(y) on the standard scores of the clip-mean cues x (n, k) -> constants; cues where
    ``use`` (k,) is False get weight 0. The bias puts the mean score of the label-0 clips (neutral, calm) at 0,
    the circumplex origin (the least-squares intercept would put neutral speech at the corpus' mean arousal)."""
    ok = np.isfinite(x).all(1)
    x, y = x[ok], y[ok]
    mu, sd = x.mean(0), x.std(0)
    z = (x - mu) / sd
    t = np.arctanh(np.clip(y, -0.95, 0.95))
    tc = t - t.mean()
    zu = z[:, use]
    w = np.zeros(x.shape[1])
    w[use] = np.linalg.solve(zu.T @ zu + ridge * len(zu) * np.eye(zu.shape[1]), zu.T @ tc)
    spec = tuple(AudioCue(c.name, float(m), float(s), float(wi)) for c, m, s, wi in zip(AUDIO_CUES, mu, sd, w))
    return spec, float(-(z[y == 0] @ w).mean())


def clip_arousal(frames: list[np.ndarray], spec: tuple[AudioCue, ...], bias: float) -> np.ndarray:
    """Clip mean of the per-frame arousal that zero_shot_audio gives with these constants."""
    out = []
    for f in frames:
        a = arousal_from_cues(f, spec, bias)
        out.append(float(np.mean(a[np.isfinite(a)])) if np.isfinite(a).any() else np.nan)
    return np.asarray(out)


def report(name: str, pred: np.ndarray, y: np.ndarray) -> str:
    ok = np.isfinite(pred)
    rs, rp = spearmanr(pred[ok], y[ok])[0], pearsonr(pred[ok], y[ok])[0]
    return f"{name}: n={ok.sum()} Spearman {rs:+.3f} Pearson {rp:+.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ravdess", type=Path, required=True, help="folder holding RAVDESS Actor_XX/*.wav (speech)")
    ap.add_argument("--cremad", type=Path, default=Path("/work/shared/data/cremad-av"))
    ap.add_argument("--cache", type=Path, default=None, help="npz cache of per-frame cues (resumable)")
    ap.add_argument("--ridge", type=float, nargs="+", default=[0.001, 0.01, 0.1, 1.0],
                    help="ridge penalties per clip on the standard scores; the best held-out-speaker Pearson is kept")
    ap.add_argument("--drop", nargs="*", default=[], help="cue names left out of the fit (weight 0)")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    paths = sorted(p for p in a.ravdess.rglob("03-01-*.wav"))
    if not paths:
        raise SystemExit(f"no RAVDESS speech files (03-01-*.wav) under {a.ravdess}")
    meta = [tuple(int(v) for v in re.findall(r"\d+", p.stem)) for p in paths]
    emo = [RAVDESS_EMOTIONS[m[2]] for m in meta]
    intensity = np.array([m[3] for m in meta])
    actor = np.array([m[6] for m in meta])
    y = np.array([label_arousal(e) for e in emo])
    frames = frame_cues(paths, a.cache)
    x = clip_means(frames)
    log.info("RAVDESS: %d clips, %d actors; cue clip means (mean, sd): %s", len(paths), len(set(actor)),
             ", ".join(f"{c.name} {m:.2f} {s:.2f}" for c, m, s in zip(AUDIO_CUES, np.nanmean(x, 0), np.nanstd(x, 0))))
    for i, c in enumerate(AUDIO_CUES):
        ok = np.isfinite(x[:, i])
        log.info("  cue %-12s Spearman with arousal label %+.3f", c.name, spearmanr(x[ok, i], y[ok])[0])

    use = np.array([c.name not in a.drop for c in AUDIO_CUES])
    shipped = clip_arousal(frames, AUDIO_CUES, None)
    best = (-2.0, a.ridge[0], np.full(len(paths), np.nan))
    for ridge in a.ridge:
        held = np.full(len(paths), np.nan)
        for s in track(sorted(set(actor)), description=f"leave one speaker out, ridge {ridge}"):
            tr = actor != s
            spec, bias = fit(x[tr], y[tr], ridge, use)
            idx = np.flatnonzero(~tr)
            held[idx] = clip_arousal([frames[i] for i in idx], spec, bias)
        log.info(report(f"RAVDESS leave-one-speaker-out, ridge {ridge}", held, y))
        r = pearsonr(held[np.isfinite(held)], y[np.isfinite(held)])[0]
        if r > best[0]:
            best = (r, ridge, held)
    _, ridge, held = best
    log.info("ridge kept: %s", ridge)
    per_actor = [spearmanr(held[actor == s], y[actor == s])[0] for s in sorted(set(actor))]
    log.info(report("RAVDESS leave-one-speaker-out", held, y))
    log.info("RAVDESS leave-one-speaker-out, within speaker: mean Spearman %+.3f (min %+.3f)",
             np.nanmean(per_actor), np.nanmin(per_actor))
    emo_a = np.array(emo)
    strong = [np.mean(held[(intensity == 2) & (emo_a == e)] > np.median(held[(intensity == 1) & (emo_a == e)]))
              for e in sorted(set(emo)) if e != "neutral"]
    log.info("RAVDESS held out: share of strong-intensity clips above the normal-intensity median, mean over "
             "emotions %.2f", float(np.mean(strong)))
    log.info(report("RAVDESS with the constants now in zeroshot.py (in-sample if they came from this script)",
                    shipped, y))

    spec, bias = fit(x, y, ridge, use)
    if a.cremad.is_dir():
        cpaths = sorted(p for p in a.cremad.iterdir() if p.suffix in (".mp3", ".flv"))
        cy = np.array([label_arousal(CREMAD_EMOTIONS[p.stem.split("_")[2]]) for p in cpaths])
        cframes = frame_cues(cpaths, None)
        cpred = clip_arousal(cframes, spec, bias)
        log.info(report("CREMA-D (independent: not in the fit)", cpred, cy))
        for p, v in zip(cpaths, cpred):
            log.info("  %-22s arousal %+.3f", p.name, v)
    lines = ["AUDIO_CUES: tuple[AudioCue, ...] = ("]
    lines += [f'    AudioCue("{c.name}", centre={c.centre:.3f}, scale={c.scale:.3f}, weight={c.weight:+.3f}),'
              for c in spec]
    lines += [")", f"AUDIO_BIAS = {bias:.3f}"]
    log.info("constants to paste into src/vaest/zeroshot.py:\n%s", "\n".join(lines))


if __name__ == "__main__":
    main()
