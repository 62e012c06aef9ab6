"""Shared fixtures: where the real data lives, and a private cache for every test.

The real data sits in ``../shared/data`` next to the repository. Without it the integration
tests skip, except under ``CI=true``, where a missing folder is a failure: CI must not pass by
skipping everything.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _missing(what: str) -> None:
    """Skip locally, fail under CI=true (a CI run must not go green by skipping)."""
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(f"{what} is missing and CI=true: the real data must be present in CI", pytrace=False)
    pytest.skip(f"{what} not found (expected ../shared/data next to the repository)")


def pytest_sessionstart(session: pytest.Session) -> None:
    """Under CI=true the real data must be there: fail at once rather than skip test by test."""
    if os.environ.get("CI", "").strip().lower() == "true" and not SHARED_DATA.is_dir():
        raise pytest.UsageError(f"{SHARED_DATA} is missing and CI=true: the real data must be present in CI")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``: the real data (MedMNIST files, image folders)."""
    if not SHARED_DATA.is_dir():
        _missing(str(SHARED_DATA))
    return SHARED_DATA


@pytest.fixture(scope="session")
def medmnist_root(shared_data: Path) -> Path:
    """``../shared/data/medmnist``: official MedMNIST ``.npz`` files (a read-only data root)."""
    root = shared_data / "medmnist"
    if not root.is_dir():
        _missing(str(root))
    return root


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point ``$MEDLENS_CACHE`` at a fresh temporary folder: no test writes to the home folder.

    The folder is outside ``tmp_path`` so tests that list ``tmp_path`` never see cache files.
    """
    cache = tmp_path_factory.mktemp("medlens-cache")
    monkeypatch.setenv("MEDLENS_CACHE", str(cache))
    return cache




@pytest.fixture(scope="session")
def ham10000_cache(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One decode cache for the session's HAM10000 tests: the 10,015 images are decoded once, at 28 px.

    Tests that resolve HAM10000 point ``$MEDLENS_CACHE`` here (``monkeypatch.setenv``) instead of at
    their private cache; the first fills it.
    """
    if not (shared_data / "ham10000" / "HAM10000_metadata.csv").is_file():
        _missing(str(shared_data / "ham10000"))
    return tmp_path_factory.mktemp("ham10000-cache")
