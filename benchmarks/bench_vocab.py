"""GPT-2's vocabulary against a custom BPE at the same model size, side by side: characters per token, training
tokens/s and characters/s, and the validation BPC each reaches in the same wall-clock budget.

Both vocabularies' data are prepared from the same documents and split (``--tokenizer`` is the only difference);
the two models are trained in one process with their steps interleaved, each until it has spent ``--seconds`` of
its own step time, on the preset's recipe (the cosine schedule is laid over the steps each is expected to fit,
from a short timing probe). BPC is per character, so the two are comparable.

    .venv/bin/python benchmarks/bench_vocab.py --preset cpu --bpe bpe-4096 --seconds 240
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time

import torch

from revena_lib.arms import arm_preset
from revena_lib.data.prepare import prepare_from_preset
from revena_lib.data.splits import load_split
from revena_lib.training.device import select_device
from revena_lib.models import build_model
from revena_lib.training.batches import characters_per_token, training_batch, validation_batches
from revena_lib.training.loop import lr_at_step, make_optimizer, validation_loss


def setup(preset_name: str, tokenizer: str, root: str):
    preset = arm_preset(preset_name, "baseline")
    data_dir = os.path.join(root, tokenizer)
    prepare_from_preset(preset, data_dir=data_dir, progress=False, tokenizer=tokenizer)
    train, val = load_split("train", data_dir), load_split("val", data_dir)
    preset.model.vocab_size = train.vocab_size
    torch.manual_seed(preset.train.seed)
    model = build_model(preset.model).train()
    return {"name": tokenizer, "preset": preset, "train": train, "val": val, "model": model, "seconds": 0.0,
            "steps": 0, "optimizer": make_optimizer(model, preset.train, torch.device("cpu"))}


def step(side: dict, planned_steps: int) -> None:
    cfg = side["preset"].train
    cfg.steps = planned_steps
    start = time.perf_counter()
    for group in side["optimizer"].param_groups:
        group["lr"] = lr_at_step(min(side["steps"], planned_steps - 1), cfg)
    x, y = training_batch(side["train"], cfg.seed, side["steps"], cfg)
    side["model"](x, y).loss.backward()
    torch.nn.utils.clip_grad_norm_(side["model"].parameters(), cfg.grad_clip)
    side["optimizer"].step()
    side["optimizer"].zero_grad(set_to_none=True)
    side["seconds"] += time.perf_counter() - start
    side["steps"] += 1


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu", help="model and recipe (default: cpu)")
    parser.add_argument("--bpe", default="bpe-4096", help="the custom vocabulary to compare with gpt2")
    parser.add_argument("--seconds", type=float, default=240.0, help="training wall-clock per vocabulary (default 240)")
    args = parser.parse_args(argv)
    select_device("cpu")
    with tempfile.TemporaryDirectory() as root:
        sides = [setup(args.preset, name, root) for name in ("gpt2", args.bpe)]
        for side in sides:                                   # timing probe: how many steps fit the budget
            for _ in range(3):
                step(side, 10_000)
            side["planned"] = max(10, int(args.seconds / (side["seconds"] / side["steps"])))
            torch.manual_seed(side["preset"].train.seed)
            side.update(model=build_model(side["preset"].model).train(), seconds=0.0, steps=0)
            side["optimizer"] = make_optimizer(side["model"], side["preset"].train, torch.device("cpu"))
        while any(s["seconds"] < args.seconds for s in sides):
            for side in sides:                               # interleaved: machine load hits both alike
                if side["seconds"] < args.seconds:
                    step(side, side["planned"])
        cfg = sides[0]["preset"].train
        print(f"preset {args.preset}: {cfg.batch_size} x {cfg.seq_len} tokens per step, {torch.get_num_threads()} "
              f"threads, fp32, {args.seconds:.0f} s of training each, steps interleaved")
        print(f"{'vocabulary':<10} {'V':>7} {'chars/tok':>9} {'steps':>6} {'tok/s':>8} {'chars/s':>9} {'val BPC':>8}")
        for side in sides:
            tokens = side["steps"] * cfg.batch_size * cfg.seq_len
            chars_tok = characters_per_token(side["val"])
            val_loss = validation_loss(side["model"], validation_batches(side["val"], side["preset"].train),
                                       torch.device("cpu"), None)
            side["bpc"] = val_loss / math.log(2) / chars_tok
            side["tok_s"] = tokens / side["seconds"]
            print(f"{side['name']:<10} {side['train'].vocab_size:>7,} {chars_tok:>9.2f} {side['steps']:>6} "
                  f"{side['tok_s']:>8,.0f} {side['tok_s'] * chars_tok:>9,.0f} {side['bpc']:>8.3f}")
        g, b = sides
        print(f"{b['name']} / gpt2: {b['tok_s'] / g['tok_s']:.2f}x tokens/s, "
              f"{b['tok_s'] * characters_per_token(b['val']) / (g['tok_s'] * characters_per_token(g['val'])):.2f}x "
              f"characters/s; BPC {b['bpc']:.3f} vs {g['bpc']:.3f} after the same wall-clock")


if __name__ == "__main__":
    main()
