"""The long-term memory (LTM): writes, reads, the FIFO, and the trace of what it did; ``RevenaLM`` uses it.

Long-term memory (LTM, only when ``cfg.use_ltm``): one FIFO ring buffer of ``ltm_capacity`` entries per
sequence, owned by attention layer ``cfg.memory_layer_index``. After the whole model has run on a chunk, the
chunk's tokens whose surprisal (-log2 p of the observed token under the model's own previous-position
prediction) is strictly above ``ltm_write_threshold_bits`` are written (detached, except under the relaxed
training read, ``ltm_soft_width``, where keys keep their gradient within the sequence): that layer's key (before
RoPE, unit-normalised) and value per head, and the token's position (its token id and surprisal follow from it). In later chunks, each query
of that layer (before RoPE) is compared by cosine with the stored keys, per head; entries with cosine strictly
above ``ltm_similarity_threshold`` are hits, their values are averaged with softmax(cosine / temperature)
weights restricted to the hits and added to the head's attention output through a learned gate
sigmoid(ltm_gate_logit[h]). No hit -> exactly zero contribution. Both arms run the same chunked code path;
only the memory differs, and the gate (n_head scalars) is the LTM arm's only extra parameter.

In this file: ``write_mask`` (which tokens of a chunk are written: the brief's surprisal rule, the random-write
ablation, top-k), ``LongTermMemory`` (the FIFO: ``write``, ``read``), ``MemoryPass`` (the memory over one forward
call: the model calls ``read`` and ``write`` once per chunk), and what the memory did: ``memory_counts`` /
``memory_rates`` (summed counts and the brief's ratios) and ``MemoryTrace`` (per token, with ``introspect=True``).
The relaxed training read itself is ``memory_read.py``.

    memory = LongTermMemory(batch=1, n_head=4, head_dim=32, capacity=256, device="cpu")
    evictions = memory.write(routed, kv, positions)        # routed (B, L) bool, kv (B, H, L, 2D), positions (B, L)
    out, hit_any, trace = memory.read(unit_queries, 0.8, 0.1, want_trace=False)   # out (B, H, L, D)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from revena_lib.config import ModelConfig
from revena_lib.models.memory_read import EXP_FLOOR, soft_read, unit

TOP_HITS = 4              # K of MemoryTrace.top_hit_*
GATE_INIT_LOGIT = -2.0    # sigmoid(-2) = 0.12: the memory starts as a small, non-zero nudge the model can grow


def chunk_part(t: torch.Tensor, dim: int, length: int) -> torch.Tensor:
    """The first ``length`` positions of one chunk of a padded sequence (the last chunk may be short): the chunk
    itself when it is whole, so that autograd sees no narrow."""
    return t if t.shape[dim] == length else t.narrow(dim, 0, length)


@dataclass
class MemoryTrace:
    """What the LTM did on one forward call (all CPU tensors); only built when ``introspect=True``."""
    surprisal_bits: torch.Tensor       # (B, T) float
    routed: torch.Tensor               # (B, T) bool: surprisal > write threshold (position 0 never)
    hit_count: torch.Tensor            # (B, T) long: distinct entries hit by any head
    top_hit_positions: torch.Tensor    # (B, T, K) long, -1 = none
    top_hit_tokens: torch.Tensor       # (B, T, K) long, -1 = none
    top_hit_cosines: torch.Tensor      # (B, T, K) float, max over heads, sorted desc; 0.0 where position is -1
    occupancy: torch.Tensor            # (B, n_chunks) long: entries stored after each chunk's write
    evictions: torch.Tensor            # (B, n_chunks) long: entries pushed out by FIFO during that chunk's write


MEMORY_COUNT_KEYS = ("tokens", "predicted_tokens", "routed_tokens", "routed_surprisal_bits", "hit_tokens")


def memory_counts(tokens, predicted_tokens, routed_tokens, routed_surprisal_bits, hit_tokens) -> dict[str, float]:
    """What a memory did on one forward call, as sums (so batches, ranks and documents add up exactly):
    tokens seen, tokens with a prediction (T-1 per row), tokens written, their summed surprisal, tokens with a hit."""
    return dict(zip(MEMORY_COUNT_KEYS, map(float, (tokens, predicted_tokens, routed_tokens, routed_surprisal_bits,
                                                   hit_tokens))))


def memory_rates(counts: dict) -> dict[str, float]:
    """The brief's logged ratios from summed ``memory_counts``: 0.0 for a model without a memory."""
    get = lambda k: float(counts.get(k, 0.0))
    return {"routed_token_ratio": get("routed_tokens") / max(get("predicted_tokens"), 1.0),
            "avg_surprisal_routed": get("routed_surprisal_bits") / get("routed_tokens") if get("routed_tokens") else 0.0,
            "ltm_hit_rate": get("hit_tokens") / max(get("tokens"), 1.0)}


def write_mask(surprisal: torch.Tensor, positions: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """Which tokens of one chunk the LTM writes: (B, L) bool from surprisal bits (B, L) and positions (B, L).

    ``surprisal`` (the brief): tokens strictly above ``ltm_write_threshold_bits``. ``random`` (the ablation arm):
    per row, exactly as many tokens as the surprisal rule would write in this chunk, chosen uniformly among the
    chunk's positions (from torch's global generator), so only *which* tokens are written differs. ``topk``
    (an evaluation-time alternative, evaluation/ltm_analysis.py): per row, the ``ltm_write_topk`` most surprising
    tokens of the chunk, whatever their surprisal.
    Position 0 (the sequence's first token, with no prediction) is never written.
    """
    eligible = positions > 0
    if cfg.ltm_write_rule == "topk":
        score = surprisal.float().masked_fill(~eligible, -torch.inf)                # (B, L)
        k = min(cfg.ltm_write_topk, score.shape[1])
        chosen = torch.zeros_like(eligible).scatter(1, score.topk(k, dim=1, sorted=False).indices, True)
        return chosen & eligible
    routed = (surprisal > cfg.ltm_write_threshold_bits) & eligible
    if cfg.ltm_write_rule == "surprisal":
        return routed
    n = routed.sum(dim=1, keepdim=True)                                          # (B, 1) the surprisal rule's count
    noise = torch.rand(surprisal.shape, device=surprisal.device).masked_fill(~eligible, 2.0)   # ineligible last
    rank = noise.argsort(dim=1).argsort(dim=1)                                   # (B, L) 0 = first chosen
    return (rank < n) & eligible


class LongTermMemory:
    """Per-forward FIFO memory of ``capacity`` entries per batch row (a ring buffer with a write counter).

    An entry is the memory layer's unit key and value per head, stored side by side in ``kv`` (one row copy per
    write), and the token's position. Its token id and surprisal are looked up through the position (the memory
    never outlives its sequence), which keeps the per-chunk work, and so the step time, small.
    Tensors have capacity + 1 slots: tokens that are not written go to the extra "trash" slot, which keeps the
    write a single vectorised copy with no data-dependent shapes; reads ignore it.
    Updates are out of place because earlier reads saved the old tensors for the backward pass.
    """

    def __init__(self, batch: int, n_head: int, head_dim: int, capacity: int, device):
        self.capacity, self.head_dim = capacity, head_dim
        self.kv = torch.zeros(batch, n_head, capacity + 1, 2 * head_dim, device=device)   # [unit key | value] fp32
        self.positions = torch.full((batch, capacity + 1), -1, dtype=torch.long, device=device)   # -1 = empty
        self.written = torch.zeros(batch, dtype=torch.long, device=device)                # total writes so far

    def occupancy(self) -> torch.Tensor:
        return self.written.clamp(max=self.capacity)                                      # (B,)

    def copy(self, detach: bool = False) -> "LongTermMemory":
        """A new memory over the same tensors (writes are out of place, so the two never affect each other)."""
        new = LongTermMemory.__new__(LongTermMemory)
        new.capacity, new.head_dim = self.capacity, self.head_dim
        new.kv = self.kv.detach() if detach else self.kv
        new.positions, new.written = self.positions, self.written
        return new

    def entries(self, row: int = 0) -> list[int]:
        """Positions held by batch row ``row``, oldest first (for display)."""
        n, s = int(self.written[row]), self.capacity
        slots = [(n - k) % s for k in range(min(n, s), 0, -1)]
        return [int(self.positions[row, i]) for i in slots]

    def write(self, routed: torch.Tensor, kv: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Append the routed tokens of one chunk in order, evicting the oldest first. Returns evictions (B,).

        routed (B, L) bool; kv (B, H, L, 2D) float32 [unit key | value]; positions (B, L) long.
        If more than ``capacity`` tokens qualify, only the latest ``capacity`` survive (what FIFO would keep).
        """
        s = self.capacity
        order = routed.long().cumsum(dim=1)                      # (B, L) 1-based rank among routed tokens
        n_routed = order[:, -1:]                                 # (B, 1) a chunk is never empty
        skipped = (n_routed - s).clamp(min=0)                    # qualifying tokens overwritten within this chunk
        keep = routed & (order > skipped)
        slot = torch.where(keep, (self.written[:, None] + order - 1) % s, s)          # (B, L), s = trash slot
        # one index_copy of whole rows into kv viewed as (B*H*(S+1), 2D): a quarter of a scatter's time, forward and
        # backward (kv is detached unless training with the relaxed read). The trash row takes every unwritten token.
        B, H, _, width = kv.shape
        rows = (torch.arange(B * H, device=slot.device).view(B, H, 1) * (s + 1) + slot[:, None, :]).view(-1)
        self.kv = self.kv.view(-1, width).index_copy(0, rows, kv.reshape(-1, width)).view(self.kv.shape)
        self.positions = self.positions.scatter(1, slot, positions)
        n = n_routed[:, 0]
        evictions = (self.occupancy() + n - s).clamp(min=0)
        self.written = self.written + n
        return evictions

    def read(self, unit_queries: torch.Tensor, threshold: float, temperature: float, want_trace: bool,
             soft_width: float = 0.0):
        """Hit-restricted softmax read for one chunk. unit_queries (B, H, L, D) float32.

        ``soft_width`` > 0 (training only): the hard cut is relaxed to a soft hit-ness sigmoid((cos - threshold) /
        soft_width) per entry; the read is that soft-hit-weighted softmax, scaled by the soft probability of any
        hit, so it tends to the hard rule as the width shrinks, and is ~0 when no entry is near the cut. Unlike the
        hard rule, it passes gradient to queries, keys and gate while every cosine is still below the cut (a fresh
        model's best pairs sit at 0.6-0.7 against the brief's 0.8, where the hard read is exactly zero).

        Returns (out (B, H, L, D) float32, exactly 0 where a query has no hit; hit_any (B, L) bool; trace pieces
        (hit_count, top positions, top cosines) or None). Entries only come from earlier chunks, because a
        chunk writes after its read.
        """
        d = self.head_dim
        # Slots fill in order 0, 1, ...: only the first max-occupancy ones can hold an entry (counted on a CPU; on
        # a GPU that count would stall the queue once per chunk, so every slot is read there). At least one slot
        # is read, so an empty memory takes the same path (and reads exactly zero).
        n = max(int(self.occupancy().max()), 1) if self.kv.device.type == "cpu" else self.capacity
        positions = self.positions[:, :n]                                     # (B, n); the trash slot is never read
        if soft_width > 0:   # memory_read.py
            out, hit_any = soft_read(unit_queries, self.kv[:, :, :n], positions >= 0, threshold, temperature, soft_width)
            return out, hit_any, None
        keys, values = self.kv[:, :, :n, :d], self.kv[:, :, :n, d:]
        cos = unit_queries @ keys.transpose(-1, -2)                          # (B, H, L, n)
        hit = cos > threshold
        if threshold < 0:    # an empty slot's key is zero (cosine 0): it can pass a negative cut
            hit &= (positions >= 0)[:, None, None, :]
        # softmax over the hits only, normalised on the narrow side (r = (weights @ V) / sum weights). The shift is
        # the best cosine (detached): never below the best hit, and equal to it when there is one and the cut is
        # >= 0 (every non-hit, empty slots included, lies at or below the cut).
        # exp's argument is kept in [EXP_FLOOR, 0] (torch's CPU exp is several times slower on lanes that
        # underflow, as exp(-inf) does) and non-hits are zeroed after it: a query without hits gets all-zero
        # weights and zero, finite gradients
        best = cos.detach().amax(-1, keepdim=True)                          # (B, H, L, 1)
        weights = torch.where(hit, torch.sub(cos, best).mul_(1.0 / temperature).clamp_(EXP_FLOOR, 0.0).exp_(), 0.0)
        out = (weights @ values) / weights.sum(-1, keepdim=True).clamp(min=1e-30)   # (B, H, L, D)
        hit_any = (best[..., 0] > threshold).any(dim=1) if threshold >= 0 else hit.any(dim=-1).any(dim=1)   # (B, L)
        trace = None
        if want_trace:
            hit_entry = hit.any(dim=1)                                       # (B, L, n) hit by any head
            best = cos.detach().amax(dim=1).masked_fill(~hit_entry, -torch.inf)   # (B, L, n) max over heads
            k = min(TOP_HITS, n)
            top_cos, top_slot = best.topk(k, dim=-1)                         # (B, L, k) sorted desc
            found = torch.isfinite(top_cos)
            top_pos = torch.where(found, positions.gather(1, top_slot.flatten(1)).view_as(top_slot), -1)
            top_cos = torch.where(found, top_cos, 0.0)
            if k < TOP_HITS:   # fewer slots than K: pad so the trace always has K columns
                top_pos = F.pad(top_pos, (0, TOP_HITS - k), value=-1)
                top_cos = F.pad(top_cos, (0, TOP_HITS - k), value=0.0)
            trace = (hit_entry.sum(-1), top_pos, top_cos)
        return out, hit_any, trace


class MemoryPass:
    """The LTM over one forward call of ``RevenaLM``: the memory (empty, or a copy of a session state's), the memory
    layer's unit queries and [unit key | value] rows cut into chunks, and what it did (written tokens, hits, trace).

    The model calls ``read`` on each chunk's head outputs before the layer's output projection (when reads are on),
    and ``write`` once the chunk's surprisal is known (a chunk writes after its read, so entries only ever come from
    earlier chunks); ``stats_and_trace`` sums it up at the end. The memory's arithmetic is fp32 outside autocast:
    cosines compared with a cut of 0.8 need the precision.
    q, k, v: (B, H, Tp, D) before RoPE, Tp = the padded length; ``length``: the real length T; ``offset``: the stream
    position of the call's first token; ``soft``: the relaxed training read (keys keep their gradient).
    """

    def __init__(self, cfg: ModelConfig, q, k, v, gate_logit: torch.Tensor, length: int, offset: int,
                 memory: LongTermMemory | None, introspect: bool, soft: bool):
        B, H, Tp, D = q.shape
        device = q.device
        self.cfg, self.introspect, self.soft = cfg, introspect, soft
        self.memory = LongTermMemory(B, H, D, cfg.ltm_capacity, device) if memory is None else memory.copy()
        with torch.autocast(device_type=device.type, enabled=False):
            unit_q = unit(q.float())                                             # (B, H, Tp, D)
            kv = torch.cat([unit(k.float()), v.float()], dim=-1)               # (B, H, Tp, 2D)
            if not soft:   # the brief's memory is not differentiable; the soft training read keeps keys' gradient
                kv = kv.detach()
        self.gate = torch.sigmoid(gate_logit.float())[None, :, None, None]      # (1, H, 1, 1)
        self.positions = torch.arange(offset, offset + length, device=device).expand(B, length)
        self.routed = torch.zeros(B, length, dtype=torch.bool, device=device)
        self.hit = torch.zeros(B, length, dtype=torch.bool, device=device)
        if introspect:
            n_chunks = Tp // cfg.chunk_size
            self.hit_count = torch.zeros(B, length, dtype=torch.long, device=device)
            self.top_pos = torch.full((B, length, TOP_HITS), -1, dtype=torch.long, device=device)
            self.top_cos = torch.zeros(B, length, TOP_HITS, device=device)
            self.occupancy = torch.zeros(B, n_chunks, dtype=torch.long, device=device)
            self.evictions = torch.zeros(B, n_chunks, dtype=torch.long, device=device)
        # one split each, like the model's other per-token tensors (see RevenaLM.forward)
        self.q_parts, self.kv_parts = unit_q.split(cfg.chunk_size, dim=2), kv.split(cfg.chunk_size, dim=2)

    def read(self, ci: int, y: torch.Tensor, s: int, e: int) -> torch.Tensor:
        """Chunk ``ci`` (positions s .. e-1) reads the memory: its head outputs y (B, H, l, D) plus the gated read."""
        cfg = self.cfg
        with torch.autocast(device_type=y.device.type, enabled=False):
            read, hit_any, tr = self.memory.read(chunk_part(self.q_parts[ci], 2, e - s), cfg.ltm_similarity_threshold,
                                                 cfg.ltm_score_temperature, self.introspect and not self.soft,
                                                 cfg.ltm_soft_width if self.soft else 0.0)
            y = (y.float() + self.gate * read).to(y.dtype)   # no hit: read is exactly 0
        self.hit[:, s:e] = hit_any
        if self.introspect:
            self.hit_count[:, s:e], self.top_pos[:, s:e], self.top_cos[:, s:e] = tr
        return y

    def write(self, ci: int, s: int, e: int, surprisal: torch.Tensor) -> None:
        """Chunk ``ci`` writes the tokens the write rule picks from their surprisal (bits (B, T), filled up to e)."""
        routed = write_mask(surprisal[:, s:e], self.positions[:, s:e], self.cfg)
        self.routed[:, s:e] = routed
        ev = self.memory.write(routed, chunk_part(self.kv_parts[ci], 2, e - s), self.positions[:, s:e])
        if self.introspect:
            self.occupancy[:, ci], self.evictions[:, ci] = self.memory.occupancy(), ev

    def stats_and_trace(self, surprisal: torch.Tensor, idx: torch.Tensor, offset: int):
        """(``memory_counts`` of the call, ``MemoryTrace`` or None without introspect). surprisal (B, T) bits."""
        B, T = idx.shape
        routed_surprisal = torch.where(self.routed, surprisal, torch.zeros_like(surprisal)).sum()
        counts = torch.stack([self.routed.sum().float(), routed_surprisal, self.hit.sum().float()]).tolist()  # one sync
        stats = memory_counts(B * T, B * (T - 1 if offset == 0 else T), *counts)
        if not self.introspect:
            return stats, None
        # an entry's token id is the token at its position (-1: from an earlier call)
        rel = self.top_pos - offset
        top_tok = torch.where(rel >= 0, idx.gather(1, rel.clamp(min=0).flatten(1)).view_as(self.top_pos), -1)
        return stats, MemoryTrace(surprisal.cpu(), self.routed.cpu(), self.hit_count.cpu(), self.top_pos.cpu(),
                                  top_tok.cpu(), self.top_cos.cpu(), self.occupancy.cpu(), self.evictions.cpu())
