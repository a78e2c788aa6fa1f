"""Container cold start: create and start a container from the image, time create -> ready.

The image, its command, env, port and readiness check come from the target's image (`run:`),
the Docker endpoint from the target's region (`docker:`); both are bound at config load.
The container lifecycle (pull, start, readiness, removal whatever happens) is
exporter/docker/containers.py; this module is the probe policy on top of it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from exporter import metrics
from exporter.docker.client import DockerError, DockerHandle
from exporter.docker.containers import PullFailure, PullKind, pull_for, started_container
from exporter.docker.settings import RunSettings
from exporter.metrics import Reason
from exporter.probes.base import ProbeContext, ProbeFailure, ProbeKind, ProbeSettings, register

if TYPE_CHECKING:
    from exporter.model import Binding

PULL_REASONS: dict[PullKind, Reason] = {
    "unreachable": Reason.PULL_UNREACHABLE,
    "timeout": Reason.PULL_TIMEOUT,
    "not_found": Reason.PULL_NOT_FOUND,
    "manifest": Reason.PULL_MANIFEST,
    "error": Reason.DOCKER,
}
# Share of the probe timeout a pull may use: a pull that does not finish fails as pull_timeout
# (naming the registry), not as the probe's generic timeout.
PULL_SHARE = 0.9


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


async def run(p: ColdStart, ctx: ProbeContext) -> None:
    if p.endpoint is None or p.run is None:
        raise ProbeFailure(Reason.ERROR, "cold_start probe is not bound to a region and image")
    try:
        handle = await DockerHandle.shared(p.endpoint, p.instance, ctx.resources)
        limit = ctx.timeout * PULL_SHARE if ctx.timeout > 0 else 3600.0
        pulled = await pull_for(handle, p.ref, p.pull, limit)
        if pulled is not None:
            ctx.phases["pull"] = pulled.seconds
            spec = metrics.IMAGE_PULL if pulled.cache == "cold" else metrics.IMAGE_PULL_WARM
            ctx.observations.append((spec.name, pulled.seconds))
            ctx.log(f"pulled {p.ref} in {pulled.seconds:.3f}s ({pulled.cache} layer cache)")
        async with started_container(handle, p.ref, p.run, p.target, ctx.phases) as started:
            ctx.observations.append((metrics.COLD_START.name, started.cold_start))
            ctx.log(f"{started.name} ready in {started.cold_start:.3f}s")
    except PullFailure as exc:
        raise ProbeFailure(PULL_REASONS[exc.kind], exc.message) from None
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
        reasons=(
            Reason.DOCKER,
            Reason.PULL_UNREACHABLE,
            Reason.PULL_TIMEOUT,
            Reason.PULL_NOT_FOUND,
            Reason.PULL_MANIFEST,
        ),
        phases=("pull", "create", "start", "ready"),
        describe=describe,
        bind=ColdStart.bind,
    )
)
