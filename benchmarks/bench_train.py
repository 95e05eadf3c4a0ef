"""Training and evaluation throughput of the arms side by side with a plain GPT, and model FLOPs utilisation
against this machine's matmul peak.

Times full optimizer steps (forward, backward, clip, AdamW) on the preset's real batches (random tokens
if no data is prepared), after warm-up, for the baseline, the baseline with the output layer it had before the
fused head (``baseline_unfused``: full logits and log_softmax per chunk, kept for the backward), the LTM arm, the
LTM arm with the memory code it had before memory_read.py (``with_ltm_unfused``: the relaxed read as the plain
formula with autograd's backward, F.normalize, a scatter write) and a plain GPT of the same size in one run, their
steps interleaved, then the same models' evaluation forward (no grad: what evaluation calls, surprisal without logits),
then the peak of a large square matmul.
The plain GPT is
written here as a typical small-GPT trainer runs on a CPU: full causal attention over the sequence, full
(B, T, V) logits, F.cross_entropy, fp32. Model FLOPs per token, stated explicitly:
    6 * N_params                         (forward + backward of every weight; the tied embedding counted once,
                                          as the output layer's matmul, the input lookup is free)
  + 12 * n_layer * n_embd * window       (attention scores and weighted values, forward + backward, over the
                                          `window` keys each query actually sees; LTM reads not counted)

    .venv/bin/python benchmarks/bench_train.py --preset cpu --steps 5 [--threads 1] [--vocab-size 4096]

On a CPU shared with other jobs, --threads 1 can be several times faster than torch's default (one thread per
core): measured 2.0 s against 10.4 s per baseline step at cpu beside two one-thread training runs on 2 cores.
torch.compile of the step was tried (cpu preset, baseline): 190 s to compile, no faster, so it is not here; nor of
the LTM's relaxed read alone: 29 s to compile, then 7.8 ms against the eager memory_read.py function's 4.1 ms.
Measured at cpu with --steps 11 --threads 1 --vocab-size 4096 under load (load average 2.5-4 on 2 cores): LTM step
overhead 1.12-1.13x (with_ltm_unfused: 1.21-1.26x), evaluation 1.10-1.12x (1.14-1.15x); see the README.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from revena_lib.arms import arm_preset
from revena_lib.config import get_preset
from revena_lib.training.device import DTYPES, autocast, autocast_dtype, dtype_name, select_device
from revena_lib.models import build_model, ltm, transformer
from revena_lib.models.memory_read import soft_read_plain
from revena_lib.training.batches import batch_for_step
from revena_lib.training.loop import make_optimizer


def matmul_peak_flops(dtype, device, n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of an n x n x n matmul in ``dtype`` (fp32 when None): what this machine can do at best."""
    a = torch.randn(n, n, device=device, dtype=dtype or torch.float32)
    b = torch.randn(n, n, device=device, dtype=dtype or torch.float32)
    for _ in range(2):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * n ** 3 * repeats / (time.perf_counter() - start)


class PlainGPT(nn.Module):
    """The reference: a nanoGPT-style model of the same size (pre-norm blocks, full causal attention, tied
    embedding, learned positions), full logits and F.cross_entropy."""

    def __init__(self, vocab: int, n_layer: int, n_head: int, n_embd: int, seq_len: int):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, n_embd), nn.Embedding(seq_len, n_embd)
        self.blocks = nn.ModuleList(nn.TransformerEncoderLayer(n_embd, n_head, 4 * n_embd, dropout=0.0,
                                                               activation="gelu", batch_first=True, norm_first=True,
                                                               bias=False) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, vocab, bias=False)
        self.head.weight = self.wte.weight

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, x, y):
        T = x.shape[1]
        h = self.wte(x) + self.wpe(torch.arange(T, device=x.device))
        mask = nn.Transformer.generate_square_subsequent_mask(T, device=x.device)
        for block in self.blocks:
            h = block(h, src_mask=mask, is_causal=True)
        logits = self.head(self.ln_f(h))                                        # (B, T, V) fp32
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), y.reshape(-1))


ARMS = ("baseline", "baseline_unfused", "with_ltm", "with_ltm_unfused", "plain_gpt")


def unfused_head_block(h, weight, nxt, targets, need_logits=False, grad_w=None):
    """RevenaLM's per-chunk output layer before output_head.py: the chunk's full logits and their fp32 log_softmax,
    both kept by autograd for the backward (head_block's contract)."""
    logits = h @ weight.t()                                                     # (B, l, V)
    logp = F.log_softmax(logits.float(), dim=-1)                                # (B, l, V)
    bits = -logp.detach().gather(-1, nxt.clamp(min=0)[..., None])[..., 0] / math.log(2.0) * (nxt >= 0)
    tgt = targets if targets is not None else torch.full_like(nxt, -1)
    nll = -logp.gather(-1, tgt.clamp(min=0)[..., None])[..., 0]                 # (B, l)
    return logits, torch.where(tgt >= 0, nll, 0.0).sum(), (tgt >= 0).sum(), bits


def scatter_write(memory, routed, kv, positions):
    """LongTermMemory.write before its index_copy: one scatter with the slot index expanded over heads and width."""
    s = memory.capacity
    order = routed.long().cumsum(dim=1)                                         # (B, L)
    n_routed = order[:, -1:]
    keep = routed & (order > (n_routed - s).clamp(min=0))
    slot = torch.where(keep, (memory.written[:, None] + order - 1) % s, s)      # (B, L), s = trash slot
    memory.kv = memory.kv.scatter(2, slot[:, None, :, None].expand_as(kv), kv)
    memory.positions = memory.positions.scatter(1, slot, positions)
    n = n_routed[:, 0]
    evictions = (memory.occupancy() + n - s).clamp(min=0)
    memory.written = memory.written + n
    return evictions


@contextlib.contextmanager
def unfused_memory():
    """RevenaLM's forward with the LTM code it had before memory_read.py (the plain relaxed read, F.normalize, a
    scatter write), for this block only; the hard read and the per-chunk split stay as they are now."""
    saved = ltm.soft_read, ltm.unit, ltm.LongTermMemory.write
    ltm.soft_read, ltm.unit = soft_read_plain, lambda x: F.normalize(x, dim=-1)
    ltm.LongTermMemory.write = scatter_write
    try:
        yield
    finally:
        ltm.soft_read, ltm.unit, ltm.LongTermMemory.write = saved


@contextlib.contextmanager
def unfused_head():
    """RevenaLM's forward with the unfused head, for this block only (the backward needs no swap)."""
    fused = transformer.head_block, transformer.weight_grad_buffer
    transformer.head_block, transformer.weight_grad_buffer = unfused_head_block, lambda h, weight: None
    try:
        yield
    finally:
        transformer.head_block, transformer.weight_grad_buffer = fused


def make_stepper(preset, arm: str, split, device, dtype, overrides: dict | None = None):
    """(model, step, evaluate) for one arm of any family (or "plain_gpt"): step(i) runs one full optimizer step on
    batch i, evaluate(i) one forward pass without grad on it (eval mode); each returns its seconds. ``overrides``:
    ModelConfig fields set on top of the arm's (bench_reservoir.py's --units)."""
    cfg = preset.train
    torch.manual_seed(cfg.seed)
    if arm == "plain_gpt":
        m = preset.model
        model, dtype = PlainGPT(m.vocab_size, m.n_layer, m.n_head, m.n_embd, cfg.seq_len).to(device).train(), None
        loss_of = lambda x, y: model(x, y)
        eval_of = loss_of                                       # full logits and their cross-entropy
        variant = contextlib.nullcontext
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    else:
        arm_cfg = arm_preset(preset, arm.removesuffix("_unfused")).model
        model_cfg = dataclasses.replace(arm_cfg, vocab_size=preset.model.vocab_size, **(overrides or {}))
        model = build_model(model_cfg).to(device).train()
        # "_unfused": the forward of an earlier implementation (the baseline's head, the LTM's memory code)
        variant = ((unfused_memory if arm_cfg.use_ltm else unfused_head) if arm.endswith("_unfused")
                   else contextlib.nullcontext)
        loss_of = lambda x, y: model(x, y).loss
        # surprisal without logits, as evaluation's document_nll calls it; "_unfused" keeps the logits it always built
        eval_of = ((lambda x, y: model(x)) if arm.endswith("_unfused") else (lambda x, y: model(x, logits=False)))
        optimizer = make_optimizer(model, cfg, device)

    def batch(i: int):
        if split is not None:
            x, y = batch_for_step(split, cfg.seed, i, cfg.batch_size, cfg.seq_len)
        else:
            x = torch.randint(0, preset.model.vocab_size, (cfg.batch_size, cfg.seq_len + 1))
            x, y = x[:, :-1], x[:, 1:]
        return x.to(device), y.to(device)

    def step(i: int) -> float:
        x, y = batch(i)
        start = time.perf_counter()
        with autocast(device, dtype), variant():
            loss = loss_of(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    def evaluate(i: int) -> float:
        x, y = batch(i)
        model.eval()
        start = time.perf_counter()
        with torch.inference_mode(), autocast(device, dtype), variant():
            eval_of(x, y)
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        model.train()
        return elapsed

    return model, step, evaluate


def time_arms(preset, split, steps: int, warmup: int, device, dtype) -> dict:
    """Every arm, their steps interleaved (baseline, unfused, LTM, ..., plain, then the next step with the next arm
    first) so a busy machine slows all alike; then their evaluation forwards, interleaved the same way."""
    arms = {arm: make_stepper(preset, arm, split, device, dtype) for arm in ARMS}
    seconds = {arm: [] for arm in arms}
    eval_seconds = {arm: [] for arm in arms}
    for phase, times in ((1, seconds), (2, eval_seconds)):
        for i in range(warmup + steps):
            for arm in ARMS[i % len(ARMS):] + ARMS[:i % len(ARMS)]:   # rotate who goes first
                elapsed = arms[arm][phase](i)
                if i >= warmup:
                    times[arm].append(elapsed)
    tokens = preset.train.batch_size * preset.train.seq_len
    median = lambda xs: sorted(xs)[len(xs) // 2]
    results = {}
    for arm, (model, _, _) in arms.items():
        s_step = median(seconds[arm])
        context = preset.model.window if arm != "plain_gpt" else preset.train.seq_len / 2   # plain: mean causal span
        flops_per_token = 6 * model.num_parameters() + 12 * preset.model.n_layer * preset.model.n_embd * context
        results[arm] = {"params": model.num_parameters(), "s_per_step": s_step, "tok_per_sec": tokens / s_step,
                        "flops_per_token": flops_per_token, "model_flops_per_sec": flops_per_token * tokens / s_step,
                        "eval_tok_per_sec": tokens / median(eval_seconds[arm])}
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu", help="preset whose model/batch to time (default: cpu)")
    parser.add_argument("--steps", type=int, default=7,
                        help="timed steps per arm, interleaved between the arms; the median is reported (default 7)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    parser.add_argument("--dtype", default="auto", choices=["auto", *DTYPES],
                        help="autocast dtype (default: what training/device.py picks for training)")
    parser.add_argument("--device", default=None, choices=["cpu", "cuda"], help="default: cuda if available")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's, one per core)")
    parser.add_argument("--vocab-size", type=int, default=None,
                        help="output layer size (default: the prepared data's tokenizer, else GPT-2's 50,257)")
    args = parser.parse_args(argv)

    try:
        preset = get_preset(args.preset)
    except ValueError as e:
        sys.exit(f"error: {e}")
    device = select_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = autocast_dtype(device) if args.dtype == "auto" else DTYPES[args.dtype]
    try:
        from revena_lib.data import DataError
        from revena_lib.data.splits import load_split
        split, data_note = load_split("train"), "real batches (batch_for_step)"
        preset.model.vocab_size = split.vocab_size
    except DataError:
        split, data_note = None, "random tokens (no prepared data)"
    if args.vocab_size and args.vocab_size != preset.model.vocab_size:
        preset.model.vocab_size, split, data_note = args.vocab_size, None, f"random tokens (--vocab-size {args.vocab_size})"

    load_before = os.getloadavg()[0]
    results = time_arms(preset, split, args.steps, args.warmup, device, dtype)
    peak = matmul_peak_flops(dtype, device)
    load_after = os.getloadavg()[0]

    cfg = preset.train
    print(f"preset {preset.name}: batch {cfg.batch_size} x seq_len {cfg.seq_len}, {data_note}; device {device}, "
          f"vocabulary {preset.model.vocab_size:,}; dtype {dtype_name(dtype)} (plain GPT: fp32), "
          f"{torch.get_num_threads()} threads; median of {args.steps} interleaved steps "
          f"after {args.warmup} warm-up (training, then evaluation)")
    print(f"matmul peak ({dtype_name(dtype)}, 2048^3): {peak / 1e9:,.1f} GFLOP/s; "
          f"load average {load_before:.2f} before, {load_after:.2f} after")
    print("model FLOPs/token = 6 * N_params + 12 * n_layer * n_embd * window")
    print(f"{'arm':<20} {'params':>12} {'s/step':>8} {'tok/s':>10} {'GFLOP/tok':>10} {'GFLOP/s':>9} {'MFU':>7} "
          f"{'eval tok/s':>11}")
    for arm, r in results.items():
        print(f"{arm:<20} {r['params']:>12,} {r['s_per_step']:>8.3f} {r['tok_per_sec']:>10,.0f} "
              f"{r['flops_per_token'] / 1e9:>10.4f} {r['model_flops_per_sec'] / 1e9:>9.1f} "
              f"{r['model_flops_per_sec'] / peak:>7.1%} {r['eval_tok_per_sec']:>11,.0f}")
    print("eval tok/s: forward only, no grad, eval mode, the same batches (ours: surprisal without logits, as "
          "evaluation calls it, the _unfused arms with logits; plain GPT: logits and cross-entropy)")
    fused = results["baseline"]["tok_per_sec"] / results["baseline_unfused"]["tok_per_sec"]
    print(f"throughput ratio baseline (fused head) / baseline_unfused: {fused:.2f} training, "
          f"{results['baseline']['eval_tok_per_sec'] / results['baseline_unfused']['eval_tok_per_sec']:.2f} eval")
    read = results["with_ltm"]["tok_per_sec"] / results["with_ltm_unfused"]["tok_per_sec"]
    print(f"throughput ratio with_ltm (fused memory code) / with_ltm_unfused: {read:.2f} training")
    for arm in ("with_ltm", "with_ltm_unfused"):
        ratio = results[arm]["tok_per_sec"] / results["baseline"]["tok_per_sec"]
        eval_ratio = results[arm]["eval_tok_per_sec"] / results["baseline"]["eval_tok_per_sec"]
        print(f"throughput ratio {arm} / baseline: {ratio:.2f} (LTM step-time overhead {1 / ratio:.2f}x), "
              f"eval {eval_ratio:.2f} ({1 / eval_ratio:.2f}x)")
    for arm in ("baseline", "with_ltm"):
        print(f"throughput ratio {arm} / plain GPT: {results[arm]['tok_per_sec'] / results['plain_gpt']['tok_per_sec']:.2f}")


if __name__ == "__main__":
    main()
