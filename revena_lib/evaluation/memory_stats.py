"""What the LTM's FIFO held, from the trace alone: entry lifetimes and whether a given entry was in memory at a read.

The memory (``models/ltm.py``, ``LongTermMemory``) appends the routed tokens of a chunk in position order
after the chunk's reads, and evicts the oldest entry once it holds ``capacity``. So the k-th written token (0-based)
is pushed out by the (k + capacity)-th write, and everything follows from ``trace.routed`` (B, T), the chunk size
and the capacity, with no extra bookkeeping in the model's hot path. Tests check these functions against the real
``LongTermMemory`` and the trace's eviction counts.

    from revena_lib.evaluation.memory_stats import entry_lifetimes, lifetime_summary
    lifetimes, censored = entry_lifetimes(out.trace.routed[0], capacity=256); lifetime_summary(lifetimes, censored)
"""

from __future__ import annotations

import numpy as np
import torch

LIFETIME_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def write_positions(routed_row) -> np.ndarray:
    """Positions written by one sequence, in write order (ascending): routed_row (T,) bool -> (W,) int."""
    return np.flatnonzero(torch.as_tensor(routed_row).cpu().numpy()).astype(np.int64)


def entry_lifetimes(routed_row, capacity: int) -> tuple[np.ndarray, int]:
    """Lifetime in tokens of every evicted entry of one sequence, and how many were still held at its end.

    An entry's lifetime is the position of the token whose write pushed it out minus its own position (the FIFO
    evicts the k-th write at the (k + capacity)-th). Entries still in memory at the end are censored: their
    lifetime is only known to exceed the tokens left, so they are counted, not averaged in.
    """
    pos = write_positions(routed_row)                                     # (W,)
    evicted = pos[capacity:] - pos[:max(0, len(pos) - capacity)]          # (max(0, W - capacity),)
    return evicted, int(min(len(pos), capacity))


def lifetime_summary(lifetimes, censored: int = 0, quantiles=LIFETIME_QUANTILES) -> dict:
    """Quantiles (tokens) of pooled lifetimes, with the number of evicted and censored entries."""
    x = np.concatenate([np.asarray(v, float).ravel() for v in lifetimes]) if isinstance(lifetimes, list) \
        else np.asarray(lifetimes, float).ravel()
    q = {f"q{int(round(100 * p)):02d}": (float(np.quantile(x, p)) if x.size else float("nan")) for p in quantiles}
    return {"median": q.get("q50", float(np.median(x)) if x.size else float("nan")), "quantiles": q,
            "mean": float(x.mean()) if x.size else float("nan"), "evicted": int(x.size), "censored": int(censored),
            "note": "tokens from an entry's write to the write that evicted it (FIFO), pooled over sequences; "
                    "entries still held at a sequence's end are censored (counted, not in the quantiles)"}


def in_memory(routed_row, capacity: int, chunk_size: int, key_positions, query_positions) -> np.ndarray:
    """For each (key position, query position) pair: was the key's entry in memory when the query read it?

    True iff the key's token was written, in an earlier chunk than the query's (a chunk writes after its reads),
    and the write that evicts it, if any, comes in the query's chunk or later. routed_row (T,) bool;
    key_positions, query_positions (N,) int -> (N,) bool.
    """
    routed = torch.as_tensor(routed_row).cpu().numpy().astype(bool)
    pos = write_positions(routed)
    keys, queries = np.asarray(key_positions, np.int64), np.asarray(query_positions, np.int64)
    ok = (keys >= 0) & (keys < len(routed))
    written = np.zeros(len(keys), bool)
    written[ok] = routed[keys[ok]]
    rank = np.searchsorted(pos, keys)                                      # the key's write index, if written
    evictor = rank + capacity
    evicted_at = np.where(evictor < len(pos), pos[np.minimum(evictor, max(len(pos) - 1, 0))] if len(pos) else 0,
                          np.iinfo(np.int64).max)
    before = keys // chunk_size < queries // chunk_size
    still = np.where(evicted_at == np.iinfo(np.int64).max, True, evicted_at // chunk_size >= queries // chunk_size)
    return written & before & still
