"""Evaluation: bootstrap intervals on constructed data, per-document NLL, results.json schema from smoke runs
trained here (3 steps per arm), the missing-arm error, the CLI, and the result plots. CPU, seconds."""

import json
import math
import os
import shutil
import subprocess
import sys


import pytest
import torch

from smoke_runs import trained_smoke_home
from revena_lib.evaluation import EvalError
from revena_lib.evaluation.bpc import evaluation_documents, document_nll
from revena_lib.evaluation.results import BRIEF_KEYS, evaluate, result_arms, verdict_lines


# ----------------------------------------------------------------------------- (statistics: tests/test_stats.py)

def test_document_nll_is_the_models_loss(smoke_data):
    from revena_lib.config import get_preset
    from revena_lib.data.splits import load_split
    from revena_lib.models.transformer import RevenaLM

    torch.manual_seed(0)
    model = RevenaLM(get_preset("smoke").model).eval()
    val = load_split("val")
    docs = evaluation_documents(val, max_docs=2, max_tokens_per_doc=200)
    assert [d["truncated"] for d in docs] == [True, True]
    assert sum(d["bucket_characters"][0] + d["bucket_characters"][1] for d in docs) == sum(d["characters"] for d in docs)
    enc = __import__("revena_lib.data.tokenizer", fromlist=["get_tokenizer"]).get_tokenizer()
    assert docs[0]["characters"] == len(enc.decode(docs[0]["tokens"][1:].tolist()))
    nll = document_nll(model, docs, torch.device("cpu"))
    idx = torch.as_tensor(docs[0]["tokens"])[None]
    with torch.no_grad():
        loss = model(idx[:, :-1], targets=idx[:, 1:]).loss
    assert nll["nll_bits"][0] == pytest.approx(float(loss) * (idx.shape[1] - 1) / math.log(2), rel=1e-4)
    assert nll["counts"] == {} and nll["predicted_tokens"] == 2 * 199
    assert nll["bucket_bits"].sum(1) == pytest.approx(nll["nll_bits"])          # buckets partition the document
    whole = evaluation_documents(val, max_docs=0, max_tokens_per_doc=0)
    assert len(whole) == val.num_docs and sum(d["characters"] for d in whole) == val.characters


def test_evaluation_documents_are_a_seeded_sample(smoke_data):
    from revena_lib.data.splits import load_split

    val = load_split("val")
    picks = [[d["index"] for d in evaluation_documents(val, 2, 64, seed)] for seed in range(6)]
    assert picks[0] == [d["index"] for d in evaluation_documents(val, 2, 64, 0)]       # deterministic
    assert len({tuple(p) for p in picks}) > 1 and all(p == sorted(p) for p in picks)   # not always the first two


# ----------------------------------------------------------------------------- results.json from smoke runs

@pytest.fixture(scope="module")
def trained_home(smoke_home, tmp_path_factory):
    """A copy of the smoke data with three arms trained for 3 steps."""
    return trained_smoke_home(smoke_home, tmp_path_factory, "eval_home", ("baseline", "with_ltm", "ltm_random_write"))


@pytest.fixture(scope="module")
def results(trained_home):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("REVENA_HOME", str(trained_home))
        return evaluate("smoke", device="cpu", progress=False)


def test_results_json_has_the_briefs_schema(trained_home, results):
    on_disk = json.loads((trained_home / "results" / "results.json").read_text())
    assert set(on_disk) == {"baseline", "with_ltm", "ltm_random_write", "with_ltm_reads_off", "comparisons", "reference"}
    assert result_arms(on_disk) == ["baseline", "with_ltm", "ltm_random_write", "with_ltm_reads_off"]
    assert on_disk["baseline"]["bpc"] == results["baseline"]["bpc"]
    for arm in result_arms(on_disk):
        for key in BRIEF_KEYS:
            assert isinstance(on_disk[arm][key], float), (arm, key)
        assert 0 < on_disk[arm]["bpc"] < 20 and on_disk[arm]["tokens_per_sec"] > 0
        assert 0.0 <= on_disk[arm]["long_range_recall"] <= 1.0
        assert set(on_disk[arm]["recall_by_distance"]) == {"32", "256"}
        assert set(on_disk[arm]["bpc_by_position"]) == {"0-127", "128-511"}   # smoke documents are cut at 512
        run = on_disk[arm]["run"]
        assert run["corpus"] == "sotu" and run["preset"] == "smoke" and run["seeds"] == [1337]
        assert run["device"] == "cpu" and run["date"] and run["logprob_dtype"] == "fp32"
        assert run["throughput"]["timed_batches"] >= 20
        lo, hi = on_disk[arm]["ci95"]["bpc"]
        assert lo <= on_disk[arm]["bpc"] <= hi
        assert set(on_disk[arm]["per_seed"]) == {"1337"}
    assert on_disk["baseline"]["memory_hit_rate"] == 0.0 and on_disk["with_ltm_reads_off"]["memory_hit_rate"] == 0.0
    assert on_disk["baseline"]["routed_token_ratio"] == 0.0
    assert on_disk["with_ltm"]["routed_token_ratio"] > 0.0    # an untrained model routes nearly every token
    # random writes: the same number of tokens as the surprisal rule, chunk by chunk
    assert on_disk["ltm_random_write"]["routed_token_ratio"] == pytest.approx(on_disk["with_ltm"]["routed_token_ratio"], abs=0.05)
    comparisons = on_disk["comparisons"]
    assert set(comparisons) == {"with_ltm", "ltm_random_write", "with_ltm_reads_off", "with_ltm_vs_with_ltm_reads_off"}
    vs = comparisons["with_ltm"]
    assert vs["bpc"]["diff"] == pytest.approx(on_disk["with_ltm"]["bpc"] - on_disk["baseline"]["bpc"])
    for key in ("bpc", "bits_per_byte"):
        assert vs[key]["verdict"] in ("better", "worse", "no detectable difference")
    # 3-step smoke models do not copy inside their window: no recall verdict, and the reason is given
    assert on_disk["baseline"]["positive_control"]["passed"] is False
    for key in ("long_range_recall", "long_range_recall_logprob_bits", "recall_beyond_field",
                "recall_beyond_field_logprob_bits"):
        assert vs[key]["verdict"] == "cannot tell" and "positive control failed" in vs[key]["why"]
        assert vs[key]["verdict_if_copying"] in ("better", "worse", "no detectable difference")
    assert "no positive control" in vs["summary"]
    # smoke: 2 layers x 127 = 254 reach, so distance 256 (4 items) is beyond the receptive field
    assert on_disk["with_ltm"]["recall_beyond_field_items"] == 4
    assert on_disk["with_ltm"]["recall_beyond_field_logprob_bits"] == pytest.approx(
        on_disk["with_ltm"]["recall_by_distance"]["256"]["logprob_bits"])
    assert any(line.startswith("with_ltm vs baseline: BPC: ") for line in verdict_lines(on_disk))
    assert on_disk["reference"]["unigram_bpc"] > on_disk["baseline"]["bpc"] * 0.5
    evaluation = on_disk["baseline"]["run"]
    assert len(evaluation["documents"]) == 3 and evaluation["truncated_documents"] >= 1
    # issue 10's measurements: induction score for every arm; lifetime, in-memory subset and cosines with an LTM
    for arm in result_arms(on_disk):
        ind = on_disk[arm]["induction"]
        assert ind["first_copy_nats"] - ind["second_copy_nats"] == pytest.approx(ind["score_nats"], abs=1e-6)
        assert set(ind["per_seed"]) == {"1337"} and ind["ci95"][0] <= ind["score_nats"] <= ind["ci95"][1]
    assert "ltm_entry_lifetime" not in on_disk["baseline"] and "answer_key_cosine" not in on_disk["baseline"]
    assert "answer_key_cosine" not in on_disk["with_ltm_reads_off"]      # reads off: no read to compare
    for arm in ("with_ltm", "ltm_random_write", "with_ltm_reads_off"):
        life = on_disk[arm]["ltm_entry_lifetime"]
        assert life["evicted"] + life["censored"] > 0 and set(life["quantiles"]) == {"q10", "q25", "q50", "q75", "q90"}
        table = on_disk[arm]["recall_in_memory"]["by_distance"]["32"]
        assert table["in_memory"]["n"] + table["not_in_memory"]["n"] == table["all"]["n"] == on_disk[arm]["recall_by_distance"]["32"]["n"]
        assert 0 <= on_disk[arm]["recall_by_distance"]["32"]["answer_in_memory"] <= 1
    cosine = on_disk["with_ltm"]["answer_key_cosine"]
    assert cosine["cut"] == 0.8 and cosine["answer"]["n"] == on_disk["with_ltm"]["recall_by_distance"]["32"]["n"] * 2
    assert 0 <= cosine["random"]["share_any_head_above_cut"] <= 1
    details = json.loads((trained_home / "results" / "results_details.json").read_text())
    assert len(details["arms"]["with_ltm"]["recall"][0]) == evaluation["recall_items"]


def test_arms_can_be_chosen(trained_home, tmp_path, monkeypatch):
    monkeypatch.setenv("REVENA_HOME", str(trained_home))
    only = evaluate("smoke", arms="with_ltm", results_dir=tmp_path, device="cpu", progress=False)
    assert result_arms(only) == ["baseline", "with_ltm", "with_ltm_reads_off"]   # baseline always comes along
    with pytest.raises(EvalError, match=r"trained/full_attention/smoke.*--arm full_attention"):
        evaluate("smoke", arms="baseline,full_attention", results_dir=tmp_path, device="cpu", progress=False)
    with pytest.raises(ValueError, match="unknown arm 'nope'"):
        evaluate("smoke", arms="nope", results_dir=tmp_path, device="cpu", progress=False)


def test_missing_arm_names_the_directory_and_the_command(smoke_data):
    with pytest.raises(EvalError, match=r"trained/baseline/.*python -m revena_lib.train --preset smoke --baseline"):
        evaluate("smoke", device="cpu", progress=False)


def test_cli_help_and_missing_arm_error(smoke_home, tmp_path):
    env = dict(os.environ, REVENA_HOME=str(tmp_path))
    shutil.copytree(smoke_home / "data", tmp_path / "data")
    help_run = subprocess.run([sys.executable, "-m", "revena_lib.evaluate", "--help"], capture_output=True, text=True,
                              env=env)
    assert help_run.returncode == 0 and "--preset" in help_run.stdout and "--device" in help_run.stdout
    run = subprocess.run([sys.executable, "-m", "revena_lib.evaluate", "--preset", "smoke", "--quiet"],
                         capture_output=True, text=True, env=env)
    assert run.returncode == 1 and run.stderr.startswith("error: ") and "--baseline" in run.stderr
    assert "Traceback" not in run.stderr


def test_plots_from_results(results, tmp_path):
    from revena_lib.analysis.plots import results_plotly, save_results_plots

    paths = save_results_plots(results, tmp_path)
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = paths["html"].read_text()
    assert "<html>" in page and 'src="https://cdn.plot.ly' not in page and len(page) > 1_000_000  # plotly.js inlined
    fig = results_plotly(results)
    assert len(fig.data) >= 3


def test_arms_trained_differently_are_refused(trained_home, tmp_path, monkeypatch):
    home = tmp_path / "home"
    shutil.copytree(trained_home, home)
    config_path = home / "trained" / "baseline" / "smoke" / "seed-1337" / "config.json"
    config = json.loads(config_path.read_text())
    config["model"]["n_embd"] = 64
    config_path.write_text(json.dumps(config))
    monkeypatch.setenv("REVENA_HOME", str(home))
    with pytest.raises(EvalError, match=r"model.n_embd: 32 vs 64.*differ only in their row of the arm table"):
        evaluate(None, device="cpu", progress=False)


def test_runs_of_several_presets_need_a_choice(trained_home, tmp_path, monkeypatch):
    home = tmp_path / "home"
    shutil.copytree(trained_home, home)
    for arm in ("baseline", "with_ltm", "ltm_random_write"):  # pretend a second preset's runs sit beside the smoke ones
        other = home / "trained" / arm / "other" / "seed-1337"
        shutil.copytree(home / "trained" / arm / "smoke" / "seed-1337", other)
        config = json.loads((other / "config.json").read_text())
        config["preset"] = "other"
        (other / "config.json").write_text(json.dumps(config))
    monkeypatch.setenv("REVENA_HOME", str(home))
    with pytest.raises(EvalError, match=r"several presets \(other, smoke\).*--preset"):
        evaluate(None, device="cpu", progress=False)


def test_arms_trained_in_another_dtype_are_refused(trained_home, tmp_path, monkeypatch):
    home = tmp_path / "home"
    shutil.copytree(trained_home, home)
    config_path = home / "trained" / "with_ltm" / "smoke" / "seed-1337" / "config.json"
    config = json.loads(config_path.read_text())
    config["dtype"] = "fp16" if config["dtype"] != "fp16" else "fp32"
    config_path.write_text(json.dumps(config))
    monkeypatch.setenv("REVENA_HOME", str(home))
    with pytest.raises(EvalError, match=r"dtype: .*differ only in their row"):
        evaluate(None, device="cpu", progress=False)


def test_recall_verdicts_need_both_arms_to_copy_in_window(trained_home, results):
    """The gate can open: with the bar at 0 every arm 'copies', and the recall verdicts are the comparison's own; with
    the bar above the baseline's in-window exact match and below the arm's, the comparison says 'cannot tell'."""
    import dataclasses

    from revena_lib.config import get_preset

    preset = get_preset("smoke")
    preset.eval = dataclasses.replace(preset.eval, positive_control_exact=0.0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("REVENA_HOME", str(trained_home))
        open_gate = evaluate(preset, arms="baseline,with_ltm", device="cpu", progress=False)
    vs = open_gate["comparisons"]["with_ltm"]
    assert open_gate["baseline"]["positive_control"]["passed"] is True
    assert vs["long_range_recall"]["verdict"] in ("better", "worse", "no detectable difference")
    assert "why" not in vs["long_range_recall"] and "no positive control" not in vs["summary"]
    pc = results["with_ltm"]["positive_control"]
    assert set(pc["by_seed"]["1337"]) == {"32"}            # smoke: 32 is the only distance inside the window
    assert pc["threshold"] == 0.9 and pc["worst_seed_distance_exact"] == pc["by_seed"]["1337"]["32"]
    # every missed in-window key is listed, with what was written instead: as many as exact match says were missed
    n_items = results["with_ltm"]["recall_by_distance"]["32"]["n"]
    for seed, per in pc["by_seed"].items():
        misses = pc["misses"][seed]
        assert all(m["distance"] == 32 and m["answer"] != m["predicted"] for m in misses)
        assert len(misses) == round((1 - per["32"]) * n_items)


def test_positive_control_passes_only_when_every_seed_and_distance_copies():
    from revena_lib.evaluation.copying import positive_control

    assert positive_control({1: {32: 1.0, 96: 0.95}, 2: {32: 0.9, 96: 1.0}})["passed"] is True
    failed = positive_control({1: {32: 1.0, 96: 0.95}, 2: {32: 1.0, 96: 0.85}})
    assert failed["passed"] is False and failed["worst_seed_distance_exact"] == 0.85
    assert positive_control({})["passed"] is False


def test_missed_pass_keys_are_listed_with_whether_they_repeat_a_digit():
    from revena_lib.evaluation.copying import positive_control, positive_control_misses, repeated_digit

    assert repeated_digit(" 31557") and repeated_digit(" 70670") and not repeated_digit(" 12345")
    assert not repeated_digit(" 9") and not repeated_digit("")
    pc = positive_control({1: {32: 1.0, 96: 0.5}}, misses={1: [{"distance": 96, "answer": " 31557",
                                                                 "predicted": " 31555"}]})
    rows = positive_control_misses({"baseline": {"positive_control": pc}, "comparisons": {"x": 1}})
    assert rows == [{"arm": "baseline", "seed": "1", "distance": 96, "answer": " 31557", "predicted": " 31555",
                     "repeated digit": True}]
    assert positive_control_misses({"baseline": {"positive_control": positive_control({1: {32: 1.0}})}}) == []
