"""bench's table, Markdown and JUnit XML from fixed results (no Docker, no timing)."""

from __future__ import annotations

from xml.etree import ElementTree as ET

from exporter.commands.bench_gate import gate
from exporter.commands.bench_report import junit, markdown, report, table
from exporter.commands.bench_results import Options, VariantResult, rank, summarize
from exporter.commands.bench_stats import Estimate, exact


def _results() -> list[VariantResult]:
    def variant(name: str, p95s: list[float], size: int) -> VariantResult:
        r = VariantResult(image=name, ref=f"x:{name}", size_bytes=size, layers=2)
        r.latency_p50_runs = [v / 2 for v in p95s]
        r.latency_p95_runs = p95s
        r.latency_p99_runs = p95s
        r.cold_start_seconds = [0.5, 0.6, 0.7]
        r.runs, r.requests = len(p95s), 30 * len(p95s)
        summarize(r, 0.95)
        return r

    broken = VariantResult(image="broken", ref="x:broken", error="build failed: no space")
    return rank(
        [
            variant("a", [0.010, 0.011, 0.012], 2_000_000),
            variant("b", [0.0115, 0.013, 0.014], 3_000_000),
            variant("c", [0.100, 0.101, 0.102], 9_000_000),
            broken,
        ]
    )


def test_table_marks_ties_failures_and_coverage() -> None:
    text = table(_results(), Options(service="svc", runs=3, max_runs=3))
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["rank", "image"]
    assert [line.split()[:2] for line in lines[1:5]] == [
        ["=1", "a"],
        ["=1", "b"],
        ["3", "c"],
        ["-", "broken"],
    ]
    assert "11.00 [10.00, 12.00]" in lines[1]  # p95 ms with its interval
    assert "75%" in lines[1]  # three runs: [min, max] covers the median with 75 %
    assert "broken: FAILED: build failed: no space" in text
    assert "binomial order statistics" in text
    assert "gate:" not in text


def test_gate_in_table_markdown_and_junit() -> None:
    results = _results()
    current = {r.image: r.estimates for r in results if r.error is None}
    baseline = {
        "a": {"latency_p95": Estimate(0.005, 0.004, 0.006, 6, 0.97), "size": exact(2e6)},
        "b": {"latency_p95": Estimate(0.013, 0.012, 0.014, 6, 0.97), "size": exact(3e6)},
    }
    checks = gate(baseline, current, {"p95": 0.10, "size": 0.05})
    opts = Options(service="svc", runs=3, max_runs=3)
    text = table(results, opts, checks)
    assert "gate: FAILED: 1 significant regression(s)" in text
    assert [line.split()[:3] for line in text.splitlines() if "REGRESSION" in line] == [
        ["a", "p95", "2.200x"]
    ]
    md = markdown("svc", results, opts, checks)
    assert md.startswith("## failover-exporter bench: svc\n")
    assert "| =1 | a |" in md
    assert "### Gate: FAILED (1 significant)" in md
    assert "- **broken: FAILED**: build failed: no space" in md
    root = ET.fromstring(junit("svc", results, checks))  # noqa: S314 - our own output
    (suite,) = root
    assert suite.get("name") == "failover_bench.svc"
    cases = {(c.get("classname"), c.get("name")): c for c in suite.iter("testcase")}
    assert len(cases) == 4 + len(checks) == int(suite.get("tests") or 0)
    assert suite.get("failures") == "2"
    run = cases[("bench.svc.broken", "run")].find("failure")
    assert run is not None
    assert run.get("message") == "build failed: no space"
    p95 = cases[("bench.svc.a", "regression.p95")].find("failure")
    assert p95 is not None
    assert "regression" in (p95.get("message") or "")
    assert cases[("bench.svc.b", "regression.p95")].find("failure") is None
    doc = report("svc", "r1", "unix:///x.sock", results, opts, checks)
    assert [g["failed"] for g in doc["gate"] if g["image"] == "a"] == [True, False]
    assert doc["variants"][0]["estimates"]["latency_p95"]["confidence"] == 0.75
