"""Recall items: deterministic, answer and fact spans where they claim to be, exact distances, paired controls;
scoring: an oracle scores 1, a wrong model 0, padding and batching change nothing. Smoke data, CPU, seconds."""

import numpy as np
import pytest
import torch
from torch import nn

from revena_lib.config import get_preset
from revena_lib.evaluation.recall import (PASSKEY_QUESTION, RecallError, RecallItem, in_memory_recall,
                                          make_recall_items, score_recall_items, summarize_recall)
from revena_lib.data.tokenizer import EOT_ID, get_tokenizer


@pytest.fixture
def val(smoke_data):
    from revena_lib.data.splits import load_split

    return load_split("val")


class OracleModel(nn.Module):
    """Logits that put all mass on the true next token (it peeks at idx[t+1]); ``wrong=True`` on another token."""

    def __init__(self, wrong=False, vocab=50257):
        super().__init__()
        self.cfg = get_preset("smoke").model
        self.weight = nn.Parameter(torch.zeros(1))
        self.wrong, self.vocab = wrong, vocab

    def forward(self, idx, targets=None, introspect=False, memory_read=True):
        from types import SimpleNamespace

        B, T = idx.shape
        nxt = torch.cat([idx[:, 1:], idx[:, -1:]], dim=1)                    # (B, T)
        if self.wrong:
            nxt = (nxt + 1) % self.vocab
        logits = torch.full((B, T, self.vocab), -30.0)
        logits.scatter_(2, nxt[..., None], 30.0)
        return SimpleNamespace(logits=logits, loss=None, surprisal_bits=torch.zeros(B, T), stats={}, trace=None)


def test_items_are_deterministic_per_seed(val):
    a = make_recall_items(val, (32, 256), 3, seed=7)
    b = make_recall_items(val, (32, 256), 3, seed=7)
    c = make_recall_items(val, (32, 256), 3, seed=8)
    assert [it.tokens for it in a] == [it.tokens for it in b]
    assert [it.tokens for it in a] != [it.tokens for it in c]
    # items of one distance do not depend on which other distances were asked for
    only_256 = make_recall_items(val, (256,), 3, seed=7)
    assert [it.tokens for it in only_256] == [it.tokens for it in a if it.distance == 256]


def test_answer_fact_and_distance_are_where_they_claim(val):
    enc = get_tokenizer()
    items = make_recall_items(val, (0, 32, 256), 4, seed=2024)
    assert len(items) == 3 * 4 * 4
    assert [it.kind for it in items[:4]] == ["passkey", "control", "no_fact", "wrong_key"]
    question = enc.encode(PASSKEY_QUESTION)
    for it in items:
        if it.kind in ("no_fact", "wrong_key"):
            continue   # checked in test_controls_that_could_falsify_the_memory
        assert it.tokens[0] == EOT_ID
        assert enc.decode(it.answer_tokens) == it.answer_text
        assert it.answer_start + it.answer_len == len(it.tokens)           # the answer ends the item
        fact = it.tokens[it.fact_start:it.fact_end]
        assert enc.decode(it.answer_tokens) in enc.decode(fact)             # the fact holds the answer
        assert it.answer_tokens == fact[len(fact) - len(it.answer_tokens) - (4 if it.kind == "passkey" else 1):
                                        len(fact) - (4 if it.kind == "passkey" else 1)]
        question_start = it.fact_end + it.distance
        if it.kind == "passkey":
            assert it.tokens[question_start:it.answer_start] == question
            assert it.answer_text.strip().isdigit() and len(it.answer_text.strip()) == 5
        else:
            assert enc.decode(it.tokens[question_start:it.answer_start]).startswith(" The color of the")
        # the filler is real text: a contiguous slice of the document it came from
        filler = it.tokens[it.fact_end:question_start]
        assert len(filler) == it.distance
        if it.doc_index >= 0 and it.distance:
            doc = np.asarray(val.document(it.doc_index)).tolist()
            starts = [k for k in range(len(doc)) if doc[k:k + len(filler)] == filler]
            assert starts, "filler is not a slice of its document"


def test_controls_that_could_falsify_the_memory(val):
    """no_fact: the passkey item without its fact; wrong_key: another number planted, the passkey's asked."""
    enc = get_tokenizer()
    items = make_recall_items(val, (32, 64), 3, seed=5)
    for passkey, _, no_fact, wrong in zip(*(items[k::4] for k in range(4))):
        assert (no_fact.kind, wrong.kind) == ("no_fact", "wrong_key")
        assert no_fact.fact_start == no_fact.fact_end and no_fact.distance == passkey.distance
        assert no_fact.tokens == passkey.tokens[:passkey.fact_start] + passkey.tokens[passkey.fact_end:]
        assert wrong.answer_tokens == passkey.answer_tokens and wrong.distance == passkey.distance
        planted = enc.decode(wrong.tokens[wrong.fact_start:wrong.fact_end])
        other = planted.split("is ")[1].split(".")[0]
        assert other.isdigit() and all(a != b for a, b in zip(other, passkey.answer_text.strip()))
        assert wrong.tokens[wrong.fact_end:] == passkey.tokens[passkey.fact_end:]


def test_control_is_paired_with_the_passkey_item(val):
    items = make_recall_items(val, (64,), 2, seed=1)
    for passkey, control in zip(items[0::4], items[1::4]):
        assert (passkey.kind, control.kind) == ("passkey", "control")
        assert passkey.tokens[:passkey.fact_start] == control.tokens[:control.fact_start]
        assert passkey.tokens[passkey.fact_end:passkey.fact_end + 64] == control.tokens[control.fact_end:control.fact_end + 64]


def test_hand_made_item_and_bad_span():
    enc = get_tokenizer()
    context = enc.encode(" The code is 4417. Some text. The code is")
    answer = enc.encode(" 4417")
    item = RecallItem(tokens=[EOT_ID] + context + answer, answer_start=1 + len(context), answer_len=len(answer),
                      distance=3, kind="passkey")
    assert item.answer_tokens == answer
    [oracle] = score_recall_items(OracleModel(), [item])
    assert oracle["exact_match"] == 1 and oracle["answer_logprob_bits"] == pytest.approx(0.0, abs=1e-6)
    assert oracle["predicted_text"] == " 4417"
    with pytest.raises(RecallError, match="answer span"):
        RecallItem(tokens=[1, 2, 3], answer_start=2, answer_len=5, distance=0)


def test_oracle_scores_one_and_wrong_model_zero(val):
    items = make_recall_items(val, (32, 256), 2, seed=3)
    good = score_recall_items(OracleModel(), items, batch_size=3)
    bad = score_recall_items(OracleModel(wrong=True), items, batch_size=3)
    assert all(r["exact_match"] == 1 for r in good)
    assert all(r["answer_logprob_bits"] == pytest.approx(0.0, abs=1e-6) for r in good)
    assert all(r["exact_match"] == 0 and r["answer_logprob_bits"] < -50 for r in bad)
    summary = summarize_recall(good)
    assert summary["long_range_recall"] == 1.0 and summary["control_recall"] == 1.0
    assert set(summary["recall_by_distance"]) == {"32", "256"}


@pytest.mark.parametrize("use_ltm", [False, True])
def test_tiny_model_scores_are_sane_and_batching_changes_nothing(val, use_ltm):
    from revena_lib.models.transformer import RevenaLM

    torch.manual_seed(0)
    cfg = get_preset("smoke").model
    cfg.use_ltm = use_ltm
    model = RevenaLM(cfg).eval()
    items = make_recall_items(val, (32, 256), 2, seed=5)
    batched = score_recall_items(model, items, batch_size=4)
    single = score_recall_items(model, items, batch_size=1)
    for a, b, it in zip(batched, single, items):
        assert a["distance"] == it.distance and a["kind"] == it.kind
        assert a["exact_match"] in (0, 1)
        assert -40 < a["answer_logprob_bits"] <= 0
        assert a["answer_logprob_bits"] == pytest.approx(b["answer_logprob_bits"], abs=1e-3)  # right-padding is inert
        assert 0.0 <= a["memory_hit_rate"] <= 1.0
        if not use_ltm:
            assert a["memory_hit_rate"] == 0.0 and a["answer_hit"] == 0


def test_fact_answer_span_points_at_the_answer_inside_the_fact(val):
    enc = get_tokenizer()
    items = make_recall_items(val, (32, 256), 2, seed=11)
    for it in items:
        span = it.fact_answer_span()
        if it.kind == "no_fact":
            assert span is None
            continue
        start, n = span
        assert it.fact_start < start and start + n < it.fact_end
        planted = it.tokens[start:start + n]
        if it.kind == "wrong_key":   # the other number planted there, not the asked one
            assert enc.decode(planted).strip().isdigit() and planted != it.answer_tokens
        else:
            assert planted == it.answer_tokens
    # hand-made: found by searching the fact span
    context = enc.encode(" The code is 4417. Some text. The code is")
    answer = enc.encode(" 4417")
    item = RecallItem(tokens=[EOT_ID] + context + answer, answer_start=1 + len(context), answer_len=len(answer),
                      distance=3, kind="passkey", fact_start=1, fact_end=1 + len(enc.encode(" The code is 4417.")))
    start, n = item.fact_answer_span()
    assert item.tokens[start:start + n] == answer and start == 1 + len(enc.encode(" The code is"))


class TracedModel(OracleModel):
    """The oracle plus a made-up LTM trace: every top hit points at ``hit_at(item)``, the listed positions routed."""

    def __init__(self, item, hit_at, routed_positions, capacity=256):
        super().__init__()
        self.cfg = get_preset("smoke").model
        self.cfg.use_ltm, self.cfg.ltm_capacity = True, capacity
        self.item, self.hit_at, self.routed_positions = item, hit_at, routed_positions

    def forward(self, idx, targets=None, introspect=False, memory_read=True):
        from revena_lib.models.ltm import TOP_HITS, MemoryTrace

        out = super().forward(idx)
        B, T = idx.shape
        routed = torch.zeros(B, T, dtype=torch.bool)
        routed[:, self.routed_positions] = True
        top = torch.full((B, T, TOP_HITS), -1)
        if isinstance(self.hit_at, dict):   # {query position: hit position}
            for t, p in self.hit_at.items():
                top[:, t, 0] = p
        else:
            top[:, :, 0] = self.hit_at
        out.trace = MemoryTrace(torch.zeros(B, T), routed, torch.ones(B, T, dtype=torch.long), top, top.clone(),
                                torch.zeros(B, T, TOP_HITS), torch.zeros(B, 1), torch.zeros(B, 1))
        return out


def test_useful_hit_counts_only_the_answer_tokens_and_in_memory_follows_the_fifo(val):
    item = make_recall_items(val, (192,), 1, seed=4)[0]
    start, n = item.fact_answer_span()
    question_word = item.fact_start + 1                       # inside the fact, not the answer
    [near] = score_recall_items(TracedModel(item, question_word, []), [item])
    assert near["answer_hit_in_fact"] == 1 and near["useful_hit"] == 0
    assert near["answer_written"] == 0 and near["answer_in_memory"] == 0
    answer_positions = list(range(start, start + n))
    [good] = score_recall_items(TracedModel(item, start, answer_positions), [item])
    assert good["answer_hit_in_fact"] == 1 and good["useful_hit"] == 1
    assert good["aligned_hit"] == 1                            # the first answer token's query hit its own key
    # each answer position hits the NEXT answer token's key: on the answer (useful), but never its own (not aligned)
    swapped = {item.answer_start - 1 + j: start + (j + 1) % n for j in range(item.answer_len)}
    [shifted] = score_recall_items(TracedModel(item, swapped, answer_positions), [item])
    assert n > 1 and shifted["useful_hit"] == 1 and shifted["aligned_hit"] == 0 and shifted["same_token_hit"] == 0
    # each answer position hits the fact's copy of the token it sits on (j-1): a lookup by identity
    own = {item.answer_start - 1 + j: start + j - 1 for j in range(1, item.answer_len)}
    [same] = score_recall_items(TracedModel(item, own, answer_positions), [item])
    assert same["same_token_hit"] == 1 and same["aligned_hit"] == 0 and same["useful_hit"] == 1
    assert good["answer_written"] == 1 and good["answer_in_memory"] == 1
    # written, then pushed out of an n-entry FIFO by n later writes before the question's chunk
    later = [item.fact_end + 70 + k for k in range(n)]
    [evicted] = score_recall_items(TracedModel(item, start, answer_positions + later, capacity=n), [item])
    assert evicted["answer_written"] == 1 and evicted["answer_in_memory"] == 0
    table = in_memory_recall([[good, near], [evicted]])
    assert table["by_distance"]["192"]["in_memory"]["n"] == 1 and table["by_distance"]["192"]["all"]["n"] == 3
    assert table["beyond_window"]["not_in_memory"]["n"] == 2
    # only the first answer token written: some of the answer is held, not all of it
    [first] = score_recall_items(TracedModel(item, start, [start]), [item])
    assert first["answer_any_in_memory"] == 1 and first["answer_in_memory"] == 0 and first["answer_written"] == int(n == 1)
    assert first["answer_tokens_in_memory"] == pytest.approx(1 / item.answer_len)
    assert in_memory_recall([[first]])["by_distance"]["192"]["any_in_memory"]["n"] == 1


def test_more_items_where_they_are_needed_keeps_the_first_ones(val):
    from revena_lib.config import EvalConfig
    from revena_lib.evaluation.scoring import recall_item_counts

    few = make_recall_items(val, (32, 256), 2, seed=3)
    many = make_recall_items(val, (32, 256), {32: 2, 256: 5}, seed=3)
    assert sum(it.distance == 256 for it in many) == 5 * 4 and sum(it.distance == 32 for it in many) == 2 * 4
    assert [it.tokens for it in many if it.distance == 256][:8] == [it.tokens for it in few if it.distance == 256]
    ecfg = EvalConfig(recall_distances=(32, 384, 768), recall_items_per_distance=16, recall_items_beyond_field=200)
    assert recall_item_counts(ecfg, receptive_field=508) == {32: 16, 384: 16, 768: 200}
    assert recall_item_counts(EvalConfig(recall_distances=(32, 768), recall_items_per_distance=16), 508) == {32: 16, 768: 16}
