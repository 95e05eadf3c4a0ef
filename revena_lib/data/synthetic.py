"""Synthetic copying episodes: a span of random tokens, a gap, and the span again (an induction-head task).

A model this small learns to copy from context within minutes on short rows of such episodes, and not within
20 M tokens of natural text (README, "Models that copy"); so a run can start here and move into text gradually
(``TrainConfig.copy_*``, applied by ``training/batches.py``). The spans' lengths vary (``copy_span_min`` to
``copy_span_max``), so no fixed relative position finds the copy: only the content of the earlier occurrence does,
which is what an induction head does and what recall in natural text needs.

Tokens come from a small vocabulary: the 10 digit tokens (so the copying that forms covers numbers, the answers
of every recall test) and the most frequent other tokens of the training split. Shown as text, with ``copy_vocab``
64 (``|`` separates the parts of one episode; only the copy after its first token is predictable):

    span            gap                  copy             span     gap  copy
    7| the| 3| of|  ,| 1| and| the| 9|   7| the| 3| of|  .| 4| a|  |    .| 4| a| ...

    rows = synthetic_rows(split, seed=1337, step=0, n_rows=32, seq_len=64, cfg=preset.train, warmup=True)  # (32, 65)
"""

from __future__ import annotations

import numpy as np

from revena_lib.data.tokenizer import encode_text

_VOCAB_CACHE: dict[tuple, np.ndarray] = {}


def copy_vocabulary(split, size: int) -> np.ndarray:
    """(size,) token ids: the 10 single-token digits, then the most frequent other tokens of ``split`` (never the
    end-of-text token). Cached per split and size; ValueError when the tokenizer has no single-token digits."""
    key = (split.name, len(split.tokens), split.tokenizer.n_vocab, size)
    if key not in _VOCAB_CACHE:
        digits = [encode_text(split.tokenizer, str(d)) for d in range(10)]
        if any(len(d) != 1 for d in digits):
            raise ValueError("copy_vocabulary: this tokenizer splits a digit into several tokens; synthetic copying "
                             "episodes need single-token digits (use gpt2 or a bpe-N tokenizer)")
        digits = [d[0] for d in digits]
        counts = np.bincount(np.asarray(split.tokens), minlength=split.tokenizer.n_vocab)   # (V,)
        order = [int(t) for t in np.argsort(-counts, kind="stable")
                 if int(t) not in digits and int(t) != split.tokenizer.eot_token]
        _VOCAB_CACHE[key] = np.array(digits + order[:max(0, size - 10)], dtype=np.int64)
    return _VOCAB_CACHE[key]


def episode_row(rng: np.random.Generator, vocab: np.ndarray, length: int, span: tuple[int, int],
                gap_max: int) -> np.ndarray:
    """(length,) tokens of back-to-back episodes [span][gap][span], spans of span[0]..span[1] tokens and gaps of
    0..gap_max tokens, all drawn uniformly from ``vocab``; the last episode is cut at ``length``."""
    out = np.empty(length, dtype=np.int64)
    cur = 0
    while cur < length:
        tokens = rng.choice(vocab, int(rng.integers(span[0], span[1] + 1)))
        gap = rng.choice(vocab, int(rng.integers(0, gap_max + 1)))
        episode = np.concatenate([tokens, gap, tokens])
        n = min(len(episode), length - cur)
        out[cur:cur + n] = episode[:n]
        cur += n
    return out


def synthetic_rows(split, seed: int, step: int, n_rows: int, seq_len: int, cfg, warmup: bool = False) -> np.ndarray:
    """(n_rows, seq_len + 1) rows of episodes, deterministic per (seed, step). ``warmup``: the warm-up's episodes,
    each copy right after its span, over ``copy_vocabulary(split, cfg.copy_vocab)``; otherwise gaps of up to
    ``copy_gap_max`` tokens, over ``copy_vocab_after`` tokens when it is set."""
    size = cfg.copy_vocab if warmup or not cfg.copy_vocab_after else cfg.copy_vocab_after
    vocab = copy_vocabulary(split, size)
    rng = np.random.default_rng([seed, step, 0xC0B1])
    span, gap_max = (cfg.copy_span_min, cfg.copy_span_max), 0 if warmup else cfg.copy_gap_max
    return np.stack([episode_row(rng, vocab, seq_len + 1, span, gap_max) for _ in range(n_rows)])


def synthetic_share(step: int, cfg) -> float:
    """The share of a step's rows that are synthetic: 1 during the warm-up, then falling linearly over
    ``copy_ramp_steps`` to ``copy_share_end``, which it keeps."""
    if step < cfg.copy_warmup_steps:
        return 1.0
    if cfg.copy_ramp_steps <= 0:
        return cfg.copy_share_end
    progress = min(1.0, (step - cfg.copy_warmup_steps) / cfg.copy_ramp_steps)
    return 1.0 - (1.0 - cfg.copy_share_end) * progress
