"""Runs every target on its own interval, spread across the interval, with a global cap.

Probes run on the exporter's schedule, not on scrape: ranking needs latency distributions filled
at a steady rate, and counters survive missed scrapes. This module holds the timers, the config
diff on reload, the concurrency limiter and the stop; running one probe is `runner.py`, the
status page's recent results `history.py`, loop lag and overload `selfwatch.py`.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import functools
import hashlib
import logging
import math
from collections.abc import Callable

from exporter.history import History
from exporter.metrics import SelfMetrics, SkipReason
from exporter.model import Config, Target
from exporter.probes import REGISTRY
from exporter.resources import Resources
from exporter.runner import Runner
from exporter.selfwatch import OVERLOAD_WINDOW, SelfWatch
from exporter.state import Result, TargetState

log = logging.getLogger("exporter.scheduler")

SKIP_LOG_PERIOD = 10.0


def phase_offset(target: Target) -> float:
    """Deterministic offset within the interval: no burst at start, stable across reloads."""
    digest = hashlib.blake2b("\0".join(target.key).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 * target.interval


class Limiter:
    """A FIFO semaphore whose size can change while slots are held.

    Swapping in a new semaphore on reload would let the old one's holders and the new one's run
    side by side, past the cap; here the holders count against the new size.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.held = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def try_acquire(self) -> bool:
        """Take a free slot without waiting (and without a timeout scope to set up)."""
        if self.held < self.size and not self._waiters:
            self.held += 1
            return True
        return False

    async def acquire(self) -> None:
        if self.try_acquire():
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                # Granted a slot in the same iteration the wait was cancelled: pass it on.
                self.release()
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        self.held -= 1
        self._wake()

    def resize(self, size: int) -> None:
        self.size = size
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.held < self.size:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.held += 1
                waiter.set_result(None)


class _Run:
    """One target's schedule: the timer of its next slot, or its probe in flight.

    A timer per target instead of a task sleeping in a loop: a sleeping task keeps a coroutine,
    a future and their frames alive for the whole interval, which the garbage collector
    promotes to its oldest generation and rescans in every full collection (tens of
    milliseconds at thousands of targets, all of it a stall for the probes).
    """

    __slots__ = ("fire", "handle", "slot", "stopped", "target", "task")

    def __init__(self, target: Target, fire: Callable[[_Run], None]) -> None:
        self.target = target
        self.slot = 0.0
        self.handle: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None
        self.stopped = False
        # Built once: call_at gets the same callable every interval.
        self.fire = functools.partial(fire, self)

    @property
    def active(self) -> bool:
        return self.handle is not None or self.task is not None

    def cancel(self) -> asyncio.Task[None] | None:
        self.stopped = True
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        if self.task is not None:
            self.task.cancel()
        return self.task


class Scheduler:
    def __init__(
        self,
        self_metrics: SelfMetrics,
        resources: Resources,
        overload_window: int = OVERLOAD_WINDOW,
        *,
        runner: Runner | None = None,
        history: History | None = None,
        selfwatch: SelfWatch | None = None,
    ) -> None:
        self.metrics = self_metrics
        self.resources = resources
        # The engine passes its own, shared with /probe and the status page.
        self.runner = runner or Runner(resources)
        self.history = history or History()
        self.selfwatch = selfwatch or SelfWatch(self_metrics, overload_window)
        # Set by the first _start (always on the running loop). The per-probe path uses it rather
        # than asyncio.get_running_loop(), which on Python 3.11 makes a getpid() syscall per call
        # (about 12 % of a probe's CPU in py-spy, issue #20).
        self._loop: asyncio.AbstractEventLoop
        self.states: dict[tuple[str, str, str], TargetState] = {}
        self.targets: dict[tuple[str, str, str], Target] = {}
        self._tasks: dict[tuple[str, str, str], _Run] = {}
        self._limiter = Limiter(1)
        # Read at scrape time instead of set twice per probe.
        self_metrics.in_flight.set_function(lambda: self.runner.in_flight)
        self._stopped: set[asyncio.Task[None]] = set()
        self._skip_logged_at = -math.inf
        self._skips_unlogged = 0
        # One context for every timer, instead of a copy per call_at that would live (and be
        # scanned by the cycle collector) for a whole interval; the probe task copies its own.
        self._context = contextvars.copy_context()

    # -- configuration ---------------------------------------------------------------------

    def apply(self, config: Config) -> None:
        """Switch to a new config: unchanged targets keep running and keep their series."""
        self._limiter.resize(config.max_concurrency)
        self.metrics.max_concurrency.set(config.max_concurrency)
        self.selfwatch.overload_delay = config.overload_delay
        wanted = {t.key: t for t in config.targets}
        for key in list(self.targets):
            if key not in wanted:
                self._stop_target(key)
                del self.states[key]
                del self.targets[key]
        for key, target in wanted.items():
            old = self.targets.get(key)
            if old == target:
                continue
            if old is not None:
                self._stop_target(key)
            state = self.states.get(key)
            if state is None or state.target.labels != target.labels:
                kind = REGISTRY[target.kind]
                self.states[key] = TargetState(target, kind.reasons, kind.gauges)
            else:
                state.retarget(target)
            self.targets[key] = target
            self._tasks[key] = self._start(target)
        self.history.forget_replaced(self.targets)
        self.metrics.targets.clear()
        per_vantage = collections.Counter(t.vantage for t in config.targets)
        for vantage, count in per_vantage.items():
            self.metrics.targets.labels(vantage=vantage).set(count)
        self.selfwatch.start()

    def _stop_target(self, key: tuple[str, str, str]) -> None:
        run = self._tasks.pop(key, None)
        task = run.cancel() if run is not None else None
        if task is not None:
            # Kept until it has finished unwinding, so stop() can wait for it before the
            # resources it may still be using are closed.
            self._stopped.add(task)
            task.add_done_callback(self._stopped.discard)

    async def stop(self) -> None:
        """Cancel every probe and background task and wait for them all."""
        tasks = [task for run in self._tasks.values() if (task := run.cancel()) is not None]
        tasks.extend(self._stopped)
        if (monitor := self.selfwatch.cancel()) is not None:
            tasks.append(monitor)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()

    @property
    def task_count(self) -> int:
        """Targets with a probe scheduled or in flight."""
        return sum(1 for run in self._tasks.values() if run.active)

    # -- running ---------------------------------------------------------------------------

    def _start(self, target: Target) -> _Run:
        loop = self._loop = asyncio.get_running_loop()
        run = _Run(target, self._fire)
        offset = phase_offset(target)
        run.slot = offset + math.ceil((loop.time() - offset) / target.interval) * target.interval
        run.handle = loop.call_at(run.slot, run.fire, context=self._context)
        return run

    def _fire(self, run: _Run) -> None:
        run.handle = None
        run.task = self._loop.create_task(self._run_once(run))

    async def _run_once(self, run: _Run) -> None:
        target = run.target
        try:
            await self._scheduled_run(target, run.slot)
        except asyncio.CancelledError:
            run.task = None
            raise
        except Exception:
            # A bug here must not end the target's schedule: log it and keep probing.
            log.exception(
                "scheduled run failed", extra={"target": target.name, "vantage": target.vantage}
            )
        run.task = None
        if run.stopped:
            return
        loop = self._loop
        interval = target.interval
        slot = run.slot + interval
        now = loop.time()
        if now > slot:
            # The run overran one or more slots: they are skipped, never run late and never
            # run twice at once.
            missed = math.ceil((now - slot) / interval)
            self.metrics.skipped.labels(reason=SkipReason.OVERRUN.value).inc(missed)
            slot += missed * interval
        run.slot = slot
        run.handle = loop.call_at(slot, run.fire, context=self._context)

    def _log_concurrency_skip(self, target: Target, now: float) -> None:
        """At most one line per SKIP_LOG_PERIOD: under overload every probe can be skipped, and a
        line per skip would flood the log (the counter has every one)."""
        self._skips_unlogged += 1
        if now - self._skip_logged_at < SKIP_LOG_PERIOD:
            return
        log.warning(
            "probes skipped: concurrency limit full",
            extra={"skipped": self._skips_unlogged, "last_target": target.name},
        )
        self._skip_logged_at = now
        self._skips_unlogged = 0

    async def _scheduled_run(self, target: Target, slot: float) -> None:
        loop = self._loop
        if not self._limiter.try_acquire():
            try:
                async with asyncio.timeout(target.timeout):
                    await self._limiter.acquire()
            except TimeoutError:
                self.metrics.skipped.labels(reason=SkipReason.CONCURRENCY.value).inc()
                self._log_concurrency_skip(target, loop.time())
                return
        try:
            delay = max(0.0, loop.time() - slot)
            self.selfwatch.probe_started(delay)
            result = await self.runner.run(target, loop)
            if log.isEnabledFor(logging.DEBUG):
                # One line per probe: the single measurements the histogram folds away, for
                # debugging a target and for `make bench` to join against packet captures.
                log.debug(
                    "probe finished",
                    extra={
                        "target": target.name,
                        "started": result.started,
                        "duration": result.duration,
                        "start_delay": delay,
                        "success": result.success,
                        "reason": result.reason,
                    },
                )
            state = self.states.get(target.key)
            if state is None or state.target is not target:
                return
            previous = state.last
            state.record(result)
            self.history.remember(result, previous)
        finally:
            self._limiter.release()

    # -- what the engine, the web handlers and tests read through the scheduler --------------

    async def probe(self, target: Target) -> Result:
        """Run one probe of `target` now (the runner's; no metrics, no state)."""
        return await self.runner.run(target)

    @property
    def recent(self) -> collections.deque[Result]:
        return self.history.recent

    @property
    def recent_failures(self) -> collections.deque[Result]:
        return self.history.failures

    def overloaded(self) -> bool:
        return self.selfwatch.overloaded()

    def snapshot(self) -> list[TargetState]:
        return list(self.states.values())

    def find(self, name: str, vantage: str | None = None) -> list[Target]:
        return [t for t in self.targets.values() if t.name == name and vantage in (None, t.vantage)]
