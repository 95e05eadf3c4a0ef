"""Where the workbook's artefacts live: ``data/``, ``trained/``, ``results/`` under one root.

The root is the repository by default. Set ``REVENA_HOME`` to put every artefact somewhere else
(the tests do, so they never touch a researcher's trained models).

    from revena_lib.paths import data_dir
    data_dir()  # PosixPath('/path/to/repo/data')
"""

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
ASSETS_DIR = Path(__file__).resolve().parent / "assets"


def artefact_root() -> Path:
    return Path(os.environ.get("REVENA_HOME", REPO_ROOT)).expanduser().resolve()


def data_dir() -> Path:
    return artefact_root() / "data"


def trained_dir() -> Path:
    return artefact_root() / "trained"


def results_dir() -> Path:
    return artefact_root() / "results"
