"""The test suite's precondition helpers (tests/conftest.py): a missing ../shared or browser skips with its
reason locally and fails under CI, where both are always present."""

from __future__ import annotations

import pytest

from conftest import SHARED, package_file, require_browser, require_shared


def test_missing_shared_skips_locally_and_fails_under_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no-such-folder"):
        require_shared("no-such-folder")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must have it"):
        require_shared("no-such-folder")


def test_present_shared_path_is_returned(monkeypatch, tmp_path):
    monkeypatch.setattr("conftest.SHARED", tmp_path)
    (tmp_path / "data").mkdir()
    assert require_shared("data") == tmp_path / "data"
    assert SHARED.name == "shared"


def test_missing_browser_fails_under_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("VAEST_CHROMIUM", raising=False)
    with pytest.raises(pytest.fail.Exception, match="CI must have it"):
        require_browser()
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception):
        require_browser()


def test_missing_package_file_skips_even_under_ci(monkeypatch):
    """Optional packages are optional everywhere: only ../shared and the browser are CI's to have."""
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.skip.Exception, match="not installed"):
        package_file("no_such_package_vaest", "x")
    with pytest.raises(pytest.skip.Exception, match="not found in the installed package pytest"):
        package_file("pytest", "no-such-file.bin")
