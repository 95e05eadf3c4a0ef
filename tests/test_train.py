"""Training: recipe (schedule, decay groups), fair batches, metrics, checkpoints, resumption, CLI, DDP."""

import json
import math
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from revena_lib.training import batches as batches_mod
from revena_lib.training.checkpoint import CheckpointError, load_checkpoint, load_model
from revena_lib.config import ModelConfig, TrainConfig, get_preset
from revena_lib.models.ltm import GATE_INIT_LOGIT
from revena_lib.models.transformer import RevenaLM
from revena_lib.training import TrainError
from revena_lib.training.batches import batch_for_step
from revena_lib.training.loop import TrainingInterrupted, decays, lr_at_step, param_groups, train, unigram_bpc
from revena_lib.training.runs import find_runs, read_metrics, run_dir

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def smoke(steps=6, log_interval=1, eval_interval=3):
    preset = get_preset("smoke")
    preset.train.steps, preset.train.log_interval, preset.train.eval_interval = steps, log_interval, eval_interval
    return preset


def losses(run):
    return [(r["step"], r["loss"]) for r in map(json.loads, (Path(run) / "metrics.jsonl").read_text().splitlines())]


# ----------------------------------------------------------------------------- recipe

def test_lr_schedule_warmup_cosine_min():
    cfg = TrainConfig(steps=1000, warmup_steps=100, lr=1e-3, min_lr_ratio=0.1)
    assert lr_at_step(0, cfg) == pytest.approx(1e-5)
    assert lr_at_step(49, cfg) == pytest.approx(5e-4)                 # linear warm-up
    assert lr_at_step(99, cfg) == pytest.approx(1e-3)
    assert lr_at_step(100, cfg) == pytest.approx(1e-3)                # cosine starts at the peak
    mid = 100 + (999 - 100) / 2
    assert lr_at_step(int(mid), cfg) == pytest.approx(0.55e-3, rel=1e-2)  # halfway: (max + min) / 2
    assert lr_at_step(999, cfg) == pytest.approx(1e-4)                # the last step is exactly lr * min_lr_ratio
    values = [lr_at_step(s, cfg) for s in range(100, 1000)]
    assert all(a >= b for a, b in zip(values, values[1:]))            # monotone decay
    assert min(values) >= 1e-4 - 1e-12


def test_weight_decay_only_on_weight_matrices():
    model = RevenaLM(ModelConfig(n_layer=2, n_head=2, n_embd=32, use_ltm=True))
    decay_group, no_decay_group = param_groups(model, 0.1)
    assert decay_group["weight_decay"] == 0.1 and no_decay_group["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay_group["params"])
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay_names = [names[id(p)] for p in no_decay_group["params"]]
    assert any("gate" in n for n in no_decay_names)                    # the LTM gate is never decayed
    assert all(p.dim() < 2 or "gate" in names[id(p)] for p in no_decay_group["params"])
    assert not decays("ln_1.weight", torch.ones(4)) and not decays("c_fc.bias", torch.ones(4))
    assert not decays("ltm_gate", torch.ones(2, 2)) and decays("c_fc.weight", torch.ones(2, 2))
    counted = sum(p.numel() for g in (decay_group, no_decay_group) for p in g["params"])
    assert counted == model.num_parameters()                          # tied embedding counted once


# ----------------------------------------------------------------------------- batches

@dataclass
class FakeSplit:
    """A TokenSplit stand-in: token value = 1000 * document + position, so rows reveal where they came from."""
    name: str
    tokens: np.ndarray
    doc_offsets: np.ndarray
    doc_lengths: np.ndarray


def fake_split(lengths):
    tokens, offsets = [], []
    for d, n in enumerate(lengths):
        offsets.append(sum(len(t) for t in tokens))
        tokens.append(1000 * d + np.arange(n))
    return FakeSplit("train", np.concatenate(tokens).astype(np.int64), np.array(offsets), np.array(lengths))


def test_batch_for_step_is_pure_and_from_single_documents():
    split = fake_split([5, 40, 17, 60, 3, 33])
    x1, y1 = batch_for_step(split, seed=7, step=3, batch_size=16, seq_len=16)
    x2, y2 = batch_for_step(split, seed=7, step=3, batch_size=16, seq_len=16)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert x1.shape == (16, 16) and x1.dtype == torch.int64
    assert torch.equal(x1[:, 1:], y1[:, :-1])                        # y is x shifted by one
    rows = torch.cat([x1, y1[:, -1:]], dim=1)                         # (B, T+1)
    docs = rows // 1000
    assert (docs == docs[:, :1]).all()                                 # every row inside one document
    assert set(docs[:, 0].tolist()) <= {1, 3, 5}                       # docs shorter than 17 tokens never used
    assert (rows[:, 1:] - rows[:, :-1] == 1).all()                     # consecutive tokens
    assert not torch.equal(batch_for_step(split, 7, 4, 16, 16)[0], x1)
    assert not torch.equal(batch_for_step(split, 8, 3, 16, 16)[0], x1)


def test_batch_for_step_names_the_fix_when_documents_are_too_short():
    with pytest.raises(TrainError, match="seq_len"):
        batch_for_step(fake_split([5, 9]), seed=0, step=0, batch_size=2, seq_len=16)


def test_both_arms_see_identical_batches(smoke_data, tmp_path, monkeypatch):
    seen = {}
    real = batches_mod.batch_for_step

    def spy(split, seed, step, batch_size, seq_len):
        x, y = real(split, seed, step, batch_size, seq_len)
        if split.name == "train":
            seen.setdefault(current, []).append((step, x.clone()))
        return x, y

    monkeypatch.setattr(batches_mod, "batch_for_step", spy)
    for current, with_ltm in (("baseline", False), ("with_ltm", True)):
        train(smoke(steps=3), with_ltm=with_ltm, out_dir=tmp_path / current, progress=False)
    assert len(seen["baseline"]) == 3
    for (s1, x1), (s2, x2) in zip(seen["baseline"], seen["with_ltm"]):
        assert s1 == s2 and torch.equal(x1, x2)


# ----------------------------------------------------------------------------- runs, metrics, checkpoints

def test_metrics_config_and_checkpoint_written(smoke_data, tmp_path):
    out = train(smoke(steps=4, log_interval=2, eval_interval=4), with_ltm=True, out_dir=tmp_path / "run",
                progress=False)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4]
    keys = {"step", "loss", "lr", "tok_per_sec", "eta_s", "LTM_enabled", "routed_token_ratio",
            "avg_surprisal_routed", "ltm_hit_rate"}
    assert all(keys <= r.keys() for r in records)
    assert records[-1]["LTM_enabled"] is True and math.isfinite(records[-1]["loss"])
    assert {"val_loss", "val_bpc"} <= records[-1].keys() and "val_bpc" not in records[0]
    config = json.loads((out / "config.json").read_text())
    assert config["finished"] is True and config["steps_done"] == 4 and config["arm"] == "with_ltm"
    assert config["preset"] == "smoke" and config["model"]["use_ltm"] is True
    assert config["data_meta"]["corpus"] == "sotu" and config["torch_version"] == torch.__version__
    assert 0 < config["unigram_bpc"] < 20 and config["dtype"] in ("fp32", "bf16")
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["step"] == 4 and {"torch", "numpy", "python"} <= state["rng"].keys()
    frame = read_metrics(out)
    assert list(frame["step"]) == [2, 4] and "val_bpc" in frame


def test_resume_continues_exactly(smoke_data, tmp_path):
    # Stop at 3, inside a logging interval of 2: the half-filled interval average must survive the restart.
    preset = smoke(steps=6, log_interval=2, eval_interval=4)
    full = train(preset, with_ltm=True, out_dir=tmp_path / "full", progress=False)
    part = train(preset, with_ltm=True, out_dir=tmp_path / "part", progress=False, stop_at=3)
    assert json.loads((part / "config.json").read_text())["finished"] is False
    assert load_checkpoint(part / "checkpoint.pt")["step"] == 3
    assert [s for s, _ in losses(part)] == [2]
    train(preset, with_ltm=True, out_dir=part, resume=True, progress=False)
    assert [s for s, _ in losses(part)] == [2, 4, 6]
    for (s1, l1), (s2, l2) in zip(losses(full), losses(part)):
        assert s1 == s2 and l1 == pytest.approx(l2, abs=1e-6)
    val = lambda run: [r["val_loss"] for r in read_metrics(run).to_dict("records") if "val_loss" in r and r["val_loss"] == r["val_loss"]]
    assert val(full) == pytest.approx(val(part), abs=1e-6)
    # resuming a finished run is a no-op
    train(preset, with_ltm=True, out_dir=part, resume=True, progress=False)
    assert len(losses(part)) == 3


def test_existing_run_refused_without_resume_and_force_restarts(smoke_data, tmp_path):
    out = train(smoke(steps=2), with_ltm=False, out_dir=tmp_path / "run", progress=False)
    with pytest.raises(TrainError, match="--resume"):
        train(smoke(steps=2), with_ltm=False, out_dir=out, progress=False)
    train(smoke(steps=2), with_ltm=False, out_dir=out, force=True, progress=False)
    assert len(losses(out)) == 2


def test_mismatched_checkpoint_refused(smoke_data, tmp_path):
    out = train(smoke(steps=2), with_ltm=False, out_dir=tmp_path / "run", progress=False, stop_at=1)
    bigger = smoke(steps=2)
    bigger.model.n_embd = 64
    with pytest.raises(CheckpointError, match=re.escape(str(out / "checkpoint.pt")) + ".*n_embd"):
        train(bigger, with_ltm=False, out_dir=out, resume=True, progress=False)
    with pytest.raises(CheckpointError, match="model config"):   # the other arm is a different model too
        train(smoke(steps=2), with_ltm=True, out_dir=out, resume=True, progress=False)


def test_corrupt_or_missing_checkpoint_is_checkpoint_error(smoke_data, tmp_path):
    out = train(smoke(steps=2), with_ltm=False, out_dir=tmp_path / "run", progress=False)
    data = (out / "checkpoint.pt").read_bytes()
    (out / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model(out)
    with pytest.raises(CheckpointError, match="corrupt"):
        train(smoke(steps=4), with_ltm=False, out_dir=out, resume=True, progress=False)
    (out / "checkpoint.pt").unlink()
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(out)
    with pytest.raises(CheckpointError, match="config.json"):
        load_model(tmp_path / "nothing-here")


def test_load_model_round_trip(smoke_data, tmp_path):
    out = train(smoke(steps=2), with_ltm=True, out_dir=tmp_path / "run", progress=False)
    model, config = load_model(out)
    assert not model.training and model.cfg.use_ltm and config["arm"] == "with_ltm"
    state = load_checkpoint(out / "checkpoint.pt")["model"]
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[name]), name
    x = torch.randint(0, 50257, (1, 70))
    with torch.no_grad():
        assert torch.isfinite(model(x).logits).all()


def test_find_runs_lists_finished_runs_by_seed(smoke_data, tmp_path):
    root = tmp_path / "trained"
    for seed in (5, 2):
        train(smoke(steps=2), with_ltm=False, seed=seed, out_dir=run_dir("baseline", seed, root), progress=False)
    train(smoke(steps=2), with_ltm=False, seed=9, out_dir=run_dir("baseline", 9, root), progress=False, stop_at=1)
    assert find_runs("baseline", root) == [run_dir("baseline", 2, root), run_dir("baseline", 5, root)]
    assert find_runs("with_ltm", root) == []


def test_presets_live_side_by_side(smoke_data, tmp_path, monkeypatch):
    """Switching presets (smoke, then cpu) must neither meet the other preset's checkpoint nor overwrite it."""
    import shutil

    shutil.copytree(smoke_data / "data", tmp_path / "data")
    monkeypatch.setenv("REVENA_HOME", str(tmp_path))
    bigger = smoke(steps=2)
    bigger.name, bigger.model.n_embd = "bigger", 64
    small_run = train(smoke(steps=2), with_ltm=True, progress=False)
    big_run = train(bigger, with_ltm=True, resume=True, progress=False)  # would refuse a smoke checkpoint here
    assert small_run == tmp_path / "trained" / "with_ltm" / "smoke" / "seed-1337"
    assert big_run == tmp_path / "trained" / "with_ltm" / "bigger" / "seed-1337"
    assert find_runs("with_ltm", preset="smoke") == [small_run]
    assert find_runs("with_ltm", preset="bigger") == [big_run]
    assert find_runs("with_ltm") == [big_run, small_run]
    assert train(smoke(steps=2), with_ltm=True, resume=True, progress=False) == small_run  # finished: reused


def test_sigterm_saves_checkpoint_and_interrupts(smoke_data, tmp_path, monkeypatch):
    real = batches_mod.batch_for_step

    def kill_at_step_2(split, seed, step, batch_size, seq_len):
        if split.name == "train" and step == 2:
            os.kill(os.getpid(), signal.SIGTERM)   # the handler only sets a flag; the step finishes first
        return real(split, seed, step, batch_size, seq_len)

    monkeypatch.setattr(batches_mod, "batch_for_step", kill_at_step_2)
    with pytest.raises(TrainingInterrupted, match="--resume"):
        train(smoke(), with_ltm=False, out_dir=tmp_path / "run", progress=False)
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == 3
    assert signal.getsignal(signal.SIGTERM) is not None   # our handler was removed again


def test_wandb_missing_is_a_clear_error(smoke_data, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)   # import wandb -> ImportError
    with pytest.raises(TrainError, match="pip install wandb"):
        train(smoke(steps=2), with_ltm=False, out_dir=tmp_path / "run", progress=False, wandb=True)


def test_unigram_bpc_is_a_sane_bar(smoke_data):
    bpc = unigram_bpc()
    assert 0.5 < bpc < 4.0   # English: ~10-11 bits/token unigram over ~4-5 characters per token


# ----------------------------------------------------------------------------- command line

def cli(*args, env_home):
    env = {**os.environ, "REVENA_HOME": str(env_home)}
    return subprocess.run([PYTHON, "-m", "revena_lib.train", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_help_explains_every_option(tmp_path):
    result = cli("--help", env_home=tmp_path)
    assert result.returncode == 0
    for option in ("--baseline", "--with-ltm", "--preset", "--seed", "--steps", "--out", "--resume", "--force",
                   "--wandb", "--device", "--stop-at"):
        assert option in result.stdout


def test_cli_errors_are_one_line(smoke_data, tmp_path):
    bad_preset = cli("--preset", "huge", env_home=smoke_data)
    assert bad_preset.returncode != 0 and bad_preset.stderr.strip().splitlines() == [
        "error: unknown preset 'huge': choose one of smoke, cpu, paper (e.g. --preset cpu)"]
    no_data = cli("--preset", "smoke", env_home=tmp_path)
    assert no_data.returncode != 0 and "Traceback" not in no_data.stderr
    assert no_data.stderr.strip().splitlines()[-1].startswith("error: ") and "prepare_data" in no_data.stderr


def test_cli_trains_and_refuses_to_overwrite(smoke_data, tmp_path):
    out = tmp_path / "run"
    first = cli("--preset", "smoke", "--steps", "2", "--out", str(out), "--no-progress", env_home=smoke_data)
    assert first.returncode == 0, first.stderr
    assert json.loads((out / "config.json").read_text())["finished"] is True
    again = cli("--preset", "smoke", "--steps", "2", "--out", str(out), env_home=smoke_data)
    assert again.returncode != 0 and "Traceback" not in again.stderr and "--resume" in again.stderr
    mismatch = cli("--preset", "cpu", "--out", str(out), "--resume", env_home=smoke_data)
    assert mismatch.returncode != 0 and "Traceback" not in mismatch.stderr
    assert "checkpoint.pt" in mismatch.stderr and "different model config" in mismatch.stderr


@pytest.mark.slow
def test_torchrun_two_cpu_processes(smoke_data, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "REVENA_HOME": str(smoke_data), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "revena_lib.train",
         "--preset", "smoke", "--with-ltm", "--steps", "4", "--out", str(out), "--no-progress", "--device", "cpu"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "config.json", "metrics.jsonl"]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4]          # one writer: no duplicated lines
    assert math.isfinite(records[-1]["loss"]) and math.isfinite(records[-1]["val_loss"])
    assert json.loads((out / "config.json").read_text())["world_size"] == 2
    checksums = dict(re.findall(r"rank (\d) final param checksum ([-+.0-9e]+)", result.stderr))
    assert set(checksums) == {"0", "1"} and checksums["0"] == checksums["1"]


def test_the_memory_gate_can_learn_faster_than_the_trunk_it_joins():
    """memory_lr_mult: the LTM gate gets its own group whose lr is the schedule's times the multiplier; at 1 (the
    default) the groups are what they were, so checkpoints of earlier runs still load."""
    from revena_lib.training.loop import make_optimizer

    model = RevenaLM(ModelConfig(n_layer=2, n_head=2, n_embd=32, use_ltm=True))
    assert len(param_groups(model, 0.1)) == 2
    groups = param_groups(model, 0.1, memory_lr_mult=10.0)
    names = {id(p): n for n, p in model.named_parameters()}
    assert [names[id(p)] for p in groups[2]["params"]] == ["ltm_gate_logit"] and groups[2]["lr_mult"] == 10.0
    assert sum(p.numel() for g in groups for p in g["params"]) == model.num_parameters()
    assert len(param_groups(RevenaLM(ModelConfig(n_layer=2, n_head=2, n_embd=32)), 0.1, 10.0)) == 2   # no memory
    cfg = TrainConfig(lr=1e-3, memory_lr_mult=10.0)
    opt = make_optimizer(model, cfg, torch.device("cpu"))
    assert [g.get("lr_mult", 1.0) for g in opt.param_groups] == [1.0, 1.0, 10.0]


def test_a_training_step_moves_the_gate_by_the_multiplied_lr(smoke_data, tmp_path):
    """One AdamW step moves each parameter by about its group's lr: the gate 100x as far under memory_lr_mult=100,
    every other tensor exactly as far as without it (the same batch, the same gradients)."""
    moved = {}
    for mult in (1.0, 100.0):
        preset = smoke(steps=1, eval_interval=1)
        preset.train.memory_lr_mult = mult
        out = train(preset, with_ltm=True, seed=5, out_dir=tmp_path / str(mult), progress=False)
        moved[mult] = load_checkpoint(out / "checkpoint.pt")["model"]
    step = {m: (moved[m]["ltm_gate_logit"] - GATE_INIT_LOGIT).abs() for m in moved}     # every gate starts there
    assert torch.allclose(step[100.0], 100 * step[1.0], rtol=0.05) and (step[1.0] > 0).any()
    assert all(torch.equal(moved[1.0][k], moved[100.0][k]) for k in moved[1.0] if k != "ltm_gate_logit")
