"""HTTP(S) probe: status, body checks, phase timings, certificate expiry.

A new connection per probe by default, so connect and TLS time are measured every time.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import dataclasses
import functools
import os
import re
import socket
import ssl
import struct
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal, cast

import aiohappyeyeballs
import aiohttp
from aiohttp.abc import ResolveResult
from aiohttp.client_proto import ResponseHandler
from aiohttp.helpers import is_ip_address
from pydantic import Field, SecretStr, field_validator
from yarl import URL

from exporter import __version__
from exporter.fields import Model, SecretSource, SettingError
from exporter.metrics import TLS_NOT_AFTER, Reason
from exporter.probes.base import ProbeContext, ProbeFailure, ProbeKind, ProbeSettings, register
from exporter.tlsconf import TlsSettings, client_context, peer_cert_not_after

_FAMILIES = {"any": 0, "ipv4": socket.AF_INET, "ipv6": socket.AF_INET6}
_USER_AGENT = f"failover_exporter/{__version__}"


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
    ip_family: Literal["any", "ipv4", "ipv6"] = "any"
    keep_alive: bool = False
    max_body_bytes: int = Field(1 << 20, ge=0, le=1 << 30)
    basic_auth: BasicAuth | None = None
    bearer_token: SecretSource | None = None

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        url = URL(value)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("must be an absolute http:// or https:// URL")
        if url.user or url.password:
            raise ValueError("must not contain credentials; use basic_auth with env or file")
        return value


@dataclasses.dataclass(frozen=True)
class Http:
    url: URL
    method: str
    headers: dict[str, str]
    auth_header: SecretStr | None
    body: bytes | None
    valid_status: frozenset[int]
    must_match: tuple[re.Pattern[bytes], ...]
    must_not_match: tuple[re.Pattern[bytes], ...]
    follow_redirects: bool
    ssl: ssl.SSLContext | bool
    server_name: str | None
    family: int
    keep_alive: bool
    max_body_bytes: int
    # The first debug line of every probe, built once.
    summary: str


def _regexes(patterns: list[str], field: str) -> tuple[re.Pattern[bytes], ...]:
    out = []
    for i, pattern in enumerate(patterns):
        try:
            out.append(re.compile(pattern.encode()))
        except re.error as exc:
            raise SettingError(f"{field}[{i}]", f"invalid regular expression: {exc}") from None
    return tuple(out)


def prepare(s: HttpSettings, base_dir: Path) -> Http:
    auth: SecretStr | None = None
    try:
        if s.basic_auth is not None:
            password = s.basic_auth.password.resolve(base_dir).get_secret_value()
            pair = f"{s.basic_auth.username}:{password}".encode()
            auth = SecretStr("Basic " + base64.b64encode(pair).decode())
        elif s.bearer_token is not None:
            auth = SecretStr("Bearer " + s.bearer_token.resolve(base_dir).get_secret_value())
    except ValueError as exc:
        field = "basic_auth.password" if s.basic_auth else "bearer_token"
        raise SettingError(field, str(exc)) from None
    url = URL(s.url)
    return Http(
        url=url,
        method=s.method,
        headers={"User-Agent": _USER_AGENT, **s.headers},
        auth_header=auth,
        body=s.body.encode() if s.body is not None else None,
        valid_status=frozenset(s.valid_status_codes),
        must_match=_regexes(s.body_must_match, "body_must_match"),
        must_not_match=_regexes(s.body_must_not_match, "body_must_not_match"),
        follow_redirects=s.follow_redirects,
        # Plain http URLs still verify: a redirect may lead to https. aiohttp's shared default
        # context (True) saves building one per target when there are no TLS settings.
        ssl=client_context(s.tls, base_dir)
        if url.scheme == "https" or s.tls.model_fields_set
        else True,
        server_name=s.tls.server_name,
        family=_FAMILIES[s.ip_family],
        keep_alive=s.keep_alive,
        max_body_bytes=s.max_body_bytes,
        summary=f"{s.method} {url.with_query(None)}",
    )


class _Marks:
    """Monotonic marks of one request's life, taken by the connector, the request and the protocol.

    After a redirect the connection marks describe the last hop, the one whose response counts;
    DNS time adds up over all hops.
    """

    __slots__ = (
        "created",
        "dns",
        "dns_end",
        "dns_start",
        "handshake",
        "protocol",
        "ready",
        "secure",
        "sent",
        "ssl_object",
        "syn",
        "tcp",
    )

    def __init__(self) -> None:
        self.dns = 0.0
        # Set while a lookup is in flight, so a lookup cut short still counts as DNS time.
        self.dns_start: float | None = None
        self.dns_end: float | None = None
        self.created: float | None = None
        # Just before connect(2) (the SYN) and as soon as the loop saw the handshake complete.
        self.syn: float | None = None
        self.tcp: float | None = None
        # The kernel's SYN -> SYN-ACK time, when it has one.
        self.handshake: float | None = None
        self.secure = False
        # The connection (new or reused) is ready for the request.
        self.ready: float | None = None
        # The request was handed to the transport (written to the socket unless it backs up).
        self.sent: float | None = None
        self.protocol: _TimedHandler | None = None
        self.ssl_object: Any = None

    def next_hop(self) -> None:
        self.dns_end = self.created = self.syn = self.tcp = self.handshake = None
        self.ready = self.sent = None
        self.protocol = self.ssl_object = None
        self.secure = False


_MARKS: contextvars.ContextVar[_Marks | None] = contextvars.ContextVar("http_marks", default=None)


class _TimedHandler(ResponseHandler):
    """aiohttp's protocol, stamping response bytes as the loop delivers them from the socket.

    These are the closest marks to the wire asyncio offers: a timestamp taken after the response
    has travelled up a chain of awaits would add the exporter's own scheduling delay.
    """

    first_data: float | None = None
    last_data: float | None = None

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        if self.first_data is None:
            self.first_data = now
        self.last_data = now
        super().data_received(data)


class _TimedRequest(aiohttp.ClientRequest):
    async def send(self, conn: Any) -> aiohttp.ClientResponse:
        marks = _MARKS.get()
        protocol = conn.protocol
        if marks is None or not isinstance(protocol, _TimedHandler):
            return await super().send(conn)
        # A kept-alive connection carries the previous response's marks.
        protocol.first_data = protocol.last_data = None
        marks.protocol = protocol
        response = await super().send(conn)
        # send() writes a body-less request to the transport before it returns.
        marks.sent = time.perf_counter()
        return response


class _TimedConnector(aiohttp.TCPConnector):
    """Marks DNS, the TCP handshake and TLS, so the phases can be told apart.

    aiohttp's trace hooks only report connection creation as a whole (TCP + TLS), and each hook
    costs coroutine calls on every request; overriding the steps costs a timestamp.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._factory = cast(
            "functools.partial[ResponseHandler]", functools.partial(_TimedHandler, loop=self._loop)
        )

    async def _resolve_host(self, host: str, port: int, traces: Any = None) -> list[ResolveResult]:
        marks = _MARKS.get()
        if marks is None or is_ip_address(host):
            return await super()._resolve_host(host, port, traces)
        marks.dns_start = time.perf_counter()
        hosts = await super()._resolve_host(host, port, traces)
        marks.dns_end = time.perf_counter()
        marks.dns += marks.dns_end - marks.dns_start
        marks.dns_start = None
        return hosts

    async def _create_connection(self, req: Any, traces: Any, timeout: Any) -> Any:  # noqa: ASYNC109
        marks = _MARKS.get()
        if marks is not None:
            marks.created = time.perf_counter()
        return await super()._create_connection(req, traces, timeout)

    async def _wrap_create_connection(
        self,
        *args: Any,
        addr_infos: list[Any],
        req: Any,
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 - aiohttp's signature
        client_error: type[Exception] = aiohttp.ClientConnectorError,
        **kwargs: Any,
    ) -> Any:
        marks = _MARKS.get()
        loop = asyncio.get_running_loop()
        try:
            if len(addr_infos) == 1:
                sock = await _connect_one(loop, addr_infos[0], marks)
            else:
                if marks is not None:
                    marks.syn = time.perf_counter()
                sock = await aiohappyeyeballs.start_connection(addr_infos=addr_infos, loop=loop)
        except OSError as exc:
            raise client_error(req.connection_key, exc) from exc
        if marks is not None:
            if marks.tcp is None:
                marks.tcp = time.perf_counter()
            marks.secure = bool(kwargs.get("ssl"))
        return await self._wrap_existing_connection(
            *args, req=req, timeout=timeout, client_error=client_error, sock=sock, **kwargs
        )

    async def connect(self, req: Any, traces: Any, timeout: Any) -> Any:  # noqa: ASYNC109
        # Here, not in the response: aiohttp releases the connection of a short response
        # before handing it over, and a kept-alive connection has no creation events.
        marks = _MARKS.get()
        if marks is not None:
            marks.next_hop()
        conn = await super().connect(req, traces, timeout)
        if marks is not None:
            marks.ready = time.perf_counter()
            transport = conn.transport
            marks.ssl_object = transport.get_extra_info("ssl_object") if transport else None
        return conn


async def _connect_one(
    loop: asyncio.AbstractEventLoop, addr_info: Any, marks: _Marks | None
) -> socket.socket:
    """One address, the usual case: connect directly, the SYN stamped right before connect(2)."""
    family, type_, proto, _, address = addr_info
    sock = socket.socket(family, type_, proto)
    try:
        sock.setblocking(False)
        if marks is not None:
            marks.syn = time.perf_counter()
        await loop.sock_connect(sock, address)
    except BaseException:
        sock.close()
        raise
    if marks is not None:
        marks.tcp = time.perf_counter()
        marks.handshake = _handshake_rtt(sock)
    return sock


# struct tcp_info (linux/tcp.h): 8 bytes of u8 fields, then u32 fields; tcpi_rtt is the 16th.
_TCPI_RTT = struct.Struct("=I")
_TCPI_RTT_OFFSET = 8 + 15 * 4
_TCP_INFO = getattr(socket, "TCP_INFO", None)


def _handshake_rtt(sock: socket.socket) -> float | None:
    """SYN -> SYN-ACK as the kernel measured it (its first RTT sample, in microseconds).

    The loop notices the finished handshake only when it next polls; on a busy loop that is
    milliseconds later, and the wait is the exporter's, not the target's.
    """
    if _TCP_INFO is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _TCPI_RTT_OFFSET + 4)
    except OSError:
        return None
    if len(info) < _TCPI_RTT_OFFSET + 4:
        return None
    (rtt_us,) = _TCPI_RTT.unpack_from(info, _TCPI_RTT_OFFSET)
    # 0: no sample (a retransmitted SYN, say); the loop's own marks stand then.
    return rtt_us / 1e6 if rtt_us else None


@asynccontextmanager
async def _session(family: int, keep_alive: bool) -> AsyncIterator[aiohttp.ClientSession]:
    connector = _TimedConnector(
        limit=0,
        family=socket.AddressFamily(family),
        force_close=not keep_alive,
        # DNS is resolved on every probe so that its time (and failure) is measured each time.
        use_dns_cache=False,
        enable_cleanup_closed=False,
    )
    async with aiohttp.ClientSession(
        connector=connector,
        request_class=_TimedRequest,
        # The scheduler's asyncio.timeout is the only deadline; aiohttp's would race it.
        timeout=aiohttp.ClientTimeout(total=None),
        auto_decompress=True,
        cookie_jar=aiohttp.DummyCookieJar(),
    ) as session:
        yield session


def _os_reason(exc: OSError) -> str:
    if exc.errno:
        return os.strerror(exc.errno).lower()
    # aiohappyeyeballs folds several attempts into one OSError without errno.
    text = str(exc)
    return "connection refused" if "Connect call failed" in text else text


def _classify(exc: BaseException) -> tuple[Reason, str]:
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return Reason.DNS, f"cannot resolve {exc.host}: {exc.os_error.strerror or exc.os_error}"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        cert_error: Any = exc.certificate_error
        why = getattr(cert_error, "verify_message", None) or cert_error.reason
        return Reason.TLS, f"certificate verification failed: {why}"
    if isinstance(exc, aiohttp.ClientSSLError | ssl.SSLError):
        detail: Any = getattr(exc, "reason", None) or type(exc).__name__
        return Reason.TLS, f"TLS error: {detail}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return (
            Reason.CONNECT,
            f"cannot connect to {exc.host}:{exc.port}: {_os_reason(exc.os_error)}",
        )
    if isinstance(exc, aiohttp.TooManyRedirects):
        return Reason.PROTOCOL, "too many redirects"
    if isinstance(exc, aiohttp.ClientResponseError):
        return Reason.PROTOCOL, f"invalid HTTP response: {exc.message}"
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return Reason.RESET, f"connection closed mid-response ({type(exc).__name__})"
    if isinstance(exc, aiohttp.ClientOSError):
        return Reason.RESET, f"connection error: {exc.strerror or type(exc).__name__}"
    if isinstance(exc, aiohttp.ClientError):
        return Reason.PROTOCOL, f"HTTP client error: {type(exc).__name__}"
    return Reason.ERROR, f"unexpected error: {type(exc).__name__}"


async def run(p: Http, ctx: ProbeContext) -> None:
    session = await ctx.resources.shared(
        ("http", p.family, p.keep_alive), lambda: _session(p.family, p.keep_alive)
    )
    headers = dict(p.headers)
    if p.auth_header is not None:
        headers["Authorization"] = p.auth_header.get_secret_value()
    if not p.keep_alive:
        headers["Connection"] = "close"
    marks = _Marks()
    token = _MARKS.set(marks)
    headers_at: float | None = None
    done = False
    redirected = False
    try:
        ctx.log(p.summary)
        async with session.request(
            p.method,
            p.url,
            headers=headers,
            data=p.body,
            ssl=p.ssl,
            server_hostname=p.server_name,
            allow_redirects=p.follow_redirects,
            max_redirects=10,
        ) as resp:
            headers_at = time.perf_counter()
            redirected = bool(resp.history)
            ctx.status_code = resp.status
            ctx.log(f"response {resp.status} {resp.reason or ''}".rstrip())
            not_after = peer_cert_not_after(marks.ssl_object)
            if not_after is not None:
                ctx.gauges[TLS_NOT_AFTER.name] = not_after
            body = await _read_bounded(resp, p.max_body_bytes)
            done = True
    except ProbeFailure:
        raise
    except (aiohttp.ClientError, ssl.SSLError, OSError) as exc:
        reason, message = _classify(exc)
        raise ProbeFailure(reason, message) from None
    finally:
        _MARKS.reset(token)
        _record_phases(ctx, marks, headers_at, done and not redirected)
    if p.valid_status:
        if resp.status not in p.valid_status:
            allowed = ", ".join(str(c) for c in sorted(p.valid_status))
            raise ProbeFailure(Reason.HTTP_STATUS, f"status {resp.status} not in [{allowed}]")
    elif not 200 <= resp.status < 300:
        raise ProbeFailure(Reason.HTTP_STATUS, f"status {resp.status} is not 2xx")
    for pattern in p.must_match:
        if pattern.search(body) is None:
            raise ProbeFailure(Reason.BODY, f"body does not match {pattern.pattern.decode()!r}")
    for pattern in p.must_not_match:
        if pattern.search(body) is not None:
            raise ProbeFailure(Reason.BODY, f"body matches {pattern.pattern.decode()!r}")


async def _read_bounded(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(65536):
        size += len(chunk)
        if size > limit:
            raise ProbeFailure(Reason.BODY_TOO_LARGE, f"body exceeds max_body_bytes ({limit})")
        chunks.append(chunk)
    return b"".join(chunks)


def _record_phases(ctx: ProbeContext, m: _Marks, headers_at: float | None, whole: bool) -> None:
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
    # No connect phase when the connection was reused or the lookup never finished.
    if m.created is not None and m.dns_start is None:
        connect_from = m.syn if m.syn is not None else m.created
        connect = (m.tcp if m.tcp is not None else end) - connect_from
        if m.handshake is not None:
            connect = min(connect, m.handshake)
        total += _phase(ctx, "connect", connect)
        if m.tcp is not None and m.secure:
            total += _phase(ctx, "tls", (m.ready if m.ready is not None else end) - m.tcp)
    if m.ready is None:
        return
    proto = m.protocol
    first = proto.first_data if proto is not None else None
    if m.sent is not None and first is not None and proto is not None:
        last = proto.last_data if whole and proto.last_data is not None else end
        total += _phase(ctx, "first_byte", first - m.sent)
        total += _phase(ctx, "transfer", last - first)
        if whole:
            ctx.duration = total
        return
    ctx.phases["first_byte"] = (headers_at if headers_at is not None else end) - m.ready
    if headers_at is not None:
        ctx.phases["transfer"] = end - headers_at


def _phase(ctx: ProbeContext, name: str, value: float) -> float:
    ctx.phases[name] = value
    return value


def describe(s: HttpSettings) -> str:
    return f"{s.method} {URL(s.url).with_query(None)}"


KIND = register(
    ProbeKind(
        name="http",
        settings=HttpSettings,
        prepare=prepare,
        run=run,
        reasons=(
            Reason.TIMEOUT,
            Reason.DNS,
            Reason.CONNECT,
            Reason.TLS,
            Reason.RESET,
            Reason.PROTOCOL,
            Reason.HTTP_STATUS,
            Reason.BODY,
            Reason.BODY_TOO_LARGE,
            Reason.ERROR,
        ),
        phases=("dns", "connect", "tls", "first_byte", "transfer"),
        describe=describe,
    )
)
