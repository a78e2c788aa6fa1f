"""Driven time for scheduler tests: an event loop whose clock moves only when nothing is ready.

A test on this loop never waits for the wall clock and never counts arrivals inside a tolerance:
when every ready callback has run and no I/O is pending, the clock jumps to the next timer. A
stall (a probe blocking the loop) is simulated by `advance`, which moves the clock inside a
callback exactly as a blocking call would appear to the loop.

Only in-process work belongs on it: real sockets deliver in real time, and a jump past a pending
read would turn into a timeout that the target never caused. The scheduler tests therefore swap
the http kind's `run` for `FakeProbes`, which records each run at the loop's clock.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import selectors
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest

from exporter.probes import REGISTRY, ProbeContext

T = TypeVar("T")

# Far from zero, so that offsets and slots are computed as they are in a long-running process.
EPOCH = 1_000_000.0


class _DrivenSelector(selectors.DefaultSelector):
    def __init__(self, loop: VirtualTimeLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:
            # Nothing is scheduled: only another thread (call_soon_threadsafe) can wake the loop.
            return super().select(None)
        self._loop.now += timeout
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self.now = EPOCH
        super().__init__(_DrivenSelector(self))

    def time(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock as a call that blocks the loop for `seconds` would."""
        self.now += seconds


def run_virtual(main: Callable[[VirtualTimeLoop], Coroutine[Any, Any, T]]) -> T:
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(main(loop))
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


@dataclasses.dataclass
class FakeProbes:
    """Stands in for the http kind: each run is counted per target name (the URL's last path
    segment, query dropped), takes `delay[name]` seconds of the loop's clock and succeeds.

    A run counts as active from its start until it returns or is cancelled, so overlaps it
    reports are real overlaps of the scheduler's runs.
    """

    delay: dict[str, float] = dataclasses.field(default_factory=dict)
    default_delay: float = 0.0
    count: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    active: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    max_active: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    total_active: int = 0
    max_total_active: int = 0
    arrivals: dict[str, list[float]] = dataclasses.field(
        default_factory=lambda: collections.defaultdict(list)
    )

    @staticmethod
    def url(name: str) -> str:
        return f"http://fake.invalid/t/{name}"

    async def run(self, prepared: Any, ctx: ProbeContext) -> None:
        name = str(prepared.url).split("?", 1)[0].rsplit("/", 1)[-1]
        loop = asyncio.get_running_loop()
        self.arrivals[name].append(loop.time())
        self.count[name] += 1
        self.active[name] += 1
        self.max_active[name] = max(self.max_active[name], self.active[name])
        self.total_active += 1
        self.max_total_active = max(self.max_total_active, self.total_active)
        try:
            await asyncio.sleep(self.delay.get(name, self.default_delay))
        finally:
            self.active[name] -= 1
            self.total_active -= 1


@pytest.fixture
def fake_probes(monkeypatch: pytest.MonkeyPatch) -> FakeProbes:
    fake = FakeProbes()
    monkeypatch.setitem(REGISTRY, "http", dataclasses.replace(REGISTRY["http"], run=fake.run))
    return fake


async def settle(loop: VirtualTimeLoop, until: Callable[[], bool], limit: float) -> bool:
    """Let driven time pass in small steps until `until()` holds or `limit` seconds pass."""
    deadline = loop.time() + limit
    while loop.time() < deadline:
        if until():
            return True
        await asyncio.sleep(0.01)
    return until()
