"""The tied output layer and its loss, fused and computed in blocks of rows: no (B, T, V) fp32 tensor in training.

At GPT-2's 50,257 tokens and a narrow model the output layer is most of the arithmetic and nearly all of the
memory: a (2, 1024) batch's fp32 logits are 411 MB, and autograd through log_softmax keeps another copy. Here the
forward runs over blocks of ``HEAD_BLOCK`` rows of B*T; when a loss gradient will be wanted it also turns each
block's logits into (softmax - onehot) right away and multiplies that into the gradients wrt h (N, C) and the
weight (V, C), so only those are kept and the backward just scales them by the incoming gradient. (The loss is a
scalar, so its gradient is that fixed direction times one number.) This costs the same three matmuls as the
plain head; recomputing the logits in the backward instead measured 1.25x slower than the plain head on a CPU.

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
    any); softmax statistics and gradient sums are fp32 (float64 for a float64 model). ``eager``: compute the loss
    gradients now. ``grad_w``: a (V, C) buffer shared by several calls (RevenaLM's chunks) that the weight gradient
    is added to instead of being kept here; ``with_weight_grad`` then hands it to the weight.
    Outputs: nll_sum (), bits (N,) fp32 and not differentiable, logits (N, V) in ``dtype`` (empty unless asked for).
    """

    @staticmethod
    def forward(ctx, h, weight, nxt, tgt, dtype, need_logits, eager, grad_w):
        acc = torch.promote_types(dtype, torch.float32)
        N, V = h.shape[0], weight.shape[0]
        own_w = eager and grad_w is None
        with torch.autocast(h.device.type, enabled=False):
            w = weight.to(dtype)                                                    # (V, C)
            bits = h.new_zeros(N, dtype=torch.float32)                              # (N,)
            nll_sum = h.new_zeros((), dtype=acc)
            logits = h.new_empty((N, V) if need_logits else (0,), dtype=dtype)
            grad_h = torch.empty(h.shape, dtype=acc, device=h.device) if eager else None   # (N, C) per unit loss
            if own_w:
                grad_w = torch.zeros(weight.shape, dtype=acc, device=h.device)     # (V, C) per unit loss
            for s in range(0, N, HEAD_BLOCK):
                e = min(s + HEAD_BLOCK, N)
                hb = h[s:e].to(dtype)                                               # (n, C)
                z = torch.mm(hb, w.t(), out=logits[s:e]) if need_logits else hb @ w.t()   # (n, V)
                # one log_softmax kernel: faster than logsumexp's several passes, and its output becomes the gradient
                logp = F.log_softmax(z.to(acc), dim=-1)                             # (n, V)
                nb, tb = nxt[s:e], tgt[s:e]
                ok = tb >= 0
                nl = -logp.gather(1, torch.stack([nb, tb], 1).clamp(min=0))         # (n, 2) -log p in nats
                bits[s:e] = torch.where(nb >= 0, nl[:, 0], 0.0) / LN2
                nll_sum += torch.where(ok, nl[:, 1], 0.0).sum()
                if eager:   # d nll_sum / d logits = softmax - onehot, on rows with a target
                    g = logp.exp_().scatter_add_(1, tb.clamp(min=0)[:, None], -ok[:, None].to(acc))   # (n, V)
                    gd = g.to(dtype)
                    okc = ok[:, None].to(dtype)                                     # (n, 1): rows without a target
                    grad_h[s:e] = (gd @ w).mul_(okc)                                # are zeroed on the narrow side
                    if dtype == acc:
                        grad_w.addmm_(gd.t(), hb * okc)
                    else:
                        grad_w += gd.t() @ (hb * okc)                               # bf16 product, fp32 sum
        ctx.save_for_backward(h, weight, grad_h, grad_w if own_w else None)
        ctx.dtype = dtype
        ctx.mark_non_differentiable(bits)
        ctx.set_materialize_grads(False)    # an unused logits output must not become a (N, V) tensor of zeros
        return nll_sum, bits, logits

    @staticmethod
    def backward(ctx, g_nll, _g_bits, g_logits):
        h, weight, grad_h, grad_w = ctx.saved_tensors
        gh = grad_h * g_nll if g_nll is not None and grad_h is not None else None     # (N, C)
        gw = grad_w * g_nll if g_nll is not None and grad_w is not None else None     # (V, C)
        if g_logits is not None and g_logits.numel():   # the logits were used too (introspection while training);
            # (numel: torch.compile hands the empty placeholder a gradient where eager autograd passes None)
            with torch.autocast(h.device.type, enabled=False):
                gl = g_logits.to(ctx.dtype)                                         # (N, V)
                extra_h, extra_w = gl @ weight.to(ctx.dtype), gl.t() @ h.to(ctx.dtype)
            gh = extra_h if gh is None else gh + extra_h
            gw = extra_w if gw is None else gw + extra_w
        gh = gh.to(h.dtype) if gh is not None and ctx.needs_input_grad[0] else None
        gw = gw.to(weight.dtype) if gw is not None and ctx.needs_input_grad[1] else None
        return gh, gw, None, None, None, None, None, None


class _WeightGrad(torch.autograd.Function):
    """Identity on a summed loss; its backward gives ``weight`` the gradient its chunks added to ``grad_w``."""

    @staticmethod
    def forward(ctx, nll_sum, weight, grad_w):
        ctx.save_for_backward(grad_w)
        ctx.weight_dtype = weight.dtype
        return nll_sum.clone()

    @staticmethod
    def backward(ctx, g):
        (grad_w,) = ctx.saved_tensors
        return g, (grad_w * g).to(ctx.weight_dtype), None


def _matmul_dtype(h: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """What h @ weight.T would compute in here: the autocast dtype if autocast is on (float64 stays float64)."""
    dev = h.device.type
    if torch.is_autocast_enabled(dev) and torch.float64 not in (h.dtype, weight.dtype):
        return torch.get_autocast_dtype(dev)
    return torch.promote_types(h.dtype, weight.dtype)


def weight_grad_buffer(h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor | None:
    """A zeroed (V, C) buffer for ``head_block(..., grad_w=)`` when a gradient can flow, else None."""
    if not (torch.is_grad_enabled() and weight.requires_grad):
        return None
    return torch.zeros(weight.shape, dtype=torch.promote_types(_matmul_dtype(h, weight), torch.float32),
                       device=weight.device)


def with_weight_grad(nll_sum: torch.Tensor, weight: torch.Tensor, grad_w: torch.Tensor | None) -> torch.Tensor:
    """``nll_sum``, the sum of head_block's nll_sum over every chunk given ``grad_w``, now also carrying the
    weight's gradient from that buffer (the chunks gave the weight none of their own)."""
    return nll_sum if grad_w is None else _WeightGrad.apply(nll_sum, weight, grad_w)


def head_block(h: torch.Tensor, weight: torch.Tensor, nxt: torch.Tensor, targets: torch.Tensor | None,
               need_logits: bool = False, grad_w: torch.Tensor | None = None):
    """The fused head on a block of positions: (logits (B, l, V) or None, nll_sum (), valid targets (), bits (B, l)).

    ``bits[:, t]`` is -log2 p(nxt[:, t]) from position t's prediction (0.0 where nxt < 0): the caller stores it one
    position later. Targets < 0 (or targets None) add nothing to nll_sum. A sequence run chunk by chunk passes one
    ``grad_w = weight_grad_buffer(h, weight)`` to every chunk and its summed nll_sum through ``with_weight_grad``:
    the weight gradient is then one (V, C) buffer, not one per chunk.
    """
    B, l, C = h.shape
    tgt = targets if targets is not None else torch.full_like(nxt, -1)
    eager = targets is not None and torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)
    nll_sum, bits, logits = _FusedHead.apply(h.reshape(B * l, C), weight, nxt.reshape(-1), tgt.reshape(-1),
                                             _matmul_dtype(h, weight), need_logits, eager,
                                             grad_w if eager else None)
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
