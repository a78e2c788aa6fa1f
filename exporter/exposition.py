"""Render target state and the exporter's own registry as Prometheus text format 0.0.4."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Iterable, Sequence

from prometheus_client import CollectorRegistry, generate_latest

from exporter import metrics
from exporter.config import Region
from exporter.metrics import MetricSpec, Type
from exporter.state import TargetState, label_text

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Lines rendered between yields to the event loop: keeps a 10k-target scrape from stalling
# probes for the whole render. Counted in lines, not targets: a histogram family is ~20 lines
# per target, and 200 targets of it stalled probes by 50-75 ms (make bench, docs/performance.md).
CHUNK = 500


def fmt(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    if math.isnan(value):
        return "NaN"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


_LE_CACHE: dict[tuple[float, ...], list[str]] = {}


def _le_labels(buckets: tuple[float, ...]) -> list[str]:
    les = _LE_CACHE.get(buckets)
    if les is None:
        les = _LE_CACHE[buckets] = [f'le="{fmt(b)}"' for b in (*buckets, math.inf)]
    return les


def _header(out: list[str], spec: MetricSpec) -> None:
    out.append(f"# HELP {spec.name} {spec.help}\n# TYPE {spec.name} {spec.type.value}\n")


def _target_lines(out: list[str], spec: MetricSpec, st: TargetState) -> None:
    name, labels = spec.name, st.labels
    if spec.type is Type.HISTOGRAM:
        hist = st.histograms.get(name)
        if hist is None:
            return
        cumulative = 0
        for le, n in zip(_le_labels(hist.buckets), hist.counts, strict=True):
            cumulative += n
            out.append(f"{name}_bucket{{{labels},{le}}} {cumulative}\n")
        out.append(
            f"{name}_sum{{{labels}}} {fmt(hist.sum)}\n{name}_count{{{labels}}} {hist.count}\n"
        )
    elif spec is metrics.PROBES:
        out.append(f"{name}{{{labels}}} {st.probes}\n")
    elif spec is metrics.PROBE_FAILURES:
        for reason, n in st.failures.items():
            out.append(f'{name}{{{labels},reason="{reason}"}} {n}\n')
    elif spec is metrics.PROBE_PHASE:
        for phase, seconds in st.phases.items():
            out.append(f'{name}{{{labels},phase="{phase}"}} {fmt(seconds)}\n')
    else:
        value = st.gauges.get(name)
        if value is not None:
            out.append(f"{name}{{{labels}}} {fmt(value)}\n")


def _has(spec: MetricSpec, states: Sequence[TargetState]) -> bool:
    if spec.type is Type.HISTOGRAM:
        return any(spec.name in s.histograms for s in states)
    if spec in (metrics.PROBES, metrics.PROBE_FAILURES, metrics.PROBE_PHASE):
        return bool(states)
    return any(spec.name in s.gauges for s in states)


def region_lines(regions: Iterable[Region]) -> str:
    spec = metrics.REGION_INFO
    out: list[str] = []
    _header(out, spec)
    for r in regions:
        labels = label_text(spec.labels, (r.service, r.name, r.role, str(r.priority)))
        out.append(f"{spec.name}{{{labels}}} 1\n")
    return "".join(out)


async def chunks(
    states: Sequence[TargetState], regions: Iterable[Region], registry: CollectorRegistry
) -> AsyncIterator[bytes]:
    """The /metrics body as encoded chunks of about CHUNK lines, yielding to the loop between
    them, so that no single step handles the whole body (not even a final join: /metrics
    streams the chunks as they come)."""
    out: list[str] = []
    for spec in metrics.TARGET_FAMILIES:
        if not _has(spec, states):
            continue
        _header(out, spec)
        for st in states:
            _target_lines(out, spec, st)
            if len(out) >= CHUNK:
                chunk = "".join(out).encode()
                out.clear()
                yield chunk
                await asyncio.sleep(0)
    out.append(region_lines(regions))
    yield "".join(out).encode() + generate_latest(registry)


async def render(
    states: Sequence[TargetState], regions: Iterable[Region], registry: CollectorRegistry
) -> bytes:
    """The whole /metrics body at once."""
    return b"".join([chunk async for chunk in chunks(states, regions, registry)])
