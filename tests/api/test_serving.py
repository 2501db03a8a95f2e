"""The two batching layers of the hot path: one socket write per HTTP response
(counter_svc/serving.py) and one Redis pipeline per event-loop tick (pipelining.py)."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from counter_svc.connections import open_single
from counter_svc.counters import Counters, Outcome
from counter_svc.functions import Function, Library
from counter_svc.keys import Keys
from counter_svc.pipelining import AutoPipeline
from counter_svc.serving import FLUSH_BYTES, CoalescingTransport
from counter_svc.settings import Settings
from tests.faults import free_port


class FakeTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0


async def test_writes_of_one_tick_leave_in_one_write() -> None:
    """Headers and body written in the same tick reach the socket as one write, in order."""
    raw = FakeTransport()
    t: Any = CoalescingTransport(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
    t.write(b"HTTP/1.1 200 OK\r\n\r\n")
    t.write(b"")
    t.write(b'{"ok":1}')
    assert raw.writes == []
    await asyncio.sleep(0)
    assert raw.writes == [b'HTTP/1.1 200 OK\r\n\r\n{"ok":1}']


async def test_close_sends_what_is_held_first() -> None:
    """A response written just before close still goes out, before the close."""
    raw = FakeTransport()
    t: Any = CoalescingTransport(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
    t.write(b"bye")
    t.close()
    assert raw.writes == [b"bye"]
    assert raw.closed
    await asyncio.sleep(0)
    assert raw.writes == [b"bye"]


async def test_a_large_body_is_not_held_back() -> None:
    """Past FLUSH_BYTES held, the bytes are written at once."""
    raw = FakeTransport()
    t: Any = CoalescingTransport(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
    t.write(b"x" * FLUSH_BYTES)
    assert raw.writes == [b"x" * FLUSH_BYTES]


def counters_for(settings: Settings, redis: Redis) -> Counters:
    return Counters(redis, Keys.from_settings(settings), 60, 60, 10, 60)


async def test_concurrent_increments_share_one_pipeline(
    settings: Settings, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Increments made in one tick go to Redis as one batch and each gets its own value."""
    batches: list[int] = []
    # Every batch goes through _execute, the single-server and the cluster class alike.
    pipeline = type(counters_for(settings, redis)._calls)
    original = pipeline._execute

    async def spy(self: AutoPipeline, batch: list[Any]) -> list[Any]:
        batches.append(len(batch))
        return await original(self, batch)

    monkeypatch.setattr(pipeline, "_execute", spy)
    counters = counters_for(settings, redis)
    await counters.increment(7, seed=0)
    results = await asyncio.gather(*(counters.increment(7) for _ in range(20)))
    assert batches == [1, 20]
    assert sorted(value for _, value in results if value is not None) == list(range(2, 22))
    assert {outcome for outcome, _ in results} == {Outcome.OK}


async def test_an_error_in_a_batch_is_only_its_callers(settings: Settings, redis: Redis) -> None:
    """A script error fails only the call that caused it, not the rest of the batch."""
    counters = counters_for(settings, redis)
    await counters.increment(1, seed=0)
    await redis.hset(counters.keys.counter(2), "not", "a counter")
    ok, bad = await asyncio.gather(
        counters.increment(1), counters.increment(2, seed=0), return_exceptions=True
    )
    assert ok == (Outcome.OK, 2)
    assert isinstance(bad, ResponseError)


async def test_a_function_unknown_to_redis_is_loaded_and_run(redis: Redis) -> None:
    """ "Function not found" (a new primary without the library, a Redis restarted empty)
    loads the library and runs the calls, alone or batched; nothing runs twice."""
    echo = Function("echo", "redis.call('INCR', KEYS[1])\nreturn tonumber(ARGV[1])")
    library = Library(f"test{secrets.token_hex(4)}", [echo])
    pipe = AutoPipeline(redis, library)
    key = f"uctest:{{{secrets.token_hex(4)}}}:runs"
    try:
        single = await pipe.run(echo, [key], [5])
        await redis.function_delete(library.name)  # as if Redis had forgotten it
        batch = await asyncio.gather(*(pipe.run(echo, [key], [i]) for i in range(3)))
        assert single == 5
        assert batch == [0, 1, 2]
        assert int(await redis.get(key) or 0) == 4  # each call ran exactly once
    finally:
        await redis.delete(key)
        await redis.function_delete(library.name)


async def test_a_lost_connection_fails_every_call_of_the_batch(settings: Settings) -> None:
    """With Redis unreachable each caller gets a connection error, none hangs."""
    from dataclasses import replace

    gone = open_single(replace(settings, redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    try:
        counters = counters_for(settings, gone)
        results = await asyncio.wait_for(
            asyncio.gather(*(counters.increment(i) for i in range(5)), return_exceptions=True),
            timeout=10,
        )
    finally:
        await gone.aclose()
    assert all(isinstance(r, RedisConnectionError) for r in results)
