"""Preparing the data: documents -> tokens -> ``data/train.bin``, ``data/val.bin``, ``data/meta.json``.

Tokens are GPT-2 BPE (the brief's default) or, with ``tokenizer="bpe-N"``, a byte-level BPE of N tokens learned
from the training split only and saved as ``data/tokenizer.json`` (``revena_lib/data/tokenizer.py``). The
documents come from ``revena_lib/data/corpus.py`` (openwebtext, or the embedded corpus when offline).

Layout: every document is stored as ``[EOT, t1, ..., tn]`` (the EOT opens the document and is its BOS),
documents concatenated, uint16. Documents are split train/val by document (never inside one) with a
seeded shuffle. ``meta.json`` keeps per-document offsets, token lengths, characters and UTF-8 bytes, so
bits per character / byte are exact, plus each .bin's size and sha256, which every load verifies
(``revena_lib/data/splits.py`` reads them back). ``main`` is ``python -m revena_lib.prepare_data``.

    from revena_lib.data.prepare import prepare_data; from revena_lib.data.splits import load_split
    prepare_data(source="embedded"); val = load_split("val"); val.document(0)[:5]
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from revena_lib.config import PRESETS, get_preset
from revena_lib.data import DataError
from revena_lib.data.corpus import (EMBEDDED_CORPUS_DESCRIPTION, EMBEDDED_CORPUS_NAME, HF_DATASET_ID, SOURCES,
                                    announce_fallback, read_corpus, resolve_source)
from revena_lib.data.splits import FORMAT_VERSION, SPLITS, bin_problem, load_meta
from revena_lib.data.tokenizer import (TOKENIZER_FILE, TokenizerError, encode_texts, gpt2_tokenizer,
                                       parse_tokenizer_name, tokenizer_info, train_bpe)
from revena_lib.paths import atomic_write, data_dir as default_data_dir

SETTING_KEYS = ("num_docs", "max_doc_chars", "val_fraction", "split_seed", "tokenizer")


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
        texts = read_corpus(corpus, num_docs, progress)
    except DataError as e:
        if source != "auto" or corpus != "openwebtext":
            raise
        # The hub answered but streaming failed (repo changed, connection dropped): "auto" still gets data.
        fallback_reason = f"streaming openwebtext failed ({e.__cause__ or e})"
        announce_fallback(fallback_reason)
        corpus = EMBEDDED_CORPUS_NAME
        existing = None if force else _reusable_meta(directory, corpus, settings)
        if existing is not None:
            return _reused(existing, directory)
        texts = read_corpus(corpus, num_docs, progress)
    if len(texts) < 2:
        raise DataError(f"only {len(texts)} document(s) from {corpus}: need at least 2 for a train/val split "
                        "(raise --num-docs)")
    return _write_prepared(directory, texts, {"corpus": corpus, "source": source, "fallback_reason": fallback_reason},
                           settings, bpe_size, progress)


def _write_prepared(directory: Path, texts: list[str], origin: dict, settings: dict, bpe_size: int | None,
                    progress: bool) -> dict:
    """Split, tokenise and write the documents (``origin``: corpus, source, fallback_reason); returns meta."""
    # Truncate characters first, then tokenise: characters and UTF-8 bytes then describe exactly the tokenised text.
    truncated = [text[:settings["max_doc_chars"]] for text in texts]
    train_ids, val_ids = split_documents(len(truncated), settings["val_fraction"], settings["split_seed"])
    _ensure_writable(directory)
    encoder, token_info = _make_tokenizer(bpe_size, [truncated[i] for i in train_ids], directory, progress)
    doc_tokens = _tokenize(encoder, truncated, progress)
    meta = _new_meta(texts, origin, token_info, settings)
    for split, ids in (("train", train_ids), ("val", val_ids)):
        meta["splits"][split] = _write_split(directory, split, ids, truncated, doc_tokens, token_info["eot_id"])
    # meta.json last: until it is replaced, any older meta no longer matches the new .bin files and loading refuses them.
    _write_bytes(directory / "meta.json", json.dumps(meta, indent=1).encode("utf-8"))
    return meta


def _make_tokenizer(bpe_size: int | None, train_texts: list[str], directory: Path, progress: bool):
    """(encoder, meta.json's tokenizer entry): GPT-2, or a BPE of ``bpe_size`` tokens trained on ``train_texts`` (the
    training split only) and saved as data/tokenizer.json."""
    if bpe_size is None:
        encoder = gpt2_tokenizer()
        return encoder, {"name": "gpt2", "vocab_size": encoder.n_vocab, "eot_id": encoder.eot_token}
    if progress:
        print(f"revena: training a byte-level BPE of {bpe_size} tokens on the {len(train_texts)} training documents",
              flush=True)
    encoder = train_bpe(train_texts, bpe_size)
    atomic_write(directory / TOKENIZER_FILE, lambda f: f.write(encoder._tok.to_str().encode("utf-8")))
    return encoder, {"name": encoder.name, "vocab_size": encoder.n_vocab, "eot_id": encoder.eot_token,
                     "sha256": encoder.sha256, "file": TOKENIZER_FILE}


def _new_meta(texts: list[str], origin: dict, token_info: dict, settings: dict) -> dict:
    """meta.json before its splits are written: where the documents came from, the tokenizer, the settings."""
    corpus = origin["corpus"]
    return {
        "format_version": FORMAT_VERSION,
        "corpus": corpus,
        "corpus_description": (EMBEDDED_CORPUS_DESCRIPTION if corpus == EMBEDDED_CORPUS_NAME
                               else f"first {len(texts)} documents of {HF_DATASET_ID} (Hugging Face hub)"),
        "source": origin["source"],
        "fallback_reason": origin["fallback_reason"],
        "tokenizer": token_info,
        "vocab_size": token_info["vocab_size"],
        "eot_id": token_info["eot_id"],
        "dtype": "uint16",
        "layout": "each document is [EOT, t1..tn]; documents concatenated",
        "settings": settings,
        "documents": len(texts),
        "documents_truncated": sum(len(t) > settings["max_doc_chars"] for t in texts),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "splits": {},
    }


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
        problem = bin_problem(directory / meta["splits"][split]["file"], meta["splits"][split])
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


# -----------------------------------------------------------------------------
# Command line: python -m revena_lib.prepare_data

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m revena_lib.prepare_data",
        description="Tokenise the corpus (GPT-2 BPE, or a custom BPE learned from the training split) into "
                    "data/train.bin, data/val.bin (uint16) and data/meta.json. "
                    "Each document is stored as [<|endoftext|>, tokens...] and documents are split train/val by "
                    "document. Re-running with the same settings reuses the verified files.",
    )
    presets = "; ".join(f"{name}: {get_preset(name).data.num_docs} docs of at most "
                        f"{get_preset(name).data.max_doc_chars:,} chars" for name in PRESETS)
    parser.add_argument("--preset", default="cpu", choices=list(PRESETS),
                        help=f"preset whose DataConfig gives the defaults below ({presets}) (default: cpu)")
    parser.add_argument("--source", default=None,
                        help=f"one of {', '.join(SOURCES)}. auto: openwebtext from the Hugging Face hub if it is "
                             "reachable, else the embedded corpus 'sotu' (233 State of the Union addresses). "
                             "embedded: always sotu, no network. openwebtext: the hub or an error "
                             "(default: the preset's, auto)")
    parser.add_argument("--num-docs", type=int, default=None,
                        help="use the first N documents of the source (the embedded corpus has 233) "
                             "(default: the preset's)")
    parser.add_argument("--max-doc-chars", type=int, default=None,
                        help="truncate every document to this many characters before tokenising "
                             "(default: the preset's)")
    parser.add_argument("--val-fraction", type=float, default=None,
                        help="share of documents held out for validation, 0 < f < 1 (default: the preset's, 0.1)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the document shuffle that decides the train/val split (default: the preset's)")
    parser.add_argument("--tokenizer", default=None, metavar="gpt2|bpe-N",
                        help="gpt2: the GPT-2 BPE (50,257 tokens, the brief's); bpe-N: a byte-level BPE of N tokens "
                             "trained on the training split only with Hugging Face tokenizers (digits split one per "
                             "token), saved as data/tokenizer.json; a smaller output layer trains much faster on a "
                             "CPU, and BPC stays per character (default: the preset's)")
    parser.add_argument("--data-dir", default=None,
                        help="where to write train.bin, val.bin, meta.json (default: $REVENA_HOME/data, "
                             "else the repo's data/)")
    parser.add_argument("--force", action="store_true",
                        help="rebuild even if data with the same settings already exists and verifies")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    cfg = get_preset(args.preset).data
    directory = args.data_dir or default_data_dir()
    start = time.perf_counter()
    try:
        meta = prepare_data(
            source=args.source if args.source is not None else cfg.source,
            num_docs=args.num_docs if args.num_docs is not None else cfg.num_docs,
            max_doc_chars=args.max_doc_chars if args.max_doc_chars is not None else cfg.max_doc_chars,
            val_fraction=args.val_fraction if args.val_fraction is not None else cfg.val_fraction,
            split_seed=args.seed if args.seed is not None else cfg.split_seed,
            data_dir=directory,
            progress=not args.quiet,
            force=args.force,
            tokenizer=args.tokenizer if args.tokenizer is not None else cfg.tokenizer,
        )
    except DataError as e:
        sys.exit(f"error: {e}")
    for line in summary_lines(meta, directory):
        print(line)
    print(f"done in {time.perf_counter() - start:.1f} s")
