"""Load the YAML config: parse with line numbers, validate, build frozen runtime objects.

Errors are data: every problem becomes a ConfigIssue naming file, line and key path, and all of
them are reported together.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from exporter import schema, templates
from exporter.docker.settings import DockerSettings, RunSettings
from exporter.fields import (
    NO_SECRETS,
    Scrubber,
    SettingError,
    collect_secrets,
    format_duration,
    parse_duration,
)
from exporter.metrics import Role
from exporter.probes import REGISTRY

Loc = tuple[str | int, ...]


@dataclasses.dataclass(frozen=True)
class ConfigIssue:
    file: str
    line: int | None
    path: str
    message: str
    column: int | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        if self.line and self.column:
            where += f":{self.column}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(Exception):
    def __init__(self, issues: list[ConfigIssue]) -> None:
        super().__init__("\n".join(str(i) for i in issues))
        self.issues = issues

    def report(self, what: str = "config") -> None:
        """Print every issue for a command-line user: no traceback, one line each."""
        print(f"failover-exporter: invalid {what} ({len(self.issues)} errors):", file=sys.stderr)
        for issue in self.issues:
            print(f"  {issue}", file=sys.stderr)


def read_text(path: Path, what: str = "config") -> str:
    """A config file's text, or a ConfigError saying why it cannot be read."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            [ConfigIssue(str(path), None, "", f"cannot read {what}: {exc.strerror}")]
        ) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        # Where the first bad byte is, so an editor can go there; the byte itself may be binary.
        line = data.count(b"\n", 0, exc.start) + 1
        start = data.rfind(b"\n", 0, exc.start) + 1
        column = len(data[start : exc.start].decode("utf-8", "replace")) + 1
        raise ConfigError(
            [
                ConfigIssue(
                    str(path),
                    line,
                    "",
                    f"cannot read {what}: not UTF-8 text (byte 0x{data[exc.start]:02x})",
                    column,
                )
            ]
        ) from None


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
    """What a probe whose prepared object has `bind(binding)` may depend on beyond its settings."""

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


def format_loc(loc: Loc) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


# Far deeper than any config, and shallow enough that neither PyYAML's recursive composer nor
# the walk below reaches Python's recursion limit.
MAX_DEPTH = 64
# Aliases can make a small file expand to billions of values ("billion laughs").
MAX_VALUES = 100_000


_TOO_DEEP = f"nested more than {MAX_DEPTH} levels deep (a recursive alias?)"
_TOO_MANY = f"more than {MAX_VALUES} values once aliases are expanded"

# libyaml's parser when PyYAML has it: about ten times faster, and a reload parses while probes
# run. Same node tree, marks and constructors as the pure-Python one.
_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _NeedsNodes(Exception):
    """The document uses a construct the event-by-event reader leaves to the node tree."""


# A plain `<<` key resolves to this tag: a merge, which needs the merged nodes.
_MERGE_TAG = "tag:yaml.org,2002:merge"


def _is_plain(text: str) -> bool:
    """One document without anchors, aliases or merge keys: convertible event by event.

    Parsing the events alone is cheap next to composing (a tenth of the time), and it raises
    the same syntax errors the composer would, before any value is converted.
    """
    loader = _LOADER(text)
    try:
        documents = 0
        while loader.check_event():
            event = loader.get_event()
            if isinstance(event, yaml.AliasEvent):
                return False
            if isinstance(event, yaml.DocumentStartEvent):
                documents += 1
                if documents > 1:
                    return False
            elif isinstance(event, yaml.NodeEvent):
                if event.anchor is not None:
                    return False
                if isinstance(event, yaml.ScalarEvent) and (
                    event.value == "<<" or event.tag == _MERGE_TAG
                ):
                    return False
        return True
    finally:
        loader.dispose()


class Source:
    """YAML text turned into plain data plus the line of every key path."""

    def __init__(self, text: str, file: str) -> None:
        self.file = file
        self.lines: dict[Loc, int] = {}
        self.issues: list[ConfigIssue] = []
        # Targets expanded from a template: their location -> the template's and which cell.
        self.origins: dict[Loc, tuple[Loc, str]] = {}
        # file_sd globs to watch, and problems with their files that do not fail the load.
        self.watched: list[str] = []
        self.warnings: list[str] = []
        self._values = 0
        # One object per distinct string: the runtime objects keep many equal ones (region,
        # image and kind names in every target).
        self._strings: dict[str, str] = {}
        if _is_plain(text):
            loader = _LOADER(text)
            try:
                self.data = self._stream(loader)
                return
            except _NeedsNodes:
                self.lines.clear()
                self.issues.clear()
                self._values = 0
            finally:
                loader.dispose()
        loader = _LOADER(text)
        try:
            try:
                node = loader.get_single_node()
            except RecursionError:
                raise yaml.composer.ComposerError(
                    None, None, f"nested more than {MAX_DEPTH} levels deep", loader.get_mark()
                ) from None
            self.data = self._convert(loader, node, ()) if node is not None else None
        finally:
            loader.dispose()

    def _stream(self, loader: Any) -> Any:
        """Convert straight from the parser's events, the same way `_convert` walks nodes.

        Composing first would hold a node tree of about 4.5 KB per target (each node with two
        Mark objects) next to the data; at 10,000 targets that peak of 45 MB stayed in the
        process as fragmented heap after the load.
        """
        loader.get_event()  # stream start
        if loader.check_event(yaml.StreamEndEvent):
            return None
        loader.get_event()  # document start
        data = self._next(loader, ())
        return data

    def _next(self, loader: Any, loc: Loc) -> Any:
        event = loader.get_event()
        self._enter(event.start_mark, loc)
        if isinstance(event, yaml.MappingStartEvent):
            out: dict[Any, Any] = {}
            while not loader.check_event(yaml.MappingEndEvent):
                key_event = loader.get_event()
                if not isinstance(key_event, yaml.ScalarEvent):
                    raise _NeedsNodes  # a complex key: `? [a, b]`
                key = self._share(_scalar(loader, key_event))
                if not isinstance(key, str | int | float | bool):
                    key = str(key)
                mark: Any = key_event.start_mark
                line = mark.line + 1
                if key in out:
                    self.issues.append(
                        ConfigIssue(self.file, line, format_loc((*loc, str(key))), "duplicate key")
                    )
                child: Loc = (*loc, str(key))
                self.lines[child] = line
                out[key] = self._next(loader, child)
            loader.get_event()
            return out
        if isinstance(event, yaml.SequenceStartEvent):
            items: list[Any] = []
            while not loader.check_event(yaml.SequenceEndEvent):
                items.append(self._next(loader, (*loc, len(items))))
            loader.get_event()
            return items
        return self._share(_scalar(loader, event))

    def _enter(self, mark: Any, loc: Loc) -> None:
        """Count one value (bounded depth and number) and note its line; both readers do this."""
        self._values += 1
        if len(loc) > MAX_DEPTH:
            raise _error(mark, _TOO_DEEP)
        if self._values > MAX_VALUES:
            raise _error(mark, _TOO_MANY)
        self.lines.setdefault(loc, mark.line + 1)

    def _share(self, value: Any) -> Any:
        if type(value) is str:
            return self._strings.setdefault(value, value)
        return value

    def _convert(self, loader: Any, node: yaml.Node, loc: Loc) -> Any:
        self._enter(node.start_mark, loc)
        if isinstance(node, yaml.MappingNode):
            loader.flatten_mapping(node)
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = self._share(_construct(loader, key_node))
                if not isinstance(key, str | int | float | bool):
                    key = str(key)
                if key in out:
                    self.issues.append(
                        ConfigIssue(
                            self.file,
                            key_node.start_mark.line + 1,
                            format_loc((*loc, str(key))),
                            "duplicate key",
                        )
                    )
                child: Loc = (*loc, str(key))
                self.lines[child] = key_node.start_mark.line + 1
                out[key] = self._convert(loader, value_node, child)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self._convert(loader, item, (*loc, i)) for i, item in enumerate(node.value)]
        return self._share(_construct(loader, node))

    def where(self, loc: Loc) -> str:
        """A key path as the user wrote it: an expanded target is its template."""
        origin = self.origins.get(loc[:4])
        if origin is None:
            return format_loc(loc)
        return f"{format_loc((*origin[0], *loc[4:]))} ({origin[1]})"

    def issue(self, loc: Loc, message: str) -> ConfigIssue:
        origin = self.origins.get(loc[:4])
        if origin is not None:
            loc = (*origin[0], *loc[4:])
            message = f"{message} (in the expansion {origin[1]})"
        line = None
        for n in range(len(loc), -1, -1):
            line = self.lines.get(loc[:n])
            if line is not None:
                break
        return ConfigIssue(self.file, line, format_loc(loc), message)


def _scalar(loader: Any, event: Any) -> Any:
    """Construct a scalar from its event through the node the composer would have built (the
    tag resolved the same way), then let the constructor forget that node."""
    tag = event.tag
    if tag is None or tag == "!":
        tag = loader.resolve(yaml.ScalarNode, event.value, event.implicit)
    node = yaml.ScalarNode(tag, event.value, event.start_mark, event.end_mark, style=event.style)
    try:
        return _construct(loader, node)
    finally:
        loader.constructed_objects.clear()


def _error(mark: yaml.Mark, problem: str) -> yaml.MarkedYAMLError:
    return yaml.constructor.ConstructorError(None, None, problem, mark)


def _construct(loader: Any, node: yaml.Node) -> Any:
    try:
        value = loader.construct_object(node, deep=True)
    except ValueError as exc:
        # Python's own limits, e.g. an integer over 4300 digits or a date like 2024-13-45.
        raise _error(node.start_mark, f"invalid value: {str(exc).split(';')[0]}") from None
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            raise _error(node.start_mark, "not valid Unicode (a lone surrogate escape)") from None
    return value


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


def _duration(value: Any) -> float | None:
    try:
        return parse_duration(value)
    except ValueError:
        return None


def _semantic_issues(src: Source) -> Iterator[ConfigIssue]:
    """Rules that span fields or sections, checked on the raw data so that they are reported
    together with field errors."""
    data = src.data
    defaults = data.get("defaults") if isinstance(data, dict) else None
    defaults = defaults if isinstance(defaults, dict) else {}
    default_interval = _duration(defaults.get("interval", 5)) or 5.0
    default_timeout = _duration(defaults.get("timeout", 2)) or 2.0
    if default_timeout >= default_interval:
        # Also when only the interval is set: the built-in 2s timeout must fit under it.
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
        interval = _duration(item["interval"]) if "interval" in item else default_interval
        timeout = _duration(item["timeout"]) if "timeout" in item else default_timeout
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


def read_yaml(text: str, file: str) -> Source:
    """Parse YAML text with the line of every key path; YAML errors become a ConfigError."""
    try:
        return Source(text, file)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigError([ConfigIssue(file, line, "", f"YAML syntax error: {problem}")]) from None
    except yaml.reader.ReaderError as exc:
        # A control character: PyYAML gives a character offset, not a line.
        line = text.count("\n", 0, exc.position) + 1
        problem = str(exc).splitlines()[0]
        raise ConfigError([ConfigIssue(file, line, "", f"YAML syntax error: {problem}")]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigIssue(file, None, "", f"YAML error: {exc}")]) from None
    except UnicodeEncodeError as exc:
        # Text that no file can hold (a lone surrogate): libyaml takes UTF-8.
        line = text.count("\n", 0, exc.start) + 1
        char = f"U+{ord(text[exc.start]):04X}"
        raise ConfigError([ConfigIssue(file, line, "", f"invalid character {char}")]) from None


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
    try:
        root = schema.Root.model_validate(src.data)
    except ValidationError as exc:
        issues.extend(_pydantic_issues(src, exc))
    issues.extend(_semantic_issues(src))
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
            bind = getattr(prepared, "bind", None)
            if bind is not None:
                prepared = bind(binding or Binding(root.vantage, t.name, None, None))
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
            bound=binding if bind is not None else None,
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
            # A dns target's answer regions are joined to the region verdict by name.
            for name in getattr(tgt.probe, "regions", None) or ():
                if name not in roles:
                    issues.append(
                        src.issue(
                            ("services", s, "targets", t, "probe", "regions", name),
                            f"{name!r} is not a region of service {svc.name!r} "
                            f"({', '.join(roles)})",
                        )
                    )
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
