"""The prepared data, read back: ``data/train.bin``, ``data/val.bin`` and ``data/meta.json`` as ``TokenSplit`` s.

Every load verifies the .bin against its meta.json entry (size and sha256) before use, so a truncated or replaced
file is refused with the command that rebuilds it. Layout (written by ``revena_lib/data/prepare.py``): every
document is ``[EOT, t1, ..., tn]``, documents concatenated, uint16; meta.json keeps per-document offsets, token
lengths, characters and UTF-8 bytes, so bits per character / byte are exact.

    from revena_lib.data.splits import load_split
    val = load_split("val"); val.document(0)[:5]; val.num_docs
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from revena_lib.data import DataError
from revena_lib.data.tokenizer import get_tokenizer, tokenizer_info
from revena_lib.paths import data_dir as default_data_dir, file_sha256

SPLITS = ("train", "val")
FORMAT_VERSION = 2   # 2: meta.json's "tokenizer" is a dict (name, vocab_size, eot_id, sha256, file)
PREPARE_HINT = "python -m revena_lib.prepare_data"

META_KEYS = ("format_version", "corpus", "source", "fallback_reason", "tokenizer", "settings", "splits")
SPLIT_KEYS = ("file", "documents", "tokens", "characters", "bytes", "file_bytes", "sha256",
              "doc_offsets", "doc_lengths", "doc_characters", "doc_bytes")


@dataclass
class TokenSplit:
    name: str                     # "train" or "val"
    tokens: np.ndarray            # (N,) uint16, memmap of the .bin
    doc_offsets: np.ndarray       # (D,) int64, index of each document's opening EOT
    doc_lengths: np.ndarray       # (D,) int64, tokens per document incl. its EOT
    doc_characters: np.ndarray    # (D,) int64, characters of the (truncated) text
    doc_bytes: np.ndarray         # (D,) int64, UTF-8 bytes of the (truncated) text
    characters: int
    bytes: int
    meta: dict                    # the whole meta.json
    data_dir: Path | None = None  # where it was read from (its tokenizer lives there)

    @property
    def num_docs(self) -> int:
        return len(self.doc_offsets)

    def document(self, i: int) -> np.ndarray:
        """Document i's tokens, starting with its opening EOT."""
        start = int(self.doc_offsets[i])
        return self.tokens[start:start + int(self.doc_lengths[i])]

    def document_text(self, i: int) -> str:
        """Document i decoded back to text (without the EOT)."""
        return self.tokenizer.decode(self.document(i)[1:].tolist())

    @property
    def tokenizer(self):
        """The tokenizer these tokens were made with (GPT-2, or the data's tokenizer.json)."""
        return get_tokenizer(self.data_dir)

    @property
    def vocab_size(self) -> int:
        return int(tokenizer_info(self.meta)["vocab_size"])


def load_meta(data_dir=None) -> dict:
    """meta.json of the prepared data; DataError naming the file and the fix if missing or corrupt."""
    path = Path(data_dir or default_data_dir()) / "meta.json"
    if not path.exists():
        raise DataError(f"{path} is missing: prepare the data first with `{PREPARE_HINT}` "
                        "(or run notebooks/01_prepare_data.ipynb)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path} is corrupt ({e}): rebuild it with `{PREPARE_HINT} --force`") from None
    problem = _meta_problem(meta)
    if problem:
        raise DataError(f"{path} is corrupt ({problem}): rebuild it with `{PREPARE_HINT} --force`")
    return meta


def load_split(split: str, data_dir=None) -> TokenSplit:
    """One split, verified against meta.json (file size and sha256) before use."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")
    directory = Path(data_dir or default_data_dir())
    meta = load_meta(directory)
    info = meta["splits"][split]
    problem = bin_problem(directory / info["file"], info)
    if problem:
        raise DataError(f"{problem}: rebuild the data with `{PREPARE_HINT} --force`")
    tokens = np.memmap(directory / info["file"], dtype=np.uint16, mode="r")  # (N,)
    return TokenSplit(
        name=split,
        tokens=tokens,
        doc_offsets=np.asarray(info["doc_offsets"], dtype=np.int64),
        doc_lengths=np.asarray(info["doc_lengths"], dtype=np.int64),
        doc_characters=np.asarray(info["doc_characters"], dtype=np.int64),
        doc_bytes=np.asarray(info["doc_bytes"], dtype=np.int64),
        characters=int(info["characters"]),
        bytes=int(info["bytes"]),
        meta=meta,
        data_dir=directory,
    )


def _meta_problem(meta) -> str | None:
    if not isinstance(meta, dict):
        return "not a JSON object"
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        return f"missing keys {missing}"
    if not isinstance(meta["splits"], dict) or not isinstance(meta["settings"], dict):
        return "'splits' and 'settings' must be objects"
    for split in SPLITS:
        info = meta["splits"].get(split)
        if not isinstance(info, dict):
            return f"no split {split!r}"
        missing = [k for k in SPLIT_KEYS if k not in info]
        if missing:
            return f"split {split!r} is missing keys {missing}"
        if not (len(info["doc_offsets"]) == len(info["doc_lengths"]) == len(info["doc_characters"])
                == len(info["doc_bytes"]) == info["documents"]):
            return f"split {split!r} has per-document lists of different lengths"
    return None


def bin_problem(path: Path, info: dict) -> str | None:
    """None if the .bin matches its meta entry, else what is wrong with it (naming the file)."""
    if not path.exists():
        return f"{path} is missing"
    size = path.stat().st_size
    if size != info["file_bytes"]:
        return f"{path} is truncated or changed ({size} bytes, meta.json says {info['file_bytes']})"
    if file_sha256(path) != info["sha256"]:
        return f"{path} does not match meta.json (sha256 differs)"
    return None

