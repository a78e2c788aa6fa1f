"""The frozen runtime objects a loaded config becomes: targets, regions, images, shards.

Low in the house: state, exposition, the scheduler, the web handlers and the probes read these,
and this module imports only leaf modules (field types, Docker settings), never the loader.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

from exporter.docker.settings import DockerSettings, RunSettings
from exporter.fields import NO_SECRETS, Scrubber


@dataclasses.dataclass(frozen=True)
class Target:
    """One endpoint probed from one vantage; `key` identifies it across reloads."""

    vantage: str
    service: str
    region: str
    role: str
    image: str
    name: str
    kind: str
    settings: Any
    prepared: Any = dataclasses.field(compare=False)
    interval: float
    timeout: float
    # Config outside the probe settings that `prepared` was bound to (a cold start's region
    # endpoint and image); compared, so that changing it restarts the target on reload.
    bound: Any = None
    # Digest of the secrets `prepared` holds: a reload after a rotated password or token file
    # restarts the target with the new secret. Never the secret itself.
    secrets: str = dataclasses.field(default="", repr=False)
    # Removes those secrets from whatever the target sends back before any output shows it.
    scrub: Scrubber = dataclasses.field(default=NO_SECRETS, compare=False, repr=False)
    # The service's and the target's own labels (team, tier): exported once, on
    # failover_target_info, never on the per-probe series.
    user_labels: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.vantage, self.service, self.name)

    @property
    def labels(self) -> tuple[str, ...]:
        """Values for metrics.TARGET_LABELS, in that order."""
        return (
            self.service,
            self.region,
            self.role,
            self.image,
            self.name,
            self.kind,
            self.vantage,
        )


@dataclasses.dataclass(frozen=True)
class Region:
    service: str
    name: str
    role: str
    priority: int
    docker: DockerSettings | None = None
    maintenance: bool = False


@dataclasses.dataclass(frozen=True)
class Image:
    service: str
    name: str
    ref: str
    dockerfile: str | None
    context: str | None
    build_target: str | None
    build_args: dict[str, str] = dataclasses.field(default_factory=dict)
    run: RunSettings | None = None


@dataclasses.dataclass(frozen=True)
class Binding:
    """What a kind's `bind` hook (`ProbeKind.bind`) may attach beyond the probe settings."""

    vantage: str
    target: str
    region: Region | None
    image: Image | None


@dataclasses.dataclass(frozen=True)
class Config:
    source: str
    digest: str
    vantage: str
    max_concurrency: int
    overload_delay: float
    regions: tuple[Region, ...]
    images: tuple[Image, ...]
    targets: tuple[Target, ...]
    service_labels: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()
    shard: Shard | None = None
    # Targets in the config before sharding (templates expanded).
    total_targets: int = 0
    # Of those, expanded from templates.
    expanded: int = 0
    # file_sd globs (absolute) whose files the engine watches, and their files' problems.
    watched: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def services(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(r.service for r in self.regions))


@dataclasses.dataclass(frozen=True)
class Shard:
    """This process probes shard `index` (0-based) of `count` of its vantage's targets."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """`i/n` with 0 <= i < n, as in `--shard 0/2`."""
        index, sep, count = text.partition("/")
        if not sep or not index.isdigit() or not count.isdigit():
            raise ValueError(f"--shard wants i/n, e.g. 0/2, not {text!r}")
        shard = cls(int(index), int(count))
        if not 0 <= shard.index < shard.count or shard.count > 1024:
            raise ValueError(f"--shard {text}: want 0 <= i < n <= 1024")
        return shard

    def owns(self, vantage: str, service: str, target: str) -> bool:
        return owner(f"{vantage}\0{service}\0{target}", self.count) == self.index


def owner(key: str, count: int) -> int:
    """Rendezvous (highest random weight) hashing: the shard with the highest score for `key`.

    Stable across processes and Python versions (SHA-256, not hash()), and adding a shard moves
    only the keys the new shard now wins, about 1/(n+1) of them.
    """
    data = key.encode("utf-8", "surrogatepass")
    best, best_score = 0, b""
    for i in range(count):
        score = hashlib.sha256(data + b"\0" + str(i).encode()).digest()[:8]
        if score > best_score:
            best, best_score = i, score
    return best
