"""Intervals and verdicts: bootstrap over seeds and documents (or recall items), deterministic per seed.

Training noise is part of every headline interval: each bootstrap resample first draws seeds (with
replacement), then documents or items, and recomputes the statistic on that draw. A comparison of two arms
resamples the documents/items they share jointly, and the seeds jointly too when both arms were trained
with the same seeds (same initial weights where shapes coincide, same batches): a paired design.

    ci = hierarchical_ci(nll_bits, chars)                      # nll_bits (seeds, docs): BPC with a 95% interval
    cmp = compare(base_bits, arm_bits, chars, lower_is_better=True)   # {"diff", "ci95", "verdict", ...}
"""

from __future__ import annotations

import numpy as np

BETTER, WORSE, NO_DIFFERENCE = "better", "worse", "no detectable difference"
CANNOT_TELL = "cannot tell"   # a recall comparison whose arms do not copy inside their window (the positive control)


def _interval(values: np.ndarray) -> list[float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return [float("nan"), float("nan")]
    lo, hi = np.percentile(finite, [2.5, 97.5])
    return [float(lo), float(hi)]


def _statistic(values: np.ndarray, den: np.ndarray | None, seeds: np.ndarray, items: np.ndarray) -> np.ndarray:
    """values (S, N); seeds (R, S') and items (R, N') index arrays -> (R,): the seed mean of each seed's
    ratio of sums (den given: e.g. NLL bits / characters) or of its item mean."""
    picked = values[seeds[:, :, None], items[:, None, :]]                 # (R, S', N')
    if den is None:
        return np.nanmean(picked, axis=(1, 2))
    return (picked.sum(2) / den[items].sum(1)[:, None]).mean(1)


def _draws(n_seeds: int, n_items: int, samples: int, rng: np.random.Generator):
    return rng.integers(0, n_seeds, (samples, n_seeds)), rng.integers(0, n_items, (samples, n_items))


def point(values, den=None) -> float:
    """The statistic on all seeds and items (seed mean of per-seed ratio of sums, or grand mean)."""
    values = np.atleast_2d(np.asarray(values, float))
    if values.size == 0:
        return float("nan")
    all_seeds, all_items = np.arange(values.shape[0])[None], np.arange(values.shape[1])[None]
    return float(_statistic(values, None if den is None else np.asarray(den, float), all_seeds, all_items)[0])


def hierarchical_ci(values, den=None, samples: int = 2000, seed: int = 0) -> list[float]:
    """95% interval of ``point(values, den)`` resampling seeds, then items. values (S, N) or (N,)."""
    values = np.atleast_2d(np.asarray(values, float))
    if values.size == 0:
        return [float("nan"), float("nan")]
    den = None if den is None else np.asarray(den, float)
    seeds, items = _draws(values.shape[0], values.shape[1], samples, np.random.default_rng(seed))
    return _interval(_statistic(values, den, seeds, items))


def verdict(ci95, lower_is_better: bool) -> str:
    """better / worse / no detectable difference, from the interval of (arm - reference)."""
    lo, hi = ci95
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return NO_DIFFERENCE
    if hi < 0:
        return BETTER if lower_is_better else WORSE
    if lo > 0:
        return WORSE if lower_is_better else BETTER
    return NO_DIFFERENCE


def compare(reference, arm, den=None, lower_is_better: bool = True, paired_seeds: bool = True,
            samples: int = 2000, seed: int = 0) -> dict:
    """arm - reference with a 95% hierarchical bootstrap interval and a verdict.

    reference (S_a, N), arm (S_b, N): the same N documents/items for both (always resampled jointly). With
    ``paired_seeds`` (same seed list, same order) seed draws are shared too; otherwise each arm draws its own.
    """
    a, b = (np.atleast_2d(np.asarray(x, float)) for x in (reference, arm))
    den = None if den is None else np.asarray(den, float)
    diff = point(b, den) - point(a, den)
    if a.size == 0 or b.size == 0:
        return {"diff": float("nan"), "ci95": [float("nan"), float("nan")], "verdict": NO_DIFFERENCE}
    paired_seeds = paired_seeds and a.shape[0] == b.shape[0]
    rng = np.random.default_rng(seed)
    seeds_a, items = _draws(a.shape[0], a.shape[1], samples, rng)
    seeds_b = seeds_a if paired_seeds else rng.integers(0, b.shape[0], (samples, b.shape[0]))
    diffs = _statistic(b, den, seeds_b, items) - _statistic(a, den, seeds_a, items)
    ci = _interval(diffs)
    return {"diff": float(diff), "ci95": ci, "verdict": verdict(ci, lower_is_better),
            "paired_seeds": bool(paired_seeds), "seeds": [int(a.shape[0]), int(b.shape[0])]}


def median_ci(values, samples: int = 2000, seed: int = 0) -> tuple[float, list[float]]:
    """Median and a 95% bootstrap interval of the median (for timings)."""
    x = np.asarray(values, float)
    if x.size == 0:
        return float("nan"), [float("nan"), float("nan")]
    idx = np.random.default_rng(seed).integers(0, len(x), (samples, len(x)))
    return float(np.median(x)), _interval(np.median(x[idx], axis=1))
