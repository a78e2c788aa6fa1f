"""cold_start pulls from a real registry (Debian's docker-registry on loopback, through Podman's
Docker API): pull time per image, first pull (layers fetched) and warm pull (layers cached) in
separate metrics, and hostile registries failing with reasons of their own, leaving no container
and no image behind."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import docker
import pytest

from exporter import metrics
from exporter.docker.client import split_ref, stream_events
from exporter.docker.containers import classify_pull_error
from exporter.scheduler import Scheduler
from tests.conftest import MakeConfig
from tests.docker import *  # noqa: F403
from tests.docker import containers_of
from tests.probes.conftest import check_result
from tests.support.examples import *  # noqa: F403
from tests.support.examples import VARIANTS
from tests.support.registry import *  # noqa: F403
from tests.support.registry import Hostile, Pushed

RUN = {"port": 8080, "readiness": {"path": "/healthz", "status": [200], "poll_interval": "20ms"}}


def pull_config(host: str, ref: str, vantage: str, timeout: str = "60s") -> str:
    return f"""
vantage: {vantage}
defaults: {{interval: 120s, timeout: {timeout}}}
services:
  - name: svc
    regions:
      - {{name: r1, role: primary, priority: 1, docker: {{host: "{host}", call_timeout: 5s}}}}
    images:
      - {{name: i1, ref: "{ref}", run: {json.dumps(RUN)}}}
    targets:
      - {{name: cs, region: r1, image: i1, probe: {{kind: cold_start, pull: always}}}}
"""


def present(client: Any, ref: str) -> bool:
    try:
        client.api.inspect_image(ref)
    except docker.errors.ImageNotFound:
        return False
    return True


def test_split_ref() -> None:
    assert split_ref("127.0.0.1:5000/hello:slim") == ("127.0.0.1:5000/hello", "slim")
    assert split_ref("127.0.0.1:5000/hello") == ("127.0.0.1:5000/hello", "latest")
    assert split_ref("hello@sha256:ab") == ("hello", "sha256:ab")
    assert split_ref("docker.io/library/debian:12-slim") == ("docker.io/library/debian", "12-slim")


def test_stream_events() -> None:
    assert stream_events(b'{"status": "a"}{"error": "x"}\r\n') == [{"status": "a"}, {"error": "x"}]
    assert stream_events(b"  \n") == []
    assert stream_events(b'{"status": "a"} not json') == [{"status": "a"}]


def test_pull_errors_are_classified_from_the_daemons_words() -> None:
    # Podman's (containers/image) wording, as the hostile tests below see it.
    refused = (
        "initializing source docker://127.0.0.1:1/h:x: pinging container registry 127.0.0.1:1: "
        'Get "http://127.0.0.1:1/v2/": dial tcp 127.0.0.1:1: connect: connection refused'
    )
    assert classify_pull_error(refused) == "unreachable"
    unknown = "reading manifest nope in 127.0.0.1:1/hello: manifest unknown: manifest unknown"
    assert classify_pull_error(unknown) == "not_found"
    broken = "initializing image from source docker://127.0.0.1:1/h:x: unexpected end of JSON input"
    assert classify_pull_error(broken) == "manifest"
    assert classify_pull_error("writing blob: storage full") == "error"


@pytest.mark.slow
async def test_pull_always_first_cold_then_warm_per_variant(
    make_config: MakeConfig,
    scheduler: Scheduler,
    podman_host: str,
    pushed_variants: dict[str, Pushed],
    docker_client: Any,
    vantage: str,
) -> None:
    figures: dict[str, dict[str, float]] = {}
    for variant in VARIANTS:
        pushed = pushed_variants[variant]
        assert not present(docker_client, pushed.ref)
        target = make_config(pull_config(podman_host, pushed.ref, vantage)).targets[0]
        try:
            first = await scheduler.probe(target)
            check_result(first)
            assert first.success, first.message
            cold = dict(first.observations)
            assert set(cold) == {metrics.IMAGE_PULL.name, metrics.COLD_START.name}, cold
            assert first.phases["pull"] == cold[metrics.IMAGE_PULL.name]
            assert "cold layer cache" in "\n".join(first.debug)

            second = await scheduler.probe(target)
            check_result(second)
            assert second.success, second.message
            warm = dict(second.observations)
            assert set(warm) == {metrics.IMAGE_PULL_WARM.name, metrics.COLD_START.name}, warm
            figures[variant] = {
                "size_mb": round(pushed.size / 1e6, 2),
                "cold_pull_s": round(cold[metrics.IMAGE_PULL.name], 3),
                "warm_pull_s": round(warm[metrics.IMAGE_PULL_WARM.name], 3),
                "cold_start_s": round(warm[metrics.COLD_START.name], 3),
            }
        finally:
            docker_client.api.remove_image(pushed.ref, force=True)
    # Figures for the record (pytest -s); no timing is asserted.
    print("pull figures:", json.dumps(figures))
    assert containers_of(docker_client, vantage) == []


async def _failing_pull(
    make_config: MakeConfig,
    scheduler: Scheduler,
    podman_host: str,
    ref: str,
    vantage: str,
    timeout: str = "20s",
) -> tuple[str | None, str]:
    target = make_config(pull_config(podman_host, ref, vantage, timeout=timeout)).targets[0]
    result = await scheduler.probe(target)
    check_result(result)
    assert not result.success
    assert metrics.COLD_START.name not in dict(result.observations)
    return result.reason, result.message


@pytest.mark.slow
async def test_hostile_registries_fail_with_their_reason_and_leave_nothing(
    make_config: MakeConfig,
    scheduler: Scheduler,
    podman_host: str,
    hostile_registries: Hostile,
    pushed_variants: dict[str, Pushed],
    docker_client: Any,
    vantage: str,
) -> None:
    h = hostile_registries
    cases = {
        "refused": (f"{h.refused}/hello:x", "pull_unreachable", "connection refused"),
        "broken": (f"{h.broken}/hello:x", "pull_manifest", "JSON"),
        "unknown": (
            pushed_variants["minimal"].ref.replace(":minimal", ":no-such-tag"),
            "pull_not_found",
            "manifest unknown",
        ),
    }
    for case, (ref, reason, words) in cases.items():
        got, message = await _failing_pull(make_config, scheduler, podman_host, ref, vantage)
        assert (got, words in message) == (reason, True), (case, message)
        assert not present(docker_client, ref), case

    # Accepts, never answers: the pull is cut at 90 % of the probe timeout, the API connection
    # closed, and Podman gives up its connection to the registry too.
    ref = f"{h.hang}/hello:x"
    got, message = await _failing_pull(
        make_config, scheduler, podman_host, ref, vantage, timeout="3s"
    )
    assert got == "pull_timeout", message
    assert "not finished within 2.7s" in message
    assert h.hang_server.accepted >= 1
    await _until(lambda: h.hang_server.open_connections() == 0, "podman kept its registry socket")
    assert not present(docker_client, ref)

    # Manifest and config served, the layer blob stalls: a pull cut off half-way leaves no image.
    stalled = pushed_variants["single"].ref.replace(
        pushed_variants["single"].ref.split("/")[0], h.stall
    )
    got, message = await _failing_pull(
        make_config, scheduler, podman_host, stalled, vantage, timeout="4s"
    )
    assert got == "pull_timeout", message
    assert h.stall_server.stalled.is_set()
    assert not present(docker_client, stalled)

    assert containers_of(docker_client, vantage) == []
    # No partial image: none named after a hostile registry, and the stalled image (its ID is
    # the config digest the stall registry served) is not in the store, not even untagged. The
    # store is shared with other workers, so "nothing new at all" would not be ours to assert.
    hosts = (h.refused, h.broken, h.hang, h.stall)
    named = [
        i["Id"]
        for i in docker_client.api.images(all=True)
        for name in (i.get("RepoTags") or []) + (i.get("RepoDigests") or [])
        if name.startswith(hosts)
    ]
    assert not named, named
    assert h.stall_server.configs
    for config in h.stall_server.configs:
        assert not present(docker_client, config), config


async def _until(check: Any, what: str) -> None:
    # Bounded poll for the daemon's asynchronous teardown; not a timing assertion.
    for _ in range(100):
        if await asyncio.to_thread(check):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(what)
