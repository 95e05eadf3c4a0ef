"""Where training runs live on disk: ``trained/<arm>/<preset>/seed-<seed>/`` and what is in it.

A run directory holds ``config.json`` (what was trained, how far), ``metrics.jsonl`` (one line per logged step) and
``checkpoint.pt`` (``revena_lib/training/checkpoint.py``). The preset is part of the path, so runs of several presets
live side by side; a run is *finished* when its config says so and its checkpoint exists.

    from revena_lib.training.runs import find_runs, read_metrics
    find_runs("with_ltm", preset="cpu")     # [PosixPath('.../trained/with_ltm/cpu/seed-1337'), ...]
"""

from __future__ import annotations

import json
from pathlib import Path

from revena_lib.arms import check_arm
from revena_lib.paths import trained_dir
from revena_lib.training import checkpoint as ckpt
from revena_lib.training.checkpoint import CheckpointError


def run_dir(arm: str, seed: int, root=None, preset: str = "cpu") -> Path:
    """``trained/<arm>/<preset>/seed-<seed>``: the preset is part of the path, so a smoke run and a cpu run
    live side by side and switching presets never meets a checkpoint of another model size."""
    check_arm(arm)
    return Path(root or trained_dir()) / arm / preset / f"seed-{seed}"


def find_runs(arm: str, root=None, preset: str | None = None) -> list[Path]:
    """Finished run directories of one arm (of one preset, when given), sorted by preset then seed."""
    check_arm(arm)
    runs = []
    for d in (Path(root or trained_dir()) / arm).glob("*/seed-*"):
        try:
            config = json.loads((d / ckpt.CONFIG_FILE).read_text())
        except (OSError, ValueError):
            continue
        if preset is not None and config.get("preset") != preset:
            continue
        if config.get("finished") and (d / ckpt.CHECKPOINT_FILE).exists():
            runs.append((str(config.get("preset")), int(config.get("seed", 0)), d))
    return [d for _, _, d in sorted(runs)]


def read_metrics(run_dir) -> "pandas.DataFrame":
    """metrics.jsonl of a run as a DataFrame (one row per logged step; val_* columns NaN between evaluations)."""
    import pandas as pd

    path = Path(run_dir) / ckpt.METRICS_FILE
    if not path.exists():
        raise CheckpointError(f"{path} does not exist: train the run first (python -m revena_lib.train)")
    return pd.DataFrame([json.loads(line) for line in path.read_text().splitlines() if line.strip()])
