"""The command line, run as a user runs it: subprocesses of the installed console script."""

from __future__ import annotations

import asyncio
import collections
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from exporter import cli
from tests.support.configs import config_text
from tests.support.daemon import EXE, Samples, daemon, poll_metrics, probes_by_target, run
from tests.support.servers import StartServer, counting_server

__all__ = ["counting_server"]  # a fixture, re-exported for the tests below

BAD_CONFIG = """\
vantage: v1
defaults:
  interval: 5s
  timout: 1s
services:
  - name: svc
    regions:
      - {name: r1, role: primary, priority: 1}
    images:
      - {name: slim, ref: "x/y:1"}
    targets:
      - name: t1
        region: r9
        image: slim
        probe: {kind: http, url: "http://127.0.0.1:1/"}
      - name: t2
        region: r1
        image: slim
        timeout: 10s
        probe: {kind: http, url: "ftp://x"}
"""
BAD_ISSUES = [
    (4, "defaults.timout", "unknown key"),
    (13, "services[0].targets[0].region", "unknown region 'r9'"),
    (19, "services[0].targets[1].timeout", "must be below interval"),
    (20, "services[0].targets[1].probe.url", "absolute http"),
]


# -- one-shot commands -----------------------------------------------------------------------


@pytest.mark.parametrize("command", [None, *cli.COMMANDS])
def test_help(command: str | None) -> None:
    args = ["--help"] if command is None else [command, "--help"]
    result = run(*args)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: failover-exporter")
    if command is None:
        for name in cli.COMMANDS:
            assert name in result.stdout
    assert result.stderr == ""


def test_python_m_and_version() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "--version"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("failover-exporter ")


def test_check_config_valid(tmp_path: Path) -> None:
    path = tmp_path / "ok.yml"
    path.write_text(config_text({"a": "http://127.0.0.1:1/", "b": "http://127.0.0.1:2/"}))
    result = run("check-config", str(path))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"{path}: OK")
    assert "2 target(s)" in lines[0]


def assert_issues(text: str, path: Path) -> None:
    for line, key, message in BAD_ISSUES:
        pattern = rf"^\s*{re.escape(f'{path}:{line}: {key}: ')}.*{re.escape(message)}"
        assert re.search(pattern, text, re.M), f"missing {key} in:\n{text}"
    assert "Traceback" not in text


def test_check_config_reports_every_mistake(tmp_path: Path) -> None:
    path = tmp_path / "bad.yml"
    path.write_text(BAD_CONFIG)
    result = run("check-config", str(path))
    assert result.returncode == 1
    assert result.stdout == ""
    assert_issues(result.stderr, path)
    assert f"{len(BAD_ISSUES)} error(s)" in result.stderr

    missing = run("check-config", str(tmp_path / "nope.yml"))
    assert missing.returncode == 1
    assert "cannot read config" in missing.stderr
    assert "Traceback" not in missing.stderr


@pytest.mark.parametrize("default_command", [False, True])
def test_run_with_bad_config_exits_1(tmp_path: Path, default_command: bool) -> None:
    path = tmp_path / "bad.yml"
    path.write_text(BAD_CONFIG)
    args = ["--config", str(path), "--web.listen-address", "127.0.0.1:0"]
    result = run(*(args if default_command else ["run", *args]))
    assert result.returncode == 1
    assert "invalid config" in result.stderr
    assert_issues(result.stderr, path)


# -- the daemon ----------------------------------------------------------------------------------


async def test_default_command_is_run_and_sigterm_exits_0(
    counting_server: StartServer, tmp_path: Path
) -> None:
    srv = await counting_server()
    path = tmp_path / "config.yml"
    path.write_text(config_text({"a": srv.url("a")}, "interval: 200ms, timeout: 100ms"))
    async with daemon("--config", str(path), "--web.listen-address", "127.0.0.1:0") as d:
        await d.listening()
        await poll_metrics(d, lambda s: probes_by_target(s).get("a", 0) >= 2, 10)
        status, page = await d.get("/")
        assert status == 200
        assert "failover_exporter" in page
        code = await d.stop(signal.SIGTERM)
    assert code == 0, d.log
    assert 'msg="shutting down"' in d.log
    assert "Traceback" not in d.log
    assert srv.count["a"] >= 2


async def test_sighup_reloads_good_and_keeps_running_on_bad(
    counting_server: StartServer, tmp_path: Path
) -> None:
    srv = await counting_server()
    path = tmp_path / "config.yml"
    defaults = "interval: 200ms, timeout: 100ms"
    path.write_text(config_text({"a": srv.url("a")}, defaults))
    async with daemon("run", "--config", str(path), "--web.listen-address", "127.0.0.1:0") as d:
        await d.listening()
        await poll_metrics(d, lambda s: "a" in probes_by_target(s), 10)

        path.write_text(config_text({"a": srv.url("a"), "b": srv.url("b")}, defaults))
        d.proc.send_signal(signal.SIGHUP)
        await poll_metrics(d, lambda s: probes_by_target(s).get("b", 0) >= 1, 10)
        assert srv.count["b"] >= 1

        path.write_text(BAD_CONFIG)
        d.proc.send_signal(signal.SIGHUP)
        samples = await poll_metrics(
            d,
            lambda s: s["failover_exporter_config_last_reload_successful"][0][1] == 0,
            10,
        )
        assert set(probes_by_target(samples)) == {"a", "b"}
        before = srv.count["b"]
        await asyncio.sleep(0.5)
        assert srv.count["b"] > before, "the old config stopped after a bad reload"
        assert d.proc.returncode is None
        assert "config reload failed" in d.log
        code = await d.stop()
    assert code == 0, d.log
    assert "Traceback" not in d.log


async def test_listen_address_in_use(tmp_path: Path) -> None:
    path = tmp_path / "config.yml"
    path.write_text(config_text({"a": "http://127.0.0.1:1/"}, "interval: 1h, timeout: 1s"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            EXE,
            "--config",
            str(path),
            "--web.listen-address",
            f"127.0.0.1:{port}",
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            _, err = await asyncio.wait_for(proc.communicate(), 20)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    text = err.decode()
    assert proc.returncode == 1, text
    assert "cannot listen" in text
    assert f"127.0.0.1:{port}" in text
    assert "address already in use" in text.lower()
    assert "Traceback" not in text


# -- demo ----------------------------------------------------------------------------------------

CORE_SERIES = (
    "failover_probe_success",
    "failover_probe_duration_seconds_bucket",
    "failover_probes_total",
    "failover_probe_failures_total",
    "failover_probe_phase_duration_seconds",
    "failover_probe_last_success_timestamp_seconds",
    "failover_http_status_code",
    "failover_region_info",
    "failover_exporter_build_info",
    "failover_exporter_config_last_reload_successful",
    "failover_exporter_event_loop_lag_seconds_bucket",
    "failover_exporter_probe_start_delay_seconds_bucket",
    "failover_exporter_probes_skipped_total",
    "failover_exporter_targets",
)
REGIONS = {"eu-west": "primary", "us-east": "standby", "ap-south": "standby"}
IMAGES = ("slim", "distroless", "full")
VANTAGES = ("eu-west", "us-east", "ap-south")


def cells(samples: Samples, name: str) -> dict[tuple[str, str, str], list[dict[str, str]]]:
    out: dict[tuple[str, str, str], list[dict[str, str]]] = collections.defaultdict(list)
    for labels, _ in samples.get(name, []):
        if labels.get("role") != "control":
            out[(labels["target_region"], labels["image"], labels["vantage"])].append(labels)
    return out


def success(samples: Samples) -> dict[tuple[str, str, str], float]:
    return {
        (lb["target_region"], lb["image"], lb["vantage"]): v
        for lb, v in samples["failover_probe_success"]
        if lb["role"] != "control"
    }


def failures(samples: Samples, reason: str) -> dict[tuple[str, str, str], float]:
    return {
        (lb["target_region"], lb["image"], lb["vantage"]): v
        for lb, v in samples["failover_probe_failures_total"]
        if lb["role"] != "control" and lb["reason"] == reason
    }


async def test_demo_serves_every_core_series_and_scripts_an_outage() -> None:
    started = time.monotonic()
    async with daemon("demo", "--web.listen-address", "127.0.0.1:0", "--outage-after", "3") as d:
        await d.listening()
        every = {(r, i, v) for r in REGIONS for i in IMAGES for v in VANTAGES}

        def controls_of(s: Samples) -> set[str]:
            return {
                lb["vantage"]
                for lb, _ in s.get("failover_probe_success", [])
                if lb["role"] == "control"
            }

        def complete(s: Samples) -> bool:
            # The control targets too: their first probe may land after the last region's.
            return (
                all(name in s for name in CORE_SERIES)
                and all(
                    set(cells(s, name)) == every
                    for name in ("failover_probe_success", "failover_probe_duration_seconds_bucket")
                )
                and controls_of(s) == set(VANTAGES)
            )

        samples = await poll_metrics(d, complete, 30 - (time.monotonic() - started))
        regions = {(lb["target_region"], lb["role"]) for lb, _ in samples["failover_region_info"]}
        assert regions == set(REGIONS.items())
        targets = {lb["vantage"]: v for lb, v in samples["failover_exporter_targets"]}
        # 3 regions x 3 images and one control target per vantage.
        assert targets == {v: 10 for v in VANTAGES}
        assert controls_of(samples) == set(VANTAGES)

        def outage_seen(s: Samples) -> bool:
            ok, refused = success(s), failures(s, "connect")
            primary = [k for k in every if REGIONS[k[0]] == "primary"]
            return all(ok[k] == 0 and refused[k] >= 1 for k in primary)

        samples = await poll_metrics(d, outage_seen, 30 - (time.monotonic() - started))
        ok, refused = success(samples), failures(samples, "connect")
        standby = [k for k in every if REGIONS[k[0]] == "standby"]
        assert all(refused[k] == 0 for k in standby), "a standby failed to connect"
        # The demo simulates a little loss (503s); standbys stay up apart from that.
        assert sum(ok[k] for k in standby) >= len(standby) - 2
        assert "simulated outage" in d.log
        code = await d.stop()
    assert code == 0, d.log
    assert "Traceback" not in d.log
