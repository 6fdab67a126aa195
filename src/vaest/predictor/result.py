"""The result of one prediction: the per-frame table and its metadata (:class:`PredictionResult`, written as CSV,
JSON, PNG or an HTML page), and the post-processing that turns raw fused values into it (:func:`finalize`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vaest.errors import VaestError

MODALITIES = ("face", "audio", "behavior")
BOX_COLUMNS = ("box_x0", "box_y0", "box_x1", "box_y1")



@dataclass
class PredictionResult:
    """Per-frame valence/arousal of one media file.

    Attributes:
        frame: pandas DataFrame, one row per decoded frame (columns in the module docstring).
        meta: input path, model, modalities present/missing, versions, fps, n_frames, kernels, fill, notes.
    """

    frame: Any
    meta: dict[str, Any] = field(default_factory=dict)

    def _person_label(self, pid: int) -> str:
        """Panel title of person ``pid``: id, share of frames, whether they speak (from :attr:`meta`)."""
        info = self.meta.get("people", {}).get("persons", {}).get(str(pid), {})
        txt = f"person {pid}"
        if "share" in info:
            txt += f": on {100 * info['share']:.0f}% of frames"
        if info.get("speaks") is not None:
            txt += ", speaks" if info["speaks"] else ", silent"
        return txt

    def to_csv(self, path: str | Path) -> Path:
        """Write the frame table as CSV (NaN = empty cell, 4 decimals, times 6 decimals), atomically."""
        from vaest.io import atomic_write_text

        df = self.frame.copy()
        df["time"] = df["time"].map(lambda x: "" if not math.isfinite(x) else f"{x:.6f}")
        text = df.to_csv(index=False, float_format="%.4f", na_rep="", lineterminator="\n")
        atomic_write_text(path, text)
        return Path(path)

    def to_json(self, path: str | Path) -> Path:
        """Write :attr:`meta` as JSON, atomically."""
        from vaest.io import atomic_write_json

        atomic_write_json(path, self.meta)
        return Path(path)

    def to_html(self, path: str | Path, media: str | Path | None = None) -> Path:
        """Write the interactive page (:mod:`vaest.view`): the media with its valence/arousal curves.

        ``media``: the input to play beside the curves (None: ``meta["input"]`` where that file exists); a
        format the browser cannot play gets an H.264/AAC proxy beside the page."""
        from vaest.view import write_frame_page, write_photo_page

        if media is None and self.meta.get("input") and Path(str(self.meta["input"])).is_file():
            media = Path(str(self.meta["input"]))
        if self.meta.get("kind") == "photo":
            return write_photo_page(self.frame, self.meta, media, path)
        return write_frame_page(self.frame, self.meta, media, path)

    def plot(self, path: str | Path) -> Path:
        """Valence and arousal over time: final curve bold, modalities thin, gaps left as gaps (NaN is not
        drawn), filled frames dashed; fusion weights underneath; zero-shot cues labelled in the title. A photo's
        result: the photo with each face's box and values (:func:`vaest.photos.draw_photo`)."""
        if self.meta.get("kind") == "photo":
            from vaest.photos import draw_photo

            if not Path(str(self.meta.get("input", ""))).is_file():
                raise VaestError("the plot of a photo draws on the photo file, and this result has none (an array)")
            return draw_photo(Path(str(self.meta["input"])), self.frame, path)
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from vaest.io import atomic_path

        df = self.frame
        groups = [(None, df)]
        if "person" in df and len(df):  # one panel group per person
            groups = [(int(k), g) for k, g in df.groupby("person", sort=True)]
        wcols = [c for c in df.columns if c.startswith("weight_")]
        per = 3 if wcols else 2
        fig, axes = plt.subplots(per * len(groups), 1, figsize=(10, 2.4 * per * len(groups)), sharex=True,
                                 squeeze=False)
        axes = axes[:, 0]
        for gi, (pid, g) in enumerate(groups):
            _plot_va(axes[gi * per: (gi + 1) * per], g, wcols, None if pid is None else self._person_label(pid),
                     "arousal weight" if self.meta.get("model") == "zero-shot" else "fusion weight")
        axes[-1].set_xlabel("time (s)")
        title = Path(str(self.meta.get("input", ""))).name
        if self.meta.get("notes"):
            import textwrap

            title += "\n" + "\n".join(textwrap.wrap("; ".join(self.meta["notes"]), 160))
        fig.suptitle(title, fontsize=8, y=1 - 0.04 / fig.get_figheight())
        # fixed margins (tight_layout measured every text box: 0.1-0.25 s per plot, a tenth of a short clip's run):
        # the title block is its line count x 8 pt text, the panels share x, the legends sit inside the axes
        inch = fig.get_figheight()
        labelled = any(pid is not None for pid, _ in groups)  # a person label above each group's first panel
        fig.subplots_adjust(left=0.07, right=0.985, bottom=0.45 / inch,
                            top=1 - (0.12 + 0.135 * (title.count("\n") + 1) + 0.2 * labelled) / inch,
                            hspace=0.3 if labelled else 0.12)
        with atomic_path(path, suffix=".tmp.png") as tmp:
            fig.savefig(tmp, dpi=90, format="png")
        plt.close(fig)
        return Path(path)



def _plot_va(axes: Sequence[Any], df: Any, wcols: list[str], label: str | None,
             weight_label: str = "fusion weight") -> None:
    """Draw one series (one person's rows of the table) onto ``axes``: valence, arousal (and fusion weights)."""
    t = df["time"].to_numpy()
    est = (df["source"] == "estimated").to_numpy()
    for ax, name in zip(axes, ("valence", "arousal")):
        for m in MODALITIES:
            col = f"{m}_{name}"
            if col in df and df[col].notna().any():
                ax.plot(t, df[col].to_numpy(), lw=0.8, alpha=0.7, label=m)
        y = df[name].to_numpy(dtype=float)
        ax.plot(t, np.where(est, y, np.nan), lw=2.0, color="black", label="vaest")
        if (df["source"] == "filled").any():
            ax.plot(t, np.where(est, np.nan, y), lw=1.2, color="black", ls="--", label="filled")
        if not np.isfinite(y).any():
            ax.text(0.5, 0.5, f"no {name} estimate", transform=ax.transAxes, ha="center", color="grey")
        ax.axhline(0, color="grey", lw=0.5, ls=":")
        ax.set_ylim(-1.05, 1.05)
        ax.set_ylabel(name)
        ax.legend(loc="upper right", fontsize=7, ncol=5)
    if wcols:
        ax = axes[2]
        W = np.nan_to_num(df[wcols].to_numpy(dtype=float))
        ax.stackplot(t, *W.T, labels=[c[len("weight_"):] for c in wcols], alpha=0.8)
        ax.set_ylim(0, 1)
        ax.set_ylabel(weight_label)
        ax.legend(loc="upper right", fontsize=7, ncol=4)
    if label:
        axes[0].set_title(label, fontsize=8, loc="left")



def finalize(raw: np.ndarray, mask: np.ndarray, kernels: Sequence[int] | None, fill: bool = False
             ) -> tuple[np.ndarray, np.ndarray]:
    """Post-processing that keeps gaps honest.

    Args:
        raw: (n, 2) fused valence/arousal, NaN where a dimension was not estimated.
        mask: (n,) frames where some modality had real input (values elsewhere are the models' own filling).
        kernels: moving-average kernel per dimension (None: no smoothing).
        fill: dense output: frames outside ``mask`` take the nearest estimate before smoothing.
    Returns:
        final (n, 2) clipped to [-1, 1], NaN where nothing was estimated (and, without ``fill``, outside ``mask``);
        source (n,) ``estimated`` (in ``mask``) / ``filled`` (outside ``mask``, value from ``fill``) / ``none``.
    """
    from vaest.postprocess import fill as fill_nearest_va
    from vaest.postprocess import smooth

    n = len(raw)
    mask = np.asarray(mask, bool) & np.isfinite(raw).any(1)
    if mask.any():
        base = np.where(mask[:, None], raw, np.nan).astype(np.float32)
        if fill:  # per dimension: a dimension never estimated (zero-shot audio valence) stays NaN
            base = np.stack([fill_nearest_va(base[:, d]) for d in range(2)], 1)
        final = np.clip(smooth(base, kernels) if kernels else base, -1, 1)
        if not fill:
            final[~mask] = np.nan
    else:
        final = np.full((n, 2), np.nan, np.float32)
    has = np.isfinite(final).any(1)
    return final, np.where(mask & has, "estimated", np.where(has, "filled", "none"))



def frame_modalities(parts: dict[str, Any], n: int) -> dict[str, int]:
    """How many frames had input from which modalities: ``{"face+audio": 120, "face": 30, "none": 5}`` (keys
    join the modalities with input at a frame in :data:`MODALITIES` order); written as ``meta["frame_modalities"]``."""
    has = [(m, np.asarray(parts[m].mask, bool)[:n]) for m in MODALITIES if m in parts]
    keys = np.full(n, "", dtype=object)
    for m, k in has:
        k = np.concatenate([k, np.zeros(n - len(k), bool)])
        keys = np.where(k, np.where(keys == "", m, keys + "+" + m), keys)
    keys = np.where(keys == "", "none", keys)
    u, c = np.unique(keys.astype(str), return_counts=True)
    return {str(a): int(b) for a, b in sorted(zip(u, c), key=lambda x: -x[1])}
