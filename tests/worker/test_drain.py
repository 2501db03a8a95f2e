"""The drain of one bucket against the real MySQL and Redis, in-process."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import replace
from pathlib import Path

import pytest
from asyncmy.pool import Pool
from redis.asyncio import Redis

from counter_svc.connections import open_redis
from counter_svc.counters import Counters
from counter_svc.settings import Settings
from sync_worker.drain import Drainer
from sync_worker.metrics import Metrics
from sync_worker.worker import Worker
from tests.faults import private_redis
from tests.helpers import (
    Load,
    add_users,
    increment,
    insert_users,
    keys_of,
    mysql_counters,
    redis_counters,
    worker_settings,
)


async def dirty_in_bucket_zero(
    mysql: Pool, settings: Settings, counters: Counters, count: int
) -> list[int]:
    """`count` users, all in bucket 0, each incremented once: one bucket's backlog."""
    ids = await insert_users(mysql, [settings.buckets * n for n in range(1, count + 1)])
    for user_id in ids:
        await increment(counters, mysql, user_id)
    return ids


async def test_drain_writes_redis_values_to_mysql(
    drainer: Drainer, counters: Counters, mysql: Pool, redis: Redis, settings: Settings
) -> None:
    """After a pass, MySQL holds every counter Redis acknowledged; dirty sets are empty."""
    ids = await add_users(mysql, 5, counter=10)
    for n, user_id in enumerate(ids):
        for _ in range(n + 1):
            await increment(counters, mysql, user_id)
    assert await drainer.drain_all(4) == []
    assert await mysql_counters(mysql) == {i: 10 + n + 1 for n, i in enumerate(ids)}
    k = keys_of(settings)
    assert sum([await redis.zcard(k.dirty(b)) for b in range(k.buckets)]) == 0


async def test_bucket_drains_in_batches_within_one_pass(
    redis: Redis, mysql: Pool, settings: Settings, counters: Counters
) -> None:
    """A bucket with more dirty ids than a batch is drained in several batches in one pass."""
    ids = await dirty_in_bucket_zero(mysql, settings, counters, 25)
    small = Drainer(redis, mysql, keys_of(settings), batch_size=3)
    assert await small.drain_bucket(0) == 25
    assert small.metrics.batches._value.get() == 9
    assert await mysql_counters(mysql) == dict.fromkeys(ids, 1)


async def test_every_finished_batch_counts_as_progress_for_liveness(
    redis: Redis, mysql: Pool, settings: Settings, counters: Counters
) -> None:
    """Inside one long pass, each finished batch refreshes the mark that /livez reads, so a
    long healthy drain of a big backlog is not taken for a stuck worker."""
    await dirty_in_bucket_zero(mysql, settings, counters, 10)
    metrics = Metrics()
    ages: list[float] = []

    async def slow_batches(step: str) -> None:
        if step == "before_claim":
            ages.append(metrics.progress_age())
        elif step == "after_claim":
            await asyncio.sleep(0.1)

    small = Drainer(
        redis, mysql, keys_of(settings), batch_size=1, metrics=metrics, hook=slow_batches
    )
    started = time.monotonic()
    assert await small.drain_bucket(0) == 10
    assert time.monotonic() - started >= 1.0
    assert len(ages) == 11  # ten batches, then the claim that finds the bucket empty
    assert max(ages[1:]) < 0.1  # each batch had just ended; the pass had run for seconds


@pytest.mark.parametrize("emptied_by", ["written", "row_gone", "user_deleted"])
async def test_claim_time_lives_exactly_as_long_as_inflight(
    emptied_by: str,
    drainer: Drainer,
    counters: Counters,
    redis: Redis,
    mysql: Pool,
    settings: Settings,
) -> None:
    """A claim records when its oldest id became dirty (the lag reads it), and the record
    goes when inflight empties: written to MySQL, row found gone, or user deleted."""
    (user_id,) = await add_users(mysql, 1)
    await increment(counters, mysql, user_id)
    k = keys_of(settings)
    b = k.bucket(user_id)
    dirty_since = await redis.zscore(k.dirty(b), user_id)
    assert dirty_since is not None
    batch = await drainer.claim(b)
    assert batch is not None
    assert await redis.get(k.inflight_since(b)) == str(int(dirty_since)).encode()
    if emptied_by == "user_deleted":
        await counters.deleted(user_id)
    else:
        if emptied_by == "row_gone":
            async with mysql.acquire() as conn, conn.cursor() as cur:
                await cur.execute("DELETE FROM users WHERE id = %s", (user_id,))
        written = await drainer.write(batch.values)
        assert written.missing == ({user_id} if emptied_by == "row_gone" else set())
        await drainer.finish(b, batch, written)
    assert await redis.hlen(k.inflight(b)) == 0
    assert await redis.exists(k.inflight_since(b)) == 0


async def test_exact_under_load_with_worker_running(
    redis: Redis, mysql: Pool, settings: Settings, counters: Counters
) -> None:
    """100 users, 20,000 increments while the worker drains: MySQL = Redis = acknowledged."""
    ids = await add_users(mysql, 100)
    worker = Worker(worker_settings(settings, batch_size=50), redis, mysql)
    load = Load(counters, mysql, ids)
    done = asyncio.Event()

    async def drain_until_done() -> None:
        while not done.is_set():
            await worker.run_pass()
            await asyncio.sleep(0.02)

    drainer_task = asyncio.create_task(drain_until_done())
    await load.run(20_000, concurrency=20)
    done.set()
    await drainer_task
    assert await worker.run_pass(force=True)  # "one interval passes"
    assert sum(load.acked.values()) == 20_000
    assert await mysql_counters(mysql) == load.expected()
    assert await redis_counters(redis, settings, ids) == load.expected()
    assert worker.metrics.batches._value.get() > 1


async def test_leftover_inflight_is_flushed_before_new_claims(
    drainer: Drainer, counters: Counters, mysql: Pool, redis: Redis, settings: Settings
) -> None:
    """A claim left in inflight by a crash reaches MySQL on the next drain."""
    stranded, later = await insert_users(mysql, [1, 1 + settings.buckets])
    for _ in range(3):
        await increment(counters, mysql, stranded)
    k = keys_of(settings)
    bucket = k.bucket(stranded)
    assert await drainer.claim(bucket) is not None  # the worker "dies" here
    await increment(counters, mysql, later)  # new work in the same bucket
    await drainer.drain_bucket(bucket)
    assert await mysql_counters(mysql) == {stranded: 3, later: 1}
    assert await redis.hlen(k.inflight(bucket)) == 0
    assert await redis.zcard(k.dirty(bucket)) == 0


async def test_stale_batch_replayed_never_lowers_mysql(
    drainer: Drainer, counters: Counters, mysql: Pool
) -> None:
    """Writing an old batch after a newer one leaves MySQL at the newer, higher value."""
    (user_id,) = await add_users(mysql, 1)
    await increment(counters, mysql, user_id)
    await drainer.write({user_id: 7})
    await drainer.write({user_id: 3})  # a stalled worker's late batch
    assert (await mysql_counters(mysql))[user_id] == 7


async def test_mysql_counter_never_decreases_while_two_drainers_race(
    redis: Redis, mysql: Pool, settings: Settings, counters: Counters
) -> None:
    """Sampled during a race of two drainers and a load, no MySQL counter ever goes down."""
    ids = await add_users(mysql, 10)
    a = Drainer(redis, mysql, keys_of(settings), batch_size=3, lease_seconds=5)
    b = Drainer(redis, mysql, keys_of(settings), batch_size=3, lease_seconds=5)
    load = Load(counters, mysql, ids)
    seen: dict[int, int] = {}
    decreases: list[tuple[int, int, int]] = []
    done = asyncio.Event()

    async def sample() -> None:
        while not done.is_set():
            for user_id, value in (await mysql_counters(mysql)).items():
                if value < seen.get(user_id, 0):
                    decreases.append((user_id, seen[user_id], value))
                seen[user_id] = value
            await asyncio.sleep(0.005)

    async def drain(d: Drainer) -> None:
        while not done.is_set():
            await d.drain_all(2)

    tasks = [asyncio.create_task(f) for f in (sample(), drain(a), drain(b))]
    await load.run(2_000, concurrency=10)
    done.set()
    await asyncio.gather(*tasks)
    await a.drain_all(2)
    assert decreases == []
    assert await mysql_counters(mysql) == load.expected()


async def test_deleted_during_drain_is_not_recreated_and_key_is_cleaned(
    redis: Redis, mysql: Pool, settings: Settings, counters: Counters
) -> None:
    """A user deleted between claim and write stays deleted; its counter key is removed."""
    ids = await add_users(mysql, 2)
    victim, other = ids
    for user_id in ids:
        await increment(counters, mysql, user_id)

    async def delete_after_claim(step: str) -> None:
        if step == "after_claim":
            # The MySQL half of a delete only: an API that died before its Redis cleanup.
            async with mysql.acquire() as conn, conn.cursor() as cur:
                await cur.execute("DELETE FROM users WHERE id = %s", (victim,))

    drainer = Drainer(redis, mysql, keys_of(settings), hook=delete_after_claim)
    assert await drainer.drain_all(4) == []
    assert await mysql_counters(mysql) == {other: 1}
    k = keys_of(settings)
    assert await redis.exists(k.counter(victim)) == 0
    assert await redis.exists(k.gone(victim)) == 1
    assert await redis.hlen(k.inflight(k.bucket(victim))) == 0
    assert await increment(counters, mysql, victim) is None  # the API answers 404
    assert await redis.exists(k.counter(other)) == 1


async def test_api_delete_racing_a_drain_is_never_resurrected(
    redis: Redis, mysql: Pool, settings: Settings, counters: Counters
) -> None:
    """A full API delete (row, then tombstone) between claim and commit: nothing comes back."""
    (victim,) = await add_users(mysql, 1)
    for _ in range(3):
        await increment(counters, mysql, victim)

    async def delete_after_claim(step: str) -> None:
        if step == "after_claim":
            async with mysql.acquire() as conn, conn.cursor() as cur:
                await cur.execute("DELETE FROM users WHERE id = %s", (victim,))
            await counters.deleted(victim)

    drainer = Drainer(redis, mysql, keys_of(settings), hook=delete_after_claim)
    assert await drainer.drain_all(4) == []
    await drainer.drain_all(4)
    assert await mysql_counters(mysql) == {}
    assert await redis.exists(keys_of(settings).counter(victim)) == 0


async def test_live_user_key_kept_when_value_unchanged(
    drainer: Drainer, counters: Counters, mysql: Pool, redis: Redis, settings: Settings
) -> None:
    """Replaying a batch that changes no row must not take a live user's key for deleted."""
    (user_id,) = await add_users(mysql, 1)
    await increment(counters, mysql, user_id)
    bucket = keys_of(settings).bucket(user_id)
    batch = await drainer.claim(bucket)
    assert batch is not None
    await drainer.write(batch.values)  # committed; the worker "dies" before cleanup
    await drainer.drain_bucket(bucket)  # the leftover is replayed: no row changes
    assert await redis.get(keys_of(settings).counter(user_id)) == b"1"
    assert await increment(counters, mysql, user_id) == 2


async def test_flushed_idle_counter_gets_the_idle_ttl(
    drainer: Drainer, counters: Counters, mysql: Pool, redis: Redis, settings: Settings
) -> None:
    """Once flushed and not touched since, a counter carries the idle TTL."""
    (user_id,) = await add_users(mysql, 1)
    await increment(counters, mysql, user_id)
    key = keys_of(settings).counter(user_id)
    assert await redis.ttl(key) == -1  # dirty: no TTL
    await drainer.drain_all(4)
    ttl = await redis.ttl(key)
    assert settings.idle_ttl_seconds - 5 <= ttl <= settings.idle_ttl_seconds


async def test_counter_incremented_after_claim_never_gets_the_ttl(
    redis: Redis, mysql: Pool, settings: Settings, counters: Counters
) -> None:
    """An increment between claim and cleanup keeps the counter without TTL and dirty."""
    (user_id,) = await add_users(mysql, 1)
    await increment(counters, mysql, user_id)

    async def increment_after_commit(step: str) -> None:
        if step == "after_commit":
            await increment(counters, mysql, user_id)

    drainer = Drainer(redis, mysql, keys_of(settings), hook=increment_after_commit)
    bucket = keys_of(settings).bucket(user_id)
    await drainer.drain_batch(bucket)
    k = keys_of(settings)
    assert await redis.ttl(k.counter(user_id)) == -1
    assert await redis.zscore(k.dirty(bucket), user_id) is not None
    drainer.hook = Drainer(redis, mysql, k).hook
    await drainer.drain_bucket(bucket)
    assert (await mysql_counters(mysql))[user_id] == 2
    assert await redis.ttl(k.counter(user_id)) > 0


async def test_bucket_leased_by_another_worker_is_skipped(
    drainer: Drainer, counters: Counters, mysql: Pool, redis: Redis, settings: Settings
) -> None:
    """While a peer holds a bucket's lease, this worker leaves the bucket alone."""
    (user_id,) = await add_users(mysql, 1)
    await increment(counters, mysql, user_id)
    k = keys_of(settings)
    bucket = k.bucket(user_id)
    await redis.set(k.lease(bucket), "peer", px=5000)
    assert await drainer.drain_bucket(bucket) == 0
    assert await redis.get(k.lease(bucket)) == b"peer"
    await redis.delete(k.lease(bucket))
    assert await drainer.drain_bucket(bucket) == 1
    assert await redis.exists(k.lease(bucket)) == 0


async def test_lease_is_renewed_during_a_long_drain(
    redis: Redis, mysql: Pool, settings: Settings, counters: Counters
) -> None:
    """A drain longer than a third of the lease renews it, so no peer steps in."""
    await dirty_in_bucket_zero(mysql, settings, counters, 4)
    k = keys_of(settings)
    ttls: list[int] = []

    async def slow(step: str) -> None:
        if step == "after_finish":
            await asyncio.sleep(0.5)
            ttls.append(await redis.pttl(k.lease(0)))

    drainer = Drainer(redis, mysql, k, batch_size=1, lease_seconds=1.2, hook=slow)
    assert await drainer.drain_bucket(0) == 4
    # Unrenewed, the lease would be gone by the third batch (4 x 0.5 s > 1.2 s).
    assert min(ttls) > 400


async def test_failed_write_backs_off_and_keeps_the_claim(
    redis: Redis, mysql: Pool, settings: Settings, counters: Counters
) -> None:
    """A failed write keeps the batch in inflight and the next pass waits (back-off)."""
    (user_id,) = await add_users(mysql, 1)
    await increment(counters, mysql, user_id)
    fail = True

    async def fail_once(step: str) -> None:
        if step == "mid_batch" and fail:
            raise RuntimeError("boom")

    worker = Worker(worker_settings(settings, interval_seconds=0.2), redis, mysql, hook=fail_once)
    with contextlib.suppress(Exception):
        assert not await worker.run_pass()
    k = keys_of(settings)
    assert await redis.hget(k.inflight(k.bucket(user_id)), str(user_id)) == b"1"
    assert (await mysql_counters(mysql))[user_id] == 0
    assert not await worker.run_pass()  # still backing off: nothing tried
    fail = False
    for _ in range(150):  # up to 3 s: the back-off is at most 0.2 s here
        if await worker.run_pass():
            break
        await asyncio.sleep(0.02)
    assert (await mysql_counters(mysql))[user_id] == 1
    assert worker.metrics.errors.labels("mysql")._value.get() == 1


@pytest.mark.single_redis(reason="counts FCALLs in one private server's commandstats")
async def test_a_pass_leaves_idle_buckets_alone(
    mysql: Pool, settings: Settings, tmp_path: Path
) -> None:
    """One pipelined look finds the buckets with work: a pass over 64 buckets of which one
    is dirty calls the worker's functions for that one bucket only (lease, claim, finish,
    release), not four times 64."""
    with private_redis(tmp_path, appendonly=False) as server:
        own = replace(settings, redis_url=server.url)
        client = open_redis(own)
        try:
            drainer = Drainer(client, mysql, keys_of(own))
            await drainer.buckets.load()
            (user_id,) = await add_users(mysql, 1)
            assert await increment(Counters.from_settings(client, own), mysql, user_id) == 1
            await client.config_resetstat()
            assert await drainer.drain_all(4) == []
            calls = (await client.info("commandstats"))["cmdstat_fcall"]["calls"]
        finally:
            await client.aclose()
    assert (await mysql_counters(mysql))[user_id] == 1
    print(f"\n[drain pass, 64 buckets, 1 dirty] {calls} function calls")
    assert calls <= 6, f"{calls} function calls for one dirty bucket"
