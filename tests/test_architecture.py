"""The shape of exporter/: no import circle, no module grown past what a reader can hold; and of
tests/: no test module imports another (shared servers and builders live in tests/support/).

Edges are module-level imports, including those under `if TYPE_CHECKING:`: a circle through
annotations is still a circle in the layering a newcomer reads, and mypy follows it. Imports
inside functions do not count: they are the deliberate lazy loads (kind-specific libraries,
subcommands) that keep start-up small.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from exporter import metrics
from exporter.probes import REGISTRY
from exporter.probes.base import COMMON_REASONS, register

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "exporter"
MAX_LINES = 500

# {module: why it may exceed MAX_LINES}. Remove an entry when its module is split.
LONG_MODULES = {
    "exporter.metrics": "catalogue: the one metric table by design (the bundle's contract)",
}
# {(importer, imported): why}: edges known to close a circle, each with the step that removes it.
KNOWN_CYCLE_EDGES: dict[tuple[str, str], str] = {}


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _owner(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports(module: str) -> set[str]:
    """The exporter modules `module` imports at module level (TYPE_CHECKING blocks included)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for stmt in body:
            if isinstance(stmt, ast.If):
                visit(stmt.body)
                visit(stmt.orelse)
            elif isinstance(stmt, ast.Try):
                visit(stmt.body)
                for handler in stmt.handlers:
                    visit(handler.body)
                visit(stmt.orelse)
                visit(stmt.finalbody)
            elif isinstance(stmt, ast.Import):
                found.update(alias.name for alias in stmt.names)
            elif isinstance(stmt, ast.ImportFrom):
                base = stmt.module or ""
                if stmt.level:
                    parts = package.split(".")
                    parts = parts[: len(parts) - (stmt.level - 1)]
                    base = ".".join([*parts, *([stmt.module] if stmt.module else [])])
                for alias in stmt.names:
                    # `from exporter import metrics` imports the module exporter.metrics.
                    sub = f"{base}.{alias.name}"
                    found.add(sub if sub in MODULES else base)

    visit(ast.parse(path.read_text(), str(path)).body)
    return {owner for name in found if (owner := _owner(name)) and owner != module}


def graph() -> dict[str, set[str]]:
    return {m: imports(m) - {t for (f, t) in KNOWN_CYCLE_EDGES if f == m} for m in MODULES}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One circle per strongly connected component, as a path that returns to its start."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1 or v in edges[v]:
                found.append(_circle(v, component, edges))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return found


def _circle(start: str, component: set[str], edges: dict[str, set[str]]) -> list[str]:
    # Breadth-first back to `start` inside the component: the shortest circle through it.
    paths = {start: [start]}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(edges[v] & component):
            if w == start:
                return [*paths[v], start]
            if w not in paths:
                paths[w] = [*paths[v], w]
                queue.append(w)
    raise AssertionError(f"{start} is in no circle of {sorted(component)}")


def test_the_graph_sees_the_imports_it_must() -> None:
    # A parser that missed imports would find no circle anywhere; pin edges of each form.
    assert "exporter.metrics" in imports("exporter.schema")  # from exporter import metrics
    assert "exporter.probes" in imports("exporter.config")  # from exporter.probes import ...
    assert "exporter.model" in imports("exporter.docker.images")  # under TYPE_CHECKING
    assert "exporter.commands.demo" not in imports("exporter.cli")  # inside a function: lazy


def test_cycles_finds_a_circle() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(edges) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_in_exporter() -> None:
    found = cycles(graph())
    assert not found, "import circles in exporter/:\n" + "\n".join(" -> ".join(c) for c in found)


def test_known_cycle_edges_still_exist() -> None:
    # An exception outliving its edge would hide the next circle through it.
    stale = [edge for edge in KNOWN_CYCLE_EDGES if edge[1] not in imports(edge[0])]
    assert not stale, f"remove from KNOWN_CYCLE_EDGES: {stale}"


def test_nothing_imports_the_cli() -> None:
    # The CLI is the top: argument parsing and dispatch. The server lifecycle lives in app.py,
    # so the demo and other commands start the exporter without importing the CLI.
    importers = sorted(
        m for m in MODULES if "exporter.cli" in imports(m) and m != "exporter.__main__"
    )
    assert not importers, f"these modules import exporter.cli: {importers}"


def test_modules_stay_readable() -> None:
    lengths = {m: len(p.read_text().splitlines()) for m, p in MODULES.items()}
    long = {m: n for m, n in lengths.items() if n > MAX_LINES and m not in LONG_MODULES}
    assert not long, f"over {MAX_LINES} lines; split them or add a reason to LONG_MODULES: {long}"
    stale = sorted(m for m in LONG_MODULES if lengths.get(m, 0) <= MAX_LINES)
    assert not stale, f"no longer long (or gone), remove from LONG_MODULES: {stale}"


def test_each_probe_kind_is_one_module_and_classified() -> None:
    # Adding a kind is its own probes/<kind>.py (discovered, no list to edit) plus the bundle
    # classification in its register call; docs/architecture.md lists the rest it touches.
    kind_modules = {
        m.rpartition(".")[2]
        for m in MODULES
        if m.startswith("exporter.probes.") and m != "exporter.probes.base"
    }
    assert set(REGISTRY) == kind_modules
    for name, kind in REGISTRY.items():
        assert kind.settings.__module__ == f"exporter.probes.{name}", name
        assert kind.votes_in_quorum is not None, name
        assert kind.ranks_images is not None, name
        assert set(COMMON_REASONS) <= set(kind.reasons), name
        for gauge in kind.gauges:
            assert metrics.BY_NAME[gauge].type is metrics.Type.GAUGE, (name, gauge)


def test_a_kind_declares_only_catalogue_gauges() -> None:
    http = REGISTRY["http"]
    with pytest.raises(RuntimeError, match="not a catalogue gauge"):
        register(dataclasses.replace(http, name="t-counter", gauges={metrics.PROBES.name: 0.0}))
    with pytest.raises(RuntimeError, match="not a gauge with one label"):
        register(
            dataclasses.replace(http, name="t-bits", bit_labels={metrics.HTTP_STATUS.name: str})
        )
    assert "t-counter" not in REGISTRY
    assert "t-bits" not in REGISTRY
    with pytest.raises(TypeError):
        http.gauges[metrics.HTTP_STATUS.name] = 1.0  # type: ignore[index]


# Names that belong to one probe kind, and the modules outside exporter/probes/<kind>.py that may
# still say them (the catalogue defines them). The generic result path (runner, state,
# exposition, web) reaches a kind's series through ProbeKind's declarations only.
KIND_NAMES = {
    "HTTP_STATUS": {"exporter.metrics"},
    "http_status_code": {"exporter.metrics"},
    "status_code": {"exporter.metrics"},
    "DNS_POINTS_TO": {"exporter.metrics"},
    "region_names": set(),
}


def test_kind_specific_names_stay_in_their_kind() -> None:
    found = []
    for module, path in MODULES.items():
        if module.startswith("exporter.probes.") or module.startswith("exporter.wire"):
            continue
        text = path.read_text()
        for name, allowed in KIND_NAMES.items():
            if module not in allowed and name in text:
                found.append((module, name))
    assert not found, found


TESTS = ROOT / "tests"
TEST_MODULES = {_module(p): p for p in sorted(TESTS.rglob("test_*.py"))}


def imported_test_modules(module: str, source: str) -> set[str]:
    """The test modules that `source` (the text of `module`) imports, anywhere in the file.

    Imports inside functions count here: a test module reached lazily still ties one test file's
    fixtures and collection to another's.
    """
    package = module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            names.add(base)
            # `from tests.probes import test_http` imports the module tests.probes.test_http.
            names.update(f"{base}.{alias.name}" for alias in node.names)
    found = set()
    for name in names:
        while name:
            if name in TEST_MODULES and name != module:
                found.add(name)
            name = name.rpartition(".")[0]
    return found


def test_the_test_import_check_sees_each_form() -> None:
    module = "tests.probes.test_tcp"
    assert imported_test_modules(module, "from tests.test_config import BASE") == {
        "tests.test_config"
    }
    assert imported_test_modules(module, "import tests.test_scheduler") == {"tests.test_scheduler"}
    assert imported_test_modules(module, "from tests.probes import test_http") == {
        "tests.probes.test_http"
    }
    assert imported_test_modules(module, "from .test_http import server") == {
        "tests.probes.test_http"
    }
    assert imported_test_modules(module, "def f():\n    from tests import test_fuzz\n") == {
        "tests.test_fuzz"
    }
    assert not imported_test_modules(module, "from tests.support.configs import BASE")
    assert not imported_test_modules(module, "from tests.probes.conftest import RunProbe")


def test_no_test_module_imports_another() -> None:
    # A helper two test files share belongs in tests/support/ (or a conftest), so each test
    # module can be read, moved and run on its own.
    found = {
        module: sorted(imported)
        for module, path in TEST_MODULES.items()
        if (imported := imported_test_modules(module, path.read_text()))
    }
    assert not found, (
        f"test modules importing test modules (move the helper to tests/support/): {found}"
    )
