"""RevenaLM: the one transformer behind both arms (``GPT-70M`` baseline and ``RevenaHybridTiny-70M`` with LTM).

Short-term memory (STM): causal attention over a sliding window of ``cfg.window`` tokens (token t sees
t-window+1 .. t), with RoPE so the window can slide over sequences of any length. Sequences are processed in
chunks of ``cfg.chunk_size`` tokens; each chunk's queries attend to the chunk itself and to a per-layer K/V
cache of the preceding ``window`` tokens, under a banded mask. Because window = 2 x chunk_size, a chunk's
first token reaches back 127 tokens into the chunk before last, so the cache holds the previous two chunks;
the banded mask makes the result exactly a sliding window (tests/test_model.py checks it against a naive
full-sequence reference).

Long-term memory (LTM, only when ``cfg.use_ltm``): a surprisal-routed FIFO memory owned by attention layer
``cfg.memory_layer_index``, read by that layer's queries and written after each chunk (``models/ltm.py``). Both arms
run the same chunked code path; only the memory differs, and its gate (n_head scalars) is the LTM arm's only extra
parameter. ``RevenaLM.forward`` reads as the model's steps: the layers below the memory on all chunks at once, then
chunk by chunk the memory read, the rest of the memory layer and the layers above it, the output head, the write.

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
from revena_lib.models.ltm import GATE_INIT_LOGIT, LongTermMemory, MemoryPass, MemoryTrace, chunk_part
from revena_lib.models.output_head import head_block, weight_grad_buffer, with_weight_grad

LN2 = math.log(2.0)


class ModelError(ValueError):
    pass


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


def shifted(x: torch.Tensor, lag: int) -> torch.Tensor:
    """x (..., L, D) moved ``lag`` positions later along L: out[..., t, :] = x[..., t - lag, :], zeros before."""
    return x if lag == 0 else F.pad(x, (0, 0, lag, 0))[..., :x.shape[-2], :]


def empty_caches(cfg: ModelConfig, batch_size: int, device) -> list:
    """Zero K/V caches (k after RoPE, v) of every layer, each (B, H, P*c, D): the start of a stream."""
    H, D, keep = cfg.n_head, cfg.n_embd // cfg.n_head, cache_chunks(cfg) * cfg.chunk_size
    return [(torch.zeros(batch_size, H, keep, D, device=device),) * 2 for _ in range(cfg.n_layer)]


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
        # the smeared key's mix logit per head (ModelConfig.smear_key); 0 starts at an even mix of k_t and k_(t-1)
        self.smear_logit = nn.Parameter(torch.zeros(cfg.n_head)) if cfg.smear_key else None
        # ModelConfig.qk_conv = n: per-channel weights of k_t .. k_(t-n) in a key, and of k_(t-1) .. k_(t-n+1) added
        # to a query; they start as the smeared key's even mix of k_t and k_(t-1), and as plain queries
        self.key_mix = self.query_mix = None
        if cfg.qk_conv:
            n, shape = cfg.qk_conv, (cfg.n_head, 1, self.head_dim)
            self.key_mix = nn.Parameter(torch.zeros(n + 1, *shape))               # (n+1, H, 1, D)
            with torch.no_grad():
                self.key_mix[:2] = 0.5
            self.query_mix = nn.Parameter(torch.zeros(n - 1, *shape)) if n > 1 else None   # (n-1, H, 1, D)
        # ModelConfig.attn_sink: one learned logit per head for a key with a zero value that every query sees
        self.sink_logit = nn.Parameter(torch.zeros(cfg.n_head)) if cfg.attn_sink else None

    def project(self, x: torch.Tensor):
        """q, k, v of shape (B, H, T, D), before RoPE."""
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        shape = (B, T, self.n_head, self.head_dim)
        return (q.view(shape).transpose(1, 2), k.view(shape).transpose(1, 2), v.view(shape).transpose(1, 2))

    def smear(self, k: torch.Tensor) -> torch.Tensor:
        """The keys attention compares queries with: k (..., H, L, D) raw keys (after RoPE) of consecutive
        positions along L -> keys of the same shape. Identity unless an aid to copying is on:

        - ``smear_key`` (Olsson et al. 2022, "In-context learning and induction heads", the smeared-key
          architecture): a k_t + (1 - a) k_(t-1), a per head;
        - ``qk_conv`` = n: sum over l = 0..n of w_l * k_(t-l), w_l per head and channel (a short causal convolution;
          Fu et al. 2023, H3's shift SSM on keys).

        Positions before the first of L count as zeros. Callers pass one chunk's whole key block (the P cached chunks
        and the chunk), so a key visible to a query has its predecessors, but for the block's oldest visible key,
        which has fewer than qk_conv; the block is the same in every way of running, so they agree exactly."""
        if self.smear_logit is not None:
            a = torch.sigmoid(self.smear_logit).to(k.dtype).view(-1, 1, 1)      # (H, 1, 1)
            return a * k + (1 - a) * shifted(k, 1)
        if self.key_mix is not None:
            w = self.key_mix.to(k.dtype)                                        # (n+1, H, 1, D)
            return sum(w[lag] * shifted(k, lag) for lag in range(w.shape[0]))
        return k

    def mix_queries(self, q: torch.Tensor, k_before: torch.Tensor) -> torch.Tensor:
        """Queries with ``qk_conv``: q_t + sum over l = 1..n-1 of u_l * k_(t-l), so a query holds the tokens before
        its own and matches a key's prefix of n tokens. q (..., H, L, D) after RoPE; ``k_before`` (..., H, M, D) the
        raw keys (after RoPE) of the M positions ending with the queries' (its last L are theirs); positions before
        its first count as zeros, as in ``smear``. Both rotate with their positions, so q_t . k_(s-1) and
        k_(t-1) . k_(s-2) are read at the same offset. Identity without ``qk_conv`` >= 2."""
        if self.query_mix is None:
            return q
        u = self.query_mix.to(q.dtype)                                          # (n-1, H, 1, D)
        L, short = q.shape[-2], q.shape[-2] + u.shape[0] - k_before.shape[-2]
        if short > 0:   # fewer keys before the queries than the mix reads (a chunk with no cache): zeros
            k_before = F.pad(k_before, (0, 0, short, 0))
        M = k_before.shape[-2]
        return q + sum(u[lag - 1] * k_before[..., M - L - lag:M - lag, :] for lag in range(1, u.shape[0] + 1))

    def attend(self, q, k, v, mask, heads_folded: bool = False):
        """SDPA with a boolean mask; q (..., Lq, D), k/v (..., Lk, D), mask broadcastable to (..., Lq, Lk). Heads
        sit at dim 1 of q, or, with ``heads_folded``, inside dim 0 as batch * heads (stm_all's layout).

        With ``attn_sink`` every query also sees one extra key whose score is the head's learned logit and whose value
        is zero (gpt-oss's attention sinks; Xiao et al. 2023, "Efficient Streaming Language Models with Attention
        Sinks"): a head can attend to nothing without a real token to park its weight on, which in rows longer than
        the window is gone once the row's first token leaves it."""
        v = v.to(q.dtype)
        k = k.to(q.dtype)
        if self.sink_logit is not None:
            zero = k.new_zeros(*k.shape[:-2], 1, k.shape[-1])
            k, v = torch.cat([zero, k], dim=-2), torch.cat([zero.to(v.dtype), v], dim=-2)    # (..., 1 + Lk, D)
            H = self.n_head
            sink = self.sink_logit.to(q.dtype)
            sink = (sink.repeat(q.shape[0] // H).view(-1, *([1] * (q.dim() - 1))) if heads_folded    # (BH, 1.., 1)
                    else sink.view(-1, *([1] * (q.dim() - 2))))                                 # (H, 1.., 1)
            lead = q.shape[:-1]
            bias = torch.zeros((), dtype=q.dtype, device=q.device).expand(*lead, mask.shape[-1])
            bias = bias.masked_fill(~mask, float("-inf"))                          # (..., Lq, Lk)
            mask = torch.cat([sink.expand(*lead, 1), bias], dim=-1)                 # (..., Lq, 1 + Lk)
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
        if cache is None:   # zeros before the sequence start; the mask hides them
            cache = (kr.new_zeros(B, H, p * chunk, D), v.new_zeros(B, H, p * chunk, D))
        k_all = torch.cat([cache[0].to(kr.dtype), kr], dim=2)           # (B, H, P*c + Tp, D)
        v_all = torch.cat([cache[1].to(v.dtype), v], dim=2)
        qc = self.attn.mix_queries(qr, k_all).reshape(B * H, n, chunk, D)
        # keys of chunk i: chunks i-P .. i, as forward_chunk sees them (smear mixes within that block)
        kp, vp = k_all.reshape(B, H, p + n, chunk, D), v_all.reshape(B * H, p + n, chunk, D)
        keys = torch.cat([kp[:, :, i:i + n] for i in range(p + 1)], dim=3)        # (B, H, N, (P+1)c, D)
        keys = self.attn.smear(keys.transpose(1, 2)).transpose(1, 2)              # smear wants (..., H, L, D)
        keys = keys.reshape(B * H, n, (p + 1) * chunk, D)                        # (BH, N, (P+1)c, D)
        vals = torch.cat([vp[:, i:i + n] for i in range(p + 1)], dim=2)
        y = self.attn.attend(qc, keys, vals, masks, heads_folded=True)                   # (BH, N, c, D)
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
        qr = self.attn.mix_queries(qr, keys)
        y = self.attn.attend(qr, self.attn.smear(keys), vals, mask)      # (B, H, L, D); the cache keeps raw keys
        x = x + self.attn.merge(y)
        x = x + self.mlp(self.ln_2(x))
        keep = cache[0].shape[2]
        return x, (keys[:, :, keys.shape[2] - keep:], vals[:, :, vals.shape[2] - keep:])


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
        """idx (B, T) token ids -> ModelOutput: logits (B, T, V) unless ``logits=False`` and nothing needs them, the
        mean cross-entropy against ``targets`` (B, T), surprisal bits (B, T), the memory's counts, and with
        ``introspect`` its trace. ``state`` continues a stream at a chunk boundary (sessions); ``memory_read=False``
        keeps the writes and turns the reads off."""
        cfg = self.cfg
        check_inputs("RevenaLM", idx, targets)
        B, T = idx.shape
        offset = self._stream_position(idx, state)                                  # stream position of idx[:, 0]
        c, n_chunks = cfg.chunk_size, -(-T // cfg.chunk_size)
        caches_in = state.caches if state is not None else [None] * cfg.n_layer
        cos, sin, masks = self._rope_and_masks(idx.device, offset, n_chunks)         # (Tp, D), (N, c, (P+1)c)

        # 1. Below the memory: the lower layers and the memory layer's STM attention, all chunks at once
        x, (y_stm, q, k, v), caches_low = self._below_memory(idx, n_chunks * c, cos, sin, masks, caches_in)
        # 2. This call's LTM: an empty memory, or the one the state carries
        soft = self.training and cfg.ltm_soft_width > 0 and not introspect   # the relaxed read trains; eval is hard
        ltm = MemoryPass(cfg, q, k, v, self.ltm_gate_logit, T, offset, state.memory if state is not None else None,
                         introspect, soft) if cfg.use_ltm else None
        # 3. Chunk by chunk: read the memory, finish the memory layer, the layers above, the head, write the memory
        caches_up = self._upper_caches(caches_in, B, v.dtype, idx.device)
        need_logits = introspect or state is not None or (logits and (targets is None or not self.training))
        out = self._new_outputs(idx, x, targets, state, need_logits)
        # the chunks of the per-token tensors, cut by one split each: a slice per chunk would give each chunk a
        # full-size zero gradient in the backward, and then as many full-size sums; a split's backward is one cat
        x_parts, y_parts = x.split(c, dim=1), y_stm.split(c, dim=2)
        for ci in range(n_chunks):
            s, e = ci * c, min((ci + 1) * c, T)
            y = chunk_part(y_parts[ci], 2, e - s)                                   # (B, H, l, D)
            if ltm is not None and memory_read:
                y = ltm.read(ci, y, s, e)
            xc = self._above_memory(chunk_part(x_parts[ci], 1, e - s), y, ci, s, e, cos, sin, masks, caches_up)
            self._head(xc, idx, targets, s, e, out)
            if ltm is not None:
                ltm.write(ci, s, e, out.surprisal)

        # 4. The loss, the stream's state after this call, what the memory did
        loss = (with_weight_grad(out.nll_sum, self.lm_head.weight, out.grad_w) / out.n_targets
                if targets is not None else None)
        new_state = self._state_after(offset, T, out, caches_low + caches_up, ltm) if state is not None else None
        stats, trace = ltm.stats_and_trace(out.surprisal, idx, offset) if ltm is not None else ({}, None)
        return ModelOutput(logits=out.logits, loss=loss, surprisal_bits=out.surprisal, stats=stats, trace=trace,
                           state=new_state)

    # -- the steps of forward

    def _stream_position(self, idx: torch.Tensor, state) -> int:
        """Where idx starts in its stream: 0, or the state's position (a chunk boundary, with the state's batch size)."""
        c = self.cfg.chunk_size
        offset = 0 if state is None else state.position
        if offset % c or (state is not None and state.caches[0][0].shape[0] != idx.shape[0]):
            raise ModelError(f"RevenaLM.forward: a state continues at a chunk boundary with its own batch size; got "
                             f"position {offset} (chunk_size {c}) and batch {idx.shape[0]}: keep the partial chunk "
                             "pending (revena_lib.evaluation.session does) or start from model.new_state(batch_size)")
        return offset

    def _rope_and_masks(self, device, offset: int, n_chunks: int):
        """RoPE tables (Tp, D) of the call's positions, in the autocast dtype when there is one (q and k come out of
        the linear layers in it), and the banded chunk masks (N, c, (P+1)c)."""
        cfg = self.cfg
        Tp, D = n_chunks * cfg.chunk_size, cfg.n_embd // cfg.n_head
        cos, sin = rope_tables(torch.arange(offset, offset + Tp, device=device), D, cfg.rope_base)   # (Tp, D)
        if torch.is_autocast_enabled(device.type):
            cos, sin = (t.to(torch.get_autocast_dtype(device.type)) for t in (cos, sin))
        return cos, sin, chunk_masks(n_chunks, cfg, device, offset // cfg.chunk_size)

    def _below_memory(self, idx, Tp: int, cos, sin, masks, caches_in):
        """The embedding, the layers below the memory layer and the memory layer's STM attention, on all chunks at
        once: none of them depends on the memory, and the chunk masks make this identical to a chunk loop.
        Returns the residual x (B, Tp, C), the memory layer's (head outputs, q, k, v), each (B, H, Tp, D) with q and
        k before RoPE, and those layers' new K/V caches."""
        cfg, L = self.cfg, self.cfg.memory_layer_index
        c, p = cfg.chunk_size, cache_chunks(cfg)
        x = self.drop(self.wte(idx))                                                 # (B, T, C)
        x = F.pad(x, (0, 0, 0, Tp - idx.shape[1]))                                   # (B, Tp, C)
        caches_out = []
        for block, cache in zip(self.blocks[:L], caches_in):
            x, new_cache = block.forward_all(x, cos, sin, masks, c, p, cache)
            caches_out.append(new_cache)
        y_stm, q_raw, k_raw, v_raw, new_cache = self.blocks[L].stm_all(x, cos, sin, masks, c, p, caches_in[L])
        caches_out.append(new_cache)
        return x, (y_stm, q_raw, k_raw, v_raw), caches_out

    def _upper_caches(self, caches_in, batch_size: int, dtype, device) -> list:
        """K/V caches (k after RoPE, v) of the layers above the memory layer: the state's, or zeros."""
        cfg = self.cfg
        H, D, keep = cfg.n_head, cfg.n_embd // cfg.n_head, cache_chunks(cfg) * cfg.chunk_size
        return [(torch.zeros(batch_size, H, keep, D, device=device, dtype=dtype),) * 2 if cache is None
                else tuple(t.to(dtype) for t in cache) for cache in caches_in[cfg.memory_layer_index + 1:]]

    def _new_outputs(self, idx, x, targets, state, need_logits: bool) -> "_ChunkOutputs":
        """Empty per-call outputs; the first token's surprisal comes from the state's last prediction, if any."""
        B, T = idx.shape
        surprisal = torch.zeros(B, T, device=idx.device)        # bits; the stream's position 0 stays 0.0
        if state is not None and state.last_log_probs is not None:   # the first token was predicted last call
            surprisal[:, 0] = -state.last_log_probs.gather(-1, idx[:, :1])[:, 0] / LN2
        return _ChunkOutputs(surprisal, need_logits, torch.zeros((), device=idx.device),
                             torch.zeros((), device=idx.device),
                             weight_grad_buffer(x, self.lm_head.weight) if targets is not None else None)   # (V, C)

    def _above_memory(self, x, y, ci: int, s: int, e: int, cos, sin, masks, caches: list) -> torch.Tensor:
        """One chunk through the rest of the memory layer (from its head outputs y (B, H, l, D) and the residual x
        (B, l, C)) and the layers above it, each against its K/V cache (updated in ``caches``). Returns (B, l, C)."""
        cfg = self.cfg
        c, p, L = cfg.chunk_size, cache_chunks(cfg), cfg.memory_layer_index
        mem_block = self.blocks[L]
        xc = x + mem_block.attn.merge(y)
        xc = xc + mem_block.mlp(mem_block.ln_2(xc))
        for j, block in enumerate(self.blocks[L + 1:]):
            xc, caches[j] = block.forward_chunk(xc, cos[s:e], sin[s:e], masks[ci, :e - s, :p * c + e - s], caches[j])
        return xc

    def _head(self, xc, idx, targets, s: int, e: int, out: "_ChunkOutputs") -> None:
        """The output head on one chunk: its logits (when wanted), the surprisal of the next tokens s+1 .. e (the last
        one belongs to the next chunk) and the NLL of its targets. The fused head (output_head.py) builds no logits
        when training with targets."""
        nxt = idx[:, s + 1:e + 1]                                                    # (B, l or l-1)
        logits_c, nll_c, n_c, bits = head_block(self.ln_f(xc), self.lm_head.weight,
                                                F.pad(nxt, (0, e - s - nxt.shape[1]), value=-1),   # (B, l)
                                                None if targets is None else targets[:, s:e], out.need_logits,
                                                out.grad_w)
        if out.need_logits:
            if out.logits is None:
                out.logits = torch.empty(*idx.shape, self.cfg.vocab_size, device=idx.device, dtype=logits_c.dtype)
            out.logits[:, s:e] = logits_c                                            # (B, l, V)
        out.last_logits = logits_c
        out.surprisal[:, s + 1:e + 1] = bits[:, :nxt.shape[1]]
        if targets is not None:
            out.nll_sum = out.nll_sum + nll_c
            out.n_targets = out.n_targets + n_c

    def _state_after(self, offset: int, T: int, out: "_ChunkOutputs", caches: list, ltm) -> TransformerState:
        """The stream's state after this call: detached caches, the next token's prediction, a copy of the memory."""
        c = self.cfg.chunk_size
        # the last chunk's logits: its last real row predicts the next call's first token
        last = F.log_softmax(out.last_logits[:, T - 1 - (-(-T // c) - 1) * c].float(), dim=-1).detach()   # (B, V)
        return TransformerState(offset + T, [tuple(t.detach() for t in cc) for cc in caches], last,
                                ltm.memory.copy(detach=True) if ltm is not None else None)


@dataclass
class _ChunkOutputs:
    """What the output head has produced so far in one forward call, filled chunk by chunk (``RevenaLM._head``)."""
    surprisal: torch.Tensor                   # (B, T) bits of each token given everything before it
    need_logits: bool
    nll_sum: torch.Tensor                     # () summed NLL (nats) of the targets so far
    n_targets: torch.Tensor                   # () how many targets that was
    grad_w: torch.Tensor | None               # the head's weight-gradient buffer (V, C) shared by the chunks, or None
    logits: torch.Tensor | None = None        # (B, T, V) when need_logits, allocated at the first chunk
    last_logits: torch.Tensor | None = None   # the latest chunk's logits (B, l, V) (or empty): a state's next prediction
