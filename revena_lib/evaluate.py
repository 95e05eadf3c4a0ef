"""Evaluation: both trained arms on the validation split -> ``results/results.json``.

Top level is exactly the brief's ``{"baseline": {...}, "with_ltm": {...}}``; each arm has ``bpc``,
``long_range_recall``, ``memory_hit_rate`` (0.0 for the baseline) and ``tokens_per_sec``, plus extras:
bits per byte, graded recall, recall by distance, the control items, routed token ratio, 95% bootstrap
intervals, per-seed numbers and, under ``run``, what was evaluated where (corpus, preset, device, dtype,
seeds, date). ``with_ltm.vs_baseline`` holds the paired differences (with_ltm - baseline) and their
intervals: documents (BPC) and recall items are the same for both arms, so they are resampled jointly.

    python -m revena_lib.evaluate --preset cpu        # or: from revena_lib.evaluate import evaluate
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from revena_lib.arms import DEFAULT_ARMS as ARMS
from revena_lib.config import get_preset
from revena_lib.paths import results_dir as default_results_dir, trained_dir as default_trained_dir
from revena_lib.recall import make_recall_items, score_recall_items, summarize_recall
from revena_lib.tokenizer import get_tokenizer

BRIEF_KEYS = ("bpc", "long_range_recall", "memory_hit_rate", "tokens_per_sec")
RESULTS_FILE = "results.json"
DETAILS_FILE = "results_details.json"
THROUGHPUT_WARMUP_BATCHES = 2


class EvalError(RuntimeError):
    pass


# -----------------------------------------------------------------------------
# Bootstrap intervals (numpy only, deterministic per seed)

def _resample(n: int, samples: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(samples, n))    # (S, n) indices


def _interval(values: np.ndarray) -> list[float]:
    lo, hi = np.nanpercentile(values, [2.5, 97.5])
    return [float(lo), float(hi)]


def bootstrap_ratio_ci(numerator, denominator, samples: int = 2000, seed: int = 0) -> list[float]:
    """95% interval of sum(numerator) / sum(denominator), resampling items (e.g. documents: NLL bits / characters)."""
    num, den = np.asarray(numerator, float), np.asarray(denominator, float)
    if len(num) == 0:
        return [float("nan"), float("nan")]
    idx = _resample(len(num), samples, seed)
    return _interval(num[idx].sum(1) / den[idx].sum(1))


def paired_bootstrap_ratio_diff(numerator_a, numerator_b, denominator, samples: int = 2000, seed: int = 0) -> dict:
    """Paired difference of ratios of sums, b - a, resampling items jointly (both arms on the same documents)."""
    a, b, den = (np.asarray(x, float) for x in (numerator_a, numerator_b, denominator))
    diff = float(b.sum() / den.sum() - a.sum() / den.sum()) if len(a) else float("nan")
    if len(a) == 0:
        return {"diff": diff, "ci95": [float("nan"), float("nan")], "p_b_better": float("nan")}
    idx = _resample(len(a), samples, seed)
    d = den[idx].sum(1)
    diffs = b[idx].sum(1) / d - a[idx].sum(1) / d
    # Share of resamples in which b's ratio is lower (for NLL: b compresses better).
    return {"diff": diff, "ci95": _interval(diffs), "p_b_better": float((diffs < 0).mean())}


def bootstrap_mean_ci(values, samples: int = 2000, seed: int = 0) -> list[float]:
    x = np.asarray(values, float)
    if len(x) == 0:
        return [float("nan"), float("nan")]
    return _interval(x[_resample(len(x), samples, seed)].mean(1))


def paired_bootstrap_mean_diff(values_a, values_b, samples: int = 2000, seed: int = 0) -> dict:
    """Mean of b - a with a 95% interval, resampling the paired items."""
    a, b = np.asarray(values_a, float), np.asarray(values_b, float)
    if len(a) == 0:
        return {"diff": float("nan"), "ci95": [float("nan"), float("nan")]}
    d = b - a
    return {"diff": float(d.mean()), "ci95": _interval(d[_resample(len(d), samples, seed)].mean(1))}


# -----------------------------------------------------------------------------
# Measurements on one model

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def evaluation_documents(split, max_docs: int, max_tokens_per_doc: int) -> list[dict]:
    """The validation documents BPC is measured on: first ``max_docs`` (0 = all), each cut to ``max_tokens_per_doc``.

    Characters/bytes are the document's own (meta.json) when it is whole, else those of exactly the
    decoded tokens kept, so the denominator always matches the tokens scored.
    """
    enc = get_tokenizer()
    n = split.num_docs if max_docs <= 0 else min(max_docs, split.num_docs)
    docs = []
    for i in range(n):
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
        docs.append({"index": i, "tokens": tokens, "characters": characters, "bytes": n_bytes, "truncated": truncated})
    if not docs:
        raise EvalError("no validation document has text to evaluate; prepare data: python -m revena_lib.prepare_data")
    return docs


@torch.inference_mode()
def document_nll(model, docs: list[dict], device: torch.device, progress: bool = False) -> dict:
    """Per-document NLL in bits (memory empty at each document's start: one forward call each) and LTM stats."""
    nll_bits, hit_tokens, routed_tokens, routed_surprisal, predicted = [], 0.0, 0.0, 0.0, 0
    iterator = docs
    if progress:
        from tqdm import tqdm  # plain text bar: no widget left behind in executed notebooks
        iterator = tqdm(docs, desc="  documents", leave=False)
    for doc in iterator:
        idx = torch.as_tensor(doc["tokens"], dtype=torch.long, device=device)[None]   # (1, L)
        out = model(idx)
        # surprisal_bits[:, t] = -log2 p(idx[t] | idx[:t]); position 0 (the opening EOT) has no prediction.
        nll_bits.append(float(out.surprisal_bits[0, 1:].double().sum()))
        tokens = idx.shape[1]
        stats = out.stats or {}
        hit_tokens += float(stats.get("ltm_hit_rate", 0.0)) * tokens
        # the model normalises hits by all T tokens, routing by the T-1 tokens that have a prediction
        routed = float(stats.get("routed_token_ratio", 0.0)) * (tokens - 1)
        routed_tokens += routed
        routed_surprisal += float(stats.get("avg_surprisal_routed", 0.0)) * routed
        predicted += tokens - 1
    total_tokens = sum(len(d["tokens"]) for d in docs)
    return {
        "nll_bits": np.array(nll_bits),
        "memory_hit_rate": hit_tokens / total_tokens,
        "routed_token_ratio": routed_tokens / predicted,
        "avg_surprisal_routed": routed_surprisal / routed_tokens if routed_tokens else 0.0,
        "predicted_tokens": predicted,
    }


def throughput_batches(split, batch_size: int, seq_len: int, total_tokens: int) -> list[torch.Tensor]:
    """Fixed (B, T) batches cut from the validation token stream; the same ones for both arms."""
    per_batch = batch_size * seq_len
    n_batches = max(1, math.ceil(total_tokens / per_batch))
    stream = np.asarray(split.tokens, dtype=np.int64)
    need = (n_batches + THROUGHPUT_WARMUP_BATCHES) * per_batch
    if len(stream) < need:
        stream = np.resize(stream, need)  # repeat a short split: throughput does not care what the text says
    batches = [torch.from_numpy(stream[k * per_batch:(k + 1) * per_batch].reshape(batch_size, seq_len).copy())
               for k in range(n_batches + THROUGHPUT_WARMUP_BATCHES)]
    return batches


@torch.inference_mode()
def measure_throughput(models: dict, batches: list[torch.Tensor], device: torch.device, samples: int = 2000) -> dict:
    """Forward-pass tokens/sec per arm, after warm-up, arms interleaved (alternating who goes first).

    Returns {arm: {"tokens_per_sec", "ci95" (bootstrap over timed batches), "timed_tokens", "timed_batches"}}.
    """
    from revena_lib.device import autocast

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
            for arm in (arms if k % 2 == 0 else arms[::-1]):
                _sync(device)
                start = time.perf_counter()
                models[arm](x)
                _sync(device)
                seconds[arm].append(time.perf_counter() - start)
    per_batch_tokens = timed[0].numel()
    out = {}
    for arm in arms:
        s = np.array(seconds[arm])
        idx = _resample(len(s), samples, 0)
        rates = per_batch_tokens * len(s) / s[idx].sum(1)
        out[arm] = {"tokens_per_sec": float(per_batch_tokens * len(s) / s.sum()), "ci95": _interval(rates),
                    "timed_tokens": int(per_batch_tokens * len(s)), "timed_batches": len(s),
                    "batch_size": int(timed[0].shape[0]), "seq_len": int(timed[0].shape[1])}
    return out


# -----------------------------------------------------------------------------
# Both arms -> results.json

def _missing_arm_message(arm: str, trained_root: Path, preset: str) -> str:
    flag = "--with-ltm" if arm == "with_ltm" else "--baseline"
    return (f"no finished {preset} run in {trained_root / arm / preset}/: train it first with "
            f"`python -m revena_lib.train --preset {preset} {flag}` (or run notebooks/03_train.ipynb)")


def _check_arms_match(runs: dict) -> None:
    """Both arms must share every model setting except use_ltm, or the comparison means nothing."""
    from revena_lib.checkpoint import read_config

    reference = None
    for arm in ARMS:
        for run_dir in runs[arm]:
            config = read_config(run_dir)
            model = {k: v for k, v in config.get("model", {}).items() if k != "use_ltm"}
            if reference is None:
                reference = (run_dir, config.get("preset"), model)
                continue
            ref_dir, ref_preset, ref_model = reference
            if model != ref_model or config.get("preset") != ref_preset:
                diff = sorted(k for k in set(model) | set(ref_model) if model.get(k) != ref_model.get(k))
                raise EvalError(
                    f"{run_dir} (preset {config.get('preset')!r}) and {ref_dir} (preset {ref_preset!r}) were trained "
                    f"with different settings{' (' + ', '.join(diff) + ')' if diff else ''}: both arms must differ only "
                    "in the LTM. Retrain one arm with the other's --preset (python -m revena_lib.train --preset P "
                    "--baseline / --with-ltm --force)")


def _float_dict(d: dict) -> dict:
    return {k: (float(v) if isinstance(v, (np.floating, float)) else v) for k, v in d.items()}


def evaluate(preset="smoke", data_dir=None, trained_root=None, results_dir=None, device=None,
             progress=True) -> dict:
    """Evaluate every finished seed of both arms; write ``results.json`` (+ ``results_details.json``); return the results dict.

    ``preset``: whose EvalConfig to use (documents, recall distances/items, throughput tokens); a name, a
    ``Preset``, or None for the preset the runs were trained with. Both arms must have been trained with
    the same model settings (apart from the LTM) or an EvalError says which runs differ.
    """
    from revena_lib.checkpoint import load_model, read_config
    from revena_lib.data import load_split
    from revena_lib.device import autocast, autocast_dtype, dtype_name, select_device
    from revena_lib.train import find_runs

    trained_root = Path(trained_root) if trained_root else default_trained_dir()
    results_path = Path(results_dir) if results_dir else default_results_dir()
    wanted = preset if isinstance(preset, str) or preset is None else preset.name
    runs = {arm: find_runs(arm, root=trained_root, preset=wanted) for arm in ARMS}
    for arm in ARMS:
        if not runs[arm]:
            raise EvalError(_missing_arm_message(arm, trained_root, wanted or "cpu"))
    if wanted is None:
        trained_presets = sorted({read_config(d).get("preset") for arm in ARMS for d in runs[arm]})
        if len(trained_presets) > 1:
            raise EvalError(f"{trained_root} holds runs of several presets ({', '.join(trained_presets)}): "
                            "choose one with --preset")
    _check_arms_match(runs)
    if preset is None:  # the preset both arms were trained with
        preset = read_config(runs["with_ltm"][0]).get("preset") or "cpu"
    preset_obj = get_preset(preset) if isinstance(preset, str) else preset
    ecfg = preset_obj.eval
    device = select_device(device)

    window = int(read_config(runs["baseline"][0]).get("model", {}).get("window", 128))
    if not any(d > window for d in ecfg.recall_distances):
        raise EvalError(f"EvalConfig.recall_distances {tuple(ecfg.recall_distances)} has no distance beyond the "
                        f"{window}-token window, so long_range_recall is undefined: add one (e.g. {2 * window})")
    val = load_split("val", data_dir=data_dir)
    docs = evaluation_documents(val, ecfg.max_docs, ecfg.max_tokens_per_doc)
    chars = np.array([d["characters"] for d in docs], float)
    n_bytes = np.array([d["bytes"] for d in docs], float)
    items = make_recall_items(val, ecfg.recall_distances, ecfg.recall_items_per_distance, ecfg.recall_seed)
    log = (lambda msg: print(msg, file=sys.stderr)) if progress else (lambda msg: None)
    log(f"evaluate: {len(docs)} validation documents, {len(items)} recall items, device {device}")

    per_arm, first_models, configs = {}, {}, {}
    for arm in ARMS:
        seeds = []
        for run_dir in runs[arm]:
            model, config = load_model(run_dir, device=device)
            seed = config.get("seed", run_dir.name)
            log(f"evaluate: {arm} seed {seed} ({run_dir})")
            # The device's mixed precision (as in training; REVENA_DTYPE=fp32 forces full precision): on CPUs
            # with bf16 units the 50257-way output layer is several times faster, and both arms share it.
            with autocast(device):
                nll = document_nll(model, docs, device, progress=progress)
                scores = score_recall_items(model, items, device=device, batch_size=ecfg.batch_size)
            seeds.append({"seed": seed, "run_dir": str(run_dir), "config": config, "nll": nll, "recall": scores,
                          "num_parameters": int(model.num_parameters())})
            if arm not in first_models:
                first_models[arm], configs[arm] = model, config
            else:
                del model
        per_arm[arm] = seeds

    log("evaluate: throughput")
    seq_len = int(configs["baseline"].get("train", {}).get("seq_len", preset_obj.train.seq_len))
    batches = throughput_batches(val, ecfg.batch_size, seq_len, ecfg.throughput_tokens)
    throughput = measure_throughput(first_models, batches, device, samples=ecfg.bootstrap_samples)

    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    meta = val.meta
    n_samples, boot_seed = ecfg.bootstrap_samples, ecfg.recall_seed
    results, details = {}, {"documents": [d["index"] for d in docs], "characters": chars.tolist(), "arms": {}}
    pooled = {}
    for arm in ARMS:
        seeds = per_arm[arm]
        # Seeds are averaged per document / per item, then the documents / items are resampled.
        nll = np.mean([s["nll"]["nll_bits"] for s in seeds], axis=0)                        # (D,)
        exact = np.mean([[r["exact_match"] for r in s["recall"]] for s in seeds], axis=0)   # (N,)
        logprob = np.mean([[r["answer_logprob_bits"] for r in s["recall"]] for s in seeds], axis=0)
        hit = np.mean([[r["memory_hit_rate"] for r in s["recall"]] for s in seeds], axis=0)
        answer_hit = np.mean([[r["answer_hit"] for r in s["recall"]] for s in seeds], axis=0)
        in_fact = np.mean([[r["answer_hit_in_fact"] for r in s["recall"]] for s in seeds], axis=0)
        mean_scores = [dict(r, exact_match=float(e), answer_logprob_bits=float(lp), memory_hit_rate=float(h),
                            answer_hit=float(ah), answer_hit_in_fact=float(f))
                       for r, e, lp, h, ah, f in zip(seeds[0]["recall"], exact, logprob, hit, answer_hit, in_fact)]
        summary = summarize_recall(mean_scores, window=window)
        beyond = np.array([it.kind == "passkey" and it.distance > window for it in items])
        pooled[arm] = {"nll": nll, "exact": exact, "logprob": logprob, "beyond": beyond}
        memory_hit_rate = float(np.mean([s["nll"]["memory_hit_rate"] for s in seeds])) if arm == "with_ltm" else 0.0
        config = configs[arm]
        trained_corpus = (config.get("data_meta") or {}).get("corpus")
        if trained_corpus and trained_corpus != meta.get("corpus"):
            log(f"evaluate: warning: {arm} was trained on corpus {trained_corpus!r} but data/ now holds "
                f"{meta.get('corpus')!r}; re-run prepare_data/train so both match")
        results[arm] = {
            "bpc": float(nll.sum() / chars.sum()),
            "long_range_recall": summary["long_range_recall"],
            "memory_hit_rate": memory_hit_rate,
            "tokens_per_sec": throughput[arm]["tokens_per_sec"],
            "bits_per_byte": float(nll.sum() / n_bytes.sum()),
            "long_range_recall_logprob_bits": summary["long_range_recall_logprob_bits"],
            "control_recall": summary["control_recall"],
            "control_recall_logprob_bits": summary["control_recall_logprob_bits"],
            "routed_token_ratio": float(np.mean([s["nll"]["routed_token_ratio"] for s in seeds])),
            "avg_surprisal_routed": float(np.mean([s["nll"]["avg_surprisal_routed"] for s in seeds])),
            "recall_by_distance": summary["recall_by_distance"],
            "ci95": {
                "bpc": bootstrap_ratio_ci(nll, chars, n_samples, boot_seed),
                "long_range_recall": bootstrap_mean_ci(exact[beyond], n_samples, boot_seed),
                "long_range_recall_logprob_bits": bootstrap_mean_ci(logprob[beyond], n_samples, boot_seed),
                "tokens_per_sec": throughput[arm]["ci95"],
            },
            "per_seed": {
                str(s["seed"]): _float_dict({
                    "bpc": float(s["nll"]["nll_bits"].sum() / chars.sum()),
                    "long_range_recall": summarize_recall(s["recall"], window)["long_range_recall"],
                    "long_range_recall_logprob_bits":
                        summarize_recall(s["recall"], window)["long_range_recall_logprob_bits"],
                    "memory_hit_rate": s["nll"]["memory_hit_rate"] if arm == "with_ltm" else 0.0,
                    "routed_token_ratio": s["nll"]["routed_token_ratio"],
                }) for s in seeds
            },
            "evaluation": {
                "documents": len(docs),
                "predicted_tokens": int(seeds[0]["nll"]["predicted_tokens"]),
                "characters": int(chars.sum()),
                "bytes": int(n_bytes.sum()),
                "max_docs": ecfg.max_docs,
                "max_tokens_per_doc": ecfg.max_tokens_per_doc,
                "truncated_documents": int(sum(d["truncated"] for d in docs)),
                "note": ("bpc = NLL bits of every text token of each document read from its opening EOT, memory "
                         "cleared per document, / characters; a document cut at max_tokens_per_doc counts the "
                         "characters of exactly the decoded tokens scored"),
                "recall_items": len(items),
                "recall_distances": list(ecfg.recall_distances),
                "recall_items_per_distance": ecfg.recall_items_per_distance,
                "recall_seed": ecfg.recall_seed,
                "recall_headline": f"passkey exact match (greedy, teacher-forced), mean over distances > {window}",
                "throughput": {k: v for k, v in throughput[arm].items() if k != "tokens_per_sec"},
                "bootstrap_samples": n_samples,
            },
            "run": {
                "corpus": meta.get("corpus"),
                "source": meta.get("source"),
                "fallback_reason": meta.get("fallback_reason"),
                "preset": preset_obj.name,
                "trained_preset": config.get("preset"),
                "seeds": [s["seed"] for s in seeds],
                "run_dirs": [s["run_dir"] for s in seeds],
                "steps_done": [s["config"].get("steps_done") for s in seeds],
                "num_parameters": seeds[0]["num_parameters"],
                "device": str(device),
                "dtype": dtype_name(autocast_dtype(device)),
                "train_device": config.get("device"),
                "train_dtype": config.get("dtype"),
                "window": window,
                "trained_corpus": trained_corpus,
                "date": date,
            },
        }
        details["arms"][arm] = {"nll_bits": nll.tolist(),
                                "recall": mean_scores}

    a, b = pooled["baseline"], pooled["with_ltm"]
    beyond = a["beyond"]
    results["with_ltm"]["vs_baseline"] = {
        "bpc": paired_bootstrap_ratio_diff(a["nll"], b["nll"], chars, n_samples, boot_seed),
        "bits_per_byte": paired_bootstrap_ratio_diff(a["nll"], b["nll"], n_bytes, n_samples, boot_seed),
        "long_range_recall": paired_bootstrap_mean_diff(a["exact"][beyond], b["exact"][beyond], n_samples, boot_seed),
        "long_range_recall_logprob_bits":
            paired_bootstrap_mean_diff(a["logprob"][beyond], b["logprob"][beyond], n_samples, boot_seed),
        "note": "with_ltm - baseline; 95% paired bootstrap over documents (bpc) or recall items (recall)",
    }
    results_path.mkdir(parents=True, exist_ok=True)
    _write_json(results_path / RESULTS_FILE, results)
    _write_json(results_path / DETAILS_FILE, details)
    log(f"evaluate: wrote {results_path / RESULTS_FILE}")
    return results


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
    from revena_lib.checkpoint import write_json

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
    """The headline numbers of both arms as a small pandas DataFrame (rows: metrics, columns: arms)."""
    import pandas as pd

    keys = BRIEF_KEYS + ("bits_per_byte", "long_range_recall_logprob_bits", "control_recall", "routed_token_ratio")
    return pd.DataFrame({arm: {k: results[arm].get(k) for k in keys} for arm in ARMS if arm in results})


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m revena_lib.evaluate", description=(
        "Evaluate trained/baseline/ and trained/with_ltm/ (every finished seed) on data/val.bin and write "
        "results/results.json: bpc, long_range_recall, memory_hit_rate, tokens_per_sec per arm, plus extras."))
    parser.add_argument("--preset", default=None, choices=["smoke", "cpu", "paper"],
                        help="evaluation settings (documents, recall distances, items); default: the preset the "
                             "trained runs used")
    parser.add_argument("--device", default=None, choices=["cpu", "cuda", "auto"],
                        help="default: CUDA if available, else the CPU")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    args = parser.parse_args(argv)
    from revena_lib.checkpoint import CheckpointError
    from revena_lib.data import DataError
    from revena_lib.device import DeviceError

    try:
        results = evaluate(preset=args.preset, device=args.device, progress=not args.quiet)
    except (EvalError, CheckpointError, DataError, DeviceError, ValueError) as e:
        sys.exit(f"error: {e}")
    print(json.dumps({arm: {k: results[arm][k] for k in BRIEF_KEYS} for arm in ARMS}, indent=2))


if __name__ == "__main__":
    main()
