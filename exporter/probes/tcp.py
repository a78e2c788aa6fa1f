"""TCP probe: connect time, optional TLS handshake with certificate expiry, optional send/expect.

On the same transport as http (exporter/wire): every phase is stamped with the kernel's receive
times and handshake RTT, so a busy event loop is not counted as the target's latency.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import ssl
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from exporter.fields import SettingError, split_host_port
from exporter.metrics import TLS_NOT_AFTER, Reason
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
from exporter.wire.connection import (
    Conn,
    Marks,
    WireFailure,
    connect,
    connection_phases,
    literal_addresses,
    resolve,
    secure,
    tls_failure,
)


def split_address(address: str) -> tuple[str, int]:
    host, port = split_host_port(address)
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("must be host:port with a port from 1 to 65535 (IPv6 as [::1]:port)")
    return host, int(port)


class TcpSettings(ProbeSettings):
    kind: Literal["tcp"]
    address: str
    tls: bool = False
    tls_config: TlsSettings = TlsSettings()
    send: str | None = None
    expect: str | None = None
    ip_family: IpFamily = "any"
    max_read_bytes: int = Field(65536, ge=1, le=1 << 24)

    @model_validator(mode="after")
    def _tls_config_needs_tls(self) -> TcpSettings:
        # Without `tls: true` the settings would silently do nothing.
        if not self.tls and "tls_config" in self.model_fields_set:
            raise ValueError("tls_config is set but tls is false; add tls: true")
        return self

    @field_validator("address")
    @classmethod
    def _check_address(cls, value: str) -> str:
        split_address(value)
        return value


@dataclasses.dataclass(frozen=True)
class Tcp:
    host: str
    port: int
    ssl: ssl.SSLContext | None
    server_name: str | None
    send: bytes | None
    expect: re.Pattern[bytes] | None
    family: int
    max_read_bytes: int
    # The addresses when the host is an IP literal (no lookup to time).
    addresses: tuple[Any, ...] | None = dataclasses.field(repr=False)


def prepare(s: TcpSettings, base_dir: Path) -> Tcp:
    host, port = split_address(s.address)
    expect = None
    if s.expect is not None:
        try:
            expect = re.compile(s.expect.encode())
        except re.error as exc:
            raise SettingError("expect", f"invalid regular expression: {exc}") from None
    return Tcp(
        host=host,
        port=port,
        ssl=client_context(s.tls_config, base_dir, "tls_config") if s.tls else None,
        server_name=s.tls_config.server_name or host,
        send=s.send.encode().decode("unicode_escape").encode("latin-1") if s.send else None,
        expect=expect,
        family=FAMILIES[s.ip_family],
        max_read_bytes=s.max_read_bytes,
        addresses=literal_addresses(host, port, FAMILIES[s.ip_family]),
    )


async def run(p: Tcp, ctx: ProbeContext) -> None:
    loop = ctx.loop or asyncio.get_running_loop()
    marks = Marks()
    conn: Conn | None = None
    sink: _Expect | None = None
    ok = False
    try:
        # An address literal needs no lookup, so it gets no dns phase.
        infos = p.addresses or await resolve(loop, p.host, p.port, p.family, marks)
        # One address, the first, as the lookup ordered them: the probe measures that one.
        address = infos[0][4]
        ctx.log(f"connecting to {address[0]!s} port {address[1]!s}")
        conn = await connect(loop, infos[:1], f"{p.host}:{p.port}", marks, Reason.CONNECT)
        if p.ssl is not None:
            await secure(loop, conn, p.ssl, p.server_name or p.host, marks)
        marks.ready = time.perf_counter()
        if conn.tls is not None:
            not_after = peer_cert_not_after(conn.tls)
            if not_after is not None:
                ctx.gauges[TLS_NOT_AFTER.name] = not_after
        if p.send is not None or p.expect is not None:
            sink = _Expect(loop, p.expect, p.max_read_bytes)
            await _exchange(loop, p, conn, sink, marks)
        ok = True
    except WireFailure as exc:
        raise ProbeFailure(exc.reason, exc.message) from None
    finally:
        if conn is not None:
            conn.close()
        _record_phases(ctx, marks, p, sink)
    if ok:
        # As for http: the target's time is its phases, not the exporter's turns between them.
        ctx.duration = sum(ctx.phases.values())


async def _exchange(
    loop: asyncio.AbstractEventLoop, p: Tcp, conn: Conn, sink: _Expect, marks: Marks
) -> None:
    if p.send is not None:
        try:
            await conn.send(loop, p.send)
        except ssl.SSLError as exc:
            raise tls_failure(exc) from None
        except OSError as exc:
            raise WireFailure(Reason.RESET, f"connection lost: {exc.strerror}") from None
        marks.sent = time.perf_counter()
    if sink.pattern is not None:
        await conn.stream(loop, sink)


class _Expect:
    """The peer's bytes, searched for the pattern as they arrive (up to max_read_bytes);
    `matched_at` is the kernel's receive time of the read that completed the match."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, pattern: re.Pattern[bytes] | None, limit: int
    ) -> None:
        self.done: asyncio.Future[None] = loop.create_future()
        self.pattern = pattern
        self.limit = limit
        self.data = b""
        self.matched_at: float | None = None

    def received(self, data: bytes, at: float) -> None:
        if self.done.done() or self.pattern is None:
            return
        self.data += data[: self.limit - len(self.data)]
        if self.pattern.search(self.data):
            self.matched_at = at
            self.done.set_result(None)
        elif len(self.data) >= self.limit:
            self.closed(None)

    def closed(self, exc: OSError | None) -> None:
        if exc is not None and exc.errno:
            self.fail(Reason.RESET, f"connection lost: {os.strerror(exc.errno)}")
            return
        pattern = self.pattern.pattern.decode(errors="replace") if self.pattern else ""
        self.fail(Reason.EXPECT, f"response does not match {pattern!r}")

    def fail(self, reason: Reason, message: str) -> None:
        if self.done.done():
            return
        self.done.set_exception(WireFailure(reason, message))
        # Nobody may be waiting any more (a timeout): do not log "exception never retrieved".
        self.done.exception()


def _record_phases(ctx: ProbeContext, m: Marks, p: Tcp, sink: _Expect | None) -> None:
    """dns, connect and tls stamped at the socket events (exporter/wire), then expect: from the
    request written (or, with nothing to send, from the connection established on the wire)
    to the kernel's receive time of the bytes that matched. One cut short ends now."""
    end = time.perf_counter()
    connection_phases(ctx.phases, m, end)
    if sink is None or m.ready is None:
        return
    if sink.pattern is None:
        # Send only: the time to hand the bytes to the kernel.
        ctx.phases["expect"] = (m.sent if m.sent is not None else end) - m.ready
        return
    if p.send is not None:
        start = m.sent if m.sent is not None else end
    elif m.secure and m.tls_end is not None:
        start = m.tls_end
    else:
        assert m.syn is not None  # ready implies connected
        start = m.syn + ctx.phases["connect"]
    until = sink.matched_at if sink.matched_at is not None else end
    ctx.phases["expect"] = max(0.0, until - start)


def describe(s: TcpSettings) -> str:
    return f"tcp{'+tls' if s.tls else ''} {s.address}"


KIND = register(
    ProbeKind(
        votes_in_quorum=True,
        ranks_images=True,
        name="tcp",
        settings=TcpSettings,
        prepare=prepare,
        run=run,
        reasons=(
            Reason.DNS,
            Reason.CONNECT,
            Reason.TLS,
            Reason.RESET,
            Reason.EXPECT,
        ),
        phases=("dns", "connect", "tls", "expect"),
        describe=describe,
    )
)
