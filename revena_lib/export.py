"""``python -m revena_lib.export``: export a trained run to the Hugging Face Hub layout, or push it.

An entry point only, so that the command keeps its name: the code is ``revena_lib/training/export.py``. Each of the
six commands at the top of the package imports ``main`` from the stage that does the work (docs/architecture.md).
"""

from revena_lib.training.export import main

if __name__ == "__main__":
    main()
