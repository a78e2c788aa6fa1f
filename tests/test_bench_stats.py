"""bench's statistics on fixed samples: order-statistic intervals, ranks with ties, the gate's
significance test, --max-regression and baseline parsing. No timing, no Docker."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from exporter.commands import bench_gate
from exporter.commands.bench_gate import GateError, gate, load_baseline, parse_thresholds
from exporter.commands.bench_results import VariantResult, rank, summarize
from exporter.commands.bench_stats import (
    Estimate,
    binomial_cdf,
    compare,
    estimate,
    exact,
    median_interval,
    overlaps,
    precise_enough,
    rank_with_ties,
)


def test_binomial_cdf_matches_hand_counts() -> None:
    # P(Bin(10, 1/2) <= 1) = (1 + 10) / 1024; <= 2 adds C(10, 2) = 45.
    assert binomial_cdf(1, 10, 0.5) == pytest.approx(11 / 1024)
    assert binomial_cdf(2, 10, 0.5) == pytest.approx(56 / 1024)
    assert binomial_cdf(-1, 10, 0.5) == 0.0
    assert binomial_cdf(10, 10, 0.5) == pytest.approx(1.0)


def test_median_interval_of_ten_runs_is_second_to_ninth() -> None:
    samples = [9.0, 1.0, 8.0, 2.0, 7.0, 3.0, 6.0, 4.0, 5.0, 10.0]
    low, high, coverage = median_interval(samples, 0.95) or (0, 0, 0)
    # [x(2), x(9)] covers with 1 - 2 * 11/1024 = 97.85 %; [x(3), x(8)] only 89.1 %.
    assert (low, high) == (2.0, 9.0)
    assert coverage == pytest.approx(1 - 22 / 1024)
    low, high, coverage = median_interval(samples, 0.85) or (0, 0, 0)
    assert (low, high) == (3.0, 8.0)
    assert coverage == pytest.approx(1 - 112 / 1024)


@pytest.mark.parametrize(
    ("n", "coverage"),
    [(2, 0.5), (3, 0.75), (5, 0.9375), (6, 1 - 2 / 64)],
)
def test_few_runs_give_min_max_and_say_how_sure(n: int, coverage: float) -> None:
    samples = [float(i) for i in range(n, 0, -1)]
    low, high, got = median_interval(samples, 0.95) or (0, 0, 0)
    assert (low, high) == (1.0, float(n))
    assert got == pytest.approx(coverage)


def test_estimate_is_the_median_and_one_run_has_no_interval() -> None:
    est = estimate([0.010, 0.014, 0.011, 0.012])
    assert est is not None
    assert est.value == 0.011  # nearest rank: a measured run, not a mean of two
    assert (est.low, est.high, est.n) == (0.010, 0.014, 4)
    one = estimate([0.5])
    assert one is not None
    assert (one.value, one.low, one.high, one.confidence) == (0.5, None, None, 0.0)
    assert estimate([]) is None
    size = exact(1234.0)
    assert (size.low, size.high, size.confidence, size.exact) == (1234.0, 1234.0, 1.0, True)


def test_overlap_and_the_unknown() -> None:
    a = Estimate(1.0, 0.9, 1.1, 6, 0.97)
    assert overlaps(a, Estimate(1.2, 1.1, 1.3, 6, 0.97))  # touching counts
    assert not overlaps(a, Estimate(1.3, 1.2, 1.4, 6, 0.97))
    # One run cannot order anything.
    assert overlaps(a, Estimate(5.0, None, None, 1, 0.0))


def test_rank_with_ties_shares_ranks_and_compares_with_the_group_best() -> None:
    e = {
        "a": Estimate(1.0, 0.9, 1.2, 6, 0.97),
        "b": Estimate(1.1, 1.0, 1.5, 6, 0.97),  # overlaps a: tied
        "c": Estimate(1.4, 1.3, 1.6, 6, 0.97),  # overlaps b, not a: a new group
        "d": Estimate(3.0, 2.8, 3.2, 6, 0.97),
        "gone": None,
    }
    places = rank_with_ties(e.items())
    assert {n: (p.rank, p.tied) for n, p in places.items()} == {
        "a": (1, True),
        "b": (1, True),
        "c": (3, False),
        "d": (4, False),
    }


def test_rank_orders_variants_and_marks_ties_per_metric() -> None:
    def variant(name: str, p95s: list[float], size: int, error: str | None = None) -> VariantResult:
        r = VariantResult(image=name, ref=f"x:{name}", size_bytes=size, layers=2, error=error)
        r.latency_p50_runs = [v / 2 for v in p95s]
        r.latency_p95_runs = p95s
        r.latency_p99_runs = [v * 2 for v in p95s]
        r.cold_start_seconds = [0.5, 0.6, 0.55]
        summarize(r, 0.95)
        return r

    ranked = rank(
        [
            variant("slow", [0.30, 0.31, 0.32], 10),
            variant("broken", [], 5, error="boom"),
            variant("fast", [0.010, 0.012, 0.011], 20),
            variant("fast2", [0.011, 0.013, 0.012], 30),
        ]
    )
    assert [(r.image, r.rank, r.tied) for r in ranked] == [
        ("fast", 1, True),
        ("fast2", 1, True),
        ("slow", 3, False),
        ("broken", None, False),
    ]
    by = {r.image: r for r in ranked}
    # Sizes are exact: no ties; cold starts are identical: all tied.
    assert [by[n].ranks["size"] for n in ("slow", "fast", "fast2")] == [1, 2, 3]
    assert all(by[n].ranks["cold_start"] == 1 for n in ("slow", "fast", "fast2"))
    assert "cold_start" in by["slow"].tied_on
    assert by["slow"].latency_p95 == 0.31
    assert by["slow"].latency_p99 == pytest.approx(0.62)


def test_precise_enough_needs_level_and_width() -> None:
    assert precise_enough(Estimate(1.0, 0.97, 1.04, 6, 0.97), 0.05, 0.95)
    assert not precise_enough(Estimate(1.0, 0.9, 1.04, 6, 0.97), 0.05, 0.95)
    assert not precise_enough(Estimate(1.0, 0.99, 1.01, 5, 0.94), 0.05, 0.95)
    assert not precise_enough(None, 0.05, 0.95)


def test_compare_fails_only_a_significant_regression() -> None:
    base = Estimate(0.100, 0.095, 0.105, 6, 0.97)
    # Clearly slower: even the current low is 1.43x the baseline high.
    slow = compare(base, Estimate(0.160, 0.150, 0.170, 6, 0.97), 0.10)
    assert slow.verdict == "regression"
    assert slow.failed
    assert slow.ratio == pytest.approx(1.6)
    assert slow.ratio_low == pytest.approx(0.150 / 0.105)
    # Estimate 15 % up, but the intervals say it may be noise.
    noisy = compare(base, Estimate(0.115, 0.090, 0.140, 6, 0.97), 0.10)
    assert noisy.verdict == "not significant"
    assert not noisy.failed
    assert compare(base, Estimate(0.101, 0.099, 0.103, 6, 0.97), 0.10).verdict == "ok"
    # Exact figures: the ratio is the ratio.
    assert compare(exact(100.0), exact(106.0), 0.05).verdict == "regression"
    assert compare(exact(100.0), exact(105.0), 0.05).verdict == "ok"
    # A one-run side cannot be significant.
    one = compare(base, Estimate(0.5, None, None, 1, 0.0), 0.10)
    assert (one.verdict, one.ratio_low) == ("not significant", None)
    assert compare(exact(0.0), exact(0.0), 0.1).verdict == "ok"
    assert compare(exact(0.0), exact(1.0), 0.1).ratio == math.inf


def test_parse_thresholds() -> None:
    assert parse_thresholds("p95=10%, size=5%,cold_start=20%") == {
        "p95": pytest.approx(0.10),
        "size": pytest.approx(0.05),
        "cold_start": pytest.approx(0.20),
    }
    for bad, needle in [
        ("p95=10", "give a percentage"),
        ("p96=10%", "METRIC one of p50, p95"),
        ("p95", "expected METRIC=N%"),
        ("p95=x%", "'x%' is not a number"),
        ("p95=-1%", "between 0% and"),
        ("p95=1%,p95=2%", "p95 given twice"),
        (",", "no METRIC=N% given"),
    ]:
        with pytest.raises(GateError, match="--max-regression") as info:
            parse_thresholds(bad)
        assert needle in str(info.value), bad


def _doc(variants: list[dict[str, object]]) -> str:
    return json.dumps({"service": "svc", "variants": variants})


def test_load_baseline_names_file_and_key_path(tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text(
        _doc(
            [
                {
                    "image": "slim",
                    "estimates": {
                        "latency_p95": {"value": 0.1, "low": 0.09, "high": 0.11, "n": 6},
                        "size": {"value": 5e6, "low": 5e6, "high": 5e6, "exact": True},
                        "pull": None,
                    },
                }
            ]
        )
    )
    base = load_baseline(str(good))
    assert base["slim"]["latency_p95"] == Estimate(0.1, 0.09, 0.11, 6, 0.0)
    assert base["slim"]["size"].exact
    assert "pull" not in base["slim"]
    cases = {
        "missing.json": (None, "cannot read"),
        "notjson.json": ("{oops", "notjson.json:1:2: not JSON"),
        "list.json": ("[]", "no 'variants' list"),
        "noname.json": (_doc([{"estimates": {}}]), "variants[0]: expected an object with an"),
        "old.json": (_doc([{"image": "a"}]), "variants[0].estimates: missing"),
        "badest.json": (
            _doc([{"image": "a", "estimates": {"size": {"low": 1}}}]),
            "variants[0].estimates.size: not an estimate",
        ),
    }
    for name, (text, needle) in cases.items():
        path = tmp_path / name
        if text is not None:
            path.write_text(text)
        with pytest.raises(GateError) as info:
            load_baseline(str(path))
        assert str(info.value).startswith(f"--baseline {path}"), info.value
        assert needle in str(info.value), (name, info.value)


def test_gate_checks_each_variant_and_metric() -> None:
    base = {
        "slim": {"latency_p95": Estimate(0.1, 0.095, 0.105, 6, 0.97), "size": exact(100.0)},
    }
    current = {
        "slim": {"latency_p95": Estimate(0.2, 0.19, 0.21, 6, 0.97), "size": exact(100.0)},
        "new": {"latency_p95": Estimate(0.1, 0.09, 0.11, 6, 0.97)},
    }
    checks = gate(base, current, {"p95": 0.1, "size": 0.05, "pull": 0.5})
    got = [(c.image, c.metric, c.verdict, c.failed) for c in checks]
    assert got == [
        ("new", "p95", "not in baseline", False),
        ("new", "size", "not in baseline", False),
        ("new", "pull", "not in baseline", False),
        ("slim", "p95", "regression", True),
        ("slim", "size", "ok", False),
        ("slim", "pull", "not measured", False),
    ]
    assert set(bench_gate.METRICS) == {"p50", "p95", "cold_start", "pull", "size", "layers"}
