"""Fixtures on the real MySQL/MariaDB and Redis servers.

Each test run gets its own database and Redis key prefix, so runs never collide with
each other or with a developer's data; both are removed at the end.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager as ContextManager
from contextlib import asynccontextmanager, contextmanager
from dataclasses import replace
from pathlib import Path
from subprocess import Popen

import asyncmy
import httpx
import pytest
from asyncmy.pool import Pool
from redis.asyncio import Redis

from counter_svc.app import create_app
from counter_svc.connections import mysql_kwargs, open_mysql, open_redis
from counter_svc.faults import Hook
from counter_svc.keys import Keys, delete_all
from counter_svc.migrate import migrate
from counter_svc.settings import Settings, load_config
from tests.faults import free_port, port_open, wait_until


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
    drop_run(settings)


def drop_run(settings: Settings) -> None:
    """Drop the database and delete the Redis keys that `settings` name."""
    import asyncio

    async def drop() -> None:
        conn = await asyncmy.connect(**mysql_kwargs(settings))
        async with conn.cursor() as cur:
            await cur.execute(f"DROP DATABASE IF EXISTS `{settings.mysql_database}`")
        conn.close()
        redis = open_redis(settings)
        await delete_all(redis, Keys.from_settings(settings))
        await redis.aclose()

    asyncio.run(drop())


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
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    client = open_redis(settings)
    yield client
    await client.aclose()


@asynccontextmanager
async def running_app(
    settings: Settings, hook: Hook | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """An API instance with its lifespan run, and a client that talks to it in-process.
    `hook` is called at the store's named steps (`Store.hook`)."""
    app = create_app(settings, hook=hook)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            yield client


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with running_app(settings) as c:
        yield c


async def create_user(client: httpx.AsyncClient, username: str) -> int:
    response = await client.post("/api/v1/users", json={"username": username})
    assert response.status_code == 201, response.text
    user_id: int = response.json()["data"]["id"]
    return user_id


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a child process read `settings` (and no `.env`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MYSQL_", "REDIS_", "SYNC_"))}
    return env | settings.environ() | {"LOG_FORMAT": "json", "ENV_FILE": os.devnull}


def serving(
    settings: Settings, log_path: Path, **env: str
) -> ContextManager[tuple[str, Popen[bytes]]]:
    """`python -m counter_svc serve` as a real process on a free port, with extra
    variables; its output goes to `log_path`. Yields its base URL and the process."""
    return serving_with(settings, log_path, env)


@contextmanager
def serving_with(
    settings: Settings,
    log_path: Path,
    env: dict[str, str],
    preexec_fn: Callable[[], object] | None = None,
) -> Iterator[tuple[str, Popen[bytes]]]:
    """`serving`, with `preexec_fn` run in the child process before it starts."""
    port = free_port()
    full_env = settings_env(settings) | {"PORT": str(port), "HOST": "127.0.0.1"} | env
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "counter_svc", "serve"],
            env=full_env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=preexec_fn,
        )
        try:
            wait_until(lambda: port_open(port), 20, "the API to listen")
            yield f"http://127.0.0.1:{port}", proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@pytest.fixture(scope="module")
def live_server(base_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The API as a real process on the run's database; yields its base URL."""
    import asyncio

    asyncio.run(migrate(base_settings))
    with serving(base_settings, tmp_path_factory.mktemp("api") / "api.log") as (url, _):
        yield url
