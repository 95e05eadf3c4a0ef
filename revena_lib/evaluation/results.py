"""results.json: every trained arm on the validation split -> ``results/results.json``.

Top level keeps the brief's ``{"baseline": {...}, "with_ltm": {...}}`` (each with ``bpc``,
``long_range_recall``, ``memory_hit_rate``, ``tokens_per_sec``) and adds one key per further arm (the arm
table, ``revena_lib/arms.py``) and per evaluation-time ablation (``with_ltm_reads_off``: the trained
with_ltm weights scored with memory reads off), plus ``comparisons``: every arm against ``baseline``, each
metric with its difference, a 95% interval and a verdict (better / worse / no detectable difference).
Intervals include training noise: they resample seeds, then documents or recall items (``stats.py``).
Per-seed numbers, BPC by position in the document, recall by distance, throughput (median over >= 20
timed batches) and what was evaluated where (corpus, preset, device, dtype, seeds) are kept per arm.

``evaluate()`` reads the steps in order: which runs (``arm_runs.py``), the documents and recall items (``bpc.py``,
``recall.py``), every arm's seeds scored (``scoring.py``), throughput (``throughput.py``), then this module assembles
each arm's entry and the comparisons and writes the file. ``main`` is ``python -m revena_lib.evaluate``.

    python -m revena_lib.evaluate --preset cpu        # or: from revena_lib.evaluation.results import evaluate
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
from pathlib import Path

import numpy as np

from revena_lib.arms import ARMS, BASELINE, READ_ABLATIONS
from revena_lib.config import EvalConfig, get_preset
from revena_lib.data import DataError
from revena_lib.data.splits import load_split
from revena_lib.data.tokenizer import TokenizerError, check_same_tokenizer, tokenizer_info
from revena_lib.evaluation import EvalError, stats
from revena_lib.evaluation.arm_runs import check_arms_match, find_arm_runs
from revena_lib.evaluation.bpc import POSITION_BUCKETS, bucket_name, evaluation_documents, unigram_document_bits
from revena_lib.evaluation.copying import positive_control
from revena_lib.evaluation.ltm_analysis import cosine_summary
from revena_lib.evaluation.memory_stats import lifetime_summary
from revena_lib.evaluation.recall import in_memory_recall, make_recall_items, summarize_recall
from revena_lib.evaluation.scoring import (Log, ScoredArm, recall_item_counts, recall_matrix, receptive_field,
                                           score_arm)
from revena_lib.evaluation.throughput import measure_throughput, throughput_batches
from revena_lib.models.ltm import memory_rates
from revena_lib.paths import RESULTS_FILE, results_dir as default_results_dir, trained_dir as default_trained_dir
from revena_lib.training.checkpoint import CheckpointError, read_config, write_json
from revena_lib.training.device import DeviceError, autocast_dtype, dtype_name, select_device

BRIEF_KEYS = ("bpc", "long_range_recall", "memory_hit_rate", "tokens_per_sec")
DETAILS_FILE = "results_details.json"
# metric -> (lower is better?) for comparisons and verdicts
COMPARED = {"bpc": True, "bits_per_byte": True, "long_range_recall": False, "long_range_recall_logprob_bits": False,
            # passkey items beyond the receptive field of the stacked windows (n_layer x (window - 1)): only a memory
            # can reach them (recall_items_beyond_field gives them enough items for an interval)
            "recall_beyond_field": False, "recall_beyond_field_logprob_bits": False}


# -----------------------------------------------------------------------------
# Every arm -> results.json

def _memory_measures(scored: ScoredArm, window: int, ecfg) -> dict:
    """Induction score (every arm); for arms with an LTM: entry lifetime, recall on the subset of items whose answer
    was still in memory when asked, and (reads on) the cosines of question queries with answer keys."""
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
    heads = [h for h in scored.induction_heads if h is not None]
    if heads:   # where copying lives: the LTM is read in one layer, so it can only extend copying that happens there
        out["induction_heads"] = {
            "mean": np.mean(heads, axis=0).round(4).tolist(),
            "per_seed": {str(s): h.round(4).tolist() for s, h in zip(scored.seeds, scored.induction_heads)
                         if h is not None},
            "note": "(n_layer, n_head) mean attention from a token in the second copy of a repeated 24-token random "
                    "span to the token after its earlier occurrence (Olsson et al. 2022): 1 = a perfect induction "
                    "head; uniform attention gives about 1/40"}
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


def _arm_results(arm, scored: ScoredArm, docs, items, window, throughput, ecfg) -> dict:
    """One arm's entry of results.json: the brief's four numbers first, then the rest, intervals, seeds, the run."""
    chars = np.array([d["characters"] for d in docs], float)
    n_bytes = np.array([d["bytes"] for d in docs], float)
    summary = summarize_recall(_seed_mean_scores(scored), window=window)
    recall = _recall_matrices(scored, items, window)
    rates = [memory_rates(c) for c in scored.counts]
    rate = lambda key: float(np.mean([r[key] for r in rates])) if scored.has_memory else 0.0
    spec = ARMS.get(arm)
    config = scored.configs[0]
    return {
        "bpc": stats.point(scored.nll, chars),
        "long_range_recall": stats.point(recall["exact"]),
        "memory_hit_rate": rate("ltm_hit_rate"),
        "tokens_per_sec": throughput["tokens_per_sec"],
        "description": spec.description if spec else READ_ABLATIONS[arm][2],
        "family": config.get("family", "transformer"),
        "bits_per_byte": stats.point(scored.nll, n_bytes),
        "bpc_by_position": _bpc_by_position(scored, docs, ecfg),
        "long_range_recall_logprob_bits": stats.point(recall["logprob"]),
        "recall_beyond_field": stats.point(recall["far_exact"]),        # passkey, distance > n_layer x (window - 1)
        "recall_beyond_field_logprob_bits": stats.point(recall["far_logprob"]),
        "recall_beyond_field_items": int(recall["far"].sum()),
        "control_recall": summary["control_recall"],
        "control_recall_logprob_bits": summary["control_recall_logprob_bits"],
        # controls that could falsify a memory (beyond the window): no fact planted (guessing), another key planted
        "no_fact_recall_logprob_bits": summary["no_fact_recall_logprob_bits"],
        "wrong_key_recall_logprob_bits": summary["wrong_key_recall_logprob_bits"],
        "routed_token_ratio": rate("routed_token_ratio"),
        "avg_surprisal_routed": rate("avg_surprisal_routed"),
        "recall_by_distance": summary["recall_by_distance"],
        "positive_control": _positive_control(scored, items, window, ecfg),
        **_memory_measures(scored, window, ecfg),
        "ci95": _intervals(scored, chars, n_bytes, recall, throughput, ecfg),
        "per_seed": _per_seed(scored, chars, recall, rates),
        "num_parameters": scored.num_parameters,
        "run": _trained_run(scored, window),
    }


def _positive_control(scored: ScoredArm, items, window: int, ecfg) -> dict:
    """Does the arm copy inside its window? In-window pass-key exact match per seed and distance (copying.py)."""
    by_seed, misses = {}, {}
    for seed, rows in zip(scored.seeds, scored.recall):
        inside = [(it, r) for it, r in zip(items, rows) if it.kind == "passkey" and it.distance < window]
        by_seed[seed] = {d: float(np.mean([r["exact_match"] for it, r in inside if it.distance == d]))
                         for d in sorted({it.distance for it, _ in inside})}
        misses[seed] = [{"distance": it.distance, "answer": it.answer_text, "predicted": r["predicted_text"]}
                        for it, r in inside if not r["exact_match"]]
    return positive_control(by_seed, ecfg.positive_control_exact, misses)


def _seed_mean_scores(scored: ScoredArm) -> list[dict]:
    """Per-item scores averaged over seeds, for the by-distance tables (intervals come from the matrices)."""
    return [dict(rows[0], **{k: float(np.mean([r[k] for r in rows])) for k in
                             ("exact_match", "answer_logprob_bits", "memory_hit_rate", "answer_hit",
                              "answer_hit_in_fact", "useful_hit", "aligned_hit", "same_token_hit",
                              "answer_written", "answer_in_memory",
                              "answer_any_in_memory", "answer_tokens_in_memory")})
            for rows in zip(*scored.recall)]


def _recall_matrices(scored: ScoredArm, items, window: int) -> dict:
    """(S, N') exact match and answer log2 p of the passkey items beyond the window ("exact", "logprob") and beyond
    the receptive field ("far_exact", "far_logprob"), with that mask ("far")."""
    beyond = np.array([it.kind == "passkey" and it.distance > window for it in items])
    exact, logprob = (recall_matrix(scored, k, beyond) for k in ("exact_match", "answer_logprob_bits"))
    far = np.array([it.kind == "passkey" and it.distance > receptive_field(scored, window) for it in items])
    far_exact, far_logprob = (recall_matrix(scored, k, far) for k in ("exact_match", "answer_logprob_bits"))
    return {"exact": exact, "logprob": logprob, "far": far, "far_exact": far_exact, "far_logprob": far_logprob}


def _bpc_by_position(scored: ScoredArm, docs, ecfg) -> dict:
    """BPC of the tokens in each position bucket (POSITION_BUCKETS) of the documents, with its interval."""
    bucket_chars = np.array([d["bucket_characters"] for d in docs], float)                 # (D, buckets)
    samples, seed = ecfg.bootstrap_samples, ecfg.recall_seed
    by_position = {}
    for b, (lo, hi) in enumerate(POSITION_BUCKETS):
        has = bucket_chars[:, b] > 0
        if has.any():
            name = bucket_name(lo, hi)
            by_position[name] = {"bpc": stats.point(scored.bucket_bits[:, has, b], bucket_chars[has, b]),
                                 "ci95": stats.hierarchical_ci(scored.bucket_bits[:, has, b], bucket_chars[has, b],
                                                               samples, seed),
                                 "documents": int(has.sum()), "characters": int(bucket_chars[has, b].sum())}
    return by_position


def _intervals(scored: ScoredArm, chars, n_bytes, recall: dict, throughput: dict, ecfg) -> dict:
    """The ci95 section of an arm's entry: seeds resampled, then documents or items."""
    samples, seed = ecfg.bootstrap_samples, ecfg.recall_seed
    return {
        "bpc": stats.hierarchical_ci(scored.nll, chars, samples, seed),
        "bits_per_byte": stats.hierarchical_ci(scored.nll, n_bytes, samples, seed),
        "long_range_recall": stats.hierarchical_ci(recall["exact"], None, samples, seed),
        "long_range_recall_logprob_bits": stats.hierarchical_ci(recall["logprob"], None, samples, seed),
        "recall_beyond_field": stats.hierarchical_ci(recall["far_exact"], None, samples, seed),
        "recall_beyond_field_logprob_bits": stats.hierarchical_ci(recall["far_logprob"], None, samples, seed),
        "tokens_per_sec": throughput["ci95"],
        "note": "95% bootstrap resampling seeds, then documents (bpc) or recall items (recall): includes "
                "training noise; tokens_per_sec: median over timed batches, bootstrap of the median",
    }


def _per_seed(scored: ScoredArm, chars, recall: dict, rates: list[dict]) -> dict:
    """The per_seed section: each seed's BPC, recall and memory rates."""
    exact, logprob = recall["exact"], recall["logprob"]
    return {
        str(s): {"bpc": float(scored.nll[k].sum() / chars.sum()),
                 "long_range_recall": float(exact[k].mean()) if exact.size else float("nan"),
                 "long_range_recall_logprob_bits": float(logprob[k].mean()) if logprob.size else float("nan"),
                 "memory_hit_rate": rates[k]["ltm_hit_rate"] if scored.has_memory else 0.0,
                 "routed_token_ratio": rates[k]["routed_token_ratio"] if scored.has_memory else 0.0}
        for k, s in enumerate(scored.seeds)
    }


def _trained_run(scored: ScoredArm, window: int) -> dict:
    """The run section's own part: which runs were scored and how they were trained."""
    config = scored.configs[0]
    return {
        "seeds": scored.seeds, "run_dirs": scored.run_dirs,
        "steps_done": [c.get("steps_done") for c in scored.configs],
        "schedule_changes": [c.get("schedule_changes") or [] for c in scored.configs],   # per seed
        "init": [c.get("init") for c in scored.configs],   # per seed: where its weights started (training/trunk.py)
        "trained_preset": config.get("preset"), "train_device": config.get("device"),
        "train_dtype": config.get("dtype"), "window": int((config.get("model") or {}).get("window", window)),
        "trained_corpus": (config.get("data_meta") or {}).get("corpus"),
    }


def _comparison(reference: ScoredArm, scored: ScoredArm, docs, items, window, ecfg, against: str,
                controls: tuple[dict, dict]) -> dict:
    """Each COMPARED metric of ``scored`` minus ``reference``, with interval and verdict, plus one sentence.
    ``controls``: the two arms' positive controls (reference's, scored's), as their results.json entries hold them."""
    chars = np.array([d["characters"] for d in docs], float)
    n_bytes = np.array([d["bytes"] for d in docs], float)
    beyond = np.array([it.kind == "passkey" and it.distance > window for it in items])
    paired = [str(s) for s in reference.seeds] == [str(s) for s in scored.seeds]
    values = {"bpc": (reference.nll, scored.nll, chars), "bits_per_byte": (reference.nll, scored.nll, n_bytes)}
    far = np.array([it.kind == "passkey" and it.distance > receptive_field(scored, window) for it in items])
    for key, item_key, mask in (("long_range_recall", "exact_match", beyond),
                                ("long_range_recall_logprob_bits", "answer_logprob_bits", beyond),
                                ("recall_beyond_field", "exact_match", far),
                                ("recall_beyond_field_logprob_bits", "answer_logprob_bits", far)):
        values[key] = (recall_matrix(reference, item_key, mask), recall_matrix(scored, item_key, mask), None)
    out = {"against": against}
    for key, lower_is_better in COMPARED.items():
        a, b, den = values[key]
        out[key] = stats.compare(a, b, den, lower_is_better, paired, ecfg.bootstrap_samples, ecfg.recall_seed)
    _gate_recall_verdicts(out, controls, window, ecfg, against)
    out["summary"] = (f"BPC: {out['bpc']['verdict']} ({out['bpc']['diff']:+.4f}, 95% CI "
                      f"[{out['bpc']['ci95'][0]:+.4f}, {out['bpc']['ci95'][1]:+.4f}]); long-range recall: "
                      f"{out['long_range_recall']['verdict']} ({out['long_range_recall']['diff']:+.3f}, 95% CI "
                      f"[{out['long_range_recall']['ci95'][0]:+.3f}, {out['long_range_recall']['ci95'][1]:+.3f}])"
                      + ("; recall cannot be judged: no positive control (an arm does not copy inside its window)"
                         if out["long_range_recall"]["verdict"] == stats.CANNOT_TELL else ""))
    started = _start_note(reference, scored, against)
    if started:
        out["started_differently"] = started
        out["summary"] += f"; {started}"
    return out


def _started_from(scored: ScoredArm) -> tuple[str, str | None]:
    """How an arm's seeds started ("trunk", "part of the trunk" (another family: the tensors it shares), "random", or
    two of these joined by "and"), and why one did not take the whole trunk although its init_from named one
    (config.json ``init``; runs from before it: random)."""
    inits = [c.get("init") or {} for c in scored.configs]
    kinds = sorted({"part of the trunk" if i.get("shared_only") else i.get("started_from", "random") for i in inits})
    reasons = [i["reason"] for i in inits
               if i.get("init_from") and (i.get("started_from") != "trunk" or i.get("shared_only")) and i.get("reason")]
    return " and ".join(kinds), (reasons[0] if reasons else None)


def _start_note(reference: ScoredArm, scored: ScoredArm, against: str) -> str | None:
    """A sentence when the two arms' weights started differently (a trunk vs random initialisation; the training
    settings, init_from among them, are checked equal in arm_runs.check_arms_match): None when they started alike."""
    (theirs, their_reason), (mine, my_reason) = _started_from(reference), _started_from(scored)
    if theirs == mine:
        return None
    why = "; ".join(r for r in (their_reason, my_reason) if r)
    return (f"the arms started differently ({against} from {theirs}, the arm from {mine}" + (f": {why}" if why else "")
            + "), so a difference includes where their weights started")


RECALL_KEYS = ("long_range_recall", "long_range_recall_logprob_bits", "recall_beyond_field",
               "recall_beyond_field_logprob_bits")


def _gate_recall_verdicts(out: dict, controls: tuple[dict, dict], window, ecfg, against) -> None:
    """A recall comparison gets a verdict only if both arms copy inside their window (every seed's in-window pass-key
    exact match >= positive_control_exact); otherwise "cannot tell", with why. BPC needs no copying: its verdict stays."""
    failing = [name for name, control in zip((against, "the arm"), controls) if not control["passed"]]
    if not failing:
        return
    why = (f"positive control failed: {' and '.join(failing)} do{'es' if len(failing) == 1 else ''} not copy a pass "
           f"key inside the {window}-token window (in-window exact < {ecfg.positive_control_exact} for some seed), "
           "so a recall difference beyond the window says nothing about memory")
    for key in RECALL_KEYS:
        out[key]["verdict_if_copying"] = out[key]["verdict"]
        out[key]["verdict"], out[key]["why"] = stats.CANNOT_TELL, why


def evaluate(preset="smoke", arms=None, data_dir=None, trained_root=None, results_dir=None, device=None,
             progress=True) -> dict:
    """Evaluate every finished seed of the arms; write ``results.json`` (+ ``results_details.json``); return it.

    ``preset``: whose EvalConfig to use (documents, recall distances/items, throughput); a name, a ``Preset``, or
    None for the preset the runs were trained with. ``arms``: names or 'a,b' (default: every arm of the table
    with a finished run; baseline is required). Arms must differ only in their row of the arm table.
    """
    trained_root = Path(trained_root) if trained_root else default_trained_dir()
    results_path = Path(results_dir) if results_dir else default_results_dir()
    runs, base_config, preset_obj = _runs_to_evaluate(preset, arms, trained_root)
    ecfg: EvalConfig = preset_obj.eval
    device = select_device(device)
    window = int(base_config.get("model", {}).get("window", 128))
    if not any(d > window for d in ecfg.recall_distances):
        raise EvalError(f"EvalConfig.recall_distances {tuple(ecfg.recall_distances)} has no distance beyond the "
                        f"{window}-token window, so long_range_recall is undefined: add one (e.g. {2 * window})")

    val = load_split("val", data_dir=data_dir)
    docs = evaluation_documents(val, ecfg.max_docs, ecfg.max_tokens_per_doc, ecfg.doc_seed)
    data_tokenizer = _data_tokenizer(runs, val)
    field_reach = int(base_config.get("model", {}).get("n_layer", 1)) * (window - 1)
    items = make_recall_items(val, ecfg.recall_distances, recall_item_counts(ecfg, field_reach), ecfg.recall_seed)
    log = Log(progress)
    log(f"evaluate: arms {', '.join(runs)}; {len(docs)} validation documents, {len(items)} recall items, device {device}")
    scored, models = _score_arms(runs, docs, items, device, ecfg, log)

    log("evaluate: throughput")
    seq_len = int(base_config.get("train", {}).get("seq_len", preset_obj.train.seq_len))
    throughput = _throughput(models, scored, val, seq_len, device, ecfg)

    unigram = unigram_document_bits(load_split("train", data_dir=data_dir), docs, int(data_tokenizer["vocab_size"]))
    evaluated = _evaluated(val.meta, preset_obj.name, device, window, field_reach, data_tokenizer, docs, items,
                           throughput, ecfg)
    results = _results(scored, docs, items, window, throughput, ecfg, evaluated, unigram)
    _write_results(results_path, results, scored, docs)
    log(f"evaluate: wrote {results_path / RESULTS_FILE}")
    return results


def _runs_to_evaluate(preset, arms, trained_root: Path):
    """(runs {arm: run dirs}, checked comparable; the baseline's first config; the Preset whose EvalConfig is used)."""
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
    return runs, base_config, preset_obj


def _data_tokenizer(runs: dict, val) -> dict:
    """The prepared data's tokenizer, after checking every run was trained with it."""
    data_tokenizer = tokenizer_info(val.meta)
    for dirs in runs.values():
        for run_dir in dirs:
            try:
                check_same_tokenizer(read_config(run_dir).get("tokenizer"), data_tokenizer, str(run_dir))
            except TokenizerError as e:
                raise EvalError(str(e)) from None
    return data_tokenizer


def _score_arms(runs: dict, docs, items, device, ecfg, log) -> tuple[dict, dict]:
    """({name: ScoredArm} for every arm and read-ablation, {arm: its first seed's model} for timing)."""
    scored, models = {}, {}
    for arm, dirs in runs.items():
        scored[arm], models[arm] = score_arm(arm, dirs, docs, items, device, ecfg, log)
    for name, (source, switches, _) in READ_ABLATIONS.items():
        if source in runs:
            scored[name], _ = score_arm(name, runs[source], docs, items, device, ecfg, log, switches)
    return scored, models


def _throughput(models: dict, scored: dict, val, seq_len: int, device, ecfg) -> dict:
    """Tokens/s of every arm on the same batches; a read-ablation takes its trained arm's."""
    batches = throughput_batches(val, ecfg.batch_size, seq_len, ecfg.throughput_tokens, ecfg.throughput_batches)
    throughput = measure_throughput(models, batches, device, samples=ecfg.bootstrap_samples)
    for name, (source, _, _) in READ_ABLATIONS.items():
        if name in scored:
            throughput[name] = throughput[source]   # same weights; reads off costs no less to time separately
    return throughput


def _evaluated(meta: dict, preset_name: str, device, window: int, field_reach: int, data_tokenizer: dict, docs,
               items, throughput: dict, ecfg) -> dict:
    """What was evaluated where: every arm's run section starts with it (corpus, device, documents, items...)."""
    chars = np.array([d["characters"] for d in docs], float)
    return {
        "corpus": meta.get("corpus"), "source": meta.get("source"), "fallback_reason": meta.get("fallback_reason"),
        "preset": preset_name, "device": str(device), "dtype": dtype_name(autocast_dtype(device)),
        "logprob_dtype": "fp32", "window": window, "tokenizer": data_tokenizer["name"],
        "receptive_field": field_reach,
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


def _results(scored: dict, docs, items, window: int, throughput: dict, ecfg, evaluated: dict, unigram) -> dict:
    """results.json's content: an entry per arm, the comparisons (every arm vs the baseline, every read-ablation vs
    its own trained arm) and the unigram reference."""
    results = {arm: _arm_results(arm, scored[arm], docs, items, window, throughput[arm], ecfg) for arm in scored}
    for arm in results:
        results[arm]["run"] = {**evaluated, **results[arm]["run"]}
    control = lambda arm: results[arm]["positive_control"]
    results["comparisons"] = {arm: _comparison(scored[BASELINE], scored[arm], docs, items, window, ecfg, BASELINE,
                                               (control(BASELINE), control(arm)))
                              for arm in scored if arm != BASELINE}
    for name, (source, _, _) in READ_ABLATIONS.items():
        if name in scored:   # the ablation against its own trained arm: what do the reads themselves do?
            results["comparisons"][f"{source}_vs_{name}"] = _comparison(scored[name], scored[source], docs, items,
                                                                        window, ecfg, name,
                                                                        (control(name), control(source)))
    chars = np.array([d["characters"] for d in docs], float)
    results["reference"] = {"unigram_bpc": float(unigram.sum() / chars.sum()),
                            "note": "unigram model of the training tokens, scored on the same documents"}
    return results


def _write_results(results_path: Path, results: dict, scored: dict, docs) -> None:
    """results.json, and results_details.json (per-document NLL and per-item recall scores of every arm)."""
    chars = np.array([d["characters"] for d in docs], float)
    details = {"documents": [d["index"] for d in docs], "characters": chars.tolist(),
               "arms": {arm: {"nll_bits": s.nll.tolist(), "recall": s.recall} for arm, s in scored.items()}}
    results_path.mkdir(parents=True, exist_ok=True)
    _write_json(results_path / RESULTS_FILE, results)
    _write_json(results_path / DETAILS_FILE, details)


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
    try:
        results = evaluate(preset=args.preset, arms=args.arms, device=args.device, progress=not args.quiet)
    except (EvalError, CheckpointError, DataError, DeviceError, ValueError) as e:
        sys.exit(f"error: {e}")
    print(json.dumps({arm: {k: results[arm][k] for k in BRIEF_KEYS} for arm in result_arms(results)}, indent=2))
    for line in verdict_lines(results):
        print(line)


if __name__ == "__main__":
    main()
