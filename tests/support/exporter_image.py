"""The exporter's image, built from deploy/Dockerfile with Podman on the local Python base image,
its dependencies as wheels from the host's pip (no container registry or index is reachable)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.base import CACHE, python_base_image
from tests.docker import podman
from tests.tools import need

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
# Debian bookworm's python3.
PYTHON_VERSION = "3.11"
PLATFORMS = ("manylinux_2_36_x86_64", "manylinux_2_28_x86_64", "manylinux_2_17_x86_64")
PLATFORMS += ("manylinux2014_x86_64", "manylinux_2_5_x86_64", "manylinux1_x86_64", "any")


def wheelhouse() -> Path:
    """The exporter's dependencies as wheels for the base image's Python, from the host's pip."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] + project["optional-dependencies"]["uvloop"]
    requirements = "\n".join([*deps, "setuptools>=68"]) + "\n"
    key = hashlib.sha256(f"{PYTHON_VERSION} {PLATFORMS} {requirements}".encode()).hexdigest()[:12]
    wheels = CACHE / f"wheels-{key}"
    if (wheels / ".complete").exists():
        return wheels
    wheels.mkdir(parents=True, exist_ok=True)
    (wheels / "requirements.txt").write_text(requirements)
    platforms = [f"--platform={p}" for p in PLATFORMS]
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:"),
            *(f"--python-version={PYTHON_VERSION}", "--implementation=cp"),
            *("--abi=cp311", "--abi=abi3", "--abi=none", *platforms),
            *("--dest", str(wheels), "--requirement", str(wheels / "requirements.txt")),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheels / ".complete").touch()
    return wheels


@pytest.fixture(scope="module")
def exporter_image() -> Iterator[str]:
    need("podman")
    need("runc")
    base = python_base_image()
    ref = f"localhost/failover-exporter-test:{uuid.uuid4().hex[:8]}"
    podman(
        "build",
        "--quiet",
        "--file",
        str(DOCKERFILE),
        "--build-arg",
        f"BASE={base}",
        "--build-arg",
        "PIP_NO_INDEX=1",
        "--build-arg",
        "VERSION=test",
        "--build-context",
        f"wheels={wheelhouse()}",
        "--tag",
        ref,
        str(ROOT),
        timeout=600,
    )
    try:
        yield ref
    finally:
        podman("rmi", "--force", ref)
