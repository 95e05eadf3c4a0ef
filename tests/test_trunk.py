"""Pretrained trunks (training/trunk.py, evaluation/pretrain.py): built and recorded by pretrain, verified when loaded,
and the start of every transformer arm's fresh run when init_from names one; other families start random and say why."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from revena_lib.arms import arm_preset
from revena_lib.config import PRESETS, get_preset, preset_copy
from revena_lib.data.splits import load_meta, load_split
from revena_lib.evaluation import EvalError
from revena_lib.evaluation.arm_runs import check_arms_match
from revena_lib.evaluation.pretrain import build_parser, pretrain
from revena_lib.evaluation.results import _start_note
from revena_lib.models import build_model
from revena_lib.paths import file_sha256
from revena_lib.training import TrainError
from revena_lib.training.batches import training_batch
from revena_lib.training.checkpoint import load_checkpoint
from revena_lib.training.device import DTYPES, autocast
from revena_lib.training.export import init_lines
from revena_lib.training.loop import train
from revena_lib.training.trunk import (RECORD_FILE, TRUNK_FILE, TrunkError, init_from_trunk, load_trunk, save_trunk,
                                      trunk_dir, trunk_preset, trunk_run_dir)

REPO = Path(__file__).resolve().parent.parent
SEED = 1337
PROBE = 2   # pass keys per distance in the tests' positive control: seconds, not a measurement


@pytest.fixture(scope="module")
def trunk_home(smoke_home, tmp_path_factory):
    """An artefact root with the smoke data and the smoke trunk of seed 1337 (4 steps), built once."""
    home = tmp_path_factory.mktemp("trunk_home")
    shutil.copytree(smoke_home / "data", home / "data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("REVENA_HOME", str(home))
        pretrain("smoke", SEED, progress=False, device="cpu", probe_items=PROBE)
    return home


@pytest.fixture
def home(trunk_home, monkeypatch):
    monkeypatch.setenv("REVENA_HOME", str(trunk_home))
    return trunk_home


def fresh_model(arm: str):
    """The arm's smoke model as train() builds it: same seed, the data's vocabulary."""
    preset = arm_preset("smoke", arm)
    preset.model.vocab_size = load_split("val").vocab_size
    torch.manual_seed(SEED)
    return build_model(preset.model), preset


def copied_trunk(tmp_path) -> Path:
    """A private copy of the smoke trunk at trunks/smoke/seed-1337 under tmp_path (tests may break it)."""
    target = tmp_path / "trunks" / "smoke" / f"seed-{SEED}"
    shutil.copytree(trunk_dir("smoke", SEED), target)
    return target


def edit_record(directory: Path, edit) -> None:
    record = json.loads((directory / RECORD_FILE).read_text())
    edit(record)
    (directory / RECORD_FILE).write_text(json.dumps(record))


# ----------------------------------------------------------------------------- configuration

def test_cpu_fine_tunes_from_its_trunks_under_its_recipe_and_the_others_start_random():
    from revena_lib.training.recipes import apply_recipe

    assert {name: get_preset(name).train.init_from for name in PRESETS} == {"smoke": "", "cpu": "trunk", "paper": ""}
    cpu = get_preset("cpu")                                    # the cpu preset is its recipe, field by field
    as_recipe = apply_recipe("cpu", cpu.train.recipe)
    assert (as_recipe.train, as_recipe.model) == (cpu.train, cpu.model)
    assert cpu.model.qk_conv == 2 and get_preset("paper").model.qk_conv == 0
    smoke = get_preset("smoke")
    assert smoke.pretrain.steps == 4 and smoke.pretrain.recipe == ""
    assert trunk_preset("smoke").train.steps == 4 and trunk_preset("smoke").train.seq_len == smoke.train.seq_len
    cpu = trunk_preset("cpu")                                  # the cpu trunk: its PretrainConfig's recipe and steps
    assert (cpu.train.recipe, cpu.train.steps) == (get_preset("cpu").pretrain.recipe, get_preset("cpu").pretrain.steps)
    with_recipe = get_preset("cpu")
    with_recipe.pretrain.recipe, with_recipe.train.init_from = "short_dense_smear", "trunk"
    trunk_cfg = trunk_preset(with_recipe, steps=50)
    assert (trunk_cfg.train.recipe, trunk_cfg.train.seq_len, trunk_cfg.train.steps) == ("short_dense_smear", 128, 50)
    assert trunk_cfg.model.smear_key is True and trunk_cfg.train.init_from == ""   # a trunk never starts from a trunk


def test_help_explains_trunks():
    text = build_parser().format_help()
    for words in ("trunks/<preset>/seed-<seed>", "--resume", "--seeds", "--steps", "--no-progress", "make run",
                  "init_from", "rebuilds"):
        assert words in text, words


# ----------------------------------------------------------------------------- pretrain

def test_pretrain_writes_the_trunk_and_its_record(home):
    directory = trunk_dir("smoke", SEED)
    assert directory == home / "trunks" / "smoke" / f"seed-{SEED}"
    record = json.loads((directory / RECORD_FILE).read_text())
    assert record["sha256"] == file_sha256(directory / TRUNK_FILE)
    assert record["command"] == f"python -m revena_lib.pretrain --preset smoke --seeds {SEED} --steps 4"
    assert (record["preset"], record["seed"], record["recipe"], record["steps"]) == ("smoke", SEED, "", 4)
    assert record["tokens_seen"] == 4 * 2 * 256 and record["train_minutes"] >= 0
    assert record["torch_version"] == torch.__version__ and record["device"] == "cpu" and record["dtype"]
    assert record["model"]["n_embd"] == 32 and record["model"]["use_ltm"] is False
    meta = load_meta()
    assert record["data"]["corpus"] == "sotu" and record["data"]["tokenizer"]["name"] == "gpt2"
    assert record["data"]["train_sha256"] == meta["splits"]["train"]["sha256"]
    assert record["data"]["val_sha256"] == meta["splits"]["val"]["sha256"]
    run = trunk_run_dir("smoke", SEED)
    last = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    assert record["val_bpc"] == last["val_bpc"]
    control = record["positive_control"]
    for distance in ("32", "96"):
        assert {"exact", "log2p"} <= control["passkey"][distance].keys()
    assert isinstance(control["induction_score_nats"], float) and control["passed"] is False
    state, loaded_record = load_trunk(directory)
    assert loaded_record == record
    weights = load_checkpoint(run / "checkpoint.pt")["model"]
    assert state.keys() == weights.keys() and all(torch.equal(state[k], weights[k]) for k in state)
    assert all(v.dtype == torch.float32 for v in state.values())


def test_pretrain_again_leaves_a_finished_trunk_as_it_is(home, capsys):
    directory, run = trunk_dir("smoke", SEED), trunk_run_dir("smoke", SEED)
    before = [(p.name, p.stat().st_mtime_ns) for p in (directory / TRUNK_FILE, directory / RECORD_FILE,
                                                       run / "checkpoint.pt")]
    for resume in (True, False):
        assert pretrain("smoke", SEED, resume=resume, progress=False, probe_items=PROBE) == directory
        assert "nothing to do" in capsys.readouterr().err
    after = [(p.name, p.stat().st_mtime_ns) for p in (directory / TRUNK_FILE, directory / RECORD_FILE,
                                                      run / "checkpoint.pt")]
    assert after == before
    with pytest.raises(TrunkError, match="holds a trunk of 4 steps, not 6: pass --resume"):
        pretrain("smoke", SEED, steps=6, progress=False)
    # a preset whose pretrain recipe changed refuses the trunk (and, without one, the run) of the old recipe: a resume
    # would keep the old recipe, so only --force trains one under the new
    other = preset_copy("smoke")
    other.pretrain.recipe = "short_dense"
    with pytest.raises(TrunkError, match=r"holds a trunk trained under recipe '', not the preset's 'short_dense' "
                                         r"\(PretrainConfig.recipe\): pass --force"):
        pretrain(other, SEED, progress=False)
    saved = {p: p.read_bytes() for p in (directory / TRUNK_FILE, directory / RECORD_FILE)}
    try:
        for p in saved:
            p.unlink()
        with pytest.raises(TrunkError, match=r"holds a run trained under recipe '', not the preset's 'short_dense'"):
            pretrain(other, SEED, progress=False)
    finally:
        for p, data in saved.items():
            p.write_bytes(data)
    assert [(p.name, p.stat().st_size) for p in saved] == [(p.name, len(d)) for p, d in saved.items()]


def test_an_interrupted_pretrain_continues_exactly_with_resume(smoke_home, tmp_path, monkeypatch, trunk_home):
    shutil.copytree(smoke_home / "data", tmp_path / "data")
    monkeypatch.setenv("REVENA_HOME", str(tmp_path))
    run = trunk_run_dir("smoke", SEED)
    train(trunk_preset("smoke"), seed=SEED, out_dir=run, progress=False, stop_at=2)   # as a Ctrl-C at step 2 leaves it
    with pytest.raises(TrainError, match="--resume"):
        pretrain("smoke", SEED, progress=False, probe_items=PROBE)
    directory = pretrain("smoke", SEED, resume=True, progress=False, probe_items=PROBE)
    whole = load_trunk(trunk_home / "trunks" / "smoke" / f"seed-{SEED}")[0]
    resumed = load_trunk(directory)[0]
    assert all(torch.allclose(resumed[k], whole[k], atol=1e-6) for k in whole)   # the same trunk as in one go
    # a corrupt trunk is written again from its finished run by the plain command (make pretrain): nothing retrains
    checkpoint = (run / "checkpoint.pt").stat().st_mtime_ns
    (directory / TRUNK_FILE).write_bytes(b"not a trunk")
    pretrain("smoke", SEED, progress=False, probe_items=PROBE)
    rebuilt = load_trunk(directory)[0]
    assert all(torch.equal(rebuilt[k], resumed[k]) for k in resumed)
    assert (run / "checkpoint.pt").stat().st_mtime_ns == checkpoint


# ----------------------------------------------------------------------------- starting runs from a trunk

def test_baseline_starts_exactly_from_the_trunk(home, tmp_path):
    state, record = load_trunk(trunk_dir("smoke", SEED))
    model, preset = fresh_model("baseline")
    info = init_from_trunk(model, preset, SEED, "trunk")
    assert all(torch.equal(model.state_dict()[k], state[k]) for k in state)
    assert info["started_from"] == "trunk" and info["loaded"] == len(state) and info["kept_fresh"] == []
    assert info["trunk_sha256"] == record["sha256"] and info["same_data"] is True

    # train() itself: the first step's loss is the trunk's loss on step 0's batch
    smoke = get_preset("smoke")
    smoke.train.steps, smoke.train.log_interval = 1, 1
    out = train(smoke, seed=SEED, out_dir=tmp_path / "run", progress=False, device="cpu",
                init_from=str(trunk_dir("smoke", SEED)))
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["init_from"] == str(trunk_dir("smoke", SEED))
    assert config["init"]["started_from"] == "trunk" and config["init"]["loaded"] == len(state)
    x, y = training_batch(load_split("train"), SEED, 0, smoke.train)
    model.train()
    with torch.no_grad(), autocast("cpu", DTYPES[config["dtype"]]):
        expected = float(model(x, y).loss.float())
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == 1 and first["loss"] == pytest.approx(expected, abs=1e-6)


def test_with_ltm_loads_every_trunk_tensor_and_keeps_its_gate_fresh(home, tmp_path):
    state, _ = load_trunk(trunk_dir("smoke", SEED))
    model, preset = fresh_model("with_ltm")
    gate = model.ltm_gate_logit.detach().clone()
    info = init_from_trunk(model, preset, SEED, "trunk")
    assert all(torch.equal(model.state_dict()[k], state[k]) for k in state)
    assert info["loaded"] == len(state) and info["kept_fresh"] == ["ltm_gate_logit"]
    assert torch.equal(model.ltm_gate_logit, gate)
    out = train("smoke", arm="with_ltm", seed=SEED, steps=1, out_dir=tmp_path / "run", progress=False,
                device="cpu", init_from="trunk")
    assert json.loads((out / "config.json").read_text())["init"]["kept_fresh"] == ["ltm_gate_logit"]


@pytest.mark.parametrize("arm", ["reservoir", "recursive"])
def test_other_families_take_the_trunk_tensors_they_share(home, tmp_path, capsys, arm):
    state, _ = load_trunk(trunk_dir("smoke", SEED))
    model, preset = fresh_model(arm)
    own = model.state_dict()
    shared = {k for k in state if k in own and own[k].shape == state[k].shape}
    assert "wte.weight" in shared and "blocks.0.attn.c_attn.weight" in shared   # embedding and attention at least
    before = {k: v.clone() for k, v in own.items()}
    info = init_from_trunk(model, preset, SEED, "trunk")
    assert info["started_from"] == "trunk" and info["shared_only"] and info["loaded"] == len(shared)
    assert info["left_out"] == sorted(set(state) - shared) and info["kept_fresh"] == sorted(set(own) - shared)
    after = model.state_dict()
    assert all(torch.equal(after[k], state[k]) for k in shared)
    assert all(torch.equal(after[k], before[k]) for k in info["kept_fresh"])     # its own tensors stay as initialised
    if arm == "reservoir":   # replaces every FFN: the trunk's MLP weights have no place in it
        assert any(".mlp.c_fc." in k for k in info["left_out"])
    out = train("smoke", arm=arm, seed=SEED, steps=1, out_dir=tmp_path / arm, progress=False, device="cpu",
                init_from="trunk")
    init = json.loads((out / "config.json").read_text())["init"]
    assert init["shared_only"] and init["loaded"] == len(shared) and init["left_out"] == info["left_out"]
    assert f"{arm} seed {SEED}: starts from the trunk" in capsys.readouterr().err
    assert "left out (no place in this family)" in init_lines({"init": init})[0]


def test_a_trunk_of_another_shape_or_tokenizer_is_refused(home, tmp_path):
    directory = copied_trunk(tmp_path)
    edit_record(directory, lambda r: r["model"].update(n_embd=64))
    out = tmp_path / "run"
    with pytest.raises(TrunkError, match=r"trunk.json: the trunk has n_embd=64 but this arm's model has n_embd=32.*"
                                         r"make pretrain PRESET=smoke"):
        train("smoke", seed=SEED, steps=1, out_dir=out, progress=False, init_from=str(directory))
    assert not out.exists()   # refused before anything was written
    edit_record(directory, lambda r: (r["model"].update(n_embd=32), r["data"]["tokenizer"].update(name="bpe-4096")))
    model, preset = fresh_model("baseline")
    with pytest.raises(TrunkError, match=r"tokenizer 'bpe-4096' \(name\) but data/ holds 'gpt2'"):
        init_from_trunk(model, preset, SEED, str(directory))
    # a trunk without attention sinks may start an arm with them (fresh at logit 0), not the other way round
    edit_record(directory, lambda r: r["data"]["tokenizer"].update(name="gpt2"))
    sinks = dataclasses.replace(preset, model=dataclasses.replace(preset.model, attn_sink=True))
    torch.manual_seed(SEED)
    info = init_from_trunk(build_model(sinks.model), sinks, SEED, str(directory))
    assert [n for n in info["kept_fresh"] if "sink" in n] == [f"blocks.{i}.attn.sink_logit" for i in range(2)]
    edit_record(directory, lambda r: r["model"].update(attn_sink=True))
    with pytest.raises(TrunkError, match=r"learnt attention sinks \(attn_sink=True\) that this arm's model lacks"):
        init_from_trunk(model, preset, SEED, str(directory))
    # a tensor the model has no place for is named
    state, record = load_trunk(trunk_dir("smoke", SEED))
    odd = tmp_path / "odd"
    save_trunk(odd, {**state, "extra.weight": torch.zeros(3)}, {k: v for k, v in record.items() if k != "sha256"})
    with pytest.raises(TrunkError, match=r"tensor extra.weight has no place"):
        init_from_trunk(model, preset, SEED, str(odd))


def test_a_corrupt_or_incomplete_trunk_is_refused_naming_the_file_and_the_fix(home, tmp_path):
    directory = copied_trunk(tmp_path)
    weights = directory / TRUNK_FILE
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    fix = (f"make pretrain PRESET=smoke` (or `python -m revena_lib.pretrain --preset smoke --seeds {SEED} "
           "--steps 4`)")
    with pytest.raises(TrunkError) as refused:
        load_trunk(directory)
    message = str(refused.value)
    assert str(weights) in message and "corrupt" in message and fix in message and "\n" not in message
    (directory / RECORD_FILE).unlink()
    with pytest.raises(TrunkError, match=r"trunk.json is missing or corrupt.*make pretrain PRESET=smoke"):
        load_trunk(directory)


def test_a_resumed_run_does_not_reload_the_trunk(home, tmp_path):
    directory = copied_trunk(tmp_path)
    out = train("smoke", seed=SEED, steps=2, out_dir=tmp_path / "run", progress=False, device="cpu",
                init_from=str(directory), stop_at=1)
    shutil.rmtree(directory)   # a reload would now fail
    train("smoke", seed=SEED, steps=2, out_dir=out, resume=True, progress=False, device="cpu")
    config = json.loads((out / "config.json").read_text())
    assert config["finished"] and config["init"]["started_from"] == "trunk"   # where it started stays recorded


def test_init_from_trunk_without_one_is_a_one_line_error(home, tmp_path):
    missing = trunk_dir("smoke", 7)
    with pytest.raises(TrunkError) as refused:
        train("smoke", seed=7, steps=1, out_dir=tmp_path / "run", progress=False, init_from="trunk")
    assert str(refused.value) == (f"no trunk at {missing}; run `make pretrain PRESET=smoke` "
                                  "(or `python -m revena_lib.pretrain --preset smoke --seeds 7`)")
    result = subprocess.run([sys.executable, "-m", "revena_lib.train", "--preset", "smoke", "--seed", "7",
                             "--init-from", "trunk", "--out", str(tmp_path / "cli")], cwd=REPO,
                            env={**os.environ, "REVENA_HOME": str(home)}, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [f"error: {refused.value}"]


# ----------------------------------------------------------------------------- evaluation and export

def test_arms_that_started_differently_are_refused_or_explained(tmp_path):
    runs = {}
    for arm, init_from in (("baseline", "trunk"), ("with_ltm", "")):
        run = tmp_path / arm
        run.mkdir()
        (run / "config.json").write_text(json.dumps({"preset": "smoke", "dtype": "fp32", "model": {"n_embd": 32},
                                                     "train": {"init_from": init_from}}))
        runs[arm] = [run]
    with pytest.raises(EvalError, match=r"train.init_from: '' vs 'trunk'"):
        check_arms_match(runs)
    scored = lambda *inits: SimpleNamespace(configs=[{"init": i} for i in inits])
    from_trunk = {"init_from": "trunk", "started_from": "trunk"}
    random = {"init_from": "", "started_from": "random", "reason": "init_from is empty: random initialisation"}
    reservoir = {"init_from": "trunk", "started_from": "trunk", "shared_only": True,
                 "reason": "its family takes 35 of the trunk's 44 tensors"}
    assert _start_note(scored(from_trunk), scored(from_trunk), "baseline") is None
    note = _start_note(scored(from_trunk), scored(reservoir), "baseline")
    assert "baseline from trunk, the arm from part of the trunk: its family takes 35" in note
    assert "the arm from random" in _start_note(scored(from_trunk), scored({**random, "init_from": "trunk"}), "baseline")


def test_the_model_card_says_where_a_run_started():
    trunk = {"started_from": "trunk", "source": "trunks/cpu/seed-1337", "trunk_sha256": "ab" * 32, "trunk_steps": 900,
             "trunk_command": "python -m revena_lib.pretrain --preset cpu --seeds 1337 --steps 900", "loaded": 22,
             "kept_fresh": ["ltm_gate_logit"]}
    line, = init_lines({"init": trunk})
    assert "pretrained trunk `trunks/cpu/seed-1337`" in line and "kept fresh: ltm_gate_logit" in line
    assert init_lines({}) == []
    assert "random initialisation" in init_lines({"init": {"started_from": "random", "reason": "x"}})[0]


@pytest.mark.parametrize("seed", get_preset("cpu").seeds)
def test_the_shipped_cpu_trunks_are_intact_fit_every_transformer_arm_and_record_their_control(seed):
    """trunks/cpu/seed-N, committed: sha256 checked, made by the preset's pretrain config, and accepted by every
    transformer arm of the cpu preset under the fine-tuning recipes (trunk_long_rows: init_from "trunk", qk_conv)."""
    from revena_lib.arms import ARMS
    from revena_lib.training.recipes import apply_recipe
    from revena_lib.training.trunk import check_trunk_fits

    directory = REPO / "trunks" / "cpu" / f"seed-{seed}"
    state, record = load_trunk(directory)
    cpu = get_preset("cpu")
    assert (record["recipe"], record["steps"], record["seed"]) == (cpu.pretrain.recipe, cpu.pretrain.steps, seed)
    assert record["command"] == f"python -m revena_lib.pretrain --preset cpu --seeds {seed} --steps {cpu.pretrain.steps}"
    for arm, spec in ARMS.items():   # as the fine-tuning recipes start every transformer arm from it
        if spec.family == "transformer":
            model = apply_recipe(arm_preset("cpu", arm), "trunk_long_rows").model
            model.vocab_size = 4096   # train() sets it from the data's tokenizer, bpe-4096 at cpu
            check_trunk_fits(directory, record, dataclasses.asdict(model), None, "cpu")
    control = record["positive_control"]
    assert set(control["passkey"]) == {"32", "96"} and isinstance(control["passed"], bool)
    assert state["wte.weight"].shape == (4096, 128)
