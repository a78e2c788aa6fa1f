"""The status page's verdicts as data: region views, live-only quantiles, ranking and ties."""

from __future__ import annotations

import re

from aiohttp.test_utils import make_mocked_request

from exporter import status_view
from exporter.model import Config, Target
from exporter.state import Result, TargetState
from tests.conftest import MakeConfig
from tests.support.results import result

CONFIG = """\
vantage: v1
control:
  - {name: ctl, probe: {kind: http, url: "http://127.0.0.1:9/ctl"}}
services:
  - name: shop
    regions:
      - {name: eu, role: primary, priority: 1}
      - {name: us, role: standby, priority: 2}
    images:
      - {name: a, ref: "x/shop:a"}
      - {name: b, ref: "x/shop:b"}
      - {name: c, ref: "x/shop:c"}
    targets:
      - {name: eu-a, region: eu, image: a, probe: {kind: http, url: "http://127.0.0.1:9/"}}
      - {name: eu-b, region: eu, image: b, probe: {kind: http, url: "http://127.0.0.1:9/"}}
      - {name: eu-c, region: eu, image: c, probe: {kind: http, url: "http://127.0.0.1:9/"}}
      - {name: us-a, region: us, image: a, probe: {kind: http, url: "http://127.0.0.1:9/"}}
"""


def _result(target: Target, duration: float, reason: str | None = None) -> Result:
    return result(target, duration, reason, message="", phases={}, debug=[])


def _states(cfg: Config, runs: dict[str, list[tuple[float, str | None]]]) -> list[TargetState]:
    out = []
    for t in cfg.targets:
        st = TargetState(t, ())
        for duration, reason in runs.get(t.name, []):
            st.record(_result(t, duration, reason))
        out.append(st)
    return out


def _ok(seconds: float, n: int = 5) -> list[tuple[float, str | None]]:
    return [(seconds, None)] * n


def _region(views: list[status_view.ServiceView], name: str) -> status_view.RegionView:
    return next(r for r in views[0].regions if r.name == name)


def _build(cfg: Config, states: list[TargetState]) -> list[status_view.ServiceView]:
    return status_view.build(cfg, states, lambda _s, _r: False)


def test_down_cell_has_no_p50_even_with_samples_from_before(make_config: MakeConfig) -> None:
    cfg = make_config(CONFIG)
    fail = [(0.3, "connect")]
    runs = {"ctl": _ok(0.001), "eu-a": _ok(0.005) + fail, "us-a": _ok(0.005)}
    eu = _region(_build(cfg, _states(cfg, runs)), "eu")
    a = eu.cells[0]
    assert (a.verdict, a.p50, a.p95, a.reasons) == ("failing", None, None, ("connect",))
    assert eu.state == "down"
    assert [r.image for r in eu.ranking] == []
    # The target's ring still holds its old latencies: the page must not show them as live.
    assert next(s for s in _states(cfg, runs) if s.target.name == "eu-a").recent
    assert _region(_build(cfg, _states(cfg, runs)), "us").state == "up"


def test_healthy_cell_p50_is_the_exact_gauge(make_config: MakeConfig) -> None:
    cfg = make_config(CONFIG)
    runs = {"ctl": _ok(0.001), "eu-a": [(d / 1000, None) for d in (4, 5, 6, 7)]}
    states = _states(cfg, runs)
    a = _region(_build(cfg, states), "eu").cells[0]
    gauge = next(s for s in states if s.target.name == "eu-a").gauges
    assert a.p50 is not None
    assert abs(a.p50 - gauge["failover_probe_duration_p50_seconds"]) < 1e-9
    assert abs(a.p50 - 0.0055) < 1e-6


def test_isolated_vantage_shows_isolated(make_config: MakeConfig) -> None:
    cfg = make_config(CONFIG)
    fail = [(0.3, "connect")] * 2
    runs = {"ctl": fail, "eu-a": fail, "eu-b": fail, "eu-c": fail, "us-a": fail}
    views = _build(cfg, _states(cfg, runs))
    assert [r.state for r in views[0].regions] == ["isolated", "isolated"]
    # The same failures with the control target healthy are the regions down.
    runs["ctl"] = _ok(0.001)
    assert [r.state for r in _build(cfg, _states(cfg, runs))[0].regions] == ["down", "down"]


def test_no_probe_yet_is_pending(make_config: MakeConfig) -> None:
    cfg = make_config(CONFIG)
    eu = _region(_build(cfg, _states(cfg, {})), "eu")
    assert eu.state == "pending"
    assert {c.verdict for c in eu.cells} == {"pending"}


def test_equal_images_are_tied_and_2x_apart_are_not(make_config: MakeConfig) -> None:
    cfg = make_config(CONFIG)
    runs = {"ctl": _ok(0.001), "eu-a": _ok(0.010), "eu-b": _ok(0.0101), "eu-c": _ok(0.020)}
    ranks = _region(_build(cfg, _states(cfg, runs)), "eu").ranking
    assert [(r.image, r.rank, r.tied) for r in ranks] == [
        ("a", 1, True),
        ("b", 1, True),
        ("c", 3, False),
    ]

    runs = {"ctl": _ok(0.001), "eu-a": _ok(0.005), "eu-b": _ok(0.010), "eu-c": _ok(0.020)}
    ranks = _region(_build(cfg, _states(cfg, runs)), "eu").ranking
    assert [(r.image, r.rank, r.tied) for r in ranks] == [
        ("a", 1, False),
        ("b", 2, False),
        ("c", 3, False),
    ]


def test_tie_rule_bounds() -> None:
    # 3 % of the faster p50, or 0.05 ms for fast images, whichever is larger.
    assert status_view.tied(0.100, 0.103)
    assert not status_view.tied(0.100, 0.1035)
    assert status_view.tied(0.001, 0.00105)
    assert not status_view.tied(0.001, 0.0011)
    assert status_view.tied(0.0005, 0.000549)


async def test_page_refreshes_and_times_carry_the_zone() -> None:
    from exporter import web

    class _Sched:
        def snapshot(self) -> list[TargetState]:
            return []

    class _History:
        recent: tuple[Result, ...] = ()
        failures: tuple[Result, ...] = ()

    class _SelfWatch:
        def overloaded(self) -> bool:
            return False

    class _Engine:
        config = None
        last_reload_errors: tuple[str, ...] = ()
        scheduler = _Sched()
        history = _History()
        selfwatch = _SelfWatch()

    req = make_mocked_request("GET", "/")
    req.app[web.ENGINE] = _Engine()  # type: ignore[index]
    resp = await web.status_page(req)
    text = resp.text or ""
    assert re.search(r'<meta http-equiv="refresh" content="\d+">', text)
    assert re.search(
        r'<time class="generated" datetime="\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z">', text
    )
