"""Benchmark: what more recall items beyond the receptive field cost evaluation, per item, for each trained arm.

An item is four sequences (passkey, colour control, no fact, wrong key). For each arm's first finished run of the
preset, ``score_recall_items`` is timed on the same items at one distance, the arms alternating over repetitions
so that load on a shared machine hits them alike; LTM arms also time ``answer_key_cosines`` (evaluate() runs it
for them). Prints seconds per item and the extra evaluation time of ``--items`` items instead of the preset's
count at that distance, for every seed evaluate() would score (an LTM arm counts twice: reads on and reads off).

    .venv/bin/python benchmarks/bench_recall_items.py --preset cpu --distance 768 --sample 32 --items 200
"""

from __future__ import annotations

import argparse
import statistics
import time

from revena_lib.arms import READ_ABLATIONS
from revena_lib.training.checkpoint import load_model
from revena_lib.config import get_preset
from revena_lib.data.splits import load_split
from revena_lib.training.device import configure_threads
from revena_lib.evaluation.ltm_analysis import answer_key_cosines
from revena_lib.evaluation.recall import make_recall_items, score_recall_items
from revena_lib.training.runs import find_runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--arms", default="baseline,with_ltm")
    parser.add_argument("--distance", type=int, default=768)
    parser.add_argument("--sample", type=int, default=32, help="items timed per repetition")
    parser.add_argument("--items", type=int, default=200, help="proposed items at this distance")
    parser.add_argument("--reps", type=int, default=2)
    args = parser.parse_args()
    configure_threads()
    ecfg = get_preset(args.preset).eval
    val = load_split("val")
    items = make_recall_items(val, (args.distance,), args.sample, ecfg.recall_seed)
    runs = {arm: find_runs(arm, preset=args.preset) for arm in args.arms.split(",")}
    models = {arm: load_model(dirs[0])[0] for arm, dirs in runs.items() if dirs}
    seconds = {arm: [] for arm in models}
    for rep in range(args.reps):
        for arm in (list(models) if rep % 2 == 0 else list(models)[::-1]):
            model = models[arm]
            start = time.perf_counter()
            score_recall_items(model, items, batch_size=ecfg.batch_size, tokenizer=val.tokenizer)
            if model.cfg.use_ltm:
                answer_key_cosines(model, items, batch_size=ecfg.batch_size, eot=val.tokenizer.eot_token)
            seconds[arm].append((time.perf_counter() - start) / args.sample)
    extra_items = max(0, args.items - ecfg.recall_items_per_distance)
    total = 0.0
    print(f"{len(items)} sequences of about {sum(len(i.tokens) for i in items) / len(items):.0f} tokens "
          f"(distance {args.distance}); {args.reps} interleaved repetitions")
    for arm, per_item in seconds.items():
        s = statistics.median(per_item)
        copies = len(runs[arm]) * (1 + sum(src == arm for src, _, _ in READ_ABLATIONS.values()))
        total += s * extra_items * copies
        print(f"{arm:>20}: {s:.3f} s per item (median); x {copies} evaluated models (seeds, ablations)")
    print(f"{args.items} items instead of {ecfg.recall_items_per_distance} at {args.distance}: about "
          f"{total:.0f} s more evaluation ({extra_items} extra items; reads-off timed as reads on, an upper bound)")


if __name__ == "__main__":
    main()
