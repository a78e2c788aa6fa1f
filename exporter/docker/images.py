"""Image metadata per region (size, layers, created, digest), read in the background.

Image metadata changes only on deploys, so it is read on its own interval and the cached
snapshot is rendered on scrape (a prometheus_client collector).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections.abc import Iterable, Iterator
from contextlib import suppress
from datetime import datetime
from typing import TYPE_CHECKING, Any

from prometheus_client.core import GaugeMetricFamily, Metric

from exporter import metrics
from exporter.docker.client import DockerError, DockerHandle, DockerNotFound
from exporter.docker.settings import DockerSettings
from exporter.resources import Resources

if TYPE_CHECKING:
    from exporter.model import Config

log = logging.getLogger("exporter.docker")


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
