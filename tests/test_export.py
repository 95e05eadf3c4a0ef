"""Export to the Hugging Face Hub layout: identical logits after from_pretrained for every model family, the model
card, refusal to overwrite, and a push that fails at once, in one line, without a network."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from revena_lib.arms import ARMS


@pytest.fixture(scope="module")
def trained_runs(smoke_home, tmp_path_factory):
    """One 2-step smoke run of the first arm of every model family."""
    from revena_lib.training.loop import train

    home = tmp_path_factory.mktemp("export_home")
    shutil.copytree(smoke_home / "data", home / "data")
    firsts = {}
    for name, arm in ARMS.items():
        firsts.setdefault(arm.family, name)
    firsts.setdefault("with_ltm", "with_ltm")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("REVENA_HOME", str(home))
        runs = {arm: train("smoke", arm=arm, steps=2, progress=False, device="cpu") for arm in set(firsts.values())}
    return home, runs


def test_export_round_trip_gives_identical_logits_for_every_family(trained_runs, tmp_path, monkeypatch):
    from revena_lib.training.checkpoint import load_model
    from revena_lib.training.export import export_run, from_pretrained

    home, runs = trained_runs
    monkeypatch.setenv("REVENA_HOME", str(home))
    for arm, run in runs.items():
        out = export_run(run, tmp_path / arm)
        assert {p.name for p in out.iterdir()} >= {"model.safetensors", "config.json", "README.md", "gpt2.tiktoken"}
        original, _ = load_model(run)
        loaded, tokenizer = from_pretrained(out)
        idx = torch.tensor([[tokenizer.eot_token] + tokenizer.encode("Fellow citizens of the Senate, the union is strong.") * 6])
        with torch.no_grad():
            assert torch.equal(original(idx).logits, loaded(idx).logits), arm
        card = (out / "README.md").read_text()
        assert f"`{arm}`" in card and "How to load" in card and "trainable parameters" in card
        assert json.loads((out / "config.json").read_text())["arm"] == arm


def test_export_refuses_to_overwrite_and_the_cli_explains(trained_runs, tmp_path, monkeypatch):
    from revena_lib.training.export import ExportError, export_run

    home, runs = trained_runs
    monkeypatch.setenv("REVENA_HOME", str(home))
    out = export_run(runs["with_ltm"], tmp_path / "x")
    with pytest.raises(ExportError, match="not empty.*--force"):
        export_run(runs["with_ltm"], out)
    export_run(runs["with_ltm"], out, force=True)
    help_run = subprocess.run([sys.executable, "-m", "revena_lib.export", "--help"], capture_output=True, text=True)
    assert help_run.returncode == 0 and "--push" in help_run.stdout and "safetensors" in help_run.stdout


@pytest.mark.parametrize("env", [{"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": "http://127.0.0.1:9"}])
def test_push_without_a_network_fails_at_once_in_one_line(trained_runs, tmp_path, env):
    home, runs = trained_runs
    environment = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_ENDPOINT")}
    environment.update(env, REVENA_HOME=str(home))
    result = subprocess.run([sys.executable, "-m", "revena_lib.export", str(runs["baseline"]), "--out",
                             str(tmp_path / "e"), "--push", "someone/revena-test"], capture_output=True, text=True,
                            env=environment, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    error = [l for l in result.stderr.splitlines() if l.startswith("error: ")]
    assert len(error) == 1 and "cannot push to the Hugging Face Hub" in error[0]
    assert (tmp_path / "e" / "model.safetensors").exists()          # the export itself is kept
