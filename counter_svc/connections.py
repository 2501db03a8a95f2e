"""Opening MySQL and Redis: pools created once per process and passed explicitly."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncmy
import structlog
from asyncmy.pool import Pool
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from counter_svc.settings import Settings

log = structlog.get_logger(__name__)


def mysql_kwargs(settings: Settings, database: str | None = None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "host": settings.mysql_host,
        "port": settings.mysql_port,
        "user": settings.mysql_user,
        "password": settings.mysql_password,
        "connect_timeout": max(1, round(settings.mysql_timeout_seconds)),
        "autocommit": True,
        "charset": "utf8mb4",
        # TIMESTAMP columns come back in UTC, so the API can print RFC 3339 with 'Z'.
        "init_command": "SET time_zone = '+00:00'",
    }
    if database:
        kwargs["db"] = database
    return kwargs


async def open_mysql(settings: Settings, *, minsize: int = 1, attempts: int = 1) -> Pool:
    """A pool on the service database. With `attempts` > 1, retry with a back-off that logs."""
    delay = 0.5
    for attempt in range(1, attempts + 1):
        try:
            return await asyncmy.create_pool(
                minsize=minsize,
                maxsize=settings.mysql_pool_size,
                pool_recycle=300,
                **mysql_kwargs(settings, settings.mysql_database),
            )
        except Exception as e:
            if attempt == attempts:
                raise
            log.warning("mysql_connect_failed", attempt=attempt, retry_in=delay, error=str(e))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
    raise AssertionError("unreachable")


def redis_tls_options(settings: Settings) -> dict[str, str]:
    """For a rediss:// URL: a private CA and a client certificate, when configured. The
    server's certificate and host name are always checked."""
    options = {}
    if settings.redis_tls_ca_file:
        options["ssl_ca_certs"] = settings.redis_tls_ca_file
    if settings.redis_tls_cert_file:
        options["ssl_certfile"] = settings.redis_tls_cert_file
        options["ssl_keyfile"] = settings.redis_tls_key_file
    return options


def open_redis(settings: Settings) -> Redis:
    """A Redis client on a blocking pool: under load callers wait for a connection
    (bounded by the timeout) instead of failing with 'too many connections'."""
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_pool_size,
        timeout=settings.redis_timeout_seconds,
        socket_timeout=settings.redis_timeout_seconds,
        socket_connect_timeout=settings.redis_timeout_seconds,
        health_check_interval=30,
        # No automatic retries: a retried INCR whose first reply was lost counts twice.
        # Clients that need safe retries send an Idempotency-Key.
        retry=Retry(NoBackoff(), retries=0),
        **({"password": settings.redis_password} if settings.redis_password else {}),
        **redis_tls_options(settings),
    )
    return Redis.from_pool(pool)  # the client owns the pool: aclose() closes both


# Every Redis failure is "unavailable" to a client: down, slow, out of memory (OOM), a
# read-only replica after a failover, busy, loading. Each answers 503 with Retry-After.
REDIS_ERRORS: tuple[type[Exception], ...] = (RedisError,)
