"""The numbers behind `bench`'s ranking and CI gate: estimates with confidence intervals, ranks
with ties, and the significance test for a regression. Pure functions of the samples: no clock,
no Docker, no randomness, so the tests check them with fixed samples.

Method. A variant is measured in independent runs (a fresh container each), and each run yields
one figure per metric (its cold start, the p50 and p95 of its requests under load). The estimate
is the nearest-rank median of the per-run figures (so always a measured run); its interval is the
distribution-free confidence interval of the median from binomial order statistics: for sorted
runs x(1) <= ... <= x(n), the interval [x(k), x(n+1-k)] covers the true median with probability
1 - 2 * P(Binomial(n, 1/2) <= k - 1), whatever the distribution. The narrowest such interval
whose coverage reaches the requested level is taken; with too few runs for that level (fewer
than 6 runs for 95 %) it is [min, max] and the coverage it does reach is reported, so a short
bench says how little it knows. A figure that does not vary (image size, layers) is exact: its
interval is the value itself.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Iterable, Sequence

CONFIDENCE = 0.95


@dataclasses.dataclass(frozen=True, slots=True)
class Estimate:
    """The median of `n` runs and an interval around it; `low`/`high` are None when one run is
    all there is (no interval at all: it orders nothing). `confidence` is the coverage the
    interval reaches (1.0 for an exact figure)."""

    value: float
    low: float | None
    high: float | None
    n: int
    confidence: float
    exact: bool = False

    @property
    def has_interval(self) -> bool:
        return self.low is not None and self.high is not None


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(Binomial(n, p) <= k)."""
    if k < 0:
        return 0.0
    return math.fsum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(min(k, n) + 1))


def median_interval(
    samples: Sequence[float], confidence: float = CONFIDENCE
) -> tuple[float, float, float] | None:
    """(low, high, coverage) of the order-statistic interval for the median, or None for fewer
    than two samples."""
    data = sorted(samples)
    n = len(data)
    if n < 2:
        return None
    k = 1
    # Coverage falls as k grows (the interval narrows): the largest k still at the level wins.
    while k + 1 <= n // 2 and 1 - 2 * binomial_cdf(k, n, 0.5) >= confidence:
        k += 1
    return data[k - 1], data[n - k], 1 - 2 * binomial_cdf(k - 1, n, 0.5)


def estimate(samples: Sequence[float], confidence: float = CONFIDENCE) -> Estimate | None:
    """The median of the runs with its interval; None without samples."""
    if not samples:
        return None
    interval = median_interval(samples, confidence)
    # The nearest-rank median, like every quantile in the project: always a measured run.
    value = statistics.median_low(samples)
    if interval is None:
        return Estimate(value, None, None, len(samples), 0.0)
    low, high, coverage = interval
    return Estimate(value, low, high, len(samples), coverage)


def exact(value: float) -> Estimate:
    return Estimate(value, value, value, 1, 1.0, exact=True)


def overlaps(a: Estimate, b: Estimate) -> bool:
    """Whether the two intervals share a point; a figure without an interval overlaps anything
    (one run cannot tell two variants apart)."""
    if a.low is None or a.high is None or b.low is None or b.high is None:
        return True
    return a.low <= b.high and b.low <= a.high


def precise_enough(est: Estimate | None, precision: float, confidence: float) -> bool:
    """Adaptive stopping: the interval reaches the level and is within ±precision of the
    estimate (relative)."""
    if est is None or est.low is None or est.high is None or est.confidence < confidence:
        return False
    return est.high - est.low <= 2 * precision * abs(est.value)


@dataclasses.dataclass(frozen=True, slots=True)
class Place:
    rank: int
    tied: bool


def rank_with_ties(items: Iterable[tuple[str, Estimate | None]]) -> dict[str, Place]:
    """Lower is better. Sorted by estimate; a variant whose interval overlaps that of the best
    variant of the current tie group joins the group and shares its rank (1, 1, 3), and every
    member of a group of two or more is marked tied. Comparing with the group's best, not with
    the previous variant, keeps two variants with disjoint intervals from being tied through a
    third one between them. Variants without an estimate get no place."""
    known = sorted(((n, e) for n, e in items if e is not None), key=lambda t: (t[1].value, t[0]))
    places: dict[str, Place] = {}
    leader: Estimate | None = None
    group: list[str] = []
    for i, (name, est) in enumerate(known):
        if leader is not None and overlaps(leader, est):
            places[name] = Place(places[group[0]].rank, True)
            group.append(name)
            for member in group:
                places[member] = Place(places[member].rank, True)
        else:
            leader, group = est, [name]
            places[name] = Place(i + 1, False)
    return places


@dataclasses.dataclass(frozen=True, slots=True)
class Comparison:
    """One metric of one variant against the baseline. `ratio` is current / baseline of the
    estimates; `ratio_low` is the conservative lower bound of that ratio, current low / baseline
    high (None when either side has no interval)."""

    ratio: float
    ratio_low: float | None
    threshold: float
    verdict: str  # "regression" | "not significant" | "ok"

    @property
    def failed(self) -> bool:
        return self.verdict == "regression"


def _ratio(num: float, den: float) -> float:
    if den > 0:
        return num / den
    return 1.0 if num <= 0 else math.inf


def compare(baseline: Estimate, current: Estimate, threshold: float) -> Comparison:
    """A regression is significant only when even the ratio's lower bound exceeds 1 + threshold:
    the current interval lies wholly above the baseline interval stretched by the threshold.
    A point estimate beyond the threshold whose interval does not clear it is reported as
    "not significant" and does not fail the gate."""
    ratio = _ratio(current.value, baseline.value)
    ratio_low = None
    if current.low is not None and baseline.high is not None:
        ratio_low = _ratio(current.low, baseline.high)
    if ratio_low is not None and ratio_low > 1 + threshold:
        verdict = "regression"
    elif ratio > 1 + threshold:
        verdict = "not significant"
    else:
        verdict = "ok"
    return Comparison(ratio, ratio_low, threshold, verdict)
