"""Tokenizers: GPT-2 BPE (the brief's default, offline from a shipped file) or a custom byte-level BPE trained on
the training split with Hugging Face ``tokenizers``. Both offer the same small surface (tiktoken's names):
``encode``/``encode_ordinary``/``encode_ordinary_batch``, ``decode``, ``decode_bytes``, ``n_vocab``, ``eot_token``,
``name``.

GPT-2: ``tiktoken.get_encoding("gpt2")`` downloads its files on first use and fails with no network; the shipped
``gpt2.tiktoken`` is the same file (MIT, OpenAI; also ``whisper/assets/gpt2.tiktoken`` in the ``openai-whisper``
sdist), checked against its sha256 before use.

Custom (``bpe-N``): ``train_bpe(texts, N)`` learns N tokens (``<|endoftext|>`` is id 0) over bytes, so every
Unicode text round-trips exactly; digits are split one per token before BPE, so a number is copied digit by
digit (a small model copies a 5-digit pass key as 5 known tokens, never as an unseen merge). Saved as
``tokenizer.json`` beside the data; ``meta.json`` records its name and sha256.

Text is encoded in one place, ``encode_text(tokenizer, text)`` (``encode_texts`` for many): every path that turns
text into tokens (data preparation, sessions and their widgets, the probe widget, sleep days, recall items) calls it.
It reads text as ordinary text with either tokenizer: ``"<|endoftext|>"`` written inside a text is those 13
characters, never the end-of-text token (tiktoken's ``encode`` would raise on it instead). The end-of-text id only
enters a sequence where code puts it on purpose (a document's opening token).

    from revena_lib.data.tokenizer import encode_text, get_tokenizer
    encode_text(get_tokenizer("gpt2"), "Hello world")  # [15496, 995]
    encode_text(get_tokenizer(), "Hello world")        # with the tokenizer of the prepared data (data/meta.json)
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import re
from pathlib import Path

import tiktoken

from revena_lib.paths import ASSETS_DIR, data_dir as default_data_dir

VOCAB_FILE = ASSETS_DIR / "gpt2.tiktoken"
VOCAB_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
EOT_TOKEN = "<|endoftext|>"
EOT_ID = 50256          # GPT-2's; a custom BPE's is 0 (use tokenizer.eot_token)
N_VOCAB = 50257         # GPT-2's (use tokenizer.n_vocab)
TOKENIZER_FILE = "tokenizer.json"
# GPT-2's pre-tokenisation pattern (the one tiktoken uses for its "gpt2" encoding).
GPT2_PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
BPE_NAME = re.compile(r"^bpe-(\d+)$")
MIN_BPE_VOCAB = 300      # 256 bytes + the special token + a few merges
MAX_BPE_VOCAB = 65_535   # token ids are stored as uint16


class TokenizerError(RuntimeError):
    pass


# -----------------------------------------------------------------------------
# GPT-2 (tiktoken)

def _load_mergeable_ranks() -> dict[bytes, int]:
    if not VOCAB_FILE.exists():
        raise TokenizerError(
            f"GPT-2 vocabulary file {VOCAB_FILE} is missing. Reinstall the package "
            "(pip install -e .) or restore it with `git checkout -- revena_lib/assets/gpt2.tiktoken`."
        )
    raw = VOCAB_FILE.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != VOCAB_SHA256:
        raise TokenizerError(
            f"GPT-2 vocabulary file {VOCAB_FILE} is corrupt (sha256 {digest}, expected {VOCAB_SHA256}). "
            "Restore it with `git checkout -- revena_lib/assets/gpt2.tiktoken`."
        )
    ranks = {}
    for line in raw.splitlines():
        if line:
            token_b64, rank = line.split()
            ranks[base64.b64decode(token_b64)] = int(rank)
    return ranks


@functools.lru_cache(maxsize=1)
def gpt2_tokenizer() -> tiktoken.Encoding:
    """The GPT-2 tokenizer (50,257 tokens, ``<|endoftext|>`` = 50256). Cached: every caller shares one."""
    return tiktoken.Encoding(name="gpt2", pat_str=GPT2_PAT_STR, mergeable_ranks=_load_mergeable_ranks(),
                             special_tokens={EOT_TOKEN: EOT_ID})


# -----------------------------------------------------------------------------
# Custom byte-level BPE (Hugging Face tokenizers)

def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map of the 256 byte values onto printable characters (what ByteLevel uses)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


class BPETokenizer:
    """A trained ``tokenizers.Tokenizer`` behind tiktoken's method names."""

    def __init__(self, hf_tokenizer, name: str, sha256: str = ""):
        self._tok = hf_tokenizer
        self.name, self.sha256 = name, sha256
        self.eot_token = hf_tokenizer.token_to_id(EOT_TOKEN)
        if self.eot_token is None:
            raise TokenizerError(f"tokenizer {name} has no {EOT_TOKEN} token: retrain it with prepare_data --force")
        self.n_vocab = hf_tokenizer.get_vocab_size()
        unicode_to_byte = {c: b for b, c in _byte_to_unicode().items()}
        vocab = hf_tokenizer.get_vocab()
        self._bytes = [b""] * self.n_vocab                                   # id -> raw bytes
        for token, i in vocab.items():
            self._bytes[i] = (token.encode("utf-8") if i == self.eot_token
                              else bytes(unicode_to_byte[c] for c in token))

    def encode_ordinary(self, text: str) -> list[int]:
        """Ordinary text, as tiktoken's encode_ordinary: the text "<|endoftext|>" is tokenised like any other text,
        exactly as if no special token existed (pre-tokenizer, then the BPE model; never the special-token match)."""
        if EOT_TOKEN not in text:   # nothing a special-token match could catch: the fast path gives the same ids
            return self._tok.encode(text, add_special_tokens=False).ids
        return [t.id for piece, _ in self._tok.pre_tokenizer.pre_tokenize_str(text)
                for t in self._tok.model.tokenize(piece)]

    def encode(self, text: str, **_) -> list[int]:
        """Like encode_ordinary (tiktoken's special-token arguments are accepted and ignored)."""
        return self.encode_ordinary(text)

    def encode_ordinary_batch(self, texts: list[str], num_threads: int = 1) -> list[list[int]]:
        return [self.encode_ordinary(t) for t in texts]

    def decode_bytes(self, ids) -> bytes:
        return b"".join(self._bytes[int(i)] for i in ids)

    def decode(self, ids) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def save(self, path: Path) -> None:
        self._tok.save(str(path))


def encode_text(tokenizer, text: str) -> list[int]:
    """``text`` as token ids, read as ordinary text: the one function every path that encodes text goes through.

    A special token's spelling inside ``text`` (``"<|endoftext|>"``) is read as those characters with GPT-2 and with
    a bpe-N tokenizer alike, so user text can never end a document or raise (tiktoken's own ``encode`` raises
    "disallowed special token"). Where a sequence needs the end-of-text token, add ``tokenizer.eot_token``."""
    if not isinstance(text, str):
        raise TypeError(f"encode_text: expected a str, got {type(text).__name__} (token ids need no encoding)")
    return tokenizer.encode_ordinary(text)


def encode_texts(tokenizer, texts, num_threads: int = 1) -> list[list[int]]:
    """``encode_text`` of many texts (tiktoken encodes a batch on ``num_threads`` threads): the same ids."""
    texts = list(texts)
    if any(not isinstance(t, str) for t in texts):
        raise TypeError("encode_texts: every text must be a str")
    return tokenizer.encode_ordinary_batch(texts, num_threads=num_threads)


def parse_tokenizer_name(name: str) -> int | None:
    """'gpt2' -> None; 'bpe-N' -> N (checked); anything else: a TokenizerError that says what is allowed."""
    if name == "gpt2":
        return None
    match = BPE_NAME.match(name or "")
    if not match:
        raise TokenizerError(f"unknown tokenizer {name!r}: use gpt2 (the brief's default) or bpe-N, a byte-level BPE of "
                             f"N tokens trained on the training split (e.g. bpe-4096)")
    size = int(match.group(1))
    if not MIN_BPE_VOCAB <= size <= MAX_BPE_VOCAB:
        raise TokenizerError(f"tokenizer {name!r}: N must be between {MIN_BPE_VOCAB} and {MAX_BPE_VOCAB} "
                             "(token ids are stored as uint16)")
    return size


def train_bpe(texts, vocab_size: int) -> BPETokenizer:
    """A byte-level BPE of ``vocab_size`` tokens learned from ``texts`` (the training split only). Deterministic."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT_TOKEN], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    name = f"bpe-{vocab_size}"
    return BPETokenizer(tok, name, hashlib.sha256(tok.to_str().encode("utf-8")).hexdigest())


def load_bpe(path: Path, name: str, sha256: str | None = None) -> BPETokenizer:
    """A saved tokenizer.json, verified against the sha256 meta.json recorded."""
    from tokenizers import Tokenizer

    path = Path(path)
    if not path.exists():
        raise TokenizerError(f"{path} is missing: the data was prepared with tokenizer {name}; rebuild it with "
                             f"`python -m revena_lib.prepare_data --tokenizer {name} --force`")
    text = path.read_text(encoding="utf-8")
    tok = Tokenizer.from_str(text)
    digest = hashlib.sha256(tok.to_str().encode("utf-8")).hexdigest()
    if sha256 and digest != sha256:
        raise TokenizerError(f"{path} does not match data/meta.json (sha256 {digest[:12]}..., expected "
                             f"{sha256[:12]}...): rebuild with `python -m revena_lib.prepare_data --tokenizer {name} --force`")
    return BPETokenizer(tok, name, digest)


# -----------------------------------------------------------------------------
# Which tokenizer

@functools.lru_cache(maxsize=8)
def _cached_bpe(path: str, name: str, sha256: str, mtime: float) -> BPETokenizer:
    return load_bpe(Path(path), name, sha256)


def get_tokenizer(name_or_dir=None):
    """The tokenizer by name (``"gpt2"``), or of prepared data: a data directory, or None for the default one
    (``data/`` or ``$REVENA_HOME/data``). Without prepared data, GPT-2 (the brief's default)."""
    if name_or_dir == "gpt2":
        return gpt2_tokenizer()
    directory = Path(name_or_dir) if name_or_dir is not None else default_data_dir()
    meta_path = directory / "meta.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        if name_or_dir is not None and not directory.exists():
            raise TokenizerError(f"{directory} is not a data directory: prepare data first "
                                 "(python -m revena_lib.prepare_data)") from None
        return gpt2_tokenizer()
    info = tokenizer_info(meta)
    if info["name"] == "gpt2":
        return gpt2_tokenizer()
    path = directory / info.get("file", TOKENIZER_FILE)
    return _cached_bpe(str(path), info["name"], info.get("sha256", ""),
                       path.stat().st_mtime if path.exists() else 0.0)


def run_tokenizer(config: dict):
    """The tokenizer a trained run was trained with (its config.json's ``tokenizer``): GPT-2, or the custom BPE in
    the prepared data directory, checked against the run's recorded hash."""
    info = config.get("tokenizer") or {"name": "gpt2"}
    if info["name"] == "gpt2":
        return gpt2_tokenizer()
    return load_bpe(default_data_dir() / info.get("file", TOKENIZER_FILE), info["name"], info.get("sha256"))


def tokenizer_info(meta: dict) -> dict:
    """{"name", "vocab_size", "eot_id", "sha256"?, "file"?} from a meta.json (old files: gpt2)."""
    info = meta.get("tokenizer", "gpt2")
    if isinstance(info, str):   # format 1 wrote just the name
        info = {"name": info, "vocab_size": meta.get("vocab_size", N_VOCAB), "eot_id": meta.get("eot_id", EOT_ID)}
    return info


def check_same_tokenizer(run_tokenizer: dict | None, data_tokenizer: dict, where: str) -> None:
    """Refuse a run trained on another tokenizer than the prepared data holds (its ids would mean other text)."""
    if not run_tokenizer:
        run_tokenizer = {"name": "gpt2"}   # runs from before custom vocabularies
    same = run_tokenizer.get("name") == data_tokenizer.get("name") and \
        run_tokenizer.get("sha256", "") == data_tokenizer.get("sha256", "")
    if not same:
        raise TokenizerError(
            f"{where} was trained with tokenizer {run_tokenizer.get('name')} but data/ now holds "
            f"{data_tokenizer.get('name')} data: re-prepare the data with "
            f"`python -m revena_lib.prepare_data --tokenizer {run_tokenizer.get('name')} --force` "
            "(BPC is per character, so runs of different vocabularies compare through their results, each evaluated "
            "on its own data), or train a new run on the current data")
