"""One Docker Engine client per endpoint and exporter instance, and the errors its calls raise.

The Docker SDK is synchronous, so every call goes through `Resources.run_blocking` (a bounded
thread pool, a timeout per call); the SDK itself is imported only when a handle is opened.
The handle also names and labels the containers this exporter creates and sweeps leftovers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any, TypeVar

import aiohttp
from yarl import URL

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


class PullError(DockerError):
    """The daemon took the pull request and reported that the pull failed (the registry's
    side: unreachable, unknown image, invalid manifest, ...); the message is the daemon's."""


def stream_events(chunk: bytes) -> list[dict[str, Any]]:
    """The JSON objects in one line of a progress stream; a daemon may put several on a line
    or none, and a line that is not JSON is progress text, not an error."""
    text = chunk.decode("utf-8", "replace")
    decoder = json.JSONDecoder()
    found: list[dict[str, Any]] = []
    i = 0
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            return found
        try:
            event, i = decoder.raw_decode(text, i)
        except ValueError:
            return found
        if isinstance(event, dict):
            found.append(event)


def split_ref(ref: str) -> tuple[str, str]:
    """`repo[:tag]` or `repo@digest` -> (repo, tag or digest), as the Engine API's pull takes it.

    A colon before the last slash belongs to a registry's port, not to a tag.
    """
    if "@" in ref:
        repo, _, digest = ref.partition("@")
        return repo, digest
    head, slash, last = ref.rpartition("/")
    name, colon, tag = last.partition(":")
    return f"{head}{slash}{name}", tag if colon else "latest"


def _short(exc: BaseException | str) -> str:
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

    async def pull(self, ref: str) -> None:
        """Pull `ref` through the Engine API's streaming endpoint, on the event loop.

        Not through the SDK in a thread: a pull from a registry that stops answering would block
        that thread for good, and only closing the API connection makes the daemon give the pull
        up (and drop what it fetched). Here cancelling the caller (its timeout) closes it.
        """
        s = self.settings
        repo, tag = split_ref(ref)
        url = URL(s.host)
        connector: aiohttp.BaseConnector
        if url.scheme == "unix":
            connector, base = aiohttp.UnixConnector(path=url.path), "http://docker"
        else:
            context = self._ssl_context()
            connector = aiohttp.TCPConnector(ssl=context or False)
            base = f"{'https' if context else 'http'}://{url.host}:{url.port}"
        # No total bound: the caller's timeout is the pull's; connecting has the call bound.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=s.call_timeout)
        what = f"pull image {ref}"
        try:
            async with (
                aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
                session.post(
                    f"{base}/v{s.api_version}/images/create",
                    params={"fromImage": repo, "tag": tag},
                ) as resp,
            ):
                if resp.status >= 400:
                    text = (await resp.text()).strip()
                    with suppress(ValueError, AttributeError):
                        text = str(json.loads(text).get("message") or text)
                    if resp.status == 404:
                        raise PullError(f"{what}: {_short(text or 'not found')}")
                    raise DockerError(f"{what}: {_short(text or str(resp.status))}")
                async for line in resp.content:
                    for event in stream_events(line):
                        if event.get("error"):
                            raise PullError(f"{what}: {_short(str(event['error']))}")
        except (aiohttp.ClientConnectionError, OSError) as exc:
            if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
                raise DockerError(f"{what}: Docker at {s.host} closed the connection") from None
            raise DockerUnreachable(f"{what}: cannot connect to Docker at {s.host}") from None
        except aiohttp.ClientError as exc:
            raise DockerError(f"{what}: {_short(exc)}") from None

    def _ssl_context(self) -> ssl.SSLContext | None:
        tls = self.settings.tls
        if tls is None:
            return None
        context = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
        if not tls.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if tls.cert_file and tls.key_file:
            context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
        return context

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
