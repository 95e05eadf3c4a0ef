"""``python -m revena_lib.prepare_data``: tokenise the corpus into data/train.bin, data/val.bin, data/meta.json
(the code: ``revena_lib/data/prepare.py``).

An entry point only: the five commands users type keep their names at the top of the package, and each one
imports ``main`` from the stage that does the work (docs/architecture.md).
"""

from revena_lib.data.prepare import main

if __name__ == "__main__":
    main()
