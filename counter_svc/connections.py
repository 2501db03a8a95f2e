"""Opening MySQL and Redis: pools created once per process and passed explicitly."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import asyncmy
import structlog
from asyncmy.pool import Pool
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from counter_svc.grants import admin_settings, ensure_service_user
from counter_svc.settings import Settings

log = structlog.get_logger(__name__)

SCHEMA_SQL = Path(__file__).with_name("schema.sql")


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


async def migrate(settings: Settings) -> None:
    """Create the database if it is missing and apply schema.sql (idempotent). Given
    MYSQL_ADMIN_USER, do so as that user and set up the service's least-privilege user."""
    conn = await asyncmy.connect(**mysql_kwargs(admin_settings(settings)))
    try:
        async with conn.cursor() as cur:
            # "Database exists" and "table exists" are the expected case of a second run:
            # notes, which would otherwise come out as warnings in every migrate's log.
            await cur.execute("SET SESSION sql_notes = 0")
            # The name is validated in Settings (letters, digits, '_'), so quoting is safe.
            await cur.execute(
                f"CREATE DATABASE IF NOT EXISTS `{settings.mysql_database}` "
                "DEFAULT CHARACTER SET utf8mb4"
            )
            await cur.execute(f"USE `{settings.mysql_database}`")
            for statement in _statements(SCHEMA_SQL.read_text(encoding="utf-8")):
                await cur.execute(statement)
            await _collate_usernames(cur)
            if settings.mysql_admin_user:
                await ensure_service_user(cur, settings)
    finally:
        conn.close()


USERNAME_COLLATION = "utf8mb4_unicode_520_ci"
# Up to 10 groups of stored names that the collation would make one.
_MERGED_NAMES = (
    "SELECT GROUP_CONCAT(username ORDER BY id SEPARATOR ' = ') FROM users "  # noqa: S608
    f"GROUP BY username COLLATE {USERNAME_COLLATION} HAVING COUNT(*) > 1 LIMIT 10"
)
_COLLATE_USERNAMES = (
    "ALTER TABLE users MODIFY username VARCHAR(100) CHARACTER SET utf8mb4 "
    f"COLLATE {USERNAME_COLLATION} NOT NULL, "
    f"DEFAULT CHARACTER SET utf8mb4 COLLATE {USERNAME_COLLATION}"
)


class MigrateError(RuntimeError):
    """The schema cannot be brought up to date without a decision by the operator."""


async def _collate_usernames(cur: Any) -> None:
    """Bring a users table created before the collation was named (with the server's
    default) to USERNAME_COLLATION. Checked first: the ALTER rebuilds the table."""
    await cur.execute(
        "SELECT COLLATION_NAME FROM information_schema.COLUMNS "
        "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'users' AND COLUMN_NAME = 'username'"
    )
    (current,) = await cur.fetchone()
    if current == USERNAME_COLLATION:
        return
    await cur.execute(_MERGED_NAMES)
    if merged := [row[0] for row in await cur.fetchall()]:
        raise MigrateError(
            f"users.username holds names that are one name under {USERNAME_COLLATION}: "
            f"{'; '.join(merged)}. Rename one of each, then run migrate again"
        )
    log.warning("migrate_collation", column="users.username", old=current, new=USERNAME_COLLATION)
    await cur.execute(_COLLATE_USERNAMES)


def _statements(sql: str) -> list[str]:
    lines = [line for line in sql.splitlines() if not line.lstrip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


# Every Redis failure is "unavailable" to a client: down, slow, out of memory (OOM), a
# read-only replica after a failover, busy, loading. Each answers 503 with Retry-After.
REDIS_ERRORS: tuple[type[Exception], ...] = (RedisError,)
