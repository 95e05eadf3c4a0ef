"""Training recipes for copying: named changes to a preset's training (and model) configuration.

A recipe is how a model is taught to copy from context, the positive control every recall result needs
(``evaluation/copying.py``). ``benchmarks/bench_copy.py`` trains the ``cpu`` baseline under each recipe and reports
the minutes and tokens until it copies in-window; the table in the README comes from it. Each recipe is one row of
``RECIPES``; what it changes is spelled out, so a recipe can be read without running it.

    from revena_lib.training.recipes import apply_recipe
    preset = apply_recipe("cpu", "landed")     # a Preset; train(preset, ...) trains under it

Measured so far (``shared/trials`` and the README's "Models that copy" section): from random weights,
``copy_qk_text`` reached the bar for one seed of three (seed 1338 at step 1,800), and ``copy_qk_clean`` (its text
cues in place) for two (seeds 1338 and 1339 at step 2,700) in 3,000 steps, and for all three on a 6,000-step
schedule (by step 4,000, every pass key at 32 and 96); ``copy_qk_clean`` trains the cpu trunks for 6,000 steps
(``make pretrain``). The ``trunk_*`` recipes fine-tune from a trunk. In the trunk's own 128-token rows the pass keys
were kept; in rows longer than the window (256 or 1,024 tokens) every mix lost them, with or without attention sinks,
the more so the longer the rows. ``trunk_own_mixed`` (every other step in 128-token rows) kept them best of the
long-row recipes, and better with uniform copy distances; ``trunk_mixed_rows`` adds a faster LTM gate, and
``trunk_mixed_clean``, the cpu preset's, a smaller lr (1e-4) and text cues in place. The rows stay so that a longer
run, or a GPU, can be compared side by side.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from revena_lib.config import ModelConfig, Preset, TrainConfig, preset_copy


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
_QK_TEXT = {**_REPEATS, "copy_share_end": 0.5, "recall_text_cues": 0.5}    # copy_qk_text's (with qk_conv=2)

# Fine-tuning from the preset's trunk (copy_qk_text's): landed's long rows, the copying mix kept; and the denser
# variant the later fine-tuning recipes start from, in 1,024-token rows and in 256-token ones.
_FINETUNE = {**_LANDED, "lr": 1e-3, "recall_fact_digits": _LENGTHS, "recall_induction": 0.0, "recall_repeats": 0.2,
             "recall_text_cues": 0.5, "copy_share_end": 0.25, "copy_gap_max": 96, "init_from": "trunk"}
_DENSE = {**_FINETUNE, "lr": 3e-4, "recall_mix": 0.6, "recall_facts_per_row": 16, "recall_repeats": 0.0,
          "copy_share_end": 0.4}
_MID = {**_DENSE, "seq_len": 256, "batch_size": 8, "recall_facts_per_row": 4}
# The trunk's own mix (copy_qk_text after its ramp), continued from the trunk
_SHORT = {**_REPEATS, "copy_warmup_steps": 0, "copy_ramp_steps": 0, "copy_share_end": 0.5, "recall_text_cues": 0.5,
          "lr": 3e-4, "init_from": "trunk"}
_SHORT_LONG = {**_SHORT, "seq_len": 1024, "batch_size": 2, "recall_facts_per_row": 16}   # ... in 2 x 1,024-token rows
_MIXED = {**_SHORT_LONG, "recall_near": 0.8, "short_row_every": 2}                        # ... every other step 16 x 128
_MIXED_UNIFORM = {**_MIXED, "recall_distance": "uniform"}                                 # ... copy distances uniform
_GENTLE = {**_MIXED_UNIFORM, "lr": 1e-4, "memory_lr_mult": 30.0}                          # ... lr 1e-4, the gate at 3e-3
_CLEAN = {**_GENTLE, "recall_cue_in_place": True}                                         # ... text cues in place

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
    "copy_qk_digits": Recipe("copy_qk with episodes over the 10 digits and the 6 most frequent tokens after the "
                             "warm-up (copy_digits' change, measured again now that a head can match two tokens): "
                             "under copy_qk the pass keys still missed were those with a doubled digit (66825 -> 661..)",
                             {**_REPEATS, "copy_share_end": 0.5, "copy_vocab_after": 16}, {"qk_conv": 2}),
    "copy_qk_text": Recipe("copy_qk with half the planted facts cued by 3-8 tokens of the row's own text instead of "
                           "a template: after fine-tuning copy_qk's trunks in long rows, pass keys fell to 0 while "
                           "every digit was still copied; the first answer token (' ' in bpe-4096) went to the text's "
                           "prior (' to', ' not'), because after a template a number always follows and that token "
                           "is never copied", dict(_QK_TEXT), {"qk_conv": 2}),
    "copy_qk_clean": Recipe("copy_qk_text with text cues in place (recall_cue_in_place) and copy distances drawn "
                            "uniformly (recall_distance): copy_qk_text's seed 1339 trunk copied the training format "
                            "96 tokens back (0.94) but lost evaluation's pass keys there to the first token (' ' -> "
                            "' a'), which a cue seen twice with two continuations teaches it to hedge; and evaluation's "
                            "distance 96 copies ~110 tokens back, which log-uniform draws rarely ask. Measured: in "
                            "3,000 steps two seeds of three reached the bar; on a 6,000-step schedule all three "
                            "copied every pass key at 32 and 96 from step 4,000 (the cpu trunks)",
                            {**_QK_TEXT, "recall_cue_in_place": True, "recall_distance": "uniform"}, {"qk_conv": 2}),
    "trunk_long_rows": Recipe("fine-tuning from the preset's trunk (make pretrain) in the landed 2 x 1,024-token rows, "
                              "where facts are asked beyond the window and the receptive field: lr 1e-3, planted "
                              "numbers of every length but 5 (half of them cued by the row's own text), a fifth of "
                              "the rows repeated passages and a quarter synthetic episodes (none of landed's "
                              "random-token spans), the mix the trunk learned to copy in. Measured: pass keys lost by "
                              "step 300 (README)", dict(_FINETUNE), {"qk_conv": 2}),
    "trunk_long_rows_slow": Recipe("trunk_long_rows at lr 3e-4 instead of 1e-3: at 1e-3, pass keys from copy_qk_text's "
                                   "trunk fell from 0.88 / 0.75 to 0.19 / 0.00 by step 300; the digits were still "
                                   "copied, the first two answer tokens went to the text's prior (' not', '1')",
                                   {**_FINETUNE, "lr": 3e-4}, {"qk_conv": 2}),
    "trunk_dense_rows": Recipe("trunk_long_rows_slow with denser copy targets: 16 facts in six rows of ten and synthetic "
                               "episodes in four (not 8 facts in half and episodes in a quarter): under "
                               "trunk_long_rows_slow pass keys fell to 0 by step 450, while copy targets were a small "
                               "share of each 1,024-token row", dict(_DENSE), {"qk_conv": 2}),
    "trunk_short_rows": Recipe("a control for the fine-tuning recipes: the trunk's own mix (copy_qk_text after its "
                               "ramp: 16 x 128-token rows, half of them synthetic episodes) continued from the trunk at "
                               "lr 3e-4; does continued training keep the pass keys where long rows lose them?",
                               dict(_SHORT), {"qk_conv": 2}),
    "trunk_near_rows": Recipe("trunk_dense_rows with 80% of the facts asked within 96 tokens (the rest anywhere in "
                              "the 1,024-token row): under trunk_dense_rows pass keys fell to 0 by step 450 while the "
                              "same trunk kept them in its own 128-token rows (trunk_short_rows); in long rows half the "
                              "facts are asked beyond the window, where copying cannot answer and the prior is learnt "
                              "for the answer's first tokens", {**_DENSE, "recall_near": 0.8}, {"qk_conv": 2}),
    "trunk_mid_rows": Recipe("trunk_dense_rows in 8 x 256-token rows (4 facts per row): the trunk kept its pass keys "
                             "in its own 128-token rows (trunk_short_rows) and lost them in 1,024-token rows, with or "
                             "without near facts; 256 tokens still ask facts beyond the 128-token window",
                             dict(_MID), {"qk_conv": 2}),
    "trunk_mid_near": Recipe("trunk_mid_rows with every fact asked within 96 tokens: rows longer than the window, but "
                             "no fact the baseline cannot copy; does the copying survive rows of 256 then?",
                             {**_MID, "recall_near": 1.0}, {"qk_conv": 2}),
    "trunk_far_edge": Recipe("trunk_dense_rows with episode gaps of up to 110 tokens, so copies reach 126 tokens back, "
                             "the window's edge: distance 96 (112 tokens back) is where every model is weakest, and the "
                             "mix rarely asks a copy that far", {**_DENSE, "copy_gap_max": 110}, {"qk_conv": 2}),
    "trunk_long_rows_sink": Recipe("trunk_long_rows with a learned attention sink per head (ModelConfig.attn_sink): "
                                   "the trunk learnt in rows of one window, where every query sees the row's first "
                                   "token; in longer rows a head has nowhere to park its weight once that token has "
                                   "left the window", dict(_FINETUNE), {"qk_conv": 2, "attn_sink": True}),
    "trunk_dense_rows_sink": Recipe("trunk_dense_rows with a learned attention sink per head (as trunk_long_rows_sink)",
                                    dict(_DENSE), {"qk_conv": 2, "attn_sink": True}),
    "trunk_own_long": Recipe("trunk_short_rows (the trunk's own mix, repeated passages of text in four rows of ten) in "
                             "2 x 1,024-token rows, 16 facts in a fact row: every long-row recipe before dropped "
                             "repeated passages to a fifth or none, and kept copying the training format while "
                             "losing unseen cues", dict(_SHORT_LONG), {"qk_conv": 2}),
    "trunk_own_long_near": Recipe("trunk_own_long with every copy target (facts, repeated passages, random spans) "
                                  "asked within 96 tokens: in the trunk's mix, pass keys were kept in 128-token rows, "
                                  "fell slowly in 256-token ones and fast in 1,024-token ones, as the share of copy "
                                  "targets beyond the window grew (0, 14%, 43%)",
                                  {**_SHORT_LONG, "recall_near": 1.0}, {"qk_conv": 2}),
    "trunk_own_long_far": Recipe("trunk_own_long_near with a fifth of the copy targets anywhere in the row: the "
                                 "memory's training signal beyond the window",
                                 {**_SHORT_LONG, "recall_near": 0.8}, {"qk_conv": 2}),
    "trunk_own_mixed": Recipe("trunk_own_long_far with every other step in the trunk's own 16 x 128-token rows "
                              "(short_row_every=2): in rows of one window the trunk kept its pass keys, in long rows "
                              "it lost them, and the memory needs long rows",
                              dict(_MIXED), {"qk_conv": 2}),
    "trunk_own_mixed_uniform": Recipe("trunk_own_mixed with copy distances drawn uniformly, not log-uniformly "
                                      "(TrainConfig.recall_distance): evaluation's distance 96 copies about 110 tokens "
                                      "back, where log-uniform draws are rare, and 96 is what long rows wore away",
                                      dict(_MIXED_UNIFORM), {"qk_conv": 2}),
    "trunk_mixed_rows": Recipe("the cpu preset's before trunk_mixed_clean: trunk_own_mixed_uniform, and the LTM's gate "
                               "learning at 10x the lr "
                               "(TrainConfig.memory_lr_mult; 3e-3, the lr it learnt at from random): fine-tuned at "
                               "3e-4, the gate stayed at its initial -2.0 (+-0.03) in every seed, so the memory "
                               "had no chance to switch itself on; nothing else changes, so the baseline trains "
                               "exactly as under trunk_own_mixed_uniform",
                               {**_MIXED_UNIFORM, "memory_lr_mult": 10.0}, {"qk_conv": 2}),
    "trunk_mixed_gentle": Recipe("trunk_mixed_rows at lr 1e-4 instead of 3e-4, the LTM's gate still at 3e-3 "
                                 "(memory_lr_mult 30): under trunk_mixed_rows, distance 96 fell in fine-tuning from "
                                 "the trunk's 1.00 to 0.75 (seed 1338) and from 0.56 to 0.06 (seed 1339). Measured: "
                                 "seed 1338 kept 1.00 to step 750 (0.94 at 900); seed 1339 still fell, to 0.12",
                                 dict(_GENTLE), {"qk_conv": 2}),
    "trunk_mixed_clean": Recipe("the cpu preset's, from copy_qk_clean's trunks: trunk_mixed_gentle with text cues in "
                                "place (TrainConfig.recall_cue_in_place), as the trunks learnt them: a cue copied from "
                                "elsewhere in the row occurs twice before its question, once followed by its own "
                                "text, so the copy's first token is ambiguous; seed 1339 lost exactly that token at "
                                "distance 96 (' ' -> ' a'). From copy_qk_text's trunks it did not help (seed 1339: "
                                "0.12 at 900); from copy_qk_clean's 3,000-step trunks, 96 held at 0.81 (1337) and fell "
                                "from 0.94 to 0.75 (1339); from its 6,000-step trunks (make run) it was 0.94 / 1.00 / "
                                "1.00 for seeds 1337-1339",
                                dict(_CLEAN), {"qk_conv": 2}),
    "trunk_mixed_light": Recipe("trunk_mixed_clean at lr 3e-5 instead of 1e-4, the LTM's gate still at 3e-3 "
                                "(memory_lr_mult 100): under trunk_mixed_clean, distance 96 fell within the first 150 "
                                "steps from the trunk's 0.94 to 0.75 (seed 1339) and then held. Measured: it still fell, "
                                "to 0.81 at 150 and 900 (log2 p at 96 -0.62 bits per token at 900, against -0.76 "
                                "at 1e-4 and the trunk's -0.36)",
                                {**_CLEAN, "lr": 3e-5, "memory_lr_mult": 100.0}, {"qk_conv": 2}),
    "trunk_own_mid": Recipe("trunk_own_long in 8 x 256-token rows, 4 facts in a fact row",
                            {**_SHORT, "seq_len": 256, "batch_size": 8, "recall_facts_per_row": 4}, {"qk_conv": 2}),
}


class RecipeError(ValueError):
    pass


def check_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise RecipeError(f"unknown recipe {name!r}: choose one of {', '.join(RECIPES)} (revena_lib/training/recipes.py)")
    return RECIPES[name]


def _recipe_fields() -> tuple[set, set]:
    """The TrainConfig and ModelConfig fields any recipe sets."""
    return ({k for r in RECIPES.values() for k in r.train}, {k for r in RECIPES.values() for k in r.model})


def apply_recipe(preset: str | Preset, name: str) -> Preset:
    """A copy of ``preset`` with the recipe's training and model fields set. A field that another recipe sets and this
    one does not takes its dataclass default (a copying aid off, no trunk), so a recipe means the same thing whatever
    the preset already turned on (the cpu preset fine-tunes from a trunk with qk_conv; ``landed`` does neither)."""
    recipe = check_recipe(name)
    preset = preset_copy(preset)
    train_fields, model_fields = _recipe_fields()
    train_defaults, model_defaults = TrainConfig(), ModelConfig()
    train = {k: getattr(train_defaults, k) for k in train_fields} | recipe.train
    model = {k: getattr(model_defaults, k) for k in model_fields} | recipe.model
    preset.train = dataclasses.replace(preset.train, **train, recipe=name)
    preset.model = dataclasses.replace(preset.model, **model)
    return preset
