"""`failover-exporter bench` on the three example variants, built through Podman's Docker API."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.docker import *  # noqa: F403
from tests.docker import IMAGES, containers_of, podman, worker_id


@pytest.mark.slow
def test_bench_builds_ranks_and_reports(
    podman_host: str, base_image: str, docker_client: Any, tmp_path: Path
) -> None:
    tag = f"localhost/failover-bench-{worker_id()}-{uuid.uuid4().hex[:6]}"
    # Latency differs by construction: minimal serves a static file, slim and full run a CGI
    # script that sleeps 100 ms and 300 ms: gaps far above the noise of a busy 2-core machine.
    images = "\n".join(
        f"      - name: {v}\n"
        f"        ref: {tag}:{v}\n"
        f"        dockerfile: Dockerfile\n"
        f"        context: {IMAGES / v}\n"
        f"        build_target: {'runtime' if v != 'full' else ''}\n"
        f'        build_args: {{BASE: "{base_image}"}}\n'
        f"        run: {{port: 8080, readiness: {{path: {path}}}}}"
        for v, path in (
            ("full", "/cgi-bin/app"),
            ("slim", "/cgi-bin/app"),
            ("minimal", "/index.html"),
        )
    ).replace("        build_target: \n", "")
    cfg = tmp_path / "bench.yml"
    cfg.write_text(
        f"""
vantage: bench
services:
  - name: svc
    regions:
      - {{name: r1, role: primary, priority: 1, docker: {{host: "{podman_host}"}}}}
    images:
{images}
"""
    )
    out_json = tmp_path / "bench.json"
    try:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "exporter",
                "bench",
                "--config",
                str(cfg),
                "--service",
                "svc",
                "--build",
                "--runs",
                "2",
                "--requests",
                "40",
                "--concurrency",
                "4",
                "--json",
                str(out_json),
            ],
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr + proc.stdout
        report = json.loads(out_json.read_text())
        variants = report["variants"]
        assert [v["image"] for v in variants] == ["minimal", "slim", "full"], proc.stdout
        # Two runs give [min, max] intervals (50 % coverage): a loaded machine can make slim and
        # full overlap, and then the honest answer is a tie, shown as "=2".
        ranks = [v["rank"] for v in variants]
        assert ranks in ([1, 2, 3], [1, 2, 2]), proc.stdout
        for v in variants:
            (inspect,) = json.loads(podman("image", "inspect", v["ref"]))
            assert v["size_bytes"] == inspect["Size"]
            assert v["layers"] == len(inspect["RootFS"]["Layers"])
            assert v["build_seconds"] > 0
            assert len(v["cold_start_seconds"]) == 2
            assert v["runs"] == 2
            est = v["estimates"]["latency_p95"]
            assert est["low"] <= est["value"] <= est["high"]
            assert est["value"] == v["latency_p95"]
            assert est["confidence"] == 0.5
            assert v["estimates"]["size"]["value"] == inspect["Size"]
            assert v["errors"] == 0
            assert v["latency_p50"] <= v["latency_p95"] <= v["latency_p99"]
        by_name = {v["image"]: v for v in variants}
        # The sleeping handlers really are as slow as built.
        assert by_name["full"]["latency_p50"] >= 0.3
        assert by_name["slim"]["latency_p50"] >= 0.1
        assert by_name["full"]["size_bytes"] > by_name["slim"]["size_bytes"]
        # The table: header, one ranked row per variant in order, and the rule beneath.
        lines = proc.stdout.splitlines()
        assert lines[0].split()[:2] == ["rank", "image"]
        marks = ["1", "2", "3"] if ranks == [1, 2, 3] else ["1", "=2", "=2"]
        assert [line.split()[:2] for line in lines[1:4]] == [
            [marks[0], "minimal"],
            [marks[1], "slim"],
            [marks[2], "full"],
        ]
        assert "Ranked by p95 latency" in proc.stdout
        # Progress went to stderr, not into the table.
        assert "run 2/2: cold start" in proc.stderr
        assert containers_of(docker_client, "") == []
        leftovers = docker_client.api.containers(
            all=True, filters={"label": "io.failover-exporter.target=bench:full"}
        )
        assert leftovers == []
    finally:
        for v in ("full", "slim", "minimal"):
            subprocess.run(
                ["podman", "rmi", "-f", f"{tag}:{v}"], capture_output=True, check=False, timeout=60
            )
