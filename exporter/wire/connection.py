"""One TCP connection, optionally TLS, with every event stamped where the target's time is.

The socket is bare and non-blocking, TLS runs in memory (ssl.MemoryBIO), and every read goes
through recvmsg with SO_TIMESTAMPNS: each byte, plain or encrypted, carries the kernel's receive
time, and the handshake's RTT is the kernel's own sample (TCP_INFO). `Marks` holds the stamps
of one connection's life; `connection_phases` turns them into the phases the probes report.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import ssl
import time
from collections.abc import Callable
from contextlib import suppress
from typing import Any, Protocol

import aiohappyeyeballs

from exporter.metrics import Reason
from exporter.wire.timestamps import (
    SO_TIMESTAMPNS,
    TIMESTAMP_CMSG_SPACE,
    clock_offset,
    handshake_rtt,
    kernel_time_ns,
)


class WireFailure(Exception):
    """The connection failed for a known reason; a probe turns it into its ProbeFailure.
    The message must not contain secrets."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class Marks:
    """Monotonic marks of one hop, taken at the socket events. DNS time adds up over hops."""

    __slots__ = (
        "dns",
        "dns_start",
        "handshake",
        "ready",
        "secure",
        "sent",
        "syn",
        "tcp",
        "tls_end",
        "tls_start",
        "tunnel_end",
        "tunnel_start",
    )

    def __init__(self) -> None:
        self.dns = 0.0
        # Set while a lookup is in flight, so a lookup cut short still counts as DNS time.
        self.dns_start: float | None = None
        self.next_hop()

    def next_hop(self) -> None:
        # Just before connect(2) (the SYN) and as soon as the loop saw the handshake complete.
        self.syn: float | None = None
        self.tcp: float | None = None
        # The kernel's SYN -> SYN-ACK time, when it has one.
        self.handshake: float | None = None
        # CONNECT written to the proxy, and the kernel's receive time of its answer.
        self.tunnel_start: float | None = None
        self.tunnel_end: float | None = None
        self.secure = False
        # ClientHello written, and the kernel's receive time of the server's last handshake
        # bytes: the handshake on the wire, without the exporter's turns in between.
        self.tls_start: float | None = None
        self.tls_end: float | None = None
        # The connection (new or reused) is ready for the request, and the request was written.
        self.ready: float | None = None
        self.sent: float | None = None


class Sink(Protocol):
    """What `Conn.feed` hands the bytes to (an HTTP response parser, an expect matcher)."""

    done: asyncio.Future[None]

    def received(self, data: bytes, at: float) -> None: ...

    def closed(self, exc: OSError | None) -> None: ...

    def fail(self, reason: Reason, message: str) -> None: ...


_NONBLOCKING_STREAM = socket.SOCK_STREAM | getattr(socket, "SOCK_NONBLOCK", 0)
READ_SIZE = 65536
_READS_PER_TURN = 4


class Conn:
    """One connection on a bare non-blocking socket; TLS runs in memory (ssl.MemoryBIO), so every
    byte is read here with its kernel receive time, plain or encrypted."""

    __slots__ = ("early", "fd", "incoming", "loop", "offset", "outgoing", "sock", "tls")

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        self.sock = sock
        self.loop = loop
        self.fd = sock.fileno()
        # Bytes of the first request already written by `connect` (see `Early`).
        self.early = 0
        self.tls: ssl.SSLObject | None = None
        self.incoming = self.outgoing = ssl.MemoryBIO()
        self.offset = 0.0
        self.sync_clock()

    def sync_clock(self) -> None:
        """Kernel times are wall-clock; this maps them onto perf_counter's timeline. Both clocks
        run at the same NTP-adjusted rate, so only a step of the wall clock moves the offset:
        taken again for every exchange on a kept-alive connection."""
        self.offset = clock_offset()

    def close(self) -> None:
        # A reader left registered on a closed fd would be found again by the next socket that
        # gets the same number (uvloop keeps one poll handle per fd): always drop it first. Not
        # registered, this is a dict lookup, no system call.
        self.loop.remove_reader(self.fd)
        self.sock.close()

    def read(self) -> tuple[bytes, float] | None:
        """One read of what the socket holds and its kernel time; None when nothing is there."""
        try:
            data, ancillary, _, _ = self.sock.recvmsg(READ_SIZE, TIMESTAMP_CMSG_SPACE)
        except (BlockingIOError, InterruptedError):
            return None
        now = time.perf_counter()
        kernel_ns = kernel_time_ns(ancillary)
        if kernel_ns is None:
            return data, now
        at = kernel_ns * 1e-9 - self.offset
        # Past `now` only if the wall clock stepped in between: the read's own time then.
        return data, at if at <= now else now

    async def readable(self, loop: asyncio.AbstractEventLoop) -> tuple[bytes, float]:
        while True:
            got = self.read()
            if got is not None:
                return got
            await wait(loop, self.fd, loop.add_reader, loop.remove_reader)

    async def send(self, loop: asyncio.AbstractEventLoop, data: bytes) -> None:
        if self.tls is not None:
            self.tls.write(data)
            data = self.outgoing.read()
        await self.send_raw(loop, data)

    async def send_raw(self, loop: asyncio.AbstractEventLoop, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[self.sock.send(view) :]
            except (BlockingIOError, InterruptedError):
                await wait(loop, self.fd, loop.add_writer, loop.remove_writer)

    async def start_tls(
        self,
        loop: asyncio.AbstractEventLoop,
        context: ssl.SSLContext,
        server_name: str,
        marks: Marks,
    ) -> None:
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname=server_name)
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                pass
            if self.outgoing.pending:
                await self.send_raw(loop, self.outgoing.read())
                if marks.tls_start is None:
                    marks.tls_start = time.perf_counter()
            data, marks.tls_end = await self.readable(loop)
            if not data:
                raise WireFailure(Reason.RESET, "connection closed during the TLS handshake")
            self.incoming.write(data)
        if self.outgoing.pending:
            await self.send_raw(loop, self.outgoing.read())
        self.tls = tls

    def feed(self, sink: Sink) -> None:
        """Reader callback: what the socket holds, decrypted if need be, to the sink.

        A few reads per call, then back to the loop: a server sending faster than the parser
        reads must not keep the loop (every other probe, /metrics) to itself, nor outrun the
        probe's timeout.
        """
        for _ in range(_READS_PER_TURN):
            if sink.done.done():
                return
            try:
                got = self.read()
            except OSError as exc:
                sink.closed(exc)
                return
            if got is None:
                return
            data, at = got
            if self.tls is None:
                if data:
                    sink.received(data, at)
                else:
                    sink.closed(None)
                continue
            if data:
                self.incoming.write(data)
            else:
                self.incoming.write_eof()
            self._decrypt(sink, at)
            if not data:
                # After EOF nothing more will come, whatever the TLS layer still waits for.
                sink.closed(None)
                return
            if self.outgoing.pending:
                # A TLS 1.3 KeyUpdate answer, say: best effort, the socket has room for it.
                with suppress(OSError):
                    self.sock.send(self.outgoing.read())

    def _decrypt(self, sink: Sink, at: float) -> None:
        assert self.tls is not None
        while not sink.done.done():
            try:
                plain = self.tls.read(READ_SIZE)
            except ssl.SSLWantReadError:
                return
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                # close_notify, or a server that just closed (as most do): EOF either way; the
                # framing above says whether the data was complete.
                sink.closed(None)
                return
            except ssl.SSLError as exc:
                sink.fail(Reason.TLS, f"TLS error: {exc.reason or exc}")
                return
            if not plain:
                sink.closed(None)
                return
            sink.received(plain, at)

    async def stream(self, loop: asyncio.AbstractEventLoop, sink: Sink) -> None:
        """Feed the sink from the reader callback until it is done (the reader may be registered
        already, by `connect`'s early request: registering it again is a no-op)."""
        loop.add_reader(self.fd, self.feed, sink)
        try:
            await sink.done
        finally:
            loop.remove_reader(self.fd)

    def idle_and_open(self) -> bool:
        """A kept-alive connection may be reused: nothing arrived and the server did not close."""
        if self.tls is not None and (self.incoming.pending or self.tls.pending()):
            return False  # leftovers of the last response would be read as the next one
        try:
            data = self.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False
        if not data or self.tls is None:
            return False
        # TLS 1.3 sends session tickets after the handshake; those are not a response.
        self.incoming.write(data)
        try:
            stray = self.tls.read(READ_SIZE)
        except ssl.SSLWantReadError:
            return True
        except ssl.SSLError:
            return False
        return not stray


async def wait(
    loop: asyncio.AbstractEventLoop,
    fd: int,
    add: Callable[..., None],
    remove: Callable[[int], object],
) -> None:
    waiter: asyncio.Future[None] = loop.create_future()
    add(fd, _wake, waiter)
    try:
        await waiter
    finally:
        remove(fd)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def literal_addresses(host: str, port: int | None, family: int) -> tuple[Any, ...] | None:
    """The addresses of an IP literal (no lookup to time); None for a name."""
    try:
        infos = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)
    except socket.gaierror:
        return None  # a name (or a family mismatch, reported by the lookup at probe time)
    return tuple(infos)


async def resolve(
    loop: asyncio.AbstractEventLoop, host: str, port: int, family: int, marks: Marks
) -> list[Any]:
    marks.dns_start = time.perf_counter()
    try:
        return await loop.getaddrinfo(host, port, family=family, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        why = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
        raise WireFailure(Reason.DNS, f"cannot resolve {host}: {why}") from None
    finally:
        marks.dns += time.perf_counter() - marks.dns_start
        marks.dns_start = None


class Early:
    """A request `connect` writes from the loop's writability callback, the moment the handshake
    completes, and the sink it then starts feeding: the request leaves without waiting for the
    probe's task to be woken (a turn of the loop behind every other ready callback), and the
    connection keeps one reader registration from then on instead of a writer's and a
    reader's (each a poll handle: epoll_ctl and ioctl calls)."""

    __slots__ = ("request", "sink")

    def __init__(self, request: bytes, sink: Sink) -> None:
        self.request = request
        self.sink = sink


async def connect(
    loop: asyncio.AbstractEventLoop,
    infos: Any,
    where: str,
    marks: Marks,
    reason: Reason,
    early: Early | None = None,
) -> Conn:
    """A connection to the first of `infos` that answers (Happy Eyeballs when there are more).

    With `early`, a single address's request is written as soon as the handshake completes
    (`Conn.early` says how much of it was); Happy Eyeballs leaves it to the caller."""
    if len(infos) > 1:
        marks.syn = time.perf_counter()
        try:
            sock = await aiohappyeyeballs.start_connection(addr_infos=list(infos), loop=loop)
        except OSError as exc:
            why = os_reason(exc)
            raise WireFailure(reason, f"cannot connect to {where}: {why}") from None
        marks.tcp = time.perf_counter()
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        marks.handshake = handshake_rtt(sock, sock.family)
        return Conn(sock, loop)
    family, _, proto, _, address = infos[0]
    # Non-blocking from socket(2) on: no separate ioctl per probe.
    sock = socket.socket(family, _NONBLOCKING_STREAM, proto)
    conn = Conn(sock, loop)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        marks.syn = time.perf_counter()
        err = sock.connect_ex(address)
        if err == errno.EINPROGRESS:
            waiter: asyncio.Future[int] = loop.create_future()
            loop.add_writer(conn.fd, _connected, waiter, conn, marks, early)
            try:
                err = await waiter
            finally:
                loop.remove_writer(conn.fd)
        else:
            marks.tcp = time.perf_counter()
            marks.handshake = handshake_rtt(sock, family)
        if err:
            why = os.strerror(err).lower()
            raise WireFailure(reason, f"cannot connect to {where}: {why}")
    except BaseException:
        conn.close()
        raise
    return conn


def _connected(waiter: asyncio.Future[int], conn: Conn, marks: Marks, early: Early | None) -> None:
    """Writability callback of a connect in progress: the handshake's outcome, and the early
    request written at once when there is one."""
    if waiter.done():
        return
    err = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    marks.tcp = time.perf_counter()
    # Before the request leaves: once its ACK is back the kernel's RTT is no longer the
    # handshake's alone (on loopback that can be before this callback returns).
    marks.handshake = handshake_rtt(conn.sock, conn.sock.family)
    if not err and early is not None:
        try:
            conn.early = conn.sock.send(early.request)
        except OSError:
            # Nothing written: the caller's own send meets the error (or the room) again.
            conn.early = 0
        if conn.early:
            marks.sent = time.perf_counter()
            if conn.early == len(early.request):
                conn.loop.add_reader(conn.fd, conn.feed, early.sink)
    waiter.set_result(err)


async def secure(
    loop: asyncio.AbstractEventLoop,
    conn: Conn,
    context: ssl.SSLContext,
    server_name: str,
    marks: Marks,
) -> None:
    """The TLS handshake on `conn`; on failure the connection is closed."""
    marks.secure = True
    try:
        await conn.start_tls(loop, context, server_name, marks)
    except ssl.SSLError as exc:
        conn.close()
        raise tls_failure(exc) from None
    except OSError as exc:
        conn.close()
        raise WireFailure(Reason.RESET, f"connection error: {os_reason(exc)}") from None
    except BaseException:
        conn.close()
        raise


def os_reason(exc: OSError) -> str:
    if exc.errno:
        return os.strerror(exc.errno).lower()
    # aiohappyeyeballs folds several attempts into one OSError without errno.
    text = str(exc)
    return "connection refused" if "Connect call failed" in text else text


def tls_failure(exc: ssl.SSLError) -> WireFailure:
    if isinstance(exc, ssl.SSLCertVerificationError):
        why = exc.verify_message or exc.reason
        return WireFailure(Reason.TLS, f"certificate verification failed: {why}")
    return WireFailure(Reason.TLS, f"TLS error: {exc.reason or type(exc).__name__}")


def connection_phases(phases: dict[str, float], m: Marks, end: float) -> float:
    """dns, connect, connect_tunnel and tls from the marks, into `phases`; their sum.

    They do not overlap, and one cut short by a failure or timeout ends at `end`.
    """
    if m.dns_start is not None:
        m.dns += end - m.dns_start
    total = 0.0
    if m.dns:
        phases["dns"] = total = m.dns
    if m.syn is None:
        return total
    connect = (m.tcp if m.tcp is not None else end) - m.syn
    if m.handshake is not None:
        connect = min(connect, m.handshake)
    phases["connect"] = connect
    total += connect
    if m.tunnel_start is not None:
        tunnel_to = m.tunnel_end if m.tunnel_end is not None else end
        phases["connect_tunnel"] = tunnel_to - m.tunnel_start
        total += phases["connect_tunnel"]
    if m.tcp is not None and m.secure:
        # The handshake's bytes on the wire: from the ClientHello to the kernel's receive
        # time of the server's last handshake flight.
        tls_from = m.tls_start if m.tls_start is not None else (m.tunnel_end or m.tcp)
        tls_to = m.tls_end if m.ready is not None and m.tls_end is not None else end
        phases["tls"] = max(0.0, tls_to - tls_from)
        total += phases["tls"]
    return total
