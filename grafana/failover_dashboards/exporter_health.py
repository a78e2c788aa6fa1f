"""The exporter health dashboard: the prober's own lateness, load and config."""

from __future__ import annotations

from grafana_foundation_sdk.models import dashboard as dm

from failover_dashboards.panels import (
    F_VANTAGE,
    JOB,
    LOOP_LAG_P99_S,
    PROBES_STALE_RATIO,
    RAW,
    START_DELAY_P99_S,
    VOTE_HEALTHY,
    dashboard,
    instant_table,
    mapping,
    query,
    row,
    sel,
    single,
    steps,
    ts,
)


def exporter() -> dm.Dashboard:
    ev = sel(JOB, F_VANTAGE)
    inst = "{{instance}} {{vantage}}"
    up = single(
        "Scrape up",
        "up of each exporter (FailoverExporterDown after 2m at 0).",
        [query(f"up{ev}", inst)],
        "none",
        steps((None, "red"), (1, "green")),
        mapping(v0=("DOWN", "red"), v1=("UP", "green")),
    )
    overloaded = single(
        "Overloaded",
        "failover_exporter_overloaded: 1 while the exporter's own delays exceed its budget; its "
        "latency figures are then left out of ranking and the SLO.",
        [query(f"failover_exporter_overloaded{ev}", inst)],
        "none",
        steps((None, "green"), (1, "red")),
        mapping(v0=("OK", "green"), v1=("OVERLOADED", "red")),
    )
    reload_ok = single(
        "Config reload",
        "failover_exporter_config_last_reload_successful: FAILED = the last reload was rejected "
        "and the previous config keeps running (FailoverConfigReloadFailed).",
        [query(f"failover_exporter_config_last_reload_successful{ev}", inst)],
        "none",
        steps((None, "red"), (1, "green")),
        mapping(v0=("FAILED", "red"), v1=("OK", "green")),
    )
    loop = ts(
        "Event-loop lag p99",
        "instance:failover_exporter_event_loop_lag_seconds:p99_rate5m. Dashed line: "
        f"{LOOP_LAG_P99_S * 1000:.0f}ms, over which FailoverExporterOverloaded fires.",
        [query(f"instance:failover_exporter_event_loop_lag_seconds:p99_rate5m{ev}", inst)],
        "s",
        steps((None, "green"), (LOOP_LAG_P99_S, "red")),
        show_thresholds=True,
    )
    delay = ts(
        "Probe start delay p99",
        "instance:failover_exporter_probe_start_delay_seconds:p99_rate5m: how late probes start "
        f"against their schedule. Dashed line: {START_DELAY_P99_S * 1000:.0f}ms "
        "(FailoverExporterOverloaded).",
        [query(f"instance:failover_exporter_probe_start_delay_seconds:p99_rate5m{ev}", inst)],
        "s",
        steps((None, "green"), (START_DELAY_P99_S, "red")),
        show_thresholds=True,
    )
    skips = ts(
        "Skipped probes",
        "rate(failover_exporter_probes_skipped_total) by reason: overrun (the previous run of "
        "the target was still going) and concurrency (the global cap stayed full).",
        [
            query(
                "sum by (instance, reason) (rate(failover_exporter_probes_skipped_total"
                f"{ev}[$__rate_interval]))",
                "{{instance}} {{reason}}",
            )
        ],
        "ops",
        steps((None, "green"), (1e-9, "orange")),
    )
    completion = ts(
        "Probes completed vs configured",
        "Per vantage, the lowest over its targets of probes completed / probes configured "
        f"(rate × interval). Under {PROBES_STALE_RATIO:.0%}: FailoverProbesStale.",
        [
            query(
                "min by (vantage) ("
                f"rate(failover_probes_total{sel(*RAW)}[$__rate_interval])"
                f" * failover_probe_interval_seconds{sel(*RAW)})",
                "{{vantage}}",
            )
        ],
        "percentunit",
        steps((None, "red"), (PROBES_STALE_RATIO, "green")),
        show_thresholds=True,
    )
    targets_ = ts(
        "Targets and probes in flight",
        "failover_exporter_targets (per vantage), probes running now and the concurrency cap.",
        [
            query(f"failover_exporter_targets{ev}", "targets {{vantage}}", ref="A"),
            query(f"failover_exporter_probes_in_flight{ev}", "in flight {{instance}}", ref="B"),
            query(f"failover_exporter_max_concurrency{ev}", "cap {{instance}}", ref="C"),
        ],
        "short",
    )
    scrape = ts(
        "Scrape duration",
        "scrape_duration_seconds of the exporter's /metrics (Prometheus's own measurement).",
        [query(f"scrape_duration_seconds{ev}", inst)],
        "s",
    )
    control = ts(
        "Control target success (1m)",
        "vantage:failover_control_probe_success:avg1m: under 50 % the vantage is isolated and "
        "does not vote (FailoverVantageIsolated).",
        [query(f"vantage:failover_control_probe_success:avg1m{sel(F_VANTAGE)}", "{{vantage}}")],
        "percentunit",
        steps((None, "red"), (VOTE_HEALTHY, "green")),
        show_thresholds=True,
    )
    since_reload = single(
        "Since last successful reload",
        "now - failover_exporter_config_last_reload_success_timestamp_seconds.",
        [
            query(
                f"time() - failover_exporter_config_last_reload_success_timestamp_seconds{ev}", inst
            )
        ],
        "dtdurations",
    )
    build = instant_table(
        "Versions",
        "failover_exporter_build_info.",
        [query(f"failover_exporter_build_info{ev}", instant=True, fmt="table")],
        "none",
        rename={"instance": "Instance", "version": "Version", "python_version": "Python"},
        hide=("Time", "Value", "__name__", "job"),
        width=16,
        height=5,
    )
    return dashboard(
        "exporter",
        "Failover / Exporter health",
        "Can the exporters' measurements be trusted: scrapes, event-loop lag, probe start "
        "delay, skipped probes, config reloads, targets.",
        [
            row("Status"),
            up,
            overloaded,
            reload_ok,
            build,
            since_reload,
            row("Lateness"),
            loop,
            delay,
            skips,
            completion,
            row("Load and scrapes"),
            targets_,
            scrape,
            control.span(24),
        ],
    )
