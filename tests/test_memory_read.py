"""The LTM's relaxed training read (revena_lib/models/memory_read.py) against its plain autograd formula: values and
gradients on raw tensors (occupied, empty and partly filled memories), and the whole model's training step with
the fused read against the same model with the plain read (several chunks, FIFO overflowing within the sequence,
rows of different occupancy, a continued stream)."""

import contextlib

import pytest
import torch
import torch.nn.functional as F

from revena_lib.config import ModelConfig
from revena_lib.models import ltm
from revena_lib.models.memory_read import soft_read, soft_read_plain, unit
from revena_lib.models.transformer import RevenaLM

THRESHOLD, TEMPERATURE, WIDTH = 0.8, 0.1, 0.05      # the brief's cut and temperature, the default soft width


def memory_tensors(seed=0, B=2, H=3, L=16, S=24, D=8):
    """Unit queries, [unit key | value] slots, some queries equal to stored keys (cosine 1: far above the cut)
    and some at cosine ~0.8 (on the cut, where the relaxed read's gradient is largest)."""
    g = torch.Generator().manual_seed(seed)
    keys = F.normalize(torch.randn(B, H, S, D, generator=g, dtype=torch.float64), dim=-1)
    q = F.normalize(torch.randn(B, H, L, D, generator=g, dtype=torch.float64), dim=-1)
    q[:, :, :3] = keys[:, :, 5:8]
    noise = F.normalize(torch.randn(B, H, 3, D, generator=g, dtype=torch.float64), dim=-1)
    q[:, :, 3:6] = F.normalize(keys[:, :, 10:13] + 0.75 * noise, dim=-1)
    kv = torch.cat([keys, torch.randn(B, H, S, D, generator=g, dtype=torch.float64)], dim=-1)
    return q, kv


@pytest.mark.parametrize("fill", ["full", "partial", "one_row_empty"])
def test_fused_read_equals_the_plain_formula_with_its_gradients(fill):
    q, kv = memory_tensors()
    occupied = torch.ones(kv.shape[0], kv.shape[2], dtype=torch.bool)
    if fill != "full":
        occupied[1, 9:] = False                 # row 1 holds 9 entries: slots fill in order
    if fill == "one_row_empty":
        occupied[0] = False
    kv[..., : q.shape[-1]] *= occupied[:, None, :, None]   # empty slots are zeros in the memory (never written)
    kv[..., q.shape[-1]:] *= occupied[:, None, :, None]
    results = []
    for read in (soft_read, soft_read_plain):
        qq, kk = q.clone().float().requires_grad_(), kv.clone().float().requires_grad_()
        out, hit_any = read(qq, kk, occupied, THRESHOLD, TEMPERATURE, WIDTH)
        grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
        (out * grad_out).sum().backward()
        results.append((out.detach(), hit_any, qq.grad, kk.grad))
    (out, hit_any, dq, dkv), (ref_out, ref_hit, ref_dq, ref_dkv) = results
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-6)
    assert torch.equal(hit_any, ref_hit)
    torch.testing.assert_close(dq, ref_dq, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(dkv, ref_dkv, rtol=1e-4, atol=1e-5)
    assert dq.abs().sum() > 0 and dkv.abs().sum() > 0
    if fill == "one_row_empty":   # an empty memory reads exactly zero and passes exactly zero gradient
        assert torch.all(out[0] == 0) and torch.all(dq[0] == 0) and torch.all(dkv[0] == 0)
    else:
        assert hit_any.any() and out.abs().amax() > 0.1   # hits above the cut do contribute


def test_fused_read_passes_gradcheck_in_float64():
    g = torch.Generator().manual_seed(4)
    kv = torch.cat([F.normalize(torch.randn(1, 2, 6, 4, generator=g, dtype=torch.float64), dim=-1),
                    torch.randn(1, 2, 6, 4, generator=g, dtype=torch.float64)], dim=-1)
    q = F.normalize(kv[:, :, :5, :4] + 0.4 * torch.randn(1, 2, 5, 4, generator=g, dtype=torch.float64), dim=-1)
    occupied = torch.tensor([[True] * 5 + [False]])
    fn = lambda qq, kk: soft_read(qq, kk, occupied, 0.5, 0.5, 0.3)[0]   # a wide cut keeps finite differences sane
    assert torch.autograd.gradcheck(fn, (q.requires_grad_(), kv.requires_grad_()), eps=1e-6, atol=1e-6)


def test_unit_equals_f_normalize_with_its_gradient():
    x = torch.randn(2, 3, 5, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    x[0, 0, 0] = 0.0                                      # a zero vector: clamped norm, gradient g / eps
    g = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    grads = []
    for fn in (unit, lambda t: F.normalize(t, dim=-1)):
        xx = x.clone().requires_grad_()
        y = fn(xx)
        (y * g).sum().backward()
        grads.append((y.detach(), xx.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1])
    assert torch.autograd.gradcheck(unit, (x[1:].clone().requires_grad_(),))


@contextlib.contextmanager
def plain_read():
    """RevenaLM with the plain soft read, for this block only."""
    fused = ltm.soft_read
    ltm.soft_read = soft_read_plain
    try:
        yield
    finally:
        ltm.soft_read = fused


def tiny_ltm(**overrides) -> RevenaLM:
    # writes above 3 bits (most tokens of a 512-token vocabulary at initialisation, not all: rows differ in
    # occupancy), cut at cosine 0.3 so some reads hit, capacity 12 < the 40 tokens written in a 64-token row
    settings = dict(n_layer=2, n_embd=32, n_head=2, window=16, chunk_size=8, vocab_size=512, use_ltm=True,
                    ltm_capacity=12, ltm_write_threshold_bits=8.9, ltm_similarity_threshold=0.3)
    settings.update(overrides)
    torch.manual_seed(0)
    return RevenaLM(ModelConfig(**settings)).train()


def step_results(model, idx, targets, state=None):
    model.zero_grad(set_to_none=True)
    out = model(idx, targets, state=state)
    out.loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return out, grads


@pytest.mark.parametrize("ltm_layer", [-1, 0])
def test_training_step_with_the_fused_read_equals_the_plain_read(ltm_layer):
    model = tiny_ltm(ltm_layer=ltm_layer)
    idx = torch.randint(0, 512, (3, 61), generator=torch.Generator().manual_seed(1))   # 8 chunks, the last partial
    targets = idx.roll(-1, 1)
    fused, fused_grads = step_results(model, idx, targets)
    with plain_read():
        plain, plain_grads = step_results(model, idx, targets)
    torch.testing.assert_close(fused.loss, plain.loss, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(fused.surprisal_bits, plain.surprisal_bits, rtol=1e-5, atol=1e-5)
    assert fused.stats == plain.stats
    routed = fused.stats["routed_tokens"]
    assert 12 * 3 < routed < 3 * 60 and fused.stats["hit_tokens"] > 0, "precondition: FIFO overflows, some hits"
    assert fused_grads.keys() == plain_grads.keys() and "ltm_gate_logit" in fused_grads
    for name in fused_grads:
        torch.testing.assert_close(fused_grads[name], plain_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_continued_stream_with_the_fused_read_equals_the_plain_read():
    model = tiny_ltm()
    idx = torch.randint(0, 512, (2, 72), generator=torch.Generator().manual_seed(2))
    targets = idx.roll(-1, 1)
    runs = []
    for context in (contextlib.nullcontext, plain_read):
        with context():
            with torch.no_grad():
                state = model(idx[:, :32], state=model.new_state(2)).state   # the memory holds entries already
            runs.append(step_results(model, idx[:, 32:], targets[:, 32:], state=state))
    (fused, fused_grads), (plain, plain_grads) = runs
    assert int(fused.state.memory.occupancy().min()) == 12
    torch.testing.assert_close(fused.loss, plain.loss, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(fused.surprisal_bits, plain.surprisal_bits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused.state.memory.kv, plain.state.memory.kv)
    for name in fused_grads:
        torch.testing.assert_close(fused_grads[name], plain_grads[name], rtol=1e-4, atol=1e-6, msg=name)
