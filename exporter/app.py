"""Wiring: the aiohttp application, its routes and the lifetime of the engine."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from aiohttp import web

from exporter import web as handlers
from exporter import webconfig
from exporter.config import Config
from exporter.engine import Engine
from exporter.webconfig import WebConfig

INITIAL_CONFIG: web.AppKey[Config] = web.AppKey("initial_config", Config)
# /probe runs real probes on request; a handful at once is plenty for debugging.
PROBE_CONCURRENCY = 4
# Requests to the exporter are small GETs; anything large is hostile.
MAX_REQUEST_BODY = 64 * 1024


async def _engine_lifetime(app: web.Application) -> AsyncIterator[None]:
    engine = app[handlers.ENGINE]
    engine.start(app[INITIAL_CONFIG])
    try:
        yield
    finally:
        await engine.aclose()


def make_app(
    engine: Engine,
    config: Config,
    extra_routes: Sequence[web.RouteDef] = (),
    web_config: WebConfig | None = None,
) -> web.Application:
    app = web.Application(
        client_max_size=MAX_REQUEST_BODY,
        handler_args={"max_line_size": 8190, "max_field_size": 8190},
    )
    app[handlers.ENGINE] = engine
    app[INITIAL_CONFIG] = config
    app[handlers.PROBE_SLOTS] = asyncio.Semaphore(PROBE_CONCURRENCY)
    app.add_routes([*handlers.routes(), *extra_routes])
    app.cleanup_ctx.append(_engine_lifetime)
    webconfig.install(app, web_config)
    return app
