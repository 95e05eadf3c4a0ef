"""Build a preset's pretrained trunks, one per seed, each with its record (``python -m revena_lib.pretrain``).

A trunk (``training/trunk.py``) is the baseline arm trained once per seed under the preset's ``PretrainConfig``, that
every transformer arm then fine-tunes from (``TrainConfig.init_from = "trunk"``). Its record says how to rebuild it,
what it was trained on, and whether it copies: the positive control of ``evaluation/copying.py`` (pass keys 32 and 96
tokens back, the induction score), which is why this command sits in the evaluation stage: training imports no
evaluation (``tests/test_layout.py``). Saving, loading, verifying and starting runs from a trunk stay in training.

The trunk trains through an ordinary resumable run (``trained/trunk/<preset>/seed-<seed>/``): an interrupted pretrain
continues with ``--resume`` exactly like any run; a finished trunk is left as it is.

    python -m revena_lib.pretrain --preset cpu         # = make pretrain PRESET=cpu: every seed of the preset
    pretrain("smoke", 1337)                             # Path('.../trunks/smoke/seed-1337')
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from revena_lib.arms import BASELINE
from revena_lib.config import PRESETS, Preset, get_preset, preset_copy
from revena_lib.evaluation.copying import copy_probe, positive_control
from revena_lib.training import TrainError
from revena_lib.training import checkpoint as ckpt
from revena_lib.training.loop import train
from revena_lib.training.runs import read_metrics
from revena_lib.training.trunk import (RECORD_FILE, TRUNK_FILE, TrunkError, display_path, load_trunk,
                                       rebuild_command, save_trunk, trunk_dir, trunk_preset, trunk_run_dir)


def pretrain(preset: str | Preset, seed: int, steps: int | None = None, resume: bool = False, force: bool = False,
             progress: bool = True, device=None, probe_items: int = 16) -> Path:
    """Train (or continue, with ``resume``) the trunk of ``preset`` and ``seed``, measure its positive control and
    write ``trunk.pt`` + ``trunk.json`` into ``trunks/<preset>/seed-<seed>/``; returns that directory.

    steps: optimizer steps (default: the preset's ``pretrain.steps``, else its ``train.steps``). A finished trunk of
    that many steps is left as it is (nothing retrains); a broken one is rebuilt (from its finished run when there is
    one); one of another length is refused unless ``resume`` (its run continues to ``steps``, the schedule change
    recorded) or ``force`` (its run is deleted and trained again from scratch). ``probe_items``: pass keys per
    distance (and induction sequences) of the positive control; fewer is faster and coarser (the tests use 2).
    Errors: TrunkError / TrainError (an existing run without ``resume``), DataError (no prepared data);
    Ctrl-C saves the run's checkpoint and raises TrainingInterrupted (continue with ``resume``)."""
    preset = preset_copy(preset)
    trunk_train = trunk_preset(preset, steps)
    wanted, recipe = trunk_train.train.steps, trunk_train.train.recipe
    directory, run = trunk_dir(preset.name, seed), trunk_run_dir(preset.name, seed)
    if not force and _trunk_is_done(directory, wanted, resume, recipe):
        return directory
    # A finished run of the wanted length is reused as it is (nothing retrains): only the trunk is written again.
    reuse = False
    if not force and (config := _run_config(run)) is not None:
        _check_recipe("run", run, config["train"].get("recipe", "") if "train" in config else None, recipe)
        reuse = _run_finished(config, run, wanted)
    run = train(trunk_train, arm=BASELINE, seed=seed, out_dir=run, resume=resume or reuse, force=force,
                progress=progress, device=device)
    return write_trunk(preset, seed, run, device, probe_items)


def _check_recipe(what: str, path: Path, found: str | None, wanted: str) -> None:
    """TrunkError if the trunk or run at ``path`` was trained under another recipe than the preset's pretrain recipe
    (a resumed run keeps its own recipe, so only --force makes one under the new recipe)."""
    if found is not None and found != wanted:
        raise TrunkError(f"{path} holds a {what} trained under recipe {found!r}, not the preset's {wanted!r} "
                         f"(PretrainConfig.recipe): pass --force to train one under {wanted!r} from scratch")


def _run_config(run: Path) -> dict | None:
    """The config.json of the run in ``run`` (None: no run there yet, or an unreadable one: train it)."""
    try:
        return ckpt.read_config(run)
    except ckpt.CheckpointError:
        return None


def _trunk_is_done(directory: Path, wanted: int, resume: bool, recipe: str) -> bool:
    """True if ``directory`` holds an intact trunk of ``wanted`` steps (nothing to do). A broken one is rebuilt; one of
    another length only with ``resume``; one of another recipe is refused (TrunkError naming --force)."""
    if not ((directory / RECORD_FILE).exists() or (directory / TRUNK_FILE).exists()):
        return False
    try:
        _, record = load_trunk(directory)
    except TrunkError as e:
        print(f"revena: {e}: rebuilding it", file=sys.stderr)
        return False
    _check_recipe("trunk", directory, record.get("recipe"), recipe)
    if record.get("steps") == wanted:
        print(f"revena: {directory} already holds the trunk ({wanted} steps, sha256 {record['sha256'][:12]}...); "
              "nothing to do (--force rebuilds it)", file=sys.stderr)
        return True
    if not resume:
        raise TrunkError(f"{directory} holds a trunk of {record.get('steps')} steps, not {wanted}: pass --resume to "
                         f"continue its run to {wanted} steps (the schedule change is recorded), or --force to train "
                         "a new one from scratch")
    return False


def _run_finished(config: dict, run: Path, wanted: int) -> bool:
    return bool(config.get("finished")) and config.get("steps_done") == wanted and (run / ckpt.CHECKPOINT_FILE).exists()


def write_trunk(preset: Preset, seed: int, run: Path, device=None, probe_items: int = 16) -> Path:
    """The finished ``run``'s weights as the trunk of ``preset`` and ``seed``, with its record (positive control
    measured here, on ``device``, with ``probe_items`` pass keys per distance and induction sequences)."""
    from revena_lib.data.splits import load_meta, load_split
    from revena_lib.training.device import select_device

    model, config = ckpt.load_model(run, device=select_device(device))
    started = time.perf_counter()
    probe = copy_probe(model, load_split("val"), items_per_distance=probe_items, seed=preset.eval.recall_seed,
                       induction_seqs=probe_items)
    control = positive_control_summary(probe, seed, preset.eval.positive_control_exact)
    control["seconds"] = round(time.perf_counter() - started, 1)
    record = trunk_record(preset, seed, run, config, load_meta(), control)
    directory = trunk_dir(preset.name, seed)
    record = save_trunk(directory, model.state_dict(), record)
    pk = control["passkey"]
    print(f"revena: trunk {display_path(directory)}: {record['steps']} steps, {record['tokens_seen']:,} tokens, "
          f"val BPC {record['val_bpc']:.4f}, pass key exact " + " / ".join(f"{pk[d]['exact']:.2f}" for d in pk)
          + f" at {' / '.join(pk)}, induction {control['induction_score_nats']:.3f} nats; positive control "
          + ("passed" if control["passed"] else "not reached"), file=sys.stderr)
    return directory


def positive_control_summary(probe: dict, seed: int, threshold: float) -> dict:
    """The record's positive control from ``copy_probe``: pass-key (and no-fact, training-format) exact match and
    log2 p per answer token at each in-window distance, the induction score (nats/token) and the best head's
    induction attention, and whether it reaches the bar (exact >= threshold at every distance)."""
    passkey = probe["passkey"]
    control = positive_control({seed: {d: v["exact"] for d, v in passkey.items()}}, threshold)
    heads = probe.get("induction_attention")
    return {"passkey": passkey, "no_fact": probe["no_fact"], "train_format": probe["train_format"],
            "induction_score_nats": probe["induction"]["score_nats"], "induction": probe["induction"],
            "best_head_induction_attention": max(max(row) for row in heads) if heads else None,
            "threshold": threshold, "passed": control["passed"],
            "note": "evaluation/copying.py copy_probe: in-window pass keys (exact = every answer token the argmax; "
                    "log2p = mean log2 p per answer token), no_fact = the same question with nothing planted; "
                    "induction: first-copy minus second-copy loss on repeated random spans, nats/token"}


def _final_val_bpc(run: Path) -> float | None:
    """The last validation BPC of the run's metrics.jsonl."""
    metrics = read_metrics(run)
    values = metrics["val_bpc"].dropna() if "val_bpc" in metrics else ()
    return float(values.iloc[-1]) if len(values) else None


def trunk_record(preset: Preset, seed: int, run: Path, config: dict, meta: dict, control: dict) -> dict:
    """trunk.json's content (save_trunk adds the file's sha256): the command that rebuilds the trunk, how, on what and
    for how long it was trained, the model it is, and its positive control."""
    train_cfg, steps = config["train"], int(config["steps_done"])
    data_meta, splits = config.get("data_meta") or {}, meta.get("splits") or {}
    return {
        "command": rebuild_command(preset.name, seed, steps), "make": f"make pretrain PRESET={preset.name}",
        "preset": preset.name, "seed": int(seed), "arm": BASELINE, "recipe": preset.pretrain.recipe,
        "steps": steps, "schedule_changes": config.get("schedule_changes") or [],
        "tokens_seen": steps * int(train_cfg["batch_size"]) * int(train_cfg["seq_len"]),
        "train_minutes": round(float(config.get("train_seconds") or 0.0) / 60.0, 2),
        "torch_version": config.get("torch_version"), "device": config.get("device"), "dtype": config.get("dtype"),
        "model": config["model"], "train": train_cfg,
        "data": {"corpus": data_meta.get("corpus"), "source": data_meta.get("source"),
                 "tokenizer": config.get("tokenizer"),
                 **{f"{split}_sha256": (splits.get(split) or {}).get("sha256") for split in ("train", "val")}},
        "val_bpc": _final_val_bpc(run), "unigram_bpc": config.get("unigram_bpc"),
        "positive_control": control, "run_dir": display_path(run),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


# -----------------------------------------------------------------------------
# Command line

def _lengths() -> str:
    """One phrase per preset: its trunk's recipe, steps and tokens."""
    phrases = []
    for name in PRESETS:
        p, recipe = trunk_preset(name), get_preset(name).pretrain.recipe
        phrases.append(f"{name}: {p.train.steps:,} steps x {p.train.batch_size} x {p.train.seq_len} tokens "
                       f"({p.train.steps * p.train.batch_size * p.train.seq_len / 1e6:.2g} M tokens, "
                       + (f"recipe {recipe})" if recipe else "the preset's own training config)"))
    return "; ".join(phrases)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m revena_lib.pretrain",
        description="Build the pretrained trunks of a preset: the baseline arm trained once per seed, as long as "
                    "copying needs (the preset's PretrainConfig: a recipe of revena_lib/training/recipes.py and a "
                    "number of steps), that every transformer arm then fine-tunes from instead of random weights, as "
                    "Memorizing Transformers added its memory to a pretrained model. Needs the prepared data "
                    "(python -m revena_lib.prepare_data --preset P).",
        epilog="Each trunk goes to trunks/<preset>/seed-<seed>/ under REVENA_HOME (default: the repo, where trunks are "
               "committed, about 5 MB per seed at cpu): trunk.pt (the model's weights, fp32) and trunk.json (its "
               "record: the command that rebuilds it, recipe, steps, tokens, minutes, torch, device, dtype, model "
               "config, the data's corpus, tokenizer and sha256s, final validation BPC, the positive control (pass "
               "keys at 32 and 96 tokens, induction score) and trunk.pt's sha256). It trains through an ordinary run "
               "in trained/trunk/<preset>/seed-<seed>/: Ctrl-C saves a checkpoint and --resume continues it exactly. "
               f"How long: {_lengths()}; about as long as training one arm for that many steps. Running the same "
               "command again rebuilds a missing or corrupt trunk and leaves a finished one as it is. When a "
               "preset's init_from is 'trunk', make run (and python -m revena_lib.train) starts every transformer "
               "arm from its seed's trunk and stops at once, naming this command, if it is missing; today every "
               "preset's init_from is '' (random initialisation).")
    parser.add_argument("--preset", default="cpu", help=f"{', '.join(PRESETS)} (default: cpu)")
    parser.add_argument("--seeds", default="", help="comma-separated seeds (default: the preset's, 1337,1338,1339 at cpu)")
    parser.add_argument("--steps", type=int, default=None,
                        help="optimizer steps (default: the preset's pretrain.steps, else its train.steps)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted pretrain exactly from its checkpoint (a finished trunk is left "
                             "as it is; with --steps, a finished one continues to that many steps)")
    parser.add_argument("--force", action="store_true", help="delete the trunk's run and train it again from scratch")
    parser.add_argument("--device", default=None, choices=["cpu", "cuda"],
                        help="where to train (default: cuda if available, else cpu)")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    return parser


def main(argv=None) -> None:
    from revena_lib.data import DataError
    from revena_lib.evaluation import EvalError
    from revena_lib.training.checkpoint import CheckpointError
    from revena_lib.training.device import DeviceError
    from revena_lib.training.launch import parse_seeds
    from revena_lib.training.loop import TrainingInterrupted

    args = build_parser().parse_args(argv)
    try:
        preset = get_preset(args.preset)
        for seed in parse_seeds(args.seeds, preset):
            out = pretrain(preset, seed, steps=args.steps, resume=args.resume, force=args.force,
                           progress=not args.no_progress, device=args.device)
            print(f"revena: trunk in {out}", file=sys.stderr)
    except TrainingInterrupted as e:
        print(f"error: {e} (the same pretrain command with --resume)", file=sys.stderr)
        sys.exit(130)
    except (ValueError, TrainError, DataError, CheckpointError, DeviceError, EvalError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
