"""HTTP/1.1 on a wire connection: the request bytes, the way to the origin (direct, or through
an egress proxy with a CONNECT tunnel for https), and the response parsed by llhttp (httptools)
as it is read.

Every timestamp is the kernel's receive time of the bytes (`Conn.feed`), and a response costs a
few dozen Python calls instead of a general-purpose client's layers (request, connector, pool,
stream reader), which is most of the CPU a probe takes (docs/performance.md).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import ssl
import time
import zlib
from typing import Any

import httptools
from pydantic import SecretStr
from yarl import URL

from exporter import __version__
from exporter.metrics import Reason
from exporter.wire.connection import (
    Conn,
    Early,
    Marks,
    WireFailure,
    connect,
    os_reason,
    resolve,
    secure,
    tls_failure,
)

USER_AGENT = f"failover_exporter/{__version__}"


@dataclasses.dataclass(frozen=True)
class Proxy:
    host: str
    port: int
    # The Proxy-Authorization value, sent to the proxy only (never to an origin).
    auth: SecretStr | None = dataclasses.field(repr=False)
    addresses: tuple[Any, ...] | None = dataclasses.field(repr=False)


def request(
    method: str,
    url: URL,
    headers: tuple[tuple[str, str], ...],
    secrets: tuple[tuple[str, SecretStr], ...],
    body: bytes | None,
    keep_alive: bool,
    proxy: Proxy | None = None,
) -> bytes:
    """The request's bytes; through a proxy, a plain http one goes in absolute form with the
    proxy's credentials (an https origin gets its request inside the tunnel, without them)."""
    target = url.raw_path_qs or "/"
    if proxy is not None and url.scheme == "http":
        target = f"http://{url.host_port_subcomponent}{target}"
    lines = [f"{method} {target} HTTP/1.1"]
    if not any(k.lower() == "host" for k, _ in headers):
        lines.append(f"Host: {url.host_port_subcomponent}")
    lines.extend(f"{k}: {v}" for k, v in headers)
    lines.extend(f"{k}: {v.get_secret_value()}" for k, v in secrets)
    if proxy is not None and proxy.auth is not None and url.scheme == "http":
        lines.append(f"Proxy-Authorization: {proxy.auth.get_secret_value()}")
    if not keep_alive:
        lines.append("Connection: close")
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    elif method not in ("GET", "HEAD", "OPTIONS"):
        # An empty POST says so: some front ends answer 411 Length Required otherwise.
        lines.append("Content-Length: 0")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode()
    return head + body if body is not None else head


class Hop:
    """Where one request goes: the URL's origin, the TLS settings and the request bytes."""

    __slots__ = ("addresses", "host", "port", "request", "server_name", "ssl", "url")

    def __init__(
        self,
        url: URL,
        request: bytes,
        ssl_ctx: ssl.SSLContext | None,
        server_name: str | None,
        addresses: Any = None,
    ) -> None:
        self.url = url
        self.host = url.raw_host or ""
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.request = request
        self.ssl = ssl_ctx if url.scheme == "https" else None
        # The configured name stands for the configured origin only (like credentials).
        self.server_name = server_name or self.host
        self.addresses = addresses


async def open_hop(
    loop: asyncio.AbstractEventLoop,
    hop: Hop,
    family: int,
    proxy: Proxy | None,
    marks: Marks,
    response: Response | None = None,
) -> Conn:
    """A connection ready for the hop's request: to the origin or the proxy, through a CONNECT
    tunnel for https via a proxy, then TLS when the URL says https. With `response`, a plain
    request straight to the origin is written as the handshake completes (`connection.Early`)
    and its response is read into `response` from then on; `exchange` sends what is left."""
    if proxy is None:
        infos = hop.addresses or await resolve(loop, hop.host, hop.port, family, marks)
        early = Early(hop.request, response) if response is not None and hop.ssl is None else None
        where = f"{hop.host}:{hop.port}"
        conn = await connect(loop, infos, where, marks, Reason.CONNECT, early)
    else:
        where = f"proxy {proxy.host}:{proxy.port}"
        try:
            infos = proxy.addresses or await resolve(loop, proxy.host, proxy.port, family, marks)
        except WireFailure as exc:
            raise WireFailure(Reason.PROXY_CONNECT, f"{where}: {exc.message}") from None
        conn = await connect(loop, infos, where, marks, Reason.PROXY_CONNECT)
    if hop.ssl is None:
        return conn
    if proxy is not None:
        try:
            await _tunnel(loop, conn, hop, proxy, marks)
        except BaseException:
            conn.close()
            raise
    await secure(loop, conn, hop.ssl, hop.server_name, marks)
    return conn


# What a response head (status line and headers) may take, like common clients (Go: 1 MiB,
# aiohttp: 8 KiB a line): beyond it a server is feeding the parser, not answering.
MAX_HEAD_BYTES = 64 << 10
_MAX_HEADERS = 100
_MAX_INTERIM = 5


class Response:
    """One request's response, parsed by llhttp as the bytes are read, stamped with the kernel's
    receive times: a timestamp taken when a busy loop got round to the socket would add the
    exporter's own scheduling delay to the target's latency."""

    def __init__(self, loop: asyncio.AbstractEventLoop, head: bool, limit: int, keep: bool):
        self.done: asyncio.Future[None] = loop.create_future()
        # parser -> self -> parser is a cycle: `release` breaks it, so a finished exchange is
        # freed by reference counting instead of waiting for (and loading) the cycle collector.
        self.parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self.head = head
        self.limit = limit
        # The body is kept only when a regex will read it; otherwise it is only counted.
        self.keep = keep
        self.status = 0
        self.reason = b""
        self.headers: dict[bytes, bytes] = {}
        self.header_count = 0
        self.head_bytes = 0
        self.interim = 0
        self.chunks: list[bytes] = []
        self.size = 0
        self.wire_size = 0
        self.first_data: float | None = None
        self.last_data: float | None = None
        self.headers_done = False
        self.complete = False
        self.until_close = False
        self.keep_alive = False
        # Bytes followed the response (a second response, or junk): the connection is not
        # reused, and nothing after the first final response is believed.
        self.extra = False
        self.decoder: Any = None
        self.raw_deflate = False

    def received(self, data: bytes, at: float) -> None:
        if self.first_data is None:
            self.first_data = at
        self.last_data = at
        if self.done.done() or self.parser is None:
            if self.complete:
                self.extra = True
            return
        if not self.headers_done:
            # Counted over earlier reads: this one may hold the head's end and a body.
            if self.head_bytes > MAX_HEAD_BYTES:
                self.fail(Reason.PROTOCOL, f"response head exceeds {MAX_HEAD_BYTES} bytes")
                return
            self.head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._complete()
        except httptools.HttpParserError as exc:
            if not self.done.done():
                detail = str(exc) or type(exc).__name__
                self.fail(Reason.PROTOCOL, f"invalid HTTP response: {detail}")

    def closed(self, exc: OSError | None) -> None:
        if self.done.done():
            return
        if self.headers_done and self.until_close and exc is None:
            self._complete()
        elif exc is not None and exc.errno:
            self.fail(Reason.RESET, f"connection error: {os.strerror(exc.errno).lower()}")
        elif self.first_data is None:
            self.fail(Reason.RESET, "connection closed before a response")
        else:
            self.fail(Reason.RESET, "connection closed mid-response")

    # httptools callbacks. llhttp goes on parsing after a response in the same read: once the
    # exchange is done, every callback only notes that more came.

    def on_message_begin(self) -> None:
        if self.done.done():
            self.extra = True

    def on_status(self, status: bytes) -> None:
        if not self.done.done() and len(self.reason) < 256:
            self.reason += status[:256]

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.done.done():
            return
        self.header_count += 1
        if self.header_count > _MAX_HEADERS:
            self.fail(Reason.PROTOCOL, f"more than {_MAX_HEADERS} response headers")
            return
        self.headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        if self.done.done():
            return
        assert self.parser is not None  # called back from feed_data
        self.status = self.parser.get_status_code()
        if 100 <= self.status < 200:
            return
        self.headers_done = True
        headers = self.headers
        chunked = b"chunked" in headers.get(b"transfer-encoding", b"").lower()
        self.until_close = (
            not chunked and b"content-length" not in headers and self.status not in (204, 304)
        )
        encoding = headers.get(b"content-encoding", b"").strip().lower()
        if encoding in (b"gzip", b"x-gzip", b"deflate"):
            # 32 + MAX_WBITS: a zlib or gzip header, detected.
            self.decoder = zlib.decompressobj(32 + zlib.MAX_WBITS)
            self.raw_deflate = encoding == b"deflate"
        if self.head:
            # No body follows whatever the headers say; llhttp does not know the method, so
            # ask it now whether the connection stays open.
            self.keep_alive = self.parser.should_keep_alive()
            self._complete()

    def on_body(self, body: bytes) -> None:
        if self.done.done():
            return
        self.wire_size += len(body)
        if self.decoder is not None:
            body = self._inflate(body)
            if self.done.done():
                return
        self._take(body)

    def _take(self, body: bytes) -> None:
        """Count (inflated) body bytes against the limit, and keep them if a regex will read."""
        self.size += len(body)
        if self.size > self.limit or self.wire_size > self.limit:
            self.fail(Reason.BODY_TOO_LARGE, f"body exceeds max_body_bytes ({self.limit})")
        elif self.keep:
            self.chunks.append(body)

    def _inflate(self, body: bytes) -> bytes:
        decoder = self.decoder
        if decoder.eof:
            self.fail(Reason.PROTOCOL, "data after the end of the compressed body")
            return b""
        room = self.limit - self.size
        try:
            # Inflate at most one byte past the limit: a small compressed body must not balloon
            # in memory before it is counted.
            out: bytes = decoder.decompress(body, room + 1)
        except zlib.error as exc:
            if self.raw_deflate and not self.size:
                # "deflate" without the zlib wrapper, as some servers send it.
                self.raw_deflate = False
                self.decoder = zlib.decompressobj(-zlib.MAX_WBITS)
                return self._inflate(body)
            self.fail(Reason.PROTOCOL, f"invalid compressed body: {exc}")
            return b""
        self.raw_deflate = False
        if decoder.unused_data:
            self.fail(Reason.PROTOCOL, "data after the end of the compressed body")
            return b""
        return out

    def on_message_complete(self) -> None:
        if self.done.done():
            return
        if not self.headers_done:
            # An interim 1xx response: the final one follows on the same connection.
            self.interim += 1
            if self.interim > _MAX_INTERIM:
                self.fail(Reason.PROTOCOL, f"more than {_MAX_INTERIM} interim (1xx) responses")
                return
            self.headers.clear()
            self.header_count = 0
            self.reason = b""
            return
        # Asked now: llhttp forgets it once the callback returns.
        assert self.parser is not None  # called back from feed_data
        self.keep_alive = self.parser.should_keep_alive()
        self._complete()

    def _complete(self) -> None:
        if self.done.done():
            return
        if self.decoder is not None and not self.head:
            try:
                tail = self.decoder.flush()
            except zlib.error as exc:
                self.fail(Reason.PROTOCOL, f"invalid compressed body: {exc}")
                return
            self._take(tail)
            if self.done.done():
                return
        self.complete = True
        self.done.set_result(None)

    def release(self) -> None:
        self.parser = None

    def fail(self, reason: Reason, message: str) -> None:
        self.done.set_exception(WireFailure(reason, message))
        # Nobody may be waiting any more (a timeout): do not log "exception never retrieved".
        self.done.exception()


async def exchange(
    loop: asyncio.AbstractEventLoop, conn: Conn, request: bytes, response: Response, marks: Marks
) -> None:
    """Write the request, then read until the response is complete (or has failed)."""
    if conn.early:
        # `connect` wrote (part of) the request the moment the handshake completed.
        request, conn.early = request[conn.early :], 0
        if not request:
            await conn.stream(loop, response)
            return
    try:
        await conn.send(loop, request)
    except ssl.SSLError as exc:
        raise tls_failure(exc) from None
    except OSError as exc:
        raise WireFailure(Reason.RESET, f"connection error: {os_reason(exc)}") from None
    marks.sent = time.perf_counter()
    await conn.stream(loop, response)


_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([0-9]{3})[ \t]?([\x20-\x7e]{0,80})")


async def _tunnel(
    loop: asyncio.AbstractEventLoop, conn: Conn, hop: Hop, proxy: Proxy, marks: Marks
) -> None:
    """CONNECT through the proxy to the origin; the proxy's answer is read raw, not by llhttp:
    after a 2xx the bytes that follow are the origin's TLS, not an HTTP body."""
    host = f"[{hop.host}]" if ":" in hop.host else hop.host
    authority = f"{host}:{hop.port}"
    lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}", f"User-Agent: {USER_AGENT}"]
    if proxy.auth is not None:
        lines.append(f"Proxy-Authorization: {proxy.auth.get_secret_value()}")
    where = f"proxy {proxy.host}:{proxy.port}"
    marks.tunnel_start = at = time.perf_counter()
    try:
        await conn.send_raw(loop, ("\r\n".join(lines) + "\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            data, at = await conn.readable(loop)
            if not data:
                raise WireFailure(Reason.PROXY_ERROR, f"{where} closed the connection on CONNECT")
            head += data
            if len(head) > MAX_HEAD_BYTES:
                raise WireFailure(Reason.PROXY_ERROR, f"{where}: CONNECT answer head too long")
    except OSError as exc:
        why = os_reason(exc)
        raise WireFailure(Reason.PROXY_ERROR, f"{where}: error on CONNECT: {why}") from None
    marks.tunnel_end = at
    head, rest = head.split(b"\r\n\r\n", 1)
    match = _STATUS_LINE.match(head)
    if match is None:
        raise WireFailure(Reason.PROXY_ERROR, f"{where}: not an HTTP answer to CONNECT")
    status = int(match[1])
    text = f"{status} {match[2].decode('ascii')}".rstrip()
    # 407 is the standard answer; tinyproxy answers wrong credentials with 401. An answer to
    # CONNECT is always the proxy's own, so both are the proxy's auth.
    if status in (401, 407):
        sent = "rejected the credentials" if proxy.auth is not None else "requires credentials"
        raise WireFailure(Reason.PROXY_AUTH, f"{where} {sent} ({text})")
    if not 200 <= status < 300:
        raise WireFailure(Reason.PROXY_ERROR, f"{where} answered CONNECT with {text}")
    if rest:
        # The origin speaks only after the ClientHello: these bytes came from the proxy.
        raise WireFailure(Reason.PROXY_ERROR, f"{where} sent data after its CONNECT answer")
