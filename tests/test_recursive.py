"""The recursive family (revena_lib/models/recursive.py): shapes, causality across chunks, gradient only through the
last H cycle, the carry detached between chunks, the state protocol, the carry ablation, and the arm running
through train/evaluate."""

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from revena_lib.arms import ARMS, arm_preset
from revena_lib.models import build_model
from revena_lib.models.recursive import RecursiveCarry, RecursiveLM, flops_per_token, parameter_count
from revena_lib.models.transformer import ModelError

C = 16   # chunk size in these tests: several chunks in short sequences


def small_cfg(**overrides):
    cfg = arm_preset("smoke", "recursive").model
    return dataclasses.replace(cfg, vocab_size=512, chunk_size=C, **overrides)


def small_model(**overrides):
    torch.manual_seed(0)
    return RecursiveLM(small_cfg(**overrides)).eval()


# the core as the matched arm has it, and with the model's qk_conv kept inside it (arm recursive_qk)
CORES = pytest.mark.parametrize("core", [{}, {"qk_conv": 2, "trm_qk_conv": True}], ids=["plain", "qk_conv"])


def test_shapes_finite_loss_and_parameter_count():
    for overrides in ({}, {"trm_hidden": 48, "trm_layers": 1, "trm_h_cycles": 3, "trm_l_cycles": 1}):
        model = small_model(**overrides)
        idx = torch.randint(0, 512, (2, 3 * C + 5))                  # a partial last chunk
        out = model(idx, idx)
        assert out.logits.shape == (2, 3 * C + 5, 512) and out.surprisal_bits.shape == (2, 3 * C + 5)
        assert torch.isfinite(out.loss) and out.state is None and (out.surprisal_bits[:, 0] == 0).all()
        assert model.num_parameters() == parameter_count(model.cfg)
    baseline = build_model(dataclasses.replace(small_cfg(), family="transformer"))
    assert RecursiveLM(small_cfg()).num_parameters() == baseline.num_parameters()   # the matched arm
    assert flops_per_token(small_cfg(trm_h_cycles=3)) > flops_per_token(small_cfg(trm_h_cycles=2))


def test_config_refuses_bad_trm_fields():
    for bad in ({"trm_hidden": 30}, {"trm_layers": -1}, {"trm_h_cycles": 0}, {"trm_l_cycles": 0}):
        with pytest.raises(ValueError, match="trm_"):
            small_cfg(**bad)


@CORES
def test_causal_a_later_token_never_changes_an_earlier_output_across_chunks(core):
    model = small_model(**core)
    idx = torch.randint(0, 512, (1, 5 * C))
    for t in (C - 1, C, 2 * C + 7):                                   # chunk ends, starts, middles
        changed = idx.clone()
        changed[0, t] = (idx[0, t] + 1) % 512
        with torch.no_grad():
            a, b = model(idx).logits, model(changed).logits
        assert torch.equal(a[:, :t], b[:, :t]), t
        assert not torch.allclose(a[:, t], b[:, t])
        nxt = slice((t // C + 1) * C, (t // C + 2) * C)
        assert not torch.equal(a[:, nxt], b[:, nxt])                  # and the next chunk, through the carry


def test_gradient_flows_only_through_the_last_h_cycle():
    """Count, on one block's FFN, forward passes and the passes whose output gets a gradient."""
    H, L, chunks = 3, 2, 2
    model = small_model(trm_layers=1, trm_h_cycles=H, trm_l_cycles=L).train()
    calls = {"forward": 0, "backward": 0, "with_graph": 0}

    def count(module, args, output):
        calls["forward"] += 1
        if output.requires_grad:
            calls["with_graph"] += 1
            output.register_hook(lambda g: calls.__setitem__("backward", calls["backward"] + 1))

    model.blocks[0].mlp.register_forward_hook(count)
    idx = torch.randint(0, 512, (2, chunks * C))
    model(idx, idx).loss.backward()
    assert calls["forward"] == chunks * H * (L + 1)
    assert calls["with_graph"] == calls["backward"] == chunks * (L + 1)


def test_the_carry_is_detached_between_chunks():
    """A loss on chunk 2 alone sends no gradient to chunk 1's input embeddings (they reach chunk 2 only through the
    carry), while chunk 1 does change chunk 2's output: the carry is read, just not backpropagated through."""
    model = small_model().train()
    emb = {}

    def keep(module, args, output):
        if output.requires_grad:                                      # not in the no_grad check below
            output.retain_grad()
            emb["x"] = output

    model.wte.register_forward_hook(keep)
    idx = torch.randint(0, 512, (2, 2 * C))
    targets = idx.clone()
    targets[:, :C] = -1                                               # loss on chunk 2's positions only
    model(idx, targets).loss.backward()
    grad = emb["x"].grad                                              # (B, T, n_embd)
    assert grad[:, :C].abs().max() == 0
    assert grad[:, C:].abs().sum() > 0
    changed = idx.clone()
    changed[:, 3] = (idx[:, 3] + 1) % 512
    with torch.no_grad():
        assert not torch.allclose(model(idx).logits[:, C:], model(changed).logits[:, C:])


@CORES
def test_state_protocol_split_calls_equal_one_call_and_states_are_independent(core):
    model = small_model(**core)
    idx = torch.randint(0, 512, (2, 4 * C))
    with torch.no_grad():
        whole = model(idx)
        s0 = model.new_state(2, "cpu")
        first = model(idx[:, :2 * C], state=s0)
        s1 = first.state
        kept = s1.z_H.clone()
        second = model(idx[:, 2 * C:], state=s1)
        again = model(idx[:, 2 * C:], state=s1)                        # the same state can be used twice
    assert isinstance(s1, RecursiveCarry) and s1.position == 2 * C and s0.position == 0 and s0.z_H is None
    torch.testing.assert_close(torch.cat([first.logits, second.logits], 1), whole.logits, rtol=1e-5, atol=1e-5)
    assert torch.equal(second.logits, again.logits)
    assert torch.equal(s1.z_H, kept) and s1.position == 2 * C                # the input state was not changed
    assert second.state is not s1 and second.state.position == 4 * C
    assert set(s1.summary()) >= {"tokens_seen", "carry_norm_H"} and s1.summary()["carry_norm_H"] > 0
    # two states from one model share nothing; reset clears one and leaves the other
    with torch.no_grad():
        other = model(torch.randint(0, 512, (2, 2 * C)), state=model.new_state(2, "cpu")).state
    assert other.z_H.data_ptr() != s1.z_H.data_ptr() and not torch.equal(other.z_H, s1.z_H)
    other.reset()
    assert other.position == 0 and other.z_H is None and other.summary()["carry_norm_H"] == 0.0
    assert torch.equal(s1.z_H, kept)
    with torch.no_grad():
        assert torch.equal(model(idx, state=other).logits, whole.logits)    # a reset state is a fresh stream


def test_a_continuation_must_start_at_a_chunk_boundary_with_the_same_batch():
    model = small_model()
    with torch.no_grad():
        state = model(torch.randint(0, 512, (1, C + 3)), state=model.new_state(1, "cpu")).state
    assert state.position == C + 3
    with pytest.raises(ModelError, match="chunk boundary.*position 19.*chunk_size=16"):
        model(torch.randint(0, 512, (1, C)), state=state)
    with pytest.raises(ModelError, match="1 streams, idx has 2 rows"):
        model(torch.randint(0, 512, (2, C)), state=model.new_state(1, "cpu"))


@CORES
def test_memory_read_off_makes_chunk_one_invisible_at_chunk_three(core):
    model = small_model(**core).double()   # an untrained carry passes ~1e-3 of a change per chunk: float64 keeps it clear
    idx = torch.randint(0, 512, (1, 3 * C))
    changed = idx.clone()
    changed[0, 5] = (idx[0, 5] + 1) % 512
    third = slice(2 * C, 3 * C)
    with torch.no_grad():
        on = (model(idx).logits[:, third] - model(changed).logits[:, third]).abs().max().item()
        off_a, off_b = model(idx, memory_read=False).logits, model(changed, memory_read=False).logits
    assert on > 0
    assert torch.equal(off_a[:, third], off_b[:, third]) and torch.equal(off_a[:, C:], off_b[:, C:])
    assert not torch.allclose(off_a[:, 5:C], off_b[:, 5:C])          # inside chunk 1 the change still shows


def test_the_recursive_arms_are_in_the_table():
    for name in ("recursive", "recursive_qk", "trm_256x2_h3l4", "trm_192x2_h2l3", "trm_256x3_h4l4"):
        assert ARMS[name].family == "recursive" and ARMS[name].label
    plain, qk = (RecursiveLM(arm_preset("cpu", name).model) for name in ("recursive", "recursive_qk"))
    assert plain.blocks[0].attn.key_mix is None and qk.blocks[0].attn.key_mix.shape == (3, 4, 1, 32)   # qk_conv=2
    cfg = arm_preset("cpu", "trm_256x3_h4l4").model
    assert (cfg.trm_width, cfg.trm_depth, cfg.trm_h_cycles, cfg.trm_l_cycles) == (256, 3, 4, 4)


def test_the_recursive_arm_trains_and_evaluates_through_the_common_pipeline(smoke_home, tmp_path, monkeypatch):
    from revena_lib.training.checkpoint import load_model
    from revena_lib.evaluation.results import evaluate
    from revena_lib.training.launch import train_arms

    shutil.copytree(smoke_home / "data", tmp_path / "data")
    monkeypatch.setenv("REVENA_HOME", str(tmp_path))
    runs = train_arms("smoke", "recursive", steps=2, progress=False, device="cpu")
    run = runs["recursive seed 1337"]
    assert json.loads((run / "config.json").read_text())["model"]["family"] == "recursive"
    model, _ = load_model(run, device="cpu")
    assert isinstance(model, RecursiveLM)
    results = evaluate("smoke", arms="recursive", device="cpu", progress=False)
    assert results["recursive"]["family"] == "recursive" and np.isfinite(results["recursive"]["bpc"])
    assert results["recursive_carry_off"]["bpc"] != results["recursive"]["bpc"]   # the ablation was scored
