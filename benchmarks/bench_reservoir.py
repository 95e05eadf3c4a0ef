"""Training step time of the reservoir arms against the baseline, side by side, and what each one trains.

Times full optimizer steps (forward, backward, clip, AdamW) on the preset's real batches (random tokens if no
data is prepared), after warm-up, for the baseline and the reservoir arms, their steps interleaved (baseline,
reservoir, reservoir_ffn, baseline, ...) so machine load hits all alike. Prints the median seconds per step,
the ratio to the baseline (the target is <= 2x at cpu), trainable and fixed parameters, and the dense
multiply-adds per token of what replaces the FFN: the FFN's 8 C^2 against the reservoir's N (2C + N)
(W_in, W and the readout; W is stored dense, its rc_connectivity zeros are multiplied anyway).

    .venv/bin/python benchmarks/bench_reservoir.py --preset cpu --steps 7 [--threads 1] [--units 256]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from bench_train import make_stepper   # the same timed optimizer step as bench_train.py (this folder)
from revena_lib.config import get_preset
from revena_lib.training.device import DTYPES, autocast_dtype, dtype_name, select_device

ARMS = ("baseline", "reservoir", "reservoir_ffn")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu", help="preset whose model and batch to time (default: cpu)")
    parser.add_argument("--steps", type=int, default=7, help="timed steps per arm, interleaved; median reported")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is steadier when busy)")
    parser.add_argument("--units", type=int, default=0, help="reservoir units N (default 0: the config's 2 x n_embd)")
    parser.add_argument("--dtype", default="auto", choices=["auto", *DTYPES], help="autocast dtype")
    parser.add_argument("--device", default=None, choices=["cpu", "cuda"], help="default: cuda if available")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        preset = get_preset(args.preset)
    except ValueError as e:
        sys.exit(f"error: {e}")
    device = select_device(args.device)
    dtype = autocast_dtype(device) if args.dtype == "auto" else DTYPES[args.dtype]
    try:
        from revena_lib.data import DataError
        from revena_lib.data.splits import load_split
        split, note = load_split("train"), "real batches"
        preset.model.vocab_size = split.vocab_size
    except DataError:   # no data: random tokens over the preset's vocabulary size ("bpe-4096" -> 4,096)
        tok = preset.data.tokenizer
        preset.model.vocab_size = int(tok.split("-")[1]) if tok.startswith("bpe-") else preset.model.vocab_size
        split, note = None, "random tokens (no prepared data)"

    steppers = {arm: make_stepper(preset, arm, split, device, dtype,
                                  {"reservoir_units": args.units} if arm != "baseline" else None) for arm in ARMS}
    seconds = {arm: [] for arm in ARMS}
    load_before = os.getloadavg()[0]
    for i in range(args.warmup + args.steps):
        for arm in ARMS[i % len(ARMS):] + ARMS[:i % len(ARMS)]:   # rotate who goes first
            elapsed = steppers[arm][1](i)
            if i >= args.warmup:
                seconds[arm].append(elapsed)
    load_after = os.getloadavg()[0]

    cfg, m = preset.train, preset.model
    C = m.n_embd
    N = args.units or 2 * C
    print(f"preset {preset.name}: batch {cfg.batch_size} x seq_len {cfg.seq_len}, {note}, vocabulary "
          f"{m.vocab_size:,}; device {device}, dtype {dtype_name(dtype)}, {torch.get_num_threads()} threads; "
          f"median of {args.steps} interleaved steps after {args.warmup} warm-up; load average "
          f"{load_before:.2f} before, {load_after:.2f} after")
    print(f"per block, dense multiply-adds per token: FFN 8C^2 = {8 * C * C:,}; reservoir N(2C+N) = "
          f"{N * (2 * C + N):,} (C={C}, N={N})")
    base = sorted(seconds["baseline"])[len(seconds["baseline"]) // 2]
    print(f"{'arm':<14} {'trainable':>11} {'fixed':>9} {'s/step':>8} {'tok/s':>8} {'x baseline':>11}")
    for arm in ARMS:
        model = steppers[arm][0]
        median = sorted(seconds[arm])[len(seconds[arm]) // 2]
        fixed = sum(b.numel() for b in model.buffers())
        print(f"{arm:<14} {model.num_parameters():>11,} {fixed:>9,} {median:>8.3f} "
              f"{cfg.batch_size * cfg.seq_len / median:>8,.0f} {median / base:>11.2f}")


if __name__ == "__main__":
    main()
