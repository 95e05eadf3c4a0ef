"""Benchmark: forward+backward time per training step of both arms (baseline, with LTM), side by side.

Both models are built from the same preset; after a warm-up, repetitions alternate between the arms so that
drift on a shared machine hits both alike; the median of each arm is reported with tokens/s and the ratio
LTM / baseline (target: <= 1.3x). Uses the training's autocast choice (``revena_lib.training.device``) unless --dtype.

    .venv/bin/python benchmarks/bench_model.py --preset cpu --reps 7
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from revena_lib.config import get_preset
from revena_lib.training.device import autocast, autocast_dtype, configure_threads, dtype_name
from revena_lib.models.transformer import RevenaLM


def step_time(model, x, y, dtype) -> float:
    """Seconds for one forward + backward (gradients cleared first, as in training)."""
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    with autocast("cpu", dtype):
        out = model(x, y)
    out.loss.backward()
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="cpu", help="model and sequence sizes (default: cpu)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=None, help="default: the preset's TrainConfig.seq_len")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per arm")
    parser.add_argument("--reps", type=int, default=7, help="timed steps per arm, interleaved")
    parser.add_argument("--dtype", choices=["auto", "fp32", "bf16"], default="auto",
                        help="autocast dtype (auto: what training would use on this CPU)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: configure_threads(), i.e. all cores; on a machine that is busy "
                             "with other work, 1 thread gives steadier numbers)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        preset = get_preset(args.preset)
    except ValueError as exc:
        sys.exit(f"error: {exc}")
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads() if args.threads else configure_threads()
    dtype = {"auto": autocast_dtype("cpu"), "fp32": None, "bf16": torch.bfloat16}[args.dtype]
    seq_len = args.seq_len or preset.train.seq_len
    g = torch.Generator().manual_seed(args.seed)
    x = torch.randint(0, preset.model.vocab_size, (args.batch_size, seq_len + 1), generator=g)
    x, y = x[:, :-1].contiguous(), x[:, 1:].contiguous()

    models = {}
    for arm, use_ltm in (("baseline", False), ("with_ltm", True)):
        torch.manual_seed(args.seed)
        cfg = get_preset(args.preset).model
        cfg.use_ltm = use_ltm
        models[arm] = RevenaLM(cfg).train()
    print(f"preset {args.preset}: n_layer {cfg.n_layer}, n_embd {cfg.n_embd}, n_head {cfg.n_head}, "
          f"batch {args.batch_size} x seq_len {seq_len}, dtype {dtype_name(dtype)}, {threads} threads")
    for arm, model in models.items():
        print(f"  {arm:9s} {model.num_parameters():,} parameters")

    times = {arm: [] for arm in models}
    for _ in range(args.warmup):
        for arm, model in models.items():
            step_time(model, x, y, dtype)
    for _ in range(args.reps):
        for arm, model in models.items():
            times[arm].append(step_time(model, x, y, dtype))

    tokens = args.batch_size * seq_len
    med = {arm: statistics.median(t) for arm, t in times.items()}
    for arm in models:
        print(f"{arm:9s} fwd+bwd median {med[arm] * 1000:8.1f} ms/step  "
              f"(min {min(times[arm]) * 1000:.1f}, max {max(times[arm]) * 1000:.1f})  {tokens / med[arm]:,.0f} tok/s")
    print(f"ratio with_ltm / baseline: {med['with_ltm'] / med['baseline']:.3f}x (target <= 1.3x)")


if __name__ == "__main__":
    main()
