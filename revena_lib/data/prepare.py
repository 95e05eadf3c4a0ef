"""The workbook's data: documents -> tokens -> ``data/train.bin``, ``data/val.bin``, ``data/meta.json``.

Tokens are GPT-2 BPE (the brief's default) or, with ``tokenizer="bpe-N"``, a byte-level BPE of N tokens learned
from the training split only and saved as ``data/tokenizer.json`` (``revena_lib/data/tokenizer.py``).

The real source is openwebtext, streamed from the Hugging Face hub (first ``num_docs`` documents).
With no network (most clusters, CI) the hub is detected as unreachable in well under a second and
the embedded corpus ``sotu`` (233 US State of the Union addresses, 1790-2021, public domain, shipped
in ``assets/sotu.jsonl.xz``) is used instead, loudly, and recorded in ``meta.json``.

Layout: every document is stored as ``[EOT, t1, ..., tn]`` (the EOT opens the document and is its BOS),
documents concatenated, uint16. Documents are split train/val by document (never inside one) with a
seeded shuffle. ``meta.json`` keeps per-document offsets, token lengths, characters and UTF-8 bytes, so
bits per character / byte are exact, plus each .bin's size and sha256, which every load verifies.

    from revena_lib.data.prepare import prepare_data, load_split
    prepare_data(source="embedded"); val = load_split("val"); val.document(0)[:5]
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import lzma
import os
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from revena_lib.paths import ASSETS_DIR, atomic_write, data_dir as default_data_dir, file_sha256
from revena_lib.data.tokenizer import (TOKENIZER_FILE, TokenizerError, encode_texts, get_tokenizer, gpt2_tokenizer,
                                       parse_tokenizer_name, tokenizer_info, train_bpe)

SOURCES = ("auto", "embedded", "openwebtext")
SPLITS = ("train", "val")
HF_DATASET_ID = "Skylion007/openwebtext"  # the hub's canonical id; plain "openwebtext" redirects to it
EMBEDDED_CORPUS_FILE = ASSETS_DIR / "sotu.jsonl.xz"
EMBEDDED_CORPUS_NAME = "sotu"
EMBEDDED_CORPUS_DESCRIPTION = "233 US State of the Union addresses 1790-2021, public domain"
HUB_PROBE_TIMEOUT_S = 1.0
FORMAT_VERSION = 2   # 2: meta.json's "tokenizer" is a dict (name, vocab_size, eot_id, sha256, file)
PREPARE_HINT = "python -m revena_lib.prepare_data"

META_KEYS = ("format_version", "corpus", "source", "fallback_reason", "tokenizer", "settings", "splits")
SPLIT_KEYS = ("file", "documents", "tokens", "characters", "bytes", "file_bytes", "sha256",
              "doc_offsets", "doc_lengths", "doc_characters", "doc_bytes")
SETTING_KEYS = ("num_docs", "max_doc_chars", "val_fraction", "split_seed", "tokenizer")


class DataError(RuntimeError):
    pass


# -----------------------------------------------------------------------------
# Reading the prepared splits

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
    problem = _bin_problem(directory / info["file"], info)
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


def _bin_problem(path: Path, info: dict) -> str | None:
    """None if the .bin matches its meta entry, else what is wrong with it (naming the file)."""
    if not path.exists():
        return f"{path} is missing"
    size = path.stat().st_size
    if size != info["file_bytes"]:
        return f"{path} is truncated or changed ({size} bytes, meta.json says {info['file_bytes']})"
    if file_sha256(path) != info["sha256"]:
        return f"{path} does not match meta.json (sha256 differs)"
    return None


# -----------------------------------------------------------------------------
# Documents: the embedded corpus, openwebtext, and deciding between them

def load_embedded_records() -> list[dict]:
    """The embedded corpus as records {year, name, party, text}, in corpus (chronological) order."""
    return [dict(record) for record in _read_embedded_records()]


@functools.lru_cache(maxsize=1)
def _read_embedded_records() -> tuple[dict, ...]:
    # Cached: decompressing 10.8 M characters of xz takes a few tenths of a second, and tests prepare often.
    try:
        with lzma.open(EMBEDDED_CORPUS_FILE, "rt", encoding="utf-8") as f:
            return tuple(json.loads(line) for line in f if line.strip())
    except (OSError, lzma.LZMAError, json.JSONDecodeError) as e:
        raise DataError(f"embedded corpus {EMBEDDED_CORPUS_FILE} is missing or corrupt ({e}): restore it with "
                        "`git checkout -- revena_lib/assets/sotu.jsonl.xz`") from None


def load_embedded_corpus() -> list[str]:
    """The embedded corpus's texts (233 State of the Union addresses), in chronological order."""
    return [record["text"] for record in load_embedded_records()]


def hub_unreachable_reason(timeout: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """None if the Hugging Face hub answers, else why not. Takes at most ``timeout`` seconds.

    Asking ``datasets`` directly costs ~23 s of retries with no network, so probe once ourselves:
    one HEAD request (urllib honours HTTPS_PROXY), run in a thread so a hanging DNS lookup is cut off too.
    """
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{var}={os.environ[var]} is set"
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    outcome = {}

    def probe():
        try:
            urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout)
            outcome["reason"] = None
        except urllib.error.HTTPError:
            outcome["reason"] = None  # the server answered (even 4xx/5xx): the network is there
        except Exception as e:  # URLError, socket errors, TLS errors: no usable connection
            outcome["reason"] = f"cannot reach {endpoint}: {getattr(e, 'reason', e)}"

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    if "reason" not in outcome:
        return f"no answer from {endpoint} within {timeout:g} s"
    return outcome["reason"]


def resolve_source(source: str) -> tuple[str, str | None]:
    """(corpus, fallback_reason) for a requested source: "openwebtext" or "sotu", and why sotu if it was a fallback."""
    if source not in SOURCES:
        raise DataError(f"unknown source {source!r} (option --source / source=): choose one of {', '.join(SOURCES)}")
    if source == "embedded":
        return EMBEDDED_CORPUS_NAME, None
    reason = hub_unreachable_reason()
    if reason is None:
        return "openwebtext", None
    _set_hf_offline()
    if source == "openwebtext":
        raise DataError(f"openwebtext was asked for but the Hugging Face hub is unreachable ({reason}). "
                        "Use the embedded corpus instead: --source embedded (or source=\"auto\")")
    reason = f"Hugging Face hub unreachable ({reason})"
    _announce_fallback(reason)
    return EMBEDDED_CORPUS_NAME, reason


def _announce_fallback(reason: str):
    # One loud line: a result on the wrong corpus must never go unnoticed.
    print(f"revena: {reason}: using the embedded corpus '{EMBEDDED_CORPUS_NAME}' ({EMBEDDED_CORPUS_DESCRIPTION}) "
          "instead of openwebtext", file=sys.stderr, flush=True)


def _set_hf_offline():
    # Before `datasets` / `huggingface_hub` are imported anywhere, so they never start their retry loop.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"


def stream_openwebtext(num_docs: int, progress: bool = True) -> list[str]:
    """The first ``num_docs`` non-empty openwebtext documents, streamed from the hub (nothing else downloaded)."""
    from datasets import load_dataset
    from tqdm.auto import tqdm

    try:
        try:
            dataset = load_dataset(HF_DATASET_ID, split="train", streaming=True)
        except RuntimeError as e:
            if "Dataset scripts are no longer supported" not in str(e):
                raise
            # datasets>=4 refuses the repo's loading script; the hub's own parquet export has the same rows.
            dataset = load_dataset(HF_DATASET_ID, split="train", streaming=True, revision="refs/convert/parquet")
        texts = []
        with tqdm(total=num_docs, desc="openwebtext", unit="doc", disable=not progress) as bar:
            for row in dataset:
                if row["text"].strip():
                    texts.append(row["text"])
                    bar.update(1)
                if len(texts) == num_docs:
                    break
    except Exception as e:  # network drops, hub changes: one clear message instead of a long traceback
        raise DataError(f"streaming {HF_DATASET_ID} from the Hugging Face hub failed ({type(e).__name__}: {e}). "
                        "Retry, or use the embedded corpus: --source embedded") from e
    return texts


def _read_corpus(corpus: str, num_docs: int, progress: bool) -> list[str]:
    if corpus == "openwebtext":
        return stream_openwebtext(num_docs, progress)
    return load_embedded_corpus()[:num_docs]


def load_documents(source: str = "auto", num_docs: int = 10_000, progress: bool = True) -> tuple[list[str], str, str | None]:
    """(texts, corpus, fallback_reason): the first ``num_docs`` documents of the source, in corpus order."""
    corpus, fallback_reason = resolve_source(source)
    return _read_corpus(corpus, num_docs, progress), corpus, fallback_reason


# -----------------------------------------------------------------------------
# Preparing the splits

def split_documents(num_docs: int, val_fraction: float, split_seed: int) -> tuple[list[int], list[int]]:
    """(train indices, val indices) into the corpus, each in corpus order. Deterministic per seed."""
    n_val = min(max(1, round(num_docs * val_fraction)), num_docs - 1)
    order = np.random.default_rng(split_seed).permutation(num_docs)
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


def prepare_data(source: str = "auto", num_docs: int = 10_000, max_doc_chars: int = 50_000,
                 val_fraction: float = 0.1, split_seed: int = 1337, data_dir=None, progress: bool = True,
                 force: bool = False, tokenizer: str = "gpt2") -> dict:
    """Tokenise the source into data/train.bin, data/val.bin, data/meta.json; returns meta.

    ``tokenizer``: "gpt2" (default), or "bpe-N": a byte-level BPE of N tokens trained on the training split's
    documents only (the split does not depend on the tokenizer), saved as data/tokenizer.json.

    Idempotent: if the directory already holds data built with the same settings and the files
    verify (size + sha256), they are reused. ``force`` rebuilds regardless.
    """
    _check_settings(num_docs, max_doc_chars, val_fraction)
    try:
        bpe_size = parse_tokenizer_name(tokenizer)
    except TokenizerError as e:
        raise DataError(f"--tokenizer: {e}") from None
    directory = Path(data_dir or default_data_dir())
    settings = {"num_docs": int(num_docs), "max_doc_chars": int(max_doc_chars),
                "val_fraction": float(val_fraction), "split_seed": int(split_seed), "tokenizer": tokenizer}
    if source in SOURCES and not force:
        # Already-prepared openwebtext data is what "auto" would build at best: reuse it without asking the hub,
        # so a researcher who goes offline never has it replaced by the fallback corpus.
        wanted = {"auto": "openwebtext", "openwebtext": "openwebtext", "embedded": EMBEDDED_CORPUS_NAME}[source]
        existing = _reusable_meta(directory, wanted, settings, quiet=True)
        if existing is not None:
            return _reused(existing, directory)
    corpus, fallback_reason = resolve_source(source)
    if not force:
        existing = _reusable_meta(directory, corpus, settings)
        if existing is not None:
            return _reused(existing, directory)

    try:
        texts = _read_corpus(corpus, num_docs, progress)
    except DataError as e:
        if source != "auto" or corpus != "openwebtext":
            raise
        # The hub answered but streaming failed (repo changed, connection dropped): "auto" still gets data.
        fallback_reason = f"streaming openwebtext failed ({e.__cause__ or e})"
        _announce_fallback(fallback_reason)
        corpus = EMBEDDED_CORPUS_NAME
        existing = None if force else _reusable_meta(directory, corpus, settings)
        if existing is not None:
            return _reused(existing, directory)
        texts = _read_corpus(corpus, num_docs, progress)
    if len(texts) < 2:
        raise DataError(f"only {len(texts)} document(s) from {corpus}: need at least 2 for a train/val split "
                        "(raise --num-docs)")

    # Truncate characters first, then tokenise: characters and UTF-8 bytes then describe exactly the tokenised text.
    truncated = [text[:max_doc_chars] for text in texts]
    train_ids, val_ids = split_documents(len(truncated), val_fraction, split_seed)
    _ensure_writable(directory)
    if bpe_size is None:
        encoder = gpt2_tokenizer()
        token_info = {"name": "gpt2", "vocab_size": encoder.n_vocab, "eot_id": encoder.eot_token}
    else:
        if progress:
            print(f"revena: training a byte-level BPE of {bpe_size} tokens on the {len(train_ids)} training documents",
                  flush=True)
        encoder = train_bpe([truncated[i] for i in train_ids], bpe_size)   # the training split only
        atomic_write(directory / TOKENIZER_FILE, lambda f: f.write(encoder._tok.to_str().encode("utf-8")))
        token_info = {"name": encoder.name, "vocab_size": encoder.n_vocab, "eot_id": encoder.eot_token,
                      "sha256": encoder.sha256, "file": TOKENIZER_FILE}
    doc_tokens = _tokenize(encoder, truncated, progress)

    meta = {
        "format_version": FORMAT_VERSION,
        "corpus": corpus,
        "corpus_description": (EMBEDDED_CORPUS_DESCRIPTION if corpus == EMBEDDED_CORPUS_NAME
                               else f"first {len(texts)} documents of {HF_DATASET_ID} (Hugging Face hub)"),
        "source": source,
        "fallback_reason": fallback_reason,
        "tokenizer": token_info,
        "vocab_size": token_info["vocab_size"],
        "eot_id": token_info["eot_id"],
        "dtype": "uint16",
        "layout": "each document is [EOT, t1..tn]; documents concatenated",
        "settings": settings,
        "documents": len(truncated),
        "documents_truncated": sum(len(t) > max_doc_chars for t in texts),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "splits": {},
    }
    for split, ids in (("train", train_ids), ("val", val_ids)):
        meta["splits"][split] = _write_split(directory, split, ids, truncated, doc_tokens, token_info["eot_id"])
    # meta.json last: until it is replaced, any older meta no longer matches the new .bin files and loading refuses them.
    _write_bytes(directory / "meta.json", json.dumps(meta, indent=1).encode("utf-8"))
    return meta


def prepare_from_preset(preset, source: str | None = None, data_dir=None, progress: bool = True,
                        force: bool = False, tokenizer: str | None = None) -> dict:
    """prepare_data with the preset's DataConfig; ``source`` and ``tokenizer`` override the preset's."""
    cfg = preset.data
    return prepare_data(source=source or cfg.source, num_docs=cfg.num_docs, max_doc_chars=cfg.max_doc_chars,
                        val_fraction=cfg.val_fraction, split_seed=cfg.split_seed, data_dir=data_dir,
                        progress=progress, force=force, tokenizer=tokenizer or cfg.tokenizer)


def _check_settings(num_docs, max_doc_chars, val_fraction):
    if not isinstance(num_docs, (int, np.integer)) or num_docs < 2:
        raise DataError(f"num_docs (--num-docs) must be an integer >= 2, got {num_docs!r}")
    if not isinstance(max_doc_chars, (int, np.integer)) or max_doc_chars < 1:
        raise DataError(f"max_doc_chars (--max-doc-chars) must be an integer >= 1, got {max_doc_chars!r}")
    if not isinstance(val_fraction, (int, float, np.floating)) or not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction (--val-fraction) must be between 0 and 1 (exclusive), got {val_fraction!r}")


def _reusable_meta(directory: Path, corpus: str, settings: dict, quiet: bool = False) -> dict | None:
    """The existing meta if it was built with these settings from this corpus and every file verifies."""
    try:
        meta = load_meta(directory)
    except DataError:
        return None
    if (meta.get("format_version") != FORMAT_VERSION or meta["corpus"] != corpus
            or {k: meta["settings"].get(k) for k in SETTING_KEYS} != settings):
        if not quiet:
            print(f"revena: existing data in {directory} was built with other settings or corpus; rebuilding",
                  flush=True)
        return None
    for split in SPLITS:
        problem = _bin_problem(directory / meta["splits"][split]["file"], meta["splits"][split])
        if problem:
            if not quiet:
                print(f"revena: existing data does not verify ({problem}); rebuilding", flush=True)
            return None
    return meta


def _reused(meta: dict, directory: Path) -> dict:
    print(f"revena: reusing the prepared {meta['corpus']} data in {directory} (same settings; sizes and sha256 "
          "verified; --force rebuilds)", flush=True)
    return meta


def _tokenize(tokenizer, texts: list[str], progress: bool) -> list[list[int]]:
    from tqdm.auto import tqdm

    threads = os.cpu_count() or 1
    batch = 64 * threads
    doc_tokens = []
    with tqdm(total=len(texts), desc="tokenising", unit="doc", disable=not progress) as bar:
        for start in range(0, len(texts), batch):
            # "<|endoftext|>" written inside a document stays text, never a separator (the separator is the real EOT
            # id, which _write_split puts before every document).
            doc_tokens.extend(encode_texts(tokenizer, texts[start:start + batch], num_threads=threads))
            bar.update(len(texts[start:start + batch]))
    return doc_tokens


def _write_split(directory: Path, split: str, ids: list[int], texts: list[str], doc_tokens: list[list[int]],
                 eot_id: int) -> dict:
    doc_lengths = [len(doc_tokens[i]) + 1 for i in ids]  # + the opening EOT
    doc_offsets = np.concatenate([[0], np.cumsum(doc_lengths)[:-1]]).astype(np.int64)
    tokens = np.empty(sum(doc_lengths), dtype=np.uint16)  # (N,)
    for offset, i in zip(doc_offsets, ids):
        tokens[offset] = eot_id
        tokens[offset + 1:offset + 1 + len(doc_tokens[i])] = doc_tokens[i]
    raw = tokens.tobytes()
    _write_bytes(directory / f"{split}.bin", raw)
    doc_characters = [len(texts[i]) for i in ids]
    doc_bytes = [len(texts[i].encode("utf-8")) for i in ids]
    return {
        "file": f"{split}.bin",
        "documents": len(ids),
        "tokens": int(tokens.size),
        "characters": sum(doc_characters),
        "bytes": sum(doc_bytes),
        "file_bytes": len(raw),
        "sha256": hashlib.sha256(raw).hexdigest(),
        "doc_source_index": ids,  # position of each document in the corpus order
        "doc_offsets": doc_offsets.tolist(),
        "doc_lengths": doc_lengths,
        "doc_characters": doc_characters,
        "doc_bytes": doc_bytes,
    }


def _ensure_writable(directory: Path):
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-test-"):
            pass
    except OSError as e:
        raise DataError(f"cannot write to the data directory {directory} ({e.strerror or e}): choose another with "
                        "--data-dir or REVENA_HOME") from None


def _write_bytes(path: Path, payload: bytes):
    atomic_write(path, lambda f: f.write(payload))


def summary_lines(meta: dict, directory=None) -> list[str]:
    """A short human summary of a meta dict (used by the CLI)."""
    lines = [f"corpus: {meta['corpus']} ({meta.get('corpus_description', '')}), source asked: {meta['source']}"
             + (f", fallback: {meta['fallback_reason']}" if meta["fallback_reason"] else ""),
             f"tokenizer: {tokenizer_info(meta)['name']} ({tokenizer_info(meta)['vocab_size']:,} tokens)"]
    for split in SPLITS:
        info = meta["splits"][split]
        lines.append(f"{split:>5}: {info['documents']:>6,} docs {info['tokens']:>12,} tokens "
                     f"{info['characters']:>13,} chars {info['characters'] / info['tokens']:.2f} chars/token")
    if directory is not None:
        lines.append(f"written to {directory}")
    return lines
