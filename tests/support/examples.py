"""The three variants of deploy/examples/hello, built through Podman's Docker API from local bases.

No registry is reachable, so the Dockerfiles' real-world bases (gcc:12, debian:12-slim,
distroless static) are replaced by build args: a debootstrap bookworm with gcc for the build
stage, plain bookworm minbase for the slim runtime, and `scratch` for the minimal one
(tests/deploy/base.py makes and caches the Debian ones).

Import the fixtures with `from tests.support.examples import *  # noqa: F403`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.deploy.base import debian_image
from tests.docker import worker_id
from tests.support.shared import shared

__all__ = ["example_bases", "example_builds_cleaned", "example_images"]

EXAMPLES = Path(__file__).resolve().parent.parent.parent / "deploy" / "examples"
HELLO = EXAMPLES / "hello"
# In size order, smallest first: the order the tests expect.
VARIANTS = ("minimal", "slim", "single")
BUILD_PACKAGES = ("gcc", "libc6-dev")


def local_bases() -> dict[str, str]:
    """Build args that point the Dockerfiles at local stand-ins of their real-world bases."""
    return {
        "build": debian_image("example-build", BUILD_PACKAGES),
        "slim": debian_image("example-slim", ()),
    }


def build_args(variant: str, bases: dict[str, str]) -> dict[str, str]:
    args = {"BUILD_BASE": bases["build"]}
    if variant == "slim":
        args["RUNTIME_BASE"] = bases["slim"]
    elif variant == "minimal":
        args["RUNTIME_BASE"] = "scratch"
    return args


def build(client: Any, variant: str, tag: str, bases: dict[str, str]) -> None:
    """Build one variant through the Docker API (as `bench --build` does); raise on failure."""
    for chunk in client.api.build(
        path=str(HELLO),
        dockerfile=f"Dockerfile.{variant}",
        tag=tag,
        buildargs=build_args(variant, bases),
        rm=True,
        forcerm=True,
        decode=True,
    ):
        if isinstance(chunk, dict) and chunk.get("error"):
            raise RuntimeError(f"build of {variant} failed: {chunk['error']}")
    client.api.inspect_image(tag)


def dangling(client: Any) -> set[str]:
    return {i["Id"] for i in client.api.images(filters={"dangling": True})}


def remove_new_dangling(client: Any, before: set[str]) -> None:
    """Remove the build-stage images our multi-stage builds left untagged.

    Not forced: an image another build still uses stays (the store is shared with other runs).
    """
    for image in dangling(client) - before:
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            client.api.remove_image(image)


@pytest.fixture
def example_builds_cleaned(docker_client: Any) -> Iterator[None]:
    """Build-stage images that the test's own builds leave are removed afterwards."""
    before = dangling(docker_client)
    try:
        yield
    finally:
        remove_new_dangling(docker_client, before)


@pytest.fixture(scope="session")
def example_bases(podman_host: str) -> dict[str, str]:
    return local_bases()


@pytest.fixture(scope="session")
def example_images(docker_client: Any, example_bases: dict[str, str]) -> Iterator[dict[str, str]]:
    """{variant: ref} of the three built variants, tagged per worker; removed at session end."""
    with shared("example_images", lambda: _built(docker_client, example_bases)) as refs:
        yield refs


@contextlib.contextmanager
def _built(docker_client: Any, example_bases: dict[str, str]) -> Iterator[dict[str, str]]:
    refs = {v: f"localhost/failover-example-hello-{worker_id()}:{v}" for v in VARIANTS}
    before = dangling(docker_client)
    try:
        for variant, ref in refs.items():
            build(docker_client, variant, ref, example_bases)
        yield refs
    finally:
        for ref in refs.values():
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                docker_client.api.remove_image(ref, force=True)
        remove_new_dangling(docker_client, before)
