"""What a trained LTM does with recall items: query-key cosines, and the write rule swept at evaluation time.

``answer_key_cosines``: at the position that predicts the first answer token, the memory layer's unit query (what
the LTM compares, per head, before RoPE) against the stored key of the planted fact's answer token, next to random
(query, written entry) pairs of the same items; the brief's read counts a hit when any head's cosine is above 0.8.
``write_rule_sweep``: one trained with_ltm run scored under other write rules (the brief's 4.5-bit threshold,
higher cuts, the k most surprising tokens per chunk) without retraining, so the model was trained under the
brief's rule and only the evaluation's writes change: routed ratio, entry lifetime, recall and BPC per setting.

    from revena_lib.evaluation.ltm_analysis import write_rule_sweep
    rows = write_rule_sweep("trained/with_ltm/cpu/seed-1337", preset="cpu")   # list of dicts, one per setting
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F

from revena_lib.config import get_preset
from revena_lib.data.splits import load_split
from revena_lib.evaluation import EvalError
from revena_lib.evaluation.bpc import document_nll, evaluation_documents
from revena_lib.evaluation.memory_stats import lifetime_summary
from revena_lib.evaluation.recall import RecallItem, make_recall_items, score_recall_items
from revena_lib.models.ltm import memory_rates
from revena_lib.training.checkpoint import load_model
from revena_lib.training.device import autocast, select_device

COSINE_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
# The brief's rule first (the headline), then higher cuts, then a fixed number of writes per 64-token chunk.
DEFAULT_SWEEP = ({"ltm_write_threshold_bits": 4.5}, {"ltm_write_threshold_bits": 6.0},
                 {"ltm_write_threshold_bits": 8.0}, {"ltm_write_rule": "topk", "ltm_write_topk": 16},
                 {"ltm_write_rule": "topk", "ltm_write_topk": 4})


def _core(model):
    """The RevenaLM under an evaluation wrapper (evaluation/scoring.py's ForwardWith keeps it as .model)."""
    return getattr(model, "model", model)


@contextmanager
def captured_qk(model):
    """Yields a dict that the next forward call fills with the memory layer's unit queries and keys, "q" and "k"
    (B, H, T_padded, D) float32, before RoPE: exactly what the LTM compares (a hook on that layer's projection)."""
    core = _core(model)
    attn = core.blocks[core.cfg.memory_layer_index].attn
    got = {}

    def hook(module, inputs, output):                                     # output (B, T, 3C)
        B, T, C3 = output.shape
        shape = (B, T, attn.n_head, attn.head_dim)
        q, k = output[..., :C3 // 3], output[..., C3 // 3:2 * C3 // 3]
        got["q"] = F.normalize(q.float().reshape(shape).transpose(1, 2), dim=-1)
        got["k"] = F.normalize(k.float().reshape(shape).transpose(1, 2), dim=-1)

    handle = attn.c_attn.register_forward_hook(hook)
    try:
        yield got
    finally:
        handle.remove()


def cosine_summary(cos: np.ndarray, cut: float) -> dict:
    """cos (N, H) -> quantiles per head pooled and of the max over heads (what decides a hit), shares above cut."""
    best = cos.max(axis=1) if cos.size else cos.reshape(0)
    quant = lambda x: {f"q{int(round(100 * p)):02d}": (float(np.quantile(x, p)) if x.size else float("nan"))
                       for p in COSINE_QUANTILES}
    return {"per_head": quant(cos.ravel()), "max_over_heads": quant(best),
            "share_above_cut": float((cos > cut).mean()) if cos.size else float("nan"),
            "share_any_head_above_cut": float((best > cut).mean()) if best.size else float("nan"), "n": int(len(cos))}


@torch.inference_mode()
def answer_key_cosines(model, items: list[RecallItem], n_random: int = 8, seed: int = 0, batch_size: int = 8,
                       eot: int = 0) -> dict:
    """Cosines (per head) of (question query, answer key) pairs and of random (query, written entry) pairs.

    For every passkey item with a planted fact: the query at ``answer_start - 1`` (it predicts the first answer
    token) against the key at the fact's first answer token. Random pairs: ``n_random`` per item, a query position
    after the first chunk and an entry the LTM wrote in an earlier chunk of the same item (any earlier position if
    none was written). "answer_every_token" pairs the query predicting each answer token with that token's key in
    the fact (a small vocabulary splits a number into several tokens, the first of which may be a bare space).
    Returns {"answer", "random", "answer_every_token": summary, "cut", "by_distance", "raw"} where a summary holds
    quantiles and the share above the cut (``cosine_summary``) and "raw" the (N, H) arrays as lists.
    """
    cfg = _core(model).cfg
    chunk, cut = cfg.chunk_size, cfg.ltm_similarity_threshold
    device = next(model.parameters()).device
    rng = np.random.default_rng(seed)
    chosen = [it for it in items if it.kind == "passkey" and it.fact_answer_span() is not None]
    answer, every, random, distance = [], [], [], []
    for s in range(0, len(chosen), batch_size):
        batch = chosen[s:s + batch_size]
        T = max(len(it.tokens) for it in batch)
        idx = torch.full((len(batch), T), eot, dtype=torch.long)
        for row, it in enumerate(batch):
            idx[row, :len(it.tokens)] = torch.tensor(it.tokens)
        with captured_qk(model) as got:
            routed = model(idx.to(device), introspect=True).trace.routed                 # (B, T)
        q, k = got["q"].cpu(), got["k"].cpu()                                            # (B, H, Tp, D)
        for row, it in enumerate(batch):
            key, n = it.fact_answer_span()
            answer.append((q[row, :, it.answer_start - 1] * k[row, :, key]).sum(-1).numpy())   # (H,)
            for j in range(min(n, it.answer_len)):   # every answer token: the query predicting it vs its key
                every.append((q[row, :, it.answer_start - 1 + j] * k[row, :, key + j]).sum(-1).numpy())
            distance.append(it.distance)
            for _ in range(n_random if len(it.tokens) > chunk else 0):
                t = int(rng.integers(chunk, len(it.tokens)))
                earlier = (t // chunk) * chunk
                written = np.flatnonzero(routed[row, :earlier].numpy())
                p = int(rng.choice(written if len(written) else np.arange(earlier)))
                random.append((q[row, :, t] * k[row, :, p]).sum(-1).numpy())
    answer, random = np.array(answer).reshape(len(answer), -1), np.array(random).reshape(len(random), -1)
    every = np.array(every).reshape(len(every), -1)
    dist = np.array(distance)
    return {"answer": cosine_summary(answer, cut), "random": cosine_summary(random, cut), "cut": cut,
            "answer_every_token": cosine_summary(every, cut),
            "by_distance": {str(d): cosine_summary(answer[dist == d], cut) for d in sorted(set(distance))},
            "raw": {"answer": answer.tolist(), "random": random.tolist(), "every": every.tolist(),
                    "distance": dist.tolist()},
            "note": "cosine of unit query and unit key per head of the memory layer (before RoPE), as the LTM reads "
                    "them; answer: the query predicting the first answer token vs the key of the planted fact's "
                    "answer token; random: a query vs an entry written in an earlier chunk of the same item"}


def _sweep_label(setting: dict) -> str:
    if setting.get("ltm_write_rule") == "topk":
        return f"top {setting.get('ltm_write_topk')} per chunk"
    if "ltm_write_threshold_bits" in setting:
        return f"surprisal > {setting['ltm_write_threshold_bits']:g} bits"
    return ", ".join(f"{k}={v}" for k, v in setting.items()) or "as trained"


def measure_setting(model, docs, items, device, window: int, receptive_field: int, batch_size: int = 8) -> dict:
    """BPC, routed ratio, entry lifetime and recall of one model as it is configured now (one sweep row)."""
    measured = document_nll(model, docs, device, lifetimes=True)
    scores = score_recall_items(model, items, device=device, batch_size=batch_size, tokenizer=docs[0]["tokenizer"])
    passkey = [r for r in scores if r["kind"] == "passkey"]
    mean = lambda rows, key: float(np.mean([r[key] for r in rows])) if rows else float("nan")
    groups = {"in_window": [r for r in passkey if r["distance"] <= window],
              "beyond_window": [r for r in passkey if r["distance"] > window],
              "beyond_field": [r for r in passkey if r["distance"] > receptive_field]}
    life = lifetime_summary(measured["lifetimes"], measured["censored"])
    row = {"bpc": float(measured["nll_bits"].sum() / sum(d["characters"] for d in docs)),
           "routed_token_ratio": memory_rates(measured["counts"])["routed_token_ratio"],
           "ltm_hit_rate": memory_rates(measured["counts"])["ltm_hit_rate"],
           "lifetime_median": life["median"], "lifetime_q10": life["quantiles"].get("q10"),
           "lifetime_q90": life["quantiles"].get("q90"), "lifetime_censored": life["censored"]}
    for name, rows in groups.items():
        row.update({f"{name}_exact": mean(rows, "exact_match"), f"{name}_logprob_bits": mean(rows, "answer_logprob_bits"),
                    f"{name}_answer_in_memory": mean(rows, "answer_in_memory"),
                    f"{name}_answer_any_in_memory": mean(rows, "answer_any_in_memory"),
                    f"{name}_useful_hit": mean(rows, "useful_hit"), f"{name}_aligned_hit": mean(rows, "aligned_hit"),
                    f"{name}_same_token_hit": mean(rows, "same_token_hit"),
                    f"{name}_n": len(rows)})
    return row


def write_rule_sweep(run_dir, settings=DEFAULT_SWEEP, preset="cpu", data_dir=None, device=None,
                     max_docs: int | None = None, items_per_distance: int | None = None, progress=None) -> list[dict]:
    """One trained LTM run scored under each write-rule setting (ModelConfig overrides), evaluation time only.

    The weights stay those trained under the run's own rule (the brief's 4.5 bits); each setting only changes which
    tokens the memory writes while the documents and recall items are read. Documents and items are the preset's
    EvalConfig ones (``max_docs`` / ``items_per_distance`` change them; every distance gets
    ``recall_items_per_distance`` items unless ``items_per_distance`` is given). Returns one dict per setting: ``setting``,
    ``label``, ``bpc``, ``routed_token_ratio``, ``lifetime_*`` (tokens), and recall exact / log2 p / share of answers
    still in memory / useful hits, in the window, beyond it and beyond the receptive field.
    """
    device = select_device(device)
    model, config = load_model(run_dir, device=device)
    if not getattr(model.cfg, "use_ltm", False):
        raise EvalError(f"write_rule_sweep: {run_dir} has no LTM (use_ltm is off): sweep a with_ltm run")
    ecfg = get_preset(preset).eval if isinstance(preset, str) else preset.eval
    val = load_split("val", data_dir=data_dir)
    docs = evaluation_documents(val, max_docs or ecfg.max_docs, ecfg.max_tokens_per_doc, ecfg.doc_seed)
    trained = model.cfg
    window, field = trained.window, trained.n_layer * (trained.window - 1)
    # the preset's recall_items_per_distance at every distance (not its larger count beyond the receptive field):
    # a sweep scores every setting, and its rows are a hint, not the headline
    items = make_recall_items(val, ecfg.recall_distances, items_per_distance or ecfg.recall_items_per_distance,
                              ecfg.recall_seed)
    rows = []
    for setting in settings:
        model.cfg = dataclasses.replace(trained, **setting)
        if progress:
            progress(f"write_rule_sweep: {_sweep_label(setting)}")
        torch.manual_seed(ecfg.recall_seed)
        with autocast(device):   # as evaluate() scores
            measured = measure_setting(model, docs, items, device, window, field, ecfg.batch_size)
        rows.append({"label": _sweep_label(setting), "setting": dict(setting), **measured})
    model.cfg = trained
    for row in rows:
        row.update({"run_dir": str(run_dir), "seed": config.get("seed"), "trained_rule": _sweep_label(
            {"ltm_write_rule": trained.ltm_write_rule, "ltm_write_topk": trained.ltm_write_topk,
             "ltm_write_threshold_bits": trained.ltm_write_threshold_bits}), "documents": len(docs),
             "recall_items": len(items), "window": window, "receptive_field": field,
             "note": "evaluation-time sweep: the weights were trained under trained_rule, only the writes change"})
    return rows


# ----------------------------------------------------------------------------------------------- tables and figure
# Flat rows from results.json for notebooks (pd.DataFrame(rows)); every function skips arms without the measure.

SWEEP_FILE = "write_rule_sweep.json"


def lifetime_rows(results: dict) -> list[dict]:
    """Entry lifetime quantiles (tokens) per LTM arm, next to the window, the receptive field and the distances."""
    rows = []
    for arm, res in results.items():
        life = res.get("ltm_entry_lifetime") if isinstance(res, dict) else None
        if life:
            run = res.get("run", {})
            rows.append({"arm": arm, **{k: life["quantiles"][k] for k in sorted(life["quantiles"])},
                         "evicted": life["evicted"], "censored": life["censored"], "window": run.get("window"),
                         "receptive_field": run.get("receptive_field"),
                         "distances": ", ".join(map(str, run.get("recall_distances", [])))})
    return rows


def in_memory_rows(results: dict) -> list[dict]:
    """Passkey recall (exact, log2 p) on all items and on the in-memory / not-in-memory subsets, by distance."""
    rows = []
    for arm, res in results.items():
        table = res.get("recall_in_memory") if isinstance(res, dict) else None
        for d, parts in (table or {}).get("by_distance", {}).items():
            row = {"arm": arm, "distance": int(d)}
            for part, v in parts.items():
                row.update({f"{part}_exact": v["exact"], f"{part}_logprob_bits": v["logprob_bits"], f"{part}_n": v["n"]})
            rows.append(row)
    return rows


def cosine_rows(results: dict) -> list[dict]:
    """Cosine quantiles (max over heads) and shares above the cut, question/answer pairs vs random pairs."""
    rows = []
    for arm, res in results.items():
        cos = res.get("answer_key_cosine") if isinstance(res, dict) else None
        for pairs in [p for p in ("answer", "answer_every_token", "random") if p in cos] if cos else ():
            s = cos[pairs]
            rows.append({"arm": arm, "pairs": pairs, **{f"max_{k}": v for k, v in s["max_over_heads"].items()},
                         "per_head_q50": s["per_head"]["q50"], "share_above_cut (per head)": s["share_above_cut"],
                         "share_any_head_above_cut": s["share_any_head_above_cut"], "n": s["n"], "cut": cos["cut"]})
    return rows


def induction_rows(results: dict) -> list[dict]:
    """Induction score (nats/token) per arm with its interval and the two copies' losses."""
    return [{"arm": arm, "score_nats": r["induction"]["score_nats"], "ci95_low": r["induction"]["ci95"][0],
             "ci95_high": r["induction"]["ci95"][1], "first_copy_nats": r["induction"]["first_copy_nats"],
             "second_copy_nats": r["induction"]["second_copy_nats"], "uniform_nats": r["induction"]["uniform_nats"]}
            for arm, r in results.items() if isinstance(r, dict) and "induction" in r]


def sweep_figure(rows: list[dict]):
    """Four panels over the sweep's settings: routed ratio; median entry lifetime; share of answers (some token) still
    in memory when asked and of useful hits, beyond the window and the receptive field; answer log2 p and BPC."""
    from matplotlib.figure import Figure

    labels = [r["label"] for r in rows]
    x = np.arange(len(rows))
    fig = Figure(figsize=(17, 4.2), layout="constrained")
    axes = fig.subplots(1, 4)
    axes[0].bar(x, [r["routed_token_ratio"] for r in rows])
    axes[0].set_title("routed token ratio", fontsize=10)
    life = [r["lifetime_median"] for r in rows]
    axes[1].bar(x, [v if v is not None and np.isfinite(v) else 0 for v in life])
    for i, v in enumerate(life):
        if v is None or not np.isfinite(v):   # the FIFO never filled: nothing was evicted
            axes[1].annotate("never evicted", (i, 0), ha="center", va="bottom", fontsize=7, rotation=90)
    if rows:
        axes[1].axhline(rows[0]["window"], color="#d62728", ls=":", label=f"window ({rows[0]['window']})")
        axes[1].axhline(rows[0]["receptive_field"], color="#9467bd", ls="-.",
                        label=f"receptive field ({rows[0]['receptive_field']})")
    axes[1].set_title("median entry lifetime (tokens)", fontsize=10)
    shares = (("beyond_window_answer_any_in_memory", "answer in memory, > window"),
              ("beyond_field_answer_any_in_memory", "answer in memory, > receptive field"),
              ("beyond_field_useful_hit", "useful hit, > receptive field"))
    for j, (key, name) in enumerate(shares):
        axes[2].bar(x + (j - 1) * 0.27, [r.get(key, np.nan) for r in rows], width=0.27, label=name)
    axes[2].set_ylim(0, 1.05)
    axes[2].set_title("answer (some token) held when asked; hits on it", fontsize=10)
    for key, name, style in (("in_window_logprob_bits", "in window", "o-"),
                             ("beyond_window_logprob_bits", "beyond window", "s-"),
                             ("beyond_field_logprob_bits", "beyond receptive field", "^-")):
        axes[3].plot(x, [r[key] for r in rows], style, label=name)
    axes[3].set_title("answer log2 p per token; BPC in the labels", fontsize=10)
    for ax in axes:
        ax.set_xticks(x, [f"{lab}\nBPC {r['bpc']:.4f}" if ax is axes[3] else lab for lab, r in zip(labels, rows)],
                      rotation=25, ha="right", fontsize=8)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    trained = rows[0].get("trained_rule", "?") if rows else "?"
    fig.suptitle(f"Write rule swept at evaluation time (weights trained under: {trained})", fontsize=10)
    return fig
