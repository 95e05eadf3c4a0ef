"""Induction score: a model that copies scores about ln(vocab), one that cannot copy scores 0."""

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from revena_lib.config import get_preset
from revena_lib.evaluation.induction import induction_score, repeated_spans


class Copier(nn.Module):
    """Predicts the token ``lag`` positions back (a perfect induction head once it is in the second copy);
    ``lag=None``: uniform over the vocabulary (no copying at all)."""

    def __init__(self, vocab, lag):
        super().__init__()
        self.w, self.vocab, self.lag = nn.Parameter(torch.zeros(1)), vocab, lag
        self.cfg = SimpleNamespace(vocab_size=vocab)

    def forward(self, idx, targets=None, **_):
        B, T = idx.shape
        logits = torch.zeros(B, T, self.vocab)
        if self.lag is not None:   # logits at t predict t+1: copy the token at t+1-lag
            for t in range(self.lag, T):
                logits[torch.arange(B), t, idx[:, t + 1 - self.lag]] = 40.0
        logp = torch.log_softmax(logits, -1)
        bits = torch.zeros(B, T)
        bits[:, 1:] = -logp[:, :-1].gather(2, idx[:, 1:, None])[..., 0] / math.log(2)
        return SimpleNamespace(logits=logits, surprisal_bits=bits)


def test_spans_repeat_and_never_hold_eot():
    seqs = repeated_spans(100, eot=7, n_seqs=5, span_len=10, seed=1)
    assert seqs.shape == (5, 21) and (seqs[:, 0] == 7).all() and (seqs[:, 1:] != 7).all()
    assert torch.equal(seqs[:, 1:11], seqs[:, 11:])
    assert not torch.equal(seqs, repeated_spans(100, 7, 5, 10, seed=2))


def test_a_copier_scores_log_vocab_and_a_guesser_zero():
    vocab, span = 200, 16
    good = induction_score(Copier(vocab, lag=span), eot=0, n_seqs=4, span_len=span)
    assert good["score_nats"] == pytest.approx(math.log(vocab), abs=0.05)
    assert good["first_copy_nats"] == pytest.approx(math.log(vocab), abs=0.05)   # the first copy is unpredictable
    none = induction_score(Copier(vocab, lag=None), eot=0, n_seqs=4, span_len=span)
    assert none["score_nats"] == pytest.approx(0.0, abs=1e-6)
    wrong_lag = induction_score(Copier(vocab, lag=span + 1), eot=0, n_seqs=4, span_len=span)
    assert wrong_lag["score_nats"] < 0.5     # copying the wrong offset is not induction


def test_a_fresh_transformer_does_not_copy():
    from revena_lib.models.transformer import RevenaLM

    torch.manual_seed(0)
    cfg = get_preset("smoke").model
    out = induction_score(RevenaLM(cfg).eval(), eot=50256, n_seqs=4, span_len=32)
    assert abs(out["score_nats"]) < 0.5 and out["first_copy_nats"] == pytest.approx(math.log(cfg.vocab_size), abs=1.0)
