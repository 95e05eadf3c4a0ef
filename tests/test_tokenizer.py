"""The offline GPT-2 tokenizer: known ids, the EOT token, Unicode round trips, a broken vocabulary file."""

import pytest

from revena_lib import tokenizer as tok
from revena_lib.tokenizer import EOT_ID, N_VOCAB, TokenizerError, get_tokenizer


def test_hello_world_ids():
    assert get_tokenizer().encode("Hello world") == [15496, 995]


def test_vocabulary_size_and_name():
    enc = get_tokenizer()
    assert enc.n_vocab == N_VOCAB == 50257
    assert enc.name == "gpt2"


def test_endoftext_is_special_token_50256():
    enc = get_tokenizer()
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
    enc = get_tokenizer()
    ids = enc.encode_ordinary(text)
    assert all(0 <= i < N_VOCAB for i in ids)
    assert enc.decode(ids) == text


def test_batch_encoding_matches_single():
    enc = get_tokenizer()
    texts = ["Hello world", "Café 🙂", "汉字"]
    assert enc.encode_ordinary_batch(texts, num_threads=2) == [enc.encode_ordinary(t) for t in texts]


@pytest.fixture
def fresh_tokenizer_cache():
    # get_tokenizer is lru_cached: clear it so the test builds from the (patched) file, and again so
    # later tests get the real tokenizer back.
    get_tokenizer.cache_clear()
    yield
    get_tokenizer.cache_clear()


def test_corrupt_vocab_file_raises(tmp_path, monkeypatch, fresh_tokenizer_cache):
    bad = tmp_path / "gpt2.tiktoken"
    bad.write_bytes(tok.VOCAB_FILE.read_bytes()[:-100])
    monkeypatch.setattr(tok, "VOCAB_FILE", bad)
    with pytest.raises(TokenizerError, match="corrupt") as info:
        get_tokenizer()
    assert str(bad) in str(info.value)


def test_missing_vocab_file_raises(tmp_path, monkeypatch, fresh_tokenizer_cache):
    missing = tmp_path / "nowhere" / "gpt2.tiktoken"
    monkeypatch.setattr(tok, "VOCAB_FILE", missing)
    with pytest.raises(TokenizerError, match="missing") as info:
        get_tokenizer()
    assert str(missing) in str(info.value)
