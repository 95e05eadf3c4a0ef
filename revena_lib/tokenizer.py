"""GPT-2 BPE through tiktoken, built from the vocabulary file shipped in ``assets/``, so it works offline.

``tiktoken.get_encoding("gpt2")`` downloads its files on first use and fails with no network; the
shipped ``gpt2.tiktoken`` is the same file (MIT, OpenAI; also ``whisper/assets/gpt2.tiktoken`` in the
``openai-whisper`` sdist), checked against its sha256 before use.

    from revena_lib.tokenizer import get_tokenizer
    get_tokenizer().encode("Hello world")  # [15496, 995]
"""

import base64
import functools
import hashlib

import tiktoken

from revena_lib.paths import ASSETS_DIR

VOCAB_FILE = ASSETS_DIR / "gpt2.tiktoken"
VOCAB_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
EOT_TOKEN = "<|endoftext|>"
EOT_ID = 50256
N_VOCAB = 50257
# GPT-2's pre-tokenisation pattern (the one tiktoken uses for its "gpt2" encoding).
GPT2_PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


class TokenizerError(RuntimeError):
    pass


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
def get_tokenizer() -> tiktoken.Encoding:
    """The GPT-2 tokenizer (50,257 tokens, ``<|endoftext|>`` = 50256). Cached: every caller shares one."""
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_PAT_STR,
        mergeable_ranks=_load_mergeable_ranks(),
        special_tokens={EOT_TOKEN: EOT_ID},
    )
