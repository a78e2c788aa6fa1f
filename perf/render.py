"""/metrics cost in-process: render CPU per line, the longest event-loop stall, gzip.

    .venv/bin/python perf/render.py [--targets 10000] [--repeat 5] [--mode render,serve]
                                     [--loop uvloop|asyncio] [--cpu N]

States are built the way the scheduler builds them (one TargetState per http target of a
bench-like config, each fed a few Results shaped like the http probe's), frozen like the daemon
freezes its start-up objects, then fed one more Result each (young objects for the collector).
`--cpu N` pins this process to one core, as `make bench` pins the exporter.

- render: drives `exposition.chunks` on a loop with a ticker task; reports CPU (process_time)
  per scrape and per line, chunk count and the longest gap between ticker turns (the stall a
  probe would feel). Also gzips the body at levels 1 and 6 (CPU time and ratio).
- serve: the real `/metrics` handler on an aiohttp server on 127.0.0.1; `curl` (another
  process, so the client's CPU is not on our loop) fetches it plain and with gzip. Reports the
  client's total time, our process CPU during the scrape, the longest lateness of a 1 ms
  timer on the loop (a probe due every millisecond), the longest GC pause, and how often the
  process was preempted (involuntary context switches: on a shared core, stalls longer than
  a render step are other processes' time slices, not ours).

Not a test: timings depend on the machine. Numbers go in reports, with `uptime`'s load.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import resource
import statistics
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiohttp import web

from exporter import config, exposition, metrics
from exporter import web as handlers
from exporter.engine import Engine
from exporter.model import Target
from exporter.probes import REGISTRY
from exporter.state import Result, TargetState


def config_text(n: int) -> str:
    # The same shape as perf/run.py's scrape config.
    head = [
        "vantage: bench",
        "defaults: {interval: 20s, timeout: 1s, max_concurrency: 4096}",
        "services:",
        "  - name: bench",
        "    regions: [{name: r1, role: primary, priority: 1}]",
        "    images: [{name: i1, ref: perf/target:1}]",
        "    targets:",
    ]
    url = "http://10.213.0.2:8080/?id="
    body = [
        f"      - {{name: t{i}, region: r1, image: i1, probe: {{kind: http, url: '{url}{i}'}}}}"
        for i in range(n)
    ]
    return "\n".join(head + body) + "\n"


def http_result(target: Target, i: int, k: int) -> Result:
    # Real probes give full-precision floats; one in 23 fails.
    d = 0.0101 + (i * 7 + k * 13) % 97 * 1.37e-5
    ok = (i + k) % 23 != 0
    return Result(
        target=target,
        started=time.time(),
        duration=d,
        success=ok,
        reason=None if ok else "connect",
        message="",
        gauges={metrics.HTTP_STATUS.name: 200.0} if ok else {},
        phases={
            "dns": 0.0,
            "connect": d * 0.01,
            "tls": 0.0,
            "first_byte": d * 0.97,
            "transfer": d * 0.02,
        },
        debug=[],
    )


def build_states(n: int) -> tuple[list[TargetState], Engine]:
    cfg = config.parse(config_text(n), "bench.yml")
    engine = Engine()
    states = []
    for i, target in enumerate(cfg.targets):
        kind = REGISTRY[target.kind]
        st = TargetState(target, kind.reasons, kind.gauges)
        for k in range(4):
            st.record(http_result(target, i, k))
        states.append(st)
        engine.scheduler.states[target.key] = st
    engine.config = cfg
    # Start-up objects are frozen like the daemon freezes them; then one more probe per target,
    # so that the collector has a probe cycle's worth of young objects, as in a running exporter.
    gc.collect()
    gc.freeze()
    for i, st in enumerate(states):
        st.record(http_result(st.target, i, 4))
    return states, engine


class GCPauses:
    """Collections and their longest pause while active (gc.callbacks)."""

    def __init__(self) -> None:
        self.count = 0
        self.worst = 0.0
        self._t = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._t = time.perf_counter()
        else:
            self.count += 1
            self.worst = max(self.worst, time.perf_counter() - self._t)

    def __enter__(self) -> GCPauses:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)


class Ticker:
    """A timer every `period` seconds on the loop; the worst lateness is the stall a probe due
    at that moment would have seen."""

    def __init__(self, period: float) -> None:
        self.period = period
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        # perf_counter, not loop.time(): uvloop's clock has millisecond resolution.
        clock = time.perf_counter
        while True:
            due = clock() + self.period
            await asyncio.sleep(self.period)
            self.worst = max(self.worst, clock() - due)

    def start(self) -> None:
        self.worst = 0.0
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> float:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        return self.worst


async def render_once(states: list[TargetState], engine: Engine) -> tuple[float, float, bytes, int]:
    regions = engine.config.regions if engine.config else ()
    ticker = Ticker(0.0)
    ticker.start()
    await asyncio.sleep(0)
    parts = []
    cpu = time.process_time()
    async for chunk in exposition.chunks(states, regions, engine.registry):
        parts.append(chunk)
    cpu = time.process_time() - cpu
    stall = await ticker.stop()
    return cpu, stall, b"".join(parts), len(parts)


def curl(port: int, gzip: bool) -> tuple[float, int]:
    cmd = ["curl", "-sS", "-o", "/dev/null", "-w", "%{time_total} %{size_download}"]
    others = sorted(set(range(os.cpu_count() or 1)) - os.sched_getaffinity(0))
    if others:
        # Pinned (--cpu): the client runs on the other cores, like make bench's harness.
        cmd = ["taskset", "-c", ",".join(map(str, others)), *cmd]
    if gzip:
        cmd += ["-H", "Accept-Encoding: gzip"]
    out = subprocess.run(
        [*cmd, f"http://127.0.0.1:{port}/metrics"], capture_output=True, check=True, text=True
    ).stdout.split()
    return float(out[0]), int(out[1])


async def serve_once(port: int, gzip: bool) -> tuple[float, float, float, int, float, int, int]:
    ticker = Ticker(0.001)
    ticker.start()
    await asyncio.sleep(0.01)
    switches = resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw
    cpu = time.process_time()
    with GCPauses() as pauses:
        seconds, size = await asyncio.to_thread(curl, port, gzip)
    cpu = time.process_time() - cpu
    switches = resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw - switches
    stall = await ticker.stop()
    return seconds, cpu, stall, size, pauses.worst, pauses.count, switches


def med(xs: list[float], scale: float = 1000.0, nd: int = 1) -> str:
    """Median (min, max), scaled (ms by default)."""
    m, lo, hi = (round(x * scale, nd) for x in (statistics.median(xs), min(xs), max(xs)))
    return f"{m} (min {lo}, max {hi})"


async def main(a: argparse.Namespace) -> None:
    t = time.perf_counter()
    states, engine = build_states(a.targets)
    print(f"{a.targets} targets built in {time.perf_counter() - t:.1f} s; load {os.getloadavg()}")
    modes = a.mode.split(",")
    try:
        if "render" in modes:
            cpus, stalls = [], []
            body, n = b"", 0
            for _ in range(a.repeat):
                cpu, stall, body, n = await render_once(states, engine)
                cpus.append(cpu)
                stalls.append(stall)
            lines = body.count(b"\n")
            print(
                f"render: {len(body) / 1e6:.1f} MB, {lines} lines, {n} chunks; "
                f"CPU ms {med(cpus)}; per line ns {med([c / lines for c in cpus], 1e9, 0)}; "
                f"longest stall ms {med(stalls)}"
            )
            for level in (1, 6):
                zc: list[float] = []
                size = 0
                for _ in range(max(1, a.repeat // 2)):
                    c = time.process_time()
                    z = zlib.compressobj(level, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
                    size = sum(
                        len(z.compress(body[i : i + (1 << 18)]))
                        for i in range(0, len(body), 1 << 18)
                    )
                    size += len(z.flush())
                    zc.append(time.process_time() - c)
                ratio = len(body) / size
                print(
                    f"gzip level {level}: CPU ms {med(zc)}; {size / 1e6:.2f} MB, ratio {ratio:.1f}"
                )
        if "serve" in modes:
            app = web.Application()
            app[handlers.ENGINE] = engine
            app.router.add_get("/metrics", handlers.metrics)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            try:
                for gz in (True, False):
                    rows = [await serve_once(port, gz) for _ in range(a.repeat)]
                    total, spent, late = (med([r[k] for r in rows]) for k in range(3))
                    print(
                        f"serve {'gzip ' if gz else 'plain'}: {rows[-1][3] / 1e6:.1f} MB on the "
                        f"wire; total ms {total}; our CPU ms {spent}; "
                        f"longest 1 ms-timer lateness ms {late}; longest GC pause ms "
                        f"{med([r[4] for r in rows])}, {sum(r[5] for r in rows)} collections; "
                        f"preempted {sorted(r[6] for r in rows)} times"
                    )
            finally:
                await runner.cleanup()
    finally:
        await engine.aclose()


def cli() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--targets", type=int, default=10_000)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--mode", default="render,serve", help="comma list of render,serve")
    p.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    p.add_argument("--cpu", type=int, help="pin to this core (curl runs on the others)")
    a = p.parse_args()
    if a.cpu is not None:
        os.sched_setaffinity(0, {a.cpu})
    runner: Callable[..., None]
    if a.loop == "uvloop":
        import uvloop

        runner = uvloop.run
    else:
        runner = asyncio.run
    runner(main(a))


if __name__ == "__main__":
    cli()
