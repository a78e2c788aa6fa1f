"""Hypothesis building blocks for config fuzzing: the settings, YAML values, mutations of a
document, and the oracle every parsed text must satisfy."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from exporter import config
from exporter.model import Config
from exporter.source import ConfigError

FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FILE = "fuzz.yml"
KEYS = sorted(
    {"vantage", "defaults", "control", "services", "regions", "images", "targets", "probe"}
    | {"kind", "url", "address", "interval", "timeout", "name", "role", "priority", "ref"}
    | {"region", "image", "tls", "headers", "method", "send", "expect", "max_concurrency"}
)

# Text with everything YAML can carry: unicode, control characters, lone surrogates (escaped).
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=30)
huge_numbers = st.one_of(
    st.integers(min_value=10**15, max_value=10**60),
    st.integers(min_value=-(10**60), max_value=-(10**15)),
    st.sampled_from([float("inf"), float("-inf"), float("nan"), 1e308, -0.0, 5e-324]),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-5, max_value=2000),
    st.floats(),
    huge_numbers,
    any_text,
    st.sampled_from(["5s", "0s", "250ms", "1m30s", "primary", "standby", "http", "tcp", ""]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), any_text), inner, max_size=4),
    ),
    max_leaves=12,
)


def dump(doc: Any, unicode: bool = True) -> str:
    return yaml.safe_dump(doc, allow_unicode=unicode, sort_keys=False)


def check_parse(text: str) -> Config | None:
    """The fuzz oracle: a Config, or a ConfigError whose issues all say where."""
    try:
        return config.parse(text, FILE, Path("/nonexistent"))
    except ConfigError as exc:
        issues = exc.issues
    assert issues
    for issue in issues:
        assert issue.file == FILE, issue
        assert issue.line is not None or issue.path, issue
        assert issue.message, issue
    return None


def paths(doc: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield from paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            yield from paths(value, (*prefix, i))


def mutate(doc: Any, path: tuple[Any, ...], how: str, value: Any) -> Any:
    if not path:
        return value if how != "delete" else None
    parent = doc
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    if how == "delete":
        del parent[last]
    elif how == "replace":
        parent[last] = value
    elif how == "wrap":
        parent[last] = [parent[last]]
    elif how == "duplicate" and isinstance(parent, list):
        parent.append(copy.deepcopy(parent[last]))
    elif how == "add" and isinstance(parent[last], dict):
        parent[last][value if isinstance(value, str) else "extra"] = value
    return doc
