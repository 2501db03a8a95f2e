"""The drain check behind a safe suspend and delete, on the real Redis and MySQL: it
says Drained only when every bucket's dirty and inflight are empty, refuses (with the
reason its condition reports) when MySQL is unreachable, and never deletes a key."""

from __future__ import annotations

import asyncio

from asyncmy.pool import Pool
from redis.asyncio import Redis

from counter_svc.counters import Counters
from counter_svc.settings import Settings
from sync_worker.drain import Drainer
from tests.faults import FaultProxy, free_port
from tests.helpers import add_users, increment, keys_of, mysql_counters, redis_counters
from usercounter_operator.drain import (
    Backlog,
    MySQLTarget,
    judge,
    mysql_reachable,
    read_backlog,
    wait_drained,
)


def _mysql(settings: Settings, port: int | None = None) -> MySQLTarget:
    return MySQLTarget(
        host=settings.mysql_host,
        port=port or settings.mysql_port,
        user=settings.mysql_user,
        password=settings.mysql_password,
        timeout_seconds=1.0,
    )


async def _backlog_of(redis: Redis, counters: Counters, mysql: Pool, n: int) -> list[int]:
    ids = await add_users(mysql, n)
    for user_id in ids:
        for _ in range(3):
            assert await increment(counters, mysql, user_id) is not None
    return ids


async def test_empty_buckets_are_drained_at_once(redis: Redis, settings: Settings) -> None:
    async def never() -> bool:
        raise AssertionError("MySQL is tested only when the backlog does not empty")

    verdict = await wait_drained(redis, keys_of(settings), limit_seconds=5, mysql_check=never)
    assert verdict.drained
    assert verdict.reason == "Drained"
    assert verdict.backlog == Backlog(0, 0, ())


async def test_read_backlog_counts_dirty_and_inflight_per_bucket(
    redis: Redis, settings: Settings, counters: Counters, mysql: Pool, drainer: Drainer
) -> None:
    keys = keys_of(settings)
    ids = await _backlog_of(redis, counters, mysql, 10)
    backlog = await read_backlog(redis, keys)
    assert (backlog.dirty, backlog.inflight) == (10, 0)
    assert set(backlog.pending_buckets) == {keys.bucket(i) for i in ids}
    # A claimed batch not yet written (a worker that died mid-batch) is still pending.
    bucket = keys.bucket(ids[0])
    assert await drainer.claim(bucket) is not None
    claimed = await read_backlog(redis, keys)
    assert claimed.inflight >= 1
    assert claimed.dirty + claimed.inflight == 10
    assert bucket in claimed.pending_buckets
    assert not claimed.empty


async def test_waits_while_a_worker_drains_then_says_drained(
    redis: Redis, settings: Settings, counters: Counters, mysql: Pool, drainer: Drainer
) -> None:
    ids = await _backlog_of(redis, counters, mysql, 50)

    async def worker() -> None:
        await asyncio.sleep(0.3)  # the check sees a backlog first
        while not (await read_backlog(redis, keys_of(settings))).empty:
            assert await drainer.drain_all(concurrency=4) == []

    async def reachable() -> bool:
        return await mysql_reachable(_mysql(settings))

    task = asyncio.create_task(worker())
    first = await read_backlog(redis, keys_of(settings))
    assert first.dirty == 50
    verdict = await wait_drained(
        redis, keys_of(settings), limit_seconds=20, mysql_check=reachable, poll=0.05
    )
    await task
    assert verdict.drained
    assert await mysql_counters(mysql) == dict.fromkeys(ids, 3)


async def test_mysql_unreachable_refuses_to_finish_and_keeps_every_key(
    redis: Redis, settings: Settings, counters: Counters, mysql: Pool
) -> None:
    ids = await _backlog_of(redis, counters, mysql, 5)
    keys = keys_of(settings)
    before = await redis_counters(redis, settings, ids)
    with FaultProxy(settings.mysql_host, settings.mysql_port) as proxy:
        proxy.block()
        target = _mysql(settings, proxy.port)
        verdict = await wait_drained(
            redis,
            keys,
            limit_seconds=0.5,
            mysql_check=lambda: mysql_reachable(target),
            poll=0.1,
        )
    assert not verdict.drained
    assert verdict.reason == "MySQLUnreachable"
    assert "MySQL does not answer" in verdict.message
    assert "nothing is removed" in verdict.message
    assert verdict.backlog.dirty == 5
    # nothing was deleted: the counters and the dirty entries are all still there
    assert await redis_counters(redis, settings, ids) == before
    assert (await read_backlog(redis, keys)).dirty == 5


async def test_a_backlog_no_worker_drains_times_out_with_mysql_up(
    redis: Redis, settings: Settings, counters: Counters, mysql: Pool
) -> None:
    await _backlog_of(redis, counters, mysql, 3)
    target = _mysql(settings)
    verdict = await wait_drained(
        redis,
        keys_of(settings),
        limit_seconds=0.3,
        mysql_check=lambda: mysql_reachable(target),
        poll=0.05,
    )
    assert (verdict.drained, verdict.reason) == (False, "DrainTimedOut")
    assert verdict.backlog.dirty == 3


async def test_mysql_reachable_logs_in_for_real(settings: Settings) -> None:
    assert await mysql_reachable(_mysql(settings))
    assert not await mysql_reachable(_mysql(settings, free_port()))
    wrong = MySQLTarget(settings.mysql_host, settings.mysql_port, "no_such_user", "x", 1.0)
    assert not await mysql_reachable(wrong)


def test_judge_before_the_deadline_keeps_waiting() -> None:
    pending = Backlog(2, 1, (3,))
    assert judge(pending, elapsed=1, timeout=10, mysql_ok=None).reason == "Draining"
    assert judge(pending, elapsed=11, timeout=10, mysql_ok=True).reason == "DrainTimedOut"
    assert judge(pending, elapsed=11, timeout=10, mysql_ok=False).reason == "MySQLUnreachable"
    assert judge(Backlog(0, 0, ()), elapsed=99, timeout=10, mysql_ok=False).drained
