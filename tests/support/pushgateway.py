"""A real Prometheus Pushgateway (Debian's prometheus-pushgateway) on loopback, no persistence,
started by the test on a free port of its range and stopped at the end."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tests.tools import missing, need

# The bench helper's port range; a port another run holds is skipped.
PORTS = range(19300, 19400)


def _free_port() -> int:
    for port in PORTS:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {PORTS.start}-{PORTS.stop - 1}")


def _ready(proc: subprocess.Popen[bytes], url: str) -> bool:
    for _ in range(200):
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as resp:  # noqa: S310
                if resp.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


@contextlib.contextmanager
def pushgateway(workdir: Path) -> Iterator[str]:
    """The gateway's base URL (http://127.0.0.1:PORT)."""
    binary = need("prometheus-pushgateway")
    log = workdir / "pushgateway.log"
    for _ in range(5):  # another process may take the port between probe and bind
        port = _free_port()
        with log.open("w") as out:
            proc = subprocess.Popen(
                [binary, f"--web.listen-address=127.0.0.1:{port}", "--persistence.file="],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        url = f"http://127.0.0.1:{port}"
        try:
            if _ready(proc, url):
                yield url
                return
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
    missing(f"prometheus-pushgateway did not start (see {log})")


def scrape(url: str) -> str:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:  # noqa: S310
        return str(resp.read().decode())
