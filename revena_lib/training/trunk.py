"""Pretrained trunks: the baseline trained once per preset and seed, that every transformer arm fine-tunes from.

Memorizing Transformers (Wu et al. 2022) added their memory to a pretrained model and fine-tuned; this is the same
for the arms here. A *trunk* is the baseline arm trained under the preset's ``PretrainConfig`` (a copying recipe
from ``training/recipes.py`` and a number of steps: as long as copying needs), its weights saved as
``trunks/<preset>/seed-<seed>/trunk.pt`` (the model's state_dict, fp32) beside ``trunk.json`` (its record: the
command that rebuilds it, how it was trained, on which data, its positive control, trunk.pt's sha256). The trunks
are shipped in the repository; ``python -m revena_lib.pretrain`` (``evaluation/pretrain.py``, which also measures
the positive control) builds them through a resumable run in ``trained/trunk/<preset>/seed-<seed>/``.

This module holds what training needs: where trunks live, saving, loading with verification, and starting a fresh
run from one (``TrainConfig.init_from``: "" = random, "trunk" = this preset and seed's, else a trunk directory).
The transformer family shares every tensor of the trunk; the reservoir and recursive families take the tensors
they share with it by name and shape (embedding, attention, norms; the recursive core its whole blocks) and start
the rest fresh, and their run records which (``init``: ``loaded``, ``kept_fresh``, ``left_out``).

    from revena_lib.training.trunk import init_from_trunk, load_trunk
    state, record = load_trunk("trunks/cpu/seed-1337")
    info = init_from_trunk(model, preset, 1337, "trunk")    # {"started_from": "trunk", "loaded": 22, ...}
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import torch

from revena_lib.config import ModelConfig, PRESETS, Preset, preset_copy
from revena_lib.paths import artefact_root, atomic_write, file_sha256, trained_dir, trunks_dir
from revena_lib.training import TrainError
from revena_lib.training.checkpoint import write_json
from revena_lib.training.recipes import apply_recipe

TRUNK_FILE = "trunk.pt"
RECORD_FILE = "trunk.json"
FORMAT = "revena-trunk"
TRUNK_FAMILY = "transformer"   # the family whose blocks the trunk's weights are
TRUNK = "trunk"                # init_from value: the shipped trunk of the run's own preset and seed
# ModelConfig fields that define what the trunk's weights are: their shapes (vocab_size, n_layer, n_head, n_embd;
# smear_key adds a logit per head, qk_conv mixing weights) and how they are read (rope_base: the rotation q and k
# were trained under).
# window, chunk_size, dropout and the LTM's fields may differ: the same weights read a wider window or feed a memory.
TRUNK_FIELDS = ("vocab_size", "n_layer", "n_head", "n_embd", "rope_base", "smear_key", "qk_conv")


class TrunkError(TrainError):
    """A trunk that is missing, corrupt, or does not fit the model asked to start from it."""


# -----------------------------------------------------------------------------
# Where trunks and their runs live

def trunk_dir(preset_name: str, seed: int, root=None) -> Path:
    """``trunks/<preset>/seed-<seed>/`` under ``root`` (default: REVENA_HOME or the repository: ``paths.trunks_dir``)."""
    return Path(root or trunks_dir()) / preset_name / f"seed-{int(seed)}"


def trunk_run_dir(preset_name: str, seed: int, root=None) -> Path:
    """``trained/trunk/<preset>/seed-<seed>/``: the resumable training run a trunk is cut from ("trunk" is not an
    arm, so evaluation never picks it up)."""
    return Path(root or trained_dir()) / TRUNK / preset_name / f"seed-{int(seed)}"


def rebuild_command(preset_name: str, seed: int, steps: int | None = None) -> str:
    """The command that (re)builds one trunk."""
    return (f"python -m revena_lib.pretrain --preset {preset_name} --seeds {int(seed)}"
            + (f" --steps {int(steps)}" if steps else ""))


def fix_hint(preset_name: str, seed: int | None = None, command: str | None = None) -> str:
    """`make pretrain PRESET=<p>` (or the exact command): the fix named by every missing-trunk error."""
    exact = command or (rebuild_command(preset_name, seed) if seed is not None else None)
    return f"`make pretrain PRESET={preset_name}`" + (f" (or `{exact}`)" if exact else "")


def display_path(path) -> str:
    """A path relative to the artefact root when inside it (records shipped in the repo name no home directory)."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(artefact_root()))
    except ValueError:
        return str(path)


def trunk_preset(preset: str | Preset, steps: int | None = None) -> Preset:
    """The preset a trunk trains under: the preset's pretrain recipe applied (if named), ``steps`` (default: the
    pretrain config's, else the preset's train.steps), and a random start (a trunk never starts from a trunk)."""
    preset = preset_copy(preset)
    recipe = preset.pretrain.recipe
    preset = apply_recipe(preset, recipe) if recipe else preset
    preset.train.steps = int(steps or preset.pretrain.steps or preset.train.steps)
    preset.train.init_from = ""
    return preset


# -----------------------------------------------------------------------------
# Saving and loading

def save_trunk(directory, state_dict: dict, record: dict) -> dict:
    """Write ``trunk.pt`` (the state_dict in fp32; tied tensors stay one copy) and then ``trunk.json`` (``record``
    plus trunk.pt's sha256 and size), each atomically. Returns the record as written."""
    directory = Path(directory)
    weights = {k: (v.detach().cpu().float() if v.is_floating_point() else v.detach().cpu())
               for k, v in state_dict.items()}
    atomic_write(directory / TRUNK_FILE, lambda f: torch.save(weights, f))
    record = {"format": FORMAT, **record, "file": TRUNK_FILE, "sha256": file_sha256(directory / TRUNK_FILE),
              "bytes": (directory / TRUNK_FILE).stat().st_size, "num_tensors": len(weights)}
    write_json(directory / RECORD_FILE, record)   # last: a trunk.json always describes the trunk.pt beside it
    return record


def _guess_hint(directory: Path, record: dict | None) -> str:
    """The fix for a broken trunk: from its record, else from its path (trunks/<preset>/seed-<seed>)."""
    if record and record.get("preset"):
        return fix_hint(record["preset"], record.get("seed"), record.get("command"))
    match = re.fullmatch(r"seed-(\d+)", directory.name)
    if match and directory.parent.name in PRESETS:
        return fix_hint(directory.parent.name, int(match.group(1)))
    return "`make pretrain PRESET=<preset>`"


def _read_record(directory: Path) -> dict:
    path = directory / RECORD_FILE
    if not directory.is_dir() or not (path.exists() or (directory / TRUNK_FILE).exists()):
        raise TrunkError(f"no trunk at {directory}; run {_guess_hint(directory, None)}")
    try:
        record = json.loads(path.read_text())
        if not isinstance(record, dict) or not record.get("sha256"):
            raise ValueError("no sha256")
    except (OSError, ValueError) as e:
        raise TrunkError(f"{path} is missing or corrupt ({type(e).__name__}: {e}); rebuild the trunk with "
                         f"{_guess_hint(directory, None)}") from None
    return record


def load_trunk(path_or_dir) -> tuple[dict, dict]:
    """(state_dict, record) of a trunk directory (or its trunk.pt / trunk.json), after checking trunk.pt's sha256
    against the record. TrunkError, naming the file and ``make pretrain``, if either file is missing or corrupt."""
    directory = Path(path_or_dir)
    directory = directory.parent if directory.name in (TRUNK_FILE, RECORD_FILE) else directory
    record = _read_record(directory)
    weights, hint = directory / TRUNK_FILE, _guess_hint(directory, record)
    if not weights.exists():
        raise TrunkError(f"{weights} is missing (its record {directory / RECORD_FILE} is there); rebuild it with {hint}")
    actual = file_sha256(weights)
    if actual != record["sha256"]:
        raise TrunkError(f"{weights} is corrupt or was replaced: its sha256 {actual[:12]}... is not the "
                         f"{record['sha256'][:12]}... of {RECORD_FILE}; rebuild it with {hint}")
    try:
        # weights_only: a trunk is data, never code
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as e:   # torch raises many types for a garbled file
        raise TrunkError(f"{weights} cannot be read ({type(e).__name__}); rebuild it with {hint}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TrunkError(f"{weights} is not a state_dict of tensors; rebuild it with {hint}")
    return state, record


# -----------------------------------------------------------------------------
# Starting a fresh run from a trunk

def resolve_init_from(init_from: str, preset_name: str, seed: int) -> Path:
    """The trunk directory ``init_from`` names: "trunk" = this preset and seed's, else a path."""
    return trunk_dir(preset_name, seed) if init_from == TRUNK else Path(init_from).expanduser()


def check_trunk_fits(directory: Path, record: dict, model: dict, meta: dict | None, preset_name: str) -> None:
    """Refuse a trunk whose weights do not mean what the arm's model would make of them: a field of TRUNK_FIELDS
    that differs, another model family, or another tokenizer than the data's, or learnt attention sinks the arm
    lacks (an arm may add sinks to a trunk without them: they start at logit 0). One line naming field and fix."""
    from revena_lib.data.tokenizer import tokenizer_info

    where, fix = directory / RECORD_FILE, fix_hint(preset_name)
    trunk_model, defaults = record.get("model") or {}, dataclasses.asdict(ModelConfig())
    if trunk_model.get("family", TRUNK_FAMILY) != TRUNK_FAMILY:
        raise TrunkError(f"{where}: a trunk of family {trunk_model['family']!r} cannot start a {TRUNK_FAMILY} arm; "
                         f"build a trunk with {fix}")
    for name in TRUNK_FIELDS:
        theirs, mine = trunk_model.get(name, defaults[name]), model.get(name, defaults[name])
        if theirs != mine:
            raise TrunkError(f"{where}: the trunk has {name}={theirs!r} but this arm's model has {name}={mine!r}; a "
                             f"trunk only fits models of its own shape: build this preset's trunk with {fix}, or set "
                             "TrainConfig.init_from='' (random initialisation)")
    if trunk_model.get("attn_sink", False) and not model.get("attn_sink", False):   # one without may gain sinks
        raise TrunkError(f"{where}: the trunk's heads learnt attention sinks (attn_sink=True) that this arm's model "
                         f"lacks; set ModelConfig.attn_sink=True, or build this preset's trunk with {fix}")
    if meta is None:
        return
    theirs, mine = (record.get("data") or {}).get("tokenizer") or {}, tokenizer_info(meta)
    for key in ("name", "sha256"):
        if theirs.get(key) != mine.get(key):
            raise TrunkError(f"{where}: the trunk was trained with tokenizer {theirs.get(key)!r} ({key}) but data/ holds "
                             f"{mine.get(key)!r}: prepare the trunk's data (python -m revena_lib.prepare_data "
                             f"--preset {record.get('preset', preset_name)} --force), or rebuild the trunk on this "
                             f"data with {fix}")


def plan_init(preset: Preset, seed: int, meta: dict | None = None, init_from: str | None = None):
    """(trunk state_dict or None, info) for a fresh run of ``preset`` (an arm's preset: its family is set), before
    any model exists, so a missing or unfitting trunk stops training at once. info is what config.json records."""
    init_from = preset.train.init_from if init_from is None else init_from
    if not init_from:
        return None, {"init_from": "", "started_from": "random", "reason": "init_from is empty: random initialisation"}
    family = preset.model.family
    directory = resolve_init_from(init_from, preset.name, seed)
    state, record = load_trunk(directory)
    check_trunk_fits(directory, record, dataclasses.asdict(preset.model), meta, preset.name)
    train_sha = ((meta or {}).get("splits") or {}).get("train", {}).get("sha256")
    shared = {} if family == TRUNK_FAMILY else {"shared_only": True}   # another family takes what fits (apply_init)
    return state, {"init_from": init_from, "started_from": "trunk", **shared, "source": display_path(directory),
                   "trunk_sha256": record["sha256"], "trunk_preset": record.get("preset"),
                   "trunk_seed": record.get("seed"), "trunk_steps": record.get("steps"),
                   "trunk_command": record.get("command"),
                   "same_data": None if train_sha is None else (record.get("data") or {}).get("train_sha256") == train_sha}


def apply_init(model: torch.nn.Module, state: dict | None, info: dict) -> dict:
    """Load every trunk tensor into ``model`` (each must exist there with the same shape); the model's own tensors
    absent from the trunk (with_ltm's ltm_gate_logit) keep their fresh initialisation. Returns info with ``loaded``
    (how many tensors) and ``kept_fresh`` (their names)."""
    if state is None:
        return dict(info)
    own, where = model.state_dict(), f"{info.get('source')}/{TRUNK_FILE}"
    extra = {}
    if info.get("shared_only"):
        # Another family (reservoir, recursive) shares the trunk's embedding, attention and norms by name and shape
        # (the recursive core its whole blocks), but not every tensor (the reservoir has no FFN): it takes those that
        # fit, so that every arm fine-tunes from the same trunk under the same recipe, and records the rest.
        fits = {k: v for k, v in state.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
        if not fits:
            raise TrunkError(f"{where}: no tensor of the trunk fits this arm's model (names and shapes all differ); "
                             "set TrainConfig.init_from='' to start from random initialisation")
        extra = {"left_out": sorted(set(state) - set(fits)),
                 "reason": f"its family takes {len(fits)} of the trunk's {len(state)} tensors (those it shares by "
                           f"name and shape); the rest start fresh"}
        state = fits
    for name, tensor in state.items():
        if name not in own:
            raise TrunkError(f"{where}: tensor {name} has no place in this arm's model; the trunk does not fit it "
                             "(set TrainConfig.init_from='' to start from random initialisation)")
        if tuple(own[name].shape) != tuple(tensor.shape):
            raise TrunkError(f"{where}: tensor {name} has shape {tuple(tensor.shape)} but this arm's model has "
                             f"{tuple(own[name].shape)}; the trunk does not fit it")
    model.load_state_dict(state, strict=False)   # strict=False: the arm's extra tensors stay as initialised
    return {**info, "loaded": len(state), "kept_fresh": sorted(set(own) - set(state)), **extra}

def init_from_trunk(model: torch.nn.Module, preset: Preset, seed: int, init_from: str | None = None,
                    meta: dict | None = None) -> dict:
    """Start ``model`` (built for ``preset``, an arm's preset) from a trunk, as train() does at a fresh start:
    ``init_from`` "" (random: nothing changes), "trunk" (trunks/<preset>/seed-<seed>) or a trunk directory; None =
    ``preset.train.init_from``. ``meta``: the prepared data's meta.json (default: data/'s), whose tokenizer the
    trunk's must be. Returns what was done (config.json's ``init``). TrunkError if the trunk is missing, corrupt or
    does not fit."""
    if meta is None and (init_from if init_from is not None else preset.train.init_from):
        from revena_lib.data.splits import load_meta
        meta = load_meta()
    state, info = plan_init(preset, seed, meta, init_from)
    return apply_init(model, state, info)


def describe_init(info: dict | None) -> str | None:
    """One line for the console: where a fresh run's weights came from (None for a plain random start)."""
    if not info or not info.get("init_from"):
        return None
    if info.get("started_from") != "trunk":
        return info.get("reason")
    fresh = info.get("kept_fresh") or []
    left = info.get("left_out") or []
    return (f"starts from the trunk {info['source']} (sha256 {str(info['trunk_sha256'])[:12]}...): {info['loaded']} "
            f"tensors loaded" + (f"; kept fresh: {', '.join(fresh)}" if fresh else "")
            + (f"; {len(left)} trunk tensors have no place in this family and are left out" if left else ""))
