"""Shared fixtures: configs from YAML text, a running engine, the exporter app under test."""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from exporter import config
from exporter.app import make_app
from exporter.engine import Engine
from exporter.model import Config

MakeConfig = Callable[[str], Config]

# Driven-time loop and the fake probe kind for scheduler tests.
pytest_plugins = ["tests.support.virtual_time"]


@pytest.fixture
def make_config(tmp_path: Path) -> MakeConfig:
    """Parse YAML text (dedented) as if read from tmp_path/config.yml."""

    def make(text: str) -> Config:
        path = tmp_path / "config.yml"
        path.write_text(textwrap.dedent(text))
        return config.load(path)

    return make


def one_service(probes: dict[str, str], vantage: str = "test", defaults: str = "") -> str:
    """Config text with one service/region/image and a target per (name -> probe YAML)."""
    targets = "\n".join(
        f"      - name: {name}\n        region: r1\n        image: i1\n        probe: {probe}"
        for name, probe in probes.items()
    )
    return (
        f"vantage: {vantage}\n{defaults}"
        "services:\n"
        "  - name: svc\n"
        "    regions: [{name: r1, role: primary, priority: 1}]\n"
        "    images: [{name: i1, ref: example/svc:1}]\n"
        f"    targets:\n{targets}\n"
    )


@pytest.fixture
async def engine() -> AsyncIterator[Engine]:
    eng = Engine()
    try:
        yield eng
    finally:
        await eng.aclose()


MakeClient = Callable[[Config], Awaitable[TestClient]]


@pytest.fixture
async def exporter_client(
    aiohttp_client: Callable[..., Awaitable[TestClient]], tmp_path: Path
) -> MakeClient:
    """Start the real exporter app on a config; the engine reloads from tmp_path/config.yml."""

    async def make(cfg: Config) -> TestClient:
        eng = Engine(path=Path(cfg.source))
        return await aiohttp_client(make_app(eng, cfg))

    return make
