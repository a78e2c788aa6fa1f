"""The bundle uses only what the exporter exposes (exporter.metrics) or what the rules record."""

from __future__ import annotations

import re

from exporter import metrics

from . import bundle

# Series Prometheus makes itself, not the exporter.
BUILTINS = frozenset({"up", "ALERTS", "ALERTS_FOR_STATE"})
# Labels Prometheus adds to every scraped series (job, instance), the bucket label, and the
# vantage target label of the example scrape config (for series the exporter does not label).
SCRAPE_LABELS = frozenset({"job", "instance", "le", "vantage", "alertname", "alertstate"})


def exposed() -> set[str]:
    return {name for spec in metrics.CATALOGUE for name in metrics.exposed_names(spec)}


def recorded() -> set[str]:
    return {r["record"] for r in bundle.recording_rules()}


def catalogue_labels() -> set[str]:
    return {label for spec in metrics.CATALOGUE for label in spec.label_names}


def test_scanner_finds_names_matchers_and_labels() -> None:
    scan = bundle.scan(
        'sum without (instance, vantage) (rate(failover_probes_total{job="failover-exporter",'
        ' role!="control"}[5m]) unless on (vantage) (x:y:z == 1)) / ignoring (image)'
        " group_left () 2 ^ (round(log2(a:b:c) * 16) / 16) > bool 1e-06 offset 5m"
    )
    assert [s.metric for s in scan.selectors] == ["failover_probes_total", "x:y:z", "a:b:c"]
    assert scan.selectors[0].matchers == 'job = "failover-exporter" , role != "control"'
    assert scan.label_names == {"instance", "vantage", "job", "role", "image"}


def test_every_metric_in_the_bundle_is_exposed_recorded_or_builtin() -> None:
    known = exposed() | recorded() | BUILTINS
    unknown = sorted(
        f"{where}: {s.metric}"
        for where, expr in bundle.all_exprs()
        for s in bundle.scan(expr).selectors
        if s.metric not in known
    )
    assert not unknown, unknown


def test_every_exporter_histogram_is_used_through_its_exposed_series() -> None:
    """A histogram's base name is no series: rules must read _bucket/_count/_sum."""
    bases = {spec.name for spec in metrics.CATALOGUE if spec.type is metrics.Type.HISTOGRAM}
    for where, expr in bundle.all_exprs():
        for s in bundle.scan(expr).selectors:
            assert s.metric not in bases, f"{where}: {s.metric}"


def test_every_label_in_the_rules_is_in_the_contract() -> None:
    known = catalogue_labels() | SCRAPE_LABELS | set(metrics.ROUTING_LABELS)
    for path in bundle.RULE_FILES:
        for rule in bundle.rules(path):
            unknown = bundle.scan(rule["expr"]).label_names - known
            assert not unknown, f"{rule.get('record') or rule.get('alert')}: {unknown}"


def test_every_exporter_series_is_selected_with_the_job_selector() -> None:
    """The one `job` convention (see the header of the rule files)."""
    raw = exposed() | {"up"}
    for path in bundle.RULE_FILES:
        for rule in bundle.rules(path):
            for s in bundle.scan(rule["expr"]).selectors:
                if s.metric in raw:
                    assert bundle.JOB_SELECTOR.replace("=", " = ") in s.matchers, (
                        f"{rule.get('record') or rule.get('alert')}: {s.metric}{{{s.matchers}}}"
                    )


def test_role_values_used_by_the_rules_exist() -> None:
    text = bundle.rules_text() + bundle.ALERTS.read_text()
    used = set(re.findall(r'role\s*!?=\s*"([^"]+)"', text))
    assert used == {r.value for r in metrics.Role}


def test_slo_threshold_is_an_exported_bucket_and_matches_its_constant() -> None:
    text = bundle.rules_text()
    thresholds = set(re.findall(r'\ble="([^"]+)"', text))
    assert len(thresholds) == 1, thresholds
    (threshold,) = thresholds
    assert float(threshold) in metrics.LATENCY_BUCKETS
    (constant,) = [
        r
        for r in bundle.recording_rules()
        if r["record"] == "global:failover_latency_slo_threshold_seconds:constant"
    ]
    assert constant["expr"] == f"vector({threshold})"
