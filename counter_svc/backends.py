"""Gauges of the backing stores, refreshed when Prometheus scrapes `/metrics`: whether
MySQL and Redis answer (what `/readyz` checks) and how full Redis' memory is.

Refreshing at scrape time costs the request path nothing, and the values are as fresh
as the scrape that reports them.
"""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client import Gauge

from counter_svc.metrics import Metrics
from counter_svc.settings import Settings

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
        for backend in BACKENDS:
            self.up.labels(backend).set(0)
        self.mysql_timeout = settings.mysql_timeout_seconds
        self.redis_timeout = settings.redis_timeout_seconds

    async def refresh(self, store: Any) -> None:
        async def mysql() -> None:
            async with asyncio.timeout(self.mysql_timeout):
                await store.users.ping()

        async def redis() -> dict[str, Any]:
            async with asyncio.timeout(self.redis_timeout):
                info: dict[str, Any] = await store.counters.redis.info("memory")
                return info

        mysql_result, redis_result = await asyncio.gather(mysql(), redis(), return_exceptions=True)
        self.up.labels("mysql").set(0 if isinstance(mysql_result, BaseException) else 1)
        if isinstance(redis_result, BaseException):
            self.up.labels("redis").set(0)
            return
        self.up.labels("redis").set(1)
        self.redis_used.set(int(redis_result.get("used_memory", 0)))
        self.redis_max.set(int(redis_result.get("maxmemory", 0)))
