"""One instance per test process of a session resource, however many modules import its fixture.

A fixture imported into several test modules (`from tests.docker import *`) is a separate
fixture per module to pytest: a session-scoped one is set up once per module that uses it. For a
service on a fixed socket or port that means two daemons on one address, and the first teardown
pulling the socket from under the other's finalizers. `shared(key, factory)` starts the resource
on first use and stops it when the last fixture instance using it is torn down.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any, TypeVar

T = TypeVar("T")

_LIVE: dict[str, list[Any]] = {}  # key -> [value, users, exit stack]


@contextlib.contextmanager
def shared(key: str, factory: Callable[[], AbstractContextManager[T]]) -> Iterator[T]:
    entry = _LIVE.get(key)
    if entry is None:
        stack = contextlib.ExitStack()
        try:
            value = stack.enter_context(factory())
        except BaseException:
            stack.close()
            raise
        entry = _LIVE[key] = [value, 0, stack]
    entry[1] += 1
    try:
        yield entry[0]
    finally:
        entry[1] -= 1
        if entry[1] == 0:
            del _LIVE[key]
            entry[2].close()
