"""Invariant 11: a seed read from MySQL never puts back a value older than one that was
acknowledged, synced and evicted while the read was under way.

Two API instances (replicas, each with its own pools and single flight) share MySQL and
Redis. Replica A misses and is held between its MySQL read and its seed; meanwhile B
counts, the worker syncs, and the counter, now carrying its idle TTL, is evicted. When A
goes on it must not seed the value it read: that would answer an acknowledged count again.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest
from asyncmy.pool import Pool
from redis.asyncio import Redis

from counter_svc.settings import Settings
from sync_worker.drain import Drainer
from tests.faults import wait_until
from tests.helpers import create_user, keys_of, mysql_counters, running_app, serving

Replicas = tuple[httpx.AsyncClient, httpx.AsyncClient, "Gate"]


class Gate:
    """The hook of replica A: holds the first request that reaches `after_mysql_read`."""

    def __init__(self) -> None:
        self.reached = asyncio.Event()
        self.release = asyncio.Event()
        self.armed = False

    async def __call__(self, step: str) -> None:
        if step == "after_mysql_read" and self.armed:
            self.armed = False
            self.reached.set()
            await asyncio.wait_for(self.release.wait(), 10)


@pytest.fixture
async def replicas(settings: Settings) -> AsyncIterator[Replicas]:
    async with AsyncExitStack() as stack:
        gate = Gate()
        a = await stack.enter_async_context(running_app(settings, hook=gate))
        b = await stack.enter_async_context(running_app(settings))
        yield a, b, gate


async def increment(client: httpx.AsyncClient, user_id: int) -> int:
    response = await client.put(f"/api/v1/users/{user_id}/increment")
    assert response.status_code == 200, response.text
    value: int = response.json()["data"]["counter"]
    return value


async def sync_and_evict(drainer: Drainer, redis: Redis, settings: Settings, user_id: int) -> None:
    """Drain the user's bucket, then evict the counter as `volatile-lru` may: only a
    counter that the drain gave its idle TTL can go."""
    k = keys_of(settings)
    await drainer.drain_bucket(k.bucket(user_id))
    assert await redis.pttl(k.counter(user_id)) > 0, "a synced counter carries the idle TTL"
    assert await redis.delete(k.counter(user_id)) == 1


async def user_at_four(
    b: httpx.AsyncClient, drainer: Drainer, redis: Redis, settings: Settings
) -> int:
    """A user whose 4 acknowledged increments are in MySQL and whose counter was evicted."""
    user_id = await create_user(b, "stale-seed")
    for expected in range(1, 5):
        assert await increment(b, user_id) == expected
    await sync_and_evict(drainer, redis, settings, user_id)
    return user_id


async def race(
    gate: Gate,
    held: Awaitable[int],
    meanwhile: Callable[[], Awaitable[None]],
) -> int:
    """Run `held` on replica A until it has read MySQL, run `meanwhile`, then let A go."""
    gate.armed = True
    task = asyncio.ensure_future(held)
    await asyncio.wait_for(gate.reached.wait(), 10)
    await meanwhile()
    assert not task.done(), "replica A must still be between its MySQL read and its seed"
    gate.release.set()
    return await asyncio.wait_for(task, 10)


async def test_cold_increment_never_reseeds_a_value_synced_and_evicted_meanwhile(
    replicas: Replicas, drainer: Drainer, redis: Redis, mysql: Pool, settings: Settings
) -> None:
    a, b, gate = replicas
    user_id = await user_at_four(b, drainer, redis, settings)

    async def b_counts_and_the_worker_syncs() -> None:
        assert await increment(b, user_id) == 5
        await sync_and_evict(drainer, redis, settings, user_id)

    answer = await race(gate, increment(a, user_id), b_counts_and_the_worker_syncs)

    assert answer == 6, "A read 4 from MySQL; seeding it would answer 5 a second time"
    await drainer.drain_bucket(keys_of(settings).bucket(user_id))
    assert (await mysql_counters(mysql))[user_id] == 6  # 6 acknowledged increments


@pytest.mark.parametrize("path", ["count", "get"])
async def test_cold_read_never_reseeds_a_value_synced_and_evicted_meanwhile(
    replicas: Replicas,
    drainer: Drainer,
    redis: Redis,
    mysql: Pool,
    settings: Settings,
    path: str,
) -> None:
    a, b, gate = replicas
    user_id = await user_at_four(b, drainer, redis, settings)

    async def read_on_a() -> int:
        url = f"/api/v1/users/{user_id}" + ("/count" if path == "count" else "")
        response = await a.get(url)
        assert response.status_code == 200, response.text
        value: int = response.json()["data"]["counter"]
        return value

    async def b_counts_and_the_worker_syncs() -> None:
        assert await increment(b, user_id) == 5
        await sync_and_evict(drainer, redis, settings, user_id)

    seen = await race(gate, read_on_a(), b_counts_and_the_worker_syncs)

    assert seen == 5, "the read answers the acknowledged value, not the one it read before"
    assert await increment(a, user_id) == 6  # counts on from 5, not from a re-seeded 4
    await drainer.drain_bucket(keys_of(settings).bucket(user_id))
    assert (await mysql_counters(mysql))[user_id] == 6


async def test_cold_increment_of_unknown_id_never_hides_a_user_created_meanwhile(
    replicas: Replicas, drainer: Drainer, redis: Redis, settings: Settings
) -> None:
    """A reads "no such row", B creates the user (its counter seeded with the idle TTL)
    and that counter is evicted: A's negative-cache entry would then make the new user
    404 on every replica (invariant 6). The create moved the generation, so A looks again."""
    a, b, gate = replicas
    k = keys_of(settings)
    first = await create_user(b, "before")  # ids are sequential: the next one is first + 1
    user_id = first + 1

    async def b_creates_and_the_counter_is_evicted() -> None:
        assert await create_user(b, "created-meanwhile") == user_id
        assert await redis.pttl(k.counter(user_id)) > 0
        assert await redis.delete(k.counter(user_id)) == 1

    assert await race(gate, increment(a, user_id), b_creates_and_the_counter_is_evicted) == 1
    assert await increment(b, user_id) == 2


async def test_two_api_processes_one_stalled_before_its_seed_stay_exact(
    drainer: Drainer, redis: Redis, mysql: Pool, settings: Settings, tmp_path: Path
) -> None:
    """The same race between two real API processes: A's first cold request waits 3 s after
    its MySQL read (`API_FAULT`, as a GC pause would), long enough for B to count, the
    worker to sync and the counter to be evicted."""
    fault = {"API_FAULT": "after_mysql_read:delay=3@1"}
    with (
        serving(settings, tmp_path / "a.log", **fault) as (url_a, _),
        serving(settings, tmp_path / "b.log") as (url_b, _),
    ):
        async with (
            httpx.AsyncClient(base_url=url_a, timeout=20) as a,
            httpx.AsyncClient(base_url=url_b, timeout=20) as b,
        ):
            user_id = await user_at_four(b, drainer, redis, settings)
            held = asyncio.ensure_future(increment(a, user_id))
            await asyncio.to_thread(
                wait_until,
                lambda: (
                    "counter_svc fault: after_mysql_read delay" in (tmp_path / "a.log").read_text()
                ),
                10,
                "replica A to reach its seed",
            )
            assert await increment(b, user_id) == 5
            await sync_and_evict(drainer, redis, settings, user_id)
            assert not held.done(), "A must still be between its MySQL read and its seed"
            assert await held == 6
    await drainer.drain_bucket(keys_of(settings).bucket(user_id))
    assert (await mysql_counters(mysql))[user_id] == 6


async def test_an_increment_gives_up_after_five_refused_seeds(
    settings: Settings, redis: Redis
) -> None:
    """A bucket that changes under every MySQL read (here: a bump after each one) refuses
    every seed: the increment reads MySQL five times, then answers 503 with Retry-After."""
    reads = 0

    async def bump_after_each_read(step: str) -> None:
        nonlocal reads
        reads += 1
        await redis.incr(keys_of(settings).generation(keys_of(settings).bucket(user_id)))

    async with running_app(settings, hook=bump_after_each_read) as client:
        user_id = await create_user(client, "contended")
        await redis.delete(keys_of(settings).counter(user_id))
        r = await client.put(f"/api/v1/users/{user_id}/increment")
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"] == "1"
    assert reads == 5
