"""Real Prometheus and Alertmanager processes for end-to-end tests.

Each instance gets its own ports and data directory; the caller stops it (context managers).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from tests.tools import need

ROOT = Path(__file__).resolve().parent.parent
# Both tiers and the alerts: one Prometheus that loads them all judges as a two-tier setup would.
REGIONAL_RULE_FILES = [str(ROOT / "prometheus" / "rules" / "regional.rules.yml")]
GLOBAL_RULE_FILES = [
    str(ROOT / "prometheus" / "rules" / "global.rules.yml"),
    *sorted(str(p) for p in (ROOT / "prometheus" / "alerts").glob("*.yml")),
]
RULE_FILES = REGIONAL_RULE_FILES + GLOBAL_RULE_FILES


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback only
        return json.load(resp)


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited early:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1):  # noqa: S310 - loopback only
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up in {timeout}s:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextlib.contextmanager
def _serving(argv: list[str], log: Path, url: str) -> Iterator[str]:
    """Start a server process logging to `log`, wait until `url`/-/ready answers, stop it."""
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_http(f"{url}/-/ready", proc, log)
        yield url
    finally:
        _stop(proc)


@contextlib.contextmanager
def alertmanager(workdir: Path, config: dict[str, Any] | str) -> Iterator[str]:
    """Run Alertmanager on a free port; yields its base URL."""
    binary = need("prometheus-alertmanager")
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = workdir / "alertmanager.yml"
    cfg.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
    port, cluster = free_port(), free_port()
    with _serving(
        [
            binary,
            f"--config.file={cfg}",
            f"--storage.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            f"--cluster.listen-address=127.0.0.1:{cluster}",
            "--cluster.advertise-address=127.0.0.1:0",
            "--log.level=debug",
        ],
        workdir / "alertmanager.log",
        f"http://127.0.0.1:{port}",
    ) as url:
        yield url


@contextlib.contextmanager
def prometheus(
    workdir: Path,
    targets: list[str],
    rule_files: list[str] | None = None,
    alertmanager_url: str | None = None,
    interval: str = "1s",
    extra_flags: tuple[str, ...] = (),
) -> Iterator[str]:
    """Run Prometheus scraping `targets` (host:port) with the bundle's rules; yields its URL."""
    binary = need("prometheus")
    workdir.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": RULE_FILES if rule_files is None else rule_files,
        "scrape_configs": [
            {"job_name": "failover-exporter", "static_configs": [{"targets": targets}]}
        ],
    }
    if alertmanager_url is not None:
        host = alertmanager_url.removeprefix("http://")
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [host]}]}]}
    cfg = workdir / "prometheus.yml"
    cfg.write_text(yaml.safe_dump(config))
    port = free_port()
    try:
        with _serving(
            [
                binary,
                f"--config.file={cfg}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--web.enable-lifecycle",
                *extra_flags,
            ],
            workdir / "prometheus.log",
            f"http://127.0.0.1:{port}",
        ) as url:
            yield url
    finally:
        shutil.rmtree(workdir / "data", ignore_errors=True)


def query(prom: str, expr: str) -> list[dict[str, Any]]:
    from urllib.parse import urlencode

    data = get_json(f"{prom}/api/v1/query?{urlencode({'query': expr})}")
    if data.get("status") != "success":
        raise RuntimeError(f"query failed: {expr}: {data}")
    return list(data["data"]["result"])
