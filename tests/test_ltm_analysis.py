"""Cosines of question queries with answer keys (the same q and k the LTM compares), and the evaluation-time
write-rule sweep on a smoke with_ltm run trained here for 3 steps. CPU, seconds."""

import dataclasses

import numpy as np
import pytest
import torch

from smoke_runs import trained_smoke_home
from revena_lib.config import get_preset
from revena_lib.evaluation.ltm_analysis import answer_key_cosines, captured_qk, write_rule_sweep
from revena_lib.models.transformer import RevenaLM


def _ltm_model(**overrides):
    torch.manual_seed(0)
    cfg = dataclasses.replace(get_preset("smoke").model, use_ltm=True, **overrides)
    return RevenaLM(cfg).eval()


def test_captured_queries_and_keys_are_what_the_memory_compares():
    model = _ltm_model(ltm_similarity_threshold=-1.0, ltm_write_threshold_bits=0.0)   # every written entry is a hit
    idx = torch.randint(1, model.cfg.vocab_size, (2, 200))
    with torch.no_grad(), captured_qk(model) as got:
        trace = model(idx, introspect=True).trace
    q, k = got["q"], got["k"]                                                 # (B, H, Tp, D)
    checked = 0
    for b in range(2):
        for t in range(64, 200, 7):
            p = int(trace.top_hit_positions[b, t, 0])
            assert p >= 0
            cos = (q[b, :, t] * k[b, :, p]).sum(-1).max()                    # max over heads, as the trace keeps
            assert float(cos) == pytest.approx(float(trace.top_hit_cosines[b, t, 0]), abs=1e-5)
            checked += 1
    assert checked > 20


def test_answer_key_cosines_pair_the_question_with_the_planted_answer(smoke_data):
    from revena_lib.data.splits import load_split
    from revena_lib.evaluation.recall import make_recall_items

    items = make_recall_items(load_split("val"), (32, 256), 3, seed=9)
    model = _ltm_model()
    out = answer_key_cosines(model, items, n_random=4, batch_size=3, eot=50256)
    answer, random = np.array(out["raw"]["answer"]), np.array(out["raw"]["random"])
    assert answer.shape == (6, model.cfg.n_head) and random.shape == (24, model.cfg.n_head)
    assert out["answer_every_token"]["n"] == sum(i.answer_len for i in items if i.kind == "passkey")
    assert (np.abs(answer) <= 1 + 1e-5).all() and (np.abs(random) <= 1 + 1e-5).all()
    assert set(out["by_distance"]) == {"32", "256"} and out["cut"] == 0.8
    s = out["answer"]
    assert s["per_head"]["q05"] <= s["per_head"]["q50"] <= s["per_head"]["q95"] and 0 <= s["share_above_cut"] <= 1
    # the pair is the one asked for: recompute one item's cosine by hand
    it = [i for i in items if i.kind == "passkey"][0]
    with torch.no_grad(), captured_qk(model) as got:
        model(torch.tensor([it.tokens]))
    by_hand = (got["q"][0, :, it.answer_start - 1] * got["k"][0, :, it.fact_answer_span()[0]]).sum(-1)
    assert np.allclose(answer[0], by_hand.numpy(), atol=1e-5)


@pytest.fixture(scope="module")
def ltm_run(smoke_home, tmp_path_factory):
    home = trained_smoke_home(smoke_home, tmp_path_factory, "sweep_home", ("with_ltm",))
    return home, home / "trained" / "with_ltm" / "smoke" / "seed-1337"


def test_write_rule_sweep_changes_only_the_writes(ltm_run, monkeypatch):
    home, run_dir = ltm_run
    monkeypatch.setenv("REVENA_HOME", str(home))
    settings = ({"ltm_write_threshold_bits": 4.5}, {"ltm_write_threshold_bits": 20.0},
                {"ltm_write_rule": "topk", "ltm_write_topk": 4})
    rows = write_rule_sweep(run_dir, settings, preset="smoke", items_per_distance=2)
    assert [r["label"] for r in rows] == ["surprisal > 4.5 bits", "surprisal > 20 bits", "top 4 per chunk"]
    assert rows[0]["routed_token_ratio"] > 0.9 and rows[1]["routed_token_ratio"] == 0.0   # 3 steps: ~15.6 bits a token
    assert rows[2]["routed_token_ratio"] == pytest.approx(4 / 64, abs=0.01)       # 4 per 64-token chunk
    for r in rows:
        assert 0 < r["bpc"] < 20 and r["in_window_n"] == 2 and r["beyond_window_n"] == 2
        assert r["trained_rule"] == "surprisal > 4.5 bits"
    # fewer writes, longer lives (a 3-step model writes nearly every token at 4.5 bits)
    assert rows[2]["lifetime_median"] > rows[0]["lifetime_median"] or np.isnan(rows[2]["lifetime_median"])
    from revena_lib.evaluation.ltm_analysis import sweep_figure

    assert len(sweep_figure(rows).axes) == 4
    # the loaded model's own rule is restored: a second sweep of the first setting gives the same numbers
    again = write_rule_sweep(run_dir, settings[:1], preset="smoke", items_per_distance=2)
    assert again[0]["bpc"] == pytest.approx(rows[0]["bpc"]) and again[0]["routed_token_ratio"] == rows[0]["routed_token_ratio"]
