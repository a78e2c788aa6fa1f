"""`drill --repeat`: phase offsets over the scrape cycle and the summary, on a virtual clock.

The world below is a model, not Prometheus: the scrape ticks every 15 s, a vantage's failure is
seen at the first tick a second after the inject, the alert fires a cycle later and the page
arrives 10 s after that. What is tested is the drill's bookkeeping: where each run's inject falls
in the cycle, that each run waits for the previous one to resolve, and the figures it prints.
The real chain (demo + Prometheus + Alertmanager) is tests/commands/test_drill.py.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import pytest

from exporter.commands import drill

SCRAPE = 15.0


class World:
    def __init__(self, resolves: bool = True) -> None:
        self.now = 100.0
        self.outage: float | None = None
        self.recovered: float | None = None
        self.hook: drill._Webhook | None = None
        self.injects: list[float] = []
        self.resolves = resolves

    # -- the model
    def detect_at(self) -> float:
        assert self.outage is not None
        return math.ceil((self.outage + 1) / SCRAPE) * SCRAPE

    def firing(self) -> bool:
        if self.outage is None:
            return False
        if self.recovered is not None and self.resolves and self.now >= self.recovered + 60:
            return False
        return self.now >= self.detect_at() + SCRAPE

    def update(self) -> None:
        hook = self.hook
        assert hook is not None
        if self.outage is None:
            return
        page = self.detect_at() + SCRAPE + 10
        if not hook.firing.is_set() and self.now >= page:
            hook.firing_at = page
            hook.firing.set()
        if self.recovered is not None and self.resolves and hook.firing.is_set():
            done = self.recovered + 65
            if not hook.resolved.is_set() and self.now >= done:
                hook.resolved_at = done
                hook.resolved.set()

    async def command(self, argv: list[str]) -> None:
        if argv == ["inject"]:
            self.outage, self.recovered = self.now, None
            self.injects.append(self.now)
        else:
            self.recovered = self.now


class FakeClock(drill.Clock):
    def __init__(self, world: World) -> None:
        self.world = world

    def monotonic(self) -> float:
        return self.world.now

    def time(self) -> float:
        return 1_700_000_000.0 + self.world.now

    async def sleep(self, seconds: float) -> None:
        self.world.now += seconds
        self.world.update()
        await asyncio.sleep(0)


class FakePrometheus(drill._Prometheus):
    def __init__(self, world: World) -> None:
        self.world = world

    async def query(self, expr: str) -> list[dict[str, Any]]:
        w = self.world
        failing = w.outage is not None and w.now >= w.detect_at()
        back = w.recovered is not None and w.now >= w.recovered + 5
        down = failing and not back
        if expr.startswith("max(") and expr.endswith("== 1"):
            return (
                [] if down or (w.outage is not None and not back and w.recovered is None) else [{}]
            )
        if expr.endswith("== 0"):
            return [{}] if down else []
        return [{}] if back else []

    async def firing(self, alert: str, service: str, region: str) -> dict[str, Any] | None:
        if self.world.firing():
            return {"annotations": {"failover_to": "us-east"}}
        return None


def _opts(runs: int) -> drill.DrillOptions:
    return drill.DrillOptions(
        prometheus="http://unused",
        service="shop",
        region="eu-west",
        inject=["inject"],
        recover=["recover"],
        repeat=runs,
        scrape_interval=SCRAPE,
    )


async def _repeat(world: World, runs: int) -> list[drill.Report]:
    clock = FakeClock(world)
    hook = drill._Webhook("FailoverPrimaryRegionDown", "shop", "eu-west", clock)
    world.hook = hook
    chain = drill.Chain(_opts(runs), FakePrometheus(world), hook, clock, world.command)
    return await drill.repeat(chain)


def test_phase_offsets_spread_the_runs_over_the_cycle() -> None:
    assert [drill.phase_offset(i, 5, 15.0) for i in range(5)] == [0.0, 3.0, 6.0, 9.0, 12.0]
    assert [drill.phase_offset(i, 3, 15.0) for i in range(3)] == [0.0, 5.0, 10.0]
    # From any moment, the wait lands on the wanted phase of the anchor's cycle, within one cycle.
    for now in (100.0, 101.0, 114.5, 195.0, 301.25):
        for offset in (0.0, 5.0, 10.0):
            wait = drill.phase_delay(now, 100.0, 15.0, offset)
            assert 0.0 <= wait < 15.0
            assert ((now + wait - 100.0) % 15.0) == pytest.approx(offset)


async def test_repeat_injects_at_each_phase_after_the_previous_run_resolved() -> None:
    world = World()
    reports = await _repeat(world, 3)
    assert [r.ok for r in reports] == [True, True, True]
    assert [(t - 100.0) % SCRAPE for t in world.injects] == [0.0, 5.0, 10.0]
    assert [r.phase_seconds for r in reports] == [0.0, 5.0, 10.0]
    # Each inject waited for the previous run's resolved notification (recover + 65 s).
    assert world.injects == [100.0, 195.0, 305.0]
    assert [r.detect_seconds for r in reports] == [5.0, 15.0, 10.0]
    assert [r.alert_seconds for r in reports] == [20.0, 30.0, 25.0]
    assert [r.page_seconds for r in reports] == [30.0, 40.0, 35.0]
    assert {r.failover_to for r in reports} == {"us-east"}
    assert drill.summary([r.page_seconds for r in reports]) == (30.0, 35.0, 40.0)
    text = drill.summary_text(reports, 3)
    assert "detect min 5.0 s, median 10.0 s, max 15.0 s" in text
    assert "page   min 30.0 s, median 35.0 s, max 40.0 s" in text
    assert text.splitlines()[-1] == "  result: PASS"


async def test_a_run_that_does_not_resolve_stops_the_repeats() -> None:
    world = World(resolves=False)
    reports = await _repeat(world, 3)
    assert len(reports) == 1
    assert world.injects == [100.0]
    assert "not resolved before the next repeat; repeats stopped" in reports[0].errors
    assert drill.summary_text(reports, 3).splitlines()[-1] == "  result: FAIL"


def test_summary_of_nothing_observed() -> None:
    assert drill.summary([None, None]) is None
    assert drill.summary([3.0, None, 1.0]) == (1.0, 2.0, 3.0)


def test_repeat_needs_recover(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    opts = _opts(3)
    opts.recover = None
    assert drill.execute(opts, str(tmp_path / "r.json")) == 2
    assert "--repeat needs --recover" in capsys.readouterr().out
