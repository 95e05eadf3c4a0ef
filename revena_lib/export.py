"""``python -m revena_lib.export``: export a trained run to the Hugging Face Hub layout, or push it (the code: ``revena_lib/training/export.py``).

An entry point only: the five commands users type keep their names at the top of the package, and each one
imports ``main`` from the stage that does the work (docs/architecture.md).
"""

from revena_lib.training.export import main

if __name__ == "__main__":
    main()
