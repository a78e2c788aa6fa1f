"""DNS probe: one query against a resolver given per target, rcode and answer checks.

Messages are built and parsed by dnspython, imported only when a dns target is configured. The
UDP exchange runs on the probe's own non-blocking socket instead of dnspython's: the kernel's
receive timestamp (SO_TIMESTAMPNS) keeps event-loop lag out of the latency, which
dnspython's async query cannot give. TCP (truncation fallback or `transport: tcp`) is
dnspython's async query.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import re
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator

from exporter import metrics
from exporter.fields import SettingError
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
from exporter.probes.tcp import split_address
from exporter.wire.timestamps import SO_TIMESTAMPNS, kernel_time_ns

if TYPE_CHECKING:
    import dns.message

RecordType = Literal["A", "AAAA", "CNAME", "MX", "TXT", "SRV", "NS", "SOA"]
Rcode = Literal["NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED"]

# Rcodes with a reason of their own; any other unexpected rcode is `rcode`.
_RCODE_REASONS = {
    "NXDOMAIN": Reason.NXDOMAIN,
    "SERVFAIL": Reason.SERVFAIL,
    "REFUSED": Reason.REFUSED,
}
_MAX_UDP = 65535
# The answer's regions travel as a bit mask in one float gauge (exact up to 2**53).
MAX_REGIONS = 32


class DnsSettings(ProbeSettings):
    kind: Literal["dns"]
    server: str
    name: str = Field(min_length=1, max_length=253)
    type: RecordType = "A"
    transport: Literal["udp", "tcp"] = "udp"
    # A truncated UDP reply is asked again over TCP, as a stub resolver does.
    tcp_fallback: bool = True
    recursion_desired: bool = True
    # EDNS(0) UDP payload size; 0 sends no OPT record (replies are then limited to 512 bytes).
    edns_payload: int = Field(1232, ge=0, le=65535)
    ip_family: IpFamily = "any"
    rcode: list[Rcode] = Field(default_factory=lambda: list[Rcode](["NOERROR"]), min_length=1)
    min_answers: int = Field(0, ge=0)
    answers_must_match: list[str] = Field(default_factory=list)
    answers_must_not_match: list[str] = Field(default_factory=list)
    authority_must_match: list[str] = Field(default_factory=list)
    authority_must_not_match: list[str] = Field(default_factory=list)
    additional_must_match: list[str] = Field(default_factory=list)
    additional_must_not_match: list[str] = Field(default_factory=list)
    # Ask for and require the AD bit: the resolver validated the answer with DNSSEC.
    ad_expected: bool = False
    # Failover awareness: which region each answer means, by address, CIDR or absolute CNAME
    # target name (`lb.us-east.example.`). Exported as failover_dns_answer_points_to.
    regions: dict[str, list[str]] = Field(default_factory=dict, max_length=MAX_REGIONS)

    @field_validator("server")
    @classmethod
    def _check_server(cls, value: str) -> str:
        split_address(value)
        return value


@dataclasses.dataclass(frozen=True)
class Check:
    section: str
    field: str
    pattern: re.Pattern[str]
    must_match: bool


@dataclasses.dataclass(frozen=True)
class AnswerRegion:
    name: str
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    # CNAME targets, lower-case absolute text.
    names: frozenset[str]


@dataclasses.dataclass(frozen=True)
class Dns:
    host: str
    port: int
    family: int
    name: str
    rdtype: str
    transport: str
    tcp_fallback: bool
    recursion_desired: bool
    edns_payload: int
    rcodes: frozenset[str]
    min_answers: int
    checks: tuple[Check, ...]
    ad_expected: bool
    regions: tuple[AnswerRegion, ...] = ()

    @property
    def region_names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.regions)


def check_service(
    s: DnsSettings, service: str, regions: tuple[str, ...]
) -> list[tuple[tuple[str, ...], str]]:
    """The answer's regions are joined to the region verdict by name: each must be one of the
    service's."""
    return [
        (
            ("regions", name),
            f"{name!r} is not a region of service {service!r} ({', '.join(regions)})",
        )
        for name in s.regions
        if name not in regions
    ]


def _regions(s: DnsSettings) -> tuple[AnswerRegion, ...]:
    import dns.exception
    import dns.name

    out: list[AnswerRegion] = []
    seen_nets: list[tuple[str, ipaddress.IPv4Network | ipaddress.IPv6Network]] = []
    seen_names: dict[str, str] = {}
    for region, entries in s.regions.items():
        if not entries:
            raise SettingError(f"regions.{region}", "lists no address, CIDR or name")
        nets = []
        names = set()
        for i, entry in enumerate(entries):
            key = f"regions.{region}[{i}]"
            try:
                net = ipaddress.ip_network(entry, strict=False)
            except ValueError:
                net = None
            if net is not None:
                for other, known in seen_nets:
                    if net.version == known.version and net.overlaps(known):
                        raise SettingError(key, f"{entry} overlaps {known} of region {other!r}")
                seen_nets.append((region, net))
                nets.append(net)
                continue
            if not entry.endswith("."):
                raise SettingError(
                    key, f"{entry!r} is not an address, a CIDR or an absolute name (ending in '.')"
                )
            try:
                text = dns.name.from_text(entry).to_text().lower()
            except dns.exception.DNSException as exc:
                raise SettingError(key, f"invalid DNS name: {exc}") from None
            if text in seen_names:
                raise SettingError(key, f"{entry} is also listed for region {seen_names[text]!r}")
            seen_names[text] = region
            names.add(text)
        out.append(AnswerRegion(region, tuple(nets), frozenset(names)))
    return tuple(out)


def prepare(s: DnsSettings, base_dir: Path) -> Dns:
    import dns.exception
    import dns.name

    try:
        dns.name.from_text(s.name)
    except dns.exception.DNSException as exc:
        raise SettingError("name", f"invalid DNS name: {exc}") from None
    checks = []
    for section in ("answers", "authority", "additional"):
        for must in (True, False):
            field = f"{section}_must_{'match' if must else 'not_match'}"
            for i, text in enumerate(getattr(s, field)):
                try:
                    pattern = re.compile(text)
                except re.error as exc:
                    raise SettingError(
                        f"{field}[{i}]", f"invalid regular expression: {exc}"
                    ) from None
                checks.append(Check(section, field, pattern, must))
    host, port = split_address(s.server)
    return Dns(
        host=host,
        port=port,
        family=FAMILIES[s.ip_family],
        name=s.name,
        rdtype=s.type,
        transport=s.transport,
        tcp_fallback=s.tcp_fallback,
        recursion_desired=s.recursion_desired,
        edns_payload=s.edns_payload,
        rcodes=frozenset(s.rcode),
        min_answers=s.min_answers,
        checks=tuple(checks),
        ad_expected=s.ad_expected,
        regions=_regions(s),
    )


def _query(p: Dns) -> dns.message.Message:
    import dns.flags
    import dns.message

    q = dns.message.make_query(
        p.name,
        p.rdtype,
        use_edns=0 if p.edns_payload else False,
        payload=p.edns_payload or 512,
    )
    if not p.recursion_desired:
        q.flags &= ~dns.flags.RD
    if p.ad_expected:
        q.flags |= dns.flags.AD
    return q


async def run(p: Dns, ctx: ProbeContext) -> None:
    import dns.flags
    import dns.rcode

    loop = asyncio.get_running_loop()
    with contextlib.nullcontext() if _is_literal(p.host) else ctx.phase("dns"):
        try:
            infos = await loop.getaddrinfo(p.host, p.port, family=p.family, type=socket.SOCK_DGRAM)
        except socket.gaierror as exc:
            raise ProbeFailure(Reason.DNS, f"cannot resolve {p.host}: {exc.strerror}") from None
    family, _, _, _, addr = infos[0]
    q = _query(p)
    reply = None
    try:
        if p.transport == "udp":
            with ctx.phase("udp"):
                reply, elapsed = await _udp(q, family, addr)
            ctx.phases["udp"] = min(ctx.phases["udp"], elapsed)
            if reply.flags & dns.flags.TC:
                if not p.tcp_fallback:
                    raise ProbeFailure(Reason.TRUNCATED, "UDP reply truncated (tcp_fallback off)")
                ctx.log("UDP reply truncated; asking again over TCP")
                reply = None
        if reply is None:
            with ctx.phase("tcp"):
                reply = await _tcp(q, addr)
            if reply.flags & dns.flags.TC:
                raise ProbeFailure(Reason.TRUNCATED, "TCP reply truncated")
        ctx.duration = sum(ctx.phases.values())
    finally:
        _record(ctx, reply)
        if p.regions:
            ctx.gauges[metrics.DNS_POINTS_TO.name] = float(_points_to(p, reply))
    rcode = dns.rcode.to_text(reply.rcode())
    ctx.log(f"rcode {rcode}, {sum(len(r) for r in reply.answer)} answers")
    if rcode not in p.rcodes:
        reason = _RCODE_REASONS.get(rcode, Reason.RCODE)
        raise ProbeFailure(reason, f"rcode {rcode} (expected {', '.join(sorted(p.rcodes))})")
    answers = _texts(reply.answer)
    if len(answers) < p.min_answers:
        raise ProbeFailure(
            Reason.ANSWER_MISMATCH, f"{len(answers)} answers, expected at least {p.min_answers}"
        )
    sections = {"answers": answers, "authority": _texts(reply.authority)}
    sections["additional"] = _texts(reply.additional)
    for check in p.checks:
        found = any(check.pattern.search(text) for text in sections[check.section])
        if found != check.must_match:
            reason = Reason.ANSWER_MISMATCH if check.section == "answers" else Reason.SECTION
            verb = "matches" if found else "does not match"
            raise ProbeFailure(reason, f"{check.section} {verb} {check.pattern.pattern!r}")
    if p.ad_expected and not reply.flags & dns.flags.AD:
        raise ProbeFailure(Reason.DNSSEC, "AD bit not set: the answer was not validated")


def _texts(section: list[Any]) -> list[str]:
    return [rdata.to_text() for rrset in section for rdata in rrset]


def _record(ctx: ProbeContext, reply: dns.message.Message | None) -> None:
    """Set every dns gauge on every probe, so a failed one never shows the last reply's."""
    g = ctx.gauges
    if reply is None:
        g[metrics.DNS_RCODE.name] = -1.0
        g[metrics.DNS_ANSWERS.name] = 0.0
        g[metrics.DNS_ANSWER_TTL.name] = 0.0
        return
    g[metrics.DNS_RCODE.name] = float(reply.rcode())
    g[metrics.DNS_ANSWERS.name] = float(sum(len(r) for r in reply.answer))
    # The longest a cache may keep this answer.
    g[metrics.DNS_ANSWER_TTL.name] = float(max((r.ttl for r in reply.answer), default=0))


def _points_to(p: Dns, reply: dns.message.Message | None) -> int:
    """Bit i set when the answer points into p.regions[i]: an A/AAAA address in its networks
    or a CNAME target among its names. No reply, or an error reply, points nowhere."""
    import dns.rdatatype

    if reply is None:
        return 0
    addresses = []
    targets = set()
    for rrset in reply.answer:
        for rdata in rrset:
            if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                addresses.append(ipaddress.ip_address(rdata.address))
            elif rrset.rdtype == dns.rdatatype.CNAME:
                targets.add(rdata.target.to_text().lower())
    mask = 0
    for i, region in enumerate(p.regions):
        if targets & region.names or any(a in net for a in addresses for net in region.networks):
            mask |= 1 << i
    return mask


async def _udp(q: dns.message.Message, family: int, addr: Any) -> tuple[dns.message.Message, float]:
    """One UDP exchange on a connected socket; (reply, kernel-timed latency)."""
    import dns.exception
    import dns.message

    loop = asyncio.get_running_loop()
    wire = q.to_wire()
    sock = socket.socket(family, socket.SOCK_DGRAM)
    with sock:
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        try:
            sock.connect(addr)
        except OSError as exc:
            raise ProbeFailure(Reason.CONNECT, f"cannot reach {addr[0]}: {exc.strerror}") from None
        sent_ns, sent = time.time_ns(), time.perf_counter()
        try:
            await loop.sock_sendall(sock, wire)
        except OSError as exc:
            raise ProbeFailure(Reason.CONNECT, f"cannot send: {exc.strerror}") from None
        readable: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if not readable.done():
                readable.set_result(None)

        loop.add_reader(sock.fileno(), wake)
        try:
            await readable
        finally:
            loop.remove_reader(sock.fileno())
        received = time.perf_counter()
        try:
            data, ancdata, _, _ = sock.recvmsg(_MAX_UDP, 64)
        except OSError as exc:
            # Connected UDP: an ICMP port unreachable arrives as ECONNREFUSED.
            raise ProbeFailure(
                Reason.CONNECT, f"no DNS server at {addr[0]}: {exc.strerror}"
            ) from None
    elapsed = received - sent
    kernel_ns = kernel_time_ns(ancdata)
    if kernel_ns is not None and 0 <= (kernel_ns - sent_ns) / 1e9 <= elapsed:
        elapsed = (kernel_ns - sent_ns) / 1e9
    try:
        reply = dns.message.from_wire(data, ignore_trailing=True, question_only=False)
    except dns.exception.DNSException as exc:
        raise ProbeFailure(Reason.PROTOCOL, f"malformed DNS reply: {exc}") from None
    if not q.is_response(reply):
        raise ProbeFailure(Reason.PROTOCOL, "reply does not answer the query (id or question)")
    return reply, elapsed


async def _tcp(q: dns.message.Message, addr: Any) -> dns.message.Message:
    import dns.asyncquery
    import dns.exception

    try:
        reply = await dns.asyncquery.tcp(q, addr[0], port=addr[1])
    except (ConnectionError, OSError) as exc:
        raise ProbeFailure(Reason.CONNECT, f"TCP to {addr[0]}: {exc}") from None
    except EOFError:
        raise ProbeFailure(Reason.RESET, "TCP connection closed before a reply") from None
    except dns.exception.DNSException as exc:
        raise ProbeFailure(Reason.PROTOCOL, f"malformed DNS reply over TCP: {exc}") from None
    return reply


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def describe(s: DnsSettings) -> str:
    return f"dns {s.type} {s.name} @{s.server}"


KIND = register(
    ProbeKind(
        name="dns",
        settings=DnsSettings,
        prepare=prepare,
        run=run,
        reasons=(
            Reason.DNS,
            Reason.CONNECT,
            Reason.RESET,
            Reason.PROTOCOL,
            Reason.NXDOMAIN,
            Reason.SERVFAIL,
            Reason.REFUSED,
            Reason.RCODE,
            Reason.TRUNCATED,
            Reason.ANSWER_MISMATCH,
            Reason.SECTION,
            Reason.DNSSEC,
        ),
        phases=("dns", "udp", "tcp"),
        describe=describe,
        check_service=check_service,
        bit_labels={metrics.DNS_POINTS_TO.name: lambda p: p.region_names},
        # An answer says where DNS points, not whether the region serves, and its latency is the
        # resolver's, not an image's.
        votes_in_quorum=False,
        ranks_images=False,
    )
)
