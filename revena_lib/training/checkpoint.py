"""Checkpoints and run directories on disk: atomic writes, safe loading, and ``load_model`` for evaluation.

A run directory (``trained/<arm>/<preset>/seed-<seed>/``) holds ``config.json`` (what was trained, how far),
``metrics.jsonl`` and ``checkpoint.pt`` (model, optimizer, step, RNG states, config). Every file is
written to a temporary name in the same directory and ``os.replace``d, so a crash or Ctrl-C never
leaves half a file behind.

    from revena_lib.training.checkpoint import load_model
    model, config = load_model("trained/with_ltm/cpu/seed-1337")
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from revena_lib.config import ModelConfig
from revena_lib.paths import atomic_write

CONFIG_FILE = "config.json"
CHECKPOINT_FILE = "checkpoint.pt"
METRICS_FILE = "metrics.jsonl"


class CheckpointError(RuntimeError):
    pass


def write_json(path: Path, obj: dict) -> None:
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2, sort_keys=False) + "\n").encode()))


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def read_config(run_dir: Path) -> dict:
    """The run's config.json; CheckpointError if missing or unreadable."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.exists():
        raise CheckpointError(f"{path} does not exist: not a trained run. Train one with "
                              "`python -m revena_lib.train --baseline` (or --with-ltm)")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path} is corrupt ({e}); retrain the run or restore the file") from e


def save_checkpoint(path: Path, state: dict) -> None:
    """Atomically save a checkpoint dict (tensors, numbers, strings, lists, dicts only: loadable weights_only)."""
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    """Load a checkpoint saved by ``save_checkpoint``; CheckpointError if it is missing or corrupt."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; train the run first (python -m revena_lib.train)")
    try:
        # weights_only: a checkpoint is data, never code; ours hold only tensors and plain containers.
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for a truncated/garbled zip or pickle
        reason = (str(e).strip().splitlines() or [""])[0][:160]   # torch's messages run to many lines
        raise CheckpointError(f"{path} is corrupt or not a Revena checkpoint ({type(e).__name__}: {reason}); "
                              "delete it and retrain, or resume from an intact copy") from e
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise CheckpointError(f"{path} is not a Revena checkpoint (no 'model'/'config' entries)")
    return state


def check_model_config(path: Path, saved: dict, expected: dict) -> None:
    """Refuse a checkpoint whose model config differs from the one we are about to build. A field the checkpoint
    lacks (added to ModelConfig after it was saved) counts as that field's default, which is what loading gives it."""
    defaults = dataclasses.asdict(ModelConfig())
    saved = {**{k: defaults[k] for k in expected if k not in saved and k in defaults}, **saved}
    if saved != expected:
        diff = sorted(k for k in set(saved) | set(expected) if saved.get(k) != expected.get(k))
        details = ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs requested {expected.get(k)!r}" for k in diff)
        raise CheckpointError(f"{path} was trained with a different model config ({details}); use the same "
                              "--preset/arm, or pass --out DIR / --force to start a new run")


def model_config_from_dict(d: dict, source: Path) -> ModelConfig:
    try:
        return ModelConfig(**d)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: model config does not fit this version of revena_lib ({e})") from e


def load_model(run_dir, device="cpu"):
    """Rebuild the run's model (its family's class) from config.json, load checkpoint.pt; returns (model in eval
    mode, config dict)."""
    from revena_lib.models import build_model  # lazy: checkpoint helpers must not need the model to import

    run_dir = Path(run_dir)
    config = read_config(run_dir)
    if "model" not in config:
        raise CheckpointError(f"{run_dir / CONFIG_FILE} has no 'model' section; retrain the run")
    ckpt_path = run_dir / CHECKPOINT_FILE
    state = load_checkpoint(ckpt_path, map_location="cpu")
    check_model_config(ckpt_path, state["config"]["model"], config["model"])
    cfg = model_config_from_dict(config["model"], run_dir / CONFIG_FILE)
    try:
        model = build_model(cfg)
    except ValueError as e:
        raise CheckpointError(f"{run_dir / CONFIG_FILE}: {e}") from e
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{ckpt_path} does not match the model built from {run_dir / CONFIG_FILE}: {e}") from e
    return model.to(device).eval(), config
