"""The grpc probe against a real grpc.aio server (health servicer with switchable status), TLS
from trustme, and hostile ports that are not gRPC, driven through the scheduler."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import trustme
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from exporter import config
from tests.conftest import MakeConfig, one_service
from tests.probes import hostile
from tests.probes.conftest import RunProbe, TimedProbe, assert_timed_out, http_server

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
TOKEN = "s3cret-grpc-token-77"


class Guarded(health.aio.HealthServicer):  # type: ignore[misc]
    """Asks for `authorization: Bearer TOKEN`, and echoes what it got when it is wrong."""

    async def Check(self, request: Any, context: Any) -> Any:
        got = dict(context.invocation_metadata()).get("authorization", "")
        if got != f"Bearer {TOKEN}":
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"bad token {got!r}")
        return await super().Check(request, context)


@contextlib.asynccontextmanager
async def grpc_server(
    servicer: Any = None,
    credentials: Any = None,
) -> AsyncIterator[tuple[str, Any]]:
    """A real grpc.aio server on a free loopback port; yields its address and the servicer."""
    server = grpc.aio.server()
    if servicer is not None:
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        await server.stop(grace=None)


def server_credentials(
    cert: trustme.LeafCert, client_ca: trustme.CA | None = None
) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials(
        [(cert.private_key_pem.bytes(), cert.cert_chain_pems[0].bytes())],
        root_certificates=client_ca.cert_pem.bytes() if client_ca else None,
        require_client_auth=client_ca is not None,
    )


async def test_serving_then_not_serving(run_probe: RunProbe) -> None:
    servicer = health.aio.HealthServicer()
    await servicer.set("shop.Cart", SERVING)
    async with grpc_server(servicer) as (address, _):
        probe = {"kind": "grpc", "address": address, "service": "shop.Cart"}
        result = await run_probe(probe)
        assert result.success, result.message
        assert set(result.phases) == {"connect", "rpc"}
        await servicer.set("shop.Cart", NOT_SERVING)
        result = await run_probe(probe)
        assert result.reason == "not_serving"
        assert "NOT_SERVING" in result.message
        result = await run_probe({**probe, "service": "shop.Nope"})
        assert result.reason == "service_unknown"
        # The server as a whole ("") is SERVING by the servicer's default.
        result = await run_probe({"kind": "grpc", "address": address})
        assert result.success, result.message


async def test_reused_channel_skips_connect(run_probe: RunProbe) -> None:
    async with grpc_server(health.aio.HealthServicer()) as (address, _):
        probe = {"kind": "grpc", "address": address, "reuse_channel": True}
        first = await run_probe(probe)
        second = await run_probe(probe)
    assert first.success, first.message
    assert second.success, second.message
    assert set(first.phases) == {"connect", "rpc"}
    # The channel is READY already: no connect to time.
    assert set(second.phases) == {"rpc"}


async def test_no_health_service(run_probe: RunProbe) -> None:
    async with grpc_server(None) as (address, _):
        result = await run_probe({"kind": "grpc", "address": address})
    assert result.reason == "unimplemented", result.message


async def test_tls(
    run_probe: RunProbe, ca: trustme.CA, server_cert: trustme.LeafCert, ca_file: str
) -> None:
    async with grpc_server(health.aio.HealthServicer(), server_credentials(server_cert)) as (
        address,
        _,
    ):
        probe = {"kind": "grpc", "address": address, "tls": True}
        result = await run_probe({**probe, "tls_config": {"ca_file": ca_file}})
        assert result.success, result.message
        # The system roots do not know trustme's CA.
        result = await run_probe(probe)
        assert result.reason == "tls", result.message
        wrong_name = {"ca_file": ca_file, "server_name": "other.example"}
        result = await run_probe({**probe, "tls_config": wrong_name})
        assert result.reason == "tls", result.message


async def test_client_certificate(
    run_probe: RunProbe, ca: trustme.CA, server_cert: trustme.LeafCert, tmp_path: Path
) -> None:
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    client = ca.issue_cert("prober.example")
    client.cert_chain_pems[0].write_to_path(str(tmp_path / "client.pem"))
    client.private_key_pem.write_to_path(str(tmp_path / "client.key"))
    creds = server_credentials(server_cert, client_ca=ca)
    async with grpc_server(health.aio.HealthServicer(), creds) as (address, _):
        tls: dict[str, str] = {"ca_file": "ca.pem"}
        probe = {"kind": "grpc", "address": address, "tls": True}
        result = await run_probe({**probe, "tls_config": tls})
        assert not result.success
        assert result.reason in {"tls", "reset"}, result.message
        tls |= {"cert_file": "client.pem", "key_file": "client.key"}
        result = await run_probe({**probe, "tls_config": tls})
        assert result.success, result.message


async def test_secret_metadata_never_shown(
    run_probe: RunProbe, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GRPC_TOKEN", f"Bearer {TOKEN}")
    (tmp_path / "wrong").write_text(f"Bearer {TOKEN}-wrong\n")
    async with grpc_server(Guarded()) as (address, _):
        probe: dict[str, Any] = {"kind": "grpc", "address": address}
        result = await run_probe(
            {**probe, "secret_metadata": {"authorization": {"env": "GRPC_TOKEN"}}}
        )
        assert result.success, result.message
        # The server echoes the wrong token in its error; it must not reach the message.
        wrong = {"authorization": {"file": "wrong"}}
        result = await run_probe({**probe, "secret_metadata": wrong})
    assert result.reason == "auth"
    assert TOKEN not in result.message
    assert all(TOKEN not in line for line in result.debug)


async def test_hanging_server_times_out(timed_probe: TimedProbe) -> None:
    async with hostile.hanging() as (host, port):
        timed = await timed_probe({"kind": "grpc", "address": f"{host}:{port}"}, timeout=0.5)
    assert_timed_out(timed, 0.5)


async def test_tls_stall_times_out(timed_probe: TimedProbe, ca_file: str) -> None:
    async with hostile.tls_stall() as (host, port):
        probe = {"kind": "grpc", "address": f"{host}:{port}", "tls": True}
        timed = await timed_probe({**probe, "tls_config": {"ca_file": ca_file}}, timeout=0.5)
    assert_timed_out(timed, 0.5)


async def test_refused(run_probe: RunProbe) -> None:
    async with hostile.refused() as (host, port):
        result = await run_probe({"kind": "grpc", "address": f"{host}:{port}"})
    assert result.reason == "connect", result.message


async def test_garbage_is_not_grpc(run_probe: RunProbe) -> None:
    async with hostile.garbage() as (host, port):
        result = await run_probe({"kind": "grpc", "address": f"{host}:{port}"})
    assert result.reason == "protocol", result.message


async def test_reset(run_probe: RunProbe) -> None:
    async with hostile.resetting(prefix=b"") as (host, port):
        result = await run_probe({"kind": "grpc", "address": f"{host}:{port}"})
    assert result.reason == "reset", result.message


async def test_http1_server_is_not_grpc(run_probe: RunProbe) -> None:
    async def hello(_: web.Request) -> web.Response:
        return web.Response(text="hello")

    app = web.Application()
    app.router.add_get("/", hello)
    async with http_server(app) as (host, port):
        result = await run_probe({"kind": "grpc", "address": f"{host}:{port}"})
    assert result.reason == "protocol", result.message
    assert "http1" in result.message


def test_config_errors(make_config: MakeConfig) -> None:
    base = {"kind": "grpc", "address": "127.0.0.1:1"}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"metadata": {"Bad": "x"}}, "metadata"),
        ({"metadata": {"grpc-timeout": "x"}}, "metadata"),
        ({"tls_config": {"ca_file": "ca.pem"}}, "tls is false"),
        ({"tls": True, "tls_config": {"ca_file": "missing.pem"}}, "tls_config.ca_file"),
        ({"tls": True, "tls_config": {"verify": False}}, "tls_config.verify"),
        ({"secret_metadata": {"token": {"env": "NO_SUCH_GRPC_ENV"}}}, "secret_metadata.token"),
        ({"address": "no-port"}, "address"),
    ]
    for extra, expected in cases:
        with pytest.raises(config.ConfigError) as info:
            make_config(one_service({"t": json.dumps(base | extra)}))
        assert expected in str(info.value), (extra, info.value)


def test_exporter_without_grpc_targets_does_not_import_grpc(tmp_path: Path) -> None:
    path = tmp_path / "config.yml"
    path.write_text(one_service({"t": "{kind: tcp, address: '127.0.0.1:1'}"}))
    code = (
        "import sys, pathlib, exporter.app, exporter.cli, exporter.config as c; "
        f"c.load(pathlib.Path({str(path)!r})); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('grpc', 'grpc_health')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
