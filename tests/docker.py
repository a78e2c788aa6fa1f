"""A real Docker Engine API for the tests: Podman's compatible service, and locally built images.

No outside registry is reachable, so the base image is a rootfs made from Debian's busybox-static
and imported with `podman import` (cached by content); test images build FROM it. Registries the
tests start themselves (tests/support/registry.py) listen on loopback ports in REGISTRY_PORTS,
which the suite's registries.conf lets Podman reach over plain HTTP.

Import the fixtures into a test module with `from tests.docker import *  # noqa: F403`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.support.shared import shared
from tests.tools import missing, need

__all__ = [
    "IMAGES",
    "base_image",
    "docker_client",
    "podman",
    "podman_host",
    "test_images",
    "vantage",
]

IMAGES = Path(__file__).parent / "data" / "images"
CONTAINERS_CONF = IMAGES / "containers.conf"
VARIANTS = ("full", "slim", "minimal")
# Bump when the rootfs recipe below changes, so the cached base image is rebuilt.
BASE_RECIPE = "1"
BUSYBOX = "/bin/busybox"


# Loopback ports of the registries the tests start (real and hostile): plain HTTP for Podman.
REGISTRY_PORTS = range(19240, 19300)


def registries_conf() -> Path:
    """A registries.conf marking REGISTRY_PORTS on 127.0.0.1 insecure (HTTP), written once.

    Podman matches a registry by host:port, so each port has its entry; the file is named by
    its content, so concurrent workers write the same bytes to the same place.
    """
    text = "unqualified-search-registries = []\n" + "".join(
        f'[[registry]]\nlocation = "127.0.0.1:{port}"\ninsecure = true\n' for port in REGISTRY_PORTS
    )
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    path = Path(tempfile.gettempdir()) / f"failover-test-registries-{digest}.conf"
    if not path.exists():
        partial = path.with_suffix(f".{os.getpid()}.partial")
        partial.write_text(text)
        partial.rename(path)
    return path


def podman_env() -> dict[str, str]:
    return {
        **os.environ,
        "CONTAINERS_CONF": str(CONTAINERS_CONF),
        "CONTAINERS_REGISTRIES_CONF": str(registries_conf()),
    }


def podman(*args: str, timeout: float = 120) -> str:
    """Run the podman CLI with the suite's containers.conf; return stdout."""
    proc = subprocess.run(
        ["podman", *args],
        env=podman_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args)} failed: {proc.stderr.strip()[-2000:]}")
    return proc.stdout


def _ping(socket_path: Path) -> bool:
    client = docker.DockerClient(base_url=f"unix://{socket_path}", version="1.41", timeout=2)
    try:
        return bool(client.ping())
    except Exception:
        return False
    finally:
        client.close()


@pytest.fixture(scope="session")
def podman_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`unix://…` of a `podman system service` of this worker; stopped at session end."""
    with shared("podman_host", lambda: _podman_service(tmp_path_factory)) as host:
        yield host


@contextlib.contextmanager
def _podman_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    need("podman")
    need("runc")
    # The socket lives in this xdist worker's own base temp dir, so workers never share one.
    sock = tmp_path_factory.getbasetemp() / "podman.sock"
    log = (tmp_path_factory.getbasetemp() / "podman-service.log").open("w")
    proc = subprocess.Popen(
        ["podman", "system", "service", "--time=0", f"unix://{sock}"],
        env=podman_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while not (sock.exists() and _ping(sock)):
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                missing(f"podman system service did not come up (see {log.name})")
            time.sleep(0.1)
        yield f"unix://{sock}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.close()


@pytest.fixture(scope="session")
def docker_client(podman_host: str) -> Iterator[Any]:
    with shared("docker_client", lambda: _client(podman_host)) as client:
        yield client


@contextlib.contextmanager
def _client(podman_host: str) -> Iterator[Any]:
    client = docker.DockerClient(base_url=podman_host, version="1.41", timeout=60)
    try:
        yield client
    finally:
        client.close()


def _make_rootfs(tar_path: Path) -> None:
    """A tarball with busybox-static and its applets: enough for sh, httpd and sleep."""
    with tarfile.open(tar_path, "w") as tar:
        for d in ("bin", "etc", "tmp", "www"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755
            tar.addfile(info)
        tar.add(BUSYBOX, "bin/busybox")
        applets = subprocess.run(
            [BUSYBOX, "--list"], capture_output=True, text=True, check=True
        ).stdout.split()
        for applet in applets:
            if applet == "busybox":
                continue
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type, info.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(info)
        passwd = b"root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
        info = tarfile.TarInfo("etc/passwd")
        info.size = len(passwd)

        tar.addfile(info, io.BytesIO(passwd))


@pytest.fixture(scope="session")
def base_image(podman_host: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A local base image (busybox-static rootfs), imported once and reused across runs."""
    if not Path(BUSYBOX).is_file() or shutil.which("busybox") is None:
        missing("busybox-static (/bin/busybox)")
    with open(BUSYBOX, "rb") as f:
        if b"ld-linux" in f.read(4096):
            # Debian's dynamic `busybox` package: its binary cannot run in an empty rootfs.
            missing("busybox-static (/bin/busybox is dynamically linked)")
    digest = hashlib.sha256(Path(BUSYBOX).read_bytes() + BASE_RECIPE.encode()).hexdigest()[:12]
    ref = f"localhost/failover-test-base:{digest}"
    exists = subprocess.run(
        ["podman", "image", "exists", ref], env=podman_env(), check=False, timeout=60
    )
    if exists.returncode != 0:
        tar_path = tmp_path_factory.mktemp("base") / "rootfs.tar"
        _make_rootfs(tar_path)
        podman("import", str(tar_path), ref)
    return ref


def worker_id() -> str:
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


def _dangling() -> set[str]:
    out = podman("images", "-q", "--no-trunc", "--filter", "dangling=true", timeout=60)
    return set(out.split())


@pytest.fixture(scope="session")
def test_images(base_image: str) -> Iterator[dict[str, str]]:
    """The three variants under tests/data/images, built with podman, tagged per worker; they and
    the build-stage images their multi-stage builds leave untagged are removed at session end.

    Per-worker tags: the other worker may rebuild its own tags while this one inspects.
    """
    before = _dangling()
    refs = {}
    try:
        for variant in VARIANTS:
            ref = f"localhost/failover-test-svc-{worker_id()}:{variant}"
            podman(
                "build",
                "--quiet",
                "--build-arg",
                f"BASE={base_image}",
                "-t",
                ref,
                str(IMAGES / variant),
                timeout=300,
            )
            refs[variant] = ref
        yield refs
    finally:
        for ref in refs.values():
            subprocess.run(["podman", "rmi", "-f", ref], env=podman_env(), check=False, timeout=120)
        # Not forced: an image another build still uses stays (the store is shared).
        for image in _dangling() - before:
            subprocess.run(
                ["podman", "rmi", image],
                env=podman_env(),
                check=False,
                timeout=120,
                capture_output=True,
            )


@pytest.fixture
def vantage() -> str:
    """A vantage (= exporter instance id) unique to the test: sweeps never cross tests."""
    return f"test-{uuid.uuid4().hex[:10]}"


def containers_of(client: Any, instance: str) -> list[dict[str, Any]]:
    """Containers labelled with this exporter instance, in any state (one list call: no
    per-container inspect that could race with a removal)."""
    from exporter.docker.client import LABEL_INSTANCE

    found = client.api.containers(all=True, filters={"label": f"{LABEL_INSTANCE}={instance}"})
    return [c for c in found if (c.get("Labels") or {}).get(LABEL_INSTANCE) == instance]


@contextlib.contextmanager
def removed_afterwards(client: Any, *names: str) -> Iterator[None]:
    """Remove containers a test created itself, whatever the outcome."""
    try:
        yield
    finally:
        for name in names:
            with contextlib.suppress(docker.errors.NotFound):
                client.api.remove_container(name, force=True)
