"""The first ten minutes: what the README's first lines promise is what the Makefile and code do."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from exporter import web
from exporter.commands import demo

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_make_demo_installs_only_runtime_dependencies(tmp_path: Path) -> None:
    # A dry run against an empty venv path: the commands make would run for a newcomer.
    out = subprocess.run(
        ["make", "-n", "-C", str(ROOT), "demo", f"VENV={tmp_path / 'venv'}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    installs = [line for line in out.splitlines() if "pip install" in line]
    assert installs, out
    assert all(line.rstrip().endswith("-e .") for line in installs), installs
    assert "[test]" not in out
    assert "failover-exporter demo" in out


def test_bare_debian_step_and_system_packages_are_stated() -> None:
    first = README.split("## Commands", 1)[0]
    assert "scripts/bootstrap" in first
    assert "make" in first
    assert "python3-venv" in first
    bootstrap = (ROOT / "scripts" / "bootstrap").read_text()
    assert "make python3-venv" in bootstrap
    deps = (ROOT / "scripts" / "system-deps").read_text()
    packages = re.search(r"^packages=\(([^)]*)\)", deps, re.M)
    assert packages is not None
    for package in packages.group(1).split():
        assert package in first, f"README's first lines do not say make test installs {package}"


def test_check_config_and_its_secrets_are_explained() -> None:
    example = (ROOT / "examples" / "config.yml").read_text()
    for variable in set(re.findall(r"env: ([A-Z_][A-Z0-9_]*)", example)):
        assert f"{variable}=… failover-exporter check-config" in README, variable


def test_every_endpoint_is_in_the_table() -> None:
    table = README.split("## Endpoints", 1)[1].split("\n## ", 1)[0]
    paths = {r.path for r in web.routes()}  # type: ignore[attr-defined]
    paths |= {"/-/demo/outage", "/-/demo/recover"}
    assert demo.Outage.routes  # the demo's routes are those two
    for path in paths:
        assert f"`{path}" in table or f"POST {path}" in table, path
    assert "required" in table.split("/probe", 1)[1].split("\n", 1)[0]


def test_outage_is_explained() -> None:
    first = README.split("## Commands", 1)[0]
    assert "OUTAGE=60" in first
    assert "/-/demo/recover" in first
    assert "status page" in first
