"""Invariant 4: several workers over the same buckets, while increments flow, stay exact."""

from __future__ import annotations

import asyncio

import pytest
from asyncmy.pool import Pool
from redis.asyncio import Redis

from counter_svc.connections import open_redis
from counter_svc.settings import Settings
from tests.helpers import (
    Load,
    WorkerProcess,
    add_users,
    counters_of,
    mysql_counters,
    redis_counters,
    settle,
    worker_settings,
)

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("workers", [2, 3])
async def test_concurrent_workers_are_exact(
    redis: Redis, mysql: Pool, settings: Settings, workers: int
) -> None:
    """N worker processes and two API-like clients: MySQL = Redis = acknowledged, per user."""
    ids = await add_users(mysql, 100)
    # Small batches, short interval and short leases: the workers contend for every bucket.
    ws = worker_settings(settings, interval_seconds=0.02, batch_size=3, lease_seconds=1.0)
    procs = [WorkerProcess(ws) for _ in range(workers)]
    second_api = open_redis(settings)
    try:
        loads = [
            Load(counters_of(redis, settings), mysql, ids),
            Load(counters_of(second_api, settings), mysql, ids),
        ]
        for p in procs:
            await p.await_line('"event":"started"', within=20)
        # Paced, so the load spans seconds of concurrent drains, not one pass.
        await asyncio.gather(*(load.run(5_000, concurrency=10, pause=0.004) for load in loads))
        await settle(redis, settings, within=30)
        batches = [sum('"event":"batch"' in line for line in p.lines) for p in procs]
    finally:
        for p in procs:
            p.kill()
        await second_api.aclose()
    expected = {i: loads[0].acked.get(i, 0) + loads[1].acked.get(i, 0) for i in ids}
    assert sum(expected.values()) == 10_000
    assert await redis_counters(redis, settings, ids) == expected
    assert await mysql_counters(mysql) == expected
    assert all(batches), f"every worker took part: {batches}"
