"""Write the reference outputs that ``tests/test_predict_speed.py`` compares the optimised predict path with.

Run it with the code *before* a speed change (e.g. ``git archive <commit> src | tar -x -C /tmp/base`` and
``PYTHONPATH=/tmp/base/src python benchmarks/predict_reference.py``): it predicts one real CREMA-D clip
zero-shot (1 torch thread) and writes the per-frame columns at full float precision to
``tests/data/predict_reference.csv``. The committed file was made with commit 1e59cc1 (issue 26's zero-shot rules: the `ensemble` face encoder and
the published expression means), after issue 13's predict speed work; the file before it came from 437aace
(issue 15's rules, before the speed work).

Usage: ``python benchmarks/predict_reference.py [--clip PATH] [--out tests/data/predict_reference.csv]``
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT.parent / "shared" / "data" / "cremad-av" / "1001_DFA_ANG_XX.flv"
COLUMNS = ["frame", "valence", "arousal", "face_valence", "face_arousal", "audio_arousal", "box_x0", "box_y0",
           "box_x1", "box_y1"]


def main() -> None:
    """Predict the clip and write :data:`COLUMNS` as CSV."""
    import torch

    from vaest.predictor import Predictor

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clip", type=Path, default=CLIP)
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "data" / "predict_reference.csv")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO)
    torch.set_num_threads(1)
    df = Predictor().predict(a.clip).frame
    a.out.parent.mkdir(parents=True, exist_ok=True)
    df[COLUMNS].to_csv(a.out, index=False, float_format="%.7g")
    logging.getLogger("vaest.benchmarks").info("%s: %d frames -> %s", a.clip, len(df), a.out)


if __name__ == "__main__":
    main()
