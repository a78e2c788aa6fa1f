"""deploy/examples: the hello service's three Dockerfile variants build through Podman's Docker
API from local bases, rank by size as designed, and each serves its health check; the example
bench config ranks them."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from exporter.docker.client import DockerHandle
from exporter.docker.containers import started_container
from exporter.docker.settings import DockerSettings, Readiness, RunSettings
from exporter.resources import Resources
from tests.docker import *  # noqa: F403
from tests.docker import containers_of, worker_id
from tests.support.examples import *  # noqa: F403
from tests.support.examples import EXAMPLES, HELLO, VARIANTS, build_args
from tests.tools import need

RUN = RunSettings(port=8080, readiness=Readiness(path="/healthz", status=[200]))


def hadolint() -> str:
    venv = Path(sys.executable).parent / "hadolint"
    return str(venv) if venv.exists() else need("hadolint")


def test_dockerfiles_are_hadolint_clean() -> None:
    files = sorted(HELLO.glob("Dockerfile.*"))
    assert [f.suffix for f in files] == [".minimal", ".single", ".slim"]
    proc = subprocess.run(
        [hadolint(), "--failure-threshold", "style", *map(str, files)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfiles_default_to_real_world_bases() -> None:
    # Built here with local bases through build args; anywhere else the defaults apply.
    defaults = {
        f.suffix[1:]: {
            line.split()[1].split("=")[0]: line.split("=", 1)[1]
            for line in f.read_text().splitlines()
            if line.startswith("ARG ")
        }
        for f in HELLO.glob("Dockerfile.*")
    }
    assert defaults == {
        "single": {"BUILD_BASE": "docker.io/library/gcc:12"},
        "slim": {
            "BUILD_BASE": "docker.io/library/gcc:12",
            "RUNTIME_BASE": "docker.io/library/debian:12-slim",
        },
        "minimal": {
            "BUILD_BASE": "docker.io/library/gcc:12",
            "RUNTIME_BASE": "gcr.io/distroless/static-debian12:nonroot",
        },
    }


@pytest.mark.slow
async def test_variants_build_rank_by_size_and_serve_health(
    podman_host: str, docker_client: Any, example_images: dict[str, str], vantage: str
) -> None:
    sizes = {v: docker_client.api.inspect_image(ref)["Size"] for v, ref in example_images.items()}
    assert sizes["minimal"] < sizes["slim"] < sizes["single"], sizes
    # The minimal image is the binary alone; the single-stage one carries a compiler.
    assert sizes["minimal"] < 2 * 1024 * 1024, sizes
    assert sizes["single"] > 2 * sizes["slim"], sizes

    resources = Resources()
    try:
        async with (
            DockerHandle.open(DockerSettings(host=podman_host), vantage, resources) as h,
            aiohttp.ClientSession() as http,
        ):
            for variant in VARIANTS:
                ref = example_images[variant]
                async with started_container(h, ref, RUN, f"examples:{variant}") as started:
                    base = f"http://{started.host}:{started.port}"
                    async with http.get(f"{base}/healthz") as resp:
                        assert (resp.status, await resp.text()) == (200, "ok\n")
                    async with http.get(f"{base}/") as resp:
                        assert await resp.text() == f"hello from {variant}\n"
                    async with http.get(f"{base}/nope") as resp:
                        assert resp.status == 404
                    # The Dockerfile's HEALTHCHECK command, also where there is no shell.
                    command = _healthcheck(variant)
                    check = await h.call(
                        "exec health check",
                        lambda c, name=started.name, cmd=command: _exec(c, name, cmd),
                    )
                    assert check == 0, variant
    finally:
        await resources.aclose()
    assert containers_of(docker_client, vantage) == []


def _healthcheck(variant: str) -> list[str]:
    # Read from the Dockerfile: Podman 4.3's Docker-API build does not keep HEALTHCHECK in the
    # image (`podman build --format docker` and Docker do).
    (line,) = (
        line
        for line in (HELLO / f"Dockerfile.{variant}").read_text().splitlines()
        if line.startswith("HEALTHCHECK ")
    )
    command = json.loads(line.partition(" CMD ")[2])
    assert isinstance(command, list)
    return [str(part) for part in command]


def _exec(client: Any, container: str, cmd: list[str]) -> int:
    exec_id = client.api.exec_create(container, cmd)["Id"]
    client.api.exec_start(exec_id)
    return int(client.api.exec_inspect(exec_id)["ExitCode"])


@pytest.mark.slow
def test_example_bench_config_ranks_the_variants(
    podman_host: str,
    docker_client: Any,
    example_bases: dict[str, str],
    example_builds_cleaned: None,
    tmp_path: Path,
) -> None:
    """deploy/examples/bench.yml as shipped, with only the endpoint and the bases swapped."""
    cfg = yaml.safe_load((EXAMPLES / "bench.yml").read_text())
    service = cfg["services"][0]
    service["regions"][0]["docker"]["host"] = podman_host
    tag = f"localhost/failover-example-bench-{worker_id()}-{uuid.uuid4().hex[:6]}"
    for image in service["images"]:
        image["ref"] = f"{tag}:{image['name']}"
        image["context"] = str(EXAMPLES / image["context"])
        image["build_args"] = build_args(image["name"], example_bases)
    path = tmp_path / "bench.yml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "bench.json"
    try:
        proc = subprocess.run(
            [
                *(sys.executable, "-m", "exporter", "bench", "--config", str(path)),
                *("--service", "hello", "--build", "--runs", "1", "--requests", "20"),
                *("--json", str(out)),
            ],
            capture_output=True,
            text=True,
            timeout=280,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr + proc.stdout
        variants = {v["image"]: v for v in json.loads(out.read_text())["variants"]}
        assert sorted(variants) == sorted(VARIANTS)
        for name, v in variants.items():
            assert v["error"] is None, (name, v["error"])
            assert v["errors"] == 0, name
        by_size = sorted(variants, key=lambda n: variants[n]["size_bytes"])
        assert by_size == list(VARIANTS)
    finally:
        for image in service["images"]:
            with contextlib.suppress(Exception):
                docker_client.api.remove_image(image["ref"], force=True)
