"""Throughput: forward-pass tokens per second of every arm, on the same fixed batches, arms interleaved.

Each arm is timed on at least ``min_batches`` identical (B, T) batches cut from the validation tokens, after
``THROUGHPUT_WARMUP_BATCHES`` warm-up batches; the order of the arms rotates every batch so that load on the
machine hits every arm alike. The figure is the median over batches, with a bootstrap interval of the median.

    speeds = measure_throughput({"baseline": m1, "with_ltm": m2}, throughput_batches(val, 8, 1024, 200_000), device)
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from revena_lib.evaluation import stats

THROUGHPUT_WARMUP_BATCHES = 2


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def throughput_batches(split, batch_size: int, seq_len: int, total_tokens: int,
                       min_batches: int = 20) -> list[torch.Tensor]:
    """Fixed (B, T) batches cut from the validation token stream, the same ones for every arm: enough for
    ``total_tokens`` and never fewer than ``min_batches`` timed batches, plus the warm-up batches."""
    per_batch = batch_size * seq_len
    n_batches = max(min_batches, math.ceil(total_tokens / per_batch))
    stream = np.asarray(split.tokens, dtype=np.int64)
    need = (n_batches + THROUGHPUT_WARMUP_BATCHES) * per_batch
    if len(stream) < need:
        stream = np.resize(stream, need)  # repeat a short split: throughput does not care what the text says
    return [torch.from_numpy(stream[k * per_batch:(k + 1) * per_batch].reshape(batch_size, seq_len).copy())
            for k in range(n_batches + THROUGHPUT_WARMUP_BATCHES)]


@torch.inference_mode()
def measure_throughput(models: dict, batches: list[torch.Tensor], device: torch.device, samples: int = 2000) -> dict:
    """Forward-pass tokens/sec per arm, after warm-up, arms interleaved (the order rotating every batch), so load
    on the machine hits every arm alike. Returns {arm: {"tokens_per_sec" (median over timed batches), "ci95"
    (bootstrap of the median), "timed_batches", ...}}."""
    from revena_lib.training.device import autocast

    warmup, timed = batches[:THROUGHPUT_WARMUP_BATCHES], batches[THROUGHPUT_WARMUP_BATCHES:]
    arms = list(models)
    seconds = {arm: [] for arm in arms}
    with autocast(device):
        for arm in arms:
            for x in warmup:
                models[arm](x.to(device))
        _sync(device)
        for k, x in enumerate(timed):
            x = x.to(device)
            shift = k % len(arms)
            for arm in arms[shift:] + arms[:shift]:
                _sync(device)
                start = time.perf_counter()
                models[arm](x)
                _sync(device)
                seconds[arm].append(time.perf_counter() - start)
    tokens = timed[0].numel()
    out = {}
    for arm in arms:
        median, ci = stats.median_ci(tokens / np.array(seconds[arm]), samples)
        out[arm] = {"tokens_per_sec": median, "ci95": ci, "timed_batches": len(timed),
                    "timed_tokens": int(tokens * len(timed)), "batch_size": int(timed[0].shape[0]),
                    "seq_len": int(timed[0].shape[1]), "statistic": "median over timed batches"}
    return out
