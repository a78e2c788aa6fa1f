"""Region verdicts: the probe-kind classification the bundle follows, and the detection budget of
the generated promtool scenarios (prometheus/tests/verdicts.test.yml, run by test_rules)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import statistics
import sys
from pathlib import Path
from types import ModuleType

import pytest

from exporter import status_view
from exporter.probes import REGISTRY
from exporter.probes.base import bundle_probe_regex

from . import bundle

ROOT = bundle.ROOT
DASHBOARDS = ROOT / "grafana" / "dashboards"
# Alertmanager's group_wait on the page route (prometheus/alertmanager/alertmanager.yml).
PAGE_GROUP_WAIT = 5.0


def generator(name: str = "gen_verdict_tests") -> ModuleType:
    path = ROOT / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec
    assert spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def bundle_texts() -> dict[str, str]:
    texts = {str(p.relative_to(ROOT)): p.read_text() for p in bundle.RULE_FILES}
    for p in sorted(DASHBOARDS.glob("*.json")):
        texts[str(p.relative_to(ROOT))] = json.dumps(json.loads(p.read_text()))
    return texts


def test_every_probe_kind_is_classified_for_the_bundle() -> None:
    unclassified = [
        name
        for name, kind in REGISTRY.items()
        if not isinstance(kind.votes_in_quorum, bool) or not isinstance(kind.ranks_images, bool)
    ]
    assert not unclassified, f"set votes_in_quorum and ranks_images on: {unclassified}"


def test_the_bundle_selects_probe_kinds_as_the_registry_declares() -> None:
    allowed = {bundle_probe_regex("votes_in_quorum"), bundle_probe_regex("ranks_images")}
    for name, text in bundle_texts().items():
        # A deny-list lets a new kind in unclassified; only the declared allow-lists are used.
        assert not re.search(r'probe\s*!~?\s*\\?"', text), f"{name}: probe deny-list selector"
        for value in re.findall(r'probe\s*=~\s*\\?"([^"\\]*)', text):
            assert value in allowed, f"{name}: probe=~{value!r} is not a declared class {allowed}"
    rules = bundle.rules_text()
    vote = bundle_probe_regex("votes_in_quorum")
    rank = bundle_probe_regex("ranks_images")
    assert rules.count(f'probe=~"{vote}"') >= 2
    assert rules.count(f'probe=~"{rank}"') >= 5


def test_the_committed_scenarios_are_what_the_generator_writes() -> None:
    gen = generator()
    assert gen.OUT.read_text() == gen.main(), "run: python scripts/gen_verdict_tests.py"


def test_the_committed_ranking_scenarios_are_what_the_generator_writes() -> None:
    gen = generator("gen_ranking_tests")
    assert gen.OUT.read_text() == gen.main(), "run: python scripts/gen_ranking_tests.py"


def test_the_ranking_model_uses_the_bundle_constants() -> None:
    gen = generator("gen_ranking_tests")
    constants = {
        r["record"]: float(r["expr"].removeprefix("vector(").removesuffix(")"))
        for r in bundle.recording_rules()
        if r["record"].startswith("global:failover_rank_")
    }
    assert constants == {
        "global:failover_rank_min_samples:constant": gen.MIN_SAMPLES,
        "global:failover_rank_tie_ratio:constant": gen.TIE_RATIO,
        "global:failover_rank_tie_absolute_seconds:constant": gen.TIE_ABSOLUTE,
    }
    # The status page ties images by the same rule as the ranking rules.
    assert (status_view.TIE_RELATIVE, status_view.TIE_ABSOLUTE) == (gen.TIE_RATIO, gen.TIE_ABSOLUTE)


# The groups between a scrape and the page, in order: votes, quorum, region alerts.
PAGE_CHAIN = (
    (bundle.REGIONAL_RULES, "failover.vantage.quorum"),
    (bundle.GLOBAL_RULES, "failover.quorum"),
    (bundle.ALERTS, "failover.region.alerts"),
)


def _group_interval(path: Path, name: str) -> float:
    (group,) = [g for g in bundle.load_yaml(path)["groups"] if g["name"] == name]
    value = str(group["interval"])
    match = re.fullmatch(r"(\d+)s", value)
    assert match, value
    return float(match.group(1))


def test_primary_down_fits_the_detection_budget_at_every_phase() -> None:
    """promtool evaluates right after each scrape. Prometheus runs rule groups concurrently, each
    on its own interval, so each group of the page's chain (votes -> quorum -> alerts) may read
    its input up to one of its intervals late: the worst case adds every interval, the median
    half of them. Then the page route's group_wait."""
    gen = generator()
    delays = []
    for phase in gen.PHASES:
        first_fail, detected, _ = gen.detect(phase)
        delays.append(detected - first_fail)
    chain = [_group_interval(path, name) for path, name in PAGE_CHAIN]
    worst = max(delays) + sum(chain) + PAGE_GROUP_WAIT
    median = statistics.median(delays) + sum(chain) / 2 + PAGE_GROUP_WAIT
    assert worst <= 60, (delays, chain, worst)
    assert median <= 45, (delays, chain, median)
    # Two failed probes in a row, so never faster than one probe interval.
    assert min(delays) >= gen.PROBE, delays


def test_page_route_group_wait_is_the_budgeted_one() -> None:
    text = bundle.ALERTMANAGER.read_text()
    block = text[text.index('matchers: [severity="critical"]') :]
    assert f"group_wait: {PAGE_GROUP_WAIT:g}s" in block.split("- matchers")[0]


def test_unclassified_kind_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The classification test fails on a kind that does not declare itself."""
    loose = dataclasses.replace(REGISTRY["http"], name="zz", votes_in_quorum=None)
    monkeypatch.setitem(REGISTRY, "zz", loose)
    with pytest.raises(AssertionError):
        test_every_probe_kind_is_classified_for_the_bundle()
