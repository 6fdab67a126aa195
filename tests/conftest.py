"""Shared fixtures: a small synthetic corpus generated once per test session (no media is committed)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# keep the suite quiet and single-threaded per worker process: the CI machine has 2 cores
os.environ.setdefault("VAEST_NO_PROGRESS", "1")


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
