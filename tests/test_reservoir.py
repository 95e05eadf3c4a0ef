"""The reservoir family (revena_lib/models/reservoir.py): agreement with reservoirpy, the hand-written backward,
causality, no state bleed across rows or documents, fixed buffers, and the arm running through train/evaluate."""

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from revena_lib.arms import arm_preset
from revena_lib.models import build_model
from revena_lib.models.reservoir import EchoReservoir, ReservoirLM, leaky_esn, reservoir_matrices


def smoke_cfg(**overrides):
    cfg = arm_preset("smoke", "reservoir").model
    return dataclasses.replace(cfg, vocab_size=512, **overrides)


@pytest.mark.parametrize("bias_scaling", [0.0, 0.3])
def test_states_match_reservoirpy_step_for_step(bias_scaling):
    """Our reservoir and reservoirpy's own Reservoir node, on the same matrices and inputs, give the same states."""
    from reservoirpy.nodes import Reservoir

    cfg = smoke_cfg(reservoir_units=48, reservoir_lr=0.3, reservoir_bias_scaling=bias_scaling)
    ours = EchoReservoir(cfg, layer=1).double()
    w, w_in, b = (m.numpy() for m in (ours.W, ours.W_in, ours.bias))
    u = np.random.default_rng(0).normal(size=(80, cfg.n_embd))                      # (T, C)
    node = Reservoir(W=w, Win=w_in, bias=b, lr=cfg.reservoir_lr, activation="tanh")
    expected = node.run(u)                                                          # (T, N)
    got = ours(torch.from_numpy(u)[None]).numpy()[0]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    assert np.abs(expected).max() > 0.1                                              # a real signal, not zeros


def test_matrices_are_reservoirpys_with_the_configured_statistics():
    cfg = smoke_cfg(reservoir_units=64, reservoir_sr=0.7, reservoir_input_scaling=0.2)
    w, w_in, b = reservoir_matrices(cfg, layer=0)
    assert w.shape == (64, 64) and w_in.shape == (64, cfg.n_embd) and not b.any()   # bias 0 by default
    assert abs(np.abs(np.linalg.eigvals(w)).max() - 0.7) < 1e-9                      # spectral radius = sr
    assert set(np.unique(w_in)) <= {-0.2, 0.0, 0.2}
    assert 0.05 < (w != 0).mean() < 0.15                                             # rc_connectivity 0.1
    again, other = reservoir_matrices(cfg, 0)[0], reservoir_matrices(cfg, 1)[0]
    assert np.array_equal(w, again) and not np.array_equal(w, other)                # seeded; one draw per layer


def test_hand_written_backward_matches_numerical_gradients():
    torch.manual_seed(0)
    w = torch.randn(6, 6, dtype=torch.float64) * 0.4
    pre = torch.randn(2, 9, 6, dtype=torch.float64, requires_grad=True)
    s0 = torch.randn(2, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda p, s: leaky_esn(p, w, 0.4, s), (pre, s0))


def test_gradients_reach_the_layers_below_through_the_reservoir():
    model = ReservoirLM(smoke_cfg())
    idx = torch.randint(0, 512, (2, 100))
    model(idx, idx).loss.backward()
    # block 0's second LayerNorm feeds only the reservoir: its gradient can only come through the recurrence
    assert model.blocks[0].ln_2.weight.grad.abs().sum() > 0


def test_causal_a_later_token_never_changes_an_earlier_output():
    model = ReservoirLM(smoke_cfg()).eval()
    idx = torch.randint(0, 512, (1, 300))
    changed = idx.clone()
    changed[0, 200:] = (changed[0, 200:] + 7) % 512
    with torch.no_grad():
        a, b = model(idx).logits, model(changed).logits
    assert torch.equal(a[:, :200], b[:, :200])
    assert not torch.allclose(a[:, 200:], b[:, 200:])


def test_no_state_bleed_across_batch_rows_or_documents():
    model = ReservoirLM(smoke_cfg()).eval()
    torch.manual_seed(1)
    doc_a, doc_b = torch.randint(0, 512, (1, 150)), torch.randint(0, 512, (1, 150))
    with torch.no_grad():
        alone = model(doc_a).logits
        batched = model(torch.cat([doc_a, doc_b])).logits          # another row beside it
        model(doc_b)                                               # another document read just before
        after = model(doc_a).logits
    torch.testing.assert_close(batched[:1], alone, rtol=1e-5, atol=1e-5)
    assert torch.equal(after, alone)


def test_the_reservoir_remembers_beyond_the_attention_receptive_field():
    """A change at token 0 reaches position 300 only through the reservoir: the stacked windows of 2 layers see
    2 x 127 = 254 tokens back. The baseline's output there is untouched; the reservoir's is not (float64)."""
    torch.manual_seed(0)
    idx = torch.randint(0, 512, (1, 301))
    changed = idx.clone()
    changed[0, 0] = (idx[0, 0] + 1) % 512
    cfg = smoke_cfg(reservoir_sr=0.95, reservoir_lr=0.2)
    for arm_cfg, reaches in ((dataclasses.replace(cfg, family="transformer"), False), (cfg, True)):
        model = build_model(arm_cfg).double().eval()
        with torch.no_grad():
            delta = (model(idx).logits[0, 300] - model(changed).logits[0, 300]).abs().max().item()
        assert (delta > 0) == reaches, (arm_cfg.family, delta)
        if arm_cfg.family == "reservoir":
            with torch.no_grad():   # with the recurrence cut, the reservoir forgets like the baseline
                off = (model(idx, memory_read=False).logits[0, 300]
                       - model(changed, memory_read=False).logits[0, 300]).abs().max().item()
            assert off == 0.0


def test_fixed_buffers_stay_out_of_the_optimizer_and_untouched_by_a_step():
    from revena_lib.training.loop import make_optimizer

    model = ReservoirLM(smoke_cfg(reservoir_bias_scaling=0.1))
    before = {name: b.clone() for name, b in model.named_buffers()}
    assert len(before) == 3 * model.cfg.n_layer and model.num_fixed() == sum(b.numel() for b in before.values())
    opt = make_optimizer(model, arm_preset("smoke", "reservoir").train, torch.device("cpu"))
    in_opt = {p.data_ptr() for g in opt.param_groups for p in g["params"]}
    assert not in_opt & {b.data_ptr() for b in model.buffers()}
    idx = torch.randint(0, 512, (2, 80))
    readout = model.blocks[0].mlp.readout.weight.clone()
    model(idx, idx).loss.backward()
    opt.step()
    for name, b in model.named_buffers():
        assert torch.equal(b, before[name]), name
    assert not torch.equal(model.blocks[0].mlp.readout.weight, readout)   # while the readout did train


def test_introspection_returns_the_states_and_the_ffn_variant_adds_the_ffn():
    model = ReservoirLM(smoke_cfg()).eval()
    idx = torch.randint(0, 512, (2, 70))
    with torch.no_grad():
        out = model(idx, introspect=True)
    n = model.cfg.reservoir_size
    assert len(out.trace.states) == model.cfg.n_layer and out.trace.states[0].shape == (2, 70, n)
    assert out.surprisal_bits.shape == (2, 70) and (out.surprisal_bits[:, 0] == 0).all()
    assert all(b.mlp.record is None for b in model.blocks)                  # nothing kept after the call
    with_ffn = ReservoirLM(smoke_cfg(reservoir_keep_ffn=True))
    c = model.cfg.n_embd
    assert with_ffn.num_parameters() - model.num_parameters() == model.cfg.n_layer * 8 * c * c


def test_the_reservoir_arm_trains_and_evaluates_through_the_common_pipeline(smoke_home, tmp_path, monkeypatch):
    from revena_lib.training.checkpoint import load_model
    from revena_lib.evaluation.results import evaluate
    from revena_lib.training.launch import train_arms

    shutil.copytree(smoke_home / "data", tmp_path / "data")
    monkeypatch.setenv("REVENA_HOME", str(tmp_path))
    runs = train_arms("smoke", "reservoir", steps=2, progress=False, device="cpu")
    run = runs["reservoir seed 1337"]
    assert json.loads((run / "config.json").read_text())["model"]["family"] == "reservoir"
    model, _ = load_model(run, device="cpu")
    assert isinstance(model, ReservoirLM)
    results = evaluate("smoke", arms="reservoir", device="cpu", progress=False)
    assert results["reservoir"]["family"] == "reservoir" and np.isfinite(results["reservoir"]["bpc"])
    assert results["reservoir_memory_off"]["bpc"] != results["reservoir"]["bpc"]   # the ablation was scored


def test_analysis_echo_state_memory_capacity_and_spectra():
    from revena_lib.analysis import reservoir_analysis as ra

    cfg = smoke_cfg(reservoir_units=40)
    reservoir = EchoReservoir(cfg, layer=0)
    inputs = np.random.default_rng(0).normal(size=(300, cfg.n_embd))
    d = ra.echo_state_distances(reservoir, inputs, pairs=2)
    assert d.shape == (2, 301) and (d[:, -1] < 1e-6 * d[:, 0]).all()          # sr 0.9: the starts are forgotten
    bigger = ra.echo_state_distances(EchoReservoir(smoke_cfg(reservoir_units=40, reservoir_sr=3.0), 0), inputs * 0.01)
    assert bigger[:, -1].min() > 1e-3                                        # sr 3, weak input: no echo-state property
    mc = ra.memory_capacity(reservoir, max_delay=30, length=2000)
    assert 1.0 < mc["mc"] <= 40 and mc["mc_k"][0] > mc["mc_k"][-1]
    t = np.arange(512)
    freqs, power = ra.power_spectra(np.stack([np.sin(2 * np.pi * 0.125 * t), np.cos(2 * np.pi * 0.25 * t)], 1))
    assert np.allclose(ra.dominant_frequencies(freqs, power), [0.125, 0.25])
    mu = ra.eigenvalues(reservoir)["leaky"]
    assert np.abs(mu).max() <= (1 - cfg.reservoir_lr) + cfg.reservoir_lr * 0.9 + 1e-9
