"""Wiring: the aiohttp application, its routes, the engine's lifetime and the server lifecycle.

`serve` listens until SIGTERM/SIGINT (SIGHUP reloads) and `run_async` runs it on the chosen
event loop; the CLI and the demo both start the exporter through them.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

from aiohttp import web

from exporter import __version__, webconfig
from exporter import web as handlers
from exporter.engine import Engine
from exporter.model import Config
from exporter.webconfig import WebConfig

log = logging.getLogger("exporter")
T = TypeVar("T")

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


def loop_factory(event_loop: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The loop factory for `--event-loop`; None is asyncio's default loop."""
    if event_loop == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if event_loop == "uvloop":
            raise
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run_async(main: Awaitable[T], event_loop: str) -> T:
    async def wrapped() -> T:
        module = type(asyncio.get_running_loop()).__module__
        log.info(
            "event loop", extra={"loop": "uvloop" if module.startswith("uvloop") else "asyncio"}
        )
        return await main

    with asyncio.Runner(loop_factory=loop_factory(event_loop)) as runner:
        return runner.run(wrapped())


async def serve(
    engine: Engine,
    cfg: Config,
    listen: tuple[str | None, int],
    started: Callable[[int], Awaitable[None]] | None = None,
    extra_routes: Sequence[web.RouteDef] = (),
    web_config: WebConfig | None = None,
) -> int:
    """Serve until SIGTERM/SIGINT; SIGHUP reloads. Returns the process exit code."""
    loop = asyncio.get_running_loop()
    app = make_app(engine, cfg, extra_routes, web_config)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    host, port = listen
    ssl_context = web_config.ssl_context if web_config else None
    site = web.TCPSite(runner, host, port, reuse_address=True, ssl_context=ssl_context)
    try:
        await site.start()
    except OSError as exc:
        log.error("cannot listen", extra={"address": f"{host or ''}:{port}", "error": exc.strerror})
        await runner.cleanup()
        return 1
    bound = port
    server: Any = site._server
    if port == 0 and server is not None and server.sockets:
        bound = server.sockets[0].getsockname()[1]
    log.info(
        "listening",
        extra={
            "address": f"{host or ''}:{bound}",
            "version": __version__,
            **webconfig.describe(web_config),
        },
    )
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, engine.request_reload)
    # Objects alive after start-up never need collecting; freezing them keeps gen2 collections
    # (10 ms pauses that would land in probe timings) short.
    gc.collect()
    gc.freeze()
    try:
        if started is not None:
            await started(bound)
        await stop.wait()
        log.info("shutting down")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        await runner.cleanup()
    return 0
