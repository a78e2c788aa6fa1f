"""Long-lived resources (sessions, pools, SDK clients): opened lazily, closed in one place."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Hashable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from typing import Any, TypeVar, cast

T = TypeVar("T")


class Resources:
    """Owns every long-lived client the probes share; `aclose` releases them all."""

    def __init__(self, max_blocking_threads: int = 8) -> None:
        self._stack = AsyncExitStack()
        self._items: dict[Hashable, Any] = {}
        self._locks: dict[Hashable, asyncio.Lock] = {}
        self._closed = False
        # Blocking SDKs (docker) run here, never on the event loop; the bound keeps a hung
        # endpoint from eating every thread.
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_blocking_threads, thread_name_prefix="blocking"
        )

    async def shared(
        self, key: Hashable, factory: Callable[[], AbstractAsyncContextManager[T]]
    ) -> T:
        """Return the resource for `key`, entering `factory()` the first time it is asked for."""
        try:
            return cast(T, self._items[key])
        except KeyError:
            pass
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            if key not in self._items:
                if self._closed:
                    raise RuntimeError("resources are closed")
                self._items[key] = await self._stack.enter_async_context(factory())
        return cast(T, self._items[key])

    async def run_blocking(self, func: Callable[[], T], timeout: float) -> T:  # noqa: ASYNC109
        """Run a blocking call in the bounded pool; stop waiting after `timeout`.

        A thread cannot be cancelled, so on timeout the caller must treat the client it used as
        suspect; the thread finishes in the background.
        """
        future = asyncio.get_running_loop().run_in_executor(self.executor, func)
        # After a timeout nobody awaits the future; retrieve its outcome so a late failure is
        # not logged as "exception was never retrieved".
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        async with asyncio.timeout(timeout):
            return await asyncio.shield(future)

    async def aclose(self) -> None:
        self._closed = True
        try:
            await self._stack.aclose()
        finally:
            self._items.clear()
            self.executor.shutdown(wait=False, cancel_futures=True)
