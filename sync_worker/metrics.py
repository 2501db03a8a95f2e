"""Prometheus metrics of the worker and the health signal derived from them."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    """One registry per worker, so tests can run several workers in one process."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.backlog = Gauge(
            "sync_dirty_backlog", "Ids changed in Redis and not yet claimed for MySQL.", registry=r
        )
        self.inflight = Gauge(
            "sync_inflight", "Ids claimed but not yet confirmed in MySQL.", registry=r
        )
        self.lag = Gauge(
            "sync_lag_seconds",
            "Age of the oldest increment not yet in MySQL (dirty or claimed): how far MySQL "
            "is behind Redis.",
            registry=r,
        )
        # Cluster mode: the same three per primary; `shard` is the primary's address.
        self.shard_backlog = Gauge(
            "sync_shard_dirty_backlog",
            "sync_dirty_backlog of the buckets one Redis Cluster primary serves.",
            ["shard"],
            registry=r,
        )
        self.shard_inflight = Gauge(
            "sync_shard_inflight",
            "sync_inflight of the buckets one Redis Cluster primary serves.",
            ["shard"],
            registry=r,
        )
        self.shard_lag = Gauge(
            "sync_shard_lag_seconds",
            "sync_lag_seconds of the buckets one Redis Cluster primary serves.",
            ["shard"],
            registry=r,
        )
        self.flushed = Counter(
            "sync_counters_flushed", "Counter values written to MySQL.", registry=r
        )
        self.missing = Counter(
            "sync_rows_missing",
            "Claimed ids whose MySQL row is gone (skipped, keys cleaned).",
            registry=r,
        )
        self.repaired = Counter(
            "sync_counters_repaired",
            "Redis counters raised to MySQL's value after Redis lost increments MySQL had "
            "(a lossy failover, an older AOF).",
            registry=r,
        )
        self.batches = Counter("sync_batches", "Batches committed to MySQL.", registry=r)
        self.batch_seconds = Histogram(
            "sync_batch_duration_seconds",
            "Claim, MySQL write and cleanup of one batch.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.errors = Counter(
            "sync_errors", "Failed drains by kind (mysql, redis, other).", ["kind"], registry=r
        )
        self.last_success = Gauge(
            "sync_last_success_timestamp_seconds",
            "Unix time of the last drain pass that finished without error.",
            registry=r,
        )
        for kind in ("mysql", "redis", "other"):
            self.errors.labels(kind)
        self.started = time.monotonic()
        self._last_success_mono: float | None = None
        self._last_progress_mono: float | None = None

    def succeeded(self) -> None:
        self._last_success_mono = time.monotonic()
        self.last_success.set(time.time())

    def success_age(self) -> float:
        """Seconds since the last successful pass (since start-up before the first one)."""
        return time.monotonic() - (self._last_success_mono or self.started)

    def progressed(self) -> None:
        """A batch, or a whole pass, finished: failed passes count too. The liveness signal,
        which a MySQL outage must not fail (that is what `success_age` is for)."""
        self._last_progress_mono = time.monotonic()

    def progress_age(self) -> float:
        """Seconds since the last batch or pass finished (since start-up before the first)."""
        return time.monotonic() - (self._last_progress_mono or self.started)
