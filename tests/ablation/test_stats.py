"""Mean ± std, the two-level bootstrap interval and the overlap rule, against references computed
by hand and with plain numpy (explicit item arrays, exact enumeration of the seed resamples)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from vilgkit.ablation.stats import Summary, fmt, mean_std, overlap, summarise, verdict


def test_mean_and_sample_standard_deviation_by_hand():
    mean, std = mean_std([0.5, 0.7, 0.6])
    assert mean == pytest.approx(0.6)
    assert std == pytest.approx(0.1)  # sqrt(((-0.1)^2 + 0.1^2 + 0) / (3 - 1))
    assert std == pytest.approx(np.std([0.5, 0.7, 0.6], ddof=1))
    assert mean_std([3.0]) == (3.0, 0.0)


def test_seed_level_interval_matches_the_exact_enumeration():
    values = [1.0, 2.0, 4.0, 8.0]
    # every one of the 4^4 resamples of the seeds, equally likely: the exact bootstrap distribution
    exact = np.array([np.mean(p) for p in itertools.product(values, repeat=len(values))])
    lo, hi = np.quantile(exact, [0.025, 0.975])
    s = summarise(values, resamples=40_000)
    assert s.low == pytest.approx(lo, abs=0.15) and s.high == pytest.approx(hi, abs=0.15)
    assert lo < s.mean < hi and s.mean == pytest.approx(3.75)


def test_three_seeds_without_items_give_their_range():
    # three copies of the lowest value have probability 1/27 = 3.7 % > 2.5 %: the interval is the range
    s = summarise([94.4, 97.8, 99.9])
    assert (s.low, s.high) == pytest.approx((94.4, 99.9))


def test_item_level_matches_resampling_the_items_with_numpy():
    n, right = 200, 60  # one seed, accuracy 0.3 on 200 items
    items = np.array([1] * right + [0] * (n - right))
    rng = np.random.default_rng(123)
    reference = items[rng.integers(0, n, size=(20_000, n))].mean(axis=1)
    lo, hi = np.quantile(reference, [0.025, 0.975])
    s = summarise([right / n], [n], resamples=20_000)
    assert s.low == pytest.approx(lo, abs=0.01) and s.high == pytest.approx(hi, abs=0.01)
    half = 1.96 * np.sqrt(0.3 * 0.7 / n)  # by hand: the normal approximation, 0.3 ± 0.0635
    assert s.low == pytest.approx(0.3 - half, abs=0.01) and s.high == pytest.approx(0.3 + half, abs=0.01)


def test_two_levels_match_a_hierarchical_numpy_bootstrap():
    accuracies, n = [0.55, 0.70, 0.62], 100
    seeds = [np.array([1] * round(a * n) + [0] * (n - round(a * n))) for a in accuracies]
    rng = np.random.default_rng(7)
    reps = []
    for _ in range(8_000):
        picked = [seeds[i] for i in rng.integers(0, 3, size=3)]
        reps.append(np.mean([p[rng.integers(0, n, size=n)].mean() for p in picked]))
    lo, hi = np.quantile(reps, [0.025, 0.975])
    s = summarise(accuracies, [n, n, n], resamples=20_000)
    assert s.low == pytest.approx(lo, abs=0.012) and s.high == pytest.approx(hi, abs=0.012)
    seed_only = summarise(accuracies)  # the item level widens the interval
    assert s.low < seed_only.low and s.high > seed_only.high


def test_overlap_and_verdicts():
    a = Summary((0.7, 0.72, 0.71), 0.71, 0.01, 0.70, 0.72)
    b = Summary((0.5, 0.52, 0.51), 0.51, 0.01, 0.50, 0.52)
    c = Summary((0.69, 0.75, 0.6), 0.68, 0.08, 0.60, 0.75)
    assert not overlap(a, b) and overlap(a, c)
    assert verdict(a, b, lower_is_better=False) == "holds"
    assert verdict(b, a, lower_is_better=False) == "does not hold"
    assert verdict(b, a, lower_is_better=True) == "holds"  # FID: lower is better
    assert verdict(a, c, lower_is_better=False) == "cannot be resolved at this size"
    single = summarise([0.9])
    assert not single.has_interval and overlap(single, b)  # one number: nothing to resolve with
    assert fmt(a, 3) == "0.710 ± 0.010 [0.700, 0.720]" and fmt(single, 2) == "0.90"


def test_bad_inputs():
    with pytest.raises(ValueError):
        summarise([])
    with pytest.raises(ValueError):
        summarise([0.5, 0.6], [10])
    with pytest.raises(ValueError):
        summarise([0.5], confidence=1.5)
