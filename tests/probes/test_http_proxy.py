"""The http probe through a real egress proxy (tinyproxy from Debian, started per test).

Plain http goes to the proxy in absolute form; https is tunnelled with CONNECT and then TLS to
the origin under the origin's name. The proxy's own failures have reasons of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.probes.conftest import RunProbe, http_server, url
from tests.support.configs import BASE, errors
from tests.support.proxy import Proxy, free_port, tinyproxy

# tinyproxy takes a password without spaces.
USER, PASSWORD = "probe", "Pr0xyPassw0rd-x"


def _app(seen: list[web.Request]) -> web.Application:
    async def ok(request: web.Request) -> web.Response:
        seen.append(request)
        return web.Response(text="healthy\n")

    app = web.Application()
    app.router.add_get("/ok", ok)
    return app


@pytest.fixture
async def origin() -> AsyncIterator[tuple[list[web.Request], int]]:
    seen: list[web.Request] = []
    async with http_server(_app(seen)) as (_, port):
        yield seen, port


@pytest.fixture
async def tls_origin(server_ssl: ssl.SSLContext) -> AsyncIterator[tuple[list[web.Request], int]]:
    seen: list[web.Request] = []
    async with http_server(_app(seen), host="127.0.0.1", ssl_context=server_ssl) as (_, port):
        yield seen, port


@pytest.fixture
def open_proxy(tmp_path: Path, tls_origin: tuple[list[web.Request], int]) -> Iterator[Proxy]:
    with tinyproxy(tmp_path / "open", connect_ports=(tls_origin[1],)) as proxy:
        yield proxy


@pytest.fixture
def auth_proxy(tmp_path: Path, tls_origin: tuple[list[web.Request], int]) -> Iterator[Proxy]:
    with tinyproxy(tmp_path / "auth", (tls_origin[1],), auth=(USER, PASSWORD)) as proxy:
        yield proxy


def _auth(env: str = "PROXY_PASSWORD") -> dict[str, Any]:
    return {"username": USER, "password": {"env": env}}


def _via(proxy_url: str, target: str, ca_file: str | None = None, **extra: Any) -> dict[str, Any]:
    """An http probe of `target` through the proxy at `proxy_url`, trusting the test CA if given."""
    probe: dict[str, Any] = {"kind": "http", "url": target, "proxy_url": proxy_url, **extra}
    if ca_file is not None:
        probe["tls"] = {"ca_file": ca_file}
    return probe


def _config_with(extra: str) -> str:
    """The test config with `extra` settings on its http probe."""
    return BASE.replace(
        'probe: {kind: http, url: "http://127.0.0.1:1/healthz"}',
        f'probe: {{kind: http, url: "http://127.0.0.1:1/healthz", {extra}}}',
    )


async def test_plain_http_through_proxy(
    run_probe: RunProbe, origin: tuple[list[web.Request], int], open_proxy: Proxy
) -> None:
    seen, port = origin
    target = url("http", "127.0.0.1", port, "/ok")
    result = await run_probe(_via(open_proxy.url, target))
    assert result.success, result.message
    assert len(seen) == 1
    # Really through the proxy: it logged the request, and no tunnel was needed.
    assert f"): GET http://127.0.0.1:{port}/ok HTTP/1.1" in open_proxy.log_text()
    assert "connect_tunnel" not in result.phases
    assert {"connect", "first_byte", "transfer"} <= set(result.phases)


async def test_https_through_connect_tunnel(
    run_probe: RunProbe,
    tls_origin: tuple[list[web.Request], int],
    open_proxy: Proxy,
    ca_file: str,
) -> None:
    seen, port = tls_origin
    result = await run_probe(_via(open_proxy.url, url("https", "127.0.0.1", port, "/ok"), ca_file))
    assert result.success, result.message
    assert len(seen) == 1
    assert f"): CONNECT 127.0.0.1:{port} HTTP/1.1" in open_proxy.log_text()
    assert {"connect", "connect_tunnel", "tls", "first_byte", "transfer"} <= set(result.phases)


async def test_keep_alive_reuses_the_tunnel(
    run_probe: RunProbe,
    tls_origin: tuple[list[web.Request], int],
    open_proxy: Proxy,
    ca_file: str,
) -> None:
    seen, port = tls_origin
    target = url("https", "127.0.0.1", port, "/ok")
    probe = _via(open_proxy.url, target, ca_file, keep_alive=True)
    first = await run_probe(probe)
    second = await run_probe(probe)
    assert first.success, first.message
    assert second.success, second.message
    assert "connect_tunnel" in first.phases
    # The pooled connection is the tunnel, TLS to the origin inside it: nothing to redo.
    assert not {"connect", "connect_tunnel", "tls"} & set(second.phases), second.phases
    assert len(seen) == 2
    assert open_proxy.log_text().count(f"): CONNECT 127.0.0.1:{port} HTTP/1.1") == 1


async def test_auth_required_without_credentials(
    run_probe: RunProbe,
    origin: tuple[list[web.Request], int],
    tls_origin: tuple[list[web.Request], int],
    auth_proxy: Proxy,
    ca_file: str,
) -> None:
    plain = url("http", "127.0.0.1", origin[1], "/ok")
    tls = url("https", "127.0.0.1", tls_origin[1], "/ok")
    for target in (plain, tls):
        result = await run_probe(_via(auth_proxy.url, target, ca_file))
        assert result.reason == "proxy_auth", (target, result.message)
        assert "requires credentials" in result.message
    assert origin[0] == []
    assert tls_origin[0] == []


async def test_auth_right_and_wrong_credentials(
    run_probe: RunProbe,
    origin: tuple[list[web.Request], int],
    tls_origin: tuple[list[web.Request], int],
    auth_proxy: Proxy,
    ca_file: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PROXY_PASSWORD", PASSWORD)
    monkeypatch.setenv("WRONG_PASSWORD", PASSWORD + "x")
    plain = url("http", "127.0.0.1", origin[1], "/ok")
    tls = url("https", "127.0.0.1", tls_origin[1], "/ok")
    for target in (plain, tls):
        probe = _via(auth_proxy.url, target, ca_file)
        good = await run_probe({**probe, "proxy_auth": _auth()})
        assert good.success, (target, good.message)
        bad = await run_probe({**probe, "proxy_auth": _auth("WRONG_PASSWORD")})
        if target == plain:
            # tinyproxy answers wrong credentials with 401, not 407: on a plain request that is
            # indistinguishable from the origin's own 401, so it stays the origin's http_status.
            assert bad.reason == "http_status", (target, bad.message)
            assert "401" in bad.message
        else:
            assert bad.reason == "proxy_auth", (target, bad.message)
            assert "rejected the credentials" in bad.message
        for result in (good, bad):
            text = "\n".join([result.message or "", *result.debug])
            assert PASSWORD not in text
    assert len(origin[0]) == 1
    assert len(tls_origin[0]) == 1
    # Proxy-Authorization is for the proxy: it does not forward it to the origin.
    assert "Proxy-Authorization" not in origin[0][0].headers


async def test_proxy_down_is_proxy_connect(
    run_probe: RunProbe, origin: tuple[list[web.Request], int], ca_file: str
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    for target in (url("http", "127.0.0.1", origin[1], "/ok"), "https://127.0.0.1:1/ok"):
        result = await run_probe(_via(closed, target, ca_file))
        assert result.reason == "proxy_connect", (target, result.message)
        assert "proxy 127.0.0.1" in result.message
    assert origin[0] == []


async def test_origin_down_behind_live_proxy(
    run_probe: RunProbe, tmp_path: Path, ca_file: str
) -> None:
    down = free_port()
    with tinyproxy(tmp_path / "p", connect_ports=(down,)) as proxy:
        tls = await run_probe(_via(proxy.url, f"https://127.0.0.1:{down}/ok", ca_file))
        plain = await run_probe(_via(proxy.url, f"http://127.0.0.1:{down}/ok"))
    # The proxy answered: not proxy_connect. CONNECT refused by the proxy is the proxy's error;
    # a plain request gets the proxy's error page, a status the origin did not send.
    assert tls.reason == "proxy_error", tls.message
    assert "answered CONNECT with" in tls.message
    assert plain.reason == "http_status", plain.message


async def test_connect_port_refused_by_proxy_is_proxy_error(
    run_probe: RunProbe, tls_origin: tuple[list[web.Request], int], tmp_path: Path, ca_file: str
) -> None:
    # A proxy that allows CONNECT to another port only (tinyproxy: 403).
    with tinyproxy(tmp_path / "p", connect_ports=(tls_origin[1] + 1,)) as proxy:
        target = url("https", "127.0.0.1", tls_origin[1], "/ok")
        result = await run_probe(_via(proxy.url, target, ca_file))
    assert result.reason == "proxy_error", result.message
    assert tls_origin[0] == []


@pytest.mark.parametrize(
    ("extra", "field", "message"),
    [
        ('proxy_url: "https://p:3128"', "proxy_url", "must be an http:// URL"),
        ('proxy_url: "http://u:pw@p:3128"', "proxy_url", "must not contain credentials"),
        ('proxy_url: "http://p:3128/x"', "proxy_url", "must be only scheme, host and port"),
        (
            "proxy_auth: {username: u, password: {env: PROXY_PASSWORD}}",
            "proxy_auth",
            "needs proxy_url",
        ),
    ],
    ids=["https-proxy", "credentials", "path", "auth-without-url"],
)
def test_bad_proxy_settings_are_config_errors(
    tmp_path: Path, extra: str, field: str, message: str
) -> None:
    (issue,) = errors(tmp_path, _config_with(extra))
    assert issue.startswith(f"c.yml:13: services[0].targets[0].probe.{field}: "), issue
    assert message in issue, issue


def test_missing_proxy_password_names_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROXY_PASSWORD", raising=False)
    extra = 'proxy_url: "http://p:1", proxy_auth: {username: u, password: {env: PROXY_PASSWORD}}'
    (issue,) = errors(tmp_path, _config_with(extra))
    assert "proxy_auth.password" in issue, issue
    assert "PROXY_PASSWORD is not set" in issue, issue


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (b"", "closed the connection on CONNECT"),
        (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "not an HTTP answer to CONNECT"),
        (b"HTTP/1.1 200 OK\r\n\r\n\x16junk", "sent data after its CONNECT answer"),
        (b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n", "CONNECT with 502 Bad Gateway"),
    ],
    ids=["close", "garbage", "data-after-200", "502"],
)
async def test_hostile_proxy_answers_are_proxy_error(
    run_probe: RunProbe, answer: bytes, message: str
) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answer)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        result = await run_probe(_via(f"http://127.0.0.1:{port}", "https://127.0.0.1:1/ok"))
    finally:
        server.close()
        await server.wait_closed()
    assert result.reason == "proxy_error", result.message
    assert message in result.message
