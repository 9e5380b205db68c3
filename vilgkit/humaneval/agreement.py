"""Inter-rater agreement: Krippendorff's alpha for nominal, ordinal and interval scores.

Reliability data are units (the rated items), each with the values its raters gave; a unit with
fewer than two values cannot be compared and is left out. With the coincidence matrix
``o[c, k] = Σ_units (pairs of values c, k in the unit) / (m_unit − 1)`` over the pairable values,
``n_c = Σ_k o[c, k]`` and ``n = Σ_c n_c``:

    alpha = 1 − D_o / D_e,  D_o = Σ o[c, k] δ²(c, k) / n,  D_e = Σ n_c n_k δ²(c, k) / (n (n − 1))

with the metric ``δ²``: nominal ``[c ≠ k]``; interval ``(c − k)²``; ordinal
``(Σ_{g between c and k} n_g − (n_c + n_k) / 2)²`` (ranks by the observed value frequencies).
alpha is 1 for perfect agreement, 0 for agreement at chance level; ``None`` when it is undefined
(fewer than two pairable values, or every value the same, so there is no variation to agree on).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence

LEVELS = ("nominal", "ordinal", "interval")


def coincidences(units: Sequence[Sequence[float]]) -> dict[tuple[float, float], float]:
    """The coincidence matrix ``o`` as ``{(c, k): count}`` over units with at least two values."""
    o: dict[tuple[float, float], float] = defaultdict(float)
    for values in units:
        m = len(values)
        if m < 2:
            continue
        counts = Counter(values)
        for c, nc in counts.items():
            for k, nk in counts.items():
                pairs = nc * (nc - 1) if c == k else nc * nk  # ordered pairs of different raters
                o[(c, k)] += pairs / (m - 1)
    return dict(o)


def _delta2(level: str, values: list[float], n_c: Mapping[float, float]):
    if level == "nominal":
        return lambda c, k: float(c != k)
    if level == "interval":
        return lambda c, k: float(c - k) ** 2
    if level == "ordinal":
        rank = {v: i for i, v in enumerate(values)}

        def ordinal(c: float, k: float) -> float:
            lo, hi = sorted((rank[c], rank[k]))
            between = sum(n_c[values[g]] for g in range(lo, hi + 1))
            return (between - (n_c[c] + n_c[k]) / 2) ** 2

        return ordinal
    raise ValueError(f"level must be one of {LEVELS}, got {level!r}")


def krippendorff_alpha(units: Sequence[Sequence[float]], level: str = "interval") -> float | None:
    """Krippendorff's alpha of ``units`` (one list of values per rated item) at ``level``."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    o = coincidences(units)
    n_c: dict[float, float] = defaultdict(float)
    for (c, _), count in o.items():
        n_c[c] += count
    n = sum(n_c.values())
    values = sorted(n_c)
    if n < 2 or len(values) < 2:
        return None
    delta2 = _delta2(level, values, n_c)
    d_o = sum(count * delta2(c, k) for (c, k), count in o.items()) / n
    d_e = sum(n_c[c] * n_c[k] * delta2(c, k) for c in values for k in values) / (n * (n - 1))
    return 1.0 - d_o / d_e
