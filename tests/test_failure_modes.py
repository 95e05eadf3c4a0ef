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
from revena_lib.data.tokenizer import encode_text, encode_texts, gpt2_tokenizer
from revena_lib.evaluation.session import Session, load_run
from revena_lib.models import build_model
from revena_lib.paths import REPO_ROOT

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
    from revena_lib.data.corpus import load_embedded_corpus

    return [t[:300] + f" a {LITERAL} b{LITERAL}c " + t[300:] for t in load_embedded_corpus()[:TINY["num_docs"]]]


@pytest.fixture(scope="module", params=["gpt2", "bpe-400"])
def literal_home(request, tmp_path_factory):
    """Data prepared from documents that contain "<|endoftext|>", with GPT-2 or a BPE, and a short with_ltm run."""
    from revena_lib.data import corpus
    from revena_lib.data.prepare import prepare_data
    from revena_lib.training.loop import train

    home = tmp_path_factory.mktemp(f"literal-{request.param}")
    texts = corpus_with_the_literal()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("REVENA_HOME", str(home))
        mp.setattr(corpus, "load_embedded_corpus", lambda: texts)
        meta = prepare_data(tokenizer=request.param, **TINY)
        run_dir = train("smoke", arm="with_ltm", steps=2, progress=False, device="cpu")
    return SimpleNamespace(home=home, texts=texts, meta=meta, run_dir=run_dir, tokenizer=request.param)


@pytest.fixture
def literal_env(literal_home, monkeypatch):
    monkeypatch.setenv("REVENA_HOME", str(literal_home.home))
    return literal_home


def test_encode_text_reads_special_token_text_as_text_with_both_tokenizers(literal_env):
    from revena_lib.data.tokenizer import get_tokenizer

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
    from revena_lib.data.splits import SPLITS, load_split

    for split in SPLITS:
        s = load_split(split)
        enc = s.tokenizer
        assert (s.tokens == enc.eot_token).sum() == s.num_docs                 # the only EOTs open documents
        for i, source in enumerate(s.meta["splits"][split]["doc_source_index"]):
            expected = literal_env.texts[source][:TINY["max_doc_chars"]]
            assert LITERAL in expected and s.document_text(i) == expected
            assert s.document(i).tolist() == [enc.eot_token] + encode_text(enc, expected)


def test_every_path_that_encodes_user_text_reads_the_literal_as_text(literal_env):
    from revena_lib.analysis.chat_widget import chat_widget
    from revena_lib.analysis.probe_widget import probe_widget
    from revena_lib.data.splits import load_split
    from revena_lib.evaluation.recall import RecallItem, make_recall_items, score_recall_items
    from revena_lib.sleep.consolidation import closed_book_items, day_from_texts, question_tokens, recall_scores, wake

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
    assert not offenders, "encode text with revena_lib.data.tokenizer.encode_text:\n" + "\n".join(offenders)


# =====================================================================================================================
# 2. --resume with another --steps: said in one line, recorded, carried by evaluation and the model card

def test_resume_with_other_steps_says_so_and_records_the_schedule_change(smoke_data, tmp_path, monkeypatch, capsys):
    from revena_lib.evaluation import EvalError
    from revena_lib.evaluation.arm_runs import check_arms_match
    from revena_lib.evaluation.results import evaluate
    from revena_lib.training.export import export_run, model_card
    from revena_lib.training.loop import lr_at_step, main
    from revena_lib.training.runs import read_metrics

    out = tmp_path / "trained" / "baseline" / "smoke" / "seed-1337"
    monkeypatch.setenv("REVENA_HOME", str(tmp_path))
    shutil.copytree(smoke_data / "data", tmp_path / "data")
    main(["--preset", "smoke", "--steps", "8", "--stop-at", "4", "--no-progress"])
    config = json.loads((out / "config.json").read_text())
    assert config["schedule_changes"] == [] and config["started_by"] == "hand" and not config["finished"]
    capsys.readouterr()
    main(["--preset", "smoke", "--resume", "--steps", "12", "--no-progress"])
    lines = [line for line in capsys.readouterr().err.splitlines() if "schedule changes" in line]
    assert len(lines) == 1 and "at step 4 (8 -> 12 steps)" in lines[0] and "config.json" in lines[0]
    config = json.loads((out / "config.json").read_text())
    assert config["schedule_changes"] == [{"at_step": 4, "from_steps": 8, "to_steps": 12}]
    assert config["finished"] and config["steps_done"] == 12 and config["train"]["steps"] == 12
    # the learning rate really followed the 8-step cosine up to step 4 and the 12-step one after it
    recipe = get_preset("smoke").train
    logged = read_metrics(out).set_index("step")["lr"]
    assert logged[2] == pytest.approx(lr_at_step(1, dataclasses.replace(recipe, steps=8)))
    assert logged[4] == pytest.approx(lr_at_step(3, dataclasses.replace(recipe, steps=8)))
    assert logged[6] == pytest.approx(lr_at_step(5, dataclasses.replace(recipe, steps=12)))
    # a resume that keeps the total adds nothing and says nothing; extending again adds a second record
    main(["--preset", "smoke", "--resume", "--no-progress"])
    assert "schedule changes" not in capsys.readouterr().err
    main(["--preset", "smoke", "--resume", "--steps", "14", "--no-progress"])
    assert json.loads((out / "config.json").read_text())["schedule_changes"][1] == \
        {"at_step": 12, "from_steps": 12, "to_steps": 14}
    # a fresh 14-step run records nothing, and evaluation will not compare the two as if they were alike
    fresh = tmp_path / "trained" / "baseline" / "smoke" / "seed-7"
    main(["--preset", "smoke", "--steps", "14", "--seed", "7", "--no-progress"])
    assert json.loads((fresh / "config.json").read_text())["schedule_changes"] == []
    with pytest.raises(EvalError, match="schedule_changes"):
        check_arms_match({"baseline": [out, fresh]})
    # evaluation's per-run record carries it
    shutil.rmtree(fresh)
    results = evaluate("smoke", arms="baseline", device="cpu", progress=False)
    assert results["baseline"]["run"]["schedule_changes"] == \
        [json.loads((out / "config.json").read_text())["schedule_changes"]]
    # the model card and the exported config carry it
    config = json.loads((out / "config.json").read_text())
    card = model_card(config, 1, None)
    assert "schedule changed on resume at step 4: 8 -> 12 steps" in card and "at step 12: 12 -> 14" in card
    exported = export_run(out, tmp_path / "exported")
    assert json.loads((exported / "config.json").read_text())["schedule_changes"] == config["schedule_changes"]
    assert "schedule changed on resume" in (exported / "README.md").read_text()


def test_help_says_what_steps_does_on_resume(capsys):
    from revena_lib.training.loop import build_parser

    text = " ".join(build_parser().format_help().split())
    assert "With --resume the run keeps its own total unless --steps gives another" in text
    assert "schedule_changes" in text


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


# =====================================================================================================================
# 4. Re-running after an interruption: runs the pipeline started itself resume exactly; runs started by hand refuse

class Killed(BaseException):
    """A process killed right after a checkpoint (kill -9, a closed laptop): nothing after it runs."""


def kill_after_first_checkpoint(monkeypatch):
    """The next training stops dead right after its first unfinished checkpoint, as a killed job would."""
    from revena_lib.training import loop as train_module

    real = train_module._save

    def save(run, steps_done, finished):
        real(run, steps_done, finished)
        if not finished:
            monkeypatch.setattr(train_module, "_save", real)
            raise Killed(f"killed after step {steps_done}")

    monkeypatch.setattr(train_module, "_save", save)


def test_notebook_07_reservoir_run_resumes_its_own_interrupted_run_exactly(smoke_data, tmp_path, monkeypatch):
    from revena_lib.analysis.reservoir_analysis import reservoir_run
    from revena_lib.training import TrainError
    from revena_lib.training.loop import train

    reference = train("smoke", arm="reservoir", steps=8, out_dir=tmp_path / "reference", progress=False)
    shutil.copytree(smoke_data / "data", tmp_path / "data")
    monkeypatch.setenv("REVENA_HOME", str(tmp_path))
    kill_after_first_checkpoint(monkeypatch)
    with pytest.raises(Killed, match="after step 6"):
        reservoir_run("smoke", train_steps_if_missing=8)
    out = tmp_path / "trained" / "reservoir" / "smoke" / "seed-1337"
    config = json.loads((out / "config.json").read_text())
    assert config["started_by"] == "reservoir_run" and not config["finished"]
    # a plain train() still refuses it (a person decides), naming who started it
    with pytest.raises(TrainError, match="unfinished, 6 steps, started by reservoir_run.*--resume"):
        train("smoke", arm="reservoir", steps=8, progress=False)
    # the notebook run again: continues where it stopped, to the weights of a run never interrupted
    assert reservoir_run("smoke", train_steps_if_missing=8) == out
    assert json.loads((out / "config.json").read_text())["steps_done"] == 8
    assert same_weights(out, reference)


def test_a_run_started_by_hand_is_refused_by_the_pipeline_unless_finished(smoke_data, tmp_path, monkeypatch):
    from revena_lib.analysis.reservoir_analysis import reservoir_run
    from revena_lib.training import TrainError
    from revena_lib.training.launch import train_arms
    from revena_lib.training.loop import train

    shutil.copytree(smoke_data / "data", tmp_path / "data")
    monkeypatch.setenv("REVENA_HOME", str(tmp_path))
    out = train("smoke", arm="reservoir", steps=8, stop_at=4, progress=False)
    before = (out / "checkpoint.pt").read_bytes()
    for automatic in (lambda: reservoir_run("smoke", train_steps_if_missing=8),
                      lambda: train_arms("smoke", "reservoir", steps=8, progress=False, parallel=1)):
        with pytest.raises(TrainError, match=r"started by hand \(unfinished, 4 of 8 steps\).*"
                                             r"--arm reservoir --seed 1337 --resume"):
            automatic()
    assert (out / "checkpoint.pt").read_bytes() == before                       # untouched
    train("smoke", arm="reservoir", resume=True, progress=False)                 # the person finishes it
    assert reservoir_run("smoke", train_steps_if_missing=8) == out               # then the pipeline reuses it
    assert train_arms("smoke", "reservoir", progress=False, parallel=1)["reservoir seed 1337"] == out
    with pytest.raises(TrainError, match=r"finished, 8 steps; 10 are asked for.*--resume --steps 10"):
        train_arms("smoke", "reservoir", steps=10, progress=False, parallel=1)  # never extended behind its back


def test_notebook_03_train_arms_resumes_its_interrupted_runs_exactly(smoke_data, tmp_path, monkeypatch):
    from revena_lib.training.launch import train_arms
    from revena_lib.training.loop import train

    references = {arm: train("smoke", arm=arm, steps=8, out_dir=tmp_path / "reference" / arm, progress=False)
                  for arm in ("baseline", "with_ltm")}
    shutil.copytree(smoke_data / "data", tmp_path / "data")
    monkeypatch.setenv("REVENA_HOME", str(tmp_path))
    kill_after_first_checkpoint(monkeypatch)
    with pytest.raises(Killed):
        train_arms("smoke", "with_ltm", steps=8, progress=False, parallel=1)   # killed inside the baseline run
    runs = train_arms("smoke", "with_ltm", steps=8, progress=False, parallel=1)
    for arm, reference in references.items():
        config = json.loads((runs[f"{arm} seed 1337"] / "config.json").read_text())
        assert config["started_by"] == "train_arms" and config["finished"] and config["schedule_changes"] == []
        assert same_weights(runs[f"{arm} seed 1337"], reference)


def test_training_processes_stop_with_a_killed_parent_and_keep_a_checkpoint(smoke_data, tmp_path):
    """train_arms(parallel=2) runs one process per run (the cpu preset's default). Killing the process that started
    them (a killed pipeline's kernel) stops them with a checkpoint instead of leaving them training as orphans."""
    import os
    import signal
    import subprocess
    import sys
    import time

    shutil.copytree(smoke_data / "data", tmp_path / "data")
    env = {**os.environ, "REVENA_HOME": str(tmp_path), "REVENA_THREADS": "1"}
    code = "from revena_lib.training.launch import train_arms; " \
           "train_arms('smoke', 'baseline', seeds='1,2', steps=400, progress=False, parallel=2)"
    parent = subprocess.Popen([sys.executable, "-c", code], env=env)
    runs = [tmp_path / "trained" / "baseline" / "smoke" / f"seed-{s}" for s in (1, 2)]
    try:
        deadline = time.monotonic() + 300   # a guard against a hang, not a measurement
        while not all((r / "checkpoint.pt").exists() for r in runs):
            assert parent.poll() is None and time.monotonic() < deadline, "the training processes did not start"
            time.sleep(0.2)
        children = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _ppid(p) == parent.pid]
        assert len(children) == 2
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        while any(not _zombie(c) for c in children):
            assert time.monotonic() < deadline, "orphaned training processes kept running"
            time.sleep(0.2)
    finally:
        if parent.poll() is None:
            parent.kill()
    for run in runs:
        config = json.loads((run / "config.json").read_text())
        assert not config["finished"] and config["started_by"] == "train_arms"
        assert "interrupted at step" in (run / "train.log").read_text()     # SIGTERM: a checkpoint, then exit
        assert torch.load(run / "checkpoint.pt", weights_only=False)["step"] == config["steps_done"] >= 6


def _ppid(proc: Path) -> int:
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def test_notebook_09_sleep_resumes_an_interrupted_lineage_exactly(smoke_home, tmp_path_factory, tmp_path,
                                                                  monkeypatch):
    from smoke_runs import trained_smoke_home
    from revena_lib.sleep import experiment as sleep_experiment
    from revena_lib.sleep.consolidation import SleepConfig
    from revena_lib.sleep.experiment import run_experiment

    home = trained_smoke_home(smoke_home, tmp_path_factory, "sleep_interrupt", ("with_ltm",), steps=2)
    monkeypatch.setenv("REVENA_HOME", str(home))
    cfg = SleepConfig(steps=2, batch_size=2, seq_len=64, dream_rows=2, dream_source="generated")
    kwargs = dict(strategies=("text",), sleep_cfg=cfg, progress=False)
    reference = run_experiment("with_ltm", "smoke", out_root=tmp_path / "reference",
                               results_path=tmp_path / "reference.json", **kwargs)
    real, nights = sleep_experiment.sleep, []

    def sleep_killed_in_night_2(run, wake_, cfg_, out_dir, seed=0):
        nights.append(out_dir)
        if len(nights) == 2:   # killed while writing night 2: its checkpoint is there, its config.json not yet
            Path(out_dir).mkdir(parents=True)
            (Path(out_dir) / "checkpoint.pt").write_bytes(b"partial")
            raise Killed("killed in night 2")
        return real(run, wake_, cfg_, out_dir, seed)

    monkeypatch.setattr(sleep_experiment, "sleep", sleep_killed_in_night_2)
    with pytest.raises(Killed):
        run_experiment("with_ltm", "smoke", out_root=tmp_path / "mine", results_path=tmp_path / "mine.json", **kwargs)
    monkeypatch.setattr(sleep_experiment, "sleep", real)
    again = run_experiment("with_ltm", "smoke", out_root=tmp_path / "mine", results_path=tmp_path / "mine.json",
                           **kwargs)
    for a, b in zip(reference["lineages"], again["lineages"]):
        for key in ("closed_book", "general_bits", "day_bits_after"):
            assert a[key] == b[key], key
        for day in range(1, len(reference["days"]) + 1):
            assert same_weights(Path(a["dir"]) / f"day-{day}", Path(b["dir"]) / f"day-{day}")


# The whole pipeline, killed (run_all.py and its kernel, SIGKILL, as a killed job or a closed laptop) while a notebook
# trains, then run again with the same command. The kill is planted by a sitecustomize.py on the kernel's PYTHONPATH,
# so it happens at a chosen point (right after a checkpoint, or in the middle of writing a night) on every machine.
KILL_HOOK = '''
import importlib.abc, importlib.util, os, signal, sys
TARGET = os.environ.get("REVENA_TEST_KILL", "")   # "train:<arm>" or "sleep"
NAMES = {"revena_lib.training.loop", "revena_lib.sleep.experiment"}
busy = set()

def kill_the_job():
    os.kill(int(os.environ.get("JPY_PARENT_PID") or os.getppid()), signal.SIGKILL)   # run_all.py
    os.kill(os.getpid(), signal.SIGKILL)                                             # this kernel

def patch(module):
    if module.__name__ == "revena_lib.training.loop" and TARGET.startswith("train:"):
        real_save = module._save
        def _save(run, steps_done, finished):
            real_save(run, steps_done, finished)
            if run.arm == TARGET.split(":", 1)[1] and not finished:
                kill_the_job()
        module._save = _save
    if module.__name__ == "revena_lib.sleep.experiment" and TARGET == "sleep":
        real_sleep, calls = module.sleep, []
        def sleep(run, wake_, cfg, out_dir, seed=0):
            calls.append(out_dir)
            if len(calls) == 2:   # night 2, half written: its checkpoint, no config.json yet
                os.makedirs(out_dir, exist_ok=True)
                open(os.path.join(out_dir, "checkpoint.pt"), "wb").write(b"partial")
                kill_the_job()
            return real_sleep(run, wake_, cfg, out_dir, seed)
        module.sleep = sleep

class Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in NAMES or name in busy:
            return None
        busy.add(name)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            busy.discard(name)
        real_exec = spec.loader.exec_module
        def exec_module(module):
            real_exec(module)
            patch(module)
        spec.loader.exec_module = exec_module
        return spec

if TARGET and os.environ.get("JPY_PARENT_PID"):   # only in the notebooks' kernels
    sys.meta_path.insert(0, Finder())
'''


@pytest.mark.slow
def test_the_smoke_pipeline_killed_in_each_notebook_that_trains_continues_when_run_again(tmp_path, monkeypatch):
    import os
    import subprocess
    import sys

    from revena_lib.training.loop import train

    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(KILL_HOOK)
    home = tmp_path / "home"

    def run_all(only: str, kill: str = ""):
        env = {**os.environ, "REVENA_HOME": str(home), "PYTHONUNBUFFERED": "1", "REVENA_THREADS": "1"}
        if kill:
            env.update(REVENA_TEST_KILL=kill, PYTHONPATH=os.pathsep.join(filter(None, [str(hook),
                                                                                      env.get("PYTHONPATH")])))
        return subprocess.run([sys.executable, str(REPO_ROOT / "run_all.py"), "--preset", "smoke", "--only", only,
                               "--output-dir", str(tmp_path / "executed"), "--no-progress"],
                              env=env, capture_output=True, text=True, timeout=900)

    def run_dir(arm):
        return home / "trained" / arm / "smoke" / "seed-1337"

    for only, kill, arm in (("01,03", "train:with_ltm", "with_ltm"), ("07", "train:reservoir", "reservoir"),
                            ("09", "sleep", None)):
        killed = run_all(only, kill)
        assert killed.returncode == -9, killed.stdout + killed.stderr           # it really was killed mid-way
        if arm:
            config = json.loads((run_dir(arm) / "config.json").read_text())
            assert not config["finished"] and config["steps_done"] == 6
        again = run_all(only)                                                     # the same command, again
        assert again.returncode == 0, again.stdout + again.stderr
        for number in only.split(","):
            assert re.search(rf"ok\s+{number}_", again.stdout), again.stdout
    # the interrupted runs ended exactly where uninterrupted ones do. The reference trains with the pipeline's one
    # thread: a CPU reduction split over two threads sums in another order, so bitwise equality needs the same count.
    monkeypatch.setenv("REVENA_HOME", str(home))
    monkeypatch.setenv("REVENA_THREADS", "1")
    threads = torch.get_num_threads()
    try:
        for arm, steps in (("with_ltm", 12), ("reservoir", 30)):
            config = json.loads((run_dir(arm) / "config.json").read_text())
            assert config["finished"] and config["steps_done"] == steps and config["schedule_changes"] == []
            reference = train("smoke", arm=arm, steps=steps, out_dir=tmp_path / "reference" / arm, progress=False)
            assert same_weights(run_dir(arm), reference)
    finally:
        torch.set_num_threads(threads)
    assert (home / "results" / "sleep.json").exists()
