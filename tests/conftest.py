"""Shared fixtures: every test works in a temporary REVENA_HOME, never in the repo's data/ or trained/."""

import pytest


@pytest.fixture
def revena_home(tmp_path, monkeypatch):
    """A fresh, empty artefact root for one test."""
    monkeypatch.setenv("REVENA_HOME", str(tmp_path))
    return tmp_path


@pytest.fixture(scope="session")
def smoke_home(tmp_path_factory):
    """An artefact root with the smoke preset's embedded data prepared once per session.

    Tests that only read the data share it; tests that write into it should copy it first.
    """
    from revena_lib.config import get_preset
    from revena_lib.data.prepare import prepare_from_preset

    root = tmp_path_factory.mktemp("smoke_home")
    prepare_from_preset(get_preset("smoke"), source="embedded", data_dir=root / "data", progress=False)
    return root


@pytest.fixture
def smoke_data(smoke_home, monkeypatch):
    """REVENA_HOME pointed at the shared smoke artefact root (data prepared). Returns the root."""
    monkeypatch.setenv("REVENA_HOME", str(smoke_home))
    return smoke_home
