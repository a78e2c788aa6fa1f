"""The exporter watching itself: event-loop lag, probe start delay, and the overload verdict.

Above the config's `overload_delay` the exporter's latency figures include its own queuing;
it says so in `failover_exporter_overloaded` and on the status page.
"""

from __future__ import annotations

import asyncio
import collections

from exporter.metrics import SelfMetrics

# Seconds over which the exporter judges itself overloaded.
OVERLOAD_WINDOW = 30
LAG_PERIOD = 0.25


class SelfWatch:
    def __init__(self, self_metrics: SelfMetrics, window: int = OVERLOAD_WINDOW) -> None:
        self.metrics = self_metrics
        self.overload_delay = 0.05
        # Per second: [probes started, probes started late, loop lag samples over budget].
        self._window: collections.deque[list[int]] = collections.deque(maxlen=window)
        self._window_second = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start sampling the loop lag (once; on the running loop)."""
        if self._task is None:
            self._task = asyncio.create_task(self._watch_loop(), name="loop-lag")

    def cancel(self) -> asyncio.Task[None] | None:
        """Stop sampling; the task to wait for, if one ran."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
        return task

    def probe_started(self, delay: float) -> None:
        """A probe started `delay` seconds after its slot."""
        self.metrics.start_delay.observe(delay)
        bucket = self._bucket()
        bucket[0] += 1
        if delay > self.overload_delay:
            bucket[1] += 1

    def _bucket(self) -> list[int]:
        # The loop's clock, not time.monotonic(): the same clock in production, and the one a
        # test drives (tests/support/virtual_time.py).
        second = int(asyncio.get_running_loop().time())
        if second != self._window_second or not self._window:
            self._window_second = second
            self._window.append([0, 0, 0])
        return self._window[-1]

    async def _watch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(LAG_PERIOD)
            lag = max(0.0, loop.time() - before - LAG_PERIOD)
            self.metrics.loop_lag.observe(lag)
            bucket = self._bucket()
            if lag > self.overload_delay:
                bucket[2] += 1
            self.metrics.overloaded.set(1 if self.overloaded() else 0)

    def overloaded(self) -> bool:
        """More than 1 % of probes started late, or the loop stalled twice, in the window."""
        started = sum(b[0] for b in self._window)
        late = sum(b[1] for b in self._window)
        stalls = sum(b[2] for b in self._window)
        return stalls >= 2 or (started >= 20 and late > started / 100)
