"""Every arm and seed of a preset: trained one after another in this process, or as parallel one-thread processes.

``train_arms`` is what ``run_all.py`` and ``notebooks/03_train.ipynb`` call; each run is ``train()``
(``revena_lib/training/loop.py``), resumed when it has a checkpoint and reused when finished, so a run is the same
pure function of its seed however it was launched.

    from revena_lib.training.launch import train_arms
    train_arms("smoke", "baseline,with_ltm", seeds="1337")   # {"baseline seed 1337": run_dir, ...}
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

from revena_lib.config import Preset, get_preset
from revena_lib.training import TrainError
from revena_lib.training import checkpoint as ckpt
from revena_lib.training.loop import TRAIN_ARMS, train
from revena_lib.training.runs import run_dir


def parse_seeds(spec, preset: str | Preset) -> tuple[int, ...]:
    """'1,2,3' or a sequence -> seeds; empty -> the preset's seeds (3 at cpu)."""
    if isinstance(spec, str):
        spec = [s for s in spec.replace(" ", "").split(",") if s]
    if not spec:
        return tuple((get_preset(preset) if isinstance(preset, str) else preset).seeds)
    try:
        return tuple(int(s) for s in spec)
    except ValueError:
        raise TrainError(f"seeds={spec!r}: give whole numbers separated by commas, e.g. seeds='1337,1338,1339'") from None


def train_arms(preset: str | Preset, arms, seeds=(), steps: int | None = None, progress: bool = True,
               device=None, parallel: int = 0) -> dict[str, Path]:
    """Train (or resume, or reuse when finished) every seed of every arm; returns {"<arm> seed <N>": run_dir}.
    The runs are marked as started by ``train_arms`` (config.json ``started_by``): calling it again after an
    interruption (Ctrl-C, a killed job, a re-run of the pipeline) continues each exactly where its checkpoint stopped.
    A run started by hand is reused when finished and otherwise refused with the command that continues it.

    ``arms``: names or 'a,b' (baseline always included); ``seeds``: '' or () for the preset's seeds.
    ``parallel`` > 1 runs that many single-threaded ``python -m revena_lib.train`` processes at once (on a 2-core
    CPU two one-thread runs train ~13% more tokens/s in total than one two-thread run; benchmarks/bench_train.py);
    a named preset only, since the processes rebuild it by name. Each run is still a pure function of its seed.
    ``parallel=0``: two processes for the cpu preset on a machine without CUDA and with 2+ cores, else one."""
    from revena_lib.arms import parse_arms

    if parallel <= 0:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        parallel = 2 if preset == "cpu" and cores >= 2 and not torch.cuda.is_available() and device != "cuda" else 1

    jobs = [(arm, seed) for arm in parse_arms(arms) for seed in parse_seeds(seeds, preset)]
    if parallel > 1 and isinstance(preset, str) and (device or "cpu") == "cpu":
        return _train_in_processes(preset, jobs, steps, parallel, progress)
    return {f"{arm} seed {seed}": train(preset, arm=arm, seed=seed, steps=steps or None, resume=True,
                                        progress=progress, device=device, started_by=TRAIN_ARMS)
            for arm, seed in jobs}


def _steps_logged(out: Path) -> int:
    """The last step a run has written to metrics.jsonl (0 if none yet): for a progress bar across processes."""
    try:
        lines = (out / ckpt.METRICS_FILE).read_text().splitlines()
        return int(json.loads(lines[-1])["step"]) if lines else 0
    except (OSError, ValueError, KeyError, IndexError):
        return 0


def _train_in_processes(preset: str, jobs, steps, parallel: int, progress: bool) -> dict[str, Path]:
    """Run the (arm, seed) jobs as ``parallel`` one-thread training processes, with one progress bar over all
    their steps; a failure (or Ctrl-C) stops the others, whose checkpoints let a rerun resume."""
    import subprocess

    from tqdm.auto import tqdm

    # REVENA_PARENT_PID: each process stops with a checkpoint when this one dies (loop._stop_with_parent)
    env = {**os.environ, "REVENA_THREADS": "1", "OMP_NUM_THREADS": "1", "REVENA_PARENT_PID": str(os.getpid())}
    total_steps = (steps or get_preset(preset).train.steps) * len(jobs)
    pending, running, done = list(jobs), {}, {}
    bar = tqdm(total=total_steps, disable=not progress, unit="step", desc=f"{len(jobs)} runs, {parallel} at a time")
    try:
        while pending or running:
            while pending and len(running) < parallel:
                arm, seed = pending.pop(0)
                cmd = [sys.executable, "-m", "revena_lib.train", "--preset", preset, "--arm", arm, "--seed", str(seed),
                       "--resume", "--no-progress", "--started-by", TRAIN_ARMS] + \
                    (["--steps", str(steps)] if steps else [])
                out = run_dir(arm, seed, preset=preset)
                out.mkdir(parents=True, exist_ok=True)
                log = open(out / "train.log", "a")   # the run's console output, beside its metrics
                running[(arm, seed)] = (subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), log)
            time.sleep(2.0)
            for key, (proc, log) in list(running.items()):
                if proc.poll() is None:
                    continue
                log.close()
                del running[key]
                if proc.returncode != 0:
                    raise TrainError(f"training {key[0]} seed {key[1]} failed (exit {proc.returncode}); its output is "
                                     f"in {log.name}; rerun to resume from the last checkpoint")
                done[key] = run_dir(*key, preset=preset)
                bar.write(f"revena: {key[0]} seed {key[1]} done ({len(done)}/{len(jobs)})")
            logged = sum(_steps_logged(run_dir(*key, preset=preset)) for key in list(running) + list(done))
            bar.update(max(0, logged - bar.n))
    finally:
        for proc, log in running.values():
            proc.terminate()
            log.close()
        bar.close()
    return {f"{arm} seed {seed}": done[(arm, seed)] for arm, seed in jobs}
