"""Trained smoke runs for module-scoped test fixtures (imported by the tests, like browser_helpers.py)."""

import shutil

import pytest


def trained_smoke_home(smoke_home, tmp_path_factory, name: str, arms, steps: int = 3):
    """A new artefact root with a copy of the smoke data and ``arms`` trained for ``steps`` steps each (seed 1337).
    For module-scoped fixtures of tests that need finished runs; returns the root."""
    from revena_lib.training.loop import train   # lazy: importing this module must not load the training code

    home = tmp_path_factory.mktemp(name)
    shutil.copytree(smoke_home / "data", home / "data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("REVENA_HOME", str(home))
        for arm in arms:
            train("smoke", arm=arm, steps=steps, progress=False, device="cpu")
    return home
