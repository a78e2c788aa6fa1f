"""A real authoritative DNS server (Debian's knotd) on a loopback port, serving zones a test
writes and changes (zone file rewrite + `knotc zone-reload`)."""

from __future__ import annotations

import socket
import subprocess
import textwrap
import time
from collections.abc import Mapping
from pathlib import Path

from tests.tools import need


def free_udp_tcp_port() -> int:
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


class Knot:
    """knotd serving `zones` (domain -> zone file text); `name` is the A record `wait_for`
    watches, and the server is up once it serves `expect` for it."""

    def __init__(self, base: Path, zones: Mapping[str, str], name: str, expect: str) -> None:
        self.base = base
        self.name = name
        self.port = free_udp_tcp_port()
        self.conf = base / "knot.conf"
        zone_conf = "".join(f"  - domain: {domain}\n    file: {domain}zone\n" for domain in zones)
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
                """
            )
            + zone_conf
        )
        for domain, text in zones.items():
            (base / f"{domain}zone").write_text(text)
        self.log = (base / "knot.log").open("wb")
        self.proc = subprocess.Popen(
            [need("knotd"), "-c", str(self.conf)], stdout=self.log, stderr=subprocess.STDOUT
        )
        try:
            self.wait_for(expect)
        except BaseException:
            self.stop()
            raise

    def answer(self) -> list[str]:
        """`name` as Knot serves it now; [] while the zone is not loaded."""
        import dns.exception
        import dns.message
        import dns.query

        query = dns.message.make_query(self.name, "A")
        try:
            reply = dns.query.udp(query, "127.0.0.1", port=self.port, timeout=0.2)
        except (dns.exception.Timeout, OSError):
            return []
        return [rdata.to_text() for rrset in reply.answer for rdata in rrset]

    def wait_for(self, address: str) -> None:
        """Until Knot serves `address` for `name`: it loads and reloads zones in the background."""
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

    def set_zone(self, domain: str, text: str) -> None:
        """Rewrite the zone file (raise its serial) and reload it; see `wait_for`."""
        (self.base / f"{domain}zone").write_text(text)
        subprocess.run(
            [need("knotc"), "-c", str(self.conf), "zone-reload", domain],
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
