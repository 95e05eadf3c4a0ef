"""Configuration: one dataclass per concern, and the three presets (``smoke``, ``cpu``, ``paper``).

The brief's numbers (70 M parameters, window 128, stride 64, LTM of 256 entries written above 4.5 bits
and read above cosine 0.8, AdamW 5e-4, 500 warm-up steps, 10,000 steps, batch 8) are the ``paper``
preset. ``cpu`` runs the whole pipeline on a 2-core CPU in about 30 minutes; ``smoke`` runs in seconds
and is what the tests and CI use. Arms (``revena_lib/arms.py``) differ from the preset only in the model
fields their row in the arm table overrides.

    from revena_lib.config import get_preset
    preset = get_preset("cpu"); preset.model.n_layer
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field


@dataclass
class DataConfig:
    source: str = "auto"            # "auto" (hub if reachable, else embedded), "openwebtext", "embedded"
    num_docs: int = 10_000          # first N documents of the source (the embedded corpus has 233)
    max_doc_chars: int = 50_000     # documents are truncated to this many characters before tokenising
    val_fraction: float = 0.1       # split by document, never inside one
    split_seed: int = 1337
    tokenizer: str = "gpt2"         # "gpt2" (the brief's), or "bpe-N": byte-level BPE of N tokens learned from train


@dataclass
class ModelConfig:
    family: str = "transformer"     # which revena_lib/models/<family>.py builds the model (set by the arm table)
    vocab_size: int = 50257         # GPT-2 BPE
    n_layer: int = 14
    n_head: int = 8
    n_embd: int = 512
    window: int = 128               # sliding-window STM: token t sees t-window+1 .. t (exactly, any T)
    chunk_size: int = 64            # the brief's stride: sequences run chunk by chunk, each against a K/V cache
                                    # of the previous ceil((window-1)/chunk_size) chunks (2 here), banded mask
    rope_base: float = 10_000.0
    smear_key: bool = False         # an aid to copying (Olsson et al. 2022, "smeared key"): each attention key becomes
                                    # a k_t + (1 - a) k_(t-1), a = sigmoid of a learned logit per head, so one layer can
                                    # match "the token before this key" and an induction head needs no second layer.
                                    # Off in paper (the brief's model); recipes turn it on (training/recipes.py)
    qk_conv: int = 0                # an aid to copying past an ambiguous token (0 = off): with n, each key becomes a
                                    # per-channel mix of k_t .. k_(t-n) and each query adds learned multiples of
                                    # k_(t-1) .. k_(t-n+1), so one head can match the n tokens before a key (a short
                                    # convolution, as H3's shift SSM and Based's short conv). With one token
                                    # (smear_key), "66825" is copied "66625". Off in paper; not with smear_key
    attn_sink: bool = False         # a learned sink logit per head (a zero-value key every query sees; gpt-oss, and
                                    # Xiao et al. 2023's attention sinks): a place for a head's weight when the row's
                                    # first token has left the window. Off in paper
    dropout: float = 0.0
    # Long-term memory (the with_ltm arm sets use_ltm; revena_lib/arms.py)
    use_ltm: bool = False
    ltm_capacity: int = 256         # entries per sequence, FIFO eviction when full
    ltm_write_threshold_bits: float = 4.5   # write tokens whose surprisal is strictly above this
    ltm_write_rule: str = "surprisal"       # "surprisal" (the brief), or "random": as many tokens per chunk as the
                                            # surprisal rule would write, chosen uniformly (the ablation arm), or
                                            # "topk": the ltm_write_topk most surprising tokens of each chunk
    ltm_write_topk: int = 8                 # tokens per chunk under the "topk" rule (evaluation-time sweep)
    ltm_similarity_threshold: float = 0.8   # a memory entry is a hit when cosine(query, key) is strictly above this
    ltm_layer: int = -1             # which attention layer owns the memory (negative counts from the end)
    ltm_score_temperature: float = 0.1      # softmax over hit cosines uses cosine / temperature
    ltm_soft_width: float = 0.05            # training only: the cut relaxed to sigmoid((cos - cut) / width), so the
                                            # memory gets gradient before any pair passes the hard cut (0 = hard)
    # Echo-state reservoir (family "reservoir", revena_lib/models/reservoir.py): reservoirpy's names and meanings.
    # W and W_in are fixed buffers drawn by reservoirpy from reservoir_seed + layer index; only the readout trains.
    reservoir_units: int = 0        # reservoir size N per block; 0 = 2 * n_embd, where the reservoir's dense
                                    # multiply-adds per token (W_in, W, readout) equal the FFN's 8 * n_embd^2
    reservoir_lr: float = 0.5       # leak rate: x_t = (1 - lr) x_{t-1} + lr tanh(W_in u_t + W x_{t-1} + b)
    reservoir_sr: float = 0.9       # spectral radius of W (below 1: the echo-state property's usual side)
    reservoir_input_scaling: float = 0.25   # W_in entries are +-input_scaling (reservoirpy's bernoulli)
    reservoir_rc_connectivity: float = 0.1  # share of nonzero entries of W
    reservoir_input_connectivity: float = 0.1   # share of nonzero entries of W_in
    reservoir_bias_scaling: float = 0.0     # b entries are +-this (0 = no bias, reservoirpy's default)
    reservoir_seed: int = 42        # layer i's matrices come from seed + i (fixed across training seeds)
    reservoir_keep_ffn: bool = False        # False: the FFN is replaced (the seed's design); True: reservoir beside it
    # Tiny Recursive Model (family "recursive", revena_lib/models/recursive.py): one small weight-shared core of
    # trm_layers blocks refines two latents per chunk, H cycles of (L updates of z_L, then one of z_H); the last
    # chunk's z_H is the carry the next chunk attends to.
    trm_hidden: int = 0             # the core's width; 0 = n_embd (no projections between embedding and core)
    trm_layers: int = 0             # blocks in the core; 0 = n_layer: then the core has exactly the baseline's
                                    # block parameters (the trainable count matches the baseline's)
    trm_h_cycles: int = 2           # H: z_H updates per chunk; only the last cycle runs with gradient
    trm_l_cycles: int = 2           # L: z_L updates before each z_H update
    trm_qk_conv: bool = False       # keep qk_conv inside the core (over the carry's latents, then the chunk's): the
                                    # matched core without it did not copy at cpu (induction score 0.17 nats)

    @property
    def memory_layer_index(self) -> int:
        return self.ltm_layer % self.n_layer

    def __post_init__(self):
        if self.n_embd % self.n_head or (self.n_embd // self.n_head) % 2:
            raise ValueError(f"ModelConfig: n_embd={self.n_embd} must be divisible by n_head={self.n_head} "
                             "into an even head size (RoPE rotates pairs of dimensions)")
        if self.window < 1 or self.chunk_size < 1:
            raise ValueError(f"ModelConfig: window={self.window} and chunk_size={self.chunk_size} must be >= 1")
        if not 0 <= self.qk_conv < min(self.window, self.chunk_size) or (self.qk_conv and self.smear_key):
            raise ValueError(f"ModelConfig: qk_conv={self.qk_conv} must be 0 (off) or the tokens of prefix one head "
                             f"matches, below window and chunk_size; and not together with smear_key (qk_conv=1 is a "
                             "smeared key per channel)")
        if not -self.n_layer <= self.ltm_layer < self.n_layer:
            raise ValueError(f"ModelConfig: ltm_layer={self.ltm_layer} must name one of the {self.n_layer} layers "
                             f"(0..{self.n_layer - 1}, or negative from the end)")
        if self.ltm_write_rule not in ("surprisal", "random", "topk"):
            raise ValueError(f"ModelConfig: ltm_write_rule={self.ltm_write_rule!r} must be 'surprisal', 'random' "
                             "or 'topk'")
        if self.ltm_write_topk < 1:
            raise ValueError(f"ModelConfig: ltm_write_topk={self.ltm_write_topk} must be >= 1 (tokens written per "
                             "chunk under ltm_write_rule='topk')")
        if self.ltm_capacity < 1 or self.ltm_score_temperature <= 0:
            raise ValueError(f"ModelConfig: ltm_capacity={self.ltm_capacity} must be >= 1 and "
                             f"ltm_score_temperature={self.ltm_score_temperature} > 0")
        if not (0.0 < self.reservoir_lr <= 1.0 and self.reservoir_units >= 0 and self.reservoir_sr >= 0
                and 0.0 < self.reservoir_rc_connectivity <= 1.0 and 0.0 < self.reservoir_input_connectivity <= 1.0):
            raise ValueError(f"ModelConfig: reservoir_lr={self.reservoir_lr} must be in (0, 1], reservoir_units="
                             f"{self.reservoir_units} >= 0 (0 = 2 * n_embd), reservoir_sr={self.reservoir_sr} >= 0 and "
                             f"both connectivities (rc {self.reservoir_rc_connectivity}, input "
                             f"{self.reservoir_input_connectivity}) in (0, 1]")
        if self.trm_hidden < 0 or self.trm_width % self.n_head or (self.trm_width // self.n_head) % 2:
            raise ValueError(f"ModelConfig: trm_hidden={self.trm_hidden} must be >= 0 (0 = n_embd) and divide by "
                             f"n_head={self.n_head} into an even head size (RoPE rotates pairs of dimensions)")
        if self.trm_layers < 0 or self.trm_h_cycles < 1 or self.trm_l_cycles < 1:
            raise ValueError(f"ModelConfig: trm_layers={self.trm_layers} must be >= 0 (0 = n_layer), and "
                             f"trm_h_cycles={self.trm_h_cycles} and trm_l_cycles={self.trm_l_cycles} >= 1")

    @property
    def reservoir_size(self) -> int:
        return self.reservoir_units or 2 * self.n_embd

    @property
    def trm_width(self) -> int:
        return self.trm_hidden or self.n_embd

    @property
    def trm_depth(self) -> int:
        return self.trm_layers or self.n_layer


@dataclass
class TrainConfig:
    seq_len: int = 512              # longer than the window, or the LTM has nothing to remember
    batch_size: int = 8
    steps: int = 10_000
    warmup_steps: int = 500
    lr: float = 5e-4
    min_lr_ratio: float = 0.1       # cosine decays to lr * min_lr_ratio
    beta1: float = 0.9
    beta2: float = 0.95
    weight_decay: float = 0.1       # weight matrices only
    grad_clip: float = 1.0
    log_interval: int = 10          # steps between metrics.jsonl lines
    eval_interval: int = 500        # steps between validation loss / BPC
    eval_batches: int = 8
    seed: int = 1337
    # Copying curriculum (data/recall_mix.py): this share of every batch's rows carries planted facts that are
    # asked again later in the row, so the models can learn to copy from context (the recall test's positive control).
    recall_mix: float = 0.0
    recall_facts_per_row: int = 4
    recall_induction: float = 0.0   # and this share carries repeated spans of random tokens (an induction warm-up)
    recall_repeats: float = 0.0     # and this share repeats passages of its own natural text later in the row
    recall_fact_digits: tuple[int, ...] = (3, 4)   # digits of a planted fact's number (never 5: evaluation's keys)
    recall_text_cues: float = 0.0   # this share of planted facts has 3-8 tokens of the row's own text as its cue, not a
                                    # template: a template predicts that a number follows, so its first token (' ' in
                                    # bpe-N) is never copied, and an unseen cue (" The pass key is") gets the text's
                                    # prior (' the', ' not') instead
    recall_cue_in_place: bool = False  # a text cue is the row's own text where the fact is written (its answer written
                                    # over the tokens after it), not copied from elsewhere in the row: copied, the cue
                                    # occurs twice before its question with two continuations (its original text and
                                    # the number), so the copy's first token is ambiguous and gets hedged
    recall_near: float = 0.0        # this share of planted copy targets (facts, random spans, repeated passages) is
                                    # asked at most 96 tokens later (inside the window); the rest anywhere in the row.
                                    # In 1,024-token rows 43% land beyond the window, where the baseline cannot copy
    recall_distance: str = "log-uniform"   # how far back a copy target is asked: "log-uniform" from 8 tokens to the
                                    # longest that fits, or "uniform" (as many 80-96 back as 8-24: evaluation's 96, with
                                    # the fact and question, copies ~110 back, the edge of log-uniform draws)
    short_row_every: int = 0        # every this-many-th step (0 = never) reads short_row_len-token rows instead, as many
    short_row_len: int = 128        # as keep the tokens per step, with facts per row scaled to the row: rows of one
                                    # window keep copying general, long rows give the memory its targets (README)
    recipe: str = ""                # the copying recipe this run was trained under (training/recipes.py), if named
    # Synthetic copying curriculum (data/synthetic.py): at this size induction forms in minutes on short rows of
    # repeated random spans and not in 20 M tokens of text, so a run can start there and move into text gradually.
    copy_warmup_steps: int = 0      # steps of synthetic episodes only, in rows of copy_warmup_seq_len tokens (the
    copy_warmup_seq_len: int = 64   # same tokens per step: batch_size * seq_len / copy_warmup_seq_len rows)
    copy_ramp_steps: int = 0        # then the synthetic share of the rows falls linearly to copy_share_end ...
    copy_share_end: float = 0.0     # ... and stays there (0 everywhere = no synthetic rows, the default)
    copy_vocab: int = 64            # episodes draw from the 10 digit tokens and the most frequent other tokens
    copy_vocab_after: int = 0       # after the warm-up, from this many instead (0 = copy_vocab): a small one repeats
                                    # tokens within a span, so only a longer prefix than one token finds the copy
    copy_span_min: int = 4          # span lengths vary, so only the earlier occurrence's content finds the copy
    copy_span_max: int = 16
    copy_gap_max: int = 32          # after the warm-up, up to this many tokens between a span and its copy
    # Where a fresh run's weights start (training/trunk.py): "" = random initialisation; "trunk" = the shipped trunk of
    # this preset and seed (trunks/<preset>/seed-<seed>/, built by `make pretrain`); anything else = a trunk directory.
    # Only transformer-family arms can start from a trunk; the others start random and their config.json says why.
    init_from: str = ""
    memory_lr_mult: float = 1.0     # the LTM's own parameters (its gate, one logit per head) learn at lr x this: fine-tuned
                                    # from a trunk at a small lr, the gate stays where it started (-2: sigmoid 0.12)


@dataclass
class PretrainConfig:
    """How this preset's trunk is trained (``python -m revena_lib.pretrain``, training/trunk.py): the baseline arm,
    trained once per seed for as long as copying needs, that every transformer arm can fine-tune from."""
    recipe: str = ""                # a name in training/recipes.py RECIPES; "" = the preset's own training config
    steps: int = 0                  # optimizer steps (and the cosine schedule's length); 0 = the preset's train.steps


@dataclass
class EvalConfig:
    max_docs: int = 0               # validation documents for BPC (0 = all)
    max_tokens_per_doc: int = 0     # read each document from its start up to this many tokens (0 = whole)
    doc_seed: int = 0               # which max_docs documents: a seeded random sample of the validation split
    batch_size: int = 8
    recall_distances: tuple[int, ...] = (32, 64, 96, 192, 256, 384, 512, 768, 1024)
    recall_items_per_distance: int = 64
    recall_items_beyond_field: int = 0   # items per distance beyond the receptive field (n_layer x (window - 1)), where
                                         # only a memory can recall and intervals need the most items (0 = as above)
    recall_seed: int = 2024
    bootstrap_samples: int = 2000
    throughput_tokens: int = 32_768  # tokens timed for tokens_per_sec, after warm-up ...
    throughput_batches: int = 20     # ... and never fewer timed batches than this (the same for every arm)
    positive_control_exact: float = 0.9  # in-window pass-key exact match every seed of both arms must reach before a
                                         # recall comparison gets a verdict (else "cannot tell"; evaluation/copying.py)


@dataclass
class Preset:
    name: str
    seeds: tuple[int, ...] = (1337,)   # what run_all / notebook 03 train per arm; intervals resample them
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _smoke() -> Preset:
    return Preset(
        name="smoke",
        data=DataConfig(num_docs=40, max_doc_chars=8_000),
        model=ModelConfig(n_layer=2, n_head=2, n_embd=32),
        train=TrainConfig(seq_len=256, batch_size=2, steps=12, warmup_steps=2, lr=1e-3,
                          log_interval=2, eval_interval=6, eval_batches=2, recall_mix=0.5, recall_facts_per_row=2,
                          recall_induction=0.25),
        eval=EvalConfig(max_docs=3, max_tokens_per_doc=512, batch_size=2,
                        recall_distances=(32, 256), recall_items_per_distance=4,
                        bootstrap_samples=200, throughput_tokens=1024),
        pretrain=PretrainConfig(steps=4),   # a trunk in seconds, for the tests (tests/test_trunk.py)
    )


def _cpu() -> Preset:
    return Preset(
        name="cpu",
        seeds=(1337, 1338, 1339),   # three seeds per arm: headline intervals include training noise
        # 250k characters keeps every State of the Union address whole (the longest has 217k): long documents are
        # what give the LTM something to remember beyond the window. A 4,096-token BPE learned from the training
        # split: on a 2-core CPU in fp32 the GPT-2 50,257-way output layer held training to ~1,000 tokens/s; with
        # 4,096 tokens the same model trains at ~6,600 tokens/s (one process, 2 threads), so three seeds per arm fit.
        data=DataConfig(max_doc_chars=250_000, tokenizer="bpe-4096"),
        # qk_conv=2 (one head matches the two tokens before a key): the trunks were trained with it, and every
        # transformer arm starts from its seed's trunk (README, "Models that copy").
        model=ModelConfig(n_layer=4, n_head=4, n_embd=128, qk_conv=2),
        # Recipe trunk_mixed_clean (training/recipes.py; a test keeps the two equal): 900 steps from the shipped trunk.
        # Odd steps read 2 x 1,024-token rows, longer than the receptive field of the stacked windows (4 x 127 = 508),
        # so a fifth of the copy targets land beyond the window and the receptive field, where only a memory can
        # answer; even steps read 16 x 128-token rows (one window), where the trunk kept its pass keys and long rows
        # alone lost them. Rows carry planted facts (3 in 10; half cued by the row's own text where the fact stands),
        # repeated random spans (2 in 10), repeated passages of text (4 in 10), and half of them are synthetic copy
        # episodes. Copy distances are uniform, not log-uniform (evaluation's 96 copies ~110 back). lr 1e-4: at 3e-4
        # the trunks lost more of distance 96; the LTM's gate learns at 30 x lr (3e-3, its rate from random).
        # 900 x 2,048 = 1.8 M tokens per run, ~7 min as one of two parallel one-thread processes.
        train=TrainConfig(seq_len=1024, batch_size=2, steps=900, warmup_steps=50, lr=1e-4,
                          log_interval=10, eval_interval=150, eval_batches=8,
                          recall_mix=0.3, recall_facts_per_row=16, recall_induction=0.2, recall_repeats=0.4,
                          recall_fact_digits=(2, 3, 4, 6, 7, 8), recall_text_cues=0.5, recall_cue_in_place=True,
                          recall_near=0.8, recall_distance="uniform", short_row_every=2, short_row_len=128,
                          copy_share_end=0.5, copy_gap_max=96, memory_lr_mult=30.0, recipe="trunk_mixed_clean",
                          init_from="trunk"),
        # The trunks (make pretrain, shipped in trunks/cpu/): the baseline trained from random under copy_qk_clean for
        # 6,000 steps (README, "Models that copy"), about 38 minutes per seed on one core. At 3,000 steps (the cosine
        # schedule ended at 3,000) no seed copied every pass key 96 tokens back; on the 6,000-step schedule all three
        # did by step 4,000, when the induction score jumped from ~0.15 to 0.3-0.5 nats.
        pretrain=PretrainConfig(recipe="copy_qk_clean", steps=6000),
        # Distances 32 and 96 are inside the 128-token window (the fact is visible), 192 and 384 between the window
        # and the receptive field (508), 768 beyond it. 200 items at 768 (16 elsewhere), so an interval beyond the
        # receptive field can exclude zero (issue 10): the cheapest way there, since only that distance grows.
        eval=EvalConfig(max_docs=16, max_tokens_per_doc=2048, batch_size=8,
                        recall_distances=(32, 96, 192, 384, 768), recall_items_per_distance=16,
                        recall_items_beyond_field=200, throughput_tokens=8192),
    )


def _paper() -> Preset:
    return Preset(name="paper")  # the dataclass defaults are the brief's numbers


PRESETS = {"smoke": _smoke, "cpu": _cpu, "paper": _paper}


def get_preset(name: str) -> Preset:
    """A fresh copy of the named preset; an unknown name says which ones exist."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)} (e.g. --preset cpu)")
    return PRESETS[name]()


def preset_copy(preset: "str | Preset") -> Preset:
    """A preset to change freely: the named one fresh, or a deep copy of the one given."""
    return get_preset(preset) if isinstance(preset, str) else copy.deepcopy(preset)
