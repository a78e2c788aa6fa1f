"""Loaders for the Prometheus half of the bundle, and a small PromQL scanner.

The scanner is not a parser: it finds metric names, their label matchers and the label names of
grouping clauses, which is what the contract tests need.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "prometheus"
# Two tiers (docs/deploy.md): the regional file runs next to each vantage's data, the global one
# (and the alerts) where every vantage arrives. In this order, one Prometheus loads them all.
REGIONAL_RULES = PROMETHEUS / "rules" / "regional.rules.yml"
GLOBAL_RULES = PROMETHEUS / "rules" / "global.rules.yml"
RULES = (REGIONAL_RULES, GLOBAL_RULES)
ALERTS = PROMETHEUS / "alerts" / "failover.alerts.yml"
RULE_FILES = (*RULES, ALERTS)
RULE_TESTS = tuple(sorted((PROMETHEUS / "tests").glob("*.test.yml")))
ALERTMANAGER = PROMETHEUS / "alertmanager" / "alertmanager.yml"
ROUTE_TESTS = PROMETHEUS / "alertmanager" / "tests" / "routes.txt"
SCRAPE_CONFIG = PROMETHEUS / "scrape" / "example.prometheus.yml"
RUNBOOKS = ROOT / "docs" / "runbooks" / "README.md"

JOB_SELECTOR = 'job="failover-exporter"'
RUNBOOK_BASE = (
    "https://github.com/failover-exporter/failover_exporter/blob/main/docs/runbooks/README.md#"
)
DASHBOARD_UIDS = ("failover-overview", "failover-images", "failover-target", "failover-exporter")
DASHBOARD_BASE = "https://grafana.example.com/d/"


@functools.cache
def load_yaml(path: Path) -> Any:
    """Parsed once per run; callers must not modify the result."""
    return yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506


def rules_text() -> str:
    """The recording rules of both tiers, as one text."""
    return "".join(p.read_text() for p in RULES)


def rules(path: Path) -> Iterator[dict[str, Any]]:
    for group in load_yaml(path)["groups"]:
        yield from group["rules"]


def recording_rules() -> list[dict[str, Any]]:
    return [r for f in RULE_FILES for r in rules(f) if "record" in r]


def alert_rules() -> list[dict[str, Any]]:
    return [r for f in RULE_FILES for r in rules(f) if "alert" in r]


def group_names() -> list[str]:
    return [g["name"] for f in RULE_FILES for g in load_yaml(f)["groups"]]


# --- PromQL scanning -------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
    |(?P<range>\[[^\]]*\])
    |(?P<number>\d+(?:ms|[smhdwy])(?:\d+(?:ms|[smhdwy]))*|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)
    |(?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
    |(?P<punct>[{}(),]|[=!]~|[=!<>]=|[-+*/%^<>=])
    |(?P<space>\s+)
    """,
    re.VERBOSE,
)
_KEYWORDS = frozenset(
    [
        "and",
        "or",
        "unless",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "offset",
        "inf",
        "nan",
    ]
)
_AGGREGATORS = frozenset(
    [
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    ]
)
_LABEL_LIST_KEYWORDS = frozenset(["by", "without", "on", "ignoring", "group_left", "group_right"])


@dataclasses.dataclass(frozen=True)
class Selector:
    metric: str
    matchers: str  # the text between the braces, "" if none


@dataclasses.dataclass(frozen=True)
class Scan:
    selectors: tuple[Selector, ...]
    label_names: frozenset[str]  # in matchers and in by/without/on/ignoring/group_* lists


def _tokens(expr: str) -> list[tuple[str, str]]:
    out = []
    pos = 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None:
            raise ValueError(f"cannot scan PromQL at {expr[pos : pos + 20]!r} in {expr!r}")
        kind = m.lastgroup
        assert kind is not None
        if kind != "space":
            out.append((kind, m.group()))
        pos = m.end()
    return out


def scan(expr: str) -> Scan:
    toks = _tokens(expr)
    selectors: list[Selector] = []
    labels: set[str] = set()
    i = 0
    while i < len(toks):
        kind, text = toks[i]
        nxt = toks[i + 1][1] if i + 1 < len(toks) else ""
        if kind == "ident" and text in _LABEL_LIST_KEYWORDS and nxt == "(":
            j = i + 2
            while toks[j][1] != ")":
                if toks[j][0] == "ident":
                    labels.add(toks[j][1])
                j += 1
            i = j + 1
            continue
        if kind == "ident" and (text in _KEYWORDS or text in _AGGREGATORS or nxt == "("):
            i += 1
            continue
        if kind == "ident" or text == "{":
            metric = text if kind == "ident" else ""
            matchers = ""
            j = i + 1 if kind == "ident" else i
            if j < len(toks) and toks[j][1] == "{":
                k = j + 1
                while toks[k][1] != "}":
                    k += 1
                inner = toks[j + 1 : k]
                matchers = " ".join(t for _, t in inner)
                labels.update(t for kd, t in inner[::4] if kd == "ident")
                j = k + 1
            selectors.append(Selector(metric, matchers))
            i = j
            continue
        i += 1
    return Scan(tuple(selectors), frozenset(labels))


def template_queries(text: str) -> list[str]:
    """PromQL run by `query` in an alert template (printf formats filled with a dummy value)."""
    return [
        q.replace('\\"', '"').replace("%q", '"x"').replace("%s", "x")
        for q in re.findall(r'printf\s+"((?:[^"\\]|\\.)*)"', text)
    ]


def all_exprs() -> Iterator[tuple[str, str]]:
    """(where, expr) for every PromQL expression in prometheus/**/*.yml."""
    for path in RULE_FILES:
        for rule in rules(path):
            name = rule.get("record") or rule.get("alert")
            yield f"{path.name}:{name}", rule["expr"]
            for key, value in {**rule.get("annotations", {}), **rule.get("labels", {})}.items():
                for query in template_queries(str(value)):
                    yield f"{path.name}:{name}:{key}", query
    for path in RULE_TESTS:
        for n, group in enumerate(load_yaml(path)["tests"]):
            for case in group.get("promql_expr_test", []):
                yield f"{path.name}:tests[{n}]", case["expr"]
            for series in group.get("input_series", []):
                yield f"{path.name}:tests[{n}]:input", series["series"]


def regional_server_forwards() -> list[str]:
    """Metric names a regional Prometheus server (running the regional tier) remote-writes to a
    global one that runs only the global tier (docs/deploy.md): every regional record, and the
    raw series the global rules and alerts read. The rest of the raw series stay regional."""
    records = {r["record"] for p in RULES for r in rules(p) if "record" in r}
    global_raw = {
        s.metric
        for p in (GLOBAL_RULES, ALERTS)
        for r in rules(p)
        for s in scan(r["expr"]).selectors
        if s.metric and s.metric not in records
    }
    regional = {r["record"] for r in rules(REGIONAL_RULES)}
    return sorted(global_raw | regional)
