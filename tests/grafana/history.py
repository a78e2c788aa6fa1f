"""History for the test Prometheus, as OpenMetrics text for `promtool tsdb create-blocks-from`.

Two kinds of series, both under the live exporter's own job and instance (an earlier run of it):
- the demo's probe counters, latency histogram and exact p50/p95 gauges over the last 40
  minutes, for the label sets the live demo exporter exposes, with the demo's latency profile:
  the 30m and 1h windows of the panels need history a test cannot wait for;
- series the demo cannot produce (no TLS, PostgreSQL, Docker Engine, cold start or icmp in it):
  certificate expiry, replication lag, image size and layers, cold-start histogram, and each
  vantage's pings of each region (round-trip histogram, packets sent and lost). Their label
  names come from the metric catalogue, so a renamed label breaks the test.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

from exporter import metrics, state
from exporter.commands import demo

STEP = 30.0
SPAN = 40 * 60.0
PROBES_PER_STEP = 15  # the demo probes every 2s
# An icmp target probed every 10s with 5 echo requests a probe.
PINGS_PER_STEP = 15

Labels = Mapping[str, str]


def _fmt(labels: Labels) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def probe_label_sets(exposition: str) -> list[dict[str, str]]:
    """Target label sets of the live exporter's failover_probes_total."""
    out = []
    for family in text_string_to_metric_families(exposition):
        if family.name == metrics.PROBES.name.removesuffix("_total"):
            out += [dict(s.labels) for s in family.samples if s.name == metrics.PROBES.name]
    return out


def _times(end: float) -> list[float]:
    n = int(SPAN // STEP)
    return [end - (n - i) * STEP for i in range(n + 1)]


def _histogram(
    name: str,
    labels: Labels,
    buckets: tuple[float, ...],
    times: list[float],
    draw: Iterator[list[float]],
) -> Iterator[str]:
    """Cumulative histogram series; `draw` yields the observations of each step."""
    counts = [0] * (len(buckets) + 1)
    total = 0.0
    rows: dict[str, list[str]] = {}
    for t in times:
        for value in next(draw):
            total += value
            for i, bound in enumerate((*buckets, float("inf"))):
                if value <= bound:
                    counts[i] += 1
        for i, bound in enumerate((*buckets, float("inf"))):
            key = f"{name}_bucket{_fmt({**labels, 'le': floatToGoString(bound)})}"
            rows.setdefault(key, []).append(f"{key} {counts[i]} {t:.3f}")
        rows.setdefault("sum", []).append(f"{name}_sum{_fmt(labels)} {total:.6f} {t:.3f}")
        rows.setdefault("count", []).append(f"{name}_count{_fmt(labels)} {counts[-1]} {t:.3f}")
    for lines in rows.values():
        yield from lines


def _demo_series(
    target: Labels, base: Labels, times: list[float], rng: random.Random
) -> Iterator[str]:
    labels = {**base, **target}
    if target["role"] == "control":
        median, jitter, loss = 0.001, 0.0003, 0.0
    else:
        median, jitter, loss = demo.IMAGES[target["image"]]
        median += demo.distance(target["vantage"], target["target_region"])
    fails = [sum(rng.random() < loss for _ in range(PROBES_PER_STEP)) for _ in times]

    draws = [
        [max(0.0002, rng.gauss(median, jitter)) for _ in range(PROBES_PER_STEP - f)] for f in fails
    ]
    name = metrics.PROBE_DURATION.name
    yield from _histogram(name, labels, metrics.LATENCY_BUCKETS, times, iter(draws))
    # The exact order statistics the exporter keeps (its last 120 successful latencies), which
    # the ranking reads, computed by the exporter's own function.
    recent: list[float] = []
    for t, values in zip(times, draws, strict=True):
        recent = (recent + values)[-120:]
        data = sorted(recent)
        for spec, q in ((metrics.PROBE_P50, 0.50), (metrics.PROBE_P95, 0.95)):
            value = state._nearest_rank(data, q)
            yield f"{spec.name}{_fmt(labels)} {value:.9f} {t:.3f}"
        yield f"{metrics.PROBE_RECENT_SAMPLES.name}{_fmt(labels)} {len(data)} {t:.3f}"
        yield f"{metrics.PROBE_CONSECUTIVE_FAILURES.name}{_fmt(labels)} 0 {t:.3f}"
    probes = failures = 0
    for t, f in zip(times, fails, strict=True):
        probes += PROBES_PER_STEP
        failures += f
        yield f"{metrics.PROBES.name}{_fmt(labels)} {probes} {t:.3f}"
    reason = {**labels, "reason": metrics.Reason.HTTP_STATUS.value}
    for t in times:
        yield f"{metrics.PROBE_FAILURES.name}{_fmt(reason)} {failures} {t:.3f}"


def _target(
    region: str, role: str, image: str, name: str, probe: str, vantage: str | None = None
) -> dict[str, str]:
    labels = {
        metrics.SERVICE: demo.SERVICE,
        metrics.TARGET_REGION: region,
        metrics.ROLE: role,
        metrics.IMAGE: image,
        metrics.TARGET: name,
        metrics.PROBE: probe,
        metrics.VANTAGE: vantage or region,
    }
    assert tuple(labels) == metrics.TARGET_LABELS
    return labels


def _checked(spec: metrics.MetricSpec, labels: Labels) -> Labels:
    assert set(labels) == set(spec.label_names), (spec.name, labels)
    return labels


def _synthetic(base: Labels, times: list[float], end: float, rng: random.Random) -> Iterator[str]:
    sizes = {"slim": (48e6, 6), "distroless": (27e6, 3), "full": (412e6, 14)}
    cold = {"slim": 0.45, "distroless": 0.6, "full": 2.2}
    for n, (region, role, _priority) in enumerate(demo.REGIONS):
        edge = _target(region, role, "", f"{region}-edge", "http")
        not_after = end + (60 - 25 * n) * 86400  # one of them inside the 14-day warning
        for t in times:
            labels = {**base, **_checked(metrics.TLS_NOT_AFTER, edge)}
            yield f"{metrics.TLS_NOT_AFTER.name}{_fmt(labels)} {not_after:.0f} {t:.3f}"
        if role == "standby":
            db = _target(region, role, "", f"{region}-db", "postgres")
            labels = {**base, **_checked(metrics.POSTGRES_LAG, db)}
            for t in times:
                lag = rng.uniform(0.2, 2.5)
                yield f"{metrics.POSTGRES_LAG.name}{_fmt(labels)} {lag:.3f} {t:.3f}"
        for image, (size, layers) in sizes.items():
            meta = {
                metrics.SERVICE: demo.SERVICE,
                metrics.TARGET_REGION: region,
                metrics.IMAGE: image,
            }
            for spec, value in ((metrics.IMAGE_SIZE, size), (metrics.IMAGE_LAYERS, layers)):
                labels = {**base, **_checked(spec, meta)}
                for t in times:
                    yield f"{spec.name}{_fmt(labels)} {value:.0f} {t:.3f}"
            target = _checked(
                metrics.COLD_START,
                _target(region, role, image, f"{region}-{image}-cold", "cold_start"),
            )

            def draw(median: float = cold[image]) -> Iterator[list[float]]:
                while True:  # one cold start a minute
                    yield [max(0.05, rng.gauss(median, median / 5))] if rng.random() < 0.5 else []

            yield from _histogram(
                metrics.COLD_START.name,
                {**base, **target},
                metrics.COLD_START_BUCKETS,
                times,
                draw(),
            )


def _icmp(base: Labels, times: list[float], rng: random.Random) -> Iterator[str]:
    """Every demo vantage pings every region: the demo's network distance as round trip."""
    for vantage in demo.VANTAGES:
        for region, role, _priority in demo.REGIONS:
            target = _target(region, role, "", f"ping-{region}", "icmp", vantage)
            _checked(metrics.ICMP_LOST, target)
            labels = {**base, **_checked(metrics.ICMP_SENT, target)}
            rtt = demo.distance(vantage, region)
            # Longer paths cross more links that can drop a packet.
            loss = 0.3 * rtt
            lost = [sum(rng.random() < loss for _ in range(PINGS_PER_STEP)) for _ in times]

            def draw(rtt: float = rtt, lost: list[int] = lost) -> Iterator[list[float]]:
                for n in lost:
                    yield [
                        max(0.00005, rng.gauss(rtt, rtt / 20)) for _ in range(PINGS_PER_STEP - n)
                    ]

            yield from _histogram(
                metrics.PROBE_DURATION.name,
                {**base, **_checked(metrics.PROBE_DURATION, target)},
                metrics.LATENCY_BUCKETS,
                times,
                draw(),
            )
            for i, t in enumerate(times, start=1):
                yield f"{metrics.ICMP_SENT.name}{_fmt(labels)} {i * PINGS_PER_STEP} {t:.3f}"
            for i, t in enumerate(times, start=1):
                yield f"{metrics.ICMP_LOST.name}{_fmt(labels)} {sum(lost[:i])} {t:.3f}"


def _dns(base: Labels, times: list[float]) -> Iterator[str]:
    """Every demo vantage resolves the service's name; the answer points at the primary."""
    for vantage in demo.VANTAGES:
        region, role, _priority = demo.REGIONS[0]
        target = _target(region, role, "", "shop-dns", "dns", vantage)
        ttl = {**base, **_checked(metrics.DNS_ANSWER_TTL, target)}
        for t in times:
            yield f"{metrics.DNS_ANSWER_TTL.name}{_fmt(ttl)} 60 {t:.3f}"
        for answer_region, answer_role, _ in demo.REGIONS:
            labels = {
                **base,
                **_checked(metrics.DNS_POINTS_TO, {**target, "answer_region": answer_region}),
            }
            value = 1 if answer_role == "primary" else 0
            for t in times:
                yield f"{metrics.DNS_POINTS_TO.name}{_fmt(labels)} {value} {t:.3f}"


def _bench(times: list[float]) -> Iterator[str]:
    """The last `failover-exporter bench` of each demo image, as the Pushgateway exposes it
    (job="failover_bench"), when the catalogue has the bench families."""
    specs = [m for m in metrics.CATALOGUE if m.name.startswith("failover_bench_")]
    region = demo.REGIONS[0][0]
    for n, image in enumerate(sorted(demo.IMAGES)):
        median = demo.IMAGES[image][0]
        values = {
            "failover_bench_latency_p50_seconds": median,
            "failover_bench_latency_p95_seconds": median * 1.3,
            "failover_bench_cold_start_seconds": 0.4 + n,
            "failover_bench_pull_seconds": 2.0 + n,
            "failover_bench_image_size_bytes": 40e6 * (n + 1),
            "failover_bench_image_layers": 3.0 + n,
            "failover_bench_rank": 1.0 + n,
            "failover_bench_timestamp_seconds": times[0],
        }
        own = {metrics.SERVICE: demo.SERVICE, metrics.IMAGE: image, "region": region}
        pushed = {"job": "failover_bench", "instance": "pushgateway:9091"}
        for spec in specs:
            full = {**pushed, **_checked(spec, own)}
            for t in times:
                yield f"{spec.name}{_fmt(full)} {values[spec.name]} {t:.3f}"


def openmetrics(exposition: str, instance: str, end: float, seed: int = 1) -> str:
    """History ending at `end` (Unix time) for the exporter scraped as `instance`."""
    rng = random.Random(seed)
    base = {"job": "failover-exporter", "instance": instance}
    times = _times(end)
    lines: list[str] = []
    targets = probe_label_sets(exposition)
    assert targets, "the live exporter exposes no probe series yet"
    for target in targets:
        lines += _demo_series(target, base, times, rng)
    lines += _synthetic(base, times, end, rng)
    lines += _icmp(base, times, rng)
    lines += _dns(base, times)
    lines += _bench(times)
    return "\n".join(lines) + "\n# EOF\n"
