"""The request paths of DESIGN.md: Redis in front, MySQL behind.

Increments and counts are answered from Redis; a miss reads MySQL once per id per
process (single flight) and seeds Redis with a script that a tombstone refuses.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

import structlog

from counter_svc.connections import REDIS_ERRORS
from counter_svc.counters import Counters, Outcome
from counter_svc.errors import Unavailable, UserNotFound
from counter_svc.metrics import Metrics
from counter_svc.singleflight import SingleFlight
from counter_svc.users import User, Users

T = TypeVar("T")

log = structlog.get_logger(__name__)


class RedisUnavailable(Unavailable):
    """Redis could not be reached or did not answer in time."""


class Store:
    """User and counter operations as the HTTP API needs them."""

    def __init__(self, users: Users, counters: Counters, metrics: Metrics) -> None:
        self.users = users
        self.counters = counters
        self.metrics = metrics
        self._mysql_reads: SingleFlight[int | None] = SingleFlight()

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
        user = await self.users.get(user_id)
        if user is None:
            raise UserNotFound(f"user {user_id} not found")
        outcome, value = await self._redis(self.counters.read(user_id))
        if outcome is Outcome.MISS or outcome is Outcome.ABSENT:
            outcome, value = await self._redis(self.counters.seed(user_id, user.counter))
        if outcome is Outcome.GONE or value is None:
            raise UserNotFound(f"user {user_id} not found")
        return User(user.id, user.username, value, user.created_at, user.updated_at)

    async def count(self, user_id: int) -> int:
        outcome, value = await self._redis(self.counters.read(user_id))
        if outcome is Outcome.OK and value is not None:
            self.metrics.cache_hits.inc()
            return value
        if outcome is Outcome.MISS:
            self.metrics.cache_misses.inc()
            stored = await self._mysql_counter(user_id)
            if stored is not None:
                outcome, value = await self._redis(self.counters.seed(user_id, stored))
            else:
                outcome, value = await self._redis(self.counters.mark_absent(user_id))
            if outcome is Outcome.OK and value is not None:
                return value
        raise UserNotFound(f"user {user_id} not found")

    async def increment(self, user_id: int, idem_key: str | None = None) -> int:
        outcome, value = await self._redis(self.counters.increment(user_id, idem_key))
        if outcome is Outcome.MISS:
            self.metrics.cache_misses.inc()
            stored = await self._mysql_counter(user_id)
            if stored is None:
                outcome, value = await self._redis(self.counters.mark_absent(user_id))
                if outcome is Outcome.OK:
                    # Created while we looked: its counter is live now.
                    outcome, value = await self._redis(self.counters.increment(user_id, idem_key))
            else:
                outcome, value = await self._redis(
                    self.counters.increment(user_id, idem_key, seed=stored)
                )
        elif outcome is Outcome.OK:
            self.metrics.cache_hits.inc()
        if outcome in (Outcome.OK, Outcome.REPLAY) and value is not None:
            if outcome is Outcome.OK:
                self.metrics.increments.inc()
            return value
        raise UserNotFound(f"user {user_id} not found")

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

    async def _mysql_counter(self, user_id: int) -> int | None:
        async def read() -> int | None:
            user = await self.users.get(user_id)
            return None if user is None else user.counter

        return await self._mysql_reads.do(user_id, read)

    async def _redis(self, call: Awaitable[T]) -> T:
        try:
            return await call
        except REDIS_ERRORS as e:
            self.metrics.redis_errors.inc()
            log.warning("redis_error", error=str(e), kind=type(e).__name__)
            raise RedisUnavailable("the counter store is unavailable, try again shortly") from e
