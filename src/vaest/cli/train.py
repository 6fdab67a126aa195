"""``vaest train ...``: the modality models, the learned fusion and late fusion (thin wrappers over
:mod:`vaest.tasks`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from vaest.cli.common import (ConfigDefaultsOpt, ConfigOpt, CrossfitOpt, OptDeviceOpt, PresetOpt, RunsOpt, console,
                              train_app)
from vaest.errors import VaestError



@train_app.command("audio")
def train_audio_cmd(
    features: Annotated[Path, typer.Option(help="Feature store with audio-<encoder> (and mouth, facetrack, vad).")],
    corpus: Annotated[Path, typer.Option(help="Corpus root with train/val labels.")],
    out: Annotated[Path, typer.Option(help="Run folder to write.")],
    encoder: Annotated[Optional[str], typer.Option(help="lmfb, egemaps or wavlm.")] = None,
    backbone: Annotated[Optional[str], typer.Option(help="wavlm: WavLM/wav2vec2/HuBERT path or hub id.")] = None,
    no_filter: Annotated[bool, typer.Option("--no-filter", help="Train on every labelled window (no cross-modal filter).")] = False,
    epochs: Annotated[Optional[int], typer.Option(help="Maximum epochs.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Windows per batch.")] = None,
    device: OptDeviceOpt = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed.")] = None,
    config: ConfigOpt = None,
    crossfit: CrossfitOpt = 0,
    preset: Annotated[Optional[str], typer.Option(help="reference (the official audio model and training) or vaest.")] = None,
    ssl_checkpoint: Annotated[Optional[str], typer.Option(help="SER checkpoint whose ssl_model.* weights initialise the backbone (file, folder or hub id).")] = None,
) -> None:
    """Train the audio model (4 s windows, one VA pair per second) and write its run folder."""
    from vaest.config import load_config
    from vaest.tasks.audio import config_from, train_audio

    flags = {"encoder": encoder, "backbone": backbone, "epochs": epochs, "batch_size": batch_size, "device": device,
             "seed": seed, "filter": False if no_filter else None, "preset": preset, "ssl_checkpoint": ssl_checkpoint}
    cfg = config_from(load_config(config), flags)
    train_audio(features, corpus, out, cfg)
    if crossfit:
        from vaest.tasks.crossfit import crossfit as run_crossfit

        run_crossfit(lambda c, o: train_audio(features, c, o, cfg), corpus, out, crossfit, cfg.seed)



@train_app.command("face")
def train_face_cmd(
    features: Annotated[Path, typer.Option(help="Feature store with face-<encoder> records.")],
    corpus: Annotated[Path, typer.Option(help="Corpus root with train/val labels.")],
    out: Annotated[Path, typer.Option(help="Run folder to write.")],
    encoder: Annotated[Optional[str], typer.Option(help="Encoder whose features to use (default fer).")] = None,
    arch: Annotated[Optional[str], typer.Option(help="Architecture: face-transformer (default) or frame-mlp "
                                                     "(per-frame baseline).")] = None,
    old_model: Annotated[Optional[str], typer.Option("--model", hidden=True, help="Deprecated spelling of --arch.")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Maximum epochs.")] = None,
    device: OptDeviceOpt = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed.")] = None,
    config: ConfigOpt = None,
    crossfit: CrossfitOpt = 0,
    preset: PresetOpt = None,
) -> None:
    """Train the face temporal model (or the per-frame baseline) and write its run folder."""
    from vaest.config import load_config
    from vaest.tasks.face import settings_from, train_face

    st, cfg = settings_from(load_config(config), {"encoder": encoder, "model": arch or old_model, "epochs": epochs,
                                                  "device": device, "seed": seed, "preset": preset})
    res = train_face(corpus, features, out, encoder=st.encoder, model=st.model, train_cfg=cfg, settings=st)
    if crossfit:
        from vaest.tasks.crossfit import crossfit as run_crossfit

        run_crossfit(lambda c, o: train_face(c, features, o, encoder=st.encoder, model=st.model, train_cfg=cfg,
                                             settings=st), corpus, out, crossfit, cfg.seed)
    m = res["metrics"]
    console.print(f"face {st.model}: validation CCC valence {m['valence']:.4f} arousal {m['arousal']:.4f} "
                  f"mean {m['mean']:.4f} -> {out}")



def _parse_runs(items: list[str], corpus: Optional[Path]) -> tuple[dict[str, Path], Path]:
    from vaest.inference import read_run_json

    runs: dict[str, Path] = {}
    for it in items:
        name, sep, path = it.partition("=")
        if not sep or not name or not path:
            raise VaestError(f"--runs {it!r}: expected NAME=RUN_FOLDER, e.g. face=runs/face")
        runs[name.strip()] = Path(path)
    if corpus is None:
        recorded = read_run_json(next(iter(runs.values()))).get("corpus") if runs else None
        if not recorded:
            raise VaestError("no --corpus given and the first run records none")
        corpus = Path(recorded)
    return runs, corpus



@train_app.command("fusion")
def train_fusion_cmd(
    runs: RunsOpt,
    out: Annotated[Path, typer.Option(help="Run folder to write.")],
    corpus: Annotated[Optional[Path], typer.Option(help="Corpus root with train/val labels (default: from the runs).")] = None,
    method: Annotated[Optional[str], typer.Option(help="raav (reliability-aware, default), dcmmoe (directed cross-modal, vaest's experts) or dcm-ref (the official directed fusion; also dcmmoe --preset reference).")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Maximum epochs.")] = None,
    lr: Annotated[Optional[float], typer.Option(help="AdamW learning rate (reference RAAV 5e-5).")] = None,
    device: OptDeviceOpt = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed.")] = None,
    config: ConfigOpt = None,
    preset: Annotated[Optional[str], typer.Option(help="reference (the official model of the method) or vaest.")] = None,
) -> None:
    """Train a fusion model on modality run folders and write its run folder (preds with per-frame weights)."""
    from vaest.config import load_config
    from vaest.tasks.fusion import train_fusion
    from vaest.tasks.fusion_presets import dcmmoe_preset_kwargs, raav_preset_kwargs

    file_cfg = load_config(config)
    runs_p, root = _parse_runs(runs, corpus)
    method = method or file_cfg.get("method", "raav")
    flags = {"preset": preset, "method": method, "epochs": epochs, "lr": lr, "device": device, "seed": seed}
    if method in ("dcmmoe", "dcm-ref"):  # the directed cross-modal family: its preset names the model
        kw = dcmmoe_preset_kwargs(file_cfg, flags)
    elif method == "raav":
        kw = raav_preset_kwargs({k: v for k, v in file_cfg.items() if k != "method"},
                                {k: v for k, v in flags.items() if k != "method"})
    else:  # train_fusion names the known methods
        kw = {"method": method}
    m = train_fusion(runs_p, root, out, features_root=file_cfg.get("features_root"), **kw)
    console.print(f"fusion {kw['method']}: validation CCC valence {m['valence']:.4f} arousal {m['arousal']:.4f} "
                  f"mean {m['mean']:.4f} -> {out}")



@train_app.command("late")
def train_late_cmd(
    runs: RunsOpt,
    out: Annotated[Path, typer.Option(help="Run folder to write.")],
    corpus: Annotated[Optional[Path], typer.Option(help="Corpus root with validation labels (default: from the runs).")] = None,
    method: Annotated[Optional[str], typer.Option(help="dirichlet (seeded random search), grid (simplex grid) or reference (the official subset search).")] = None,
    samples: Annotated[Optional[int], typer.Option(help="Dirichlet samples (default 8000).")] = None,
    step: Annotated[Optional[float], typer.Option(help="Grid step (default 0.05).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed of the Dirichlet search (default 0; reference 42).")] = None,
    preset: Annotated[Optional[str], typer.Option(help="reference (official subset search) or vaest.")] = None,
    config: ConfigDefaultsOpt = None,
) -> None:
    """Late fusion: per-dimension weights of prediction runs searched on validation CCC; writes a run folder."""
    from vaest.presets import get_preset
    from vaest.tasks.late import late_fusion

    p = get_preset("late", preset)
    given = {"method": method, "n_samples": samples, "step": step, "seed": seed}
    opts = {"method": "dirichlet", "n_samples": 8000, "step": 0.05, "seed": 0, **(p.values if p else {}),
            **{k: v for k, v in given.items() if v is not None}}
    method = str(opts["method"])
    runs_p, root = _parse_runs(runs, corpus)
    res = late_fusion(runs_p, root, out, method=method, n_samples=int(opts["n_samples"]), seed=int(opts["seed"]),
                      step=float(opts["step"]), preset=p.name if p else None)
    m = res["metrics"]
    for name, w in res["weights"].items():
        console.print(f"  {name}: valence {w[0]:.3f} arousal {w[1]:.3f}")
    console.print(f"late {method}: validation CCC valence {m['valence']:.4f} arousal {m['arousal']:.4f} "
                  f"mean {m['mean']:.4f} -> {out}")



@train_app.command("behavior")
def train_behavior_cmd(
    features: Annotated[Path, typer.Option(help="Feature store with behavior-* records.")],
    corpus: Annotated[Path, typer.Option(help="Corpus root with train/val labels.")],
    out: Annotated[Path, typer.Option(help="Run folder to write.")],
    encoder: Annotated[Optional[str], typer.Option(help="desc (default), vlm, text or a '+' combination; "
                                                        "+expr adds face expression statistics.")] = None,
    branch: Annotated[Optional[str], typer.Option(help="vlm: multimodal (default), text or visual.")] = None,
    pool: Annotated[Optional[str], typer.Option(help="vlm: last (default), mean or std.")] = None,
    arch: Annotated[Optional[str], typer.Option(help="Architecture: behavior-mamba (default) or frame-mlp "
                                                     "(baseline).")] = None,
    old_model: Annotated[Optional[str], typer.Option("--model", hidden=True, help="Deprecated spelling of --arch.")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Maximum epochs.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Sequences per batch.")] = None,
    device: OptDeviceOpt = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed.")] = None,
    config: ConfigOpt = None,
    crossfit: CrossfitOpt = 0,
    preset: PresetOpt = None,
) -> None:
    """Train the behavior Mamba (or the per-segment baseline) and write its run folder."""
    from vaest.config import load_config
    from vaest.tasks.behavior import settings_from, train_behavior

    st, cfg = settings_from(load_config(config), {"encoder": encoder, "branch": branch, "pool": pool, "model": arch or old_model,
                                                  "epochs": epochs, "batch_size": batch_size, "device": device,
                                                  "seed": seed, "preset": preset})
    res = train_behavior(corpus, features, out, train_cfg=cfg, settings=st,
                         encoder=st.encoder, model=st.model, branch=st.branch, pool=st.pool)
    if crossfit:
        from vaest.tasks.crossfit import crossfit as run_crossfit

        run_crossfit(lambda c, o: train_behavior(c, features, o, train_cfg=cfg, settings=st, encoder=st.encoder,
                                                 model=st.model, branch=st.branch, pool=st.pool),
                     corpus, out, crossfit, cfg.seed)
    m = res["metrics"]
    console.print(f"behavior {st.model} ({st.encoder}): validation CCC valence {m['valence']:.4f} "
                  f"arousal {m['arousal']:.4f} mean {m['mean']:.4f} -> {out}")
