"""Stage 1, data: text -> tokens on disk, and the batches' raw material.

    corpus.py      where the documents come from: openwebtext from the Hugging Face hub, or the embedded corpus
    tokenizer.py   GPT-2 BPE, or a byte-level BPE of N tokens learned from the training split
    prepare.py     documents -> data/train.bin, data/val.bin, data/meta.json (python -m revena_lib.prepare_data)
    splits.py      the prepared splits read back and verified (TokenSplit, load_split)
    recall_mix.py  the training mix: facts planted in training rows and asked again (the copying curriculum)

    from revena_lib.data.splits import load_split
    val = load_split("val")          # after python -m revena_lib.prepare_data
"""


class DataError(RuntimeError):
    """The data is missing, corrupt or cannot be made; the message names the file and the command that fixes it."""
