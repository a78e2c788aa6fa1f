"""Run one probe of a target under its timeout and turn what happened into a Result.

Shared by the scheduler (every slot) and `/probe` (on request), so a probe run by hand is the
same probe: the same timeout, failure reasons, scrubbing of target text and debug lines. It
records nothing: metrics, state and history are the caller's.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback

from exporter.metrics import Reason
from exporter.model import Target
from exporter.probes import REGISTRY, ProbeContext, ProbeFailure
from exporter.resources import Resources
from exporter.state import Result

log = logging.getLogger("exporter.scheduler")


class Runner:
    def __init__(self, resources: Resources) -> None:
        self.resources = resources
        # Probes running now, scheduled or from /probe; read at scrape time.
        self.in_flight = 0

    async def run(self, target: Target, loop: asyncio.AbstractEventLoop | None = None) -> Result:
        """Run one probe of `target` under its timeout and return the result (no metrics).

        `loop` is the running loop, when the caller holds it already: on Python 3.11 every
        `asyncio.get_running_loop()` (and so `asyncio.timeout`, three of them) is a getpid(2)
        call, and the scheduler's probes are the hot path."""
        if loop is None:
            loop = asyncio.get_running_loop()
        kind = REGISTRY[target.kind]
        ctx = ProbeContext(self.resources, target.vantage, target.timeout, loop)
        started = time.time()
        reason: str | None = None
        message = "ok"
        self.in_flight += 1
        t0 = time.perf_counter()
        try:
            async with Deadline(loop, target.timeout):
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
            self.in_flight -= 1
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
            ctx.debug.scrub(scrub)
        return Result(
            target=target,
            started=started,
            duration=duration,
            success=reason is None,
            reason=reason,
            message=message,
            phases=ctx.phases,
            debug=ctx.debug,
            gauges=ctx.gauges,
            observations=ctx.observations,
            counters=ctx.counters,
        )


class Deadline:
    """`asyncio.timeout(delay)` for a caller that holds the loop: the same cancel-and-convert
    (the task is cancelled at the deadline and the CancelledError leaves as TimeoutError unless
    somebody else cancelled it too), without looking the loop up again."""

    __slots__ = ("_cancelling", "_expired", "_handle", "_loop", "_task", "_when")

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        self._loop = loop
        self._when = loop.time() + delay
        self._expired = False
        self._handle: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[object] | None = None
        self._cancelling = 0

    async def __aenter__(self) -> Deadline:
        task = asyncio.current_task(self._loop)
        if task is None:
            raise RuntimeError("Deadline must be used inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        self._handle = self._loop.call_at(self._when, self._expire)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if not self._expired or self._task is None:
            return
        if self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
            raise TimeoutError from exc

    def _expire(self) -> None:
        assert self._task is not None
        self._task.cancel()
        self._expired = True
        self._handle = None
