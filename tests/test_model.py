"""RevenaLM: sliding-window STM (checked against a naive one-pass reference), causality, the LTM's write/read
rules and invariants, surprisal, stats, determinism, save/reload, bf16 autocast. Tiny configs, CPU, seconds."""

import math

import pytest
import torch
import torch.nn.functional as F

from revena_lib.config import ModelConfig, get_preset
from revena_lib.models.ltm import LongTermMemory, memory_rates
from revena_lib.models.transformer import ModelError, RevenaLM, parameter_count

V = 512   # a small vocabulary keeps the tests fast; the model code is vocabulary-agnostic


def tiny(**overrides) -> ModelConfig:
    settings = dict(n_layer=2, n_embd=32, n_head=2, window=16, chunk_size=8, vocab_size=V)
    settings.update(overrides)
    return ModelConfig(**settings)


def build(seed=0, **overrides) -> RevenaLM:
    torch.manual_seed(seed)
    return RevenaLM(tiny(**overrides)).eval()


def tokens(batch, length, seed=1):
    return torch.randint(0, V, (batch, length), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------- a naive reference model

def reference_logits(model: RevenaLM, idx: torch.Tensor) -> torch.Tensor:
    """Full-sequence forward pass with an explicit banded mask (s <= t and t - s < window), written
    independently of the model's chunking: RoPE via complex rotation, attention via an explicit softmax."""
    cfg = model.cfg
    B, T = idx.shape
    H, D = cfg.n_head, cfg.n_embd // cfg.n_head
    pos = torch.arange(T)
    allowed = (pos[None, :] <= pos[:, None]) & (pos[:, None] - pos[None, :] < cfg.window)   # (T, T)
    freqs = 1.0 / cfg.rope_base ** (torch.arange(D // 2, dtype=torch.float64) * 2 / D)
    rot = torch.polar(torch.ones(T, D // 2, dtype=torch.float64), pos[:, None].double() * freqs[None, :])

    def rope(x):  # (B, H, T, D): dims i and i + D/2 form one complex number
        z = torch.complex(x[..., :D // 2].double(), x[..., D // 2:].double()) * rot
        return torch.cat([z.real, z.imag], dim=-1).float()

    x = model.wte.weight[idx]
    for blk in model.blocks:
        h = F.layer_norm(x, (cfg.n_embd,), blk.ln_1.weight, blk.ln_1.bias)
        q, k, v = (h @ blk.attn.c_attn.weight.T).split(cfg.n_embd, dim=-1)
        q, k, v = (t.view(B, T, H, D).transpose(1, 2) for t in (q, k, v))
        k = rope(k)
        if cfg.smear_key:   # Olsson et al.'s smeared key: a k_t + (1 - a) k_(t-1), nothing before position 0
            a = torch.sigmoid(blk.attn.smear_logit).view(H, 1, 1)
            k = a * k + (1 - a) * torch.cat([torch.zeros_like(k[:, :, :1]), k[:, :, :-1]], dim=2)
        if cfg.qk_conv:
            scores = qk_conv_scores(blk, rope(q), k, cfg) / math.sqrt(D)
        else:
            scores = rope(q) @ k.transpose(-1, -2) / math.sqrt(D)
        att = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, cfg.n_embd)
        x = x + y @ blk.attn.c_proj.weight.T
        h = F.layer_norm(x, (cfg.n_embd,), blk.ln_2.weight, blk.ln_2.bias)
        x = x + F.gelu(h @ blk.mlp.c_fc.weight.T) @ blk.mlp.c_proj.weight.T
    x = F.layer_norm(x, (cfg.n_embd,), model.ln_f.weight, model.ln_f.bias)
    return x @ model.wte.weight.T


def qk_conv_scores(blk, q, k, cfg) -> torch.Tensor:
    """(B, H, T, T) scores q'_t . k'_s with qk_conv = n, pair by pair: k'_s = sum_l w_l k_(s-l) and q'_t = q_t +
    sum_l u_l k_(t-l), where a key's predecessor counts only from the first position of the key block of t's chunk
    (the P chunks before it), and nothing counts before position 0 (ModelConfig.qk_conv, Attention.smear)."""
    B, H, T, D = q.shape
    n, c = cfg.qk_conv, cfg.chunk_size
    P = math.ceil((cfg.window - 1) / c)
    pos = torch.arange(T)
    block_start = (pos // c - P) * c                                               # (T,) per query
    w = blk.attn.key_mix.detach()                                                  # (n+1, H, 1, D)
    q = q.clone()
    for lag in range(1, n):                                                        # queries: k_(t-1) .. k_(t-n+1)
        q[:, :, lag:] += blk.attn.query_mix[lag - 1].detach() * k[:, :, :T - lag]
    scores = torch.zeros(B, H, T, T)
    for lag in range(n + 1):
        k_lag = torch.cat([torch.zeros_like(k[:, :, :lag]), k[:, :, :T - lag]], dim=2) * w[lag]   # w_l k_(s-l)
        counts = (pos[None, :] - lag >= block_start[:, None]) & (pos[None, :] - lag >= 0)       # (T, T) [t, s]
        scores += (q @ k_lag.transpose(-1, -2)) * counts
    return scores


@pytest.mark.parametrize("T", [1, 7, 8, 16, 37, 64])
@pytest.mark.parametrize("ltm_layer", [-1, 0])
def test_chunked_attention_equals_one_pass_banded_reference(T, ltm_layer):
    model = build(n_layer=3, ltm_layer=ltm_layer)
    idx = tokens(2, T)
    with torch.no_grad():
        got = model(idx).logits
        want = reference_logits(model, idx)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


def assert_causal_and_streamed_exactly(model: RevenaLM, idx: torch.Tensor):
    """Changing token t leaves every logit before t as it was, and idx fed as a stream (16 tokens, then the rest)
    gives the one-pass logits. Returns (the one-pass logits, the output of the stream's first call)."""
    with torch.no_grad():
        base = model(idx).logits
        for t in (0, 8, 23):
            changed = idx.clone()
            changed[:, t] = (changed[:, t] + 1) % V
            assert torch.equal(model(changed).logits[:, :t], base[:, :t]), f"logits before {t} changed"
        first = model(idx[:, :16], state=model.new_state(idx.shape[0]))
        second = model(idx[:, 16:], state=first.state)
    torch.testing.assert_close(torch.cat([first.logits, second.logits], 1), base, rtol=1e-4, atol=1e-4)
    return base, first


def smeared(seed=0, **overrides) -> RevenaLM:
    """A tiny model with smeared keys whose mix differs per layer and head (not the even mix it starts at)."""
    model = build(seed, smear_key=True, **overrides)
    with torch.no_grad():
        for i, block in enumerate(model.blocks):
            block.attn.smear_logit.copy_(torch.linspace(-2.0, 2.0, model.cfg.n_head) + i)
    return model


@pytest.mark.parametrize("T", [7, 8, 37, 64])
@pytest.mark.parametrize("ltm_layer", [-1, 0])
def test_smeared_keys_in_chunks_equal_the_one_pass_reference(T, ltm_layer):
    """The smear runs across chunk boundaries: each key mixes with its real predecessor, also in the cache."""
    model = smeared(n_layer=3, ltm_layer=ltm_layer)
    idx = tokens(2, T)
    with torch.no_grad():
        torch.testing.assert_close(model(idx).logits, reference_logits(model, idx), atol=2e-5, rtol=1e-4)


def test_smeared_keys_are_causal_continue_a_stream_exactly_and_are_off_by_default():
    assert ModelConfig().smear_key is False and get_preset("paper").model.smear_key is False
    assert all(b.attn.smear_logit is None for b in build().blocks)
    model = smeared(use_ltm=True, ltm_write_threshold_bits=0.0)
    idx = tokens(2, 40)
    base, _ = assert_causal_and_streamed_exactly(model, idx)
    # and the smear matters: the same weights without it give other logits
    plain = build(use_ltm=True, ltm_write_threshold_bits=0.0)
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if "smear" not in k})
    with torch.no_grad():
        assert not torch.allclose(plain(idx).logits, base, atol=1e-3)


def qk_convolved(n=2, seed=0, **overrides) -> RevenaLM:
    """A tiny model with qk_conv = n whose mixing weights are random (not the smear-like start)."""
    model = build(seed, qk_conv=n, **overrides)
    g = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        for block in model.blocks:
            for mix in (block.attn.key_mix, block.attn.query_mix):
                if mix is not None:
                    mix.copy_(torch.randn(mix.shape, generator=g))
    return model


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("T", [7, 8, 37, 64])
@pytest.mark.parametrize("ltm_layer", [-1, 0])
def test_qk_conv_in_chunks_equals_the_one_pass_reference(n, T, ltm_layer):
    """Keys mix k_t .. k_(t-n) and queries add k_(t-1) .. k_(t-n+1), across chunk boundaries and the cache."""
    model = qk_convolved(n, n_layer=3, ltm_layer=ltm_layer)
    idx = tokens(2, T)
    with torch.no_grad():
        torch.testing.assert_close(model(idx).logits, reference_logits(model, idx), atol=2e-5, rtol=1e-4)


def test_qk_conv_is_causal_continues_a_stream_exactly_matters_and_is_off_by_default():
    assert ModelConfig().qk_conv == 0 and get_preset("paper").model.qk_conv == 0
    assert all(b.attn.key_mix is None and b.attn.query_mix is None for b in build().blocks)
    model = qk_convolved(2, use_ltm=True, ltm_write_threshold_bits=0.0)
    idx = tokens(2, 40)
    base, first = assert_causal_and_streamed_exactly(model, idx)
    with torch.no_grad():
        three = model(idx[:, 16:21], state=first.state)                   # a partial chunk continues the same way
        torch.testing.assert_close(three.logits, base[:, 16:21], rtol=1e-4, atol=1e-4)
    fresh = build(qk_conv=2)   # the start: the smeared key's even mix of k_t and k_(t-1), plain queries
    assert all(torch.equal(b.attn.key_mix[:2], torch.full_like(b.attn.key_mix[:2], 0.5)) and
               not b.attn.key_mix[2:].any() and not b.attn.query_mix.any() for b in fresh.blocks)
    plain = build(use_ltm=True, ltm_write_threshold_bits=0.0)
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if "_mix" not in k})
    with torch.no_grad():
        assert not torch.allclose(plain(idx).logits, base, atol=1e-3)


@pytest.mark.parametrize("settings", [dict(qk_conv=-1), dict(qk_conv=8), dict(qk_conv=2, smear_key=True)])
def test_qk_conv_out_of_range_or_with_smear_key_is_refused(settings):
    with pytest.raises(ValueError, match="qk_conv"):
        tiny(**settings)


def test_ltm_arm_without_reads_equals_reference():
    model = build(n_layer=3, use_ltm=True, ltm_similarity_threshold=-1.0, ltm_write_threshold_bits=0.0)
    idx = tokens(2, 45)
    with torch.no_grad():
        torch.testing.assert_close(model(idx, memory_read=False).logits, reference_logits(model, idx),
                                   atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("window,chunk", [(16, 8), (12, 8), (8, 8), (20, 6)])
def test_window_other_geometries_equal_reference(window, chunk):
    model = build(window=window, chunk_size=chunk)
    idx = tokens(1, 50)
    with torch.no_grad():
        torch.testing.assert_close(model(idx).logits, reference_logits(model, idx), atol=2e-5, rtol=1e-4)


# ------------------------------------------------------------------------------- STM: causality and window

@pytest.mark.parametrize("use_ltm", [False, True])
def test_causality_later_tokens_never_change_earlier_logits(use_ltm):
    # similarity -1: every stored entry is a hit, so the memory path is fully exercised
    model = build(use_ltm=use_ltm, ltm_similarity_threshold=-1.0, ltm_write_threshold_bits=0.0)
    idx = tokens(2, 40)
    with torch.no_grad():
        base = model(idx).logits
        for t in (0, 7, 8, 9, 23, 39):
            changed = idx.clone()
            changed[:, t] = (changed[:, t] + 1) % V
            out = model(changed).logits
            assert torch.equal(out[:, :t], base[:, :t]), f"logits before {t} changed"
            assert not torch.allclose(out[:, t], base[:, t]), f"the changed token {t} had no effect on itself"


def test_window_token_beyond_window_never_matters_and_inside_does():
    # one layer: a token's receptive field is exactly its attention window (deeper models see further)
    model = build(n_layer=1)
    W = model.cfg.window
    idx = tokens(1, 48)
    with torch.no_grad():
        base = model(idx).logits[0]
        for u in (0, 5, 8, 13, 20):
            changed = idx.clone()
            changed[0, u] = (changed[0, u] + 1) % V
            out = model(changed).logits[0]
            differs = (out - base).abs().amax(-1) > 0                    # (T,)
            t = torch.arange(48)
            assert torch.equal(differs, (t >= u) & (t - u <= W - 1)), f"changed token {u}"


# ------------------------------------------------------------------------------- loss, surprisal, stats

@pytest.mark.parametrize("use_ltm", [False, True])
def test_loss_is_mean_cross_entropy_ignoring_minus_one(use_ltm):
    model = build(use_ltm=use_ltm, ltm_similarity_threshold=0.0)
    idx = tokens(2, 30)
    targets = idx.roll(-1, dims=1)
    targets[:, -1] = -1
    targets[0, 3] = -1
    out = model(idx, targets)
    want = F.cross_entropy(out.logits.reshape(-1, V), targets.reshape(-1), ignore_index=-1)
    torch.testing.assert_close(out.loss, want, atol=1e-5, rtol=1e-5)
    assert model(idx).loss is None


@pytest.mark.parametrize("use_ltm", [False, True])
def test_surprisal_equals_minus_log2_softmax_of_previous_logits(use_ltm):
    model = build(use_ltm=use_ltm, ltm_similarity_threshold=0.0)
    idx = tokens(3, 29)
    with torch.no_grad():
        out = model(idx)
    p = torch.softmax(out.logits.double(), dim=-1)
    want = -torch.log2(p[:, :-1].gather(-1, idx[:, 1:, None])[..., 0])
    assert out.surprisal_bits.shape == (3, 29) and not out.surprisal_bits.requires_grad
    assert torch.all(out.surprisal_bits[:, 0] == 0.0)
    torch.testing.assert_close(out.surprisal_bits[:, 1:].double(), want, atol=1e-4, rtol=1e-5)


def test_stats_match_the_trace():
    model = build(use_ltm=True, ltm_similarity_threshold=0.0, ltm_write_threshold_bits=9.0)   # log2(512) = 9: about half
    idx = tokens(2, 40)
    with torch.no_grad():
        out = model(idx, introspect=True)
    tr = out.trace
    assert torch.equal(tr.routed[:, 1:], tr.surprisal_bits[:, 1:] > 9.0) and not tr.routed[:, 0].any()
    assert 0 < tr.routed.sum() < tr.routed[:, 1:].numel(), "pick a threshold that routes some tokens"
    assert out.stats["routed_tokens"] == tr.routed.sum().item() and out.stats["predicted_tokens"] == 2 * 39
    assert out.stats["hit_tokens"] == (tr.hit_count > 0).sum().item() and out.stats["tokens"] == 2 * 40
    rates = memory_rates(out.stats)
    assert rates["routed_token_ratio"] == pytest.approx(tr.routed.sum().item() / (2 * 39))
    assert rates["avg_surprisal_routed"] == pytest.approx(tr.surprisal_bits[tr.routed].mean().item(), rel=1e-5)
    assert rates["ltm_hit_rate"] == pytest.approx((tr.hit_count > 0).float().mean().item())
    assert all(isinstance(v, float) for v in out.stats.values())


def test_baseline_has_zero_stats_and_no_trace():
    out = build()(tokens(1, 20), introspect=True)
    assert out.stats == {}
    assert memory_rates(out.stats) == {"routed_token_ratio": 0.0, "avg_surprisal_routed": 0.0, "ltm_hit_rate": 0.0}
    assert out.trace is None
    assert build(use_ltm=True)(tokens(1, 20)).trace is None   # trace only when asked


# ------------------------------------------------------------------------------- LTM write rules

def test_strict_write_threshold():
    # similarity 2.0: no read ever hits, so surprisals do not depend on the threshold being tested
    model = build(use_ltm=True, ltm_similarity_threshold=2.0)
    idx = tokens(1, 30)
    with torch.no_grad():
        surprisal = model(idx, introspect=True).trace.surprisal_bits[0]
    t = 11
    model.cfg.ltm_write_threshold_bits = float(surprisal[t])      # exactly at token t's surprisal
    with torch.no_grad():
        tr = model(idx, introspect=True).trace
    assert not tr.routed[0, t], "a token exactly at the threshold must not be written"
    assert torch.equal(tr.routed[0, 1:], surprisal[1:] > surprisal[t])
    assert tr.occupancy[0, -1] == tr.routed.sum()


def _write_chunks(capacity, routed_chunks):
    """Feed crafted routed masks to a 1-row memory; positions are global token indices."""
    mem = LongTermMemory(batch=1, n_head=2, head_dim=4, capacity=capacity, device="cpu")
    start, evictions = 0, []
    for routed in routed_chunks:
        n = len(routed)
        pos = torch.arange(start, start + n)[None]
        kv = torch.cat([F.normalize(torch.randn(1, 2, n, 4), dim=-1), pos[:, None, :, None].expand(1, 2, n, 4).float()], -1)
        evictions.append(int(mem.write(torch.tensor([routed]), kv, pos)[0]))
        start += n
    stored = mem.positions[0, :capacity]
    return mem, sorted(stored[stored >= 0].tolist()), evictions


def test_fifo_keeps_the_latest_entries_and_never_exceeds_capacity():
    chunks = [[True, False, True, True], [False, True, True, False], [True, True, True, True]]
    mem, stored, evictions = _write_chunks(5, chunks)
    routed_positions = [i for i, r in enumerate(sum(chunks, [])) if r]       # 9 routed tokens
    assert stored == routed_positions[-5:], "FIFO: the oldest entries go first"
    assert evictions == [0, 0, 4] and int(mem.occupancy()[0]) == 5
    values = mem.kv[0, :, :5, 4:]                                             # each value holds its position
    assert torch.equal(values, mem.positions[0, :5].float()[None, :, None].expand(2, 5, 4))
    # ring order: the slot after the newest holds the oldest
    newest_slot = (int(mem.written[0]) - 1) % 5
    assert int(mem.positions[0, newest_slot]) == routed_positions[-1]
    assert int(mem.positions[0, (newest_slot + 1) % 5]) == routed_positions[-5]


def test_more_qualifying_tokens_than_capacity_in_one_chunk_keeps_the_latest():
    mem, stored, evictions = _write_chunks(3, [[True] * 8])
    assert stored == [5, 6, 7] and evictions == [5]
    mem, stored, evictions = _write_chunks(3, [[True, False], [True] * 6])
    assert stored == [5, 6, 7] and evictions == [0, 4]


def test_capacity_is_never_exceeded_in_the_model():
    model = build(use_ltm=True, ltm_capacity=5, ltm_write_threshold_bits=0.0, ltm_similarity_threshold=-1.0)
    with torch.no_grad():
        tr = model(tokens(2, 60), introspect=True).trace
    assert tr.occupancy.max() == 5 and torch.all(tr.hit_count <= 5)
    assert torch.equal(tr.occupancy[:, -1] + tr.evictions.sum(1), tr.routed.sum(1))
    # with everything routed and everything hitting, each chunk's queries hit the latest 5 routed tokens
    assert torch.all(tr.top_hit_positions[:, 8:16, 0] >= 0)
    assert set(tr.top_hit_positions[0, 40:48].flatten().tolist()) <= set(range(35, 40)) | {-1}


# ------------------------------------------------------------------------------- LTM read rules

def test_reads_only_see_earlier_chunks():
    model = build(use_ltm=True, ltm_similarity_threshold=-1.0, ltm_write_threshold_bits=0.0)
    c = model.cfg.chunk_size
    idx = tokens(2, 45)
    with torch.no_grad():
        tr = model(idx, introspect=True).trace
    assert torch.all(tr.hit_count[:, :c] == 0) and torch.all(tr.top_hit_positions[:, :c] == -1)
    chunk_start = (torch.arange(45) // c * c)[None, :, None]
    hits = tr.top_hit_positions
    assert torch.all((hits == -1) | (hits < chunk_start)), "a hit points into the same or a later chunk"
    assert torch.all(tr.hit_count[:, c:] > 0)
    idx_at = idx.gather(1, hits.clamp(min=0).flatten(1)).view_as(hits)
    assert torch.equal(tr.top_hit_tokens, torch.where(hits >= 0, idx_at, -1)), "an entry's token is the token at its position"
    cos = tr.top_hit_cosines
    assert torch.all(cos[..., :-1] >= cos[..., 1:]), "top hits sorted by cosine, descending"


def test_no_hit_means_exactly_the_memory_free_output():
    model = build(use_ltm=True, ltm_similarity_threshold=1.0, ltm_write_threshold_bits=0.0)  # cosine never > 1
    idx = tokens(2, 40)
    with torch.no_grad():
        with_mem = model(idx, introspect=True)
        without = model(idx, memory_read=False)
    assert with_mem.trace.hit_count.sum() == 0 and with_mem.stats["hit_tokens"] == 0.0
    assert with_mem.trace.occupancy[:, -1].min() > 0, "entries were written, just never hit"
    assert torch.equal(with_mem.logits, without.logits)


def test_hits_change_the_output_and_memory_read_false_disables_them():
    model = build(use_ltm=True, ltm_similarity_threshold=-1.0, ltm_write_threshold_bits=0.0)
    idx = tokens(2, 40)
    with torch.no_grad():
        with_mem, without = model(idx), model(idx, memory_read=False, introspect=True)
    c = model.cfg.chunk_size
    assert torch.equal(with_mem.logits[:, :c], without.logits[:, :c])       # chunk 0 has nothing to read
    assert not torch.allclose(with_mem.logits[:, c:], without.logits[:, c:])
    assert without.stats["hit_tokens"] == 0.0 and without.stats["routed_tokens"] > 0   # writes still happen
    assert without.trace.occupancy[:, -1].min() > 0


def test_memory_is_empty_at_every_call_and_rows_do_not_share_it():
    model = build(use_ltm=True, ltm_similarity_threshold=-1.0, ltm_write_threshold_bits=0.0)
    idx = tokens(3, 40)
    with torch.no_grad():
        first, second = model(idx, introspect=True), model(idx, introspect=True)
        assert torch.equal(first.logits, second.logits)
        assert torch.equal(first.trace.occupancy, second.trace.occupancy)
        for b in range(3):
            alone = model(idx[b:b + 1])
            torch.testing.assert_close(alone.logits[0], first.logits[b], atol=1e-5, rtol=1e-5)
        other = idx.clone()
        other[1:] = tokens(2, 40, seed=99)
        torch.testing.assert_close(model(other).logits[0], first.logits[0], atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------- gradients, dtype, parameters

def test_gradients_are_finite_and_reach_the_gate():
    for threshold in (-1.0, 1.0):   # everything hits / nothing hits (the hard rule: no relaxation)
        model = build(use_ltm=True, ltm_similarity_threshold=threshold, ltm_write_threshold_bits=0.0,
                      ltm_soft_width=0.0).train()
        idx = tokens(2, 33)
        model(idx, idx.roll(-1, 1)).loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())
        gate_grad = model.ltm_gate_logit.grad.abs().sum()
        assert (gate_grad > 0) if threshold < 0 else (gate_grad == 0)


@pytest.mark.parametrize("use_ltm", [False, True])
def test_bf16_autocast_runs_and_is_close_to_fp32(use_ltm):
    model = build(use_ltm=use_ltm, ltm_similarity_threshold=0.0)
    idx = tokens(2, 40)
    targets = idx.roll(-1, 1)
    fp32 = model(idx, targets).loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(idx, targets)
    out.loss.backward()
    assert torch.isfinite(out.loss) and abs(out.loss.item() - fp32.item()) < 0.05
    assert out.surprisal_bits.dtype == torch.float32


def test_same_seed_same_model_and_outputs():
    a, b, c = build(seed=5, use_ltm=True), build(seed=5, use_ltm=True), build(seed=6, use_ltm=True)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    idx = tokens(2, 30)
    with torch.no_grad():
        assert torch.equal(a(idx).logits, b(idx).logits)
        assert not torch.equal(a(idx).logits, c(idx).logits)


def test_state_dict_round_trip_gives_identical_outputs(tmp_path):
    model = build(seed=3, use_ltm=True, ltm_similarity_threshold=-1.0)
    with torch.no_grad():
        model.ltm_gate_logit.fill_(0.7)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    fresh = build(seed=4, use_ltm=True, ltm_similarity_threshold=-1.0)
    fresh.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    idx = tokens(2, 30)
    with torch.no_grad():
        assert torch.equal(model(idx).logits, fresh(idx).logits)
    assert fresh.lm_head.weight is fresh.wte.weight, "embedding stays tied after loading"


def test_weight_init_is_gpt2_style():
    model = RevenaLM(ModelConfig(n_layer=4, n_embd=64, n_head=2, use_ltm=True, vocab_size=2048))
    assert model.wte.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.blocks[0].mlp.c_proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(8), rel=0.1)
    assert torch.all(model.ltm_gate_logit == -2.0)


@pytest.mark.parametrize("overrides", [{}, dict(n_layer=3, n_embd=48, n_head=4), dict(vocab_size=1000)])
def test_parameter_count_formula_and_the_arms_differ_only_by_the_gate(overrides):
    base, ltm = tiny(**overrides), tiny(use_ltm=True, **overrides)
    assert RevenaLM(base).num_parameters() == parameter_count(base)
    assert RevenaLM(ltm).num_parameters() == parameter_count(ltm) == parameter_count(base) + base.n_head


def test_paper_preset_is_about_70m_parameters():
    cfg = get_preset("paper").model
    assert 65e6 < parameter_count(cfg) < 75e6


def test_bad_input_names_the_problem():
    model = build()
    with pytest.raises(ModelError, match="idx"):
        model(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ModelError, match="targets"):
        model(tokens(1, 5), targets=tokens(1, 4))
    with pytest.raises(ValueError, match="ltm_layer"):
        tiny(ltm_layer=2)


def test_random_write_rule_writes_as_many_tokens_per_chunk_as_the_surprisal_rule():
    from revena_lib.models.ltm import write_mask

    cfg = build(use_ltm=True, ltm_write_rule="random").cfg
    torch.manual_seed(0)
    surprisal = torch.rand(3, 64) * 9.0                                   # bits; about half above 4.5
    positions = torch.arange(64).expand(3, 64)
    by_surprisal = write_mask(surprisal, positions, build(use_ltm=True).cfg)
    at_random = write_mask(surprisal, positions, cfg)
    assert torch.equal(by_surprisal.sum(1), at_random.sum(1))             # same rate, row by row
    assert not torch.equal(by_surprisal, at_random)                       # but other tokens
    assert not at_random[:, 0].any() and not by_surprisal[:, 0].any()     # position 0 never
    full = write_mask(torch.full((1, 64), 9.0), positions[:1], cfg)       # every eligible token qualifies
    assert full.sum() == 63 and not full[0, 0]


def test_at_the_briefs_settings_only_the_relaxed_read_gives_the_memory_a_gradient():
    """From initialisation no query-key pair passes the brief's 0.8 cut: the hard read is exactly zero and passes
    no gradient. The training read (soft width 0.05) reaches the gate, the memory layer's query/key projection and
    the keys written earlier; evaluation still applies the hard rule."""
    kw = dict(use_ltm=True, n_embd=128, n_head=2)          # brief's cut 0.8, write > 4.5 bits, capacity 256
    idx = tokens(2, 192)
    hard = build(**kw, ltm_soft_width=0.0).train()
    with torch.no_grad():
        assert hard(idx, introspect=True).trace.hit_count.sum() == 0, "precondition: no pair above the cut"
    hard(idx, idx.roll(-1, 1)).loss.backward()
    assert hard.ltm_gate_logit.grad.abs().sum() == 0

    soft = build(**kw).train()
    assert soft.cfg.ltm_soft_width == 0.05 and soft.cfg.ltm_similarity_threshold == 0.8
    soft.load_state_dict(hard.state_dict())
    soft(idx, idx.roll(-1, 1)).loss.backward()
    assert soft.ltm_gate_logit.grad.abs().sum() > 0
    layer = soft.blocks[soft.cfg.memory_layer_index].attn.c_attn
    C = soft.cfg.n_embd
    q_grad, k_grad = layer.weight.grad[:C], layer.weight.grad[C:2 * C]
    hard_layer = hard.blocks[hard.cfg.memory_layer_index].attn.c_attn
    assert not torch.allclose(q_grad, hard_layer.weight.grad[:C])            # the read adds gradient to queries ...
    assert not torch.allclose(k_grad, hard_layer.weight.grad[C:2 * C])       # ... and to the keys it stored
    soft.eval()
    with torch.no_grad():                                                     # evaluation: the hard rule, exactly
        torch.testing.assert_close(soft(idx).logits, hard.eval()(idx).logits)


def test_attention_sinks_equal_a_softmax_with_one_more_zero_value_key_per_head():
    """attn_sink: softmax over [sink logit of the head, q.k / sqrt(D) of the visible keys], the sink's value zero,
    the same with heads at dim 1 (forward_chunk) and folded into the batch (stm_all); a very negative logit is no
    sink at all."""
    from revena_lib.models.transformer import Attention

    cfg = tiny(n_head=3, n_embd=48, attn_sink=True)
    attn = Attention(cfg)
    with torch.no_grad():
        attn.sink_logit.copy_(torch.tensor([2.0, -1.0, 0.5]))
    g = torch.Generator().manual_seed(0)
    B, H, L, M, D = 2, 3, 5, 7, 16
    q, k, v = (torch.randn(B, H, n, D, generator=g) for n in (L, M, M))
    mask = torch.rand(L, M, generator=g) > 0.3
    mask[:, 0] = True
    scores = (q @ k.transpose(-1, -2) / math.sqrt(D)).masked_fill(~mask, float("-inf"))      # (B, H, L, M)
    sink = attn.sink_logit.view(1, H, 1, 1).expand(B, H, L, 1)
    reference = torch.softmax(torch.cat([sink, scores], -1), -1)[..., 1:] @ v
    with torch.no_grad():
        torch.testing.assert_close(attn.attend(q, k, v, mask), reference)
        folded = attn.attend(*(t.reshape(B * H, 1, -1, D) for t in (q, k, v)), mask, heads_folded=True)
        torch.testing.assert_close(folded.reshape(B, H, L, D), reference)
        attn.sink_logit.fill_(-1e4)
        plain = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        torch.testing.assert_close(attn.attend(q, k, v, mask), plain)


@pytest.mark.parametrize("extra", [{}, {"qk_conv": 2}, {"use_ltm": True, "ltm_layer": 0}])
def test_attention_sinks_stay_causal_and_stream_exactly(extra):
    model = build(attn_sink=True, n_layer=3, **extra)
    with torch.no_grad():
        for i, block in enumerate(model.blocks):
            block.attn.sink_logit.copy_(torch.linspace(-2.0, 2.0, model.cfg.n_head) + i)
    assert_causal_and_streamed_exactly(model, tokens(2, 40))
