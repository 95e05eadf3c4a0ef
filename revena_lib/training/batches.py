"""What each training step reads: a pure function of (seed, step), identical for every arm.

``batch_for_step`` cuts ``batch_size`` rows of ``seq_len + 1`` consecutive tokens, each from one document, at start
positions drawn from ``numpy.random.default_rng([seed, step])``; ``training_batch`` plants the copying curriculum's
facts in a share of them (``revena_lib/data/recall_mix.py``). The same (seed, step) gives the same batch whatever
the arm, the process or the point a run was resumed from. Validation batches use one fixed seed for every run.

    x, y = batch_for_step(load_split("train"), seed=1337, step=0, batch_size=2, seq_len=1024)   # (2, 1024) each
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from revena_lib.config import TrainConfig
from revena_lib.data.synthetic import synthetic_rows, synthetic_share
from revena_lib.training import TrainError

# Validation batches come from a fixed seed, not the run's: every run, arm and seed is scored on the same rows.
VAL_BATCH_SEED = 20_240_601


def usable_documents(split, seq_len: int) -> np.ndarray:
    """Indices of the documents long enough for one row (seq_len + 1 tokens); TrainError if there are none."""
    docs = np.flatnonzero(np.asarray(split.doc_lengths) >= seq_len + 1)
    if len(docs) == 0:
        raise TrainError(
            f"no {split.name} document has seq_len+1 = {seq_len + 1} tokens (longest: {int(np.max(split.doc_lengths))}): "
            "choose a --preset whose seq_len fits the data, or prepare longer documents (max_doc_chars)")
    return docs


def batch_for_step(split, seed: int, step: int, batch_size: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The training batch of ``step``: ``batch_size`` rows of seq_len+1 consecutive tokens, each from ONE document.

    Start positions are uniform over all windows that fit inside a document (so long documents are read in
    proportion to their length); documents shorter than seq_len+1 are skipped. Returns x = row[:-1],
    y = row[1:], both (batch_size, seq_len) int64. The same (seed, step) gives the same batch, whatever the
    arm, process or resume point.
    """
    if seed < 0 or step < 0:
        raise ValueError(f"seed and step must be >= 0 (got seed={seed}, step={step})")
    docs = usable_documents(split, seq_len)                        # (D',)
    windows_per_doc = np.asarray(split.doc_lengths)[docs] - seq_len  # (D',) valid start offsets per document
    cumulative = np.cumsum(windows_per_doc)                         # (D',)
    rng = np.random.default_rng([seed, step])
    picks = rng.integers(0, cumulative[-1], size=batch_size)        # (B,) global window index
    which = np.searchsorted(cumulative, picks, side="right")        # (B,) index into docs
    within = picks - (cumulative[which] - windows_per_doc[which])   # (B,) offset inside that document
    starts = np.asarray(split.doc_offsets)[docs[which]] + within    # (B,) absolute token index
    rows = np.stack([np.asarray(split.tokens[s:s + seq_len + 1]) for s in starts]).astype(np.int64)  # (B, T+1)
    return torch.from_numpy(rows[:, :-1].copy()), torch.from_numpy(rows[:, 1:].copy())


def training_batch(split, seed: int, step: int, cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_for_step`` with the copying curriculum's facts planted in ``cfg.recall_mix`` of the rows and, under a
    synthetic copying curriculum (``cfg.copy_*``), synthetic episodes in place of a share of the rows, or of all of
    them in shorter rows during its warm-up (the same rows for every arm: a pure function of (seed, step))."""
    if step < cfg.copy_warmup_steps:
        return _warmup_batch(split, seed, step, cfg)
    if cfg.short_row_every > 0 and step % cfg.short_row_every == 0:
        cfg = short_row_config(cfg)
    x, y = _text_batch(split, seed, step, cfg)
    share = synthetic_share(step, cfg)
    if share <= 0:
        return x, y
    pick = np.random.default_rng([seed, step, 0x5A5E]).random(x.shape[0]) < share                # (B,)
    if pick.any():
        rows = synthetic_rows(split, seed, step, int(pick.sum()), cfg.seq_len, cfg)            # (b, T+1)
        x, y = x.clone(), y.clone()
        x[pick], y[pick] = torch.from_numpy(rows[:, :-1]), torch.from_numpy(rows[:, 1:])
    return x, y


def short_row_config(cfg: TrainConfig) -> TrainConfig:
    """The rows of a short-row step (``short_row_every``): short_row_len tokens, batch_size * seq_len / short_row_len
    of them (the same tokens per step), recall_facts_per_row scaled to the row's length (at least one)."""
    T = cfg.short_row_len
    if not 0 < T < cfg.seq_len or (cfg.batch_size * cfg.seq_len) % T:
        raise TrainError(f"short_row_len={T} must be below seq_len={cfg.seq_len} and divide batch_size * seq_len = "
                         f"{cfg.batch_size * cfg.seq_len} (short rows keep the tokens per step): e.g. the window, 128")
    return dataclasses.replace(cfg, seq_len=T, batch_size=cfg.batch_size * cfg.seq_len // T, short_row_every=0,
                               recall_facts_per_row=max(1, round(cfg.recall_facts_per_row * T / cfg.seq_len)))


def _warmup_batch(split, seed: int, step: int, cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The warm-up's batch: synthetic episodes without gaps, batch_size * seq_len tokens in rows of
    copy_warmup_seq_len (B', T') — short rows, because the time to an induction head grows with the context."""
    T = cfg.copy_warmup_seq_len
    if T <= 0 or (cfg.batch_size * cfg.seq_len) % T:
        raise TrainError(f"copy_warmup_seq_len={T} must divide batch_size * seq_len = {cfg.batch_size * cfg.seq_len} "
                         "(the warm-up keeps the tokens per step): choose a divisor such as 64")
    rows = synthetic_rows(split, seed, step, cfg.batch_size * cfg.seq_len // T, T, cfg, warmup=True)   # (B', T'+1)
    return torch.from_numpy(rows[:, :-1].copy()), torch.from_numpy(rows[:, 1:].copy())


def _text_batch(split, seed: int, step: int, cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Natural-text rows with the recall mix's planted facts, spans and passages."""
    x, y = batch_for_step(split, seed, step, cfg.batch_size, cfg.seq_len)
    if cfg.recall_mix <= 0 and cfg.recall_induction <= 0 and cfg.recall_repeats <= 0:
        return x, y
    from revena_lib.data.recall_mix import plant_facts

    rows = np.concatenate([x.numpy(), y.numpy()[:, -1:]], axis=1)                         # (B, T+1)
    rows = plant_facts(rows, seed, step, cfg.recall_mix, cfg.recall_facts_per_row, split.tokenizer,
                       cfg.recall_induction, cfg.recall_repeats, tuple(cfg.recall_fact_digits),
                       cfg.recall_text_cues, cfg.recall_near, cfg.recall_distance, cfg.recall_cue_in_place)
    return torch.from_numpy(rows[:, :-1].copy()), torch.from_numpy(rows[:, 1:].copy())


def validation_batches(val_split, cfg: TrainConfig) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [batch_for_step(val_split, VAL_BATCH_SEED, i, cfg.batch_size, cfg.seq_len) for i in range(cfg.eval_batches)]


def characters_per_token(split) -> float:
    """Characters per predicted token of a split. Targets never include a document's opening EOT, so the
    denominator is the non-EOT tokens. An estimate for the training-time val BPC only: evaluation/bpc.py computes
    the exact per-document BPC."""
    return split.characters / max(1, len(split.tokens) - split.num_docs)
