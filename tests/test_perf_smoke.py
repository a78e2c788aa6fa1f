"""The `make bench` harness at a tiny scale, so it cannot rot between full runs.

It runs the real thing end to end (namespaces, the C target, tcpdump, our exporter and
blackbox_exporter) for a few seconds and checks that every stage produced joined, plausible
data. No performance figure is asserted: that is the full run's job, on a quiet machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.tools import missing, need

ROOT = Path(__file__).resolve().parent.parent


def test_bench_harness_smoke(tmp_path: Path) -> None:
    for binary in ("prometheus-blackbox-exporter", "tcpdump", "ip", "taskset", "cc"):
        need(binary)
    if os.geteuid() != 0:
        missing("root (the bench creates network namespaces and runs tcpdump)")
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "perf" / "run.py"), "--profile", "smoke", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads(out.read_text())

    acc = {r["tool"]: r for r in res["accuracy"]}
    assert set(acc) == {"ours", "blackbox"}
    for tool, r in acc.items():
        # Every probe in the window answered, and nearly all were found in the capture: the
        # join (ids in URLs, per-probe log lines, pcap parsing) is what keeps the bench honest.
        assert r["ok"] >= 0.9 * r["expected"] > 0, (tool, r)
        # A loaded CI machine may time out a probe or two; the harness is what is under test.
        assert r["failed"] <= 0.05 * r["expected"], (tool, r)
        assert r["joined_to_pcap"] >= 0.9 * r["ok"], (tool, r)
        assert r["pcap_dropped"] == 0, (tool, r)
        # The ground truth includes the target's fixed 10 ms delay.
        assert 9.5 <= r["truth"]["p50_ms"] < 100, (tool, r["truth"])
        assert r["start_delay"]["n"] > 0, (tool, r)
        # Both probers' start delay on the wire (due -> SYN) and own gap (SYN-ACK -> request).
        assert r["start_delay_wire"]["n"] >= 0.9 * r["ok"], (tool, r)
        assert r["client_gap"]["n"] >= 0.9 * r["ok"], (tool, r)
    assert acc["ours"]["self_metric_start_delay_p99_le_s"] is not None

    thr = res["throughput"]
    for tool in ("ours", "blackbox"):
        sat = thr[tool]["saturation"]
        assert sat["ok"] > 0, (tool, sat)
        assert sat["cpu_per_probe_ms"] > 0, (tool, sat)
        assert thr[tool]["runs"], (tool, thr[tool])
    assert thr["blackbox"]["saturation"]["driver_cpu"] is not None

    (scrape,) = res["scrape"]
    assert scrape["targets"] == 50
    for enc in ("gzip", "identity"):
        assert scrape[enc]["bytes"] > 50 * 1000, scrape[enc]
        assert scrape[enc]["lines"] > 50 * 20, scrape[enc]
    assert scrape["gzip"]["wire_bytes"] < scrape["gzip"]["bytes"]
    assert scrape["rss_mib"] > 0

    churn = res["churn"]
    assert churn["reloads"] >= 1, churn
    assert churn["samples"]
    assert all(s["fds"] > 0 for s in churn["samples"])

    assert "failover_exporter" in res["table"]
    assert "blackbox_exporter" in res["table"]
    assert "50/s: reported latency − wire, p99" in proc.stdout
    assert "50/s: own scheduling gap SYN-ACK → request p99" in proc.stdout
