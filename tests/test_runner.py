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
from exporter.runner import Runner
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
