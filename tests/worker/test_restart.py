"""A worker restarted after a kill -9 takes its own leases back at once.

The dead worker held up to SYNC_CONCURRENCY bucket leases, each with a claimed batch in
`inflight`. With a stable SYNC_WORKER_ID (Kubernetes: the pod name) the restarted process
holds the same lease token, so those buckets drain on its first pass; with a new token they
wait for the lease to expire, and their lag grows by the lease on every crash.
"""

from __future__ import annotations

import time

import pytest
from asyncmy.pool import Pool
from redis.asyncio import Redis

from counter_svc.settings import Settings
from tests.helpers import (
    Load,
    WorkerProcess,
    add_users,
    counters_of,
    keys_of,
    mysql_counters,
    settle,
    worker_settings,
)

pytestmark = pytest.mark.slow

LEASE_SECONDS = 30.0


async def crash_holding_leases(redis: Redis, mysql: Pool, settings: Settings) -> Load:
    """Counts for users in every bucket, then a worker that SIGKILLs itself right after its
    first claim: its leases and that claim stay behind."""
    ids = await add_users(mysql, 2 * settings.buckets)
    load = Load(counters_of(redis, settings), mysql, ids)
    await load.run(1_000, concurrency=8)
    ws = worker_settings(
        settings, lease_seconds=LEASE_SECONDS, batch_size=5, worker_id="sync-worker-0"
    )
    first = WorkerProcess(ws, SYNC_FAULT="after_claim:exit")
    try:
        assert await first.wait(within=20) == -9
    finally:
        first.kill()
    k = keys_of(settings)
    leased = [b for b in range(k.buckets) if await redis.exists(k.lease(b))]
    assert leased, "the dead worker left its leases behind"
    assert any([await redis.hlen(k.inflight(b)) for b in leased]), "and a claimed batch"
    return load


async def test_restart_with_the_same_worker_id_drains_its_leased_buckets_at_once(
    redis: Redis, mysql: Pool, settings: Settings
) -> None:
    load = await crash_holding_leases(redis, mysql, settings)
    ws = worker_settings(settings, lease_seconds=LEASE_SECONDS, worker_id="sync-worker-0")
    started = time.monotonic()
    second = WorkerProcess(ws)
    try:
        # Well inside the 30 s lease: only a worker holding the same token can be done.
        await settle(redis, settings, within=LEASE_SECONDS / 3)
        caught_up = time.monotonic() - started
    finally:
        second.kill()
    print(f"\n[restart, same SYNC_WORKER_ID] caught up {caught_up:.2f} s after the restart")
    assert load.failed == 0
    assert await mysql_counters(mysql) == load.expected()


async def test_restart_with_another_worker_id_waits_for_the_lease(
    redis: Redis, mysql: Pool, settings: Settings
) -> None:
    """The contrast, and what a worker without SYNC_WORKER_ID does: the leased buckets are
    stranded until the lease expires (other buckets drain as usual)."""
    await crash_holding_leases(redis, mysql, settings)
    k = keys_of(settings)
    ws = worker_settings(settings, lease_seconds=LEASE_SECONDS, worker_id="sync-worker-1")
    second = WorkerProcess(ws)
    try:
        await second.await_count('"event":"batch"', at_least=1, within=20)
        with pytest.raises(TimeoutError):
            await settle(redis, settings, within=3)
        stranded = [b for b in range(k.buckets) if await redis.hlen(k.inflight(b))]
        ttl = min([await redis.pttl(k.lease(b)) for b in stranded])
    finally:
        second.kill()
    print(
        f"\n[restart, new SYNC_WORKER_ID] {len(stranded)} buckets stranded"
        f" for {ttl / 1000:.1f} s more"
    )
    assert stranded
    assert ttl > 10_000
