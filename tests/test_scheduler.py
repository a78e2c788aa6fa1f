"""Scheduler and reload against real HTTP servers that count what reaches them.

Every property is measured where it matters, at the server: how many requests arrived, when, and
how many were running at once per target and in total.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from exporter import metrics
from exporter.metrics import SelfMetrics
from exporter.model import Config
from exporter.resources import Resources
from exporter.scheduler import Limiter, Scheduler, phase_offset
from exporter.web import ENGINE
from tests.conftest import MakeClient, MakeConfig
from tests.support.configs import config_text
from tests.support.servers import StartServer, counting_server
from tests.support.virtual_time import FakeProbes, VirtualTimeLoop, run_virtual, settle

__all__ = ["counting_server"]  # a fixture, re-exported for the tests below


def new_scheduler(overload_window: int = 2) -> tuple[Scheduler, CollectorRegistry, Resources]:
    """A scheduler with its own registry; a 2 s overload window instead of 30 s, so the gauge
    can be seen turning off in a test."""
    registry = CollectorRegistry()
    resources = Resources()
    return Scheduler(SelfMetrics(registry), resources, overload_window), registry, resources


def on_driven(
    body: Callable[[VirtualTimeLoop, Scheduler, CollectorRegistry], Awaitable[None]],
) -> None:
    """Run `body` with a fresh scheduler on the driven-time loop; stop and close it after."""

    async def main(loop: VirtualTimeLoop) -> None:
        sched, registry, resources = new_scheduler()
        try:
            await body(loop, sched, registry)
        finally:
            await sched.stop()
            await resources.aclose()

    run_virtual(main)


async def wait_for(check: Callable[[], bool], timeout: float, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(step)
    return check()


def probes_of(sched: Scheduler) -> dict[str, int]:
    return {st.target.name: st.probes for st in sched.snapshot()}


def on_slot(at: float, offset: float, period: float) -> bool:
    """`at` is one of the slots offset + k * period (the driven clock has no lateness)."""
    late = (at - offset) % period
    return min(late, period - late) < 1e-6


# -- spread and intervals ------------------------------------------------------------------
#
# These run on the driven-time loop (tests/support/virtual_time.py) with the http kind's run
# swapped for FakeProbes: what is under test is the scheduler's timers, counted at the probe.


def test_offsets_are_deterministic_spread_and_survive_reload(
    make_config: MakeConfig, fake_probes: FakeProbes
) -> None:
    fake = fake_probes
    names = [f"t{i:02d}" for i in range(40)]
    targets = {n: fake.url(n) for n in names}
    cfg = make_config(config_text(targets, "interval: 1s, timeout: 500ms"))
    offsets = {t.name: phase_offset(t) for t in cfg.targets}
    assert all(0 <= o < 1 for o in offsets.values())
    # 40 targets over 10 slices of the interval: a burst would fill one slice.
    slices = collections.Counter(int(o * 10) for o in offsets.values())
    assert len(slices) >= 8, slices
    assert max(slices.values()) <= 10, slices

    async def body(loop: VirtualTimeLoop, sched: Scheduler, _: CollectorRegistry) -> None:
        sched.apply(cfg)
        assert await settle(loop, lambda: all(fake.count[n] >= 1 for n in names), 2.5)
        first = sorted(fake.arrivals[n][0] for n in names)
        assert first[-1] - first[0] > 0.6, "first probes came in a burst"
        for n in names:
            assert on_slot(fake.arrivals[n][0], offsets[n], 1.0), n

        # Reload: one target changed (new URL), one added, the rest unchanged. Every target
        # that stays keeps its phase, so the reload causes no burst and no extra probe.
        changed = dict(targets, t00=fake.url("t00") + "?v=2", extra=fake.url("extra"))
        cfg2 = make_config(config_text(changed, "interval: 1s, timeout: 500ms"))
        assert {t.name: phase_offset(t) for t in cfg2.targets if t.name in offsets} == offsets
        reloaded_at = loop.time()
        before = dict(fake.count)
        sched.apply(cfg2)
        assert await settle(loop, lambda: all(fake.count[n] >= before[n] + 1 for n in names), 2.5)
        for n in names:
            after = [a for a in fake.arrivals[n] if a > reloaded_at]
            assert on_slot(after[0], offsets[n], 1.0), n
        for n in names[1:]:
            gaps = [b - a for a, b in itertools.pairwise(fake.arrivals[n])]
            assert gaps == pytest.approx([1.0] * len(gaps)), f"{n} around the reload: {gaps}"

    on_driven(body)


def test_each_target_on_its_own_interval_and_self_histograms(
    make_config: MakeConfig, fake_probes: FakeProbes
) -> None:
    fake = fake_probes
    cfg = make_config(
        config_text(
            {"fast": fake.url("fast"), "slow": fake.url("slow")},
            "interval: 100ms, timeout: 50ms",
            {"slow": ", interval: 300ms"},
        )
    )

    async def body(loop: VirtualTimeLoop, sched: Scheduler, registry: CollectorRegistry) -> None:
        sched.apply(cfg)
        await asyncio.sleep(1.55)
        await sched.stop()
        fast, slow = fake.arrivals["fast"], fake.arrivals["slow"]
        assert len(fast) in (15, 16), len(fast)
        assert len(slow) in (5, 6), len(slow)
        fast_gaps = [b - a for a, b in itertools.pairwise(fast)]
        slow_gaps = [b - a for a, b in itertools.pairwise(slow)]
        assert fast_gaps == pytest.approx([0.1] * len(fast_gaps))
        assert slow_gaps == pytest.approx([0.3] * len(slow_gaps))

        # Every probe that started observed its start delay; the loop-lag timer ran all along.
        started = registry.get_sample_value("failover_exporter_probe_start_delay_seconds_count")
        finished = sum(probes_of(sched).values())
        assert started == finished == len(fast) + len(slow)
        lag = registry.get_sample_value("failover_exporter_event_loop_lag_seconds_count")
        assert lag is not None
        assert lag >= 6  # one sample per 0.25 s

    on_driven(body)


# -- overrun and the concurrency cap -------------------------------------------------------


def skipped(registry: CollectorRegistry, reason: str) -> float:
    value = registry.get_sample_value("failover_exporter_probes_skipped_total", {"reason": reason})
    assert value is not None
    return value


def test_overrun_is_skipped_never_run_twice_at_once(
    make_config: MakeConfig, fake_probes: FakeProbes, caplog: pytest.LogCaptureFixture
) -> None:
    fake = fake_probes
    # Three targets each need the single slot for 120 ms every 200 ms: runs that wait for the
    # slot overrun their interval, and some waits last the whole timeout.
    fake.default_delay = 0.12
    names = ["a", "b", "c"]
    cfg = make_config(
        config_text(
            {n: fake.url(n) for n in names}, "interval: 200ms, timeout: 150ms, max_concurrency: 1"
        )
    )

    async def body(loop: VirtualTimeLoop, sched: Scheduler, registry: CollectorRegistry) -> None:
        sched.apply(cfg)
        assert await settle(
            loop,
            lambda: skipped(registry, "overrun") >= 1 and skipped(registry, "concurrency") >= 1,
            4,
        )
        await asyncio.sleep(1)
        await sched.stop()
        # Under this overload one target can lose every wait for the slot, so only the total of
        # probes is bounded from below.
        assert sum(fake.count.values()) >= 5
        for n in names:
            assert fake.max_active[n] <= 1, n
        assert fake.max_total_active == 1
        # Every skip is counted; the log says so once per period instead of once per skip.
        lines = [r for r in caplog.records if r.getMessage().startswith("probes skipped")]
        assert len(lines) == 1, [r.getMessage() for r in lines]
        assert skipped(registry, "concurrency") > len(lines)

    on_driven(body)


def test_concurrency_cap_holds_at_the_probe(
    make_config: MakeConfig, fake_probes: FakeProbes
) -> None:
    fake = fake_probes
    fake.default_delay = 0.1
    names = [f"c{i}" for i in range(10)]
    cfg = make_config(
        config_text(
            {n: fake.url(n) for n in names}, "interval: 300ms, timeout: 250ms, max_concurrency: 3"
        )
    )

    async def body(loop: VirtualTimeLoop, sched: Scheduler, registry: CollectorRegistry) -> None:
        sched.apply(cfg)
        assert registry.get_sample_value("failover_exporter_max_concurrency") == 3
        # Demand is 10 x 100 ms per 300 ms, more than three slots: the cap is reached, never
        # passed.
        assert await settle(loop, lambda: fake.max_total_active >= 3, 3)
        await asyncio.sleep(0.6)
        await sched.stop()
        assert fake.max_total_active == 3
        assert max(fake.max_active.values()) == 1

    on_driven(body)


# -- overload ------------------------------------------------------------------------------


def test_overloaded_gauge_turns_on_when_the_loop_is_blocked_and_off_again(
    make_config: MakeConfig, fake_probes: FakeProbes
) -> None:
    fake = fake_probes
    cfg = make_config(
        config_text({"x": fake.url("x")}, "interval: 200ms, timeout: 100ms, overload_delay: 150ms")
    )

    async def body(loop: VirtualTimeLoop, sched: Scheduler, registry: CollectorRegistry) -> None:
        def overloaded() -> float | None:
            return registry.get_sample_value("failover_exporter_overloaded")

        sched.apply(cfg)
        await asyncio.sleep(0.6)
        assert overloaded() == 0
        for _ in range(2):
            # Freeze the event loop for 0.4 s, as a blocking call in a probe would.
            loop.call_soon(loop.advance, 0.4)
            await asyncio.sleep(0.3)
        assert await settle(loop, lambda: overloaded() == 1, 3), "overload not reported"
        assert sched.overloaded()
        bucket = "failover_exporter_event_loop_lag_seconds_bucket"
        le = registry.get_sample_value(bucket, {"le": "0.1"})
        count = registry.get_sample_value("failover_exporter_event_loop_lag_seconds_count")
        assert le is not None
        assert count is not None
        assert count - le >= 2, "the stalls are not in the loop-lag histogram"
        assert await settle(loop, lambda: overloaded() == 0, 6), "overload never cleared"

    on_driven(body)


# -- shutdown ------------------------------------------------------------------------------


def _exporter_tasks() -> list[asyncio.Task[object]]:
    out = []
    for task in asyncio.all_tasks():
        coro = task.get_coro()
        code = getattr(coro, "cr_code", None)
        if code is not None and "/exporter/" in code.co_filename:
            out.append(task)
    return out


async def test_stop_cancels_and_awaits_everything_and_closes_resources(
    make_config: MakeConfig, counting_server: StartServer
) -> None:
    srv = await counting_server()
    srv.default_delay = 30  # hangs until the client goes away
    registry = CollectorRegistry()
    resources = Resources()
    sched = Scheduler(SelfMetrics(registry), resources)
    names = ["h1", "h2", "h3"]
    targets = {n: srv.url(n) for n in names}
    cfg = make_config(config_text(targets, "interval: 2s, timeout: 1500ms"))
    sched.apply(cfg)
    assert await wait_for(lambda: srv.total_active == 3, 3), "probes never got in flight"
    assert sched.task_count == 3
    assert len(_exporter_tasks()) == 4  # three targets and the loop-lag monitor

    await sched.stop()
    await resources.aclose()
    assert sched.task_count == 0
    assert _exporter_tasks() == []
    # Closed sessions closed their connections: the hanging handlers see their clients leave.
    assert await wait_for(lambda: srv.total_active == 0, 2)
    with pytest.raises(RuntimeError, match="closed"):
        await resources.shared("late", lambda: pytest.fail("opened after close"))


# -- reload through the running exporter -----------------------------------------------------


def parse_metrics(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = collections.defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name][tuple(sorted(sample.labels.items()))] = sample.value
    return out


def by_target(
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]], name: str
) -> dict[str, float]:
    """{target: value} for a per-target sample name (no extra labels)."""
    return {dict(k)["target"]: v for k, v in samples.get(name, {}).items()}


def targets_in(samples: dict[str, dict[tuple[tuple[str, str], ...], float]]) -> set[str]:
    return {dict(k).get("target", "") for series in samples.values() for k in series} - {""}


async def scrape(client: TestClient) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    resp = await client.get("/metrics")
    assert resp.status == 200
    return parse_metrics(await resp.text())


async def start_exporter(
    exporter_client: MakeClient, make_config: MakeConfig, text: str
) -> TestClient:
    return await exporter_client(make_config(text))


def write_config(cfg_path: Path, text: str) -> None:
    cfg_path.write_text(text)


async def test_good_reload_keeps_adds_and_removes_series(
    make_config: MakeConfig,
    counting_server: StartServer,
    exporter_client: MakeClient,
    tmp_path: Path,
) -> None:
    srv = await counting_server()
    defaults = "interval: 100ms, timeout: 80ms"
    v1 = {n: srv.url(n) for n in ("keep", "change", "gone")}
    client = await start_exporter(exporter_client, make_config, config_text(v1, defaults))
    engine = client.server.app[ENGINE]
    assert await wait_for(lambda: min(probes_of(engine.scheduler).values()) >= 3, 3)
    keep_state = next(s for s in engine.scheduler.snapshot() if s.target.name == "keep")
    before = by_target(await scrape(client), "failover_probes_total")

    v2 = {"keep": v1["keep"], "change": srv.url("change") + "?v=2", "new": srv.url("new")}
    write_config(tmp_path / "config.yml", config_text(v2, defaults))
    resp = await client.post("/-/reload")
    assert resp.status == 200, await resp.text()
    gone_at_reload = srv.count["gone"]
    samples = await scrape(client)
    assert "gone" not in targets_in(samples)
    assert {"keep", "change", "new"} <= targets_in(samples)
    after = by_target(samples, "failover_probes_total")
    assert after["keep"] >= before["keep"]
    assert after["change"] >= before["change"], "a changed target's counters were reset"
    assert after["new"] >= 0
    assert samples["failover_exporter_config_last_reload_successful"][()] == 1
    assert next(s for s in engine.scheduler.snapshot() if s.target.name == "keep") is keep_state
    # The status page's history forgets replaced targets (their old settings and secrets).
    current = engine.scheduler.targets
    recent = list(engine.scheduler.recent) + list(engine.scheduler.recent_failures)
    assert any(r.target.name == "keep" for r in recent)
    assert all(current.get(r.target.key) is r.target for r in recent)

    await asyncio.sleep(0.4)
    later = by_target(await scrape(client), "failover_probes_total")
    for name in ("keep", "change"):
        assert later[name] > after[name], f"{name} stopped probing"
    assert later["new"] >= 2
    assert srv.count["new"] >= 2
    # A probe in flight at the reload may still land; nothing after it.
    assert srv.count["gone"] <= gone_at_reload + 1


async def test_bad_reload_keeps_old_config_and_says_so(
    make_config: MakeConfig,
    counting_server: StartServer,
    exporter_client: MakeClient,
    tmp_path: Path,
) -> None:
    srv = await counting_server()
    good = config_text({"a": srv.url("a")}, "interval: 100ms, timeout: 80ms")
    client = await start_exporter(exporter_client, make_config, good)
    engine = client.server.app[ENGINE]
    assert await wait_for(lambda: srv.count["a"] >= 2, 3)

    bad = good.replace("timeout: 80ms", "timeout: 200ms, colour: blue")
    write_config(tmp_path / "config.yml", bad)
    resp = await client.post("/-/reload")
    body = await resp.text()
    assert resp.status == 500
    assert "previous config kept" in body
    cfg_file = str(tmp_path / "config.yml")
    assert f"{cfg_file}:2: defaults.colour: unknown key" in body
    assert f"{cfg_file}:2: defaults.timeout: timeout (200ms) must be below interval (100ms)" in body
    assert "Traceback" not in body

    samples = await scrape(client)
    assert samples["failover_exporter_config_last_reload_successful"][()] == 0
    page = await (await client.get("/")).text()
    assert "Last reload failed" in page
    assert "defaults.colour: unknown key" in page
    count = srv.count["a"]
    assert await wait_for(lambda: srv.count["a"] >= count + 2, 2), "old config stopped"
    assert engine.config is not None
    assert engine.config.targets[0].timeout == 0.08

    write_config(tmp_path / "config.yml", good)
    resp = await client.post("/-/reload")
    assert resp.status == 200
    samples = await scrape(client)
    assert samples["failover_exporter_config_last_reload_successful"][()] == 1
    assert "Last reload failed" not in await (await client.get("/")).text()


async def test_reloads_while_probing_lose_and_double_nothing(
    make_config: MakeConfig,
    counting_server: StartServer,
    exporter_client: MakeClient,
    tmp_path: Path,
) -> None:
    srv = await counting_server()
    srv.default_delay = 0.03
    defaults = "interval: 100ms, timeout: 80ms"
    names = [f"s{i}" for i in range(8)]
    base = {n: srv.url(n) for n in names}
    texts = [config_text(base, defaults), config_text(dict(base, extra=srv.url("x")), defaults)]
    client = await start_exporter(exporter_client, make_config, texts[0])
    engine = client.server.app[ENGINE]
    states = {s.target.name: s for s in engine.scheduler.snapshot()}
    for i in range(20):
        write_config(tmp_path / "config.yml", texts[(i + 1) % 2])
        resp = await client.post("/-/reload")
        assert resp.status == 200
        await asyncio.sleep(0.07)
    await engine.scheduler.stop()

    for n in names:
        state = engine.scheduler.states[("test", "svc", n)]
        assert state is states[n]
        probes = state.probes
        successes = state.histograms[metrics.PROBE_DURATION.name].count
        # Every success had its own request (nothing doubled); every request the server saw is
        # a probe (nothing lost), except one still in flight at stop. A probe can time out on a
        # busy machine before its request arrives, so probes may exceed arrivals.
        assert successes <= srv.count[n] <= probes + 1, (n, successes, srv.count[n], probes)
        assert probes >= 8, (n, probes)
        assert srv.max_active[n] == 1, n


def test_concurrency_cap_holds_across_a_reload_that_changes_it(
    make_config: MakeConfig, fake_probes: FakeProbes
) -> None:
    fake = fake_probes
    fake.default_delay = 0.15
    names = [f"c{i}" for i in range(12)]
    targets = {n: fake.url(n) for n in names}

    def cfg(cap: int) -> Config:
        return make_config(
            config_text(targets, f"interval: 250ms, timeout: 200ms, max_concurrency: {cap}")
        )

    async def body(loop: VirtualTimeLoop, sched: Scheduler, _: CollectorRegistry) -> None:
        sched.apply(cfg(4))
        assert await settle(loop, lambda: fake.total_active >= 4, 3)
        # Probes holding a slot of the old cap count against the new one: no probe starts until
        # fewer than two are in flight, so no arrival after the reload sees more than two.
        fake.max_total_active = 0
        sched.apply(cfg(2))
        await asyncio.sleep(1.0)
        assert fake.max_total_active == 2
        sched.apply(cfg(3))
        fake.max_total_active = 0
        await asyncio.sleep(0.8)
        await sched.stop()
        assert fake.max_total_active == 3

    on_driven(body)


async def test_limiter_passes_on_a_slot_granted_to_a_cancelled_waiter() -> None:
    limiter = Limiter(1)
    await limiter.acquire()
    waiter = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0)
    # The slot is handed to the waiter, which is cancelled before it runs (as a probe's
    # timeout can fire in the same loop iteration): the slot must not leak.
    limiter.release()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert limiter.held == 0
    await asyncio.wait_for(limiter.acquire(), 1)
    assert limiter.held == 1
    limiter.resize(0)
    blocked = asyncio.create_task(limiter.acquire())
    limiter.release()
    await asyncio.sleep(0.01)
    assert not blocked.done(), "acquired beyond a cap lowered to 0"
    limiter.resize(1)
    await asyncio.wait_for(blocked, 1)
    assert limiter.held == 1
