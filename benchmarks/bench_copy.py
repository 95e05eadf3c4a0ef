"""Time to copy: how many minutes and tokens of training until the cpu baseline copies inside its window?

Trains the ``cpu`` baseline under each named recipe (``revena_lib/training/recipes.py``) with the workbook's own
training loop, in segments (``stop_at``, then an exact resume), and after every segment measures the positive
control (``revena_lib/evaluation/copying.py``):

- exact match and log2 p per answer token at distances 32 and 96 (inside the 128-token window) on evaluation's pass
  keys ("The pass key is 48213.", a format training never shows), with the no-fact control (guessing);
- the same on facts in the training mix's own format (" The code of Harbor is 703.");
- the induction score (nats/token: 0 = no copying, ln 4096 = 8.32 perfect) and the strongest head's induction
  attention (1.0 = a perfect induction head);
- tokens and training wall-clock so far (probes excluded).

It prints the minutes and tokens until pass-key exact >= 0.9 at both distances, or "not reached by N", and one
table with the recipes side by side. Runs live in ``--out`` (one directory per recipe and seed) and a second call
with the same arguments continues them where they stopped (probes already taken are read back). A run stops at its
first probe that copies; ``--to-end`` probes to the last step anyway, for fine-tunes from a trunk that copies from the
start, where the question is whether they keep it.

    .venv/bin/python benchmarks/bench_copy.py --recipes landed,repeats --steps 1800 --every 300
    .venv/bin/python benchmarks/bench_copy.py --recipes landed --steps 15000 --every 1000 --out bench_runs/long
    .venv/bin/python benchmarks/bench_copy.py --recipes trunk_mixed_gentle --seeds 1338 --to-end

Needs prepared cpu data (``python -m revena_lib.prepare_data --preset cpu``). One recipe at --steps 900 takes about
8-15 minutes on one core, probes included.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from revena_lib.data.splits import load_split
from revena_lib.evaluation.copying import POSITIVE_CONTROL_EXACT, copy_probe
from revena_lib.training.checkpoint import load_checkpoint, load_model
from revena_lib.training.loop import train
from revena_lib.training.recipes import RECIPES, apply_recipe, check_recipe

PROBE_LOG = "copy_probes.jsonl"


def probe_row(recipe: str, seed: int, step: int, train_seconds: float, tokens: int, probe: dict) -> dict:
    """One line of the benchmark: the positive control after ``step`` steps, flattened."""
    heads = probe["induction_attention"]
    row = {"recipe": recipe, "seed": seed, "step": step, "tokens": tokens, "train_minutes": train_seconds / 60,
           "induction_nats": probe["induction"]["score_nats"],
           "best_head_induction_attention": float(np.max(heads)) if heads is not None else float("nan")}
    for kind in ("passkey", "no_fact", "train_format"):
        for d, s in probe[kind].items():
            row[f"{kind}_exact_{d}"], row[f"{kind}_log2p_{d}"] = s["exact"], s["log2p"]
    return row


def copies(row: dict) -> bool:
    return row["passkey_exact_32"] >= POSITIVE_CONTROL_EXACT and row["passkey_exact_96"] >= POSITIVE_CONTROL_EXACT


def run_recipe(recipe: str, seed: int, steps: int, every: int, out: Path, val, items: int,
               preset_name: str = "cpu", to_end: bool = False) -> list[dict]:
    """Train (or continue) one recipe's run to ``steps``, probing every ``every`` steps, until it copies (or, with
    ``to_end``, to the last step: a fine-tune from a copying trunk copies at once, and what it asks is whether the
    copying is kept); returns the probe rows (those of an earlier call included)."""
    preset = apply_recipe(preset_name, recipe)
    tokens_per_step = preset.train.batch_size * preset.train.seq_len
    run = out / f"{recipe}-seed-{seed}"
    log = run / PROBE_LOG
    rows = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    done = {r["step"] for r in rows}
    if not to_end and any(copies(r) for r in rows):
        return rows
    for stop in range(every, steps + every, every):
        stop = min(stop, steps)
        if stop in done:
            continue
        train(preset, arm="baseline", seed=seed, steps=steps, out_dir=run, resume=True, progress=False,
              stop_at=stop if stop < steps else None)
        state = load_checkpoint(run / "checkpoint.pt")
        model, _ = load_model(run)
        row = probe_row(recipe, seed, state["step"], state["train_seconds"], state["step"] * tokens_per_step,
                        copy_probe(model, val, items_per_distance=items))
        rows.append(row)
        with open(log, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(format_row(row), flush=True)
        if copies(row) and not to_end:
            break
    return rows


def format_row(r: dict) -> str:
    return (f"{r['recipe']:>12} seed {r['seed']} step {r['step']:>6} {r['tokens'] / 1e6:6.2f} M tok "
            f"{r['train_minutes']:6.1f} min | pass key exact {r['passkey_exact_32']:.2f}/{r['passkey_exact_96']:.2f} "
            f"log2p {r['passkey_log2p_32']:+.2f}/{r['passkey_log2p_96']:+.2f} (no fact {r['no_fact_log2p_32']:+.2f}) | "
            f"train format {r['train_format_exact_32']:.2f}/{r['train_format_exact_96']:.2f} "
            f"log2p {r['train_format_log2p_32']:+.2f}/{r['train_format_log2p_96']:+.2f} | "
            f"induction {r['induction_nats']:.2f} nats, best head {r['best_head_induction_attention']:.2f}")


def summary(rows_by_run: dict) -> list[str]:
    """The side-by-side table: when each run first copied, and where it ended."""
    lines = ["| recipe | seed | reached exact >= 0.9 at 32 and 96 | pass key exact 32 / 96 (end) | log2 p 32 / 96 "
             "(no fact) | train format exact 32 / 96 | induction (nats) | best head |",
             "|---|---|---|---|---|---|---|---|"]
    for (recipe, seed), rows in rows_by_run.items():
        if not rows:
            continue
        hit = next((r for r in rows if copies(r)), None)
        end = rows[-1]
        reached = (f"{hit['train_minutes']:.1f} min, {hit['tokens'] / 1e6:.2f} M tokens (step {hit['step']})" if hit
                   else f"not reached by {end['tokens'] / 1e6:.2f} M tokens ({end['step']} steps, "
                        f"{end['train_minutes']:.1f} min)")
        lines.append(f"| {recipe} | {seed} | {reached} | {end['passkey_exact_32']:.2f} / {end['passkey_exact_96']:.2f} | "
                     f"{end['passkey_log2p_32']:+.2f} / {end['passkey_log2p_96']:+.2f} ({end['no_fact_log2p_32']:+.2f}) | "
                     f"{end['train_format_exact_32']:.2f} / {end['train_format_exact_96']:.2f} | "
                     f"{end['induction_nats']:.2f} | {end['best_head_induction_attention']:.2f} |")
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                     epilog="recipes: " + "; ".join(f"{k}: {v.description}" for k, v in RECIPES.items()))
    parser.add_argument("--recipes", default="landed", help="comma-separated recipe names (revena_lib/training/recipes.py)")
    parser.add_argument("--steps", type=int, default=900, help="training steps per run (the cosine schedule's length)")
    parser.add_argument("--preset", default="cpu", help="the preset whose baseline is trained (smoke: for tests)")
    parser.add_argument("--every", type=int, default=150, help="steps between probes")
    parser.add_argument("--seeds", default="1337", help="comma-separated training seeds")
    parser.add_argument("--items", type=int, default=16, help="pass-key (and training-format) items per distance")
    parser.add_argument("--out", type=Path, default=Path("bench_runs/copy"),
                        help="where the runs live; the same --out continues them")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("REVENA_THREADS", "0") or 0),
                        help="torch threads (0 = torch's default)")
    parser.add_argument("--json", type=Path, default=None, help="also write every probe row here")
    parser.add_argument("--to-end", action="store_true",
                        help="probe to the last step even once the run copies: for fine-tunes from a trunk, which "
                             "copy from the start, the question is whether they keep it")
    args = parser.parse_args(argv)
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    try:
        for r in recipes:
            check_recipe(r)
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError as e:
        sys.exit(f"bench_copy: {e}")
    if args.steps < 1 or args.every < 1:
        sys.exit(f"bench_copy: --steps ({args.steps}) and --every ({args.every}) must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    val = load_split("val")
    print(f"bench_copy: {args.preset} baseline, recipes {', '.join(recipes)}, seeds {seeds}, {args.steps} steps, probes every "
          f"{args.every}; torch {torch.__version__}, {torch.get_num_threads()} threads; {time.strftime('%Y-%m-%d %H:%M')}")
    rows = {(r, s): run_recipe(r, s, args.steps, args.every, args.out, val, args.items, args.preset,
                                args.to_end) for r in recipes for s in seeds}
    print("\n".join(summary(rows)))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([row for rs in rows.values() for row in rs], indent=1))


if __name__ == "__main__":
    main()
