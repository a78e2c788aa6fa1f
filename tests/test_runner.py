"""exporter/runner.py: one probe run becomes one Result, whatever the kind does.

The kind's run is swapped for a stand-in, and time is the driven loop's
(tests/support/virtual_time.py): the timeout case waits for no clock.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from exporter import metrics
from exporter.metrics import Reason
from exporter.model import Target
from exporter.probes import REGISTRY, ProbeContext, ProbeFailure
from exporter.resources import Resources
from exporter.runner import Deadline, Runner
from exporter.state import Result
from tests.conftest import MakeConfig, one_service
from tests.support.virtual_time import VirtualTimeLoop, run_virtual

Run = Callable[[Any, ProbeContext], Awaitable[None]]


def run_with(monkeypatch: pytest.MonkeyPatch, target: Target, run: Run) -> Result:
    monkeypatch.setitem(REGISTRY, "tcp", dataclasses.replace(REGISTRY["tcp"], run=run))

    async def main(loop: VirtualTimeLoop) -> Result:
        resources = Resources()
        runner = Runner(resources)
        try:
            result = await runner.run(target)
            assert runner.in_flight == 0
            return result
        finally:
            await resources.aclose()

    return run_virtual(main)


@pytest.fixture
def target(make_config: MakeConfig) -> Target:
    text = one_service(
        {"t": "{kind: tcp, address: '127.0.0.1:1'}"}, defaults="defaults: {timeout: 1s}\n"
    )
    return make_config(text).targets[0]


def test_success_carries_what_the_probe_recorded(
    monkeypatch: pytest.MonkeyPatch, target: Target
) -> None:
    async def run(prepared: Any, ctx: ProbeContext) -> None:
        with ctx.phase("connect"):
            pass
        ctx.gauges[metrics.TLS_NOT_AFTER.name] = 1.0
        ctx.count(metrics.ICMP_SENT.name, 3)
        ctx.duration = 0.25

    result = run_with(monkeypatch, target, run)
    assert (result.success, result.reason, result.message) == (True, None, "ok")
    assert result.duration == 0.25
    assert list(result.phases) == ["connect"]
    assert result.gauges == {metrics.TLS_NOT_AFTER.name: 1.0}
    assert result.counters == {metrics.ICMP_SENT.name: 3.0}
    assert result.debug[-1].endswith(" ok")


def test_a_probe_failure_is_its_reason_and_message(
    monkeypatch: pytest.MonkeyPatch, target: Target
) -> None:
    async def run(prepared: Any, ctx: ProbeContext) -> None:
        raise ProbeFailure(Reason.CONNECT, "refused")

    result = run_with(monkeypatch, target, run)
    assert (result.success, result.reason, result.message) == (False, "connect", "refused")
    assert result.debug[-1].endswith("failed (connect): refused")


def test_the_timeout_is_the_runners(monkeypatch: pytest.MonkeyPatch, target: Target) -> None:
    async def run(prepared: Any, ctx: ProbeContext) -> None:
        await asyncio.sleep(60)

    result = run_with(monkeypatch, target, run)
    assert (result.success, result.reason) == (False, Reason.TIMEOUT.value)
    assert result.message == "no result within the timeout (1s)"


def test_a_bug_in_a_kind_is_the_error_reason_without_its_text(
    monkeypatch: pytest.MonkeyPatch, target: Target
) -> None:
    async def run(prepared: Any, ctx: ProbeContext) -> None:
        raise KeyError("what the target sent")

    result = run_with(monkeypatch, target, run)
    assert (result.success, result.reason) == (False, Reason.ERROR.value)
    assert result.message == "internal error: KeyError"


# -- Deadline: asyncio.timeout for a caller that holds the loop ------------------------------


def test_deadline_turns_its_own_cancel_into_timeout_error() -> None:
    async def main(loop: VirtualTimeLoop) -> float:
        start = loop.time()
        with pytest.raises(TimeoutError):
            async with Deadline(loop, 2.5):
                await asyncio.sleep(10)
        return loop.time() - start

    assert run_virtual(main) == pytest.approx(2.5)


def test_deadline_not_reached_leaves_the_result_and_cancels_its_timer() -> None:
    async def main(loop: VirtualTimeLoop) -> tuple[str, int]:
        async with Deadline(loop, 5.0):
            await asyncio.sleep(1)
        # Its timer is cancelled: nothing of it would fire later.
        live = [h for h in loop._scheduled if not h.cancelled()]  # type: ignore[attr-defined]
        return "done", len(live)

    assert run_virtual(main) == ("done", 0)


def test_deadline_keeps_an_outside_cancel_a_cancel() -> None:
    async def main(loop: VirtualTimeLoop) -> str:
        async def inner() -> None:
            async with Deadline(loop, 1.0):
                await asyncio.sleep(10)

        task = loop.create_task(inner())
        await asyncio.sleep(0.5)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return "cancelled"
        return "not cancelled"

    assert run_virtual(main) == "cancelled"


def test_deadline_expiring_while_the_task_is_also_cancelled_stays_a_cancel() -> None:
    async def main(loop: VirtualTimeLoop) -> str:
        async def inner() -> None:
            async with Deadline(loop, 1.0):
                # Blocks past the deadline (its timer fires), then an outside cancel arrives too.
                loop.advance(2.0)
                asyncio.current_task().cancel()  # type: ignore[union-attr]
                await asyncio.sleep(10)

        task = loop.create_task(inner())
        try:
            await task
        except asyncio.CancelledError:
            return "cancelled"
        except TimeoutError:
            return "timeout"
        return "neither"

    assert run_virtual(main) == "cancelled"
