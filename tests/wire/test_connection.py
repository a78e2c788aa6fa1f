"""exporter/wire/connection.py on real loopback sockets: reads carry the kernel's receive time,
the marks of a connection come in the order of its events, failures carry their reason."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
import time
from collections.abc import AsyncIterator

import pytest
import trustme

from exporter.metrics import Reason
from exporter.wire.connection import (
    Early,
    Marks,
    WireFailure,
    connect,
    connection_phases,
    literal_addresses,
    resolve,
    secure,
)
from exporter.wire.timestamps import SO_TIMESTAMPNS, clock_offset, handshake_rtt, kernel_time_ns


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def echo(ca: trustme.CA, request: pytest.FixtureRequest) -> AsyncIterator[int]:
    """Echoes every line; TLS when the test is parametrized with tls=True."""
    tls = getattr(request, "param", False)
    context = None
    if tls:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                writer.write(line)
                await writer.drain()
        except (OSError, ssl.SSLError):
            pass
        finally:
            writer.transport.abort()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


async def test_a_read_carries_the_kernels_receive_time() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    loop = asyncio.get_running_loop()
    marks = Marks()
    infos = literal_addresses("127.0.0.1", listener.getsockname()[1], socket.AF_INET)
    assert infos is not None
    conn = await connect(loop, infos, "here", marks, Reason.CONNECT)
    peer, _ = listener.accept()
    try:
        peer.sendall(b"stamped")
        time.sleep(0.01)  # the bytes wait in the kernel; the read below comes after
        got = None
        for _ in range(1000):  # bounded: the loopback delivers at once, but not within the call
            before_read = time.perf_counter()
            got = conn.read()
            if got is not None:
                break
            await asyncio.sleep(0.001)
        assert got is not None
        data, at = got
        assert data == b"stamped"
        # The kernel's time of arrival, before the read: a time taken at the read is later.
        assert at < before_read
    finally:
        conn.close()
        peer.close()
        listener.close()


async def test_marks_follow_the_events(echo: int) -> None:
    loop = asyncio.get_running_loop()
    marks = Marks()
    infos = await resolve(loop, "localhost", echo, socket.AF_INET, marks)
    conn = await connect(loop, infos[:1], "localhost", marks, Reason.CONNECT)
    try:
        marks.ready = time.perf_counter()
        assert marks.syn is not None
        assert marks.tcp is not None
        assert marks.syn <= marks.tcp <= marks.ready
        # The kernel's SYN -> SYN-ACK sample, inside what the loop saw.
        assert marks.handshake is not None
        assert marks.handshake > 0
        phases: dict[str, float] = {}
        total = connection_phases(phases, marks, time.perf_counter())
        assert list(phases) == ["dns", "connect"]
        assert phases["connect"] <= marks.tcp - marks.syn
        assert total == sum(phases.values())
    finally:
        conn.close()


@pytest.mark.parametrize("echo", [True], indirect=True)
async def test_tls_marks_and_phases(echo: int, ca: trustme.CA) -> None:
    loop = asyncio.get_running_loop()
    marks = Marks()
    infos = literal_addresses("127.0.0.1", echo, socket.AF_INET)
    conn = await connect(loop, infos, "here", marks, Reason.CONNECT)
    try:
        await secure(loop, conn, client_context(ca), "localhost", marks)
        marks.ready = time.perf_counter()
        assert conn.tls is not None
        assert marks.tcp is not None
        assert marks.tls_start is not None
        assert marks.tls_end is not None
        assert marks.tcp <= marks.tls_start <= marks.tls_end <= marks.ready
        phases: dict[str, float] = {}
        connection_phases(phases, marks, time.perf_counter())
        assert list(phases) == ["connect", "tls"]
        assert phases["tls"] == marks.tls_end - marks.tls_start
        # Plain text through the in-memory TLS, each read still stamped.
        await conn.send(loop, b"hello\n")
        data = b""
        while b"\n" not in data:
            raw, at = await conn.readable(loop)
            assert raw, "closed"
            assert at >= marks.tls_end
            conn.incoming.write(raw)
            with contextlib.suppress(ssl.SSLWantReadError):
                data += conn.tls.read(1024)
        assert data == b"hello\n"
    finally:
        conn.close()


@pytest.mark.parametrize("echo", [True], indirect=True)
async def test_untrusted_certificate_is_a_tls_failure(echo: int) -> None:
    loop = asyncio.get_running_loop()
    marks = Marks()
    infos = literal_addresses("127.0.0.1", echo, socket.AF_INET)
    conn = await connect(loop, infos, "here", marks, Reason.CONNECT)
    with pytest.raises(WireFailure) as failure:
        await secure(loop, conn, ssl.create_default_context(), "localhost", marks)
    assert failure.value.reason is Reason.TLS
    assert "certificate verification failed" in failure.value.message
    assert conn.sock.fileno() == -1  # closed by `secure`


async def test_refused_is_a_connect_failure_naming_where() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()
    marks = Marks()
    infos = literal_addresses("127.0.0.1", port, socket.AF_INET)
    with pytest.raises(WireFailure) as failure:
        await connect(asyncio.get_running_loop(), infos, "the target", marks, Reason.CONNECT)
    assert failure.value.reason is Reason.CONNECT
    assert failure.value.message == "cannot connect to the target: connection refused"
    phases: dict[str, float] = {}
    connection_phases(phases, marks, time.perf_counter())
    assert list(phases) == ["connect"]  # cut short, still recorded


async def test_unresolvable_is_a_dns_failure() -> None:
    marks = Marks()
    with pytest.raises(WireFailure) as failure:
        await resolve(asyncio.get_running_loop(), "no-such-host.invalid", 80, 0, marks)
    assert failure.value.reason is Reason.DNS
    assert marks.dns > 0
    assert marks.dns_start is None


class Collect:
    """A sink that keeps what it is fed."""

    def __init__(self, loop: asyncio.AbstractEventLoop, until: bytes) -> None:
        self.done: asyncio.Future[None] = loop.create_future()
        self.until = until
        self.data = b""
        self.stamps: list[float] = []
        self.eof = False

    def received(self, data: bytes, at: float) -> None:
        self.data += data
        self.stamps.append(at)
        if self.until in self.data and not self.done.done():
            self.done.set_result(None)

    def closed(self, exc: OSError | None) -> None:
        self.eof = True
        if not self.done.done():
            self.done.set_result(None)

    def fail(self, reason: Reason, message: str) -> None:
        self.done.set_exception(WireFailure(reason, message))


async def test_stream_feeds_a_sink_in_order(echo: int) -> None:
    loop = asyncio.get_running_loop()
    marks = Marks()
    conn = await connect(
        loop, literal_addresses("127.0.0.1", echo, socket.AF_INET), "here", marks, Reason.CONNECT
    )
    try:
        await conn.send(loop, b"one\ntwo\n")
        sink = Collect(loop, b"two\n")
        await conn.stream(loop, sink)
        assert sink.data == b"one\ntwo\n"
        assert sink.stamps == sorted(sink.stamps)
        assert not sink.eof
    finally:
        conn.close()


def test_timestamp_helpers() -> None:
    value = struct.pack("@qq", 12, 345)
    assert kernel_time_ns([(socket.SOL_SOCKET, SO_TIMESTAMPNS, value)]) == 12_000_000_345
    assert kernel_time_ns([(socket.SOL_SOCKET, SO_TIMESTAMPNS + 1, value)]) is None
    a, b = socket.socketpair()
    with a, b:
        assert handshake_rtt(a, a.family) is None  # not TCP: no sample


def test_clock_offset_skips_a_preempted_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    # Scripted clocks: the first reading is preempted 5 ms between the wall clock and the second
    # perf_counter (it would shift every kernel time by that); the second is tight.
    perf = iter([10.0, 10.005, 20.0, 20.000002])
    wall = iter([1000.0, 1010.000001])
    monkeypatch.setattr(time, "perf_counter", lambda: next(perf))
    monkeypatch.setattr(time, "time", lambda: next(wall))
    assert clock_offset() == 1010.000001 - 20.000001


async def test_an_early_request_leaves_with_the_handshake_and_is_read_into_its_sink(
    echo: int,
) -> None:
    loop = asyncio.get_running_loop()
    marks = Marks()
    sink = Collect(loop, b"ping\n")
    infos = literal_addresses("127.0.0.1", echo, socket.AF_INET)
    conn = await connect(loop, infos, "here", marks, Reason.CONNECT, Early(b"ping\n", sink))
    try:
        # Written by the writability callback, stamped right after the loop saw the handshake.
        assert conn.early == len(b"ping\n")
        assert marks.syn is not None
        assert marks.tcp is not None
        assert marks.sent is not None
        assert marks.syn <= marks.tcp <= marks.sent
        # The handshake's RTT was read in the callback, before the request left.
        assert marks.handshake is not None
        # The reader is registered already; no send of our own, and the echo comes back.
        await asyncio.wait_for(sink.done, 10)
        assert sink.data == b"ping\n"
    finally:
        conn.close()


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
def test_close_drops_the_reader_so_a_reused_fd_starts_clean(loop_name: str) -> None:
    """uvloop keeps one poll handle per fd number: a reader left on a closed socket would be
    found by the next socket that gets the number (every probe failed that way once)."""
    import threading

    import uvloop

    listener = socket.create_server(("127.0.0.1", 0))
    echo = listener.getsockname()[1]

    def serve() -> None:  # a thread: the test's own loop is not the one running here
        for _ in range(2):
            peer, _ = listener.accept()
            with peer:
                peer.sendall(peer.recv(64))

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    factory = uvloop.new_event_loop if loop_name == "uvloop" else asyncio.new_event_loop

    async def main() -> list[bytes]:
        loop = asyncio.get_running_loop()
        got = []
        for word in (b"one\n", b"two\n"):
            sink = Collect(loop, word)
            infos = literal_addresses("127.0.0.1", echo, socket.AF_INET)
            conn = await connect(loop, infos, "here", Marks(), Reason.CONNECT, Early(word, sink))
            fd = conn.fd
            # Read through the early registration, then closed without `stream` ever running.
            await asyncio.wait_for(sink.done, 10)
            got.append(sink.data)
            conn.close()
            assert not loop.remove_reader(fd)
        return got

    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            assert runner.run(main()) == [b"one\n", b"two\n"]
    finally:
        server.join(10)
        listener.close()
