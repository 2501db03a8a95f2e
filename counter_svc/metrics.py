"""Prometheus metrics of the API, on a registry of its own per app instance."""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from redis.asyncio.cluster import RedisCluster

from counter_svc.connections import primary_of
from counter_svc.settings import Settings

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "usercounter_http_requests",
            "HTTP requests answered.",
            ["method", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "usercounter_http_request_duration_seconds",
            "Time to answer an HTTP request.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_progress = Gauge(
            "usercounter_http_requests_in_progress",
            "HTTP requests being answered.",
            registry=r,
        )
        self.increments = Counter(
            "usercounter_increments",
            "Increments acknowledged (idempotent replays excluded).",
            registry=r,
        )
        self.cache_hits = Counter(
            "usercounter_cache_hits",
            "Counter reads and increments answered from Redis.",
            registry=r,
        )
        self.cache_misses = Counter(
            "usercounter_cache_misses",
            "Counter reads and increments that had to read MySQL.",
            registry=r,
        )
        self.stale_seeds = Counter(
            "usercounter_stale_seeds",
            "Seeds from MySQL refused because the bucket changed during the read (read again).",
            registry=r,
        )
        self.not_replicated = Counter(
            "usercounter_redis_not_replicated",
            "Writes answered 503 because REDIS_ACK_REPLICAS replicas did not confirm them.",
            registry=r,
        )
        self.mysql_errors = Counter(
            "usercounter_mysql_errors", "MySQL calls that failed or timed out.", registry=r
        )
        self.redis_errors = Counter(
            "usercounter_redis_errors", "Redis calls that failed or timed out.", registry=r
        )
        # Not errors of a store: this process ran out of pooled connections to one.
        self.overloads = Counter(
            "usercounter_overload_rejections",
            "Requests answered 503 overloaded: no pooled connection to the backend came "
            "free within its timeout while the backend answered.",
            ["backend"],
            registry=r,
        )
        for backend in ("mysql", "redis"):
            self.overloads.labels(backend)  # exported as 0 from the start, for the alerts


# Gauges of the backing stores, refreshed when Prometheus scrapes `/metrics`: whether
# MySQL and Redis answer (what `/readyz` checks) and how full Redis' memory is.
#
# Refreshing at scrape time costs the request path nothing, and the values are as fresh
# as the scrape that reports them.

BACKENDS = ("mysql", "redis")


class BackendGauges:
    """`refresh()`, awaited by the `/metrics` handler before it renders: ping MySQL and
    read Redis' `INFO memory`, in parallel, each bounded by its timeout."""

    def __init__(self, metrics: Metrics, settings: Settings) -> None:
        r = metrics.registry
        self.up = Gauge(
            "usercounter_backend_up",
            "1 when the backing store answered at the last scrape, else 0.",
            ["backend"],
            registry=r,
        )
        self.redis_used = Gauge(
            "usercounter_redis_memory_used_bytes",
            "Redis used_memory at the last scrape.",
            registry=r,
        )
        self.redis_max = Gauge(
            "usercounter_redis_memory_max_bytes",
            "Redis maxmemory at the last scrape (0: no limit).",
            registry=r,
        )
        # Cluster mode only: the memory of each primary (`node`: its address).
        self.redis_node_used = Gauge(
            "usercounter_redis_node_memory_used_bytes",
            "used_memory of one Redis Cluster primary at the last scrape (Cluster mode).",
            ["node"],
            registry=r,
        )
        self.redis_node_max = Gauge(
            "usercounter_redis_node_memory_max_bytes",
            "maxmemory of one Redis Cluster primary at the last scrape (0: no limit).",
            ["node"],
            registry=r,
        )
        # Sentinel mode only: where the primary is, and failovers seen by this process.
        self.redis_primary = Gauge(
            "usercounter_redis_primary",
            "1 for the Redis primary this process writes to (Sentinel mode).",
            ["address"],
            registry=r,
        )
        self.redis_failovers = Gauge(
            "usercounter_redis_failovers_seen",
            "Primary changes this process has followed since it started (Sentinel mode).",
            registry=r,
        )
        self.redis_last_failover = Gauge(
            "usercounter_redis_last_failover_timestamp_seconds",
            "When this process last found a new primary, Unix time (0: never).",
            registry=r,
        )
        for backend in BACKENDS:
            self.up.labels(backend).set(0)
        self.mysql_timeout = settings.mysql_timeout_seconds
        self.redis_timeout = settings.redis_timeout_seconds

    def _per_primary(self, per_node: dict[str, Any]) -> None:
        """Cluster mode: each primary's memory; a primary gone since (failover) drops out."""
        if "used_memory" in per_node:  # one primary: redis-py gives its reply, unnamed
            return
        self.redis_node_used.clear()
        self.redis_node_max.clear()
        for name, info in per_node.items():
            if isinstance(info, dict):
                self.redis_node_used.labels(name).set(int(info.get("used_memory", 0)))
                self.redis_node_max.labels(name).set(int(info.get("maxmemory", 0)))

    async def refresh(self, store: Any) -> None:
        # A store that answers while this process has no free connection to it is up:
        # the overload shows in usercounter_overload_rejections_total, not here.
        async def mysql() -> None:
            async with asyncio.timeout(self.mysql_timeout):
                await store.users.check()

        async def redis() -> dict[str, Any] | None:
            if store.redis_busy():
                return None
            async with asyncio.timeout(self.redis_timeout):
                client = store.counters.redis
                if isinstance(client, RedisCluster):
                    # One INFO per primary: the fullest one is the one that matters.
                    nodes = await client.info("memory", target_nodes=RedisCluster.PRIMARIES)
                    self._per_primary(nodes)
                    return fullest(nodes)
                info: dict[str, Any] = await client.info("memory")
                return info

        results = await asyncio.gather(mysql(), redis(), return_exceptions=True)
        mysql_result, redis_result = results
        self.up.labels("mysql").set(0 if isinstance(mysql_result, BaseException) else 1)
        if isinstance(redis_result, BaseException):
            self.up.labels("redis").set(0)
            return
        self.up.labels("redis").set(1)
        if redis_result is None:
            return
        self.redis_used.set(int(redis_result.get("used_memory", 0)))
        self.redis_max.set(int(redis_result.get("maxmemory", 0)))
        followed = primary_of(store.counters.redis)
        if followed is not None:
            self.redis_primary.clear()
            self.redis_primary.labels(followed["primary"]).set(1)
            self.redis_failovers.set(followed["failovers"])
            self.redis_last_failover.set(followed["last_failover"] or 0)


def fullest(per_node: dict[str, Any]) -> dict[str, Any]:
    """Of a cluster's INFO memory replies (by node), the one using the most memory. A
    single node's reply (one primary) is returned as it is."""
    replies = [v for v in per_node.values() if isinstance(v, dict)]
    if not replies:
        return per_node
    return max(replies, key=lambda info: int(info.get("used_memory", 0)))
