"""Input models: what a user may write in the YAML config. See docs/config.md."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Any, Literal, Self, Union

from pydantic import (
    AfterValidator,
    Field,
    ModelWrapValidatorHandler,
    ValidationInfo,
    field_validator,
    model_validator,
)

from exporter import metrics
from exporter.docker.settings import DockerSettings, RunSettings
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


_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]{0,63}")
# Labels the exporter, the rules or Prometheus already set; a user label of that name would
# overwrite or be overwritten by them in a join.
RESERVED_LABELS = frozenset(
    {
        *metrics.TARGET_LABELS,
        "priority", "reason", "phase", "le", "quantile", "job", "instance", "shard",
        "shards", "maintenance", "severity", "alertname", "standby", "region",
    }
)  # fmt: skip


def _check_labels(labels: dict[str, str]) -> dict[str, str]:
    for name, value in labels.items():
        if not _LABEL_NAME.fullmatch(name) or name.startswith("__"):
            raise ValueError(
                f"label name {name!r}: letters, digits and _, not starting with a digit or __"
            )
        if name in RESERVED_LABELS:
            raise ValueError(f"label name {name!r} is reserved (the exporter or rules set it)")
        if len(value) > 256 or any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise ValueError(f"label {name!r}: at most 256 characters, no control characters")
    return labels


Labels = Annotated[dict[str, str], AfterValidator(_check_labels)]


# The validation-context key under which `Root.model_validate` hands the loader the interval
# and timeout each mapping set, as validated here: {id(mapping): {"interval": s, ...}}. The
# loader's cross-field rule (timeout below interval) reads them instead of parsing again, and
# still runs when another field of the same mapping is invalid.
TIMINGS = "timings"
Timings = dict[int, dict[str, float]]
_NOTED = "timings.current"


class _Timed(Model):
    """A mapping with its own interval and timeout: defaults, a target, a control target."""

    @model_validator(mode="wrap")
    @classmethod
    def _note_timings(
        cls, data: Any, handler: ModelWrapValidatorHandler[Self], info: ValidationInfo
    ) -> Self:
        context = info.context if isinstance(info.context, dict) else {}
        timings = context.get(TIMINGS)
        if timings is None or not isinstance(data, dict):
            return handler(data)
        noted: dict[str, float] = {}
        timings[id(data)] = context[_NOTED] = noted
        try:
            return handler(data)
        finally:
            context.pop(_NOTED, None)

    @field_validator("interval", "timeout", mode="after", check_fields=False)
    @classmethod
    def _note(cls, value: float | None, info: ValidationInfo) -> float | None:
        noted = info.context.get(_NOTED) if isinstance(info.context, dict) else None
        if noted is not None and value is not None and info.field_name is not None:
            noted[info.field_name] = value
        return value


class Defaults(_Timed):
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
    # Out of the failover choice and its alerts silenced at rule level (docs/config.md).
    maintenance: bool = False


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


class Target(_Timed):
    name: Name
    region: Name
    # None for endpoints that belong to the region rather than an image variant (a database,
    # an ICMP ping): they count for region health but not in the image ranking.
    image: Name | None = None
    probe: ProbeField
    interval: Duration | None = None
    timeout: Duration | None = None
    labels: Labels = Field(default_factory=dict)


class ControlTarget(_Timed):
    name: Name
    probe: ProbeField
    interval: Duration | None = None
    timeout: Duration | None = None


class Service(Model):
    name: Name
    regions: list[Region] = Field(min_length=1)
    images: list[Image] = Field(min_length=1)
    targets: list[Target] = Field(default_factory=list)
    labels: Labels = Field(default_factory=dict)


class Root(Model):
    vantage: Name
    defaults: Defaults = Defaults()
    control: list[ControlTarget] = Field(default_factory=list)
    services: list[Service] = Field(min_length=1)
