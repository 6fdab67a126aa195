"""Many inputs through one :class:`~vaest.predictor.core.Predictor`: files, folders and globs expanded
(:func:`expand_inputs`) and predicted into ``OUT/<relative path>.csv/.json/.png`` with ``OUT/index.csv``
(:func:`predict_many`); one failing file never stops the batch.
"""

from __future__ import annotations

import glob as globmod
import logging
import os
from pathlib import Path
from typing import Iterable, Sequence

from vaest.corpus import AUDIO_EXTS
from vaest.corpus.affwild2 import VIDEO_EXTS
from vaest.errors import VaestError
from vaest.predictor.core import Predictor
from vaest.predictor.extract import IMAGE_EXTS

log = logging.getLogger(__name__)



def expand_inputs(inputs: Iterable[str | Path], exclude: str | Path | None = None) -> list[tuple[Path, Path]]:
    """(file, output stem relative to OUT) for every input: files as given, folders recursively (media and photo
    files by extension), glob patterns expanded. Output stems keep each file's
    path relative to the common folder of all inputs (a folder input counts as its own root), without suffix;
    files that would share a stem (``x.mp4`` and ``x.flv``) keep their suffix in it. Folder contents below
    ``exclude`` (the output folder, when it lies inside an input folder) are left out."""
    files: list[tuple[Path, Path]] = []  # (file, anchor folder)
    exts = VIDEO_EXTS + AUDIO_EXTS + IMAGE_EXTS
    for raw in inputs:
        s = str(raw)
        p = Path(s)
        if p.is_dir():
            skip = Path(exclude).resolve() if exclude is not None else None
            found = sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in exts
                           and not any(part.startswith(".") for part in q.relative_to(p).parts)
                           and not (skip is not None and q.resolve().is_relative_to(skip)))
            files += [(q, p) for q in found]
        elif not p.exists() and any(c in s for c in "*?["):
            hits = sorted(Path(h) for h in globmod.glob(s, recursive=True))
            files += [(h, h.parent) for h in hits if h.is_file()]
        else:
            files.append((p, p.parent))
    seen: set[Path] = set()
    uniq = []
    for f, a in files:
        r = f.resolve() if f.exists() else f.absolute()
        if r not in seen:
            seen.add(r)
            uniq.append((f, r, a.resolve()))
    if not uniq:
        return []
    root = Path(os.path.commonpath([str(a) for _, _, a in uniq]))
    rels = []
    for f, r, _ in uniq:
        try:
            rel = r.relative_to(root)
        except ValueError:
            rel = Path(r.name)
        rels.append(rel)
    stems = [rel.with_suffix("") for rel in rels]
    dup = {s for s in stems if stems.count(s) > 1}
    return [(f, rel if stem in dup else stem) for (f, _, _), rel, stem in zip(uniq, rels, stems)]



def predict_many(inputs: Sequence[str | Path], out: str | Path, predictor: Predictor, plot: bool = True,
                 html: bool = False) -> list[dict[str, str]]:
    """Predict every input (see :func:`expand_inputs`) into ``out``; one failing file never stops the batch.

    Writes ``OUT/<stem>.csv`` / ``.json`` / ``.png`` per file and ``OUT/index.csv`` (``input,csv,status,reason``,
    status ``ok`` or ``failed``); with ``html`` also ``OUT/<stem>.html`` per file (:func:`vaest.view.write_page`
    on the written CSV, the input as its media) and ``OUT/index.html``. Returns the index rows.
    """
    import csv
    import io

    from vaest.io import atomic_write_text
    from vaest.progress import make_progress, progress_enabled

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    items = expand_inputs(inputs, exclude=out)
    if not items:
        raise VaestError("no input file found: " + ", ".join(map(str, inputs)))
    rows: list[dict[str, str]] = []
    with progress_enabled(predictor.progress), make_progress() as prog:
        task = prog.add_task("predict", total=len(items))
        for f, stem in items:
            csv_path = out / f"{stem}.csv"
            try:
                res = predictor.predict(f)
                res.to_csv(csv_path)
                res.to_json(out / f"{stem}.json")
                if plot:
                    res.plot(out / f"{stem}.png")
                if html:
                    from vaest.view import page_for, write_page

                    if res.meta.get("kind") == "photo":
                        res.to_html(page_for(csv_path), media=f)
                    else:
                        write_page(csv_path, f, page_for(csv_path), meta=res.meta)
                rows.append({"input": str(f), "csv": str(csv_path.relative_to(out)), "status": "ok",
                             "reason": "; ".join(n for n in res.meta["notes"] if n.startswith("no "))})
                log.info("%s: %d frames (%d estimated) -> %s", f, res.meta["n_frames"],
                         res.meta["frames_estimated"], csv_path)
            except Exception as e:  # one bad file must not stop a batch
                msg = str(e) if isinstance(e, VaestError) else f"{f}: {type(e).__name__}: {e}"
                msg = " ".join(msg.split())
                log.error("%s", msg)
                rows.append({"input": str(f), "csv": "", "status": "failed", "reason": msg})
            prog.advance(task)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["input", "csv", "status", "reason"], lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(out / "index.csv", buf.getvalue())
    if html:
        from vaest.view import write_index

        write_index(out / "index.csv")
    return rows
