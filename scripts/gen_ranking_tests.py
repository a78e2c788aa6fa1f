"""Writes prometheus/tests/ranking.test.yml: promtool scenarios for the image ranking.

The input series are what a Prometheus scraping three vantages every 15 s stores from exporters
probing every 5 s: per target the exact p50/p95 gauges (failover_probe_duration_p50_seconds,
_p95_seconds), the sample count behind them (3 more per scrape, up to 120) and the
consecutive-failure count; per vantage a control target. The rules are evaluated every minute
(the gauges move slowly; 15 s would cost promtool four times as long for the same verdicts).
Each vantage sees an image at its own distance (a factor per vantage), so the median over
vantages is the true latency. The expected
values come from the same model (`median`, `tie_bound`, `ranks`), written out so that a reader
sees the numbers. Run `python scripts/gen_ranking_tests.py` after changing it; a test checks the
committed file is what this script writes.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

OUT = Path(__file__).resolve().parent.parent / "prometheus" / "tests" / "ranking.test.yml"
JOB = 'job="failover-exporter"'
VANTAGES = ("v1", "v2", "v3")
# Each vantage's distance from the targets, as a factor on the true latency.
FACTOR = {"v1": 1.0, "v2": 1.02, "v3": 0.99}
SCRAPE = 15  # seconds
P95_OVER_P50 = 1.2
MIN_SAMPLES = 30
TIE_RATIO = 0.03
TIE_ABSOLUTE = 0.00005
PROMETHEUS = Path(__file__).resolve().parent.parent / "prometheus"
RULE_FILES = ("rules/regional.rules.yml", "rules/global.rules.yml", "alerts/failover.alerts.yml")
# The rule files' own group order: promtool then evaluates votes before the quorum before alerts.
GROUP_ORDER = tuple(
    group["name"]
    for name in RULE_FILES
    for group in yaml.safe_load((PROMETHEUS / name).read_text())["groups"]
)
VP50 = "vantage_service_target_region_image:failover_probe_duration_p50_seconds:median"
VP95 = "vantage_service_target_region_image:failover_probe_duration_p95_seconds:median"
VSAMPLES = "vantage_service_target_region_image:failover_probe_duration_recent_samples:min"
P50 = "service_target_region_image:failover_probe_duration_p50_seconds:median"
P95 = "service_target_region_image:failover_probe_duration_p95_seconds:median"
TIE = "service_target_region_image:failover_probe_duration_p50_seconds:median_tie_bound"
RANK = "service_target_region_image:failover_image_rank:p50"
MEDIAN_OF_IMAGES = "service_target_region:failover_probe_duration_p95_seconds:median_of_images"
RATIO = "service_target_region_image:failover_image_slowdown:p50_ratio"
AVG = "service_image:failover_image_slowdown:p50_ratio_avg"
AVG_TIE = "service_image:failover_image_slowdown:p50_ratio_avg_tie_bound"
BOARD = "service_image:failover_image_rank:p50_slowdown"

# (service, region, image) -> true p50 in seconds.
Truth = dict[tuple[str, str, str], float]
# A vantage's gauge at scrape k, or None for the truth times its factor.
Override = Callable[[str, str, str, str, int], float | None]


def median(xs: list[float]) -> float:
    """Prometheus's quantile(0.5): linear interpolation between the closest ranks."""
    s = sorted(xs)
    rank = 0.5 * (len(s) - 1)
    lo = int(rank)
    hi = min(lo + 1, len(s) - 1)
    w = rank - lo
    return s[lo] * (1 - w) + s[hi] * w


def tie_bound(x: float) -> float:
    a, b = x * (1 + TIE_RATIO), x + TIE_ABSOLUTE
    return a if a > b else b


def ranks(values: dict[str, float], bound: Callable[[float], float]) -> dict[str, int]:
    """1 + the number of images faster beyond the tie margin (the rules' definition)."""
    return {i: 1 + sum(1 for j in values.values() if bound(j) < v) for i, v in values.items()}


def labels(metric: str, **kv: str) -> str:
    inner = ",".join([JOB] + [f'{k}="{v}"' for k, v in kv.items()])
    return f"{metric}{{{inner}}}"


def num(x: float) -> str:
    return repr(x)


class Scenario:
    """One promtool test group: inputs per scrape, expected values at chosen times."""

    def __init__(self, name: str, truth: Truth, scrapes: int) -> None:
        self.name, self.truth, self.scrapes = name, truth, scrapes
        self.gauge: dict[tuple[str, str, str, str], list[float]] = {}
        self.samples: dict[tuple[str, str, str, str], list[int]] = {}
        self.failures: dict[tuple[str, str, str, str], list[int]] = {}
        self.isolated: set[str] = set()
        for (s, r, i), t in truth.items():
            for v in VANTAGES:
                key = (v, s, r, i)
                self.gauge[key] = [t * FACTOR[v]] * scrapes
                self.samples[key] = [min(120, 3 * (k + 1)) for k in range(scrapes)]
                self.failures[key] = [0] * scrapes
        self.checks: list[str] = []
        self.alerts: list[str] = []

    def counted(self, key: tuple[str, str, str, str], k: int) -> bool:
        v = key[0]
        return (
            v not in self.isolated
            and self.samples[key][k] >= MIN_SAMPLES
            and self.failures[key][k] < 2
        )

    def p50(self, k: int) -> dict[tuple[str, str, str], float]:
        out = {}
        for s, r, i in self.truth:
            xs = [self.gauge[(v, s, r, i)][k] for v in VANTAGES if self.counted((v, s, r, i), k)]
            if xs:
                out[(s, r, i)] = median(xs)
        return out

    def inputs(self) -> str:
        rows = []
        for v in VANTAGES:
            fails = 5 if v in self.isolated else 0
            rows.append(
                (
                    labels(
                        "failover_probe_consecutive_failures",
                        instance=f"{v}:10077",
                        vantage=v,
                        role="control",
                        target=f"control-{v}",
                        probe="http",
                    ),
                    f"{fails}x{self.scrapes - 1}",
                )
            )
        for key in self.gauge:
            v, s, r, i = key
            target = dict(
                instance=f"{v}:10077",
                vantage=v,
                service=s,
                target_region=r,
                role="primary",
                image=i,
                target=f"{s}-{r}-{i}",
                probe="http",
            )
            g = self.gauge[key]
            rows.append((labels("failover_probe_duration_p50_seconds", **target), series(g)))
            rows.append(
                (
                    labels("failover_probe_duration_p95_seconds", **target),
                    series([x * P95_OVER_P50 for x in g]),
                )
            )
            rows.append(
                (
                    labels("failover_probe_duration_recent_samples", **target),
                    series([float(n) for n in self.samples[key]]),
                )
            )
            rows.append(
                (
                    labels("failover_probe_consecutive_failures", **target),
                    series([float(n) for n in self.failures[key]]),
                )
            )
        return "    input_series:\n" + "".join(
            f"      - {{series: '{s}', values: '{vals}'}}\n" for s, vals in rows
        )

    def expect(self, expr: str, k: int, samples: list[tuple[str, float]]) -> None:
        body = "".join(
            f"          - labels: '{lab}'\n            value: {val!r}\n" for lab, val in samples
        )
        self.checks.append(
            f"      - expr: {expr}\n        eval_time: {k * SCRAPE}s\n"
            + (f"        exp_samples:\n{body}" if samples else "        exp_samples: []\n")
        )

    def expect_ranking(self, k: int, board: bool = True) -> None:
        """Region ranks and the leaderboard at scrape k, as the model computes them."""
        p50 = self.p50(k)
        by_region: dict[tuple[str, str], dict[str, float]] = {}
        for (s, r, i), x in p50.items():
            by_region.setdefault((s, r), {})[i] = x
        rows = []
        for (s, r), vals in sorted(by_region.items()):
            for i, n in sorted(ranks(vals, tie_bound).items()):
                rows.append((labels(RANK, service=s, target_region=r, image=i), float(n)))
        self.expect(RANK, k, rows)
        if not board:
            return
        per_service: dict[str, dict[str, list[float]]] = {}
        for (s, _r), vals in by_region.items():
            fastest = min(vals.values())
            for i, x in vals.items():
                per_service.setdefault(s, {}).setdefault(i, []).append(x / fastest)
        rows = []
        for s, imgs in sorted(per_service.items()):
            avg = {i: sum(xs) / len(xs) for i, xs in imgs.items()}
            for i, n in sorted(ranks(avg, lambda x: x * (1 + TIE_RATIO)).items()):
                rows.append((labels(BOARD, service=s, image=i), float(n)))
        self.expect(BOARD, k, rows)

    def text(self) -> str:
        out = f"  - name: {self.name}\n    interval: {SCRAPE}s\n" + self.inputs()
        out += "    promql_expr_test:\n" + "".join(self.checks)
        if self.alerts:
            out += "    alert_rule_test:\n" + "".join(self.alerts)
        return out


def series(xs: list[float]) -> str:
    """promtool's expanding notation: runs of one value as `vxN`."""
    parts, i = [], 0
    while i < len(xs):
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[i]:
            j += 1
        parts.append(num(xs[i]) if j == i else f"{num(xs[i])}x{j - i}")
        i = j + 1
    return " ".join(parts)


def resolution() -> Scenario:
    truth = {
        ("shop", "eu", "a"): 0.005,
        ("shop", "eu", "d"): 0.0055,  # 10 % slower than a
        ("shop", "eu", "b"): 0.010,
        ("shop", "eu", "c"): 0.020,
        # Cross-region: the same service seen from far away.
        ("shop", "us", "a"): 0.100,
        ("shop", "us", "c"): 0.105,
        ("shop", "us", "b"): 0.200,
        ("tiny", "eu", "f"): 0.0010,
        ("tiny", "eu", "g"): 0.0011,
        ("slow", "eu", "h"): 2.0,
        ("slow", "eu", "i"): 2.2,
    }
    sc = Scenario(
        "ranks resolve 10 % from 1 ms to 2 s, per region and on the leaderboard", truth, 161
    )
    # Before 30 samples (scrape 9 at 3 a scrape) no gauge counts: no rank yet.
    sc.expect(RANK, 8, [])
    k = 12  # 3m
    p50 = sc.p50(k)
    sc.expect(
        "global:failover_rank_min_samples:constant",
        k,
        [("global:failover_rank_min_samples:constant", float(MIN_SAMPLES))],
    )
    sc.expect(
        "global:failover_rank_tie_ratio:constant",
        k,
        [("global:failover_rank_tie_ratio:constant", TIE_RATIO)],
    )
    sc.expect(
        "global:failover_rank_tie_absolute_seconds:constant",
        k,
        [("global:failover_rank_tie_absolute_seconds:constant", TIE_ABSOLUTE)],
    )
    keys = sorted(p50)
    lab = {key: dict(service=key[0], target_region=key[1], image=key[2]) for key in keys}
    sc.expect(P50, k, [(labels(P50, **lab[key]), p50[key]) for key in keys])
    sc.expect(
        P95,
        k,
        [
            (
                labels(P95, **lab[key]),
                median([x * P95_OVER_P50 for x in vantage_values(sc, key, k)]),
            )
            for key in keys
        ],
    )
    sc.expect(TIE, k, [(labels(TIE, **lab[key]), tie_bound(p50[key])) for key in keys])
    # The per-vantage inputs (regional tier), for one image.
    a = ("shop", "eu", "a")
    for metric, factor in ((VP50, 1.0), (VP95, P95_OVER_P50)):
        sc.expect(
            f'{metric}{{image="a",target_region="eu"}}',
            k,
            [
                (
                    labels(metric, vantage=v, service="shop", target_region="eu", image="a"),
                    sc.gauge[(v, *a)][k] * factor,
                )
                for v in VANTAGES
            ],
        )
    sc.expect(
        f'{VSAMPLES}{{image="a",target_region="eu"}}',
        k,
        [
            (
                labels(VSAMPLES, vantage=v, service="shop", target_region="eu", image="a"),
                float(sc.samples[(v, *a)][k]),
            )
            for v in VANTAGES
        ],
    )
    sc.expect_ranking(k)
    sc.expect_ranking(160)
    regions: dict[tuple[str, str], list[float]] = {}
    for key in keys:
        regions.setdefault(key[:2], []).append(p50[key] * P95_OVER_P50)
    sc.expect(
        MEDIAN_OF_IMAGES,
        k,
        [
            (labels(MEDIAN_OF_IMAGES, service=s, target_region=r), median(xs))
            for (s, r), xs in sorted(regions.items())
        ],
    )
    fastest = {sr: min(p50[key] for key in keys if key[:2] == sr) for sr in regions}
    ratio = {key: p50[key] / fastest[key[:2]] for key in keys}
    sc.expect(RATIO, k, [(labels(RATIO, **lab[key]), ratio[key]) for key in keys])
    avg: dict[tuple[str, str], list[float]] = {}
    for key in keys:
        avg.setdefault((key[0], key[2]), []).append(ratio[key])
    mean = {si: sum(xs) / len(xs) for si, xs in sorted(avg.items())}
    sc.expect(AVG, k, [(labels(AVG, service=s, image=i), x) for (s, i), x in mean.items()])
    sc.expect(
        AVG_TIE,
        k,
        [(labels(AVG_TIE, service=s, image=i), x * (1 + TIE_RATIO)) for (s, i), x in mean.items()],
    )
    sc.alerts.append(outliers(sc))
    return sc


def vantage_values(sc: Scenario, key: tuple[str, str, str], k: int) -> list[float]:
    return [sc.gauge[(v, *key)][k] for v in VANTAGES if sc.counted((v, *key), k)]


def outliers(sc: Scenario) -> str:
    """FailoverImageLatencyOutlier: over 1.5 times and 10 ms above the region's median p95."""
    k = 160
    p50 = sc.p50(k)
    regions: dict[tuple[str, str], list[float]] = {}
    for (s, r, _i), x in p50.items():
        regions.setdefault((s, r), []).append(x * P95_OVER_P50)
    firing = []
    for (s, r, i), x in sorted(p50.items()):
        ref = median(regions[(s, r)])
        p95 = x * P95_OVER_P50
        if p95 / ref > 1.5 and p95 - ref > 0.01:
            firing.append((s, r, i, p95 / ref))
    assert firing, "the scenario should have outliers"
    out = "      - eval_time: 20m\n        alertname: FailoverImageLatencyOutlier\n"
    out += "        exp_alerts: []\n"
    out += f"      - eval_time: {k * SCRAPE}s\n        alertname: FailoverImageLatencyOutlier\n"
    out += "        exp_alerts:\n"
    for s, r, i, value in firing:
        out += f"""          - exp_labels:
              severity: info
              job: failover-exporter
              service: {s}
              target_region: {r}
              image: {i}
            exp_annotations:
              summary: An image variant is much slower than the other variants in its region.
              description: >-
                The p95 latency of image {i} of {s} in region {r} is {humanize(value)} times the
                median p95 of the region's images (last 120 probes, median over vantages).
              runbook_url: https://github.com/failover-exporter/failover_exporter/blob/main/docs/runbooks/README.md#failoverimagelatencyoutlier
              dashboard_url: https://grafana.example.com/d/failover-images?var-service={s}&var-target_region={r}
"""
    return out


def humanize(x: float) -> str:
    """Prometheus's `humanize` for 1 <= x < 1000: four significant digits, trailing zeros cut."""
    return f"{x:.4g}"


def twins() -> Scenario:
    """Two images of the same true latency, each vantage's gauge wandering by up to 1 % per
    scrape, and one 10 % slower: the twins tie at every evaluation, never swapping."""
    truth = {("twins", "eu", "p"): 0.008, ("twins", "eu", "q"): 0.008, ("twins", "eu", "r"): 0.0088}
    sc = Scenario("equal images with noise tie at every evaluation", truth, 49)
    rng = random.Random(14)
    for key, xs in sc.gauge.items():
        sc.gauge[key] = [round(x * (1 + rng.uniform(-0.01, 0.01)), 9) for x in xs]
    for k in range(12, 49, 4):
        sc.expect_ranking(k)
        p50 = sc.p50(k)
        assert p50[("twins", "eu", "p")] <= tie_bound(p50[("twins", "eu", "q")])
        assert p50[("twins", "eu", "q")] <= tie_bound(p50[("twins", "eu", "p")])
    return sc


def bad_vantage(why: str) -> Scenario:
    """v3 sees the order reversed (a 50 ms, b 1 ms), but it is isolated, backs its gauges by too
    few samples, or its targets are failing (their gauges hold the latencies of before): the
    other two vantages decide, by the mean of their two values (the median of two)."""
    truth = {("shop", "eu", "a"): 0.005, ("shop", "eu", "b"): 0.010}
    sc = Scenario(f"a vantage {why} does not move the ranking", truth, 41)
    for (v, s, r, i), xs in sc.gauge.items():
        if v != "v3":
            continue
        xs[:] = [0.050 if i == "a" else 0.001] * len(xs)
        if why == "with too few samples":
            sc.samples[(v, s, r, i)] = [10] * len(xs)
        elif why == "whose targets fail":
            sc.failures[(v, s, r, i)] = [3] * len(xs)
    if why == "isolated":
        sc.isolated.add("v3")
    k = 40
    p50 = sc.p50(k)
    sc.expect(
        P50,
        k,
        [
            (labels(P50, service=s, target_region=r, image=i), x)
            for (s, r, i), x in sorted(p50.items())
        ],
    )
    sc.expect_ranking(k)
    assert ranks({i: x for (_s, _r, i), x in p50.items()}, tie_bound) == {"a": 1, "b": 2}
    return sc


def main() -> str:
    header = (
        "# Generated by scripts/gen_ranking_tests.py (its docstring says what is modelled);\n"
        "# do not edit by hand.\n"
        "rule_files:\n"
        "  - ../rules/regional.rules.yml\n"
        "  - ../rules/global.rules.yml\n"
        "  - ../alerts/failover.alerts.yml\n"
        "evaluation_interval: 1m\n"
        "group_eval_order:\n" + "".join(f"  - {g}\n" for g in GROUP_ORDER) + "\ntests:\n"
    )
    return header + "\n".join(
        sc.text()
        for sc in (
            resolution(),
            twins(),
            bad_vantage("isolated"),
            bad_vantage("with too few samples"),
            bad_vantage("whose targets fail"),
        )
    )


if __name__ == "__main__":
    text = main()
    if "--check" in sys.argv:
        sys.exit(0 if OUT.read_text() == text else 1)
    OUT.write_text(text)
