"""Training both arms (baseline and with-LTM) on identical batches, with checkpoints, resumption and metrics.

``train()`` is the one implementation; the CLI and ``notebooks/03_train.ipynb`` both call it. A run
lives in ``trained/<arm>/<preset>/seed-<seed>/``: ``config.json``, ``metrics.jsonl``, ``checkpoint.pt``.
Several processes (torchrun) split every step's batch rows between them, so the global batch is the
same as in a single process; only rank 0 writes files.

    python -m revena_lib.train --with-ltm --preset cpu
    torchrun --standalone --nproc_per_node 2 -m revena_lib.train --preset smoke
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

from revena_lib import checkpoint as ckpt
from revena_lib.checkpoint import CheckpointError
from revena_lib.arms import ARMS
from revena_lib.config import PRESETS, Preset, TrainConfig, get_preset
from revena_lib.device import (DTYPES, DeviceError, autocast, autocast_dtype, cleanup_distributed, dtype_name,
                               init_distributed, is_main_process, needs_grad_scaler, rank, select_device, world_size)
from revena_lib.paths import trained_dir
from revena_lib.tokenizer import EOT_ID, N_VOCAB

STAT_KEYS = ("routed_token_ratio", "avg_surprisal_routed", "ltm_hit_rate")
# Validation batches come from a fixed seed, not the run's: every run, arm and seed is scored on the same rows.
VAL_BATCH_SEED = 20_240_601


class TrainError(RuntimeError):
    pass


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C / SIGTERM during train(): a checkpoint was saved; ``--resume`` continues from it."""


def arm_name(with_ltm: bool) -> str:
    return "with_ltm" if with_ltm else "baseline"


def run_dir(arm: str, seed: int, root=None, preset: str = "cpu") -> Path:
    """``trained/<arm>/<preset>/seed-<seed>``: the preset is part of the path, so a smoke run and a cpu run
    live side by side and switching presets never meets a checkpoint of another model size."""
    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}: choose one of {', '.join(ARMS)}")
    return Path(root or trained_dir()) / arm / preset / f"seed-{seed}"


def find_runs(arm: str, root=None, preset: str | None = None) -> list[Path]:
    """Finished run directories of one arm (of one preset, when given), sorted by preset then seed."""
    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}: choose one of {', '.join(ARMS)}")
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


# -----------------------------------------------------------------------------
# Recipe: schedule and optimizer

def lr_at_step(step: int, cfg: TrainConfig) -> float:
    """Learning rate for 0-based ``step``: linear warm-up to cfg.lr, then cosine down to lr * min_lr_ratio at the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    min_lr = cfg.lr * cfg.min_lr_ratio
    decay_steps = max(1, cfg.steps - 1 - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / decay_steps)
    return min_lr + 0.5 * (cfg.lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def decays(name: str, param: torch.Tensor) -> bool:
    """Weight decay only on weight matrices (embeddings, linear weights), never on norms, biases or LTM gates."""
    return param.dim() >= 2 and "gate" not in name.lower()


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():  # named_parameters de-duplicates the tied embedding
        if p.requires_grad:
            (decay if decays(name, p) else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    # fused AdamW is one kernel per step instead of a handful per parameter (CUDA and, since torch 2.4, CPU).
    fused = device.type == "cuda" or (device.type == "cpu" and torch.__version__ >= "2.4")
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                             fused=fused)


# -----------------------------------------------------------------------------
# Batches: a pure function of (seed, step), identical for both arms

def _usable_documents(split, seq_len: int) -> np.ndarray:
    docs = np.flatnonzero(np.asarray(split.doc_lengths) >= seq_len + 1)
    if len(docs) == 0:
        raise TrainError(
            f"no {split.name} document has seq_len+1 = {seq_len + 1} tokens (longest: {int(np.max(split.doc_lengths))}): "
            "choose a --preset whose seq_len fits the data, or prepare longer documents (max_doc_chars)")
    return docs


def batch_for_step(split, seed: int, step: int, batch_size: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The training batch of ``step``: ``batch_size`` rows of seq_len+1 consecutive tokens, each from ONE document.

    Start positions are uniform over all windows that fit inside a document (so long documents are read in
    proportion to their length); documents shorter than seq_len+1 are skipped. Returns x = row[:-1],
    y = row[1:], both (batch_size, seq_len) int64. The same (seed, step) gives the same batch, whatever the
    arm, process or resume point.
    """
    if seed < 0 or step < 0:
        raise ValueError(f"seed and step must be >= 0 (got seed={seed}, step={step})")
    docs = _usable_documents(split, seq_len)                        # (D',)
    windows_per_doc = np.asarray(split.doc_lengths)[docs] - seq_len  # (D',) valid start offsets per document
    cumulative = np.cumsum(windows_per_doc)                         # (D',)
    rng = np.random.default_rng([seed, step])
    picks = rng.integers(0, cumulative[-1], size=batch_size)        # (B,) global window index
    which = np.searchsorted(cumulative, picks, side="right")        # (B,) index into docs
    within = picks - (cumulative[which] - windows_per_doc[which])   # (B,) offset inside that document
    starts = np.asarray(split.doc_offsets)[docs[which]] + within    # (B,) absolute token index
    rows = np.stack([np.asarray(split.tokens[s:s + seq_len + 1]) for s in starts]).astype(np.int64)  # (B, T+1)
    return torch.from_numpy(rows[:, :-1].copy()), torch.from_numpy(rows[:, 1:].copy())


def validation_batches(val_split, cfg: TrainConfig) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [batch_for_step(val_split, VAL_BATCH_SEED, i, cfg.batch_size, cfg.seq_len) for i in range(cfg.eval_batches)]


def characters_per_token(split) -> float:
    """Characters per predicted token of a split. Targets never include a document's opening EOT, so the
    denominator is the non-EOT tokens. An estimate for the training-time val BPC only: evaluate.py computes
    the exact per-document BPC."""
    return split.characters / max(1, len(split.tokens) - split.num_docs)


@torch.no_grad()
def validation_loss(model, batches, device, dtype) -> float:
    """Mean cross-entropy (nats/token) over the fixed validation batches."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for x, y in batches:
        with autocast(device, dtype):
            out = model(x.to(device), y.to(device))
        total += float(out.loss.float()) * y.numel()
        count += y.numel()
    model.train(was_training)
    return total / count


def unigram_bpc(data_dir=None) -> float:
    """BPC of a unigram model: token frequencies of train.bin (add-one smoothed over the GPT-2 vocabulary,
    document-opening EOTs left out), cross-entropy on val's non-EOT tokens, divided by val's characters.
    The bar any trained model must clear by far."""
    from revena_lib.data import load_split

    train_split, val_split = load_split("train", data_dir), load_split("val", data_dir)
    counts = np.bincount(np.asarray(train_split.tokens), minlength=N_VOCAB).astype(np.float64)  # (V,)
    counts[EOT_ID] = 0.0
    counts += 1.0
    bits_per_token = -np.log2(counts / counts.sum())                                           # (V,)
    val_counts = np.bincount(np.asarray(val_split.tokens), minlength=N_VOCAB).astype(np.float64)
    val_counts[EOT_ID] = 0.0
    return float(val_counts @ bits_per_token / val_split.characters)


# -----------------------------------------------------------------------------
# Run bookkeeping

def read_metrics(run_dir) -> "pandas.DataFrame":
    """metrics.jsonl of a run as a DataFrame (one row per logged step; val_* columns NaN between evaluations)."""
    import pandas as pd

    path = Path(run_dir) / ckpt.METRICS_FILE
    if not path.exists():
        raise CheckpointError(f"{path} does not exist: train the run first (python -m revena_lib.train)")
    return pd.DataFrame([json.loads(line) for line in path.read_text().splitlines() if line.strip()])


def _read_metric_lines(path: Path, up_to_step: int) -> list[str]:
    if not path.exists():
        return []
    return [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= up_to_step]


def _rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": random.getstate(),
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])


def _data_summary(meta: dict) -> dict:
    return {
        "corpus": meta.get("corpus"),
        "source": meta.get("source"),
        "fallback_reason": meta.get("fallback_reason"),
        **{f"{split}_{key}": meta.get("splits", {}).get(split, {}).get(key)
           for split in ("train", "val") for key in ("documents", "tokens", "characters")},
    }


def _empty_accumulator() -> dict:
    """Sums over the steps since the last metrics line (loss, seconds, LTM stats)."""
    return {"steps": 0, "loss": 0.0, "seconds": 0.0, **{k: 0.0 for k in STAT_KEYS}}


class _StopFlag:
    """SIGINT/SIGTERM set a flag the training loop checks after each step; a second Ctrl-C aborts at once."""

    def __init__(self):
        self.signum = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # signal handlers only work there
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _start_wandb(run_path: Path, name: str, config: dict):
    try:
        import wandb as wandb_lib
    except ImportError:
        raise TrainError("--wandb needs the wandb package: pip install wandb "
                         "(or drop --wandb: metrics.jsonl is always written)") from None
    os.environ.setdefault("WANDB_MODE", "offline")  # never upload unless the user asked for it
    return wandb_lib.init(project="revena", name=name, dir=str(run_path), config=config)


# -----------------------------------------------------------------------------
# The training loop

def train(preset: str | Preset, with_ltm: bool, seed: int | None = None, steps: int | None = None, out_dir=None,
          resume: bool = False, wandb: bool = False, progress: bool = True, device=None,
          force: bool = False, stop_at: int | None = None) -> Path:
    """Train one arm; returns the run directory.

    resume: continue the run in the directory from its checkpoint (exactly: same batches, optimizer, RNG);
        a finished run is returned as is; with no checkpoint there, start fresh.
    force: delete an existing run in the directory and start over (otherwise an existing run is refused).
    stop_at: save a checkpoint and return after this many steps without finishing (as Ctrl-C would);
        for splitting a long run into jobs, and for tests.
    Ctrl-C / SIGTERM: saves a checkpoint and raises TrainingInterrupted.
    """
    preset = get_preset(preset) if isinstance(preset, str) else copy.deepcopy(preset)
    seed = preset.train.seed if seed is None else int(seed)
    if seed < 0:
        raise TrainError(f"--seed must be >= 0 (got {seed})")
    if steps is not None and steps < 0:
        raise TrainError(f"--steps must be >= 0 (got {steps}; 0 = the preset's default)")
    if steps:
        preset.train.steps = int(steps)
    preset.model.use_ltm = bool(with_ltm)
    preset.train.seed = seed
    arm = arm_name(with_ltm)
    out = Path(out_dir) if out_dir else run_dir(arm, seed, preset=preset.name)
    ckpt_path, config_path, metrics_path = out / ckpt.CHECKPOINT_FILE, out / ckpt.CONFIG_FILE, out / ckpt.METRICS_FILE

    # Decide between fresh start, resumption and refusal before touching data or devices.
    state = None
    existing = config_path.exists() or ckpt_path.exists()
    if existing and resume and ckpt_path.exists():
        state = ckpt.load_checkpoint(ckpt_path)
        ckpt.check_model_config(ckpt_path, state["config"]["model"], dataclasses.asdict(preset.model))
        if state["seed"] != seed:
            raise CheckpointError(f"{ckpt_path} belongs to seed {state['seed']}, not {seed}; use --seed {state['seed']}")
        # The saved recipe wins (exact continuation); an explicit --steps may extend or shorten the run.
        preset.train = TrainConfig(**{**state["config"]["train"], **({"steps": int(steps)} if steps else {})})
        if state["step"] >= preset.train.steps:
            if is_main_process():
                print(f"revena: {out} already finished {state['step']} steps; nothing to do", file=sys.stderr)
            return out
    elif existing and not resume and not force:
        try:
            old = json.loads(config_path.read_text())
            what = f"{'finished' if old.get('finished') else 'unfinished'}, {old.get('steps_done')} steps"
        except (OSError, ValueError):
            what = "unreadable config.json"
        raise TrainError(f"{out} already holds a run ({what}): pass --resume to continue it, --force to delete it "
                         "and start over, or --out DIR for a new run")
    cfg = preset.train

    device = select_device(device)
    distributed = init_distributed(device)
    try:
        return _train(preset, cfg, arm, seed, out, state, device, distributed, wandb, progress, force, stop_at,
                      ckpt_path, config_path, metrics_path)
    finally:
        if distributed:
            cleanup_distributed()


def _train(preset, cfg, arm, seed, out, state, device, distributed, use_wandb, progress, force, stop_at,
           ckpt_path, config_path, metrics_path) -> Path:
    import torch.distributed as dist
    from tqdm.auto import tqdm

    from revena_lib.data import load_split
    from revena_lib.models import build_model

    main, ranks, my_rank = is_main_process(), world_size(), rank()
    if cfg.batch_size % ranks:
        raise TrainError(f"batch_size {cfg.batch_size} is not divisible by the {ranks} processes; "
                         "choose --nproc_per_node dividing it")
    train_split, val_split = load_split("train"), load_split("val")
    _usable_documents(train_split, cfg.seq_len)
    val_batches = validation_batches(val_split, cfg)
    chars_per_token = characters_per_token(val_split)

    torch.manual_seed(seed)  # same initial weights for both arms wherever their shapes coincide
    model = build_model(preset.model).to(device)
    optimizer = make_optimizer(model, cfg, device)
    dtype = DTYPES[state["dtype"]] if state else autocast_dtype(device)  # a resumed run keeps its dtype
    scaler = torch.amp.GradScaler("cuda") if needs_grad_scaler(device, dtype) else None
    start_step, train_seconds = 0, 0.0
    accumulator = _empty_accumulator()
    if state:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        start_step, train_seconds, accumulator = state["step"], state["train_seconds"], dict(state["accumulator"])
    step_model = torch.nn.parallel.DistributedDataParallel(model) if distributed else model

    # Files: rank 0 only. A fresh (or forced) run starts from empty files; a resumed one drops metric lines
    # logged after its checkpoint, so the resumed log continues exactly where the checkpoint stood.
    config = {
        "preset": preset.name, "arm": arm, "seed": seed,
        "model": dataclasses.asdict(preset.model), "train": dataclasses.asdict(cfg),
        "data": dataclasses.asdict(preset.data), "eval": dataclasses.asdict(preset.eval),
        "data_meta": _data_summary(train_split.meta),
        "device": device.type, "dtype": dtype_name(dtype), "torch_version": torch.__version__,
        "world_size": ranks, "num_parameters": model.num_parameters(),
        "val_characters_per_token": chars_per_token,
        "unigram_bpc": None, "finished": False, "steps_done": start_step, "train_seconds": train_seconds,
    }
    if main:
        out.mkdir(parents=True, exist_ok=True)
        if state is None:
            for stale in (ckpt_path, metrics_path):
                if stale.exists():
                    stale.unlink()
        try:
            previous = json.loads(config_path.read_text()) if state else {}
        except (OSError, ValueError):
            previous = {}
        config["unigram_bpc"] = previous.get("unigram_bpc") or unigram_bpc()
        ckpt.write_text(metrics_path, "".join(line + "\n" for line in _read_metric_lines(metrics_path, start_step)))
        ckpt.write_json(config_path, config)
    wandb_run = _start_wandb(out, f"{arm}-seed{seed}", config) if (use_wandb and main) else None

    def save(steps_done: int, finished: bool) -> None:
        if not main:
            return
        ckpt.save_checkpoint(ckpt_path, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "step": steps_done, "seed": seed, "arm": arm, "dtype": dtype_name(dtype),
            "config": {"model": config["model"], "train": config["train"], "data": config["data"]},
            "rng": _rng_state(), "accumulator": dict(accumulator), "train_seconds": train_seconds,
        })
        ckpt.write_json(config_path, {**config, "finished": finished, "steps_done": steps_done,
                                      "train_seconds": train_seconds})

    tokens_per_step = cfg.batch_size * cfg.seq_len
    session_start_step, session_seconds = start_step, 0.0
    bar = tqdm(total=cfg.steps, initial=start_step, disable=not (progress and main), dynamic_ncols=True,
               desc=f"{arm} seed {seed}", unit="step")
    model.train()
    stopped_by = None
    with _StopFlag() as stop:
        for step in range(start_step, cfg.steps):
            t0 = time.perf_counter()
            lr = lr_at_step(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y = batch_for_step(train_split, seed, step, cfg.batch_size, cfg.seq_len)  # (B, T) global batch
            x, y = x[my_rank::ranks].to(device), y[my_rank::ranks].to(device)           # this rank's rows
            with autocast(device, dtype):
                output = step_model(x, y)
            if scaler is not None:
                scaler.scale(output.loss).backward()
                scaler.unscale_(optimizer)
            else:
                output.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)

            # Loss and stats averaged over ranks (each saw equal-sized slices), plus the stop flag, in one reduce.
            values = torch.tensor([float(output.loss.detach().float())] + [float(output.stats.get(k, 0.0)) for k in STAT_KEYS]
                                  + [1.0 if stop.signum is not None else 0.0], dtype=torch.float64)
            if distributed:
                values = values.to(device)
                dist.all_reduce(values)
                values = values.cpu() / ranks
            seconds = time.perf_counter() - t0
            train_seconds += seconds
            session_seconds += seconds
            accumulator["steps"] += 1
            accumulator["seconds"] += seconds
            accumulator["loss"] += float(values[0])
            for i, key in enumerate(STAT_KEYS):
                accumulator[key] += float(values[1 + i])

            steps_done = step + 1
            eta_s = (cfg.steps - steps_done) * session_seconds / (steps_done - session_start_step)
            bar.update(1)
            bar.set_postfix(loss=f"{float(values[0]):.3f}", tok_s=f"{tokens_per_step / seconds:,.0f}",
                            eta=f"{eta_s / 60:.1f}min", refresh=False)

            is_eval = steps_done % cfg.eval_interval == 0 or steps_done == cfg.steps
            if steps_done % cfg.log_interval == 0 or is_eval:
                n = accumulator["steps"]
                record = {
                    "step": steps_done, "loss": accumulator["loss"] / n, "lr": lr,
                    "tok_per_sec": tokens_per_step * n / max(accumulator["seconds"], 1e-9), "eta_s": eta_s,
                    "LTM_enabled": bool(preset.model.use_ltm),
                    **{key: accumulator[key] / n for key in STAT_KEYS},
                }
                if is_eval:
                    val_loss = validation_loss(model, val_batches, device, dtype)
                    record["val_loss"] = val_loss
                    record["val_bpc"] = val_loss / math.log(2) / chars_per_token
                accumulator = _empty_accumulator()
                if main:
                    with open(metrics_path, "a") as f:
                        f.write(json.dumps(record) + "\n")
                    if wandb_run is not None:
                        wandb_run.log(record, step=steps_done)
                    if is_eval:
                        bar.write(f"step {steps_done}: loss {record['loss']:.4f} val_loss {record['val_loss']:.4f} "
                                  f"val_bpc {record['val_bpc']:.4f}")
                if is_eval:
                    save(steps_done, finished=steps_done == cfg.steps)

            if float(values[-1]) > 0:
                stopped_by = "signal"
            elif stop_at is not None and steps_done >= stop_at and steps_done < cfg.steps:
                stopped_by = "stop_at"
            if stopped_by:
                if not is_eval:
                    save(steps_done, finished=False)
                break
    bar.close()
    if wandb_run is not None:
        wandb_run.finish()
    if distributed:
        # Checksum of the weights, printed by every rank: identical numbers show the ranks stayed in sync.
        checksum = sum(float(p.detach().double().sum()) for p in model.parameters())
        print(f"revena: rank {my_rank} final param checksum {checksum:.10e}", file=sys.stderr)
    if stopped_by == "signal":
        raise TrainingInterrupted(f"interrupted at step {steps_done}: checkpoint saved to {ckpt_path}; "
                                  f"continue with --resume")
    return out


# -----------------------------------------------------------------------------
# Command line

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m revena_lib.train",
        description="Train one arm of the Revena experiment (baseline transformer, or the same model with a "
                    "long-term memory) on the prepared data (python -m revena_lib.prepare_data first).",
        epilog="The run goes to trained/<arm>/<preset>/seed-<seed>/ under REVENA_HOME (default: the repo): config.json, "
               "metrics.jsonl, checkpoint.pt. An existing run is never overwritten silently: --resume continues "
               "it (a finished one is left as is), --force deletes it and starts over, --out DIR trains elsewhere. "
               "Ctrl-C or SIGTERM saves a checkpoint first. Several processes: "
               "torchrun --standalone --nproc_per_node N -m revena_lib.train ... (the batch is split between them). "
               "Env: REVENA_DTYPE=fp32|bf16|fp16 overrides the autocast dtype, REVENA_THREADS the CPU threads.",
    )
    arm = parser.add_mutually_exclusive_group()
    arm.add_argument("--baseline", action="store_true", help="train the baseline arm: no memory (the default)")
    arm.add_argument("--with-ltm", action="store_true", help="train the arm with the long-term memory")
    parser.add_argument("--preset", default="cpu",
                        help=f"sizes and recipe: {', '.join(PRESETS)} (default: cpu; smoke = seconds, "
                             "paper = the brief's 70M models on a GPU)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed for the initial weights and the batch order (default: the preset's, 1337)")
    parser.add_argument("--steps", type=int, default=None,
                        help="optimizer steps, also the cosine schedule's length (default: the preset's)")
    parser.add_argument("--out", default=None, help="run directory (default: trained/<arm>/<preset>/seed-<seed>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in the run directory exactly where its checkpoint stopped; "
                             "a finished run is left as is; with no checkpoint, start fresh")
    parser.add_argument("--force", action="store_true", help="delete an existing run in the run directory first")
    parser.add_argument("--stop-at", type=int, default=None, metavar="N",
                        help="checkpoint and stop after N steps without finishing (continue later with --resume)")
    parser.add_argument("--wandb", action="store_true",
                        help="also log to Weights & Biases (offline unless you set WANDB_MODE; needs pip install wandb)")
    parser.add_argument("--device", default=None, choices=["cpu", "cuda"],
                        help="where to train (default: cuda if available, else cpu)")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    return parser


def main(argv=None) -> None:
    from revena_lib.data import DataError

    args = build_parser().parse_args(argv)
    try:
        preset = get_preset(args.preset)
    except ValueError as e:
        sys.exit(f"error: {e}")
    try:
        out = train(preset, with_ltm=args.with_ltm, seed=args.seed, steps=args.steps, out_dir=args.out,
                    resume=args.resume, wandb=args.wandb, progress=not args.no_progress, device=args.device,
                    force=args.force, stop_at=args.stop_at)
    except TrainingInterrupted as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(130)
    except (TrainError, DataError, CheckpointError, DeviceError) as e:
        sys.exit(f"error: {e}")
    if is_main_process():
        print(f"revena: run in {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
