"""Prometheus metrics of the API, on a registry of its own per app instance."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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
        self.mysql_errors = Counter(
            "usercounter_mysql_errors", "MySQL calls that failed or timed out.", registry=r
        )
        self.redis_errors = Counter(
            "usercounter_redis_errors", "Redis calls that failed or timed out.", registry=r
        )
