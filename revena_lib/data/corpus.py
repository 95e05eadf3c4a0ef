"""Where the documents come from: openwebtext from the Hugging Face hub, or the embedded corpus when offline.

The real source is openwebtext, streamed from the Hugging Face hub (first ``num_docs`` documents).
With no network (most clusters, CI) the hub is detected as unreachable in well under a second and
the embedded corpus ``sotu`` (233 US State of the Union addresses, 1790-2021, public domain, shipped
in ``assets/sotu.jsonl.xz``) is used instead, loudly, and recorded in ``meta.json``.

    from revena_lib.data.corpus import load_documents
    texts, corpus, fallback_reason = load_documents("auto", num_docs=233)   # corpus: "openwebtext" or "sotu"
"""

from __future__ import annotations

import functools
import json
import lzma
import os
import sys
import threading
import urllib.error
import urllib.request

from revena_lib.data import DataError
from revena_lib.paths import ASSETS_DIR

SOURCES = ("auto", "embedded", "openwebtext")
HF_DATASET_ID = "Skylion007/openwebtext"  # the hub's canonical id; plain "openwebtext" redirects to it
EMBEDDED_CORPUS_FILE = ASSETS_DIR / "sotu.jsonl.xz"
EMBEDDED_CORPUS_NAME = "sotu"
EMBEDDED_CORPUS_DESCRIPTION = "233 US State of the Union addresses 1790-2021, public domain"
HUB_PROBE_TIMEOUT_S = 1.0


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
    announce_fallback(reason)
    return EMBEDDED_CORPUS_NAME, reason


def announce_fallback(reason: str):
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


def read_corpus(corpus: str, num_docs: int, progress: bool) -> list[str]:
    """The first ``num_docs`` documents of a corpus already chosen by ``resolve_source`` ("openwebtext" or "sotu")."""
    if corpus == "openwebtext":
        return stream_openwebtext(num_docs, progress)
    return load_embedded_corpus()[:num_docs]


def load_documents(source: str = "auto", num_docs: int = 10_000, progress: bool = True) -> tuple[list[str], str, str | None]:
    """(texts, corpus, fallback_reason): the first ``num_docs`` documents of the source, in corpus order."""
    corpus, fallback_reason = resolve_source(source)
    return read_corpus(corpus, num_docs, progress), corpus, fallback_reason

