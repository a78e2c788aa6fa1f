"""Input models: what a user may write in the YAML config. See docs/config.md."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal, Union

from pydantic import Field

from exporter.docker_images import DockerSettings, RunSettings
from exporter.fields import Duration, Model, Name
from exporter.probes import REGISTRY
from exporter.probes.base import ProbeSettings

if TYPE_CHECKING:
    ProbeField = ProbeSettings
else:
    # Built from the registry so that adding a probe kind touches only its own module.
    _kinds = tuple(kind.settings for kind in REGISTRY.values())
    ProbeField = Annotated[
        Union[_kinds] if len(_kinds) > 1 else _kinds[0],  # noqa: UP007
        Field(discriminator="kind") if len(_kinds) > 1 else Field(),
    ]


class Defaults(Model):
    interval: Duration = 5.0
    timeout: Duration = 2.0
    max_concurrency: int = Field(512, ge=1, le=100_000)
    # Above this probe start delay (p99 over the last 30 s) or event-loop lag, the exporter
    # reports itself overloaded: its latency figures include its own queuing.
    overload_delay: Duration = 0.05


class Region(Model):
    name: Name
    role: Literal["primary", "standby"]
    priority: int = Field(ge=1, le=1000)
    # Docker Engine of this region: image metrics and cold_start probes (docs/docker.md).
    docker: DockerSettings | None = None


class Image(Model):
    name: Name
    ref: str = Field(min_length=1)
    dockerfile: str | None = None
    context: str | None = None
    build_target: str | None = None
    build_args: dict[str, str] = Field(default_factory=dict)
    # How to run the image for cold_start probes and `bench`; on the image, not the probe,
    # because bench runs images without any target.
    run: RunSettings | None = None


class Target(Model):
    name: Name
    region: Name
    # None for endpoints that belong to the region rather than an image variant (a database,
    # an ICMP ping): they count for region health but not in the image ranking.
    image: Name | None = None
    probe: ProbeField
    interval: Duration | None = None
    timeout: Duration | None = None


class ControlTarget(Model):
    name: Name
    probe: ProbeField
    interval: Duration | None = None
    timeout: Duration | None = None


class Service(Model):
    name: Name
    regions: list[Region] = Field(min_length=1)
    images: list[Image] = Field(min_length=1)
    targets: list[Target] = Field(default_factory=list)


class Root(Model):
    vantage: Name
    defaults: Defaults = Defaults()
    control: list[ControlTarget] = Field(default_factory=list)
    services: list[Service] = Field(min_length=1)
