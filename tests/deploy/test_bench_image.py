"""deploy/bench.yml: `failover-exporter bench` measures the exporter's own image, built from
deploy/Dockerfile, through Podman's Docker API: size and layers, cold starts, latency under load.

The image is the `exporter_image` fixture of tests/support/exporter_image.py, test_dockerfile's
too: the same build, which Podman's layer cache answers in seconds once that module (or an
earlier run) has built it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter import config
from exporter.commands import bench
from tests.docker import *  # noqa: F403
from tests.docker import podman
from tests.support.exporter_image import DOCKERFILE, exporter_image  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
BENCH_CONFIG = ROOT / "deploy" / "bench.yml"
SERVICE = "failover-exporter"
RUNS = 2
REQUESTS = 60


def test_bench_config_runs_the_image_as_the_dockerfile_builds_it() -> None:
    cfg = config.load(str(BENCH_CONFIG))
    (image,) = cfg.images
    assert image.service == SERVICE
    assert image.run is not None
    # The port bench publishes is the one the image exposes and the command listens on.
    exposed = re.findall(r"^EXPOSE\s+(\d+)", DOCKERFILE.read_text(), re.MULTILINE)
    assert exposed == [str(image.run.port)]
    assert image.run.command is not None
    assert image.run.command[-1].endswith(f":{image.run.port}")
    assert (image.run.readiness.kind, image.run.readiness.path) == ("http", "/-/healthy")
    # Docker's socket by default, Podman's with --region podman.
    assert bench.pick_region(cfg, SERVICE, None).name == "docker"
    podman_region = bench.pick_region(cfg, SERVICE, "podman")
    assert podman_region.docker is not None
    assert podman_region.docker.host == "unix:///run/podman/podman.sock"


@pytest.mark.slow
@pytest.mark.timeout(1200)  # a first run debootstraps the base image (~2 min) and downloads wheels
def test_bench_measures_the_exporter_image(
    exporter_image: str,  # noqa: F811
    podman_host: str,
    docker_client: Any,
    tmp_path: Path,
) -> None:
    # The config has no variable expansion: a copy points at this worker's socket and image tag.
    doc = yaml.safe_load(BENCH_CONFIG.read_text())
    (service,) = doc["services"]
    (region,) = [r for r in service["regions"] if r["name"] == "podman"]
    region["docker"]["host"] = podman_host
    (image,) = service["images"]
    image["ref"] = exporter_image
    copy = tmp_path / "bench.yml"
    copy.write_text(yaml.safe_dump(doc, sort_keys=False))
    out_json = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "exporter", "bench", "--config", str(copy)),
            *("--service", SERVICE, "--region", "podman", "--runs", str(RUNS)),
            *("--requests", str(REQUESTS), "--concurrency", "4", "--json", str(out_json)),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout
    report = json.loads(out_json.read_text())
    assert (report["region"], report["docker"]) == ("podman", podman_host)
    (variant,) = report["variants"]
    assert variant["error"] is None
    assert variant["ref"] == exporter_image
    (inspect,) = json.loads(podman("image", "inspect", exporter_image))
    assert variant["size_bytes"] == inspect["Size"]
    assert variant["layers"] == len(inspect["RootFS"]["Layers"])
    assert variant["pull_seconds"] is None  # built locally: nothing was pulled
    assert len(variant["cold_start_seconds"]) == RUNS
    assert all(s > 0 for s in variant["cold_start_seconds"])
    assert variant["cold_start_median"] in variant["cold_start_seconds"]
    # Each run is a fresh container loaded with REQUESTS requests.
    assert (variant["runs"], variant["requests"], variant["errors"]) == (RUNS, RUNS * REQUESTS, 0)
    assert 0 < variant["latency_p50"] <= variant["latency_p95"] <= variant["latency_p99"]
    assert variant["rank"] == 1
    # The table carries the same figures.
    header, row = proc.stdout.splitlines()[:2]
    cells = dict(zip(re.split(r"\s{2,}", header), re.split(r"\s{2,}", row), strict=True))
    assert cells["image"] == "runtime"
    assert cells["layers"] == str(len(inspect["RootFS"]["Layers"]))
    assert cells["size MB"] == f"{inspect['Size'] / 1e6:.1f}"
    assert cells["errors"] == f"0/{RUNS * REQUESTS}"
    # Every container bench started is gone.
    leftovers = docker_client.api.containers(
        all=True, filters={"label": "io.failover-exporter.target=bench:runtime"}
    )
    assert leftovers == []
