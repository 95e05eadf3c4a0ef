"""The LTM's relaxed training read (``ltm_soft_width`` > 0) as one autograd function with a hand-written backward,
and the unit vectors it compares (``unit``).

The read runs once per chunk over (B, H, chunk, occupied slots) cosines. Written as plain tensor code, autograd
makes some twenty elementwise passes over that array forward and forty backward (sigmoid, masked softmax, log1p of
the complement, their products and sums), and at the ``cpu`` preset that was most of the LTM arm's step-time
overhead. Here the same function takes about a third of the passes: the cut is folded into the matmul (z = (cos -
threshold) / width comes out of one baddbmm, empty slots as a very negative bias), the weights are the softmax of
log(sigmoid(z)) + z * width / temperature (the constant threshold / temperature cancels) computed as sigmoid(z) *
exp(...) and normalised after the product with the values, and the backward reuses the saved terms.
``soft_read_reference`` is the plain formula it must equal (tests/test_memory_read.py). Unlike it, P(any hit)
comes from expm1, exact where the plain 1 - exp(...) rounds (P below about 1e-7).

    out, hit_any = soft_read(unit_q, kv, occupied, threshold, temperature, width)   # out (B, H, L, D)
"""

from __future__ import annotations

import torch

EMPTY = -1e4      # z of an empty slot: sigmoid gives exactly 0 (so does its weight), and no inf or NaN anywhere
EXP_FLOOR = -80.0 # exp's arguments are kept above this: torch's CPU exp is 2-10x slower on lanes that underflow


class _SoftRead(torch.autograd.Function):
    """out = P * softmax_j(logsigmoid(z_j) + z_j * width / temperature) @ V, P = 1 - exp(-sum_j softplus(z_j)),
    z = (q . k_j - threshold) / width over occupied slots j; per (batch, head, query).

    Inputs: q (B, H, L, D) unit queries, kv (B, H, S, 2D) [unit key | value], bias (B, 1, 1, S): -threshold / width
    for an occupied slot, EMPTY for an empty one; width, temperature floats. Outputs out (B, H, L, D) and
    z_max (B, H, L) (the best z per query: > 0 means a hard hit, for the stats; not differentiable).
    """

    @staticmethod
    def forward(ctx, q, kv, bias, width: float, temperature: float):
        B, H, L, D = q.shape
        S = kv.shape[2]
        keys, values = kv[..., :D], kv[..., D:]                                      # (B, H, S, D)
        qs = q * (1.0 / width)                                                       # (B, H, L, D)
        z = torch.baddbmm(bias.expand(B, H, 1, S).reshape(B * H, 1, S), qs.reshape(B * H, L, D),
                          keys.reshape(B * H, S, D).transpose(1, 2)).view(B, H, L, S)   # (cos - cut) / width
        h = torch.sigmoid(z)                                                         # soft hit-ness
        z_max = z.amax(-1, keepdim=True)                                             # (B, H, L, 1)
        # the softmax of log(h) + z * width / temperature, as u = h * exp(...) shifted by the best z (whose u is
        # sigmoid(z_max) > 0 when a slot is occupied), normalised on the narrow side: r = (u @ V) / sum u. A query
        # with only empty slots has u = 0, r = 0. The floor only touches empty slots (h = 0) and entries weighing
        # under e^-80 of the best one.
        c = width / temperature
        u = torch.add(z_max * -c, z, alpha=c).clamp_(min=EXP_FLOOR).exp_().mul_(h)   # (B, H, L, S)
        total = u.sum(-1, keepdim=True).clamp_(min=1e-30)                            # (B, H, L, 1)
        r = (u @ values).div_(total)                                                 # (B, H, L, D)
        p = -torch.expm1(torch.log1p(-h).sum(-1, keepdim=True))                      # (B, H, L, 1) soft P(any hit)
        ctx.save_for_backward(qs, kv, u, total, h, p, r)
        ctx.scale = (width, temperature)
        z_max = z_max[..., 0]
        ctx.mark_non_differentiable(z_max)
        return p * r, z_max

    @staticmethod
    def backward(ctx, g, _g_zmax):
        qs, kv, u, total, h, p, r = ctx.saved_tensors
        width, temperature = ctx.scale
        D = qs.shape[-1]
        keys, values = kv[..., :D], kv[..., D:]
        dp = (g * r).sum(-1, keepdim=True)                                           # (B, H, L, 1)
        gr = g * (p / total)                                                         # d out / d r, over sum u
        d_values = u.transpose(-1, -2) @ gr                                          # (B, H, S, D)
        # softmax backward with w = u / total: d a = w * (d w - sum(w * d w)) = u * (e - sum(u * e) / total),
        # e = d w / total = gr @ V^T, and sum_j u_j e_j = gr . (u @ V) = gr . r * total: no pass over (L, S) for it
        da = gr @ values.transpose(-1, -2)                                           # (B, H, L, S)
        da.sub_((gr * r).sum(-1, keepdim=True)).mul_(u)
        # d a / d z = sigmoid(-z) + width / temperature, d p / d z = (1 - p) sigmoid(z), with h = sigmoid(z):
        # dz = da * (1 + width / temperature - h) + dp * (1 - p) * h
        dz = torch.rsub(h, 1.0 + width / temperature).mul_(da).addcmul_(h, dp * (1.0 - p))
        dq = (dz @ keys).mul_(1.0 / width) if ctx.needs_input_grad[0] else None     # (B, H, L, D)
        dkv = None
        if ctx.needs_input_grad[1]:
            dkv = torch.cat([dz.transpose(-1, -2) @ qs, d_values], dim=-1)           # (B, H, S, 2D)
        return dq, dkv, None, None, None


class _Unit(torch.autograd.Function):
    """F.normalize(x, dim=-1) with a backward of four passes instead of autograd's eight (division, clamp, norm):
    d x = (g - y * (g . y)) / |x|, or g / eps where |x| was clamped to eps."""

    @staticmethod
    def forward(ctx, x, eps: float):
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)                    # (..., 1)
        projected = (norm > eps).to(x.dtype)                                         # 0 where clamped
        norm = norm.clamp_(min=eps)
        y = x / norm
        ctx.save_for_backward(y, norm, projected)
        return y

    @staticmethod
    def backward(ctx, g):
        y, norm, projected = ctx.saved_tensors
        return (g - y * ((g * y).sum(-1, keepdim=True) * projected)) / norm, None


def unit(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """x / max(|x|, eps) along the last dimension: F.normalize's value and gradient, with a cheaper backward."""
    return _Unit.apply(x, eps)


def soft_read(unit_q: torch.Tensor, kv: torch.Tensor, occupied: torch.Tensor, threshold: float, temperature: float,
              width: float):
    """The relaxed read of LongTermMemory.read: unit_q (B, H, L, D), kv (B, H, S, 2D) [unit key | value], occupied
    (B, S) bool -> (out (B, H, L, D), hit_any (B, L) bool: some head's cosine is strictly above the cut)."""
    bias = torch.where(occupied, -threshold / width, EMPTY)[:, None, None, :].to(unit_q.dtype)   # (B, 1, 1, S)
    out, z_max = _SoftRead.apply(unit_q, kv, bias, width, temperature)
    return out, (z_max > 0).any(dim=1)


def soft_read_reference(cos, values, valid, threshold: float, temperature: float, width: float) -> torch.Tensor:
    """The relaxed read written plainly (autograd does the backward): cos (B, H, L, S), values (B, H, S, D),
    valid (B, 1, 1, S) -> (B, H, L, D). Hit-ness sigmoid((cos - threshold) / width) weights a softmax of
    cos / temperature over occupied slots; the result is scaled by the soft probability of any hit."""
    hitness = torch.sigmoid((cos - threshold) / width) * valid                     # (B, H, L, S) in [0, 1)
    scores = (cos / temperature).masked_fill(~valid, -torch.inf)
    shift = scores.detach().amax(-1, keepdim=True).clamp(min=-1e4)
    weights = hitness * torch.exp(scores - shift)
    weights = weights / weights.sum(-1, keepdim=True).clamp(min=1e-30)
    any_hit = 1.0 - torch.exp(torch.log1p(-hitness.clamp(max=1 - 1e-6)).sum(-1, keepdim=True))   # (B, H, L, 1)
    return any_hit * (weights @ values)


def soft_read_plain(unit_q: torch.Tensor, kv: torch.Tensor, occupied: torch.Tensor, threshold: float,
                    temperature: float, width: float):
    """``soft_read``'s contract with the plain formula (explicit cosines, autograd's backward): what it must equal,
    and the memory code it replaced (bench_train's with_ltm_unfused)."""
    D = unit_q.shape[-1]
    cos = unit_q @ kv[..., :D].transpose(-1, -2)                                  # (B, H, L, S)
    valid = occupied[:, None, None, :]
    out = soft_read_reference(cos, kv[..., D:], valid, threshold, temperature, width)
    return out, ((cos > threshold) & valid).any(dim=1).any(dim=-1)
