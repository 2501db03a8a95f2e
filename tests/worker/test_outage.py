"""Invariants 7-9: MySQL outages, Redis restarts (with and without AOF), and eviction."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from asyncmy.pool import Pool
from redis.asyncio import Redis
from redis.exceptions import OutOfMemoryError

from counter_svc.connections import open_mysql, open_redis, open_single
from counter_svc.counters import Outcome, now_ms
from counter_svc.settings import Settings
from sync_worker.drain import Drainer
from sync_worker.worker import Worker
from tests.faults import FaultProxy, private_redis
from tests.helpers import (
    Load,
    WorkerProcess,
    add_users,
    counters_of,
    increment,
    insert_users,
    keys_of,
    mysql_counters,
    redis_counters,
    running_app,
    settle,
    worker_settings,
)

pytestmark = pytest.mark.slow


class HttpLoad:
    """PUT increments through the API, counting 200s per user and any other answer."""

    def __init__(self, client: httpx.AsyncClient, ids: list[int]) -> None:
        self.client = client
        self.ids = ids
        self.acked: dict[int, int] = {}
        self.other: dict[int, int] = {}

    async def run(self, total: int, concurrency: int = 8) -> None:
        queue = iter(range(total))

        async def lane() -> None:
            for n in queue:
                user_id = self.ids[n % len(self.ids)]
                response = await self.client.put(f"/api/v1/users/{user_id}/increment")
                if response.status_code == 200:
                    self.acked[user_id] = self.acked.get(user_id, 0) + 1
                else:
                    self.other[response.status_code] = self.other.get(response.status_code, 0) + 1

        await asyncio.gather(*(lane() for _ in range(concurrency)))


async def test_mysql_outage_api_keeps_counting_and_backlog_drains(
    redis: Redis, mysql: Pool, settings: Settings
) -> None:
    """MySQL cut for seconds: hot increments still answer 200, the worker backs off without
    exiting, then drains the backlog; MySQL = Redis = number of 200s."""
    with FaultProxy(settings.mysql_host, settings.mysql_port) as proxy:
        via_proxy = replace(settings, mysql_port=proxy.port)
        ws = worker_settings(via_proxy, interval_seconds=0.2)
        worker = WorkerProcess(ws)
        try:
            async with running_app(via_proxy) as client:
                ids = []
                for n in range(20):
                    created = await client.post("/api/v1/users", json={"username": f"o{n}"})
                    assert created.status_code == 201, created.text
                    ids.append(created.json()["data"]["id"])
                load = HttpLoad(client, ids)
                await load.run(1_000)
                proxy.block()
                during = HttpLoad(client, ids)
                started = time.monotonic()
                while time.monotonic() - started < 3:
                    await during.run(200)
                refused = await client.post("/api/v1/users", json={"username": "late"})
                # One more failed drain after the last outage increment: its claim holds
                # values that exist nowhere else but in Redis.
                failures = worker.count('"drain_failed"')
                await worker.await_count('"drain_failed"', failures + 1, within=10)
                proxy.restore()
                # Only half the users are counted again: the others' outage-time values
                # reach MySQL only if the worker kept its failed claims. A failing pass stops
                # after the first buckets, so the users left alone are those of the lowest.
                by_bucket = sorted(ids, key=lambda i: i % settings.buckets)
                after = HttpLoad(client, by_bucket[10:])
                await after.run(1_000)
            await settle(redis, settings, within=30)
            assert worker.proc.poll() is None
        finally:
            worker.kill()
    assert during.other == {}
    assert sum(during.acked.values()) >= 200
    assert refused.status_code == 503
    assert "retry-after" in refused.headers
    expected = {
        i: load.acked.get(i, 0) + during.acked.get(i, 0) + after.acked.get(i, 0) for i in ids
    }
    assert await redis_counters(redis, settings, ids) == expected
    assert await mysql_counters(mysql) == expected


async def test_lag_counts_claimed_batches_while_mysql_is_down(
    redis: Redis, mysql: Pool, settings: Settings
) -> None:
    """MySQL unreachable: a failed pass has moved every dirty id to inflight, yet the lag
    still reports the oldest unsynced increment, not 0; once MySQL is back it drops to 0."""
    # One bucket, one batch: the first failed claim takes them all.
    ids = await insert_users(mysql, [settings.buckets * n for n in range(1, 6)])
    counters = counters_of(redis, settings)
    k = keys_of(settings)
    for user_id in ids:
        await increment(counters, mysql, user_id)
        # Dirty for two minutes: the increments MySQL has not seen are that old.
        await redis.zadd(k.dirty(k.bucket(user_id)), {str(user_id): now_ms() - 120_000}, xx=True)
    with FaultProxy(settings.mysql_host, settings.mysql_port) as proxy:
        proxy.block()
        pool = await open_mysql(replace(settings, mysql_port=proxy.port), minsize=0)
        try:
            worker = Worker(worker_settings(settings), redis, pool)
            assert not await worker.run_pass(force=True)
            lag_down = worker.metrics.lag._value.get()
            backlog_down = worker.metrics.backlog._value.get()
            inflight_down = worker.metrics.inflight._value.get()
            proxy.restore()
            assert await worker.run_pass(force=True)
        finally:
            pool.close()
            await pool.wait_closed()
    assert (backlog_down, inflight_down) == (0, 5)  # all claimed: dirty alone would say 0
    assert lag_down >= 120
    assert worker.metrics.lag._value.get() == 0
    assert await mysql_counters(mysql) == dict.fromkeys(ids, 1)


async def _redis_restart_loss(
    tmp_path: Path, mysql: Pool, settings: Settings, appendonly: bool
) -> tuple[int, int, int, float]:
    """Count under load, SIGKILL the private Redis mid-load, restart it from its files, let
    the worker drain. Returns (acknowledged, lost, unsynced at the kill, traffic per s)."""
    with private_redis(tmp_path, appendonly=appendonly) as server:
        own = replace(settings, redis_url=server.url)
        client = open_redis(own)
        ids = await add_users(mysql, 50)
        load = Load(counters_of(client, own), mysql, ids)
        worker = WorkerProcess(worker_settings(own, interval_seconds=0.5, lease_seconds=2.0))
        try:
            traffic = asyncio.create_task(load.run(6_000, concurrency=8, pause=0.003))
            started = time.monotonic()
            await asyncio.sleep(1.5)
            server.kill()  # returns once the process is gone, without yielding to the loop
            elapsed = time.monotonic() - started
            # Replies Redis sent before it died may still sit unread in the sockets; let the
            # lanes read them (they count as acknowledged), and let a batch committing as
            # Redis died land in MySQL.
            await asyncio.sleep(0.3)
            acked_at_kill = sum(load.acked.values())
            rate = acked_at_kill / elapsed
            synced_at_kill = sum((await mysql_counters(mysql)).values())
            await asyncio.to_thread(server.start)
            await traffic
            await settle(client, own, within=30)
        finally:
            worker.kill()
        final_mysql = await mysql_counters(mysql)
        final_redis = await redis_counters(client, own, ids)
        await client.aclose()
    acked = sum(load.acked.values())
    assert final_redis == final_mysql  # whatever survived, the two agree again
    return acked, acked - sum(final_mysql.values()), acked_at_kill - synced_at_kill, rate


@pytest.mark.single_redis(reason="kills and restarts a private redis-server")
async def test_redis_sigkill_with_aof_loses_at_most_a_second(
    tmp_path: Path, mysql: Pool, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """AOF everysec, Redis SIGKILLed under load: the loss is within one second of traffic."""
    acked, lost, unsynced, rate = await _redis_restart_loss(tmp_path, mysql, settings, True)
    with capsys.disabled():
        print(
            f"\n[redis AOF everysec, SIGKILL] acknowledged {acked}, lost {lost} "
            f"({lost / rate:.2f} s of traffic at {rate:.0f}/s); unsynced at kill {unsynced}"
        )
    assert 0 <= lost <= rate * 1.0


@pytest.mark.single_redis(reason="kills and restarts a private redis-server")
async def test_redis_sigkill_without_persistence_loses_only_unsynced(
    tmp_path: Path, mysql: Pool, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """No persistence: Redis comes back empty, counters reseed from MySQL; the loss is at
    most what was acknowledged but not yet synced when it died."""
    acked, lost, unsynced, rate = await _redis_restart_loss(tmp_path, mysql, settings, False)
    with capsys.disabled():
        print(
            f"\n[redis without persistence, SIGKILL] acknowledged {acked}, lost {lost}; "
            f"unsynced at kill {unsynced} ({unsynced / rate:.2f} s of traffic at {rate:.0f}/s)"
        )
    assert 0 <= lost <= unsynced


@contextlib.asynccontextmanager
async def capped_redis(
    tmp_path: Path, settings: Settings, maxmemory: str
) -> AsyncIterator[tuple[Settings, Redis]]:
    """A private Redis at `maxmemory` with volatile-lru, as deployed; the settings and a
    client for it."""
    extra = ("--maxmemory", maxmemory, "--maxmemory-policy", "volatile-lru")
    with private_redis(tmp_path, appendonly=False, extra=extra) as server:
        own = replace(settings, redis_url=server.url)
        client = open_single(own)
        try:
            yield own, client
        finally:
            await client.aclose()


@pytest.mark.single_redis(reason="a private redis-server at maxmemory")
async def test_volatile_lru_evicts_only_idle_counters(
    tmp_path: Path, mysql: Pool, settings: Settings
) -> None:
    """Under maxmemory with volatile-lru, flushed idle counters are evicted, never dirty ones."""
    async with capped_redis(tmp_path, settings, "4mb") as (own, client):
        counters = counters_of(client, own)
        ids = await add_users(mysql, 300)
        load = Load(counters, mysql, ids)
        await load.run(600, concurrency=8)  # dirty, no TTL
        # Synced idle counters, as the worker leaves them: each carries the idle TTL.
        for start in range(10_000, 90_000, 2_000):
            pipe = client.pipeline(transaction=False)
            for user_id in range(start, start + 2_000):
                pipe.set(keys_of(own).counter(user_id), 1, px=own.idle_ttl_seconds * 1000)
            await pipe.execute()
        info = await client.info("stats")
        survivors = await redis_counters(client, own, ids)
        drainer = Drainer(client, mysql, keys_of(own))
        assert await drainer.drain_all(4) == []
    assert info["evicted_keys"] > 0
    assert survivors == load.expected()
    assert await mysql_counters(mysql) == load.expected()


@pytest.mark.single_redis(reason="a private redis-server at maxmemory")
async def test_a_full_redis_still_drains_and_then_counts_again(
    tmp_path: Path, mysql: Pool, settings: Settings
) -> None:
    """The worker fell behind until Redis reached maxmemory holding only dirty counters,
    which have no TTL and cannot be evicted: increments are refused. The worker must still
    drain them all (its scripts may use memory to free it), and the idle TTLs it sets
    make room, so increments work again without anyone stepping in."""
    async with capped_redis(tmp_path, settings, "3mb") as (own, client):
        counters = counters_of(client, own)
        drainer = Drainer(client, mysql, keys_of(own))
        await drainer.buckets.load()  # as a running worker did at start, before Redis filled
        ids = await add_users(mysql, 30_000)
        acked: dict[int, int] = {}
        for user_id in ids:
            try:
                await counters.increment(user_id, seed=0)
            except OutOfMemoryError:
                break
            acked[user_id] = 1
        else:
            pytest.fail("Redis never reached maxmemory")
        refused_at = user_id
        assert await drainer.drain_all(4) == []
        synced = await mysql_counters(mysql)
        again = await counters.increment(refused_at, seed=0)
    assert len(acked) > 1_000
    assert synced == {i: acked.get(i, 0) for i in ids}
    assert again == (Outcome.OK, 1)
