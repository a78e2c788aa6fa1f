"""The http probe against real local servers, friendly and hostile, driven through the scheduler."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import json
import socket
import ssl
import threading
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
import trustme
from prometheus_client import CollectorRegistry
from prometheus_client.utils import floatToGoString

from exporter.metrics import (
    DELAY_BUCKETS,
    HTTP_STATUS,
    START_DELAY,
    TLS_NOT_AFTER,
    SelfMetrics,
)
from exporter.resources import Resources
from exporter.scheduler import Scheduler
from exporter.wire import pool as wire_pool
from tests.conftest import MakeConfig, one_service
from tests.probes import hostile
from tests.probes.conftest import (
    MakeTarget,
    RunProbe,
    TimedProbe,
    assert_timed_out,
    http_server,
    ipv6_loopback,
    not_after,
    run_delay,
    url,
)
from tests.support.configs import BASE, errors
from tests.support.http_app import PASSWORD, TOKEN, Seen, app_for, server

__all__ = ["server"]  # a fixture, re-exported for the tests below

# -- outcomes -----------------------------------------------------------------------------------


async def test_success(run_probe: RunProbe, server: tuple[Seen, str]) -> None:
    seen, base = server
    result = await run_probe({"kind": "http", "url": f"{base}/ok"})
    assert result.success, result.message
    assert result.gauges.get(HTTP_STATUS.name) == 200
    assert result.message == "ok"
    assert len(seen.requests) == 1
    assert seen.requests[0]["method"] == "GET"
    assert seen.requests[0]["headers"]["User-Agent"].startswith("failover_exporter/")


async def test_wrong_status_fails(run_probe: RunProbe, server: tuple[Seen, str]) -> None:
    _, base = server
    result = await run_probe({"kind": "http", "url": f"{base}/status/503"})
    assert not result.success
    assert result.reason == "http_status"
    assert result.gauges.get(HTTP_STATUS.name) == 503
    assert "503" in result.message


async def test_valid_status_codes(run_probe: RunProbe, server: tuple[Seen, str]) -> None:
    _, base = server
    probe = {"kind": "http", "url": f"{base}/status/418", "valid_status_codes": [204, 418]}
    assert (await run_probe(probe)).success
    # An explicit list replaces the 2xx default: 200 is now wrong.
    probe["url"] = f"{base}/status/200"
    result = await run_probe(probe)
    assert result.reason == "http_status"
    assert result.gauges.get(HTTP_STATUS.name) == 200


@pytest.mark.parametrize(
    ("must", "must_not", "reason"),
    [
        (["healthy", r"version: \d+\.\d+"], [], None),
        (["unhealthy"], [], "body"),
        ([], ["error|degraded"], None),
        ([], ["version"], "body"),
        (["healthy"], ["^status: healthy"], "body"),
    ],
)
async def test_body_regexes(
    run_probe: RunProbe,
    server: tuple[Seen, str],
    must: list[str],
    must_not: list[str],
    reason: str | None,
) -> None:
    _, base = server
    probe = {
        "kind": "http",
        "url": f"{base}/ok",
        "body_must_match": must,
        "body_must_not_match": must_not,
    }
    result = await run_probe(probe)
    assert result.reason == reason, result.message
    assert result.success is (reason is None)


async def test_regex_flags_inline(run_probe: RunProbe, server: tuple[Seen, str]) -> None:
    _, base = server
    # Multiline anchors need (?m): patterns are plain Python regexes over the whole body.
    probe = {"kind": "http", "url": f"{base}/ok", "body_must_match": ["(?m)^version: 1"]}
    assert (await run_probe(probe)).success


async def test_redirects_followed_by_default(run_probe: RunProbe, server: tuple[Seen, str]) -> None:
    seen, base = server
    result = await run_probe({"kind": "http", "url": f"{base}/redirect"})
    assert result.success, result.message
    assert result.gauges.get(HTTP_STATUS.name) == 200
    assert [r["path"] for r in seen.requests] == ["/redirect", "/ok"]


async def test_redirects_not_followed(run_probe: RunProbe, server: tuple[Seen, str]) -> None:
    seen, base = server
    probe = {"kind": "http", "url": f"{base}/redirect", "follow_redirects": False}
    result = await run_probe(probe)
    assert result.reason == "http_status"
    assert result.gauges.get(HTTP_STATUS.name) == 302
    probe["valid_status_codes"] = [302]
    assert (await run_probe(probe)).success
    assert [r["path"] for r in seen.requests] == ["/redirect", "/redirect"]


async def test_redirect_loop_is_protocol_error(
    run_probe: RunProbe, server: tuple[Seen, str]
) -> None:
    seen, base = server
    result = await run_probe({"kind": "http", "url": f"{base}/loop"})
    assert result.reason == "protocol"
    assert "redirect" in result.message
    assert 2 <= len(seen.requests) <= 12


async def test_head(run_probe: RunProbe, server: tuple[Seen, str]) -> None:
    seen, base = server
    result = await run_probe({"kind": "http", "url": f"{base}/ok", "method": "HEAD"})
    assert result.success, result.message
    assert seen.requests[0]["method"] == "HEAD"


async def test_post_with_body_and_headers(run_probe: RunProbe, server: tuple[Seen, str]) -> None:
    seen, base = server
    probe = {
        "kind": "http",
        "url": f"{base}/ok",
        "method": "POST",
        "body": '{"ping": "é"}',
        "headers": {"Content-Type": "application/json", "X-Probe": "failover", "Host": "svc"},
    }
    result = await run_probe(probe)
    assert result.success, result.message
    request = seen.requests[0]
    assert request["method"] == "POST"
    assert request["body"] == '{"ping": "é"}'.encode()
    assert request["headers"]["Content-Type"] == "application/json"
    assert request["headers"]["X-Probe"] == "failover"
    assert request["headers"]["Host"] == "svc"


async def test_compressed_body_is_matched_inflated(
    run_probe: RunProbe, server: tuple[Seen, str]
) -> None:
    seen, base = server
    probe = {"kind": "http", "url": f"{base}/gzip", "body_must_match": ["status: healthy"]}
    result = await run_probe(probe)
    assert result.success, result.message
    assert "gzip" in seen.requests[0]["headers"]["Accept-Encoding"]
    # The inflated body counts against the limit, not the ~100 bytes on the wire.
    result = await run_probe({**probe, "max_body_bytes": 1000})
    assert result.reason == "body_too_large", result.message


async def test_see_other_after_post_continues_as_get(
    run_probe: RunProbe, server: tuple[Seen, str]
) -> None:
    seen, base = server
    result = await run_probe(
        {"kind": "http", "url": f"{base}/see-other", "method": "POST", "body": "x"}
    )
    assert result.success, result.message
    assert [(r["method"], r["path"], r["body"]) for r in seen.requests] == [
        ("POST", "/see-other", b"x"),
        ("GET", "/ok", b""),
    ]


async def test_body_dropped_for_good_once_a_redirect_made_it_get(
    run_probe: RunProbe, server: tuple[Seen, str]
) -> None:
    seen, base = server
    probe = {"kind": "http", "url": f"{base}/r/303?to=/r/307%3Fto%3D/ok", "method": "POST"}
    result = await run_probe({**probe, "body": "payload"})
    assert result.success, result.message
    assert [(r["method"], r["path"], r["body"]) for r in seen.requests] == [
        ("POST", "/r/303", b"payload"),
        ("GET", "/r/307", b""),
        ("GET", "/ok", b""),
    ]


async def test_empty_post_says_content_length_zero(
    run_probe: RunProbe, server: tuple[Seen, str]
) -> None:
    seen, base = server
    result = await run_probe({"kind": "http", "url": f"{base}/ok", "method": "POST"})
    assert result.success, result.message
    assert seen.requests[0]["headers"]["Content-Length"] == "0"


async def test_credentials_in_a_redirect_location_stay_out_of_the_debug_lines(
    run_probe: RunProbe, server: tuple[Seen, str]
) -> None:
    _, base = server
    host_port = base.removeprefix("http://")
    target = f"{base}/r/302?to=http://u:hunter2@{host_port}/ok%3Ftoken%3Dsecret"
    result = await run_probe({"kind": "http", "url": target})
    assert result.success, result.message
    assert any("redirected to" in line for line in result.debug), result.debug
    text = "\n".join([result.message, *result.debug])
    assert "hunter2" not in text
    assert "secret" not in text


async def test_kept_alive_connections_expire(
    run_probe: RunProbe, server: tuple[Seen, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen, base = server
    probe = {"kind": "http", "url": f"{base}/ok", "keep_alive": True}
    monkeypatch.setattr(wire_pool, "_IDLE_SECONDS", 0.05)
    assert (await run_probe(probe)).success
    await asyncio.sleep(0.1)
    assert (await run_probe(probe)).success
    assert len({r["peer"] for r in seen.requests}) == 2


@pytest.mark.parametrize(
    ("payload", "ok"),
    [
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", True),
        (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nread until close", True),
        (b"HTTP/1.0 204 No Content\r\n\r\n", True),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nshort", False),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", False),
        (b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 4\r\n\r\nnope", False),
        (b"HTTP/1.1 100 Continue\r\n\r\n" * 50, False),
        (b"HTTP/1.1 200 OK\r\nX-Huge: " + b"a" * 300_000 + b"\r\n\r\n", False),
        (b"HTTP/1.1 200 " + b"very long reason " * 20_000 + b"\r\n\r\n", False),
        (b"HTTP/1.1 200 OK\r\n" + b"X-Many: 1\r\n" * 101 + b"Content-Length: 0\r\n\r\n", False),
        (
            b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 100022\r\n\r\n"
            + gzip.compress(b"ok")
            + b"\0" * 100_000,
            False,
        ),
    ],
    ids=[
        "interim-100",
        "until-close",
        "no-content",
        "short-body",
        "unfinished-chunks",
        "bad-gzip",
        "interim-flood",
        "huge-header",
        "huge-reason",
        "too-many-headers",
        "data-after-gzip",
    ],
)
async def test_response_framing(run_probe: RunProbe, payload: bytes, ok: bool) -> None:
    async with hostile.garbage(payload=payload) as (host, port):
        result = await run_probe({"kind": "http", "url": url("http", host, port)})
    if ok:
        assert result.success, result.message
    else:
        assert result.reason in ("reset", "protocol"), result.message


async def test_a_second_response_does_not_replace_the_first(run_probe: RunProbe) -> None:
    """llhttp parses on after a response in the same read: the first final response counts."""
    payload = (
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n"
    )
    async with hostile.garbage(payload=payload) as (host, port):
        result = await run_probe({"kind": "http", "url": url("http", host, port)})
    assert result.reason == "http_status", result.message
    assert result.gauges.get(HTTP_STATUS.name) == 503
    assert result.debug[-2].endswith("response 503 Service Unavailable"), result.debug


async def test_a_flooding_server_neither_outlasts_the_timeout_nor_holds_the_loop(
    timed_probe: TimedProbe,
) -> None:
    """An endless chunk extension is never a complete response nor a body byte: the probe must
    still time out on time, and the loop must keep turning meanwhile."""
    stop = threading.Event()
    listener = socket.create_server(("127.0.0.1", 0))

    def flood() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;a=")
            junk = b"b" * 65536
            deadline = time.monotonic() + 5
            with contextlib.suppress(OSError):
                while not stop.is_set() and time.monotonic() < deadline:
                    conn.sendall(junk)

    thread = threading.Thread(target=flood)
    thread.start()
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    try:
        host, port = listener.getsockname()[:2]
        timed = await timed_probe({"kind": "http", "url": url("http", host, port)}, timeout=0.5)
    finally:
        ticker.cancel()
        stop.set()
        thread.join(10)
        listener.close()
    assert_timed_out(timed, 0.5)
    assert ticks >= 10, ticks


# -- authentication and secrets -----------------------------------------------------------------


def assert_secret_hidden(result: Any) -> None:
    text = "\n".join([result.message, *result.debug, repr(result.target.prepared)])
    assert PASSWORD not in text
    assert TOKEN not in text


async def test_basic_auth_from_env(
    run_probe: RunProbe, server: tuple[Seen, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen, base = server
    monkeypatch.setenv("PROBE_PASSWORD", PASSWORD)
    probe = {
        "kind": "http",
        "url": f"{base}/auth",
        "basic_auth": {"username": "alice", "password": {"env": "PROBE_PASSWORD"}},
    }
    result = await run_probe(probe)
    assert result.success, result.message
    assert seen.requests[0]["headers"]["Authorization"] == f"Basic {TOKEN}"
    assert_secret_hidden(result)


async def test_basic_auth_from_file_relative_to_config(
    run_probe: RunProbe, server: tuple[Seen, str], tmp_path: Path
) -> None:
    _, base = server
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "password").write_text(PASSWORD + "\n")
    probe = {
        "kind": "http",
        "url": f"{base}/auth",
        "basic_auth": {"username": "alice", "password": {"file": "secrets/password"}},
    }
    result = await run_probe(probe)
    assert result.success, result.message
    assert_secret_hidden(result)


async def test_wrong_password_fails_without_leaking(
    run_probe: RunProbe, server: tuple[Seen, str], tmp_path: Path
) -> None:
    _, base = server
    (tmp_path / "password").write_text(PASSWORD + "-but-wrong")
    probe = {
        "kind": "http",
        "url": f"{base}/auth",
        "basic_auth": {"username": "alice", "password": {"file": str(tmp_path / "password")}},
    }
    result = await run_probe(probe)
    assert result.reason == "http_status"
    assert result.gauges.get(HTTP_STATUS.name) == 401
    assert_secret_hidden(result)


async def test_secret_hidden_when_probe_fails_hard(
    run_probe: RunProbe, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROBE_PASSWORD", PASSWORD)
    auth = {"username": "alice", "password": {"env": "PROBE_PASSWORD"}}
    async with hostile.garbage() as (host, port):
        result = await run_probe(
            {"kind": "http", "url": url("http", host, port), "basic_auth": auth}
        )
    assert result.reason == "protocol"
    assert_secret_hidden(result)
    async with hostile.hanging() as (host, port):
        result = await run_probe(
            {"kind": "http", "url": url("http", host, port), "basic_auth": auth}, timeout=0.3
        )
    assert result.reason == "timeout"
    assert_secret_hidden(result)


async def test_authorization_dropped_on_cross_origin_redirect(
    run_probe: RunProbe, server: tuple[Seen, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen, base = server
    other_seen = Seen()
    monkeypatch.setenv("PROBE_PASSWORD", PASSWORD)
    async with http_server(app_for(other_seen)) as (host, port):
        probe = {
            "kind": "http",
            "url": f"{base}/redirect?to={url('http', host, port, '/ok')}",
            "basic_auth": {"username": "alice", "password": {"env": "PROBE_PASSWORD"}},
        }
        result = await run_probe(probe)
    assert result.success, result.message
    assert seen.requests[0]["headers"]["Authorization"] == f"Basic {TOKEN}"
    assert len(other_seen.requests) == 1
    assert "Authorization" not in other_seen.requests[0]["headers"]


async def test_secret_headers_from_env_and_file_stay_secret(
    run_probe: RunProbe,
    server: tuple[Seen, str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    seen, base = server
    monkeypatch.setenv("PROBE_API_KEY", PASSWORD)
    (tmp_path / "tenant").write_text(TOKEN + "\n")
    other_seen = Seen()
    async with http_server(app_for(other_seen)) as (host, port):
        secret_headers = {"X-Api-Key": {"env": "PROBE_API_KEY"}, "X-Tenant": {"file": "tenant"}}
        # Same origin first, then a redirect to another origin: the secrets stay behind.
        probe = {"kind": "http", "url": f"{base}/ok", "secret_headers": secret_headers}
        result = await run_probe(probe)
        assert result.success, result.message
        away = f"{base}/redirect?to={url('http', host, port, '/ok')}"
        result = await run_probe({**probe, "url": away})
        assert result.success, result.message
    assert seen.requests[0]["headers"]["X-Api-Key"] == PASSWORD
    assert seen.requests[0]["headers"]["X-Tenant"] == TOKEN
    assert seen.requests[1]["headers"]["X-Api-Key"] == PASSWORD
    assert "X-Api-Key" not in other_seen.requests[0]["headers"]
    assert "X-Tenant" not in other_seen.requests[0]["headers"]
    assert_secret_hidden(result)


# -- hostile targets ----------------------------------------------------------------------------


async def test_timeout_honoured_on_hanging_server(timed_probe: TimedProbe) -> None:
    stats = hostile.Stats()
    async with hostile.hanging(stats=stats) as (host, port):
        timed = await timed_probe({"kind": "http", "url": url("http", host, port)}, timeout=0.5)
    assert_timed_out(timed, 0.5)
    result = timed.result
    assert stats.connections == 1
    assert stats.bytes_received > 0  # it did send the request and wait for the answer
    # The phases cut short by the timeout are still there for the operator.
    assert "connect" in result.phases


async def test_connection_refused(run_probe: RunProbe) -> None:
    async with hostile.refused() as (host, port):
        result = await run_probe({"kind": "http", "url": url("http", host, port)})
    assert result.reason == "connect"
    assert "refused" in result.message
    assert result.gauges.get(HTTP_STATUS.name) is None


async def test_reset_mid_response(run_probe: RunProbe) -> None:
    async with hostile.resetting() as (host, port):
        result = await run_probe({"kind": "http", "url": url("http", host, port)})
    assert result.reason == "reset", result.message


async def test_closed_before_response(run_probe: RunProbe) -> None:
    async with hostile.closing() as (host, port):
        result = await run_probe({"kind": "http", "url": url("http", host, port)})
    assert result.reason == "reset", result.message


@pytest.mark.parametrize(
    "payload",
    [
        b"SPDY/9 banana\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n",
        b"HTTP/1.1 999999 Weird\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nbody\r\n",
    ],
    ids=["not-http", "bad-length", "bad-status", "bad-chunk"],
)
async def test_invalid_http(run_probe: RunProbe, payload: bytes) -> None:
    async with hostile.garbage(payload=payload) as (host, port):
        result = await run_probe({"kind": "http", "url": url("http", host, port)})
    assert result.reason == "protocol", result.message


async def test_unresolvable_name(run_probe: RunProbe) -> None:
    result = await run_probe({"kind": "http", "url": "http://no-such-host.invalid/"})
    assert result.reason == "dns", result.message
    assert "no-such-host.invalid" in result.message
    assert "dns" in result.phases
    assert "connect" not in result.phases


@pytest.mark.parametrize("chunked", [False, True], ids=["until-close", "chunked"])
async def test_endless_body_is_bounded(run_probe: RunProbe, chunked: bool) -> None:
    stats = hostile.Stats()
    limit = 100_000
    async with hostile.endless_body(chunked=chunked, stats=stats) as (host, port):
        probe = {"kind": "http", "url": url("http", host, port), "max_body_bytes": limit}
        result = await run_probe(probe)
        await asyncio.sleep(0.1)  # let the server notice the hang-up
        sent = stats.bytes_sent
    assert result.reason == "body_too_large", result.message
    assert result.gauges.get(HTTP_STATUS.name) == 200
    assert str(limit) in result.message
    # The probe stopped reading: what the server got out is the limit plus socket buffers, not
    # the gigabyte it was willing to send.
    assert sent < 64 << 20, sent


async def test_huge_declared_body_is_bounded(run_probe: RunProbe) -> None:
    stats = hostile.Stats()
    async with hostile.endless_body(stats=stats) as (host, port):
        result = await run_probe({"kind": "http", "url": url("http", host, port)})
    # The default limit applies too (1 MiB).
    assert result.reason == "body_too_large", result.message
    assert "1048576" in result.message


async def test_gzip_bomb_is_bounded(run_probe: RunProbe) -> None:
    stats = hostile.Stats()
    async with hostile.gzip_bomb(stats=stats) as (host, port):
        result = await run_probe({"kind": "http", "url": url("http", host, port)})
    # The limit counts inflated bytes: some 16 KiB on the wire are 16 MiB of body.
    assert stats.bytes_sent < 1 << 20
    assert result.reason == "body_too_large", result.message


async def test_slow_loris_times_out(timed_probe: TimedProbe) -> None:
    stats = hostile.Stats()
    async with hostile.slow_loris(stats=stats) as (host, port):
        timed = await timed_probe({"kind": "http", "url": url("http", host, port)}, timeout=0.6)
    assert_timed_out(timed, 0.6)
    assert stats.bytes_sent > 5  # it really was trickling while the probe waited


# -- TLS ----------------------------------------------------------------------------------------


@pytest.fixture
async def tls_server(server_ssl: ssl.SSLContext) -> Any:
    seen = Seen()
    async with http_server(app_for(seen), ssl_context=server_ssl) as (host, port):
        yield seen, url("https", host, port, "/ok")


async def test_tls_self_signed_rejected_by_default(
    run_probe: RunProbe, tls_server: tuple[Seen, str]
) -> None:
    seen, target = tls_server
    result = await run_probe({"kind": "http", "url": target})
    assert result.reason == "tls", result.message
    assert "certif" in result.message
    assert seen.requests == []


async def test_tls_verify_off_reports_expiry(
    run_probe: RunProbe, tls_server: tuple[Seen, str], server_cert: trustme.LeafCert
) -> None:
    _, target = tls_server
    result = await run_probe({"kind": "http", "url": target, "tls": {"verify": False}})
    assert result.success, result.message
    assert result.gauges[TLS_NOT_AFTER.name] == not_after(server_cert)


async def test_tls_custom_ca(
    run_probe: RunProbe,
    tls_server: tuple[Seen, str],
    ca_file: str,
    server_cert: trustme.LeafCert,
) -> None:
    _, target = tls_server
    result = await run_probe({"kind": "http", "url": target, "tls": {"ca_file": ca_file}})
    assert result.success, result.message
    assert result.gauges[TLS_NOT_AFTER.name] == not_after(server_cert)
    assert {"connect", "tls", "first_byte", "transfer"} <= set(result.phases)
    assert "dns" not in result.phases


async def test_tls_wrong_server_name(
    run_probe: RunProbe, tls_server: tuple[Seen, str], ca_file: str
) -> None:
    _, target = tls_server
    tls = {"ca_file": ca_file, "server_name": "elsewhere.example"}
    result = await run_probe({"kind": "http", "url": target, "tls": tls})
    assert result.reason == "tls", result.message


async def test_tls_handshake_stall_times_out(timed_probe: TimedProbe) -> None:
    stats = hostile.Stats()
    async with hostile.tls_stall(stats=stats) as (host, port):
        timed = await timed_probe({"kind": "http", "url": url("https", host, port)}, timeout=0.5)
    assert_timed_out(timed, 0.5)
    result = timed.result
    assert stats.bytes_received > 0  # the ClientHello went out and was never answered
    assert "connect" in result.phases


async def test_plain_http_to_tls_port(run_probe: RunProbe, tls_server: tuple[Seen, str]) -> None:
    _, target = tls_server
    result = await run_probe({"kind": "http", "url": target.replace("https:", "http:")})
    assert not result.success
    assert result.reason in ("protocol", "reset"), result.message


# -- phases -------------------------------------------------------------------------------------


async def test_phases_plain_ip(run_probe: RunProbe, server: tuple[Seen, str]) -> None:
    _, base = server
    result = await run_probe({"kind": "http", "url": f"{base}/slow?head=0.05&body=0.05"})
    assert result.success, result.message
    phases = result.phases
    assert set(phases) == {"connect", "first_byte", "transfer"}
    assert phases["first_byte"] >= 0.05
    assert phases["transfer"] >= 0.05
    assert result.duration >= 0.1
    # Phases do not overlap: together they fit in the probe's duration.
    assert sum(phases.values()) <= result.duration + 0.001


async def test_phases_name_has_dns(run_probe: RunProbe, server: tuple[Seen, str]) -> None:
    _, base = server
    target = base.replace("127.0.0.1", "localhost") + "/slow?head=0.05"
    result = await run_probe({"kind": "http", "url": target, "ip_family": "ipv4"})
    assert result.success, result.message
    phases = result.phases
    assert set(phases) == {"dns", "connect", "first_byte", "transfer"}
    assert phases["first_byte"] >= 0.05
    assert sum(phases.values()) <= result.duration + 0.001


async def test_phases_tls(run_probe: RunProbe, tls_server: tuple[Seen, str], ca_file: str) -> None:
    _, target = tls_server
    target = target.replace("/ok", "/slow?head=0.05")
    result = await run_probe({"kind": "http", "url": target, "tls": {"ca_file": ca_file}})
    assert result.success, result.message
    phases = result.phases
    assert set(phases) == {"connect", "tls", "first_byte", "transfer"}
    assert phases["tls"] > 0
    assert phases["first_byte"] >= 0.05
    assert sum(phases.values()) <= result.duration + 0.001


async def test_phases_after_redirect(run_probe: RunProbe, server: tuple[Seen, str]) -> None:
    _, base = server
    result = await run_probe({"kind": "http", "url": f"{base}/redirect?to=/slow%3Fhead%3D0.05"})
    assert result.success, result.message
    assert result.phases["first_byte"] >= 0.05
    assert sum(result.phases.values()) <= result.duration + 0.001


# -- connections --------------------------------------------------------------------------------


async def test_new_connection_per_probe_by_default(
    run_probe: RunProbe, server: tuple[Seen, str]
) -> None:
    seen, base = server
    for _ in range(2):
        result = await run_probe({"kind": "http", "url": f"{base}/ok"})
        assert result.success, result.message
        assert "connect" in result.phases
    peers = {r["peer"] for r in seen.requests}
    assert len(peers) == 2
    assert all(r["headers"].get("Connection") == "close" for r in seen.requests)


async def test_keep_alive_reuses_connection(run_probe: RunProbe, server: tuple[Seen, str]) -> None:
    seen, base = server
    probe = {"kind": "http", "url": f"{base}/ok", "keep_alive": True}
    first = await run_probe(probe)
    second = await run_probe(probe)
    assert first.success, first.message
    assert second.success, second.message
    peers = {r["peer"] for r in seen.requests}
    assert len(seen.requests) == 2
    assert len(peers) == 1
    assert "connect" in first.phases
    # The second probe measured no connection set-up because there was none.
    assert "connect" not in second.phases
    assert "first_byte" in second.phases


async def test_keep_alive_tls_reports_expiry_every_time(
    make_target: MakeTarget,
    scheduler: Scheduler,
    tls_server: tuple[Seen, str],
    ca_file: str,
    server_cert: trustme.LeafCert,
) -> None:
    seen, target = tls_server
    # One target probed twice, as the daemon does: its TLS context is part of the pool key.
    tgt = make_target(
        {"kind": "http", "url": target, "keep_alive": True, "tls": {"ca_file": ca_file}}
    )
    results = [await scheduler.probe(tgt) for _ in range(2)]
    assert len({r["peer"] for r in seen.requests}) == 1
    for result in results:
        assert result.success, result.message
        assert result.gauges[TLS_NOT_AFTER.name] == not_after(server_cert)
    assert "tls" in results[0].phases
    assert "tls" not in results[1].phases


# -- address families ---------------------------------------------------------------------------


async def test_ipv6_literal(run_probe: RunProbe) -> None:
    ipv6_loopback()
    seen = Seen()
    async with http_server(app_for(seen), host="::1") as (host, port):
        for family in ("any", "ipv6"):
            target = url("http", host, port, "/ok")
            result = await run_probe({"kind": "http", "url": target, "ip_family": family})
            assert result.success, result.message
    assert all(r["peer"][0] == "::1" for r in seen.requests)


async def test_ipv4_family_with_name(run_probe: RunProbe, server: tuple[Seen, str]) -> None:
    seen, base = server
    target = base.replace("127.0.0.1", "localhost") + "/ok"
    result = await run_probe({"kind": "http", "url": target, "ip_family": "ipv4"})
    assert result.success, result.message
    assert seen.requests[0]["peer"][0] == "127.0.0.1"


async def test_ipv6_family_never_uses_ipv4(run_probe: RunProbe) -> None:
    ipv6_loopback()
    seen = Seen()
    # Hold ::1 at a port, not listening, and serve IPv4 on the same port: if the name has an
    # IPv6 address the probe gets "refused" there; if not, it fails at DNS. It must never reach
    # the IPv4 server. (The IPv6 side is taken first, so no other process can hold it.)
    for _ in range(5):
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as holder:
            holder.bind(("::1", 0))
            port = holder.getsockname()[1]
            try:
                async with http_server(app_for(seen), port=port):
                    target = f"http://localhost:{port}/ok"
                    result = await run_probe({"kind": "http", "url": target, "ip_family": "ipv6"})
                break
            except OSError:
                continue  # 127.0.0.1 at that port is someone else's: try another port
    else:
        pytest.fail("no port free on both ::1 and 127.0.0.1 in 5 tries")
    assert result.reason in ("dns", "connect"), result.message
    assert seen.requests == []


async def test_redirect_from_http_to_https_is_verified(
    run_probe: RunProbe, server: tuple[Seen, str], tls_server: tuple[Seen, str]
) -> None:
    _, base = server
    tls_seen, tls_target = tls_server
    result = await run_probe({"kind": "http", "url": f"{base}/redirect?to={tls_target}"})
    assert result.reason == "tls", result.message
    assert tls_seen.requests == []


async def test_tls_error_says_why(run_probe: RunProbe, tls_server: tuple[Seen, str]) -> None:
    _, target = tls_server
    result = await run_probe({"kind": "http", "url": target})
    assert result.reason == "tls"
    # OpenSSL's verify message, not just CERTIFICATE_VERIFY_FAILED.
    assert "issuer" in result.message or "self-signed" in result.message, result.message


async def test_non_latin1_password(
    run_probe: RunProbe, server: tuple[Seen, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen, base = server
    password = "pässwörd-€-secret"
    monkeypatch.setenv("PROBE_PASSWORD", password)
    probe = {
        "kind": "http",
        "url": f"{base}/ok",
        "basic_auth": {"username": "alice", "password": {"env": "PROBE_PASSWORD"}},
    }
    result = await run_probe(probe)
    assert result.success, result.message
    # UTF-8, as RFC 7617's charset parameter and other probers (Go's net/http) do.
    token = base64.b64encode(f"alice:{password}".encode()).decode()
    assert seen.requests[0]["headers"]["Authorization"] == f"Basic {token}"


# -- isolation ----------------------------------------------------------------------------------


async def test_hostile_targets_do_not_delay_others(
    make_config: MakeConfig, server_ssl: ssl.SSLContext
) -> None:
    """A real scheduler runs a healthy target next to every kind of hostile one for a few
    seconds: the healthy one keeps succeeding and no probe starts late."""
    seen = Seen()
    async with AsyncExitStack() as stack:
        enter = stack.enter_async_context
        healthy = await enter(http_server(app_for(seen)))
        tls_ok = await enter(http_server(app_for(Seen()), ssl_context=server_ssl))
        probes: dict[str, dict[str, Any]] = {
            "healthy": {"kind": "http", "url": url("http", *healthy, "/ok")},
            "hanging": {"kind": "http", "url": url("http", *await enter(hostile.hanging()))},
            "loris": {"kind": "http", "url": url("http", *await enter(hostile.slow_loris()))},
            "endless": {"kind": "http", "url": url("http", *await enter(hostile.endless_body()))},
            "stall": {"kind": "http", "url": url("https", *await enter(hostile.tls_stall()))},
            "refused": {"kind": "http", "url": url("http", *await enter(hostile.refused()))},
            "reset": {"kind": "http", "url": url("http", *await enter(hostile.resetting()))},
            "garbage": {"kind": "http", "url": url("http", *await enter(hostile.garbage()))},
            "untrusted": {"kind": "http", "url": url("https", *tls_ok, "/ok")},
            "nxdomain": {"kind": "http", "url": "http://no-such-host.invalid/"},
            "tcp-hang": {
                "kind": "tcp",
                "address": "{}:{}".format(*await enter(hostile.hanging())),
                "expect": "never",
            },
            "tcp-stall": {
                "kind": "tcp",
                "address": "{}:{}".format(*await enter(hostile.tls_stall())),
                "tls": True,
            },
        }
        expected = {
            "hanging": "timeout",
            "loris": "timeout",
            "endless": "body_too_large",
            "stall": "timeout",
            "refused": "connect",
            "reset": "reset",
            "garbage": "protocol",
            "untrusted": "tls",
            "nxdomain": "dns",
            "tcp-hang": "timeout",
            "tcp-stall": "timeout",
        }
        defaults = "defaults: {interval: 300ms, timeout: 250ms}\n"
        cfg = make_config(
            one_service({k: json.dumps(v) for k, v in probes.items()}, defaults=defaults)
        )
        registry = CollectorRegistry()
        resources = Resources()
        scheduler = Scheduler(SelfMetrics(registry), resources)
        delay0 = run_delay()
        try:
            scheduler.apply(cfg)
            await asyncio.sleep(3.0)
            starved = run_delay() - delay0
        finally:
            await scheduler.stop()
            await resources.aclose()

    states = {s.target.name: s for s in scheduler.snapshot()}
    ok = states["healthy"]
    assert ok.probes >= 6, ok.probes
    if starved < 0.2:
        assert sum(ok.failures.values()) == 0, ok.failures
    else:  # a loopback request can miss its timeout only if the OS held the loop that long
        assert sum(ok.failures.values()) == ok.failures["timeout"] <= 2, (ok.failures, starved)
    assert len(seen.requests) >= ok.probes - ok.failures["timeout"]
    for name, reason in expected.items():
        state = states[name]
        assert state.probes >= 5, (name, state.probes)
        # Never a success; the kind's own reason seen, and under load a timeout at worst.
        assert sum(state.failures.values()) == state.probes, (name, state.failures)
        if reason != "timeout":
            assert state.failures[reason] + state.failures["timeout"] == state.probes
        assert state.failures[reason] >= state.probes // 2, (name, state.failures)

    def sample(suffix: str, **labels: str) -> float:
        value = registry.get_sample_value(START_DELAY.name + suffix, labels)
        assert value is not None
        return value

    started = sample("_count")
    assert started >= len(probes) * 5
    # No probe started more than 50 ms late, plus whatever time the OS kept this thread from
    # running: hostile targets must cost the loop nothing that shows up in other probes.
    bound = next((b for b in DELAY_BUCKETS if b >= 0.05 + starved), float("inf"))
    on_time = sample("_bucket", le=floatToGoString(bound))
    assert on_time == started, f"{started - on_time} probes started over {bound}s late"


# -- settings -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        (
            '{"X-Bad": "a\\r\\nInjected: yes"}',
            "header 'X-Bad': value must not contain CR, LF or NUL",
        ),
        ('{"Bad Name": "x"}', "'Bad Name' is not a valid header name"),
        (
            '{"Content-Length": "5"}',
            "header 'Content-Length' is set by the probe (keep_alive, body)",
        ),
        (
            '{"X-Api-Key": "plain"}, secret_headers: {"x-api-key": {env: HOME}}',
            "header 'x-api-key' is in both headers and secret_headers",
        ),
        (
            '{}, secret_headers: {"Authorization": {env: HOME}}, bearer_token: {env: HOME}',
            "Authorization comes from basic_auth or bearer_token already",
        ),
    ],
    ids=["crlf-value", "bad-name", "framing", "plain-and-secret", "two-authorizations"],
)
def test_bad_headers_are_config_errors(tmp_path: Path, headers: str, message: str) -> None:
    text = BASE.replace(
        'probe: {kind: http, url: "http://127.0.0.1:1/healthz"}',
        f'probe: {{kind: http, url: "http://127.0.0.1:1/healthz", headers: {headers}}}',
    )
    field = "secret_headers" if "secret_headers" in headers else "headers"
    expected = f"c.yml:13: services[0].targets[0].probe.{field}: {message}"
    assert errors(tmp_path, text) == [expected]
