"""Failure modes users hit (issue 22): a tokenizer's special-token text in user text, ``--resume`` with another
``--steps``, a new document in a session, and re-running the pipeline after an interruption.

Each test would fail on the behaviour the issue reported: tiktoken raising on "<|endoftext|>" typed into a session,
a resumed run that changed its plan silently, a session that kept the previous document's memory, and an automatic
run that could not be continued without deleting files by hand."""

import dataclasses
import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from revena_lib.arms import ARMS, arm_preset
from revena_lib.config import get_preset
from revena_lib.models import build_model
from revena_lib.paths import REPO_ROOT
from revena_lib.session import Session, load_run
from revena_lib.tokenizer import encode_text, encode_texts, gpt2_tokenizer

LITERAL = "<|endoftext|>"
TEXT = f"Fellow citizens {LITERAL} of the Senate.{LITERAL}The pass key is 48213. a<|endoftext|>b"
TINY = dict(source="embedded", num_docs=12, max_doc_chars=3_000, val_fraction=0.25, split_seed=7, progress=False)


def weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoint.pt", weights_only=False)["model"]


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


# =====================================================================================================================
# 1. Text that contains a tokenizer's special token: ordinary text in every path, with either tokenizer

def corpus_with_the_literal() -> list[str]:
    from revena_lib.data import load_embedded_corpus

    return [t[:300] + f" a {LITERAL} b{LITERAL}c " + t[300:] for t in load_embedded_corpus()[:TINY["num_docs"]]]


@pytest.fixture(scope="module", params=["gpt2", "bpe-400"])
def literal_home(request, tmp_path_factory):
    """Data prepared from documents that contain "<|endoftext|>", with GPT-2 or a BPE, and a short with_ltm run."""
    from revena_lib import data
    from revena_lib.train import train

    home = tmp_path_factory.mktemp(f"literal-{request.param}")
    texts = corpus_with_the_literal()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("REVENA_HOME", str(home))
        mp.setattr(data, "load_embedded_corpus", lambda: texts)
        meta = data.prepare_data(tokenizer=request.param, **TINY)
        run_dir = train("smoke", arm="with_ltm", steps=2, progress=False, device="cpu")
    return SimpleNamespace(home=home, texts=texts, meta=meta, run_dir=run_dir, tokenizer=request.param)


@pytest.fixture
def literal_env(literal_home, monkeypatch):
    monkeypatch.setenv("REVENA_HOME", str(literal_home.home))
    return literal_home


def test_encode_text_reads_special_token_text_as_text_with_both_tokenizers(literal_env):
    from revena_lib.tokenizer import get_tokenizer

    enc = get_tokenizer()
    assert enc.name == literal_env.tokenizer
    ids = encode_text(enc, TEXT)
    assert enc.eot_token not in ids and enc.decode(ids) == TEXT
    assert encode_texts(enc, [TEXT, "x"]) == [ids, encode_text(enc, "x")]
    # exactly the tokens of the text read as if no special token existed (no cut around the literal)
    if literal_env.tokenizer == "gpt2":
        assert ids == enc.encode(TEXT, disallowed_special=())
    else:
        hf = enc._tok
        assert ids == [t.id for piece, _ in hf.pre_tokenizer.pre_tokenize_str(TEXT) for t in hf.model.tokenize(piece)]
    with pytest.raises(TypeError, match="str"):
        encode_text(enc, [1, 2])


def test_data_preparation_keeps_the_literal_as_text_and_separates_documents_with_the_real_eot(literal_env):
    from revena_lib.data import SPLITS, load_split

    for split in SPLITS:
        s = load_split(split)
        enc = s.tokenizer
        assert (s.tokens == enc.eot_token).sum() == s.num_docs                 # the only EOTs open documents
        for i, source in enumerate(s.meta["splits"][split]["doc_source_index"]):
            expected = literal_env.texts[source][:TINY["max_doc_chars"]]
            assert LITERAL in expected and s.document_text(i) == expected
            assert s.document(i).tolist() == [enc.eot_token] + encode_text(enc, expected)


def test_every_path_that_encodes_user_text_reads_the_literal_as_text(literal_env):
    from revena_lib.probe import probe_widget
    from revena_lib.recall import RecallItem, make_recall_items, score_recall_items
    from revena_lib.data import load_split
    from revena_lib.session_widget import chat_widget
    from revena_lib.sleep import closed_book_items, day_from_texts, question_tokens, recall_scores, wake

    run = load_run(literal_env.run_dir)
    enc, eot = run.tokenizer, run.tokenizer.eot_token
    expected = encode_text(enc, TEXT)
    assert eot not in expected

    # Session.feed, within a document and as a new one
    session = run.session()
    assert session.feed(TEXT).tokens == expected
    assert session.feed(TEXT, start_document=True).tokens == [eot] + expected
    # Session.generate: the prompt is read as text
    session = run.session()
    session.generate(TEXT, max_new_tokens=2)
    assert session.history[:len(expected)] == expected and len(session.history) >= len(expected)

    # the chat widget: Feed and Generate
    session = run.session()
    widget = chat_widget(session, max_new_tokens=2)
    box, (feed, generate, _reset, status) = widget.children[0], widget.children[1].children
    box.value = TEXT
    feed.click()
    assert status.value == "read" and session.history == [eot] + expected
    box.value = TEXT
    generate.click()
    assert status.value.startswith("generated") and session.history[len(expected) + 1:][:len(expected)] == expected

    # the probe widget: a document given as text, and typed text
    probe = probe_widget(run.model, enc, {"typed": TEXT})
    assert probe.choices[0][1].tolist() == [eot] + expected
    probe.probe_text(TEXT)
    assert probe.trace["tokens"].tolist() == [eot] + expected and len(probe.texts) == 1 + len(expected)

    # sleep: a day of your own, its wake (a session), and its closed-book questions
    text = f"Some text {LITERAL} here. The boiler room code is 7731. More{LITERAL}text after it, " * 3
    day = day_from_texts([text], [("The boiler room code is", " 7731")], enc)
    assert day.documents[0] == [eot] + encode_text(enc, text)
    fact = day.facts[0]
    assert "The boiler room code is 7731" in enc.decode(day.documents[0][fact.start:fact.end])
    cue, answer = question_tokens(fact, enc)
    assert eot not in cue + answer
    assert len(wake(run, day).surprisal_bits[0]) == len(day.documents[0])
    item = closed_book_items([dataclasses.replace(fact, cue=f"{LITERAL} The boiler room code is")], enc)[0]
    assert item.tokens.count(eot) == 1 and item.tokens[0] == eot   # the question's own literal is text
    assert len(recall_scores(run.model, [item], enc)) == 1

    # recall items: made from the prepared data (whose documents hold the literal), and by hand
    items = make_recall_items(load_split("val"), distances=(8, 40), items_per_distance=2, seed=3)
    assert items and all(it.tokens.count(eot) == 1 and it.tokens[0] == eot for it in items)
    context = encode_text(enc, f" The code is 4417. {LITERAL} Some text. The code is")
    answer = encode_text(enc, " 4417")
    hand = RecallItem(tokens=[eot] + context + answer, answer_start=1 + len(context), answer_len=len(answer),
                      distance=3)
    assert len(score_recall_items(run.model, [hand], tokenizer=enc)) == 1


def test_no_module_encodes_text_but_through_encode_text():
    """One function does the encoding: a tokenizer's encode/encode_ordinary called anywhere else in revena_lib
    (tiktoken's encode raises on "<|endoftext|>") is a regression. str.encode() / .encode("utf-8") are bytes."""
    call = re.compile(r"\.encode(_ordinary(_batch)?)?\((?!\)|\"utf-8\"\)|'utf-8'\))")
    offenders = []
    for path in sorted((REPO_ROOT / "revena_lib").rglob("*.py")):
        if path.name == "tokenizer.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if call.search(line):
                offenders.append(f"{path.relative_to(REPO_ROOT)}:{number}: {line.strip()}")
    assert not offenders, "encode text with revena_lib.tokenizer.encode_text:\n" + "\n".join(offenders)


# =====================================================================================================================
# 3. A new document in a session: empty memory and no context, for every family with state

def session_model(arm: str):
    cfg = arm_preset("smoke", arm).model
    # an LTM that writes and hits a lot, so a kept entry would show
    cfg = dataclasses.replace(cfg, ltm_write_threshold_bits=2.0, ltm_similarity_threshold=0.0)
    torch.manual_seed(0)
    return build_model(cfg).eval()


@pytest.mark.parametrize("arm", list(ARMS))
def test_a_new_document_in_a_session_starts_from_nothing(arm):
    enc = gpt2_tokenizer()
    model = session_model(arm)
    first = " The pass key is 48213. Remember it. Fellow citizens of the Senate. " * 10   # > 2 chunks
    second = " The union is strong, and the pass key is"
    reader = Session(model, enc)
    torch.manual_seed(1)    # the random-write ablation draws its writes from torch's generator
    reader.feed(first, start_document=True)
    held = reader.state_summary()
    assert held["tokens_seen"] > 2 * model.cfg.chunk_size
    torch.manual_seed(2)
    result = reader.feed(second, start_document=True)
    fresh = Session(model, enc)
    torch.manual_seed(2)
    reference = fresh.feed(second, start_document=True)
    assert result.tokens == reference.tokens and result.positions == reference.positions
    assert result.positions[0] == 0 and reader.history == reference.tokens
    assert result.surprisal_bits == pytest.approx(reference.surprisal_bits, abs=1e-5)
    assert reader.state_summary() == fresh.state_summary()
    assert reader.ltm_entries() == fresh.ltm_entries()
    if getattr(model.cfg, "use_ltm", False):
        assert held["ltm_entries"] > reader.state_summary()["ltm_entries"]
    # without start_document the session continues the document: the state is kept (the test can tell)
    reader.feed(first, start_document=True)
    torch.manual_seed(2)
    continued = reader.feed(second)
    assert continued.positions[0] > 0
    assert continued.surprisal_bits[1:] != pytest.approx(reference.surprisal_bits[2:], abs=1e-5)
