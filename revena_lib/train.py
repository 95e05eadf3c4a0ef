"""``python -m revena_lib.train``: train one arm and seed, or resume it (the code: ``revena_lib/training/loop.py``).

An entry point only: the five commands users type keep their names at the top of the package, and each one
imports ``main`` from the stage that does the work (docs/architecture.md).
"""

from revena_lib.training.loop import main

if __name__ == "__main__":
    main()
