"""`failover-exporter drill` end to end: demo exporter -> Prometheus with the bundled rules ->
Alertmanager with the bundled routes -> the drill's webhook."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.stack import ROOT, alertmanager, free_port, prometheus, query

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent / "failover-exporter"


def _post(url: str) -> str:
    code = f"import urllib.request as u; u.urlopen(u.Request('{url}', method='POST'), timeout=5)"
    return f'{sys.executable} -c "{code}"'


def _alertmanager_config(webhook: str) -> dict[str, object]:
    """The bundled config, with every receiver pointed at the drill (no real pager here)."""
    cfg = yaml.safe_load((ROOT / "prometheus" / "alertmanager" / "alertmanager.yml").read_text())
    for receiver in cfg["receivers"]:
        receiver.pop("pagerduty_configs", None)
        if "webhook_configs" in receiver:
            receiver["webhook_configs"] = [
                {"url": f"{webhook}/{receiver['name']}", "send_resolved": True}
            ]
    return cfg


def test_drill_times_detect_alert_page_and_recovery(tmp_path: Path) -> None:
    exporter_port, hook_port = free_port(), free_port()
    demo = subprocess.Popen(
        [str(BIN), "demo", "--web.listen-address", f"127.0.0.1:{exporter_port}"],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "demo.log").open("wb"),
    )
    try:
        with (
            alertmanager(
                tmp_path / "am", _alertmanager_config(f"http://127.0.0.1:{hook_port}")
            ) as am,
            prometheus(
                tmp_path / "prom", [f"127.0.0.1:{exporter_port}"], alertmanager_url=am
            ) as prom,
        ):
            # The quorum verdict needs a minute of history before the region counts as up.
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                up = query(
                    prom,
                    'service_target_region:failover_region_down:bool{target_region="eu-west"} == 0',
                )
                if up:
                    break
                time.sleep(2)
            else:
                pytest.fail("the primary never became healthy by quorum in Prometheus")
            # Zero pages before the outage: nothing page-severity fired from the first scrape on,
            # while Prometheus' history was short (the case that once paged from averaging it).
            early = query(
                prom, 'max_over_time(ALERTS{severity="critical",alertstate="firing"}[1h])'
            )
            assert early == [], early
            report_path = tmp_path / "drill.json"
            base = f"http://127.0.0.1:{exporter_port}"
            result = subprocess.run(
                [
                    str(BIN),
                    "drill",
                    "--prometheus",
                    prom,
                    "--service",
                    "shop",
                    "--region",
                    "eu-west",
                    "--inject",
                    _post(f"{base}/-/demo/outage"),
                    "--recover",
                    _post(f"{base}/-/demo/recover"),
                    "--webhook.listen-address",
                    f"127.0.0.1:{hook_port}",
                    "--timeout",
                    "180",
                    "--resolve-timeout",
                    "5",
                    "--json",
                    str(report_path),
                ],
                capture_output=True,
                text=True,
                timeout=600,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            assert result.returncode == 0, result.stdout + result.stderr
            report = json.loads(report_path.read_text())
    finally:
        demo.terminate()
        demo.wait(10)
    print(result.stdout)
    assert "time to page" in result.stdout
    assert "result: PASS" in result.stdout
    assert report["ok"] is True
    # Probes fail within a couple of probe intervals; the quorum vote, `for:` and Alertmanager's
    # group_wait come after, in that order.
    assert 0 < report["detect_seconds"] < 10
    assert report["detect_seconds"] < report["alert_seconds"] < report["page_seconds"]
    # Goal 2 of #14: the page within 60 s of the first failed probe (here well inside it: the
    # test's Prometheus scrapes every second; the rule groups keep their own 15 s interval).
    assert report["page_seconds"] <= 60
    assert report["failover_to"] == "us-east"
    assert report["probes_recovered_seconds"] is not None
    assert report["probes_recovered_seconds"] < 10
    # keep_firing_for holds the page for minutes after recovery: a note, not a failure.
    assert any("alert resolved" in n for n in report["notes"])
