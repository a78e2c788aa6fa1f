"""`failover-exporter demo`: simulated regions on loopback, probed from three vantages.

One process runs three regional servers (a primary and two standbys, each serving three image
variants with their own latency profile, jitter and a little loss), a control server, and one
exporter whose targets carry three `vantage` values, as three exporters in three regions would.
A single scrape therefore gives the quorum rules three vantages to vote with.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import random
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import yaml
from aiohttp import web

from exporter import config, flags
from exporter.app import run_async, serve
from exporter.engine import Engine
from exporter.model import Config
from exporter.webconfig import WebConfig

log = logging.getLogger("exporter.demo")

SERVICE = "shop"
# (name, role, priority)
REGIONS = (("eu-west", "primary", 1), ("us-east", "standby", 2), ("ap-south", "standby", 3))
VANTAGES = ("eu-west", "us-east", "ap-south")
# Server-side latency of each image variant: (median seconds, jitter seconds, loss ratio).
IMAGES = {
    "slim": (0.004, 0.001, 0.002),
    "distroless": (0.006, 0.0015, 0.002),
    "full": (0.018, 0.004, 0.005),
}
# Simulated network distance from a vantage to a region, added to the server latency.
DISTANCE = {
    ("eu-west", "eu-west"): 0.001,
    ("eu-west", "us-east"): 0.012,
    ("eu-west", "ap-south"): 0.020,
    ("us-east", "us-east"): 0.001,
    ("us-east", "ap-south"): 0.030,
    ("ap-south", "ap-south"): 0.001,
}
INTERVAL = "2s"
TIMEOUT = "1s"


def distance(vantage: str, region: str) -> float:
    return DISTANCE.get((vantage, region)) or DISTANCE[(region, vantage)]


def _region_app(region: str, rng: random.Random) -> web.Application:
    async def health(request: web.Request) -> web.Response:
        image = request.match_info["image"]
        vantage = request.match_info["vantage"]
        if image not in IMAGES or vantage not in VANTAGES:
            raise web.HTTPNotFound()
        median, jitter, loss = IMAGES[image]
        if rng.random() < loss:
            return web.Response(status=503, text="simulated loss\n")
        delay = max(0.0, rng.gauss(median + distance(vantage, region), jitter))
        await asyncio.sleep(delay)
        return web.json_response({"status": "ok", "region": region, "image": image})

    app = web.Application()
    app.router.add_get("/{vantage}/{image}/healthz", health)
    return app


def _control_app() -> web.Application:
    async def ok(_request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app = web.Application()
    app.router.add_get("/healthz", ok)
    return app


@asynccontextmanager
async def _serve(app: web.Application) -> AsyncIterator[tuple[web.AppRunner, int]]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server: Any = site._server
    port = server.sockets[0].getsockname()[1]
    try:
        yield runner, port
    finally:
        await runner.cleanup()


def demo_config_text(ports: dict[str, int], control_port: int, vantage: str) -> str:
    """The demo's config for one vantage, as a user would write it."""
    doc = {
        "vantage": vantage,
        "defaults": {"interval": INTERVAL, "timeout": TIMEOUT},
        "control": [
            {
                "name": f"control-{vantage}",
                "probe": {"kind": "http", "url": f"http://127.0.0.1:{control_port}/healthz"},
            }
        ],
        "services": [
            {
                "name": SERVICE,
                "regions": [{"name": n, "role": r, "priority": p} for n, r, p in REGIONS],
                "images": [{"name": i, "ref": f"demo.local/shop:{i}"} for i in IMAGES],
                "targets": [
                    {
                        "name": f"{region}-{image}",
                        "region": region,
                        "image": image,
                        "probe": {
                            "kind": "http",
                            "url": f"http://127.0.0.1:{ports[region]}/{vantage}/{image}/healthz",
                            "body_must_match": ['"status": "ok"'],
                        },
                    }
                    for region, _, _ in REGIONS
                    for image in IMAGES
                ],
            }
        ],
    }
    return yaml.safe_dump(doc, sort_keys=False)


def demo_config(ports: dict[str, int], control_port: int) -> Config:
    per_vantage = [
        config.parse(demo_config_text(ports, control_port, v), f"<demo:{v}>") for v in VANTAGES
    ]
    first = per_vantage[0]
    return dataclasses.replace(
        first, vantage=",".join(VANTAGES), targets=tuple(t for c in per_vantage for t in c.targets)
    )


async def run(
    listen: tuple[str | None, int],
    outage_after: float | None,
    web_config: WebConfig | None = None,
) -> int:
    rng = random.Random(7)
    async with _serve(_control_app()) as (_, control_port):
        runners: dict[str, web.AppRunner] = {}
        ports: dict[str, int] = {}
        async with (
            _serve(_region_app(REGIONS[0][0], rng)) as (r0, p0),
            _serve(_region_app(REGIONS[1][0], rng)) as (r1, p1),
            _serve(_region_app(REGIONS[2][0], rng)) as (r2, p2),
        ):
            for (name, _, _), runner, port in zip(REGIONS, (r0, r1, r2), (p0, p1, p2), strict=True):
                runners[name], ports[name] = runner, port
            cfg = demo_config(ports, control_port)
            engine = Engine(loader=lambda: cfg)
            outage: list[asyncio.Task[None]] = []
            primary = Outage(runners[REGIONS[0][0]], ports[REGIONS[0][0]])

            async def started(port: int) -> None:
                log.info(
                    "demo running",
                    extra={
                        "status_page": f"http://127.0.0.1:{port}/",
                        "metrics": f"http://127.0.0.1:{port}/metrics",
                        "regions": ",".join(f"{n}={ports[n]}" for n, _, _ in REGIONS),
                    },
                )
                if outage_after is not None:
                    outage.append(asyncio.create_task(primary.after(outage_after)))

            try:
                return await serve(engine, cfg, listen, started, primary.routes(), web_config)
            finally:
                for task in outage:
                    task.cancel()
                await asyncio.gather(*outage, return_exceptions=True)


class Outage:
    """Takes the simulated primary down and up again: `--outage-after`, and for `drill`
    `POST /-/demo/outage` and `POST /-/demo/recover` on the demo's listen address."""

    def __init__(self, runner: web.AppRunner, port: int) -> None:
        self.runner = runner
        self.port = port

    async def down(self) -> None:
        log.warning("simulated outage: primary region is down", extra={"region": REGIONS[0][0]})
        # Stopping the listener makes new connections fail with "connection refused", as a
        # dead region's load balancer would.
        for site in list(self.runner.sites):
            await site.stop()

    async def up(self) -> None:
        if not self.runner.sites:
            await web.TCPSite(self.runner, "127.0.0.1", self.port, reuse_address=True).start()
            log.warning("simulated outage over", extra={"region": REGIONS[0][0]})

    async def after(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        await self.down()

    def routes(self) -> list[web.RouteDef]:
        async def outage(_request: web.Request) -> web.Response:
            await self.down()
            return web.Response(text="primary region down\n")

        async def recover(_request: web.Request) -> web.Response:
            await self.up()
            return web.Response(text="primary region up\n")

        return [web.post("/-/demo/outage", outage), web.post("/-/demo/recover", recover)]


async def serve_one(name: str, listen: tuple[str | None, int]) -> int:
    """Serve one simulated region (or the control endpoint) alone, without an exporter, so
    that regions and exporters can run as separate containers (deploy/compose.yaml)."""
    app = _control_app() if name == "control" else _region_app(name, random.Random(7))
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # As a container's PID 1, Python would ignore SIGTERM without a handler.
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await web.TCPSite(runner, listen[0], listen[1]).start()
        log.info("demo region serving", extra={"region": name, "port": listen[1]})
        await stop.wait()
        return 0
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await runner.cleanup()


def add_arguments(p: argparse.ArgumentParser) -> None:
    flags.add_server_arguments(p)
    p.add_argument(
        "--outage-after",
        dest="outage_after",
        type=float,
        default=None,
        metavar="SECONDS",
        help="take the primary region down after this many seconds",
    )
    p.add_argument(
        "--serve",
        choices=[*(name for name, _, _ in REGIONS), "control"],
        default=None,
        metavar="REGION",
        help="serve only this simulated region (or `control`) on --web.listen-address, without "
        "the exporter: regions as separate containers, as in deploy/compose.yaml",
    )


def main(args: argparse.Namespace) -> int:
    server = flags.server(args)
    if isinstance(server, int):
        return server
    if args.serve is not None:
        return run_async(serve_one(args.serve, server.listen), server.event_loop)
    return run_async(run(server.listen, args.outage_after, server.web_config), server.event_loop)
