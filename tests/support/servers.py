"""Real HTTP servers that count what reaches them: how many requests, when, how many at once."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer


class CountingServer:
    """A real HTTP server; `/t/{name}` answers after `delay[name]` and is counted per name.

    A request counts as running from arrival until the handler returns. The handler returns
    before the response is written, so a client can never see a response (and start its next
    request) while the server still counts the previous one: overlaps it reports are real.
    """

    def __init__(self) -> None:
        self.count: collections.Counter[str] = collections.Counter()
        self.active: collections.Counter[str] = collections.Counter()
        self.max_active: collections.Counter[str] = collections.Counter()
        self.total_active = 0
        self.max_total_active = 0
        self.arrivals: dict[str, list[float]] = collections.defaultdict(list)
        self.delay: dict[str, float] = {}
        self.default_delay = 0.0
        self.port = 0

    async def handle(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        loop = asyncio.get_running_loop()
        self.arrivals[name].append(loop.time())
        self.count[name] += 1
        self.active[name] += 1
        self.max_active[name] = max(self.max_active[name], self.active[name])
        self.total_active += 1
        self.max_total_active = max(self.max_total_active, self.total_active)
        try:
            deadline = loop.time() + self.delay.get(name, self.default_delay)
            # Polls instead of one sleep: a probe cancelled by its timeout closes the connection,
            # and a request whose client left must stop counting as running.
            while loop.time() < deadline:
                if request.transport is None or request.transport.is_closing():
                    break
                await asyncio.sleep(min(0.01, deadline - loop.time()))
            return web.Response(text="ok\n")
        finally:
            self.active[name] -= 1
            self.total_active -= 1

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/t/{name}"


StartServer = Callable[[], Awaitable[CountingServer]]


@pytest.fixture
def counting_server(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> StartServer:
    async def start() -> CountingServer:
        srv = CountingServer()
        app = web.Application()
        app.router.add_get("/t/{name}", srv.handle)
        server = await aiohttp_server(app, host="127.0.0.1")
        srv.port = server.port
        return srv

    return start
