"""The tcp probe against real local servers, friendly and hostile, driven through the scheduler."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Callable

import pytest
import trustme

from exporter.metrics import TLS_NOT_AFTER
from tests.probes import hostile
from tests.probes.conftest import (
    RunProbe,
    TimedProbe,
    assert_timed_out,
    ipv6_loopback,
    not_after,
)


async def until(condition: Callable[[], bool], turns: int = 500) -> None:
    """Let the loop run (bounded, by turns not by time) until `condition` holds."""
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0.001)


def address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@contextlib.asynccontextmanager
async def line_server(
    reply: bytes,
    close_after: bool = True,
    host: str = "127.0.0.1",
    ssl_context: ssl.SSLContext | None = None,
    received: list[bytes] | None = None,
) -> AsyncIterator[tuple[str, int]]:
    """Reads one line, answers `reply`, then closes (or keeps the connection open)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        if received is not None:
            received.append(line)
        writer.write(reply)
        await writer.drain()
        if close_after:
            writer.close()
        else:
            await reader.read()  # until the probe hangs up

    server = await asyncio.start_server(handle, host, 0, ssl=ssl_context)
    try:
        yield host, server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def test_connect_success(run_probe: RunProbe) -> None:
    stats = hostile.Stats()
    async with hostile.hanging(stats=stats) as (host, port):
        result = await run_probe({"kind": "tcp", "address": address(host, port)})
        # The probe is done at the handshake and hangs up at once; the server accepts on its
        # own turn of the loop, which may come after the probe's end.
        await until(lambda: stats.connections > 0)
    assert result.success, result.message
    assert stats.connections == 1
    # An IP address needs no lookup; only the handshake is timed.
    assert set(result.phases) == {"connect"}
    # The target's time is its phases (the kernel's handshake RTT here), not the wall clock
    # around the probe, which also holds the lookup in a thread and the loop's turns.
    assert result.duration == sum(result.phases.values())


async def test_name_has_dns_phase(run_probe: RunProbe) -> None:
    async with hostile.hanging() as (_, port):
        probe = {"kind": "tcp", "address": f"localhost:{port}", "ip_family": "ipv4"}
        result = await run_probe(probe)
    assert result.success, result.message
    assert set(result.phases) == {"dns", "connect"}


async def test_refused(run_probe: RunProbe) -> None:
    async with hostile.refused() as (host, port):
        result = await run_probe({"kind": "tcp", "address": address(host, port)})
    assert result.reason == "connect"
    assert "refused" in result.message.lower()


async def test_unresolvable_name(run_probe: RunProbe) -> None:
    result = await run_probe({"kind": "tcp", "address": "no-such-host.invalid:443"})
    assert result.reason == "dns"
    assert "no-such-host.invalid" in result.message
    assert set(result.phases) == {"dns"}


async def test_send_expect_match(run_probe: RunProbe) -> None:
    received: list[bytes] = []
    async with line_server(b"+PONG\r\n", received=received) as (host, port):
        probe = {"kind": "tcp", "address": address(host, port), "send": "PING\\r\\n"}
        probe["expect"] = r"^\+PONG"
        result = await run_probe(probe)
    assert result.success, result.message
    assert received == [b"PING\r\n"]
    assert {"connect", "expect"} <= set(result.phases)


async def test_expect_matches_across_reads(run_probe: RunProbe) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for piece in (b"SSH-2.0", b"-Open", b"SSH_9.6\r\n"):
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.02)
        await reader.read()

    async with hostile.serve(handle) as (host, port):
        probe = {"kind": "tcp", "address": address(host, port), "expect": "^SSH-2.0-OpenSSH"}
        result = await run_probe(probe)
    assert result.success, result.message


async def test_expect_mismatch(run_probe: RunProbe) -> None:
    async with line_server(b"-ERR unknown command\r\n") as (host, port):
        probe = {"kind": "tcp", "address": address(host, port), "send": "PING\\n"}
        probe["expect"] = r"^\+PONG"
        result = await run_probe(probe)
    assert result.reason == "expect"
    assert "PONG" in result.message


async def test_expect_on_hanging_peer_times_out(timed_probe: TimedProbe) -> None:
    async with hostile.hanging() as (host, port):
        probe = {"kind": "tcp", "address": address(host, port), "send": "hi\\n", "expect": "ok"}
        timed = await timed_probe(probe, timeout=0.4)
    assert_timed_out(timed, 0.4)
    assert "expect" in timed.result.phases


async def test_mismatch_then_silence_times_out(run_probe: RunProbe) -> None:
    # A wrong answer on a connection that stays open may still be followed by the right one.
    async with line_server(b"hello\r\n", close_after=False) as (host, port):
        probe = {"kind": "tcp", "address": address(host, port), "send": "x\\n", "expect": "bye"}
        result = await run_probe(probe, timeout=0.3)
    assert result.reason == "timeout"


async def test_expect_read_is_bounded(run_probe: RunProbe) -> None:
    stats = hostile.Stats()
    async with hostile.endless_body(stats=stats) as (host, port):
        probe = {
            "kind": "tcp",
            "address": address(host, port),
            "send": "GET / HTTP/1.0\\r\\n\\r\\n",
            "expect": "never-there",
            "max_read_bytes": 100000,
        }
        result = await run_probe(probe)
    assert result.reason == "expect", result.message
    assert stats.bytes_sent < 64 << 20


async def test_reset_while_expecting(run_probe: RunProbe) -> None:
    async with hostile.resetting(prefix=b"partial") as (host, port):
        probe = {
            "kind": "tcp",
            "address": address(host, port),
            "send": "hello\\r\\n\\r\\n",
            "expect": "complete",
        }
        result = await run_probe(probe)
    # Whether the reset or the unmatched bytes are seen first depends on timing; both are
    # failures of the exchange, never a success or an internal error.
    assert result.reason in ("reset", "expect"), result.message


# -- TLS ----------------------------------------------------------------------------------------


async def test_tls_reports_expiry(
    run_probe: RunProbe, server_ssl: ssl.SSLContext, server_cert: trustme.LeafCert, ca_file: str
) -> None:
    async with line_server(b"+OK\r\n", ssl_context=server_ssl) as (host, port):
        probe = {
            "kind": "tcp",
            "address": address(host, port),
            "tls": True,
            "tls_config": {"ca_file": ca_file},
            "send": "PING\\r\\n",
            "expect": r"^\+OK",
        }
        result = await run_probe(probe)
    assert result.success, result.message
    assert result.gauges[TLS_NOT_AFTER.name] == not_after(server_cert)
    assert set(result.phases) == {"connect", "tls", "expect"}


async def test_tls_untrusted(run_probe: RunProbe, server_ssl: ssl.SSLContext) -> None:
    async with line_server(b"+OK\r\n", ssl_context=server_ssl) as (host, port):
        probe = {"kind": "tcp", "address": address(host, port), "tls": True}
        result = await run_probe(probe)
    assert result.reason == "tls", result.message
    assert "tls" in result.phases


async def test_tls_verify_off_still_reports_expiry(
    run_probe: RunProbe, server_ssl: ssl.SSLContext, server_cert: trustme.LeafCert
) -> None:
    async with line_server(b"+OK\r\n", ssl_context=server_ssl) as (host, port):
        probe = {
            "kind": "tcp",
            "address": address(host, port),
            "tls": True,
            "tls_config": {"verify": False},
        }
        result = await run_probe(probe)
    assert result.success, result.message
    assert result.gauges[TLS_NOT_AFTER.name] == not_after(server_cert)


async def test_tls_server_name(
    run_probe: RunProbe, server_ssl: ssl.SSLContext, ca_file: str
) -> None:
    async with line_server(b"+OK\r\n", ssl_context=server_ssl) as (host, port):
        probe = {"kind": "tcp", "address": address(host, port), "tls": True}
        probe["tls_config"] = {"ca_file": ca_file, "server_name": "localhost"}
        assert (await run_probe(probe)).success
        probe["tls_config"] = {"ca_file": ca_file, "server_name": "elsewhere.example"}
        result = await run_probe(probe)
    assert result.reason == "tls", result.message


async def test_tls_handshake_stall_times_out(timed_probe: TimedProbe) -> None:
    stats = hostile.Stats()
    async with hostile.tls_stall(stats=stats) as (host, port):
        probe = {"kind": "tcp", "address": address(host, port), "tls": True}
        timed = await timed_probe(probe, timeout=0.4)
    assert_timed_out(timed, 0.4)
    assert stats.bytes_received > 0
    assert "tls" in timed.result.phases


async def test_tls_peer_closes_during_handshake(run_probe: RunProbe) -> None:
    async with hostile.closing() as (host, port):
        probe = {"kind": "tcp", "address": address(host, port), "tls": True}
        result = await run_probe(probe)
    assert result.reason in ("tls", "reset"), result.message


# -- address families ---------------------------------------------------------------------------


async def test_ipv6(run_probe: RunProbe) -> None:
    ipv6_loopback()
    async with hostile.hanging(host="::1") as (host, port):
        for family in ("any", "ipv6"):
            probe = {"kind": "tcp", "address": address(host, port), "ip_family": family}
            result = await run_probe(probe)
            assert result.success, result.message


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
async def test_family_mismatch_with_literal(run_probe: RunProbe, family: str) -> None:
    ipv6_loopback()
    host = "::1" if family == "ipv4" else "127.0.0.1"
    async with hostile.hanging(host=host) as (host, port):
        probe = {"kind": "tcp", "address": address(host, port), "ip_family": family}
        result = await run_probe(probe)
    assert not result.success
    assert result.reason in ("dns", "connect"), result.message
