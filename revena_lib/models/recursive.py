"""RecursiveLM: a Tiny Recursive Model (TRM, seed 001; Jolicoeur-Martineau 2025) for language modelling, family
``recursive``.

Tokens are read chunk by chunk (``cfg.chunk_size`` tokens). A small weight-shared core of ``trm_layers`` pre-norm
transformer blocks (width ``trm_hidden``, the transformer's Block, Attention and RoPE) refines two latents per
position, z_H and z_L (B, c, hidden), both starting from fixed init vectors in every chunk. As in TRM:

    repeat H times:  { repeat L times: z_L = core(z_L + z_H + x) };  z_H = core(z_H + z_L)
    logits = ln_f(z_H) @ wte.T                      (tied output layer, output_head.head_loss)

Only the last H cycle runs with gradient; the first H-1 run under torch.no_grad(), as in the reference. Inside the
core, attention is causal over the chunk and every position also sees the CARRY: the previous chunk's final z_H
(c positions, all in the past, so fully visible). The carry passes from chunk to chunk detached (truncated
backprop through time: each chunk's loss trains only that chunk's recursion) and from call to call through
``RecursiveCarry`` (the state protocol of ``revena_lib/models/__init__.py``). Beyond the carry's chunk, the past
reaches a token only through what z_H kept, chunk after chunk: the window field is unused by this family.
``memory_read=False`` starts every chunk with an empty carry (the evaluation ablation ``recursive_carry_off``).

Where this departs from the design brief, and why:
- The core ends with a parameter-free LayerNorm. The reference's post-norm blocks leave every pass normalised;
  pre-norm blocks return their input plus updates, so the sums z_L + z_H + x would grow ~(L+1)-fold per H cycle.
- x = LayerNorm(wte(idx)) (parameter-free): the tied embedding is small (std 0.02) next to unit-scale latents
  (the reference multiplies its embedding by sqrt(hidden) for the same reason).
- The init vectors are fixed buffers (the reference's H_init/L_init), not parameters: with H >= 2 the first
  cycle runs without gradient, so a learned init would never receive any.
- Only z_H is carried: z_L restarts from its init in every chunk, so a carried z_L would never be read.
- When trm_hidden differs from n_embd, linear maps take the embedding into the core and z_H back out.

    from revena_lib.models.recursive import RecursiveLM; from revena_lib.arms import arm_preset
    out = RecursiveLM(arm_preset("smoke", "recursive").model)(idx, targets)   # out.logits (B,T,V), out.loss
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from revena_lib.config import ModelConfig
from revena_lib.models.output_head import head_loss
from revena_lib.models.transformer import (LN2, Block, ModelError, ModelOutput, apply_rope, check_inputs,
                                           rope_tables)


@dataclass
class RecursiveCarry:
    """A stream's state between calls: how many tokens it has read, and the last chunk's final z_H (detached)."""
    batch_size: int
    position: int = 0                       # tokens seen
    z_H: torch.Tensor | None = None         # (B, c, hidden) the carry; None = empty (stream start, or after reset)
    last_log_probs: torch.Tensor | None = None   # (B, V) fp32 prediction for the next token (its surprisal)

    def reset(self) -> None:
        """Forget the stream: back to position 0 with an empty carry."""
        self.position, self.z_H, self.last_log_probs = 0, None, None

    def summary(self) -> dict:
        norm = 0.0 if self.z_H is None else float(self.z_H.float().norm(dim=-1).mean())
        return {"tokens_seen": self.position, "carry_norm_H": norm}   # norm: mean over positions of |z_H|


# ----------------------------------------------------------------------------------------------- counts

def parameter_count(cfg: ModelConfig) -> int:
    """Trainable parameters of RecursiveLM(cfg) from the config alone (tests check it equals num_parameters())."""
    h, C = cfg.trm_width, cfg.n_embd
    per_block = 2 * (2 * h) + 12 * h * h                 # 2 LayerNorms, qkv, proj, FFN in+out
    projections = 2 * h * C if h != C else 0             # embedding -> core, z_H -> ln_f
    return cfg.vocab_size * C + cfg.trm_depth * per_block + projections + 2 * C   # tied embedding, ln_f


def flops_per_token(cfg: ModelConfig) -> int:
    """FLOPs (2 per multiply-add) per token of one training step, forward and backward, as the code computes them.

    A core pass costs trm_layers x (12 h^2 for the matrices + 2 x 2c h for scores and mixing over the 2c keys,
    carry and chunk, which dense attention computes even where the mask hides them). Per chunk: H (L + 1) passes
    forward, of which only the last cycle's L + 1 are backpropagated (2x forward: gradients of inputs and weights);
    the carry's keys and values (2 h^2 per layer and position) and the output layer run once, with gradient.
    """
    h, C, c = cfg.trm_width, cfg.n_embd, cfg.chunk_size
    core = cfg.trm_depth * (12 * h * h + 2 * (2 * c) * h)
    once = cfg.trm_depth * 2 * h * h + (2 * h * C if h != C else 0) + cfg.vocab_size * C   # carry k/v, maps, head
    forward = cfg.trm_h_cycles * (cfg.trm_l_cycles + 1) * core + once
    backward = 2 * ((cfg.trm_l_cycles + 1) * core + once)
    return 2 * (forward + backward)


# ----------------------------------------------------------------------------------------------- the model

class RecursiveLM(nn.Module):
    """Chunked TRM: a weight-shared core recursed over two latents per chunk, a detached z_H carry between chunks."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.use_ltm:
            raise ModelError("ModelConfig: family 'recursive' has no long-term memory; set use_ltm=False "
                             "(the carry is this family's memory)")
        self.cfg = cfg
        h, C = cfg.trm_width, cfg.n_embd
        # the transformer's block, at the core's width; no smeared key, and qk_conv only with trm_qk_conv: the core's
        # keys are the carry's latents followed by the chunk's, so "the key before" the chunk's first position is the
        # carry's last latent (the previous token's z_H), and every key is a latent of its position
        core_cfg = dataclasses.replace(cfg, n_embd=h, smear_key=False, qk_conv=cfg.qk_conv if cfg.trm_qk_conv else 0)
        self.n_head, self.head_dim = cfg.n_head, h // cfg.n_head
        self.wte = nn.Embedding(cfg.vocab_size, C)
        self.drop = nn.Dropout(cfg.dropout)
        self.in_proj = nn.Linear(C, h, bias=False) if h != C else nn.Identity()
        self.blocks = nn.ModuleList([Block(core_cfg) for _ in range(cfg.trm_depth)])
        self.out_proj = nn.Linear(h, C, bias=False) if h != C else nn.Identity()
        self.ln_f = nn.LayerNorm(C)
        # fixed starting latents, unit scale like the core's normalised output (the reference's H_init / L_init)
        self.register_buffer("H_init", nn.init.trunc_normal_(torch.empty(h), std=1.0, a=-2.0, b=2.0))
        self.register_buffer("L_init", nn.init.trunc_normal_(torch.empty(h), std=1.0, a=-2.0, b=2.0))
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
        # GPT-2: residual projections scaled by 1/sqrt(2 * layers); the final LayerNorm resets scale every pass
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.trm_depth))

    def num_parameters(self) -> int:
        """Trainable parameters (the tied embedding counted once); the init vectors are buffers."""
        return sum(p.numel() for p in self.parameters())

    def new_state(self, batch_size: int, device=None) -> RecursiveCarry:
        """An empty stream at position 0 (the carry is created on idx's device by the first call)."""
        return RecursiveCarry(batch_size=batch_size)

    # -- the recursion

    def core(self, z, caches, cos, sin, mask):
        """One pass of the weight-shared core over a chunk: z (B, c, h) -> (B, c, h), normalised."""
        for block, cache in zip(self.blocks, caches):
            z, _ = block.forward_chunk(z, cos, sin, mask, cache)
        return F.layer_norm(z, z.shape[-1:])

    def carry_keys(self, carry, cos, sin):
        """Per block, the carry's keys (after RoPE) and values (B, H, c, D): the carry is the same in every pass of
        a chunk, so they are computed once per chunk (with gradient into each block's weights)."""
        B, c, h = carry.shape
        caches = []
        for block in self.blocks:
            k, v = F.linear(block.ln_1(carry), block.attn.c_attn.weight[h:]).split(h, dim=2)   # (B, c, h) each
            k, v = (t.view(B, c, self.n_head, self.head_dim).transpose(1, 2) for t in (k, v))
            caches.append((apply_rope(k, cos, sin), v))
        return caches

    def chunk(self, x, carry, cos, sin, mask):
        """One chunk's recursion: x (B, c, h), carry (B, c, h) or None -> the final z_H (B, c, h).

        cos/sin (2c, D) hold the carry's positions 0..c-1 and the chunk's c..2c-1 (RoPE is relative, so every
        chunk uses the same tables); mask (c, 2c) lets every position see the whole carry and its chunk causally.
        """
        B, c, h = x.shape
        if carry is None:   # no keys before the chunk: causal attention over the chunk alone (qk_conv: zeros before)
            empty = x.new_zeros(B, self.n_head, 0, self.head_dim, dtype=cos.dtype)
            caches, mask = [(empty, empty)] * len(self.blocks), mask[:, c:]
        else:
            caches = self.carry_keys(carry, cos[:c], sin[:c])

        def run(z):
            return self.core(z, caches, cos[c:], sin[c:], mask)

        def cycle(z_H, z_L):
            for _ in range(self.cfg.trm_l_cycles):
                z_L = run(z_L + z_H + x)
            return run(z_H + z_L), z_L

        z_H, z_L = self.H_init.expand(B, c, h), self.L_init.expand(B, c, h)
        with torch.no_grad():   # the first H-1 cycles only move the latents; gradient flows through the last one
            for _ in range(self.cfg.trm_h_cycles - 1):
                z_H, z_L = cycle(z_H, z_L)
        return cycle(z_H, z_L)[0]

    def forward(self, idx, targets=None, introspect=False, memory_read=True, state=None,
                logits: bool = True) -> ModelOutput:
        """memory_read=False: every chunk starts with an empty carry (an evaluation ablation); state: continue that
        stream (see RecursiveCarry) and return the state after idx in out.state."""
        cfg = self.cfg
        check_inputs("RecursiveLM", idx, targets)
        B, T = idx.shape
        c = cfg.chunk_size
        start = state if state is not None else self.new_state(B, idx.device)
        if start.position % c:
            raise ModelError(f"RecursiveLM.forward: a continuation must start at a chunk boundary, but the state is at "
                             f"position {start.position}, not a multiple of chunk_size={c}")
        if start.batch_size != B:
            raise ModelError(f"RecursiveLM.forward: the state holds {start.batch_size} streams, idx has {B} rows")
        n_chunks = -(-T // c)
        cos, sin = rope_tables(torch.arange(2 * c, device=idx.device), self.head_dim, cfg.rope_base)   # (2c, D)
        if torch.is_autocast_enabled(idx.device.type):
            cos, sin = (t.to(torch.get_autocast_dtype(idx.device.type)) for t in (cos, sin))
        ones = torch.ones(c, c, dtype=torch.bool, device=idx.device)
        mask = torch.cat([ones, ones.tril()], dim=1)                                  # (c, 2c): carry | chunk

        x = F.layer_norm(self.in_proj(self.drop(self.wte(idx))), (cfg.trm_width,))   # (B, T, h)
        x = F.pad(x, (0, 0, 0, n_chunks * c - T))                                     # padding after the last token
        carry = start.z_H if memory_read else None
        z_H = []
        for i in range(n_chunks):
            z_H.append(self.chunk(x[:, i * c:(i + 1) * c], carry, cos, sin, mask))   # (B, c, h)
            carry = z_H[-1].detach() if memory_read else None   # truncated backprop: no gradient across chunks
        h = self.ln_f(self.out_proj(torch.cat(z_H, dim=1)[:, :T]))                   # (B, T, C)
        need_logits = introspect or state is not None or (logits and (targets is None or not self.training))   # training: loss only
        logits, loss, surprisal = head_loss(h, self.wte.weight, idx, targets, need_logits)
        after = None
        if state is not None:   # a new object: the caller's state stays as it was
            if start.last_log_probs is not None:   # the first token was predicted by the previous call
                surprisal[:, 0] = -start.last_log_probs.gather(-1, idx[:, :1])[:, 0] / LN2
            after = RecursiveCarry(batch_size=B, position=start.position + T, z_H=z_H[-1].detach(),
                                   last_log_probs=F.log_softmax(logits[:, -1].float(), dim=-1).detach())
        return ModelOutput(logits=logits, loss=loss, surprisal_bits=surprisal, stats={}, state=after)
