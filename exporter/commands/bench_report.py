"""`bench`'s outputs for people and CI systems: the ranked table (terminal), the JSON result
(also the baseline format of the gate), a Markdown summary and JUnit XML."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any
from xml.etree import ElementTree as ET

from exporter.commands.bench_gate import Check
from exporter.commands.bench_results import RANKING_RULE, Options, VariantResult
from exporter.commands.bench_stats import Estimate

METHOD = (
    "Each figure is the median over runs (a fresh container per run) with a distribution-free "
    "confidence interval of the median from binomial order statistics [low, high]; "
    "conf is the coverage that interval reaches (below the requested level with too few runs)."
)
GATE_RULE = (
    "A regression fails the gate only when it is significant: current low / baseline high "
    "exceeds 1 + threshold. A point estimate beyond the threshold whose interval does not clear "
    "it is 'not significant'."
)


def _cell(est: Estimate | None, scale: float, digits: int) -> str:
    if est is None:
        return "-"
    value = f"{est.value * scale:.{digits}f}"
    if est.exact:
        return value
    if est.low is None or est.high is None:
        return f"{value} (n={est.n})"
    return f"{value} [{est.low * scale:.{digits}f}, {est.high * scale:.{digits}f}]"


def _rank(r: VariantResult) -> str:
    if r.rank is None:
        return "-"
    return f"={r.rank}" if r.tied else str(r.rank)


def _conf(r: VariantResult) -> str:
    est = r.estimates.get("latency_p95")
    if est is None or not est.has_interval:
        return "-"
    return f"{est.confidence * 100:.0f}%"


HEAD = (
    "rank",
    "image",
    "p50 ms",
    "p95 ms",
    "cold start s",
    "size MB",
    "layers",
    "pull s",
    "build s",
    "runs",
    "conf",
    "errors",
)


def rows(results: Sequence[VariantResult]) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for r in results:
        e = r.estimates.get
        out.append(
            (
                _rank(r),
                r.image,
                _cell(e("latency_p50"), 1000, 2),
                _cell(e("latency_p95"), 1000, 2),
                _cell(e("cold_start"), 1, 3),
                "-" if r.size_bytes is None else f"{r.size_bytes / 1e6:.1f}",
                "-" if r.layers is None else str(r.layers),
                _cell(e("pull"), 1, 2),
                "-" if r.build_seconds is None else f"{r.build_seconds:.2f}",
                str(r.runs),
                _conf(r),
                f"{r.errors}/{r.requests}",
            )
        )
    return out


def _aligned(table: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in table
    ]


def _ratio(c: Check) -> str:
    if c.comparison is None:
        return "-"
    low = c.comparison.ratio_low
    return f"{c.comparison.ratio:.3f}x (>= {low:.3f}x)" if low is not None else "-"


def gate_rows(checks: Sequence[Check]) -> list[tuple[str, ...]]:
    return [
        (
            c.image,
            c.metric,
            _ratio(c),
            "-" if c.comparison is None else f"{c.comparison.threshold * 100:g}%",
            c.verdict.upper() if c.failed else c.verdict,
        )
        for c in checks
    ]


GATE_HEAD = ("image", "metric", "current/baseline", "max", "verdict")


def table(results: Sequence[VariantResult], opts: Options, checks: Sequence[Check] = ()) -> str:
    lines = _aligned([HEAD, *rows(results)])
    lines.append("")
    lines.append(
        f"{RANKING_RULE} Per run: {opts.requests} requests at concurrency {opts.concurrency}; "
        f"runs: {opts.runs}" + (f" to {opts.max_runs}" if opts.max_runs > opts.runs else "") + "."
    )
    lines.append(METHOD)
    for r in results:
        if r.error is not None:
            lines.append(f"{r.image}: FAILED: {r.error}")
    if checks:
        lines.append("")
        lines.extend(_aligned([GATE_HEAD, *gate_rows(checks)]))
        lines.append(GATE_RULE)
        failed = [c for c in checks if c.failed]
        lines.append(
            f"gate: FAILED: {len(failed)} significant regression(s)" if failed else "gate: passed"
        )
    return "\n".join(lines) + "\n"


def report(
    service: str,
    region: str,
    docker: str | None,
    results: Sequence[VariantResult],
    opts: Options,
    checks: Sequence[Check] = (),
) -> dict[str, Any]:
    """The `--json` document; `bench --baseline` reads it back (bench_gate.load_baseline)."""
    return {
        "service": service,
        "region": region,
        "docker": docker,
        "runs": opts.runs,
        "max_runs": opts.max_runs,
        "requests": opts.requests,
        "concurrency": opts.concurrency,
        "confidence": opts.confidence,
        "ranking_rule": RANKING_RULE,
        "method": METHOD,
        "variants": [dataclasses.asdict(r) for r in results],
        "gate": [
            {
                "image": c.image,
                "metric": c.metric,
                "verdict": c.verdict,
                "failed": c.failed,
                "ratio": c.comparison.ratio if c.comparison else None,
                "ratio_low": c.comparison.ratio_low if c.comparison else None,
                "threshold": c.comparison.threshold if c.comparison else None,
            }
            for c in checks
        ],
    }


def _md_table(head: tuple[str, ...], body: list[tuple[str, ...]]) -> list[str]:
    def esc(cell: str) -> str:
        return cell.replace("|", "\\|")

    return [
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
        *("| " + " | ".join(esc(c) for c in row) + " |" for row in body),
    ]


def markdown(
    service: str, results: Sequence[VariantResult], opts: Options, checks: Sequence[Check] = ()
) -> str:
    """For a CI job summary ($GITHUB_STEP_SUMMARY, a merge-request comment)."""
    lines = [f"## failover-exporter bench: {service}", ""]
    lines += _md_table(HEAD, rows(results))
    lines += ["", RANKING_RULE, "", METHOD, ""]
    for r in results:
        if r.error is not None:
            lines.append(f"- **{r.image}: FAILED**: {r.error}")
    if checks:
        failed = [c for c in checks if c.failed]
        lines += [
            "",
            "### Gate: " + (f"FAILED ({len(failed)} significant)" if failed else "passed"),
            "",
        ]
        lines += _md_table(GATE_HEAD, gate_rows(checks))
        lines += ["", GATE_RULE]
    return "\n".join(lines) + "\n"


def junit(service: str, results: Sequence[VariantResult], checks: Sequence[Check] = ()) -> str:
    """One test case per variant (did it run) and one per gated metric (did it regress)."""
    suite = ET.Element("testsuite", name=f"failover_bench.{service}")
    failures = 0

    def case(classname: str, name: str, fail: str | None, out: str) -> None:
        nonlocal failures
        el = ET.SubElement(suite, "testcase", classname=classname, name=name, time="0")
        if fail is not None:
            failures += 1
            ET.SubElement(el, "failure", message=fail).text = fail
        ET.SubElement(el, "system-out").text = out

    for r in results:
        case(
            f"bench.{service}.{r.image}",
            "run",
            None if r.error is None else r.error,
            f"rank {_rank(r)}; p95 {_cell(r.estimates.get('latency_p95'), 1000, 2)} ms",
        )

    def describe(c: Check) -> str:
        limit = f", max +{c.comparison.threshold * 100:g}%" if c.comparison else ""
        return f"{c.metric} of {c.image}: {c.verdict}; current/baseline {_ratio(c)}{limit}"

    for c in checks:
        case(
            f"bench.{service}.{c.image}",
            f"regression.{c.metric}",
            describe(c) if c.failed else None,
            describe(c),
        )
    suite.set("tests", str(len(results) + len(checks)))
    suite.set("failures", str(failures))
    suite.set("errors", "0")
    root = ET.Element("testsuites")
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
