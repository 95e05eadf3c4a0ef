"""``python -m revena_lib.prepare_data``: tokenise the corpus into data/train.bin, data/val.bin, data/meta.json.

An entry point only, so that the command keeps its name: the code is ``revena_lib/data/prepare.py``. Each of the
six commands at the top of the package imports ``main`` from the stage that does the work (docs/architecture.md).
"""

from revena_lib.data.prepare import main

if __name__ == "__main__":
    main()
