"""`bench --textfile` and `--pushgateway` from fixed results: the textfile passes
`promtool check metrics`, a real Pushgateway serves what was pushed under job="failover_bench",
and a second push replaces the (service, region) group. Names and help are the catalogue's."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter import metrics
from exporter.commands import bench_publish
from exporter.commands.bench_results import VariantResult, rank, summarize
from tests.support.pushgateway import pushgateway, scrape
from tests.tools import need

FINISHED = 1_796_000_000.0


def _results(*names: str) -> list[VariantResult]:
    out = []
    for i, name in enumerate(names):
        r = VariantResult(image=name, ref=f"x:{name}", size_bytes=1_000_000 * (i + 1), layers=i + 1)
        r.latency_p50_runs = [0.01 * (i + 1)] * 3
        r.latency_p95_runs = [0.02 * (i + 1)] * 3
        r.latency_p99_runs = [0.03 * (i + 1)] * 3
        r.cold_start_seconds = [0.5 + i, 0.6 + i, 0.7 + i]
        if i == 0:
            r.pull_seconds = 1.5
        summarize(r, 0.95)
        out.append(r)
    out.append(VariantResult(image="broken", ref="x:broken", error="boom"))
    return rank(out)


def _samples(text: str) -> dict[tuple[str, str], float]:
    """{(metric, image): value} of the bench families in an exposition."""
    out = {}
    for fam in text_string_to_metric_families(text):
        if fam.name.startswith("failover_bench_"):
            for s in fam.samples:
                out[(s.name, s.labels["image"])] = s.value
    return out


def test_bench_families_are_in_the_catalogue_with_fixed_names() -> None:
    assert {m.name for m in metrics.BENCH_FAMILIES} == {
        "failover_bench_latency_p50_seconds",
        "failover_bench_latency_p95_seconds",
        "failover_bench_cold_start_seconds",
        "failover_bench_pull_seconds",
        "failover_bench_image_size_bytes",
        "failover_bench_image_layers",
        "failover_bench_rank",
        "failover_bench_timestamp_seconds",
    }
    for m in metrics.BENCH_FAMILIES:
        assert m in metrics.CATALOGUE
        assert m.scope is metrics.Scope.BENCH
        assert m.label_names == ("service", "image", "region")
        assert m.type is metrics.Type.GAUGE
        assert m.help


def test_textfile_passes_promtool_and_holds_the_estimates(tmp_path: Path) -> None:
    promtool = need("promtool")
    path = tmp_path / "bench.prom"
    reg = bench_publish.registry("svc", "eu", _results("a", "b"), FINISHED)
    bench_publish.write_textfile(str(path), reg)
    text = path.read_text()
    check = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    for m in metrics.BENCH_FAMILIES:
        assert f"# HELP {m.name} {m.help}" in text
    got = _samples(text)
    assert got[("failover_bench_latency_p95_seconds", "b")] == pytest.approx(0.04)
    assert got[("failover_bench_cold_start_seconds", "a")] == pytest.approx(0.6)
    assert got[("failover_bench_image_size_bytes", "b")] == 2_000_000
    assert got[("failover_bench_image_layers", "a")] == 1
    assert got[("failover_bench_rank", "a")] == 1
    assert got[("failover_bench_rank", "b")] == 2
    assert got[("failover_bench_pull_seconds", "a")] == 1.5
    assert ("failover_bench_pull_seconds", "b") not in got  # not pulled: no series
    assert got[("failover_bench_timestamp_seconds", "broken")] == FINISHED
    assert ("failover_bench_rank", "broken") not in got
    assert 'service="svc"' in text
    assert 'region="eu"' in text
    assert not list(tmp_path.glob("*.tmp*"))  # written beside and renamed


def test_textfile_error_names_the_file(tmp_path: Path) -> None:
    reg = bench_publish.registry("svc", "eu", _results("a"), FINISHED)
    with pytest.raises(bench_publish.PublishError, match=r"--textfile .*/nodir/x\.prom: cannot"):
        bench_publish.write_textfile(str(tmp_path / "nodir" / "x.prom"), reg)


def test_push_to_a_real_pushgateway_replaces_the_group(tmp_path: Path) -> None:
    with pushgateway(tmp_path) as url:
        reg = bench_publish.registry("svc", "eu", _results("a", "b"), FINISHED)
        bench_publish.push(url, "svc", "eu", reg, timeout=10)
        other = bench_publish.registry("other", "eu", _results("z"), FINISHED)
        bench_publish.push(url, "other", "eu", other, timeout=10)
        text = scrape(url)
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if fam.name.startswith("failover_bench_"):
                    assert s.labels["job"] == "failover_bench", s
        got = _samples(text)
        assert got[("failover_bench_rank", "b")] == 2
        assert got[("failover_bench_rank", "z")] == 1
        # The next bench of svc/eu has only "a": "b" is gone, the other service's "z" stays.
        bench_publish.push(
            url, "svc", "eu", bench_publish.registry("svc", "eu", _results("a"), FINISHED), 10
        )
        got = _samples(scrape(url))
        assert ("failover_bench_rank", "b") not in got
        assert got[("failover_bench_rank", "a")] == 1
        assert got[("failover_bench_rank", "z")] == 1


def test_push_errors_name_the_url() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connection refused
        reg = bench_publish.registry("svc", "eu", _results("a"), FINISHED)
        url = f"http://127.0.0.1:{port}"
        with pytest.raises(bench_publish.PublishError, match=rf"--pushgateway {url}: cannot push"):
            bench_publish.push(url, "svc", "eu", reg, timeout=5)
    assert bench_publish.check_pushgateway_url("127.0.0.1:9091") is None
    assert bench_publish.check_pushgateway_url("https://gw.example:443/prefix") is None
