"""A real HTTP server that records every request it receives: status codes, redirects, slow
answers, basic auth and gzip, for the http probe's tests."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest
from aiohttp import web

from tests.probes.conftest import http_server

PASSWORD = "pa55-W0rd!-never-in-text"
TOKEN = base64.b64encode(f"alice:{PASSWORD}".encode()).decode()


class Seen:
    """What the test server received, request by request."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []


def app_for(seen: Seen) -> web.Application:
    async def record(request: web.Request) -> None:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        seen.requests.append(
            {
                "method": request.method,
                "path": request.path,
                "headers": dict(request.headers),
                "body": await request.read(),
                "peer": peer,
            }
        )

    async def ok(request: web.Request) -> web.Response:
        await record(request)
        return web.Response(text="status: healthy\nversion: 1.2.3\n")

    async def status(request: web.Request) -> web.Response:
        await record(request)
        return web.Response(status=int(request.match_info["code"]), text="x")

    async def redirect(request: web.Request) -> web.Response:
        await record(request)
        raise web.HTTPFound(request.query.get("to", "/ok"))

    async def loop(request: web.Request) -> web.Response:
        await record(request)
        raise web.HTTPFound("/loop")

    async def slow(request: web.Request) -> web.StreamResponse:
        await record(request)
        await asyncio.sleep(float(request.query.get("head", 0)))
        resp = web.StreamResponse()
        resp.content_type = "text/plain"
        await resp.prepare(request)
        await resp.write(b"first ")
        await asyncio.sleep(float(request.query.get("body", 0)))
        await resp.write(b"last\n")
        await resp.write_eof()
        return resp

    async def auth(request: web.Request) -> web.Response:
        await record(request)
        if request.headers.get("Authorization") != f"Basic {TOKEN}":
            return web.Response(status=401, text="who are you?")
        return web.Response(text="welcome")

    async def gzipped(request: web.Request) -> web.Response:
        await record(request)
        resp = web.Response(text="status: healthy\n" + "padding " * 2000)
        resp.enable_compression(web.ContentCoding.gzip)
        return resp

    async def see_other(request: web.Request) -> web.Response:
        await record(request)
        raise web.HTTPSeeOther("/ok")

    async def redirect_code(request: web.Request) -> web.Response:
        await record(request)
        location = request.query.get("to", "/ok")
        return web.Response(status=int(request.match_info["code"]), headers={"Location": location})

    app = web.Application()
    app.router.add_route("*", "/ok", ok)
    app.router.add_route("*", "/r/{code}", redirect_code)
    app.router.add_get("/gzip", gzipped)
    app.router.add_post("/see-other", see_other)
    app.router.add_get("/status/{code}", status)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/loop", loop)
    app.router.add_get("/slow", slow)
    app.router.add_get("/auth", auth)
    return app


@pytest.fixture
async def server() -> Any:
    seen = Seen()
    async with http_server(app_for(seen)) as (host, port):
        yield seen, f"http://{host}:{port}"
