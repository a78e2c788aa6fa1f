"""exporter/selfwatch.py: the overload verdict from late probe starts (the loop-lag side is
driven end to end in tests/test_scheduler.py)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from exporter.metrics import SelfMetrics
from exporter.selfwatch import SelfWatch
from tests.support.virtual_time import VirtualTimeLoop, run_virtual


def test_more_than_one_percent_late_starts_is_overload() -> None:
    async def main(loop: VirtualTimeLoop) -> tuple[bool, bool, bool]:
        registry = CollectorRegistry()
        watch = SelfWatch(SelfMetrics(registry), window=2)
        watch.overload_delay = 0.05
        for _ in range(19):
            watch.probe_started(0.001)
        watch.probe_started(0.2)
        few = watch.overloaded()  # 1 late of 20: over 1 %
        for _ in range(200):
            watch.probe_started(0.001)
        diluted = watch.overloaded()  # 1 late of 220: under 1 %
        loop.advance(5)
        watch.probe_started(0.001)
        aged = watch.overloaded()
        observed = registry.get_sample_value("failover_exporter_probe_start_delay_seconds_count")
        assert observed == 221
        return few, diluted, aged

    assert run_virtual(main) == (True, False, False)


def test_too_few_starts_judge_nothing() -> None:
    async def main(loop: VirtualTimeLoop) -> bool:
        watch = SelfWatch(SelfMetrics(CollectorRegistry()))
        for _ in range(19):
            watch.probe_started(1.0)
        return watch.overloaded()

    assert run_virtual(main) is False
