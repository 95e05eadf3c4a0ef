"""Induction score: does a model copy? The loss on the second copy of a repeated random-token span vs the first.

A sequence is ``<|endoftext|>`` followed by a span of ``span_len`` uniformly random tokens, then the same span
again. The first copy is unpredictable (its loss is about ln(vocab) nats per token); a model that has learned to
copy from context (induction heads) predicts the second copy, so its loss there drops. The score is first-copy
loss minus second-copy loss, in nats per token: 0 = no copying, ln(vocab) = perfect copying. The first token of
each copy is left out (nothing announces where a copy starts). The default span (64 tokens) puts the second copy
inside the 128-token window, so this is the in-window copying that the recall test's positive control needs.

    from revena_lib.evaluation.induction import induction_score
    score = induction_score(model, eot=tokenizer.eot_token)   # {"score_nats", "first_copy_nats", ...}
"""

from __future__ import annotations

import math

import numpy as np
import torch


def repeated_spans(vocab_size: int, eot: int, n_seqs: int, span_len: int, seed: int) -> torch.Tensor:
    """(n_seqs, 1 + 2 * span_len) LongTensor: EOT, a random span (never EOT), the same span again."""
    if span_len < 2 or n_seqs < 1:
        raise ValueError(f"repeated_spans: span_len={span_len} must be >= 2 and n_seqs={n_seqs} >= 1")
    span = np.random.default_rng(seed).integers(1, vocab_size, (n_seqs, span_len))
    span[span == eot] = (eot + 1) % vocab_size or 1
    seqs = np.concatenate([np.full((n_seqs, 1), eot), span, span], axis=1)
    return torch.from_numpy(seqs).long()


@torch.inference_mode()
def copy_losses(model, seqs: torch.Tensor, batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Mean loss (nats/token) on the first and the second copy of each sequence, each (N,)."""
    device = next(model.parameters()).device
    span_len = (seqs.shape[1] - 1) // 2
    first, second = [], []
    for s in range(0, len(seqs), batch_size):
        bits = model(seqs[s:s + batch_size].to(device)).surprisal_bits.double().cpu().numpy()   # (b, 1 + 2L)
        nats = bits * math.log(2.0)
        first.append(nats[:, 2:1 + span_len].mean(1))                  # first copy, its first token left out
        second.append(nats[:, 2 + span_len:].mean(1))                  # second copy, likewise
    return np.concatenate(first), np.concatenate(second)


def induction_score(model, eot: int, vocab_size: int | None = None, n_seqs: int = 32, span_len: int = 64,
                    seed: int = 0, batch_size: int = 8) -> dict:
    """First-copy minus second-copy loss (nats/token) over ``n_seqs`` repeated random spans, with the parts."""
    vocab_size = vocab_size or int(model.cfg.vocab_size)
    first, second = copy_losses(model, repeated_spans(vocab_size, eot, n_seqs, span_len, seed), batch_size)
    return {"score_nats": float((first - second).mean()), "first_copy_nats": float(first.mean()),
            "second_copy_nats": float(second.mean()), "per_sequence": (first - second).tolist(),
            "uniform_nats": math.log(vocab_size), "span_len": span_len, "n_seqs": n_seqs, "seed": seed}
