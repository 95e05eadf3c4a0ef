"""The positive control: does a model copy from context inside its own window?

A failure to recall beyond the window says nothing about a memory unless the same model recalls the same kind of
fact *inside* the window. This module measures that control three ways, all on models as they are (no training):

- **pass keys in the window**: evaluation's own items (``recall.make_recall_items``, "The pass key is 48213.")
  asked 32 and 96 tokens after the fact, scored exactly (greedy argmax gives every answer token) and graded
  (mean log2 p per answer token); ``no_fact`` items (nothing planted) say what guessing scores;
- **the training mix's own format** (``data.recall_mix``, e.g. " The code of Harbor is 703."), planted in
  validation text the same way: a model that cannot copy even what it was trained on has not learned to copy;
- **induction**: the loss drop on the second copy of a repeated random-token span (``induction.induction_score``),
  and, per layer and head, the *induction attention*: how much each head attends from a token in the second copy
  to the token right after that token's earlier occurrence (Olsson et al. 2022, "In-context Learning and Induction
  Heads"; the same score as TransformerLens' induction-head detector). The LTM is read in one layer only, so it
  can extend copying only if copying lives in that layer.

    probe = copy_probe(model, load_split("val"))
    probe["passkey"]["32"]["exact"], probe["induction"]["score_nats"], probe["induction_attention"]  # (L, H)

``POSITIVE_CONTROL_EXACT`` (0.9) is the bar: an arm whose in-window pass-key exact match is below it at any in-window
distance, for any seed, cannot tell us whether a memory helps beyond the window (``positive_control``).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from revena_lib.evaluation.induction import induction_score, repeated_spans
from revena_lib.evaluation.recall import RecallItem, make_recall_items, score_recall_items

POSITIVE_CONTROL_EXACT = 0.9     # in-window pass-key exact match every seed of an arm must reach (issue 20)
IN_WINDOW_DISTANCES = (32, 96)   # inside the 128-token window at every preset
TRAIN_FORMAT = "train_format"    # the kind of the training-format items


def train_format_items(filler, distances, items_per_distance: int, seed: int, tokenizer) -> list[RecallItem]:
    """Facts in the training mix's own phrasing planted in real text and asked ``distance`` tokens later.

    Layout: [EOT] [24 tokens of real text] [cue + answer, e.g. " The code of Harbor is 703."] [distance tokens of
    real text] [cue] [answer without its "."]; the answer (" 703": a space and the digits in bpe-N) is scored.
    ``filler``: a TokenSplit (validation). Deterministic for a given (filler, seed)."""
    from revena_lib.data.recall_mix import _fact_tokens

    tokens = np.asarray(filler.tokens)
    eot = tokenizer.eot_token
    items = []
    for distance in distances:
        rng = np.random.default_rng([seed, int(distance), 0x7F0])
        for _ in range(int(items_per_distance)):
            cue, answer = _fact_tokens(rng, tokenizer)
            need = 24 + int(distance)
            for _try in range(100):   # a stretch of real text inside one document (no EOT in it)
                start = int(rng.integers(0, len(tokens) - need))
                stretch = tokens[start:start + need]
                if not (stretch == eot).any():
                    break
            prefix, gap = stretch[:24].tolist(), stretch[24:].tolist()
            row = [eot] + prefix + cue + answer + gap + cue + answer[:-1]
            fact_start = 1 + len(prefix)
            items.append(RecallItem(tokens=row, answer_start=len(row) - (len(answer) - 1), answer_len=len(answer) - 1,
                                    distance=int(distance), kind=TRAIN_FORMAT, answer_text=tokenizer.decode(answer[:-1]),
                                    fact_start=fact_start, fact_end=fact_start + len(cue) + len(answer),
                                    fact_answer_start=fact_start + len(cue), fact_answer_len=len(answer) - 1))
    return items


def probe_items(val_split, tokenizer, distances=IN_WINDOW_DISTANCES, items_per_distance: int = 16,
                seed: int = 2024) -> list[RecallItem]:
    """Evaluation's pass-key and no-fact items plus training-format items, at the in-window distances."""
    items = [it for it in make_recall_items(val_split, distances, items_per_distance, seed=seed, tokenizer=tokenizer)
             if it.kind in ("passkey", "no_fact")]
    return items + train_format_items(val_split, distances, items_per_distance, seed, tokenizer)


@torch.inference_mode()
def attention_patterns(model, seqs: torch.Tensor) -> list[torch.Tensor] | None:
    """Every layer's attention pattern on ``seqs`` (N, T) with T <= chunk_size: a list of (N, H, T, T) softmax
    weights, or None for models whose attention is not the transformer's block attention (the recursive family reuses
    one core several times per chunk). Within one chunk every layer projects q and k once for the whole sequence; the
    pattern is recomputed from them (RoPE, causal mask, 1/sqrt(head_dim), the sink logits with ``attn_sink``), since the
    fused attention does not return it (tests/test_copying.py checks it against the attention's own output)."""
    cfg, blocks = model.cfg, getattr(model, "blocks", None)
    if getattr(cfg, "family", "transformer") == "recursive" or blocks is None:
        return None
    N, T = seqs.shape
    if T > cfg.chunk_size:
        raise ValueError(f"attention_patterns: sequences of {T} tokens must fit in one chunk ({cfg.chunk_size})")
    from revena_lib.models.transformer import apply_rope, rope_tables

    device = next(model.parameters()).device
    captured = []
    hooks = [b.attn.c_attn.register_forward_hook(lambda m, i, o: captured.append(o.detach().float()))
             for b in blocks]
    try:
        model(seqs.to(device))
    finally:
        for h in hooks:
            h.remove()
    C, H = cfg.n_embd, cfg.n_head
    D = C // H
    cos, sin = rope_tables(torch.arange(T, device=device), D, cfg.rope_base)
    causal = torch.ones(T, T, dtype=torch.bool, device=device).tril()
    patterns = []
    for block, qkv in zip(blocks, captured):
        q, k, _ = qkv[:, :T].split(C, dim=2)                                       # (N, T, C)
        q, k = (apply_rope(x.reshape(N, T, H, D).transpose(1, 2), cos, sin) for x in (q, k))   # (N, H, T, D)
        q = block.attn.mix_queries(q, torch.cat([torch.zeros_like(k), k], dim=2))   # zeros before position 0
        k = block.attn.smear(k).detach()                                 # both identity without smear_key or qk_conv
        scores = (q @ k.transpose(-1, -2) / math.sqrt(D)).masked_fill(~causal, float("-inf"))
        sink = block.attn.sink_logit                                     # attn_sink: the weight parked on nothing
        if sink is not None:
            scores = torch.cat([sink.detach().float().view(1, H, 1, 1).expand(N, H, T, 1), scores], dim=-1)
            patterns.append(scores.softmax(-1)[..., 1:])                           # (N, H, T, T), rows sum below 1
        else:
            patterns.append(scores.softmax(-1))                                    # (N, H, T, T)
    return patterns


def induction_from_patterns(patterns: list[torch.Tensor], span_len: int) -> np.ndarray:
    """(n_layer, n_head) mean attention from each token of the second copy (positions 1 + L .. 2L of EOT, span,
    span) to the token right after that token's earlier occurrence (position t - L + 1)."""
    T = patterns[0].shape[-1]
    t = torch.arange(1 + span_len, T)
    source = t - span_len + 1
    return np.stack([p[:, :, t, source].mean(dim=(0, 2)).cpu().numpy() for p in patterns])


def induction_attention(model, eot: int, span_len: int = 24, n_seqs: int = 16, seed: int = 0) -> np.ndarray | None:
    """(n_layer, n_head) induction attention on repeated random spans (EOT, span, span) that fit in one chunk:
    1.0 = a perfect induction head, about 1/40 = uniform attention at span 24. None where ``attention_patterns``
    is None."""
    if 1 + 2 * span_len > model.cfg.chunk_size:
        raise ValueError(f"induction_attention: span_len={span_len} must fit twice in one chunk "
                         f"(1 + 2 * span_len <= chunk_size {model.cfg.chunk_size})")
    patterns = attention_patterns(model, repeated_spans(int(model.cfg.vocab_size), eot, n_seqs, span_len, seed))
    return None if patterns is None else induction_from_patterns(patterns, span_len)


def _summary(scores: list[dict], kind: str, distance: int) -> dict:
    rows = [s for s in scores if s["kind"] == kind and s["distance"] == distance]
    return {"exact": float(np.mean([s["exact_match"] for s in rows])),
            "log2p": float(np.mean([s["answer_logprob_bits"] for s in rows])), "items": len(rows)}


def copy_probe(model, val_split, tokenizer=None, distances=IN_WINDOW_DISTANCES, items_per_distance: int = 16,
               seed: int = 2024, induction_seqs: int = 16) -> dict:
    """Every positive-control measure of one model: {kind: {distance: {exact, log2p, items}}} for ``passkey``,
    ``no_fact`` and ``train_format``, ``induction`` (score, nats/token: 0 none, ln V perfect) and
    ``induction_attention`` ((n_layer, n_head) list, or None)."""
    tokenizer = tokenizer or val_split.tokenizer
    was_training = model.training
    model.eval()
    try:
        items = probe_items(val_split, tokenizer, distances, items_per_distance, seed)
        scores = score_recall_items(model, items, batch_size=8, tokenizer=tokenizer)
        out = {kind: {str(d): _summary(scores, kind, d) for d in distances}
               for kind in ("passkey", "no_fact", TRAIN_FORMAT)}
        out["induction"] = induction_score(model, eot=tokenizer.eot_token, n_seqs=induction_seqs)
        out["induction"].pop("per_sequence", None)
        heads = induction_attention(model, tokenizer.eot_token, n_seqs=induction_seqs)
        out["induction_attention"] = None if heads is None else heads.round(4).tolist()
    finally:
        model.train(was_training)
    return out


def positive_control(passkey_exact_by_seed: dict, threshold: float = POSITIVE_CONTROL_EXACT,
                     misses: dict | None = None) -> dict:
    """Does an arm copy inside its window? ``passkey_exact_by_seed``: {seed: {distance: exact match}} for the
    in-window distances. Passes when every seed reaches ``threshold`` at every in-window distance. ``misses``
    (optional): {seed: [{"distance", "answer", "predicted"}]}, the in-window pass keys a seed got wrong, kept so a
    reader sees *how* it fails (see ``repeated_digit``)."""
    worst = min((v for per in passkey_exact_by_seed.values() for v in per.values()), default=float("nan"))
    passed = bool(passkey_exact_by_seed) and worst >= threshold
    out = {"passed": passed, "threshold": threshold, "worst_seed_distance_exact": worst,
           "by_seed": {str(s): {str(d): float(v) for d, v in per.items()} for s, per in passkey_exact_by_seed.items()},
           "note": "in-window pass-key exact match per seed and distance; below the threshold for any of them, "
                   "a recall comparison beyond the window reads 'cannot tell'"}
    if misses is not None:
        out["misses"] = {str(s): list(rows) for s, rows in misses.items()}
    return out


def repeated_digit(answer: str) -> bool:
    """Whether a pass key repeats a digit (" 31557"). Copying token by token, the token after such a digit is
    ambiguous unless the head matches the tokens before it too (``ModelConfig.qk_conv``): in "31557" a "5" was
    followed once by "5" and once by "7". 70% of random 5-digit keys repeat a digit (1 - 10*9*8*7*6 / 10^5)."""
    digits = [c for c in answer if c.isdigit()]
    return len(set(digits)) < len(digits)


def positive_control_misses(results: dict) -> list[dict]:
    """One row per in-window pass key an arm's seed got wrong (results.json's ``positive_control.misses``): the key,
    what the model wrote instead (greedy, teacher-forced) and whether the key repeats a digit (notebook 05)."""
    rows = []
    for arm, entry in results.items():
        pc = entry.get("positive_control") if isinstance(entry, dict) else None
        for seed, misses in ((pc or {}).get("misses") or {}).items():
            rows += [{"arm": arm, "seed": seed, **m, "repeated digit": repeated_digit(m["answer"])} for m in misses]
    return rows


def positive_control_rows(results: dict) -> list[dict]:
    """One row per arm of a results.json: in-window pass-key exact match per seed and distance, and whether the arm
    passes the positive control (notebook 05)."""
    rows = []
    for arm, entry in results.items():
        pc = entry.get("positive_control") if isinstance(entry, dict) else None
        if pc is None:
            continue
        for seed, per in pc["by_seed"].items():
            rows.append({"arm": arm, "seed": seed, **{f"exact at {d}": v for d, v in per.items()},
                         "passes (every seed)": pc["passed"]})
    return rows


def induction_head_rows(results: dict) -> list[dict]:
    """One row per (arm, layer): the mean induction attention of each head over seeds (notebook 05)."""
    rows = []
    for arm, entry in results.items():
        heads = entry.get("induction_heads") if isinstance(entry, dict) else None
        if heads is None:
            continue
        for layer, values in enumerate(heads["mean"]):
            rows.append({"arm": arm, "layer": layer, **{f"head {h}": v for h, v in enumerate(values)}})
    return rows
