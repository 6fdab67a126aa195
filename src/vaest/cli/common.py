"""What every ``vaest`` command shares: the Typer app and its sub-apps, the console, the option types
(device, config file, preset, extraction engine), the global callback (logging, ``--version``) and table helpers."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from rich.console import Console

from vaest.version import __version__
from vaest.device import DEVICE_HELP, check_device, resolve_device
from vaest.errors import VaestError
from vaest.progress import setup_logging, show_native_logs

log = logging.getLogger("vaest")


console = Console(stderr=False)


app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Continuous valence/arousal from face, behavior and voice.")


corpus_app = typer.Typer(no_args_is_help=True, help="Inspect corpora.")


features_app = typer.Typer(no_args_is_help=True, help="Inspect the feature store.")


extract_app = typer.Typer(no_args_is_help=True, help="Extract per-modality features into a feature store.")


train_app = typer.Typer(no_args_is_help=True, help="Train a modality or fusion model.")


app.add_typer(corpus_app, name="corpus")


app.add_typer(features_app, name="features")


app.add_typer(extract_app, name="extract")


app.add_typer(train_app, name="train")



def _device_cb(value: str) -> str:
    """Validate and resolve ``--device`` (auto -> cuda or cpu) once, for every command."""
    try:
        return resolve_device(value)
    except VaestError as e:
        raise typer.BadParameter(str(e)) from None



def _checked_device_cb(value: str) -> str:
    """Validate ``--device`` only; the command resolves ``auto`` where it needs torch (``predict``: zero-shot with
    the ONNX Runtime face encoder never imports torch)."""
    try:
        return check_device(value)
    except VaestError as e:
        raise typer.BadParameter(str(e)) from None



def _opt_device_cb(value: Optional[str]) -> Optional[str]:
    return None if value is None else _device_cb(value)


DeviceOpt = Annotated[str, typer.Option(help=f"Device: {DEVICE_HELP}", callback=_device_cb)]


CheckedDeviceOpt = Annotated[str, typer.Option("--device", help=f"Device: {DEVICE_HELP}", callback=_checked_device_cb)]


OptDeviceOpt = Annotated[Optional[str], typer.Option(help=f"Device (default: the config's): {DEVICE_HELP}",
                                                     callback=_opt_device_cb)]



def _config_defaults_cb(ctx: typer.Context, value: Optional[Path]) -> Optional[Path]:
    """``--config FILE`` of commands without a settings dataclass: the file's keys (option names, ``-`` or ``_``)
    become the command's defaults, so the precedence is defaults < config file < flags."""
    if value is not None:
        from vaest.config import load_config

        cfg = {str(k).replace("-", "_"): v for k, v in (load_config(value) or {}).items()}
        names = {p.name for p in ctx.command.params}
        unknown = sorted(set(cfg) - names)
        if unknown:
            raise typer.BadParameter(f"{value}: unknown setting(s) {', '.join(unknown)} for this command")
        ctx.default_map = {**(ctx.default_map or {}), **cfg}
    return value


ConfigDefaultsOpt = Annotated[Optional[Path], typer.Option(
    "--config", help="YAML file of option values (names as the options, e.g. 'encoder: grada'); flags override it.",
    callback=_config_defaults_cb, is_eager=True)]


ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="YAML file with settings; flags override it.")]


CrossfitOpt = Annotated[int, typer.Option("--crossfit", help="After training, also write out-of-fold predictions of "
                                          "the train split with K fold models (RUN/crossfit), which fusion "
                                          "training then uses instead of the model's in-sample predictions; "
                                          "0 = off.")]


PresetOpt = Annotated[Optional[str], typer.Option("--preset", help="Named settings: reference (the official Team RAS "
                                                  "code) or vaest; the config file and flags override them.")]


# --- extraction engine options (vaest.scale.run_extraction), shared by every `vaest extract` command ---
EngineOpt = Annotated[str, typer.Option("--engine", help="local: this process; ray: spread the media files over a "
                                        "Ray cluster (same results, skips stored work, resumable).")]


AddressOpt = Annotated[Optional[str], typer.Option("--address", help="Ray cluster address (ray://head:10001, "
                                                   "head:6379 or auto); default: start a local Ray.")]


WorkersOpt = Annotated[Optional[int], typer.Option("--workers", help="Ray workers (default: one per CPU, or one per "
                                                   "GPU when the extractor runs on cuda).")]


FileTimeoutOpt = Annotated[Optional[float], typer.Option("--file-timeout", help="ray: seconds a worker may spend on "
                                                         "one media file before it is stopped and the file recorded "
                                                         "as failed (default 3600; 0 = no limit).")]


# --- `vaest train fusion`, `vaest train late` ---
RunsOpt = Annotated[list[str], typer.Option("--runs", help="NAME=RUN_FOLDER, repeated (face=..., behavior=..., "
                                            "audio=...; late fusion takes any prediction runs).")]



def _version_cb(value: bool) -> None:
    if value:
        typer.echo(f"vaest {__version__}")
        raise typer.Exit()



@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging, and third-party native "
                                                "log lines (MediaPipe, absl, TF Lite) let through.")] = False,
          version: Annotated[bool, typer.Option("--version", help="Print the version and exit.",
                                                callback=_version_cb, is_eager=True)] = False) -> None:
    setup_logging(logging.DEBUG if verbose else logging.INFO)
    show_native_logs(verbose)



def fmt_cell(x: float | int) -> str:
    """A table cell: integers with thousands separators, floats to 4 decimals (``nan`` when not finite)."""
    if isinstance(x, int):
        return f"{x:,}"
    return "nan" if not math.isfinite(x) else f"{x:.4f}"



def print_stats(stats: dict[str, dict]) -> None:
    t = Table(title="corpus statistics")
    cols = ["split", "videos", "frames", "valid_frames", "valence_mean", "valence_std", "arousal_mean", "arousal_std"]
    for c in cols:
        t.add_column(c, justify="right" if c != "split" else "left")
    for split, row in stats.items():
        t.add_row(split, *[fmt_cell(row[c]) for c in cols[1:]])
    console.print(t)


# Set by a command whose outputs are all written: the process then ends with os._exit once its streams are
# flushed. Tearing down the interpreter (torch's and MediaPipe's objects and thread pools) took 0.7 s after
# `vaest predict` on a 2 s clip, a fifth of the whole command; nothing of the result depends on it.
FAST_EXIT = [False]
