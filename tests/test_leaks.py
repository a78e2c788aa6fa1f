"""Resources after fault suites: every hostile target of tests/probes/hostile.py, several rounds.

A round starts the hostile servers (and one healthy one), runs them through a real Scheduler for
a few probe intervals, removes them again and closes the servers. The first rounds warm up
(sessions, thread pools, allocator arenas, bounded histories); after them, open file descriptors
and asyncio tasks must come back to exactly the baseline after every later round, and RSS stay
within a small bound. The figures are printed (`pytest -s`).

Two lifetimes are covered: one scheduler kept across rounds, the targets added and removed by
`apply` as a reload does; and a whole Engine per round, started and closed as the daemon is.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from prometheus_client import CollectorRegistry

from exporter.engine import Engine
from exporter.metrics import SelfMetrics
from exporter.model import Config
from exporter.resources import Resources
from exporter.scheduler import Scheduler
from tests.conftest import MakeConfig, one_service
from tests.probes import hostile

ROUNDS = 5  # warm-up rounds included
RUN_SECONDS = 1.5
DEFAULTS = "defaults: {interval: 300ms, timeout: 250ms}\n"
# Python's allocator keeps freed arenas for reuse and the probes read up to megabytes of hostile
# bodies per round; a leak of a round's worth of state would pass this bound within a few rounds.
RSS_SLACK = 8 << 20
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclasses.dataclass(frozen=True)
class Usage:
    fds: int
    tasks: int
    rss: int

    def __str__(self) -> str:
        return f"fds={self.fds} tasks={self.tasks} rss={self.rss / (1 << 20):.1f}MiB"


def usage() -> Usage:
    with open("/proc/self/statm") as f:
        resident = int(f.read().split()[1]) * PAGE
    return Usage(len(os.listdir("/proc/self/fd")), len(asyncio.all_tasks()), resident)


async def settled(baseline: Usage | None, timeout: float = 5.0) -> Usage:
    """Usage once cancelled tasks and closing transports have finished (bounded wait)."""
    deadline = time.monotonic() + timeout
    while True:
        await asyncio.sleep(0.05)
        gc.collect()
        now = usage()
        if baseline is None or (now.fds, now.tasks) == (baseline.fds, baseline.tasks):
            return now
        if time.monotonic() > deadline:
            return now


async def _ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await hostile.read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
    await writer.drain()
    writer.close()


@contextlib.asynccontextmanager
async def fault_suite(make_config: MakeConfig) -> AsyncIterator[Config]:
    """Every kind of hostile target, http and tcp, next to a healthy one; yields their config."""
    async with contextlib.AsyncExitStack() as stack:

        async def addr(cm: contextlib.AbstractAsyncContextManager[tuple[str, int]]) -> str:
            host, port = await stack.enter_async_context(cm)
            return f"{host}:{port}"

        probes: dict[str, dict[str, Any]] = {
            "healthy": {"kind": "http", "url": f"http://{await addr(hostile.serve(_ok))}/"},
            "healthy-ka": {
                "kind": "http",
                "url": f"http://{await addr(hostile.serve(_ok))}/",
                "keep_alive": True,
            },
            "hanging": {"kind": "http", "url": f"http://{await addr(hostile.hanging())}/"},
            "loris": {"kind": "http", "url": f"http://{await addr(hostile.slow_loris())}/"},
            "endless": {"kind": "http", "url": f"http://{await addr(hostile.endless_body())}/"},
            "endless-chunked": {
                "kind": "http",
                "url": f"http://{await addr(hostile.endless_body(chunked=True))}/",
                "keep_alive": True,
            },
            "gzip-bomb": {"kind": "http", "url": f"http://{await addr(hostile.gzip_bomb())}/"},
            "reset": {"kind": "http", "url": f"http://{await addr(hostile.resetting())}/"},
            "garbage": {"kind": "http", "url": f"http://{await addr(hostile.garbage())}/"},
            "closing": {"kind": "http", "url": f"http://{await addr(hostile.closing())}/"},
            "refused": {"kind": "http", "url": f"http://{await addr(hostile.refused())}/"},
            "tls-stall": {"kind": "http", "url": f"https://{await addr(hostile.tls_stall())}/"},
            "tls-garbage": {"kind": "http", "url": f"https://{await addr(hostile.garbage())}/"},
            "nxdomain": {"kind": "http", "url": "http://no-such-host.invalid/"},
            "tcp-hang": {"kind": "tcp", "address": await addr(hostile.hanging()), "expect": "x"},
            "tcp-tls-stall": {
                "kind": "tcp",
                "address": await addr(hostile.tls_stall()),
                "tls": True,
            },
            "tcp-closing": {"kind": "tcp", "address": await addr(hostile.closing()), "expect": "x"},
            "tcp-refused": {"kind": "tcp", "address": await addr(hostile.refused())},
        }
        yield make_config(
            one_service({k: json.dumps(v) for k, v in probes.items()}, defaults=DEFAULTS)
        )


def empty(make_config: MakeConfig) -> Config:
    return make_config(
        "vantage: test\nservices:\n  - name: svc\n"
        "    regions: [{name: r1, role: primary, priority: 1}]\n"
        "    images: [{name: i1, ref: example/svc:1}]\n    targets: []\n"
    )


Round = Callable[[int], Awaitable[dict[str, int]]]


async def run_rounds(label: str, one_round: Round, warm_up: int) -> None:
    rounds: list[Usage] = []
    for n in range(ROUNDS):
        probes = await one_round(n)
        # Every hostile target was really probed, more than once.
        assert min(probes.values()) >= 2, probes
        rounds.append(await settled(rounds[warm_up - 1] if n >= warm_up else None))
    baseline = rounds[warm_up - 1]
    print(f"\n{label}:")
    for n, after in enumerate(rounds):
        note = " (warm-up)" if n < warm_up - 1 else " (warm-up; baseline)" if n < warm_up else ""
        print(f"  round {n}{note}: {after}")
    for n, after in enumerate(rounds[warm_up:], warm_up):
        assert after.fds == baseline.fds, f"round {n}: {after} vs baseline {baseline}"
        assert after.tasks == baseline.tasks, f"round {n}: {after} vs baseline {baseline}"
        assert after.rss <= baseline.rss + RSS_SLACK, f"round {n}: {after} vs baseline {baseline}"


async def test_reload_path_returns_to_baseline(make_config: MakeConfig) -> None:
    """One scheduler for all rounds: hostile targets come and go by `apply`, as on reload."""
    resources = Resources()
    sched = Scheduler(SelfMetrics(CollectorRegistry()), resources)
    sched.apply(empty(make_config))

    async def one_round(_n: int) -> dict[str, int]:
        async with fault_suite(make_config) as cfg:
            sched.apply(cfg)
            await asyncio.sleep(RUN_SECONDS)
            probes = {st.target.name: st.probes for st in sched.snapshot()}
            sched.apply(empty(make_config))
        return probes

    try:
        # Three rounds fill the bounded history of recent results (100, and 200 failures),
        # which keeps the removed targets of earlier rounds alive until it rolls over.
        await run_rounds("leaks, one scheduler, targets added and removed", one_round, 3)
    finally:
        await sched.stop()
        await resources.aclose()


async def test_engine_lifetime_returns_to_baseline(make_config: MakeConfig) -> None:
    """A whole Engine per round, started on the fault suite and closed, as the daemon is."""

    async def one_round(_n: int) -> dict[str, int]:
        async with fault_suite(make_config) as cfg:
            engine = Engine()
            try:
                engine.start(cfg)
                await asyncio.sleep(RUN_SECONDS)
            finally:
                await engine.aclose()
            return {st.target.name: st.probes for st in engine.scheduler.snapshot()}

    await run_rounds("leaks, one engine per round", one_round, 1)
