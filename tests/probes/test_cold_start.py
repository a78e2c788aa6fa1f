"""cold_start probe against Podman's Docker API: timing recorded, containers always removed."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from exporter import metrics
from exporter.docker.client import LABEL_INSTANCE, LABEL_MANAGED, LABEL_TARGET
from exporter.metrics import SelfMetrics
from exporter.probes import REGISTRY
from exporter.resources import Resources
from exporter.scheduler import Scheduler
from exporter.source import ConfigError
from exporter.state import Result
from tests.conftest import MakeConfig
from tests.docker import *  # noqa: F403
from tests.docker import containers_of

HTTPD = ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]
# Runs but never listens: readiness never comes.
SILENT = ["/bin/busybox", "sleep", "300"]


@pytest.fixture
async def scheduler() -> AsyncIterator[Scheduler]:
    """Probes run the way the daemon runs them; closing the resources closes Docker handles."""
    resources = Resources()
    sched = Scheduler(SelfMetrics(CollectorRegistry()), resources)
    try:
        yield sched
    finally:
        await sched.stop()
        await resources.aclose()


def check_result(result: Result) -> None:
    kind = REGISTRY[result.target.kind]
    assert (result.reason is None) == result.success
    if not result.success:
        assert result.reason in {r.value for r in kind.reasons}, (result.reason, result.message)
    assert set(result.phases) <= set(kind.phases), result.phases


def cold_config(
    host: str,
    ref: str,
    vantage: str,
    command: list[str] | None = None,
    timeout: str = "30s",
    interval: str = "60s",
    readiness: dict[str, Any] | None = None,
) -> str:
    run: dict[str, Any] = {"port": 8080, "command": command or HTTPD}
    if readiness is not None:
        run["readiness"] = readiness
    return f"""
vantage: {vantage}
defaults: {{interval: {interval}, timeout: {timeout}}}
services:
  - name: svc
    regions:
      - {{name: r1, role: primary, priority: 1, docker: {{host: "{host}", call_timeout: 5s}}}}
    images:
      - name: i1
        ref: {ref}
        run: {json.dumps(run)}
    targets:
      - name: cs
        region: r1
        image: i1
        probe: {{kind: cold_start, pull: never}}
"""


def test_config_allows_long_cold_start_timeout(make_config: MakeConfig) -> None:
    cfg = make_config(cold_config("unix:///nonexistent.sock", "x/y:1", "v", timeout="30s"))
    (target,) = cfg.targets
    assert (target.interval, target.timeout) == (60.0, 30.0)
    assert target.prepared.ref == "x/y:1"
    assert target.prepared.endpoint.host == "unix:///nonexistent.sock"
    assert target.prepared.instance == "v"


def test_config_errors_name_the_missing_piece(make_config: MakeConfig) -> None:
    text = cold_config("unix:///x.sock", "x/y:1", "v").replace(
        ', docker: {host: "unix:///x.sock", call_timeout: 5s}', ""
    )
    with pytest.raises(ConfigError) as err:
        make_config(text)
    assert "services[0].targets[0].probe: region 'r1' has no docker endpoint" in str(err.value)
    with pytest.raises(ConfigError) as err:
        make_config(cold_config("http://x:1", "x/y:1", "v"))
    assert "docker.host: must start with unix:// or tcp://" in str(err.value)
    control = "control:\n  - {name: c, probe: {kind: cold_start}}\n"
    with pytest.raises(ConfigError) as err:
        make_config(cold_config("unix:///x.sock", "x/y:1", "v") + control)
    assert "control[0].probe: cold_start probes belong to a service target" in str(err.value)


@pytest.mark.slow
async def test_cold_start_recorded_and_container_removed(
    make_config: MakeConfig,
    scheduler: Scheduler,
    podman_host: str,
    test_images: dict[str, str],
    docker_client: Any,
    vantage: str,
) -> None:
    cfg = make_config(cold_config(podman_host, test_images["minimal"], vantage))
    result = await scheduler.probe(cfg.targets[0])
    check_result(result)
    assert result.success, result.message
    observed = dict(result.observations)
    cold = observed[metrics.COLD_START.name]
    # Plausible: more than the create call alone, less than the probe's timeout.
    assert result.phases["create"] < cold < 30
    assert metrics.IMAGE_PULL.name not in observed
    assert {"create", "start", "ready"} <= set(result.phases)
    assert containers_of(docker_client, vantage) == []


@pytest.mark.slow
async def test_readiness_timeout_removes_container(
    make_config: MakeConfig,
    scheduler: Scheduler,
    podman_host: str,
    test_images: dict[str, str],
    docker_client: Any,
    vantage: str,
) -> None:
    cfg = make_config(
        cold_config(podman_host, test_images["minimal"], vantage, SILENT, timeout="3s")
    )
    t0 = time.monotonic()
    result = await scheduler.probe(cfg.targets[0])
    check_result(result)
    assert result.reason == "timeout", result.message
    # Timeout honoured (generous bound: removal follows the deadline).
    assert time.monotonic() - t0 < 20
    assert containers_of(docker_client, vantage) == []


@pytest.mark.slow
async def test_container_exiting_early_fails_fast_and_is_removed(
    make_config: MakeConfig,
    scheduler: Scheduler,
    podman_host: str,
    test_images: dict[str, str],
    docker_client: Any,
    vantage: str,
) -> None:
    cfg = make_config(
        cold_config(podman_host, test_images["minimal"], vantage, ["/bin/busybox", "false"])
    )
    result = await scheduler.probe(cfg.targets[0])
    check_result(result)
    assert result.reason == "docker"
    assert "exited (code 1) before it was ready" in result.message
    assert containers_of(docker_client, vantage) == []


async def _wait_for_container(client: Any, vantage: str) -> dict[str, str]:
    for _ in range(200):
        found = await asyncio.to_thread(containers_of, client, vantage)
        if found:
            return dict(found[0]["Labels"])
        await asyncio.sleep(0.1)
    raise AssertionError("the probe never created its container")


@pytest.mark.slow
async def test_cancellation_mid_start_removes_container(
    make_config: MakeConfig,
    scheduler: Scheduler,
    podman_host: str,
    test_images: dict[str, str],
    docker_client: Any,
    vantage: str,
) -> None:
    cfg = make_config(cold_config(podman_host, test_images["minimal"], vantage, SILENT))
    task = asyncio.create_task(scheduler.probe(cfg.targets[0]))
    labels = await _wait_for_container(docker_client, vantage)
    assert labels[LABEL_MANAGED] == "true"
    assert labels[LABEL_INSTANCE] == vantage
    assert labels[LABEL_TARGET] == "cs"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert containers_of(docker_client, vantage) == []


@pytest.mark.slow
async def test_one_cold_start_per_endpoint_at_a_time(
    make_config: MakeConfig,
    scheduler: Scheduler,
    podman_host: str,
    test_images: dict[str, str],
    docker_client: Any,
    vantage: str,
) -> None:
    cfg = make_config(
        cold_config(podman_host, test_images["minimal"], vantage, SILENT, timeout="4s")
    )
    target = cfg.targets[0]
    first = asyncio.create_task(scheduler.probe(target))
    second = asyncio.create_task(scheduler.probe(target))
    seen = 0
    # Sample the endpoint while both probes run: never two of our containers at once.
    for _ in range(200):
        if first.done() and second.done():
            break
        found = await asyncio.to_thread(containers_of, docker_client, vantage)
        seen = max(seen, len(found))
        await asyncio.sleep(0.05)
    results = await asyncio.gather(first, second)
    assert seen == 1
    # The second waited for the slot and ran into its timeout without creating anything.
    assert [r.reason for r in results] == ["timeout", "timeout"], [r.message for r in results]
    assert containers_of(docker_client, vantage) == []
