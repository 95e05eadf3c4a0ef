"""The tied output layer and its loss, fused and computed in blocks of rows: no (B, T, V) fp32 tensor in training.

At GPT-2's 50,257 tokens and a narrow model the output layer is most of the arithmetic and nearly all of the
memory: a (2, 1024) batch's fp32 logits are 411 MB, and autograd through log_softmax keeps another copy. Here the
forward runs over blocks of ``HEAD_BLOCK`` rows of B*T and keeps only h and each row's logsumexp; the backward
recomputes each block's logits (one extra matmul) and turns them in place into (softmax - onehot) * grad.

    logits, loss, surprisal_bits = head_loss(h, model.wte.weight, idx, targets)   # logits None unless need_logits
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

HEAD_BLOCK = 256    # rows of B*T per block: a (256, 50257) fp32 block is 51 MB, large enough for efficient matmuls
LN2 = math.log(2.0)


class _FusedHead(torch.autograd.Function):
    """Summed NLL, next-token surprisal and (optionally) logits of h @ weight.T, one block of rows at a time.

    Inputs are flat: h (N, C), weight (V, C), nxt (N,) the token each row's prediction is scored on for surprisal
    (-1: none), tgt (N,) the training target (< 0: ignored). ``dtype`` is the matmul dtype (the autocast dtype, if
    any); softmax statistics are always fp32 (float64 for a float64 model). Outputs: nll_sum (), bits (N,) fp32
    and not differentiable, logits (N, V) in ``dtype`` or an empty tensor when not asked for.
    """

    @staticmethod
    def forward(ctx, h, weight, nxt, tgt, dtype, need_logits):
        acc = torch.promote_types(dtype, torch.float32)
        N, V = h.shape[0], weight.shape[0]
        with torch.autocast(h.device.type, enabled=False):
            w = weight.to(dtype)                                                    # (V, C)
            lse = h.new_empty(N, dtype=acc)                                         # (N,)
            bits = h.new_zeros(N, dtype=torch.float32)                              # (N,)
            nll_sum = h.new_zeros((), dtype=acc)
            logits = h.new_empty((N, V) if need_logits else (0,), dtype=dtype)
            for s in range(0, N, HEAD_BLOCK):
                e = min(s + HEAD_BLOCK, N)
                hb = h[s:e].to(dtype)                                               # (n, C)
                z = torch.mm(hb, w.t(), out=logits[s:e]) if need_logits else hb @ w.t()   # (n, V)
                zf = z.to(acc)                                                      # a copy only under autocast
                lse[s:e] = torch.logsumexp(zf, dim=-1)
                nb, tb = nxt[s:e], tgt[s:e]
                picked = zf.gather(1, torch.stack([nb, tb], 1).clamp(min=0))        # (n, 2) logits of next, target
                nl = lse[s:e, None] - picked                                        # (n, 2) -log p in nats
                bits[s:e] = torch.where(nb >= 0, nl[:, 0], 0.0) / LN2
                nll_sum += torch.where(tb >= 0, nl[:, 1], 0.0).sum()
        ctx.save_for_backward(h, weight, tgt, lse)
        ctx.dtype = dtype
        ctx.mark_non_differentiable(bits)
        ctx.set_materialize_grads(False)    # an unused logits output must not become a (N, V) tensor of zeros
        return nll_sum, bits, logits

    @staticmethod
    def backward(ctx, g_nll, _g_bits, g_logits):
        h, weight, tgt, lse = ctx.saved_tensors
        dtype, acc = ctx.dtype, lse.dtype
        want_h, want_w = ctx.needs_input_grad[:2]
        grad_h = torch.empty_like(h) if want_h else None                            # (N, C)
        grad_w = torch.zeros(weight.shape, dtype=acc, device=h.device) if want_w else None   # (V, C) accumulator
        with torch.autocast(h.device.type, enabled=False):
            w = weight.to(dtype)
            for s in range(0, h.shape[0], HEAD_BLOCK):
                e = min(s + HEAD_BLOCK, h.shape[0])
                hb = h[s:e].to(dtype)                                               # (n, C)
                g = None
                if g_nll is not None:   # d nll_sum / d logits = (softmax - onehot) on rows with a target
                    tb = tgt[s:e]
                    scale = g_nll * (tb >= 0)                                       # (n,)
                    g = (hb @ w.t()).to(acc).sub_(lse[s:e, None]).exp_().mul_(scale[:, None])   # (n, V)
                    g.scatter_add_(1, tb.clamp(min=0)[:, None], -scale[:, None])
                if g_logits is not None:
                    g = g_logits[s:e].to(acc) if g is None else g.add_(g_logits[s:e])
                if g is None:
                    continue
                gd = g.to(dtype)
                if want_h:
                    grad_h[s:e] = gd @ w
                if want_w:
                    if dtype == acc:
                        grad_w.addmm_(gd.t(), hb)
                    else:
                        grad_w += gd.t() @ hb                                       # bf16 product, fp32 sum
        if want_w:
            grad_w = grad_w.to(weight.dtype)
        return grad_h, grad_w, None, None, None, None


def _matmul_dtype(h: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """What h @ weight.T would compute in here: the autocast dtype if autocast is on (float64 stays float64)."""
    dev = h.device.type
    if torch.is_autocast_enabled(dev) and torch.float64 not in (h.dtype, weight.dtype):
        return torch.get_autocast_dtype(dev)
    return torch.promote_types(h.dtype, weight.dtype)


def head_block(h: torch.Tensor, weight: torch.Tensor, nxt: torch.Tensor, targets: torch.Tensor | None,
               need_logits: bool = False):
    """The fused head on a block of positions: (logits (B, l, V) or None, nll_sum (), valid targets (), bits (B, l)).

    ``bits[:, t]`` is -log2 p(nxt[:, t]) from position t's prediction (0.0 where nxt < 0): the caller stores it one
    position later. Targets < 0 (or targets None) add nothing to nll_sum.
    """
    B, l, C = h.shape
    tgt = targets if targets is not None else torch.full_like(nxt, -1)
    nll_sum, bits, logits = _FusedHead.apply(h.reshape(B * l, C), weight, nxt.reshape(-1), tgt.reshape(-1),
                                             _matmul_dtype(h, weight), need_logits)
    count = (tgt >= 0).sum()
    return (logits.view(B, l, -1) if need_logits else None), nll_sum, count, bits.view(B, l)


def head_loss(h: torch.Tensor, weight: torch.Tensor, idx: torch.Tensor, targets: torch.Tensor | None,
              need_logits: bool = False):
    """Tied output layer of h (B, T, C): (logits (B, T, V) or None, mean loss in nats over targets >= 0 or None,
    surprisal bits (B, T)); the contract of reservoir.py's former ``lm_head``, logits only when ``need_logits``.

    Surprisal of token t is -log2 p(idx_t | idx_<t) from position t-1's prediction; 0.0 at position 0.
    """
    nxt = F.pad(idx[:, 1:], (0, 1), value=-1)                                       # (B, T) token after each position
    logits, nll_sum, count, bits = head_block(h, weight, nxt, targets, need_logits)
    surprisal = F.pad(bits[:, :-1], (1, 0))                                         # (B, T) stored at t+1
    loss = nll_sum / count if targets is not None else None
    return logits, loss, surprisal
