"""The drain: dirty counters of one bucket written from Redis to MySQL, exactly.

Per bucket (docs/design.md, "The sync worker"): take the lease; claim up to N oldest dirty ids
with their values into `inflight` (a claim left by a crash comes back first); write the
absolute values with `GREATEST` in one statement and one transaction; then drop them from
`inflight` and give idle counters their TTL, both compare-and-set in Lua. Replaying a
batch is harmless, so a crash at any step loses nothing and counts nothing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from dataclasses import dataclass, field
from functools import lru_cache

import orjson
import structlog
from asyncmy.pool import Pool

from counter_svc.connections import REDIS_ERRORS, RedisClient
from counter_svc.keys import Keys
from sync_worker.buckets import Buckets
from sync_worker.faults import Hook, no_fault
from sync_worker.metrics import Metrics

log = structlog.get_logger("sync_worker.drain")


class MySQLError(Exception):
    """A batch could not be written to MySQL; its claim stays in `inflight`."""


# One statement for the whole batch. A JOIN never inserts, so a deleted row stays deleted;
# GREATEST keeps MySQL monotonic when an old batch is replayed. The (id, value) pairs
# travel as one JSON array that JSON_TABLE (MySQL 8.0, MariaDB 10.6+) turns into rows:
# one parameter to send and parse instead of two per row in a UNION of SELECTs, which
# wrote 1.3 to 2.6 times fewer rows a second in a side-by-side run (docs/benchmarks.md).
UPDATE_SQL = (
    "UPDATE users u JOIN JSON_TABLE(%s, '$[*]' COLUMNS ("
    "id INT PATH '$[0]' ERROR ON EMPTY, v BIGINT PATH '$[1]' ERROR ON EMPTY)) t "
    "ON u.id = t.id SET u.counter = GREATEST(u.counter, t.v)"
)


def update_params(values: dict[int, int]) -> list[str]:
    return [orjson.dumps(list(values.items())).decode()]


@lru_cache(maxsize=16)
def rows_sql(n: int) -> str:
    marks = ", ".join(["%s"] * n)
    return f"SELECT id, counter FROM users WHERE id IN ({marks})"  # noqa: S608 - placeholders only


@dataclass
class Batch:
    """One claimed batch: the values as Redis holds them (for compare-and-set) and as ints."""

    raw: list[tuple[bytes, bytes]]
    leftover: bool
    values: dict[int, int] = field(init=False)

    def __post_init__(self) -> None:
        self.values = {int(i): int(v) for i, v in self.raw}


@dataclass
class Written:
    """What the MySQL write found beside the rows it raised: ids whose row is gone, and
    ids whose row holds more than the batch did (Redis lost increments MySQL has: a lossy
    failover, or a Redis restored to an older state), with MySQL's value."""

    missing: set[int] = field(default_factory=set)
    behind: dict[int, int] = field(default_factory=dict)


class Drainer:
    """Drains buckets of one key layout. One per worker process; its lease token is the
    worker's identity, so a worker can take back a lease it still holds after an error,
    and, with a stable `token` (SYNC_WORKER_ID), after a restart. Two live workers with
    one token would drain a bucket at once: still exact (compare-and-set, GREATEST), but
    no longer one at a time."""

    def __init__(
        self,
        redis: RedisClient,
        mysql: Pool,
        keys: Keys,
        *,
        batch_size: int = 1000,
        lease_seconds: float = 30.0,
        idle_ttl_seconds: int = 86_400,
        tombstone_ttl_seconds: int = 7 * 86_400,
        write_timeout_seconds: float = 10.0,
        max_batches_per_bucket: int = 100,
        metrics: Metrics | None = None,
        hook: Hook = no_fault,
        token: str = "",
        repair: bool = True,
        ack_replicas: int = 0,
        ack_timeout_ms: int = 100,
    ) -> None:
        self.redis = redis
        self.mysql = mysql
        self.keys = keys
        self.batch_size = batch_size
        self.lease_ms = int(lease_seconds * 1000)
        self.idle_ms = idle_ttl_seconds * 1000
        self.tombstone_s = tombstone_ttl_seconds
        self.write_timeout = write_timeout_seconds
        self.max_batches = max_batches_per_bucket
        self.metrics = metrics or Metrics()
        self.hook = hook
        self.token = token or secrets.token_hex(12)
        # Raise counters MySQL is ahead of (invariant 12). Off with REDIS_ACK_REPLICAS > 0:
        # there Redis can only lack writes its clients were told may not have counted
        # (503 not_replicated), and they retry them with their keys; raising the counter
        # as well would count those twice, while GREATEST alone stays exact.
        self.repair = repair
        self.buckets = Buckets(redis, keys, self.token, ack_replicas, ack_timeout_ms)

    async def drain_all(self, concurrency: int) -> list[Exception]:
        """One pass over every bucket with work, `concurrency` at a time. Returns the
        errors; after the first one, buckets not yet started are left for the next pass."""
        gate = asyncio.Semaphore(concurrency)
        errors: list[Exception] = []
        try:
            # One pipelined look at every bucket: an idle bucket costs no lease, claim and
            # release round trips (four per bucket and pass otherwise).
            busy = await self.buckets.busy()
        except REDIS_ERRORS:
            # The look failed (a cluster node gone): every bucket, one call at a time,
            # each followed to wherever its slot now lives.
            busy = list(range(self.keys.buckets))

        async def one(bucket: int) -> None:
            async with gate:
                if errors:
                    return
                try:
                    await self.drain_bucket(bucket)
                except Exception as e:
                    errors.append(e)

        await asyncio.gather(*(one(b) for b in busy))
        return errors

    async def drain_bucket(self, bucket: int) -> int:
        """Drain one bucket while holding its lease; returns the counters written."""
        if not await self.buckets.take_lease(bucket, self.lease_ms):
            return 0
        written = 0
        renewed = time.monotonic()
        try:
            for _ in range(self.max_batches):
                if time.monotonic() - renewed > self.lease_ms / 3000:
                    if not await self.buckets.renew_lease(bucket, self.lease_ms):
                        log.warning("lease_lost", bucket=bucket)
                        break
                    renewed = time.monotonic()
                count, more = await self.drain_batch(bucket)
                written += count
                if not more:
                    break
        finally:
            # If Redis is down the lease cannot be dropped; it expires, or this worker
            # takes it back (same token) once Redis answers again.
            with contextlib.suppress(*REDIS_ERRORS):
                await self.buckets.release_lease(bucket)
        return written

    async def claim(self, bucket: int) -> Batch | None:
        """Move up to a batch of the oldest dirty ids to `inflight`, or return the
        `inflight` a crashed or stalled drain left behind."""
        leftover, flat = await self.buckets.claim(bucket, self.batch_size)
        if not flat:
            return None
        return Batch(list(zip(flat[::2], flat[1::2], strict=True)), leftover)

    async def drain_batch(self, bucket: int) -> tuple[int, bool]:
        """Claim, write and clean one batch. Returns (counters written, maybe more)."""
        started = time.perf_counter()
        await self.hook("before_claim")
        batch = await self.claim(bucket)
        if batch is None:
            return 0, False
        await self.hook("after_claim")
        result = await self.write(batch.values)
        await self.hook("after_commit")
        await self.finish(bucket, batch, result)
        await self.hook("after_finish")
        missing = result.missing
        written = len(batch.values) - len(missing)
        elapsed = time.perf_counter() - started
        self.metrics.flushed.inc(written)
        self.metrics.missing.inc(len(missing))
        self.metrics.batches.inc()
        self.metrics.batch_seconds.observe(elapsed)
        self.metrics.progressed()
        log.info(
            "batch",
            bucket=bucket,
            count=written,
            missing=len(missing),
            leftover=batch.leftover,
            duration_ms=round(elapsed * 1000, 2),
        )
        return written, batch.leftover or len(batch.values) >= self.batch_size

    async def write(self, values: dict[int, int]) -> Written:
        """Write the batch in one transaction; say which rows are gone or ahead of it."""
        try:
            async with asyncio.timeout(self.write_timeout):
                return await self._write(values)
        except (asyncio.CancelledError, KeyboardInterrupt):
            raise
        except Exception as e:
            raise MySQLError(f"batch of {len(values)} not written: {e!r}") from e

    async def _write(self, values: dict[int, int]) -> Written:
        async with self.mysql.acquire() as conn:
            try:
                await conn.begin()
                async with conn.cursor() as cur:
                    changed = await cur.execute(UPDATE_SQL, update_params(values))
                    result = Written()
                    # A row unchanged is gone, already at the value (a replayed batch), or
                    # ahead of it; only then is the extra lookup needed.
                    if changed < len(values):
                        await cur.execute(rows_sql(len(values)), list(values))
                        rows = {int(i): int(c) for i, c in await cur.fetchall()}
                        result.missing = set(values) - set(rows)
                        result.behind = {i: c for i, c in rows.items() if c > values[i]}
                await self.hook("mid_batch")
                await conn.commit()
            except BaseException:
                # The connection's state is unknown (cut mid-reply, or cancelled): never
                # return it to the pool.
                conn.close()
                raise
        return result

    async def finish(self, bucket: int, batch: Batch, written: Written) -> None:
        """After the commit: raise counters that MySQL is ahead of, drop the batch from
        `inflight` (only entries still holding the written value), give idle counters
        their TTL, and forget ids whose row is gone."""
        missing = written.missing
        raw = batch.raw
        if written.behind and self.repair:
            raw = await self._repair(bucket, batch, written.behind)
        done = [x for i, v in raw if int(i) not in missing for x in (i, v)]
        if done:
            await self.buckets.finish(bucket, self.idle_ms, done)
        if missing:
            ids = sorted(missing)
            await self.buckets.forget(bucket, self.tombstone_s, ids)
            log.info("rows_missing", bucket=bucket, ids=ids[:20], count=len(ids))

    async def _repair(
        self, bucket: int, batch: Batch, behind: dict[int, int]
    ) -> list[tuple[bytes, bytes]]:
        """Redis lost increments that MySQL has (invariant 12): raise each such counter by
        what it lacks, so it counts on from MySQL's value, and let its `inflight` entry
        stand for MySQL's value. Compare-and-set on the claimed value, so a replay of the
        batch after a crash finds nothing to raise again. Returns the batch as it now
        stands in `inflight`."""
        triples = [(i, batch.values[i], mysql) for i, mysql in sorted(behind.items())]
        raised = await self.buckets.raise_behind(bucket, triples)
        self.metrics.repaired.inc(raised)
        log.warning(
            "redis_behind_mysql",
            bucket=bucket,
            count=len(triples),
            raised=raised,
            ids=[i for i, _, _ in triples][:20],
            missing_increments=sum(m - c for _, c, m in triples),
        )
        return [(i, str(behind[int(i)]).encode() if int(i) in behind else v) for i, v in batch.raw]

    async def observe(self) -> None:
        """Refresh the backlog, inflight and lag gauges (one pipelined round trip)."""
        backlog = await self.buckets.backlog()
        self.metrics.backlog.set(backlog.dirty)
        self.metrics.inflight.set(backlog.inflight)
        self.metrics.lag.set(backlog.lag_seconds)
        if backlog.shards:
            # Primaries come and go (failover, new nodes): only the current ones.
            m = self.metrics
            for gauge in (m.shard_backlog, m.shard_inflight, m.shard_lag):
                gauge.clear()
            for shard, part in backlog.shards.items():
                self.metrics.shard_backlog.labels(shard).set(part.dirty)
                self.metrics.shard_inflight.labels(shard).set(part.inflight)
                self.metrics.shard_lag.labels(shard).set(part.lag_seconds)
