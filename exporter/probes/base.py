"""The probe contract: settings model, prepare step, run coroutine, and the context they share.

A kind is one `ProbeKind` passed to `register` from its own module (probes/__init__.py imports
every sibling). Everything the rest of the exporter asks of a kind is a field of `ProbeKind`:
the optional hooks have defaults, so a kind states only what it uses.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import MappingProxyType
from typing import Any, Generic, Literal, TypeVar, overload

from exporter import metrics
from exporter.fields import Model
from exporter.log import rfc3339
from exporter.metrics import Reason
from exporter.model import Binding
from exporter.resources import Resources


class ProbeSettings(Model):
    """Base of every probe kind's settings; subclasses narrow `kind` to a Literal."""

    kind: str


class ProbeFailure(Exception):
    """A probe failed for a known reason. The message must not contain secrets."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class DebugLines(Sequence[str]):
    """A probe's debug lines, stamped when logged and written out only when read: every probe
    logs two or three, and only `/probe?debug=true` and the status page ever read them (the
    time formatting was a few per cent of a probe's CPU)."""

    __slots__ = ("_raw",)

    def __init__(self) -> None:
        self._raw: list[tuple[float, str]] = []

    def add(self, at: float, message: str) -> None:
        self._raw.append((at, message))

    def scrub(self, scrub: Callable[[str], str]) -> None:
        self._raw = [(at, scrub(message)) for at, message in self._raw]

    def __len__(self) -> int:
        return len(self._raw)

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> list[str]: ...

    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return [_line(entry) for entry in self._raw[index]]
        return _line(self._raw[index])

    def __iter__(self) -> Iterator[str]:
        return map(_line, self._raw)

    def __repr__(self) -> str:
        return repr(list(self))


def _line(entry: tuple[float, str]) -> str:
    return f"{rfc3339(entry[0])} {entry[1]}"


class ProbeContext:
    """What a running probe records: phase timings, extra gauges, counters, observations of
    catalogue histograms, debug lines."""

    __slots__ = (
        "counters",
        "debug",
        "duration",
        "gauges",
        "loop",
        "observations",
        "phases",
        "resources",
        "timeout",
        "vantage",
    )

    def __init__(
        self,
        resources: Resources,
        vantage: str = "",
        timeout: float = 0.0,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.resources = resources
        # The running loop, from the runner (None: a probe looks it up itself).
        self.loop = loop
        # Who is probing (a postgres heartbeat row is keyed by it) and the scheduler's timeout
        # for this run, so a probe can bound server-side work (statement_timeout) to match.
        self.vantage = vantage
        self.timeout = timeout
        self.phases: dict[str, float] = {}
        # Catalogue gauges by name; a name the kind declares in `ProbeKind.gauges` and leaves
        # unset here takes its reset value.
        self.gauges: dict[str, float] = {}
        self.debug = DebugLines()
        # The probe's own measurement of the target's latency, from timestamps at the socket
        # events; None leaves the scheduler's wall clock around the whole run.
        self.duration: float | None = None
        # Extra histogram observations by catalogue name (e.g. cold start, image pull).
        self.observations: list[tuple[str, float]] = []
        # Increments of catalogue counters by name (e.g. icmp packets sent), see `count`.
        self.counters: dict[str, float] = {}

    def count(self, name: str, value: float = 1.0) -> None:
        """Add `value` to the target's catalogue counter `name` (counted also on failure)."""
        self.counters[name] = self.counters.get(name, 0.0) + value

    def log(self, message: str) -> None:
        self.debug.add(time.time(), message)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time a phase; a phase cut short by a failure or timeout is still recorded."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.phases[name] = time.perf_counter() - start


PreparedT = TypeVar("PreparedT")


# eq=False: a kind is a registered singleton, hashed and compared by identity (its mappings
# would make a field-wise hash fail).
@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class ProbeKind(Generic[PreparedT]):
    """One probe kind.

    `prepare` turns validated settings into a runtime object once per config load (secrets read,
    regexes compiled, TLS contexts built); it raises ValueError for config errors. `run` performs
    one probe and raises ProbeFailure; the scheduler owns the timeout and the metrics.

    Optional hooks:
    - `bind(prepared, binding)` attaches what the kind needs beyond its settings (a cold start's
      region endpoint and image), at load, raising ValueError for config errors. The loader
      compares the binding on reload, so a changed region or image restarts the target.
    - `describe(settings)` is the status page's one-line summary of a target.
    - `check_service(settings, service, regions)` checks the settings against the service the
      target is in (its name and its regions' names), at load: a (key path below `probe`,
      message) per error.

    `gauges` are the catalogue gauges whose value is only true of the probe that set it (an HTTP
    status code), by name, with the value a target shows when its last probe did not set it or
    before its first probe. Gauges a kind sets on every probe, or that stay true until the next
    one sets them, need no declaration.
    """

    name: str
    settings: type[ProbeSettings]
    prepare: Callable[[Any, Path], PreparedT]
    run: Callable[[PreparedT, ProbeContext], Awaitable[None]]
    phases: tuple[str, ...]
    # The kind's own failure reasons; `register` adds the ones every kind has (COMMON_REASONS).
    reasons: tuple[Reason, ...] = ()
    describe: Callable[[Any], str] = lambda settings: ""
    bind: Callable[[PreparedT, Binding], PreparedT] | None = None
    check_service: Callable[[Any, str, tuple[str, ...]], list[tuple[tuple[str, ...], str]]] = (
        lambda settings, service, regions: []
    )
    gauges: Mapping[str, float] = dataclasses.field(default_factory=dict)
    # Gauges a probe stores as a bit mask (one float in ProbeContext.gauges, exact to 53 bits)
    # by name: the values of the metric's one extra label for bits 0, 1, ... of a prepared
    # probe. /metrics writes one series per value, 1 where its bit is set.
    bit_labels: Mapping[str, Callable[[PreparedT], tuple[str, ...]]] = dataclasses.field(
        default_factory=dict
    )
    # How the bundle (prometheus/ rules, grafana/ dashboards) treats the kind. Every kind must
    # say both; None means unclassified, and tests/prometheus fails on it and on any selector of
    # the bundle that disagrees (bundle_probe_regex builds the selectors' regexes).
    # votes_in_quorum: its failures count towards "the region is down".
    # ranks_images: its latencies rank image variants (a measure of the image, not the network
    # or the container engine).
    votes_in_quorum: bool | None = None
    ranks_images: bool | None = None


REGISTRY: dict[str, ProbeKind[Any]] = {}


def bundle_probe_regex(attribute: str) -> str:
    """The `probe=~"..."` value of the bundle's selectors for kinds with `attribute` true."""
    return "|".join(sorted(n for n, k in REGISTRY.items() if getattr(k, attribute) is True))


# Reasons the runner reports for every kind: the timeout it owns, and a kind raising anything
# but ProbeFailure (a bug). Timeout first and error last, as the failure series are ordered.
COMMON_REASONS = (Reason.TIMEOUT, Reason.ERROR)


def register(kind: ProbeKind[PreparedT]) -> ProbeKind[PreparedT]:
    """Add `kind` to the registry, with the common reasons around its own; the registered kind
    is returned (modules keep it as KIND)."""
    if kind.name in REGISTRY:
        raise RuntimeError(f"probe kind {kind.name!r} registered twice")
    for name in kind.gauges:
        spec = metrics.BY_NAME.get(name)
        if spec is None or spec.type is not metrics.Type.GAUGE:
            raise RuntimeError(f"probe kind {kind.name!r} declares {name!r}: not a catalogue gauge")
    for name in kind.bit_labels:
        spec = metrics.BY_NAME.get(name)
        if spec is None or spec.type is not metrics.Type.GAUGE or len(spec.labels) != 1:
            raise RuntimeError(f"probe kind {kind.name!r}: {name!r} is not a gauge with one label")
    own = tuple(r for r in kind.reasons if r not in COMMON_REASONS)
    kind = dataclasses.replace(
        kind,
        reasons=(Reason.TIMEOUT, *own, Reason.ERROR),
        # Read-only copies: the declaration is the contract, not state to change at run time.
        gauges=MappingProxyType(dict(kind.gauges)),
        bit_labels=MappingProxyType(dict(kind.bit_labels)),
    )
    REGISTRY[kind.name] = kind
    return kind


# -- socket helpers shared by the probe kinds ---------------------------------------------------

IpFamily = Literal["any", "ipv4", "ipv6"]
FAMILIES: dict[str, int] = {"any": 0, "ipv4": socket.AF_INET, "ipv6": socket.AF_INET6}
