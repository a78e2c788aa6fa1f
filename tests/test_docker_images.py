"""Image metrics, start-up sweep and unreachable endpoints, through the running exporter."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from exporter import config
from exporter.docker.client import LABEL_INSTANCE, LABEL_MANAGED
from exporter.docker.images import parse_created
from tests.conftest import MakeClient
from tests.docker import *  # noqa: F403
from tests.docker import podman, removed_afterwards


def region_config(host: str, vantage: str, images: dict[str, str], extra: str = "") -> str:
    image_lines = "\n".join(
        f"      - {{name: {name}, ref: {ref}, run: {{port: 8080}}}}" for name, ref in images.items()
    )
    return f"""
vantage: {vantage}
defaults: {{interval: 1s, timeout: 900ms}}
services:
  - name: svc
    regions:
      - name: r1
        role: primary
        priority: 1
        docker: {{host: "{host}", image_refresh_interval: 1s, call_timeout: 500ms}}
    images:
{image_lines}
    targets:{extra or " []"}
"""


async def scrape(client: TestClient) -> dict[str, list[tuple[dict[str, str], float]]]:
    resp = await client.get("/metrics")
    assert resp.status == 200
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(await resp.text()):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


async def eventually(
    client: TestClient, ready: Callable[[dict[str, Any]], bool], seconds: float = 20
) -> dict[str, Any]:
    samples: dict[str, Any] = {}
    for _ in range(int(seconds / 0.2)):
        samples = await scrape(client)
        if ready(samples):
            return samples
        await asyncio.sleep(0.2)
    raise AssertionError(f"condition not met in {seconds}s; last scrape: {sorted(samples)}")


def load(tmp_path: Path, text: str) -> config.Config:
    path = tmp_path / "config.yml"
    path.write_text(text)
    return config.load(path)


@pytest.mark.slow
async def test_image_metrics_match_podman_inspect(
    exporter_client: MakeClient,
    tmp_path: Path,
    podman_host: str,
    test_images: dict[str, str],
    vantage: str,
) -> None:
    images = {**test_images, "absent": "localhost/failover-test-absent:none"}
    client = await exporter_client(load(tmp_path, region_config(podman_host, vantage, images)))
    samples = await eventually(client, lambda s: "failover_image_size_bytes" in s)
    by_image = {
        name: {
            labels["image"]: value
            for labels, value in samples[name]
            if labels["service"] == "svc" and labels["target_region"] == "r1"
        }
        for name in (
            "failover_image_size_bytes",
            "failover_image_layers",
            "failover_image_created_timestamp_seconds",
        )
    }
    info = {labels["image"]: labels for labels, _ in samples["failover_image_info"]}
    for variant, ref in test_images.items():
        (inspect,) = json.loads(podman("image", "inspect", ref))
        assert by_image["failover_image_size_bytes"][variant] == inspect["Size"]
        assert by_image["failover_image_layers"][variant] == len(inspect["RootFS"]["Layers"])
        assert by_image["failover_image_created_timestamp_seconds"][variant] == pytest.approx(
            parse_created(inspect["Created"]), abs=1e-3
        )
        digest = inspect["RepoDigests"][0].partition("@")[2] if inspect["RepoDigests"] else ""
        assert info[variant]["digest"] in (digest, "sha256:" + inspect["Id"], inspect["Id"])
        assert info[variant]["ref"] == ref
    # The variants really differ: the single-stage image keeps its "toolchain".
    sizes = by_image["failover_image_size_bytes"]
    assert sizes["full"] > sizes["slim"] + 5_000_000
    # An image the daemon does not have is simply absent, not zero.
    assert "absent" not in by_image["failover_image_size_bytes"]
    (refreshed,) = samples["failover_image_last_refresh_timestamp_seconds"]
    assert refreshed[0] == {"service": "svc", "target_region": "r1"}


@pytest.mark.slow
async def test_leftovers_swept_at_start_foreign_untouched(
    exporter_client: MakeClient,
    tmp_path: Path,
    podman_host: str,
    test_images: dict[str, str],
    docker_client: Any,
    vantage: str,
) -> None:
    image = test_images["minimal"]
    ours = docker_client.api.create_container(
        image, labels={LABEL_MANAGED: "true", LABEL_INSTANCE: vantage}
    )["Id"]
    # Same managed label, another exporter instance: not ours to remove.
    other = docker_client.api.create_container(
        image, labels={LABEL_MANAGED: "true", LABEL_INSTANCE: f"{vantage}-other"}
    )["Id"]
    plain = docker_client.api.create_container(image)["Id"]
    with removed_afterwards(docker_client, ours, other, plain):
        client = await exporter_client(
            load(tmp_path, region_config(podman_host, vantage, {"i1": image}))
        )
        await eventually(client, lambda s: "failover_image_last_refresh_timestamp_seconds" in s)
        remaining = {c["Id"] for c in docker_client.api.containers(all=True)}
        assert ours not in remaining
        assert {other, plain} <= remaining


async def _hanging_docker(path: Path) -> asyncio.Server:
    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        await asyncio.sleep(3600)

    return await asyncio.start_unix_server(swallow, path=str(path))


@pytest.mark.parametrize("endpoint", ["missing", "hanging"])
async def test_unreachable_docker_is_a_failure_reason_not_a_crash(
    exporter_client: MakeClient,
    aiohttp_server: Callable[..., Awaitable[Any]],
    tmp_path: Path,
    vantage: str,
    endpoint: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sock = tmp_path / "docker.sock"
    server = await _hanging_docker(sock) if endpoint == "hanging" else None

    async def ok(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", ok)
    http = await aiohttp_server(app)
    targets = (
        "\n      - {name: cs, region: r1, image: i1, probe: {kind: cold_start, pull: never}}\n"
        f"      - {{name: web, region: r1, image: i1, probe: {{kind: http, url: "
        f'"http://127.0.0.1:{http.port}/"}}}}'
    )
    text = region_config(f"unix://{sock}", vantage, {"i1": "x/y:1"}, targets)
    client = await exporter_client(load(tmp_path, text))

    def failed_with_docker(s: dict[str, Any]) -> bool:
        return any(
            labels["target"] == "cs" and labels["reason"] == "docker" and value >= 1
            for labels, value in s.get("failover_probe_failures_total", [])
        )

    samples = await eventually(client, failed_with_docker)
    success = {labels["target"]: v for labels, v in samples["failover_probe_success"]}
    assert success["cs"] == 0
    # Other probes are unaffected, and the exporter keeps serving.
    samples = await eventually(
        client,
        lambda s: any(
            labels["target"] == "web" and v >= 2 for labels, v in s["failover_probes_total"]
        ),
    )
    assert {labels["target"]: v for labels, v in samples["failover_probe_success"]}["web"] == 1
    assert "failover_image_size_bytes" not in samples
    assert any(
        "cannot read image metadata" in r.getMessage() and str(sock) in str(r.__dict__)
        for r in caplog.records
    )
    if server is not None:
        server.close()
