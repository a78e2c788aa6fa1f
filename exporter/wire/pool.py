"""Kept-alive connections, lent to one probe at a time and closed when idle too long."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from exporter.wire.connection import Conn

# Like common clients (aiohttp: 15 s): a server's idle timeout is usually longer, and a
# connection kept for a target that went away (a reload, a redirect elsewhere) must not be held.
_IDLE_SECONDS = 15.0
_IDLE_PER_KEY = 2
_IDLE_MAX = 256


class Idle:
    """Kept-alive connections by origin and TLS settings, each lent to one probe at a time.

    The key holds the SSL context itself, not its id(): a freed context's id can come back for
    one with other settings, which must not get a connection verified under the old ones.
    """

    def __init__(self) -> None:
        # Oldest first in each list.
        self._conns: dict[Any, list[tuple[float, Conn]]] = {}
        self._count = 0
        self._swept = time.monotonic()

    def take(self, key: Any) -> Conn | None:
        conns = self._conns.get(key)
        cutoff = time.monotonic() - _IDLE_SECONDS
        while conns:
            since, conn = conns.pop()
            self._count -= 1
            if since >= cutoff and conn.idle_and_open():
                return conn
            conn.close()
        return None

    def put(self, key: Any, conn: Conn) -> None:
        now = time.monotonic()
        conns = self._conns.setdefault(key, [])
        conns.append((now, conn))
        self._count += 1
        if len(conns) > _IDLE_PER_KEY:
            conns.pop(0)[1].close()
            self._count -= 1
        # The whole pool is swept at most once a second (or when over its cap), not on every
        # probe: keep-alive probes put a connection back each time.
        if self._count > _IDLE_MAX or now - self._swept >= 1.0:
            self._sweep(now)

    def _sweep(self, now: float) -> None:
        """Close what idled too long, then the oldest beyond the total."""
        self._swept = now
        cutoff = now - _IDLE_SECONDS
        for key in list(self._conns):
            conns = self._conns[key]
            while conns and conns[0][0] < cutoff:
                conns.pop(0)[1].close()
                self._count -= 1
            if not conns:
                del self._conns[key]
        while self._count > _IDLE_MAX:
            oldest = min(self._conns, key=lambda k: self._conns[k][0][0])
            conns = self._conns[oldest]
            conns.pop(0)[1].close()
            self._count -= 1
            if not conns:
                del self._conns[oldest]

    def close(self) -> None:
        for conns in self._conns.values():
            for _, conn in conns:
                conn.close()
        self._conns.clear()
        self._count = 0


@asynccontextmanager
async def idle_pool() -> AsyncIterator[Idle]:
    pool = Idle()
    try:
        yield pool
    finally:
        pool.close()
