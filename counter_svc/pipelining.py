"""Auto-pipelining: the function calls that request handlers make in one event-loop tick
go to Redis together, as one pipeline.

Under load many requests reach their Redis call in the same tick. One at a time, each
checks a connection out of the pool, writes its command and waits for its own reply:
a round trip and two syscalls per request. Batched, they share one checkout, one write
and (mostly) one read. The commands and their order in Redis are the same; each function
still runs atomically; each caller gets its own reply or its own error.

With `ack_replicas` N > 0 (REDIS_ACK_REPLICAS), a batch holding a write ends with
`WAIT N timeout` on the same connection: its writes are answered only once N replicas
have them, else they fail with `NotReplicated` ("may have counted"). One WAIT covers the
whole batch, so durable acknowledgements cost one extra command per batch, not per call.

In a Redis Cluster (`ClusterAutoPipeline`) the calls of a tick are grouped by the node
that serves their keys' slot (all keys of a call share one hash tag), one pipeline per
node, sent concurrently: a node that fails or times out fails only its own calls.

One difference to weigh: when a connection drops mid-batch, every call of the batch
fails (the API answers 503) although Redis may have run some of them, as a single call
could too. Clients that retry on 503 send an Idempotency-Key and stay exact.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Sequence
from typing import Any

from redis.asyncio.cluster import ClusterNode, PipelineCommand, RedisCluster
from redis.exceptions import AskError, MovedError, RedisError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from counter_svc.connections import REDIS_ERRORS, RedisClient
from counter_svc.functions import Function, Library, is_missing

# Bounds the work (and the reply) of one pipeline; a larger batch becomes several.
MAX_BATCH = 256

_Call = tuple[Function, list[Any], "asyncio.Future[Any]"]


class NotReplicated(RedisError):
    """A write ran on the primary, but fewer replicas than REDIS_ACK_REPLICAS confirmed it
    within REDIS_ACK_TIMEOUT_MS: a failover could still lose it."""


class AutoPipeline:
    """Runs `FCALL`s of one library, batching those made in the same loop tick."""

    def __init__(
        self, redis: RedisClient, library: Library, ack_replicas: int = 0, ack_timeout_ms: int = 100
    ) -> None:
        self.redis = redis
        self.library = library
        self.ack_replicas = ack_replicas
        self.ack_timeout_ms = ack_timeout_ms
        self._pending: list[_Call] = []
        self._sending: set[asyncio.Task[None]] = set()

    async def run(self, function: Function, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """The function's reply, as `FCALL` returns it."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        argv = [self.library.qualified(function), len(keys), *keys, *args]
        self._pending.append((function, argv, future))
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
            replies = await self._execute(batch)
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

    async def _execute(self, batch: list[_Call]) -> list[Any]:
        wait = self.ack_replicas > 0 and any(f.writes for f, _, _ in batch)
        if len(batch) == 1 and not wait:
            return [await self._single(batch[0][1])]
        replies = await self._pipeline(batch, wait)
        again = [i for i, r in enumerate(replies) if is_missing(r)]
        if again:
            # Redis has no copy of the library (new, or restarted empty): those calls did
            # not run. Load it and send them again, with their own WAIT; if that fails,
            # only they fail, the others keep the answers they got.
            try:
                await self.library.load(self.redis)
                retried = await self._pipeline([batch[i] for i in again], wait)
            except Exception as e:
                retried = [copy.copy(e) for _ in again]
            for i, reply in zip(again, retried, strict=True):
                replies[i] = reply
        return replies

    async def _pipeline(self, calls: list[_Call], wait: bool) -> list[Any]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for _, argv, _ in calls:
                pipe.fcall(*argv)
            if wait:
                pipe.wait(self.ack_replicas, self.ack_timeout_ms)
            replies: list[Any] = await pipe.execute(raise_on_error=False)
        if wait:
            confirmed = replies.pop()
            if not isinstance(confirmed, int) or confirmed < self.ack_replicas:
                message = (
                    f"{confirmed} of {self.ack_replicas} replicas confirmed the write "
                    f"within {self.ack_timeout_ms} ms"
                )
                # Only answers that promise a write become "may have counted"; reads, cache
                # fills, misses and calls that did not run keep their answers.
                replies = [
                    NotReplicated(message) if _promised(function, reply) else reply
                    for (function, _, _), reply in zip(calls, replies, strict=True)
                ]
        return replies

    async def _single(self, argv: list[Any]) -> Any:
        try:
            return await self.redis.fcall(*argv)
        except RedisError as e:
            if not is_missing(e):
                raise
        await self.library.load(self.redis)
        return await self.redis.fcall(*argv)


class ClusterAutoPipeline(AutoPipeline):
    """`AutoPipeline` on a Redis Cluster: one pipeline per node, sent concurrently. The
    redirections a reshard causes (MOVED, ASK, TRYAGAIN: the command did not run) are
    followed by redis-py, one command at a time; nothing that may have run is resent.

    With `ack_replicas` N > 0, a node's batch that holds a write is sent by this class
    straight to that node (`ClusterNode.execute_pipeline`: one connection, one write)
    and ends with `WAIT N timeout` on it. WAIT has no key, so only this addressing puts
    it on the connection that carried the writes; its count covers that node's writes of
    the batch, which fail with `NotReplicated` when it falls short. Redirected calls did
    not run: they are sent again to the node named, in a batch with its own WAIT."""

    def __init__(
        self,
        redis: RedisCluster,
        library: Library,
        ack_replicas: int = 0,
        ack_timeout_ms: int = 100,
    ) -> None:
        super().__init__(redis, library, ack_replicas, ack_timeout_ms)
        self.cluster = redis
        self._stale = False  # a node failed: read the slot table again
        self._refreshing = asyncio.Lock()

    async def _execute(self, batch: list[_Call]) -> list[Any]:
        await self.cluster.initialize()  # at start, or after redis-py asked for it
        if self._stale:
            async with self._refreshing:
                if self._stale:
                    await self.cluster.nodes_manager.initialize()
                    self._stale = False
        shards: dict[str, list[int]] = {}
        for i, (_, argv, _) in enumerate(batch):
            node = self.cluster.get_node_from_key(argv[2]) if argv[1] else None
            shards.setdefault(node.name if node else "", []).append(i)
        replies: list[Any] = [None] * len(batch)
        answers = await asyncio.gather(
            *(self._shard([batch[i][1] for i in calls]) for calls in shards.values())
        )
        for calls, answer in zip(shards.values(), answers, strict=True):
            for i, reply in zip(calls, answer, strict=True):
                replies[i] = reply
        return replies

    async def _shard(self, calls: list[list[Any]]) -> list[Any]:
        """The replies of one node's calls, errors included; never raises."""
        replies = await self._send_to_node(calls)
        if any(is_missing(r) for r in replies):
            # That node has no copy of the library (added by a reshard, or restarted
            # empty): none of those calls ran. Load it there and send them again.
            try:
                await self.library.load(self.cluster, calls[0][2])
            except REDIS_ERRORS as e:
                return [copy.copy(e) if is_missing(r) else r for r in replies]
            again = [i for i, r in enumerate(replies) if is_missing(r)]
            retried = await self._send_to_node([calls[i] for i in again])
            for i, reply in zip(again, retried, strict=True):
                replies[i] = reply
        return replies

    async def _send_to_node(self, calls: list[list[Any]]) -> list[Any]:
        if self.ack_replicas > 0 and calls[0][1] and self._any_write(calls):
            node = self.cluster.get_node_from_key(calls[0][2])
            if node is not None:
                return await self._send_with_wait(node, [(argv, False) for argv in calls])
        try:
            if len(calls) == 1:
                return [await self.cluster.fcall(*calls[0])]
            async with self.cluster.pipeline(transaction=False) as pipe:
                for argv in calls:
                    pipe.fcall(*argv)
                replies: list[Any] = await pipe.execute(raise_on_error=False)
        except REDIS_ERRORS as e:
            replies = [copy.copy(e) for _ in calls]
        self._note_failures(replies)
        return replies

    def _any_write(self, calls: list[list[Any]]) -> bool:
        return any(_function_of(self.library, argv[0]).writes for argv in calls)

    def _note_failures(self, replies: list[Any]) -> None:
        if any(isinstance(r, RedisConnectionError | RedisTimeoutError) for r in replies):
            # The node may be gone (a failover): read the slot table again before the
            # next batch, as redis-py does after a failed single command.
            self._stale = True

    async def _send_with_wait(
        self, node: ClusterNode, calls: list[tuple[list[Any], bool]], hops: int = 3
    ) -> list[Any]:
        """`calls` (each with whether it follows an ASK: ASKING goes just before it) and
        then WAIT, as one pipeline on one connection of `node`. Never raises."""
        commands: list[PipelineCommand] = []
        sent: list[PipelineCommand] = []
        for argv, asking in calls:
            if asking:
                commands.append(PipelineCommand(len(commands), "ASKING"))
            sent.append(PipelineCommand(len(commands), "FCALL", *argv))
            commands.append(sent[-1])
        wait = PipelineCommand(len(commands), "WAIT", self.ack_replicas, self.ack_timeout_ms)
        commands.append(wait)
        try:
            await node.execute_pipeline(commands)
        except RedisError as e:
            for c in commands:
                c.result = copy.copy(e)
        replies = [c.result for c in sent]
        self._note_failures(replies)
        confirmed = wait.result
        if not isinstance(confirmed, int) or confirmed < self.ack_replicas:
            error = NotReplicated(
                f"{confirmed} of {self.ack_replicas} replicas of {node.name} confirmed the "
                f"write within {self.ack_timeout_ms} ms"
            )
            # Writes that ran may or may not survive; reads keep their answers, and so
            # do calls that failed (redirected, no library, the connection lost).
            replies = [
                error if _promised(_function_of(self.library, argv[0]), reply) else reply
                for (argv, _), reply in zip(calls, replies, strict=True)
            ]
        redirected = [i for i, r in enumerate(replies) if _redirection(r)]
        if redirected and hops > 0:
            await self._follow(calls, replies, redirected, hops)
        return replies

    async def _follow(
        self,
        calls: list[tuple[list[Any], bool]],
        replies: list[Any],
        redirected: list[int],
        hops: int,
    ) -> None:
        """Send the redirected calls again (they did not run) where Redis said, each
        target node's share as one pipeline with its own WAIT; fills `replies`."""
        targets: dict[tuple[str, bool], tuple[ClusterNode, list[int]]] = {}
        for i in redirected:
            e = replies[i]
            argv = calls[i][0]
            if isinstance(e, MovedError):
                await self.cluster.nodes_manager.move_slot(e)
                node = self.cluster.get_node_from_key(argv[2])
                asking = False
            elif isinstance(e, AskError):
                node = self.cluster.nodes_manager.get_node(host=e.host, port=e.port)
                asking = True
            else:  # TRYAGAIN: a slot mid-migration; a moment later
                await asyncio.sleep(0.05)
                node = self.cluster.get_node_from_key(argv[2])
                asking = False
            if node is None:
                continue  # keeps its redirection error
            targets.setdefault((node.name, asking), (node, []))[1].append(i)
        answers = await asyncio.gather(
            *(
                self._send_with_wait(node, [(calls[i][0], asking) for i in idx], hops - 1)
                for (_, asking), (node, idx) in targets.items()
            )
        )
        for (_, idx), answer in zip(targets.values(), answers, strict=True):
            for i, reply in zip(idx, answer, strict=True):
                replies[i] = reply


def _redirection(reply: Any) -> bool:
    return isinstance(reply, MovedError | AskError | TryAgainError)


def make_pipeline(
    redis: RedisClient, library: Library, ack_replicas: int = 0, ack_timeout_ms: int = 100
) -> AutoPipeline:
    """The auto-pipeline for this kind of client."""
    if isinstance(redis, RedisCluster):
        return ClusterAutoPipeline(redis, library, ack_replicas, ack_timeout_ms)
    return AutoPipeline(redis, library, ack_replicas, ack_timeout_ms)


def _promised(function: Function, reply: Any) -> bool:
    return not isinstance(reply, Exception) and function.promised_write(reply)


def _function_of(library: Library, qualified: str) -> Function:
    return library.functions[qualified.removeprefix(f"{library.name}_")]
