"""deploy/Dockerfile: hadolint-clean, builds with Podman from a local Python base image (no
registry is reachable), and the image serves /metrics as a non-root user on a read-only root.

The builder's pip gets its wheels from a wheelhouse that the host's pip downloads (cached), through
the Dockerfile's `wheels` build context: the containers never reach an index themselves.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.deploy.base import CACHE, python_base_image
from tests.docker import podman, podman_env
from tests.support.exporter_image import DOCKERFILE, exporter_image
from tests.tools import need

ROOT = Path(__file__).resolve().parents[2]

__all__ = ["exporter_image"]  # a fixture, re-exported for the tests below


def logs(container: str) -> str:
    """A container's output, stdout and stderr (the exporter logs to stderr)."""
    proc = subprocess.run(
        ["podman", "logs", container],
        env=podman_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=60,
        check=False,
    )
    return proc.stdout[-5000:]


def hadolint() -> str:
    venv = Path(sys.executable).parent / "hadolint"
    return str(venv) if venv.exists() else need("hadolint")


def test_hadolint_clean() -> None:
    proc = subprocess.run(
        [hadolint(), "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_catches_a_root_image(tmp_path: Path) -> None:
    """hadolint really reads the file: the same Dockerfile ending as root is flagged."""
    bad = tmp_path / "Dockerfile"
    bad.write_text(DOCKERFILE.read_text().replace("USER 65532:65532", "USER root"))
    proc = subprocess.run(
        [hadolint(), str(bad)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode != 0
    assert "DL3002" in proc.stdout


@pytest.mark.slow
@pytest.mark.timeout(1200)  # a first run debootstraps the base image (~2 min) and downloads wheels
def test_image_is_slim_non_root_and_labelled(exporter_image: str) -> None:
    (info,) = json.loads(podman("image", "inspect", exporter_image))
    cfg = info["Config"]
    user = cfg["User"]
    uid, _, gid = user.partition(":")
    assert uid.isdigit(), user
    assert int(uid) != 0
    assert gid.isdigit(), user
    assert int(gid) != 0
    assert "10077/tcp" in cfg["ExposedPorts"]
    assert cfg["Entrypoint"] == ["failover-exporter"]
    labels = cfg["Labels"]
    for key in ("title", "description", "licenses", "version", "revision", "base.name"):
        assert labels.get(f"org.opencontainers.image.{key}"), key
    assert labels["org.opencontainers.image.version"] == "test"
    # The runtime stage is the base plus one layer: the venv.
    (base,) = json.loads(podman("image", "inspect", python_base_image()))
    assert len(info["RootFS"]["Layers"]) == len(base["RootFS"]["Layers"]) + 1
    # No build tools or caches made it into the image.
    script = (
        "import os, shutil, sys\n"
        "import uvloop  # the extra is installed: --event-loop auto runs on it\n"
        "tools = [t for t in ('gcc', 'cc', 'make', 'pip', 'pip3') if shutil.which(t)]\n"
        "venv = [p for p in os.listdir('/opt/venv/bin') if p.startswith(('pip', 'wheel'))]\n"
        "site = '/opt/venv/lib/python3.11/site-packages'\n"
        "build = [p for p in os.listdir(site) if p.startswith(('pip', 'setuptools', 'wheel'))]\n"
        "caches = [p for p in ('/root/.cache', '/tmp/pip', '/src') if os.path.exists(p)]\n"
        "print(tools, venv, build, caches)\n"
        "sys.exit(1 if tools or venv or build or caches else 0)\n"
    )
    out = podman(
        "run", "--rm", "--user", "0", "--entrypoint", "python3", exporter_image, "-c", script
    )
    assert out.strip() == "[] [] [] []"


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_image_serves_metrics_as_non_root_on_a_read_only_root(
    exporter_image: str, unused_tcp_port: int
) -> None:
    name = f"failover-exporter-test-{uuid.uuid4().hex[:8]}"
    podman(
        "run",
        "--detach",
        "--name",
        name,
        "--read-only",
        "--cap-drop=ALL",
        "--security-opt=no-new-privileges",
        "--publish",
        f"127.0.0.1:{unused_tcp_port}:10077",
        exporter_image,
        "demo",
    )
    try:
        body = ""
        deadline = time.monotonic() + 60
        while 'vantage="us-east"' not in body or "failover_probe_success{" not in body:
            assert time.monotonic() < deadline, f"no probe results; logs:\n{logs(name)}"
            time.sleep(0.5)
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{unused_tcp_port}/metrics", timeout=5
                ) as resp:
                    assert resp.status == 200
                    body = resp.read().decode()
            except OSError:
                continue
        assert "failover_exporter_build_info{" in body
        # The process serving it is not root.
        status = podman("exec", name, "cat", "/proc/1/status")
        uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
        assert uids == ["65532"] * 4  # real, effective, saved, filesystem
        assert podman("inspect", "--format", "{{.State.Running}}", name).strip() == "true"
    finally:
        podman("rm", "--force", "--time", "5", name)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_image_runs_a_config_and_a_region_of_the_compose_stack(
    exporter_image: str, unused_tcp_port_factory: Callable[[], int]
) -> None:
    """What deploy/compose.yaml does: `demo --serve REGION` in one container and `run --config`
    in another, probing it over the network (here: the host's loopback)."""
    region_port, exporter_port = unused_tcp_port_factory(), unused_tcp_port_factory()
    region, exporter = f"ftest-region-{uuid.uuid4().hex[:8]}", f"ftest-exp-{uuid.uuid4().hex[:8]}"
    config = ROOT / "deploy" / "compose" / "exporter" / "us-east.yml"
    text = config.read_text().replace("region-eu-west:8080", f"127.0.0.1:{region_port}")
    scratch = CACHE / f"compose-{uuid.uuid4().hex[:8]}.yml"
    scratch.write_text(text)
    try:
        podman(
            "run", "--detach", "--name", region, "--read-only", "--network", "host",
            exporter_image, "demo", "--serve", "eu-west",
            "--web.listen-address", f"127.0.0.1:{region_port}",
        )  # fmt: skip
        podman(
            "run", "--detach", "--name", exporter, "--read-only", "--network", "host",
            "--volume", f"{scratch}:/etc/failover-exporter/config.yml:ro",
            exporter_image, "run", "--config", "/etc/failover-exporter/config.yml",
            "--web.listen-address", f"127.0.0.1:{exporter_port}",
        )  # fmt: skip
        want = ('target_region="eu-west"', 'image="slim"', 'vantage="us-east"')
        body = ""
        deadline = time.monotonic() + 60
        while not any(
            line.startswith("failover_probe_success{")
            and all(label in line for label in want)
            and float(line.rpartition(" ")[2]) == 1
            for line in body.splitlines()
        ):
            assert time.monotonic() < deadline, (
                f"eu-west never probed healthy:\n{logs(exporter)}\n{body[-3000:]}"
            )
            time.sleep(0.5)
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{exporter_port}/metrics", timeout=5
                ) as resp:
                    body = resp.read().decode()
            except OSError:
                continue
    finally:
        podman("rm", "--force", "--time", "5", region, exporter)
        scratch.unlink(missing_ok=True)
