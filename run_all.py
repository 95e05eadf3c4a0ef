#!/usr/bin/env python
"""Run the whole Revena pipeline headlessly: the numbered notebooks, in order, with papermill.

Each notebook gets the preset as its ``preset`` parameter and runs with the repository root as its
working directory; executed copies go to ``executed/<preset>/`` (git-ignored), never over the
sources. Artefacts land in ``data/``, ``trained/`` and ``results/`` (or under ``$REVENA_HOME``).

    python run_all.py                  # the cpu preset: about 30 minutes on a 2-core CPU
    python run_all.py --preset smoke   # seconds; what CI runs (every notebook, 09_sleep included)
    python run_all.py --sleep          # cpu, with 09_sleep (opt-in above smoke: it adds about 80 minutes at cpu)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
PRESETS = ("smoke", "cpu", "paper")  # the names in revena_lib/config.py; checked below against it
# Notebooks that run above the smoke preset only when asked (--sleep, or named in --only): they cost as much again.
OPT_IN = {"09": "--sleep"}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Execute notebooks/NN_*.ipynb in order with papermill: prepare data, build the models, "
            "train the arms, visualise LTM routing, evaluate, plot. Stops at the first failing notebook."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--preset", default="cpu", choices=PRESETS,
                        help="smoke: seconds (tests/CI); cpu: ~30 min on a 2-core CPU; paper: the brief's "
                             "70M models and 10,000 steps, for a GPU")
    parser.add_argument("--arms", default="baseline,with_ltm",
                        help="comma-separated arms to train, evaluate and plot (rows of revena_lib/arms.py; baseline "
                             "is always included), e.g. baseline,with_ltm,ltm_random_write,full_attention")
    parser.add_argument("--seeds", default="",
                        help="comma-separated training seeds per arm (default: the preset's: 1 at smoke, 3 at cpu)")
    parser.add_argument("--only", default="",
                        help="comma-separated notebook numbers to run, e.g. '05,06' (default: all); "
                             "later notebooks read what earlier ones wrote to disk")
    parser.add_argument("--sleep", action="store_true",
                        help="also run 09_sleep (wake/sleep cycles over held-out days, every strategy and seed) above "
                             "the smoke preset: about 80 minutes more at cpu (82 min measured on one thread beside "
                             "the evaluation); at smoke it always runs")
    parser.add_argument("--output-dir", type=Path, default=None,
                        help="where executed copies go (default: executed/<preset>/)")
    parser.add_argument("--notebooks-dir", type=Path, default=NOTEBOOKS_DIR, help=argparse.SUPPRESS)
    parser.add_argument("--kernel", default="python3", help="Jupyter kernel name")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=sys.stderr.isatty(),
                        help="show papermill's per-cell progress bar")
    return parser.parse_args(argv)


def select_notebooks(notebooks_dir: Path, only: str, preset: str = "smoke", sleep: bool = False) -> list[Path]:
    notebooks = sorted(p for p in notebooks_dir.glob("[0-9][0-9]_*.ipynb"))
    if not notebooks:
        sys.exit(f"error: no numbered notebooks (NN_name.ipynb) found in {notebooks_dir}")
    if only:
        wanted = {n.strip().zfill(2) for n in only.split(",") if n.strip()}
        known = {p.name[:2] for p in notebooks}
        unknown = sorted(wanted - known)
        if unknown:
            sys.exit(f"error: --only {only!r}: no notebook numbered {', '.join(unknown)} "
                     f"(available: {', '.join(sorted(known))})")
        return [p for p in notebooks if p.name[:2] in wanted]
    if preset != "smoke":
        notebooks = [p for p in notebooks if p.name[:2] not in OPT_IN or (sleep and OPT_IN[p.name[:2]] == "--sleep")]
    return notebooks


def notebook_parameters(notebook: Path, args) -> dict:
    """The run's settings for the names this notebook's parameters cell declares (papermill would inject
    unknown names too, silently; so only declared ones are passed)."""
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    declared = "".join("".join(c.source) for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    wanted = {"preset": args.preset, "arms": args.arms, "seeds": args.seeds}
    return {k: v for k, v in wanted.items() if f"{k} =" in declared}


def describe_failure(error: Exception) -> str:
    """One line naming the failing cell and its error, from papermill's exception."""
    ename = getattr(error, "ename", type(error).__name__)
    evalue = getattr(error, "evalue", str(error))
    cell = getattr(error, "exec_count", None)
    where = f"cell [{cell}]" if cell is not None else "a cell"
    return f"{where} raised {ename}: {evalue}".strip()


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(REPO_ROOT))
    from revena_lib.config import PRESETS as library_presets

    assert set(PRESETS) == set(library_presets), "run_all.PRESETS is out of date with revena_lib.config"
    import papermill

    from revena_lib.arms import ArmError, parse_arms

    try:
        args.arms = ",".join(parse_arms(args.arms))
    except ArmError as e:
        sys.exit(f"error: --arms: {e}")
    notebooks = select_notebooks(args.notebooks_dir, args.only, args.preset, args.sleep)
    output_dir = (args.output_dir or REPO_ROOT / "executed" / args.preset).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    artefacts = os.environ.get("REVENA_HOME", str(REPO_ROOT))
    print(f"revena: preset {args.preset!r}, arms {args.arms}, seeds {args.seeds or 'the preset default'}, "
          f"{len(notebooks)} notebook(s), artefacts under {artefacts}, "
          f"executed copies in {output_dir}", flush=True)

    started = time.perf_counter()
    for notebook in notebooks:
        output = output_dir / notebook.name
        t0 = time.perf_counter()
        try:
            papermill.execute_notebook(
                str(notebook), str(output),
                parameters=notebook_parameters(notebook, args),
                kernel_name=args.kernel,
                cwd=str(REPO_ROOT),
                progress_bar=args.progress,
            )
        except Exception as error:  # papermill raises PapermillExecutionError for a failing cell
            elapsed = time.perf_counter() - t0
            print(f"FAILED {notebook.name} after {elapsed:.1f}s: {describe_failure(error)}", flush=True)
            print(f"       the executed copy with the traceback is {output}", flush=True)
            return 1
        print(f"ok     {notebook.name:<24} {time.perf_counter() - t0:7.1f}s", flush=True)
    print(f"done   {len(notebooks)} notebook(s) in {time.perf_counter() - started:.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
