"""Data preparation and loading: layout, split by document, exact characters/bytes, reuse, every error path, CLI."""

import json
import os
import subprocess
import sys
import threading
import types
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pytest

from revena_lib.data import corpus
from revena_lib.config import get_preset
from revena_lib.data import DataError
from revena_lib.data.corpus import hub_unreachable_reason, load_embedded_corpus, load_embedded_records
from revena_lib.data.prepare import prepare_data, split_documents
from revena_lib.data.splits import SPLITS, TokenSplit, load_meta, load_split
from revena_lib.paths import REPO_ROOT, file_sha256
from revena_lib.data.tokenizer import EOT_ID

TINY = dict(source="embedded", num_docs=12, max_doc_chars=1_500, val_fraction=0.25, split_seed=7, progress=False)


@pytest.fixture
def tiny_dir(revena_home):
    """A freshly prepared tiny embedded data dir (12 documents, 1,500 characters each at most)."""
    directory = revena_home / "data"
    prepare_data(data_dir=directory, **TINY)
    return directory


def file_identity(path):
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns


# --- the embedded corpus -------------------------------------------------------

def test_embedded_corpus_is_233_chronological_addresses():
    records = load_embedded_records()
    assert len(records) == 233 == len(load_embedded_corpus())
    assert {"year", "name", "party", "text"} <= set(records[0])
    years = [int(r["year"]) for r in records]
    assert years == sorted(years) and years[0] == 1790
    assert all(r["text"].strip() for r in records)


# --- layout --------------------------------------------------------------------

@pytest.mark.parametrize("split", SPLITS)
def test_every_document_opens_with_eot_and_offsets_add_up(smoke_data, split):
    s = load_split(split)
    assert isinstance(s, TokenSplit) and s.name == split
    assert s.tokens.dtype == np.uint16
    assert s.num_docs == len(s.doc_offsets) == len(s.doc_lengths) == len(s.doc_characters) == len(s.doc_bytes) > 0
    assert s.doc_offsets[0] == 0
    np.testing.assert_array_equal(s.doc_offsets[1:], np.cumsum(s.doc_lengths)[:-1])
    assert s.doc_lengths.sum() == len(s.tokens) == s.meta["splits"][split]["tokens"]
    assert (s.tokens[s.doc_offsets] == EOT_ID).all()
    # encode_ordinary never produces EOT, so the only EOTs are the document openers.
    assert (s.tokens == EOT_ID).sum() == s.num_docs
    assert (s.doc_lengths > 1).all()
    doc = s.document(1)
    assert doc[0] == EOT_ID and len(doc) == s.doc_lengths[1]
    assert s.characters == s.doc_characters.sum() and s.bytes == s.doc_bytes.sum()


def test_documents_decode_to_the_truncated_texts_with_exact_characters_and_bytes(tiny_dir):
    texts = load_embedded_corpus()
    for split in SPLITS:
        s = load_split(split, tiny_dir)
        for i, source_index in enumerate(s.meta["splits"][split]["doc_source_index"]):
            expected = texts[source_index][:TINY["max_doc_chars"]]
            assert s.document_text(i) == expected
            assert s.doc_characters[i] == len(expected)
            assert s.doc_bytes[i] == len(expected.encode("utf-8"))


def test_characters_and_bytes_differ_for_non_ascii_text(revena_home, monkeypatch):
    texts = ["Café naïve 🙂 " * 20, "plain ascii text " * 20, "汉字 " * 30, "more ascii " * 20]
    monkeypatch.setattr(corpus, "load_embedded_corpus", lambda: texts)
    meta = prepare_data(source="embedded", num_docs=4, max_doc_chars=50, val_fraction=0.25, split_seed=0,
                        data_dir=revena_home / "d", progress=False)
    for split in SPLITS:
        s = load_split(split, revena_home / "d")
        for i, source_index in enumerate(meta["splits"][split]["doc_source_index"]):
            truncated = texts[source_index][:50]
            assert s.doc_characters[i] == 50 and s.doc_bytes[i] == len(truncated.encode("utf-8"))
            assert s.document_text(i) == truncated
    assert meta["documents_truncated"] == 4


# --- split by document -----------------------------------------------------------

def test_split_is_by_document_disjoint_and_complete(tiny_dir):
    meta = load_meta(tiny_dir)
    train = meta["splits"]["train"]["doc_source_index"]
    val = meta["splits"]["val"]["doc_source_index"]
    assert not set(train) & set(val)
    assert sorted(train + val) == list(range(TINY["num_docs"]))
    assert len(val) == round(TINY["num_docs"] * TINY["val_fraction"])
    assert train == sorted(train) and val == sorted(val)  # corpus (chronological) order inside each split


def test_split_is_deterministic_per_seed():
    assert split_documents(233, 0.1, 1337) == split_documents(233, 0.1, 1337)
    assert split_documents(233, 0.1, 1337) != split_documents(233, 0.1, 1338)
    train, val = split_documents(2, 0.01, 0)
    assert len(train) == len(val) == 1  # never an empty split


def test_same_settings_give_identical_files(revena_home):
    a = prepare_data(data_dir=revena_home / "a", **TINY)
    b = prepare_data(data_dir=revena_home / "b", **TINY)
    for split in SPLITS:
        assert a["splits"][split]["sha256"] == b["splits"][split]["sha256"]


# --- meta.json -------------------------------------------------------------------

def test_meta_is_consistent_with_files(tiny_dir):
    meta = load_meta(tiny_dir)
    assert meta["corpus"] == "sotu" and meta["source"] == "embedded" and meta["fallback_reason"] is None
    assert meta["tokenizer"] == {"name": "gpt2", "vocab_size": 50257, "eot_id": 50256}
    assert meta["settings"] == {**{k: TINY[k] for k in ("num_docs", "max_doc_chars", "val_fraction", "split_seed")},
                                "tokenizer": "gpt2"}
    assert meta["documents"] == sum(meta["splits"][s]["documents"] for s in SPLITS) == TINY["num_docs"]
    for split in SPLITS:
        info = meta["splits"][split]
        path = tiny_dir / info["file"]
        assert path.stat().st_size == info["file_bytes"] == 2 * info["tokens"]
        assert file_sha256(path) == info["sha256"]
        assert info["characters"] == sum(info["doc_characters"]) and info["bytes"] == sum(info["doc_bytes"])
    assert not [p for p in tiny_dir.iterdir() if p.name.endswith(".tmp") or p.name.startswith(".")]


def test_prepare_from_preset_uses_the_preset(smoke_data):
    meta = load_meta()
    smoke = get_preset("smoke").data
    assert meta["settings"]["num_docs"] == smoke.num_docs and meta["settings"]["max_doc_chars"] == smoke.max_doc_chars
    assert meta["documents"] == smoke.num_docs


# --- idempotency -------------------------------------------------------------------

def test_same_settings_reuse_the_verified_files(tiny_dir, capsys):
    before = {split: file_identity(tiny_dir / f"{split}.bin") for split in SPLITS}
    meta_before = file_identity(tiny_dir / "meta.json")
    prepare_data(data_dir=tiny_dir, **TINY)
    assert "reusing" in capsys.readouterr().out
    assert {split: file_identity(tiny_dir / f"{split}.bin") for split in SPLITS} == before
    assert file_identity(tiny_dir / "meta.json") == meta_before


def test_changed_settings_rebuild(tiny_dir):
    before = file_identity(tiny_dir / "train.bin")
    meta = prepare_data(data_dir=tiny_dir, **{**TINY, "max_doc_chars": 800})
    assert meta["settings"]["max_doc_chars"] == 800 and load_meta(tiny_dir)["settings"]["max_doc_chars"] == 800
    assert file_identity(tiny_dir / "train.bin") != before
    load_split("train", tiny_dir)  # verifies


def test_damaged_files_or_force_rebuild(tiny_dir):
    (tiny_dir / "val.bin").write_bytes(b"\x00\x01")
    prepare_data(data_dir=tiny_dir, **TINY)
    load_split("val", tiny_dir)
    before = file_identity(tiny_dir / "train.bin")
    prepare_data(data_dir=tiny_dir, force=True, **TINY)
    assert file_identity(tiny_dir / "train.bin") != before


# --- errors: one DataError naming the file and the fix ------------------------------

def test_missing_meta(revena_home):
    with pytest.raises(DataError, match="meta.json is missing.*prepare_data"):
        load_split("train")
    with pytest.raises(DataError, match="meta.json"):
        load_meta(revena_home / "elsewhere")


def test_corrupt_meta_bad_json(tiny_dir):
    (tiny_dir / "meta.json").write_text("{not json")
    with pytest.raises(DataError, match=r"meta.json is corrupt.*--force"):
        load_split("val", tiny_dir)


def test_corrupt_meta_missing_keys(tiny_dir):
    meta = json.loads((tiny_dir / "meta.json").read_text())
    del meta["splits"]["val"]["sha256"]
    (tiny_dir / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"meta.json is corrupt.*sha256"):
        load_meta(tiny_dir)
    (tiny_dir / "meta.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="meta.json is corrupt"):
        load_meta(tiny_dir)


def test_missing_bin(tiny_dir):
    (tiny_dir / "train.bin").unlink()
    with pytest.raises(DataError, match=r"train\.bin is missing.*prepare_data"):
        load_split("train", tiny_dir)


def test_truncated_bin(tiny_dir):
    raw = (tiny_dir / "val.bin").read_bytes()
    (tiny_dir / "val.bin").write_bytes(raw[:-2])
    with pytest.raises(DataError, match=r"val\.bin is truncated"):
        load_split("val", tiny_dir)


def test_bin_content_mismatch(tiny_dir):
    raw = bytearray((tiny_dir / "val.bin").read_bytes())
    raw[3] ^= 0xFF
    (tiny_dir / "val.bin").write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"val\.bin does not match meta\.json.*sha256"):
        load_split("val", tiny_dir)


def test_unknown_split(tiny_dir):
    with pytest.raises(DataError, match="unknown split 'test'.*train, val"):
        load_split("test", tiny_dir)


def test_unknown_source(revena_home):
    with pytest.raises(DataError, match=r"unknown source 'web'.*--source.*auto, embedded, openwebtext"):
        prepare_data(source="web", progress=False)


@pytest.mark.parametrize("option, value", [("num_docs", 1), ("max_doc_chars", 0), ("val_fraction", 1.0)])
def test_bad_settings(revena_home, option, value):
    with pytest.raises(DataError, match=option):
        prepare_data(**{**TINY, option: value})


def test_unwritable_data_dir(revena_home):
    blocker = revena_home / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(DataError, match=f"cannot write to the data directory {blocker / 'data'}"):
        prepare_data(data_dir=blocker / "data", **TINY)


# --- source selection: auto, offline, openwebtext -------------------------------------

def test_auto_falls_back_to_embedded_when_offline(revena_home, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    meta = prepare_data(**{**TINY, "source": "auto"})
    assert meta["corpus"] == "sotu" and meta["source"] == "auto"
    assert "HF_HUB_OFFLINE" in meta["fallback_reason"]
    assert load_meta()["fallback_reason"] == meta["fallback_reason"]
    err = capsys.readouterr().err
    assert "using the embedded corpus 'sotu'" in err and "instead of openwebtext" in err
    assert os.environ["HF_DATASETS_OFFLINE"] == "1"  # so a later `import datasets` never retries


def test_explicit_openwebtext_offline_is_a_clear_error(revena_home, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # restored afterwards: the fallback sets both variables
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match="unreachable.*--source embedded"):
        prepare_data(**{**TINY, "source": "openwebtext"})


class _AnswerEverything(BaseHTTPRequestHandler):
    def do_HEAD(self):
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_hub_probe_reachable_and_unreachable(monkeypatch):
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    server = HTTPServer(("127.0.0.1", 0), _AnswerEverything)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
        assert hub_unreachable_reason() is None  # any HTTP answer, even 404, means the network is there
    finally:
        server.shutdown()
        server.server_close()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")  # now closed
    reason = hub_unreachable_reason(timeout=0.5)
    assert reason and "127.0.0.1" in reason


def test_openwebtext_streaming_path(revena_home, monkeypatch):
    """The hub code path, with `datasets` replaced by a fake: first N non-empty documents, corpus recorded."""
    calls = []
    rows = [{"text": f"Web document number {i}. " * (i + 3)} for i in range(30)]
    rows.insert(2, {"text": "   "})

    def fake_load_dataset(path, split, streaming, revision=None):
        calls.append((path, split, streaming, revision))
        if revision is None:
            raise RuntimeError("Dataset scripts are no longer supported, but found openwebtext.py")
        return iter(rows)

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=fake_load_dataset))
    monkeypatch.setattr(corpus, "hub_unreachable_reason", lambda: None)
    meta = prepare_data(source="auto", num_docs=10, max_doc_chars=200, val_fraction=0.2, split_seed=1,
                        data_dir=revena_home / "data", progress=False)
    assert meta["corpus"] == "openwebtext" and meta["fallback_reason"] is None and meta["documents"] == 10
    assert calls[0] == (corpus.HF_DATASET_ID, "train", True, None) and calls[1][3] == "refs/convert/parquet"
    val = load_split("val")
    index = meta["splits"]["val"]["doc_source_index"][0]
    non_empty = [r["text"] for r in rows if r["text"].strip()]
    assert val.document_text(0) == non_empty[index][:200]


def test_auto_offline_keeps_existing_openwebtext_data(revena_home, monkeypatch, capsys):
    rows = [{"text": f"Web document number {i}. " * 5} for i in range(12)]
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=lambda *a, **k: iter(rows)))
    monkeypatch.setattr(corpus, "hub_unreachable_reason", lambda: None)
    settings = {**TINY, "source": "openwebtext"}
    prepare_data(**settings)
    before = file_identity(revena_home / "data" / "train.bin")
    monkeypatch.setattr(corpus, "hub_unreachable_reason", lambda: "offline in this test")
    meta = prepare_data(**{**settings, "source": "auto"})
    assert meta["corpus"] == "openwebtext" and "reusing the prepared openwebtext" in capsys.readouterr().out
    assert file_identity(revena_home / "data" / "train.bin") == before


def test_auto_falls_back_when_streaming_fails(revena_home, monkeypatch, capsys):
    def broken_load_dataset(*args, **kwargs):
        raise ConnectionError("connection reset")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=broken_load_dataset))
    monkeypatch.setattr(corpus, "hub_unreachable_reason", lambda: None)
    meta = prepare_data(**{**TINY, "source": "auto"})
    assert meta["corpus"] == "sotu" and "connection reset" in meta["fallback_reason"]
    assert "using the embedded corpus 'sotu'" in capsys.readouterr().err


def test_openwebtext_stream_failure_is_a_data_error(revena_home, monkeypatch):
    def broken_load_dataset(*args, **kwargs):
        raise ConnectionError("connection reset")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=broken_load_dataset))
    monkeypatch.setattr(corpus, "hub_unreachable_reason", lambda: None)
    with pytest.raises(DataError, match="connection reset.*--source embedded"):
        prepare_data(**{**TINY, "source": "openwebtext"})


# --- the CLI ----------------------------------------------------------------------------

def run_cli(*args, home):
    env = {**os.environ, "REVENA_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "revena_lib.prepare_data", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_cli_help_explains_every_option(tmp_path):
    result = run_cli("--help", home=tmp_path)
    assert result.returncode == 0
    for option in ("--preset", "--source", "--num-docs", "--max-doc-chars", "--val-fraction", "--seed",
                   "--data-dir", "--force"):
        assert option in result.stdout


def test_cli_bad_source_is_one_clear_error(tmp_path):
    result = run_cli("--source", "web", home=tmp_path)
    assert result.returncode != 0
    assert "error:" in result.stderr and "--source" in result.stderr and "embedded" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_prepares_and_summarises(tmp_path):
    result = run_cli("--preset", "smoke", "--num-docs", "6", "--max-doc-chars", "500", "--quiet", home=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "using the embedded corpus 'sotu'" in result.stderr
    assert "train:" in result.stdout and "val:" in result.stdout and str(tmp_path / "data") in result.stdout
    meta = load_meta(tmp_path / "data")
    assert meta["documents"] == 6 and meta["source"] == "auto" and meta["corpus"] == "sotu"
