"""One training run: an arm and a seed, trained with checkpoints, resumption and metrics.

``train()`` is the one implementation; ``python -m revena_lib.train`` (``main`` below), ``run_all.py`` and
``notebooks/03_train.ipynb`` (through ``revena_lib/training/launch.py``) all call it. A run lives in
``trained/<arm>/<preset>/seed-<seed>/`` (``revena_lib/training/runs.py``): ``config.json``, ``metrics.jsonl``,
``checkpoint.pt``. Every arm reads the same batches (``revena_lib/training/batches.py``). Several processes
(torchrun) split every step's batch rows between them, so the global batch is the same as in a single process; only
rank 0 writes files.

    python -m revena_lib.train --with-ltm --preset cpu
    torchrun --standalone --nproc_per_node 2 -m revena_lib.train --preset smoke
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from revena_lib.arms import ARMS, BASELINE, arm_preset
from revena_lib.config import PRESETS, Preset, TrainConfig, get_preset
from revena_lib.data.tokenizer import TokenizerError, check_same_tokenizer, tokenizer_info
from revena_lib.models.ltm import MEMORY_COUNT_KEYS, memory_rates
from revena_lib.training import TrainError
from revena_lib.training import checkpoint as ckpt
from revena_lib.training.batches import characters_per_token, training_batch, usable_documents, validation_batches
from revena_lib.training.checkpoint import CheckpointError
from revena_lib.training.device import (DTYPES, DeviceError, autocast, autocast_dtype, cleanup_distributed,
                                        dtype_name, init_distributed, is_main_process, needs_grad_scaler, rank,
                                        select_device, world_size)
from revena_lib.training.runs import run_dir
from revena_lib.training.trunk import apply_init, describe_init, plan_init

# config.json's "started_by" of a run started by a person (the CLI, or train() called directly). Runs the pipeline
# starts itself name their caller instead (launch.train_arms, reservoir_analysis.reservoir_run), and only those are
# resumed by the pipeline on its own: see train(started_by=...).
BY_HAND = "hand"
TRAIN_ARMS = "train_arms"   # notebook 03


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C / SIGTERM during train(): a checkpoint was saved; ``--resume`` continues from it."""


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


def param_groups(model: torch.nn.Module, weight_decay: float, memory_lr_mult: float = 1.0) -> list[dict]:
    """Decayed weight matrices, the rest undecayed, and (when ``memory_lr_mult`` != 1) a third group of the LTM's
    own parameters (its gate) whose learning rate is the schedule's times ``lr_mult``."""
    decay, no_decay, memory = [], [], []
    for name, p in model.named_parameters():  # named_parameters de-duplicates the tied embedding
        if p.requires_grad:
            if memory_lr_mult != 1.0 and name.startswith("ltm_"):
                memory.append(p)
            else:
                (decay if decays(name, p) else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return groups + ([{"params": memory, "weight_decay": 0.0, "lr_mult": memory_lr_mult}] if memory else [])


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    # fused AdamW is one kernel per step instead of a handful per parameter (CUDA and, since torch 2.4, CPU).
    fused = device.type == "cuda" or (device.type == "cpu" and torch.__version__ >= "2.4")
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay, cfg.memory_lr_mult), lr=cfg.lr,
                             betas=(cfg.beta1, cfg.beta2), fused=fused)


# -----------------------------------------------------------------------------
# Validation: the loss on fixed batches, and the unigram model every run must beat

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
    from revena_lib.data.splits import load_split

    train_split, val_split = load_split("train", data_dir), load_split("val", data_dir)
    eot = train_split.tokenizer.eot_token
    counts = np.bincount(np.asarray(train_split.tokens), minlength=train_split.vocab_size).astype(np.float64)  # (V,)
    counts[eot] = 0.0
    counts += 1.0
    bits_per_token = -np.log2(counts / counts.sum())                                           # (V,)
    val_counts = np.bincount(np.asarray(val_split.tokens), minlength=train_split.vocab_size).astype(np.float64)
    val_counts[eot] = 0.0
    return float(val_counts @ bits_per_token / val_split.characters)


# -----------------------------------------------------------------------------
# Run bookkeeping

def _config_field(out: Path, key: str):
    """One field of a run's config.json (None if the file or the field is missing)."""
    try:
        return json.loads((out / ckpt.CONFIG_FILE).read_text()).get(key)
    except (OSError, ValueError):
        return None


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
    """Sums over the steps since the last metrics line: loss, seconds, and the memory's counts."""
    return {"steps": 0, "loss": 0.0, "seconds": 0.0, "counts": {}}


class _StopFlag:
    """SIGINT/SIGTERM set a flag the training loop checks after each step; a second Ctrl-C aborts at once. A repeated
    SIGTERM does not: a dying parent sends one per thread it loses (_stop_with_parent), and a job manager's follow-up
    is a SIGKILL anyway, so the checkpoint is still written."""

    def __init__(self):
        self.signum = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.signum is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
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

def train(preset: str | Preset, arm: str = BASELINE, seed: int | None = None, steps: int | None = None,
          out_dir=None, resume: bool = False, wandb: bool = False, progress: bool = True, device=None,
          force: bool = False, stop_at: int | None = None, with_ltm: bool | None = None,
          started_by: str = BY_HAND, init_from: str | None = None) -> Path:
    """Train one arm (a name from ``revena_lib/arms.py``); returns the run directory.

    with_ltm: the brief's spelling (True -> arm "with_ltm", False -> "baseline"); overrides ``arm``.
    resume: continue the run in the directory from its checkpoint (exactly: same batches, optimizer, RNG);
        a finished run is returned as is; with no checkpoint there, start fresh. ``steps`` other than the run's
        own total changes its plan from the checkpoint on: the cosine schedule is the old total's up to that
        step and the new total's after it. Training says so in one line and records it in config.json
        (``schedule_changes``: at_step, from_steps, to_steps), which evaluation and the export's model card carry.
    force: delete an existing run in the directory and start over (otherwise an existing run is refused).
    stop_at: save a checkpoint and return after this many steps without finishing (as Ctrl-C would);
        for splitting a long run into jobs, and for tests.
    started_by: who starts the run, recorded in config.json: ``"hand"`` (a person: the CLI, or this function
        called directly), or the name of the automatic caller (``train_arms``, ``reservoir_run``: what the
        notebooks and run_all.py call). An automatic caller resumes (implies ``resume``) a run an automatic caller
        started, so re-running an interrupted pipeline continues it exactly; a run started by hand it reuses only
        when finished, and otherwise refuses it with the command that continues it, as ``train()`` does.
    init_from: where a fresh run's weights start (overrides the preset's ``TrainConfig.init_from``): "" random,
        "trunk" this preset and seed's shipped trunk, else a trunk directory (``training/trunk.py``). A resumed run
        continues its own checkpoint and never reloads a trunk. Recorded in config.json (``init``). TrunkError
        (a TrainError) at once if the trunk is missing, corrupt or does not fit the arm.
    Ctrl-C / SIGTERM: saves a checkpoint and raises TrainingInterrupted.
    """
    from revena_lib.data.splits import load_meta

    preset, arm, seed = _requested_preset(preset, arm, seed, steps, with_ltm, init_from)
    meta = load_meta()
    tokenizer = tokenizer_info(meta)
    preset.model.vocab_size = int(tokenizer["vocab_size"])   # the model's vocabulary is the data's tokenizer's
    out = Path(out_dir) if out_dir else run_dir(arm, seed, preset=preset.name)
    if started_by != BY_HAND:
        _check_automatic(out, preset, arm, seed, steps, force)
        resume = True
    state = _resume_state(out, preset, seed, steps, resume, force, tokenizer)
    if state == "finished":
        return out
    init = None if state else plan_init(preset, seed, meta)   # the trunk is read (and checked) before any work

    device = select_device(device)
    distributed = init_distributed(device)
    try:
        run = _setup_run(preset, arm, seed, out, state, device, distributed, started_by, init)
        return _train_loop(run, wandb, progress, stop_at)
    finally:
        if distributed:
            cleanup_distributed()


def _requested_preset(preset: str | Preset, arm: str, seed, steps, with_ltm, init_from) -> tuple[Preset, str, int]:
    """(the arm's preset with seed, steps and init_from set, the arm, the seed), refusing a bad seed or steps."""
    if with_ltm is not None:
        arm = "with_ltm" if with_ltm else BASELINE
    preset = arm_preset(preset, arm)
    seed = preset.train.seed if seed is None else int(seed)
    if seed < 0:
        raise TrainError(f"--seed must be >= 0 (got {seed})")
    if steps is not None and steps < 0:
        raise TrainError(f"--steps must be >= 0 (got {steps}; 0 = the preset's default)")
    if steps:
        preset.train.steps = int(steps)
    if init_from is not None:
        preset.train.init_from = str(init_from)
    preset.train.seed = seed
    return preset, arm, seed


def _resume_state(out: Path, preset: Preset, seed: int, steps, resume: bool, force: bool, tokenizer: dict):
    """Decide between fresh start (None), resumption (the checkpoint dict) and refusal, before touching data or
    devices. Returns "finished" for a finished run asked to resume. A resumed run keeps its saved recipe."""
    ckpt_path, config_path = out / ckpt.CHECKPOINT_FILE, out / ckpt.CONFIG_FILE
    existing = config_path.exists() or ckpt_path.exists()
    if existing and resume and ckpt_path.exists():
        state = ckpt.load_checkpoint(ckpt_path)
        try:
            check_same_tokenizer(state["config"].get("tokenizer"), tokenizer, str(ckpt_path))
        except TokenizerError as e:
            raise CheckpointError(str(e)) from None
        ckpt.check_model_config(ckpt_path, state["config"]["model"], dataclasses.asdict(preset.model))
        if state["seed"] != seed:
            raise CheckpointError(f"{ckpt_path} belongs to seed {state['seed']}, not {seed}; use --seed {state['seed']}")
        # The saved recipe wins (exact continuation); an explicit --steps may extend or shorten the run.
        planned = int(state["config"]["train"]["steps"])
        preset.train = TrainConfig(**{**state["config"]["train"], **({"steps": int(steps)} if steps else {})})
        if state["step"] >= preset.train.steps:
            if is_main_process():
                print(f"revena: {out} already finished {state['step']} steps; nothing to do", file=sys.stderr)
            return "finished"
        changes = list(state["config"].get("schedule_changes") or [])
        if preset.train.steps != planned:
            changes.append({"at_step": int(state["step"]), "from_steps": planned, "to_steps": preset.train.steps})
            if is_main_process():
                print(f"revena: {out}: the schedule changes at step {state['step']} ({planned} -> "
                      f"{preset.train.steps} steps): the learning rate followed the {planned}-step cosine so far and "
                      f"follows the {preset.train.steps}-step one from here, so the weights will differ from a fresh "
                      f"{preset.train.steps}-step run's (recorded in config.json: schedule_changes)", file=sys.stderr)
        state["config"]["schedule_changes"] = changes
        return state
    if existing and not resume and not force:
        try:
            old = json.loads(config_path.read_text())
            what = f"{'finished' if old.get('finished') else 'unfinished'}, {old.get('steps_done')} steps" + \
                (f", started by {old['started_by']}" if old.get("started_by", BY_HAND) != BY_HAND else "")
        except (OSError, ValueError):
            what = "unreadable config.json"
        raise TrainError(f"{out} already holds a run ({what}): pass --resume to continue it, --force to delete it "
                         "and start over, or --out DIR for a new run")
    return None


def _check_automatic(out: Path, preset: Preset, arm: str, seed: int, steps, force: bool) -> None:
    """An automatic caller (train_arms, reservoir_run) meets an existing run in ``out``. One an automatic caller
    started is its to resume. One started by hand (or by a version that did not record who started it) it may only
    reuse as it is, finished: continuing or extending it would change a run a person is in charge of (and may be
    training right now), so that is refused with the command that does it."""
    config_path, ckpt_path = out / ckpt.CONFIG_FILE, out / ckpt.CHECKPOINT_FILE
    if force or not (config_path.exists() or ckpt_path.exists()):
        return
    try:
        old = json.loads(config_path.read_text())
    except (OSError, ValueError):
        old = {}
    if old.get("started_by", BY_HAND) != BY_HAND:
        return
    done, planned = int(old.get("steps_done") or 0), (old.get("train") or {}).get("steps", "?")
    if old.get("finished") and ckpt_path.exists() and (not steps or done >= int(steps)):
        return   # finished: reused as it is
    command = f"python -m revena_lib.train --preset {preset.name} --arm {arm} --seed {seed}"
    if old.get("finished") and ckpt_path.exists():
        what, fix = f"finished, {done} steps; {int(steps)} are asked for", f"`{command} --resume --steps {int(steps)}`"
    else:
        what, fix = f"unfinished, {done} of {planned} steps", f"`{command} --resume`"
    raise TrainError(f"{out} holds a run started by hand ({what}), and the pipeline only continues runs it started "
                     f"itself: continue it with {fix} (a finished run is then reused), or delete {out} to let the "
                     "pipeline train its own")


@dataclass
class _Run:
    """Everything one training run holds between steps (built by _setup_run, advanced by _train_loop)."""
    preset: Preset
    arm: str
    seed: int
    out: Path
    device: torch.device
    dtype: torch.dtype | None
    distributed: bool
    model: torch.nn.Module
    step_model: torch.nn.Module            # the model, or its DDP wrapper
    optimizer: torch.optim.Optimizer
    scaler: object | None
    train_split: object
    val_batches: list
    chars_per_token: float
    config: dict                           # config.json's content
    started_by: str = BY_HAND              # "hand", or the automatic caller that started the run
    schedule_changes: list = field(default_factory=list)   # [{at_step, from_steps, to_steps}] from resumes
    init: dict | None = None               # where the weights started (training/trunk.py plan_init); None: not recorded
    start_step: int = 0
    train_seconds: float = 0.0
    accumulator: dict = field(default_factory=lambda: _empty_accumulator())

    @property
    def cfg(self) -> TrainConfig:
        return self.preset.train

    @property
    def ckpt_path(self) -> Path:
        return self.out / ckpt.CHECKPOINT_FILE

    @property
    def metrics_path(self) -> Path:
        return self.out / ckpt.METRICS_FILE


def _setup_run(preset: Preset, arm: str, seed: int, out: Path, state, device, distributed,
               started_by: str = BY_HAND, init=None) -> _Run:
    """Data, model (from a trunk when ``init``, plan_init's plan, says so), optimizer (all restored from ``state``
    when resuming) and the run's files."""
    from revena_lib.data.splits import load_split
    from revena_lib.models import build_model

    cfg, ranks = preset.train, world_size()
    if cfg.batch_size % ranks:
        raise TrainError(f"batch_size {cfg.batch_size} is not divisible by the {ranks} processes; "
                         "choose --nproc_per_node dividing it")
    train_split, val_split = load_split("train"), load_split("val")
    usable_documents(train_split, cfg.seq_len)

    torch.manual_seed(seed)  # same initial weights for every arm wherever their shapes coincide
    model = build_model(preset.model).to(device)
    started = apply_init(model, *init) if init else None   # a fresh run only: a resumed one loads its checkpoint
    optimizer = make_optimizer(model, cfg, device)
    dtype = DTYPES[state["dtype"]] if state else autocast_dtype(device)  # a resumed run keeps its dtype
    scaler = torch.amp.GradScaler("cuda") if needs_grad_scaler(device, dtype) else None
    run = _Run(preset, arm, seed, out, device, dtype, distributed, model,
               torch.nn.parallel.DistributedDataParallel(model) if distributed else model, optimizer, scaler,
               train_split, validation_batches(val_split, cfg), characters_per_token(val_split), config={},
               started_by=started_by, init=started)
    line = describe_init(started)
    if line and is_main_process():
        print(f"revena: {arm} seed {seed}: {line}", file=sys.stderr)
    if state:
        # Who started a run stays recorded when anyone resumes it (runs from before this field: by hand).
        run.started_by = state["config"].get("started_by") or _config_field(out, "started_by") or BY_HAND
        run.schedule_changes = list(state["config"].get("schedule_changes") or [])
        run.init = state["config"].get("init") or _config_field(out, "init")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        run.start_step, run.train_seconds, run.accumulator = state["step"], state["train_seconds"], dict(state["accumulator"])
    _write_run_files(run, fresh=state is None)
    return run


def _write_run_files(run: _Run, fresh: bool) -> None:
    """config.json, and metrics.jsonl cut back to the checkpoint's step (rank 0 only). A fresh (or forced) run
    starts from empty files; a resumed one drops metric lines logged after its checkpoint."""
    run.config = {
        "preset": run.preset.name, "arm": run.arm, "family": run.preset.model.family,
        "arm_description": ARMS[run.arm].description, "seed": run.seed,
        "model": dataclasses.asdict(run.preset.model), "train": dataclasses.asdict(run.cfg),
        "data": dataclasses.asdict(run.preset.data), "eval": dataclasses.asdict(run.preset.eval),
        "data_meta": _data_summary(run.train_split.meta),
        "tokenizer": tokenizer_info(run.train_split.meta),
        "device": run.device.type, "dtype": dtype_name(run.dtype), "torch_version": torch.__version__,
        "world_size": world_size(), "num_parameters": run.model.num_parameters(),
        "val_characters_per_token": run.chars_per_token,
        "unigram_bpc": None, "finished": False, "steps_done": run.start_step, "train_seconds": run.train_seconds,
        "started_by": run.started_by, "schedule_changes": run.schedule_changes, "init": run.init,
    }
    if not is_main_process():
        return
    run.out.mkdir(parents=True, exist_ok=True)
    if fresh:
        for stale in (run.ckpt_path, run.metrics_path):
            if stale.exists():
                stale.unlink()
    try:
        previous = {} if fresh else json.loads((run.out / ckpt.CONFIG_FILE).read_text())
    except (OSError, ValueError):
        previous = {}
    run.config["unigram_bpc"] = previous.get("unigram_bpc") or unigram_bpc()
    lines = _read_metric_lines(run.metrics_path, run.start_step)
    ckpt.write_text(run.metrics_path, "".join(line + "\n" for line in lines))
    ckpt.write_json(run.out / ckpt.CONFIG_FILE, run.config)


def _save(run: _Run, steps_done: int, finished: bool) -> None:
    """Atomic checkpoint plus config.json's progress fields (rank 0 only)."""
    if not is_main_process():
        return
    ckpt.save_checkpoint(run.ckpt_path, {
        "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
        "scaler": run.scaler.state_dict() if run.scaler is not None else None,
        "step": steps_done, "seed": run.seed, "arm": run.arm, "dtype": dtype_name(run.dtype),
        "config": {"model": run.config["model"], "train": run.config["train"], "data": run.config["data"],
                   "tokenizer": run.config["tokenizer"], "started_by": run.started_by,
                   "schedule_changes": run.schedule_changes, "init": run.init},
        "rng": _rng_state(), "accumulator": dict(run.accumulator), "train_seconds": run.train_seconds,
    })
    ckpt.write_json(run.out / ckpt.CONFIG_FILE, {**run.config, "finished": finished, "steps_done": steps_done,
                                                 "train_seconds": run.train_seconds})


def _optimizer_step(run: _Run, step: int, stop) -> torch.Tensor:
    """One step on this rank's rows of the global batch. Returns [loss, memory counts..., stop flag] summed over
    ranks (float64, CPU): one all-reduce carries the loss, the memory's counts and a Ctrl-C on any rank
    (``stop.signum``, read after the step so a signal during it stops the run right after)."""
    cfg, ranks, my_rank = run.cfg, world_size(), rank()
    lr = lr_at_step(step, cfg)
    for group in run.optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
    x, y = training_batch(run.train_split, run.seed, step, cfg)                            # (B, T) global batch
    x, y = x[my_rank::ranks].to(run.device), y[my_rank::ranks].to(run.device)            # this rank's rows
    with autocast(run.device, run.dtype):
        output = run.step_model(x, y)
    loss = output.loss if run.scaler is None else run.scaler.scale(output.loss)
    loss.backward()
    if run.scaler is not None:
        run.scaler.unscale_(run.optimizer)
    torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip)
    if run.scaler is not None:
        run.scaler.step(run.optimizer)
        run.scaler.update()
    else:
        run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    values = torch.tensor([float(output.loss.detach().float())]
                          + [float(output.stats.get(k, 0.0)) for k in MEMORY_COUNT_KEYS]
                          + [1.0 if stop.signum is not None else 0.0], dtype=torch.float64)
    if run.distributed:
        import torch.distributed as dist
        values = values.to(run.device)
        dist.all_reduce(values)
        values = values.cpu()
        values[0] /= ranks   # each rank's loss is a mean over equal-sized slices; counts are sums
    return values


def _metrics_record(run: _Run, steps_done: int, eta_s: float, is_eval: bool) -> dict:
    """One metrics.jsonl line from the accumulator (steps since the last line), with validation on eval steps."""
    acc, n = run.accumulator, run.accumulator["steps"]
    record = {"step": steps_done, "loss": acc["loss"] / n, "lr": lr_at_step(steps_done - 1, run.cfg),
              "tok_per_sec": run.cfg.batch_size * run.cfg.seq_len * n / max(acc["seconds"], 1e-9), "eta_s": eta_s,
              "LTM_enabled": bool(getattr(run.preset.model, "use_ltm", False)),
              **memory_rates(acc["counts"])}
    if is_eval:
        val_loss = validation_loss(run.model, run.val_batches, run.device, run.dtype)
        record["val_loss"] = val_loss
        record["val_bpc"] = val_loss / math.log(2) / run.chars_per_token
    return record


def _train_loop(run: _Run, use_wandb: bool, progress: bool, stop_at: int | None) -> Path:
    from tqdm.auto import tqdm

    cfg, main = run.cfg, is_main_process()
    wandb_run = _start_wandb(run.out, f"{run.arm}-seed{run.seed}", run.config) if (use_wandb and main) else None
    tokens_per_step = cfg.batch_size * cfg.seq_len
    session_seconds, stopped_by, steps_done = 0.0, None, run.start_step
    bar = tqdm(total=cfg.steps, initial=run.start_step, disable=not (progress and main), dynamic_ncols=True,
               desc=f"{run.arm} seed {run.seed}", unit="step")
    run.model.train()
    with _StopFlag() as stop:
        for step in range(run.start_step, cfg.steps):
            t0 = time.perf_counter()
            values = _optimizer_step(run, step, stop)
            seconds = time.perf_counter() - t0
            session_seconds += seconds
            _accumulate(run, values, seconds)

            steps_done = step + 1
            eta_s = (cfg.steps - steps_done) * session_seconds / (steps_done - run.start_step)
            bar.update(1)
            bar.set_postfix(loss=f"{float(values[0]):.3f}", tok_s=f"{tokens_per_step / seconds:,.0f}",
                            eta=f"{eta_s / 60:.1f}min", refresh=False)

            is_eval = steps_done % cfg.eval_interval == 0 or steps_done == cfg.steps
            if steps_done % cfg.log_interval == 0 or is_eval:
                _log_metrics(run, steps_done, eta_s, is_eval, wandb_run, bar)

            stopped_by = _stop_reason(values, steps_done, cfg.steps, stop_at)
            if stopped_by:
                if not is_eval:
                    _save(run, steps_done, finished=False)
                break
    bar.close()
    _finish(run, wandb_run, stopped_by, steps_done)
    return run.out


def _accumulate(run: _Run, values: torch.Tensor, seconds: float) -> None:
    """Add one step's seconds, loss and memory counts (``_optimizer_step``'s values) to the run's sums."""
    run.train_seconds += seconds
    acc = run.accumulator
    acc["steps"] += 1
    acc["seconds"] += seconds
    acc["loss"] += float(values[0])
    for i, key in enumerate(MEMORY_COUNT_KEYS):
        acc["counts"][key] = acc["counts"].get(key, 0.0) + float(values[1 + i])


def _log_metrics(run: _Run, steps_done: int, eta_s: float, is_eval: bool, wandb_run, bar) -> None:
    """One metrics.jsonl line (and wandb, and the bar on eval steps) from the sums since the last one; on eval
    steps also the checkpoint."""
    record = _metrics_record(run, steps_done, eta_s, is_eval)
    run.accumulator = _empty_accumulator()
    if is_main_process():
        with open(run.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if wandb_run is not None:
            wandb_run.log(record, step=steps_done)
        if is_eval:
            bar.write(f"step {steps_done}: loss {record['loss']:.4f} val_loss {record['val_loss']:.4f} "
                      f"val_bpc {record['val_bpc']:.4f}")
    if is_eval:
        _save(run, steps_done, finished=steps_done == run.cfg.steps)


def _stop_reason(values: torch.Tensor, steps_done: int, total_steps: int, stop_at: int | None) -> str | None:
    """Why the run stops after this step: "signal" (Ctrl-C or SIGTERM on any rank: the last of the step's values),
    "stop_at", or None to keep going."""
    if float(values[-1]) > 0:
        return "signal"
    if stop_at is not None and steps_done >= stop_at and steps_done < total_steps:
        return "stop_at"
    return None


def _finish(run: _Run, wandb_run, stopped_by: str | None, steps_done: int) -> None:
    """After the last step: close wandb, print the ranks' weight checksums, and raise if a signal stopped the run."""
    if wandb_run is not None:
        wandb_run.finish()
    if run.distributed:
        # Checksum of the weights, printed by every rank: identical numbers show the ranks stayed in sync.
        checksum = sum(float(p.detach().double().sum()) for p in run.model.parameters())
        print(f"revena: rank {rank()} final param checksum {checksum:.10e}", file=sys.stderr)
    if stopped_by == "signal":
        raise TrainingInterrupted(f"interrupted at step {steps_done}: checkpoint saved to {run.ckpt_path}; "
                                  f"continue with --resume")


# -----------------------------------------------------------------------------
# Command line

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m revena_lib.train",
        description="Train one arm of the Revena experiment (the baseline transformer, the same model with a "
                    "long-term memory, or any other arm of revena_lib/arms.py) on the prepared data "
                    "(python -m revena_lib.prepare_data first).",
        epilog="The run goes to trained/<arm>/<preset>/seed-<seed>/ under REVENA_HOME (default: the repo): config.json, "
               "metrics.jsonl, checkpoint.pt. An existing run is never overwritten silently: --resume continues "
               "it (a finished one is left as is), --force deletes it and starts over, --out DIR trains elsewhere. "
               "Ctrl-C or SIGTERM saves a checkpoint first. Several processes: "
               "torchrun --standalone --nproc_per_node N -m revena_lib.train ... (the batch is split between them). "
               "Env: REVENA_DTYPE=fp32|bf16|fp16 overrides the autocast dtype, REVENA_THREADS the CPU threads.",
    )
    arm = parser.add_mutually_exclusive_group()
    arm.add_argument("--arm", choices=list(ARMS), default=None, metavar="NAME",
                     help="which arm to train, from the arm table (revena_lib/arms.py): "
                          + "; ".join(f"{name}: {a.description}" for name, a in ARMS.items()))
    arm.add_argument("--baseline", action="store_true", help="the brief's spelling of --arm baseline (the default)")
    arm.add_argument("--with-ltm", action="store_true", help="the brief's spelling of --arm with_ltm")
    parser.add_argument("--preset", default="cpu",
                        help=f"sizes and recipe: {', '.join(PRESETS)} (default: cpu; smoke = seconds, "
                             "paper = the brief's 70M models on a GPU)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed for the initial weights and the batch order (default: the preset's, 1337)")
    parser.add_argument("--steps", type=int, default=None,
                        help="optimizer steps, also the cosine schedule's length (default: the preset's). With "
                             "--resume the run keeps its own total unless --steps gives another: then the schedule "
                             "changes at the checkpoint's step (the learning rate followed the old total's cosine up "
                             "to it and follows the new total's after it, so the weights differ from a fresh run of "
                             "the new total); training prints this and records it in config.json (schedule_changes)")
    parser.add_argument("--out", default=None, help="run directory (default: trained/<arm>/<preset>/seed-<seed>)")
    parser.add_argument("--init-from", default=None, metavar="SOURCE",
                        help="where a fresh run's weights start (default: the preset's init_from, '' in every preset "
                             "today): '' random initialisation; 'trunk' the pretrained trunk of this preset and seed "
                             "(trunks/<preset>/seed-<seed>/, built by make pretrain); or a trunk directory. Only "
                             "transformer arms load it; reservoir and recursive arms start random and say why. A "
                             "resumed run continues its own checkpoint")
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
    parser.add_argument("--started-by", default=BY_HAND, help=argparse.SUPPRESS)   # train_arms' processes
    return parser


def _stop_with_parent(parent_pid: int) -> None:
    """In a training process of launch._train_in_processes (Linux): a SIGTERM when its parent dies, so a killed
    pipeline (whose kernel exits with it) leaves no orphan training on: the run checkpoints and stops, and a re-run
    resumes it. Elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:   # the parent died before prctl: nothing will signal us
        sys.exit(f"error: the process that started this training ({parent_pid}) has exited; nothing was trained")


def main(argv=None) -> None:
    from revena_lib.data import DataError

    args = build_parser().parse_args(argv)
    if os.environ.get("REVENA_PARENT_PID") and args.started_by != BY_HAND:   # a process of launch.train_arms
        _stop_with_parent(int(os.environ["REVENA_PARENT_PID"]))
    try:
        preset = get_preset(args.preset)
    except ValueError as e:
        sys.exit(f"error: {e}")
    try:
        arm = "with_ltm" if args.with_ltm else (args.arm or BASELINE)
        out = train(preset, arm=arm, seed=args.seed, steps=args.steps, out_dir=args.out,
                    resume=args.resume, wandb=args.wandb, progress=not args.no_progress, device=args.device,
                    force=args.force, stop_at=args.stop_at, started_by=args.started_by, init_from=args.init_from)
    except TrainingInterrupted as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(130)
    except (TrainError, DataError, CheckpointError, DeviceError) as e:
        sys.exit(f"error: {e}")
    if is_main_process():
        print(f"revena: run in {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
