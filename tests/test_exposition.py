"""The /metrics text: a golden file, promtool, the catalogue, label escaping, chunked rendering.

Golden file: `tests/data/golden/metrics.prom`, regenerated with `UPDATE_GOLDEN=1 pytest
tests/test_exposition.py`. It comes from a deterministic run: TargetStates filled with fixed
Results (and a fixed last-success timestamp, which `record` would take from the clock), and the
exporter's own instruments set to fixed values. What still varies is normalised, not dropped
silently:
- `process_*` and `python_*` families (prometheus_client's collectors: memory, CPU, GC) are
  removed; the live-exporter tests below check them with promtool instead;
- `failover_exporter_build_info`'s `version` and `python_version` become `VERSION` and
  `PYTHON_VERSION`, so a release or a Python upgrade does not churn the file.
Everything else, HELP text included, is compared byte for byte: it is the contract that rules
and dashboards read.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import json
import math
import os
import platform
import re
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from exporter import __version__, config, exposition, metrics
from exporter.engine import Engine
from exporter.metrics import SelfMetrics
from exporter.model import Config
from exporter.probes import REGISTRY
from exporter.state import TargetState, label_text
from tests.conftest import MakeClient
from tests.support.golden import GOLDEN_CONFIG, fixed_result
from tests.tools import need

GOLDEN = Path(__file__).parent / "data" / "golden" / "metrics.prom"


def golden_states(cfg: Config) -> list[TargetState]:
    states = []
    for i, target in enumerate(cfg.targets):
        kind = REGISTRY[target.kind]
        st = TargetState(target, kind.reasons, kind.gauges)
        for n in range(5):
            # The tcp target fails its last probe; the others succeed throughout.
            st.record(fixed_result(target, n, success=not (target.kind == "tcp" and n == 4)))
        # `record` reads the clock for this one; pin it.
        st.gauges[metrics.PROBE_LAST_SUCCESS.name] = 1_700_000_100.0 + i
        states.append(st)
    return states


def normalise(text: str) -> str:
    kept = []
    for line in text.splitlines(keepends=True):
        name = (
            line.split(" ")[2] if line.startswith("#") else re.split(r"[{ ]", line, maxsplit=1)[0]
        )
        if name.startswith(("process_", "python_")):
            continue
        kept.append(line)
    out = "".join(kept)
    out = re.sub(r'python_version="[^"]*"', 'python_version="PYTHON_VERSION"', out)
    return re.sub(r'(?<=[{,])version="[^"]*"', 'version="VERSION"', out)


async def test_golden_metrics(tmp_path: Path) -> None:
    cfg = config.parse(GOLDEN_CONFIG, str(tmp_path / "golden.yml"))
    # The daemon's Engine sets process-wide exposition options (no `_created` series); the
    # exporter's own instruments then go in a registry of their own, so that collectors other
    # modules add to the Engine (image metadata, ...) are covered by their own tests instead of
    # churning this file.
    await Engine().aclose()
    registry = CollectorRegistry()
    m = SelfMetrics(registry)
    m.build_info.labels(version=__version__, python_version=platform.python_version()).set(1)
    m.reload_ok.set(1)
    m.reload_ts.set(1_700_000_000)
    for lag in (0.00005, 0.0003, 0.004, 0.2):
        m.loop_lag.observe(lag)
    for delay in (0.00002, 0.0006, 0.03):
        m.start_delay.observe(delay)
    m.skipped.labels(reason="overrun").inc(2)
    m.targets.labels(vantage="golden").set(len(cfg.targets))
    m.max_concurrency.set(cfg.max_concurrency)
    m.in_flight.set(0)
    m.overloaded.set(0)
    fleet = exposition.fleet_lines(cfg, {})
    body = await exposition.render(golden_states(cfg), cfg.regions, registry, fleet)
    text = normalise(body.decode())
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(text)
    assert GOLDEN.exists(), "no golden file: run with UPDATE_GOLDEN=1"
    assert text == GOLDEN.read_text(), "exposition changed; review and run with UPDATE_GOLDEN=1"
    # The golden file itself must be valid exposition.
    promtool = need("promtool")
    check = subprocess.run(
        [promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=30
    )
    assert check.returncode == 0, check.stdout + check.stderr


# -- the real output of a running exporter --------------------------------------------------


def check_families(text: str) -> set[str]:
    """Every family is in the catalogue (with its type) or from prometheus_client's collectors."""
    seen = set()
    for match in re.finditer(r"^# TYPE (\S+) (\S+)$", text, re.M):
        name, kind = match.groups()
        seen.add(name)
        if name.startswith(("process_", "python_")):
            continue
        assert name in metrics.BY_NAME, f"{name} is not in exporter.metrics.CATALOGUE"
        assert metrics.BY_NAME[name].type.value == kind, name
    samples = {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}
    allowed = {n for spec in metrics.CATALOGUE for n in metrics.exposed_names(spec)}
    stray = {s for s in samples - allowed if not s.startswith(("process_", "python_"))}
    assert not stray, f"samples outside the catalogue: {stray}"
    return seen


async def test_live_metrics_pass_promtool_and_match_the_catalogue(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    exporter_client: MakeClient,
    tmp_path: Path,
) -> None:
    promtool = need("promtool")

    async def ok(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", ok)
    srv = await aiohttp_server(app, host="127.0.0.1")
    path = tmp_path / "config.yml"
    path.write_text(
        GOLDEN_CONFIG.replace("127.0.0.1:9/healthz", f"127.0.0.1:{srv.port}/")
        .replace("interval: 5s, timeout: 2s", "interval: 200ms, timeout: 150ms")
        .replace("interval: 10s", "interval: 300ms")
    )
    client = await exporter_client(config.load(path))
    text = ""
    for _ in range(50):
        resp = await client.get("/metrics")
        text = await resp.text()
        # Wait for every kind of outcome: successes (histograms), failures, status codes.
        if (
            'reason="connect"} 1' in text
            and "failover_probe_duration_seconds_bucket" in text
            and "failover_http_status_code" in text
        ):
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError(f"probes did not run:\n{text}")
    check = subprocess.run(
        [promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=30
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout + check.stderr == b"", "promtool lint findings"
    families = check_families(text)
    assert {"process_cpu_seconds_total", "failover_exporter_build_info"} <= families
    assert "failover_probe_duration_seconds" in families


# -- label escaping ---------------------------------------------------------------------------


async def test_hostile_label_values_are_escaped(tmp_path: Path) -> None:
    hostile = 'q"uo\\te} x="y" \\n'
    region = 'eu\\west"'
    # JSON strings are valid YAML double-quoted scalars.
    cfg = config.parse(
        GOLDEN_CONFIG.replace("name: eu-slim", f"name: {json.dumps(hostile)}")
        .replace("name: eu-west", f"name: {json.dumps(region)}")
        .replace("region: eu-west", f"region: {json.dumps(region)}"),
        str(tmp_path / "c.yml"),
    )
    target = next(t for t in cfg.targets if t.name == hostile)
    assert target.region == region
    # The config forbids control characters in names; escaping must not rely on that.
    newline = dataclasses.replace(target, name="line1\nline2", image='im"g\\')
    states = [TargetState(t, REGISTRY[t.kind].reasons) for t in (*cfg.targets, newline)]
    for st in states:
        st.record(fixed_result(st.target, 1, success=True))
    engine = Engine()
    try:
        text = (await exposition.render(states, cfg.regions, engine.registry)).decode()
    finally:
        await engine.aclose()

    found = {
        (s.labels.get("target"), s.labels.get("target_region"), s.labels.get("image"))
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if fam.name == "failover_probe_success"
    }
    assert (hostile, 'eu\\west"', "slim") in found
    assert ("line1\nline2", 'eu\\west"', 'im"g\\') in found
    regions = {
        s.labels["target_region"]
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if fam.name == "failover_region_info"
    }
    assert 'eu\\west"' in regions
    assert "line1\nline2" not in text, "raw newline in a label value"
    promtool = need("promtool")
    check = subprocess.run(
        [promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=30
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_label_text_escapes_exactly() -> None:
    assert label_text(("a", "b"), ('x"y', "back\\slash\nnl")) == (
        'a="x\\"y",b="back\\\\slash\\nnl"'
    )


# -- rendering many targets ---------------------------------------------------------------------


async def test_render_yields_to_the_loop(tmp_path: Path) -> None:
    cfg = config.parse(GOLDEN_CONFIG, str(tmp_path / "c.yml"))
    base = cfg.targets[1]
    states = []
    for i in range(5000):
        st = TargetState(dataclasses.replace(base, name=f"t{i:04d}"), REGISTRY["http"].reasons)
        st.record(fixed_result(st.target, i, success=i % 7 != 0))
        states.append(st)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while ticks < 100_000:
            ticks += 1
            await asyncio.sleep(0)

    engine = Engine()
    task = asyncio.create_task(ticker())
    try:
        await asyncio.sleep(0)
        before = ticks
        body = await exposition.render(states, cfg.regions, engine.registry)
        during = ticks - before
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await engine.aclose()
    assert body.count(b"failover_probes_total{") == 5000
    # A render that never yielded would let the ticker run at most once; one that did yields at
    # least every LINES lines (sooner when STEP runs out first).
    assert during >= body.count(b"\n") // (2 * exposition.LINES), during


def test_status_code_drops_to_zero_when_no_response_arrives(tmp_path: Path) -> None:
    """A target that stopped answering must not keep showing its last 200."""
    (tmp_path / "c.yml").write_text(GOLDEN_CONFIG)
    target = next(t for t in config.load(tmp_path / "c.yml").targets if t.kind == "http")
    kind = REGISTRY[target.kind]
    st = TargetState(target, kind.reasons, kind.gauges)
    st.record(fixed_result(target, 0, success=True))
    assert st.gauges[metrics.HTTP_STATUS.name] == 200
    st.record(fixed_result(target, 1, success=False))
    assert st.gauges[metrics.HTTP_STATUS.name] == 0


def test_sample_values_are_written_like_prometheus_reads_them() -> None:
    """Whole values without a fraction, the rest as Python's shortest round-trip repr; the
    lookup of whole values (a cache) must not change any of that."""
    cases: list[tuple[float, str]] = [
        (0, "0"),
        (0.0, "0"),
        (-0.0, "0"),
        (1.0, "1"),
        (True, "1"),
        (200.0, "200"),
        (-3.0, "-3"),
        (999_999_999_999_999.0, "999999999999999"),
        (1e15, "1000000000000000.0"),
        (1e16, "1e+16"),
        (10**20, "100000000000000000000"),
        (0.0005, "0.0005"),
        (1_700_000_100.25, "1700000100.25"),
        (math.inf, "+Inf"),
        (-math.inf, "-Inf"),
        (math.nan, "NaN"),
    ]
    for _ in range(2):  # the second round reads whole values from the cache
        for value, text in cases:
            assert exposition.fmt(value) == text, value
    for value, text in cases:
        assert float(text.replace("Inf", "inf")) == value or math.isnan(value)


def test_bucket_lines_of_every_catalogue_layout() -> None:
    """The generated bucket writer gives the same lines as writing them one at a time."""
    labels = 'target="a\\"b"'
    for spec in metrics.CATALOGUE:
        if spec.type is not metrics.Type.HISTOGRAM:
            continue
        bounds = (*spec.buckets, math.inf)
        counts = list(range(3, 3 + len(bounds)))
        block = exposition._bucket_block(spec.buckets)
        expected = "".join(
            f'{spec.name}_bucket{{{labels},le="{exposition.fmt(b)}"}} {n}\n'
            for b, n in zip(bounds, counts, strict=True)
        )
        assert block(f"{spec.name}_bucket{{", labels, *counts) == expected, spec.name


@pytest.mark.parametrize("backend", ["auto", "zlib"])
def test_gzip_stream_round_trips_through_the_standard_library(backend: str) -> None:
    """Chunked compression with ISA-L (the default) and the zlib fallback: one gzip member that
    Python's gzip (like Prometheus's Go reader) inflates to the exact text."""
    text = b"".join(
        f'failover_probes_total{{target="t{i}",vantage="v{i % 3}"}} {i * 7}\n'.encode()
        for i in range(20_000)
    )
    packer = exposition.gzip_compressor(backend)
    body = b"".join(packer.compress(text[i : i + 65536]) for i in range(0, len(text), 65536))
    body += packer.flush()
    assert gzip.decompress(body) == text
    assert len(body) < len(text) / 5


def test_duration_text_keeps_nine_significant_digits() -> None:
    for value in (0.0123, 0.010113700000000001, 1.234567891234, 3e-07, 12.5):
        text = exposition.duration(value)
        assert math.isclose(float(text), value, rel_tol=1e-8), (value, text)
    assert exposition.duration(0.0123) == "0.0123"
    assert exposition.duration(0.0) == "0"
    assert exposition.duration(2.0) == "2"
    assert exposition.duration(math.inf) == "+Inf"
    assert exposition.duration(math.nan) == "NaN"


async def test_failure_lines_kept_between_scrapes_follow_a_new_failure(tmp_path: Path) -> None:
    """The reason lines are kept on the state between scrapes: a failure must show at once,
    and a target that never failed shares the zero text of its reason set."""
    (tmp_path / "c.yml").write_text(GOLDEN_CONFIG)
    cfg = config.load(tmp_path / "c.yml")
    target = next(t for t in cfg.targets if t.kind == "http")
    kind = REGISTRY[target.kind]
    st, other = (TargetState(target, kind.reasons, kind.gauges) for _ in range(2))
    registry = CollectorRegistry()

    def connect_failures(body: bytes) -> list[str]:
        name = metrics.PROBE_FAILURES.name
        return [
            line
            for line in body.decode().splitlines()
            if line.startswith(name) and 'reason="connect"' in line
        ]

    first = await exposition.render([st, other], cfg.regions, registry)
    assert connect_failures(first)[0].endswith(" 0")
    assert st.failures_text is other.failures_text
    st.record(fixed_result(target, 1, success=False))
    st.record(fixed_result(target, 2, success=False))
    second = await exposition.render([st, other], cfg.regions, registry)
    assert [line.rsplit(" ", 1)[1] for line in connect_failures(second)] == ["2", "0"]
