"""Per-target metric state, written by the scheduler and read by /metrics and the status page.

Plain Python objects instead of prometheus_client children: the renderer turns them into text
in chunks, so a scrape of thousands of targets does not freeze the event loop.
"""

from __future__ import annotations

import array
import bisect
import dataclasses
import time
from collections.abc import Mapping, Sequence

from exporter import metrics
from exporter.metrics import Reason
from exporter.model import Target


class Histogram:
    __slots__ = ("buckets", "count", "counts", "sum")

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1


@dataclasses.dataclass
class Result:
    """One finished probe, kept for the status page and /probe."""

    target: Target
    started: float
    duration: float
    success: bool
    reason: str | None
    message: str
    phases: dict[str, float]
    debug: Sequence[str]
    gauges: dict[str, float] = dataclasses.field(default_factory=dict)
    observations: list[tuple[str, float]] = dataclasses.field(default_factory=list)
    counters: dict[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    """What the status page and the failing/recovered log need of a target's last probe.

    Kept per target instead of the whole Result, whose debug lines, phases and gauges are about
    a kilobyte: at 10,000 targets that was 10 MB for a verdict. The full Results of the latest
    probes stay in the scheduler's bounded history for the status page's details.
    """

    success: bool
    reason: str | None


_OUTCOMES: dict[tuple[bool, str | None], Outcome] = {}


def outcome(success: bool, reason: str | None) -> Outcome:
    """The shared Outcome for this verdict: there are only as many as there are reasons."""
    key = (success, reason)
    found = _OUTCOMES.get(key)
    if found is None:
        found = _OUTCOMES[key] = Outcome(success, reason)
    return found


# Latency samples per target behind the status page's quantiles.
RECENT_SAMPLES = 120


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def label_text(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    return ",".join(f'{n}="{escape_label(v)}"' for n, v in zip(names, values, strict=True))


def _nearest_rank(data: list[float], q: float) -> float:
    """Interpolated order statistic of sorted `data` (numpy's default `linear` method)."""
    pos = q * (len(data) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


class TargetState:
    """Everything exposed for one target. Survives reloads while the target's labels stay."""

    __slots__ = (
        "counters",
        "failures",
        "failures_text",
        "gauges",
        "histograms",
        "labels",
        "last",
        "phases",
        "probes",
        "recent",
        "recent_next",
        "resets",
        "target",
    )

    def __init__(
        self,
        target: Target,
        reasons: tuple[Reason, ...],
        resets: Mapping[str, float] | None = None,
    ) -> None:
        """`reasons` and `resets` are the kind's (ProbeKind.reasons, ProbeKind.gauges)."""
        self.target = target
        self.labels = label_text(metrics.TARGET_LABELS, target.labels)
        self.probes = 0
        # Every reason this kind can report starts at 0, so rate() and increase() see the first
        # failure instead of a series appearing out of nowhere.
        self.failures: dict[str, int] = {r.value: 0 for r in reasons}
        # The renderer's text of `failures` without the labels (exposition._failures), kept
        # between scrapes: it changes only when the target fails. None: to be rendered again.
        self.failures_text: tuple[str, ...] | None = None
        self.gauges: dict[str, float] = {metrics.PROBE_INTERVAL.name: target.interval}
        # The kind's gauges that only hold for the probe that set them: back to these values
        # whenever a probe leaves them unset, and shown with them before the first probe.
        self.resets = dict(resets or {})
        self.gauges.update(self.resets)
        # Catalogue counters the kind counts (ProbeContext.count), by name: totals since start.
        self.counters: dict[str, float] = {}
        self.phases: dict[str, float] = {}
        self.histograms: dict[str, Histogram] = {
            metrics.PROBE_DURATION.name: Histogram(metrics.PROBE_DURATION.buckets)
        }
        # A ring of unboxed floats (filled up to RECENT_SAMPLES, then overwritten at
        # `recent_next`): a deque of float objects cost about 4 KB per target once full, this
        # about 0.5 KB. Single precision is a microsecond or better below 10 s, and the status
        # page shows tenths of a millisecond.
        self.recent = array.array("f")
        self.recent_next = 0
        self.last: Outcome | None = None

    def retarget(self, target: Target) -> None:
        self.target = target
        self.gauges[metrics.PROBE_INTERVAL.name] = target.interval

    def record(self, result: Result) -> None:
        self.probes += 1
        self.last = outcome(result.success, result.reason)
        self.phases = result.phases
        g = self.gauges
        g[metrics.PROBE_SUCCESS.name] = 1.0 if result.success else 0.0
        streak = metrics.PROBE_CONSECUTIVE_FAILURES.name
        g[streak] = 0.0 if result.success else g.get(streak, 0.0) + 1.0
        if self.resets:
            g.update(self.resets)
        g.update(result.gauges)
        if result.counters:
            counters = self.counters
            for name, value in result.counters.items():
                counters[name] = counters.get(name, 0.0) + value
        latencies: list[float] = []
        for name, value in result.observations:
            self.observe(name, value)
            if name == metrics.PROBE_DURATION.name:
                latencies.append(value)
        if result.success:
            # A probe that observed its own latency samples (icmp: one per reply) replaces the
            # end-to-end duration, which would count pacing and waits for lost packets.
            if not latencies:
                self.histograms[metrics.PROBE_DURATION.name].observe(result.duration)
                latencies.append(result.duration)
            # Milliseconds are all an alert on staleness needs; a full-precision time's text is
            # 17 digits, which cost a scrape about twice the CPU of the rounded one.
            g[metrics.PROBE_LAST_SUCCESS.name] = round(time.time(), 3)
            self._sample(latencies)
            self._order_statistics()
        elif result.reason is not None:
            self.failures[result.reason] = self.failures.get(result.reason, 0) + 1
            self.failures_text = None

    def _sample(self, values: list[float]) -> None:
        ring = self.recent
        for value in values:
            if len(ring) < RECENT_SAMPLES:
                ring.append(value)
            else:
                ring[self.recent_next] = value
                self.recent_next = (self.recent_next + 1) % RECENT_SAMPLES

    def _order_statistics(self) -> None:
        # Once per successful probe rather than per scrape: a sort of 120 floats is ~5 us, and a
        # scrape of 10,000 targets must not sort 10,000 rings.
        data = sorted(self.recent)
        n = len(data)
        g = self.gauges
        # Rounded to the nanosecond: the ring's single precision leaves 17 digits of float noise
        # (0.012 reads back as 0.012000000104308128), whose shortest repr costs a scrape about
        # twice as much as that of the rounded value (perf/render.py), for no information.
        g[metrics.PROBE_P50.name] = round(_nearest_rank(data, 0.50), 9)
        g[metrics.PROBE_P95.name] = round(_nearest_rank(data, 0.95), 9)
        g[metrics.PROBE_RECENT_SAMPLES.name] = float(n)

    def observe(self, name: str, value: float) -> None:
        """Observe a catalogue histogram (e.g. cold start); a counter goes to `counters`."""
        if metrics.BY_NAME[name].type is metrics.Type.COUNTER:
            self.counters[name] = self.counters.get(name, 0.0) + value
            return
        hist = self.histograms.get(name)
        if hist is None:
            hist = self.histograms[name] = Histogram(metrics.BY_NAME[name].buckets)
        hist.observe(value)

    def quantile(self, q: float) -> float | None:
        if not self.recent:
            return None
        data = sorted(self.recent)
        return data[min(len(data) - 1, int(q * len(data)))]
