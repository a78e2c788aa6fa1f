"""Registries on loopback for pull tests: Debian's real `docker-registry`, and hostile ones.

- `registry`: docker/distribution 2.8 (`/usr/bin/docker-registry serve`), storage in a temp dir,
  plain HTTP on 127.0.0.1 (Podman is told it is insecure: tests/docker.py's registries.conf).
- `hostile_registries`: one that accepts connections and never answers (hang), one that serves
  an invalid manifest (broken), one that serves the real registry's manifest and config but
  stalls on layer blobs (a pull cut off half-way), and a port where nothing listens (refused).

Every process, socket and temp dir is gone at the end of the session; images pushed or pulled
are the tests' to remove (`pushed_variants` removes its own).

Import the fixtures with `from tests.support.registry import *  # noqa: F403`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.server
import json
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.docker import REGISTRY_PORTS, podman, worker_id
from tests.support.examples import *  # noqa: F403
from tests.support.shared import shared
from tests.tools import missing, need

__all__ = ["hostile_registries", "pushed_variants", "registry"]

# Ports per xdist worker: registry, hang, broken, stall, refused.
PORTS_PER_WORKER = 5
MANIFEST_TYPES = (
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
)


def worker_ports() -> dict[str, int]:
    wid = worker_id()
    n = int(wid.removeprefix("gw")) if wid.startswith("gw") else 0
    first = REGISTRY_PORTS.start + PORTS_PER_WORKER * n
    if first + PORTS_PER_WORKER > REGISTRY_PORTS.stop:
        pytest.fail(f"no registry ports left for worker {wid} in {REGISTRY_PORTS}")
    names = ("registry", "hang", "broken", "stall", "refused")
    return {name: first + i for i, name in enumerate(names)}


@dataclasses.dataclass
class Registry:
    host: str  # 127.0.0.1:PORT, as image refs spell it
    proc: subprocess.Popen[bytes]
    root: Path

    def ref(self, name: str, tag: str) -> str:
        return f"{self.host}/{name}:{tag}"


def _wait_http(url: str, proc: subprocess.Popen[bytes] | None, log: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        with (
            contextlib.suppress(urllib.error.URLError, OSError),
            urllib.request.urlopen(url, timeout=1) as resp,  # noqa: S310 - http://127.0.0.1
        ):
            if resp.status == 200:
                return
        if (proc is not None and proc.poll() is not None) or time.monotonic() > deadline:
            missing(f"{url} did not come up: {log.read_text()[-2000:] if log.exists() else ''}")
        time.sleep(0.1)


@pytest.fixture(scope="session")
def registry(podman_host: str) -> Iterator[Registry]:
    """A real registry (docker-registry) on loopback; stopped and its storage removed at end."""
    with shared("registry", _registry) as reg:
        yield reg


@contextlib.contextmanager
def _registry() -> Iterator[Registry]:
    binary = need("docker-registry")
    port = worker_ports()["registry"]
    root = Path(tempfile.mkdtemp(prefix="failover-registry-"))
    (root / "storage").mkdir()
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log: {level: warn}\n"
        f"storage:\n  filesystem: {{rootdirectory: {root / 'storage'}}}\n"
        "  delete: {enabled: true}\n"
        f"http: {{addr: '127.0.0.1:{port}', secret: failover-test}}\n"
    )
    log = root / "registry.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([binary, "serve", str(config)], stdout=out, stderr=out)
    try:
        _wait_http(f"http://127.0.0.1:{port}/v2/", proc, log)
        yield Registry(f"127.0.0.1:{port}", proc, root)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        shutil.rmtree(root, ignore_errors=True)


def push_squashed(client: Any, local_ref: str, remote_ref: str) -> int:
    """Push `local_ref` to a registry as one squashed layer, then drop the local copy.

    Squashed so that none of its layers is in the local store afterwards (the variants share
    their bases with images the suite keeps): the next pull of `remote_ref` fetches every byte,
    a true first pull. Returns the image size.
    """
    with tempfile.TemporaryDirectory(prefix="failover-squash-") as context:
        (Path(context) / "Dockerfile").write_text(f"FROM {local_ref}\n")
        podman("build", "--quiet", "--squash-all", "-t", remote_ref, context, timeout=600)
    try:
        size = int(client.api.inspect_image(remote_ref)["Size"])
        podman("push", "--quiet", remote_ref, timeout=600)
    finally:
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            client.api.remove_image(remote_ref, force=True)
    return size


@dataclasses.dataclass(frozen=True)
class Pushed:
    ref: str  # in the registry, absent locally until pulled
    size: int


@pytest.fixture(scope="session")
def pushed_variants(
    docker_client: Any, registry: Registry, example_images: dict[str, str]
) -> Iterator[dict[str, Pushed]]:
    """deploy/examples' variants in the registry as hello-<worker>:<variant>; every local copy
    of those refs is removed at the end, whoever pulled it."""
    with shared("pushed_variants", lambda: _pushed(docker_client, registry, example_images)) as p:
        yield p


@contextlib.contextmanager
def _pushed(
    docker_client: Any, registry: Registry, example_images: dict[str, str]
) -> Iterator[dict[str, Pushed]]:
    pushed = {}
    try:
        for variant, local in example_images.items():
            remote = registry.ref(f"hello-{worker_id()}", variant)
            pushed[variant] = Pushed(remote, push_squashed(docker_client, local, remote))
        yield pushed
    finally:
        for p in pushed.values():
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                docker_client.api.remove_image(p.ref, force=True)


# -- hostile registries ------------------------------------------------------------------------


class _Hang:
    """Accepts every connection and never answers; holds the sockets until closed."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_server(("127.0.0.1", port), reuse_port=False)
        self.held: list[socket.socket] = []
        self.accepted = 0
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True, name="hang-registry")
        self.thread.start()

    def _run(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted += 1
            self.held.append(conn)

    def open_connections(self) -> int:
        """Held connections the client side has not closed yet."""
        alive = 0
        for conn in self.held:
            conn.setblocking(False)
            try:
                # Drain the request bytes nobody answers; an empty read after them is the FIN.
                while conn.recv(65536):
                    pass
            except BlockingIOError:
                alive += 1
            except OSError:
                pass
        return alive

    def close(self) -> None:
        self._stop = True
        self.thread.join(timeout=5)
        for conn in self.held:
            conn.close()
        self.sock.close()


class _FakeRegistryHandler(http.server.BaseHTTPRequestHandler):
    server: _FakeRegistry

    def log_message(self, format: str, *args: Any) -> None:
        pass  # requests are recorded in do_GET; nothing on stderr

    def _send(
        self, status: int, body: bytes, ctype: str, extra: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Docker-Distribution-API-Version", "registry/2.0")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        self.server.requests.append(f"{self.command} {self.path}")
        if self.path == "/v2/":
            self._send(200, b"{}", "application/json")
            return
        if self.server.mode == "broken":
            # A manifest cut off mid-object: not JSON at all.
            body = b'{"schemaVersion": 2, "mediaType": "' + MANIFEST_TYPES[0].encode() + b'", "con'
            self._send(200, body, MANIFEST_TYPES[0])
            return
        # stall: the real registry's manifest and config, then layer blobs that never come.
        upstream = f"http://{self.server.upstream}{self.path}"
        if "/blobs/" in self.path and self.path.rsplit("/", 1)[1] not in self.server.configs:
            self.server.stalled.set()
            # Headers promise the blob, then nothing: the pull waits mid-layer.
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", "1048576")
            self.send_header("Docker-Distribution-API-Version", "registry/2.0")
            self.end_headers()
            self.wfile.flush()
            self.server.release.wait(timeout=600)
            return
        req = urllib.request.Request(upstream, method=self.command)
        req.add_header("Accept", ", ".join(MANIFEST_TYPES))
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - loopback
                body = resp.read()
                ctype = resp.headers.get("Content-Type", "application/octet-stream")
                extra = {}
                if digest := resp.headers.get("Docker-Content-Digest"):
                    extra["Docker-Content-Digest"] = digest
        except urllib.error.HTTPError as exc:
            self._send(exc.code, exc.read(), "application/json")
            return
        if "/manifests/" in self.path and body:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                self.server.configs.add(json.loads(body)["config"]["digest"])
        self._send(200, body, ctype, extra)


class _FakeRegistry(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, mode: str, upstream: str) -> None:
        super().__init__(("127.0.0.1", port), _FakeRegistryHandler)
        self.mode = mode
        self.upstream = upstream
        self.requests: list[str] = []
        self.configs: set[str] = set()
        self.stalled = threading.Event()
        self.release = threading.Event()
        self.thread = threading.Thread(target=self.serve_forever, daemon=True, name=mode)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.shutdown()
        self.server_close()
        self.thread.join(timeout=5)


@dataclasses.dataclass
class Hostile:
    hang: str
    broken: str
    stall: str
    refused: str
    hang_server: _Hang
    broken_server: _FakeRegistry
    stall_server: _FakeRegistry


@pytest.fixture(scope="session")
def hostile_registries(registry: Registry) -> Iterator[Hostile]:
    with shared("hostile_registries", lambda: _hostile(registry)) as hostile:
        yield hostile


@contextlib.contextmanager
def _hostile(registry: Registry) -> Iterator[Hostile]:
    ports = worker_ports()
    # Bound and not listening: connections are refused, and no other process can take the port.
    refused = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    refused.bind(("127.0.0.1", ports["refused"]))
    hang = _Hang(ports["hang"])
    broken = _FakeRegistry(ports["broken"], "broken", registry.host)
    stall = _FakeRegistry(ports["stall"], "stall", registry.host)
    try:
        yield Hostile(
            hang=f"127.0.0.1:{ports['hang']}",
            broken=f"127.0.0.1:{ports['broken']}",
            stall=f"127.0.0.1:{ports['stall']}",
            refused=f"127.0.0.1:{ports['refused']}",
            hang_server=hang,
            broken_server=broken,
            stall_server=stall,
        )
    finally:
        for server in (broken, stall):
            server.close()
        hang.close()
        refused.close()
