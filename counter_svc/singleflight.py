"""Collapse concurrent identical calls in one process into one."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Hashable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    """Concurrent `do(key, fn)` calls share the result (or error) of one call of `fn`.

    The shared call runs in a task of its own: a caller that is cancelled (a request
    timeout, a client gone) stops waiting, but the others still get the answer."""

    def __init__(self) -> None:
        self._calls: dict[Hashable, asyncio.Task[T]] = {}

    async def do(self, key: Hashable, fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
        task = self._calls.get(key)
        if task is None:
            task = asyncio.create_task(fn())
            self._calls[key] = task
            task.add_done_callback(lambda t: self._done(key, t))
        return await asyncio.shield(task)

    def _done(self, key: Hashable, task: asyncio.Task[T]) -> None:
        if self._calls.get(key) is task:
            del self._calls[key]
        if not task.cancelled():
            # Retrieved here so that a call whose callers all left logs no warning.
            task.exception()
