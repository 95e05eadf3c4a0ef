"""revena_lib: the shared code behind the Revena workbook notebooks.

Does a long-term memory (LTM) help a small language model compress text and recall facts from
beyond its attention window? The notebooks in ``notebooks/`` ask; this package answers.

    from revena_lib.data.tokenizer import encode_text, get_tokenizer
    encode_text(get_tokenizer(), "Hello world")  # [15496, 995]
"""

__version__ = "0.1.0"
