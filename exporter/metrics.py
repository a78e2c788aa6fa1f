"""The metric contract: every series the exporter can expose, in one catalogue.

The Prometheus rules and Grafana dashboards in the bundle are checked against this module
(tests/test_bundle.py), so a metric is added here first and nowhere else.
"""

from __future__ import annotations

import dataclasses
from enum import StrEnum
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PREFIX: Final = "failover_"


class Type(StrEnum):
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


class Scope(StrEnum):
    """Who produces a family: per probe target, per region/image from config, or the exporter."""

    TARGET = "target"
    REGION = "region"
    IMAGE = "image"
    EXPORTER = "exporter"
    # Written by `failover-exporter bench` (textfile or Pushgateway), never exposed by /metrics.
    BENCH = "bench"


# Label names on every per-target series. `target_region`, not `region`: `region` clashes with
# target and external labels in multi-region Prometheus/Thanos setups.
SERVICE: Final = "service"
TARGET_REGION: Final = "target_region"
ROLE: Final = "role"
IMAGE: Final = "image"
TARGET: Final = "target"
PROBE: Final = "probe"
VANTAGE: Final = "vantage"
TARGET_LABELS: Final = (SERVICE, TARGET_REGION, ROLE, IMAGE, TARGET, PROBE, VANTAGE)


class Role(StrEnum):
    PRIMARY = "primary"
    STANDBY = "standby"
    # A known-good endpoint per vantage; lets rules tell "prober isolated" from "region down".
    CONTROL = "control"


class Reason(StrEnum):
    """Why a probe failed. A small fixed set, so `reason` stays a bounded label."""

    TIMEOUT = "timeout"
    DNS = "dns"
    CONNECT = "connect"
    TLS = "tls"
    RESET = "reset"
    PROTOCOL = "protocol"
    HTTP_STATUS = "http_status"
    BODY = "body"
    BODY_TOO_LARGE = "body_too_large"
    EXPECT = "expect"
    AUTH = "auth"
    QUERY = "query"
    READ_ONLY = "read_only"
    PERMISSION = "permission"
    DOCKER = "docker"
    # gRPC health: the server answered, but not SERVING / does not know the service / has no
    # health service at all.
    NOT_SERVING = "not_serving"
    SERVICE_UNKNOWN = "service_unknown"
    UNIMPLEMENTED = "unimplemented"
    # dns: rcodes with a reason of their own, any other unexpected rcode, a reply cut short,
    # answer-section checks, authority/additional checks, and a missing AD bit.
    NXDOMAIN = "nxdomain"
    SERVFAIL = "servfail"
    REFUSED = "refused"
    RCODE = "rcode"
    TRUNCATED = "truncated"
    ANSWER_MISMATCH = "answer_mismatch"
    SECTION = "section_mismatch"
    DNSSEC = "dnssec"
    # http through proxy_url: the proxy itself refused or could not be reached, asked for
    # credentials (407), or answered CONNECT with anything else than 2xx: the origin may be fine.
    PROXY_CONNECT = "proxy_connect"
    PROXY_AUTH = "proxy_auth"
    PROXY_ERROR = "proxy_error"
    # cold_start image pulls: the registry refuses or cannot be reached, the pull did not finish
    # in time (a registry that accepts and never answers), the registry has no such image or
    # tag, or it served a manifest the daemon cannot use. The Docker daemon itself is `docker`.
    PULL_UNREACHABLE = "pull_unreachable"
    PULL_TIMEOUT = "pull_timeout"
    PULL_NOT_FOUND = "pull_not_found"
    PULL_MANIFEST = "pull_manifest"
    ERROR = "error"


class SkipReason(StrEnum):
    """Why a scheduled probe did not start."""

    # The previous run of the same target was still going when its next slot came.
    OVERRUN = "overrun"
    # The global concurrency cap stayed full for the whole probe timeout.
    CONCURRENCY = "concurrency"


# Sub-millisecond to 10 s: loopback and same-zone probes land in the first buckets, cross-region
# round trips in the middle, and timeouts at the top. 17 finite buckets.
LATENCY_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075,
    0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
# Container create -> ready: from a static binary (~0.1 s) to a JVM image pulled cold (minutes).
COLD_START_BUCKETS: Final = (
    0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0,
)  # fmt: skip
# The exporter's own lateness: healthy is well under a millisecond, overloaded is tens of ms.
DELAY_BUCKETS: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class MetricSpec:
    name: str
    type: Type
    help: str
    scope: Scope
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()

    @property
    def label_names(self) -> tuple[str, ...]:
        """Every label on the series, including the per-target ones."""
        base = TARGET_LABELS if self.scope is Scope.TARGET else ()
        return base + self.labels


_SCHEDULED = "Probes run on the exporter's own schedule (not on scrape)"

PROBE_SUCCESS = MetricSpec(
    "failover_probe_success",
    Type.GAUGE,
    f"1 if the last probe succeeded, else 0. {_SCHEDULED}.",
    Scope.TARGET,
)
PROBE_DURATION = MetricSpec(
    "failover_probe_duration_seconds",
    Type.HISTOGRAM,
    f"End-to-end latency of successful probes (icmp: the round trip of each echo reply). "
    f"{_SCHEDULED}, so the distribution fills at a steady rate whatever the scrape interval.",
    Scope.TARGET,
    buckets=LATENCY_BUCKETS,
)
PROBES = MetricSpec(
    "failover_probes_total",
    Type.COUNTER,
    f"Probes completed, successful or not. {_SCHEDULED}.",
    Scope.TARGET,
)
PROBE_FAILURES = MetricSpec(
    "failover_probe_failures_total",
    Type.COUNTER,
    "Failed probes by reason (a fixed set: " + ", ".join(r.value for r in Reason) + ").",
    Scope.TARGET,
    labels=("reason",),
)
PROBE_PHASE = MetricSpec(
    "failover_probe_phase_duration_seconds",
    Type.GAUGE,
    "Duration of each phase of the last probe (http: dns, connect, connect_tunnel, tls, "
    "first_byte, transfer; tcp: dns, connect, tls, expect; postgres: connect, read, write; "
    "icmp: dns, rtt; dns: dns, udp, tcp).",
    Scope.TARGET,
    labels=("phase",),
)
PROBE_LAST_SUCCESS = MetricSpec(
    "failover_probe_last_success_timestamp_seconds",
    Type.GAUGE,
    "Unix time of the last successful probe.",
    Scope.TARGET,
)
PROBE_CONSECUTIVE_FAILURES = MetricSpec(
    "failover_probe_consecutive_failures",
    Type.GAUGE,
    "Probes failed in a row since the last success (0 after a success). The quorum votes from "
    "it: every probe counts, not only the one a scrape happens to sample.",
    Scope.TARGET,
)
# Exact order statistics of the target's last RECENT_SAMPLES successful latencies (10 min at the
# default 5 s interval): no bucket interpolation, so two images 10 % apart never share a value.
PROBE_P50 = MetricSpec(
    "failover_probe_duration_p50_seconds",
    Type.GAUGE,
    "Median latency of the last 120 successful probes (exact, from the samples; no buckets).",
    Scope.TARGET,
)
PROBE_P95 = MetricSpec(
    "failover_probe_duration_p95_seconds",
    Type.GAUGE,
    "95th percentile latency of the last 120 successful probes (exact, from the samples).",
    Scope.TARGET,
)
PROBE_RECENT_SAMPLES = MetricSpec(
    "failover_probe_duration_recent_samples",
    Type.GAUGE,
    "How many successful latencies the p50/p95 gauges are computed from (up to 120).",
    Scope.TARGET,
)
PROBE_INTERVAL = MetricSpec(
    "failover_probe_interval_seconds",
    Type.GAUGE,
    "Configured probe interval, so rules can judge staleness per target.",
    Scope.TARGET,
)
HTTP_STATUS = MetricSpec(
    "failover_http_status_code",
    Type.GAUGE,
    "HTTP status code of the last response (0 if none arrived).",
    Scope.TARGET,
)
TLS_NOT_AFTER = MetricSpec(
    "failover_tls_cert_not_after_timestamp_seconds",
    Type.GAUGE,
    "Expiry (notAfter, Unix time) of the leaf certificate the target presented last.",
    Scope.TARGET,
)
POSTGRES_LAG = MetricSpec(
    "failover_postgres_replication_lag_seconds",
    Type.GAUGE,
    "Replica staleness: replica now() minus the newest heartbeat the exporter wrote on the "
    "primary. Does not grow on an idle primary.",
    Scope.TARGET,
)
POSTGRES_REPLAY_LAG = MetricSpec(
    "failover_postgres_replay_timestamp_lag_seconds",
    Type.GAUGE,
    "now() minus pg_last_xact_replay_timestamp() on a replica. Grows on an idle primary; "
    "kept for comparison with the heartbeat lag.",
    Scope.TARGET,
)
POSTGRES_IN_RECOVERY = MetricSpec(
    "failover_postgres_in_recovery",
    Type.GAUGE,
    "pg_is_in_recovery() of the probed server: 1 for a replica, 0 for a primary.",
    Scope.TARGET,
)
COLD_START = MetricSpec(
    "failover_container_cold_start_seconds",
    Type.HISTOGRAM,
    f"Container create -> ready time, excluding any image pull. {_SCHEDULED}.",
    Scope.TARGET,
    buckets=COLD_START_BUCKETS,
)
IMAGE_PULL = MetricSpec(
    "failover_container_image_pull_seconds",
    Type.HISTOGRAM,
    "Image pull time before a cold start, when the layers had to be fetched (the image was "
    "absent, or the registry had a new one): what a failover region pays first.",
    Scope.TARGET,
    buckets=COLD_START_BUCKETS,
)
IMAGE_PULL_WARM = MetricSpec(
    "failover_container_image_warm_pull_seconds",
    Type.HISTOGRAM,
    "Image pull time before a cold start when the same image was already present (layers "
    "cached: the registry round trips only; pull: always).",
    Scope.TARGET,
    buckets=COLD_START_BUCKETS,
)

ICMP_SENT = MetricSpec(
    "failover_icmp_packets_sent_total",
    Type.COUNTER,
    "Echo requests sent by icmp probes (a request the kernel refused to send counts too). "
    "Loss ratio: rate of failover_icmp_packets_lost_total over rate of this.",
    Scope.TARGET,
)
ICMP_LOST = MetricSpec(
    "failover_icmp_packets_lost_total",
    Type.COUNTER,
    "Echo requests of icmp probes that got no reply before the probe ended. A probe succeeds "
    "when at least one reply came back; each reply's round trip is one observation of "
    "failover_probe_duration_seconds.",
    Scope.TARGET,
)

DNS_RCODE = MetricSpec(
    "failover_dns_rcode",
    Type.GAUGE,
    "Response code of the last dns probe's reply (0 NOERROR, 2 SERVFAIL, 3 NXDOMAIN, 5 REFUSED); "
    "-1 when no reply arrived.",
    Scope.TARGET,
)
DNS_ANSWERS = MetricSpec(
    "failover_dns_answer_records",
    Type.GAUGE,
    "Records in the answer section of the last dns probe's reply (0 when none arrived).",
    Scope.TARGET,
)
DNS_ANSWER_TTL = MetricSpec(
    "failover_dns_answer_ttl_seconds",
    Type.GAUGE,
    "Largest TTL in the answer section of the last dns probe's reply: the longest a cache may "
    "keep that answer.",
    Scope.TARGET,
)
DNS_POINTS_TO = MetricSpec(
    "failover_dns_answer_points_to",
    Type.GAUGE,
    "1 if the last dns probe's answer points into the configured region answer_region (an "
    "address in its CIDRs or a CNAME target among its names), else 0; one series per region "
    "in the target's `regions:`. No or an unusable reply points nowhere.",
    Scope.TARGET,
    labels=("answer_region",),
)

REGION_INFO = MetricSpec(
    "failover_region_info",
    Type.GAUGE,
    "Regions from the config, as data: role and failover priority (1 = first).",
    Scope.REGION,
    labels=(SERVICE, TARGET_REGION, ROLE, "priority"),
)

REGION_PRIORITY = MetricSpec(
    "failover_region_priority",
    Type.GAUGE,
    "Failover priority of the region as a number (1 = first), so rules and alert templates "
    "compare priorities numerically (the label of failover_region_info sorts as text).",
    Scope.REGION,
    labels=(SERVICE, TARGET_REGION, ROLE),
)
REGION_MAINTENANCE = MetricSpec(
    "failover_region_maintenance",
    Type.GAUGE,
    "1 while the region is in maintenance (config `maintenance: true` or POST /-/maintenance): "
    "out of the failover choice, its alerts suppressed by the rules.",
    Scope.REGION,
    labels=(SERVICE, TARGET_REGION),
)
# The user's labels (team, tier, ...) ride on these two info series only, so that they never
# multiply the per-probe series; rules join them with `* on(service) group_left(team, ...)`.
SERVICE_INFO = MetricSpec(
    "failover_service_info",
    Type.GAUGE,
    "A service's user labels from the config (team, tier, ...), value 1; only services with "
    "labels. Join on service to route alerts by them.",
    Scope.REGION,
    labels=(SERVICE,),
)
TARGET_INFO = MetricSpec(
    "failover_target_info",
    Type.GAUGE,
    "A target's user labels (the service's merged with its own), value 1; only targets with "
    "labels. Join on service, target and vantage.",
    Scope.REGION,
    labels=(SERVICE, TARGET, VANTAGE),
)
# User label names the bundle's rules join from failover_service_info for Alertmanager routes
# (a convention, not a limit: users add theirs to the rules' joins).
ROUTING_LABELS: Final = ("team", "tier")
SHARD_INFO = MetricSpec(
    "failover_exporter_shard_info",
    Type.GAUGE,
    "This process's shard of its vantage (--shard i/n; 0/1 when unsharded), value 1. The rules "
    "count shards per vantage and alert when one is missing.",
    Scope.EXPORTER,
    labels=(VANTAGE, "shard", "shards"),
)
SHARDS = MetricSpec(
    "failover_exporter_shards",
    Type.GAUGE,
    "How many shards this process's vantage is split into (n of --shard i/n; 1 unsharded). "
    "As a value, so that the rules can compare it with the shards they see.",
    Scope.EXPORTER,
    labels=(VANTAGE,),
)

_CACHED = "Refreshed in the background and cached; not read on scrape"
IMAGE_SIZE = MetricSpec(
    "failover_image_size_bytes",
    Type.GAUGE,
    f"Image size. {_CACHED}.",
    Scope.IMAGE,
    labels=(SERVICE, TARGET_REGION, IMAGE),
)
IMAGE_LAYERS = MetricSpec(
    "failover_image_layers",
    Type.GAUGE,
    f"Number of filesystem layers in the image. {_CACHED}.",
    Scope.IMAGE,
    labels=(SERVICE, TARGET_REGION, IMAGE),
)
IMAGE_CREATED = MetricSpec(
    "failover_image_created_timestamp_seconds",
    Type.GAUGE,
    f"Image build time (Unix time). {_CACHED}.",
    Scope.IMAGE,
    labels=(SERVICE, TARGET_REGION, IMAGE),
)
IMAGE_INFO = MetricSpec(
    "failover_image_info",
    Type.GAUGE,
    f"Image reference and digest, value 1. {_CACHED}.",
    Scope.IMAGE,
    labels=(SERVICE, IMAGE, "ref", "digest"),
)
IMAGE_REFRESH = MetricSpec(
    "failover_image_last_refresh_timestamp_seconds",
    Type.GAUGE,
    "Unix time the image metadata of a region was last read successfully.",
    Scope.IMAGE,
    labels=(SERVICE, TARGET_REGION),
)

BUILD_INFO = MetricSpec(
    "failover_exporter_build_info",
    Type.GAUGE,
    "Exporter version, value 1.",
    Scope.EXPORTER,
    labels=("version", "python_version"),
)
RELOAD_OK = MetricSpec(
    "failover_exporter_config_last_reload_successful",
    Type.GAUGE,
    "1 if the last config load succeeded; 0 if it failed and the previous config kept running.",
    Scope.EXPORTER,
)
RELOAD_TS = MetricSpec(
    "failover_exporter_config_last_reload_success_timestamp_seconds",
    Type.GAUGE,
    "Unix time of the last successful config load.",
    Scope.EXPORTER,
)
LOOP_LAG = MetricSpec(
    "failover_exporter_event_loop_lag_seconds",
    Type.HISTOGRAM,
    "How late a periodic timer fires on the exporter's event loop. High values mean probe "
    "timings are inflated by the exporter itself.",
    Scope.EXPORTER,
    buckets=DELAY_BUCKETS,
)
START_DELAY = MetricSpec(
    "failover_exporter_probe_start_delay_seconds",
    Type.HISTOGRAM,
    "How late probes start compared with their schedule.",
    Scope.EXPORTER,
    buckets=DELAY_BUCKETS,
)
SKIPPED = MetricSpec(
    "failover_exporter_probes_skipped_total",
    Type.COUNTER,
    "Scheduled probes that did not run, by reason (overrun: previous run still going; "
    "concurrency: the global cap stayed full).",
    Scope.EXPORTER,
    labels=("reason",),
)
TARGETS = MetricSpec(
    "failover_exporter_targets",
    Type.GAUGE,
    "Configured probe targets.",
    Scope.EXPORTER,
    labels=(VANTAGE,),
)
IN_FLIGHT = MetricSpec(
    "failover_exporter_probes_in_flight",
    Type.GAUGE,
    "Probes running now.",
    Scope.EXPORTER,
)
MAX_CONCURRENCY = MetricSpec(
    "failover_exporter_max_concurrency",
    Type.GAUGE,
    "The global cap on probes running at once.",
    Scope.EXPORTER,
)
OVERLOADED = MetricSpec(
    "failover_exporter_overloaded",
    Type.GAUGE,
    "1 while the exporter's own delays (loop lag or probe start delay over the last window) "
    "exceed its budget: its latency figures are then not trustworthy.",
    Scope.EXPORTER,
)
TASKS = MetricSpec(
    "failover_exporter_tasks",
    Type.GAUGE,
    "asyncio tasks alive in the exporter (probes, requests, background work). Like Go's "
    "go_goroutines: steady with a steady config, so growth over days means a leak.",
    Scope.EXPORTER,
)

# -- bench: the last `failover-exporter bench` run per variant, for dashboards next to the live
# figures. Written with `bench --textfile` (node_exporter's textfile collector) or pushed with
# `bench --pushgateway` (job="failover_bench"); the exporter's /metrics never has them. `region`
# is the region whose Docker endpoint ran the bench (no per-target labels: nothing is probed).
BENCH_REGION: Final = "region"
BENCH_LABELS: Final = (SERVICE, IMAGE, BENCH_REGION)
_BENCH_RUNS = "median over bench runs (a fresh container each)"
BENCH_LATENCY_P50 = MetricSpec(
    "failover_bench_latency_p50_seconds",
    Type.GAUGE,
    f"Last bench: p50 latency under load, {_BENCH_RUNS} of each run's p50.",
    Scope.BENCH,
    BENCH_LABELS,
)
BENCH_LATENCY_P95 = MetricSpec(
    "failover_bench_latency_p95_seconds",
    Type.GAUGE,
    f"Last bench: p95 latency under load, {_BENCH_RUNS} of each run's p95 (the ranking metric).",
    Scope.BENCH,
    BENCH_LABELS,
)
BENCH_COLD_START = MetricSpec(
    "failover_bench_cold_start_seconds",
    Type.GAUGE,
    f"Last bench: container create -> ready, {_BENCH_RUNS}; excludes any pull.",
    Scope.BENCH,
    BENCH_LABELS,
)
BENCH_PULL = MetricSpec(
    "failover_bench_pull_seconds",
    Type.GAUGE,
    "Last bench: image pull time, when the bench had to pull the image (absent otherwise).",
    Scope.BENCH,
    BENCH_LABELS,
)
BENCH_IMAGE_SIZE = MetricSpec(
    "failover_bench_image_size_bytes",
    Type.GAUGE,
    "Last bench: image size as the Docker endpoint reports it (uncompressed).",
    Scope.BENCH,
    BENCH_LABELS,
)
BENCH_IMAGE_LAYERS = MetricSpec(
    "failover_bench_image_layers",
    Type.GAUGE,
    "Last bench: number of layers in the image's root filesystem.",
    Scope.BENCH,
    BENCH_LABELS,
)
BENCH_RANK = MetricSpec(
    "failover_bench_rank",
    Type.GAUGE,
    "Last bench: rank by p95 latency (1 = fastest); tied variants (overlapping confidence "
    "intervals) share a rank. Absent for a variant that failed.",
    Scope.BENCH,
    BENCH_LABELS,
)
BENCH_TIMESTAMP = MetricSpec(
    "failover_bench_timestamp_seconds",
    Type.GAUGE,
    "Unix time the bench of this variant finished.",
    Scope.BENCH,
    BENCH_LABELS,
)
BENCH_FAMILIES: Final = (
    BENCH_LATENCY_P50,
    BENCH_LATENCY_P95,
    BENCH_COLD_START,
    BENCH_PULL,
    BENCH_IMAGE_SIZE,
    BENCH_IMAGE_LAYERS,
    BENCH_RANK,
    BENCH_TIMESTAMP,
)

CATALOGUE: Final[tuple[MetricSpec, ...]] = (
    PROBE_SUCCESS,
    PROBE_DURATION,
    PROBES,
    PROBE_FAILURES,
    PROBE_PHASE,
    PROBE_LAST_SUCCESS,
    PROBE_INTERVAL,
    PROBE_CONSECUTIVE_FAILURES,
    PROBE_P50,
    PROBE_P95,
    PROBE_RECENT_SAMPLES,
    HTTP_STATUS,
    TLS_NOT_AFTER,
    POSTGRES_LAG,
    POSTGRES_REPLAY_LAG,
    POSTGRES_IN_RECOVERY,
    COLD_START,
    IMAGE_PULL,
    IMAGE_PULL_WARM,
    ICMP_SENT,
    ICMP_LOST,
    DNS_RCODE,
    DNS_ANSWERS,
    DNS_ANSWER_TTL,
    DNS_POINTS_TO,
    REGION_INFO,
    REGION_PRIORITY,
    REGION_MAINTENANCE,
    SERVICE_INFO,
    TARGET_INFO,
    SHARD_INFO,
    SHARDS,
    IMAGE_SIZE,
    IMAGE_LAYERS,
    IMAGE_CREATED,
    IMAGE_INFO,
    IMAGE_REFRESH,
    BUILD_INFO,
    RELOAD_OK,
    RELOAD_TS,
    LOOP_LAG,
    START_DELAY,
    SKIPPED,
    TARGETS,
    IN_FLIGHT,
    MAX_CONCURRENCY,
    OVERLOADED,
    TASKS,
    *BENCH_FAMILIES,
)
BY_NAME: Final = {m.name: m for m in CATALOGUE}
TARGET_FAMILIES: Final = tuple(m for m in CATALOGUE if m.scope is Scope.TARGET)


def exposed_names(spec: MetricSpec) -> tuple[str, ...]:
    """Sample names a family produces in the text format."""
    if spec.type is Type.HISTOGRAM:
        return (f"{spec.name}_bucket", f"{spec.name}_sum", f"{spec.name}_count")
    return (spec.name,)


class SelfMetrics:
    """The exporter's own instruments, created in the registry they are given."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def counter(spec: MetricSpec) -> Counter:
            return Counter(
                spec.name.removesuffix("_total"), spec.help, spec.labels, registry=registry
            )

        def gauge(spec: MetricSpec) -> Gauge:
            return Gauge(spec.name, spec.help, spec.labels, registry=registry)

        def histogram(spec: MetricSpec) -> Histogram:
            return Histogram(
                spec.name, spec.help, spec.labels, registry=registry, buckets=spec.buckets
            )

        self.build_info = gauge(BUILD_INFO)
        self.reload_ok = gauge(RELOAD_OK)
        self.reload_ts = gauge(RELOAD_TS)
        self.loop_lag = histogram(LOOP_LAG)
        self.start_delay = histogram(START_DELAY)
        self.skipped = counter(SKIPPED)
        for reason in SkipReason:
            self.skipped.labels(reason=reason.value)
        self.targets = gauge(TARGETS)
        self.in_flight = gauge(IN_FLIGHT)
        self.max_concurrency = gauge(MAX_CONCURRENCY)
        self.overloaded = gauge(OVERLOADED)
