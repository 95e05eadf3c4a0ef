"""Stage 6, sleep: a day's experiences replayed into the weights of a trained run, then what is kept and what is lost.

    consolidation.py  days with planted facts, wake (a session reads them), the replay strategies, the sleep itself
    experiment.py     lineages of days and nights for every strategy and seed, retention and forgetting, the verdicts
                      (python -m revena_lib.sleep_experiment)
    plots.py          the retention/forgetting frontier and retention over the nights

    from revena_lib.sleep.experiment import run_experiment
    result = run_experiment(arm="with_ltm", preset="smoke")
"""
