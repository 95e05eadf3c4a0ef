"""RevenaLM: the one transformer behind both arms (``GPT-70M`` baseline and ``RevenaHybridTiny-70M`` with LTM).

Short-term memory (STM): causal attention over a sliding window of ``cfg.window`` tokens (token t sees
t-window+1 .. t), with RoPE so the window can slide over sequences of any length. Sequences are processed in
chunks of ``cfg.chunk_size`` tokens; each chunk's queries attend to the chunk itself and to a per-layer K/V
cache of the preceding ``window`` tokens, under a banded mask. Because window = 2 x chunk_size, a chunk's
first token reaches back 127 tokens into the chunk before last, so the cache holds the previous two chunks;
the banded mask makes the result exactly a sliding window (tests/test_model.py checks it against a naive
full-sequence reference).

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

    from revena_lib.models.transformer import RevenaLM; from revena_lib.config import get_preset
    out = RevenaLM(get_preset("smoke").model).forward(idx, targets)  # out.logits (B,T,V), out.loss, out.stats
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from revena_lib.config import ModelConfig
from revena_lib.models.memory_read import EXP_FLOOR, soft_read, unit
from revena_lib.models.output_head import head_block, weight_grad_buffer, with_weight_grad

LN2 = math.log(2.0)
TOP_HITS = 4              # K of MemoryTrace.top_hit_*
GATE_INIT_LOGIT = -2.0    # sigmoid(-2) = 0.12: the memory starts as a small, non-zero nudge the model can grow


class ModelError(ValueError):
    pass


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


@dataclass
class ModelOutput:
    logits: torch.Tensor                      # (B, T, V)
    loss: torch.Tensor | None                 # scalar mean cross-entropy in nats, or None without targets
    surprisal_bits: torch.Tensor              # (B, T) detached float32; 0.0 at position 0
    stats: dict[str, float] = field(default_factory=dict)   # memory_counts(...) sums; {} without a memory
    trace: MemoryTrace | None = None
    state: object | None = None               # the family's state after idx, when called with state= (sessions)


@dataclass
class TransformerState:
    """A stream's state between calls (sessions): what the next chunk needs from everything before it.

    Valid at chunk boundaries: ``position`` is a multiple of ``chunk_size``. Tensors are detached; a forward call
    with this state returns a new one and leaves this one as it was.
    """
    position: int                                        # tokens seen so far
    caches: list                                         # per layer (k after RoPE, v), each (B, H, P*c, D)
    last_log_probs: torch.Tensor | None = None           # (B, V) fp32 prediction for the next token (its surprisal)
    memory: "LongTermMemory | None" = None               # the LTM's entries (with_ltm arms)

    def summary(self) -> dict:
        """What is held now (batch row 0): tokens seen, tokens in the STM cache, LTM entries."""
        cached = min(self.position, self.caches[0][0].shape[2]) if self.caches else 0
        out = {"tokens_seen": self.position, "stm_cached_tokens": cached}
        if self.memory is not None:
            out["ltm_entries"] = int(self.memory.occupancy()[0])
            out["ltm_capacity"] = self.memory.capacity
        return out


# ----------------------------------------------------------------------------------------------- helpers

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


def rope_tables(positions: torch.Tensor, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and signed sin of shape (T, head_dim), float32, for the rotate-half RoPE convention:
    dimension i pairs with i + head_dim/2, so rope(x) = x * cos + roll(x, head_dim/2) * signed_sin."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim))
    angles = positions.float()[:, None] * inv_freq[None, :]   # (T, D/2), angles computed in float32
    cos, sin = angles.cos(), angles.sin()
    return torch.cat([cos, cos], dim=-1), torch.cat([-sin, sin], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, H, T, D) by the per-position angles, in x's dtype (the tables are cast once by the caller)."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * signed_sin


def cache_chunks(cfg: ModelConfig) -> int:
    """How many previous chunks a chunk's queries need so every token sees exactly its window."""
    return max(0, math.ceil((cfg.window - 1) / cfg.chunk_size))


def chunk_masks(n_chunks: int, cfg: ModelConfig, device, first_chunk: int = 0) -> torch.Tensor:
    """Boolean (n_chunks, chunk, (P+1)*chunk) masks: True = query i of chunk n may attend key j.

    Keys are [P cached chunks, the chunk itself]; key j of chunk n sits at position (n-P)*chunk + j. Chunks are
    numbered from ``first_chunk`` (a stream continued from a state starts there).
    Allowed: causal (key <= query), inside the window (query - key < window), and a real position (>= 0).
    """
    c, p = cfg.chunk_size, cache_chunks(cfg)
    chunks = torch.arange(first_chunk, first_chunk + n_chunks, device=device)[:, None, None]
    q_pos = chunks * c + torch.arange(c, device=device)[None, :, None]
    k_pos = (chunks - p) * c + torch.arange((p + 1) * c, device=device)[None, None, :]
    return (k_pos <= q_pos) & (q_pos - k_pos < cfg.window) & (k_pos >= 0)   # (N, c, (P+1)c)


def parameter_count(cfg: ModelConfig) -> int:
    """Parameters of RevenaLM(cfg) computed from the config alone (tests check it equals num_parameters())."""
    c = cfg.n_embd
    per_layer = 2 * (2 * c) + 3 * c * c + c * c + 4 * c * c + 4 * c * c   # 2 LayerNorms, qkv, proj, MLP in+out
    total = cfg.vocab_size * c + cfg.n_layer * per_layer + 2 * c           # tied embedding, final LayerNorm
    return total + (cfg.n_head if cfg.use_ltm else 0)                      # LTM gate: one scalar per head


def check_inputs(owner: str, idx: torch.Tensor, targets: torch.Tensor | None) -> None:
    """The checks every family's forward makes first: a clear error instead of a shape error deep inside."""
    if idx.dim() != 2 or idx.shape[1] < 1:
        raise ModelError(f"{owner}.forward: idx must be a (batch, time) LongTensor with time >= 1, got shape {tuple(idx.shape)}")
    if targets is not None and targets.shape != idx.shape:
        raise ModelError(f"{owner}.forward: targets shape {tuple(targets.shape)} must equal idx shape {tuple(idx.shape)}")


def empty_caches(cfg: ModelConfig, batch_size: int, device) -> list:
    """Zero K/V caches (k after RoPE, v) of every layer, each (B, H, P*c, D): the start of a stream."""
    H, D, keep = cfg.n_head, cfg.n_embd // cfg.n_head, cache_chunks(cfg) * cfg.chunk_size
    return [(torch.zeros(batch_size, H, keep, D, device=device),) * 2 for _ in range(cfg.n_layer)]


def write_mask(surprisal: torch.Tensor, positions: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """Which tokens of one chunk the LTM writes: (B, L) bool from surprisal bits (B, L) and positions (B, L).

    ``surprisal`` (the brief): tokens strictly above ``ltm_write_threshold_bits``. ``random`` (the ablation arm):
    per row, exactly as many tokens as the surprisal rule would write in this chunk, chosen uniformly among the
    chunk's positions (from torch's global generator), so only *which* tokens are written differs. ``topk``
    (an evaluation-time alternative, revena_lib/evaluation/ltm_analysis.py): per row, the ``ltm_write_topk`` most surprising
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


# ----------------------------------------------------------------------------------------------- modules

class Attention(nn.Module):
    """Multi-head self-attention, split into projection and attention so the model can run them chunk-wise."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.n_embd // cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=False)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def project(self, x: torch.Tensor):
        """q, k, v of shape (B, H, T, D), before RoPE."""
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        shape = (B, T, self.n_head, self.head_dim)
        return (q.view(shape).transpose(1, 2), k.view(shape).transpose(1, 2), v.view(shape).transpose(1, 2))

    def attend(self, q, k, v, mask):
        """SDPA with a boolean mask; q (..., Lq, D), k/v (..., Lk, D), mask broadcastable to (..., Lq, Lk)."""
        v = v.to(q.dtype)
        k = k.to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                              dropout_p=self.dropout if self.training else 0.0)

    def merge(self, y: torch.Tensor) -> torch.Tensor:
        """(B, H, T, D) head outputs -> (B, T, C) after the output projection."""
        B, H, T, D = y.shape
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).reshape(B, T, H * D)))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=False)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-norm transformer block. Its attention runs in one of two chunked ways (same maths, same mask):
    ``forward_all`` processes every chunk at once (each with its P predecessors as keys),
    ``forward_chunk`` processes one chunk against a K/V cache of the previous P chunks."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.attn = Attention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = MLP(cfg)

    def stm_all(self, x, cos, sin, masks, chunk: int, p: int, cache=None):
        """STM attention for all chunks of a padded sequence. x (B, N*c, C) -> head outputs (B, H, N*c, D),
        q, k, v before RoPE (the memory layer needs them), and the new cache: (k after RoPE, v) of the last P
        chunks. ``cache`` (k, v) (B, H, P*c, D) holds the P chunks before x (a continued stream); None = zeros."""
        q, k, v = self.attn.project(self.ln_1(x))                       # (B, H, Tp, D)
        qr, kr = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        B, H, Tp, D = q.shape
        n = Tp // chunk
        qc = qr.reshape(B * H, n, chunk, D)
        if cache is None:   # zeros before the sequence start; the mask hides them
            cache = (kr.new_zeros(B, H, p * chunk, D), v.new_zeros(B, H, p * chunk, D))
        k_all = torch.cat([cache[0].to(kr.dtype), kr], dim=2)           # (B, H, P*c + Tp, D)
        v_all = torch.cat([cache[1].to(v.dtype), v], dim=2)
        # keys of chunk i: chunks i-P .. i
        kp, vp = k_all.reshape(B * H, p + n, chunk, D), v_all.reshape(B * H, p + n, chunk, D)
        keys = torch.cat([kp[:, i:i + n] for i in range(p + 1)], dim=2)   # (BH, N, (P+1)c, D)
        vals = torch.cat([vp[:, i:i + n] for i in range(p + 1)], dim=2)
        y = self.attn.attend(qc, keys, vals, masks)                     # (BH, N, c, D)
        keep = p * chunk
        new_cache = (k_all[:, :, k_all.shape[2] - keep:], v_all[:, :, v_all.shape[2] - keep:])
        return y.reshape(B, H, Tp, D), q, k, v, new_cache

    def forward_all(self, x, cos, sin, masks, chunk: int, p: int, cache=None):
        """The whole block over all chunks; returns (x, new cache) (see ``stm_all``)."""
        y, _, _, _, new_cache = self.stm_all(x, cos, sin, masks, chunk, p, cache)
        x = x + self.attn.merge(y)
        return x + self.mlp(self.ln_2(x)), new_cache

    def forward_chunk(self, x, cos, sin, mask, cache):
        """One chunk x (B, L, C) at its positions (cos/sin (L, D)); cache = (k, v) of the previous P*chunk
        positions (B, H, P*c, D), after RoPE. Returns the new x and the new cache."""
        q, k, v = self.attn.project(self.ln_1(x))
        qr, kr = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        keys = torch.cat([cache[0], kr], dim=2)                          # (B, H, P*c + L, D)
        vals = torch.cat([cache[1], v], dim=2)
        y = self.attn.attend(qr, keys, vals, mask)                       # (B, H, L, D)
        x = x + self.attn.merge(y)
        x = x + self.mlp(self.ln_2(x))
        keep = cache[0].shape[2]
        return x, (keys[:, :, keys.shape[2] - keep:], vals[:, :, vals.shape[2] - keep:])


# ----------------------------------------------------------------------------------------------- memory

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


# ----------------------------------------------------------------------------------------------- the model

class RevenaLM(nn.Module):
    """GPT-2-vocabulary transformer with a sliding-window STM and, when ``cfg.use_ltm``, a surprisal-routed LTM."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight   # tied embeddings
        # The LTM arm's only extra parameters: one gate logit per head of the memory layer.
        self.ltm_gate_logit = nn.Parameter(torch.full((cfg.n_head,), GATE_INIT_LOGIT)) if cfg.use_ltm else None
        self.apply(self._init_weights)
        # GPT-2: scale residual projections by 1/sqrt(2 * n_layer) so the residual stream's variance stays put
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    def num_parameters(self) -> int:
        """Unique parameters (the tied embedding counted once)."""
        return sum(p.numel() for p in self.parameters())

    def new_state(self, batch_size: int = 1, device="cpu") -> TransformerState:
        """An empty stream (position 0): zero K/V caches in every layer and, with the LTM, an empty memory."""
        cfg = self.cfg
        memory = (LongTermMemory(batch_size, cfg.n_head, cfg.n_embd // cfg.n_head, cfg.ltm_capacity, device)
                  if cfg.use_ltm else None)
        return TransformerState(0, empty_caches(cfg, batch_size, device), None, memory)

    def forward(self, idx, targets=None, introspect=False, memory_read=True, state=None,
                logits: bool = True) -> ModelOutput:
        cfg = self.cfg
        check_inputs("RevenaLM", idx, targets)
        B, T = idx.shape
        device = idx.device
        c, p = cfg.chunk_size, cache_chunks(cfg)
        n_chunks = -(-T // c)
        Tp = n_chunks * c
        H, D = cfg.n_head, cfg.n_embd // cfg.n_head
        L = cfg.memory_layer_index
        use_ltm = cfg.use_ltm
        offset = 0 if state is None else state.position                            # stream position of idx[:, 0]
        if offset % c or (state is not None and state.caches[0][0].shape[0] != B):
            raise ModelError(f"RevenaLM.forward: a state continues at a chunk boundary with its own batch size; got "
                             f"position {offset} (chunk_size {c}) and batch {B}: keep the partial chunk pending "
                             "(revena_lib.evaluation.session does) or start from model.new_state(batch_size)")
        caches_in = state.caches if state is not None else [None] * cfg.n_layer

        cos, sin = rope_tables(torch.arange(offset, offset + Tp, device=device), D, cfg.rope_base)   # (Tp, D)
        if torch.is_autocast_enabled(device.type):   # q and k come out of the linear layers in this dtype
            cos, sin = (t.to(torch.get_autocast_dtype(device.type)) for t in (cos, sin))
        masks = chunk_masks(n_chunks, cfg, device, offset // c)                      # (N, c, (P+1)c)

        # Layers below the memory layer (and the memory layer's STM attention) never depend on the memory,
        # so they run on all chunks at once; the same chunk masks make this identical to a chunk loop.
        x = self.drop(self.wte(idx))                                                 # (B, T, C)
        x = F.pad(x, (0, 0, 0, Tp - T))                                              # (B, Tp, C)
        caches_out = []
        for block, cache in zip(self.blocks[:L], caches_in):
            x, new_cache = block.forward_all(x, cos, sin, masks, c, p, cache)
            caches_out.append(new_cache)
        mem_block = self.blocks[L]
        y_stm, q_raw, k_raw, v_raw, new_cache = mem_block.stm_all(x, cos, sin, masks, c, p, caches_in[L])  # (B, H, Tp, D)
        caches_out.append(new_cache)

        memory = None
        soft = self.training and cfg.ltm_soft_width > 0 and not introspect   # the relaxed read trains; eval is hard
        if use_ltm:
            memory = LongTermMemory(B, H, D, cfg.ltm_capacity, device) if state is None else state.memory.copy()
            with torch.autocast(device_type=device.type, enabled=False):
                unit_q = unit(q_raw.float())                                         # (B, H, Tp, D)
                kv = torch.cat([unit(k_raw.float()), v_raw.float()], dim=-1)       # (B, H, Tp, 2D)
                if not soft:   # the brief's memory is not differentiable; the soft training read keeps keys' gradient
                    kv = kv.detach()
            gate = torch.sigmoid(self.ltm_gate_logit.float())[None, :, None, None]  # (1, H, 1, 1)
            positions = torch.arange(offset, offset + T, device=device).expand(B, T)
            routed_all = torch.zeros(B, T, dtype=torch.bool, device=device)
            hit_all = torch.zeros(B, T, dtype=torch.bool, device=device)
            if introspect:
                hit_count = torch.zeros(B, T, dtype=torch.long, device=device)
                top_pos = torch.full((B, T, TOP_HITS), -1, dtype=torch.long, device=device)
                top_cos = torch.zeros(B, T, TOP_HITS, device=device)
                occupancy = torch.zeros(B, n_chunks, dtype=torch.long, device=device)
                evictions = torch.zeros(B, n_chunks, dtype=torch.long, device=device)

        upper = self.blocks[L + 1:]
        caches = [(torch.zeros(B, H, p * c, D, device=device, dtype=v_raw.dtype),) * 2 if cache is None
                  else tuple(t.to(v_raw.dtype) for t in cache) for cache in caches_in[L + 1:]]
        surprisal = torch.zeros(B, T, device=device)        # bits; the stream's position 0 stays 0.0
        if state is not None and state.last_log_probs is not None:   # the first token was predicted last call
            surprisal[:, 0] = -state.last_log_probs.gather(-1, idx[:, :1])[:, 0] / LN2
        need_logits = introspect or state is not None or (logits and (targets is None or not self.training))
        logits = None
        nll_sum = torch.zeros((), device=device)
        n_targets = torch.zeros((), device=device)
        head_grad_w = weight_grad_buffer(x, self.lm_head.weight) if targets is not None else None   # (V, C)
        # the chunks of the per-token tensors, cut by one split each: a slice per chunk would give each chunk a
        # full-size zero gradient in the backward, and then as many full-size sums; a split's backward is one cat
        x_parts, y_parts = x.split(c, dim=1), y_stm.split(c, dim=2)
        q_parts, kv_parts = (unit_q.split(c, dim=2), kv.split(c, dim=2)) if use_ltm else (None, None)

        for ci in range(n_chunks):
            s, e = ci * c, min((ci + 1) * c, T)
            cut = (lambda t, dim: t) if e - s == c else (lambda t, dim: t.narrow(dim, 0, e - s))   # the last chunk
            y = cut(y_parts[ci], 2)                                                  # (B, H, l, D)
            if use_ltm and memory_read:
                with torch.autocast(device_type=device.type, enabled=False):
                    read, hit_any, tr = memory.read(cut(q_parts[ci], 2), cfg.ltm_similarity_threshold,
                                                    cfg.ltm_score_temperature, introspect and not soft,
                                                    cfg.ltm_soft_width if soft else 0.0)
                    y = (y.float() + gate * read).to(y.dtype)   # no hit: read is exactly 0
                hit_all[:, s:e] = hit_any
                if introspect:
                    hit_count[:, s:e], top_pos[:, s:e], top_cos[:, s:e] = tr
            xc = cut(x_parts[ci], 1) + mem_block.attn.merge(y)
            xc = xc + mem_block.mlp(mem_block.ln_2(xc))
            for j, block in enumerate(upper):
                xc, caches[j] = block.forward_chunk(xc, cos[s:e], sin[s:e], masks[ci, :e - s, :p * c + e - s], caches[j])
            # surprisal of the next tokens s+1 .. e (the last one belongs to the next chunk); the fused head
            # (output_head.py) builds no logits when training with targets
            nxt = idx[:, s + 1:e + 1]                                                # (B, l or l-1)
            logits_c, nll_c, n_c, bits = head_block(self.ln_f(xc), self.lm_head.weight,
                                                    F.pad(nxt, (0, e - s - nxt.shape[1]), value=-1),   # (B, l)
                                                    None if targets is None else targets[:, s:e], need_logits,
                                                    head_grad_w)
            if need_logits:
                if logits is None:
                    logits = torch.empty(B, T, cfg.vocab_size, device=device, dtype=logits_c.dtype)
                logits[:, s:e] = logits_c                                            # (B, l, V)
            surprisal[:, s + 1:e + 1] = bits[:, :nxt.shape[1]]
            if targets is not None:
                nll_sum = nll_sum + nll_c
                n_targets = n_targets + n_c
            if use_ltm:
                routed = write_mask(surprisal[:, s:e], positions[:, s:e], cfg)
                routed_all[:, s:e] = routed
                ev = memory.write(routed, cut(kv_parts[ci], 2), positions[:, s:e])
                if introspect:
                    occupancy[:, ci], evictions[:, ci] = memory.occupancy(), ev

        loss = with_weight_grad(nll_sum, self.lm_head.weight, head_grad_w) / n_targets if targets is not None else None
        new_state = None
        if state is not None:   # logits_c is the last chunk's: its last real row predicts the next call's first token
            last = F.log_softmax(logits_c[:, T - 1 - (n_chunks - 1) * c].float(), dim=-1).detach()   # (B, V)
            new_state = TransformerState(offset + T, [tuple(t.detach() for t in cc) for cc in caches_out + caches],
                                         last, memory.copy(detach=True) if use_ltm else None)
        stats = {}
        trace = None
        if use_ltm:
            routed_surprisal = torch.where(routed_all, surprisal, torch.zeros_like(surprisal)).sum()
            counts = torch.stack([routed_all.sum().float(), routed_surprisal, hit_all.sum().float()]).tolist()  # one sync
            stats = memory_counts(B * T, B * (T - 1 if offset == 0 else T), *counts)
            if introspect:   # an entry's token id is the token at its position (-1: from an earlier call)
                rel = top_pos - offset
                top_tok = torch.where(rel >= 0, idx.gather(1, rel.clamp(min=0).flatten(1)).view_as(top_pos), -1)
                trace = MemoryTrace(surprisal.cpu(), routed_all.cpu(), hit_count.cpu(), top_pos.cpu(),
                                    top_tok.cpu(), top_cos.cpu(), occupancy.cpu(), evictions.cpu())
        return ModelOutput(logits=logits, loss=loss, surprisal_bits=surprisal, stats=stats, trace=trace,
                           state=new_state)
