"""Training step time of the recursive (TRM) arms against the baseline, with trainable parameters and FLOPs per token.

Times full optimizer steps (forward, backward, clip, AdamW) on random tokens over the preset's vocabulary, after
warm-up, the arms' steps interleaved so machine load hits all alike; prints the median seconds per step and the
ratio to the baseline. FLOPs per token count what the code computes, forward and backward, 2 per multiply-add:
``recursive.flops_per_token`` for the TRM arms (its no-grad cycles forward only), and the same conventions for the
baseline here (12 C^2 per layer for the matrices, scores and mixing over the (P+1) c keys of its chunked window).

    REVENA_THREADS=1 .venv/bin/python benchmarks/bench_recursive.py --preset cpu --steps 3 [--arms recursive,...]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

import torch

from revena_lib.arms import arm_preset
from revena_lib.config import ModelConfig, get_preset
from revena_lib.training.device import configure_threads
from revena_lib.models import build_model
from revena_lib.models.recursive import flops_per_token
from revena_lib.models.transformer import cache_chunks
from revena_lib.training.loop import make_optimizer


def transformer_flops_per_token(cfg: ModelConfig) -> int:
    """The baseline's training FLOPs per token under flops_per_token's conventions (backward = 2x forward)."""
    C, keys = cfg.n_embd, (cache_chunks(cfg) + 1) * cfg.chunk_size
    forward = cfg.n_layer * (12 * C * C + 2 * keys * C) + cfg.vocab_size * C
    return 2 * 3 * forward


def make_stepper(preset, arm: str, vocab: int):
    """(model, step): step() runs one optimizer step on fresh random tokens and returns its seconds."""
    cfg = preset.train
    torch.manual_seed(cfg.seed)
    model = build_model(dataclasses.replace(arm_preset(preset, arm).model, vocab_size=vocab)).train()
    optimizer = make_optimizer(model, cfg, torch.device("cpu"))

    def step() -> float:
        row = torch.randint(0, vocab, (cfg.batch_size, cfg.seq_len + 1))
        start = time.perf_counter()
        model(row[:, :-1], row[:, 1:]).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    return model, step


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu", help="preset whose model and batch to time (default: cpu)")
    parser.add_argument("--arms", default="recursive", help="comma-separated recursive arms timed beside the baseline")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per arm, interleaved; median reported")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    args = parser.parse_args(argv)
    configure_threads()
    preset = get_preset(args.preset)
    tok = preset.data.tokenizer
    vocab = int(tok.split("-")[1]) if tok.startswith("bpe-") else preset.model.vocab_size
    arms = ["baseline", *[a.strip() for a in args.arms.split(",") if a.strip()]]
    steppers = {arm: make_stepper(preset, arm, vocab) for arm in arms}
    seconds = {arm: [] for arm in arms}
    load_before = os.getloadavg()[0]
    for i in range(args.warmup + args.steps):
        for arm in arms[i % len(arms):] + arms[:i % len(arms)]:   # rotate who goes first
            elapsed = steppers[arm][1]()
            if i >= args.warmup:
                seconds[arm].append(elapsed)
    cfg = preset.train
    print(f"preset {preset.name}: batch {cfg.batch_size} x seq_len {cfg.seq_len}, random tokens over {vocab:,}; "
          f"cpu fp32, {torch.get_num_threads()} threads; median of {args.steps} interleaved steps after "
          f"{args.warmup} warm-up; load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")
    median = {arm: sorted(s)[len(s) // 2] for arm, s in seconds.items()}
    base_flops = transformer_flops_per_token(steppers["baseline"][0].cfg)
    print(f"{'arm':<16} {'trainable':>11} {'GFLOP/token':>12} {'x':>6} {'s/step':>8} {'tok/s':>8} {'x baseline':>11}")
    for arm in arms:
        model = steppers[arm][0]
        flops = transformer_flops_per_token(model.cfg) if arm == "baseline" else flops_per_token(model.cfg)
        print(f"{arm:<16} {model.num_parameters():>11,} {flops / 1e9:>12.4f} {flops / base_flops:>6.2f} "
              f"{median[arm]:>8.2f} {cfg.batch_size * cfg.seq_len / median[arm]:>8,.0f} "
              f"{median[arm] / median['baseline']:>11.2f}")


if __name__ == "__main__":
    main()
