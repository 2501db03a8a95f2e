"""Fixtures on the real MySQL/MariaDB and Redis servers.

Each test run gets its own database and Redis key prefix, so runs never collide with
each other or with a developer's data; both are removed at the end.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace

import asyncmy
import pytest
from asyncmy.pool import Pool
from redis.asyncio import Redis

from counter_svc.connections import migrate, mysql_kwargs, open_mysql, open_redis
from counter_svc.settings import Settings, load_config


@pytest.fixture(scope="session")
def base_settings() -> Iterator[Settings]:
    """Settings of this test run: a private database name and key prefix."""
    run = f"{os.getpid()}{secrets.token_hex(3)}"
    settings = replace(
        Settings.from_env(load_config(os.devnull)),
        mysql_database=f"uc_test_{run}",
        key_prefix=f"uct{run}",
        log_format="json",
    )
    yield settings
    _drop_run(settings)


def _drop_run(settings: Settings) -> None:
    import asyncio

    async def drop() -> None:
        conn = await asyncmy.connect(**mysql_kwargs(settings))
        async with conn.cursor() as cur:
            await cur.execute(f"DROP DATABASE IF EXISTS `{settings.mysql_database}`")
        conn.close()
        redis = open_redis(settings)
        await _delete_keys(redis, settings.key_prefix)
        await redis.aclose()

    asyncio.run(drop())


async def _delete_keys(redis: Redis, prefix: str) -> None:
    batch: list[bytes] = []
    async for key in redis.scan_iter(match=f"{prefix}:*", count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            await redis.delete(*batch)
            batch.clear()
    if batch:
        await redis.delete(*batch)


@pytest.fixture
async def settings(base_settings: Settings) -> AsyncIterator[Settings]:
    """The run's settings, with an empty users table and no keys under the prefix."""
    await migrate(base_settings)
    conn = await asyncmy.connect(**mysql_kwargs(base_settings, base_settings.mysql_database))
    async with conn.cursor() as cur:
        await cur.execute("DELETE FROM users")
    conn.close()
    redis = open_redis(base_settings)
    await _delete_keys(redis, base_settings.key_prefix)
    await redis.aclose()
    yield base_settings


@pytest.fixture
async def mysql(settings: Settings) -> AsyncIterator[Pool]:
    pool = await open_mysql(settings)
    yield pool
    pool.close()
    await pool.wait_closed()


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    client = open_redis(settings)
    yield client
    await client.aclose()
