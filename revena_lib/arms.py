"""The arm table: the one place an arm of the experiment is defined.

An arm is a name, a model family (``revena_lib/models/<family>.py``), config overrides applied to the
preset's ``ModelConfig``, a one-line description, and how plots draw it. Every arm shares the data,
tokenizer, batches, schedule, seeds, evaluation and plots; adding an arm means adding a row here (and, for
a new family, its model file). Override values are ModelConfig fields; the string ``"seq_len"`` stands
for the preset's training length (the full-attention arm's window).

    from revena_lib.arms import ARMS, arm_preset
    preset = arm_preset("cpu", "with_ltm")   # the cpu preset with this arm's model config
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from revena_lib.config import Preset, preset_copy


@dataclass(frozen=True)
class Arm:
    family: str                         # model family: a key of revena_lib.models.FAMILIES
    description: str                    # one line, shown in notebooks, results.json and --help
    overrides: dict = field(default_factory=dict)   # ModelConfig field -> value ("seq_len": the preset's)
    label: str = ""                     # short label for plots (default: the arm's name)
    colour: str = "#333333"


ARMS: dict[str, Arm] = {
    "baseline": Arm("transformer", "STM only: causal attention over a sliding window of 128 tokens",
                    label="baseline (STM only)", colour="#7f7f7f"),
    "with_ltm": Arm("transformer", "the brief: the same STM plus a surprisal-routed long-term memory in one layer",
                    {"use_ltm": True}, label="with LTM", colour="#1f77b4"),
    "ltm_random_write": Arm("transformer", "ablation: the same memory, writing a random subset of tokens at exactly "
                            "the rate the surprisal rule writes in that chunk",
                            {"use_ltm": True, "ltm_write_rule": "random"}, label="LTM, random writes",
                            colour="#ff7f0e"),
    "ltm_long_lifetime": Arm("transformer", "the same memory writing the 16 most surprising tokens of each 64-token "
                             "chunk: an entry lives 1,024 tokens before FIFO eviction (the brief's rule: ~390 at cpu), "
                             "past the farthest recall distance", {"use_ltm": True, "ltm_write_rule": "topk",
                                                                   "ltm_write_topk": 16},
                             label="LTM, top-16 writes", colour="#d62728"),
    "full_attention": Arm("transformer", "ceiling: no memory, the window widened to the training length",
                          {"window": "seq_len"}, label="full attention", colour="#2ca02c"),
    "reservoir": Arm("reservoir", "Reservoir-Augmented Transformer: every FFN replaced by a fixed echo-state "
                     "reservoir (2 x n_embd units) and a trainable linear readout; same attention",
                     label="reservoir (RAT)", colour="#9467bd"),
    "reservoir_ffn": Arm("reservoir", "the same reservoir and readout beside each block's FFN instead of replacing it",
                         {"reservoir_keep_ffn": True}, label="reservoir + FFN", colour="#8c564b"),
    "reservoir_slow": Arm("reservoir", "the reservoir arm with slow dynamics (leak 0.1, spectral radius 0.99: linear "
                          "modes decaying over ~1,000 tokens instead of ~14), to reach beyond the window",
                          {"reservoir_lr": 0.1, "reservoir_sr": 0.99}, label="reservoir, slow", colour="#e377c2"),
    # Tiny Recursive Models (seed 001). `recursive` matches the baseline's trainable parameters exactly: its core
    # has the baseline's width and number of blocks (trm_hidden = trm_layers = 0), the same tied embedding and
    # ln_f, and its init vectors are buffers; it spends ~2.9x the baseline's training FLOPs per token at cpu
    # (H2/L2: 6 core passes per chunk, 3 with gradient). The other three are the seed's shapes, with their own sizes.
    "recursive": Arm("recursive", "Tiny Recursive Model: a weight-shared core of the baseline's blocks refines two "
                     "latents per 64-token chunk (H2/L2 cycles) and attends to the previous chunk's z_H, carried "
                     "detached", label="TRM (matched)", colour="#17becf"),
    "recursive_qk": Arm("recursive", "the matched TRM with the model's qk_conv inside its core (keys mix the latents "
                        "of the positions before them), the aid the trunks copy with; the same as recursive where "
                        "the preset has no qk_conv (smoke, paper)",
                        {"trm_qk_conv": True}, label="TRM + qk_conv", colour="#2f7f8f"),
    "trm_256x2_h3l4": Arm("recursive", "the seed's memory TRM: core of 2 blocks at width 256, H3/L4 cycles",
                          {"trm_hidden": 256, "trm_layers": 2, "trm_h_cycles": 3, "trm_l_cycles": 4},
                          label="TRM 256x2 H3/L4", colour="#bcbd22"),
    "trm_192x2_h2l3": Arm("recursive", "the seed's tool TRM: core of 2 blocks at width 192, H2/L3 cycles",
                          {"trm_hidden": 192, "trm_layers": 2, "trm_h_cycles": 2, "trm_l_cycles": 3},
                          label="TRM 192x2 H2/L3", colour="#aec7e8"),
    "trm_256x3_h4l4": Arm("recursive", "the seed's reasoning TRM: core of 3 blocks at width 256, H4/L4 cycles",
                          {"trm_hidden": 256, "trm_layers": 3, "trm_h_cycles": 4, "trm_l_cycles": 4},
                          label="TRM 256x3 H4/L4", colour="#98df8a"),
}

BASELINE = "baseline"                    # every other arm is compared with this one
DEFAULT_ARMS = ("baseline", "with_ltm")  # the brief's pair: always run

# Evaluation-time ablations: a trained arm scored again with different forward() switches (same weights).
READ_ABLATIONS = {
    "with_ltm_reads_off": ("with_ltm", {"memory_read": False}, "the trained with_ltm model scored with memory reads off"),
    "reservoir_memory_off": ("reservoir", {"memory_read": False}, "the trained reservoir model scored with its "
                             "recurrence cut (every state starts from zero: no memory of earlier tokens)"),
    "recursive_carry_off": ("recursive", {"memory_read": False}, "the trained recursive model scored with an empty "
                            "carry in every chunk (no z_H from the previous chunk: no memory beyond the chunk)"),
}


def arm_style(name: str) -> tuple[str, str]:
    """(label, colour) for plots: from the table, or for an evaluation-time ablation from its source arm."""
    if name in ARMS:
        return ARMS[name].label or name, ARMS[name].colour
    if name in READ_ABLATIONS:
        source_name = READ_ABLATIONS[name][0]
        switch = name.removeprefix(source_name + "_").replace("_", " ")    # "reads off", "memory off", "carry off"
        return f"{ARMS[source_name].label or source_name}, {switch}", "#9ecae1"
    return name, "#333333"


class ArmError(ValueError):
    pass


def check_arm(name: str) -> Arm:
    if name not in ARMS:
        raise ArmError(f"unknown arm {name!r}: choose one of {', '.join(ARMS)} (the table is revena_lib/arms.py)")
    return ARMS[name]


def parse_arms(spec) -> tuple[str, ...]:
    """'baseline,with_ltm' or a sequence -> a tuple of known arm names, baseline first (comparisons need it)."""
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s and s.strip()]
    if not names:
        raise ArmError("no arms given: name at least one, e.g. arms='baseline,with_ltm'")
    for name in names:
        check_arm(name)
    ordered = [BASELINE] + [n for n in dict.fromkeys(names) if n != BASELINE]
    return tuple(ordered)


def arm_preset(preset: str | Preset, arm: str) -> Preset:
    """A copy of ``preset`` whose model config is this arm's (family and overrides applied)."""
    spec = check_arm(arm)
    preset = preset_copy(preset)
    values = {k: (preset.train.seq_len if v == "seq_len" else v) for k, v in spec.overrides.items()}
    preset.model = dataclasses.replace(preset.model, family=spec.family, **values)
    return preset
