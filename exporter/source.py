"""Config sources: YAML text with the line of every key path, and errors as data.

Every problem becomes a ConfigIssue naming file, line and key path; a ConfigError carries all of
them. Used by the config loader, the web config (`--web.config.file`) and the bench's config
reading, so that every file the exporter reads reports errors the same way.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import yaml

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
