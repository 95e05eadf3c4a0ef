"""Long-range recall: plant a fact in real validation text, ask for it again D tokens later, score the answer.

Each item is one token sequence that opens with ``<|endoftext|>`` (the documents' BOS, as in training),
then a stretch of real text, the planted fact, exactly ``distance`` tokens of real text (the filler),
the question, and the answer. The answer is scored teacher-forced: exact match means greedy argmax
reproduces every answer token; the graded score is the answer's mean log2-probability per token.
Four kinds, made from the same stretch of text: ``passkey`` (a random 5-digit number: high surprisal, so the LTM
writes it); ``control`` (an ordinary colour word: low surprisal, so a memory that only stores surprising tokens
should not help); and two controls that could falsify a memory: ``no_fact`` (the same question and answer with no
fact planted: what guessing scores) and ``wrong_key`` (a different number planted, the original one asked: a model
that copies scores *below* guessing here, one that knows the answer some other way does not).

    items = make_recall_items(load_split("val"), distances=(32, 256), items_per_distance=4, seed=2024)
    scores = score_recall_items(model, items, batch_size=8)   # list of dicts, one per item
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from revena_lib.data.tokenizer import encode_text, get_tokenizer
from revena_lib.evaluation.memory_stats import in_memory

PASSKEY_QUESTION = " The pass key is"
PASSKEY_TAIL = ". Remember it."
# Controls: the answer is a common colour word, so its surprisal is low and a surprisal-gated memory
# should not store it. Any gain on these comes from the window (or from guessing), not from the LTM.
CONTROL_OBJECTS = ("door", "car", "house", "boat", "coat", "wall")
CONTROL_COLOURS = (" blue", " red", " green", " white", " black", " yellow", " brown")
PREFIX_TOKENS = (16, 48)   # real text before the fact: a random length in this range (inclusive)
KINDS = ("passkey", "control", "no_fact", "wrong_key")


class RecallError(ValueError):
    pass


@dataclass
class RecallItem:
    """One recall question. Only tokens, answer_start, answer_len, distance and kind are needed to score it.

    ``tokens[answer_start : answer_start + answer_len]`` are the answer tokens; the model is asked to
    predict them from ``tokens[:answer_start]`` (and, teacher-forced, the earlier answer tokens).
    ``fact_start``/``fact_end`` delimit the planted fact (``-1`` if unknown); ``distance`` is the
    number of filler tokens between the end of the fact and the start of the question.
    ``fact_answer_start``/``fact_answer_len`` locate the answer's tokens inside the planted fact (for ``wrong_key``:
    the other number planted there), the positions a useful memory hit must point at; ``-1`` (hand-made items):
    found by searching the answer tokens in the fact span (``fact_answer_span``).
    Built by hand:

        enc = get_tokenizer(); context = encode_text(enc, " The code is 4417. Some text. The code is")
        answer = encode_text(enc, " 4417")
        RecallItem(tokens=[enc.eot_token] + context + answer, answer_start=1 + len(context),
                   answer_len=len(answer), distance=3, kind="passkey")
    """

    tokens: list[int]
    answer_start: int
    answer_len: int
    distance: int
    kind: str = "passkey"          # one of KINDS
    answer_text: str = ""
    fact_start: int = -1
    fact_end: int = -1
    doc_index: int = -1            # validation document the real text came from (-1: hand-made or joined)
    fact_answer_start: int = -1    # the answer's tokens inside the planted fact (-1: unknown, searched for)
    fact_answer_len: int = -1

    def __post_init__(self):
        self.tokens = [int(t) for t in self.tokens]
        if self.answer_len < 1 or self.answer_start < 1 or self.answer_start + self.answer_len > len(self.tokens):
            raise RecallError(
                f"RecallItem: answer span [{self.answer_start}, {self.answer_start + self.answer_len}) must lie "
                f"inside the {len(self.tokens)} tokens and start at position >= 1 (something must precede it)"
            )

    @property
    def answer_tokens(self) -> list[int]:
        return self.tokens[self.answer_start:self.answer_start + self.answer_len]

    def fact_answer_span(self) -> tuple[int, int] | None:
        """(start, length) of the answer's tokens inside the planted fact, or None (no fact, or not found).

        Uses ``fact_answer_start``/``fact_answer_len`` when set; otherwise the last occurrence of the answer tokens
        inside ``tokens[fact_start:fact_end]`` (a hand-made fact "The code is 4417." holds its answer once)."""
        if self.fact_answer_start >= 0:
            return self.fact_answer_start, max(1, self.fact_answer_len if self.fact_answer_len > 0 else self.answer_len)
        if self.fact_start < 0 or self.fact_end <= self.fact_start:
            return None
        answer, n = self.answer_tokens, self.answer_len
        for start in range(self.fact_end - n, self.fact_start - 1, -1):
            if self.tokens[start:start + n] == answer:
                return start, n
        return None


def _document_bodies(filler, eot: int) -> list[np.ndarray]:
    """The text tokens of each document (opening EOT dropped). Accepts a TokenSplit or a list of token arrays."""
    if hasattr(filler, "document") and hasattr(filler, "num_docs"):
        docs = [np.asarray(filler.document(i)) for i in range(filler.num_docs)]
    else:
        docs = [np.asarray(d) for d in filler]
    return [d[1:] if len(d) and d[0] == eot else d for d in docs]


def _planted_pair(rng: np.random.Generator, enc) -> dict:
    """Fact, question and answer tokens for a passkey and a control item (same random draw order every time)."""
    key = f" {int(rng.integers(10_000, 100_000))}"
    obj = CONTROL_OBJECTS[int(rng.integers(len(CONTROL_OBJECTS)))]
    colour = CONTROL_COLOURS[int(rng.integers(len(CONTROL_COLOURS)))]
    key_tokens = encode_text(enc, key)
    control_question = encode_text(enc, f" The color of the {obj} is")
    colour_tokens = encode_text(enc, colour)
    passkey_question = encode_text(enc, PASSKEY_QUESTION)
    # Facts are built by concatenating token lists, so the answer tokens in the fact and after the
    # question are identical (no re-tokenisation at the boundaries).
    return {
        "passkey": (passkey_question + key_tokens + encode_text(enc, PASSKEY_TAIL), passkey_question, key_tokens, key),
        "control": (control_question + colour_tokens + encode_text(enc, "."), control_question, colour_tokens, colour),
    }


def _other_key(rng: np.random.Generator, key: str) -> str:
    """A different 5-digit number that shares no digit position with ``key`` (so no answer token is copied)."""
    while True:
        other = f" {int(rng.integers(10_000, 100_000))}"
        if all(a != b for a, b in zip(other[1:], key[1:])):
            return other


def make_recall_items(filler, distances, items_per_distance, seed: int, tokenizer=None) -> list[RecallItem]:
    """Passkey and control items planted in real text; deterministic for a given (filler, seed).

    For every distance D and every i < items_per_distance one item of each kind in ``KINDS`` is made from the
    SAME stretch of real text (paired), so the list has 4 x len(distances) x items_per_distance items, ordered by
    distance, then i, then kind. ``no_fact`` leaves the fact out (its fact span is empty: fact_start == fact_end);
    ``wrong_key`` plants another 5-digit number and asks for the passkey item's. Each (D, i) draws from its own
    generator seeded by (seed, D, i), so adding a distance does not change the other items.

    Layout of one item (positions are token indices; P = prefix length, F = fact length):

        [EOT] [P tokens of real text] [fact: " The pass key is 48213. Remember it."]
        [D tokens of real text] [question: " The pass key is"] [answer: " 48213"]

        fact_start = 1 + P, fact_end = fact_start + F, question starts at fact_end + D,
        answer_start = fact_end + D + len(question), answer_len = len(answer tokens).

    Worked example (seed 2024, distance 32, i = 0, validation split of the smoke preset's embedded corpus):

        decode(item.tokens) == "<|endoftext|> the belligerent measures which, in defiance of laws which
            consecrate the rights of neutrals, overspread the ocean The pass key is 68798. Remember it.
            with danger, it will rest with the wisdom of Congress to decide on the course best adapted to
            such a state of things; and bringing with them, as they The pass key is 68798"
        len(tokens) == 72, prefix P == 23, fact_start == 24, fact_end == 34 (10 fact tokens),
        distance == 32 filler tokens (" with danger, ... as they"), question == tokens[66:70],
        answer_start == 70, answer_len == 2, tokens[70:72] == [8257, 43240] == " 68798".
        The control item of the same pair: "... the ocean The color of the boat is yellow. with danger,
        ... as they The color of the boat is yellow", answer " yellow" (1 token, answer_start 70).

    ``items_per_distance``: an int, or a {distance: count} dict (e.g. more items beyond the receptive field, where
    recall is rare and intervals need many items); the first n items of a distance do not depend on the count.
    ``tokenizer``: the one the filler's tokens were made with (default: a TokenSplit's own, else the prepared
    data's). ``filler``: a ``TokenSplit`` (validation split) or a list of token arrays. Documents with at least
    P + D text tokens are used; if none is long enough, all documents are joined (their EOTs dropped)
    and the item's doc_index is -1.
    """
    enc = tokenizer or (filler.tokenizer if hasattr(filler, "tokenizer") else get_tokenizer())
    bodies = _document_bodies(filler, enc.eot_token)
    if not bodies or sum(len(b) for b in bodies) == 0:
        raise RecallError("make_recall_items: the filler split has no text tokens (prepare data first: "
                          "python -m revena_lib.prepare_data)")
    joined = np.concatenate(bodies)
    items = []
    for distance in distances:
        distance = int(distance)
        if distance < 0:
            raise RecallError(f"make_recall_items: distance must be >= 0, got {distance}")
        count = items_per_distance.get(distance, 0) if isinstance(items_per_distance, dict) else items_per_distance
        for i in range(int(count)):
            items += _paired_items(np.random.default_rng([seed, distance, i]), bodies, joined, distance, enc)
    return items


def _paired_items(rng: np.random.Generator, bodies: list[np.ndarray], joined: np.ndarray, distance: int,
                  enc) -> list[RecallItem]:
    """One item of each kind in ``KINDS`` at one distance, all made from the same stretch of real text (one (D, i)
    of ``make_recall_items``; ``rng`` is drawn from in a fixed order, so the items never change)."""
    prefix_len = int(rng.integers(PREFIX_TOKENS[0], PREFIX_TOKENS[1] + 1))
    need = prefix_len + distance
    long_enough = [d for d, b in enumerate(bodies) if len(b) >= need]
    if long_enough:
        doc_index = long_enough[int(rng.integers(len(long_enough)))]
        source = bodies[doc_index]
    else:
        doc_index, source = -1, joined
        if len(joined) < need:
            raise RecallError(f"make_recall_items: the filler has {len(joined)} text tokens in all, "
                              f"fewer than the {need} needed for distance {distance}")
    offset = int(rng.integers(0, len(source) - need + 1))
    prefix = source[offset:offset + prefix_len].tolist()
    gap = source[offset + prefix_len:offset + need].tolist()
    planted = _planted_pair(rng, enc)
    fact, question, answer, answer_text = planted["passkey"]
    planted["no_fact"] = ([], question, answer, answer_text)
    other = _other_key(rng, answer_text)   # drawn last: the passkey and control draws stay as they were
    planted["wrong_key"] = (question + encode_text(enc, other) + encode_text(enc, PASSKEY_TAIL), question, answer,
                            answer_text)
    # the answer inside each fact: the fact is question + answer (+ tail), so it follows the question
    planted_len = {"passkey": len(answer), "control": len(planted["control"][2]), "no_fact": -1,
                   "wrong_key": len(encode_text(enc, other))}
    items = []
    for kind in KINDS:
        fact, question, answer, answer_text = planted[kind]
        tokens = [enc.eot_token] + prefix + fact + gap + question + answer
        fact_start = 1 + prefix_len
        fact_end = fact_start + len(fact)
        answer_start = fact_end + distance + len(question)
        in_fact = fact_start + len(question) if fact else -1
        items.append(RecallItem(tokens=tokens, answer_start=answer_start, answer_len=len(answer),
                                distance=distance, kind=kind, answer_text=answer_text,
                                fact_start=fact_start, fact_end=fact_end, doc_index=doc_index,
                                fact_answer_start=in_fact, fact_answer_len=planted_len[kind]))
        assert enc.decode(items[-1].answer_tokens) == answer_text
    return items


def model_device(model) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def score_recall_items(model, items: list[RecallItem], device=None, batch_size: int = 8,
                       max_batch_tokens: int = 8192, tokenizer=None) -> list[dict]:
    """Teacher-forced scores, one dict per item, in the order of ``items``.

    Each dict: ``exact_match`` (1 if greedy argmax gives every answer token, else 0),
    ``answer_logprob_bits`` (mean log2 p of the answer tokens, <= 0; higher is better), ``distance``,
    ``kind``, ``answer_text``, ``predicted_text`` (the greedy tokens at the answer positions), and,
    from the LTM trace (0 for the baseline): ``memory_hit_rate`` (share of the item's tokens with at
    least one hit), ``answer_hit`` (a memory hit at a position predicting the answer),
    ``answer_hit_in_fact`` (one of those positions' top hits points anywhere into the planted fact's span,
    question words and tail included: a hit near the key, not yet a useful one), ``useful_hit`` (one of them
    points at the answer's own tokens inside the fact, ``RecallItem.fact_answer_span``; for ``wrong_key`` the
    other number planted there), ``aligned_hit`` (stricter: the position predicting answer token j has a top hit
    on the fact's answer token j itself, the entry a copy needs, not just any digit of the key), ``same_token_hit``
    (the position predicting answer token j >= 1, which holds answer token j-1, hits the fact's token j-1: the earlier
    copy of its own token, whose value is not the next token), ``answer_written`` (every answer token of the fact was written to the LTM) and
    ``answer_in_memory`` (each was still held, written and not yet evicted, when the position predicting the
    corresponding answer token read the memory; ``memory_stats.in_memory``), ``answer_any_in_memory``
    (at least one was) and ``answer_tokens_in_memory`` (the share that was: with a small vocabulary a number is
    several tokens, and the digits after the first are often below the write threshold).

    Items are batched by length (right-padded with EOT; causal attention and a write-then-read-later
    memory mean padding after the answer cannot change the answer's logits). ``max_batch_tokens``
    caps batch x length because the logits are (B, T, 50257) floats.
    """
    if device is not None:
        model = model.to(device)
    device = model_device(model)
    use_ltm = bool(getattr(getattr(model, "cfg", None), "use_ltm", False))
    enc = tokenizer or get_tokenizer()
    order = sorted(range(len(items)), key=lambda k: len(items[k].tokens))
    results: list[dict | None] = [None] * len(items)
    start = 0
    while start < len(order):
        longest = len(items[order[min(start + batch_size, len(order)) - 1]].tokens)
        n = max(1, min(batch_size, max_batch_tokens // max(1, longest)))
        batch_ids = order[start:start + n]
        start += n
        batch = [items[k] for k in batch_ids]
        T = max(len(it.tokens) for it in batch)
        idx = torch.full((len(batch), T), enc.eot_token, dtype=torch.long)
        for row, it in enumerate(batch):
            idx[row, :len(it.tokens)] = torch.tensor(it.tokens, dtype=torch.long)
        out = model(idx.to(device), introspect=use_ltm)
        for row, (k, it) in enumerate(zip(batch_ids, batch)):
            results[k] = _item_scores(model, out, row, it, enc, out.trace if use_ltm else None)
    return results


def _item_scores(model, out, row: int, it: RecallItem, enc, trace) -> dict:
    """The scores of one item (see ``score_recall_items``) from row ``row`` of a batch's output."""
    # logits at position p predict token p+1, so the answer is predicted at answer_start-1 ...
    pred_pos = slice(it.answer_start - 1, it.answer_start - 1 + it.answer_len)
    logits = out.logits[row, pred_pos].float()                        # (A, V)
    answer = torch.tensor(it.answer_tokens, device=logits.device)     # (A,)
    logprob_bits = torch.log_softmax(logits, dim=-1).gather(1, answer[:, None])[:, 0] / np.log(2.0)
    greedy = logits.argmax(dim=-1)
    scores = {
        "exact_match": int(bool((greedy == answer).all())),
        "answer_logprob_bits": float(logprob_bits.mean()),
        "distance": it.distance,
        "kind": it.kind,
        "answer_text": it.answer_text,
        "predicted_text": enc.decode(greedy.tolist()),
        "memory_hit_rate": 0.0,
        "answer_hit": 0,
        "answer_hit_in_fact": 0,
        "useful_hit": 0,
        "aligned_hit": 0,
        "same_token_hit": 0,
        "answer_written": 0,
        "answer_in_memory": 0,
        "answer_any_in_memory": 0,
        "answer_tokens_in_memory": 0.0,
    }
    if trace is not None:
        hits = trace.hit_count[row, :len(it.tokens)] > 0                 # (T,)
        scores["memory_hit_rate"] = float(hits.float().mean())
        scores["answer_hit"] = int(bool(hits[pred_pos].any()))
        if it.fact_start >= 0:
            pos = trace.top_hit_positions[row, pred_pos]                 # (A, K)
            in_fact = (pos >= it.fact_start) & (pos < it.fact_end)
            scores["answer_hit_in_fact"] = int(bool(in_fact.any()))
        span = it.fact_answer_span()
        if span is not None:
            scores.update(_answer_in_memory(trace, row, it, span, model.cfg))
    return scores


def _answer_in_memory(trace, row: int, it: RecallItem, span: tuple[int, int], cfg) -> dict:
    """useful_hit, aligned_hit, same_token_hit and the in-memory flags of one item, from the trace (see
    score_recall_items)."""
    start, n = span
    pred = np.arange(it.answer_len) + it.answer_start - 1                   # positions predicting answer token j
    keys = start + np.minimum(np.arange(it.answer_len), n - 1)              # the fact's answer token j
    pos = trace.top_hit_positions[row, pred[0]:pred[-1] + 1]                 # (A, K)
    routed = trace.routed[row, :len(it.tokens)]
    held = in_memory(routed, cfg.ltm_capacity, cfg.chunk_size, keys, pred)
    aligned = (pos == torch.as_tensor(keys)[:, None]).any()               # answer token j's query -> its own key
    # the query predicting token j sits on answer token j-1: a hit on the fact's token j-1 found the earlier copy of
    # the query's own token (a lookup by identity), whose value is that token, not the next one a copy needs
    same = (pos[1:] == torch.as_tensor(keys[:-1])[:, None]).any() if it.answer_len > 1 else torch.tensor(False)
    return {"useful_hit": int(bool(((pos >= start) & (pos < start + n)).any())), "aligned_hit": int(bool(aligned)),
            "same_token_hit": int(bool(same)),
            "answer_written": int(bool(routed[start:start + n].all())), "answer_in_memory": int(held.all()),
            "answer_any_in_memory": int(held.any()), "answer_tokens_in_memory": float(held.mean())}


TRACE_SHARES = ("useful_hit", "aligned_hit", "same_token_hit", "answer_written", "answer_in_memory",
                "answer_any_in_memory", "answer_tokens_in_memory")


def in_memory_recall(score_lists: list[list[dict]], window: int = 128) -> dict:
    """Passkey recall on all items and on the subset whose answer was still in the LTM when asked, by distance.

    ``score_lists``: one list of ``score_recall_items`` dicts per seed (the same items). Items are pooled over
    seeds as (seed, item) pairs, because whether an item's answer was held differs between seeds' models.
    Returns {"by_distance": {d: {"all": {exact, logprob_bits, n}, "in_memory": {...}, "not_in_memory": {...}}},
    "beyond_window": {...}} (n = 0 and NaN means where a subset is empty: e.g. always, for a model without LTM).
    """
    rows = [r for scores in score_lists for r in scores if r["kind"] == "passkey"]

    def block(sub):
        return {"exact": float(np.mean([r["exact_match"] for r in sub])) if sub else float("nan"),
                "logprob_bits": float(np.mean([r["answer_logprob_bits"] for r in sub])) if sub else float("nan"),
                "n": len(sub)}

    def split(sub):
        held = [r for r in sub if r.get("answer_in_memory", 0)]
        return {"all": block(sub), "in_memory": block(held),
                "not_in_memory": block([r for r in sub if not r.get("answer_in_memory", 0)]),
                "any_in_memory": block([r for r in sub if r.get("answer_any_in_memory", 0)])}

    distances = sorted({r["distance"] for r in rows})
    return {"by_distance": {str(d): split([r for r in rows if r["distance"] == d]) for d in distances},
            "beyond_window": split([r for r in rows if r["distance"] > window]),
            "note": "passkey items pooled over seeds as (seed, item) pairs; in_memory: every answer token of the "
                    "planted fact was written and not yet evicted when the position predicting it read the LTM; "
                    "any_in_memory: at least one was"}


def summarize_recall(scores: list[dict], window: int = 128) -> dict:
    """Means by kind and distance. Headline: passkey exact match over distances beyond the window."""

    def mean(rows, key):
        return float(np.mean([r[key] for r in rows])) if rows else float("nan")

    passkey = [r for r in scores if r["kind"] == "passkey"]
    others = {kind: [r for r in scores if r["kind"] == kind] for kind in KINDS[1:]}
    beyond = [r for r in passkey if r["distance"] > window]
    by_distance = {}
    for d in sorted({r["distance"] for r in scores}):
        p = [r for r in passkey if r["distance"] == d]
        row = {"exact": mean(p, "exact_match"), "logprob_bits": mean(p, "answer_logprob_bits")}
        for kind, rows in others.items():
            at = [r for r in rows if r["distance"] == d]
            row[f"{kind}_exact"], row[f"{kind}_logprob_bits"] = mean(at, "exact_match"), mean(at, "answer_logprob_bits")
        row.update({"memory_hit_rate": mean(p + others["control"], "memory_hit_rate"),
                    "answer_hit": mean(p, "answer_hit"), "answer_hit_in_fact": mean(p, "answer_hit_in_fact"),
                    **{k: mean(p, k) for k in TRACE_SHARES if all(k in r for r in p)}, "n": len(p)})
        by_distance[str(d)] = row
    out = {"long_range_recall": mean(beyond, "exact_match"),
           "long_range_recall_logprob_bits": mean(beyond, "answer_logprob_bits")}
    for kind, rows in others.items():   # beyond the window, like the headline
        far = [r for r in rows if r["distance"] > window]
        out[f"{kind}_recall"], out[f"{kind}_recall_logprob_bits"] = mean(far, "exact_match"), mean(far, "answer_logprob_bits")
    out["recall_by_distance"] = by_distance
    return out
