"""Sessions (evaluation/session.py) and the models' state protocol: pieces equal the whole for every arm, reset
clears everything, sessions never share state, generation is incremental, and a trained run loads in one line."""

import dataclasses
import shutil

import numpy as np
import pytest
import torch

from revena_lib.arms import ARMS, arm_preset
from revena_lib.models import build_model
from revena_lib.evaluation.session import Session, SessionError, from_checkpoint, load_run
from revena_lib.data.tokenizer import gpt2_tokenizer

# Every arm except the random-write ablation: its writes draw from torch's global generator, so a different split
# into calls draws differently (by design, not a state leak).
STATEFUL_ARMS = [name for name, arm in ARMS.items() if arm.overrides.get("ltm_write_rule") != "random"]


def model_for(arm: str, **overrides):
    cfg = arm_preset("smoke", arm).model
    # an LTM that writes and hits a lot, so its state matters in every test
    cfg = dataclasses.replace(cfg, ltm_write_threshold_bits=2.0, ltm_similarity_threshold=0.0, **overrides)
    torch.manual_seed(0)
    return build_model(cfg).eval()


@pytest.fixture(scope="module")
def enc():
    return gpt2_tokenizer()


@pytest.mark.parametrize("arm", STATEFUL_ARMS)
def test_feeding_in_pieces_gives_the_surprisal_of_one_call(arm, enc):
    model = model_for(arm)
    idx = torch.randint(0, model.cfg.vocab_size, (1, 300), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole = model(idx).surprisal_bits[0]
    session = Session(model, enc)
    pieces = []
    for a, b in [(0, 5), (5, 70), (70, 71), (71, 128), (128, 200), (200, 300)]:   # aligned and unaligned cuts
        pieces += session.feed(idx[0, a:b].tolist()).surprisal_bits
    torch.testing.assert_close(torch.tensor(pieces), whole, rtol=1e-4, atol=1e-4)
    # and the state really matters: without a carry the later pieces are scored differently
    fresh = Session(model, enc, use_carry=False)
    fresh.feed(idx[0, :128].tolist())
    cut = torch.tensor(fresh.feed(idx[0, 128:200].tolist()).surprisal_bits)
    assert not torch.allclose(cut, whole[128:200], atol=1e-3)


def test_state_calls_match_one_call_at_chunk_boundaries():
    model = model_for("with_ltm")
    idx = torch.randint(0, model.cfg.vocab_size, (2, 256), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        whole = model(idx)
        first = model(idx[:, :128], state=model.new_state(2))
        kept = first.state.memory.kv.clone()
        second = model(idx[:, 128:], state=first.state)
    torch.testing.assert_close(torch.cat([first.logits, second.logits], 1), whole.logits, rtol=1e-4, atol=1e-4)
    assert torch.equal(first.state.memory.kv, kept)            # the state passed in is never changed
    assert second.state.position == 256 and first.state.position == 128
    with pytest.raises(ValueError, match="chunk boundary"):
        with torch.no_grad():
            model(idx[:, :10], state=model(idx[:, :10], state=model.new_state(2)).state)


@pytest.mark.parametrize("arm", ["with_ltm", "reservoir"])
def test_reset_clears_everything(arm, enc):
    model = model_for(arm)
    session = Session(model, enc)
    empty = session.state_summary()
    text = " The pass key is 48213. Remember it. " * 20
    first = session.feed(text, start_document=True).surprisal_bits
    held = session.state_summary()
    assert held != empty and held["tokens_seen"] > 0
    if arm == "with_ltm":
        assert held["ltm_entries"] > 0 and session.ltm_entries()
    else:
        assert max(held["reservoir_state_norm"]) > 0
    session.reset_carry()
    assert session.state_summary() == empty and session.ltm_entries() == [] and session.history == []
    assert session.feed(text, start_document=True).surprisal_bits == pytest.approx(first, abs=1e-5)


def test_two_sessions_of_one_model_share_nothing(enc):
    model = model_for("with_ltm")
    a, b = Session(model, enc), Session(model, enc)
    reference = Session(model, enc).feed(" Fellow citizens of the Senate", start_document=True).surprisal_bits
    a.feed(" The pass key is 48213." * 30, start_document=True)   # a holds a lot now
    assert b.state_summary()["tokens_seen"] == 0
    assert b.feed(" Fellow citizens of the Senate", start_document=True).surprisal_bits == pytest.approx(reference)


def test_generation_is_greedy_and_incremental(enc):
    model = model_for("with_ltm")
    prompt = enc.encode(" Fellow citizens of the Senate and of the House") * 9   # crosses chunk boundaries
    session = Session(model, enc)
    text = session.generate([enc.eot_token] + prompt, max_new_tokens=12, stop_at_end_of_text=False)
    tokens = [enc.eot_token] + prompt
    for _ in range(12):   # the same greedy decode by recomputing the whole history each time
        with torch.no_grad():
            tokens.append(int(model(torch.tensor([tokens])).logits[0, -1].argmax()))
    assert enc.decode(tokens[-12:]) == text
    assert session.state_summary()["tokens_seen"] == len(tokens)
    sampled = [Session(model, enc).generate(" Fellow", 8, temperature=1.0, top_k=50, seed=3) for _ in range(2)]
    assert sampled[0] == sampled[1]


def test_bad_input_is_refused_clearly(enc):
    session = Session(model_for("baseline"), enc)
    with pytest.raises(SessionError, match="vocabulary"):
        session.feed([10 ** 9])
    with pytest.raises(SessionError, match=">= 0"):
        session.generate("x", max_new_tokens=-1)
    with pytest.raises(SessionError, match="not a finished run"):
        load_run("/nonexistent/run")


def test_a_trained_run_loads_in_one_line(smoke_home, tmp_path, monkeypatch):
    from revena_lib.training.loop import train

    shutil.copytree(smoke_home / "data", tmp_path / "data")
    monkeypatch.setenv("REVENA_HOME", str(tmp_path))
    run_dir = train("smoke", arm="with_ltm", steps=2, progress=False, device="cpu")
    run = from_checkpoint(run_dir / "checkpoint.pt", use_carry=False)
    assert run.config["arm"] == "with_ltm"
    session = run.session()
    session.feed("Fellow citizens", start_document=True)
    assert session.feed(" of the Senate").summary["tokens_seen"] == len(session.history)
    assert session.history == run.tokenizer.encode(" of the Senate")   # no carry: each call starts fresh


def test_multiturn_items_cut_a_recall_item_into_calls_and_carried_equals_one_call(smoke_data, enc):
    from revena_lib.data.splits import load_split
    from revena_lib.evaluation.multiturn import (MultiTurnError, make_multiturn_items, score_item, score_multiturn,
                                                 summarise)
    from revena_lib.evaluation.recall import make_recall_items
    from revena_lib.evaluation.session import LoadedRun

    val = load_split("val")
    items = make_multiturn_items(val, turn_counts=(3, 5), filler_tokens_per_turn=20, items_per_count=2, seed=7)
    assert [i.n_turns for i in items] == [3, 3, 5, 5]
    flat = [r for r in make_recall_items(val, (20, 60), 2, 7) if r.kind == "passkey"]
    for item, whole in zip(items, flat):
        assert sum(item.turns, []) == whole.tokens                            # the calls are the item, cut
        assert all(len(t) == 20 for t in item.turns[1:-1])
        assert enc.decode(item.turns[-1][-item.answer_len:]) == whole.answer_text
    model = model_for("with_ltm")
    session = Session(model, enc)
    carried = score_item(session, items[2], carried=True)
    with torch.no_grad():   # carried across calls = the whole item in one call
        logp = torch.log_softmax(model(torch.tensor([flat[2].tokens])).logits[0].double(), -1)
    a, n = flat[2].answer_start, flat[2].answer_len
    one_call = float(logp[a - 1:a - 1 + n].gather(-1, torch.tensor(flat[2].answer_tokens)[:, None]).mean()) / np.log(2)
    assert carried["answer_log2p"] == pytest.approx(one_call, abs=1e-3)
    reset = score_item(session, items[2], carried=False)
    assert reset["answer_log2p"] != pytest.approx(carried["answer_log2p"], abs=1e-3)
    assert reset["state_after"]["tokens_seen"] == len(items[2].turns[-1])   # only the last call survived
    rows = score_multiturn({"with_ltm": [LoadedRun(model, enc, {"seed": 1}, None)]}, items)
    summary = summarise(rows, samples=50)
    assert {(r["turns"], r["mode"]) for r in summary} == {(3, "carried"), (3, "reset"), (5, "carried"), (5, "reset")}
    with pytest.raises(MultiTurnError, match=">= 3"):
        make_multiturn_items(val, turn_counts=(2,), filler_tokens_per_turn=20, items_per_count=1, seed=7)
