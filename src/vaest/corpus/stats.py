"""Per-split corpus statistics (works on an annotation folder alone: no video is opened)."""

from __future__ import annotations

import math

import numpy as np

from vaest.corpus.records import Corpus

SPLIT_ORDER = ("train", "val", "test", "predict")


def corpus_stats(corpus: Corpus) -> dict[str, dict[str, float | int]]:
    """Per split: videos (label tracks), frames (label lines), valid frames, valence/arousal mean and std.

    A frame is valid when both values are present and not ``-5``. Moments are over valid frames (population
    std). Splits without labels report frames 0. An ``all`` entry sums the splits.
    """
    acc: dict[str, dict[str, float]] = {}

    def _add(key: str, lab: np.ndarray | None) -> None:
        a = acc.setdefault(key, {"videos": 0, "frames": 0, "valid": 0, "sv": 0.0, "sa": 0.0, "sv2": 0.0, "sa2": 0.0})
        a["videos"] += 1
        if lab is None:
            return
        ok = np.isfinite(lab).all(axis=1)
        good = lab[ok].astype(np.float64)
        a["frames"] += len(lab)
        a["valid"] += int(ok.sum())
        a["sv"] += float(good[:, 0].sum())
        a["sa"] += float(good[:, 1].sum())
        a["sv2"] += float((good[:, 0] ** 2).sum())
        a["sa2"] += float((good[:, 1] ** 2).sum())

    for v in corpus.videos:
        lab = v.labels if v.label_path is not None else None
        _add(v.split, lab)
        _add("all", lab)
    out: dict[str, dict[str, float | int]] = {}
    keys = [s for s in SPLIT_ORDER if s in acc] + sorted(k for k in acc if k not in SPLIT_ORDER and k != "all")
    if "all" in acc:
        keys.append("all")
    for k in keys:
        a = acc[k]
        n = a["valid"]
        row: dict[str, float | int] = {"videos": int(a["videos"]), "frames": int(a["frames"]), "valid_frames": int(n)}
        for d, s, s2 in (("valence", "sv", "sv2"), ("arousal", "sa", "sa2")):
            if n:
                mean = a[s] / n
                row[f"{d}_mean"] = mean
                row[f"{d}_std"] = math.sqrt(max(a[s2] / n - mean * mean, 0.0))
            else:
                row[f"{d}_mean"] = math.nan
                row[f"{d}_std"] = math.nan
        out[k] = row
    return out
