"""Docker Engine access: one client per endpoint, and image metadata metrics.

The settings models (what the config file says) live in docker_settings.py, without the SDK.

The Docker SDK is synchronous, so every call goes through `Resources.run_blocking` (a bounded
thread pool, a timeout per call). Image metadata changes only on deploys, so it is read in the
background on its own interval and the cached snapshot is rendered on scrape.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager, suppress
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from prometheus_client.core import GaugeMetricFamily, Metric

from exporter import metrics
from exporter.docker_settings import DockerSettings
from exporter.resources import Resources

if TYPE_CHECKING:
    from exporter.model import Config

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


# -- image metadata ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ImageMeta:
    image: str
    ref: str
    digest: str
    size: float
    layers: int
    created: float | None


@dataclasses.dataclass
class RegionImages:
    service: str
    region: str
    refreshed: float | None = None
    images: dict[str, ImageMeta] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class _Job:
    service: str
    region: str
    settings: DockerSettings
    instance: str
    images: tuple[tuple[str, str], ...]


def parse_created(value: Any) -> float | None:
    """Unix time from Docker's RFC 3339 timestamp (nanosecond fraction allowed)."""
    if not isinstance(value, str) or not value:
        return None
    text = value.strip().replace("Z", "+00:00")
    head, dot, rest = text.partition(".")
    if dot:
        digits = "".join(ch for ch in rest if ch.isdigit())
        text = f"{head}.{digits[:6]}{rest[len(digits) :]}"
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def image_meta(name: str, ref: str, attrs: dict[str, Any]) -> ImageMeta:
    repo_digests = attrs.get("RepoDigests") or []
    # A locally built image has no registry digest; its ID is the stable content address.
    digest = repo_digests[0].partition("@")[2] if repo_digests else str(attrs.get("Id", ""))
    layers = (attrs.get("RootFS") or {}).get("Layers") or []
    return ImageMeta(
        image=name,
        ref=ref,
        digest=digest,
        size=float(attrs.get("Size") or 0),
        layers=len(layers),
        created=parse_created(attrs.get("Created")),
    )


def _inspect_image(client: Any, ref: str) -> dict[str, Any]:
    return dict(client.api.inspect_image(ref))


class ImageRefresher:
    """Reads image metadata per region in the background; a prometheus_client collector."""

    def __init__(self, resources: Resources) -> None:
        self.resources = resources
        self.snapshot: dict[tuple[str, str], RegionImages] = {}
        self._jobs: dict[tuple[str, str], _Job] = {}
        self._tasks: dict[tuple[str, str], asyncio.Task[None]] = {}

    def apply(self, config: Config) -> None:
        """Start, restart or stop one refresh loop per region that names a Docker endpoint."""
        wanted: dict[tuple[str, str], _Job] = {}
        for region in config.regions:
            if region.docker is None:
                continue
            images = tuple((i.name, i.ref) for i in config.images if i.service == region.service)
            key = (region.service, region.name)
            wanted[key] = _Job(region.service, region.name, region.docker, config.vantage, images)
        for key in list(self._jobs):
            if wanted.get(key) != self._jobs[key]:
                self._tasks.pop(key).cancel()
                del self._jobs[key]
                if key not in wanted:
                    self.snapshot.pop(key, None)
        for key, job in wanted.items():
            if key not in self._jobs:
                self._jobs[key] = job
                self.snapshot.setdefault(key, RegionImages(job.service, job.region))
                self._tasks[key] = asyncio.create_task(
                    self._loop(job), name=f"images {job.service}/{job.region}"
                )

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self._jobs.clear()

    async def _loop(self, job: _Job) -> None:
        failing = False
        while True:
            try:
                await self.refresh(job)
                if failing:
                    log.info("docker endpoint reachable again", extra={"docker": job.settings.host})
                failing = False
            except DockerError as exc:
                # Logged on the change only: an endpoint down for hours is one line, not 1000.
                if not failing:
                    log.warning(
                        "cannot read image metadata; keeping the last values",
                        extra={
                            "service": job.service,
                            "region": job.region,
                            "docker": job.settings.host,
                            "error": exc.message,
                        },
                    )
                failing = True
            await asyncio.sleep(job.settings.image_refresh_interval)

    async def refresh(self, job: _Job) -> None:
        handle = await DockerHandle.shared(job.settings, job.instance, self.resources)
        # A failed sweep is retried next time; the inspections below report the endpoint.
        with suppress(DockerError):
            await handle.ensure_swept()
        found: dict[str, ImageMeta] = {}
        for name, ref in job.images:
            try:
                attrs: dict[str, Any] = await handle.call(
                    "inspect image", functools.partial(_inspect_image, ref=ref)
                )
            except DockerNotFound:
                log.debug("image not present", extra={"image": name, "ref": ref})
                continue
            found[name] = image_meta(name, ref, attrs)
        state = self.snapshot.setdefault(
            (job.service, job.region), RegionImages(job.service, job.region)
        )
        state.images = found
        state.refreshed = time.time()

    # -- prometheus_client collector ---------------------------------------------------------

    def describe(self) -> Iterable[Metric]:
        return list(self._families())

    def collect(self) -> Iterable[Metric]:
        return list(self._families())

    def _families(self) -> Iterator[Metric]:
        def family(spec: metrics.MetricSpec) -> GaugeMetricFamily:
            return GaugeMetricFamily(spec.name, spec.help, labels=list(spec.labels))

        size = family(metrics.IMAGE_SIZE)
        layers = family(metrics.IMAGE_LAYERS)
        created = family(metrics.IMAGE_CREATED)
        info = family(metrics.IMAGE_INFO)
        refreshed = family(metrics.IMAGE_REFRESH)
        seen_info: set[tuple[str, str, str, str]] = set()
        for state in sorted(self.snapshot.values(), key=lambda s: (s.service, s.region)):
            if state.refreshed is not None:
                refreshed.add_metric([state.service, state.region], state.refreshed)
            for meta in sorted(state.images.values(), key=lambda m: m.image):
                labels = [state.service, state.region, meta.image]
                size.add_metric(labels, meta.size)
                layers.add_metric(labels, meta.layers)
                if meta.created is not None:
                    created.add_metric(labels, meta.created)
                info_labels = (state.service, meta.image, meta.ref, meta.digest)
                if info_labels not in seen_info:
                    seen_info.add(info_labels)
                    info.add_metric(list(info_labels), 1)
        yield from (size, layers, created, info, refreshed)
