"""The http probe's duration: its phases, stamped at the socket events, when one hop answered."""

from __future__ import annotations

import asyncio
import math
import socketserver
import ssl
import threading
import time

import pytest

from exporter.scheduler import Scheduler
from tests.probes.conftest import MakeTarget, RunProbe
from tests.support.http_app import Seen, server

__all__ = ["server"]  # a fixture, re-exported for the tests below


async def test_duration_is_the_sum_of_the_phases(
    run_probe: RunProbe, server: tuple[Seen, str]
) -> None:
    _, base = server
    result = await run_probe({"kind": "http", "url": f"{base}/slow?head=0.05&body=0.05"})
    assert result.success, result.message
    assert set(result.phases) == {"connect", "first_byte", "transfer"}
    # The exporter's own turns between the phases (connected -> request written) are not counted.
    assert math.isclose(result.duration, sum(result.phases.values()), abs_tol=1e-9)
    assert result.phases["first_byte"] >= 0.05
    assert result.phases["transfer"] >= 0.05


async def test_kept_alive_connection_is_request_to_last_byte(
    run_probe: RunProbe, server: tuple[Seen, str]
) -> None:
    _, base = server
    probe = {"kind": "http", "url": f"{base}/slow?head=0.05", "keep_alive": True}
    first = await run_probe(probe)
    second = await run_probe(probe)
    assert first.success, first.message
    assert second.success, second.message
    # The previous response's stamps on the reused connection do not leak into this one.
    assert set(second.phases) == {"first_byte", "transfer"}
    assert second.phases["first_byte"] >= 0.05
    assert math.isclose(second.duration, sum(second.phases.values()), abs_tol=1e-9)


async def test_redirect_keeps_the_wall_clock(run_probe: RunProbe, server: tuple[Seen, str]) -> None:
    seen, base = server
    result = await run_probe({"kind": "http", "url": f"{base}/redirect?to=/slow%3Fhead%3D0.05"})
    assert result.success, result.message
    assert len(seen.requests) == 2
    # The phases describe the last hop only; the duration covers both.
    assert result.duration > sum(result.phases.values())


async def test_failed_probe_keeps_the_wall_clock(
    run_probe: RunProbe, server: tuple[Seen, str]
) -> None:
    _, base = server
    result = await run_probe({"kind": "http", "url": f"{base}/status/503"})
    assert not result.success
    assert result.reason == "http_status"
    assert result.duration >= sum(result.phases.values())


def _delayed_answer(tls: ssl.SSLContext | None) -> type[socketserver.BaseRequestHandler]:
    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            sock = self.request
            if tls is not None:
                sock = tls.wrap_socket(sock, server_side=True)
            sock.recv(65536)
            time.sleep(0.05)
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            sock.close()

    return Handler


@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_a_stalled_loop_is_not_the_targets_latency(
    make_target: MakeTarget,
    scheduler: Scheduler,
    scheme: str,
    server_ssl: ssl.SSLContext,
    ca_file: str,
) -> None:
    """The answer lands while the event loop is blocked: the probe reads the kernel's receive
    time of the bytes (decrypted in memory for https), so the stall is not counted as the
    target's latency. (The server runs in a thread: one on the blocked loop could not answer.)"""
    tls = server_ssl if scheme == "https" else None
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), _delayed_answer(tls)) as srv:
        thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05})
        thread.start()
        try:
            host, port = srv.server_address[:2]
            target = make_target(
                {"kind": "http", "url": f"{scheme}://{host}:{port}/", "tls": {"ca_file": ca_file}}
            )
            probe = asyncio.create_task(scheduler.probe(target))
            await asyncio.sleep(0.03)  # connected, request written; the answer is due at ~50 ms
            time.sleep(0.3)  # a stalled exporter: the answer arrives meanwhile
            result = await probe
        finally:
            srv.shutdown()
            thread.join(5)
    assert result.success, result.message
    assert 0.05 <= result.duration < 0.2, result.phases
    assert result.phases["first_byte"] < 0.2, result.phases
