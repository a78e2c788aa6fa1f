"""Runs every target on its own interval, spread across the interval, with a global cap.

Probes run on the exporter's schedule, not on scrape: ranking needs latency distributions filled
at a steady rate, and counters survive missed scrapes.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import functools
import hashlib
import logging
import math
import time
import traceback
from collections.abc import Callable

from exporter.metrics import Reason, SelfMetrics, SkipReason
from exporter.model import Config, Target
from exporter.probes import REGISTRY, ProbeContext, ProbeFailure
from exporter.resources import Resources
from exporter.state import Outcome, Result, TargetState

log = logging.getLogger("exporter.scheduler")

# Window over which the exporter judges itself overloaded.
OVERLOAD_WINDOW = 30
LAG_PERIOD = 0.25
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
    ) -> None:
        self.metrics = self_metrics
        self.resources = resources
        # Set by the first _start (always on the running loop). The per-probe path uses it rather
        # than asyncio.get_running_loop(), which on Python 3.11 makes a getpid() syscall per call
        # (about 12 % of a probe's CPU in py-spy, issue #20).
        self._loop: asyncio.AbstractEventLoop
        self.states: dict[tuple[str, str, str], TargetState] = {}
        self.targets: dict[tuple[str, str, str], Target] = {}
        self._tasks: dict[tuple[str, str, str], _Run] = {}
        self._monitor: asyncio.Task[None] | None = None
        self._limiter = Limiter(1)
        self._in_flight = 0
        # Read at scrape time instead of set twice per probe.
        self_metrics.in_flight.set_function(lambda: self._in_flight)
        self.overload_delay = 0.05
        self.recent: collections.deque[Result] = collections.deque(maxlen=100)
        # Failures are kept longer than successes: they are what an operator comes to look at.
        self.recent_failures: collections.deque[Result] = collections.deque(maxlen=200)
        # Per second: [probes started, probes started late, loop lag samples over budget].
        self._window: collections.deque[list[int]] = collections.deque(maxlen=overload_window)
        self._window_second = 0
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
        self.overload_delay = config.overload_delay
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
                self.states[key] = TargetState(target, REGISTRY[target.kind].reasons)
            else:
                state.retarget(target)
            self.targets[key] = target
            self._tasks[key] = self._start(target)
        self._forget_replaced()
        self.metrics.targets.clear()
        per_vantage = collections.Counter(t.vantage for t in config.targets)
        for vantage, count in per_vantage.items():
            self.metrics.targets.labels(vantage=vantage).set(count)
        if self._monitor is None:
            self._monitor = asyncio.create_task(self._watch_loop(), name="loop-lag")

    def _forget_replaced(self) -> None:
        """Drop status-page history of removed or changed targets: it would keep their old
        settings, TLS contexts and secrets alive until newer results pushed it out."""
        for ring in (self.recent, self.recent_failures):
            kept = [r for r in ring if self.targets.get(r.target.key) is r.target]
            if len(kept) != len(ring):
                ring.clear()
                ring.extend(kept)

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
        if self._monitor is not None:
            tasks.append(self._monitor)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self._monitor = None

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
            self.metrics.start_delay.observe(delay)
            self._count_start(delay)
            result = await self.probe(target)
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
            self._remember(result, previous)
        finally:
            self._limiter.release()

    async def probe(self, target: Target) -> Result:
        """Run one probe of `target` under its timeout and return the result (no metrics)."""
        kind = REGISTRY[target.kind]
        ctx = ProbeContext(self.resources, target.vantage, target.timeout)
        started = time.time()
        reason: str | None = None
        message = "ok"
        self._in_flight += 1
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(target.timeout):
                await kind.run(target.prepared, ctx)
        except ProbeFailure as failure:
            reason, message = failure.reason.value, failure.message
        except TimeoutError:
            reason = Reason.TIMEOUT.value
            message = f"no result within the timeout ({target.timeout:g}s)"
        except Exception as exc:  # noqa: BLE001 - a bug in a kind is a reason, logged
            reason = Reason.ERROR.value
            message = f"internal error: {type(exc).__name__}"
            # The traceback quotes the exception, which may quote what the target sent.
            log.error(
                "probe raised",
                extra={
                    "target": target.name,
                    "vantage": target.vantage,
                    "exc": target.scrub(traceback.format_exc()),
                },
            )
        finally:
            duration = time.perf_counter() - t0
            self._in_flight -= 1
        if reason is None:
            ctx.log(message)
            if ctx.duration is not None:
                duration = ctx.duration
        else:
            ctx.log(f"failed ({reason}): {message}")
        scrub = target.scrub
        if scrub:
            # The one place probe text leaves the probe: a target may reflect what it was sent.
            message = scrub(message)
            ctx.debug[:] = [scrub(line) for line in ctx.debug]
        return Result(
            target=target,
            started=started,
            duration=duration,
            success=reason is None,
            reason=reason,
            message=message,
            status_code=ctx.status_code,
            phases=ctx.phases,
            debug=ctx.debug,
            gauges=ctx.gauges,
            observations=ctx.observations,
        )

    def _remember(self, result: Result, previous: Outcome | None) -> None:
        self.recent.append(result)
        if not result.success:
            self.recent_failures.append(result)
        was_ok = previous is None or previous.success
        if was_ok and not result.success:
            log.warning(
                "target failing",
                extra={
                    "target": result.target.name,
                    "vantage": result.target.vantage,
                    "reason": result.reason,
                    "error": result.message,
                },
            )
        elif not was_ok and result.success:
            log.info(
                "target recovered",
                extra={"target": result.target.name, "vantage": result.target.vantage},
            )

    # -- self-measurement ------------------------------------------------------------------

    def _bucket(self) -> list[int]:
        # The loop's clock, not time.monotonic(): the same clock in production, and the one a
        # test drives (tests/support/virtual_time.py).
        second = int(asyncio.get_running_loop().time())
        if second != self._window_second or not self._window:
            self._window_second = second
            self._window.append([0, 0, 0])
        return self._window[-1]

    def _count_start(self, delay: float) -> None:
        bucket = self._bucket()
        bucket[0] += 1
        if delay > self.overload_delay:
            bucket[1] += 1

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

    def snapshot(self) -> list[TargetState]:
        return list(self.states.values())

    def find(self, name: str, vantage: str | None = None) -> list[Target]:
        return [t for t in self.targets.values() if t.name == name and vantage in (None, t.vantage)]
