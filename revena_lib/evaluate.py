"""``python -m revena_lib.evaluate``: evaluate every trained arm into results/results.json (the code: ``revena_lib/evaluation/results.py``).

An entry point only: the five commands users type keep their names at the top of the package, and each one
imports ``main`` from the stage that does the work (docs/architecture.md).
"""

from revena_lib.evaluation.results import main

if __name__ == "__main__":
    main()
