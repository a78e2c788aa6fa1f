"""What `bench` measures, as data: the options of a run, one result per image variant, and the
ranking of those results (the statistics are bench_stats')."""

from __future__ import annotations

import dataclasses
import math

from exporter.commands.bench_stats import CONFIDENCE, Estimate, estimate, exact, rank_with_ties

RANKING_RULE = (
    "Ranked by p95 latency under load (lower is better): the median over runs of each run's p95. "
    "Variants whose intervals overlap are tied (=) and share a rank. "
    "Variants that failed are listed last."
)


@dataclasses.dataclass
class Options:
    service: str
    region: str | None = None
    runs: int = 6
    max_runs: int = 6
    precision: float = 0.05
    confidence: float = CONFIDENCE
    requests: int = 200
    concurrency: int = 8
    build: bool = False
    no_cache: bool = False
    path: str | None = None
    timeout: float = 60.0


@dataclasses.dataclass
class VariantResult:
    image: str
    ref: str
    build_seconds: float | None = None
    pull_seconds: float | None = None
    size_bytes: int | None = None
    layers: int | None = None
    cold_start_seconds: list[float] = dataclasses.field(default_factory=list)
    cold_start_median: float | None = None
    cold_start_p95: float | None = None
    requests: int = 0
    errors: int = 0
    latency_p50: float | None = None
    latency_p95: float | None = None
    latency_p99: float | None = None
    # One figure per run: the p50/p95/p99 of that run's requests.
    latency_p50_runs: list[float] = dataclasses.field(default_factory=list)
    latency_p95_runs: list[float] = dataclasses.field(default_factory=list)
    latency_p99_runs: list[float] = dataclasses.field(default_factory=list)
    runs: int = 0
    # {metric: Estimate}: latency_p50, latency_p95, cold_start, pull, size, layers.
    estimates: dict[str, Estimate] = dataclasses.field(default_factory=dict)
    error: str | None = None
    rank: int | None = None
    tied: bool = False
    # Per-metric places (same tie rule); the overall rank is the latency_p95 one.
    ranks: dict[str, int] = dataclasses.field(default_factory=dict)
    tied_on: list[str] = dataclasses.field(default_factory=list)


def quantile(values: list[float], q: float) -> float | None:
    """Nearest-rank quantile: always one of the measured values."""
    if not values:
        return None
    data = sorted(values)
    return data[max(0, math.ceil(q * len(data)) - 1)]


def summarize(res: VariantResult, confidence: float) -> None:
    """The per-metric estimates of one variant from its runs."""
    found = {
        "latency_p50": estimate(res.latency_p50_runs, confidence),
        "latency_p95": estimate(res.latency_p95_runs, confidence),
        "cold_start": estimate(res.cold_start_seconds, confidence),
        "pull": None if res.pull_seconds is None else estimate([res.pull_seconds], confidence),
        "size": None if res.size_bytes is None else exact(float(res.size_bytes)),
        "layers": None if res.layers is None else exact(float(res.layers)),
    }
    res.estimates = {k: v for k, v in found.items() if v is not None}
    p99 = estimate(res.latency_p99_runs, confidence)
    res.latency_p50 = found["latency_p50"].value if found["latency_p50"] else None
    res.latency_p95 = found["latency_p95"].value if found["latency_p95"] else None
    res.latency_p99 = p99.value if p99 else None
    res.cold_start_median = found["cold_start"].value if found["cold_start"] else None
    res.cold_start_p95 = quantile(res.cold_start_seconds, 0.95)


def rank(results: list[VariantResult]) -> list[VariantResult]:
    """Overall order by the p95 estimate with ties (bench_stats.rank_with_ties); each metric's
    own places in `ranks`; failed variants last, unranked."""
    ok = [r for r in results if r.error is None]
    for metric in ("latency_p50", "latency_p95", "cold_start", "pull", "size", "layers"):
        places = rank_with_ties((r.image, r.estimates.get(metric)) for r in ok)
        for r in ok:
            place = places.get(r.image)
            if place is not None:
                r.ranks[metric] = place.rank
                if place.tied:
                    r.tied_on.append(metric)
    for r in results:
        r.rank = r.ranks.get("latency_p95") if r.error is None else None
        r.tied = "latency_p95" in r.tied_on

    def key(r: VariantResult) -> tuple[bool, float, float, str]:
        return (
            r.rank is None,
            r.rank if r.rank is not None else math.inf,
            r.latency_p95 if r.latency_p95 is not None else math.inf,
            r.image,
        )

    return sorted(results, key=key)
