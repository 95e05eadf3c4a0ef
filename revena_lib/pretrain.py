"""``python -m revena_lib.pretrain``: build a preset's pretrained trunks (one per seed) with their records.

An entry point only, so that the command keeps its name: the code is ``revena_lib/evaluation/pretrain.py`` (in the
evaluation stage because a trunk's record carries its positive control; saving, loading and starting runs from a trunk
is ``revena_lib/training/trunk.py``). Each command at the top of the package imports ``main`` from the stage that does
the work (docs/architecture.md).
"""

from revena_lib.evaluation.pretrain import main

if __name__ == "__main__":
    main()
