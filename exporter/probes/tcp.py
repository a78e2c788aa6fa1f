"""TCP probe: connect time, optional TLS handshake with certificate expiry, optional send/expect."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import os
import re
import socket
import ssl
from pathlib import Path
from typing import Literal

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
from exporter.wire.timestamps import handshake_rtt


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
    )


async def run(p: Tcp, ctx: ProbeContext) -> None:
    loop = asyncio.get_running_loop()
    # An address literal needs no lookup, so it gets no dns phase.
    with contextlib.nullcontext() if _is_literal(p.host) else ctx.phase("dns"):
        try:
            infos = await loop.getaddrinfo(p.host, p.port, family=p.family, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise ProbeFailure(Reason.DNS, f"cannot resolve {p.host}: {exc.strerror}") from None
    family, type_, proto, _, addr = infos[0]
    ctx.log(f"connecting to {addr[0]!s} port {addr[1]!s}")
    sock = socket.socket(family, type_, proto)
    writer: asyncio.StreamWriter | None = None
    try:
        sock.setblocking(False)
        with ctx.phase("connect"):
            try:
                await loop.sock_connect(sock, addr)
            except OSError as exc:
                # asyncio puts "Connect call failed (address)" in strerror; the errno says why.
                why = os.strerror(exc.errno).lower() if exc.errno else str(exc)
                raise ProbeFailure(Reason.CONNECT, f"cannot connect: {why}") from None
        # The kernel's SYN -> SYN-ACK time, not when a busy loop noticed the connection.
        rtt = handshake_rtt(sock, family)
        if rtt is not None:
            ctx.phases["connect"] = min(ctx.phases["connect"], rtt)
        with ctx.phase("tls") if p.ssl is not None else contextlib.nullcontext():
            try:
                reader, writer = await asyncio.open_connection(
                    sock=sock,
                    ssl=p.ssl,
                    server_hostname=p.server_name if p.ssl is not None else None,
                    limit=p.max_read_bytes,
                )
            except ssl.SSLError as exc:
                raise ProbeFailure(Reason.TLS, f"TLS handshake failed: {exc.reason}") from None
            except OSError as exc:
                raise ProbeFailure(Reason.RESET, f"connection lost: {exc.strerror}") from None
        if p.ssl is not None:
            not_after = peer_cert_not_after(writer.get_extra_info("ssl_object"))
            if not_after is not None:
                ctx.gauges[TLS_NOT_AFTER.name] = not_after
        if p.send is not None or p.expect is not None:
            with ctx.phase("expect"):
                await _exchange(p, reader, writer)
        # As for http: the target's time is its phases, not the exporter's turns between them.
        ctx.duration = sum(ctx.phases.values())
    finally:
        if writer is not None:
            # abort(): a graceful TLS close could wait on a hostile peer.
            writer.transport.abort()
        else:
            sock.close()


async def _exchange(p: Tcp, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        if p.send is not None:
            writer.write(p.send)
            await writer.drain()
        if p.expect is None:
            return
        data = b""
        while len(data) < p.max_read_bytes:
            chunk = await reader.read(p.max_read_bytes - len(data))
            if not chunk:
                break
            data += chunk
            if p.expect.search(data):
                return
    except OSError as exc:
        raise ProbeFailure(Reason.RESET, f"connection lost: {exc.strerror}") from None
    pattern = p.expect.pattern.decode(errors="replace") if p.expect else ""
    raise ProbeFailure(Reason.EXPECT, f"response does not match {pattern!r}")


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


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
            Reason.TIMEOUT,
            Reason.DNS,
            Reason.CONNECT,
            Reason.TLS,
            Reason.RESET,
            Reason.EXPECT,
            Reason.ERROR,
        ),
        phases=("dns", "connect", "tls", "expect"),
        describe=describe,
    )
)
