"""Fixtures for probe tests: run one probe the way the scheduler does, TLS material, servers."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web
from cryptography import x509
from prometheus_client import CollectorRegistry

from exporter.metrics import SelfMetrics
from exporter.model import Target
from exporter.probes import REGISTRY
from exporter.resources import Resources
from exporter.scheduler import Scheduler
from exporter.state import Result
from tests.conftest import MakeConfig, one_service
from tests.tools import missing

RunProbe = Callable[..., Awaitable[Result]]


def check_result(result: Result) -> None:
    """Invariants of every result, whatever the target did."""
    kind = REGISTRY[result.target.kind]
    if result.success:
        assert result.reason is None
    else:
        assert result.reason in {r.value for r in kind.reasons}, (result.reason, result.message)
        assert result.message
    assert set(result.phases) <= set(kind.phases), result.phases
    assert all(v >= 0 for v in result.phases.values()), result.phases


@pytest.fixture
async def scheduler() -> AsyncIterator[Scheduler]:
    resources = Resources()
    sched = Scheduler(SelfMetrics(CollectorRegistry()), resources)
    try:
        yield sched
    finally:
        await sched.stop()
        await resources.aclose()


def run_delay() -> float:
    """Seconds this thread has spent runnable but waiting for a CPU (Linux schedstat).

    Timing bounds add what the OS withheld: on a shared, overloaded machine the event loop can
    be starved for longer than any bound, which says nothing about the code under test.
    """
    try:
        with open("/proc/thread-self/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


@dataclasses.dataclass
class Timed:
    result: Result
    elapsed: float  # wall time of the probe call alone (config loading excluded)
    starved: float  # of which the thread was waiting for a CPU


TimedProbe = Callable[..., Awaitable[Timed]]
MakeTarget = Callable[..., Target]


@pytest.fixture
def make_target(make_config: MakeConfig) -> MakeTarget:
    """A Target from probe settings given as a dict, through YAML like a user's config."""

    def make(probe: dict[str, Any], timeout: float = 2.0) -> Target:
        defaults = f"defaults: {{interval: 10s, timeout: {timeout}s}}\n"
        cfg = make_config(one_service({"t": json.dumps(probe)}, defaults=defaults))
        return cfg.targets[0]

    return make


@pytest.fixture
def timed_probe(make_target: MakeTarget, scheduler: Scheduler) -> TimedProbe:
    """Run one probe as the scheduler does and time that call alone."""

    async def run(probe: dict[str, Any], timeout: float = 2.0) -> Timed:
        target = make_target(probe, timeout)
        delay0, t0 = run_delay(), time.perf_counter()
        result = await scheduler.probe(target)
        elapsed, starved = time.perf_counter() - t0, run_delay() - delay0
        check_result(result)
        return Timed(result, elapsed, starved)

    return run


@pytest.fixture
def run_probe(timed_probe: TimedProbe) -> RunProbe:
    """Run one probe given its settings as a dict and return its Result.

    Calls share one Scheduler (and so one set of long-lived sessions), as in the daemon.
    """

    async def run(probe: dict[str, Any], timeout: float = 2.0) -> Result:
        return (await timed_probe(probe, timeout)).result

    return run


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def server_cert(ca: trustme.CA) -> trustme.LeafCert:
    return ca.issue_cert("127.0.0.1", "::1", "localhost")


@pytest.fixture
def server_ssl(server_cert: trustme.LeafCert) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_cert.configure_cert(ctx)
    return ctx


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    """The CA written next to the config; returned relative, as a user would write it."""
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    return "ca.pem"


def not_after(cert: trustme.LeafCert) -> float:
    leaf = x509.load_pem_x509_certificate(cert.cert_chain_pems[0].bytes())
    return leaf.not_valid_after_utc.timestamp()


@contextlib.asynccontextmanager
async def http_server(
    app: web.Application,
    host: str = "127.0.0.1",
    ssl_context: ssl.SSLContext | None = None,
    port: int = 0,
) -> AsyncIterator[tuple[str, int]]:
    """A real aiohttp server on host:port (by default a free one), plain or TLS."""
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
        await site.start()
        port = runner.addresses[0][1]
        yield host, port
    finally:
        await runner.cleanup()


def url(scheme: str, host: str, port: int, path: str = "/") -> str:
    netloc = f"[{host}]" if ":" in host else host
    return f"{scheme}://{netloc}:{port}{path}"


def ipv6_loopback() -> None:
    """Skip loudly when the kernel has no IPv6 on lo; everything else about IPv6 must work."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError as exc:
        missing(f"IPv6 on loopback: cannot bind ::1 ({exc.strerror}); IPv6 cases not run")


# Beyond the timeout, what a probe may take to give up and clean up, CPU starvation excluded.
SLACK = 0.25


def assert_timed_out(timed: Timed, timeout: float) -> None:
    """The probe failed by timeout, having waited the timeout and not much more."""
    assert timed.result.reason == "timeout", timed.result.message
    assert f"{timeout:g}s" in timed.result.message
    assert timed.elapsed >= timeout * 0.95, timed.elapsed
    assert timed.elapsed - timed.starved < timeout + SLACK, (timed.elapsed, timed.starved)
