"""The target drill-down dashboard: one target's probes, phases and failures."""

from __future__ import annotations

from grafana_foundation_sdk.models import dashboard as dm

from failover_dashboards.panels import (
    CERT_CRIT_S,
    CERT_WARN_S,
    OK_FAIL,
    RPO_BUDGET_S,
    RTO_BUDGET_S,
    SLO_THRESHOLD_S,
    TARGET_SEL,
    VOTE_FAILS_IN_A_ROW,
    VOTE_HEALTHY,
    dashboard,
    mapping,
    query,
    row,
    single,
    steps,
    timeline,
    ts,
)


def target() -> dm.Dashboard:
    s = TARGET_SEL
    who = "{{target}} from {{vantage}}"
    last = single(
        "Last result",
        "failover_probe_success: the last probe of each selected target and vantage.",
        [query(f"failover_probe_success{s}", who)],
        "none",
        steps((None, "red"), (1, "green")),
        OK_FAIL,
        width=24,
        height=4,
    )
    ratio = ts(
        "Success ratio",
        "Share of probes that succeeded over the interval. A vantage votes its region failing "
        f"when {VOTE_HEALTHY:.0%} or more of its targets there failed twice in a row.",
        [query(f"avg_over_time(failover_probe_success{s}[$__rate_interval])", who)],
        "percentunit",
        steps((None, "red"), (VOTE_HEALTHY, "green")),
        show_thresholds=True,
    )
    latency = ts(
        "Latency p50 / p95",
        "From failover_probe_duration_seconds (successful probes only).",
        [
            query(
                "histogram_quantile(0.5, sum by (le, target, vantage) ("
                f"rate(failover_probe_duration_seconds_bucket{s}[$__rate_interval])))",
                "p50 " + who,
                ref="A",
            ),
            query(
                "histogram_quantile(0.95, sum by (le, target, vantage) ("
                f"rate(failover_probe_duration_seconds_bucket{s}[$__rate_interval])))",
                "p95 " + who,
                ref="B",
            ),
        ],
        "s",
        steps((None, "green"), (SLO_THRESHOLD_S, "red")),
        show_thresholds=True,
    )
    exact = ts(
        "Exact p50 / p95 (last 120 probes)",
        "failover_probe_duration_p50_seconds / _p95_seconds: order statistics of the target's "
        "last 120 successful latencies, no bucket interpolation: what the ranking reads.",
        [
            query(f"failover_probe_duration_p50_seconds{s}", "p50 " + who, ref="A"),
            query(f"failover_probe_duration_p95_seconds{s}", "p95 " + who, ref="B"),
        ],
        "s",
        steps((None, "green"), (SLO_THRESHOLD_S, "red")),
        show_thresholds=True,
    )
    streak = ts(
        "Consecutive failures",
        "failover_probe_consecutive_failures: probes failed in a row (0 after a success). A "
        f"vantage votes from it: {VOTE_FAILS_IN_A_ROW} in a row count as failing.",
        [query(f"failover_probe_consecutive_failures{s}", who)],
        "short",
        steps((None, "green"), (VOTE_FAILS_IN_A_ROW, "red")),
        show_thresholds=True,
    )
    phases = ts(
        "Phase timings (last probe)",
        "failover_probe_phase_duration_seconds: http dns, connect, tls, first_byte, transfer; "
        "tcp dns, connect, tls, expect; postgres connect, read, write; icmp dns, rtt. Stacked.",
        [query(f"failover_probe_phase_duration_seconds{s}", "{{phase}} " + who)],
        "s",
        stacked=True,
        width=24,
    )
    status = timeline(
        "HTTP status code",
        "failover_http_status_code of the last response (0 = no response arrived).",
        [query(f"failover_http_status_code{s}", who)],
        "none",
        steps((None, "red"), (200, "green"), (300, "blue"), (400, "orange"), (500, "red")),
        mapping(v0=("no response", "red")),
        width=12,
        height=8,
    )
    reasons = ts(
        "Failures by reason",
        "increase(failover_probe_failures_total) per reason: timeout, dns, connect, tls, reset, "
        "protocol, http_status, body, expect, auth, query, ...",
        [
            query(
                f"sum by (reason) (increase(failover_probe_failures_total{s}[$__rate_interval]))",
                "{{reason}}",
            )
        ],
        "short",
        bars=True,
    )
    tls = single(
        "TLS certificate expires in",
        "failover_tls_cert_not_after_timestamp_seconds - now, for targets that use TLS. "
        "FailoverCertificateExpiry: warning under 14 days, critical under 3 days.",
        [query(f"failover_tls_cert_not_after_timestamp_seconds{s} - time()", who)],
        "dtdurations",
        steps((None, "red"), (CERT_CRIT_S, "orange"), (CERT_WARN_S, "green")),
        width=12,
        height=8,
        no_value="no TLS",
    )
    lag = ts(
        "Replication lag",
        "failover_postgres_replication_lag_seconds (heartbeat written on the primary, read on "
        f"the replica). Orange: half the RPO budget (FailoverReplicationLagHigh); red: the RPO "
        f"budget ({RPO_BUDGET_S:.0f}s), over which the standby is not ready.",
        [query(f"failover_postgres_replication_lag_seconds{s}", who)],
        "s",
        steps((None, "green"), (RPO_BUDGET_S / 2, "orange"), (RPO_BUDGET_S, "red")),
        show_thresholds=True,
    )
    since = ts(
        "Time since last success",
        "now - failover_probe_last_success_timestamp_seconds.",
        [query(f"time() - failover_probe_last_success_timestamp_seconds{s}", who)],
        "s",
    )
    cold = ts(
        "Cold start p95",
        "failover_container_cold_start_seconds of cold_start probes. Red: the RTO budget "
        f"({RTO_BUDGET_S:.0f}s).",
        [
            query(
                "histogram_quantile(0.95, sum by (le, target, vantage) ("
                f"rate(failover_container_cold_start_seconds_bucket{s}[$__rate_interval])))",
                who,
            )
        ],
        "s",
        steps((None, "green"), (RTO_BUDGET_S, "red")),
        show_thresholds=True,
    )
    return dashboard(
        "target",
        "Failover / Target drill-down",
        "One endpoint at a time, from each vantage: result, latency, phases, status codes, "
        "failure reasons, certificate expiry, replication lag.",
        [
            row("Result and latency"),
            last,
            ratio,
            latency,
            exact,
            streak,
            phases,
            row("Why it fails"),
            status,
            reasons,
            row("Certificates, replication, cold start"),
            tls,
            lag,
            since,
            cold,
        ],
        extra_vars=("image", "target"),
    )
