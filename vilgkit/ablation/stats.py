"""Per-row summaries of an ablation: mean ± standard deviation over training seeds and a bootstrap
interval, and whether two rows' intervals overlap.

The interval is a two-level (hierarchical) percentile bootstrap of the row mean:

1. resample the ``S`` training seeds with replacement (training and sampling noise between seeds);
2. for a proportion (prompt, caption, VQA accuracy) measured on ``n`` items, also resample each
   drawn seed's ``n`` right/wrong outcomes with replacement. That draw is exactly
   ``Binomial(n, p_seed) / n``, so it needs only the seed's accuracy and ``n``, not the items
   (the evaluation records do not keep per-item outcomes). FID and PSNR have no item level here.

With 3 seeds and no item level the seed level alone gives the range of the seeds' values: a
resample of three copies of the lowest value has probability 1/27 > 2.5 %.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

#: bootstrap resamples and confidence unless a recipe set says otherwise
RESAMPLES = 10_000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Summary:
    """One metric of one row over its seeds.

    Attributes:
        values: the per-seed values, in seed order.
        mean: their mean.
        std: their sample standard deviation (``ddof = 1``; 0 for one seed).
        low, high: the bootstrap interval of the mean (equal to ``mean`` when nothing varies).
        counts: items per seed for a proportion (the binomial level), else ``None``.
    """

    values: tuple[float, ...]
    mean: float
    std: float
    low: float
    high: float
    counts: tuple[int, ...] | None = None

    @property
    def has_interval(self) -> bool:
        """Whether the interval came from more than one value (seeds or items)."""
        return len(self.values) > 1 or self.counts is not None

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof = 1``; 0 for a single value)."""
    x = np.asarray(values, dtype=float)
    return float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else 0.0


def bootstrap_means(
    values: list[float], counts: list[int] | None = None, *, resamples: int = RESAMPLES, seed: int = 0
) -> np.ndarray:
    """``resamples`` bootstrap replicates of the mean of ``values`` (see the module docstring).

    Args:
        values: one value per seed.
        counts: for proportions, the items each value was measured on (adds the binomial level).
        resamples: number of replicates.
        seed: the generator's seed (the table is reproducible).
    """
    x = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(x), size=(resamples, len(x)))  # level 1: seeds with replacement
    if counts is None:
        return x[pick].mean(axis=1)
    n = np.asarray(counts, dtype=np.int64)
    p = np.clip(x, 0.0, 1.0)
    drawn = rng.binomial(n[pick], p[pick]) / n[pick]  # level 2: each drawn seed's items with replacement
    return drawn.mean(axis=1)


def summarise(
    values: list[float],
    counts: list[int] | None = None,
    *,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> Summary:
    """Mean ± standard deviation and the ``confidence`` percentile bootstrap interval of the mean."""
    if not values:
        raise ValueError("no values to summarise")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if counts is not None and (len(counts) != len(values) or min(counts) < 1):
        raise ValueError("counts must give a positive item count per value")
    mean, std = mean_std(values)
    if len(values) == 1 and counts is None:
        low = high = mean
    else:
        reps = bootstrap_means(values, counts, resamples=resamples, seed=seed)
        tail = (1 - confidence) / 2
        low, high = (float(q) for q in np.quantile(reps, [tail, 1 - tail]))
    return Summary(
        tuple(float(v) for v in values), mean, std, low, high, tuple(int(c) for c in counts) if counts else None
    )


def overlap(a: Summary, b: Summary) -> bool:
    """Whether two intervals share a point (then the two rows cannot be told apart at this size).

    Rows without a real interval (one seed, no item level) always count as overlapping: nothing
    says how far apart two single numbers could land on another seed.
    """
    if not (a.has_interval and b.has_interval):
        return True
    return a.low <= b.high and b.low <= a.high


def verdict(better: Summary, worse: Summary, lower_is_better: bool) -> str:
    """``holds``, ``does not hold`` or ``cannot be resolved at this size`` for "``better`` beats ``worse``"."""
    if overlap(better, worse):
        return "cannot be resolved at this size"
    wins = better.mean < worse.mean if lower_is_better else better.mean > worse.mean
    return "holds" if wins else "does not hold"


def fmt(s: Summary, digits: int) -> str:
    """``mean ± std [low, high]`` (``mean`` alone for a single value without an interval)."""
    if not s.has_interval:
        return f"{s.mean:.{digits}f}"
    spread = f" ± {s.std:.{digits}f}" if len(s.values) > 1 else ""
    return f"{s.mean:.{digits}f}{spread} [{s.low:.{digits}f}, {s.high:.{digits}f}]"


def is_finite(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)
