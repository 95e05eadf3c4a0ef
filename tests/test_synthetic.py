"""The synthetic copying curriculum (data/synthetic.py, training/batches.py): episodes whose copies only content
can find, the warm-up's short rows, the share's schedule, determinism, and no change when it is off. CPU, seconds."""

import dataclasses

import numpy as np
import pytest
import torch

from revena_lib.config import TrainConfig, get_preset
from revena_lib.data.synthetic import copy_vocabulary, episode_row, synthetic_share
from revena_lib.data.tokenizer import encode_text
from revena_lib.training import TrainError
from revena_lib.training.batches import batch_for_step, training_batch

CURRICULUM = dict(seq_len=128, batch_size=4, copy_warmup_steps=3, copy_warmup_seq_len=64, copy_ramp_steps=4,
                  copy_share_end=0.25, copy_vocab=24, copy_span_min=4, copy_span_max=8, copy_gap_max=10)


@pytest.fixture
def train_split(smoke_data):
    from revena_lib.data.splits import load_split

    return load_split("train")


def test_the_vocabulary_is_the_digits_then_the_most_frequent_tokens(train_split):
    vocab = copy_vocabulary(train_split, 24)
    tok = train_split.tokenizer
    assert vocab.shape == (24,) and len(set(vocab.tolist())) == 24
    assert [int(t) for t in vocab[:10]] == [encode_text(tok, str(d))[0] for d in range(10)]
    counts = np.bincount(np.asarray(train_split.tokens), minlength=tok.n_vocab)
    others = [t for t in np.argsort(-counts, kind="stable") if t not in vocab[:10] and t != tok.eot_token]
    assert vocab[10:].tolist() == [int(t) for t in others[:14]]


def test_an_episode_is_a_span_a_gap_and_the_span_again():
    vocab = np.arange(100, 110)
    for span, gap_max in (((4, 4), 0), ((3, 9), 5)):
        # reconstruct the episodes from the draws a twin generator makes
        row = episode_row(np.random.default_rng(5), vocab, 400, span, gap_max)
        rng, cur = np.random.default_rng(5), 0
        while cur + 2 * span[1] + gap_max < 400:
            tokens = rng.choice(vocab, int(rng.integers(span[0], span[1] + 1)))
            gap = rng.choice(vocab, int(rng.integers(0, gap_max + 1)))
            n = len(tokens)
            assert row[cur:cur + n].tolist() == tokens.tolist() == row[cur + n + len(gap):cur + 2 * n + len(gap)].tolist()
            cur += 2 * n + len(gap)
        assert set(row.tolist()) <= set(vocab.tolist())


def test_the_share_is_one_in_the_warmup_then_falls_linearly_and_stays():
    cfg = TrainConfig(**CURRICULUM)
    assert [synthetic_share(s, cfg) for s in range(9)] == [1.0, 1.0, 1.0, 1.0, 0.8125, 0.625, 0.4375, 0.25, 0.25]
    assert synthetic_share(0, TrainConfig()) == 0.0


def test_warmup_rows_are_short_and_keep_the_tokens_per_step_then_text_and_episodes_mix(train_split):
    cfg = TrainConfig(**CURRICULUM)
    vocab = set(copy_vocabulary(train_split, 24).tolist())
    x, y = training_batch(train_split, 7, 0, cfg)
    assert x.shape == y.shape == (8, 64) and torch.equal(x[:, 1:], y[:, :-1])
    assert set(x.flatten().tolist()) <= vocab
    synthetic_rows_seen = text_rows_seen = 0
    for step in range(3, 12):
        x, y = training_batch(train_split, 7, step, cfg)
        assert x.shape == (4, 128) and torch.equal(x[:, 1:], y[:, :-1])
        text, _ = batch_for_step(train_split, 7, step, 4, 128)
        for row, text_row in zip(x, text):
            if torch.equal(row, text_row):
                text_rows_seen += 1
            else:
                assert set(row.tolist()) <= vocab
                synthetic_rows_seen += 1
    assert synthetic_rows_seen and text_rows_seen
    a, b = training_batch(train_split, 7, 5, cfg), training_batch(train_split, 7, 5, cfg)
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], training_batch(train_split, 8, 5, cfg)[0])


def test_off_by_default_the_batches_are_what_they_were(train_split):
    cfg = get_preset("smoke").train
    assert cfg.copy_warmup_steps == cfg.copy_ramp_steps == 0 and cfg.copy_share_end == 0.0
    x, _ = training_batch(train_split, 7, 2, cfg)
    off = dataclasses.replace(cfg, copy_vocab=10, copy_gap_max=0)       # other copy_* fields alone change nothing
    assert torch.equal(x, training_batch(train_split, 7, 2, off)[0])


def test_a_warmup_row_length_that_does_not_divide_the_step_is_refused(train_split):
    cfg = TrainConfig(**{**CURRICULUM, "copy_warmup_seq_len": 100})
    with pytest.raises(TrainError, match="copy_warmup_seq_len=100 must divide batch_size \\* seq_len = 512"):
        training_batch(train_split, 7, 0, cfg)


def test_a_curriculum_recipe_trains_through_warmup_ramp_and_text(smoke_data, tmp_path):
    """The warm-up's batches have another shape (more, shorter rows); the loop trains through all three phases."""
    import json

    from revena_lib.training.loop import train
    from revena_lib.training.recipes import apply_recipe

    preset = apply_recipe("smoke", "copy_repeats")
    preset.train = dataclasses.replace(preset.train, steps=6, batch_size=4, copy_warmup_steps=2, copy_ramp_steps=2,
                                       eval_interval=3, log_interval=1)
    assert preset.model.smear_key
    out = train(preset, steps=6, out_dir=tmp_path / "run", progress=False)
    config = json.loads((out / "config.json").read_text())
    assert config["finished"] and config["train"]["recipe"] == "copy_repeats"
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert len(losses) >= 6 and all(np.isfinite(losses))


def test_after_the_warmup_episodes_can_draw_from_a_smaller_vocabulary(train_split):
    cfg = TrainConfig(**{**CURRICULUM, "copy_vocab_after": 12, "copy_share_end": 1.0})
    small = set(copy_vocabulary(train_split, 12).tolist())
    warm, _ = training_batch(train_split, 7, 0, cfg)
    assert not set(warm.flatten().tolist()) <= small                 # the warm-up keeps its 24 tokens
    after, _ = training_batch(train_split, 7, 9, cfg)                # every row an episode (share 1)
    assert set(after.flatten().tolist()) <= small


def test_short_row_steps_keep_the_tokens_per_step_and_scale_the_facts(train_split):
    """short_row_every=2: steps 0, 2, 4 read 64-token rows (4x as many), the others the long rows, which are the
    batches the run would read without it; facts per row scale with the row (8 per 256 -> 2 per 64)."""
    from revena_lib.training.batches import short_row_config

    cfg = TrainConfig(seq_len=256, batch_size=2, recall_mix=1.0, recall_facts_per_row=8)
    mixed = dataclasses.replace(cfg, short_row_every=2, short_row_len=64)
    for step in range(4):
        x, y = training_batch(train_split, 7, step, mixed)
        assert tuple(x.shape) == ((8, 64) if step % 2 == 0 else (2, 256)) and x.shape == y.shape
        if step % 2:
            assert torch.equal(x, training_batch(train_split, 7, step, cfg)[0])
    short = short_row_config(mixed)
    assert (short.seq_len, short.batch_size, short.recall_facts_per_row, short.short_row_every) == (64, 8, 2, 0)
    with pytest.raises(TrainError, match="short_row_len=100 must be below seq_len=256 and divide"):
        training_batch(train_split, 7, 0, dataclasses.replace(mixed, short_row_len=100))
