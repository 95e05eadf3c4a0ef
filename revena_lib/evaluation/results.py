"""Evaluation: every trained arm on the validation split -> ``results/results.json``.

Top level keeps the brief's ``{"baseline": {...}, "with_ltm": {...}}`` (each with ``bpc``,
``long_range_recall``, ``memory_hit_rate``, ``tokens_per_sec``) and adds one key per further arm (the arm
table, ``revena_lib/arms.py``) and per evaluation-time ablation (``with_ltm_reads_off``: the trained
with_ltm weights scored with memory reads off), plus ``comparisons``: every arm against ``baseline``, each
metric with its difference, a 95% interval and a verdict (better / worse / no detectable difference).
Intervals include training noise: they resample seeds, then documents or recall items (``revena_lib/evaluation/stats.py``).
Per-seed numbers, BPC by position in the document, recall by distance, throughput (median over >= 20
timed batches) and what was evaluated where (corpus, preset, device, dtype, seeds) are kept per arm.

    python -m revena_lib.evaluate --preset cpu        # or: from revena_lib.evaluation.results import evaluate
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from revena_lib.evaluation import stats
from revena_lib.arms import ARMS, BASELINE, READ_ABLATIONS, parse_arms
from revena_lib.config import EvalConfig, get_preset
from revena_lib.models.transformer import memory_rates
from revena_lib.paths import results_dir as default_results_dir, trained_dir as default_trained_dir
from revena_lib.evaluation.recall import make_recall_items, score_recall_items, summarize_recall
from revena_lib.data.tokenizer import TokenizerError, check_same_tokenizer, tokenizer_info

BRIEF_KEYS = ("bpc", "long_range_recall", "memory_hit_rate", "tokens_per_sec")
RESULTS_FILE = "results.json"
DETAILS_FILE = "results_details.json"
THROUGHPUT_WARMUP_BATCHES = 2
POSITION_BUCKETS = ((0, 128), (128, 512), (512, None))   # token positions in a document: where a memory can help
# metric -> (lower is better?) for comparisons and verdicts
COMPARED = {"bpc": True, "bits_per_byte": True, "long_range_recall": False, "long_range_recall_logprob_bits": False,
            # passkey items beyond the receptive field of the stacked windows (n_layer x (window - 1)): only a memory
            # can reach them (recall_items_beyond_field gives them enough items for an interval)
            "recall_beyond_field": False, "recall_beyond_field_logprob_bits": False}


class EvalError(RuntimeError):
    pass


# -----------------------------------------------------------------------------
# Measurements on one model

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


def throughput_batches(split, batch_size: int, seq_len: int, total_tokens: int,
                       min_batches: int = 20) -> list[torch.Tensor]:
    """Fixed (B, T) batches cut from the validation token stream, the same ones for every arm: enough for
    ``total_tokens`` and never fewer than ``min_batches`` timed batches, plus the warm-up batches."""
    per_batch = batch_size * seq_len
    n_batches = max(min_batches, math.ceil(total_tokens / per_batch))
    stream = np.asarray(split.tokens, dtype=np.int64)
    need = (n_batches + THROUGHPUT_WARMUP_BATCHES) * per_batch
    if len(stream) < need:
        stream = np.resize(stream, need)  # repeat a short split: throughput does not care what the text says
    return [torch.from_numpy(stream[k * per_batch:(k + 1) * per_batch].reshape(batch_size, seq_len).copy())
            for k in range(n_batches + THROUGHPUT_WARMUP_BATCHES)]


@torch.inference_mode()
def measure_throughput(models: dict, batches: list[torch.Tensor], device: torch.device, samples: int = 2000) -> dict:
    """Forward-pass tokens/sec per arm, after warm-up, arms interleaved (the order rotating every batch), so load
    on the machine hits every arm alike. Returns {arm: {"tokens_per_sec" (median over timed batches), "ci95"
    (bootstrap of the median), "timed_batches", ...}}."""
    from revena_lib.training.device import autocast

    warmup, timed = batches[:THROUGHPUT_WARMUP_BATCHES], batches[THROUGHPUT_WARMUP_BATCHES:]
    arms = list(models)
    seconds = {arm: [] for arm in arms}
    with autocast(device):
        for arm in arms:
            for x in warmup:
                models[arm](x.to(device))
        _sync(device)
        for k, x in enumerate(timed):
            x = x.to(device)
            shift = k % len(arms)
            for arm in arms[shift:] + arms[:shift]:
                _sync(device)
                start = time.perf_counter()
                models[arm](x)
                _sync(device)
                seconds[arm].append(time.perf_counter() - start)
    tokens = timed[0].numel()
    out = {}
    for arm in arms:
        median, ci = stats.median_ci(tokens / np.array(seconds[arm]), samples)
        out[arm] = {"tokens_per_sec": median, "ci95": ci, "timed_batches": len(timed),
                    "timed_tokens": int(tokens * len(timed)), "batch_size": int(timed[0].shape[0]),
                    "seq_len": int(timed[0].shape[1]), "statistic": "median over timed batches"}
    return out


def recall_item_counts(ecfg: EvalConfig, receptive_field: int) -> dict[int, int]:
    """{distance: items} of an EvalConfig: recall_items_per_distance, or recall_items_beyond_field (when set) for
    distances beyond the receptive field of the stacked windows."""
    far = ecfg.recall_items_beyond_field or ecfg.recall_items_per_distance
    return {int(d): (far if d > receptive_field else ecfg.recall_items_per_distance) for d in ecfg.recall_distances}


class ForwardWith(torch.nn.Module):
    """A trained model called with fixed forward() switches (e.g. memory_read=False): an evaluation-time ablation
    with the same weights."""

    def __init__(self, model, **switches):
        super().__init__()
        self.model, self.switches, self.cfg = model, switches, model.cfg

    def forward(self, idx, targets=None, introspect=False, **kwargs):
        return self.model(idx, targets, introspect=introspect, **{**kwargs, **self.switches})

    def num_parameters(self) -> int:
        return self.model.num_parameters()


# -----------------------------------------------------------------------------
# Every arm -> results.json

def _missing_arm_message(arm: str, trained_root: Path, preset: str) -> str:
    flag = {"baseline": "--baseline", "with_ltm": "--with-ltm"}.get(arm, f"--arm {arm}")
    return (f"no finished {preset} run in {trained_root / arm / preset}/: train it first with "
            f"`python -m revena_lib.train --preset {preset} {flag}` (or run notebooks/03_train.ipynb)")


def find_arm_runs(arms, trained_root: Path, preset: str | None) -> dict[str, list[Path]]:
    """{arm: finished run dirs} for the named arms (all must have one), or, with arms=None, for every arm of
    the table that has a finished run of the preset (baseline must)."""
    from revena_lib.training.loop import find_runs

    wanted = parse_arms(arms) if arms is not None else tuple(ARMS)
    runs = {arm: find_runs(arm, root=trained_root, preset=preset) for arm in wanted}
    required = wanted if arms is not None else (BASELINE,)
    for arm in required:
        if not runs[arm]:
            raise EvalError(_missing_arm_message(arm, trained_root, preset or "cpu"))
    return {arm: dirs for arm, dirs in runs.items() if dirs}


def _comparable(config: dict, arm: str) -> dict:
    """What must be identical across arms: the model config except this arm's own overrides, the recipe except
    the seed (with any schedule change of a resume with another --steps), the preset, the compute dtype, the corpus
    and the tokenizer."""
    overridden = set(ARMS[arm].overrides) | {"family"} if arm in ARMS else {"family"}
    data_meta = config.get("data_meta") or {}
    return {
        "preset": config.get("preset"), "dtype": config.get("dtype"),
        **{f"model.{k}": v for k, v in (config.get("model") or {}).items() if k not in overridden},
        **{f"train.{k}": v for k, v in (config.get("train") or {}).items() if k != "seed"},
        "corpus": data_meta.get("corpus"), "tokenizer": (config.get("tokenizer") or {"name": "gpt2"}).get("name"),
        "tokenizer_sha256": (config.get("tokenizer") or {}).get("sha256"),
        # a run resumed with another --steps followed another learning-rate schedule than a fresh one
        "schedule_changes": config.get("schedule_changes") or [],
    }


def check_arms_match(runs: dict[str, list[Path]]) -> None:
    """Arms must differ only in their own row of the arm table, or a comparison means nothing: refuse runs
    trained with other settings, another dtype, corpus or tokenizer, naming both runs and the fields."""
    from revena_lib.training.checkpoint import read_config

    reference = None
    for arm, dirs in runs.items():
        for run_dir in dirs:
            config = read_config(run_dir)
            mine = _comparable(config, arm)
            if reference is None:
                reference = (run_dir, arm, mine)
                continue
            ref_dir, ref_arm, theirs = reference
            diff = sorted(k for k in set(mine) & set(theirs) if mine[k] != theirs[k])
            if diff:
                raise EvalError(
                    f"{run_dir} and {ref_dir} were trained with different settings ("
                    + ", ".join(f"{k}: {mine[k]!r} vs {theirs[k]!r}" for k in diff[:6])
                    + "): arms must differ only in their row of the arm table (revena_lib/arms.py). Retrain one "
                    "with the other's --preset (python -m revena_lib.train --preset P --arm NAME --force)")


@dataclass
class _Scored:
    """One arm's measurements, seeds stacked: nll (S, D), bucket_bits (S, D, buckets), recall score dicts (S lists)."""
    seeds: list
    nll: np.ndarray
    bucket_bits: np.ndarray
    recall: list
    counts: list
    run_dirs: list
    configs: list
    num_parameters: int
    has_memory: bool
    lifetimes: list = field(default_factory=list)    # per seed: evicted entries' lifetimes (tokens), all documents
    censored: list = field(default_factory=list)     # per seed: entries still held at documents' ends
    cosines: list = field(default_factory=list)      # per seed: ltm_analysis.answer_key_cosines (LTM read on)
    induction: list = field(default_factory=list)    # per seed: induction.induction_score


def _score_arm(arm, run_dirs, docs, items, device, ecfg, log, switches=None) -> tuple[_Scored, torch.nn.Module]:
    """Load and score every seed of one arm; returns the measurements and the first seed's model (for timing)."""
    from revena_lib.training.checkpoint import load_model
    from revena_lib.training.device import autocast

    from revena_lib.evaluation.induction import induction_score
    from revena_lib.evaluation.ltm_analysis import answer_key_cosines

    seeds, nll, buckets, recall, counts, configs, first = [], [], [], [], [], [], None
    lifetimes, censored, cosines, induction = [], [], [], []
    for run_dir in run_dirs:
        torch.manual_seed(ecfg.recall_seed)   # the random-write arm draws its writes: the same draws every evaluation
        model, config = load_model(run_dir, device=device)
        if switches:
            model = ForwardWith(model, **switches)
        log(f"evaluate: {arm} seed {config.get('seed')} ({run_dir})")
        ltm = bool(getattr(model.cfg, "use_ltm", False))
        eot = docs[0]["tokenizer"].eot_token
        with autocast(device):
            measured = document_nll(model, docs, device, lifetimes=ltm, **({"progress": True} if log.verbose else {}))
            recall.append(score_recall_items(model, items, device=device, batch_size=ecfg.batch_size,
                                             tokenizer=docs[0]["tokenizer"]))
            if ltm and (not switches or switches.get("memory_read", True)):
                cosines.append(answer_key_cosines(model, items, seed=ecfg.recall_seed, batch_size=ecfg.batch_size,
                                                  eot=eot))
            induction.append(induction_score(model, eot=eot, seed=ecfg.recall_seed, batch_size=ecfg.batch_size))
        if ltm:
            lifetimes.append(np.concatenate(measured["lifetimes"]) if measured["lifetimes"] else np.zeros(0))
            censored.append(measured["censored"])
        seeds.append(config.get("seed", run_dir.name))
        nll.append(measured["nll_bits"])
        buckets.append(measured["bucket_bits"])
        counts.append(measured["counts"])
        configs.append(config)
        first = model if first is None else first
    memory = bool(getattr(first.cfg, "use_ltm", False)) and (not switches or switches.get("memory_read", True))
    return _Scored(seeds, np.stack(nll), np.stack(buckets), recall, counts, list(map(str, run_dirs)), configs,
                   int(first.num_parameters()), memory, lifetimes, censored, cosines, induction), first


def _recall_matrix(scored: _Scored, key: str, mask: np.ndarray) -> np.ndarray:
    return np.array([[r[key] for r, keep in zip(rows, mask) if keep] for rows in scored.recall], float)  # (S, N')


def _memory_measures(scored: _Scored, window: int, ecfg) -> dict:
    """Induction score (every arm); for arms with an LTM: entry lifetime, recall on the subset of items whose answer
    was still in memory when asked, and (reads on) the cosines of question queries with answer keys."""
    from revena_lib.evaluation.ltm_analysis import cosine_summary
    from revena_lib.evaluation.memory_stats import lifetime_summary
    from revena_lib.evaluation.recall import in_memory_recall

    per_seq = np.array([r["per_sequence"] for r in scored.induction], float)               # (S, N)
    first = scored.induction[0]
    out = {"induction": {
        "score_nats": stats.point(per_seq),
        "ci95": stats.hierarchical_ci(per_seq, None, ecfg.bootstrap_samples, ecfg.recall_seed),
        "first_copy_nats": float(np.mean([r["first_copy_nats"] for r in scored.induction])),
        "second_copy_nats": float(np.mean([r["second_copy_nats"] for r in scored.induction])),
        "uniform_nats": first["uniform_nats"], "span_len": first["span_len"], "n_seqs": first["n_seqs"],
        "per_seed": {str(s): r["score_nats"] for s, r in zip(scored.seeds, scored.induction)},
        "note": "loss on the first copy of a repeated random-token span minus that on the second, nats/token "
                "(0 = no copying; uniform_nats = perfect copying); 95% interval resamples seeds, then sequences"}}
    if scored.lifetimes:
        out["ltm_entry_lifetime"] = {**lifetime_summary(scored.lifetimes, int(sum(scored.censored))),
                                     "per_seed_median": {str(s): float(np.median(x)) if len(x) else float("nan")
                                                         for s, x in zip(scored.seeds, scored.lifetimes)}}
        out["recall_in_memory"] = in_memory_recall(scored.recall, window)
    if scored.cosines:
        cut = scored.cosines[0]["cut"]
        raw = {k: np.concatenate([np.array(c["raw"][k], float).reshape(len(c["raw"][k]), -1) for c in scored.cosines])
               for k in ("answer", "random", "every")}
        dist = np.concatenate([np.array(c["raw"]["distance"]) for c in scored.cosines])
        out["answer_key_cosine"] = {
            "answer": cosine_summary(raw["answer"], cut), "random": cosine_summary(raw["random"], cut), "cut": cut,
            "answer_every_token": cosine_summary(raw["every"], cut),
            "by_distance": {str(d): cosine_summary(raw["answer"][dist == d], cut) for d in sorted(set(dist.tolist()))},
            "per_seed_share_any_head_above_cut": {str(s): c["answer"]["share_any_head_above_cut"]
                                                  for s, c in zip(scored.seeds, scored.cosines)},
            "note": scored.cosines[0]["note"] + "; pooled over seeds"}
    return out


def _arm_results(arm, scored: _Scored, docs, items, window, throughput, ecfg) -> dict:
    """One arm's entry of results.json."""
    chars = np.array([d["characters"] for d in docs], float)
    n_bytes = np.array([d["bytes"] for d in docs], float)
    bucket_chars = np.array([d["bucket_characters"] for d in docs], float)                 # (D, buckets)
    beyond = np.array([it.kind == "passkey" and it.distance > window for it in items])
    samples, seed = ecfg.bootstrap_samples, ecfg.recall_seed
    # Per-item scores averaged over seeds, for the by-distance tables (intervals come from the matrices).
    mean_scores = [dict(rows[0], **{k: float(np.mean([r[k] for r in rows])) for k in
                                    ("exact_match", "answer_logprob_bits", "memory_hit_rate", "answer_hit",
                                     "answer_hit_in_fact", "useful_hit", "aligned_hit", "same_token_hit",
                                     "answer_written", "answer_in_memory",
                                     "answer_any_in_memory", "answer_tokens_in_memory")})
                   for rows in zip(*scored.recall)]
    summary = summarize_recall(mean_scores, window=window)
    exact, logprob = (_recall_matrix(scored, k, beyond) for k in ("exact_match", "answer_logprob_bits"))
    far = np.array([it.kind == "passkey" and it.distance > _receptive_field(scored, window) for it in items])
    far_exact, far_logprob = (_recall_matrix(scored, k, far) for k in ("exact_match", "answer_logprob_bits"))
    rates = [memory_rates(c) for c in scored.counts]
    rate = lambda key: float(np.mean([r[key] for r in rates])) if scored.has_memory else 0.0
    spec = ARMS.get(arm)
    by_position = {}
    for b, (lo, hi) in enumerate(POSITION_BUCKETS):
        has = bucket_chars[:, b] > 0
        if has.any():
            name = bucket_name(lo, hi)
            by_position[name] = {"bpc": stats.point(scored.bucket_bits[:, has, b], bucket_chars[has, b]),
                                 "ci95": stats.hierarchical_ci(scored.bucket_bits[:, has, b], bucket_chars[has, b],
                                                               samples, seed),
                                 "documents": int(has.sum()), "characters": int(bucket_chars[has, b].sum())}
    config = scored.configs[0]
    return {
        "bpc": stats.point(scored.nll, chars),
        "long_range_recall": stats.point(exact),
        "memory_hit_rate": rate("ltm_hit_rate"),
        "tokens_per_sec": throughput["tokens_per_sec"],
        "description": spec.description if spec else READ_ABLATIONS[arm][2],
        "family": config.get("family", "transformer"),
        "bits_per_byte": stats.point(scored.nll, n_bytes),
        "bpc_by_position": by_position,
        "long_range_recall_logprob_bits": stats.point(logprob),
        "recall_beyond_field": stats.point(far_exact),                  # passkey, distance > n_layer x (window - 1)
        "recall_beyond_field_logprob_bits": stats.point(far_logprob),
        "recall_beyond_field_items": int(far.sum()),
        "control_recall": summary["control_recall"],
        "control_recall_logprob_bits": summary["control_recall_logprob_bits"],
        # controls that could falsify a memory (beyond the window): no fact planted (guessing), another key planted
        "no_fact_recall_logprob_bits": summary["no_fact_recall_logprob_bits"],
        "wrong_key_recall_logprob_bits": summary["wrong_key_recall_logprob_bits"],
        "routed_token_ratio": rate("routed_token_ratio"),
        "avg_surprisal_routed": rate("avg_surprisal_routed"),
        "recall_by_distance": summary["recall_by_distance"],
        **_memory_measures(scored, window, ecfg),
        "ci95": {
            "bpc": stats.hierarchical_ci(scored.nll, chars, samples, seed),
            "bits_per_byte": stats.hierarchical_ci(scored.nll, n_bytes, samples, seed),
            "long_range_recall": stats.hierarchical_ci(exact, None, samples, seed),
            "long_range_recall_logprob_bits": stats.hierarchical_ci(logprob, None, samples, seed),
            "recall_beyond_field": stats.hierarchical_ci(far_exact, None, samples, seed),
            "recall_beyond_field_logprob_bits": stats.hierarchical_ci(far_logprob, None, samples, seed),
            "tokens_per_sec": throughput["ci95"],
            "note": "95% bootstrap resampling seeds, then documents (bpc) or recall items (recall): includes "
                    "training noise; tokens_per_sec: median over timed batches, bootstrap of the median",
        },
        "per_seed": {
            str(s): {"bpc": float(scored.nll[k].sum() / chars.sum()),
                     "long_range_recall": float(exact[k].mean()) if exact.size else float("nan"),
                     "long_range_recall_logprob_bits": float(logprob[k].mean()) if logprob.size else float("nan"),
                     "memory_hit_rate": rates[k]["ltm_hit_rate"] if scored.has_memory else 0.0,
                     "routed_token_ratio": rates[k]["routed_token_ratio"] if scored.has_memory else 0.0}
            for k, s in enumerate(scored.seeds)
        },
        "num_parameters": scored.num_parameters,
        "run": {
            "seeds": scored.seeds, "run_dirs": scored.run_dirs,
            "steps_done": [c.get("steps_done") for c in scored.configs],
            "schedule_changes": [c.get("schedule_changes") or [] for c in scored.configs],   # per seed
            "trained_preset": config.get("preset"), "train_device": config.get("device"),
            "train_dtype": config.get("dtype"), "window": int((config.get("model") or {}).get("window", window)),
            "trained_corpus": (config.get("data_meta") or {}).get("corpus"),
        },
    }


def _receptive_field(scored: _Scored, window: int) -> int:
    return int((scored.configs[0].get("model") or {}).get("n_layer", 1)) * (window - 1)


def _comparison(reference: _Scored, scored: _Scored, docs, items, window, ecfg, against: str) -> dict:
    """Each COMPARED metric of ``scored`` minus ``reference``, with interval and verdict, plus one sentence."""
    chars = np.array([d["characters"] for d in docs], float)
    n_bytes = np.array([d["bytes"] for d in docs], float)
    beyond = np.array([it.kind == "passkey" and it.distance > window for it in items])
    paired = [str(s) for s in reference.seeds] == [str(s) for s in scored.seeds]
    values = {"bpc": (reference.nll, scored.nll, chars), "bits_per_byte": (reference.nll, scored.nll, n_bytes)}
    far = np.array([it.kind == "passkey" and it.distance > _receptive_field(scored, window) for it in items])
    for key, item_key, mask in (("long_range_recall", "exact_match", beyond),
                                ("long_range_recall_logprob_bits", "answer_logprob_bits", beyond),
                                ("recall_beyond_field", "exact_match", far),
                                ("recall_beyond_field_logprob_bits", "answer_logprob_bits", far)):
        values[key] = (_recall_matrix(reference, item_key, mask), _recall_matrix(scored, item_key, mask), None)
    out = {"against": against}
    for key, lower_is_better in COMPARED.items():
        a, b, den = values[key]
        out[key] = stats.compare(a, b, den, lower_is_better, paired, ecfg.bootstrap_samples, ecfg.recall_seed)
    out["summary"] = (f"BPC: {out['bpc']['verdict']} ({out['bpc']['diff']:+.4f}, 95% CI "
                      f"[{out['bpc']['ci95'][0]:+.4f}, {out['bpc']['ci95'][1]:+.4f}]); long-range recall: "
                      f"{out['long_range_recall']['verdict']} ({out['long_range_recall']['diff']:+.3f}, 95% CI "
                      f"[{out['long_range_recall']['ci95'][0]:+.3f}, {out['long_range_recall']['ci95'][1]:+.3f}])")
    return out


class _Log:
    def __init__(self, verbose: bool):
        self.verbose = verbose

    def __call__(self, msg: str) -> None:
        if self.verbose:
            print(msg, file=sys.stderr)


def evaluate(preset="smoke", arms=None, data_dir=None, trained_root=None, results_dir=None, device=None,
             progress=True) -> dict:
    """Evaluate every finished seed of the arms; write ``results.json`` (+ ``results_details.json``); return it.

    ``preset``: whose EvalConfig to use (documents, recall distances/items, throughput); a name, a ``Preset``, or
    None for the preset the runs were trained with. ``arms``: names or 'a,b' (default: every arm of the table
    with a finished run; baseline is required). Arms must differ only in their row of the arm table.
    """
    from revena_lib.training.checkpoint import read_config
    from revena_lib.data.prepare import load_split
    from revena_lib.training.device import autocast_dtype, dtype_name, select_device

    trained_root = Path(trained_root) if trained_root else default_trained_dir()
    results_path = Path(results_dir) if results_dir else default_results_dir()
    wanted = preset if isinstance(preset, str) or preset is None else preset.name
    runs = find_arm_runs(arms, trained_root, wanted)
    if wanted is None:
        trained_presets = sorted({read_config(d).get("preset") for dirs in runs.values() for d in dirs})
        if len(trained_presets) > 1:
            raise EvalError(f"{trained_root} holds runs of several presets ({', '.join(trained_presets)}): "
                            "choose one with --preset")
    check_arms_match(runs)
    base_config = read_config(runs[BASELINE][0])
    preset_obj = get_preset(preset or base_config.get("preset") or "cpu") if not hasattr(preset, "eval") else preset
    ecfg: EvalConfig = preset_obj.eval
    device = select_device(device)
    window = int(base_config.get("model", {}).get("window", 128))
    if not any(d > window for d in ecfg.recall_distances):
        raise EvalError(f"EvalConfig.recall_distances {tuple(ecfg.recall_distances)} has no distance beyond the "
                        f"{window}-token window, so long_range_recall is undefined: add one (e.g. {2 * window})")

    val = load_split("val", data_dir=data_dir)
    docs = evaluation_documents(val, ecfg.max_docs, ecfg.max_tokens_per_doc, ecfg.doc_seed)
    data_tokenizer = tokenizer_info(val.meta)
    for dirs in runs.values():
        for run_dir in dirs:
            try:
                check_same_tokenizer(read_config(run_dir).get("tokenizer"), data_tokenizer, str(run_dir))
            except TokenizerError as e:
                raise EvalError(str(e)) from None
    field_reach = int(base_config.get("model", {}).get("n_layer", 1)) * (window - 1)
    items = make_recall_items(val, ecfg.recall_distances, recall_item_counts(ecfg, field_reach), ecfg.recall_seed)
    log = _Log(progress)
    log(f"evaluate: arms {', '.join(runs)}; {len(docs)} validation documents, {len(items)} recall items, device {device}")

    scored, models = {}, {}
    for arm, dirs in runs.items():
        scored[arm], models[arm] = _score_arm(arm, dirs, docs, items, device, ecfg, log)
    for name, (source, switches, _) in READ_ABLATIONS.items():
        if source in runs:
            scored[name], _ = _score_arm(name, runs[source], docs, items, device, ecfg, log, switches)

    log("evaluate: throughput")
    seq_len = int(base_config.get("train", {}).get("seq_len", preset_obj.train.seq_len))
    batches = throughput_batches(val, ecfg.batch_size, seq_len, ecfg.throughput_tokens, ecfg.throughput_batches)
    throughput = measure_throughput(models, batches, device, samples=ecfg.bootstrap_samples)
    for name, (source, _, _) in READ_ABLATIONS.items():
        if name in scored:
            throughput[name] = throughput[source]   # same weights; reads off costs no less to time separately

    chars = np.array([d["characters"] for d in docs], float)
    unigram = unigram_document_bits(load_split("train", data_dir=data_dir), docs, int(data_tokenizer["vocab_size"]))
    meta = val.meta
    evaluated = {
        "corpus": meta.get("corpus"), "source": meta.get("source"), "fallback_reason": meta.get("fallback_reason"),
        "preset": preset_obj.name, "device": str(device), "dtype": dtype_name(autocast_dtype(device)),
        "logprob_dtype": "fp32", "window": window, "tokenizer": data_tokenizer["name"],
        "receptive_field": int(base_config.get("model", {}).get("n_layer", 1)) * (window - 1),
        "documents": [d["index"] for d in docs], "document_seed": ecfg.doc_seed,
        "predicted_tokens": int(sum(len(d["tokens"]) - 1 for d in docs)), "characters": int(chars.sum()),
        "max_docs": ecfg.max_docs, "max_tokens_per_doc": ecfg.max_tokens_per_doc,
        "truncated_documents": int(sum(d["truncated"] for d in docs)),
        "recall_items": len(items), "recall_distances": list(ecfg.recall_distances),
        "recall_items_per_distance": ecfg.recall_items_per_distance, "recall_seed": ecfg.recall_seed,
        "recall_items_by_distance": {str(d): n for d, n in recall_item_counts(ecfg, field_reach).items()},
        "recall_headline": f"passkey exact match (greedy, teacher-forced), mean over distances > {window}",
        "throughput": {k: v for k, v in throughput[BASELINE].items() if k not in ("tokens_per_sec", "ci95")},
        "bootstrap_samples": ecfg.bootstrap_samples,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "note": ("bpc = NLL bits of every text token of each document read from its opening EOT, memory cleared "
                 "per document, / characters; a document cut at max_tokens_per_doc counts the characters of "
                 "exactly the decoded tokens scored"),
    }
    results = {arm: _arm_results(arm, scored[arm], docs, items, window, throughput[arm], ecfg) for arm in scored}
    for arm in results:
        results[arm]["run"] = {**evaluated, **results[arm]["run"]}
    results["comparisons"] = {arm: _comparison(scored[BASELINE], scored[arm], docs, items, window, ecfg, BASELINE)
                              for arm in scored if arm != BASELINE}
    for name, (source, _, _) in READ_ABLATIONS.items():
        if name in scored:   # the ablation against its own trained arm: what do the reads themselves do?
            results["comparisons"][f"{source}_vs_{name}"] = _comparison(scored[name], scored[source], docs, items,
                                                                        window, ecfg, name)
    results["reference"] = {"unigram_bpc": float(unigram.sum() / chars.sum()),
                            "note": "unigram model of the training tokens, scored on the same documents"}
    details = {"documents": [d["index"] for d in docs], "characters": chars.tolist(),
               "arms": {arm: {"nll_bits": s.nll.tolist(), "recall": s.recall} for arm, s in scored.items()}}
    results_path.mkdir(parents=True, exist_ok=True)
    _write_json(results_path / RESULTS_FILE, results)
    _write_json(results_path / DETAILS_FILE, details)
    log(f"evaluate: wrote {results_path / RESULTS_FILE}")
    return results


def result_arms(results: dict) -> list[str]:
    """The arm keys of a results dict (everything but the comparisons and reference sections), baseline first."""
    return [k for k in results if k not in ("comparisons", "reference")]


def verdict_lines(results: dict) -> list[str]:
    """One sentence per comparison, in words, for notebooks and the README."""
    lines = []
    for arm, cmp in results.get("comparisons", {}).items():
        lines.append(f"{arm} vs {cmp.get('against', BASELINE)}: {cmp['summary']}")
    return lines


def _finite(obj):
    """NaN/inf -> None, so the file is strict JSON (a browser's JSON.parse rejects NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def _write_json(path: Path, obj) -> None:
    from revena_lib.training.checkpoint import write_json

    write_json(path, _finite(json.loads(json.dumps(obj, default=_json_default, allow_nan=True))))


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def load_results(results_dir=None) -> dict:
    """Read ``results/results.json``; a clear error says how to make it."""
    path = (Path(results_dir) if results_dir else default_results_dir()) / RESULTS_FILE
    if not path.exists():
        raise EvalError(f"{path} does not exist: run `python -m revena_lib.evaluate` (or notebooks/05_evaluate.ipynb)")
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise EvalError(f"{path} is not valid JSON ({e}); rerun `python -m revena_lib.evaluate`") from e


def summary_table(results: dict):
    """The headline numbers of every arm as a small pandas DataFrame (rows: metrics, columns: arms)."""
    import pandas as pd

    keys = BRIEF_KEYS + ("bits_per_byte", "long_range_recall_logprob_bits", "control_recall", "routed_token_ratio")
    return pd.DataFrame({arm: {k: results[arm].get(k) for k in keys} for arm in result_arms(results)})


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m revena_lib.evaluate", description=(
        "Evaluate every trained arm (trained/<arm>/<preset>/seed-*, every finished seed) on data/val.bin and "
        "write results/results.json: bpc, long_range_recall, memory_hit_rate, tokens_per_sec per arm, "
        "comparisons with the baseline (intervals across seeds, verdicts), plus extras."))
    parser.add_argument("--preset", default=None, choices=["smoke", "cpu", "paper"],
                        help="evaluation settings (documents, recall distances, items); default: the preset the "
                             "trained runs used")
    parser.add_argument("--arms", default=None,
                        help=f"comma-separated arms to evaluate (default: every arm with a finished run); "
                             f"known: {', '.join(ARMS)}")
    parser.add_argument("--device", default=None, choices=["cpu", "cuda", "auto"],
                        help="default: CUDA if available, else the CPU")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    args = parser.parse_args(argv)
    from revena_lib.training.checkpoint import CheckpointError
    from revena_lib.data.prepare import DataError
    from revena_lib.training.device import DeviceError

    try:
        results = evaluate(preset=args.preset, arms=args.arms, device=args.device, progress=not args.quiet)
    except (EvalError, CheckpointError, DataError, DeviceError, ValueError) as e:
        sys.exit(f"error: {e}")
    print(json.dumps({arm: {k: results[arm][k] for k in BRIEF_KEYS} for arm in result_arms(results)}, indent=2))
    for line in verdict_lines(results):
        print(line)


if __name__ == "__main__":
    main()
