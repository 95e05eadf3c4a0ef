"""Which trained runs an evaluation reads, and the check that their arms are comparable.

Every finished seed of each arm of one preset is evaluated (``trained/<arm>/<preset>/seed-*``). Arms must differ
only in their own row of the arm table (``revena_lib/arms.py``): runs trained with other settings, another compute
dtype, corpus or tokenizer are refused, naming both runs and the fields that differ.

    runs = find_arm_runs("baseline,with_ltm", trained_dir(), "cpu")   # {"baseline": [run_dir, ...], ...}
    check_arms_match(runs)
"""

from __future__ import annotations

from pathlib import Path

from revena_lib.arms import ARMS, BASELINE, parse_arms
from revena_lib.evaluation import EvalError


def _missing_arm_message(arm: str, trained_root: Path, preset: str) -> str:
    flag = {"baseline": "--baseline", "with_ltm": "--with-ltm"}.get(arm, f"--arm {arm}")
    return (f"no finished {preset} run in {trained_root / arm / preset}/: train it first with "
            f"`python -m revena_lib.train --preset {preset} {flag}` (or run notebooks/03_train.ipynb)")


def find_arm_runs(arms, trained_root: Path, preset: str | None) -> dict[str, list[Path]]:
    """{arm: finished run dirs} for the named arms (all must have one), or, with arms=None, for every arm of
    the table that has a finished run of the preset (baseline must)."""
    from revena_lib.training.runs import find_runs

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
