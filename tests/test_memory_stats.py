"""Entry lifetimes and "was it in memory when asked", from the trace: checked against the real LongTermMemory
(FIFO, write after read) and the trace's eviction counts. CPU, seconds."""

import numpy as np
import pytest
import torch

from revena_lib.config import get_preset
from revena_lib.evaluation.memory_stats import entry_lifetimes, in_memory, lifetime_summary
from revena_lib.models.ltm import LongTermMemory
from revena_lib.models.transformer import RevenaLM


@pytest.mark.parametrize("seed,density", [(0, 0.3), (1, 0.7), (2, 0.05)])
def test_lifetimes_and_in_memory_match_the_real_fifo(seed, density):
    T, chunk, capacity = 160, 16, 8
    g = torch.Generator().manual_seed(seed)
    routed = torch.rand(1, T, generator=g) < density                        # (1, T)
    memory = LongTermMemory(1, 1, 2, capacity, "cpu")
    held_after = []                                                         # entries after each chunk's write
    for s in range(0, T, chunk):
        memory.write(routed[:, s:s + chunk], torch.zeros(1, 1, chunk, 4), torch.arange(s, s + chunk)[None])
        held_after.append(set(memory.entries(0)))
    # a query in chunk q reads what was held after chunk q-1's write
    keys, queries, expected = [], [], []
    for q in range(T):
        for p in range(T):
            keys.append(p), queries.append(q)
            expected.append(q // chunk > 0 and p in held_after[q // chunk - 1])
    assert in_memory(routed[0], capacity, chunk, keys, queries).tolist() == expected
    lifetimes, censored = entry_lifetimes(routed[0], capacity)
    written = np.flatnonzero(routed[0].numpy())
    assert len(lifetimes) == max(0, len(written) - capacity) and censored == min(len(written), capacity)
    for p, life in zip(written, lifetimes):   # evicted by the write at p + life: gone after that chunk, held before
        assert p not in held_after[(p + life) // chunk]
        if (p + life) // chunk > p // chunk:
            assert p in held_after[(p + life) // chunk - 1]
    assert (lifetimes > 0).all()


def test_lifetimes_count_the_models_own_evictions():
    torch.manual_seed(0)
    cfg = get_preset("smoke").model
    cfg.use_ltm, cfg.ltm_capacity, cfg.ltm_write_threshold_bits = True, 16, 2.0
    model = RevenaLM(cfg).eval()
    idx = torch.randint(1, cfg.vocab_size, (2, 300))
    with torch.no_grad():
        trace = model(idx, introspect=True).trace
    for row in range(2):
        lifetimes, censored = entry_lifetimes(trace.routed[row], cfg.ltm_capacity)
        assert len(lifetimes) == int(trace.evictions[row].sum()) > 0
        assert censored == int(trace.occupancy[row, -1])
    summary = lifetime_summary([entry_lifetimes(trace.routed[r], 16)[0] for r in range(2)], censored=32)
    assert summary["quantiles"]["q10"] <= summary["median"] <= summary["quantiles"]["q90"]
    assert summary["evicted"] == int(trace.evictions.sum())


def test_an_unwritten_key_or_a_read_in_the_same_chunk_is_not_in_memory():
    routed = torch.zeros(128, dtype=torch.bool)
    routed[[5, 70]] = True
    # 5 written in chunk 0: readable from chunk 1 (64+), not by a query in its own chunk; 6 never written
    assert in_memory(routed, 4, 64, [5, 5, 6, 70], [63, 64, 100, 100]).tolist() == [False, True, False, False]
