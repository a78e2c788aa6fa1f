"""The generated dashboards, walked: panels, queries, their PromQL with Grafana macros filled."""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from tests.tools import missing

ROOT = Path(__file__).resolve().parents[2]
GENERATOR = ROOT / "grafana" / "generate.py"
DASHBOARDS = ROOT / "grafana" / "dashboards"
PROVISIONING = ROOT / "grafana" / "provisioning"

# Grafana macros, as promtool and a test Prometheus (1s scrapes, history backfilled) can take them.
MACROS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
_VARIABLE = re.compile(r"\$\{?(\w+)\}?")


@functools.cache
def generator() -> ModuleType:
    try:
        import grafana_foundation_sdk  # noqa: F401
    except ImportError:
        missing("grafana-foundation-sdk (pip install -e '.[test]')")
    spec = importlib.util.spec_from_file_location("failover_grafana_generate", GENERATOR)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def constants() -> ModuleType:
    """The generator's shared module (thresholds, budgets, datasource uid), which it imports."""
    generator()
    return sys.modules["failover_dashboards.panels"]


def committed() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def panels(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' nested panels included, rows themselves excluded."""
    for p in doc.get("panels", []):
        if p.get("type") == "row":
            yield from p.get("panels", [])
        else:
            yield p


@dataclasses.dataclass(frozen=True)
class Query:
    where: str  # dashboard / panel title / refId, for messages
    expr: str  # as in the dashboard
    instant: bool
    # "panel", "variable" or "annotation". Annotations mark critical alerts, which a healthy
    # system must not have: they are checked for validity, not for data.
    kind: str = "panel"

    @property
    def promql(self) -> str:
        """The expression with macros filled in and every variable set to All (`.*`)."""
        out = self.expr
        for macro, value in MACROS.items():
            out = out.replace(macro, value)
        return _VARIABLE.sub(".*", out)


def queries(docs: dict[str, dict[str, Any]]) -> list[Query]:
    """Panel targets, label_values() sources of variables, and annotation queries."""
    out = []
    for name, doc in docs.items():
        for p in panels(doc):
            for t in p.get("targets", []):
                where = f"{name} / {p.get('title')} / {t.get('refId')}"
                out.append(Query(where, t["expr"], bool(t.get("instant"))))
        for v in doc.get("templating", {}).get("list", []):
            m = re.fullmatch(r"label_values\((.*), (\w+)\)", str(v.get("query", "")))
            if v.get("type") == "query" and m:
                source, label = m.groups()
                out.append(
                    Query(
                        f"{name} / variable {v['name']}",
                        f"count by ({label}) ({source})",
                        True,
                        "variable",
                    )
                )
        for a in doc.get("annotations", {}).get("list", []):
            if a.get("expr"):
                out.append(
                    Query(f"{name} / annotation {a['name']}", a["expr"], False, "annotation")
                )
    return out
