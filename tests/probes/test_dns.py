"""The dns probe against a real authoritative server (Knot DNS, started per module on loopback)
and against UDP sockets the test writes (silence, garbage)."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from prometheus_client import CollectorRegistry

from exporter import exposition, metrics
from exporter.probes.base import REGISTRY
from exporter.scheduler import Scheduler
from exporter.state import TargetState
from tests.conftest import MakeConfig
from tests.probes.conftest import RunProbe
from tests.tools import need


def _free_port() -> int:
    # Knot listens on UDP and TCP: a port free for both.
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return int(port)
    raise RuntimeError("no free port")


def _zone(address: str) -> str:
    # 100 A records: 1.6 KB, over the 1232-byte EDNS payload, so UDP replies are truncated.
    big = "\n".join(f"big A 198.51.100.{i}" for i in range(1, 101))
    return (
        textwrap.dedent(
            f"""\
        $ORIGIN example.test.
        $TTL 30
        @ SOA ns.example.test. hostmaster.example.test. 1 3600 600 86400 30
        @ NS ns
        ns A 127.0.0.1
        www A {address}
        alias CNAME lb.us-east.example.test.
        lb.us-east A 203.0.113.7
        """
        )
        + big
        + "\n"
    )


class Knot:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.port = _free_port()
        self.conf = base / "knot.conf"
        self.conf.write_text(
            textwrap.dedent(
                f"""\
                server:
                    rundir: "{base}"
                    listen: 127.0.0.1@{self.port}
                    pidfile: "{base}/knot.pid"
                database:
                    storage: "{base}"
                log:
                  - target: stderr
                    any: info
                control:
                    listen: "{base}/knot.sock"
                template:
                  - id: default
                    storage: "{base}"
                    semantic-checks: off
                    zonefile-sync: -1
                    journal-content: none
                zone:
                  - domain: example.test.
                    file: example.test.zone
                  - domain: broken.test.
                    file: broken.test.zone
                """
            )
        )
        (base / "example.test.zone").write_text(_zone("192.0.2.1"))
        # Not a zone file: Knot keeps the zone configured but unloaded, and answers SERVFAIL.
        (base / "broken.test.zone").write_text("this is { not a zone\n")
        self.log = (base / "knot.log").open("wb")
        self.proc = subprocess.Popen(
            [need("knotd"), "-c", str(self.conf)], stdout=self.log, stderr=subprocess.STDOUT
        )
        try:
            self.wait_for("192.0.2.1")
        except BaseException:
            self.stop()
            raise

    def answer(self) -> list[str]:
        """www.example.test. as Knot serves it now; [] while the zone is not loaded."""
        import dns.exception
        import dns.message
        import dns.query

        query = dns.message.make_query("www.example.test.", "A")
        try:
            reply = dns.query.udp(query, "127.0.0.1", port=self.port, timeout=0.2)
        except (dns.exception.Timeout, OSError):
            return []
        return [rdata.to_text() for rrset in reply.answer for rdata in rrset]

    def wait_for(self, address: str) -> None:
        """Until Knot serves `address` for www: it loads and reloads zones in the background."""
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError((self.base / "knot.log").read_text())
            if self.answer() == [address]:
                return
            time.sleep(0.05)
        raise RuntimeError(
            f"knotd does not serve {address}: {(self.base / 'knot.log').read_text()}"
        )

    def set_www(self, address: str, serial: int) -> None:
        text = _zone(address).replace(" 1 3600 ", f" {serial} 3600 ")
        (self.base / "example.test.zone").write_text(text)
        subprocess.run(
            [need("knotc"), "-c", str(self.conf), "zone-reload", "example.test."],
            check=True,
            capture_output=True,
            timeout=20,
        )

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def knot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Knot]:
    server = Knot(tmp_path_factory.mktemp("knot"))
    try:
        yield server
    finally:
        server.stop()


def probe(server: str, name: str, **extra: Any) -> dict[str, Any]:
    return {"kind": "dns", "server": server, "name": name, **extra}


async def test_answer_and_gauges(run_probe: RunProbe, knot: Knot) -> None:
    result = await run_probe(
        probe(
            f"127.0.0.1:{knot.port}",
            "www.example.test.",
            recursion_desired=False,
            answers_must_match=[r"^192\.0\.2\.\d+$"],
            answers_must_not_match=["^10\\."],
            authority_must_not_match=["nothing"],
        )
    )
    assert result.success, result.message
    assert result.gauges[metrics.DNS_RCODE.name] == 0
    assert result.gauges[metrics.DNS_ANSWERS.name] == 1
    assert result.gauges[metrics.DNS_ANSWER_TTL.name] == 30
    assert set(result.phases) == {"udp"}
    assert 0 < result.duration == result.phases["udp"]


async def test_answer_mismatch_and_section(run_probe: RunProbe, knot: Knot) -> None:
    server = f"127.0.0.1:{knot.port}"
    result = await run_probe(probe(server, "www.example.test.", answers_must_match=["^10\\."]))
    assert result.reason == "answer_mismatch", result.message
    result = await run_probe(probe(server, "www.example.test.", answers_must_not_match=["192"]))
    assert result.reason == "answer_mismatch", result.message
    result = await run_probe(probe(server, "www.example.test.", authority_must_match=["nope"]))
    assert result.reason == "section_mismatch", result.message
    result = await run_probe(probe(server, "alias.example.test.", type="CNAME", min_answers=2))
    assert result.reason == "answer_mismatch", result.message
    # The AD bit: an authoritative server never validates, so it never sets it.
    result = await run_probe(probe(server, "www.example.test.", ad_expected=True))
    assert result.reason == "dnssec", result.message


async def test_rcodes(run_probe: RunProbe, knot: Knot) -> None:
    server = f"127.0.0.1:{knot.port}"
    result = await run_probe(probe(server, "nope.example.test."))
    assert result.reason == "nxdomain", result.message
    assert result.gauges[metrics.DNS_RCODE.name] == 3
    # Expecting NXDOMAIN (a name that must not exist) makes it a success.
    result = await run_probe(probe(server, "nope.example.test.", rcode=["NXDOMAIN"]))
    assert result.success, result.message
    result = await run_probe(probe(server, "www.broken.test."))
    assert result.reason == "servfail", result.message
    result = await run_probe(probe(server, "www.elsewhere.test."))
    assert result.reason == "refused", result.message


async def test_truncation_falls_back_to_tcp(run_probe: RunProbe, knot: Knot) -> None:
    server = f"127.0.0.1:{knot.port}"
    result = await run_probe(probe(server, "big.example.test."))
    assert result.success, result.message
    assert result.gauges[metrics.DNS_ANSWERS.name] == 100
    assert set(result.phases) == {"udp", "tcp"}
    assert any("truncated" in line for line in result.debug)
    result = await run_probe(probe(server, "big.example.test.", tcp_fallback=False))
    assert result.reason == "truncated", result.message
    result = await run_probe(probe(server, "big.example.test.", transport="tcp"))
    assert result.success, result.message
    assert set(result.phases) == {"tcp"}


async def test_zone_change_seen_after_reload(run_probe: RunProbe, knot: Knot) -> None:
    server = f"127.0.0.1:{knot.port}"
    check = probe(server, "www.example.test.", answers_must_match=[r"^192\.0\.2\.1$"])
    assert (await run_probe(check)).success
    knot.set_www("198.51.100.200", serial=2)
    try:
        # Knot applies a reload in the background: wait for the new zone (bounded), then probe.
        knot.wait_for("198.51.100.200")
        result = await run_probe(check)
        assert result.reason == "answer_mismatch", result.message
        flipped = probe(server, "www.example.test.", answers_must_match=[r"^198\.51\.100\.200$"])
        assert (await run_probe(flipped)).success
    finally:
        knot.set_www("192.0.2.1", serial=3)
        knot.wait_for("192.0.2.1")


async def _points_to(result: Any) -> dict[str, str]:
    """answer_region -> value of failover_dns_answer_points_to, as /metrics renders it."""
    state = TargetState(result.target, REGISTRY["dns"].reasons)
    state.record(result)
    text = (await exposition.render([state], [], CollectorRegistry())).decode()
    found = re.findall(r'failover_dns_answer_points_to\{.*answer_region="([^"]+)"\} (\S+)', text)
    return dict(found)


async def test_answer_points_to_region_and_follows_a_flip(
    make_config: MakeConfig, scheduler: Scheduler, knot: Knot
) -> None:
    regions = {
        "eu-west": ["192.0.2.0/28"],
        "us-east": ["198.51.100.200", "lb.us-east.example.test."],
    }

    async def run(name: str) -> Any:
        settings = probe(f"127.0.0.1:{knot.port}", name, regions=regions)
        cfg = make_config(
            "vantage: test\n"
            "services:\n"
            "  - name: shop\n"
            "    regions:\n"
            "      - {name: eu-west, role: primary, priority: 1}\n"
            "      - {name: us-east, role: standby, priority: 2}\n"
            "    images: [{name: i1, ref: example/shop:1}]\n"
            f"    targets:\n      - {{name: d, region: eu-west, probe: {json.dumps(settings)}}}\n"
        )
        return await scheduler.probe(cfg.targets[0])

    result = await run("www.example.test.")
    assert result.success, result.message
    assert await _points_to(result) == {"eu-west": "1", "us-east": "0"}
    # A CNAME answer points at its target's region (the chain's A record is in no region).
    alias = await run("alias.example.test.")
    assert await _points_to(alias) == {"eu-west": "0", "us-east": "1"}
    # No usable reply points nowhere, never at the last answer's region.
    missing = await run("nope.example.test.")
    assert missing.reason == "nxdomain"
    assert await _points_to(missing) == {"eu-west": "0", "us-east": "0"}
    knot.set_www("198.51.100.200", serial=4)
    try:
        knot.wait_for("198.51.100.200")
        flipped = await run("www.example.test.")
        assert await _points_to(flipped) == {"eu-west": "0", "us-east": "1"}
    finally:
        knot.set_www("192.0.2.1", serial=5)
        knot.wait_for("192.0.2.1")


class _Udp(asyncio.DatagramProtocol):
    """A UDP 'server' the test controls: silent, or answering every datagram with `reply`."""

    def __init__(self, reply: Any = None) -> None:
        self.reply = reply
        self.transport: Any = None
        self.received = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector loop's UDP transport does not subclass DatagramTransport.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.set()
        if self.reply is not None and self.transport is not None:
            self.transport.sendto(self.reply(data), addr)


async def _udp_server(reply: Any = None) -> tuple[_Udp, int]:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(
        lambda: _Udp(reply), local_addr=("127.0.0.1", 0)
    )
    return proto, transport.get_extra_info("sockname")[1]


async def test_silent_server_times_out_without_delaying_others(
    run_probe: RunProbe, knot: Knot
) -> None:
    silent, port = await _udp_server()
    try:
        hung = asyncio.create_task(run_probe(probe(f"127.0.0.1:{port}", "x.test."), timeout=1.0))
        await silent.received.wait()
        # While the hung probe waits, another probe runs to completion.
        other = await run_probe(probe(f"127.0.0.1:{knot.port}", "www.example.test."))
        assert other.success, other.message
        assert not hung.done()
        result = await hung
        assert result.reason == "timeout", result.message
        assert "1s" in result.message
    finally:
        assert silent.transport is not None
        silent.transport.close()


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (lambda q: b"\x00\x01garbage", "protocol"),
        # Shorter than a header (asyncio drops an empty datagram instead of sending it).
        (lambda q: q[:1], "protocol"),
        # A well-formed header with someone else's id.
        (lambda q: bytes([q[0] ^ 0xFF, q[1]]) + b"\x81\x80" + b"\x00" * 8, "protocol"),
        # Truncated, and nothing listens on TCP.
        (lambda q: q[:2] + b"\x83\x80" + q[4:6] + b"\x00" * 6 + q[12:], "connect"),
    ],
)
async def test_garbage_replies(run_probe: RunProbe, reply: Any, reason: str) -> None:
    server, port = await _udp_server(reply)
    try:
        result = await run_probe(probe(f"127.0.0.1:{port}", "x.test.", edns_payload=0))
        assert result.reason == reason, result.message
        assert result.gauges[metrics.DNS_RCODE.name] == -1
    finally:
        assert server.transport is not None
        server.transport.close()


async def test_port_unreachable_is_connect(run_probe: RunProbe) -> None:
    port = _free_port()
    result = await run_probe(probe(f"127.0.0.1:{port}", "x.test."))
    assert result.reason == "connect", result.message


def test_dnspython_imported_only_for_dns_targets() -> None:
    # Loading every probe kind (as the schema does) must not load dnspython.
    code = (
        "import sys, exporter.app, exporter.probes\n"
        "print(sorted(m for m in sys.modules if m == 'dns' or m.startswith('dns.')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]", out.stdout
