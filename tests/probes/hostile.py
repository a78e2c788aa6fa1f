"""Hostile servers for probe tests: each is an async context manager yielding (host, port).

They are real sockets on loopback. Every server loop is bounded in bytes or steps, and leaving
the context closes the listener and aborts every connection still open, so a probe that hangs
never outlives its test. Pass a `Stats` to see what the server saw (connections, bytes sent).

    async with hostile.hanging() as (host, port):
        ...
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import struct
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

# Longest any hostile server keeps a connection busy on its own; tests leave the context sooner.
MAX_SECONDS = 30.0


@dataclasses.dataclass
class Stats:
    """What a hostile server observed; filled in while it runs."""

    connections: int = 0
    bytes_received: int = 0
    bytes_sent: int = 0


@contextlib.asynccontextmanager
async def serve(
    handler: Handler, host: str = "127.0.0.1", stats: Stats | None = None
) -> AsyncIterator[tuple[str, int]]:
    """Run `handler` for every connection on host:<free port>; the building block of the rest."""
    seen = stats if stats is not None else Stats()
    tasks: set[asyncio.Task[None]] = set()
    closing = False
    transports: list[asyncio.BaseTransport] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.connections += 1
        transports.append(writer.transport)
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            async with asyncio.timeout(MAX_SECONDS):
                await handler(reader, writer)
        except (OSError, TimeoutError):
            pass  # the probe hung up or the bound ran out: both are expected here
        except asyncio.CancelledError:
            # Python 3.11's start_server logs a cancelled handler as an error; a cancel at
            # shutdown is ours and is not one.
            if not closing:
                raise
        finally:
            writer.transport.abort()

    server = await asyncio.start_server(on_connect, host, 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield host, port
    finally:
        closing = True
        server.close()
        for transport in transports:
            transport.abort()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader, stats: Stats | None = None) -> bytes:
    """Read up to the end of an HTTP request head (or EOF, or 64 KiB)."""
    data = b""
    while b"\r\n\r\n" not in data and len(data) < 65536:
        chunk = await reader.read(65536)
        if not chunk:
            break
        data += chunk
    if stats is not None:
        stats.bytes_received += len(data)
    return data


async def _drain_until_eof(reader: asyncio.StreamReader, stats: Stats) -> None:
    # Bounded by MAX_SECONDS in serve() and by the peer closing.
    while chunk := await reader.read(65536):
        stats.bytes_received += len(chunk)


@contextlib.asynccontextmanager
async def refused(host: str = "127.0.0.1") -> AsyncIterator[tuple[str, int]]:
    """A port that refuses connections: bound (so nobody else takes it) but not listening."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        yield host, sock.getsockname()[1]


@contextlib.asynccontextmanager
async def hanging(
    host: str = "127.0.0.1", stats: Stats | None = None
) -> AsyncIterator[tuple[str, int]]:
    """Accepts, reads everything, never answers. Also a TLS server that never finishes the
    handshake: the ClientHello is read and ignored."""
    seen = stats if stats is not None else Stats()

    async def handle(reader: asyncio.StreamReader, _writer: asyncio.StreamWriter) -> None:
        await _drain_until_eof(reader, seen)

    async with serve(handle, host, seen) as address:
        yield address


# The same server: named for what a TLS probe sees.
tls_stall = hanging


def _rst(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST instead of a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@contextlib.asynccontextmanager
async def resetting(
    prefix: bytes = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\npartial body",
    host: str = "127.0.0.1",
    stats: Stats | None = None,
) -> AsyncIterator[tuple[str, int]]:
    """Reads the request, sends `prefix` (by default half a response), then resets."""
    seen = stats if stats is not None else Stats()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader, seen)
        writer.write(prefix)
        await writer.drain()
        seen.bytes_sent += len(prefix)
        # Let the prefix reach the peer first, so the reset lands mid-response.
        await asyncio.sleep(0.05)
        _rst(writer)

    async with serve(handle, host, seen) as address:
        yield address


@contextlib.asynccontextmanager
async def garbage(
    payload: bytes = b"SPDY/9 banana\r\n\x00\x01\x02 not http at all\r\n\r\n",
    host: str = "127.0.0.1",
    stats: Stats | None = None,
) -> AsyncIterator[tuple[str, int]]:
    """Reads the request and answers with `payload` (by default not HTTP), then closes."""
    seen = stats if stats is not None else Stats()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader, seen)
        writer.write(payload)
        await writer.drain()
        seen.bytes_sent += len(payload)
        writer.close()

    async with serve(handle, host, seen) as address:
        yield address


@contextlib.asynccontextmanager
async def endless_body(
    chunked: bool = False,
    host: str = "127.0.0.1",
    stats: Stats | None = None,
    max_bytes: int = 1 << 30,
) -> AsyncIterator[tuple[str, int]]:
    """A 200 whose body never ends (up to `max_bytes`): read-until-close, or chunked encoding.

    `stats.bytes_sent` shows how much the peer actually pulled before hanging up.
    """
    seen = stats if stats is not None else Stats()
    block = b"x" * 65536
    piece = b"%x\r\n%b\r\n" % (len(block), block) if chunked else block
    framing = b"Transfer-Encoding: chunked\r\n" if chunked else b"Connection: close\r\n"

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader, seen)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n" + framing + b"\r\n")
        while seen.bytes_sent < max_bytes:
            writer.write(piece)
            await writer.drain()
            seen.bytes_sent += len(piece)

    async with serve(handle, host, seen) as address:
        yield address


@contextlib.asynccontextmanager
async def slow_loris(
    delay: float = 0.02,
    host: str = "127.0.0.1",
    stats: Stats | None = None,
) -> AsyncIterator[tuple[str, int]]:
    """Answers with a valid status line and headers, one byte every `delay` seconds, forever
    (up to MAX_SECONDS): never a complete response, never idle for long."""
    seen = stats if stats is not None else Stats()
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
    filler = b"X-Padding: " + b"a" * 4000 + b"\r\n"

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader, seen)
        stream = head + filler * int(MAX_SECONDS / delay / len(filler) + 1)
        for i in range(int(MAX_SECONDS / delay)):
            writer.write(stream[i : i + 1])
            await writer.drain()
            seen.bytes_sent += 1
            await asyncio.sleep(delay)

    async with serve(handle, host, seen) as address:
        yield address


@contextlib.asynccontextmanager
async def closing(
    host: str = "127.0.0.1", stats: Stats | None = None
) -> AsyncIterator[tuple[str, int]]:
    """Accepts and closes at once, before any byte is exchanged."""
    seen = stats if stats is not None else Stats()

    async def handle(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    async with serve(handle, host, seen) as address:
        yield address


@contextlib.asynccontextmanager
async def gzip_bomb(
    size: int = 16 << 20, host: str = "127.0.0.1", stats: Stats | None = None
) -> AsyncIterator[tuple[str, int]]:
    """A small gzip body that inflates to `size` bytes of zeros."""
    seen = stats if stats is not None else Stats()
    packer = zlib.compressobj(6, zlib.DEFLATED, 31)  # 31: gzip framing
    block = bytes(1 << 20)
    body = b"".join(packer.compress(block) for _ in range(size >> 20)) + packer.flush()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader, seen)
        head = (
            b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Type: text/plain\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
        )
        writer.write(head + body)
        await writer.drain()
        seen.bytes_sent += len(head) + len(body)
        await _drain_until_eof(reader, seen)

    async with serve(handle, host, seen) as address:
        yield address
