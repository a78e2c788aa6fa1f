"""Load the YAML config: validate it against the schema and build the runtime objects.

Reading the YAML (with the line of every key path) and the error data live in `source.py`, the
frozen runtime objects in `model.py`; this module joins them: schema validation, the rules that
span fields or sections, and the build. Every problem is reported, all together.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from exporter import schema, templates
from exporter.fields import SettingError, collect_secrets, format_duration
from exporter.metrics import Role
from exporter.model import Binding, Config, Image, Region, Shard, Target, owner
from exporter.probes import REGISTRY
from exporter.source import ConfigError, ConfigIssue, Loc, Source, read_text, read_yaml

# What `config.load` returns and raises, named here so that its callers need one import.
__all__ = [
    "Binding",
    "Config",
    "ConfigError",
    "ConfigIssue",
    "Image",
    "Region",
    "Shard",
    "Target",
    "build_input_issues",
    "build_problem",
    "load",
    "owner",
    "parse",
    "read_text",
    "read_yaml",
]


def _pydantic_issues(src: Source, error: ValidationError) -> Iterator[ConfigIssue]:
    for err in error.errors(include_url=False):
        loc = list(err["loc"])
        # A discriminated union adds the chosen tag to the path; the user never wrote it.
        for i in range(len(loc) - 1, 0, -1):
            if loc[i - 1] == "probe" and loc[i] in REGISTRY:
                del loc[i]
        kind = err["type"]
        message = err["msg"].removeprefix("Value error, ")
        if kind == "extra_forbidden":
            message = "unknown key"
        elif kind == "missing":
            message = "required key is missing"
        elif kind == "union_tag_invalid":
            known = ", ".join(sorted(REGISTRY))
            message = f"unknown probe kind {err['input'].get('kind')!r} (known: {known})"
            loc.append("kind")
        elif kind == "union_tag_not_found":
            message = f"probe kind is missing (one of: {', '.join(sorted(REGISTRY))})"
        yield src.issue(tuple(loc), message)


def _items(data: Any, key: str) -> list[tuple[int, dict[str, Any]]]:
    value = data.get(key) if isinstance(data, dict) else None
    if not isinstance(value, list):
        return []
    return [(i, item) for i, item in enumerate(value) if isinstance(item, dict)]


def _str(item: dict[str, Any], key: str) -> str | None:
    value = item.get(key)
    return value if isinstance(value, str) else None


def _semantic_issues(src: Source, timings: schema.Timings) -> Iterator[ConfigIssue]:
    """Rules that span fields or sections, checked on the raw data so that they are reported
    together with field errors.

    Durations are the schema's: `timings` holds the interval and timeout each mapping set, as
    the schema validated them (an invalid one is absent, and the schema reports it), and what
    a mapping leaves out is the schema's default."""
    data = src.data
    defaults = data.get("defaults") if isinstance(data, dict) else None
    defaults = defaults if isinstance(defaults, dict) else {}
    builtin = schema.Defaults()
    given = timings.get(id(defaults), {})
    default_interval = given.get("interval", builtin.interval)
    default_timeout = given.get("timeout", builtin.timeout)
    if default_timeout >= default_interval:
        # Also when only the interval is set: the built-in timeout must fit under it.
        field = "timeout" if "timeout" in defaults else "interval"
        yield src.issue(
            ("defaults", field),
            f"timeout ({format_duration(default_timeout)}) must be below interval "
            f"({format_duration(default_interval)})",
        )

    target_names: dict[str, Loc] = {}

    def check_target(loc: Loc, item: dict[str, Any]) -> Iterator[ConfigIssue]:
        name = item.get("name")
        if isinstance(name, str):
            if name in target_names:
                first = src.where(target_names[name])
                yield src.issue((*loc, "name"), f"target name {name!r} is already used at {first}")
            else:
                target_names[name] = loc
        if "interval" not in item and "timeout" not in item:
            return  # inherits the defaults, which are checked once
        noted = timings.get(id(item), {})
        interval = noted.get("interval") if "interval" in item else default_interval
        timeout = noted.get("timeout") if "timeout" in item else default_timeout
        if interval is not None and timeout is not None and timeout >= interval:
            field = "timeout" if "timeout" in item else "interval"
            yield src.issue(
                (*loc, field),
                f"timeout ({format_duration(timeout)}) must be below interval "
                f"({format_duration(interval)})",
            )

    for i, item in _items(data, "control"):
        yield from check_target(("control", i), item)

    # Only names and priorities of the right type are compared; the schema reports the others.
    service_names: set[str] = set()
    for s, service in _items(data, "services"):
        sloc: Loc = ("services", s)
        name = _str(service, "name")
        if name is not None and name in service_names:
            yield src.issue((*sloc, "name"), f"service name {name!r} is already used")
        if name is not None:
            service_names.add(name)
        regions: dict[str | None, int] = {}
        priorities: dict[int, Any] = {}
        primaries = []
        for r, region in _items(service, "regions"):
            rloc: Loc = (*sloc, "regions", r)
            name = _str(region, "name")
            # A region without a name is the schema's to report, not a duplicate.
            if name is not None and name in regions:
                yield src.issue((*rloc, "name"), f"region name {name!r} is already used")
            regions[name] = r
            if region.get("role") == "primary":
                primaries.append(r)
            prio = region.get("priority")
            if isinstance(prio, int) and prio in priorities:
                yield src.issue(
                    (*rloc, "priority"),
                    f"priority {prio} is already used by region {priorities[prio]!r}",
                )
            if isinstance(prio, int):
                priorities.setdefault(prio, region.get("name"))
        if regions and not primaries:
            yield src.issue((*sloc, "regions"), "exactly one region must have role primary")
        for r in primaries[1:]:
            yield src.issue(
                (*sloc, "regions", r, "role"), "only one region per service may be primary"
            )
        images: set[str | None] = set()
        for i, image in _items(service, "images"):
            name = _str(image, "name")
            if name is not None and name in images:
                yield src.issue(
                    (*sloc, "images", i, "name"), f"image name {name!r} is already used"
                )
            images.add(name)
        for t, target in _items(service, "targets"):
            tloc: Loc = (*sloc, "targets", t)
            yield from check_target(tloc, target)
            if isinstance(target.get("region"), str) and target["region"] not in regions:
                known = ", ".join(str(r) for r in regions)
                yield src.issue(
                    (*tloc, "region"), f"unknown region {target['region']!r} (known: {known})"
                )
            if isinstance(target.get("image"), str) and target["image"] not in images:
                known = ", ".join(str(i) for i in images)
                yield src.issue(
                    (*tloc, "image"), f"unknown image {target['image']!r} (known: {known})"
                )


def build_problem(base: Path, dockerfile: str | None, context: str | None) -> str | None:
    """Why an image with these build inputs cannot be built from `base`, or None.

    Checked locally before a build: the Docker SDK turns a missing context into a TypeError
    about its own arguments, which says nothing about the config."""
    if dockerfile is None:
        return None
    where = base / (context or ".")
    if not where.exists():
        return f"build context {str(where)!r} does not exist"
    if not where.is_dir():
        return f"build context {str(where)!r} is not a directory"
    if not (where / dockerfile).is_file():
        return f"dockerfile {dockerfile!r} not found in the build context {str(where)!r}"
    return None


def build_input_issues(src: Source, base: Path) -> list[ConfigIssue]:
    """Build inputs of every image that has a dockerfile, checked on this machine.

    Only `check-config` and `bench --build` ask: the daemon never builds, and a probing host
    need not hold the build contexts."""
    issues = []
    for s, service in _items(src.data, "services"):
        for i, image in _items(service, "images"):
            dockerfile, context = _str(image, "dockerfile"), _str(image, "context")
            problem = build_problem(base, dockerfile, context)
            if problem is not None:
                key = "dockerfile" if "not found in" in problem else "context"
                if key not in image:
                    key = "dockerfile"
                issues.append(src.issue(("services", s, "images", i, key), problem))
    return issues


def parse(
    text: str,
    file: str,
    base_dir: Path | None = None,
    shard: Shard | None = None,
    sd_cache: templates.SdCache | None = None,
) -> Config:
    """Validate config text; raise ConfigError listing every problem."""
    src = read_yaml(text, file)
    base = base_dir or Path(file).parent
    expanded = templates.expand(src, base, sd_cache)
    issues = list(src.issues)
    if not isinstance(src.data, dict):
        issues.append(
            ConfigIssue(file, 1, "", "the config must be a mapping (vantage, services, …)")
        )
        raise ConfigError(issues)
    root: schema.Root | None = None
    timings: schema.Timings = {}
    try:
        root = schema.Root.model_validate(src.data, context={schema.TIMINGS: timings})
    except ValidationError as exc:
        issues.extend(_pydantic_issues(src, exc))
    issues.extend(_semantic_issues(src, timings))
    if root is None or issues:
        issues.sort(key=lambda i: (i.line or 0, i.path))
        raise ConfigError(issues)
    cfg = _build(root, src, base, text, shard)
    return dataclasses.replace(
        cfg, expanded=expanded, watched=tuple(src.watched), warnings=tuple(src.warnings)
    )


def _strict_key(value: Any) -> Any:
    """A key under which only values of the same types compare equal, or None for values that
    are not shared (mutable ones, and floats: 0.0 == -0.0)."""
    kind = type(value)
    if kind is str or kind is bytes or kind is int or kind is bool or value is None:
        return (kind, value)
    if isinstance(value, enum.Enum):
        return (kind, value)
    if kind is tuple:
        parts = []
        for item in value:
            key = _strict_key(item)
            if key is None:
                return None
            parts.append(key)
        return (kind, tuple(parts))
    return None


class _Sharing:
    """Keeps one object per distinct immutable value among the runtime objects of a load.

    Every target's settings and prepared probe hold values that are equal across targets (the
    default request headers, the addresses of the same IP literal, the same method and kind,
    the set of fields given); about 1 KB per target at 10,000 targets. The objects are frozen,
    so sharing equal immutable values changes nothing they do.
    """

    def __init__(self) -> None:
        self._memo: dict[Any, Any] = {}

    def value(self, value: Any) -> Any:
        key = _strict_key(value)
        return value if key is None else self._memo.setdefault(key, value)

    def fields(self, obj: Any) -> None:
        """Share the immutable field values of a frozen dataclass instance."""
        if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
            return
        for field in dataclasses.fields(obj):
            old = getattr(obj, field.name)
            new = self.value(old)
            if new is not old:
                object.__setattr__(obj, field.name, new)

    def model(self, model: BaseModel) -> None:
        """Share the immutable field values of a frozen pydantic model, nested ones too."""
        values = model.__dict__
        for name, old in list(values.items()):
            if isinstance(old, BaseModel):
                self.model(old)
                continue
            new = self.value(old)
            if new is not old:
                values[name] = new
        given = model.__pydantic_fields_set__
        shared = self._memo.setdefault(("fields set", frozenset(given)), given)
        if shared is not given:
            object.__setattr__(model, "__pydantic_fields_set__", shared)


def _build(
    root: schema.Root, src: Source, base_dir: Path, text: str, shard: Shard | None
) -> Config:
    issues: list[ConfigIssue] = []
    sharing = _Sharing()
    targets: list[Target] = []
    regions: list[Region] = []
    images: list[Image] = []
    d = root.defaults
    # Targets other shards probe; control targets run on every shard (each shard's process
    # needs its own isolation check).
    skipped = 0

    def make(
        loc: Loc,
        t: schema.Target | schema.ControlTarget,
        binding: Binding | None = None,
        user_labels: tuple[tuple[str, str], ...] = (),
        **labels: str,
    ) -> None:
        kind = REGISTRY[t.probe.kind]
        try:
            with collect_secrets() as secrets:
                prepared = kind.prepare(t.probe, base_dir)
            if kind.bind is not None:
                prepared = kind.bind(prepared, binding or Binding(root.vantage, t.name, None, None))
        except SettingError as exc:
            field = tuple(p for p in exc.field.split(".") if p)
            issues.append(src.issue((*loc, "probe", *field), exc.message))
            return
        except ValueError as exc:
            issues.append(src.issue((*loc, "probe"), str(exc)))
            return
        sharing.model(t.probe)
        sharing.fields(prepared)
        target = Target(
            vantage=root.vantage,
            name=t.name,
            kind=kind.name,
            settings=t.probe,
            prepared=prepared,
            interval=t.interval or d.interval,
            timeout=t.timeout or d.timeout,
            bound=binding if kind.bind is not None else None,
            secrets=secrets.digest(),
            scrub=secrets.scrubber(),
            user_labels=user_labels,
            **labels,
        )
        sharing.fields(target)
        targets.append(target)

    for i, c in enumerate(root.control):
        make(("control", i), c, service="", region="", role=Role.CONTROL.value, image="")
    for s, svc in enumerate(root.services):
        roles = {r.name: r.role for r in svc.regions}
        by_region: dict[str, Region] = {}
        for r, reg in enumerate(svc.regions):
            docker = None
            if reg.docker is not None:
                try:
                    docker = reg.docker.resolve(base_dir)
                except ValueError as exc:
                    issues.append(src.issue(("services", s, "regions", r, "docker"), str(exc)))
            by_region[reg.name] = Region(
                svc.name, reg.name, reg.role, reg.priority, docker, reg.maintenance
            )
        regions.extend(by_region.values())
        by_image = {
            i.name: Image(
                svc.name,
                i.name,
                i.ref,
                i.dockerfile,
                i.context,
                i.build_target,
                dict(i.build_args),
                i.run,
            )
            for i in svc.images
        }
        images.extend(by_image.values())
        for t, tgt in enumerate(svc.targets):
            if shard is not None and not shard.owns(root.vantage, svc.name, tgt.name):
                skipped += 1
                continue
            for path, message in REGISTRY[tgt.probe.kind].check_service(
                tgt.probe, svc.name, tuple(roles)
            ):
                issues.append(src.issue(("services", s, "targets", t, "probe", *path), message))
            make(
                ("services", s, "targets", t),
                tgt,
                Binding(
                    root.vantage,
                    tgt.name,
                    by_region[tgt.region],
                    by_image[tgt.image] if tgt.image else None,
                ),
                service=svc.name,
                region=tgt.region,
                role=roles[tgt.region],
                image=tgt.image or "",
                user_labels=tuple(sorted({**svc.labels, **tgt.labels}.items())),
            )
    if issues:
        raise ConfigError(issues)
    return Config(
        source=src.file,
        digest=hashlib.sha256(text.encode()).hexdigest()[:12],
        vantage=root.vantage,
        max_concurrency=d.max_concurrency,
        overload_delay=d.overload_delay,
        regions=tuple(regions),
        images=tuple(images),
        targets=tuple(targets),
        service_labels=tuple(
            (svc.name, tuple(sorted(svc.labels.items()))) for svc in root.services if svc.labels
        ),
        shard=shard,
        total_targets=len(targets) + skipped,
    )


def load(
    path: str | Path, shard: Shard | None = None, sd_cache: templates.SdCache | None = None
) -> Config:
    """Read and validate a config file; with `shard`, keep only that shard's targets.

    `sd_cache` keeps each file_sd file's last good groups across loads (the engine's)."""
    p = Path(path)
    return parse(read_text(p), str(p), p.parent, shard, sd_cache)
