"""`bench --textfile FILE` and `bench --pushgateway URL`: the last bench per variant as
Prometheus series (the names are exporter.metrics' bench section), so a dashboard shows it next
to the live figures."""

from __future__ import annotations

import urllib.error
import urllib.parse
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Gauge, push_to_gateway, write_to_textfile

from exporter import metrics
from exporter.commands.bench_results import VariantResult

JOB = "failover_bench"


class PublishError(Exception):
    """The textfile could not be written or the Pushgateway refused; the message says which."""


def registry(
    service: str, region: str, results: Sequence[VariantResult], finished: float
) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=True)
    gauges = {
        spec.name: Gauge(spec.name, spec.help, spec.labels, registry=reg)
        for spec in metrics.BENCH_FAMILIES
    }

    def put(spec: metrics.MetricSpec, r: VariantResult, value: float | None) -> None:
        if value is not None:
            labels = {
                metrics.SERVICE: service,
                metrics.IMAGE: r.image,
                metrics.BENCH_REGION: region,
            }
            gauges[spec.name].labels(**labels).set(value)

    for r in results:
        e = r.estimates
        for spec, key in (
            (metrics.BENCH_LATENCY_P50, "latency_p50"),
            (metrics.BENCH_LATENCY_P95, "latency_p95"),
            (metrics.BENCH_COLD_START, "cold_start"),
            (metrics.BENCH_PULL, "pull"),
            (metrics.BENCH_IMAGE_SIZE, "size"),
            (metrics.BENCH_IMAGE_LAYERS, "layers"),
        ):
            est = e.get(key)
            put(spec, r, None if est is None else est.value)
        put(metrics.BENCH_RANK, r, None if r.rank is None else float(r.rank))
        put(metrics.BENCH_TIMESTAMP, r, finished)
    return reg


def check_pushgateway_url(url: str) -> str | None:
    """A problem with the URL, before any bench time is spent; None when it is usable."""
    parsed = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        return f"--pushgateway {url}: expected http(s)://HOST:PORT"
    try:
        parsed.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return f"--pushgateway {url}: bad port"
    return None


def write_textfile(path: str, reg: CollectorRegistry) -> None:
    # write_to_textfile writes a temporary file beside it and renames it: the collector never
    # reads half a file.
    try:
        write_to_textfile(path, reg)
    except OSError as exc:
        raise PublishError(f"--textfile {path}: cannot write: {exc.strerror or exc}") from None


def push(url: str, service: str, region: str, reg: CollectorRegistry, timeout: float) -> None:
    """PUT: replaces this (service, region)'s group, so a variant dropped from the config does
    not linger; other services' last benches stay."""
    try:
        push_to_gateway(
            url,
            job=JOB,
            registry=reg,
            grouping_key={metrics.SERVICE: service, metrics.BENCH_REGION: region},
            timeout=timeout,
        )
    except urllib.error.HTTPError as exc:
        body = exc.read().decode("utf-8", "replace").strip()[:300]
        raise PublishError(f"--pushgateway {url}: HTTP {exc.code}: {body}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise PublishError(f"--pushgateway {url}: cannot push: {reason}") from None
