"""Every dashboard query returns data from a real Prometheus scraping a real demo exporter.

Prometheus (1s scrapes, the bundle's rules) scrapes `failover-exporter demo`. Its TSDB starts with
40 minutes of history (tests/grafana/history.py): the demo's own series over the windows the
panels use, and the families the demo has no source for (TLS, PostgreSQL, Docker images, cold
starts). No panel or variable is exempt: a panel that can never show data is a defect. The
annotation (critical Failover alerts) is the one query expected to be empty on a healthy demo.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests import stack
from tests.tools import need

from . import dashboards as d
from . import history

BIN = Path(sys.executable).parent / "failover-exporter"
# Quorum rules run every 15s and need a vote from each vantage; the rest follows within seconds.
DEADLINE_S = 60.0
# 30 probes at 2s from the demo's start, a scrape and a rule evaluation, with room for a loaded
# machine.
RANK_DEADLINE_S = 120.0


def _wait_for_probes(url: str, proc: subprocess.Popen[bytes], log: Path) -> str:
    """The exporter's exposition once every demo target has completed a probe."""
    deadline = time.monotonic() + 30
    text = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"demo exited:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - loopback only
                text = resp.read().decode()
        except (urllib.error.URLError, OSError):
            text = ""
        # 3 vantages x (3 regions x 3 images + 1 control target)
        if len(history.probe_label_sets(text)) == 30:
            return text
        time.sleep(0.2)
    raise RuntimeError(f"demo targets did not all probe in 30s:\n{text[-2000:]}")


def test_every_query_returns_data_from_a_real_prometheus(tmp_path: Path) -> None:
    promtool = need("promtool")
    need("prometheus")
    queries = [q for q in d.queries(d.committed()) if q.kind != "annotation"]
    port = stack.free_port()
    instance = f"127.0.0.1:{port}"
    log = tmp_path / "demo.log"
    demo = subprocess.Popen(
        [str(BIN), "demo", "--web.listen-address", instance],
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )
    try:
        exposition = _wait_for_probes(f"http://{instance}/metrics", demo, log)
        om = tmp_path / "history.om"
        om.write_text(history.openmetrics(exposition, instance, end=time.time() - 5))
        created = subprocess.run(
            [
                promtool,
                "tsdb",
                "create-blocks-from",
                "openmetrics",
                str(om),
                str(tmp_path / "prom" / "data"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert created.returncode == 0, created.stdout + created.stderr
        with stack.prometheus(tmp_path / "prom", [instance]) as prom:
            empty = list(queries)
            deadline = time.monotonic() + DEADLINE_S
            while empty and time.monotonic() < deadline:
                time.sleep(1)
                empty = [q for q in empty if not stack.query(prom, q.promql)]
            assert not empty, "no data:\n" + "\n".join(f"{q.where}: {q.promql}" for q in empty)
            # The live exporter, not only the history, feeds the probe panels.
            live = stack.query(prom, f'count(failover_probe_success{{instance="{instance}"}})')
            assert live
            assert float(live[0]["value"][1]) == 30
            # Ranks read the live exporter's exact p50 gauges, which count once backed by
            # global:failover_rank_min_samples:constant (30) samples: a minute at the demo's 2s.
            regions = {region for region, _, _ in history.demo.REGIONS}
            fastest: set[str] = set()
            deadline = time.monotonic() + RANK_DEADLINE_S
            while fastest != regions and time.monotonic() < deadline:
                ranks = stack.query(prom, "service_target_region_image:failover_image_rank:p50")
                fastest = {r["metric"]["target_region"] for r in ranks if r["value"][1] == "1"}
                time.sleep(1)
            assert fastest == regions
            # The network matrix: every vantage x region cell, at the demo's distance (within the
            # latency buckets' interpolation) and with the backfill's small loss.
            rtt = stack.query(
                prom, "vantage_target_region:failover_probe_duration_seconds:icmp_p50_5m"
            )
            cells = {(r["metric"]["vantage"], r["metric"]["target_region"]): r for r in rtt}
            regions = [region for region, _, _ in history.demo.REGIONS]
            assert set(cells) == {(v, r) for v in history.demo.VANTAGES for r in regions}
            for (vantage, region), r in cells.items():
                expected = history.demo.distance(vantage, region)
                assert expected / 2 <= float(r["value"][1]) <= expected * 2, (vantage, region, r)
            loss = stack.query(
                prom, "vantage_target_region:failover_icmp_packets_lost:ratio_rate5m"
            )
            assert len(loss) == len(cells)
            assert all(0 <= float(r["value"][1]) < 0.05 for r in loss), loss
    finally:
        demo.terminate()
        demo.wait(10)
