"""Recording and alert rules: promtool checks, unit tests, and the conventions they follow."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.tools import need

from . import bundle

SEVERITIES = ("critical", "warning", "info")
# Alerts without labels to put in their description: it cannot be templated.
UNTEMPLATED_DESCRIPTION = {
    "FailoverWatchdog": "vector(1) has no labels",
    "FailoverExporterAbsent": "absent() of a comparison has no labels",
}


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    # All unit-test files run side by side: on a loaded 2-core machine the slowest (slo, ~30 s
    # of CPU) takes minutes of wall time.
    return subprocess.run(
        [need("promtool"), *map(str, args)], capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def unit_test_results() -> dict[Path, subprocess.CompletedProcess[str]]:
    """`promtool test rules` of every test file, run side by side (each takes seconds)."""
    need("promtool")
    with ThreadPoolExecutor(max_workers=len(bundle.RULE_TESTS)) as pool:
        return dict(
            zip(
                bundle.RULE_TESTS,
                pool.map(lambda p: promtool("test", "rules", p), bundle.RULE_TESTS),
                strict=True,
            )
        )


def test_rule_files_pass_promtool_check_with_lint() -> None:
    result = promtool("check", "rules", "--lint=all", "--lint-fatal", *bundle.RULE_FILES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_example_scrape_config_passes_promtool_check() -> None:
    result = promtool("check", "config", bundle.SCRAPE_CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr
    config = bundle.load_yaml(bundle.SCRAPE_CONFIG)
    rule_files = {(bundle.SCRAPE_CONFIG.parent / f).resolve() for f in config["rule_files"]}
    assert rule_files == {p.resolve() for p in bundle.RULE_FILES}
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "failover-exporter"]
    assert job["honor_labels"] is True
    vantages = [t["labels"]["vantage"] for t in job["static_configs"]]
    assert len(vantages) >= 3
    assert len(set(vantages)) == len(vantages)


def test_there_are_rule_unit_tests() -> None:
    assert len(bundle.RULE_TESTS) >= 5


@pytest.mark.parametrize("path", bundle.RULE_TESTS, ids=lambda p: p.name)
def test_promtool_unit_tests_pass(
    path: Path, unit_test_results: dict[Path, subprocess.CompletedProcess[str]]
) -> None:
    result = unit_test_results[path]
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_can_fail(tmp_path: Path) -> None:
    """The harness notices a wrong expectation (here: a Watchdog that is not firing)."""
    broken = tmp_path / "broken.test.yml"
    broken.write_text(
        "rule_files: [" + str(bundle.ALERTS) + "]\n"
        "tests:\n"
        "  - interval: 1m\n"
        "    alert_rule_test:\n"
        "      - {eval_time: 1m, alertname: FailoverWatchdog, exp_alerts: []}\n"
    )
    result = promtool("test", "rules", broken)
    assert result.returncode != 0
    assert "FailoverWatchdog" in result.stdout + result.stderr


def _test_files() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in bundle.RULE_TESTS:
        yield path, bundle.load_yaml(path)


# promtool 2.42 ignores unknown keys: a misspelt key would silently test nothing.
_KNOWN_KEYS = {
    "file": {"rule_files", "evaluation_interval", "group_eval_order", "tests"},
    "group": {"name", "interval", "input_series", "promql_expr_test", "alert_rule_test"},
    "series": {"series", "values"},
    "expr_test": {"expr", "eval_time", "exp_samples"},
    "sample": {"labels", "value"},
    "alert_test": {"eval_time", "alertname", "exp_alerts"},
    "alert": {"exp_labels", "exp_annotations"},
}


@pytest.mark.parametrize("path", bundle.RULE_TESTS, ids=lambda p: p.name)
def test_unit_test_files_use_only_known_keys(path: Path) -> None:
    doc = bundle.load_yaml(path)

    def check(kind: str, obj: dict[str, Any], where: str) -> None:
        unknown = set(obj) - _KNOWN_KEYS[kind]
        assert not unknown, f"{path.name} {where}: unknown keys {sorted(unknown)}"

    check("file", doc, "top level")
    for n, group in enumerate(doc["tests"]):
        check("group", group, f"tests[{n}]")
        for s in group.get("input_series", []):
            check("series", s, f"tests[{n}].input_series")
        for case in group.get("promql_expr_test", []):
            check("expr_test", case, f"tests[{n}].promql_expr_test")
            for sample in case.get("exp_samples") or []:
                check("sample", sample, f"tests[{n}].promql_expr_test.exp_samples")
        for case in group.get("alert_rule_test", []):
            check("alert_test", case, f"tests[{n}].alert_rule_test")
            for alert in case.get("exp_alerts") or []:
                check("alert", alert, f"tests[{n}].alert_rule_test.exp_alerts")


@pytest.mark.parametrize("path", bundle.RULE_TESTS, ids=lambda p: p.name)
def test_unit_test_files_fix_the_group_order(path: Path) -> None:
    """Without group_eval_order promtool evaluates groups in random order: flaky chains."""
    doc = bundle.load_yaml(path)
    assert doc.get("group_eval_order") == bundle.group_names()
    assert sorted(Path(f).name for f in doc["rule_files"]) == sorted(
        p.name for p in bundle.RULE_FILES
    )


def _record_names_in(expr: str) -> set[str]:
    return {s.metric for s in bundle.scan(expr).selectors}


def test_every_recording_rule_has_a_value_test() -> None:
    tested: set[str] = set()
    for _, doc in _test_files():
        for group in doc["tests"]:
            for case in group.get("promql_expr_test", []):
                if case.get("exp_samples"):
                    tested |= _record_names_in(case["expr"])
    untested = [r["record"] for r in bundle.recording_rules() if r["record"] not in tested]
    assert not untested, f"recording rules without a promql_expr_test with samples: {untested}"


def test_every_alert_rule_has_a_firing_test_with_labels_and_annotations() -> None:
    """Each alert rule (a name plus its static labels, e.g. severity or reason) must be seen
    firing in some test, with every annotation asserted."""
    fired: list[tuple[str, dict[str, str], set[str]]] = []
    for _, doc in _test_files():
        for group in doc["tests"]:
            for case in group.get("alert_rule_test", []):
                for alert in case.get("exp_alerts") or []:
                    labels = {k: str(v) for k, v in alert.get("exp_labels", {}).items()}
                    fired.append((case["alertname"], labels, set(alert.get("exp_annotations", {}))))
    missing = []
    for rule in bundle.alert_rules():
        static = {k: str(v) for k, v in rule.get("labels", {}).items()}
        annotations = set(rule.get("annotations", {}))
        if not any(
            name == rule["alert"] and static.items() <= labels.items() and annotations <= asserted
            for name, labels, asserted in fired
        ):
            missing.append(f"{rule['alert']} {static}")
    assert not missing, f"alert rules never tested firing with all annotations: {missing}"


@pytest.mark.parametrize("rule", bundle.alert_rules(), ids=lambda r: r["alert"])
def test_alert_has_required_labels_and_annotations(rule: dict[str, Any]) -> None:
    name = rule["alert"]
    assert re.fullmatch(r"Failover[A-Z][A-Za-z0-9]+", name)
    assert rule["labels"]["severity"] in SEVERITIES
    annotations = rule["annotations"]
    assert annotations["summary"].strip().endswith(".")
    assert "{{" not in annotations["summary"], "summary is static; details go in description"
    description = annotations["description"]
    if name not in UNTEMPLATED_DESCRIPTION:
        assert "{{" in description, f"{name}: description is not templated"
    anchor = annotations["runbook_url"].removeprefix(bundle.RUNBOOK_BASE)
    assert anchor != annotations["runbook_url"], annotations["runbook_url"]
    assert anchor == name.lower(), "runbook anchor is the alert's heading"
    dashboard = annotations["dashboard_url"].removeprefix(bundle.DASHBOARD_BASE)
    assert dashboard.split("?")[0] in bundle.DASHBOARD_UIDS, annotations["dashboard_url"]


def test_every_runbook_anchor_exists() -> None:
    headings = {
        re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in bundle.RUNBOOKS.read_text().splitlines()
        if line.startswith("#")
    }
    anchors = {r["annotations"]["runbook_url"].split("#")[1] for r in bundle.alert_rules()}
    assert anchors <= headings, sorted(anchors - headings)


def test_recording_rule_names_follow_level_metric_operations() -> None:
    for rule in bundle.recording_rules():
        level, metric, operations = rule["record"].split(":")
        assert level, rule["record"]
        assert operations, rule["record"]
        assert metric.startswith("failover_"), rule["record"]


def test_recording_rules_aggregate_with_without_or_by() -> None:
    """No bare aggregation: each one says which labels it keeps or drops."""
    bare = re.compile(r"\b(sum|avg|min|max|count|quantile|bottomk|topk)\s*\(")
    for rule in bundle.recording_rules() + bundle.alert_rules():
        assert not bare.search(rule["expr"]), rule.get("record") or rule.get("alert")


def test_every_rule_name_is_unique_per_labels() -> None:
    seen = set()
    for rule in bundle.recording_rules() + bundle.alert_rules():
        key = (rule.get("record") or rule.get("alert"), tuple(sorted(rule.get("labels", {}))))
        labels = tuple(sorted(rule.get("labels", {}).items()))
        assert (key, labels) not in seen, key
        seen.add((key, labels))


def test_rank_expressions_compare_with_the_kth_fastest_for_every_k() -> None:
    """Ranks are 1 + the number of k (1..9) whose k-th fastest is strictly faster; a missing or
    repeated term would rank wrongly."""
    ranks = [r for r in bundle.recording_rules() if ":failover_image_rank:" in r["record"]]
    assert len(ranks) == 2
    for rule in ranks:
        ks = [int(k) for k in re.findall(r"bottomk without \(image\) \((\d+),", rule["expr"])]
        assert ks == list(range(1, 10)), rule["record"]


def _aggregation_drops_vantage(expr: str) -> bool:
    """True when an aggregation in `expr` removes the `vantage` label."""
    for m in re.finditer(r"\b(without|by)\s*\(([^)]*)\)", expr):
        names = {n.strip() for n in m.group(2).split(",") if n.strip()}
        if (m.group(1) == "without") == ("vantage" in names):
            return True
    return False


def test_the_regional_tier_keeps_one_vantage_per_series() -> None:
    """Regional rules run on a Prometheus that sees one vantage: none may need another one."""
    global_records = {r["record"] for r in bundle.rules(bundle.GLOBAL_RULES) if "record" in r}
    regional = [r for r in bundle.rules(bundle.REGIONAL_RULES)]
    assert regional
    for rule in regional:
        name = rule["record"]
        assert name.split(":")[0].split("_")[0] in {"vantage", "instance"}, name
        assert not _aggregation_drops_vantage(rule["expr"]), name
        read = {s.metric for s in bundle.scan(rule["expr"]).selectors}
        assert not read & global_records, f"{name} reads the global tier: {read & global_records}"


def test_the_tier_check_notices_a_cross_vantage_aggregation() -> None:
    assert _aggregation_drops_vantage("count without (vantage) (x)")
    assert _aggregation_drops_vantage("max by (service) (x)")
    assert not _aggregation_drops_vantage("avg without (instance, role) (x)")
    assert not _aggregation_drops_vantage("count by (vantage) (x)")


def test_the_global_tier_records_nothing_per_vantage() -> None:
    """The per-vantage records live in one tier only, so remote-written copies never collide."""
    for rule in bundle.rules(bundle.GLOBAL_RULES):
        assert not rule["record"].startswith(("vantage", "instance")), rule["record"]


def test_the_documented_regional_forward_list_is_what_the_global_tier_reads() -> None:
    """docs/deploy.md's keep regex for regional servers: everything the global side reads,
    and not the per-target inputs of the votes, which stay regional."""
    text = (bundle.ROOT / "docs" / "deploy.md").read_text()
    (keep,) = re.findall(r'action: keep\n\s*#.*\n\s*regex: "([^"]+)"', text)
    forwards = bundle.regional_server_forwards()
    missing = [m for m in forwards if not re.fullmatch(keep, m)]
    assert not missing, f"docs/deploy.md keep regex misses {missing}"
    for home in ("failover_probe_consecutive_failures", "failover_probe_success"):
        assert home not in forwards
        assert not re.fullmatch(keep, home), home
