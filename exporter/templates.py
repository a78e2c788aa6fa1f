"""Target templates: one YAML block that expands over a service's regions × images × extra
dimensions into ordinary targets, before the targets are validated (docs/config.md).

Expansion works on the parsed data, so every expanded target goes through exactly the checks
a hand-written one does; `Source.issue` maps an error in an expanded target back to the
template's file:line and names the expansion that failed.
"""

from __future__ import annotations

import glob
import itertools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from exporter.source import ConfigError, Loc, Source, read_text, read_yaml

# Far above any real fleet (20 regions × 5 images × 100 endpoints), low enough that a typo in
# a dimension cannot make a load build millions of targets.
MAX_EXPANSIONS = 100_000
# `{name}` is a placeholder; `{{` and `}}` are literal braces.
_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_IDENT = re.compile(r"[a-z_][a-z0-9_]{0,63}")
BUILTIN = ("service", "region", "image", "vantage")
# Keys of a template that steer the expansion; every other key is copied into each target.
_STEER = ("name", "regions", "images", "dimensions", "exclude", "overrides", "files")
# Labels of a file_sd group that pick the cell rather than fill a placeholder of their own.
_SD_RESERVED = ("region", "image", "address")
MAX_SD_FILES = 1000

# file_sd groups by file, as last read without error: a file that turns bad keeps these.
SdCache = dict[str, list[dict[str, str]]]


class _Bad(Exception):
    def __init__(self, loc: Loc, message: str) -> None:
        self.loc = loc
        self.message = message


def substitute(value: str, cell: dict[str, str], loc: Loc) -> str:
    """Fill the placeholders of one string; raise _Bad naming the first unknown one."""

    def repl(m: re.Match[str]) -> str:
        text = m.group(0)
        if text in ("{{", "}}"):
            return text[0]
        name = m.group(1)
        if name is None:
            raise _Bad(loc, f"unbalanced {text!r} (write {text * 2} for a literal brace)")
        if name not in cell:
            known = ", ".join("{" + k + "}" for k in cell)
            raise _Bad(loc, f"unknown placeholder {{{name}}} (known: {known})")
        return cell[name]

    return _PLACEHOLDER.sub(repl, value)


def _fill(value: Any, cell: dict[str, str], loc: Loc) -> Any:
    if isinstance(value, str):
        return substitute(value, cell, loc)
    if isinstance(value, dict):
        return {k: _fill(v, cell, (*loc, str(k))) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, cell, (*loc, i)) for i, v in enumerate(value)]
    return value


def _merge(base: Any, over: Any) -> Any:
    """An override replaces scalars and lists and merges mappings key by key."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = _merge(base.get(k), v)
        return out
    return over


def _names(value: Any, loc: Loc, what: str, known: list[str]) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Bad(loc, f"must be a list of {what} names")
    for i, v in enumerate(value):
        if v not in known:
            raise _Bad((*loc, i), f"unknown {what} {v!r} (known: {', '.join(known)})")
    return list(dict.fromkeys(value))


def _dimensions(value: Any, loc: Loc) -> dict[str, list[str]]:
    if not isinstance(value, dict):
        raise _Bad(loc, "must be a mapping of dimension name to a list of values")
    out: dict[str, list[str]] = {}
    for name, values in value.items():
        dloc = (*loc, str(name))
        if not isinstance(name, str) or not _IDENT.fullmatch(name):
            raise _Bad(dloc, "a dimension name is lower case letters, digits and _")
        if name in BUILTIN:
            raise _Bad(dloc, f"{name!r} is a built-in placeholder, not a dimension")
        if not isinstance(values, list) or not values:
            raise _Bad(dloc, "must be a non-empty list of values")
        items = []
        for i, v in enumerate(values):
            if isinstance(v, bool) or not isinstance(v, str | int):
                raise _Bad((*dloc, i), "a dimension value is a string or an integer")
            items.append(str(v))
        out[name] = list(dict.fromkeys(items))
    return out


def _matchers(value: Any, loc: Loc, keys: tuple[str, ...], what: str) -> list[dict[str, str]]:
    if not isinstance(value, list):
        raise _Bad(loc, f"must be a list of {what}")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or not item:
            raise _Bad((*loc, i), f"{what}: a mapping of placeholder to value")
        for k, v in item.items():
            if k not in keys:
                raise _Bad(
                    (*loc, i, str(k)), f"unknown placeholder {k!r} (known: {', '.join(keys)})"
                )
            if isinstance(v, bool) or not isinstance(v, str | int):
                raise _Bad((*loc, i, str(k)), "must be a string or an integer")
        out.append({str(k): str(v) for k, v in item.items()})
    return out


def describe(cell: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in cell.items() if v and k not in ("service", "vantage"))


def expand(src: Source, base_dir: Path, cache: SdCache | None = None) -> int:
    """Replace every service's `templates` by the targets they expand to, in place.

    Returns the number of targets expanded. Problems go to `src.issues`; a template with a
    problem in its expansion keys expands to nothing (its targets' errors would only repeat it).
    """
    data = src.data
    if not isinstance(data, dict) or not isinstance(data.get("services"), list):
        return 0
    vantage = data.get("vantage")
    total = 0
    for s, service in enumerate(data["services"]):
        if not isinstance(service, dict) or "templates" not in service:
            continue
        templates = service.pop("templates")
        sloc: Loc = ("services", s, "templates")
        if not isinstance(templates, list):
            src.issues.append(src.issue(sloc, "must be a list of target templates"))
            continue
        targets = service.setdefault("targets", [])
        if not isinstance(targets, list):
            continue  # the schema reports it
        for k, template in enumerate(templates):
            tloc: Loc = (*sloc, k)
            try:
                if isinstance(template, dict) and "files" in template:
                    gen = _sd_cells(src, service, template, tloc, vantage, base_dir, cache)
                else:
                    gen = _cells(service, template, tloc, vantage)
                # Never more than one cell past the cap: a product of three long dimensions
                # would otherwise be built in full before it is refused.
                cells = list(itertools.islice(gen, MAX_EXPANSIONS - total + 1))
                if total + len(cells) > MAX_EXPANSIONS:
                    raise _Bad(tloc, f"templates expand to more than {MAX_EXPANSIONS} targets")
                expanded = [(_target(template, cell, tloc), cell) for cell in cells]
            except _Bad as bad:
                src.issues.append(src.issue(bad.loc, bad.message))
                continue
            for target, cell in expanded:
                src.origins[("services", s, "targets", len(targets))] = (tloc, describe(cell))
                targets.append(target)
            total += len(expanded)
    return total


def _cells(
    service: dict[str, Any], template: Any, loc: Loc, vantage: Any
) -> Iterator[dict[str, str]]:
    if not isinstance(template, dict):
        raise _Bad(loc, "a template is a mapping (name, probe, regions, images, …)")
    for key in ("region", "image"):
        if key in template:
            raise _Bad((*loc, key), f"a template sets {key}s (a list), not {key}")
    if not isinstance(template.get("name"), str):
        raise _Bad((*loc, "name"), "required: a name with placeholders, e.g. '{image}-{region}'")
    regions = [r["name"] for r in service.get("regions") or [] if isinstance(r, dict)]
    images = [i["name"] for i in service.get("images") or [] if isinstance(i, dict)]
    regions = [r for r in regions if isinstance(r, str)]
    images = [i for i in images if isinstance(i, str)]
    if "regions" in template:
        regions = _names(template["regions"], (*loc, "regions"), "region", regions)
    # `images: []`: endpoints of the region itself (a database, a ping), outside the ranking.
    per_image: list[str | None] = list(images)
    if "images" in template:
        per_image = list(_names(template["images"], (*loc, "images"), "image", images)) or [None]
    dims = _dimensions(template.get("dimensions", {}), (*loc, "dimensions"))
    keys = ("region", "image", *dims)
    exclude = _matchers(template.get("exclude", []), (*loc, "exclude"), keys, "exclusions")
    overrides = template.get("overrides", [])
    if not isinstance(overrides, list):
        raise _Bad((*loc, "overrides"), "must be a list of {match: …, <target keys>}")
    for o, override in enumerate(overrides):
        oloc = (*loc, "overrides", o)
        if not isinstance(override, dict) or not isinstance(override.get("match"), dict):
            raise _Bad(oloc, "an override is {match: {placeholder: value}, <target keys>}")
        _matchers([override["match"]], (*oloc, "match"), keys, "matches")
        for key in override:
            if key in _STEER or key in ("region", "image"):
                raise _Bad((*oloc, str(key)), f"an override cannot change {key}")
    used = [False] * len(exclude)
    base = {"service": str(service.get("name", "")), "vantage": str(vantage or "")}
    for region, image, *values in itertools.product(regions, per_image, *dims.values()):
        cell = {**base, "region": region, "image": image or ""}
        cell.update(zip(dims, values, strict=True))
        hit = [all(cell.get(k) == v for k, v in m.items()) for m in exclude]
        if any(hit):
            used = [u or h for u, h in zip(used, hit, strict=True)]
            continue
        yield cell
    for e, u in enumerate(used):
        if not u:
            raise _Bad((*loc, "exclude", e), "this exclusion matches no expansion (a typo?)")


def sd_patterns(template: dict[str, Any], loc: Loc, base_dir: Path) -> list[str]:
    files = template.get("files")
    if not isinstance(files, list) or not files or not all(isinstance(f, str) for f in files):
        raise _Bad((*loc, "files"), "must be a non-empty list of file names or globs")
    return [str(base_dir / f) for f in files]


def sd_files(patterns: list[str]) -> list[str]:
    found: set[str] = set()
    for pattern in patterns:
        found.update(glob.glob(pattern))
    return sorted(found)[:MAX_SD_FILES]


def _sd_cells(
    src: Source,
    service: dict[str, Any],
    template: dict[str, Any],
    loc: Loc,
    vantage: Any,
    base_dir: Path,
    cache: SdCache | None,
) -> Iterator[dict[str, str]]:
    """Cells from Prometheus file_sd files: one per address of every group, its labels as
    placeholders. A file that cannot be used keeps its last good groups (or none) and becomes
    a warning, so one bad file never takes the others' targets down."""
    for key in ("regions", "images", "dimensions", "exclude"):
        if key in template:
            raise _Bad((*loc, key), "a discovery template takes its cells from `files`")
    patterns = sd_patterns(template, loc, base_dir)
    src.watched.extend(patterns)
    regions = [r.get("name") for r in service.get("regions") or [] if isinstance(r, dict)]
    images = [i.get("name") for i in service.get("images") or [] if isinstance(i, dict)]
    base = {"service": str(service.get("name", "")), "vantage": str(vantage or "")}
    for path in sd_files(patterns):
        try:
            groups = _sd_read(path, regions, images)
        except _Bad as bad:
            kept = cache.get(path) if cache is not None else None
            note = "keeping its last good targets" if kept is not None else "not used"
            src.warnings.append(f"{path}: {bad.message}; {note}")
            groups = kept or []
        else:
            if cache is not None:
                cache[path] = groups
        for group in groups:
            yield {**base, **group}


def _sd_read(path: str, regions: list[Any], images: list[Any]) -> list[dict[str, str]]:
    try:
        doc = read_yaml(read_text(Path(path), "file_sd file"), path).data
    except ConfigError as exc:
        raise _Bad((), exc.issues[0].message) from None
    if not isinstance(doc, list):
        raise _Bad((), "a file_sd file is a list of {targets: [...], labels: {...}}")
    cells = []
    for g, group in enumerate(doc):
        where = f"[{g}]"
        if not isinstance(group, dict) or not isinstance(group.get("targets"), list):
            raise _Bad((), f"{where}: a group is {{targets: [...], labels: {{...}}}}")
        labels = group.get("labels", {})
        if not isinstance(labels, dict) or not all(
            isinstance(k, str) and _IDENT.fullmatch(k) and isinstance(v, str)
            for k, v in labels.items()
        ):
            raise _Bad((), f"{where}.labels: a mapping of label names to strings")
        if labels.get("region") not in regions:
            known = ", ".join(str(r) for r in regions)
            raise _Bad((), f"{where}.labels.region: must be one of the service's ({known})")
        if "image" in labels and labels["image"] not in images:
            raise _Bad((), f"{where}.labels.image: unknown image {labels['image']!r}")
        for address in group["targets"]:
            if not isinstance(address, str) or not address:
                raise _Bad((), f"{where}.targets: addresses are non-empty strings")
            cells.append({"image": "", **labels, "address": address})
    return cells


def _target(template: dict[str, Any], cell: dict[str, str], loc: Loc) -> dict[str, Any]:
    body = {k: v for k, v in template.items() if k not in _STEER or k == "name"}
    # Filled before merging, each from its own location, so that no text is filled twice.
    target: dict[str, Any] = _fill(body, cell, loc)
    for o, override in enumerate(template.get("overrides", [])):
        if all(cell.get(k) == str(v) for k, v in override["match"].items()):
            extra = {k: v for k, v in override.items() if k != "match"}
            target = _merge(target, _fill(extra, cell, (*loc, "overrides", o)))
    target["region"] = cell["region"]
    if cell["image"]:
        target["image"] = cell["image"]
    return target
