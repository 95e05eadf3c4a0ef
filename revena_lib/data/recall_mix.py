"""Training rows that teach copying: real text with facts planted in it and asked again later in the same row.

Small models trained on plain text at CPU budgets never learn to copy from context, so a recall test on them
has no positive control. A share (``TrainConfig.recall_mix``) of every batch's rows therefore carries
``recall_facts_per_row`` facts: a fact is written over the real text at one position, and its question (the
fact's cue, then its answer) is written again ``distance`` tokens later, at distances drawn from inside the
window up to the end of the row (with 1,024-token rows and a receptive field of 508 tokens at ``cpu``, some are
asked beyond it). The language-model loss on the answer tokens can only be lowered by copying.

Evaluation's items (``evaluation/recall.py``: "The pass key is 48213. Remember it." / "The pass key is") are never used
here: training facts have other phrasings, other entities and 3-4 digit numbers, so a model that recalls
evaluation's pass keys has learned to copy, not memorised a template. Every arm sees the same rows: the planting
is a pure function of (seed, step, row).

Worked example (bpe tokens shown as text; ``|`` marks token boundaries of the planted pieces):

    real text ...  the credit of the Government| The| code| of| Harbor| is| 7| 0| 3|.| and the duties ...
    ... 300 tokens of real text ...
    ... which we have| The| code| of| Harbor| is| 7| 0| 3|.| still to meet ...

    The second " 7 0 3" is what copying predicts; the first is unpredictable (a fresh random number).

    rows = plant_facts(rows, seed=1337, step=12, cfg=preset.train, tokenizer=split.tokenizer)
"""

from __future__ import annotations

import numpy as np

from revena_lib.data.tokenizer import encode_text

# Phrasings, entities and number lengths used only in training (evaluation asks "The pass key is" + 5 digits).
TEMPLATES = (" The code of {name} is", " {name}'s number is", " The locker of {name} opens with",
             " The room of {name} is number")
NAMES = ("Harbor", "Mr. Alden", "the Treasury", "Lincoln Street", "Ms. Carver", "the depot", "General Ward",
         "Maple Avenue", "the fleet", "Dr. Olsen", "the archive", "Judge Perry", "the mill", "Captain Reyes")
DIGITS = (3, 4)          # answer lengths in digits, by default (TrainConfig.recall_fact_digits; evaluation uses 5)
MIN_DISTANCE = 8         # tokens between the end of the fact and its question
PASSAGE_TOKENS = (8, 48) # length of a repeated passage of the row's own text (recall_repeats)
TEXT_CUE_TOKENS = (3, 8) # length of a fact's cue taken from the row's own text (recall_text_cues)
DISTANCE_LAWS = ("log-uniform", "uniform")   # how a copy target's distance is drawn (TrainConfig.recall_distance)
NEAR_DISTANCE = 96       # the farthest a "near" fact is asked (recall_near): inside a 128-token window with its cue


def _fact_tokens(rng: np.random.Generator, tokenizer, digits=DIGITS) -> tuple[list[int], list[int]]:
    """(cue tokens, answer tokens) of one random training fact whose number has one of ``digits`` digits."""
    template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
    name = NAMES[int(rng.integers(len(NAMES)))]
    n_digits = int(digits[int(rng.integers(len(digits)))])
    number = "".join(str(int(d)) for d in rng.integers(0, 10, n_digits))
    cue = encode_text(tokenizer, template.format(name=name))
    return cue, encode_text(tokenizer, f" {number}.")


def _text_cue_fact(rng: np.random.Generator, row: np.ndarray, tokenizer, digits=DIGITS) -> tuple[list[int], list[int]]:
    """(cue, answer) of a fact whose cue is 3-8 tokens of the row's own text (e.g. "| which| we| have|") and whose
    answer is a number, as in ``_fact_tokens``: nothing but the fact's earlier occurrence says that a number follows."""
    n = int(rng.integers(TEXT_CUE_TOKENS[0], TEXT_CUE_TOKENS[1] + 1))
    start = int(rng.integers(1, len(row) - n))
    _, answer = _fact_tokens(rng, tokenizer, digits)
    return row[start:start + n].tolist(), answer


def _text_cue_in_place(rng: np.random.Generator, tokenizer, digits=DIGITS) -> tuple[int, list[int]]:
    """(cue length, answer tokens) of a fact whose cue is the row's own text where the fact is written: the cue is
    read from the row once the fact's place is drawn (``plant_row``), so it occurs once before its question, followed
    by the number both times."""
    n = int(rng.integers(TEXT_CUE_TOKENS[0], TEXT_CUE_TOKENS[1] + 1))
    _, answer = _fact_tokens(rng, tokenizer, digits)
    return n, answer


def _random_span(rng: np.random.Generator, tokenizer) -> tuple[list[int], list[int]]:
    """(first token, rest) of a span of 8-32 uniformly random tokens: the classic inducer of induction heads."""
    span = rng.integers(1, tokenizer.n_vocab, int(rng.integers(8, 33))).tolist()
    span = [t if t != tokenizer.eot_token else t + 1 for t in span]
    return span[:1], span[1:]


def _passage(rng: np.random.Generator, row: np.ndarray) -> tuple[list[int], list[int]]:
    """(first token, rest) of a passage of 8-48 tokens of the row's own natural text (its original tokens): copying
    it again later gives copy targets whose embeddings training has shaped, unlike uniformly random tokens."""
    n = int(rng.integers(PASSAGE_TOKENS[0], PASSAGE_TOKENS[1] + 1))
    start = int(rng.integers(1, len(row) - n))
    span = row[start:start + n].tolist()
    return span[:1], span[1:]


def plant_row(row: np.ndarray, rng: np.random.Generator, n_facts: int, tokenizer,
              random_spans: bool = False, passages: bool = False, digits=DIGITS, text_cues: float = 0.0,
              near: float = 0.0, distance_law: str = "log-uniform", cue_in_place: bool = False) -> np.ndarray:
    """Write ``n_facts`` (fact, question) pairs over the real tokens of one row (T+1,); returns a copy.

    A pair is a training fact (with ``text_cues`` probability one whose cue is the row's own text; with ``near``
    probability one asked at most NEAR_DISTANCE tokens later), or (``random_spans``) a span of random tokens, or
    (``passages``) a passage of the row's own text, written twice. Each pair draws its distance log-uniformly
    (``distance_law``, or "uniform") from MIN_DISTANCE to the longest that fits, then a start where neither of its
    two spans overlaps an earlier pair's (pairs may interleave); position 0 is left alone. With ``cue_in_place`` a
    text cue is the row's own text at the fact's start (only the answer after it is written over), so it is not also
    somewhere else in the row with another continuation."""
    if distance_law not in DISTANCE_LAWS:
        raise ValueError(f"recall_distance={distance_law!r} must be one of {', '.join(DISTANCE_LAWS)}")
    original = row
    row = row.copy()
    T = len(row)
    taken = np.zeros(T, dtype=bool)
    taken[0] = True
    for _ in range(n_facts):
        in_place = False
        if passages:
            cue, answer = _passage(rng, original)
        elif random_spans:
            cue, answer = _random_span(rng, tokenizer)
        elif text_cues > 0 and rng.random() < text_cues:      # no draw at 0: the template rows stay as they were
            if cue_in_place:
                n_cue, answer = _text_cue_in_place(rng, tokenizer, digits)
                cue, in_place = [0] * n_cue, True             # placeholders: read from the row once the start is drawn
            else:
                cue, answer = _text_cue_fact(rng, original, tokenizer, digits)
        else:
            cue, answer = _fact_tokens(rng, tokenizer, digits)
        piece = np.array(cue + answer)                        # the fact and its question are the same tokens
        n = len(piece)
        longest = T - 1 - 2 * n
        if near > 0 and rng.random() < near:                  # no draw at 0: rows stay as they were
            longest = min(longest, NEAR_DISTANCE)
        if longest < MIN_DISTANCE:
            break
        for _attempt in range(20):
            if distance_law == "uniform":     # as many copies 80-96 tokens back as 8-24
                distance = int(rng.integers(MIN_DISTANCE, longest + 1))
            else:
                distance = int(np.exp(rng.uniform(np.log(MIN_DISTANCE), np.log(longest + 1))))
            distance = min(max(distance, MIN_DISTANCE), longest)
            start = int(rng.integers(1, T - 2 * n - distance + 1))
            question = start + n + distance
            if not (taken[start:start + n].any() or taken[question:question + n].any()):
                if in_place:    # the cue is the text already at start (original: no earlier pair's tokens)
                    piece[:n_cue] = original[start:start + n_cue]
                row[start:start + n] = piece
                row[question:question + n] = piece
                taken[start:start + n] = taken[question:question + n] = True
                break
    return row


def plant_facts(rows: np.ndarray, seed: int, step: int, share: float, facts_per_row: int, tokenizer,
                induction_share: float = 0.0, repeats_share: float = 0.0, digits=DIGITS,
                text_cues: float = 0.0, near: float = 0.0, distance_law: str = "log-uniform",
                cue_in_place: bool = False) -> np.ndarray:
    """Plant facts in a ``share`` of the batch's rows (B, T+1) (``text_cues`` of them with a cue of the row's own
    text, ``near`` of them asked within NEAR_DISTANCE tokens), repeated random-token spans in another
    ``induction_share``, and repeated passages of the row's own text in another ``repeats_share``; deterministic per
    (seed, step, row). A zero share draws nothing, so adding one leaves the other rows as they were."""
    if share <= 0 and induction_share <= 0 and repeats_share <= 0:
        return rows
    if 5 in digits or not digits or min(digits) < 1:
        raise ValueError(f"recall_fact_digits={tuple(digits)}: training facts need lengths >= 1 and never 5 digits, "
                         "the length of evaluation's pass keys (a model must copy them, not know their length)")
    out = rows.copy()
    where = {"near": near, "distance_law": distance_law}       # how far back every kind of copy target is asked
    for b in range(rows.shape[0]):
        rng = np.random.default_rng([seed, step, b, 0x5EED])
        draw = rng.random()
        if draw < share:
            out[b] = plant_row(rows[b], rng, facts_per_row, tokenizer, digits=digits, text_cues=text_cues,
                               cue_in_place=cue_in_place, **where)
        elif draw < share + induction_share:
            out[b] = plant_row(rows[b], rng, facts_per_row, tokenizer, random_spans=True, **where)
        elif draw < share + induction_share + repeats_share:
            out[b] = plant_row(rows[b], rng, facts_per_row, tokenizer, passages=True, **where)
    return out
