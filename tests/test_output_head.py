"""The fused output layer (revena_lib/models/output_head.py): loss, surprisal, logits and gradients equal the plain
full-logits computation (fp32, float64, bf16 autocast, ignored targets, ragged last block), the models' losses and
gradients are unchanged by it, and training never keeps a (B, T, V) tensor for the backward."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from revena_lib.arms import arm_preset
from revena_lib.config import ModelConfig
from revena_lib.models import reservoir, transformer
from revena_lib.models.output_head import HEAD_BLOCK, head_block, head_loss, weight_grad_buffer, with_weight_grad
from revena_lib.models.reservoir import ReservoirLM
from revena_lib.models.transformer import RevenaLM

V = 97


def reference(h, weight, idx, targets):
    """The plain head: full logits, log_softmax in fp32 (or float64), the previous lm_head's contract."""
    logits = h @ weight.t()                                                        # (B, T, V)
    logp = F.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
    surprisal = torch.zeros(h.shape[:2])
    surprisal[:, 1:] = -logp.detach()[:, :-1].gather(-1, idx[:, 1:, None])[..., 0] / math.log(2.0)
    loss = None
    if targets is not None:
        loss = F.nll_loss(logp.flatten(0, 1), targets.flatten(), ignore_index=-1)
    return logits, loss, surprisal


def reference_block(h, weight, nxt, targets, need_logits=False, grad_w=None):
    """head_block's contract from the full logits: what the transformer's chunk loop computed before."""
    logits = h @ weight.t()                                                        # (B, l, V)
    logp = F.log_softmax(logits.float(), dim=-1)
    bits = -logp.detach().gather(-1, nxt.clamp(min=0)[..., None])[..., 0] / math.log(2.0) * (nxt >= 0)
    nll_sum, count = torch.zeros(()), torch.zeros((), dtype=torch.long)
    if targets is not None:
        nll = -logp.gather(-1, targets.clamp(min=0)[..., None])[..., 0]
        nll_sum, count = torch.where(targets >= 0, nll, 0.0).sum(), (targets >= 0).sum()
    return logits, nll_sum, count, bits


def problem(B=3, T=HEAD_BLOCK + 45, C=16, dtype=torch.float32, seed=0):
    """h, weight, idx and targets with T not a multiple of the block, and a run of ignored targets."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(B, T, C, generator=g, dtype=dtype).requires_grad_()
    weight = torch.randn(V, C, generator=g, dtype=dtype).requires_grad_()
    idx = torch.randint(0, V, (B, T), generator=g)
    targets = idx.roll(-1, 1)
    targets[:, -1] = -1
    targets[1, 5:40] = -1
    return h, weight, idx, targets


def grads(loss, *tensors):
    return torch.autograd.grad(loss, tensors)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
@pytest.mark.parametrize("need_logits", [False, True])
def test_loss_surprisal_and_gradients_match_the_plain_head(dtype, tol, need_logits):
    h, weight, idx, targets = problem(dtype=dtype)
    logits, loss, surprisal = head_loss(h, weight, idx, targets, need_logits=need_logits)
    want_logits, want_loss, want_surprisal = reference(h, weight, idx, targets)
    torch.testing.assert_close(loss, want_loss, atol=tol, rtol=tol)
    assert surprisal.dtype == torch.float32 and not surprisal.requires_grad and torch.all(surprisal[:, 0] == 0)
    torch.testing.assert_close(surprisal, want_surprisal, atol=1e-5, rtol=1e-5)
    for got, want in zip(grads(loss, h, weight), grads(want_loss, h, weight)):
        torch.testing.assert_close(got, want, atol=tol, rtol=tol)
    if need_logits:
        assert logits.dtype == dtype and torch.equal(logits, want_logits)
    else:
        assert logits is None


def test_chunks_sharing_one_weight_gradient_buffer_equal_one_call():
    """RevenaLM's way: chunk by chunk, the weight's gradient summed in one (V, C) buffer, attached at the end."""
    h, weight, idx, targets = problem(B=2, T=150)
    _, want_loss, want_surprisal = reference(h, weight, idx, targets)
    nxt = F.pad(idx[:, 1:], (0, 1), value=-1)
    grad_w = weight_grad_buffer(h, weight)
    nll_sum, count, bits = 0.0, 0, []
    for s, e in ((0, 64), (64, 128), (128, 150)):
        _, nll_c, n_c, bits_c = head_block(h[:, s:e], weight, nxt[:, s:e], targets[:, s:e], grad_w=grad_w)
        nll_sum, count = nll_sum + nll_c, count + n_c
        bits.append(bits_c)
    loss = with_weight_grad(nll_sum, weight, grad_w) / count
    torch.testing.assert_close(loss, want_loss)
    torch.testing.assert_close(F.pad(torch.cat(bits, 1)[:, :-1], (1, 0)), want_surprisal)
    for got, want in zip(grads(loss, h, weight), grads(want_loss, h, weight)):
        torch.testing.assert_close(got, want)


def test_without_targets_the_loss_is_none_and_logits_carry_their_gradient():
    h, weight, idx, _ = problem(B=2, T=70)
    logits, loss, surprisal = head_loss(h, weight, idx, None, need_logits=True)
    want_logits, _, want_surprisal = reference(h, weight, idx, None)
    assert loss is None
    torch.testing.assert_close(surprisal, want_surprisal, atol=1e-5, rtol=1e-5)
    probe = torch.randn_like(logits)                                              # any function of the logits
    for got, want in zip(grads((logits * probe).sum(), h, weight), grads((want_logits * probe).sum(), h, weight)):
        torch.testing.assert_close(got, want)


def test_loss_and_logits_gradients_add_up():
    """Introspecting while training: a loss on both outputs gets both gradients."""
    h, weight, idx, targets = problem(B=2, T=300)
    logits, loss, _ = head_loss(h, weight, idx, targets, need_logits=True)
    want_logits, want_loss, _ = reference(h, weight, idx, targets)
    got = grads(loss + logits.square().mean(), h, weight)
    want = grads(want_loss + want_logits.square().mean(), h, weight)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_bf16_autocast_matches_the_plain_head_under_autocast():
    h, weight, idx, targets = problem(B=2, T=300)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, loss, surprisal = head_loss(h, weight, idx, targets, need_logits=True)
        want_logits, want_loss, want_surprisal = reference(h, weight, idx, targets)
    assert logits.dtype == torch.bfloat16 and torch.equal(logits, want_logits)
    torch.testing.assert_close(loss, want_loss, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(surprisal, want_surprisal, atol=1e-4, rtol=1e-4)
    gh, gw = grads(loss, h, weight)
    assert gh.dtype == gw.dtype == torch.float32
    for got, want in zip((gh, gw), grads(want_loss, h, weight)):
        torch.testing.assert_close(got, want, atol=2e-3, rtol=2e-2)     # bf16 products on both sides


# ------------------------------------------------------------------------------- memory: no (B, T, V) kept

def largest_saved(fn) -> int:
    """The most elements of any tensor autograd keeps for the backward while ``fn()`` runs."""
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return max(sizes)


def test_the_fused_forward_keeps_no_logits_for_the_backward():
    h, weight, idx, targets = problem(B=2, T=600, C=16)
    full = 2 * 600 * V
    assert largest_saved(lambda: reference(h, weight, idx, targets)) >= full       # the check sees logits
    assert largest_saved(lambda: head_loss(h, weight, idx, targets)) == h.numel()   # h, its gradient, the weight, ...


@pytest.mark.parametrize("family", ["transformer", "reservoir"])
def test_training_a_model_keeps_no_logits_and_returns_none(family):
    vocab = 4096                                     # logits then outsize anything else the model keeps
    model = smoke_model(family, vocab_size=vocab).train()
    idx = torch.randint(0, vocab, (2, 96), generator=torch.Generator().manual_seed(3))
    out = model(idx, idx.roll(-1, 1))
    assert out.logits is None and out.loss is not None
    assert largest_saved(lambda: model(idx, idx.roll(-1, 1))) < idx.numel() * vocab
    model.eval()
    assert model(idx, idx.roll(-1, 1)).logits.shape == (2, 96, vocab)          # evaluation keeps its logits
    model.train()
    assert model(idx).logits.shape == (2, 96, vocab) and model(idx, introspect=True).logits is not None


@pytest.mark.parametrize("family", ["transformer", "transformer_ltm", "reservoir", "recursive"])
def test_evaluation_without_logits_gives_the_same_surprisal(family):
    """logits=False (what evaluate.document_nll asks for): no (B, T, V) logits, the same surprisal and loss."""
    from revena_lib.models.recursive import RecursiveLM

    if family == "recursive":
        torch.manual_seed(0)
        model = RecursiveLM(dataclasses.replace(arm_preset("smoke", "recursive").model, vocab_size=512)).eval()
    else:
        model = smoke_model(family.split("_")[0], **({"use_ltm": True} if family.endswith("ltm") else {})).eval()
    idx = torch.randint(0, 512, (2, 77), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        full, bare = model(idx, idx.roll(-1, 1)), model(idx, idx.roll(-1, 1), logits=False)
    assert full.logits is not None and bare.logits is None
    torch.testing.assert_close(bare.surprisal_bits, full.surprisal_bits, rtol=0, atol=1e-5)
    torch.testing.assert_close(bare.loss, full.loss, rtol=0, atol=1e-6)
    assert model(idx, logits=False, introspect=True).logits is not None      # introspection always has them


# ------------------------------------------------------------------------------- the models are unchanged

def smoke_model(family, **overrides):
    torch.manual_seed(0)
    settings = {"vocab_size": 512, **overrides}
    if family == "reservoir":
        return ReservoirLM(dataclasses.replace(arm_preset("smoke", "reservoir").model, **settings))
    return RevenaLM(ModelConfig(n_layer=2, n_embd=32, n_head=2, window=16, chunk_size=8, **settings))


@pytest.mark.parametrize("family,overrides", [("transformer", {}), ("transformer", {"use_ltm": True}),
                                              ("reservoir", {})])
def test_model_loss_and_gradients_equal_the_plain_head(family, overrides, monkeypatch):
    idx = torch.randint(0, 512, (2, 77), generator=torch.Generator().manual_seed(2))
    targets = idx.roll(-1, 1)
    targets[:, -1] = -1

    def run():
        model = smoke_model(family, **overrides).train()
        out = model(idx, targets)
        out.loss.backward()
        return out, {name: p.grad for name, p in model.named_parameters() if p.grad is not None}

    fused, fused_grads = run()
    monkeypatch.setattr(transformer, "head_block", reference_block)
    monkeypatch.setattr(transformer, "with_weight_grad", lambda nll_sum, weight, grad_w: nll_sum)
    monkeypatch.setattr(reservoir, "head_loss", lambda h, w, idx, t, need_logits=False: reference(h, w, idx, t))
    plain, plain_grads = run()
    torch.testing.assert_close(fused.loss, plain.loss, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(fused.surprisal_bits, plain.surprisal_bits, atol=1e-5, rtol=1e-5)
    assert fused.stats == plain.stats
    assert fused_grads.keys() == plain_grads.keys() and "wte.weight" in fused_grads
    for name in fused_grads:
        torch.testing.assert_close(fused_grads[name], plain_grads[name], atol=1e-6, rtol=1e-4, msg=name)
