"""Invariant 3: a worker killed at any step loses nothing and counts nothing twice."""

from __future__ import annotations

import asyncio

import pytest
from asyncmy.pool import Pool
from redis.asyncio import Redis

from counter_svc.settings import Settings
from sync_worker.faults import STEPS
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


async def _crash_then_recover(
    redis: Redis, mysql: Pool, settings: Settings, fault: str, kill: bool
) -> None:
    # Cold users are counted before the worker starts and never again, so a claim of theirs
    # that the crash strands is not masked by newer values; hot users share their buckets
    # and are counted while the worker crashes and while its successor recovers.
    cold = await add_users(mysql, 20, counter=100)
    hot = await add_users(mysql, 20, start=settings.buckets + 1, counter=100)
    counters = counters_of(redis, settings)
    cold_load = Load(counters, mysql, cold)
    await cold_load.run(1_000, concurrency=8)
    hot_load = Load(counters, mysql, hot)
    ws = worker_settings(settings, interval_seconds=0.05, batch_size=5, lease_seconds=1.0)
    first = WorkerProcess(ws, SYNC_FAULT=fault)
    traffic = asyncio.create_task(hot_load.run(3_000, concurrency=8, pause=0.002))
    step, action = fault.split("@")[0].split(":")
    try:
        await first.await_line(f"sync_worker fault: {step} {action}", within=20)
        if kill:
            first.kill()  # SIGKILL, frozen exactly at the step
        assert await first.wait(within=10) == -9
    finally:
        first.kill()
    second = WorkerProcess(ws)  # picks up once the dead worker's leases run out
    try:
        await traffic
        await settle(redis, settings, within=30)
    finally:
        second.kill()
    expected = cold_load.expected(100) | hot_load.expected(100)
    assert cold_load.failed == hot_load.failed == 0
    assert await redis_counters(redis, settings, expected) == expected
    assert await mysql_counters(mysql) == expected


@pytest.mark.parametrize("step", STEPS)
async def test_sigkill_at_each_step_loses_and_doubles_nothing(
    redis: Redis, mysql: Pool, settings: Settings, step: str
) -> None:
    """Frozen at the step, SIGKILLed, then replaced: MySQL = Redis = acknowledged."""
    await _crash_then_recover(redis, mysql, settings, f"{step}:pause@3", kill=True)


async def test_worker_crashing_itself_after_commit_loses_nothing(
    redis: Redis, mysql: Pool, settings: Settings
) -> None:
    """A worker that dies right after a commit, before cleanup: its batch is not doubled."""
    await _crash_then_recover(redis, mysql, settings, "after_commit:exit@5", kill=False)
