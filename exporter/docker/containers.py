"""Container lifecycle on one Docker endpoint: pull per policy, create, start, wait for
readiness, and remove, whatever happens (success, failure, timeout, cancellation, shutdown).

Used by the cold_start probe and by `bench`; neither reaches into the other.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import aiohttp

from exporter.docker.client import (
    DockerError,
    DockerHandle,
    DockerNotFound,
    DockerUnreachable,
    PullError,
    log,
)
from exporter.docker.settings import RunSettings

# Check whether the container died this often while waiting for readiness, so a crashing
# image fails fast instead of running into the timeout.
STATE_CHECK_EVERY = 0.5
# Removal runs after the probe's own deadline has passed, so it has its own bound.
CLEANUP_TIMEOUT = 30.0
# A pull with no caller's bound (bench) may take this long.
PULL_LIMIT = 3600.0


@dataclasses.dataclass
class Started:
    """A container that answered its readiness check."""

    name: str
    host: str
    port: int
    cold_start: float
    pull: float | None


@dataclasses.dataclass(frozen=True)
class Pull:
    """One pull: how long it took, and whether the layers were already there.

    "warm": the image was present before with the same ID, so the pull only asked the registry
    for the manifest. "cold": the image was absent, or the registry had a new one: layers were
    fetched (those shared with other local images excepted).
    """

    seconds: float
    cache: Literal["cold", "warm"]


PullKind = Literal["unreachable", "timeout", "not_found", "manifest", "error"]

# Substrings of the daemon's error text (containers/image and Docker word them alike), checked in
# this order. The registry's side only: the daemon's own failures stay DockerError.
_PULL_PATTERNS: tuple[tuple[PullKind, tuple[str, ...]], ...] = (
    (
        "unreachable",
        (
            "connection refused",
            "no such host",
            "no route to host",
            "network is unreachable",
            "i/o timeout",
            "connection reset",
            "tls:",
            "server gave http response",
        ),
    ),
    ("not_found", ("manifest unknown", "name unknown", "not found", "no such image")),
    ("manifest", ("manifest", "json", "invalid character", "unsupported", "mediatype")),
)


class PullFailure(DockerError):
    """A pull that failed on the registry's side, classified for the probe's reason."""

    def __init__(self, kind: PullKind, message: str) -> None:
        super().__init__(message)
        self.kind: PullKind = kind


def classify_pull_error(message: str) -> PullKind:
    text = message.lower()
    for kind, needles in _PULL_PATTERNS:
        if any(n in text for n in needles):
            return kind
    return "error"


async def image_id(handle: DockerHandle, ref: str) -> str | None:
    try:
        attrs = await handle.call("inspect image", lambda c: c.api.inspect_image(ref))
    except DockerNotFound:
        return None
    return str(attrs.get("Id") or "") or None


async def pull_image(handle: DockerHandle, ref: str, limit: float = PULL_LIMIT) -> Pull:
    """Pull `ref` within `limit` seconds; a failure names the registry's problem.

    On a timeout or a cancellation the API connection is closed, which makes the daemon abandon
    the pull and drop its partial layers.
    """
    before = await image_id(handle, ref)
    t0 = time.perf_counter()
    try:
        async with asyncio.timeout(limit):
            await handle.pull(ref)
    except TimeoutError:
        raise PullFailure(
            "timeout",
            f"pull image {ref}: not finished within {limit:g}s "
            "(the registry does not answer, or the pull needs a longer probe timeout)",
        ) from None
    except PullError as exc:
        raise PullFailure(classify_pull_error(exc.message), exc.message) from None
    seconds = time.perf_counter() - t0
    after = await image_id(handle, ref)
    if after is None:
        raise PullFailure("error", f"pull image {ref}: the pull ended but the image is absent")
    return Pull(seconds, "warm" if before == after else "cold")


async def pull_for(
    handle: DockerHandle, ref: str, policy: str, limit: float = PULL_LIMIT
) -> Pull | None:
    """Pull per policy (never / if_missing / always); the Pull when one happened."""
    if policy != "always":
        if await image_id(handle, ref) is not None:
            return None
        if policy == "never":
            raise DockerError(f"image {ref} is not present and pull is never")
    return await pull_image(handle, ref, limit)


async def ensure_image(handle: DockerHandle, ref: str, pull: str) -> float | None:
    """Pull per policy; return the pull time when a pull happened."""
    pulled = await pull_for(handle, ref, pull)
    return None if pulled is None else pulled.seconds


@asynccontextmanager
async def started_container(
    handle: DockerHandle,
    ref: str,
    run: RunSettings,
    target: str,
    phases: dict[str, float] | None = None,
) -> AsyncIterator[Started]:
    """Create, start and wait for a container; remove it on exit whatever happened.

    Holds one of the endpoint's cold-start slots until the container is gone.
    """
    phases = {} if phases is None else phases
    await handle.slots.acquire()
    name = handle.new_name()
    create: asyncio.Future[Any] | None = None
    try:
        await handle.ensure_swept()
        loop = asyncio.get_running_loop()
        port_key = f"{run.port}/tcp"

        def do_create(c: Any) -> Any:
            return c.api.create_container(
                image=ref,
                command=run.command,
                environment=run.env,
                labels=handle.labels(target),
                name=name,
                ports=[run.port],
                host_config=c.api.create_host_config(
                    port_bindings={run.port: (handle.settings.publish_address, None)}
                ),
            )

        handle.pending.add(name)
        t0 = time.perf_counter()
        # Its own task: if we are cancelled mid-create, cleanup waits for it to learn whether a
        # container exists before removing it.
        create = loop.create_task(handle.call("create container", do_create))
        await asyncio.shield(create)
        phases["create"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        await handle.call("start container", lambda c: c.api.start(name))
        info = await handle.call("inspect container", lambda c: c.api.inspect_container(name))
        phases["start"] = time.perf_counter() - t1
        bindings = ((info.get("NetworkSettings") or {}).get("Ports") or {}).get(port_key) or []
        if not bindings or not str(bindings[0].get("HostPort", "")).isdigit():
            raise DockerError(f"container port {port_key} was not published")
        host = handle.settings.reach_host
        port = int(bindings[0]["HostPort"])
        t2 = time.perf_counter()
        await wait_ready(handle, name, host, port, run)
        phases["ready"] = time.perf_counter() - t2
        yield Started(name, host, port, time.perf_counter() - t0, None)
    finally:
        removal = asyncio.create_task(cleanup(handle, name, create))
        handle.cleanups.add(removal)
        removal.add_done_callback(handle.cleanups.discard)
        # Shielded: a second cancellation must not abandon the removal, which goes on in its
        # own task (and exporter shutdown waits for it).
        await asyncio.shield(removal)


async def cleanup(handle: DockerHandle, name: str, create: asyncio.Future[Any] | None) -> None:
    try:
        if create is None:
            handle.pending.discard(name)
            return
        try:
            async with asyncio.timeout(CLEANUP_TIMEOUT):
                await asyncio.wait({create})
        except TimeoutError:
            pass
        # A create refused or never delivered made no container; a timed-out one may have.
        if (
            create.done()
            and not create.cancelled()
            and isinstance(create.exception(), DockerNotFound | DockerUnreachable)
        ):
            handle.pending.discard(name)
            return
        try:
            await handle.remove(name)
        except DockerError as exc:
            log.error(
                "cannot remove cold-start container; retried at shutdown and swept at start",
                extra={"container": name, "error": exc.message},
            )
    finally:
        handle.slots.release()


async def wait_ready(handle: DockerHandle, name: str, host: str, port: int, r: RunSettings) -> None:
    """Poll until the readiness check passes; bounded by the caller's timeout."""
    ready = r.readiness
    ok = set(ready.status)
    next_state_check = time.monotonic() + STATE_CHECK_EVERY
    timeout = aiohttp.ClientTimeout(total=1.0)
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        while True:
            try:
                if ready.kind == "tcp":
                    _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
                    writer.transport.abort()
                    return
                url = f"http://{host}:{port}{ready.path}"
                async with session.get(url, allow_redirects=False) as resp:
                    if (resp.status in ok) if ok else (resp.status < 400):
                        return
            except (OSError, TimeoutError, aiohttp.ClientError):
                pass
            if time.monotonic() >= next_state_check:
                next_state_check = time.monotonic() + STATE_CHECK_EVERY
                state = await handle.call(
                    "inspect container", lambda c: c.api.inspect_container(name)["State"]
                )
                if state.get("Status") in ("exited", "dead", "stopped"):
                    raise DockerError(
                        f"container exited (code {state.get('ExitCode')}) before it was ready"
                    )
            await asyncio.sleep(ready.poll_interval)
