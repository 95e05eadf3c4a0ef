"""Training recipes for copying: named changes to a preset's training (and model) configuration.

A recipe is how a model is taught to copy from context, the positive control every recall result needs
(``evaluation/copying.py``). ``benchmarks/bench_copy.py`` trains the ``cpu`` baseline under each recipe and reports
the minutes and tokens until it copies in-window; the table in the README comes from it. Each recipe is one row of
``RECIPES``; what it changes is spelled out, so a recipe can be read without running it.

    from revena_lib.training.recipes import apply_recipe
    preset = apply_recipe("cpu", "landed")     # a Preset; train(preset, ...) trains under it

Measured so far (``shared/trials`` and the README's "Models that copy" section): none of these reaches the bar at
the budgets this machine allows; the rows stay so that a longer run, or a GPU, can be compared side by side.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from revena_lib.config import Preset, preset_copy


@dataclass(frozen=True)
class Recipe:
    description: str
    train: dict = field(default_factory=dict)    # TrainConfig fields it sets
    model: dict = field(default_factory=dict)    # ModelConfig fields it sets (applied to every arm)


# The first cpu recipe, written out so that it stays what it was when the preset moves on.
_LANDED = {"seq_len": 1024, "batch_size": 2, "lr": 3e-3, "warmup_steps": 50, "recall_mix": 0.5,
           "recall_facts_per_row": 8, "recall_induction": 0.2, "recall_repeats": 0.0}

# The synthetic copying curriculum (data/synthetic.py) in short_dense's rows, and the variants measured from it.
_CURRICULUM = {**_LANDED, "seq_len": 128, "batch_size": 16, "lr": 1e-3, "recall_mix": 0.3, "recall_facts_per_row": 2,
               "recall_induction": 0.4, "copy_warmup_steps": 700, "copy_warmup_seq_len": 64, "copy_ramp_steps": 800,
               "copy_share_end": 0.3, "copy_vocab": 64, "copy_span_min": 4, "copy_span_max": 16, "copy_gap_max": 96}
_LENGTHS = (2, 3, 4, 6, 7, 8)    # planted numbers' digits: every length but evaluation's 5
_REPEATS = {**_CURRICULUM, "recall_fact_digits": _LENGTHS, "recall_induction": 0.2, "recall_repeats": 0.4}

RECIPES: dict[str, Recipe] = {
    "landed": Recipe("the cpu preset's copying curriculum: 2 x 1,024-token rows, half with 8 planted facts asked "
                     "again, a fifth with repeated random-token spans", dict(_LANDED)),
    "sparse_facts": Recipe("as landed, 2 facts per row instead of 8: fewer look-alike facts in one row, so copying "
                           "the token after the cue's last token is less ambiguous",
                           {**_LANDED, "recall_facts_per_row": 2}),
    "repeats": Recipe("as landed, plus a fifth of the rows with passages of their own natural text repeated later "
                      "in the row (8-48 tokens, from 8 tokens apart to the end of the row): copy targets in real text, with trained "
                      "embeddings, instead of random tokens", {**_LANDED, "recall_repeats": 0.2}),
    "short_rows": Recipe("as landed, in 8 x 256-token rows: the same tokens per step from 4x as many places",
                         {**_LANDED, "seq_len": 256, "batch_size": 8, "recall_facts_per_row": 2}),
    "short_dense": Recipe("16 x 128-token rows (a row is one window): 2 facts in three rows of ten, repeated "
                          "random-token spans in four of ten; on synthetic spans, copying formed in 16-32 x 64-token "
                          "rows and not in 2-8 x 256-1,024 ones (time to an induction head grows with context)",
                          {**_LANDED, "seq_len": 128, "batch_size": 16, "recall_mix": 0.3, "recall_facts_per_row": 2,
                           "recall_induction": 0.4}),
    "short_dense_smear": Recipe("short_dense with smeared keys (ModelConfig.smear_key; Olsson et al. 2022): on "
                                "synthetic spans of 4-16 tokens in 32 x 64-token rows, copying formed by step ~600 "
                                "with them and was still forming at step 700 without",
                                {**_LANDED, "seq_len": 128, "batch_size": 16, "recall_mix": 0.3,
                                 "recall_facts_per_row": 2, "recall_induction": 0.4}, {"smear_key": True}),
    "copy_curriculum": Recipe("synthetic copying first, then a gradual move into text (data/synthetic.py): 700 steps "
                              "of episodes (a span of 4-16 tokens over the digits and the 54 most frequent tokens, "
                              "then its copy) in 32 x 64-token rows, where an induction head forms; then short_dense's "
                              "16 x 128 text rows, the episodes' share (now with gaps of up to 96 tokens) falling "
                              "from all rows to 0.3 over 800 steps; smeared keys; lr 1e-3", dict(_CURRICULUM),
                              {"smear_key": True}),
    "copy_lengths": Recipe("copy_curriculum with planted numbers of 2, 3, 4, 6, 7 or 8 digits instead of 3 or 4: "
                           "under copy_curriculum the model copied the first 3-4 digits of 5-digit pass keys, then "
                           "wrote a period, the length the training facts had taught it",
                           {**_CURRICULUM, "recall_fact_digits": _LENGTHS}, {"smear_key": True}),
    "copy_repeats": Recipe("copy_lengths with four rows in ten repeating passages of their own text (8-48 tokens) "
                           "and two, not four, carrying random spans: under copy_lengths the digits of a pass key were "
                           "copied but its first token lost to the text's prior (' is' -> ' not', ' a'), which only "
                           "matching the longer prefix (' pass key is') overrides; repeated passages of text need that",
                           dict(_REPEATS), {"smear_key": True}),
    "copy_repeats_half": Recipe("copy_repeats keeping half the rows synthetic episodes after the ramp, not 0.3: under "
                                "copy_lengths pass keys were best at the ramp's end and fell as text took over",
                                {**_REPEATS, "copy_share_end": 0.5}, {"smear_key": True}),
    "copy_digits": Recipe("copy_repeats with episodes over the 10 digits and the 6 most frequent tokens after the "
                          "warm-up: under copy_repeats, pass keys with a repeated digit were copied wrong (66825 -> "
                          "66625: the token after the digit's first occurrence) and ' is' was followed by ' number' "
                          "(a training template's); both need matching more than one token back, and a span over 16 "
                          "tokens repeats its tokens", {**_REPEATS, "copy_vocab_after": 16}, {"smear_key": True}),
    "copy_qk": Recipe("copy_repeats_half with qk_conv=2 instead of smeared keys: under every smeared-key recipe, pass "
                      "keys with a repeated digit were copied wrong (66825 -> 66625), the mark of matching one token "
                      "back; on synthetic spans over the 10 digits, copy accuracy reached 0.92 by step 900 with "
                      "qk_conv=2 and stayed at 0.76 through step 1,500 with smeared keys",
                      {**_REPEATS, "copy_share_end": 0.5}, {"qk_conv": 2}),
}


class RecipeError(ValueError):
    pass


def check_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise RecipeError(f"unknown recipe {name!r}: choose one of {', '.join(RECIPES)} (revena_lib/training/recipes.py)")
    return RECIPES[name]


def apply_recipe(preset: str | Preset, name: str) -> Preset:
    """A copy of ``preset`` with the recipe's training and model fields set."""
    recipe = check_recipe(name)
    preset = preset_copy(preset)
    preset.train = dataclasses.replace(preset.train, **recipe.train, recipe=name)
    preset.model = dataclasses.replace(preset.model, **recipe.model)
    return preset
