"""revena_lib: the shared code behind the Revena workbook notebooks.

Does a long-term memory (LTM) help a small language model compress text and recall facts from
beyond its attention window? The notebooks in ``notebooks/`` ask; this package answers. Its subpackages are the
pipeline's stages, in order (each imports only from the ones before it; docs/architecture.md):

    data/        text -> tokens on disk (data/train.bin, data/val.bin, data/meta.json), and the training mix
    models/      the model families: transformer (+ its LTM, ltm.py), reservoir, recursive
    training/    an arm and a seed -> a run directory (trained/<arm>/<preset>/seed-<seed>/), checkpoints, devices,
                 pretrained trunks (trunks/<preset>/seed-<seed>/) a fresh run can start from
    evaluation/  trained runs -> results/results.json: BPC, recall, statistics, memory diagnostics, sessions
    analysis/    figures, the probe and chat widgets, the reservoir's inner life
    sleep/       consolidating a day's experiences into the weights, and what is kept

and at the top: ``config.py`` (presets), ``arms.py`` (the arm table: a new arm is one row), ``paths.py`` (where
artefacts live), and the six commands (``python -m revena_lib.prepare_data``, ``.train``, ``.evaluate``,
``.export``, ``.sleep_experiment``, ``.pretrain``), each an entry point into its stage.

    from revena_lib.data.tokenizer import encode_text, get_tokenizer
    encode_text(get_tokenizer(), "Hello world")  # [15496, 995]
"""

__version__ = "0.1.0"
