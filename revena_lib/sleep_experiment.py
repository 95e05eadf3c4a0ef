"""``python -m revena_lib.sleep_experiment``: the sleep consolidation experiment (days, wake, sleep, retention).

An entry point only, so that the command keeps its name: the code is ``revena_lib/sleep/experiment.py``. Each of the
six commands at the top of the package imports ``main`` from the stage that does the work (docs/architecture.md).
"""

from revena_lib.sleep.experiment import main

if __name__ == "__main__":
    main()
