"""Collapse concurrent identical calls in one process into one."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    """Concurrent `do(key, fn)` calls share the result (or error) of the first one."""

    def __init__(self) -> None:
        self._calls: dict[Hashable, asyncio.Future[T]] = {}

    async def do(self, key: Hashable, fn: Callable[[], Awaitable[T]]) -> T:
        pending = self._calls.get(key)
        if pending is not None:
            # shield: one waiter being cancelled must not cancel the shared call.
            return await asyncio.shield(pending)
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._calls[key] = future
        try:
            result = await fn()
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as e:
            future.set_exception(e)
            # Waiters re-raise it; mark it retrieved so a lone call logs no warning.
            future.exception()
            raise
        else:
            future.set_result(result)
            return result
        finally:
            del self._calls[key]
