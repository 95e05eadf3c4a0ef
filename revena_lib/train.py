"""``python -m revena_lib.train``: train one arm and seed, or resume it.

An entry point only, so that the command keeps its name: the code is ``revena_lib/training/loop.py``. Each of the
six commands at the top of the package imports ``main`` from the stage that does the work (docs/architecture.md).
"""

from revena_lib.training.loop import main

if __name__ == "__main__":
    main()
