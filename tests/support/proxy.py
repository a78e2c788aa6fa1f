"""A real tinyproxy on loopback, configured and started by the test (foreground, own log)."""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from tests.tools import need


@dataclasses.dataclass(frozen=True)
class Proxy:
    port: int
    url: str
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def tinyproxy(
    workdir: Path, connect_ports: tuple[int, ...] = (), auth: tuple[str, str] | None = None
) -> Iterator[Proxy]:
    """tinyproxy on 127.0.0.1, CONNECT allowed to `connect_ports` only, basic auth if given."""
    binary = need("tinyproxy")
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = workdir / "tinyproxy.log"
    lines = [
        f"Port {port}",
        "Listen 127.0.0.1",
        "Allow 127.0.0.1",
        "Timeout 10",
        "MaxClients 20",
        f'LogFile "{log}"',
        "LogLevel Info",
        # No Via header: the origin's answer comes back as it was sent.
        "DisableViaHeader Yes",
        *(f"ConnectPort {p}" for p in connect_ports),
    ]
    if auth is not None:
        lines.append(f"BasicAuth {auth[0]} {auth[1]}")
    conf = workdir / "tinyproxy.conf"
    conf.write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen(
        [binary, "-d", "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=(workdir / "tinyproxy.stderr").open("wb"),
    )
    try:
        # Readiness, not a timing assertion: wait (bounded) until it accepts connections.
        for _ in range(200):
            if _listening(port):
                break
            if proc.poll() is not None:
                err = (workdir / "tinyproxy.stderr").read_text(errors="replace")
                raise RuntimeError(f"tinyproxy exited {proc.returncode}: {err}")
            time.sleep(0.05)
        else:
            raise RuntimeError("tinyproxy did not listen within 10 s")
        yield Proxy(port=port, url=f"http://127.0.0.1:{port}", log=log)
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
