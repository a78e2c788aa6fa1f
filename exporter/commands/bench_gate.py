"""`bench --baseline FILE --max-regression ...`: the CI gate. Reads a stored `bench --json`
result, and compares each variant's metrics with it (the test is bench_stats.compare)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from exporter.commands.bench_stats import Comparison, Estimate, compare

# Gate names (as given to --max-regression) -> the keys of a variant's `estimates`.
METRICS = {
    "p50": "latency_p50",
    "p95": "latency_p95",
    "cold_start": "cold_start",
    "pull": "pull",
    "size": "size",
    "layers": "layers",
}
DEFAULT_MAX_REGRESSION = "p95=10%,size=5%,cold_start=20%"


class GateError(Exception):
    """A bad --max-regression value or baseline file; the message names which."""


def parse_thresholds(text: str) -> dict[str, float]:
    """`p95=10%,size=5%` -> {"p95": 0.10, "size": 0.05}."""
    out: dict[str, float] = {}
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        name, sep, value = item.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or name not in METRICS:
            raise GateError(
                f"--max-regression: {item!r}: expected METRIC=N% with METRIC one of "
                f"{', '.join(METRICS)}"
            )
        if not value.endswith("%"):
            raise GateError(f"--max-regression: {item!r}: give a percentage, e.g. {name}=10%")
        try:
            pct = float(value[:-1])
        except ValueError:
            raise GateError(f"--max-regression: {item!r}: {value!r} is not a number") from None
        if not 0 <= pct < 10_000:
            raise GateError(f"--max-regression: {item!r}: must be between 0% and 10000%")
        if name in out:
            raise GateError(f"--max-regression: {name} given twice")
        out[name] = pct / 100
    if not out:
        raise GateError("--max-regression: no METRIC=N% given")
    return out


def _estimate(raw: Any, where: str) -> Estimate:
    if not isinstance(raw, Mapping):
        raise GateError(f"{where}: expected an object with value/low/high/n/confidence")
    try:
        value = float(raw["value"])
        low = None if raw.get("low") is None else float(raw["low"])
        high = None if raw.get("high") is None else float(raw["high"])
        n = int(raw.get("n", 1))
        confidence = float(raw.get("confidence", 0.0))
    except (KeyError, TypeError, ValueError) as exc:
        raise GateError(f"{where}: not an estimate ({type(exc).__name__}: {exc})") from None
    return Estimate(value, low, high, n, confidence, bool(raw.get("exact", False)))


def load_baseline(path: str) -> dict[str, dict[str, Estimate]]:
    """{variant: {metric: Estimate}} from a `bench --json` file; GateError names the file and
    the key path of whatever is wrong."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise GateError(f"--baseline {path}: cannot read: {exc.strerror or exc}") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise GateError(
            f"--baseline {path}:{exc.lineno}:{exc.colno}: not JSON: {exc.msg}"
        ) from None
    variants = doc.get("variants") if isinstance(doc, dict) else None
    if not isinstance(variants, list):
        raise GateError(f"--baseline {path}: no 'variants' list: not a `bench --json` result")
    out: dict[str, dict[str, Estimate]] = {}
    for i, v in enumerate(variants):
        where = f"--baseline {path}: variants[{i}]"
        if not isinstance(v, dict) or not isinstance(v.get("image"), str):
            raise GateError(f"{where}: expected an object with an 'image' name")
        estimates = v.get("estimates")
        if not isinstance(estimates, dict):
            raise GateError(
                f"{where}.estimates: missing; the file predates bench's intervals or failed "
                "(re-run `bench --json` to make a baseline)"
            )
        out[v["image"]] = {
            key: _estimate(raw, f"{where}.estimates.{key}")
            for key, raw in estimates.items()
            if raw is not None
        }
    return out


@dataclasses.dataclass(frozen=True, slots=True)
class Check:
    image: str
    metric: str  # gate name: p95, size, ...
    baseline: Estimate | None
    current: Estimate | None
    comparison: Comparison | None
    note: str = ""

    @property
    def verdict(self) -> str:
        return self.comparison.verdict if self.comparison is not None else self.note

    @property
    def failed(self) -> bool:
        return self.comparison is not None and self.comparison.failed


def gate(
    baseline: Mapping[str, Mapping[str, Estimate]],
    current: Mapping[str, Mapping[str, Estimate]],
    thresholds: Mapping[str, float],
) -> list[Check]:
    """One check per (variant in this run, gated metric). A metric missing on either side is
    reported, not failed: a failed variant already fails the run on its own."""
    checks = []
    for image in sorted(current):
        base = baseline.get(image)
        for metric, threshold in thresholds.items():
            key = METRICS[metric]
            cur = current[image].get(key)
            if base is None:
                checks.append(Check(image, metric, None, cur, None, "not in baseline"))
                continue
            old = base.get(key)
            if old is None or cur is None:
                note = "not measured" if cur is None else "not in baseline"
                checks.append(Check(image, metric, old, cur, None, note))
                continue
            checks.append(Check(image, metric, old, cur, compare(old, cur, threshold)))
    return checks
