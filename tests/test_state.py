"""Per-target state: what it keeps of each probe, and how much of it."""

from __future__ import annotations

from exporter import metrics
from exporter.model import Target
from exporter.probes import REGISTRY
from exporter.state import RECENT_SAMPLES, TargetState
from tests.conftest import MakeConfig, one_service
from tests.support.results import result as _result


def _target(make_config: MakeConfig) -> Target:
    cfg = make_config(one_service({"web": "{kind: http, url: 'http://127.0.0.1:9/'}"}))
    return cfg.targets[0]


def test_recent_keeps_the_latest_samples_for_the_quantiles(make_config: MakeConfig) -> None:
    target = _target(make_config)
    st = TargetState(target, REGISTRY[target.kind].reasons)
    assert st.quantile(0.5) is None
    for i in range(RECENT_SAMPLES + 30):
        st.record(_result(target, float(i)))
    # Failures add no latency sample.
    st.record(_result(target, 9999.0, reason="connect"))
    assert len(st.recent) == RECENT_SAMPLES
    assert sorted(st.recent) == [float(i) for i in range(30, RECENT_SAMPLES + 30)]
    assert st.quantile(0.0) == 30.0
    assert st.quantile(1.0) == RECENT_SAMPLES + 29.0
    assert st.quantile(0.5) == 30.0 + RECENT_SAMPLES // 2


def test_recent_samples_are_precise_enough_for_the_page(make_config: MakeConfig) -> None:
    target = _target(make_config)
    st = TargetState(target, REGISTRY[target.kind].reasons)
    st.record(_result(target, 0.0123456))
    st.record(_result(target, 9.87654321))
    # Single precision: well under a microsecond here; the page shows tenths of a millisecond.
    low, high = st.quantile(0.0), st.quantile(1.0)
    assert low is not None
    assert high is not None
    assert abs(low - 0.0123456) < 1e-9
    assert abs(high - 9.87654321) < 1e-6


def test_last_is_a_shared_verdict_not_the_whole_result(make_config: MakeConfig) -> None:
    target = _target(make_config)
    a = TargetState(target, REGISTRY[target.kind].reasons)
    b = TargetState(target, REGISTRY[target.kind].reasons)
    assert a.last is None
    a.record(_result(target, 0.1, reason="connect"))
    b.record(_result(target, 0.2, reason="connect"))
    assert a.last is not None
    assert not a.last.success
    assert a.last.reason == "connect"
    # One object per verdict, whatever the number of targets.
    assert a.last is b.last
    a.record(_result(target, 0.1))
    assert a.last.success
    assert a.last.reason is None
    # What /metrics reads still comes from the latest probe.
    assert a.phases == {"connect": 0.05}
    assert a.gauges[metrics.PROBE_SUCCESS.name] == 1.0
    assert a.failures["connect"] == 1


def test_a_kinds_declared_gauges_show_their_reset_value_until_a_probe_sets_them(
    make_config: MakeConfig,
) -> None:
    """ProbeKind.gauges: before the first probe and after a probe that did not set one (no
    response), the declared value; not the last probe's."""
    target = _target(make_config)
    kind = REGISTRY[target.kind]
    assert kind.gauges == {metrics.HTTP_STATUS.name: 0.0}
    st = TargetState(target, kind.reasons, kind.gauges)
    assert st.gauges[metrics.HTTP_STATUS.name] == 0
    st.record(_result(target, 0.01))
    assert st.gauges[metrics.HTTP_STATUS.name] == 200
    st.record(_result(target, 0.01, reason="connect"))
    assert st.gauges[metrics.HTTP_STATUS.name] == 0
