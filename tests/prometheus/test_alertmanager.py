"""Alertmanager config: amtool checks, routing cases, and inhibitions that stay scoped."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.tools import need

from . import bundle


def amtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [need("amtool"), *map(str, args)], capture_output=True, text=True, timeout=60
    )


def route_cases() -> list[tuple[str, list[str]]]:
    cases = []
    for line in bundle.ROUTE_TESTS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            receivers, *labels = shlex.split(line)
            cases.append((receivers, labels))
    return cases


def config() -> dict[str, Any]:
    doc: dict[str, Any] = bundle.load_yaml(bundle.ALERTMANAGER)
    return doc


def test_config_passes_amtool_check() -> None:
    result = amtool("check-config", bundle.ALERTMANAGER)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize(("receivers", "labels"), route_cases(), ids=lambda c: str(c))
def test_route(receivers: str, labels: list[str]) -> None:
    result = amtool(
        "config", "routes", "test", "--config.file", bundle.ALERTMANAGER,
        "--verify.receivers", receivers, *labels,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_route_test_can_fail() -> None:
    result = amtool(
        "config", "routes", "test", "--config.file", bundle.ALERTMANAGER,
        "--verify.receivers", "blackhole", "alertname=FailoverPrimaryRegionDown",
        "severity=critical",
    )  # fmt: skip
    assert result.returncode != 0


def test_every_severity_and_receiver_has_a_route_case() -> None:
    cases = route_cases()
    receivers = {r["name"] for r in config()["receivers"]}
    assert {r for rs, _ in cases for r in rs.split(",")} == receivers
    severities = {rule["labels"]["severity"] for rule in bundle.alert_rules()}
    tested = {
        label.removeprefix("severity=") for _, ls in cases for label in ls if "severity=" in label
    }
    assert severities <= tested


def test_uses_matchers_not_deprecated_match() -> None:
    text = bundle.ALERTMANAGER.read_text()
    for old in ("match:", "match_re:", "source_match:", "target_match:", "source_match_re:"):
        assert f" {old}" not in text
        assert f"\n{old}" not in text


def test_groups_by_service_and_region() -> None:
    assert {"service", "target_region"} <= set(config()["route"]["group_by"])


def test_every_inhibition_is_scoped_and_names_real_alerts() -> None:
    """An inhibition without `equal` mutes everything everywhere."""
    alerts = {r["alert"] for r in bundle.alert_rules()}
    for rule in config()["inhibit_rules"]:
        assert rule.get("equal"), rule
        for matcher in rule["source_matchers"] + rule["target_matchers"]:
            if matcher.startswith('alertname="'):
                assert matcher.split('"')[1] in alerts, matcher


def test_pager_reads_its_key_from_a_file() -> None:
    (pager,) = [r for r in config()["receivers"] if r["name"] == "pager"]
    (pagerduty,) = pager["pagerduty_configs"]
    assert "routing_key_file" in pagerduty
    assert "routing_key" not in pagerduty
    assert pager["webhook_configs"]
