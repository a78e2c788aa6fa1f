"""100 reloads through POST /-/reload while a few hundred probes a second hit real local servers.

The servers count every request per target and note when it arrived (on the exporter's own loop
clock), so "no probe lost or doubled" is checked against the schedule itself: each target's
slots are `phase_offset + k * interval`, and every slot of a target that stayed through all the
reloads must have exactly one request, except slots the exporter says it skipped. Between
reloads every scrape is compared with the previous one: counters of targets that stayed never go
down, removed targets' series are gone, added ones are there at once. Failed reloads (a YAML
error, a validation error, an unreadable file) in the middle must change nothing at all.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import random
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from exporter import metrics
from exporter.engine import Engine
from exporter.scheduler import phase_offset
from exporter.web import ENGINE
from tests.conftest import MakeClient, MakeConfig

INTERVAL = 0.2
TIMEOUT = 0.15
HTTP_TARGETS = 24  # half of them on kept-alive connections, which must survive reloads too
TCP_TARGETS = 16
CHURN = 4  # targets in the sliding window: each reload adds one and removes one
RELOADS = 100
# Reload number -> a broken config written in its place; each must change nothing.
BROKEN_AT = {25: "yaml", 50: "invalid", 75: "unreadable"}
# Counter-like samples: never lower on a later scrape while their target stays.
MONOTONIC = re.compile(r"_total$|_count$|_sum$|_bucket$")
SAMPLE = re.compile(r"^(failover_[a-z_]+)\{([^}]*)\} (\S+)$", re.M)
OWN = re.compile(r"^(failover_exporter_[a-z_]+) (\S+)$", re.M)
TARGET_LABEL = re.compile(r'(?:^|,)target="([^"]*)"')


class Counting:
    """Per-target arrival times (loop clock) at a real HTTP server and a real TCP server."""

    def __init__(self) -> None:
        self.arrivals: dict[str, list[float]] = collections.defaultdict(list)
        self.active: collections.Counter[str] = collections.Counter()
        self.max_active: collections.Counter[str] = collections.Counter()
        self.http_port = 0
        self.tcp_port = 0

    def _arrive(self, name: str) -> None:
        self.arrivals[name].append(asyncio.get_running_loop().time())
        self.active[name] += 1
        self.max_active[name] = max(self.max_active[name], self.active[name])

    async def http(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self._arrive(name)
        try:
            return web.Response(text="ok\n")
        finally:
            self.active[name] -= 1

    async def tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5):
                line = await reader.readline()
            name = line.decode().strip()
            if not name:
                return
            self._arrive(name)
            try:
                writer.write(b"ok\n")
                await writer.drain()
            finally:
                self.active[name] -= 1
        except (OSError, TimeoutError):
            pass
        finally:
            writer.transport.abort()


@contextlib.asynccontextmanager
async def counting_servers() -> AsyncIterator[Counting]:
    srv = Counting()
    app = web.Application()
    app.router.add_get("/t/{name}", srv.http)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None
    srv.http_port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    tcp = await asyncio.start_server(srv.tcp, "127.0.0.1", 0)
    srv.tcp_port = tcp.sockets[0].getsockname()[1]
    try:
        yield srv
    finally:
        tcp.close()
        await runner.cleanup()
        await tcp.wait_closed()


def target_line(name: str, srv: Counting, query: str = "") -> str:
    if name.startswith("p"):
        probe = (
            f'{{kind: tcp, address: "127.0.0.1:{srv.tcp_port}", send: "{name}\\n", expect: "^ok"}}'
        )
    else:
        keep = ", keep_alive: true" if int(name[1:]) % 2 == 0 else ""
        probe = f'{{kind: http, url: "http://127.0.0.1:{srv.http_port}/t/{name}{query}"{keep}}}'
    return f"      - {{name: {name}, region: r1, image: i1, probe: {probe}}}"


STABLE = [f"h{i:02d}" for i in range(HTTP_TARGETS)] + [f"p{i:02d}" for i in range(TCP_TARGETS)]


def config_for(n: int, srv: Counting) -> tuple[str, set[str]]:
    """Config number n: the stable targets (shuffled: their lines move), one target whose URL
    changes every time, and a sliding window of churn targets."""
    rng = random.Random(n)
    stable = list(STABLE)
    rng.shuffle(stable)
    churn = [f"c{i:03d}" for i in range(n, n + CHURN)]
    lines = [target_line(name, srv) for name in stable]
    lines.append(target_line("h99", srv, f"?v={n}"))
    lines += [target_line(name, srv) for name in churn]
    text = (
        "vantage: test\n"
        f"defaults: {{interval: {INTERVAL * 1000:g}ms, timeout: {TIMEOUT * 1000:g}ms}}\n"
        "services:\n"
        "  - name: svc\n"
        "    regions: [{name: r1, role: primary, priority: 1}]\n"
        "    images: [{name: i1, ref: example/svc:1}]\n"
        "    targets:\n" + "\n".join(lines) + "\n"
    )
    return text, {*stable, "h99", *churn}


def broken(kind: str, good: str) -> str:
    if kind == "yaml":
        return good + "  - [unclosed\n"
    # Valid YAML, and it would drop most targets if it were applied.
    assert kind == "invalid"
    head, _, _ = good.partition("    targets:\n")
    return head.replace("timeout: 150ms", "timeout: 150ms, colour: blue") + "    targets: []\n"


Series = dict[str, float]


def parse(text: str) -> Series:
    """Per-target samples only ({name{labels}: value}); the labels here need no unescaping."""
    return {f"{m[1]}{{{m[2]}}}": float(m[3]) for m in SAMPLE.finditer(text) if "target=" in m[2]}


def target_of(series: str) -> str:
    match = TARGET_LABEL.search(series[series.index("{") + 1 :])
    assert match is not None, series
    return match[1]


async def scrape(client: TestClient) -> tuple[Series, dict[str, float]]:
    resp = await client.get("/metrics")
    assert resp.status == 200
    text = await resp.text()
    own = {
        m[1]: float(m[2])
        for m in re.finditer(
            r"^(failover_exporter_config_last_reload_successful) (\S+)$", text, re.M
        )
    }
    return parse(text), own


@pytest.mark.slow
@pytest.mark.timeout(150)
async def test_hundred_reloads_under_load(
    make_config: MakeConfig, exporter_client: MakeClient, tmp_path: Path
) -> None:
    cfg_path = tmp_path / "config.yml"
    async with counting_servers() as srv:
        text, names = config_for(0, srv)
        loop = asyncio.get_running_loop()
        before_start = loop.time()
        client = await exporter_client(make_config(text))
        engine = client.server.app[ENGINE]
        sched = engine.scheduler
        started = loop.time()
        wall = time.monotonic()
        stable_states = {s.target.name: s for s in sched.snapshot() if s.target.name in STABLE}
        stable_targets = {s.target.name: s.target for s in stable_states.values()}
        await asyncio.sleep(0.5)
        previous, _ = await scrape(client)
        scrapes = 1
        failed_reloads = 0

        for n in range(1, RELOADS + 1):
            if n in BROKEN_AT:
                kind = BROKEN_AT[n]
                good_text = cfg_path.read_text()
                if kind == "unreadable":
                    cfg_path.unlink()
                else:
                    cfg_path.write_text(broken(kind, good_text))
                running, tasks = engine.config, dict(sched._tasks)
                resp = await client.post("/-/reload")
                assert resp.status == 500, (kind, await resp.text())
                failed_reloads += 1
                assert engine.config is running, kind
                assert sched._tasks == tasks, f"{kind}: a failed reload touched the probes"
                current, own = await scrape(client)
                scrapes += 1
                assert own["failover_exporter_config_last_reload_successful"] == 0
                assert {target_of(s) for s in current} == names, kind
                cfg_path.write_text(good_text)

            text, wanted = config_for(n, srv)
            cfg_path.write_text(text)
            resp = await client.post("/-/reload")
            assert resp.status == 200, await resp.text()
            current, own = await scrape(client)
            scrapes += 1
            assert own["failover_exporter_config_last_reload_successful"] == 1
            seen = {target_of(s) for s in current}
            assert seen == wanted, (n, sorted(seen ^ wanted))
            for added in wanted - names:
                assert metrics.PROBES.name in {
                    s.partition("{")[0] for s in current if target_of(s) == added
                }, added
            # Counters of every target that stayed (changed URL or not) carry on from where
            # they were; a series of such a target never disappears.
            for series, value in previous.items():
                if target_of(series) not in wanted:
                    continue
                if MONOTONIC.search(series.partition("{")[0]) and series in current:
                    assert current[series] >= value, (n, series, value, current[series])
                if "failover_probe_phase" not in series and "http_status" not in series:
                    assert series in current, (n, series)
            previous, names = current, wanted
            await asyncio.sleep(0.05)

        reload_seconds = time.monotonic() - wall
        # The stable targets' state objects (and so their series) are the ones from the start.
        for name, state in stable_states.items():
            assert sched.states[state.target.key] is state, name
            assert sched.targets[state.target.key] is stable_targets[name], name
        assert sched.task_count == len(names)
        last, _ = await scrape(client)
        await sched.stop()
        stopped = loop.time()
        skipped = sum(
            engine.registry.get_sample_value(metrics.SKIPPED.name, {"reason": r.value}) or 0
            for r in metrics.SkipReason
        )
        # Let handlers of requests cut off by the stop finish counting.
        await asyncio.sleep(0.05)

    probes = sum(s.probes for s in stable_states.values())
    elapsed = stopped - started
    failed: collections.Counter[str] = collections.Counter()
    for state in stable_states.values():
        failed.update({r: n for r, n in state.failures.items() if n})
    print(
        f"\nreload under load: {RELOADS} good + {failed_reloads} failed reloads and {scrapes} "
        f"scrapes in {reload_seconds:.1f}s; {len(STABLE)} stable + 1 changing + {CHURN} churning "
        f"targets every {INTERVAL:g}s ({(len(STABLE) + 1 + CHURN) / INTERVAL:.0f} probes/s "
        f"scheduled); stable targets: {probes} probes in {elapsed:.1f}s, {skipped:g} skipped, "
        f"failures {dict(failed)}"
    )

    # The schedule is the reference: slots from each target's first probe to the last one that
    # had finished by the stop. Every slot ran exactly one probe, unless the exporter says it
    # skipped it (the skip counter is global: churn targets' skips loosen the bound, never
    # tighten it).
    missing = 0
    for name, state in stable_states.items():
        target = stable_targets[name]
        arrivals = srv.arrivals[name]
        successes = state.histograms[metrics.PROBE_DURATION.name].count
        failures = sum(state.failures.values())
        # Every recorded success had its own request and every request is a recorded probe,
        # except one cut off by the stop; a probe that timed out may not have got through.
        assert successes <= len(arrivals) <= state.probes + 1, (name, len(arrivals), state.probes)
        assert state.probes - failures <= len(arrivals), (name, len(arrivals), state.probes)
        assert srv.max_active[name] == 1, name
        # The first slot is the first after the start, which happened between these two.
        earliest = math.ceil((before_start - phase_offset(target)) / target.interval)
        latest = math.ceil((started - phase_offset(target)) / target.interval)
        last_slot = math.floor((stopped - phase_offset(target)) / target.interval)
        # The last slot's probe may have been cut off by the stop.
        assert state.probes <= last_slot - earliest + 1, f"{name}: more probes than slots"
        missing += max(0, last_slot - latest - state.probes)
        # And the final scrape's counter is the one the state holds.
        series = f"{metrics.PROBES.name}{{{state.labels}}}"
        assert last[series] <= state.probes, name
    print(f"slots without a probe over all stable targets: {missing}")
    assert missing <= skipped, f"{missing} probes lost, {skipped:g} skipped"


async def test_the_loop_keeps_running_while_a_reload_loads(tmp_path: Path) -> None:
    """Loading a config of hundreds of targets takes a while; probes in flight must not wait for
    it (a stalled loop turns their answers into timeouts). A ticker counts loop turns taken
    while one reload is awaited: loading on the loop itself would leave it at zero."""
    cfg_path = tmp_path / "config.yml"
    srv = Counting()
    srv.http_port, srv.tcp_port = 9, 9
    text, _ = config_for(0, srv)
    head, _, targets = text.partition("    targets:\n")
    lines = targets.splitlines()
    many = [line.replace("name: ", f"name: x{i}-") for i in range(8) for line in lines]
    cfg_path.write_text(head + "    targets:\n" + "\n".join(many) + "\n")
    engine = Engine(path=cfg_path)
    ticks = 0
    stop = False

    async def ticker() -> None:
        nonlocal ticks
        while not stop:
            await asyncio.sleep(0)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        await asyncio.sleep(0)
        before = ticks
        assert await engine.reload(), engine.last_reload_errors
        during = ticks - before
        assert engine.config is not None
        assert len(engine.config.targets) == len(many)
    finally:
        stop = True
        await task
        await engine.aclose()
    print(f"\nloop turns while loading {len(many)} targets: {during}")
    assert during > 1
