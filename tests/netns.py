"""Network namespaces and veth pairs for tests: created per use, removed even on failure.

A peer namespace is joined to the test's own namespace by a veth pair on a random /29 of
198.18.0.0/15 (RFC 2544 benchmarking space) and a random ULA /64, so pytest-xdist workers never
share names or addresses. Deleting the namespace destroys the pair and every route through it;
namespaces left by a killed test run are swept by the next one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import os
import random
import shutil
import subprocess
from collections.abc import Iterator

from tests.tools import missing

PREFIX = "fxt-"
_COMMAND_TIMEOUT = 20


def require() -> None:
    """Skip (fail under CI) unless namespaces can be made here: root, iproute2, netns support."""
    if shutil.which("ip") is None:
        missing("ip (iproute2) not found on PATH")
    if os.geteuid() != 0:
        missing("network namespaces need root (run the suite as root, as CI does)")


def ip(*args: str) -> str:
    """Run `ip ARGS`; a failure raises with iproute2's own message."""
    return run("ip", *args)


def run(*argv: str, input: str | None = None, timeout: float = _COMMAND_TIMEOUT) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, input=input, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def _sweep() -> None:
    """Remove namespaces of test processes that died before their cleanup ran."""
    for line in ip("netns", "list").splitlines():
        name = line.split()[0] if line.split() else ""
        if not name.startswith(PREFIX):
            continue
        pid = name.removeprefix(PREFIX).split("-")[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            with contextlib.suppress(RuntimeError):
                ip("netns", "delete", name)
        except PermissionError:
            pass


@contextlib.contextmanager
def namespace() -> Iterator[str]:
    """A fresh network namespace with loopback up; its name, unique to this process."""
    require()
    _sweep()
    name = f"{PREFIX}{os.getpid()}-{random.getrandbits(32):08x}"
    ip("netns", "add", name)
    try:
        ip("-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        ip("netns", "delete", name)


def exec_in(ns: str, *argv: str, input: str | None = None, timeout: float = 60) -> str:
    return run("ip", "netns", "exec", ns, *argv, input=input, timeout=timeout)


def sysctl(ns: str, key: str, value: str) -> None:
    """Set a per-namespace sysctl; the host's value is untouched."""
    path = "/proc/sys/" + key.replace(".", "/")
    exec_in(ns, "sh", "-c", 'echo "$1" > "$2"', "sh", value, path)


@dataclasses.dataclass(frozen=True)
class Peer:
    """The far end of a veth pair, in its own namespace."""

    ns: str
    host_if: str
    peer_if: str
    host_v4: str
    v4: str
    # On the link but with no host behind it: echo requests to it are never answered.
    absent_v4: str
    # Routed to the peer by the host, for the peer to answer with ICMP errors.
    via_v4: str
    host_v6: str
    v6: str
    absent_v6: str
    via_v6: str

    def ip(self, *args: str) -> str:
        return ip("-n", self.ns, *args)

    def sysctl(self, key: str, value: str) -> None:
        sysctl(self.ns, key, value)


def _free_block() -> ipaddress.IPv4Network:
    taken = [
        ipaddress.ip_interface(line.split()[3]).network
        for line in ip("-4", "-o", "addr", "show").splitlines()
        if len(line.split()) > 3
    ]
    for _ in range(20):
        block = ipaddress.IPv4Network((0xC6120000 + random.getrandbits(14) * 8, 29))
        if not any(block.overlaps(net) for net in taken):
            return block
    raise RuntimeError("no free /29 in 198.18.0.0/15 after 20 tries")


def _ula() -> ipaddress.IPv6Network:
    """A random unique-local /64 (RFC 4193) that no interface here uses."""
    taken = [
        ipaddress.ip_interface(line.split()[3]).network
        for line in ip("-6", "-o", "addr", "show").splitlines()
        if len(line.split()) > 3
    ]
    for _ in range(20):
        net = ipaddress.IPv6Network(((0xFD << 120) | (random.getrandbits(40) << 80), 64))
        if not any(net.overlaps(t) for t in taken):
            return net
    raise RuntimeError("no free unique-local /64 after 20 tries")


@contextlib.contextmanager
def veth_peer() -> Iterator[Peer]:
    """A namespace reachable from this one over a veth pair, IPv4 and IPv6."""
    with namespace() as ns:
        tag = f"{random.getrandbits(24):06x}"
        host_if, peer_if = f"fxt{tag}a", f"fxt{tag}b"
        v4 = list(_free_block().hosts())
        link6 = _ula()
        v6 = [str(link6[i]) for i in range(1, 4)]
        peer = Peer(
            ns=ns,
            host_if=host_if,
            peer_if=peer_if,
            host_v4=str(v4[0]),
            v4=str(v4[1]),
            absent_v4=str(v4[2]),
            via_v4=str(v4[5]),
            host_v6=v6[0],
            v6=v6[1],
            absent_v6=v6[2],
            via_v6=str(_ula()[1]),
        )
        # Created inside the namespace and one end moved out: if anything below fails, deleting
        # the namespace still takes the pair with it.
        peer.ip("link", "add", peer_if, "type", "veth", "peer", "name", host_if)
        peer.ip("link", "set", host_if, "netns", str(os.getpid()))
        try:
            # Up before addressing: IPv6 adds the prefix route only on an interface that is up.
            peer.ip("link", "set", peer_if, "up")
            ip("link", "set", host_if, "up")
            peer.ip("addr", "add", f"{peer.v4}/29", "dev", peer_if)
            peer.ip("-6", "addr", "add", f"{peer.v6}/64", "dev", peer_if, "nodad")
            ip("addr", "add", f"{peer.host_v4}/29", "dev", host_if)
            ip("-6", "addr", "add", f"{peer.host_v6}/64", "dev", host_if, "nodad")
            # Device routes: they vanish with the pair.
            ip("route", "add", f"{peer.via_v4}/32", "via", peer.v4, "dev", host_if)
            ip("-6", "route", "add", f"{peer.via_v6}/128", "via", peer.v6, "dev", host_if)
            yield peer
        finally:
            with contextlib.suppress(RuntimeError):
                ip("link", "delete", host_if)
