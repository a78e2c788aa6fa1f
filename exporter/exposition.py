"""Render target state and the exporter's own registry as Prometheus text format 0.0.4."""

from __future__ import annotations

import asyncio
import itertools
import math
import operator
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from types import ModuleType
from typing import Protocol

from prometheus_client import CollectorRegistry, generate_latest

from exporter import metrics
from exporter.metrics import MetricSpec, Type
from exporter.model import Config, Region
from exporter.probes import REGISTRY
from exporter.state import TargetState, escape_label, label_text

_isal_zlib: ModuleType | None
try:
    from isal import isal_zlib as _isal_zlib
except ImportError:  # a platform without a wheel: zlib, slower
    _isal_zlib = None

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# A chunk ends after STEP seconds of rendering or about LINES lines, whichever comes first. The
# time bounds the event-loop stall a scrape causes on a slow or busy core (probes run on the same
# loop); the line count bounds a chunk's memory (about 150 bytes a line) on a fast one.
STEP = 0.002
LINES = 2048
# gzip level 1: a third of the default level's (6) CPU on this repetitive text, for a body
# about 18 % larger (ratio 34 instead of 40 at 10,000 targets; perf/render.py).
GZIP_LEVEL = 1
# Targets rendered between looks at the clock: a histogram family is ~20 lines per target.
_BATCH = 32
_PRESENCE_SLICE = 2048

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


def duration(value: float) -> str:
    """A duration gauge's text: nine significant digits (a nanosecond below one second).

    The shortest round-trip `repr` of a full-precision float costs about 6,000 instructions,
    "%.9g" about 2,200 (valgrind, perf/render.py's values), and the 17 digits say nothing a
    probe's clock can: the phases are the costliest lines of a scrape. Not for counters' sums
    or timestamps, which need every digit.
    """
    text = _WHOLE.get(value)
    if text is not None:
        return text
    if value.__class__ is float and value - value == 0 and not value.is_integer():
        return "%.9g" % value  # noqa: UP031 (measured faster than f"{value:.9g}" here)
    return fmt(value)


def _header(spec: MetricSpec) -> str:
    return f"# HELP {spec.name} {spec.help}\n# TYPE {spec.name} {spec.type.value}\n"


# One function per bucket layout that writes a target's bucket lines as a single f-string: one
# string for the ~18 lines instead of one each, 15-20 % less CPU for a histogram family than a
# line at a time (perf/render.py). Made from source, like namedtuple's methods; the only text
# put into the source is the `le` values, checked to be number text.
_BLOCKS: dict[tuple[float, ...], Callable[..., str]] = {}
_NUMBER_TEXT = frozenset("0123456789.e+-InfNa")


def _bucket_block(buckets: tuple[float, ...]) -> Callable[..., str]:
    block = _BLOCKS.get(buckets)
    if block is None:
        les = [fmt(b) for b in (*buckets, math.inf)]
        if not all(set(le) <= _NUMBER_TEXT for le in les):
            raise ValueError(f"bucket bounds {buckets!r}")
        counts = [f"c{i}" for i in range(len(les))]
        lines = "".join(
            f'{{prefix}}{{labels}},le="{le}"}}}} {{{c}}}\\n'
            for le, c in zip(les, counts, strict=True)
        )
        source = f'def block(prefix, labels, {", ".join(counts)}):\n    return f"""{lines}"""\n'
        namespace: dict[str, Callable[..., str]] = {}
        exec(source, namespace)  # noqa: S102 (source from checked number text only)
        block = _BLOCKS[buckets] = namespace["block"]
    return block


# A renderer appends the lines of one family for some targets to `out` and returns how many
# lines it added. Lines are f-strings: measured in the chunked flow (perf/render.py), a
# %-template filled once per target's histogram or reason set was no faster.
Renderer = Callable[[list[str], Sequence[TargetState]], int]


def _histogram(name: str) -> Renderer:
    bucket, total, count = f"{name}_bucket{{", f"{name}_sum{{", f"{name}_count{{"

    def render(out: list[str], states: Sequence[TargetState]) -> int:
        lines = 0
        layout: tuple[float, ...] | None = None
        block = None
        for st in states:
            hist = st.histograms.get(name)
            if hist is None:
                continue
            # The buckets are the catalogue's tuple, shared by all targets: an identity check
            # instead of hashing 17 floats per target.
            if hist.buckets is not layout or block is None:
                layout = hist.buckets
                block = _bucket_block(layout)
            labels = st.labels
            out.append(block(bucket, labels, *_accumulate(hist.counts)))
            out.append(f"{total}{labels}}} {fmt(hist.sum)}\n{count}{labels}}} {hist.count}\n")
            lines += len(hist.counts) + 2
        return lines

    return render


def _probes(name: str) -> Renderer:
    def render(out: list[str], states: Sequence[TargetState]) -> int:
        out += [f"{name}{{{st.labels}}} {st.probes}\n" for st in states]
        return len(states)

    return render


# The failure-reason lines of a target are the text between copies of its labels, so they
# are `labels.join(pieces)`: one C call for the 13 lines of an http target instead of 13
# f-strings. The pieces change only when the target fails (TargetState.failures_text is reset
# then), so they are kept on the state between scrapes; a piece for a zero count is shared by
# every target (about 0.15 KB a target that has failed, nothing for the others).
_ZERO_PIECES: dict[tuple[str, str, bool], str] = {}
_ZERO_SETS: dict[tuple[str, tuple[str, ...]], tuple[str, ...]] = {}


def _reason_piece(name: str, reason: str, count: int, last: bool) -> str:
    line = f',reason="{reason}"}} {count}\n'
    piece = line if last else f"{line}{name}{{"
    if count:
        return piece
    key = (name, reason, last)
    return _ZERO_PIECES.setdefault(key, piece)


def _reason_pieces(name: str, failures: Mapping[str, int]) -> tuple[str, ...]:
    if not failures:
        return ()
    zero = not any(failures.values())
    if zero:
        found = _ZERO_SETS.get((name, key := tuple(failures)))
        if found is not None:
            return found
    last = len(failures) - 1
    pieces = (
        f"{name}{{",
        *(_reason_piece(name, r, n, i == last) for i, (r, n) in enumerate(failures.items())),
    )
    if zero:
        pieces = _ZERO_SETS.setdefault((name, key), pieces)
    return pieces


def _failures(name: str) -> Renderer:
    def render(out: list[str], states: Sequence[TargetState]) -> int:
        lines = 0
        for st in states:
            pieces = st.failures_text
            if pieces is None:
                pieces = st.failures_text = _reason_pieces(name, st.failures)
            if pieces:
                out.append(st.labels.join(pieces))
                lines += len(pieces) - 1
        return lines

    return render


def _phases(name: str) -> Renderer:
    def render(out: list[str], states: Sequence[TargetState]) -> int:
        start = len(out)
        text = duration
        for st in states:
            labels = st.labels
            out += [f'{name}{{{labels},phase="{p}"}} {text(v)}\n' for p, v in st.phases.items()]
        return len(out) - start

    return render


def _latest(name: str, channel: Callable[[TargetState], Mapping[str, float]]) -> Renderer:
    """One sample per target of a value the probe set: its gauges or its counters."""

    def render(out: list[str], states: Sequence[TargetState]) -> int:
        start = len(out)
        whole = _WHOLE.get
        out += [
            f"{name}{{{st.labels}}} {whole(v) or fmt(v)}\n"
            for st in states
            if (v := channel(st).get(name)) is not None
        ]
        return len(out) - start

    return render


def _bits(spec: MetricSpec) -> Renderer:
    # The probe stores a bit mask (ProbeKind.bit_labels; e.g. bit i: a dns answer points into
    # the target's i-th configured region), so TargetState keeps one number per name and the
    # label values come from the prepared probe.
    name, label = spec.name, spec.labels[0]

    def render(out: list[str], states: Sequence[TargetState]) -> int:
        start = len(out)
        for st in states:
            mask = st.gauges.get(name)
            if mask is None:
                continue
            labels = st.labels
            bits = int(mask)
            target = st.target
            names = REGISTRY[target.kind].bit_labels[name](target.prepared)
            out += [
                f'{name}{{{labels},{label}="{escape_label(r)}"}} {(bits >> i) & 1}\n'
                for i, r in enumerate(names)
            ]
        return len(out) - start

    return render


def _renderer(spec: MetricSpec) -> Renderer:
    if spec.type is Type.HISTOGRAM:
        return _histogram(spec.name)
    if spec is metrics.PROBES:
        return _probes(spec.name)
    if spec is metrics.PROBE_FAILURES:
        return _failures(spec.name)
    if spec is metrics.PROBE_PHASE:
        return _phases(spec.name)
    if any(spec.name in kind.bit_labels for kind in REGISTRY.values()):
        return _bits(spec)
    if spec.type is Type.COUNTER:
        return _latest(spec.name, _COUNTERS)
    return _latest(spec.name, _GAUGES)


# Families every target has (possibly with no samples yet): their HELP and TYPE are always
# there when there are targets. The others only when some target has a sample.
_ALWAYS = (metrics.PROBES, metrics.PROBE_FAILURES, metrics.PROBE_PHASE)
_GAUGES = operator.attrgetter("gauges")
_COUNTERS = operator.attrgetter("counters")
_HISTOGRAMS = operator.attrgetter("histograms")


class Compressor(Protocol):
    def compress(self, data: bytes, /) -> bytes: ...
    def flush(self) -> bytes: ...


def gzip_compressor(backend: str = "auto") -> Compressor:
    """A gzip stream (header and trailer included) for one response body.

    ISA-L's deflate when installed (a dependency; `backend="zlib"` forces the fallback): about
    six times zlib's speed at level 1 on exposition text, with a better ratio, which is most of
    the difference between a 10,000-target gzip scrape and a plain one (docs/performance.md).
    """
    if backend != "zlib" and _isal_zlib is not None:
        packer: Compressor = _isal_zlib.compressobj(
            GZIP_LEVEL, _isal_zlib.DEFLATED, 16 + _isal_zlib.MAX_WBITS
        )
        return packer
    return zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)


def region_lines(regions: Iterable[Region]) -> str:
    spec = metrics.REGION_INFO
    out = [_header(spec)]
    for r in regions:
        labels = label_text(spec.labels, (r.service, r.name, r.role, str(r.priority)))
        out.append(f"{spec.name}{{{labels}}} 1\n")
    prio = metrics.REGION_PRIORITY
    out.append(_header(prio))
    for r in regions:
        labels = label_text(prio.labels, (r.service, r.name, r.role))
        out.append(f"{prio.name}{{{labels}}} {r.priority}\n")
    return "".join(out)


def fleet_lines(cfg: Config, maintenance: Mapping[tuple[str, str], bool]) -> str:
    """Series from the config beyond the regions: maintenance, user labels, shard identity.

    `maintenance` holds run-time overrides (POST /-/maintenance) over the config's flags.
    """
    spec = metrics.REGION_MAINTENANCE
    out = [_header(spec)]
    for r in cfg.regions:
        on = maintenance.get((r.service, r.name), r.maintenance)
        out.append(f"{spec.name}{{{label_text(spec.labels, (r.service, r.name))}}} {int(on)}\n")
    if cfg.service_labels:
        spec = metrics.SERVICE_INFO
        out.append(_header(spec))
        for service, labels in cfg.service_labels:
            text = label_text(
                (metrics.SERVICE, *(k for k, _ in labels)), (service, *(v for _, v in labels))
            )
            out.append(f"{spec.name}{{{text}}} 1\n")
    labelled = [t for t in cfg.targets if t.user_labels]
    if labelled:
        spec = metrics.TARGET_INFO
        out.append(_header(spec))
        for t in labelled:
            names = (*spec.labels, *(k for k, _ in t.user_labels))
            values = (t.service, t.name, t.vantage, *(v for _, v in t.user_labels))
            out.append(f"{spec.name}{{{label_text(names, values)}}} 1\n")
    spec = metrics.SHARD_INFO
    index, count = (cfg.shard.index, cfg.shard.count) if cfg.shard else (0, 1)
    shard = label_text(spec.labels, (cfg.vantage, str(index), str(count)))
    out += [_header(spec), f"{spec.name}{{{shard}}} 1\n"]
    spec = metrics.SHARDS
    vantage = label_text(spec.labels, (cfg.vantage,))
    out += [_header(spec), f"{spec.name}{{{vantage}}} {count}\n"]
    return "".join(out)


async def chunks(
    states: Sequence[TargetState],
    regions: Iterable[Region],
    registry: CollectorRegistry,
    fleet: str = "",
) -> AsyncIterator[bytes]:
    """The /metrics body as encoded chunks (STEP seconds or LINES lines of rendering each),
    yielding to the loop between them, so that no single step handles the whole body (not even
    a final join: /metrics streams the chunks as they come)."""
    clock = time.perf_counter
    deadline = clock() + STEP
    # Which optional families any target has, at C speed: looking target by target costs ~0.2 us
    # per target per family, and most families (postgres, icmp, container) are absent on most
    # exporters. About 0.2-0.3 us a target, so in slices, yielding like the render does.
    present: set[str] = set()
    for i in range(0, len(states), _PRESENCE_SLICE):
        part = states[i : i + _PRESENCE_SLICE]
        present.update(*map(_GAUGES, part), *map(_COUNTERS, part), *map(_HISTOGRAMS, part))
        if clock() >= deadline:
            await asyncio.sleep(0)
            deadline = clock() + STEP
    out: list[str] = []
    lines = 0
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
    out.append(fleet)
    yield "".join(out).encode() + generate_latest(registry)


async def render(
    states: Sequence[TargetState],
    regions: Iterable[Region],
    registry: CollectorRegistry,
    fleet: str = "",
) -> bytes:
    """The whole /metrics body at once."""
    return b"".join([chunk async for chunk in chunks(states, regions, registry, fleet)])
