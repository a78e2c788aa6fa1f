"""HTTP endpoints of the running exporter: /metrics, health, reload, /probe and its limits.

/probe is the one place where a request makes the exporter send traffic, so every test of it
also watches a sentinel server that no configured target points at: nothing may ever reach it.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from exporter import config
from exporter.app import PROBE_CONCURRENCY
from exporter.exposition import CONTENT_TYPE
from exporter.scheduler import phase_offset
from tests.conftest import MakeClient
from tests.support.configs import config_text
from tests.support.servers import CountingServer, StartServer, counting_server

__all__ = ["counting_server"]  # a fixture, re-exported for the tests below


@pytest.fixture
async def setup(
    counting_server: StartServer, exporter_client: MakeClient, tmp_path: Path
) -> tuple[TestClient, CountingServer, CountingServer]:
    """An exporter whose targets never come due during a test, a target server and a sentinel."""
    srv = await counting_server()
    sentinel = await counting_server()
    targets = {"web": srv.url("web"), "slow": srv.url("slow")}
    path = tmp_path / "config.yml"
    path.write_text(config_text(targets, "interval: 1h, timeout: 3s"))
    cfg = config.load(path)
    # Scheduled probes would muddy the server's counts; an hour-long interval whose first slot
    # lies minutes away keeps them out (checked, since the offset comes from a hash).
    assert all(phase_offset(t) > 600 for t in cfg.targets)
    client = await exporter_client(cfg)
    return client, srv, sentinel


async def test_metrics_content_type_and_gzip(
    setup: tuple[TestClient, CountingServer, CountingServer],
) -> None:
    client, _, _ = setup
    plain = await client.get("/metrics", headers={"Accept-Encoding": "identity"})
    assert plain.status == 200
    assert plain.headers["Content-Type"] == CONTENT_TYPE
    assert "Content-Encoding" not in plain.headers
    body = await plain.read()
    assert b"failover_exporter_build_info" in body

    zipped = await client.get(
        "/metrics", headers={"Accept-Encoding": "gzip"}, auto_decompress=False
    )
    assert zipped.status == 200
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert zipped.headers["Content-Type"] == CONTENT_TYPE
    text = gzip.decompress(await zipped.read()).decode()
    names = {f.name for f in text_string_to_metric_families(text)}
    assert "failover_exporter_build_info" in names
    assert "failover_region_info" in names


async def test_health_ready_and_reload_method(
    setup: tuple[TestClient, CountingServer, CountingServer],
) -> None:
    client, _, _ = setup
    healthy = await client.get("/-/healthy")
    assert healthy.status == 200
    ready = await client.get("/-/ready")
    assert ready.status == 200
    get_reload = await client.get("/-/reload")
    assert get_reload.status == 405
    assert "POST" in get_reload.headers.get("Allow", "")
    ok = await client.post("/-/reload")
    assert ok.status == 200


async def test_probe_runs_a_configured_target(
    setup: tuple[TestClient, CountingServer, CountingServer],
) -> None:
    client, srv, sentinel = setup
    resp = await client.get("/probe", params={"target": "web"})
    assert resp.status == 200
    assert resp.headers["Content-Type"] == CONTENT_TYPE
    assert srv.count["web"] == 1
    samples = {
        s.name: s for f in text_string_to_metric_families(await resp.text()) for s in f.samples
    }
    assert samples["failover_probe_success"].value == 1
    assert samples["failover_probe_success"].labels["target"] == "web"
    assert samples["failover_http_status_code"].value == 200
    assert samples["failover_probe_duration_seconds"].value > 0
    assert sum(sentinel.count.values()) == 0

    debug = await client.get("/probe", params={"target": "web", "debug": "true"})
    text = await debug.text()
    assert debug.status == 200
    assert srv.count["web"] == 2
    logs, _, exposition = text.partition("Metrics that would have been returned:")
    assert "Logs for the probe:" in logs
    assert f"GET http://127.0.0.1:{srv.port}/t/web" in logs
    assert "response 200" in logs
    assert "failover_probe_success{" in exposition


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("", 400),
        ("?target=", 400),
        ("?debug=true", 400),
        ("?target=nope", 404),
        ("?target=SENTINEL", 404),
        ("?target=127.0.0.1:SENTINEL_PORT", 404),
        ("?target=WEB%20", 404),
        ("?target=web%00", 404),
        ("?target=%2e%2e%2fweb", 404),
        ("?target=web%0d%0aSet-Cookie:%20x=1", 404),
        ("?target=%ff%fe", 404),
        ("?target=" + "a" * 4000, 404),
        # Over aiohttp's request-line limit (8190): refused before any handler runs.
        ("?target=" + "a" * 9000, 400),
        ("?module=http&target=http%3A%2F%2F127.0.0.1%3ASENTINEL_PORT%2Ft%2Fx", 404),
    ],
)
async def test_probe_refuses_anything_but_a_configured_name(
    setup: tuple[TestClient, CountingServer, CountingServer], query: str, status: int
) -> None:
    client, srv, sentinel = setup
    query = query.replace("SENTINEL_PORT", str(sentinel.port)).replace(
        "SENTINEL", sentinel.url("x")
    )
    resp = await client.get("/probe" + query)
    body = await resp.text()
    assert resp.status == status, body
    assert "Traceback" not in body
    assert sum(sentinel.count.values()) == 0
    assert sum(srv.count.values()) == 0
    assert (await client.get("/-/healthy")).status == 200


async def test_probe_with_repeated_target_runs_at_most_the_configured_one(
    setup: tuple[TestClient, CountingServer, CountingServer],
) -> None:
    client, srv, sentinel = setup
    resp = await client.get(f"/probe?target=web&target={sentinel.url('x')}")
    assert resp.status in (200, 400, 404)
    assert sum(sentinel.count.values()) == 0
    assert srv.count["web"] <= 1


async def test_probe_concurrency_limit(
    setup: tuple[TestClient, CountingServer, CountingServer],
) -> None:
    client, srv, _ = setup
    srv.delay["slow"] = 2.0
    held = [
        asyncio.create_task(client.get("/probe", params={"target": "slow"}))
        for _ in range(PROBE_CONCURRENCY)
    ]
    try:
        for _ in range(200):
            if srv.active["slow"] == PROBE_CONCURRENCY:
                break
            await asyncio.sleep(0.01)
        assert srv.active["slow"] == PROBE_CONCURRENCY
        extra = await client.get("/probe", params={"target": "web"})
        assert extra.status == 429
        assert srv.count["web"] == 0, "a refused /probe still sent a request"
        srv.delay["slow"] = 0
    finally:
        responses = await asyncio.gather(*held)
    assert [r.status for r in responses] == [200] * PROBE_CONCURRENCY
    after = await client.get("/probe", params={"target": "web"})
    assert after.status == 200


async def test_not_ready_without_config(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> None:
    """Readiness is about a loaded config, checked on a bare app before its engine starts."""
    from exporter import web as handlers
    from exporter.engine import Engine

    engine = Engine()
    app = web.Application()
    app[handlers.ENGINE] = engine
    app.add_routes(handlers.routes())
    try:
        server = await aiohttp_server(app, host="127.0.0.1")
        client = TestClient(server)
        await client.start_server()
        try:
            resp = await client.get("/-/ready")
            assert resp.status == 503
            assert (await client.get("/-/healthy")).status == 200
        finally:
            await client.close()
    finally:
        await engine.aclose()
