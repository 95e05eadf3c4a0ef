"""The sleep experiment: several days in a row, every strategy, every seed; retention, forgetting, cost.

For each trained run (one per seed) and each variant (a strategy at a learning rate), a *lineage* starts from the trained model: day 1 is woken
through and slept, the slept model wakes through day 2, and so on. After every sleep a fresh session (empty
memory) is asked every day's facts closed-book, and the general BPC is measured on validation documents that no
day uses. The rows go to ``results/sleep.json``; ``summarise`` turns them into retention (recall of each day's
facts right after its own sleep), backward transfer (GEM: how that recall changed by the last sleep), forgetting
(general BPC after the last sleep minus before any) with 95% intervals over seeds and facts or documents.

    result = run_experiment("with_ltm", "cpu", strategies=("none", "text", "ltm"), lrs=(1e-4, 1e-3))
    python -m revena_lib.sleep_experiment --arm with_ltm --preset cpu --strategies none,text,ltm --lrs 1e-4,1e-3
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from revena_lib.evaluation.bpc import document_nll
from revena_lib.evaluation.session import LoadedRun, load_run
from revena_lib.evaluation.stats import compare, hierarchical_ci, point
from revena_lib.paths import artefact_root, file_sha256, results_dir
from revena_lib.sleep.consolidation import (STRATEGIES, DayConfig, SleepConfig, SleepError, Wake, closed_book_items,
                                            make_days, recall_scores, sleep, wake)
from revena_lib.training import checkpoint as ckpt


@dataclass
class SleepEval:
    general_docs: int = 8               # validation documents no day uses, for the general BPC (forgetting)
    general_tokens_per_doc: int = 1024
    doc_seed: int = 0


# Per preset: the days, one night's recipe and the measurement. Smoke runs in seconds; cpu in minutes per seed.
PRESET_DEFAULTS = {
    "smoke": (DayConfig(n_days=2, docs_per_day=1, facts_per_day=2, tokens_per_doc=320),
              SleepConfig(steps=4, batch_size=2, seq_len=128, dream_rows=2, dream_source="train"),
              SleepEval(general_docs=2, general_tokens_per_doc=256)),
    "cpu": (DayConfig(n_days=3, docs_per_day=2, facts_per_day=8, tokens_per_doc=1024),
            SleepConfig(steps=60, batch_size=4, seq_len=256, dream_rows=8),
            SleepEval(general_docs=8, general_tokens_per_doc=1024)),
    "paper": (DayConfig(n_days=5, docs_per_day=4, facts_per_day=10, tokens_per_doc=2048),
              SleepConfig(steps=200, batch_size=8, seq_len=512, dream_rows=32, lr=3e-4),
              SleepEval(general_docs=32, general_tokens_per_doc=2048)),
}


# Learning rates of a night whose points make the frontier, per preset (the notebook's and CLI's default).
PRESET_LRS = {"smoke": (1e-3,), "cpu": (1e-4, 1e-3), "paper": (1e-4, 3e-4)}


def preset_lrs(preset: str) -> list[float]:
    return list(PRESET_LRS.get(preset, (defaults(preset)[1].lr,)))


def defaults(preset: str) -> tuple[DayConfig, SleepConfig, SleepEval]:
    if preset not in PRESET_DEFAULTS:
        raise SleepError(f"no sleep defaults for preset {preset!r}: choose one of {', '.join(PRESET_DEFAULTS)}")
    return tuple(dataclasses.replace(c) for c in PRESET_DEFAULTS[preset])


def configured(preset: str, days: int = 0, facts_per_day: int = 0, steps: int = -1, lr: float = 0.0,
               dream_source: str = "") -> tuple[DayConfig, SleepConfig, SleepEval]:
    """The preset's configs with the notebook's / command line's flat overrides (0, -1 or "": keep the preset's)."""
    day_cfg, sleep_cfg, eval_cfg = defaults(preset)
    if days:
        day_cfg.n_days = int(days)
    if facts_per_day:
        day_cfg.facts_per_day = int(facts_per_day)
    if steps >= 0:
        sleep_cfg.steps = int(steps)
    if lr:
        sleep_cfg.lr = float(lr)
    if dream_source:
        sleep_cfg.dream_source = dream_source
    sleep_cfg.check()
    return day_cfg, sleep_cfg, eval_cfg


# -----------------------------------------------------------------------------
# Measurement

def _bpc_docs(token_lists, tokenizer) -> list[dict]:
    return [{"tokens": np.asarray(t, dtype=np.int64),
             "characters": len(tokenizer.decode_bytes([x for x in t[1:]]).decode("utf-8", "replace"))}
            for t in token_lists]


def general_documents(split, days, ecfg: SleepEval) -> list[dict]:
    """Validation documents no day uses, a seeded sample, each cut to its first ``general_tokens_per_doc`` tokens."""
    used = {i for day in days for i in day.source_documents}
    free = [i for i in range(split.num_docs) if i not in used and len(split.document(i)) > 1]
    if not free:
        raise SleepError("every validation document is used by a day: lower n_days or docs_per_day")
    rng = np.random.default_rng(ecfg.doc_seed)
    picked = sorted(rng.choice(free, size=min(ecfg.general_docs, len(free)), replace=False).tolist())
    tokens = [np.asarray(split.document(i)[:ecfg.general_tokens_per_doc]).tolist() for i in picked]
    return _bpc_docs(tokens, split.tokenizer)


def document_bits(model, docs: list[dict]) -> list[float]:
    """NLL bits per document, memory empty at each start."""
    return document_nll(model, docs, next(model.parameters()).device)["nll_bits"].tolist()


def _wake_bits(w: Wake) -> list[float]:
    return [float(sum(s[1:])) for s in w.surprisal_bits]


# -----------------------------------------------------------------------------
# One lineage: a run through every day with one strategy

def _tag(cfg: SleepConfig, days) -> str:
    """Directory name of a lineage: the strategy and a hash of its recipe and of the days' tokens."""
    blob = json.dumps([dataclasses.asdict(cfg), [d.documents for d in days], [dataclasses.asdict(f) for d in days
                                                                                for f in d.facts]])
    return f"{cfg.strategy.replace('+', '-')}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def _reuse(out: Path, source: LoadedRun, cfg: SleepConfig, day: int, force: bool):
    """A finished night from an earlier call (same source model, recipe and day), or None to sleep it now."""
    if not (out / ckpt.CONFIG_FILE).exists():
        if out.exists():
            shutil.rmtree(out)   # a night interrupted before its config.json: start it again
        return None
    if force:
        shutil.rmtree(out)
        return None
    record = json.loads((out / "sleep.json").read_text())
    slept = load_run(out, device=next(source.model.parameters()).device)
    lineage = slept.config.get("sleep_lineage", [])
    source_sha = file_sha256(Path(source.path) / ckpt.CHECKPOINT_FILE)
    if record.get("config") != dataclasses.asdict(cfg) or record.get("day") != day or not lineage \
            or lineage[-1]["source_checkpoint_sha256"] != source_sha:
        raise SleepError(f"{out} holds another night (other recipe, day or source model): pass force=True "
                         "(--force) to redo it, or choose another out_root")
    return slept, record


def pick_arm(arm: str, arms: str, strategies: str) -> tuple[str, list[str], str]:
    """The arm and strategies a notebook run can use: ``arm`` if it is among ``arms`` (run_all's comma-separated
    list; empty: any), else the first of them with an LTM, else the first; the ltm strategies need an LTM.
    Returns (arm, strategies, a note saying what changed, or "")."""
    from revena_lib.arms import ARMS, parse_arms

    wanted = [s.strip() for s in strategies.split(",") if s.strip()]
    listed = list(parse_arms(arms)) if arms else []
    chosen = arm
    if listed and arm not in listed:
        with_ltm = [a for a in listed if ARMS[a].overrides.get("use_ltm")]
        chosen = (with_ltm or listed)[0]
    note = f"{arm} is not among the arms run ({arms}): sleeping {chosen}. " if chosen != arm else ""
    if chosen not in ARMS:
        raise SleepError(f"unknown arm {chosen!r}: choose one of {', '.join(ARMS)}")
    if not ARMS[chosen].overrides.get("use_ltm"):
        dropped = [s for s in wanted if s.startswith("ltm")]
        wanted = [s for s in wanted if not s.startswith("ltm")]
        if dropped:
            note += f"{chosen} has no LTM, so {', '.join(dropped)} (replaying what the LTM stored) cannot run."
    return chosen, wanted, note.strip()


def run_lineage(source: LoadedRun, days, cfg: SleepConfig, general: list[dict], out_root: Path,
                force: bool = False, log=print) -> dict:
    """Wake and sleep through ``days`` from ``source``; after each sleep ask every fact closed-book.
    Returns lists indexed by k = 0 (before any sleep) .. len(days)."""
    enc = source.tokenizer
    facts = [f for d in days for f in d.facts]
    items = closed_book_items(facts, enc)
    day_docs = [_bpc_docs(d.documents, enc) for d in days]
    rec = {"closed_book": [recall_scores(source.model, items, enc)], "general_bits": [document_bits(source.model, general)],
           "awake": [], "day_bits_before": [], "day_bits_after": [], "nights": []}
    model = source
    for k, day in enumerate(days, 1):
        w = wake(model, day)
        rec["awake"].append(w.awake)
        rec["day_bits_before"].append(_wake_bits(w))
        out = out_root / f"day-{k}"
        reused = _reuse(out, model, cfg, k, force)
        model, night = reused if reused else sleep(model, w, cfg, out, seed=k)
        log(f"    day {k}: {cfg.strategy:<12} {night['steps']} steps in {night['seconds']:.1f}s"
            f"{' (reused)' if reused else ''}, loss {night['loss_first']} -> {night['loss_last']}")
        rec["nights"].append(night)
        rec["closed_book"].append(recall_scores(model.model, items, enc))
        rec["general_bits"].append(document_bits(model.model, general))
        rec["day_bits_after"].append(document_bits(model.model, day_docs[k - 1]))
    return rec


def variants(strategies, lrs) -> list[dict]:
    """(strategy, lr) pairs, each a point on the frontier; 'none' once (it takes no step). Named by the strategy
    alone when there is one learning rate."""
    out = []
    for strategy in strategies:
        for lr in (lrs[:1] if strategy == "none" else lrs):
            name = strategy if len(lrs) == 1 or strategy == "none" else f"{strategy} lr={lr:g}"
            out.append({"name": name, "strategy": strategy, "lr": float(lr)})
    return out


def run_experiment(arm: str = "with_ltm", preset: str = "smoke", strategies=STRATEGIES, seeds=None,
                   day_cfg: DayConfig | None = None, sleep_cfg: SleepConfig | None = None,
                   eval_cfg: SleepEval | None = None, days=None, out_root=None, results_path=None,
                   force: bool = False, device="cpu", progress: bool = True, lrs=None) -> dict:
    """Every strategy (at every learning rate of ``lrs``; default the night's ``lr``) over every finished run of
    ``arm`` at ``preset`` (or the given ``seeds``); writes and returns the result (``results/sleep.json`` unless
    ``results_path``). ``days`` (a list of ``Day``) replaces the made ones."""
    from revena_lib.data.splits import load_split
    from revena_lib.training.runs import find_runs, run_dir

    d_cfg, s_cfg, e_cfg = defaults(preset)
    day_cfg, sleep_cfg, eval_cfg = day_cfg or d_cfg, sleep_cfg or s_cfg, eval_cfg or e_cfg
    runs = [run_dir(arm, s, preset=preset) for s in seeds] if seeds else find_runs(arm, preset=preset)
    missing = [r for r in runs if not (r / ckpt.CHECKPOINT_FILE).exists()]
    if not runs or missing:
        raise SleepError(f"no finished {preset} run of {arm} at {missing or 'trained/'}: train it first "
                         f"(python -m revena_lib.train --preset {preset} --arm {arm})")
    bad = [s for s in strategies if s not in STRATEGIES]
    if bad:
        raise SleepError(f"unknown strategies {bad}: choose from {', '.join(STRATEGIES)}")
    lrs = [float(x) for x in (lrs or [sleep_cfg.lr])]
    if min(lrs) < 0:
        raise SleepError(f"learning rates must be >= 0 (got {lrs})")
    loaded = [load_run(r, device=device) for r in runs]
    val = load_split("val")
    days = days or make_days(val, day_cfg, window=loaded[0].model.cfg.window, tokenizer=loaded[0].tokenizer)
    general = general_documents(val, days, eval_cfg)
    log = print if progress else (lambda *_: None)
    lineages = []
    for run in loaded:
        for v in variants(strategies, lrs):
            cfg = dataclasses.replace(sleep_cfg, strategy=v["strategy"], lr=v["lr"])
            cfg.check()
            root = Path(out_root or artefact_root() / "slept") / arm / preset / Path(run.path).name / _tag(cfg, days)
            log(f"  {Path(run.path).name} {v['name']}: {root}")
            rec = run_lineage(run, days, cfg, general, root, force=force, log=log)
            lineages.append({"seed": run.config.get("seed"), "variant": v["name"], "strategy": v["strategy"],
                             "lr": v["lr"], "dir": str(root), **rec})
    result = {"arm": arm, "preset": preset, "strategies": list(strategies), "lrs": lrs,
              "variants": variants(strategies, lrs),
              "seeds": [r.config.get("seed") for r in loaded], "runs": [str(r.path) for r in loaded],
              "device": str(device), "dtype": loaded[0].config.get("dtype"),
              "data": loaded[0].config.get("data_meta", {}).get("corpus"),
              "tokenizer": (loaded[0].config.get("tokenizer") or {}).get("name"),
              "day_config": dataclasses.asdict(day_cfg), "sleep_config": dataclasses.asdict(sleep_cfg),
              "eval_config": dataclasses.asdict(eval_cfg),
              "days": [d.to_dict(loaded[0].tokenizer) for d in days],
              "general_characters": [d["characters"] for d in general],
              "day_characters": [[d["characters"] for d in _bpc_docs(day.documents, loaded[0].tokenizer)]
                                 for day in days],
              "lineages": lineages}
    result["summary"] = summarise(result)
    path = Path(results_path) if results_path else results_dir() / "sleep.json"
    ckpt.write_json(path, result)
    return result


# -----------------------------------------------------------------------------
# Summary: retention, backward transfer, forgetting, with intervals over seeds

def _lineages(result: dict, variant: str) -> list[dict]:
    return [lin for lin in result["lineages"] if lin["variant"] == variant]


def _matrix(result: dict, variant: str, key: str, metric: str) -> np.ndarray:
    """(seeds, k = 0..n_days, facts) of a closed-book metric for one variant."""
    rows = _lineages(result, variant)
    return np.array([[[r[metric] for r in after] for after in lin[key]] for lin in rows], dtype=float)


def _fact_days(result: dict) -> np.ndarray:
    return np.array([f["day"] for d in result["days"] for f in d["facts"]])


def _ci(values, den=None) -> dict:
    return {"mean": point(values, den), "ci95": hierarchical_ci(values, den)}


def _variant_summary(result: dict, v: dict) -> dict:
    fact_day = _fact_days(result)
    n_days = len(result["days"])
    general_chars = np.array(result["general_characters"], float)
    variant, out = v["name"], {"variant": v["name"], "strategy": v["strategy"], "lr": v["lr"]}
    for metric in ("exact", "log2p"):
        m = _matrix(result, variant, "closed_book", metric)                         # (S, K+1, F)
        own = m[:, fact_day, np.arange(len(fact_day))]                              # after each fact's own sleep
        out[f"before_sleep_{metric}"] = _ci(m[:, 0])
        out[f"retention_{metric}"] = _ci(own)
        out[f"final_{metric}"] = _ci(m[:, -1])
        earlier = fact_day < n_days
        out[f"bwt_{metric}"] = _ci((m[:, -1] - own)[:, earlier]) if earlier.any() else _ci(np.full((1, 1), np.nan))
        out[f"day1_curve_{metric}"] = [_ci(m[:, k, fact_day == 1]) for k in range(n_days + 1)]
        # the same questions for facts the model has not slept on yet, after the same sleeps: what sleeping on
        # *other* facts of the same phrasing buys (format, digits), which retention must exceed to be about the fact
        unseen = [m[:, k, fact_day > k] for k in range(1, n_days)]
        out[f"unseen_{metric}"] = _ci(np.concatenate(unseen, 1)) if unseen else _ci(np.full((1, 1), np.nan))
    bits = np.array([lin["general_bits"] for lin in _lineages(result, variant)])     # (S, K+1, D)
    out["general_bpc"] = [_ci(bits[:, k], general_chars) for k in range(n_days + 1)]
    out["forgetting_bpc"] = compare(bits[:, 0], bits[:, -1], general_chars, lower_is_better=True)
    day_before, day_after = ([np.array([lin[key][k] for lin in _lineages(result, variant)])
                              for k in range(n_days)] for key in ("day_bits_before", "day_bits_after"))
    out["day_bpc_before"] = [_ci(b, np.array(c, float)) for b, c in zip(day_before, result["day_characters"])]
    out["day_bpc_after"] = [_ci(a, np.array(c, float)) for a, c in zip(day_after, result["day_characters"])]
    nights = [n for lin in _lineages(result, variant) for n in lin["nights"]]
    out["steps_per_night"] = float(np.mean([n["steps"] for n in nights]))
    out["seconds_per_night"] = float(np.mean([n["seconds"] for n in nights]))
    out["target_tokens_per_night"] = float(np.mean([n["target_tokens"] for n in nights]))
    return out


def _own_sleep(result: dict, variant: str, metric: str) -> np.ndarray:
    fact_day = _fact_days(result)
    return _matrix(result, variant, "closed_book", metric)[:, fact_day, np.arange(len(fact_day))]   # (S, F)


def summarise(result: dict) -> list[dict]:
    """Per variant; with a 'none' lineage, each variant's retention minus no sleep's (paired: same seeds, facts)."""
    rows = [_variant_summary(result, v) for v in result["variants"]]
    if "none" in result["strategies"]:
        for row in rows:
            for metric in ("exact", "log2p"):
                row[f"retention_vs_none_{metric}"] = compare(_own_sleep(result, "none", metric),
                                                             _own_sleep(result, row["variant"], metric),
                                                             lower_is_better=False)
    return rows


def fact_table(result: dict, variant: str, metric: str = "exact"):
    """Per fact: recalled awake (in the window, past it), closed-book before sleep and after each sleep; the mean
    over seeds of ``metric`` (exact: share of seeds that recalled it; log2p: bits per answer token). ``variant``:
    a variant's name, or a strategy (its first variant)."""
    import pandas as pd

    names = [v["name"] for v in result["variants"] if variant in (v["name"], v["strategy"])]
    if not names:
        raise SleepError(f"no variant {variant!r} in this result: one of {[v['name'] for v in result['variants']]}")
    rows = _lineages(result, names[0])
    facts = [f for d in result["days"] for f in d["facts"]]
    closed = _matrix(result, names[0], "closed_book", metric).mean(0)                 # (K+1, F)
    table = []
    for i, f in enumerate(facts):
        k_day, j = f["day"] - 1, [g["cue"] for g in result["days"][f["day"] - 1]["facts"]].index(f["cue"])
        awake = [lin["awake"][k_day][j] for lin in rows]
        row = {"day": f["day"], "fact": f"{f['cue']}{f['answer']}",
               "awake, in window": np.mean([a["in_window"][metric] for a in awake]),
               "awake, past window": np.mean([a["past_window"][metric] for a in awake]),
               "before sleep": closed[0, i]}
        row.update({f"after sleep {k}": closed[k, i] for k in range(1, closed.shape[0])})
        table.append(row)
    return pd.DataFrame(table)


def summary_table(result: dict):
    """One row per variant: closed-book recall before sleep (the control), retention after each day's own sleep,
    backward transfer by the last sleep, forgetting, cost."""
    import pandas as pd

    def fmt(stat: dict, digits: int = 3) -> str:
        lo, hi = stat["ci95"]
        return f"{stat['mean']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"

    rows = []
    for r in result["summary"]:
        f = r["forgetting_bpc"]
        rows.append({"variant": r["variant"], "before sleep, exact": fmt(r["before_sleep_exact"]),
                     "retention, exact": fmt(r["retention_exact"]), "retention, log2p": fmt(r["retention_log2p"], 2),
                     "not yet slept on, log2p": fmt(r["unseen_log2p"], 2),
                     "BWT, log2p": fmt(r["bwt_log2p"], 2),
                     "forgetting, BPC": f"{f['diff']:+.4f} [{f['ci95'][0]:+.4f}, {f['ci95'][1]:+.4f}]",
                     "general BPC": FORGETTING_WORDS[f["verdict"]],
                     "day's BPC, awake -> after its sleep": " ".join(
                         f"{b['mean']:.2f}->{c['mean']:.2f}" for b, c in zip(r["day_bpc_before"], r["day_bpc_after"])),
                     "steps/night": int(r["steps_per_night"]), "s/night": round(r["seconds_per_night"], 1)})
    return pd.DataFrame(rows)


FORGETTING_WORDS = {"worse": "rose (forgot)", "better": "fell", "no detectable difference": "no detectable change"}


def verdict_lines(result: dict) -> list[str]:
    """The result in words, from the intervals."""
    words = {"better": "above", "worse": "below", "no detectable difference": "not distinguishable from"}
    lines = []
    for r in result["summary"]:
        ret, f = r["retention_log2p"], r["forgetting_bpc"]
        line = (f"**{r['variant']}**: {r['retention_exact']['mean']:.0%} of facts recalled exactly after their own "
                f"sleep, log2 p {ret['mean']:.2f} bits per answer token")
        vs = r.get("retention_vs_none_log2p")
        if vs and r["strategy"] != "none":
            line += f" ({vs['diff']:+.2f} [{vs['ci95'][0]:+.2f}, {vs['ci95'][1]:+.2f}]: {words[vs['verdict']]} no sleep)"
        lines.append(line + f"; general BPC {FORGETTING_WORDS[f['verdict']]} ({f['diff']:+.4f} "
                     f"[{f['ci95'][0]:+.4f}, {f['ci95'][1]:+.4f}]).")
    return lines


def load_result(path=None) -> dict:
    path = Path(path) if path else results_dir() / "sleep.json"
    if not path.exists():
        raise SleepError(f"{path} does not exist: run the experiment (notebook 09, or "
                         "python -m revena_lib.sleep_experiment --preset smoke)")
    return json.loads(path.read_text())


# -----------------------------------------------------------------------------
# Command line

def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m revena_lib.sleep_experiment",
        description="Wake/sleep cycles over held-out days with planted facts: retention (closed-book recall after "
                    "sleep), forgetting (general BPC change) and cost, per sleep strategy; writes results/sleep.json "
                    "and one new run directory per night under slept/ (trained runs are only read).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--arm", default="with_ltm", help="whose trained runs sleep (strategy ltm needs an LTM)")
    parser.add_argument("--preset", default="smoke", choices=tuple(PRESET_DEFAULTS))
    parser.add_argument("--strategies", default=",".join(STRATEGIES), help=f"comma-separated, from {STRATEGIES}")
    parser.add_argument("--seeds", default="", help="comma-separated training seeds (default: every finished run)")
    parser.add_argument("--days", type=int, default=0, help="days in a row (0: the preset's)")
    parser.add_argument("--facts-per-day", type=int, default=0, help="0: the preset's")
    parser.add_argument("--steps", type=int, default=-1, help="optimizer steps per night (-1: the preset's)")
    parser.add_argument("--lrs", default="", help="comma-separated learning rates of a night, each a point on the "
                                                   f"frontier (empty: the preset's: {PRESET_LRS})")
    parser.add_argument("--dream-source", default="", choices=("", "generated", "train"),
                        help="dreams: the model's own samples or training text (empty: the preset's)")
    parser.add_argument("--force", action="store_true", help="redo nights already in slept/")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()] or None
    try:
        day_cfg, sleep_cfg, eval_cfg = configured(args.preset, args.days, args.facts_per_day, args.steps,
                                                  dream_source=args.dream_source)
        lrs = [float(x) for x in args.lrs.split(",") if x.strip()] or preset_lrs(args.preset)
        result = run_experiment(args.arm, args.preset, [s.strip() for s in args.strategies.split(",") if s.strip()],
                                seeds, day_cfg, sleep_cfg, eval_cfg, force=args.force, progress=not args.no_progress,
                                lrs=lrs)
    except SleepError as e:
        sys.exit(f"error: {e}")
    print(summary_table(result).to_string(index=False))
    print("\n".join(line.replace("**", "") for line in verdict_lines(result)))

if __name__ == "__main__":
    main()
