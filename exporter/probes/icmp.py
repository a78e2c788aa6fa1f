"""ICMP echo probe: per-packet round-trip time and packet loss over IPv4 and IPv6.

Hand-written on the loop's reader callbacks rather than a library: the probe needs a non-blocking
socket it can cancel at the scheduler's timeout, kernel receive timestamps (so loop lag does not
inflate the RTT), ICMP errors through IP_RECVERR, and a clear choice between datagram and raw
sockets. icmplib's async API covers the first only.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import os
import random
import socket
import statistics
import struct
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from exporter import metrics
from exporter.fields import Duration
from exporter.metrics import Reason
from exporter.probes.base import (
    FAMILIES,
    IpFamily,
    ProbeContext,
    ProbeFailure,
    ProbeKind,
    ProbeSettings,
    register,
)
from exporter.wire.timestamps import SO_TIMESTAMPNS, kernel_time_ns

log = logging.getLogger("exporter.probes.icmp")

# Linux values the socket module does not export (asm-generic: x86, arm, riscv).
_IP_MTU_DISCOVER, _IPV6_MTU_DISCOVER = 10, 23
_PMTUDISC_DONT, _PMTUDISC_DO = 0, 2
_IP_RECVERR, _IPV6_RECVERR = 11, 25
_SOL_RAW, _ICMP_FILTER, _ICMPV6_FILTER = 255, 1, 1

_ECHO_REQUEST: dict[int, int] = {socket.AF_INET: 8, socket.AF_INET6: 128}
_ECHO_REPLY: dict[int, int] = {socket.AF_INET: 0, socket.AF_INET6: 129}
_ERROR_TYPES: dict[tuple[int, int], str] = {
    (socket.AF_INET, 3): "destination unreachable",
    (socket.AF_INET, 11): "time exceeded",
    (socket.AF_INET, 12): "parameter problem",
    (socket.AF_INET6, 1): "destination unreachable",
    (socket.AF_INET6, 2): "packet too big",
    (socket.AF_INET6, 3): "time exceeded",
    (socket.AF_INET6, 4): "parameter problem",
}
_RECVERR_CMSG = ((socket.IPPROTO_IP, _IP_RECVERR), (socket.IPPROTO_IPV6, _IPV6_RECVERR))
_SO_EE_ORIGIN_ICMP = (2, 3)

# Stop waiting for replies this long before the scheduler's timeout, so the probe itself reports
# how many packets came back instead of being cancelled.
_MARGIN = 0.1


class IcmpSettings(ProbeSettings):
    kind: Literal["icmp"]
    host: str
    ip_family: IpFamily = "any"
    count: int = Field(1, ge=1, le=100)
    packet_interval: Duration = 0.1
    size: int = Field(56, ge=0, le=65000)
    ttl: int | None = Field(None, ge=1, le=255)
    dont_fragment: bool = False

    @field_validator("host")
    @classmethod
    def _check_host(cls, value: str) -> str:
        if not value or any(c.isspace() for c in value) or "/" in value:
            raise ValueError("must be an IP address or a host name")
        return value

    @field_validator("packet_interval")
    @classmethod
    def _check_interval(cls, value: float) -> float:
        # ping(8) refuses less than 200 ms to unprivileged users; 10 ms still cannot flood.
        if value < 0.01:
            raise ValueError("must be at least 10ms")
        return value


@dataclasses.dataclass(frozen=True)
class Icmp:
    host: str
    # Set when `host` is an IP address: no resolution (and no `dns` phase) at probe time.
    sockaddr: tuple[Any, ...] | None
    family: int
    count: int
    packet_interval: float
    size: int
    ttl: int | None
    dont_fragment: bool


def prepare(s: IcmpSettings, base_dir: Path) -> Icmp:
    family = FAMILIES[s.ip_family]
    host = s.host.removeprefix("[").removesuffix("]")
    sockaddr = None
    try:
        ip = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        pass
    else:
        if family and family != (socket.AF_INET if ip.version == 4 else socket.AF_INET6):
            raise ValueError(f"host {host} is not an {s.ip_family} address")
        try:
            info = socket.getaddrinfo(
                host, None, type=socket.SOCK_DGRAM, flags=socket.AI_NUMERICHOST
            )
        except socket.gaierror as exc:
            raise ValueError(f"invalid address {host}: {exc.strerror}") from None
        family, sockaddr = info[0][0], info[0][4]
    return Icmp(
        host=host,
        sockaddr=sockaddr,
        family=family,
        count=s.count,
        packet_interval=s.packet_interval,
        size=s.size,
        ttl=s.ttl,
        dont_fragment=s.dont_fragment,
    )


async def run(p: Icmp, ctx: ProbeContext) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    # Without a known timeout (e.g. a caller outside the scheduler) wait until cancelled.
    budget = ctx.timeout - min(_MARGIN, ctx.timeout / 10) if ctx.timeout > 0 else float("inf")
    deadline = start + budget
    echo: _Echo | None = None
    try:
        if p.sockaddr is not None:
            family, sockaddr = p.family, p.sockaddr
        else:
            family, sockaddr = await _resolve(p, ctx)
        sock, raw = _open(family)
        address = sockaddr[0]
        ctx.log(f"pinging {address} through a {'raw' if raw else 'datagram'} ICMP socket")
        with sock:
            echo = _Echo(sock, family, raw, p.size)
            _configure(sock, family, raw, p)
            try:
                sock.connect(sockaddr)
            except OSError as exc:
                raise ProbeFailure(
                    Reason.CONNECT, f"cannot reach {address}: {exc.strerror}"
                ) from None
            await echo.run(p.count, p.packet_interval, deadline)
    finally:
        # Counted on every probe, so the series start at 0; also on the scheduler's timeout,
        # when the packets still unanswered are lost.
        sent, replies = (echo.sent, len(echo.rtts)) if echo is not None else (0, 0)
        ctx.count(metrics.ICMP_SENT.name, float(sent))
        ctx.count(metrics.ICMP_LOST.name, float(sent - replies))
    if echo.skipped:
        ctx.log(f"{echo.skipped} packets not sent: count x packet_interval exceeds the timeout")
    if echo.error is not None:
        raise ProbeFailure(Reason.CONNECT, f"{address}: {echo.error}")
    rtts = list(echo.rtts.values())
    if not rtts:
        raise ProbeFailure(
            Reason.TIMEOUT, f"no echo reply from {address} ({echo.sent} requests sent)"
        )
    # Each reply is one latency sample; the probe's total time would count the pacing and the
    # waits for lost packets.
    ctx.observations.extend((metrics.PROBE_DURATION.name, rtt) for rtt in rtts)
    ctx.phases["rtt"] = statistics.median(rtts)
    ctx.log(
        f"{len(rtts)} of {echo.sent} replies; rtt min {min(rtts) * 1000:.3f} ms, "
        f"median {ctx.phases['rtt'] * 1000:.3f} ms, max {max(rtts) * 1000:.3f} ms"
    )


async def _resolve(p: Icmp, ctx: ProbeContext) -> tuple[int, tuple[Any, ...]]:
    loop = asyncio.get_running_loop()
    with ctx.phase("dns"):
        try:
            infos = await loop.getaddrinfo(p.host, None, family=p.family, type=socket.SOCK_DGRAM)
        except socket.gaierror as exc:
            raise ProbeFailure(Reason.DNS, f"cannot resolve {p.host}: {exc.strerror}") from None
    return infos[0][0], infos[0][4]


def _open(family: int) -> tuple[socket.socket, bool]:
    """A datagram ICMP socket if ping_group_range allows it, else a raw one; (socket, raw)."""
    proto = socket.IPPROTO_ICMP if family == socket.AF_INET else socket.IPPROTO_ICMPV6
    try:
        return socket.socket(family, socket.SOCK_DGRAM, proto), False
    except OSError:
        pass
    try:
        return socket.socket(family, socket.SOCK_RAW, proto), True
    except PermissionError:
        pass
    except OSError as exc:
        raise ProbeFailure(Reason.CONNECT, f"cannot open an ICMP socket: {exc.strerror}") from None
    raise ProbeFailure(Reason.PERMISSION, _permission_denied())


_told_permission = False


def _permission_denied() -> str:
    """The reason ICMP is refused; logged once per process, returned for every probe."""
    global _told_permission
    try:
        with open("/proc/sys/net/ipv4/ping_group_range") as f:
            allowed = " ".join(f.read().split())
    except OSError:
        allowed = "unreadable"
    message = (
        f"not allowed to open an ICMP socket: group {os.getgid()} is outside "
        f"net.ipv4.ping_group_range ({allowed}) and raw sockets need root or CAP_NET_RAW"
    )
    if not _told_permission:
        _told_permission = True
        log.error(
            "icmp probes cannot run and fail with reason 'permission' until this is fixed: "
            "%s. Fix: sysctl -w net.ipv4.ping_group_range='0 2147483647', or grant CAP_NET_RAW",
            message,
        )
    return message


def _configure(sock: socket.socket, family: int, raw: bool, p: Icmp) -> None:
    sock.setblocking(False)
    # Kernel receive timestamps: the RTT excludes the time the reply waited for the event loop.
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    pmtu = _PMTUDISC_DO if p.dont_fragment else _PMTUDISC_DONT
    if family == socket.AF_INET:
        if p.ttl is not None:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, p.ttl)
        sock.setsockopt(socket.IPPROTO_IP, _IP_MTU_DISCOVER, pmtu)
        # Unreachable and time-exceeded answers become socket errors instead of silence.
        sock.setsockopt(socket.IPPROTO_IP, _IP_RECVERR, 1)
        if raw:
            # A raw socket sees every ICMP packet of the host; the kernel drops all but replies.
            sock.setsockopt(_SOL_RAW, _ICMP_FILTER, struct.pack("=I", ~1 & 0xFFFFFFFF))
    else:
        if p.ttl is not None:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, p.ttl)
        if p.dont_fragment:
            sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_MTU_DISCOVER, pmtu)
        sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVERR, 1)
        if raw:
            blocked = [0xFFFFFFFF] * 8
            reply = _ECHO_REPLY[socket.AF_INET6]
            blocked[reply >> 5] &= ~(1 << (reply & 31))
            sock.setsockopt(socket.IPPROTO_ICMPV6, _ICMPV6_FILTER, struct.pack("=8I", *blocked))


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


class _Echo:
    """One probe's echo exchange on a connected, non-blocking ICMP socket."""

    def __init__(self, sock: socket.socket, family: int, raw: bool, size: int) -> None:
        self.sock = sock
        self.family = family
        self.raw = raw
        # Datagram sockets: the kernel replaces the identifier with the socket's port and only
        # delivers replies carrying it. Raw sockets: ours, checked on every reply.
        self.ident = random.getrandbits(16)
        self.seq0 = random.getrandbits(16)
        # Random payload: a reply to someone else's request (same identifier) cannot match.
        self.payload = (os.urandom(16) * (size // 16 + 1))[:size]
        self.bufsize = size + 128
        self.sent = 0
        self.skipped = 0
        self.sent_at: dict[int, tuple[int, float]] = {}
        self.rtts: dict[int, float] = {}
        self.error: str | None = None
        self.sending = True
        self.wake = asyncio.Event()

    async def run(self, count: int, interval: float, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        fd = self.sock.fileno()
        loop.add_reader(fd, self._readable)
        try:
            first = loop.time()
            for i in range(count):
                at = first + i * interval
                if at >= deadline:
                    self.skipped = count - i
                    break
                if i:
                    await _wait(self.wake, at)
                    if self.error is not None:
                        return
                await self._send(loop, (self.seq0 + i) & 0xFFFF)
            self.sending = False
            if len(self.rtts) < self.sent and self.error is None:
                await _wait(self.wake, deadline)
        finally:
            loop.remove_reader(fd)

    async def _send(self, loop: asyncio.AbstractEventLoop, seq: int) -> None:
        header = struct.pack("!BBHHH", _ECHO_REQUEST[self.family], 0, 0, self.ident, seq)
        if self.family == socket.AF_INET:
            # IPv6 and datagram sockets get their checksum from the kernel; IPv4 raw do not.
            csum = _checksum(header + self.payload)
            header = header[:2] + struct.pack("!H", csum) + header[4:]
        self.sent += 1
        self.sent_at[seq] = (time.time_ns(), time.perf_counter())
        try:
            await loop.sock_sendall(self.sock, header + self.payload)
        except OSError as exc:
            # A local refusal (unreachable or blackhole route, message too long with DF).
            self.error = f"cannot send echo request: {exc.strerror}"
            self.wake.set()

    def _readable(self) -> None:
        for n in range(64):
            try:
                data, ancdata, _, _ = self.sock.recvmsg(self.bufsize, 64)
            except (BlockingIOError, InterruptedError):
                if n == 0:
                    # Woken with nothing to read: an error queued without a pending error.
                    self._read_errors(None)
                return
            except OSError as exc:
                self._read_errors(exc)
                return
            self._reply(data, ancdata, time.perf_counter())

    def _reply(self, data: bytes, ancdata: list[tuple[int, int, bytes]], received: float) -> None:
        if self.raw and self.family == socket.AF_INET:
            data = data[(data[0] & 0x0F) * 4 :] if data else b""
        if len(data) < 8:
            return
        type_, _, _, ident, seq = struct.unpack_from("!BBHHH", data)
        if type_ != _ECHO_REPLY[self.family] or data[8:] != self.payload:
            return
        if self.raw and ident != self.ident:
            return
        sent = self.sent_at.get(seq)
        if sent is None or seq in self.rtts:
            return
        rtt = received - sent[1]
        kernel_ns = kernel_time_ns(ancdata)
        if kernel_ns is not None:
            stamped = (kernel_ns - sent[0]) / 1e9
            # Wall clocks can step; the monotonic figure bounds the kernel's.
            if 0 <= stamped <= rtt:
                rtt = stamped
        self.rtts[seq] = rtt
        if not self.sending and len(self.rtts) == self.sent:
            self.wake.set()

    def _read_errors(self, exc: OSError | None) -> None:
        """Drain the error queue; the first ICMP error or socket error ends the exchange."""
        detail = None
        for _ in range(16):
            try:
                _, ancdata, _, _ = self.sock.recvmsg(self.bufsize, 512, socket.MSG_ERRQUEUE)
            except OSError:
                break
            for level, kind, value in ancdata:
                if detail is None and (level, kind) in _RECVERR_CMSG and len(value) >= 16:
                    detail = self._describe(value)
        why = os.strerror(exc.errno) if exc is not None and exc.errno else None
        if why is None and detail is None:
            return
        if self.error is None:
            self.error = f"{why} ({detail})" if why and detail and detail != why else why or detail
        self.wake.set()

    def _describe(self, value: bytes) -> str | None:
        """Text for a struct sock_extended_err: the ICMP message and who sent it."""
        err, origin, type_, code = struct.unpack_from("=IBBB", value)
        if origin not in _SO_EE_ORIGIN_ICMP:
            return os.strerror(err) if err else None
        name = _ERROR_TYPES.get((self.family, type_), "ICMP error")
        text = f"{name}, type {type_} code {code}"
        offender = value[16:]
        try:
            if self.family == socket.AF_INET and len(offender) >= 8:
                text += f", from {socket.inet_ntop(socket.AF_INET, offender[4:8])}"
            elif self.family == socket.AF_INET6 and len(offender) >= 24:
                text += f", from {socket.inet_ntop(socket.AF_INET6, offender[8:24])}"
        except (OSError, ValueError):
            pass
        return text


async def _wait(event: asyncio.Event, until: float) -> None:
    try:
        async with asyncio.timeout_at(until):
            await event.wait()
    except TimeoutError:
        pass


def describe(s: IcmpSettings) -> str:
    return f"icmp {s.host}" + (f" x{s.count}" if s.count > 1 else "")


KIND = register(
    ProbeKind(
        votes_in_quorum=True,
        ranks_images=False,
        name="icmp",
        settings=IcmpSettings,
        prepare=prepare,
        run=run,
        reasons=(Reason.DNS, Reason.CONNECT, Reason.PERMISSION),
        phases=("dns", "rtt"),
        describe=describe,
    )
)
