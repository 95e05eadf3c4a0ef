"""ReservoirLM: the Reservoir-Augmented Transformer (RAT, seed 000), family ``reservoir``.

The same sliding-window attention stack as the transformer (its Attention, RoPE and chunk masks, imported from
``transformer.py``), with each block's feed-forward network replaced by a *cognitive readout*: a fixed leaky
echo-state reservoir driven by the block's (normalised) input, then a trainable linear readout of its state:

    x_t = (1 - lr) x_{t-1} + lr * tanh(W_in u_t + W x_{t-1} + b)        (reservoirpy's Reservoir, same names)
    block(h) = h' + readout(x),  h' = h + attention(h),  u = LayerNorm(h')

W (N, N), W_in (N, C) and b (N,) are drawn by reservoirpy itself (its ``Reservoir`` node and initialisers, seed
``reservoir_seed + layer``) and kept as buffers: never trained, never in the optimizer, saved in checkpoints.
Gradients still flow *through* the reservoir into the layers below (a hand-written backward of the recurrence).
The state starts at zero for every sequence (every forward call: every batch row and every evaluation document)
and runs across all of a sequence's chunks, so it carries a fading memory past the attention window.
``reservoir_keep_ffn`` keeps the FFN and adds the reservoir readout beside it (the ``reservoir_ffn`` arm).

    from revena_lib.models.reservoir import ReservoirLM; from revena_lib.arms import arm_preset
    out = ReservoirLM(arm_preset("smoke", "reservoir").model)(idx, targets)   # out.logits (B,T,V), out.loss
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from revena_lib.config import ModelConfig
from revena_lib.models.output_head import head_loss
from revena_lib.models.transformer import (LN2, MLP, Attention, Block, ModelError, ModelOutput, cache_chunks,
                                           check_inputs, chunk_masks, empty_caches, rope_tables)


@dataclass
class ReservoirState:
    """A stream's state between calls (sessions): attention K/V caches and every block's reservoir state.

    Valid at chunk boundaries (``position`` a multiple of ``chunk_size``, for the attention caches); detached; a
    forward call with this state returns a new one and leaves this one as it was.
    """
    position: int                                        # tokens seen so far
    caches: list                                         # per layer (k after RoPE, v), each (B, H, P*c, D)
    reservoir: list                                      # per layer (B, N) float32: x_t after the last token
    last_log_probs: torch.Tensor | None = None           # (B, V) fp32 prediction for the next token

    def summary(self) -> dict:
        """What is held now (batch row 0): tokens seen, tokens in the STM cache, each reservoir state's norm."""
        cached = min(self.position, self.caches[0][0].shape[2]) if self.caches else 0
        return {"tokens_seen": self.position, "stm_cached_tokens": cached,
                "reservoir_state_norm": [round(float(r[0].norm()), 4) for r in self.reservoir]}


@dataclass
class ReservoirTrace:
    """What the reservoirs did on one forward call (CPU tensors); only built when ``introspect=True``."""
    states: list[torch.Tensor]      # per layer (B, T, N) reservoir states x_t
    inputs: list[torch.Tensor]      # per layer (B, T, C) the reservoir's input u_t (after the block's LayerNorm)
    readouts: list[torch.Tensor]    # per layer (B, T, C) readout(x_t), what the reservoir adds to the residual


# ----------------------------------------------------------------------------------------------- matrices

def reservoir_matrices(cfg: ModelConfig, layer: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """W (N, N), W_in (N, C), b (N,) as float64 arrays, drawn by reservoirpy's own Reservoir node for this layer.

    reservoirpy's defaults: W ~ normal with ``rc_connectivity`` nonzeros, rescaled to spectral radius ``sr``;
    W_in ~ bernoulli +-``input_scaling`` with ``input_connectivity`` nonzeros; b ~ bernoulli +-1 times
    ``reservoir_bias_scaling`` (reservoirpy's default bias is 0, which ``reservoir_bias_scaling=0`` keeps).
    """
    from reservoirpy import mat_gen
    from reservoirpy.nodes import Reservoir
    from scipy import sparse

    node = Reservoir(cfg.reservoir_size, lr=cfg.reservoir_lr, sr=cfg.reservoir_sr,
                     input_scaling=cfg.reservoir_input_scaling, rc_connectivity=cfg.reservoir_rc_connectivity,
                     input_connectivity=cfg.reservoir_input_connectivity, bias=mat_gen.bernoulli,
                     seed=cfg.reservoir_seed + layer)
    node.initialize(np.zeros((1, cfg.n_embd)))
    dense = lambda m: np.asarray(m.toarray() if sparse.issparse(m) else m, dtype=np.float64)
    bias = dense(node.bias).reshape(-1) * cfg.reservoir_bias_scaling
    return dense(node.W), dense(node.Win), bias


# ----------------------------------------------------------------------------------------------- recurrence

class _LeakyESN(torch.autograd.Function):
    """The leaky-tanh recurrence over time with a hand-written backward (one small loop each way).

    Autograd through a Python loop would record ~5 nodes per step and replay them; here the forward keeps the
    tanh outputs and the backward runs the adjoint recurrence, G_t = g_t + (1 - lr) G_{t+1} + dz_{t+1} W,
    dz_t = lr (1 - h_t^2) G_t, with one addmm per step. W is a fixed buffer, so it gets no gradient.
    """

    @staticmethod
    def forward(ctx, pre, w, lr: float, s0):
        # pre (B, T, N) = W_in u_t + b; w (N, N); s0 (B, N)
        w_t = w.t()
        s, states, hs = s0, [], []
        for p in pre.unbind(1):
            h = torch.addmm(p, s, w_t).tanh_()          # (B, N)
            s = torch.lerp(s, h, lr)                    # (1 - lr) s + lr h
            hs.append(h)
            states.append(s)
        h_all = torch.stack(hs, 1)                      # (B, T, N)
        ctx.save_for_backward(h_all, w)
        ctx.lr = lr
        return torch.stack(states, 1)                   # (B, T, N)

    @staticmethod
    def backward(ctx, grad):
        h_all, w = ctx.saved_tensors
        lr = ctx.lr
        gain = (1.0 - h_all * h_all) * lr               # (B, T, N) d x_t / d z_t along the diagonal
        carry = torch.zeros_like(grad[:, 0])            # dL/dx_t through x_{t+1}
        g_steps, gain_steps, dz = grad.unbind(1), gain.unbind(1), []
        for t in range(len(g_steps) - 1, -1, -1):
            total = g_steps[t] + carry                  # (B, N) dL/dx_t
            d = total * gain_steps[t]                   # dL/dz_t
            carry = torch.addmm(total, d, w, beta=1.0 - lr)   # (1 - lr) total + d W
            dz.append(d)
        return torch.stack(dz[::-1], 1), None, None, carry


def leaky_esn(pre: torch.Tensor, w: torch.Tensor, lr: float, s0: torch.Tensor | None = None) -> torch.Tensor:
    """Reservoir states (B, T, N) from the driven pre-activations ``pre`` (B, T, N) = W_in u + b, recurrent
    matrix ``w`` (N, N), leak rate ``lr`` and initial state ``s0`` (B, N) (zeros when None)."""
    if s0 is None:
        s0 = pre.new_zeros(pre.shape[0], pre.shape[2])
    return _LeakyESN.apply(pre, w, float(lr), s0)


# ----------------------------------------------------------------------------------------------- modules

class EchoReservoir(nn.Module):
    """A fixed leaky echo-state reservoir of ``cfg.reservoir_size`` units over a ``cfg.n_embd``-wide input."""

    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.lr = cfg.reservoir_lr
        w, w_in, b = reservoir_matrices(cfg, layer)
        self.register_buffer("W", torch.from_numpy(w).float())          # (N, N)
        self.register_buffer("W_in", torch.from_numpy(w_in).float())    # (N, C)
        self.register_buffer("bias", torch.from_numpy(b).float())       # (N,)

    def forward(self, u: torch.Tensor, s0: torch.Tensor | None = None, memory: bool = True) -> torch.Tensor:
        """States (B, T, N) for input u (B, T, C), in the buffers' dtype (float32 unless the model was cast to
        float64) whatever the autocast: a bf16 recurrence would drift. memory=False cuts the recurrence (every
        step starts from a zero state): the reservoir without memory."""
        dtype = self.W.dtype
        with torch.autocast(device_type=u.device.type, enabled=False):
            pre = torch.addmm(self.bias, u.to(dtype).flatten(0, 1), self.W_in.t()).view(*u.shape[:2], -1)
            if not memory:
                return self.lr * torch.tanh(pre)
            return leaky_esn(pre, self.W, self.lr, None if s0 is None else s0.to(dtype))


class CognitiveReadout(nn.Module):
    """What replaces the FFN: reservoir + trainable linear readout (plus the FFN itself if ``reservoir_keep_ffn``)."""

    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.reservoir = EchoReservoir(cfg, layer)
        self.readout = nn.Linear(cfg.reservoir_size, cfg.n_embd, bias=False)
        self.ffn = MLP(cfg) if cfg.reservoir_keep_ffn else None
        self.dropout = nn.Dropout(cfg.dropout)
        self.memory = True          # set per forward call by ReservoirLM (memory_read)
        self.record = None          # a list while introspecting: (u, states, readout) are appended
        self.s0 = None              # set per forward call by ReservoirLM: the state before u (B, N), None = zeros
        self.final_at = None        # ... and where to read the state after the call's last real token
        self.final = None           # that state (B, N), read back by ReservoirLM

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        states = self.reservoir(u, s0=self.s0, memory=self.memory)      # (B, T, N) float32
        if self.final_at is not None:
            self.final = states[:, self.final_at].detach()
        out = self.dropout(self.readout(states.to(u.dtype)))            # (B, T, C)
        if self.record is not None:
            self.record.append((u.detach().float().cpu(), states.detach().cpu(), out.detach().float().cpu()))
        return out + self.ffn(u) if self.ffn is not None else out


class ReservoirBlock(Block):
    """The transformer's pre-norm block (its forward_all, same attention), with ``mlp`` a CognitiveReadout."""

    def __init__(self, cfg: ModelConfig, layer: int):
        nn.Module.__init__(self)    # not Block.__init__: it would build an FFN only to throw it away
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.attn = Attention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = CognitiveReadout(cfg, layer)


# ----------------------------------------------------------------------------------------------- the model

class ReservoirLM(nn.Module):
    """Sliding-window attention + a fixed echo-state reservoir with a trainable readout in every block."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.use_ltm:
            raise ModelError("ModelConfig: family 'reservoir' has no long-term memory; set use_ltm=False "
                             "(the reservoir is this family's memory)")
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([ReservoirBlock(cfg, i) for i in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
        # GPT-2: residual projections (attention out, readout, FFN out) scaled by 1/sqrt(2 * n_layer)
        for name, p in self.named_parameters():
            if name.endswith(("c_proj.weight", "readout.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    def num_parameters(self) -> int:
        """Trainable parameters (the tied embedding counted once); the reservoirs' buffers are not among them."""
        return sum(p.numel() for p in self.parameters())

    def num_fixed(self) -> int:
        """Fixed reservoir numbers (W, W_in, b of every block), stored as dense buffers."""
        return sum(b.numel() for b in self.buffers())

    def new_state(self, batch_size: int = 1, device="cpu") -> ReservoirState:
        """An empty stream (position 0): zero K/V caches and zero reservoir states."""
        cfg = self.cfg
        return ReservoirState(0, empty_caches(cfg, batch_size, device),
                              [torch.zeros(batch_size, cfg.reservoir_size, device=device) for _ in self.blocks])

    def forward(self, idx, targets=None, introspect=False, memory_read=True, state=None,
                logits: bool = True) -> ModelOutput:
        """memory_read=False cuts every reservoir's recurrence (states without a past): an evaluation ablation.
        ``state``: continue a stream (see ``revena_lib/models/__init__.py``); the result's ``state`` is the next one."""
        cfg = self.cfg
        check_inputs("ReservoirLM", idx, targets)
        B, T = idx.shape
        c, p = cfg.chunk_size, cache_chunks(cfg)
        n_chunks = -(-T // c)
        Tp = n_chunks * c
        offset = 0 if state is None else state.position
        if offset % c or (state is not None and state.reservoir[0].shape[0] != B):
            raise ModelError(f"ReservoirLM.forward: a state continues at a chunk boundary with its own batch size; "
                             f"got position {offset} (chunk_size {c}) and batch {B}: keep the partial chunk pending "
                             "(revena_lib.evaluation.session does) or start from model.new_state(batch_size)")
        cos, sin = rope_tables(torch.arange(offset, offset + Tp, device=idx.device), cfg.n_embd // cfg.n_head,
                               cfg.rope_base)
        if torch.is_autocast_enabled(idx.device.type):
            cos, sin = (t.to(torch.get_autocast_dtype(idx.device.type)) for t in (cos, sin))
        masks = chunk_masks(n_chunks, cfg, idx.device, offset // c)               # (N, c, (P+1)c)

        records = [] if introspect else None
        for i, block in enumerate(self.blocks):
            block.mlp.memory, block.mlp.record = memory_read, records
            block.mlp.s0 = state.reservoir[i] if state is not None and memory_read else None
            block.mlp.final_at = T - 1 if state is not None else None
        # No chunk loop needed: nothing here depends on a later chunk's output, so every block runs over the
        # whole (padded) sequence; the reservoir runs left to right through it, padding only after the last token.
        x = F.pad(self.drop(self.wte(idx)), (0, 0, 0, Tp - T))                   # (B, Tp, C)
        caches, finals = [], []
        try:
            for i, block in enumerate(self.blocks):
                x, cache = block.forward_all(x, cos, sin, masks, c, p, None if state is None else state.caches[i])
                caches.append(tuple(t.detach() for t in cache))
                finals.append(block.mlp.final)
        finally:
            for block in self.blocks:
                block.mlp.record = block.mlp.s0 = block.mlp.final_at = block.mlp.final = None
        h = self.ln_f(x[:, :T])                                                   # (B, T, C)
        # training needs only the loss: the fused head then never builds the (B, T, V) logits
        need_logits = introspect or state is not None or (logits and (targets is None or not self.training))
        logits, loss, surprisal = head_loss(h, self.wte.weight, idx, targets, need_logits)
        new_state = None
        if state is not None:
            if state.last_log_probs is not None:   # the first token was predicted by the previous call
                surprisal[:, 0] = -state.last_log_probs.gather(-1, idx[:, :1])[:, 0] / LN2
            last = F.log_softmax(logits[:, -1].float(), dim=-1).detach()          # (B, V)
            new_state = ReservoirState(offset + T, caches, finals, last)
        trace = None
        if introspect:
            u, states, out = zip(*records)
            trace = ReservoirTrace(states=[s[:, :T] for s in states], inputs=[a[:, :T] for a in u],
                                   readouts=[o[:, :T] for o in out])
        return ModelOutput(logits=logits, loss=loss, surprisal_bits=surprisal, stats={}, trace=trace, state=new_state)
