"""The request paths of docs/design.md: Redis in front, MySQL behind.

Increments and counts are answered from Redis; a miss reads MySQL once per id per
process (single flight) and seeds Redis with a script that a tombstone refuses, and
that a moved bucket generation refuses (invariant 11): then MySQL is read again.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

import structlog

from counter_svc.connections import REDIS_ERRORS, pool_exhausted, redis_pool_full
from counter_svc.counters import Counters, Outcome
from counter_svc.errors import Overloaded, Unavailable, UserNotFound
from counter_svc.faults import Hook, no_fault
from counter_svc.metrics import Metrics
from counter_svc.pipelining import NotReplicated
from counter_svc.singleflight import SingleFlight
from counter_svc.users import User, Users

T = TypeVar("T")

log = structlog.get_logger(__name__)

# Reads of MySQL for one request whose seeds were refused as possibly stale. A refusal
# needs a sync, create or delete in the same bucket during the MySQL read, so the second
# attempt all but always seeds.
SEED_ATTEMPTS = 5


class RedisUnavailable(Unavailable):
    """Redis could not be reached or did not answer in time."""


class RedisOverloaded(Overloaded):
    """No pooled Redis connection came free in time while Redis answered the last call."""

    backend = "redis"


class WriteNotReplicated(Unavailable):
    """REDIS_ACK_REPLICAS replicas did not confirm a write in time: it ran on the primary
    and may survive or not; a retry with the same Idempotency-Key is exact."""

    code = "not_replicated"


class SeedContended(Unavailable):
    """Every seed of a cold counter was refused: its bucket kept changing under the read."""


class Store:
    """User and counter operations as the HTTP API needs them."""

    def __init__(
        self, users: Users, counters: Counters, metrics: Metrics, hook: Hook = no_fault
    ) -> None:
        self.users = users
        self.counters = counters
        self.metrics = metrics
        # Called at "after_mysql_read", between a cold request's MySQL read and its seed:
        # the race tests hold requests there (API_FAULT, counter_svc/faults.py).
        self.hook = hook
        self._mysql_reads: SingleFlight[tuple[int | None, int]] = SingleFlight()
        self.redis_answering = True  # whether the last Redis call that ended reached Redis

    async def create_user(self, username: str) -> User:
        user = await self.users.create(username)
        try:
            await self.counters.created(user.id)
        except REDIS_ERRORS as e:
            # The row exists; the counter is seeded on first use. Only an id probed in the
            # last ABSENT_TTL_SECONDS stays 404 until its negative-cache entry expires.
            self.metrics.redis_errors.inc()
            log.warning("seed_after_create_failed", user_id=user.id, error=str(e))
        return user

    async def get_user(self, user_id: int) -> User:
        for _ in range(SEED_ATTEMPTS):
            # Redis first: a MISS carries the generation the row below is read under.
            outcome, value = await self._redis(self.counters.read(user_id))
            user = await self.users.get(user_id)
            if user is None:
                raise UserNotFound(f"user {user_id} not found")
            if outcome is Outcome.MISS or outcome is Outcome.ABSENT:
                # ABSENT: probed before its create landed; the row is here now.
                await self.hook("after_mysql_read")
                outcome, value = await self._redis(
                    self.counters.seed(user_id, user.counter, generation=value or 0)
                )
            if outcome is Outcome.STALE:
                self.metrics.stale_seeds.inc()
                continue
            if outcome is Outcome.GONE or value is None:
                raise UserNotFound(f"user {user_id} not found")
            return User(user.id, user.username, value, user.created_at, user.updated_at)
        raise self._contended(user_id)

    async def count(self, user_id: int) -> int:
        for _ in range(SEED_ATTEMPTS):
            outcome, value = await self._redis(self.counters.read(user_id))
            if outcome is Outcome.OK and value is not None:
                self.metrics.cache_hits.inc()
                return value
            if outcome is not Outcome.MISS:
                break
            self.metrics.cache_misses.inc()
            stored, generation = await self._mysql_counter(user_id, value or 0)
            await self.hook("after_mysql_read")
            if stored is not None:
                outcome, value = await self._redis(self.counters.seed(user_id, stored, generation))
            else:
                outcome, value = await self._redis(self.counters.mark_absent(user_id, generation))
            if outcome is Outcome.OK and value is not None:
                return value
            if outcome is not Outcome.STALE:
                break
            self.metrics.stale_seeds.inc()
        else:
            raise self._contended(user_id)
        raise UserNotFound(f"user {user_id} not found")

    async def increment(self, user_id: int, idem_key: str | None = None) -> int:
        seed: int | None = None
        generation: int | None = None
        refusals = 0
        # A pass per call: a miss takes two (read MySQL, then seed), a create that lands
        # meanwhile one more; the bound counts refused seeds, as the reads' loops do.
        for _ in range(3 * SEED_ATTEMPTS):
            if refusals == SEED_ATTEMPTS:
                break
            outcome, value = await self._redis(
                self.counters.increment(user_id, idem_key, seed, generation)
            )
            seed = generation = None
            if outcome is Outcome.MISS:
                self.metrics.cache_misses.inc()
                stored, generation = await self._mysql_counter(user_id, value or 0)
                await self.hook("after_mysql_read")
                if stored is not None:
                    seed = stored  # the next call seeds, unless the generation moved
                    continue
                outcome, value = await self._redis(self.counters.mark_absent(user_id, generation))
                generation = None
                if outcome is Outcome.OK:
                    continue  # created while we looked: its counter is live now
            elif outcome is Outcome.OK:
                self.metrics.cache_hits.inc()
            if outcome is Outcome.STALE:
                self.metrics.stale_seeds.inc()
                refusals += 1
                continue
            if outcome in (Outcome.OK, Outcome.REPLAY) and value is not None:
                if outcome is Outcome.OK:
                    self.metrics.increments.inc()
                return value
            raise UserNotFound(f"user {user_id} not found")
        raise self._contended(user_id)

    async def delete_user(self, user_id: int) -> None:
        if not await self.users.delete(user_id):
            await self._finish_earlier_delete(user_id)
            raise UserNotFound(f"user {user_id} not found")
        await self._redis(self.counters.deleted(user_id))

    async def _finish_earlier_delete(self, user_id: int) -> None:
        """A live counter without a row: an earlier delete removed the row but failed (or
        timed out) before its Redis step. Finish it, so a retried DELETE is enough."""
        outcome, _ = await self._redis(self.counters.read(user_id))
        # Create inserts the row before it seeds the counter, so a counter whose row is
        # absent when read *after* it belonged to a deleted user (ids are never reused).
        if outcome is Outcome.OK and await self.users.get(user_id) is None:
            log.info("finished_earlier_delete", user_id=user_id)
            await self._redis(self.counters.deleted(user_id))

    async def _mysql_counter(self, user_id: int, generation: int) -> tuple[int | None, int]:
        """The row's counter (None: no row) and the generation to seed it under. Callers
        that join a read already under way take its starter's generation: theirs may be
        newer than the start of that read."""

        async def read() -> tuple[int | None, int]:
            user = await self.users.get(user_id)
            return (None if user is None else user.counter), generation

        return await self._mysql_reads.do(user_id, read)

    def _contended(self, user_id: int) -> SeedContended:
        log.warning("seed_contended", user_id=user_id, attempts=SEED_ATTEMPTS)
        return SeedContended("the counter is being synced, try again shortly")

    def redis_busy(self) -> bool:
        """Every pooled Redis connection is in use while Redis answered the last call: a
        probe would only wait in line (its own deadline is shorter than the wait)."""
        return self.redis_answering and redis_pool_full(self.counters.redis)

    async def redis_check(self) -> str:
        """The readiness check of Redis: "ok" when it answers a ping, "busy" when the pool
        has no free connection while Redis answers; raises when Redis does not answer."""
        if self.redis_busy():
            return "busy"
        try:
            await self.counters.ping()
        except REDIS_ERRORS as e:
            if pool_exhausted(e) and self.redis_answering:
                return "busy"
            raise
        return "ok"

    async def _redis(self, call: Awaitable[T]) -> T:
        try:
            result = await call
        except NotReplicated as e:
            self.redis_answering = True
            self.metrics.not_replicated.inc()
            log.warning("redis_write_not_replicated", error=str(e))
            raise WriteNotReplicated(
                "the change may have been made but was not confirmed on enough Redis "
                "replicas; retry (with the same Idempotency-Key for an increment)"
            ) from e
        except REDIS_ERRORS as e:
            if pool_exhausted(e) and self.redis_answering:
                raise RedisOverloaded("the service is overloaded, try again shortly") from e
            self.redis_answering = False
            self.metrics.redis_errors.inc()
            log.warning("redis_error", error=str(e), kind=type(e).__name__)
            raise RedisUnavailable("the counter store is unavailable, try again shortly") from e
        self.redis_answering = True
        return result
