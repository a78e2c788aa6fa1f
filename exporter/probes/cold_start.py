"""Container cold start: create and start a container from the image, time create -> ready.

The image, its command, env, port and readiness check come from the target's image (`run:`),
the Docker endpoint from the target's region (`docker:`); both are bound at config load.
The container is always removed: on success, failure, timeout, cancellation and shutdown.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import aiohttp

from exporter import metrics
from exporter.docker_images import (
    DockerError,
    DockerHandle,
    DockerNotFound,
    DockerUnreachable,
    log,
)
from exporter.docker_settings import RunSettings
from exporter.metrics import Reason
from exporter.probes.base import ProbeContext, ProbeFailure, ProbeKind, ProbeSettings, register

if TYPE_CHECKING:
    from exporter.model import Binding

# Check whether the container died this often while waiting for readiness, so a crashing
# image fails fast instead of running into the timeout.
STATE_CHECK_EVERY = 0.5
# Removal runs after the probe's own deadline has passed, so it has its own bound.
CLEANUP_TIMEOUT = 30.0


class ColdStartSettings(ProbeSettings):
    kind: Literal["cold_start"]
    # if_missing: pull only when the image is absent (the pull is timed separately).
    pull: Literal["never", "if_missing", "always"] = "if_missing"


@dataclasses.dataclass(frozen=True)
class ColdStart:
    pull: str
    endpoint: Any = None
    instance: str = ""
    target: str = ""
    ref: str = ""
    run: RunSettings | None = None

    def bind(self, binding: Binding) -> ColdStart:
        """Attach the target's region endpoint and image; called by config at load."""
        if binding.region is None or binding.image is None:
            raise ValueError("cold_start probes belong to a service target (region and image)")
        if binding.region.docker is None:
            raise ValueError(
                f"region {binding.region.name!r} has no docker endpoint (regions[].docker.host)"
            )
        if binding.image.run is None:
            raise ValueError(
                f"image {binding.image.name!r} has no run settings (images[].run.port)"
            )
        return dataclasses.replace(
            self,
            endpoint=binding.region.docker,
            instance=binding.vantage,
            target=binding.target,
            ref=binding.image.ref,
            run=binding.image.run,
        )


def prepare(s: ColdStartSettings, base_dir: Path) -> ColdStart:
    return ColdStart(pull=s.pull)


@dataclasses.dataclass
class Started:
    """A container that answered its readiness check."""

    name: str
    host: str
    port: int
    cold_start: float
    pull: float | None


async def ensure_image(handle: DockerHandle, ref: str, pull: str) -> float | None:
    """Pull per policy; return the pull time when a pull happened."""
    if pull != "always":
        try:
            await handle.call("inspect image", lambda c: c.api.inspect_image(ref))
            return None
        except DockerNotFound:
            if pull == "never":
                raise DockerError(f"image {ref} is not present and pull is never") from None
    t0 = time.perf_counter()
    # A pull may take minutes; the probe timeout, not the per-call bound, limits it.
    await handle.call("pull image", lambda c: c.images.pull(ref), timeout=3600)
    return time.perf_counter() - t0


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
        await _wait_ready(handle, name, host, port, run)
        phases["ready"] = time.perf_counter() - t2
        yield Started(name, host, port, time.perf_counter() - t0, None)
    finally:
        cleanup = asyncio.create_task(_cleanup(handle, name, create))
        handle.cleanups.add(cleanup)
        cleanup.add_done_callback(handle.cleanups.discard)
        # Shielded: a second cancellation must not abandon the removal, which goes on in its
        # own task (and exporter shutdown waits for it).
        await asyncio.shield(cleanup)


async def _cleanup(handle: DockerHandle, name: str, create: asyncio.Future[Any] | None) -> None:
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


async def _wait_ready(
    handle: DockerHandle, name: str, host: str, port: int, r: RunSettings
) -> None:
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


async def run(p: ColdStart, ctx: ProbeContext) -> None:
    if p.endpoint is None or p.run is None:
        raise ProbeFailure(Reason.ERROR, "cold_start probe is not bound to a region and image")
    try:
        handle = await DockerHandle.shared(p.endpoint, p.instance, ctx.resources)
        pulled = await ensure_image(handle, p.ref, p.pull)
        if pulled is not None:
            ctx.phases["pull"] = pulled
            ctx.observations.append((metrics.IMAGE_PULL.name, pulled))
            ctx.log(f"pulled {p.ref} in {pulled:.3f}s")
        async with started_container(handle, p.ref, p.run, p.target, ctx.phases) as started:
            ctx.observations.append((metrics.COLD_START.name, started.cold_start))
            ctx.log(f"{started.name} ready in {started.cold_start:.3f}s")
    except DockerError as exc:
        raise ProbeFailure(Reason.DOCKER, exc.message) from None


def describe(s: ColdStartSettings) -> str:
    return f"cold start (pull {s.pull})"


KIND = register(
    ProbeKind(
        votes_in_quorum=False,
        ranks_images=False,
        name="cold_start",
        settings=ColdStartSettings,
        prepare=prepare,
        run=run,
        reasons=(Reason.DOCKER,),
        phases=("pull", "create", "start", "ready"),
        describe=describe,
        bind=ColdStart.bind,
    )
)
