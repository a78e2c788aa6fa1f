"""Render target state and the exporter's own registry as Prometheus text format 0.0.4."""

from __future__ import annotations

import asyncio
import itertools
import math
import operator
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterable, Sequence

from prometheus_client import CollectorRegistry, generate_latest

from exporter import metrics
from exporter.config import Region
from exporter.metrics import MetricSpec, Type
from exporter.state import TargetState, label_text

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# A chunk ends after STEP seconds of rendering or LINES lines, whichever comes first. The time
# bounds the event-loop stall a scrape causes on a slow or busy core (probes run on the same
# loop); the line count bounds a chunk's memory (about 150 bytes a line) on a fast one.
STEP = 0.004
LINES = 4096
# gzip level 1: a third of the default level's (6) CPU on this repetitive text, for a body
# about 18 % larger (ratio 34 instead of 40 at 10,000 targets; bench/render.py).
GZIP_LEVEL = 1
# Targets rendered between looks at the clock: a histogram family is ~20 lines per target.
_BATCH = 32

_accumulate = itertools.accumulate


# Text of whole values seen so far (0, 1, status codes, intervals): most gauge and phase values
# are one of a few, and a dict lookup is a fraction of the int/compare/str path. Bounded, and
# keyed by value, not by target.
_WHOLE: dict[float, str] = {}
_MAX_WHOLE = 1024


def fmt(value: float) -> str:
    text = _WHOLE.get(value)
    if text is not None:
        return text
    # The common case first: a finite fraction (timestamps, durations, sums) is its repr.
    if value.__class__ is float and not value.is_integer() and value - value == 0:
        return repr(value)
    try:
        whole = int(value)
    except (OverflowError, ValueError):
        if value != value:
            return "NaN"
        return "+Inf" if value > 0 else "-Inf"
    if whole == value and -1e15 < value < 1e15:
        text = str(whole)
        if len(_WHOLE) < _MAX_WHOLE:
            _WHOLE[value] = text
        return text
    return repr(value)


def _literal(text: str) -> str:
    """Text for a %-template: names, label values and HELP from the catalogue and probes."""
    return text.replace("%", "%%")


def _header(spec: MetricSpec) -> str:
    return f"# HELP {spec.name} {spec.help}\n# TYPE {spec.name} {spec.type.value}\n"


# One %-template per shape (family name plus its buckets, reasons or phases), built once: a
# target's whole histogram is then one `%` with its labels and counts, no per-line calls. The
# shapes are few (a kind's reasons and phases), unlike targets, so nothing here grows per target.
_TEMPLATES: dict[tuple[object, ...], str] = {}
_MAX_TEMPLATES = 256


def _cached(key: tuple[object, ...], build: Callable[[], str]) -> str:
    if len(_TEMPLATES) >= _MAX_TEMPLATES:
        _TEMPLATES.clear()
    tmpl = _TEMPLATES[key] = build()
    return tmpl


def _histogram_template(name: str, buckets: tuple[float, ...]) -> str:
    tmpl = _TEMPLATES.get((name, buckets))
    if tmpl is not None:
        return tmpl
    n = _literal(name)
    les = "".join(f'{n}_bucket{{%s,le="{fmt(b)}"}} %d\n' for b in (*buckets, math.inf))
    return _cached((name, buckets), lambda: f"{les}{n}_sum{{%s}} %s\n{n}_count{{%s}} %d\n")


def _keyed_template(name: str, label: str, keys: tuple[str, ...], value: str) -> str:
    tmpl = _TEMPLATES.get((name, keys))
    if tmpl is not None:
        return tmpl
    n = _literal(name)
    return _cached(
        (name, keys),
        lambda: "".join(f'{n}{{%s,{label}="{_literal(k)}"}} {value}\n' for k in keys),
    )


# A renderer appends the lines of one family for some targets to `out` and returns how many.
Renderer = Callable[[list[str], Sequence[TargetState]], int]


def _histogram(name: str) -> Renderer:
    def render(out: list[str], states: Sequence[TargetState]) -> int:
        lines = 0
        for st in states:
            hist = st.histograms.get(name)
            if hist is None:
                continue
            tmpl = _histogram_template(name, hist.buckets)
            labels, nb = st.labels, len(hist.counts)
            # labels, count, labels, count, ..., labels, sum, labels, count
            args: list[object] = [labels] * (2 * nb + 4)
            args[1 : 2 * nb : 2] = _accumulate(hist.counts)
            args[-3] = fmt(hist.sum)
            args[-1] = hist.count
            out.append(tmpl % tuple(args))
            lines += nb + 2
        return lines

    return render


def _probes(name: str) -> Renderer:
    tmpl = _literal(name) + "{%s} %d\n"

    def render(out: list[str], states: Sequence[TargetState]) -> int:
        out.extend([tmpl % (st.labels, st.probes) for st in states])
        return len(states)

    return render


def _keyed(
    name: str, label: str, attr: str, value: str, convert: Callable[..., str] | None
) -> Renderer:
    """A family with one extra label whose values are a dict's keys (failure reasons, phases)."""

    def render(out: list[str], states: Sequence[TargetState]) -> int:
        lines = 0
        for st in states:
            values: dict[str, object] = getattr(st, attr)
            if not values:
                continue
            keys = tuple(values)
            tmpl = _keyed_template(name, label, keys, value)
            args: list[object] = [st.labels] * (2 * len(keys))
            args[1::2] = values.values() if convert is None else map(convert, values.values())
            out.append(tmpl % tuple(args))
            lines += len(keys)
        return lines

    return render


def _gauge(name: str) -> Renderer:
    tmpl = _literal(name) + "{%s} %s\n"

    def render(out: list[str], states: Sequence[TargetState]) -> int:
        lines = [
            tmpl % (st.labels, fmt(v)) for st in states if (v := st.gauges.get(name)) is not None
        ]
        out.extend(lines)
        return len(lines)

    return render


def _renderer(spec: MetricSpec) -> Renderer:
    if spec.type is Type.HISTOGRAM:
        return _histogram(spec.name)
    if spec is metrics.PROBES:
        return _probes(spec.name)
    if spec is metrics.PROBE_FAILURES:
        return _keyed(spec.name, "reason", "failures", "%d", None)
    if spec is metrics.PROBE_PHASE:
        return _keyed(spec.name, "phase", "phases", "%s", fmt)
    return _gauge(spec.name)


# Families every target has (possibly with no samples yet): their HELP and TYPE are always
# there when there are targets. The others only when some target has a sample.
_ALWAYS = (metrics.PROBES, metrics.PROBE_FAILURES, metrics.PROBE_PHASE)
_GAUGES = operator.attrgetter("gauges")
_HISTOGRAMS = operator.attrgetter("histograms")


def gzip_compressor() -> zlib._Compress:
    """A gzip stream (header and trailer included) for one response body."""
    return zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)


def region_lines(regions: Iterable[Region]) -> str:
    spec = metrics.REGION_INFO
    out = [_header(spec)]
    for r in regions:
        labels = label_text(spec.labels, (r.service, r.name, r.role, str(r.priority)))
        out.append(f"{spec.name}{{{labels}}} 1\n")
    return "".join(out)


async def chunks(
    states: Sequence[TargetState], regions: Iterable[Region], registry: CollectorRegistry
) -> AsyncIterator[bytes]:
    """The /metrics body as encoded chunks (STEP seconds or LINES lines of rendering each),
    yielding to the loop between them, so that no single step handles the whole body (not even
    a final join: /metrics streams the chunks as they come)."""
    clock = time.perf_counter
    # Which optional families any target has, in one pass at C speed: looking target by target
    # costs ~0.2 us per target per family, and most families (postgres, icmp, container) are
    # absent on most exporters.
    present: set[str] = set()
    present.update(*map(_GAUGES, states), *map(_HISTOGRAMS, states))
    out: list[str] = []
    lines = 0
    deadline = clock() + STEP
    for spec in metrics.TARGET_FAMILIES:
        if not states or (spec not in _ALWAYS and spec.name not in present):
            continue
        render = _renderer(spec)
        out.append(_header(spec))
        for i in range(0, len(states), _BATCH):
            lines += render(out, states[i : i + _BATCH])
            if lines >= LINES or clock() >= deadline:
                chunk = "".join(out).encode()
                out.clear()
                lines = 0
                yield chunk
                await asyncio.sleep(0)
                deadline = clock() + STEP
    out.append(region_lines(regions))
    yield "".join(out).encode() + generate_latest(registry)


async def render(
    states: Sequence[TargetState], regions: Iterable[Region], registry: CollectorRegistry
) -> bytes:
    """The whole /metrics body at once."""
    return b"".join([chunk async for chunk in chunks(states, regions, registry)])
