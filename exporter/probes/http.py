"""HTTP(S) probe: status, body checks, phase timings, certificate expiry.

A new connection per probe by default, so connect and TLS time are measured every time.

The client is one HTTP/1.1 exchange on an asyncio.Protocol, parsed by llhttp (httptools): every
timestamp is taken in the loop's socket callbacks, and a probe costs a few dozen Python calls
instead of a general-purpose client's layers (request, connector, pool, stream reader), which
is most of the CPU a probe takes (docs/performance.md).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import errno
import os
import re
import socket
import ssl
import time
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any, Literal

import aiohappyeyeballs
import httptools
from pydantic import Field, SecretStr, ValidationInfo, field_validator
from yarl import URL

from exporter import __version__
from exporter.fields import Model, SecretSource, SettingError, register_secret
from exporter.metrics import TLS_NOT_AFTER, Reason
from exporter.probes.base import (
    FAMILIES,
    SO_TIMESTAMPNS,
    TIMESTAMP_CMSG_SPACE,
    IpFamily,
    ProbeContext,
    ProbeFailure,
    ProbeKind,
    ProbeSettings,
    handshake_rtt,
    kernel_time_ns,
    register,
)
from exporter.tlsconf import TlsSettings, client_context, peer_cert_not_after

_USER_AGENT = f"failover_exporter/{__version__}"
_MAX_REDIRECTS = 10
_REDIRECTS = frozenset((301, 302, 303, 307, 308))
# Header names a user may not set: the client owns the message framing.
_FRAMING = frozenset(("content-length", "transfer-encoding", "connection"))


class BasicAuth(Model):
    username: str
    password: SecretSource


class HttpSettings(ProbeSettings):
    kind: Literal["http"]
    url: str
    method: Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] = "GET"
    headers: dict[str, str] = Field(default_factory=dict)
    body: str | None = None
    valid_status_codes: list[int] = Field(default_factory=list)
    body_must_match: list[str] = Field(default_factory=list)
    body_must_not_match: list[str] = Field(default_factory=list)
    follow_redirects: bool = True
    tls: TlsSettings = TlsSettings()
    ip_family: IpFamily = "any"
    keep_alive: bool = False
    max_body_bytes: int = Field(1 << 20, ge=0, le=1 << 30)
    basic_auth: BasicAuth | None = None
    bearer_token: SecretSource | None = None
    # Headers whose values are secrets (an API key): read from env or file like the auth keys,
    # never in logs, the status page or errors, dropped when a redirect leaves the origin.
    secret_headers: dict[str, SecretSource] = Field(default_factory=dict)
    # An egress proxy (http:// only): absolute-form requests for http:// targets, a CONNECT
    # tunnel (then TLS to the origin, with the origin's name) for https:// ones.
    proxy_url: str | None = None
    proxy_auth: BasicAuth | None = None

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        url = URL(value)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("must be an absolute http:// or https:// URL")
        if url.user or url.password:
            raise ValueError("must not contain credentials; use basic_auth with env or file")
        return value

    @field_validator("headers")
    @classmethod
    def _check_headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            _check_header_name(name)
            if any(c in text for c in "\r\n\0"):
                raise ValueError(f"header {name!r}: value must not contain CR, LF or NUL")
        return value

    @field_validator("secret_headers")
    @classmethod
    def _check_secret_headers(
        cls, value: dict[str, SecretSource], info: ValidationInfo
    ) -> dict[str, SecretSource]:
        plain = {k.lower() for k in info.data.get("headers") or {}}
        auth = info.data.get("basic_auth") or info.data.get("bearer_token")
        for name in value:
            _check_header_name(name)
            if name.lower() in plain:
                raise ValueError(f"header {name!r} is in both headers and secret_headers")
            if name.lower() == "authorization" and auth:
                raise ValueError("Authorization comes from basic_auth or bearer_token already")
        return value

    @field_validator("proxy_url")
    @classmethod
    def _check_proxy_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        url = URL(value)
        if url.scheme != "http" or not url.host:
            raise ValueError("must be an http:// URL (host and port of the proxy)")
        if url.user or url.password:
            raise ValueError("must not contain credentials; use proxy_auth with env or file")
        if url.raw_path not in ("", "/") or url.query_string or url.fragment:
            raise ValueError("must be only scheme, host and port")
        return value

    @field_validator("proxy_auth")
    @classmethod
    def _check_proxy_auth(cls, value: BasicAuth | None, info: ValidationInfo) -> BasicAuth | None:
        if value is not None and not info.data.get("proxy_url"):
            raise ValueError("needs proxy_url")
        return value


def _check_header_name(name: str) -> None:
    if not re.fullmatch(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", name):
        raise ValueError(f"{name!r} is not a valid header name")
    if name.lower() in _FRAMING:
        raise ValueError(f"header {name!r} is set by the probe (keep_alive, body)")


@dataclasses.dataclass(frozen=True)
class Proxy:
    host: str
    port: int
    # The Proxy-Authorization value, sent to the proxy only (never to an origin).
    auth: SecretStr | None = dataclasses.field(repr=False)
    addresses: tuple[Any, ...] | None = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True)
class Http:
    url: URL
    method: str
    # User headers plus the defaults, without the secret one.
    headers: tuple[tuple[str, str], ...]
    # Authorization (from basic_auth or bearer_token) first, then secret_headers.
    secret_headers: tuple[tuple[str, SecretStr], ...]
    body: bytes | None
    valid_status: frozenset[int]
    must_match: tuple[re.Pattern[bytes], ...]
    must_not_match: tuple[re.Pattern[bytes], ...]
    follow_redirects: bool
    # None for a plain http URL without TLS settings: a redirect to https verifies with the
    # default context.
    ssl: ssl.SSLContext | None
    server_name: str | None
    family: int
    keep_alive: bool
    max_body_bytes: int
    # The first debug line of every probe, built once.
    summary: str
    # The first hop's request bytes, built once; they may hold the Authorization header.
    request: bytes = dataclasses.field(repr=False)
    # The first hop's addresses when the URL's host is an IP literal (no lookup to time).
    addresses: tuple[Any, ...] | None = dataclasses.field(repr=False)
    proxy: Proxy | None = None


def _regexes(patterns: list[str], field: str) -> tuple[re.Pattern[bytes], ...]:
    out = []
    for i, pattern in enumerate(patterns):
        try:
            out.append(re.compile(pattern.encode()))
        except re.error as exc:
            raise SettingError(f"{field}[{i}]", f"invalid regular expression: {exc}") from None
    return tuple(out)


def _literal_addresses(url: URL, family: int) -> tuple[Any, ...] | None:
    host = url.raw_host or ""
    try:
        infos = socket.getaddrinfo(
            host, url.port, family, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST
        )
    except socket.gaierror:
        return None  # a name (or a family mismatch, reported by the lookup at probe time)
    return tuple(infos)


def prepare(s: HttpSettings, base_dir: Path) -> Http:
    auth: SecretStr | None = None
    field = "basic_auth.password" if s.basic_auth else "bearer_token"
    try:
        if s.basic_auth is not None:
            password = s.basic_auth.password.resolve(base_dir).get_secret_value()
            pair = f"{s.basic_auth.username}:{password}".encode()
            auth = SecretStr("Basic " + base64.b64encode(pair).decode())
            register_secret(pair.decode())  # a target may echo user:pass or its base64
        elif s.bearer_token is not None:
            auth = SecretStr("Bearer " + s.bearer_token.resolve(base_dir).get_secret_value())
    except ValueError as exc:
        raise SettingError(field, str(exc)) from None
    secrets = [("Authorization", auth, field)] if auth is not None else []
    for name, source in s.secret_headers.items():
        field = f"secret_headers.{name}"
        try:
            secrets.append((name, source.resolve(base_dir), field))
        except ValueError as exc:
            raise SettingError(field, str(exc)) from None
    for _, secret, field in secrets:
        if any(c in secret.get_secret_value() for c in "\r\n\0"):
            raise SettingError(field, "must not contain CR, LF or NUL")
    secret_headers = tuple((name, secret) for name, secret, _ in secrets)
    url = URL(s.url)
    family = FAMILIES[s.ip_family]
    proxy = _proxy(s, base_dir, family)
    defaults = {"User-Agent": _USER_AGENT, "Accept": "*/*", "Accept-Encoding": "gzip, deflate"}
    given = {k.lower() for k in s.headers}
    headers = (
        *((k, v) for k, v in defaults.items() if k.lower() not in given),
        *s.headers.items(),
    )
    body = s.body.encode() if s.body is not None else None
    if s.follow_redirects and url.scheme == "http":
        # Loading the CA store takes tens of milliseconds: here, off the loop, not in the
        # probe that first follows a redirect to https.
        _default_ssl()
    return Http(
        url=url,
        method=s.method,
        headers=headers,
        secret_headers=secret_headers,
        body=body,
        valid_status=frozenset(s.valid_status_codes),
        must_match=_regexes(s.body_must_match, "body_must_match"),
        must_not_match=_regexes(s.body_must_not_match, "body_must_not_match"),
        follow_redirects=s.follow_redirects,
        ssl=client_context(s.tls, base_dir)
        if url.scheme == "https" or s.tls.model_fields_set
        else None,
        server_name=s.tls.server_name,
        family=family,
        keep_alive=s.keep_alive,
        max_body_bytes=s.max_body_bytes,
        summary=f"{s.method} {url.with_query(None)}",
        request=_request(s.method, url, headers, secret_headers, body, s.keep_alive, proxy),
        addresses=_literal_addresses(url, family),
        proxy=proxy,
    )


def _proxy(s: HttpSettings, base_dir: Path, family: int) -> Proxy | None:
    if s.proxy_url is None:
        return None
    url = URL(s.proxy_url)
    auth: SecretStr | None = None
    if s.proxy_auth is not None:
        try:
            password = s.proxy_auth.password.resolve(base_dir).get_secret_value()
        except ValueError as exc:
            raise SettingError("proxy_auth.password", str(exc)) from None
        pair = f"{s.proxy_auth.username}:{password}"
        if any(c in pair for c in "\r\n\0"):
            raise SettingError("proxy_auth", "must not contain CR, LF or NUL")
        register_secret(pair)  # a proxy's error page may echo what it was sent
        auth = SecretStr("Basic " + base64.b64encode(pair.encode()).decode())
    return Proxy(
        host=url.raw_host or "",
        port=url.port or 80,
        auth=auth,
        addresses=_literal_addresses(url, family),
    )


def _request(
    method: str,
    url: URL,
    headers: tuple[tuple[str, str], ...],
    secrets: tuple[tuple[str, SecretStr], ...],
    body: bytes | None,
    keep_alive: bool,
    proxy: Proxy | None = None,
) -> bytes:
    target = url.raw_path_qs or "/"
    if proxy is not None and url.scheme == "http":
        # Absolute form to the proxy; an https origin gets its request inside the tunnel.
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


# -- one exchange -----------------------------------------------------------------------------


class _Marks:
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


# What a response head (status line and headers) may take, like common clients (Go: 1 MiB,
# aiohttp: 8 KiB a line): beyond it a server is feeding the parser, not answering.
_MAX_HEAD_BYTES = 64 << 10
_MAX_HEADERS = 100
_MAX_INTERIM = 5


class _Exchange:
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
            if self.head_bytes > _MAX_HEAD_BYTES:
                self.fail(Reason.PROTOCOL, f"response head exceeds {_MAX_HEAD_BYTES} bytes")
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
        self.done.set_exception(ProbeFailure(reason, message))
        # Nobody may be waiting any more (a timeout): do not log "exception never retrieved".
        self.done.exception()


_NONBLOCKING_STREAM = socket.SOCK_STREAM | getattr(socket, "SOCK_NONBLOCK", 0)
_READ_SIZE = 65536
_READS_PER_TURN = 4


class _Conn:
    """One connection on a bare non-blocking socket; TLS runs in memory (ssl.MemoryBIO), so every
    byte is read here with its kernel receive time, plain or encrypted."""

    __slots__ = ("fd", "incoming", "offset", "outgoing", "sock", "tls")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.tls: ssl.SSLObject | None = None
        self.incoming = self.outgoing = ssl.MemoryBIO()
        self.offset = 0.0
        self.sync_clock()

    def sync_clock(self) -> None:
        """Kernel times are wall-clock; this maps them onto perf_counter's timeline. Both clocks
        run at the same NTP-adjusted rate, so only a step of the wall clock moves the offset:
        taken again for every exchange on a kept-alive connection."""
        self.offset = time.time() - time.perf_counter()

    def close(self) -> None:
        self.sock.close()

    def read(self) -> tuple[bytes, float] | None:
        """One read of what the socket holds and its kernel time; None when nothing is there."""
        try:
            data, ancillary, _, _ = self.sock.recvmsg(_READ_SIZE, TIMESTAMP_CMSG_SPACE)
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
            await _wait(loop, self.fd, loop.add_reader, loop.remove_reader)

    async def send(self, loop: asyncio.AbstractEventLoop, data: bytes) -> None:
        if self.tls is not None:
            self.tls.write(data)
            data = self.outgoing.read()
        await self._send_raw(loop, data)

    async def _send_raw(self, loop: asyncio.AbstractEventLoop, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[self.sock.send(view) :]
            except (BlockingIOError, InterruptedError):
                await _wait(loop, self.fd, loop.add_writer, loop.remove_writer)

    async def start_tls(
        self,
        loop: asyncio.AbstractEventLoop,
        context: ssl.SSLContext,
        server_name: str,
        marks: _Marks,
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
                await self._send_raw(loop, self.outgoing.read())
                if marks.tls_start is None:
                    marks.tls_start = time.perf_counter()
            data, marks.tls_end = await self.readable(loop)
            if not data:
                raise ProbeFailure(Reason.RESET, "connection closed during the TLS handshake")
            self.incoming.write(data)
        if self.outgoing.pending:
            await self._send_raw(loop, self.outgoing.read())
        self.tls = tls

    def feed(self, ex: _Exchange) -> None:
        """Reader callback: what the socket holds, decrypted if need be, to the parser.

        A few reads per call, then back to the loop: a server sending faster than the parser
        reads must not keep the loop (every other probe, /metrics) to itself, nor outrun the
        probe's timeout.
        """
        for _ in range(_READS_PER_TURN):
            if ex.done.done():
                return
            try:
                got = self.read()
            except OSError as exc:
                ex.closed(exc)
                return
            if got is None:
                return
            data, at = got
            if self.tls is None:
                if data:
                    ex.received(data, at)
                else:
                    ex.closed(None)
                continue
            if data:
                self.incoming.write(data)
            else:
                self.incoming.write_eof()
            self._decrypt(ex, at)
            if not data:
                # After EOF nothing more will come, whatever the TLS layer still waits for.
                ex.closed(None)
                return
            if self.outgoing.pending:
                # A TLS 1.3 KeyUpdate answer, say: best effort, the socket has room for it.
                with suppress(OSError):
                    self.sock.send(self.outgoing.read())

    def _decrypt(self, ex: _Exchange, at: float) -> None:
        assert self.tls is not None
        while not ex.done.done():
            try:
                plain = self.tls.read(_READ_SIZE)
            except ssl.SSLWantReadError:
                return
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                # close_notify, or a server that just closed (as most do): EOF either way; the
                # HTTP framing says whether the body was complete.
                ex.closed(None)
                return
            except ssl.SSLError as exc:
                ex.fail(Reason.TLS, f"TLS error: {exc.reason or exc}")
                return
            if not plain:
                ex.closed(None)
                return
            ex.received(plain, at)

    def idle_and_open(self) -> bool:
        """A kept-alive connection may be reused: nothing arrived and the server did not close."""
        if self.tls is not None and (self.incoming.pending or self.tls.pending()):
            return False  # leftovers of the last response would be read as the next one
        try:
            data = self.sock.recv(_READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False
        if not data or self.tls is None:
            return False
        # TLS 1.3 sends session tickets after the handshake; those are not a response.
        self.incoming.write(data)
        try:
            stray = self.tls.read(_READ_SIZE)
        except ssl.SSLWantReadError:
            return True
        except ssl.SSLError:
            return False
        return not stray


async def _wait(
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


# Like common clients (aiohttp: 15 s): a server's idle timeout is usually longer, and a
# connection kept for a target that went away (a reload, a redirect elsewhere) must not be held.
_IDLE_SECONDS = 15.0
_IDLE_PER_KEY = 2
_IDLE_MAX = 256


class _Idle:
    """Kept-alive connections by origin and TLS settings, each lent to one probe at a time.

    The key holds the SSL context itself, not its id(): a freed context's id can come back for
    one with other settings, which must not get a connection verified under the old ones.
    """

    def __init__(self) -> None:
        # Oldest first in each list.
        self._conns: dict[Any, list[tuple[float, _Conn]]] = {}
        self._count = 0
        self._swept = time.monotonic()

    def take(self, key: Any) -> _Conn | None:
        conns = self._conns.get(key)
        cutoff = time.monotonic() - _IDLE_SECONDS
        while conns:
            since, conn = conns.pop()
            self._count -= 1
            if since >= cutoff and conn.idle_and_open():
                return conn
            conn.close()
        return None

    def put(self, key: Any, conn: _Conn) -> None:
        now = time.monotonic()
        conns = self._conns.setdefault(key, [])
        conns.append((now, conn))
        self._count += 1
        if len(conns) > _IDLE_PER_KEY:
            conns.pop(0)[1].close()
            self._count -= 1
        # The whole pool is swept at most once a second (or when over its cap), not on every
        # probe: keep-alive probes put a connection back each time.
        if self._count > _IDLE_MAX or now - self._swept >= 1.0:
            self._sweep(now)

    def _sweep(self, now: float) -> None:
        """Close what idled too long, then the oldest beyond the total."""
        self._swept = now
        cutoff = now - _IDLE_SECONDS
        for key in list(self._conns):
            conns = self._conns[key]
            while conns and conns[0][0] < cutoff:
                conns.pop(0)[1].close()
                self._count -= 1
            if not conns:
                del self._conns[key]
        while self._count > _IDLE_MAX:
            oldest = min(self._conns, key=lambda k: self._conns[k][0][0])
            conns = self._conns[oldest]
            conns.pop(0)[1].close()
            self._count -= 1
            if not conns:
                del self._conns[oldest]

    def close(self) -> None:
        for conns in self._conns.values():
            for _, conn in conns:
                conn.close()
        self._conns.clear()
        self._count = 0


@asynccontextmanager
async def _idle_pool() -> AsyncIterator[_Idle]:
    pool = _Idle()
    try:
        yield pool
    finally:
        pool.close()


async def _resolve(
    loop: asyncio.AbstractEventLoop, host: str, port: int, family: int, marks: _Marks
) -> list[Any]:
    marks.dns_start = time.perf_counter()
    try:
        return await loop.getaddrinfo(host, port, family=family, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        why = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
        raise ProbeFailure(Reason.DNS, f"cannot resolve {host}: {why}") from None
    finally:
        marks.dns += time.perf_counter() - marks.dns_start
        marks.dns_start = None


async def _connect(
    loop: asyncio.AbstractEventLoop, infos: Any, where: str, marks: _Marks, reason: Reason
) -> socket.socket:
    if len(infos) > 1:
        marks.syn = time.perf_counter()
        try:
            sock = await aiohappyeyeballs.start_connection(addr_infos=list(infos), loop=loop)
        except OSError as exc:
            why = _os_reason(exc)
            raise ProbeFailure(reason, f"cannot connect to {where}: {why}") from None
        marks.tcp = time.perf_counter()
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        marks.handshake = handshake_rtt(sock, sock.family)
        return sock
    family, _, proto, _, address = infos[0]
    # Non-blocking from socket(2) on: no separate ioctl per probe.
    sock = socket.socket(family, _NONBLOCKING_STREAM, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        marks.syn = time.perf_counter()
        err = sock.connect_ex(address)
        if err == errno.EINPROGRESS:
            await _wait(loop, sock.fileno(), loop.add_writer, loop.remove_writer)
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            why = os.strerror(err).lower()
            raise ProbeFailure(reason, f"cannot connect to {where}: {why}")
    except BaseException:
        sock.close()
        raise
    marks.tcp = time.perf_counter()
    marks.handshake = handshake_rtt(sock, family)
    return sock


def _os_reason(exc: OSError) -> str:
    if exc.errno:
        return os.strerror(exc.errno).lower()
    # aiohappyeyeballs folds several attempts into one OSError without errno.
    text = str(exc)
    return "connection refused" if "Connect call failed" in text else text


def _tls_failure(exc: ssl.SSLError) -> ProbeFailure:
    if isinstance(exc, ssl.SSLCertVerificationError):
        why = exc.verify_message or exc.reason
        return ProbeFailure(Reason.TLS, f"certificate verification failed: {why}")
    return ProbeFailure(Reason.TLS, f"TLS error: {exc.reason or type(exc).__name__}")


_DEFAULT_SSL: list[ssl.SSLContext] = []


def _default_ssl() -> ssl.SSLContext:
    """The verifying context a plain http target's redirect to https uses (built on first use)."""
    if not _DEFAULT_SSL:
        _DEFAULT_SSL.append(client_context(TlsSettings(), Path(".")))
    return _DEFAULT_SSL[0]


class _Hop:
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


async def _open(loop: asyncio.AbstractEventLoop, p: Http, hop: _Hop, marks: _Marks) -> _Conn:
    proxy = p.proxy
    if proxy is None:
        infos = hop.addresses or await _resolve(loop, hop.host, hop.port, p.family, marks)
        conn = _Conn(await _connect(loop, infos, f"{hop.host}:{hop.port}", marks, Reason.CONNECT))
    else:
        where = f"proxy {proxy.host}:{proxy.port}"
        try:
            infos = proxy.addresses or await _resolve(loop, proxy.host, proxy.port, p.family, marks)
        except ProbeFailure as exc:
            raise ProbeFailure(Reason.PROXY_CONNECT, f"{where}: {exc.message}") from None
        conn = _Conn(await _connect(loop, infos, where, marks, Reason.PROXY_CONNECT))
    if hop.ssl is None:
        return conn
    try:
        if proxy is not None:
            await _tunnel(loop, conn, hop, proxy, marks)
        marks.secure = True
        await conn.start_tls(loop, hop.ssl, hop.server_name, marks)
    except ssl.SSLError as exc:
        conn.close()
        raise _tls_failure(exc) from None
    except OSError as exc:
        conn.close()
        raise ProbeFailure(Reason.RESET, f"connection error: {_os_reason(exc)}") from None
    except BaseException:
        conn.close()
        raise
    return conn


_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([0-9]{3})[ \t]?([\x20-\x7e]{0,80})")


async def _tunnel(
    loop: asyncio.AbstractEventLoop, conn: _Conn, hop: _Hop, proxy: Proxy, marks: _Marks
) -> None:
    """CONNECT through the proxy to the origin; the proxy's answer is read raw, not by llhttp:
    after a 2xx the bytes that follow are the origin's TLS, not an HTTP body."""
    host = f"[{hop.host}]" if ":" in hop.host else hop.host
    authority = f"{host}:{hop.port}"
    lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}", f"User-Agent: {_USER_AGENT}"]
    if proxy.auth is not None:
        lines.append(f"Proxy-Authorization: {proxy.auth.get_secret_value()}")
    where = f"proxy {proxy.host}:{proxy.port}"
    marks.tunnel_start = at = time.perf_counter()
    try:
        await conn._send_raw(loop, ("\r\n".join(lines) + "\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            data, at = await conn.readable(loop)
            if not data:
                raise ProbeFailure(Reason.PROXY_ERROR, f"{where} closed the connection on CONNECT")
            head += data
            if len(head) > _MAX_HEAD_BYTES:
                raise ProbeFailure(Reason.PROXY_ERROR, f"{where}: CONNECT answer head too long")
    except OSError as exc:
        why = _os_reason(exc)
        raise ProbeFailure(Reason.PROXY_ERROR, f"{where}: error on CONNECT: {why}") from None
    marks.tunnel_end = at
    head, rest = head.split(b"\r\n\r\n", 1)
    match = _STATUS_LINE.match(head)
    if match is None:
        raise ProbeFailure(Reason.PROXY_ERROR, f"{where}: not an HTTP answer to CONNECT")
    status = int(match[1])
    text = f"{status} {match[2].decode('ascii')}".rstrip()
    # 407 is the standard answer; tinyproxy answers wrong credentials with 401. An answer to
    # CONNECT is always the proxy's own, so both are the proxy's auth.
    if status in (401, 407):
        sent = "rejected the credentials" if proxy.auth is not None else "requires credentials"
        raise ProbeFailure(Reason.PROXY_AUTH, f"{where} {sent} ({text})")
    if not 200 <= status < 300:
        raise ProbeFailure(Reason.PROXY_ERROR, f"{where} answered CONNECT with {text}")
    if rest:
        # The origin speaks only after the ClientHello: these bytes came from the proxy.
        raise ProbeFailure(Reason.PROXY_ERROR, f"{where} sent data after its CONNECT answer")


async def _exchange(
    loop: asyncio.AbstractEventLoop,
    p: Http,
    hop: _Hop,
    ex: _Exchange,
    marks: _Marks,
    pool: _Idle | None,
    ctx: ProbeContext,
) -> None:
    key = (hop.url.scheme, hop.host, hop.port, hop.ssl, hop.server_name, p.family, p.proxy)
    conn = pool.take(key) if pool is not None else None
    reuse = False
    try:
        if conn is None:
            conn = await _open(loop, p, hop, marks)
        else:
            conn.sync_clock()
        marks.ready = time.perf_counter()
        if conn.tls is not None:
            not_after = peer_cert_not_after(conn.tls)
            if not_after is not None:
                ctx.gauges[TLS_NOT_AFTER.name] = not_after
        try:
            await conn.send(loop, hop.request)
        except ssl.SSLError as exc:
            raise _tls_failure(exc) from None
        except OSError as exc:
            raise ProbeFailure(Reason.RESET, f"connection error: {_os_reason(exc)}") from None
        marks.sent = time.perf_counter()
        loop.add_reader(conn.fd, conn.feed, ex)
        try:
            await ex.done
        finally:
            loop.remove_reader(conn.fd)
        reuse = pool is not None and ex.keep_alive and not ex.extra
    finally:
        ex.release()
        if conn is not None:
            if reuse and pool is not None:
                pool.put(key, conn)
            else:
                conn.close()


async def run(p: Http, ctx: ProbeContext) -> None:
    pool = await ctx.resources.shared(("http-idle",), _idle_pool) if p.keep_alive else None
    marks = _Marks()
    hop = _Hop(p.url, p.request, p.ssl, p.server_name, p.addresses)
    method, body, headers, secrets = p.method, p.body, p.headers, p.secret_headers
    hops = 0
    loop = asyncio.get_running_loop()
    keep_body = bool(p.must_match or p.must_not_match)
    ex = _Exchange(loop, method == "HEAD", p.max_body_bytes, keep_body)
    ctx.log(p.summary)
    if p.proxy is not None:
        ctx.log(f"via proxy {p.proxy.host}:{p.proxy.port}")
    try:
        while True:
            await _exchange(loop, p, hop, ex, marks, pool, ctx)
            location = ex.headers.get(b"location")
            if not (p.follow_redirects and ex.status in _REDIRECTS and location):
                break
            if hops == _MAX_REDIRECTS:
                raise ProbeFailure(Reason.PROTOCOL, f"too many redirects ({_MAX_REDIRECTS})")
            hops += 1
            ctx.log(f"response {ex.status}, redirected to {_safe_location(location)}")
            url = _redirect_url(hop.url, location)
            see_other = ex.status == 303 and method != "HEAD"
            if see_other or (ex.status in (301, 302) and method == "POST"):
                method, body = "GET", None
            server_name: str | None = hop.server_name
            if url.origin() != hop.url.origin():
                # Credentials, a configured Host and TLS server name stand for the configured
                # origin only.
                secrets, server_name = (), None
                headers = tuple((k, v) for k, v in headers if k.lower() != "host")
            ssl_ctx = p.ssl if p.ssl is not None or url.scheme != "https" else _default_ssl()
            request = _request(method, url, headers, secrets, body, p.keep_alive, p.proxy)
            hop = _Hop(url, request, ssl_ctx, server_name)
            marks.next_hop()
            ex = _Exchange(loop, method == "HEAD", p.max_body_bytes, keep_body)
    finally:
        if ex.headers_done:
            ctx.status_code = ex.status
        _record_phases(ctx, marks, ex, whole=hops == 0)
    ctx.log(f"response {ex.status} {ex.reason.decode('latin-1')}".rstrip())
    if ex.status == 407 and p.proxy is not None and hop.ssl is None:
        # A plain http request goes to the proxy itself: 407 is the proxy's, not the origin's.
        sent = "rejected the credentials" if p.proxy.auth is not None else "requires credentials"
        raise ProbeFailure(Reason.PROXY_AUTH, f"proxy {p.proxy.host}:{p.proxy.port} {sent}")
    if p.valid_status:
        if ex.status not in p.valid_status:
            allowed = ", ".join(str(c) for c in sorted(p.valid_status))
            raise ProbeFailure(Reason.HTTP_STATUS, f"status {ex.status} not in [{allowed}]")
    elif not 200 <= ex.status < 300:
        raise ProbeFailure(Reason.HTTP_STATUS, f"status {ex.status} is not 2xx")
    if p.must_match or p.must_not_match:
        body = b"".join(ex.chunks)
        for pattern in p.must_match:
            if pattern.search(body) is None:
                raise ProbeFailure(Reason.BODY, f"body does not match {pattern.pattern.decode()!r}")
        for pattern in p.must_not_match:
            if pattern.search(body) is not None:
                raise ProbeFailure(Reason.BODY, f"body matches {pattern.pattern.decode()!r}")


def _redirect_url(base: URL, location: bytes) -> URL:
    try:
        url = base.join(URL(location.decode("latin-1")))
    except (ValueError, UnicodeError):
        raise ProbeFailure(Reason.PROTOCOL, "redirect to an invalid Location") from None
    if url.scheme not in ("http", "https") or not url.raw_host:
        raise ProbeFailure(Reason.PROTOCOL, f"redirect to a non-HTTP URL ({url.scheme}:)")
    return url


def _safe_location(location: bytes) -> str:
    # Credentials and the query may carry secrets: the debug line shows where, not what.
    try:
        where = URL(location.decode("latin-1")).with_query(None).with_fragment(None)
        return str(where.with_user(None) if where.is_absolute() else where)
    except (ValueError, UnicodeError):
        return "(invalid)"


def _record_phases(ctx: ProbeContext, m: _Marks, ex: _Exchange, whole: bool) -> None:
    """Phases that do not overlap; one cut short by a failure or timeout ends now.

    When the response was read in full from one hop, the phases are stamped at the socket events
    and their sum is the probe's duration: the exporter's own delay between the handshake and
    writing the request (a turn or more of a busy event loop) is not the target's latency.
    """
    end = time.perf_counter()
    if m.dns_start is not None:
        m.dns += end - m.dns_start
    total = 0.0
    if m.dns:
        ctx.phases["dns"] = total = m.dns
    if m.syn is not None:
        connect = (m.tcp if m.tcp is not None else end) - m.syn
        if m.handshake is not None:
            connect = min(connect, m.handshake)
        total += _phase(ctx, "connect", connect)
        if m.tunnel_start is not None:
            tunnel_to = m.tunnel_end if m.tunnel_end is not None else end
            total += _phase(ctx, "connect_tunnel", tunnel_to - m.tunnel_start)
        if m.tcp is not None and m.secure:
            # The handshake's bytes on the wire: from the ClientHello to the kernel's receive
            # time of the server's last handshake flight.
            tls_from = m.tls_start if m.tls_start is not None else (m.tunnel_end or m.tcp)
            tls_to = m.tls_end if m.ready is not None and m.tls_end is not None else end
            total += _phase(ctx, "tls", max(0.0, tls_to - tls_from))
    if m.sent is None:
        return
    if ex.first_data is None:
        ctx.phases["first_byte"] = end - m.sent
        return
    # Bytes a server sent before reading the request count from the request.
    first = max(ex.first_data, m.sent)
    last = max(ex.last_data, first) if ex.complete and ex.last_data is not None else end
    total += _phase(ctx, "first_byte", first - m.sent)
    total += _phase(ctx, "transfer", last - first)
    if whole and ex.complete:
        ctx.duration = total


def _phase(ctx: ProbeContext, name: str, value: float) -> float:
    ctx.phases[name] = value
    return value


def describe(s: HttpSettings) -> str:
    return f"{s.method} {URL(s.url).with_query(None)}"


KIND = register(
    ProbeKind(
        votes_in_quorum=True,
        ranks_images=True,
        name="http",
        settings=HttpSettings,
        prepare=prepare,
        run=run,
        reasons=(
            Reason.DNS,
            Reason.CONNECT,
            Reason.TLS,
            Reason.RESET,
            Reason.PROTOCOL,
            Reason.HTTP_STATUS,
            Reason.BODY,
            Reason.BODY_TOO_LARGE,
            Reason.PROXY_CONNECT,
            Reason.PROXY_AUTH,
            Reason.PROXY_ERROR,
        ),
        phases=("dns", "connect", "connect_tunnel", "tls", "first_byte", "transfer"),
        describe=describe,
    )
)
