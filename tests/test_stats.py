"""Intervals and verdicts (evaluation/stats.py) on constructed data: seeds widen intervals, pairing narrows them."""

import numpy as np
import pytest

from revena_lib.evaluation import stats


def test_ratio_interval_contains_the_ratio_and_collapses_for_constant_data():
    rng = np.random.default_rng(0)
    chars = rng.integers(100, 1000, 50).astype(float)
    nll = chars * rng.normal(2.0, 0.2, 50)
    lo, hi = stats.hierarchical_ci(nll, chars, samples=500, seed=1)
    assert lo < stats.point(nll, chars) < hi and hi - lo < 0.3
    assert stats.point(nll, chars) == pytest.approx(nll.sum() / chars.sum())
    assert stats.hierarchical_ci(2.0 * chars, chars, samples=100) == pytest.approx([2.0, 2.0])


def test_training_noise_widens_the_interval():
    rng = np.random.default_rng(0)
    chars = rng.integers(100, 1000, 40).astype(float)
    doc = rng.normal(2.0, 0.05, 40)
    calm = np.stack([chars * doc] * 3)                                          # 3 seeds that agree
    noisy = np.stack([chars * (doc + shift) for shift in (-0.3, 0.0, 0.3)])      # 3 seeds that do not
    width = lambda ci: ci[1] - ci[0]
    assert width(stats.hierarchical_ci(noisy, chars, 500)) > 5 * width(stats.hierarchical_ci(calm, chars, 500))
    assert stats.point(noisy, chars) == pytest.approx(stats.point(calm, chars))


def test_paired_comparison_sees_a_small_consistent_gain_and_says_so():
    rng = np.random.default_rng(0)
    chars = rng.integers(100, 1000, 40).astype(float)
    base = np.stack([chars * rng.normal(2.0, 0.5, 40) for _ in range(3)])   # documents and seeds differ a lot ...
    arm = base - 0.05 * chars                                                # ... but the arm is 0.05 bpc better on each
    cmp = stats.compare(base, arm, chars, lower_is_better=True, samples=500)
    assert cmp["diff"] == pytest.approx(-0.05) and cmp["paired_seeds"]
    assert cmp["ci95"] == pytest.approx([-0.05, -0.05], abs=1e-9)           # pairing removes document and seed variance
    assert cmp["verdict"] == "better"
    assert stats.compare(arm, base, chars, lower_is_better=True, samples=200)["verdict"] == "worse"
    unpaired = stats.compare(base, arm, chars, lower_is_better=True, paired_seeds=False, samples=500)
    assert unpaired["ci95"][1] - unpaired["ci95"][0] > 0.01                   # without pairing, seed noise remains


def test_verdicts_follow_the_direction_of_the_metric():
    assert stats.verdict([0.1, 0.3], lower_is_better=False) == "better"      # recall: higher is better
    assert stats.verdict([0.1, 0.3], lower_is_better=True) == "worse"        # BPC: lower is better
    assert stats.verdict([-0.1, 0.3], lower_is_better=True) == "no detectable difference"
    assert stats.verdict([float("nan")] * 2, lower_is_better=True) == "no detectable difference"
    same = np.ones((2, 30))
    assert stats.compare(same, same, lower_is_better=False, samples=100)["verdict"] == "no detectable difference"


def test_mean_and_median_intervals():
    a = np.array([0, 1] * 50, float)
    lo, hi = stats.hierarchical_ci(a, samples=1000)
    assert lo < 0.5 < hi
    assert all(np.isnan(x) for x in stats.hierarchical_ci(np.zeros((1, 0)), samples=10))
    timings = [2.0 + 0.01 * k for k in range(21)] + [100.0]          # one outlier batch (the machine was busy)
    median, (mlo, mhi) = stats.median_ci(timings, samples=500)
    assert median == pytest.approx(2.105) and mlo <= median <= mhi < 3.0
