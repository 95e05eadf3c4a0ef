"""``python -m revena_lib.sleep_experiment``: the sleep consolidation experiment (the code: ``revena_lib/sleep/experiment.py``).

An entry point only: the five commands users type keep their names at the top of the package, and each one
imports ``main`` from the stage that does the work (docs/architecture.md).
"""

from revena_lib.sleep.experiment import main

if __name__ == "__main__":
    main()
