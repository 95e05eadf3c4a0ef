"""Sleep (sleep/consolidation.py, sleep/experiment.py): the source run is never touched, replay (b) is exactly what the
LTM stored, a fact of the day is not known closed-book before sleep and can be after it, and the whole procedure
is deterministic under a seed."""

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from smoke_runs import trained_smoke_home
from revena_lib.evaluation.session import load_run
from revena_lib.sleep.consolidation import (DayConfig, SleepConfig, SleepError, closed_book_items, day_from_texts,
                                            make_days, recall_scores, replay_ltm, replay_text, sleep, wake)
from revena_lib.sleep.experiment import configured, fact_table, pick_arm, run_experiment


@pytest.fixture(scope="module")
def home(smoke_home, tmp_path_factory):
    """An artefact root with smoke data and two short smoke runs (with_ltm, baseline)."""
    return trained_smoke_home(smoke_home, tmp_path_factory, "sleep_home", ("with_ltm", "baseline"))


@pytest.fixture
def env(home, monkeypatch):
    monkeypatch.setenv("REVENA_HOME", str(home))
    return home


def run_of(home, arm="with_ltm"):
    return load_run(home / "trained" / arm / "smoke" / "seed-1337")


def small_days(n_days=1):
    from revena_lib.data.splits import load_split
    return make_days(load_split("val"), DayConfig(n_days=n_days, docs_per_day=1, facts_per_day=2, tokens_per_doc=320))


def fingerprint(directory: Path) -> dict:
    return {str(p.relative_to(directory)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(directory.rglob("*")) if p.is_file()}


def test_days_plant_cueable_facts_in_held_out_documents(env):
    days = small_days(2)
    from revena_lib.data.splits import load_split
    enc = load_split("val").tokenizer
    assert days[0].source_documents != days[1].source_documents
    cues = [f.cue for d in days for f in d.facts]
    assert len(set(cues)) == len(cues)                       # every fact has its own cue
    for day in days:
        for f in day.facts:
            text = enc.decode(day.documents[f.document][f.start:f.end])
            assert text == f" {f.cue}{f.answer}."
            assert day.documents[f.document][0] == enc.eot_token


def test_sleep_never_touches_the_source_run(env, tmp_path):
    source = env / "trained" / "with_ltm" / "smoke" / "seed-1337"
    before = fingerprint(source)
    run = run_of(env)
    weights = {k: v.clone() for k, v in run.model.state_dict().items()}
    day = small_days()[0]
    slept, record = sleep(run, wake(run, day), SleepConfig(strategy="text", steps=3, batch_size=2, seq_len=64),
                          tmp_path / "night")
    assert record["steps"] == 3
    assert fingerprint(source) == before                                   # files: same bytes, same mtimes
    for k, v in run.model.state_dict().items():                           # and the loaded model is unchanged
        assert torch.equal(v, weights[k]), k
    assert any(not torch.equal(v, weights[k]) for k, v in slept.model.state_dict().items())
    reopened = load_run(tmp_path / "night")                               # a new run directory that loads
    assert reopened.config["sleep_lineage"][-1]["source_run"] == str(source)
    for k, v in reopened.model.state_dict().items():
        assert torch.equal(v, slept.model.state_dict()[k])
    with pytest.raises(SleepError, match="source run"):
        sleep(run, wake(run, day), SleepConfig(steps=1), source)


def test_ltm_replay_is_exactly_what_the_ltm_stored(env):
    run = run_of(env)
    day = small_days()[0]
    # a barely trained model finds every token surprising: cut at the median so the LTM stores about half of them
    median = float(np.median(wake(run, day).surprisal_bits[0][1:]))
    run.model.cfg = dataclasses.replace(run.model.cfg, ltm_write_threshold_bits=median)
    w = wake(run, day)
    # what the LTM wrote, read straight from the model's own trace over each document
    with torch.no_grad():
        written = [torch.nonzero(run.model(torch.tensor([doc]), introspect=True).trace.routed[0])[:, 0].tolist()
                   for doc in day.documents]
    assert w.stored == written and 0 < sum(map(len, written)) < sum(len(d) - 1 for d in day.documents)
    for context in (0, 5, 32):
        rows = replay_ltm(w, SleepConfig(ltm_context=context, seq_len=64))
        targets = sorted((r.document, r.start + i) for r in rows for i, t in enumerate(r.targets) if t)
        assert targets == sorted((j, p) for j, s in enumerate(written) for p in s)      # each stored token once
        for r in rows:                                                                  # with the real tokens
            assert r.tokens == day.documents[r.document][r.start:r.start + len(r.tokens)]
            for i in np.flatnonzero(r.targets):                                        # each after its context
                assert i >= min(max(1, context), r.start + i)
    # text replay trains every token but the document's opening one, each once
    rows = replay_text(w, SleepConfig(seq_len=64, ltm_context=8))
    targets = sorted((r.document, r.start + i) for r in rows for i, t in enumerate(r.targets) if t)
    assert targets == [(j, p) for j, doc in enumerate(day.documents) for p in range(1, len(doc))]


def test_ltm_strategy_needs_an_ltm(env, tmp_path):
    run = run_of(env, "baseline")
    w = wake(run, small_days()[0])
    assert w.stored == [[]] and not w.has_ltm
    with pytest.raises(SleepError, match="has no LTM"):
        sleep(run, w, SleepConfig(strategy="ltm", steps=1), tmp_path / "x")


def test_a_fact_is_recalled_closed_book_only_after_sleeping_on_it(env, tmp_path):
    """The control: before sleep (and with the 'none' strategy) the day's fact is not recalled without context;
    replaying the day into the weights makes it recalled. So retention measured after sleep comes from sleep."""
    run = run_of(env)
    enc = run.tokenizer
    day = day_from_texts(["Notes from today. The boiler room code is 7731. Nothing else happened."],
                         [("The boiler room code is", " 7731")], enc)
    items = closed_book_items(day.facts, enc)
    assert recall_scores(run.model, items, enc)[0]["exact"] == 0
    w = wake(run, day)
    none, _ = sleep(run, w, SleepConfig(strategy="none"), tmp_path / "none")
    assert recall_scores(none.model, items, enc)[0]["exact"] == 0
    cfg = SleepConfig(strategy="text", steps=60, lr=1e-2, batch_size=1, seq_len=64)
    slept, record = sleep(run, w, cfg, tmp_path / "text")
    after = recall_scores(slept.model, items, enc)[0]
    assert after["exact"] == 1, after
    assert record["loss_last"] < record["loss_first"]


def test_day_from_texts_refuses_a_fact_that_is_not_in_the_text(env):
    enc = run_of(env).tokenizer
    day = day_from_texts(["First a sentence.", "Notes. The boiler room code is 7731. Done."],
                         [("The boiler room code is ", "7731")], enc)
    f = day.facts[0]
    assert (f.cue, f.answer, f.document) == ("The boiler room code is", " 7731", 1)
    assert enc.decode(day.documents[1][f.start:f.end]).strip() == "The boiler room code is 7731"
    with pytest.raises(SleepError, match="does not appear"):
        day_from_texts(["The code is 1."], [("The code is", " 2")], enc)


def test_unknown_strategy_is_refused(env, tmp_path):
    run = run_of(env)
    with pytest.raises(SleepError, match="not one of"):
        sleep(run, wake(run, small_days()[0]), SleepConfig(strategy="nap"), tmp_path / "x")


def _tensors(directory: Path) -> dict:
    return torch.load(directory / "checkpoint.pt", weights_only=True)["model"]


def test_the_whole_procedure_is_deterministic_under_a_seed(env, tmp_path):
    cfg = SleepConfig(steps=3, batch_size=2, seq_len=64, dream_rows=2, dream_source="generated")
    runs = []
    for name in ("a", "b"):
        runs.append(run_experiment("with_ltm", "smoke", strategies=("ltm+dreams", "text"), sleep_cfg=cfg,
                                   out_root=tmp_path / name, results_path=tmp_path / f"{name}.json", progress=False))
    a, b = runs
    for la, lb in zip(a["lineages"], b["lineages"]):
        for key in ("closed_book", "general_bits", "awake", "day_bits_before", "day_bits_after"):
            assert la[key] == lb[key], key
        assert [n["losses"] for n in la["nights"]] == [n["losses"] for n in lb["nights"]]
        assert la["nights"][0]["dream_samples"] == lb["nights"][0]["dream_samples"]
        for day in range(1, len(a["days"]) + 1):
            ta, tb = _tensors(Path(la["dir"]) / f"day-{day}"), _tensors(Path(lb["dir"]) / f"day-{day}")
            assert all(torch.equal(ta[k], tb[k]) for k in ta)
    # a second call resumes from the nights on disk and gives the same numbers
    again = run_experiment("with_ltm", "smoke", strategies=("ltm+dreams", "text"), sleep_cfg=cfg,
                           out_root=tmp_path / "a", results_path=tmp_path / "again.json", progress=False)
    assert [lin["closed_book"] for lin in again["lineages"]] == [lin["closed_book"] for lin in a["lineages"]]
    assert json.dumps(json.loads((tmp_path / "a.json").read_text())["summary"]) == json.dumps(a["summary"])
    table = fact_table(a, "text")
    assert list(table.columns[-2:]) == ["after sleep 1", "after sleep 2"] and len(table) == 4


def test_notebook_parameters_pick_an_arm_and_strategies_that_can_run():
    assert pick_arm("with_ltm", "", "none,text,ltm") == ("with_ltm", ["none", "text", "ltm"], "")
    assert pick_arm("with_ltm", "baseline,ltm_random_write", "text,ltm")[:2] == ("ltm_random_write", ["text", "ltm"])
    arm, strategies, note = pick_arm("with_ltm", "baseline,reservoir", "none,text,ltm,ltm+dreams")
    assert (arm, strategies) == ("baseline", ["none", "text"]) and "no LTM" in note
    day_cfg, sleep_cfg, _ = configured("cpu", days=2, steps=0, lr=0.01, dream_source="train")
    assert (day_cfg.n_days, sleep_cfg.steps, sleep_cfg.lr, sleep_cfg.dream_source) == (2, 0, 0.01, "train")
    with pytest.raises(SleepError, match="dream_source"):
        configured("smoke", dream_source="nightmares")
