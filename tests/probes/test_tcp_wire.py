"""The tcp probe on the wire transport: its phases are stamped at the socket events (kernel
receive times, the kernel's handshake RTT), so the target's time is their sum and a busy event
loop is not part of it. Real sockets on loopback; ordering and structure, never speeds."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from exporter.scheduler import Scheduler
from tests.probes.conftest import MakeTarget, RunProbe


@contextmanager
def thread_server(
    handle: Callable[[socket.socket], None], tls: ssl.SSLContext | None = None
) -> Iterator[tuple[str, int]]:
    """One connection, handled in a thread: a server on the probe's loop could not answer while
    that loop is stalled."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)

    def serve() -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        conn.settimeout(10)
        # OSError: the probe hung up first.
        with conn, contextlib.suppress(OSError):
            handle(tls.wrap_socket(conn, server_side=True) if tls is not None else conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[:2]
    finally:
        listener.close()
        thread.join(10)


def answer(reply: bytes, close: bool = False) -> Callable[[socket.socket], None]:
    def handle(sock: socket.socket) -> None:
        sock.recv(4096)
        sock.sendall(reply)
        if not close:
            sock.recv(4096)  # until the probe hangs up

    return handle


def banner(text: bytes) -> Callable[[socket.socket], None]:
    def handle(sock: socket.socket) -> None:
        sock.sendall(text)
        sock.recv(4096)

    return handle


def probe(port: int, **extra: object) -> dict[str, object]:
    return {"kind": "tcp", "address": f"127.0.0.1:{port}", **extra}


async def test_send_expect_phases_sum_to_the_duration(run_probe: RunProbe) -> None:
    with thread_server(answer(b"+PONG\r\n")) as (_, port):
        result = await run_probe(probe(port, send="PING\\r\\n", expect=r"^\+PONG"))
    assert result.success, result.message
    assert list(result.phases) == ["connect", "expect"]
    assert result.duration == sum(result.phases.values())


async def test_banner_without_send_is_timed_from_the_connection(run_probe: RunProbe) -> None:
    # Nothing to send: the expect phase runs from the connection established on the wire (the
    # kernel's handshake RTT after the SYN), not from when the loop got round to it.
    with thread_server(banner(b"SSH-2.0-OpenSSH_9.6\r\n")) as (_, port):
        result = await run_probe(probe(port, expect="^SSH-2.0-"))
    assert result.success, result.message
    assert list(result.phases) == ["connect", "expect"]
    assert result.duration == sum(result.phases.values())


async def test_send_only_has_an_expect_phase(run_probe: RunProbe) -> None:
    with thread_server(answer(b"")) as (_, port):
        result = await run_probe(probe(port, send="hello\\n"))
    assert result.success, result.message
    assert list(result.phases) == ["connect", "expect"]
    assert result.duration == sum(result.phases.values())


async def test_tls_phases_in_order_and_summed(
    run_probe: RunProbe, server_ssl: ssl.SSLContext, ca_file: str
) -> None:
    with thread_server(answer(b"+OK\r\n"), tls=server_ssl) as (_, port):
        result = await run_probe(
            probe(port, tls=True, tls_config={"ca_file": ca_file}, send="PING\\r\\n", expect="OK")
        )
    assert result.success, result.message
    assert list(result.phases) == ["connect", "tls", "expect"]
    assert result.duration == sum(result.phases.values())


async def test_failure_keeps_the_wall_clock(run_probe: RunProbe) -> None:
    with thread_server(answer(b"-ERR\r\n", close=True)) as (_, port):
        result = await run_probe(probe(port, send="PING\\r\\n", expect=r"^\+PONG"))
    assert result.reason == "expect", result.message
    assert list(result.phases) == ["connect", "expect"]
    # Not the sum of the phases: the probe's wall clock, which holds them.
    assert result.duration >= sum(result.phases.values())


async def test_a_stalled_loop_is_not_the_targets_latency(
    make_target: MakeTarget, scheduler: Scheduler
) -> None:
    """The answer lands in the kernel while the event loop is blocked: the probe reads the
    kernel's receive time, so every phase ends before the stall began."""
    got_request, go, replied = threading.Event(), threading.Event(), threading.Event()

    def handle(sock: socket.socket) -> None:
        sock.recv(4096)
        got_request.set()
        go.wait(10)
        sock.sendall(b"+PONG\r\n")
        replied.set()
        sock.recv(4096)

    with thread_server(handle) as (_, port):
        target = make_target(probe(port, send="PING\\r\\n", expect=r"^\+PONG"))
        started = time.perf_counter()
        task = asyncio.create_task(scheduler.probe(target))
        for _ in range(10_000):  # bounded by turns: the probe connects and sends
            if got_request.is_set():
                break
            await asyncio.sleep(0.001)
        # From here the loop is blocked until the probe is awaited: the answer is written by
        # the server and sits in the kernel, unread, while the exporter is busy elsewhere.
        go.set()
        assert replied.wait(10)
        answered = time.perf_counter()
        time.sleep(0.2)
        result = await task
    assert result.success, result.message
    assert list(result.phases) == ["connect", "expect"]
    # Stamped by the kernel before `answered`; a stamp taken when the loop read the socket would
    # come after the stall and make the sum larger than this.
    assert result.duration <= answered - started
