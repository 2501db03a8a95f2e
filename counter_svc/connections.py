"""Opening MySQL and Redis: pools created once per process and passed explicitly."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncmy
import structlog
from asyncmy.pool import Pool
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MaxConnectionsError, RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from counter_svc.settings import Settings

log = structlog.get_logger(__name__)

# A client of one Redis (single server or Sentinel-followed primary) or of a Redis Cluster.
RedisClient = Redis | RedisCluster


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


def open_redis(settings: Settings) -> RedisClient:
    """A Redis client on a blocking pool: under load callers wait for a connection
    (bounded by the timeout) instead of failing with 'too many connections'. With
    REDIS_SENTINELS the pool asks the Sentinels where the primary is, and follows it;
    with REDIS_CLUSTER_NODES it is a cluster client (`open_cluster`)."""
    if settings.redis_cluster_nodes:
        return open_cluster(settings)
    return open_single(settings)


def open_single(settings: Settings) -> Redis:
    """The client of one Redis: a single server, or the primary Sentinels point at."""
    options: dict[str, Any] = {
        "max_connections": settings.redis_pool_size,
        "timeout": settings.redis_timeout_seconds,
        "socket_timeout": settings.redis_timeout_seconds,
        "socket_connect_timeout": settings.redis_timeout_seconds,
        "health_check_interval": 30,
        # No automatic retries: a retried INCR whose first reply was lost counts twice.
        # Clients that need safe retries send an Idempotency-Key.
        "retry": Retry(NoBackoff(), retries=0),
        **({"password": settings.redis_password} if settings.redis_password else {}),
        **redis_tls_options(settings),
    }
    if settings.redis_sentinels:
        return _sentinel_primary(settings, options)
    pool = BlockingConnectionPool.from_url(settings.redis_url, **options)
    return Redis.from_pool(pool)  # the client owns the pool: aclose() closes both


def open_cluster(settings: Settings) -> RedisCluster:
    """A Redis Cluster client seeded by REDIS_CLUSTER_NODES; REDIS_URL gives the user,
    password and TLS (its host and database are not used: a cluster has only db 0).

    Never resends a command that may have run: `retry` with 0 retries stops redis-py's
    default of re-executing a command (or a whole pipeline) after a connection error or
    a timeout. Redirections are still followed (MOVED, ASK, TRYAGAIN: the node did not
    run the command). `reinitialize_steps=0`: every MOVED only patches the slot table;
    by default each 5th MOVED closes every connection of the client, failing the calls
    of other requests in flight on them. A connection error marks the slot table for a
    refresh on the next call, so a failover is followed without a restart."""
    url = parse_url(settings.redis_url)
    options: dict[str, Any] = {
        "max_connections": settings.redis_pool_size,  # per node
        "socket_timeout": settings.redis_timeout_seconds,
        "socket_connect_timeout": settings.redis_timeout_seconds,
        "health_check_interval": 30,
        "retry": Retry(NoBackoff(), retries=0),
        "reinitialize_steps": 0,
        **({"username": url["username"]} if url.get("username") else {}),
        **({"password": url["password"]} if url.get("password") else {}),
        **({"password": settings.redis_password} if settings.redis_password else {}),
    }
    if settings.redis_url.startswith("rediss://"):
        options.update(ssl=True, **redis_tls_options(settings))
    nodes = [ClusterNode(host, port) for host, port in settings.redis_cluster_nodes]
    return Cluster(startup_nodes=nodes, **options)


class Cluster(RedisCluster):
    """redis-py's cluster client, routing FCALL by its declared keys. redis-py 8.1 reads
    the keys of EVAL from its arguments but asks a node (`COMMAND GETKEYS`, one round
    trip, awaited one command at a time in a pipeline) for those of FCALL: every
    function call would cost an extra round trip to one node, and fail while that node
    is down."""

    async def aclose(self) -> None:
        """Close every connection. RedisCluster.aclose closes nothing while a refresh of
        the slot table is pending (after a failed node, until the next command)."""
        if self._initialize:
            await self.nodes_manager.aclose()
            await self.nodes_manager.aclose("startup_nodes")
        await super().aclose()

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None) -> Any:
        if shard_hint:
            raise RedisClusterException("shard_hint is deprecated in cluster mode")
        return FollowingPipeline(self, transaction)  # type: ignore[abstract]

    async def _determine_slot(self, command: str, *args: Any) -> int:
        if command.upper() in ("FCALL", "FCALL_RO") and len(args) >= 2:
            keys = args[2 : 2 + int(args[1])]
            slots = {self.keyslot(key) for key in keys}
            if len(slots) > 1:
                raise RedisClusterException(f"{command} - all keys must map to the same key slot")
            if slots:
                return slots.pop()
        return await super()._determine_slot(command, *args)


class FollowingPipeline(ClusterPipeline):
    """A cluster pipeline after which a failed node leads to a new read of the slot table
    before the next command, as a failed single command does. With no retries (see
    `open_cluster`), redis-py's pipeline only raises (or returns) the connection error
    and keeps the old table: a client that talks to Redis mostly in pipelines (the
    worker) would keep calling the dead primary after a failover."""

    async def execute(
        self, raise_on_error: bool = True, allow_redirections: bool = True
    ) -> list[Any]:
        try:
            replies: list[Any] = await super().execute(raise_on_error, allow_redirections)
        except (RedisConnectionError, RedisTimeoutError):
            self.cluster_client._initialize = True
            raise
        if any(isinstance(r, RedisConnectionError | RedisTimeoutError) for r in replies):
            self.cluster_client._initialize = True
        return replies


class FollowedPrimary(SentinelConnectionPool, BlockingConnectionPool):
    """Sentinel's pool, blocking like the single-server one, and recording where the
    primary is and when it last moved (`/readyz`, the metrics)."""

    address: tuple[str, int] | None = None
    failovers = 0
    last_failover: float | None = None  # Unix time

    async def get_master_address(self) -> Any:
        address = await super().get_master_address()  # type: ignore[no-untyped-call]
        if address != self.address:
            if self.address is not None:
                self.failovers += 1
                self.last_failover = time.time()
                log.warning("redis_primary_moved", old=_where(self.address), new=_where(address))
            self.address = address
        return address


class SentinelFollower(Redis):
    """The primary's client; closing it closes the clients of the Sentinels too."""

    sentinels_of: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        for client in self.sentinels_of.sentinels if self.sentinels_of else ():
            await client.aclose()


def _sentinel_primary(settings: Settings, options: dict[str, Any]) -> Redis:
    # REDIS_URL still names the data nodes' user, password and database; its host is
    # not used. TLS applies to the data nodes and to the Sentinels alike.
    url = parse_url(settings.redis_url)
    for key in ("username", "password", "db"):
        if url.get(key) is not None and key not in options:
            options[key] = url[key]
    tls = settings.redis_url.startswith("rediss://")
    if tls:
        options["ssl"] = True  # picks the TLS flavour of Sentinel's connection class
    secret = settings.redis_sentinel_password
    sentinel_options: dict[str, Any] = {
        "socket_timeout": settings.redis_timeout_seconds,
        "socket_connect_timeout": settings.redis_timeout_seconds,
        # A Sentinel that is down is skipped at once, not retried ten times.
        "retry": Retry(NoBackoff(), retries=0),
        **({"password": secret} if secret else {}),
        **({"ssl": True, **redis_tls_options(settings)} if tls else {}),
    }
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(settings.redis_sentinels), sentinel_kwargs=sentinel_options
    )
    client: SentinelFollower = sentinel.master_for(
        settings.redis_sentinel_master,
        redis_class=SentinelFollower,
        connection_pool_class=FollowedPrimary,
        **options,
    )
    client.sentinels_of = sentinel
    return client


def _where(address: tuple[str, int] | None) -> str:
    return "" if address is None else f"{address[0]}:{address[1]}"


def primary_of(redis: RedisClient) -> dict[str, Any] | None:
    """Where a Sentinel-followed client's primary is and when it last moved; None for a
    single server or a cluster."""
    if isinstance(redis, RedisCluster):
        return None
    pool = redis.connection_pool
    if not isinstance(pool, FollowedPrimary):
        return None
    return {
        "primary": _where(pool.address),
        "failovers": pool.failovers,
        "last_failover": pool.last_failover,
    }


# Every Redis failure is "unavailable" to a client: down, slow, out of memory (OOM), a
# read-only replica after a failover, busy, loading. Each answers 503 with Retry-After.
# redis-py's cluster client raises RedisClusterException, not a RedisError, when no seed
# answers (down, wrong password) or a slot has no primary (SlotNotCoveredError).
REDIS_ERRORS: tuple[type[Exception], ...] = (RedisError, RedisClusterException)


def pool_exhausted(error: BaseException) -> bool:
    """A Redis error raised before any command was sent, because this process had no free
    connection: the blocking pool's wait ran past REDIS_TIMEOUT_SECONDS with every
    connection in use (single server, Sentinel), or a Cluster node's pool was at
    REDIS_POOL_SIZE. redis-py says so only in the message (its cause is lost when the
    pipeline copies the error to each caller)."""
    if isinstance(error, MaxConnectionsError):
        return True
    return isinstance(error, RedisConnectionError) and error.args == ("No connection available.",)


def redis_pool_full(redis: RedisClient) -> bool:
    """Whether a call now would wait for a pooled connection (single server, Sentinel);
    a Cluster client's pools refuse at once instead (`pool_exhausted`)."""
    if isinstance(redis, RedisCluster):
        return False
    return not redis.connection_pool.can_get_connection()
