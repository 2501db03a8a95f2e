"""Auto-pipelining: the script calls that request handlers make in one event-loop tick go
to Redis together, as one pipeline.

Under load many requests reach their Redis call in the same tick. One at a time, each
checks a connection out of the pool, writes its command and waits for its own reply:
a round trip and two syscalls per request. Batched, they share one checkout, one write
and (mostly) one read. The commands and their order in Redis are the same; each script
still runs atomically; each caller gets its own reply or its own error.

One difference to weigh: when a connection drops mid-batch, every call of the batch
fails (the API answers 503) although Redis may have run some of them, as a single call
could too. Clients that retry on 503 send an Idempotency-Key and stay exact.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError

# Bounds the work (and the reply) of one pipeline; a larger batch becomes several.
MAX_BATCH = 256

_Call = tuple[AsyncScript, list[Any], "asyncio.Future[Any]"]


class AutoPipeline:
    """Runs `EVALSHA` calls, batching those made in the same loop tick into one pipeline."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._pending: list[_Call] = []
        self._sending: set[asyncio.Task[None]] = set()

    async def run(self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """The script's reply, as `script(keys=keys, args=args)` would return it."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append((script, [len(keys), *keys, *args], future))
        return await future

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        for start in range(0, len(pending), MAX_BATCH):
            task = asyncio.create_task(self._send(pending[start : start + MAX_BATCH]))
            self._sending.add(task)  # a reference, so the task is not collected mid-way
            task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[_Call]) -> None:
        try:
            await self._deliver(batch)
        finally:
            # Never leave a caller waiting forever (a reply count that does not match, or
            # this task cancelled at shutdown): whoever is still waiting gets an error.
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(RedisConnectionError("no reply from Redis"))

    async def _deliver(self, batch: list[_Call]) -> None:
        try:
            if len(batch) == 1:
                replies = [await self._evalsha(batch[0][0], batch[0][1])]
            else:
                replies = await self._pipeline(batch)
        except Exception as e:
            # The connection failed: no reply for anyone in the batch.
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(copy.copy(e))
            return
        for (_, _, future), reply in zip(batch, replies, strict=True):
            if future.done():  # the caller was cancelled meanwhile
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def _pipeline(self, batch: list[_Call]) -> list[Any]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for script, argv, _ in batch:
                pipe.evalsha(script.sha, *argv)
            replies: list[Any] = await pipe.execute(raise_on_error=False)
        # A Redis that restarted (or flushed its scripts) answers NOSCRIPT without running
        # the script: load it and run those calls again.
        for i, reply in enumerate(replies):
            if isinstance(reply, NoScriptError):
                try:
                    replies[i] = await self._evalsha(batch[i][0], batch[i][1])
                except Exception as e:
                    replies[i] = e
        return replies

    async def _evalsha(self, script: AsyncScript, argv: list[Any]) -> Any:
        try:
            return await self.redis.evalsha(script.sha, *argv)
        except NoScriptError:
            script.sha = await self.redis.script_load(script.script)
            return await self.redis.evalsha(script.sha, *argv)
