"""Scoring one arm: every seed's model on the evaluation documents, the recall items and the diagnostics.

``score_arm`` loads each finished seed of an arm and measures, under the device's autocast: per-document NLL (and
entry lifetimes for an LTM), recall item scores, question/answer key cosines (LTM reads on) and the induction score.
The result (``ScoredArm``) stacks the seeds; ``revena_lib/evaluation/results.py`` turns it into results.json.
``ForwardWith`` scores the same weights with a forward() switch fixed (the reads-off ablations).

    scored, model = score_arm("with_ltm", run_dirs, docs, items, device, preset.eval, Log(verbose=True))
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np
import torch

from revena_lib.config import EvalConfig
from revena_lib.evaluation.bpc import document_nll
from revena_lib.evaluation.copying import induction_attention
from revena_lib.evaluation.induction import induction_score
from revena_lib.evaluation.ltm_analysis import answer_key_cosines
from revena_lib.evaluation.recall import score_recall_items
from revena_lib.training.checkpoint import load_model
from revena_lib.training.device import autocast


def recall_item_counts(ecfg: EvalConfig, receptive_field: int) -> dict[int, int]:
    """{distance: items} of an EvalConfig: recall_items_per_distance, or recall_items_beyond_field (when set) for
    distances beyond the receptive field of the stacked windows."""
    far = ecfg.recall_items_beyond_field or ecfg.recall_items_per_distance
    return {int(d): (far if d > receptive_field else ecfg.recall_items_per_distance) for d in ecfg.recall_distances}


class Log:
    """Progress lines on stderr, or nothing (``verbose=False``)."""

    def __init__(self, verbose: bool):
        self.verbose = verbose

    def __call__(self, msg: str) -> None:
        if self.verbose:
            print(msg, file=sys.stderr)


class ForwardWith(torch.nn.Module):
    """A trained model called with fixed forward() switches (e.g. memory_read=False): an evaluation-time ablation
    with the same weights."""

    def __init__(self, model, **switches):
        super().__init__()
        self.model, self.switches, self.cfg = model, switches, model.cfg

    def forward(self, idx, targets=None, introspect=False, **kwargs):
        return self.model(idx, targets, introspect=introspect, **{**kwargs, **self.switches})

    def num_parameters(self) -> int:
        return self.model.num_parameters()


@dataclass
class ScoredArm:
    """One arm's measurements, seeds stacked: nll (S, D), bucket_bits (S, D, buckets), recall score dicts (S lists)."""
    seeds: list
    nll: np.ndarray
    bucket_bits: np.ndarray
    recall: list
    counts: list
    run_dirs: list
    configs: list
    num_parameters: int
    has_memory: bool
    lifetimes: list = field(default_factory=list)    # per seed: evicted entries' lifetimes (tokens), all documents
    censored: list = field(default_factory=list)     # per seed: entries still held at documents' ends
    cosines: list = field(default_factory=list)      # per seed: ltm_analysis.answer_key_cosines (LTM read on)
    induction: list = field(default_factory=list)    # per seed: induction.induction_score
    induction_heads: list = field(default_factory=list)   # per seed: (n_layer, n_head) induction attention, or None


def score_arm(arm, run_dirs, docs, items, device, ecfg, log, switches=None) -> tuple[ScoredArm, torch.nn.Module]:
    """Load and score every seed of one arm; returns the measurements and the first seed's model (for timing).
    ``switches``: forward() switches for every call (an evaluation-time ablation, e.g. memory_read=False)."""
    seeds, nll, buckets, recall, counts, configs, first = [], [], [], [], [], [], None
    lifetimes, censored, cosines, induction, heads = [], [], [], [], []
    for run_dir in run_dirs:
        torch.manual_seed(ecfg.recall_seed)   # the random-write arm draws its writes: the same draws every evaluation
        model, config = load_model(run_dir, device=device)
        if switches:
            model = ForwardWith(model, **switches)
        log(f"evaluate: {arm} seed {config.get('seed')} ({run_dir})")
        ltm = bool(getattr(model.cfg, "use_ltm", False))
        eot = docs[0]["tokenizer"].eot_token
        with autocast(device):
            measured = document_nll(model, docs, device, lifetimes=ltm, **({"progress": True} if log.verbose else {}))
            recall.append(score_recall_items(model, items, device=device, batch_size=ecfg.batch_size,
                                             tokenizer=docs[0]["tokenizer"]))
            if ltm and (not switches or switches.get("memory_read", True)):
                cosines.append(answer_key_cosines(model, items, seed=ecfg.recall_seed, batch_size=ecfg.batch_size,
                                                  eot=eot))
            induction.append(induction_score(model, eot=eot, seed=ecfg.recall_seed, batch_size=ecfg.batch_size))
            heads.append(induction_attention(getattr(model, "model", model), eot, seed=ecfg.recall_seed))
        if ltm:
            lifetimes.append(np.concatenate(measured["lifetimes"]) if measured["lifetimes"] else np.zeros(0))
            censored.append(measured["censored"])
        seeds.append(config.get("seed", run_dir.name))
        nll.append(measured["nll_bits"])
        buckets.append(measured["bucket_bits"])
        counts.append(measured["counts"])
        configs.append(config)
        first = model if first is None else first
    memory = bool(getattr(first.cfg, "use_ltm", False)) and (not switches or switches.get("memory_read", True))
    return ScoredArm(seeds, np.stack(nll), np.stack(buckets), recall, counts, list(map(str, run_dirs)), configs,
                   int(first.num_parameters()), memory, lifetimes, censored, cosines, induction, heads), first


def recall_matrix(scored: ScoredArm, key: str, mask: np.ndarray) -> np.ndarray:
    """One recall score (``key``) of the items kept by ``mask``, per seed: (S, N')."""
    return np.array([[r[key] for r, keep in zip(rows, mask) if keep] for rows in scored.recall], float)  # (S, N')


def receptive_field(scored: ScoredArm, window: int) -> int:
    """How far back the stacked windows reach: n_layer x (window - 1) tokens."""
    return int((scored.configs[0].get("model") or {}).get("n_layer", 1)) * (window - 1)
