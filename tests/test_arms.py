"""The arm table (revena_lib/arms.py): overrides, parsing, and a new arm defined by a table row alone."""

import json
import shutil

import pytest

from revena_lib.arms import ARMS, Arm, ArmError, arm_preset, arm_style, parse_arms


def test_every_arm_builds_from_the_table():
    from revena_lib.models import FAMILIES

    for name, arm in ARMS.items():
        preset = arm_preset("smoke", name)
        assert preset.model.family == arm.family and arm.family in FAMILIES, name
        assert arm.description and arm_style(name)[0]
    assert arm_preset("smoke", "baseline").model == arm_preset("smoke", "baseline").model
    assert arm_preset("smoke", "with_ltm").model.use_ltm and not arm_preset("smoke", "baseline").model.use_ltm
    assert arm_preset("smoke", "ltm_random_write").model.ltm_write_rule == "random"
    assert arm_preset("cpu", "full_attention").model.window == arm_preset("cpu", "baseline").train.seq_len


def test_parse_arms_puts_the_baseline_first_and_refuses_unknown_names():
    assert parse_arms("with_ltm") == ("baseline", "with_ltm")
    assert parse_arms("with_ltm, baseline,with_ltm") == ("baseline", "with_ltm")
    assert parse_arms(["full_attention"]) == ("baseline", "full_attention")
    with pytest.raises(ArmError, match="unknown arm 'ltm'.*revena_lib/arms.py"):
        parse_arms("baseline,ltm")
    with pytest.raises(ArmError, match="no arms"):
        parse_arms(" , ")


def test_a_new_arm_is_one_row_in_the_table(smoke_home, tmp_path, monkeypatch):
    """Train and evaluate an arm that exists only as a table row: nothing else is edited."""
    from revena_lib.evaluation.results import evaluate
    from revena_lib.training.launch import train_arms
    from revena_lib.training.loop import train

    shutil.copytree(smoke_home / "data", tmp_path / "data")
    monkeypatch.setenv("REVENA_HOME", str(tmp_path))
    monkeypatch.setitem(ARMS, "ltm_strict", Arm("transformer", "LTM that reads only near-identical keys",
                                                {"use_ltm": True, "ltm_similarity_threshold": 0.95}))
    runs = train_arms("smoke", "ltm_strict", steps=2, progress=False, device="cpu")
    assert list(runs) == ["baseline seed 1337", "ltm_strict seed 1337"]
    config = json.loads((runs["ltm_strict seed 1337"] / "config.json").read_text())
    assert config["model"]["ltm_similarity_threshold"] == 0.95 and config["arm"] == "ltm_strict"
    results = evaluate("smoke", arms="ltm_strict", device="cpu", progress=False)
    assert results["ltm_strict"]["description"] == "LTM that reads only near-identical keys"
    assert results["comparisons"]["ltm_strict"]["against"] == "baseline"
    with pytest.raises(ValueError, match="unknown arm 'nope'"):
        train("smoke", arm="nope", steps=1, progress=False)


def test_parallel_training_processes_give_the_same_runs(smoke_home, tmp_path, monkeypatch):
    """Seeds and arms trained as parallel one-thread processes: the same run directories, finished, each with its
    console log; a failing job is reported with the path of its log."""
    from revena_lib.training import TrainError
    from revena_lib.training.launch import train_arms
    from revena_lib.training.runs import find_runs

    shutil.copytree(smoke_home / "data", tmp_path / "data")
    monkeypatch.setenv("REVENA_HOME", str(tmp_path))
    runs = train_arms("smoke", "with_ltm", seeds="1,2", steps=2, progress=False, parallel=2)
    assert list(runs) == ["baseline seed 1", "baseline seed 2", "with_ltm seed 1", "with_ltm seed 2"]
    assert find_runs("with_ltm", preset="smoke") == [runs["with_ltm seed 1"], runs["with_ltm seed 2"]]
    assert all((run / "train.log").exists() for run in runs.values())
    (tmp_path / "data" / "meta.json").write_text("{}")                    # every job now fails
    with pytest.raises(TrainError, match=r"failed \(exit 1\).*train.log"):
        train_arms("smoke", "baseline", seeds="3", steps=2, progress=False, parallel=2)


def test_the_long_lifetime_ltm_keeps_an_entry_past_the_farthest_cpu_distance():
    """Its top-k rule writes k tokens per chunk, so an entry is evicted capacity / k chunks after its write."""
    from revena_lib.config import get_preset

    model = arm_preset("cpu", "ltm_long_lifetime").model
    lifetime = model.ltm_capacity // model.ltm_write_topk * model.chunk_size
    assert model.use_ltm and model.ltm_write_rule == "topk" and lifetime == 1024
    assert lifetime > max(get_preset("cpu").eval.recall_distances)
