"""Evaluation: bootstrap intervals on constructed data, per-document NLL, results.json schema from smoke runs
trained here (3 steps per arm), the missing-arm error, the CLI, and the result plots. CPU, seconds."""

import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from revena_lib.evaluate import (ARMS, BRIEF_KEYS, EvalError, bootstrap_mean_ci, bootstrap_ratio_ci, evaluate,
                                 evaluation_documents, document_nll, paired_bootstrap_mean_diff,
                                 paired_bootstrap_ratio_diff)


# ----------------------------------------------------------------------------- bootstrap on constructed data

def test_ratio_interval_contains_the_ratio_and_collapses_for_constant_data():
    rng = np.random.default_rng(0)
    chars = rng.integers(100, 1000, 50).astype(float)
    nll = chars * rng.normal(2.0, 0.2, 50)
    lo, hi = bootstrap_ratio_ci(nll, chars, samples=500, seed=1)
    assert lo < nll.sum() / chars.sum() < hi and hi - lo < 0.3
    assert bootstrap_ratio_ci(2.0 * chars, chars, samples=100) == pytest.approx([2.0, 2.0])


def test_paired_ratio_difference_sees_a_small_consistent_gain():
    rng = np.random.default_rng(0)
    chars = rng.integers(100, 1000, 40).astype(float)
    base = chars * rng.normal(2.0, 0.5, 40)          # documents differ a lot ...
    ltm = base - 0.05 * chars                         # ... but the LTM is better by exactly 0.05 bpc on each
    paired = paired_bootstrap_ratio_diff(base, ltm, chars, samples=500, seed=0)
    assert paired["diff"] == pytest.approx(-0.05)
    assert paired["ci95"] == pytest.approx([-0.05, -0.05], abs=1e-9)   # pairing removes document variance
    assert paired["p_b_better"] == 1.0
    # the unpaired per-arm intervals overlap: only the paired test sees the gain
    lo_b, hi_b = bootstrap_ratio_ci(base, chars, 500, 0)
    lo_l, hi_l = bootstrap_ratio_ci(ltm, chars, 500, 0)
    assert lo_b < hi_l


def test_mean_intervals():
    a = np.array([0, 1] * 50, float)
    lo, hi = bootstrap_mean_ci(a, samples=1000, seed=0)
    assert lo < 0.5 < hi
    d = paired_bootstrap_mean_diff(a, np.ones_like(a), samples=1000, seed=0)
    assert d["diff"] == pytest.approx(0.5) and d["ci95"][0] > 0.3
    assert all(math.isnan(x) for x in bootstrap_mean_ci([], 10))


def test_document_nll_is_the_models_loss(smoke_data):
    from revena_lib.config import get_preset
    from revena_lib.data import load_split
    from revena_lib.models.transformer import RevenaLM

    torch.manual_seed(0)
    model = RevenaLM(get_preset("smoke").model).eval()
    val = load_split("val")
    docs = evaluation_documents(val, max_docs=2, max_tokens_per_doc=200)
    assert [d["truncated"] for d in docs] == [True, True]
    enc = __import__("revena_lib.tokenizer", fromlist=["get_tokenizer"]).get_tokenizer()
    assert docs[0]["characters"] == len(enc.decode(docs[0]["tokens"][1:].tolist()))
    nll = document_nll(model, docs, torch.device("cpu"))
    idx = torch.as_tensor(docs[0]["tokens"])[None]
    with torch.no_grad():
        loss = model(idx[:, :-1], targets=idx[:, 1:]).loss
    assert nll["nll_bits"][0] == pytest.approx(float(loss) * (idx.shape[1] - 1) / math.log(2), rel=1e-4)
    assert nll["memory_hit_rate"] == 0.0 and nll["predicted_tokens"] == 2 * 199
    whole = evaluation_documents(val, max_docs=0, max_tokens_per_doc=0)
    assert len(whole) == val.num_docs and sum(d["characters"] for d in whole) == val.characters


# ----------------------------------------------------------------------------- results.json from smoke runs

@pytest.fixture(scope="module")
def trained_home(smoke_home, tmp_path_factory):
    """A copy of the smoke data with both arms trained for 3 steps."""
    from revena_lib.train import train

    home = tmp_path_factory.mktemp("eval_home")
    shutil.copytree(smoke_home / "data", home / "data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("REVENA_HOME", str(home))
        for with_ltm in (False, True):
            train("smoke", with_ltm=with_ltm, steps=3, progress=False, device="cpu")
    return home


@pytest.fixture(scope="module")
def results(trained_home):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("REVENA_HOME", str(trained_home))
        return evaluate("smoke", device="cpu", progress=False)


def test_results_json_has_the_briefs_schema(trained_home, results):
    on_disk = json.loads((trained_home / "results" / "results.json").read_text())
    assert set(on_disk) == {"baseline", "with_ltm"}
    assert on_disk["baseline"]["bpc"] == results["baseline"]["bpc"]
    for arm in ARMS:
        for key in BRIEF_KEYS:
            assert isinstance(on_disk[arm][key], float), (arm, key)
        assert 0 < on_disk[arm]["bpc"] < 20 and on_disk[arm]["tokens_per_sec"] > 0
        assert 0.0 <= on_disk[arm]["long_range_recall"] <= 1.0
        assert set(on_disk[arm]["recall_by_distance"]) == {"32", "256"}
        run = on_disk[arm]["run"]
        assert run["corpus"] == "sotu" and run["preset"] == "smoke" and run["seeds"] == [1337]
        assert run["device"] == "cpu" and run["date"]
        lo, hi = on_disk[arm]["ci95"]["bpc"]
        assert lo <= on_disk[arm]["bpc"] <= hi
    assert on_disk["baseline"]["memory_hit_rate"] == 0.0
    assert on_disk["baseline"]["routed_token_ratio"] == 0.0
    assert on_disk["with_ltm"]["routed_token_ratio"] > 0.0    # an untrained model routes nearly every token
    vs = on_disk["with_ltm"]["vs_baseline"]
    assert vs["bpc"]["diff"] == pytest.approx(on_disk["with_ltm"]["bpc"] - on_disk["baseline"]["bpc"])
    assert set(vs) >= {"bpc", "long_range_recall", "long_range_recall_logprob_bits"}
    evaluation = on_disk["baseline"]["evaluation"]
    assert evaluation["documents"] == 3 and evaluation["truncated_documents"] >= 1
    details = json.loads((trained_home / "results" / "results_details.json").read_text())
    assert len(details["arms"]["with_ltm"]["recall"]) == evaluation["recall_items"]


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
    from revena_lib.plots import results_plotly, save_results_plots

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
    with pytest.raises(EvalError, match=r"n_embd.*differ only in the LTM"):
        evaluate(None, device="cpu", progress=False)


def test_runs_of_several_presets_need_a_choice(trained_home, tmp_path, monkeypatch):
    home = tmp_path / "home"
    shutil.copytree(trained_home, home)
    for arm in ("baseline", "with_ltm"):  # pretend a second preset's runs sit beside the smoke ones
        other = home / "trained" / arm / "other" / "seed-1337"
        shutil.copytree(home / "trained" / arm / "smoke" / "seed-1337", other)
        config = json.loads((other / "config.json").read_text())
        config["preset"] = "other"
        (other / "config.json").write_text(json.dumps(config))
    monkeypatch.setenv("REVENA_HOME", str(home))
    with pytest.raises(EvalError, match=r"several presets \(other, smoke\).*--preset"):
        evaluate(None, device="cpu", progress=False)
