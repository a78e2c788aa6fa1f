"""One Docker Engine client per endpoint and exporter instance, and the errors its calls raise.

The Docker SDK is synchronous, so every call goes through `Resources.run_blocking` (a bounded
thread pool, a timeout per call); the SDK itself is imported only when a handle is opened.
The handle also names and labels the containers this exporter creates and sweeps leftovers.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any, TypeVar

from exporter.docker.settings import DockerSettings
from exporter.resources import Resources

log = logging.getLogger("exporter.docker")
T = TypeVar("T")

# Every container the exporter creates carries these labels. Only containers with both, and
# with this exporter's instance id, are ever removed by a sweep.
LABEL_MANAGED = "io.failover-exporter.managed"
LABEL_INSTANCE = "io.failover-exporter.instance"
LABEL_TARGET = "io.failover-exporter.target"
NAME_PREFIX = "failover-exporter-"


class DockerError(Exception):
    """A Docker call failed; the message names the endpoint, never credentials."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class DockerNotFound(DockerError):
    pass


class DockerUnreachable(DockerError):
    """No connection to the daemon: the request was never delivered."""


def _short(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


class DockerHandle:
    """One client per endpoint and exporter instance, shared through `Resources`.

    Also owns what must outlive a single probe: the cold-start slots, the set of containers
    still to remove, and the start-up sweep of leftovers from a crashed run.
    """

    def __init__(self, settings: DockerSettings, instance: str, resources: Resources) -> None:
        self.settings = settings
        self.instance = instance
        self.resources = resources
        self.client: Any = None
        self.slots = asyncio.Semaphore(settings.max_concurrent_cold_starts)
        self.pending: set[str] = set()
        self.cleanups: set[asyncio.Task[None]] = set()
        self.swept = False
        self._sweep_lock = asyncio.Lock()

    @staticmethod
    def key(settings: DockerSettings, instance: str) -> tuple[str, DockerSettings, str]:
        return ("docker", settings, instance)

    @classmethod
    @asynccontextmanager
    async def open(
        cls, settings: DockerSettings, instance: str, resources: Resources
    ) -> AsyncIterator[DockerHandle]:
        handle = cls(settings, instance, resources)
        handle.client = await resources.run_blocking(handle._make_client, settings.call_timeout)
        try:
            yield handle
        finally:
            await handle._shutdown()

    @classmethod
    async def shared(
        cls, settings: DockerSettings, instance: str, resources: Resources
    ) -> DockerHandle:
        return await resources.shared(
            cls.key(settings, instance), lambda: cls.open(settings, instance, resources)
        )

    def _make_client(self) -> Any:
        # The SDK (with requests and urllib3) is imported when a handle is opened, not when the
        # module is: the settings models here are part of every config's schema, and most
        # exporters have no Docker endpoint (tests/test_lazy_imports.py).
        import docker
        import docker.tls

        s = self.settings
        tls: Any = False
        if s.tls is not None:
            tls = docker.tls.TLSConfig(
                client_cert=(str(s.tls.cert_file), str(s.tls.key_file))
                if s.tls.cert_file
                else None,
                ca_cert=str(s.tls.ca_file) if s.tls.ca_file else None,
                verify=(str(s.tls.ca_file) if s.tls.ca_file else True) if s.tls.verify else False,
            )
        return docker.DockerClient(
            base_url=s.host,
            version=s.api_version,
            timeout=max(1, round(s.call_timeout)),
            tls=tls,
        )

    async def call(self, what: str, func: Callable[[Any], T], timeout: float | None = None) -> T:  # noqa: ASYNC109
        """Run `func(client)` in the pool; every failure becomes a DockerError."""
        import docker.errors
        import requests

        limit = self.settings.call_timeout if timeout is None else timeout
        client = self.client
        try:
            return await self.resources.run_blocking(lambda: func(client), limit)
        except TimeoutError:
            raise DockerError(
                f"{what}: no answer from Docker at {self.settings.host} within {limit:g}s"
            ) from None
        except docker.errors.NotFound as exc:
            raise DockerNotFound(f"{what}: {exc.explanation or 'not found'}") from None
        except docker.errors.APIError as exc:
            raise DockerError(f"{what}: {_short(exc.explanation or exc)}") from None
        except (requests.exceptions.ConnectionError, OSError):
            raise DockerUnreachable(
                f"{what}: cannot connect to Docker at {self.settings.host}"
            ) from None
        except (requests.exceptions.RequestException, docker.errors.DockerException) as exc:
            raise DockerError(f"{what}: {_short(exc)}") from None

    # -- containers ------------------------------------------------------------------------

    def new_name(self) -> str:
        return f"{NAME_PREFIX}{uuid.uuid4().hex[:16]}"

    def labels(self, target: str) -> dict[str, str]:
        return {LABEL_MANAGED: "true", LABEL_INSTANCE: self.instance, LABEL_TARGET: target}

    async def remove(self, name: str) -> None:
        """Force-remove a container we created; a missing one is already gone."""
        with suppress(DockerNotFound):
            await self.call(
                "remove container", lambda c: c.api.remove_container(name, force=True, v=True)
            )
        self.pending.discard(name)

    async def ours(self) -> list[dict[str, Any]]:
        """Containers created by this exporter instance (any state)."""
        found = await self.call(
            "list containers",
            lambda c: c.api.containers(all=True, filters={"label": f"{LABEL_MANAGED}=true"}),
        )
        # Checked again here: a daemon that ORs label filters must not widen what we touch.
        return [
            c
            for c in found
            if (c.get("Labels") or {}).get(LABEL_MANAGED) == "true"
            and (c.get("Labels") or {}).get(LABEL_INSTANCE) == self.instance
        ]

    async def ensure_swept(self) -> None:
        """Remove leftovers of a crashed run once, before this instance creates containers."""
        if self.swept:
            return
        async with self._sweep_lock:
            if self.swept:
                return
            leftovers = await self.ours()
            for c in leftovers:
                await self.remove(c["Id"])
            if leftovers:
                log.warning(
                    "removed leftover cold-start containers",
                    extra={"docker": self.settings.host, "count": len(leftovers)},
                )
            self.swept = True

    async def _shutdown(self) -> None:
        if self.cleanups:
            await asyncio.gather(*self.cleanups, return_exceptions=True)
        for name in list(self.pending):
            try:
                await self.remove(name)
            except DockerError as exc:
                log.error(
                    "cannot remove cold-start container; the next start sweeps it",
                    extra={"container": name, "error": exc.message},
                )
        client, self.client = self.client, None
        if client is not None:
            with suppress(TimeoutError, OSError):
                await self.resources.run_blocking(client.close, self.settings.call_timeout)
