"""``python -m revena_lib.evaluate``: evaluate every trained arm into results/results.json.

An entry point only, so that the command keeps its name: the code is ``revena_lib/evaluation/results.py``. Each of
the six commands at the top of the package imports ``main`` from the stage that does the work
(docs/architecture.md).
"""

from revena_lib.evaluation.results import main

if __name__ == "__main__":
    main()
