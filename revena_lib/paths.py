"""Where the workbook's artefacts live: ``data/``, ``trained/``, ``results/``, ``trunks/`` under one root.

The root is the repository by default. Set ``REVENA_HOME`` to put every artefact somewhere else
(the tests do, so they never touch a researcher's trained models). ``trunks/`` is the one that is committed:
the pretrained trunks the arms fine-tune from (``revena_lib/training/trunk.py``).

    from revena_lib.paths import data_dir
    data_dir()  # PosixPath('/path/to/repo/data')
"""

import hashlib
import os
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
ASSETS_DIR = Path(__file__).resolve().parent / "assets"
RESULTS_FILE = "results.json"   # in results_dir(): evaluation writes it, export and the plots read it


def artefact_root() -> Path:
    return Path(os.environ.get("REVENA_HOME", REPO_ROOT)).expanduser().resolve()


def data_dir() -> Path:
    return artefact_root() / "data"


def trained_dir() -> Path:
    return artefact_root() / "trained"


def results_dir() -> Path:
    return artefact_root() / "results"


def trunks_dir() -> Path:
    """``trunks/``: the pretrained trunks, ``<preset>/seed-<seed>/trunk.pt`` + ``trunk.json`` (shipped in the repo)."""
    return artefact_root() / "trunks"


def atomic_write(path, write) -> None:
    """Call ``write(binary_file)`` on a temp file beside ``path``, then rename it over ``path``.

    Readers see the old file or the new one, never half of one: a crash or Ctrl-C mid-write leaves no file
    that looks complete. The result gets ordinary permissions (mkstemp alone would leave it 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def file_sha256(path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks (data files and checkpoints can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
