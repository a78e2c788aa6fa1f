"""ICMP probe against loopback and a peer namespace over a veth pair: real sockets, real kernel."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from exporter import metrics
from exporter.source import ConfigError
from exporter.state import Result, TargetState
from tests import netns
from tests.conftest import MakeConfig, one_service
from tests.probes.conftest import RunProbe, ipv6_loopback

REPO = Path(__file__).resolve().parents[2]


def icmp(host: str, **options: Any) -> dict[str, Any]:
    return {"kind": "icmp", "host": host, **options}


def counted(result: Result) -> tuple[float, float]:
    """(sent, lost) as the probe reported them."""
    counters = result.counters
    return counters.get(metrics.ICMP_SENT.name, 0.0), counters.get(metrics.ICMP_LOST.name, 0.0)


def rtts(result: Result) -> list[float]:
    return [v for n, v in result.observations if n == metrics.PROBE_DURATION.name]


def socket_kind(result: Result) -> str:
    line = next(d for d in result.debug if "ICMP socket" in d)
    return "raw" if "raw ICMP socket" in line else "datagram"


@pytest.fixture
def peer() -> Iterator[netns.Peer]:
    with netns.veth_peer() as p:
        yield p


class TestLoopback:
    @pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
    async def test_reply_recorded(self, run_probe: RunProbe, host: str) -> None:
        if ":" in host:
            ipv6_loopback()
        result = await run_probe(icmp(host))
        assert result.success, result.message
        assert counted(result) == (1, 0)
        [rtt] = rtts(result)
        assert 0 < rtt < result.duration
        assert result.phases["rtt"] == rtt
        assert "dns" not in result.phases

    @pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
    async def test_several_packets_with_options(self, run_probe: RunProbe, host: str) -> None:
        if ":" in host:
            ipv6_loopback()
        probe = icmp(host, count=3, packet_interval="20ms", size=1400, ttl=1, dont_fragment=True)
        result = await run_probe(probe)
        assert result.success, result.message
        assert counted(result) == (3, 0)
        assert len(rtts(result)) == 3
        # Paced, not sent at once: the last request left two intervals after the first.
        assert result.duration >= 0.04

    async def test_host_name_is_resolved(self, run_probe: RunProbe) -> None:
        result = await run_probe(icmp("localhost", ip_family="ipv4"))
        assert result.success, result.message
        assert "dns" in result.phases
        assert any("pinging 127.0.0.1" in d for d in result.debug)

    async def test_unresolvable_name(self, run_probe: RunProbe) -> None:
        result = await run_probe(icmp("no-such-host.invalid"))
        assert result.reason == "dns"
        assert counted(result) == (0, 0)

    async def test_state_observes_each_rtt_not_the_total(self, run_probe: RunProbe) -> None:
        result = await run_probe(icmp("127.0.0.1", count=3, packet_interval="50ms"))
        assert result.success, result.message
        state = TargetState(result.target, ())
        state.record(result)
        state.record(result)
        hist = state.histograms[metrics.PROBE_DURATION.name]
        assert hist.count == 6
        assert hist.sum == pytest.approx(2 * sum(rtts(result)))
        # The probe took > 100 ms of pacing; none of that is latency.
        assert hist.sum < 2 * result.duration - 0.1
        assert state.counters[metrics.ICMP_SENT.name] == 6
        assert state.counters[metrics.ICMP_LOST.name] == 0


class TestPeerNamespace:
    @pytest.mark.parametrize("family", ["v4", "v6"])
    async def test_reachable_peer(self, run_probe: RunProbe, peer: netns.Peer, family: str) -> None:
        address = getattr(peer, family)
        result = await run_probe(icmp(address, count=2, packet_interval="10ms"))
        assert result.success, result.message
        assert counted(result) == (2, 0)
        assert any(f"pinging {address}" in d for d in result.debug)

    @pytest.mark.parametrize("family", ["absent_v4", "absent_v6"])
    async def test_no_host_counts_loss_within_the_timeout(
        self, run_probe: RunProbe, peer: netns.Peer, family: str
    ) -> None:
        probe = icmp(getattr(peer, family), count=3, packet_interval="50ms")
        result = await run_probe(probe, timeout=1.0)
        assert not result.success
        assert result.reason == "timeout"
        assert counted(result) == (3, 3)
        assert rtts(result) == []
        # The probe stops waiting just before the scheduler would cancel it (generous upper
        # bound: a loaded machine may run late).
        assert 0.8 <= result.duration < 1.5

    async def test_peer_dropping_replies_counts_loss(
        self, run_probe: RunProbe, peer: netns.Peer
    ) -> None:
        # The peer's route back to us is a blackhole: requests arrive, replies are discarded.
        peer.ip("route", "add", "blackhole", f"{peer.host_v4}/32")
        result = await run_probe(icmp(peer.v4, count=2, packet_interval="20ms"), timeout=0.5)
        assert result.reason == "timeout"
        assert counted(result) == (2, 2)

    async def test_partial_loss_still_succeeds(self, run_probe: RunProbe, peer: netns.Peer) -> None:
        # Rate-limit the peer's echo replies to one a minute: the first of three gets through.
        peer.sysctl("net.ipv4.icmp_ratemask", "1")
        peer.sysctl("net.ipv4.icmp_ratelimit", "60000")
        result = await run_probe(icmp(peer.v4, count=3, packet_interval="20ms"), timeout=1.0)
        assert result.success, result.message
        assert counted(result) == (3, 2)
        assert len(rtts(result)) == 1
        assert any("1 of 3 replies" in d for d in result.debug)

    @pytest.mark.parametrize(("family", "forwarding"), [
        ("v4", "net.ipv4.ip_forward"),
        ("v6", "net.ipv6.conf.all.forwarding"),
    ])  # fmt: skip
    async def test_unreachable_answer_fails_fast(
        self, run_probe: RunProbe, peer: netns.Peer, family: str, forwarding: str
    ) -> None:
        # The peer routes for the address but has no way on: it answers "unreachable".
        peer.sysctl(forwarding, "1")
        via = getattr(peer, f"via_{family}")
        peer.ip("-6" if family == "v6" else "-4", "route", "add", "unreachable", via)
        result = await run_probe(icmp(via), timeout=1.0)
        assert result.reason == "connect", result.message
        assert "destination unreachable" in result.message
        assert f"from {getattr(peer, family)}" in result.message
        assert counted(result) == (1, 1)
        # Ended by the answer, not by waiting out the timeout.
        assert result.duration < 0.8

    async def test_ttl_is_applied(self, run_probe: RunProbe, peer: netns.Peer) -> None:
        # Beyond the peer: one hop of TTL runs out there and the peer says so.
        peer.sysctl("net.ipv4.ip_forward", "1")
        peer.ip("route", "add", peer.via_v4, "via", peer.host_v4)
        result = await run_probe(icmp(peer.via_v4, ttl=1), timeout=1.0)
        assert result.reason == "connect", result.message
        assert "time exceeded" in result.message
        assert f"from {peer.v4}" in result.message

    async def test_dont_fragment(self, run_probe: RunProbe, peer: netns.Peer) -> None:
        # 3000 bytes do not fit the 1500-byte veth MTU: sent in fragments unless DF is set.
        result = await run_probe(icmp(peer.v4, size=3000))
        assert result.success, result.message
        result = await run_probe(icmp(peer.v4, size=3000, dont_fragment=True))
        assert result.reason == "connect"
        assert "Message too long" in result.message
        assert counted(result) == (1, 1)


# Runs the scenarios one after the other inside a namespace of its own. Each runs in a fork
# that sets ping_group_range (per namespace), then drops to the scenario's user: importing the
# exporter once keeps this quick, and the interpreter lives where only root can read.
_CHILD = """
import asyncio, io, json, logging, os, pathlib, pwd, sys, tempfile, traceback
from exporter import config
from exporter.metrics import SelfMetrics
from exporter.resources import Resources
from exporter.scheduler import Scheduler
from prometheus_client import CollectorRegistry

path = pathlib.Path(tempfile.mkdtemp()) / "config.yml"
path.write_text(sys.argv[1])
cfg = config.load(path)

async def probe_all(sched):
    out = []
    for target in cfg.targets:
        r = await sched.probe(target)
        out.append({"success": r.success, "reason": r.reason, "message": r.message,
                    "debug": list(r.debug)})
    return out

def scenario(allowed, user):
    with open("/proc/sys/net/ipv4/ping_group_range", "w") as f:
        f.write(allowed)
    logs = io.StringIO()
    logging.basicConfig(stream=logs, level=logging.INFO, format="%(levelname)s %(message)s")
    sched = Scheduler(SelfMetrics(CollectorRegistry()), Resources())
    if user != "root":
        entry = pwd.getpwnam(user)
        os.setgroups([])
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)
    results = asyncio.run(probe_all(sched))
    with open("/proc/self/status") as f:
        caps = [line.split()[1] for line in f if line.startswith("CapEff:")][0]
    return {"uid": os.getuid(), "caps": caps, "results": results, "log": logs.getvalue()}

report = {}
for name, allowed, user in json.loads(sys.argv[2]):
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(rfd)
        try:
            out = scenario(allowed, user)
        except BaseException:
            out = {"crash": traceback.format_exc()}
        os.write(wfd, json.dumps(out).encode())
        os._exit(0)
    os.close(wfd)
    with os.fdopen(rfd) as f:
        report[name] = json.loads(f.read())
    os.waitpid(pid, 0)
print(json.dumps(report))
"""

_SCENARIOS = [
    ("datagram", "0 2147483647", "nobody"),
    ("raw", "1 0", "root"),
    ("denied", "1 0", "nobody"),
]


@pytest.fixture(scope="module")
def socket_choice() -> dict[str, dict[str, Any]]:
    """Scenario name -> what its probes of 127.0.0.1, ::1 and 127.0.0.1 again returned."""
    probes = {f"t{i}": json.dumps(icmp(h)) for i, h in enumerate(["127.0.0.1", "::1", "127.0.0.1"])}
    text = one_service(probes, defaults="defaults: {interval: 5s, timeout: 1s}\n")
    with netns.namespace() as ns:
        argv = ["ip", "netns", "exec", ns, sys.executable, "-c", _CHILD, text]
        proc = subprocess.run(
            [*argv, json.dumps(_SCENARIOS)], capture_output=True, text=True, timeout=120, cwd=REPO
        )
    assert proc.returncode == 0, proc.stderr
    report: dict[str, dict[str, Any]] = json.loads(proc.stdout)
    for name, out in report.items():
        assert "crash" not in out, (name, out.get("crash"))
    return report


def unprivileged(out: dict[str, Any]) -> None:
    """Really unprivileged: not root, no capabilities (so no raw sockets)."""
    assert out["uid"] != 0
    assert int(out["caps"], 16) == 0


class TestSocketChoice:
    """ping_group_range is per network namespace: the host's own value is never changed."""

    def test_unprivileged_user_uses_datagram_sockets(
        self, socket_choice: dict[str, dict[str, Any]]
    ) -> None:
        out = socket_choice["datagram"]
        unprivileged(out)
        for r in out["results"]:
            assert r["success"], r
            # The kernel rewrote the identifier to the socket's port; the reply still matched.
            assert "datagram ICMP socket" in "\n".join(r["debug"])

    def test_root_falls_back_to_raw_sockets(self, socket_choice: dict[str, dict[str, Any]]) -> None:
        for r in socket_choice["raw"]["results"]:
            assert r["success"], r
            assert "raw ICMP socket" in "\n".join(r["debug"])

    def test_no_permission_said_once_then_reason(
        self, socket_choice: dict[str, dict[str, Any]]
    ) -> None:
        out = socket_choice["denied"]
        unprivileged(out)
        results = out["results"]
        assert [r["reason"] for r in results] == ["permission"] * 3
        assert all("ping_group_range (1 0)" in r["message"] for r in results)
        assert all("CAP_NET_RAW" in r["message"] for r in results)
        said = [line for line in out["log"].splitlines() if "icmp probes cannot run" in line]
        assert len(said) == 1, out["log"]
        assert said[0].startswith("ERROR ")
        assert "Traceback" not in out["log"]


class TestConfig:
    @pytest.mark.parametrize(("probe", "message"), [
        (icmp("127.0.0.1", ip_family="ipv6"), "host 127.0.0.1 is not an ipv6 address"),
        (icmp("10.0.0.0/8"), "must be an IP address or a host name"),
        (icmp("::1", packet_interval="1ms"), "must be at least 10ms"),
        (icmp("::1", count=0), "greater than or equal to 1"),
        (icmp("::1", ttl=256), "less than or equal to 255"),
    ])  # fmt: skip
    def test_invalid(self, make_config: MakeConfig, probe: dict[str, Any], message: str) -> None:
        with pytest.raises(ConfigError) as info:
            make_config(one_service({"t": json.dumps(probe)}))
        assert message in str(info.value)

    def test_bracketed_ipv6_and_defaults(self, make_config: MakeConfig) -> None:
        cfg = make_config(one_service({"t": json.dumps(icmp("[::1]"))}))
        prepared = cfg.targets[0].prepared
        assert prepared.sockaddr[0] == "::1"
        assert (prepared.count, prepared.size, prepared.ttl) == (1, 56, None)
