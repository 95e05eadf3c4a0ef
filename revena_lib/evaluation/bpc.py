"""Bits per character: the validation documents, each read from its opening EOT, and their NLL in bits.

BPC = the summed NLL bits of every text token of the evaluation documents / their characters (bits per byte likewise
over UTF-8 bytes). The documents are a seeded random sample of the validation split, each cut to
``max_tokens_per_doc``; the memory is empty at each document's start (one forward call per document). BPC by
position splits the same sums at ``POSITION_BUCKETS``: tokens 0-127, 128-511 and 512+, where a memory can help.
The unigram model of the training tokens, scored on the same documents, is the bar every arm must clear.

    docs = evaluation_documents(load_split("val"), max_docs=16, max_tokens_per_doc=2048, seed=0)
    nll = document_nll(model, docs, device)["nll_bits"]                  # (D,) bits per document
    bpc = nll.sum() / sum(d["characters"] for d in docs)
"""

from __future__ import annotations

import numpy as np
import torch

from revena_lib.evaluation import EvalError

POSITION_BUCKETS = ((0, 128), (128, 512), (512, None))   # token positions in a document: where a memory can help


def bucket_name(lo: int, hi: int | None) -> str:
    return f"{lo}-{hi - 1}" if hi else f"{lo}+"


def evaluation_documents(split, max_docs: int, max_tokens_per_doc: int, seed: int = 0) -> list[dict]:
    """The validation documents BPC is measured on: a seeded random sample of ``max_docs`` (0 = all, in order),
    each cut to ``max_tokens_per_doc``. A random sample, not the first N: the split keeps the corpus's order,
    and the first documents of the State of the Union corpus are its oldest speeches.

    Characters/bytes are the document's own (meta.json) when it is whole, else those of exactly the decoded
    tokens kept, so the denominator always matches the tokens scored. Each document also carries the characters
    of each position bucket (``POSITION_BUCKETS``), for BPC by position.
    """
    enc = split.tokenizer
    if 0 < max_docs < split.num_docs:
        indices = sorted(np.random.default_rng(seed).choice(split.num_docs, size=max_docs, replace=False).tolist())
    else:
        indices = range(split.num_docs)
    docs = []
    for i in indices:
        tokens = np.asarray(split.document(i), dtype=np.int64)
        truncated = 0 < max_tokens_per_doc < len(tokens)
        if truncated:
            tokens = tokens[:max_tokens_per_doc]
            raw = enc.decode_bytes(tokens[1:].tolist())
            characters, n_bytes = len(raw.decode("utf-8", errors="replace")), len(raw)
        else:
            characters, n_bytes = int(split.doc_characters[i]), int(split.doc_bytes[i])
        if len(tokens) < 2 or characters == 0:
            continue  # nothing to predict
        buckets = [len(enc.decode_bytes([t for t in tokens[lo:hi].tolist() if t != enc.eot_token]).decode("utf-8", "replace"))
                   for lo, hi in POSITION_BUCKETS]
        docs.append({"index": int(i), "tokens": tokens, "tokenizer": enc, "characters": characters, "bytes": n_bytes,
                     "truncated": truncated, "bucket_characters": buckets})
    if not docs:
        raise EvalError("no validation document has text to evaluate; prepare data: python -m revena_lib.prepare_data")
    return docs


@torch.inference_mode()
def document_nll(model, docs: list[dict], device: torch.device, progress: bool = False, lifetimes: bool = False,
                 **switches) -> dict:
    """Per-document NLL in bits, per position bucket too (memory empty at each document's start: one forward call
    each), and the memory's summed counts. ``switches`` go to forward (e.g. memory_read=False).
    The surprisal comes from fp32 log-probabilities whatever the autocast dtype of the forward pass.
    ``lifetimes`` (LTM models): also the lifetimes in tokens of the entries each document evicted, and the number
    still held at its end (``revena_lib.evaluation.memory_stats``), from the trace (introspect=True)."""
    from revena_lib.evaluation.memory_stats import entry_lifetimes

    cfg = getattr(model, "cfg", None)
    lifetimes = lifetimes and bool(getattr(cfg, "use_ltm", False))
    if lifetimes:
        switches = {**switches, "introspect": True}
    lives, censored = [], 0
    nll_bits, bucket_bits, counts = [], [], {}
    iterator = docs
    if progress:
        from tqdm import tqdm  # plain text bar: no widget left behind in executed notebooks
        iterator = tqdm(docs, desc="  documents", leave=False)
    for doc in iterator:
        idx = torch.as_tensor(doc["tokens"], dtype=torch.long, device=device)[None]   # (1, L)
        out = model(idx, logits=False, **switches)   # surprisal only: no (1, L, V) logits to build
        # surprisal_bits[:, t] = -log2 p(idx[t] | idx[:t]); position 0 (the opening EOT) has no prediction.
        bits = out.surprisal_bits[0].double().cpu().numpy()                             # (L,)
        nll_bits.append(float(bits[1:].sum()))
        bucket_bits.append([float(bits[lo:hi].sum()) for lo, hi in POSITION_BUCKETS])
        for key, value in (out.stats or {}).items():
            counts[key] = counts.get(key, 0.0) + float(value)
        if lifetimes:
            evicted, held = entry_lifetimes(out.trace.routed[0], cfg.ltm_capacity)
            lives.append(evicted)
            censored += held
    return {"nll_bits": np.array(nll_bits), "bucket_bits": np.array(bucket_bits),        # (D,), (D, buckets)
            "counts": counts, "predicted_tokens": int(sum(len(d["tokens"]) - 1 for d in docs)),
            "lifetimes": lives, "censored": censored}


def unigram_document_bits(train_split, docs: list[dict], vocab_size: int) -> np.ndarray:
    """NLL bits per evaluation document under a unigram model of the training tokens (add-one smoothed over the
    vocabulary, document-opening EOTs left out): the reference any trained model must clear by far, scored on
    exactly the documents and tokens the arms are scored on."""
    counts = np.bincount(np.asarray(train_split.tokens), minlength=vocab_size).astype(np.float64)  # (V,)
    counts[train_split.tokenizer.eot_token] = 0.0
    counts += 1.0
    bits = -np.log2(counts / counts.sum())
    return np.array([float(bits[d["tokens"][1:]].sum()) for d in docs])
