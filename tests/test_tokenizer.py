"""Tokenizers: the offline GPT-2 BPE (known ids, the EOT token, Unicode round trips, a broken vocabulary file) and
the custom byte-level BPE (exact round trips, the EOT token, determinism, data/run mismatches)."""

import pytest

from revena_lib.data import tokenizer as tok
from revena_lib.data.tokenizer import EOT_ID, N_VOCAB, TokenizerError, get_tokenizer


def test_hello_world_ids():
    assert get_tokenizer("gpt2").encode("Hello world") == [15496, 995]


def test_vocabulary_size_and_name():
    enc = get_tokenizer("gpt2")
    assert enc.n_vocab == N_VOCAB == 50257
    assert enc.name == "gpt2"


def test_endoftext_is_special_token_50256():
    enc = get_tokenizer("gpt2")
    assert enc.encode("<|endoftext|>", allowed_special={"<|endoftext|>"}) == [EOT_ID] == [50256]
    assert enc.eot_token == EOT_ID
    # As ordinary text it is several tokens, which is why documents are tokenised with encode_ordinary.
    assert EOT_ID not in enc.encode_ordinary("<|endoftext|>")


@pytest.mark.parametrize("text", [
    "Fellow-Citizens of the Senate and House of Representatives:\n\n  In meeting you again...",
    "Café, naïve, Ångström, Zürich, São Paulo; Ελληνικά; русский",
    "汉字 かな カナ 한국어",
    "emoji 🙂👍🏽 flags 🇺🇸 and a ZWJ family 👨‍👩‍👧",
    "tabs\tand\r\nwindows newlines   and trailing spaces   ",
])
def test_round_trip_unicode(text):
    enc = get_tokenizer("gpt2")
    ids = enc.encode_ordinary(text)
    assert all(0 <= i < N_VOCAB for i in ids)
    assert enc.decode(ids) == text


def test_batch_encoding_matches_single():
    enc = get_tokenizer("gpt2")
    texts = ["Hello world", "Café 🙂", "汉字"]
    assert enc.encode_ordinary_batch(texts, num_threads=2) == [enc.encode_ordinary(t) for t in texts]


@pytest.fixture
def fresh_tokenizer_cache():
    # get_tokenizer is lru_cached: clear it so the test builds from the (patched) file, and again so
    # later tests get the real tokenizer back.
    tok.gpt2_tokenizer.cache_clear()
    yield
    tok.gpt2_tokenizer.cache_clear()


def test_corrupt_vocab_file_raises(tmp_path, monkeypatch, fresh_tokenizer_cache):
    bad = tmp_path / "gpt2.tiktoken"
    bad.write_bytes(tok.VOCAB_FILE.read_bytes()[:-100])
    monkeypatch.setattr(tok, "VOCAB_FILE", bad)
    with pytest.raises(TokenizerError, match="corrupt") as info:
        get_tokenizer("gpt2")
    assert str(bad) in str(info.value)


def test_missing_vocab_file_raises(tmp_path, monkeypatch, fresh_tokenizer_cache):
    missing = tmp_path / "nowhere" / "gpt2.tiktoken"
    monkeypatch.setattr(tok, "VOCAB_FILE", missing)
    with pytest.raises(TokenizerError, match="missing") as info:
        get_tokenizer("gpt2")
    assert str(missing) in str(info.value)


# ----------------------------------------------------------------------------- custom byte-level BPE

TEXTS = ["Fellow-Citizens of the Senate and House of Representatives: the pass key is 48213.",
         "In meeting you again, the union of these States, 1790 to 2021, remains strong."] * 20


@pytest.fixture(scope="module")
def bpe():
    return tok.train_bpe(TEXTS, 400)


@pytest.mark.parametrize("text", [
    "Café, naïve, Ångström; Ελληνικά; русский 汉字 かな 한국어",
    "emoji 🙂👍🏽 flags 🇺🇸 and a ZWJ family 👨‍👩‍👧, bytes never seen in training",
    "tabs\tand\r\nwindows newlines   and trailing spaces   ",
    "a literal <|endoftext|> inside a document stays text",
    "",
])
def test_bpe_round_trips_any_unicode(bpe, text):
    ids = bpe.encode_ordinary(text)
    assert all(0 <= i < bpe.n_vocab for i in ids)
    assert bpe.decode(ids) == text and bpe.decode_bytes(ids) == text.encode("utf-8")


def test_bpe_eot_is_one_special_token_never_produced_by_text(bpe):
    assert 256 < bpe.n_vocab <= 400 and bpe.eot_token == 0   # a tiny corpus may offer fewer merges than asked
    assert bpe.decode([bpe.eot_token]) == "<|endoftext|>"
    assert bpe.eot_token not in bpe.encode_ordinary("x <|endoftext|> y")
    assert bpe.encode("Hello") == bpe.encode_ordinary("Hello")


def test_bpe_splits_digits_and_training_is_deterministic(bpe):
    pieces = [bpe.decode([i]) for i in bpe.encode(" key 48213")]
    assert pieces[-5:] == list("48213")                           # one token per digit: copyable digit by digit
    again = tok.train_bpe(TEXTS, 400)
    assert again.sha256 == bpe.sha256 and again.encode(TEXTS[0]) == bpe.encode(TEXTS[0])


def test_bpe_names_are_checked():
    assert tok.parse_tokenizer_name("gpt2") is None and tok.parse_tokenizer_name("bpe-4096") == 4096
    for bad in ("bpe", "bpe-12", "bpe-70000", "sentencepiece"):
        with pytest.raises(TokenizerError, match="gpt2|between"):
            tok.parse_tokenizer_name(bad)


def test_prepared_bpe_data_and_a_run_that_disagrees(tmp_path, monkeypatch):
    from revena_lib.training.checkpoint import CheckpointError
    from revena_lib.config import get_preset
    from revena_lib.data.prepare import prepare_data
    from revena_lib.data.splits import load_split
    from revena_lib.training.loop import train

    monkeypatch.setenv("REVENA_HOME", str(tmp_path))
    tiny = dict(source="embedded", num_docs=12, max_doc_chars=3_000, val_fraction=0.25, split_seed=7, progress=False)
    meta = prepare_data(tokenizer="bpe-512", **tiny)
    assert meta["tokenizer"]["name"] == "bpe-512" and (tmp_path / "data" / "tokenizer.json").exists()
    val = load_split("val")
    assert val.tokenizer.name == "bpe-512" and val.vocab_size == val.tokenizer.n_vocab <= 512
    assert (val.tokens[val.doc_offsets] == 0).all()                     # each document opens with its EOT
    assert val.document_text(0) == load_split("val").document_text(0)
    preset = get_preset("smoke")
    preset.train.seq_len = 128
    run = train(preset, arm="baseline", steps=1, progress=False, device="cpu", stop_at=1)
    config = (run / "config.json").read_text()
    assert f'"vocab_size": {val.vocab_size}' in config and '"bpe-512"' in config
    # The same run against GPT-2 data: refused, with the fix.
    prepare_data(tokenizer="gpt2", **tiny)
    with pytest.raises(CheckpointError, match="trained with tokenizer bpe-512 but data/ now holds gpt2.*--tokenizer bpe-512"):
        train(preset, arm="baseline", steps=2, progress=False, device="cpu", resume=True)
