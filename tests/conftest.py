"""Fixtures on the real MySQL/MariaDB and Redis servers (helpers: tests/helpers.py).

Each test run gets its own database and Redis key prefix, so runs never collide with
each other or with a developer's data; both are removed at the end.

`--redis-mode=cluster` (or TEST_REDIS_MODE=cluster) runs the same tests against a private
Redis Cluster of six nodes (tests/topology.py) started once for the session: the settings
carry REDIS_CLUSTER_NODES, so the fixtures, the API and the worker processes all run in
Cluster mode. Tests marked `single_redis` need one Redis server and are skipped there.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from dataclasses import replace

import asyncmy
import httpx
import pytest
from asyncmy.pool import Pool

from counter_svc.connections import RedisClient, mysql_kwargs, open_mysql, open_redis
from counter_svc.counters import Counters
from counter_svc.keys import Keys, delete_all
from counter_svc.migrate import migrate
from counter_svc.settings import Settings, load_config
from sync_worker.drain import Drainer
from tests.helpers import drop_run, running_app, serving
from tests.topology import redis_cluster

REDIS_MODES = ("single", "cluster")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--redis-mode",
        choices=REDIS_MODES,
        default=os.environ.get("TEST_REDIS_MODE") or "single",
        help="single: the Redis of REDIS_URL (default, or TEST_REDIS_MODE); cluster: a "
        "private six-node Redis Cluster started for the session",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In cluster mode, skip the tests marked `single_redis`, giving the marker's reason."""
    if config.getoption("--redis-mode") != "cluster":
        return
    for item in items:
        marker = item.get_closest_marker("single_redis")
        if marker is not None:
            why = marker.kwargs.get("reason") or (marker.args[0] if marker.args else "")
            item.add_marker(pytest.mark.skip(reason=f"single Redis only: {why}"))


@pytest.fixture(scope="session")
def base_settings(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Settings]:
    """Settings of this test run: a private database name and key prefix; in cluster
    mode, the seeds of the session's private Redis Cluster."""
    run = f"{os.getpid()}{secrets.token_hex(3)}"
    settings = replace(
        Settings.from_env(load_config(os.devnull)),
        mysql_database=f"uc_test_{run}",
        key_prefix=f"uct{run}",
        log_format="json",
    )
    with ExitStack() as stack:
        if request.config.getoption("--redis-mode") == "cluster":
            cluster = stack.enter_context(redis_cluster(tmp_path_factory.mktemp("cluster")))
            settings = replace(
                settings, redis_sentinels=(), redis_cluster_nodes=tuple(cluster.seeds)
            )
        yield settings
        drop_run(settings)


@pytest.fixture
async def settings(base_settings: Settings) -> Settings:
    """The run's settings, with an empty users table and no keys under the prefix."""
    await migrate(base_settings)
    conn = await asyncmy.connect(**mysql_kwargs(base_settings, base_settings.mysql_database))
    async with conn.cursor() as cur:
        await cur.execute("DELETE FROM users")
    conn.close()
    redis = open_redis(base_settings)
    await delete_all(redis, Keys.from_settings(base_settings))
    await redis.aclose()
    return base_settings


@pytest.fixture
async def mysql(settings: Settings) -> AsyncIterator[Pool]:
    pool = await open_mysql(settings)
    yield pool
    pool.close()
    await pool.wait_closed()


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[RedisClient]:
    """The run's Redis as the API opens it: a cluster client in cluster mode."""
    client = open_redis(settings)
    yield client
    await client.aclose()


@pytest.fixture
def counters(redis: RedisClient, settings: Settings) -> Counters:
    """The API's counter operations on the run's keys, without the HTTP layer."""
    return Counters.from_settings(redis, settings)


@pytest.fixture
def drainer(redis: RedisClient, mysql: Pool, settings: Settings) -> Drainer:
    """One worker's drain of the run's buckets, with small batches and a short lease."""
    return Drainer(redis, mysql, Keys.from_settings(settings), batch_size=100, lease_seconds=5)


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with running_app(settings) as c:
        yield c


@pytest.fixture(scope="module")
def live_server(base_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The API as a real process on the run's database; yields its base URL."""
    import asyncio

    asyncio.run(migrate(base_settings))
    with serving(base_settings, tmp_path_factory.mktemp("api") / "api.log") as (url, _):
        yield url
