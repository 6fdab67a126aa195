"""The one feature store: one file per (video, extractor), atomic, keyed by the extractor's config hash.

Layout: ``ROOT/<extractor>/<video_id>.npz`` holding
``values`` (T, D), ``mask`` (T,), the time base (``hop``, ``win``, ``start``), ``config_hash``, a JSON
``meta`` string (config, versions, free-form info such as generated texts) and any number of extra arrays
(``x_<name>``, same first axis T or any shape). Failed videos leave ``ROOT/<extractor>/<video_id>.failed.json``
so a batch job can report them at the end and retry them on the next run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from vaest.errors import FeatureError
from vaest.io import atomic_path, atomic_write_json, remove_stale_temporaries
from vaest.timebase import TimeBase, TimeSeries

log = logging.getLogger(__name__)


def config_hash(config: Any) -> str:
    """Stable 12-hex hash of a config (dataclass, dict or anything JSON-serialisable)."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha1(blob).hexdigest()[:12]


def safe_name(video_id: str) -> str:
    """File-system-safe form of a video id (path separators replaced; other characters kept)."""
    return video_id.replace(os.sep, "__").replace("/", "__")


@dataclass
class FeatureRecord:
    """What an extractor produces for one video.

    Attributes:
        series: main values (T, D) with time base and validity mask.
        extras: further arrays (e.g. per-frame confidence (T,), class probabilities (T, C)).
        meta: JSON-serialisable information (texts, counts, warnings).
        config_hash: hash of the extractor config that produced it.
    """

    series: TimeSeries
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    config_hash: str = ""

    @property
    def values(self) -> np.ndarray:
        return self.series.values

    @property
    def mask(self) -> np.ndarray:
        return self.series.mask  # type: ignore[return-value]

    @property
    def base(self) -> TimeBase:
        return self.series.base


@dataclass
class StoredItem:
    extractor: str
    video_id: str
    path: Path
    n: int
    dim: int
    config_hash: str
    hop: float
    win: float


class FeatureStore:
    """Read and write feature records under a root folder."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def path(self, extractor: str, video_id: str) -> Path:
        return self.root / extractor / f"{safe_name(video_id)}.npz"

    def remove_stale_temporaries(self) -> list[Path]:
        """Remove temporary files of writes into this store that were killed midway (see
        :func:`vaest.io.remove_stale_temporaries`); every extraction run calls it before it starts."""
        return remove_stale_temporaries(self.root)

    def failure_path(self, extractor: str, video_id: str) -> Path:
        return self.root / extractor / f"{safe_name(video_id)}.failed.json"

    def stored_hash(self, extractor: str, video_id: str) -> str | None:
        """Config hash of the stored record, or None when absent or unreadable."""
        p = self.path(extractor, video_id)
        if not p.exists():
            return None
        try:
            with np.load(p, allow_pickle=False) as z:
                return str(z["config_hash"])
        except Exception as e:  # a damaged file counts as absent and is recomputed
            log.warning("%s: unreadable feature file, will recompute (%s)", p, e)
            return None

    def has(self, extractor: str, video_id: str, cfg_hash: str | None = None) -> bool:
        """True when a record exists (and, with ``cfg_hash``, was made by that config)."""
        h = self.stored_hash(extractor, video_id)
        return h is not None and (cfg_hash is None or h == cfg_hash)

    def save(self, extractor: str, video_id: str, rec: FeatureRecord) -> Path:
        """Write ``rec`` atomically (temporary file, then rename) and clear any failure marker."""
        p = self.path(extractor, video_id)
        arrays: dict[str, np.ndarray] = {
            "values": np.ascontiguousarray(rec.series.values),
            "mask": np.asarray(rec.series.mask, dtype=bool),
            "hop": np.float64(rec.base.hop),
            "win": np.float64(rec.base.win),
            "start": np.float64(rec.base.start),
            "config_hash": np.array(rec.config_hash),
            "meta": np.array(json.dumps(rec.meta, default=str)),
        }
        for k, v in rec.extras.items():
            arrays[f"x_{k}"] = np.asarray(v)
        with atomic_path(p, suffix=".tmp.npz") as tmp:
            np.savez(tmp, **arrays)
        self.failure_path(extractor, video_id).unlink(missing_ok=True)
        return p

    def load(self, extractor: str, video_id: str) -> FeatureRecord:
        """Load a record; raises FeatureError naming the file when missing or damaged."""
        p = self.path(extractor, video_id)
        if not p.exists():
            raise FeatureError(f"{p}: no '{extractor}' features for video '{video_id}' (run `vaest extract {extractor.split('-')[0]}` first)")
        try:
            with np.load(p, allow_pickle=False) as z:
                base = TimeBase(hop=float(z["hop"]), win=float(z["win"]), start=float(z["start"]))
                series = TimeSeries(z["values"], base, z["mask"])
                extras = {k[2:]: z[k] for k in z.files if k.startswith("x_")}
                meta = json.loads(str(z["meta"]))
                h = str(z["config_hash"])
        except Exception as e:
            raise FeatureError(f"{p}: damaged feature file ({e}); delete it and rerun extraction") from None
        return FeatureRecord(series, extras, meta, h)

    def record_failure(self, extractor: str, video_id: str, message: str) -> None:
        """Leave a marker saying why a video failed (read back by :meth:`failures`)."""
        atomic_write_json(self.failure_path(extractor, video_id),
                          {"video": video_id, "extractor": extractor, "error": message, "time": time.time()})

    def failures(self, extractor: str | None = None) -> list[dict]:
        """Failure markers, optionally for one extractor."""
        dirs = [self.root / extractor] if extractor else sorted(d for d in self.root.glob("*") if d.is_dir())
        out = []
        for d in dirs:
            for f in sorted(d.glob("*.failed.json")):
                try:
                    out.append(json.loads(f.read_text()))
                except (OSError, json.JSONDecodeError):
                    continue
        return out

    def extractors(self) -> list[str]:
        return sorted(d.name for d in self.root.glob("*") if d.is_dir() and not d.name.startswith("."))

    def videos(self, extractor: str) -> list[str]:
        """Video ids stored for an extractor (from file names; ids with path separators come back escaped)."""
        return sorted(p.stem for p in (self.root / extractor).glob("*.npz") if not p.name.startswith("."))

    def items(self, extractor: str | None = None) -> Iterator[StoredItem]:
        """Listing of what is stored (reads only array headers)."""
        for ex in [extractor] if extractor else self.extractors():
            for p in sorted((self.root / ex).glob("*.npz")):
                if p.name.startswith("."):
                    continue
                try:
                    with np.load(p, allow_pickle=False, mmap_mode=None) as z:
                        shape = z["values"].shape
                        yield StoredItem(ex, p.stem, p, int(shape[0]), int(shape[1]) if len(shape) > 1 else 1,
                                         str(z["config_hash"]), float(z["hop"]), float(z["win"]))
                except Exception:
                    log.warning("%s: unreadable, skipped in listing", p)


class MemoryStore(FeatureStore):
    """A :class:`FeatureStore` held in memory (nothing written): the records of one media file while it is
    predicted, read by the same loaders as the on-disk store. ``path`` names a pseudo-location for messages."""

    def __init__(self, name: str = "memory"):
        super().__init__(Path(f"<{name}>"))
        self._records: dict[tuple[str, str], FeatureRecord] = {}

    def stored_hash(self, extractor: str, video_id: str) -> str | None:
        rec = self._records.get((extractor, video_id))
        return None if rec is None else rec.config_hash

    def save(self, extractor: str, video_id: str, rec: FeatureRecord) -> Path:
        self._records[(extractor, video_id)] = rec
        return self.path(extractor, video_id)

    def load(self, extractor: str, video_id: str) -> FeatureRecord:
        rec = self._records.get((extractor, video_id))
        if rec is None:
            raise FeatureError(f"{self.path(extractor, video_id)}: no '{extractor}' features for '{video_id}'")
        return rec

    def keep_only(self, video_id: str, extractors: Iterable[str]) -> None:
        """Forget ``video_id``'s records other than ``extractors``' (the predictor, once its models have read
        them: a 10-minute video's face, face-track and audio features are ~45 MB)."""
        keep = set(extractors)
        for key in [k for k in self._records if k[1] == video_id and k[0] not in keep]:
            del self._records[key]

    def record_failure(self, extractor: str, video_id: str, message: str) -> None:
        log.debug("%s/%s failed: %s", extractor, video_id, message)

    def failures(self, extractor: str | None = None) -> list[dict]:
        return []

    def extractors(self) -> list[str]:
        return sorted({k for k, _ in self._records})

    def videos(self, extractor: str) -> list[str]:
        return sorted(v for k, v in self._records if k == extractor)
