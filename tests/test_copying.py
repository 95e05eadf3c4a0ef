"""The positive control (evaluation/copying.py), the copying recipes (training/recipes.py) and the repeated-passage
rows of the training mix (data/recall_mix.py). CPU, seconds."""

import numpy as np
import pytest
import torch

from revena_lib.arms import arm_preset
from revena_lib.evaluation.copying import (TRAIN_FORMAT, attention_patterns, copy_probe, induction_attention,
                                           induction_from_patterns, train_format_items)
from revena_lib.evaluation.induction import repeated_spans
from revena_lib.models import build_model


@pytest.mark.parametrize("arm,smear_key,qk_conv,sink", [("baseline", False, 0, False), ("with_ltm", False, 0, False),
                                                         ("reservoir", False, 0, False), ("baseline", True, 0, False),
                                                         ("reservoir", True, 0, False), ("baseline", False, 2, False),
                                                         ("with_ltm", False, 3, False), ("baseline", False, 2, True)])
def test_attention_patterns_reproduce_the_models_own_attention(arm, smear_key, qk_conv, sink):
    """pattern @ v must equal what each layer's attention hands its output projection (RoPE, smeared keys or
    qk_conv's mixed keys and queries, attention sinks, mask and scale right)."""
    torch.manual_seed(0)
    cfg = arm_preset("smoke", arm).model
    cfg.vocab_size, cfg.smear_key, cfg.qk_conv, cfg.attn_sink = 300, smear_key, qk_conv, sink
    model = build_model(cfg).eval()
    with torch.no_grad():   # sharpen the attention so a wrong mask or rotation cannot hide in near-uniform weights
        for block in model.blocks:
            block.attn.c_attn.weight.mul_(8)
            if smear_key:
                block.attn.smear_logit.copy_(torch.linspace(-3.0, 3.0, cfg.n_head))
            for mix in (block.attn.key_mix, block.attn.query_mix):
                if mix is not None:
                    mix.copy_(torch.randn(mix.shape))
            if sink:
                block.attn.sink_logit.copy_(torch.linspace(-1.0, 3.0, cfg.n_head))
    seqs = repeated_spans(300, 0, n_seqs=3, span_len=12, seed=1)                 # (3, 25)
    qkv, heads_out = [], []
    hooks = [h for b in model.blocks for h in (
        b.attn.c_attn.register_forward_hook(lambda m, i, o: qkv.append(o.detach())),
        b.attn.c_proj.register_forward_hook(lambda m, i, o: heads_out.append(i[0].detach())))]
    with torch.no_grad():
        model(seqs)
    for h in hooks:
        h.remove()
    patterns = attention_patterns(model, seqs)
    N, T = seqs.shape
    H, D = cfg.n_head, cfg.n_embd // cfg.n_head
    assert len(patterns) == cfg.n_layer and patterns[0].shape == (N, H, T, T)
    for layer, pattern in enumerate(patterns):
        v = qkv[layer][:, :T, 2 * cfg.n_embd:].reshape(N, T, H, D).transpose(1, 2)       # (N, H, T, D)
        expected = (pattern @ v).transpose(1, 2).reshape(N, T, H * D)
        assert torch.allclose(heads_out[layer][:, :T], expected, atol=1e-5), (arm, layer)
        total = pattern.sum(-1)                                                         # (N, H, T)
        assert torch.allclose(total, torch.ones(N, H, T)) if not sink else ((total < 1) & (total > 0)).all()
        assert (pattern.triu(1) == 0).all()                                             # causal


def test_induction_from_patterns_scores_the_token_after_the_earlier_occurrence():
    L = 5
    T = 1 + 2 * L
    induction = torch.zeros(1, 2, T, T)
    previous = torch.zeros(1, 2, T, T)
    for t in range(T):
        previous[0, :, t, max(t - 1, 0)] = 1.0
        induction[0, :, t, t - L + 1 if t > L else max(t - 1, 0)] = 1.0
    scores = induction_from_patterns([induction, previous], L)                         # (2 layers, 2 heads)
    assert scores[0].tolist() == [1.0, 1.0] and scores[1].tolist() == [0.0, 0.0]


def test_induction_attention_of_an_untrained_model_is_near_uniform_and_the_recursive_family_has_none():
    torch.manual_seed(0)
    model = build_model(arm_preset("smoke", "baseline").model).eval()
    heads = induction_attention(model, eot=50256, span_len=24, n_seqs=4)
    assert heads.shape == (2, 2) and (heads > 0).all() and (heads < 0.1).all()
    with pytest.raises(ValueError, match="must fit twice in one chunk"):
        induction_attention(model, eot=50256, span_len=40)
    recursive = build_model(arm_preset("smoke", "recursive").model).eval()
    assert induction_attention(recursive, eot=50256, n_seqs=2) is None


def test_training_format_items_ask_the_training_mixs_own_facts(smoke_data):
    from revena_lib.data.splits import load_split

    val = load_split("val")
    tok = val.tokenizer
    items = train_format_items(val, (32, 96), 3, seed=5, tokenizer=tok)
    assert [it.distance for it in items] == [32] * 3 + [96] * 3
    assert items[0].tokens == train_format_items(val, (32,), 3, seed=5, tokenizer=tok)[0].tokens   # deterministic
    for it in items:
        start, n = it.fact_answer_span()
        assert it.tokens[start:start + n] == it.answer_tokens                       # the same number, copied
        text = tok.decode(it.tokens[it.fact_start:it.fact_end])
        assert text.endswith(it.answer_text + ".")                                  # " The code of Harbor is 703."
        assert it.answer_text.strip().isdigit() and len(it.answer_text.strip()) in (3, 4)
        assert it.answer_start - len(it.tokens[it.fact_end:it.answer_start]) == it.fact_end
        assert tok.eot_token not in it.tokens[1:]
        assert it.kind == TRAIN_FORMAT


def test_copy_probe_reports_every_measure(smoke_data):
    from revena_lib.data.splits import load_split

    torch.manual_seed(0)
    preset = arm_preset("smoke", "baseline")
    val = load_split("val")
    preset.model.vocab_size = val.vocab_size
    model = build_model(preset.model)
    probe = copy_probe(model, val, distances=(32,), items_per_distance=2, induction_seqs=2)
    assert model.training   # left as it was found
    for kind in ("passkey", "no_fact", TRAIN_FORMAT):
        assert probe[kind]["32"]["items"] == 2 and probe[kind]["32"]["exact"] == 0.0   # untrained: no copying
        assert probe[kind]["32"]["log2p"] < 0
    assert np.array(probe["induction_attention"]).shape == (2, 2)
    assert abs(probe["induction"]["score_nats"]) < 1.0


def test_recipes_set_their_fields_and_name_themselves():
    from revena_lib.training.recipes import RECIPES, RecipeError, apply_recipe

    preset = apply_recipe("cpu", "sparse_facts")
    assert preset.train.recipe == "sparse_facts" and preset.train.recall_facts_per_row == 2
    assert preset.train.seq_len == 1024 and preset.model.n_layer == 4          # the rest is the preset's
    assert apply_recipe("cpu", "repeats").train.recall_repeats == 0.2
    with pytest.raises(RecipeError, match="unknown recipe 'nope': choose one of " + ", ".join(RECIPES)):
        apply_recipe("cpu", "nope")


def written_runs(row: np.ndarray, new: np.ndarray) -> list[np.ndarray]:
    """The runs of consecutive positions where planting changed ``row`` into ``new``."""
    changed = np.flatnonzero(new != row)
    return np.split(changed, np.flatnonzero(np.diff(changed) > 1) + 1)


def pair_gap(row: np.ndarray, new: np.ndarray) -> int:
    """Tokens between the end of the first written piece and the start of the last: one pair's distance."""
    runs = written_runs(row, new)
    return int(runs[-1][0] - runs[0][-1] - 1)


def test_repeated_passages_are_the_rows_own_text_written_twice(smoke_data):
    from revena_lib.data.recall_mix import PASSAGE_TOKENS, plant_facts
    from revena_lib.data.splits import load_split

    split = load_split("train")
    tok = split.tokenizer
    rows = np.stack([np.asarray(split.tokens[s:s + 257]) for s in (100, 2000, 5000, 9000)]).astype(np.int64)
    planted = plant_facts(rows, seed=3, step=7, share=0.0, facts_per_row=2, tokenizer=tok, repeats_share=1.0)
    for row, new in zip(rows, planted):
        changed = np.flatnonzero(row != new)
        assert len(changed) > 0
        # every changed token belongs to a passage of the original row that now appears a second time
        original = row.tolist()
        for run in written_runs(row, new):
            piece = new[run[0]:run[-1] + 1].tolist()
            assert any(original[s:s + len(piece)] == piece for s in range(len(original) - len(piece) + 1))
        assert len(changed) <= 2 * 2 * PASSAGE_TOKENS[1]
    # a zero share changes nothing the other shares draw: the landed mix's rows stay what they were
    landed = plant_facts(rows, seed=3, step=7, share=0.5, facts_per_row=2, tokenizer=tok, induction_share=0.2)
    same = plant_facts(rows, seed=3, step=7, share=0.5, facts_per_row=2, tokenizer=tok, induction_share=0.2,
                       repeats_share=0.0)
    assert (landed == same).all()


def test_planted_numbers_take_the_lengths_asked_for_and_never_evaluations_five_digits(smoke_data):
    from revena_lib.data.recall_mix import _fact_tokens, plant_facts
    from revena_lib.data.splits import load_split

    tok = load_split("train").tokenizer
    rng = np.random.default_rng(0)
    lengths = {sum(c.isdigit() for c in tok.decode(_fact_tokens(rng, tok, (2, 6, 8))[1])) for _ in range(60)}
    assert lengths == {2, 6, 8}
    rows = np.zeros((2, 129), dtype=np.int64)
    with pytest.raises(ValueError, match=r"recall_fact_digits=\(4, 5\): .* never 5 digits"):
        plant_facts(rows, seed=1, step=0, share=1.0, facts_per_row=1, tokenizer=tok, digits=(4, 5))


def test_text_cued_facts_are_the_rows_own_text_then_a_number_written_twice(smoke_data):
    """recall_text_cues: a fact's cue is 3-8 tokens of the row's own text (no template says a number follows)."""
    from revena_lib.data.recall_mix import TEMPLATES, TEXT_CUE_TOKENS, plant_facts
    from revena_lib.data.splits import load_split

    split = load_split("train")
    tok = split.tokenizer
    rows = np.stack([np.asarray(split.tokens[s:s + 257]) for s in (100, 2000, 5000, 9000)]).astype(np.int64)
    planted = plant_facts(rows, seed=3, step=7, share=1.0, facts_per_row=2, tokenizer=tok, text_cues=1.0)
    templated = plant_facts(rows, seed=3, step=7, share=1.0, facts_per_row=2, tokenizer=tok)
    for row, new, old in zip(rows, planted, templated):
        text = tok.decode(new.tolist())
        assert not any(t.split("{")[0] in text for t in TEMPLATES if t.split("{")[0].strip())   # no template cue
        assert any(t.split("{")[0] in tok.decode(old.tolist()) for t in TEMPLATES)
        changed = np.flatnonzero(row != new)
        pieces = [new[r[0]:r[-1] + 1].tolist() for r in written_runs(row, new)]
        assert len(pieces) >= 2 and all(any(c.isdigit() for c in tok.decode(p)) for p in pieces)
        for piece in pieces:   # each written piece (cue, ' ', digits, '.') appears twice in the row
            n = len(piece)
            assert sum(new[s:s + n].tolist() == piece for s in range(len(new) - n + 1)) >= 2
        assert len(changed) <= 2 * 2 * (TEXT_CUE_TOKENS[1] + 10)
    # off (0.0) draws nothing more: the template rows stay what they were
    assert (plant_facts(rows, seed=3, step=7, share=1.0, facts_per_row=2, tokenizer=tok, text_cues=0.0)
            == templated).all()


def test_in_place_text_cues_occur_once_before_their_question_and_off_changes_nothing(smoke_data):
    """recall_cue_in_place: the cue is the row's own text where the fact is written (only the answer after it is
    written over), so before the question the cue occurs once, followed by the number; a cue copied from elsewhere
    occurs twice there, once followed by its original text."""
    from revena_lib.data.recall_mix import DIGITS, _text_cue_fact, _text_cue_in_place, plant_row
    from revena_lib.data.splits import load_split

    split = load_split("train")
    tok = split.tokenizer
    row = np.asarray(split.tokens[300:557]).astype(np.int64)

    def find(seq, piece):
        return [s for s in range(len(seq) - len(piece) + 1) if seq[s:s + len(piece)].tolist() == list(piece)]

    occurrences = {False: [], True: []}
    for in_place in occurrences:
        for seed in range(20):
            new = plant_row(row, np.random.default_rng(seed), 1, tok, text_cues=1.0, cue_in_place=in_place)
            rng = np.random.default_rng(seed)     # the same draws as plant_row's first fact: its cue and answer
            rng.random()
            if in_place:
                n_cue, answer = _text_cue_in_place(rng, tok, DIGITS)
            else:
                cue, answer = _text_cue_fact(rng, row, tok, DIGITS)
                n_cue = len(cue)
            question = find(new, answer)[-1] - n_cue          # the question: its cue, then the answer
            cue = new[question:question + n_cue].tolist()
            found = find(new[:question], cue)
            occurrences[in_place].append(len(found))
            if in_place:   # at the fact, only the answer was written, right after text that was already there
                fact = found[0]
                assert (new[fact:fact + n_cue] == row[fact:fact + n_cue]).all()
                assert new[fact + n_cue:fact + n_cue + len(answer)].tolist() == answer
                assert (new[:question] != row[:question]).sum() <= len(answer)
    assert all(n == 1 for n in occurrences[True])
    # copied, the cue's original text is also there in most rows (12 of these 20; else it lies after the question or
    # under a written piece)
    assert sum(n >= 2 for n in occurrences[False]) >= 8
    # off draws exactly what it drew before the option existed; without text cues the option changes nothing
    assert all((plant_row(row, np.random.default_rng(s), 2, tok, text_cues=0.5) ==
                plant_row(row, np.random.default_rng(s), 2, tok, text_cues=0.5, cue_in_place=False)).all()
               for s in range(5))
    assert all((plant_row(row, np.random.default_rng(s), 2, tok) ==
                plant_row(row, np.random.default_rng(s), 2, tok, cue_in_place=True)).all() for s in range(5))


@pytest.mark.parametrize("kind", [{}, {"random_spans": True}])
def test_near_facts_are_asked_within_96_tokens_and_off_changes_nothing(smoke_data, kind):
    """recall_near: a planted fact's (or random span's) question starts at most NEAR_DISTANCE tokens after the fact
    ends."""
    from revena_lib.data.recall_mix import NEAR_DISTANCE, plant_row
    from revena_lib.data.splits import load_split

    split = load_split("train")
    tok = split.tokenizer
    row = np.asarray(split.tokens[0:1025]).astype(np.int64)
    gaps = {0.0: [], 1.0: []}
    for near in gaps:
        for seed in range(12):
            gaps[near].append(pair_gap(row, plant_row(row, np.random.default_rng(seed), 1, tok, near=near, **kind)))
    assert max(gaps[1.0]) <= NEAR_DISTANCE < max(gaps[0.0])
    again = [plant_row(row, np.random.default_rng(s), 3, tok, **kind) for s in range(4)]
    assert all((a == plant_row(row, np.random.default_rng(s), 3, tok, near=0.0, **kind)).all()
               for s, a in enumerate(again))


def test_uniform_distances_ask_far_targets_as_often_as_near_ones_and_a_bad_law_is_refused(smoke_data):
    """recall_distance="uniform": distances 8..96 drawn flat, so the far half (52-96) is about half the draws; the
    log-uniform default puts about a quarter there."""
    from revena_lib.data.recall_mix import plant_row
    from revena_lib.data.splits import load_split

    split = load_split("train")
    tok = split.tokenizer
    row = np.asarray(split.tokens[0:1025]).astype(np.int64)
    far = {}
    for law in ("log-uniform", "uniform"):
        gaps = []
        for seed in range(200):
            new = plant_row(row, np.random.default_rng(seed), 1, tok, random_spans=True, near=1.0, distance_law=law)
            gaps.append(pair_gap(row, new))
        far[law] = np.mean(np.asarray(gaps) >= 52)
    assert far["log-uniform"] < 0.35 < 0.4 < far["uniform"] < 0.6
    with pytest.raises(ValueError, match="recall_distance='flat' must be one of log-uniform, uniform"):
        plant_row(row, np.random.default_rng(0), 1, tok, distance_law="flat")
