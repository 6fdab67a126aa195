"""Figures of docs/persons.md: several people in one video (not part of the product path).

On the multi-person videos the tests build from the real CREMA-D clips (``tests/test_persons.py:build_real``):
persons found and their share of frames, mean zero-shot face valence per person against each clip alone (FER
encoder), the leave-and-return and swap-across-a-cut ids, the speaker attribution, and tracking speed
(frames in memory) of the single-face tracker against the person tracker.

Usage: ``PYTHONPATH=src python benchmarks/persons.py [--json OUT]`` (needs ``../shared/data/cremad-av`` and ffmpeg).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
log = logging.getLogger("vaest.benchmarks.persons")


def _valence(path: Path, tracks: Any, fe: Any) -> dict[int, float]:
    from vaest.features.persons import encode_persons
    from vaest.zeroshot import zero_shot_face

    out = {}
    for pid, r in encode_persons(path, tracks, fe).items():
        ok = np.isfinite(r["probs"]).all(1)
        out[pid] = round(float(zero_shot_face(r["probs"][ok], fe.encoder.classes)[:, 0].mean()), 3)
    return out


def figures() -> dict[str, Any]:
    """Every figure of docs/persons.md as one dict."""
    import test_persons as T
    import torch

    from vaest.features.face import FaceEncoderConfig, FaceEncoderExtractor
    from vaest.features.person_tracker import PersonTrackConfig, track_persons
    from vaest.features.persons import attribute_speech, select_people, speech_on_frames
    from vaest.features.vad import VAD_BASE, speech_probability
    from vaest.media import read_audio
    from vaest.timebase import TimeSeries

    torch.set_num_threads(1)
    real = T.build_real(Path(tempfile.mkdtemp()), long=True)
    fe = FaceEncoderExtractor(FaceEncoderConfig(encoder="fer"))
    res: dict[str, Any] = {"alone": {"HAP": _valence(T.HAP, track_persons(T.HAP), fe)[0],
                                     "SAD": _valence(T.SAD, track_persons(T.SAD), fe)[0]}}
    for ds in (320, 640):
        tr = track_persons(real["sbs"], PersonTrackConfig(det_side=ds))
        res[f"side_by_side_det{ds}"] = {"ids": tr.ids.tolist(), "share": tr.share(),
                                        "valence": _valence(real["sbs"], tr, fe)}
    tr = track_persons(real["sbs6"])
    res["side_by_side_6s"] = {"ids": tr.ids.tolist(), "share": tr.share(), "cuts": tr.cuts,
                              "sides": [sorted(set(T.side_of(tr, k)[tr.found[k]].tolist())) for k in range(len(tr.ids))],
                              "valence": _valence(real["sbs6"], tr, fe)}
    tr = track_persons(real["leave"])
    away = np.flatnonzero(~tr.found[1])
    res["leave"] = {"ids": tr.ids.tolist(), "n_frames": tr.n_frames, "share": tr.share(),
                    "absent": [int(away[0]), int(away[-1])] if len(away) else None}
    tr = track_persons(real["swap"])
    res["swap"] = {"ids": tr.ids.tolist(), "cuts": tr.cuts, "share": tr.share(),
                   "similarity": float(tr.appearance[0] @ tr.appearance[1]),
                   "person0_side_before_after": [float(np.nanmean(T.side_of(tr, 0)[: tr.cuts[0]])),
                                                 float(np.nanmean(T.side_of(tr, 0)[tr.cuts[0]:]))] if tr.cuts else None}
    for w in ("talk", "talk_r"):
        tr = track_persons(real[w])
        vad = TimeSeries(speech_probability(read_audio(real[w]))[:, None], VAD_BASE)
        sp = speech_on_frames(vad, tr.n_frames, tr.fps)
        att = attribute_speech(tr.lip_area(), sp, tr.fps, tr.ids)
        res[w] = {"speech_frames": int(sp.sum()), "n_frames": tr.n_frames, "share": att.share,
                  "offscreen": att.offscreen_share, "speaks": att.speaks,
                  "median_motion": [float(np.nanmedian(m)) for m in att.motion],
                  "main": select_people(tr, "main", att)[1]}
    res["speed"] = speed([T.HAP, real["sbs"]])
    return res


def speed(paths: list[Path], repeat: int = 4) -> dict[str, float]:
    """Frames/s of the single-face tracker and the person tracker on decoded frames (best of 2)."""
    from vaest.features.face_tracker import FaceTrackConfig, FaceTracker
    from vaest.features.person_tracker import PersonTrackConfig, PersonTracker
    from vaest.media import iter_frames

    out = {}
    for path in paths:
        fr = np.concatenate([b.frames for b in iter_frames(path)] * repeat)
        for name, make in (("FaceTracker", lambda: FaceTracker(FaceTrackConfig(), [None])),
                           ("PersonTracker", lambda: PersonTracker(PersonTrackConfig()))):
            best = float("inf")
            for _ in range(2):
                t = make()
                t0 = time.perf_counter()
                for i in range(0, len(fr), 32):
                    t.process(fr[i : i + 32])
                best = min(best, time.perf_counter() - t0)
                t.close()
            out[f"{Path(path).name} {fr.shape[2]}x{fr.shape[1]} {name}"] = round(len(fr) / best, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    res = figures()
    text = json.dumps(res, indent=1, default=float)
    log.info("%s", text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
