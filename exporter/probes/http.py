"""HTTP(S) probe: status, body checks, phase timings, certificate expiry.

A new connection per probe by default, so connect and TLS time are measured every time.

This module is the probe's settings, policy (redirects, proxy, status and body checks) and
phases; the connection with its kernel timestamps, the HTTP/1.1 exchange and the keep-alive
pool are exporter/wire/.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import re
import ssl
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from yarl import URL

from exporter.fields import Model, SecretSource, SettingError, register_secret
from exporter.metrics import HTTP_STATUS, TLS_NOT_AFTER, Reason
from exporter.probes.base import (
    FAMILIES,
    IpFamily,
    ProbeContext,
    ProbeFailure,
    ProbeKind,
    ProbeSettings,
    register,
)
from exporter.tlsconf import TlsSettings, client_context, peer_cert_not_after
from exporter.wire import http1
from exporter.wire.connection import (
    Marks,
    WireFailure,
    connection_phases,
    literal_addresses,
)
from exporter.wire.pool import Idle, idle_pool

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
    proxy: http1.Proxy | None = None


def _regexes(patterns: list[str], field: str) -> tuple[re.Pattern[bytes], ...]:
    out = []
    for i, pattern in enumerate(patterns):
        try:
            out.append(re.compile(pattern.encode()))
        except re.error as exc:
            raise SettingError(f"{field}[{i}]", f"invalid regular expression: {exc}") from None
    return tuple(out)


def _literal_addresses(url: URL, family: int) -> tuple[Any, ...] | None:
    return literal_addresses(url.raw_host or "", url.port, family)


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
    defaults = {"User-Agent": http1.USER_AGENT, "Accept": "*/*", "Accept-Encoding": "gzip, deflate"}
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
        request=http1.request(s.method, url, headers, secret_headers, body, s.keep_alive, proxy),
        addresses=_literal_addresses(url, family),
        proxy=proxy,
    )


def _proxy(s: HttpSettings, base_dir: Path, family: int) -> http1.Proxy | None:
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
    return http1.Proxy(
        host=url.raw_host or "",
        port=url.port or 80,
        auth=auth,
        addresses=_literal_addresses(url, family),
    )


_DEFAULT_SSL: list[ssl.SSLContext] = []


def _default_ssl() -> ssl.SSLContext:
    """The verifying context a plain http target's redirect to https uses (built on first use)."""
    if not _DEFAULT_SSL:
        _DEFAULT_SSL.append(client_context(TlsSettings(), Path(".")))
    return _DEFAULT_SSL[0]


async def _exchange(
    loop: asyncio.AbstractEventLoop,
    p: Http,
    hop: http1.Hop,
    ex: http1.Response,
    marks: Marks,
    pool: Idle | None,
    ctx: ProbeContext,
) -> None:
    key = (hop.url.scheme, hop.host, hop.port, hop.ssl, hop.server_name, p.family, p.proxy)
    conn = pool.take(key) if pool is not None else None
    reuse = False
    try:
        if conn is None:
            conn = await http1.open_hop(loop, hop, p.family, p.proxy, marks, ex)
        else:
            conn.sync_clock()
        marks.ready = time.perf_counter()
        if conn.tls is not None:
            not_after = peer_cert_not_after(conn.tls)
            if not_after is not None:
                ctx.gauges[TLS_NOT_AFTER.name] = not_after
        await http1.exchange(loop, conn, hop.request, ex, marks)
        reuse = pool is not None and ex.keep_alive and not ex.extra
    finally:
        ex.release()
        if conn is not None:
            if reuse and pool is not None:
                pool.put(key, conn)
            else:
                conn.close()


async def run(p: Http, ctx: ProbeContext) -> None:
    pool = await ctx.resources.shared(("http-idle",), idle_pool) if p.keep_alive else None
    marks = Marks()
    hop = http1.Hop(p.url, p.request, p.ssl, p.server_name, p.addresses)
    method, body, headers, secrets = p.method, p.body, p.headers, p.secret_headers
    hops = 0
    loop = ctx.loop or asyncio.get_running_loop()
    keep_body = bool(p.must_match or p.must_not_match)
    ex = http1.Response(loop, method == "HEAD", p.max_body_bytes, keep_body)
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
            request = http1.request(method, url, headers, secrets, body, p.keep_alive, p.proxy)
            hop = http1.Hop(url, request, ssl_ctx, server_name)
            marks.next_hop()
            ex = http1.Response(loop, method == "HEAD", p.max_body_bytes, keep_body)
    except WireFailure as exc:
        raise ProbeFailure(exc.reason, exc.message) from None
    finally:
        if ex.headers_done:
            ctx.gauges[HTTP_STATUS.name] = float(ex.status)
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


def _record_phases(ctx: ProbeContext, m: Marks, ex: http1.Response, whole: bool) -> None:
    """Phases that do not overlap; one cut short by a failure or timeout ends now.

    When the response was read in full from one hop, the phases are stamped at the socket events
    and their sum is the probe's duration: the exporter's own delay between the handshake and
    writing the request (a turn or more of a busy event loop) is not the target's latency.
    """
    end = time.perf_counter()
    total = connection_phases(ctx.phases, m, end)
    if m.sent is None:
        return
    if ex.first_data is None:
        ctx.phases["first_byte"] = end - m.sent
        return
    # Bytes a server sent before reading the request count from the request.
    first = max(ex.first_data, m.sent)
    last = max(ex.last_data, first) if ex.complete and ex.last_data is not None else end
    ctx.phases["first_byte"] = first_byte = first - m.sent
    ctx.phases["transfer"] = transfer = last - first
    if whole and ex.complete:
        ctx.duration = total + first_byte + transfer


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
        # No response this time: a stale 200 would read as healthy (the HELP promises 0).
        gauges={HTTP_STATUS.name: 0.0},
    )
)
