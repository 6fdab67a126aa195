"""The one feature store: one file per (video, extractor), atomic, keyed by the extractor's config hash.

Layout: ``ROOT/<extractor>/<video_id>.npz`` holding
``values`` (T, D), ``mask`` (T,), the time base (``hop``, ``win``, ``start``), ``config_hash``, a JSON
``meta`` string (config, versions, free-form info such as generated texts) and any number of extra arrays
(``x_<name>``, same first axis T or any shape). Failed videos leave ``ROOT/<extractor>/<video_id>.failed.json``
so a batch job can report them at the end and retry them on the next run.

The archives are written uncompressed (``np.savez``), so every array lies contiguous inside its file:
:meth:`FeatureStore.open` reads a record's header and small arrays but leaves ``values`` and the per-frame
extras on disk as :class:`StoredArray` objects that read only the rows asked for (training gathers its windows
per batch this way, and its memory follows the batch, not the corpus). Stores written before this need no
migration. ``FeatureStore(root, dtype="float16")`` stores feature vectors in half precision (half the disk and
page cache).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

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


def _row_index(idx: Any, n: int) -> np.ndarray:
    """Integer row numbers of an index array; a boolean mask of ``n`` rows gives the rows it selects."""
    a = np.asarray(idx)
    if a.dtype == bool:
        if a.shape != (n,):
            raise IndexError(f"boolean index of shape {a.shape} for {n} rows")
        return np.flatnonzero(a)
    return a.astype(np.int64, copy=False)


class StoredArray:
    """An array inside an uncompressed ``.npz`` member, read from disk by rows on demand (never whole).

    ``a[i:j]`` and ``a[index_array]`` return fresh in-memory arrays (``dtype`` as stored; ``astype`` on the
    result) read with plain file reads: unlike a memory map, the pages read count against the page cache, not
    against this process's resident memory, so a pass over a corpus larger than memory keeps a flat RSS.
    :meth:`memmap` gives the read-only ``np.memmap`` view when mapped access is wanted.

    Attributes:
        path: the archive; offset: byte offset of the array's data in it; shape, dtype: as stored (C order).
    """

    def __init__(self, path: Path, offset: int, shape: tuple[int, ...], dtype: np.dtype):
        self.path, self.offset, self.shape, self.dtype = Path(path), int(offset), tuple(shape), np.dtype(dtype)
        self._row = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def _read(self, f: Any, start: int, stop: int) -> np.ndarray:
        out = np.empty((max(stop - start, 0),) + self.shape[1:], self.dtype)
        if len(out):
            f.seek(self.offset + start * self._row)
            if f.readinto(memoryview(out).cast("B")) != out.nbytes:
                raise FeatureError(f"{self.path}: truncated feature file (rows {start}:{stop})")
        return out

    def __getitem__(self, idx: Any) -> np.ndarray:
        """Rows ``idx`` (a slice, an int, an integer index array or a boolean mask) as an in-memory array."""
        n = self.shape[0]
        with open(self.path, "rb", buffering=0) as f:
            if isinstance(idx, slice):
                start, stop, step = idx.indices(n)
                if step != 1:
                    return self._read(f, start, stop)[::step]
                return self._read(f, start, max(start, stop))
            if isinstance(idx, (int, np.integer)):
                i = int(idx) + (n if idx < 0 else 0)
                if not 0 <= i < n:
                    raise IndexError(f"row {idx} out of range for {n} rows")
                return self._read(f, i, i + 1)[0]
            ix = _row_index(idx, n)
            if ix.ndim != 1:
                raise IndexError("StoredArray takes a slice, an int or a 1-D index array")
            if len(ix) == 0:
                return np.empty((0,) + self.shape[1:], self.dtype)
            ix = np.where(ix < 0, ix + n, ix)
            if ix.min() < 0 or ix.max() >= n:
                raise IndexError(f"index out of range for {n} rows")
            if ix[-1] - ix[0] == len(ix) - 1 and (len(ix) == 1 or bool((np.diff(ix) == 1).all())):
                return self._read(f, int(ix[0]), int(ix[-1]) + 1)  # one run in order: a plain read
            uniq, inv = np.unique(ix, return_inverse=True)
            # contiguous runs of the wanted rows, one read each (a window's rows are one run or a few)
            cuts = np.flatnonzero(np.diff(uniq) != 1) + 1
            blocks = [self._read(f, int(r[0]), int(r[-1]) + 1) for r in np.split(uniq, cuts)]
            return np.concatenate(blocks)[inv] if len(blocks) > 1 else blocks[0][inv]

    def read(self) -> np.ndarray:
        """The whole array in memory."""
        return self[:]

    def memmap(self) -> np.memmap:
        """A read-only memory map of the array (its touched pages count in this process's resident memory)."""
        return np.memmap(self.path, dtype=self.dtype, mode="r", offset=self.offset, shape=self.shape)


class RowView:
    """Rows of one or more arrays side by side, ``(n, sum of widths)`` float32, gathered only when asked for.

    The lazy inputs of fusion (``[emb, va]``), audio (features z-scored per video) and behavior (segment
    features standardised) training; face training's frames, gathered from the nearest face frame, are
    :class:`vaest.inputs.face.FaceFrames`. ``parts`` are :class:`StoredArray` objects (their rows stay on disk) or
    in-memory arrays, each (T_i, D_i) or (T_i,); a part shorter than ``n`` reads as zeros past its end, a longer
    one is cut to ``n``. ``transform`` maps each gathered float32 block (k, D) to the rows served (a
    standardisation, NaN replacement); it must act row by row, so that every window or batch gets the same
    floats as transforming the whole array at once. Indexed like an array by the windowing helper
    (:func:`vaest.windows.take_window`) and the batch builders: ``v[i:j]``, ``v[index_array]``, ``v[mask]``,
    ``v[i]``.
    """

    def __init__(self, parts: Iterable[Any], n: int | None = None, width: int | None = None,
                 transform: Callable[[np.ndarray], np.ndarray] | None = None):
        self.parts = list(parts)
        if n is None:
            n = len(self.parts[0]) if self.parts else 0
        widths = [int(np.prod(p.shape[1:], dtype=np.int64)) for p in self.parts]
        w = sum(widths)
        if width is not None and self.parts and w != width:
            raise FeatureError(f"input width {w} differs from {width} in other videos of the run")
        self._widths = widths
        self.shape = (int(n), w if self.parts or width is None else int(width))
        self.dtype = np.dtype(np.float32)
        self.transform = transform

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def ndim(self) -> int:
        return 2

    def __getitem__(self, idx: Any) -> np.ndarray:
        """Rows ``idx`` (slice, int, 1-D integer index array or boolean mask; ``(rows, columns)`` also) as a
        fresh (k, width) float32 array."""
        n = self.shape[0]
        if isinstance(idx, tuple):  # rows, then columns of those rows
            return self[idx[0]][(slice(None),) + idx[1:]] if idx else self[:]
        if isinstance(idx, (int, np.integer)):
            i = int(idx) + (n if idx < 0 else 0)
            if not 0 <= i < n:
                raise IndexError(f"row {idx} out of range for {n} rows")
            return self[i : i + 1][0]
        if isinstance(idx, slice):
            start, stop, step = idx.indices(n)
            if step != 1:
                return self[np.arange(start, stop, step)]
            stop = max(start, stop)
            out = np.zeros((stop - start, self.shape[1]), np.float32)
            c = 0
            for p, w in zip(self.parts, self._widths):
                e = min(stop, len(p))
                if e > start:
                    out[: e - start, c : c + w] = np.reshape(p[start:e], (e - start, w))
                c += w
        else:
            ix = _row_index(idx, n)
            if ix.ndim != 1:
                raise IndexError("RowView takes a slice, an int or a 1-D index array")
            ix = np.where(ix < 0, ix + n, ix)
            if len(ix) and (ix.min() < 0 or ix.max() >= n):
                raise IndexError(f"index out of range for {n} rows")
            out = np.zeros((len(ix), self.shape[1]), np.float32)
            c = 0
            for p, w in zip(self.parts, self._widths):
                inside = ix < len(p)
                if inside.all():
                    out[:, c : c + w] = np.reshape(p[ix], (len(ix), w))
                elif inside.any():
                    out[inside, c : c + w] = np.reshape(p[ix[inside]], (int(inside.sum()), w))
                c += w
        return out if self.transform is None else self.transform(out)

    def read(self) -> np.ndarray:
        """All rows, in memory."""
        return self[:]


def _member_offsets(path: Path) -> dict[str, StoredArray | None]:
    """Where each ``.npy`` member of an ``.npz`` archive keeps its data: name -> :class:`StoredArray`, or None
    for a member that cannot be read in place (compressed, Fortran order, object arrays)."""
    out: dict[str, StoredArray | None] = {}
    with open(path, "rb") as raw, zipfile.ZipFile(raw) as zf:
        for info in zf.infolist():
            name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            if info.compress_type != zipfile.ZIP_STORED:
                out[name] = None
                continue
            raw.seek(info.header_offset)
            local = raw.read(30)  # the local file header: name and extra-field lengths at bytes 26..30
            data = info.header_offset + 30 + int.from_bytes(local[26:28], "little") + int.from_bytes(local[28:30], "little")
            raw.seek(data)
            version = np.lib.format.read_magic(raw)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(raw)
            if fortran or dtype.hasobject:
                out[name] = None
                continue
            out[name] = StoredArray(path, raw.tell(), shape, dtype)
    return out


@dataclass
class Expect:
    """What a reader asks of the records it is served (checked by :meth:`FeatureStore.open` / :meth:`load`).

    Attributes:
        who: the asker, for messages (e.g. ``encoder 'grada'`` or ``model run runs/face``).
        dim: feature width (``values.shape[1]``) required, or None (the first record served then fixes it for
            the rest: one run reads features of one width).
        config_hash: extractor config hash required, or None (the first record served then fixes it for the
            rest: one training run reads records of one config only).
        same_hash: with ``config_hash`` None, take the first record's hash as the required one.
        features_hash: the feature-space identity required (``meta["features_hash"]``, see
            :meth:`vaest.features.base.Extractor.features_hash`: what a trained model's checkpoint records of its
            training features), or None (not checked). A record written before records carried it is served
            with one warning per reader.
    """

    who: str
    dim: int | None = None
    config_hash: str | None = None
    same_hash: bool = True
    features_hash: str | None = None
    _warned: bool = field(default=False, repr=False)

    def check(self, where: str, extractor: str, dim: int, h: str, features_hash: str | None = None) -> None:
        """Raise :class:`FeatureError` naming the store file, the asker and both values on a mismatch
        (``features_hash``: the record's ``meta["features_hash"]``)."""
        if self.dim is None:
            self.dim = dim
        elif dim != self.dim:
            raise FeatureError(f"{where}: '{extractor}' features are {dim}-d, but {self.who} expects {self.dim}-d "
                               "(features of another encoder or model under this key; re-extract them)")
        if self.config_hash is None and self.same_hash:
            self.config_hash = h
        elif self.config_hash is not None and h != self.config_hash:
            raise FeatureError(f"{where}: '{extractor}' features have config hash {h}, but {self.who} expects "
                               f"{self.config_hash} (records of another extractor configuration; re-extract them "
                               "or point at the store they came from)")
        if self.features_hash is None:
            return
        if features_hash is None:
            if not self._warned:
                self._warned = True
                log.warning("%s: '%s' record written before records carried a features hash: not checked against "
                            "%s's %s (re-extract to have it checked)", where, extractor, self.who, self.features_hash)
        elif features_hash != self.features_hash:
            raise FeatureError(f"{where}: '{extractor}' features have features hash {features_hash}, but {self.who} "
                               f"was trained on features hash {self.features_hash} (another encoder configuration, e.g. the "
                               "face encoder's weights, crop framing or mirror TTA, or the audio or behavior "
                               "extractor's settings; extract them with the configuration the model was trained on)")


@dataclass
class LazyRecord:
    """A stored record whose large arrays stay on disk (:meth:`FeatureStore.open`).

    Attributes:
        values: (T, D) :class:`StoredArray` (or an in-memory array where the member cannot be read in place).
        mask: (T,) bool, in memory.
        base, meta, config_hash: as in :class:`FeatureRecord`.
        extras: name -> :class:`StoredArray` or array.
    """

    values: "StoredArray | np.ndarray"
    mask: np.ndarray
    base: TimeBase
    meta: dict[str, Any]
    config_hash: str
    extras: dict[str, "StoredArray | np.ndarray"] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.values.shape[1]) if len(self.values.shape) > 1 else 1


FLOAT_DTYPES = ("float32", "float16")
# ``dtype`` applies to feature vectors (values at least this wide: embeddings, descriptors); boxes, landmarks,
# frame times, masks and the extras keep the precision they were produced in
HALF_MIN_WIDTH = 16


class FeatureStore:
    """Read and write feature records under a root folder.

    ``dtype``: ``float16`` stores the values of feature-vector records (at least ``HALF_MIN_WIDTH`` wide: face,
    behavior and audio embeddings) in half precision, half their disk and page-cache size; None or ``float32``
    keeps everything as produced. Readers get float32 back (training converts per batch).
    """

    def __init__(self, root: str | os.PathLike, dtype: str | None = None):
        self.root = Path(root)
        if dtype is not None and dtype not in FLOAT_DTYPES:
            raise FeatureError(f"feature dtype {dtype!r}: expected one of {', '.join(FLOAT_DTYPES)}")
        self.dtype = None if dtype in (None, "float32") else np.dtype(dtype)

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
            "values": self._stored(rec.series.values, cast=rec.series.dim >= HALF_MIN_WIDTH),
            "mask": np.asarray(rec.series.mask, dtype=bool),
            "hop": np.float64(rec.base.hop),
            "win": np.float64(rec.base.win),
            "start": np.float64(rec.base.start),
            "config_hash": np.array(rec.config_hash),
            "meta": np.array(json.dumps(rec.meta, default=str)),
        }
        for k, v in rec.extras.items():
            arrays[f"x_{k}"] = self._stored(v, cast=False)
        with atomic_path(p, suffix=".tmp.npz") as tmp:
            np.savez(tmp, **arrays)
        self.failure_path(extractor, video_id).unlink(missing_ok=True)
        return p

    def _stored(self, v: Any, cast: bool) -> np.ndarray:
        """``v`` as written: C order; with ``cast``, floating point in the store's ``dtype`` when it has one."""
        a = np.asarray(v)
        if a.ndim >= 2 and not a.flags.c_contiguous:  # C order: readable in place by StoredArray
            a = np.ascontiguousarray(a)
        if cast and self.dtype is not None and a.dtype.kind == "f" and a.dtype != self.dtype:
            a = a.astype(self.dtype)
        return a

    def _missing(self, p: Path, extractor: str, video_id: str) -> FeatureError:
        return FeatureError(f"{p}: no '{extractor}' features for video '{video_id}' "
                            f"(run `vaest extract {extractor.split('-')[0]}` first)")

    def open(self, extractor: str, video_id: str, expect: Expect | None = None) -> LazyRecord:
        """A record whose ``values`` and per-step extras stay on disk (:class:`StoredArray`); the mask, time base
        and meta are read. ``expect`` checks width and config hash before anything is served."""
        p = self.path(extractor, video_id)
        if not p.exists():
            raise self._missing(p, extractor, video_id)
        try:
            members = _member_offsets(p)
            with np.load(p, allow_pickle=False) as z:
                base = TimeBase(hop=float(z["hop"]), win=float(z["win"]), start=float(z["start"]))
                mask = np.asarray(z["mask"], bool)
                meta = json.loads(str(z["meta"]))
                h = str(z["config_hash"])
                # members not readable in place (none that vaest writes) are read whole
                arrays = {k: members.get(k) or z[k] for k in z.files if k == "values" or k.startswith("x_")}
        except Exception as e:
            raise FeatureError(f"{p}: damaged feature file ({e}); delete it and rerun extraction") from None
        rec = LazyRecord(arrays.pop("values"), mask, base, meta, h, {k[2:]: v for k, v in arrays.items()})
        if expect is not None:
            expect.check(str(p), extractor, rec.dim, h, meta.get("features_hash"))
        return rec

    def load(self, extractor: str, video_id: str, expect: Expect | None = None) -> FeatureRecord:
        """Load a record; raises FeatureError naming the file when missing or damaged, or (with ``expect``) when
        its width or config hash is not the one asked for."""
        p = self.path(extractor, video_id)
        if not p.exists():
            raise self._missing(p, extractor, video_id)
        try:
            with np.load(p, allow_pickle=False) as z:
                base = TimeBase(hop=float(z["hop"]), win=float(z["win"]), start=float(z["start"]))
                series = TimeSeries(z["values"], base, z["mask"])
                extras = {k[2:]: z[k] for k in z.files if k.startswith("x_")}
                meta = json.loads(str(z["meta"]))
                h = str(z["config_hash"])
        except Exception as e:
            raise FeatureError(f"{p}: damaged feature file ({e}); delete it and rerun extraction") from None
        if expect is not None:
            expect.check(str(p), extractor, series.dim, h, meta.get("features_hash"))
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

    def load(self, extractor: str, video_id: str, expect: Expect | None = None) -> FeatureRecord:
        rec = self._records.get((extractor, video_id))
        if rec is None:
            raise FeatureError(f"{self.path(extractor, video_id)}: no '{extractor}' features for '{video_id}'")
        if expect is not None:
            expect.check(str(self.path(extractor, video_id)), extractor, rec.series.dim, rec.config_hash,
                         rec.meta.get("features_hash"))
        return rec

    def open(self, extractor: str, video_id: str, expect: Expect | None = None) -> LazyRecord:
        """The in-memory record in the :class:`LazyRecord` form (its arrays are already in memory)."""
        rec = self.load(extractor, video_id, expect)
        return LazyRecord(rec.values, rec.mask, rec.base, rec.meta, rec.config_hash, dict(rec.extras))

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
