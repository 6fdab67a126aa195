"""Speed and agreement of `vaest.Predictor` with and without the person tracker on a one-face CREMA-D clip, and the
per-person figures of the side-by-side video (docs/persons.md, "In vaest predict").

    PYTHONPATH=src python benchmarks/predict_people.py [--repeat 3]

Prints JSON. "single_face" runs the pre-people extractor set (facetrack + face-fer), "persons" the set the
Predictor now uses (persons tracker + per-person encoder + vad, and the zero-shot voice), "persons_no_voice" the
same without vad (so without the voice); all zero-shot, in memory, one torch thread.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    import vaest
    from test_persons import HAP, SAD, build_real
    from vaest.features.base import default_extractors

    old = vaest.Predictor(device="cpu")
    old.extractors = default_extractors(behavior=False, audio=False, mouth=False, device="cpu")
    new = vaest.Predictor(device="cpu")
    face_only = vaest.Predictor(device="cpu")  # the persons path without the voice (vad + zero-shot audio)
    face_only.extractors = [e for e in face_only.extractors if e.name != "vad"]
    out: dict = {"clip": HAP.name}
    times: dict[str, list[float]] = {"single_face": [], "persons": [], "persons_no_voice": []}
    res = {}
    for _ in range(args.repeat):  # alternate, so load from other processes hits both alike
        for name, pr in (("single_face", old), ("persons", new), ("persons_no_voice", face_only)):
            t = time.perf_counter()
            res[name] = pr.predict(HAP)
            times[name].append(time.perf_counter() - t)
    n = res["persons"].meta["n_frames"]
    out["n_frames"] = n
    out["seconds"] = {k: [round(x, 2) for x in v] for k, v in times.items()}
    out["fps_best"] = {k: round(n / min(v), 1) for k, v in times.items()}
    fv = {k: res[k].frame["face_valence"].to_numpy() for k in ("single_face", "persons")}
    out["face_valence_mean"] = {k: round(float(np.nanmean(v)), 4) for k, v in fv.items()}
    out["face_valence_max_abs_diff"] = round(float(np.nanmax(np.abs(fv["single_face"] - fv["persons"]))), 4)
    with tempfile.TemporaryDirectory() as d:
        vids = build_real(Path(d), long=True)
        allp = vaest.Predictor(device="cpu", people="all")
        alone = {0: allp.predict(HAP).frame["valence"].mean(), 1: allp.predict(SAD).frame["valence"].mean()}
        r = allp.predict(vids["sbs6"])
        g = {int(k): v for k, v in r.frame.groupby("person")}
        out["sbs6"] = {str(p): {"mean_valence": round(float(g[p]["valence"].mean()), 3),
                                "alone": round(float(alone[p]), 3),
                                "present": round(float(g[p]["box_x0"].notna().mean()), 3)} for p in g}
        out["sbs6_main"] = vaest.Predictor(device="cpu").predict(vids["sbs6"]).meta["people"]["reason"]
        for k in ("talk", "talk_r", "voiceover"):
            m = allp.predict(vids[k]).meta["people"]
            out[k] = {"speech_frames": m["speech_frames"], "offscreen": m["offscreen_speech_frames"],
                      "speaks": {p: v["speaks"] for p, v in m["persons"].items()},
                      "speech_share": {p: v["speech_share"] for p, v in m["persons"].items()}}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
