"""Invariant 12: when Redis lost increments that MySQL already has (a failover to a
replica that lagged, a Redis restored from an older AOF), the next drain of each such
counter raises it to MySQL's value: MySQL never goes back, Redis and MySQL agree again,
and later increments count on from MySQL's value instead of repeating old answers."""

from __future__ import annotations

import pytest
from asyncmy.pool import Pool
from redis.asyncio import Redis

from counter_svc.counters import Counters
from counter_svc.settings import Settings
from sync_worker.drain import Drainer
from tests.helpers import add_users, increment, keys_of, mysql_counters, redis_counters


async def behind_by_two(
    redis: Redis, mysql: Pool, counters: Counters, drainer: Drainer, settings: Settings
) -> int:
    """A user counted to 10 and synced; then Redis goes back to 6, as a replica that had
    not yet received increments 7 to 10 would be after a failover, and counts twice more
    (answers 7 and 8, repeating earlier ones). Redis holds 8, MySQL 10."""
    (user_id,) = await add_users(mysql, 1)
    for _ in range(10):
        await increment(counters, mysql, user_id)
    await drainer.drain_bucket(keys_of(settings).bucket(user_id))
    assert (await mysql_counters(mysql))[user_id] == 10
    await redis.set(keys_of(settings).counter(user_id), 6)  # the promoted replica's value
    assert await increment(counters, mysql, user_id) == 7
    assert await increment(counters, mysql, user_id) == 8
    return user_id


async def test_a_counter_behind_mysql_is_raised_by_the_next_drain(
    redis: Redis, mysql: Pool, counters: Counters, drainer: Drainer, settings: Settings
) -> None:
    user_id = await behind_by_two(redis, mysql, counters, drainer, settings)
    await drainer.drain_bucket(keys_of(settings).bucket(user_id))
    assert (await mysql_counters(mysql))[user_id] == 10, "MySQL never goes back"
    assert int(await redis.get(keys_of(settings).counter(user_id)) or 0) == 10
    assert drainer.metrics.repaired._value.get() == 1
    # Counting on from MySQL's value, and the counter gets its idle TTL once synced.
    assert await increment(counters, mysql, user_id) == 11
    await drainer.drain_bucket(keys_of(settings).bucket(user_id))
    assert (await mysql_counters(mysql))[user_id] == 11
    assert await redis.pttl(keys_of(settings).counter(user_id)) > 0


async def test_a_replayed_repair_raises_nothing_twice(
    redis: Redis, mysql: Pool, counters: Counters, drainer: Drainer, settings: Settings
) -> None:
    """The worker dies after raising the counter, before cleanup: the batch comes back
    from `inflight` holding MySQL's value, so the next drain raises nothing again."""
    user_id = await behind_by_two(redis, mysql, counters, drainer, settings)
    bucket = keys_of(settings).bucket(user_id)
    batch = await drainer.claim(bucket)
    assert batch is not None
    written = await drainer.write(batch.values)
    assert written.behind == {user_id: 10}
    await drainer._repair(bucket, batch, written.behind)  # ...and the worker dies here
    await drainer.drain_bucket(bucket)
    assert int(await redis.get(keys_of(settings).counter(user_id)) or 0) == 10
    assert (await mysql_counters(mysql))[user_id] == 10
    assert await redis.hlen(keys_of(settings).inflight(bucket)) == 0


async def test_a_stale_batch_of_a_stalled_worker_raises_nothing(
    redis: Redis, mysql: Pool, counters: Counters, drainer: Drainer, settings: Settings
) -> None:
    """A worker that stalled past its lease writes its old claim after a peer wrote a
    newer one: MySQL is ahead of it, but `inflight` no longer holds its values, so nothing
    is raised (Redis lost nothing)."""
    (user_id,) = await add_users(mysql, 1)
    bucket = keys_of(settings).bucket(user_id)
    for _ in range(3):
        await increment(counters, mysql, user_id)
    stale = await drainer.claim(bucket)  # the stalled worker's claim: 3
    assert stale is not None
    await drainer.drain_bucket(bucket)  # a peer flushes that leftover (3)...
    for _ in range(2):
        await increment(counters, mysql, user_id)
    await drainer.drain_bucket(bucket)  # ...and a newer claim (5)
    written = await drainer.write(stale.values)  # the stalled worker wakes up
    assert written.behind == {user_id: 5}
    await drainer.finish(bucket, stale, written)
    assert int(await redis.get(keys_of(settings).counter(user_id)) or 0) == 5
    assert (await mysql_counters(mysql))[user_id] == 5


@pytest.mark.parametrize("lost", [1, 9])
async def test_a_whole_bucket_behind_agrees_after_one_drain(
    redis: Redis,
    mysql: Pool,
    counters: Counters,
    drainer: Drainer,
    settings: Settings,
    lost: int,
) -> None:
    """Many counters lost `lost` increments each (the dirty set too, as on a replica
    that lagged): once they are counted again, one drain brings every one back."""
    k = keys_of(settings)
    ids = await add_users(mysql, 20)
    for user_id in ids:
        for _ in range(10):
            await increment(counters, mysql, user_id)
    for b in {k.bucket(i) for i in ids}:
        await drainer.drain_bucket(b)
    pipe = redis.pipeline(transaction=False)
    for user_id in ids:
        pipe.set(k.counter(user_id), 10 - lost)  # no TTL, not dirty: as replicated long ago
    await pipe.execute()
    for user_id in ids:
        assert await increment(counters, mysql, user_id) == 11 - lost
    for b in {k.bucket(i) for i in ids}:
        await drainer.drain_bucket(b)
    assert await redis_counters(redis, settings, ids) == dict.fromkeys(ids, 10)
    mysql_values = await mysql_counters(mysql)
    assert [mysql_values[i] for i in ids] == [10] * len(ids)
    assert [await increment(counters, mysql, i) for i in ids] == [11] * len(ids)
