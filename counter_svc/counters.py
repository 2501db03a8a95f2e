"""The API's counters in Redis: each Lua script of the request paths beside the one
wrapper that calls it and owns its KEYS order (docs/design.md, "Request paths").

Key names come from `counter_svc.keys`; the worker's scripts live in `sync_worker`.
"""

from __future__ import annotations

import asyncio
import time
from enum import IntEnum
from typing import Any

from redis.asyncio.cluster import RedisCluster

from counter_svc.connections import RedisClient
from counter_svc.functions import Function, Library
from counter_svc.keys import Keys
from counter_svc.pipelining import make_pipeline
from counter_svc.settings import Settings


class Outcome(IntEnum):
    """What a counter script found; shared with the Lua code as small integers."""

    OK = 0
    MISS = 1  # no live counter: the caller must read MySQL and seed
    GONE = 2  # tombstone: the user was deleted
    REPLAY = 3  # idempotency key seen before: the stored answer is returned
    ABSENT = 4  # negative cache: MySQL had no such row a moment ago
    STALE = 5  # a seed refused: the bucket's generation moved since the MySQL read began


def _best_effort(reply: Any) -> bool:
    """Cache fills (a seed, the negative cache, a new user's counter at 0): a failover
    that loses one costs a MySQL read, not an acknowledged change; no WAIT needed."""
    return False


# The bucket generation moves to a value it never had: at least the current microsecond
# (Redis' clock), and always above the last. A plain counter could come back to a value a
# stale reader saw, after a failover to a replica behind or a restart without data.
GENERATION = """
local function bump_generation(key)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local last = tonumber(redis.call('GET', key) or '0')
  if now <= last then now = last + 1 end
  redis.call('SET', key, string.format('%.0f', now))
end
"""

# Increment. KEYS: counter, gone, absent, dirty, generation, then idem when the request
# has an Idempotency-Key (no empty key name: on a cluster it would hash to another slot).
# ARGV: id, now_ms, seed ("" on the hot path), idempotency ttl seconds, the generation the
# seed was read under. Returns {outcome, value}; a MISS returns the bucket's generation,
# to be handed back with the seed read from MySQL after it (docs/design.md, invariant 11).
# A seed is applied only when the counter is absent, no tombstone exists and the generation
# has not moved, so a delete racing a cold increment always wins and a value read from
# MySQL before a newer one was synced and evicted is never put back. The tombstone is
# checked before the idempotent answer: a deleted user stays 404, retries included.
# The value is returned as Redis' own string: Lua numbers are doubles, and tostring()
# would print 1e+14 for large counters.
INCREMENT = Function(
    "increment",
    """
if redis.call('EXISTS', KEYS[2]) == 1 then return {2, ''} end
local idem = KEYS[6]
if idem then
  local prev = redis.call('GET', idem)
  if prev then
    -- Rewritten, so that this connection's WAIT covers the answer being replayed even
    -- when the write that stored it went out on another connection.
    redis.call('SET', idem, prev, 'KEEPTTL')
    return {3, prev}
  end
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  if ARGV[3] == '' then
    if redis.call('EXISTS', KEYS[3]) == 1 then return {4, ''} end
    return {1, redis.call('GET', KEYS[5]) or '0'}
  end
  if ARGV[5] ~= '' and (redis.call('GET', KEYS[5]) or '0') ~= ARGV[5] then return {5, ''} end
  redis.call('SET', KEYS[1], ARGV[3])
end
redis.call('INCR', KEYS[1])
local v = redis.call('GET', KEYS[1])
redis.call('PERSIST', KEYS[1])
redis.call('ZADD', KEYS[4], 'NX', ARGV[2], ARGV[1])
if idem then redis.call('SET', idem, v, 'EX', ARGV[4]) end
return {0, v}
""",
    confirms=lambda reply: int(reply[0]) in (Outcome.OK, Outcome.REPLAY),
)

# Read. KEYS: counter, gone, absent, generation. Returns {outcome, value}; a MISS (and an
# ABSENT: `get` reads the row anyway) returns the bucket's generation, as the increment does.
# Flagged read-only, so counts keep working when Redis is at maxmemory or a replica.
READ = Function(
    "read",
    """
if redis.call('EXISTS', KEYS[2]) == 1 then return {2, ''} end
local v = redis.call('GET', KEYS[1])
if v then return {0, v} end
local gen = redis.call('GET', KEYS[4]) or '0'
if redis.call('EXISTS', KEYS[3]) == 1 then return {4, gen} end
return {1, gen}
""",
    ("no-writes",),
)

# Seed a counter read from MySQL. KEYS: counter, gone, generation. ARGV: value, idle ttl
# ms, the generation the value was read under. A live counter is newer and kept; a moved
# generation means the value may be older than one already synced and evicted: refused
# (STALE), the caller reads MySQL again. The idle TTL lets a clean counter be evicted.
SEED = Function(
    "seed",
    """
if redis.call('EXISTS', KEYS[2]) == 1 then return {2, ''} end
local v = redis.call('GET', KEYS[1])
if v then return {0, v} end
if (redis.call('GET', KEYS[3]) or '0') ~= ARGV[3] then return {5, ''} end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {0, ARGV[1]}
""",
    confirms=_best_effort,
)

# Remember that MySQL has no such row. KEYS: counter, gone, absent, generation. ARGV: ttl
# ms, the generation the row was looked up under. Refused when a counter exists, or when
# the generation moved (a create may have come and its counter gone since): a create that
# landed meanwhile always wins.
MARK_ABSENT = Function(
    "mark_absent",
    """
if redis.call('EXISTS', KEYS[2]) == 1 then return {2, ''} end
local v = redis.call('GET', KEYS[1])
if v then return {0, v} end
if (redis.call('GET', KEYS[4]) or '0') ~= ARGV[2] then return {5, ''} end
redis.call('SET', KEYS[3], '1', 'PX', ARGV[1])
return {4, ''}
""",
    confirms=_best_effort,
)

# A user was just inserted. KEYS: counter, gone, absent, generation. ARGV: idle ttl ms.
# Ids are never reused, so a tombstone here means a delete of this very user raced in
# between the INSERT and this call: it must win. A negative-cache entry is stale. The
# new counter carries the idle TTL, so the generation moves.
CREATED = Function(
    "created",
    """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('DEL', KEYS[3])
redis.call('SET', KEYS[1], '0', 'NX', 'PX', ARGV[1])
bump_generation(KEYS[4])
return 1
""",
    confirms=_best_effort,
)

# A user was just deleted from MySQL. KEYS: counter, gone, absent, dirty, inflight,
# inflight_since, generation. ARGV: id, tombstone ttl seconds.
DELETED = Function(
    "deleted",
    """
redis.call('SET', KEYS[2], '1', 'EX', ARGV[2])
redis.call('DEL', KEYS[1], KEYS[3])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('HDEL', KEYS[5], ARGV[1])
if redis.call('EXISTS', KEYS[5]) == 0 then redis.call('DEL', KEYS[6]) end
bump_generation(KEYS[7])
return 1
""",
)


# The API's functions, loaded as one library (counter_svc/functions.py).
LIBRARY = Library("api", (INCREMENT, READ, SEED, MARK_ABSENT, CREATED, DELETED), prelude=GENERATION)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Counters:
    """The counter operations of the API, each one function call; the calls of concurrent
    requests share round trips (`AutoPipeline`), and with `ack_replicas` their writes are
    answered only once that many replicas have them."""

    def __init__(
        self,
        redis: RedisClient,
        keys: Keys,
        idle_ttl_s: int,
        tombstone_ttl_s: int,
        absent_ttl_s: int,
        idem_ttl_s: int,
        timeout_s: float = 1.0,
        ack_replicas: int = 0,
        ack_timeout_ms: int = 100,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.timeout_s = timeout_s
        self._idle_ms = idle_ttl_s * 1000
        self._tombstone_s = tombstone_ttl_s
        self._absent_ms = absent_ttl_s * 1000
        self._idem_s = idem_ttl_s
        self._calls = make_pipeline(redis, LIBRARY, ack_replicas, ack_timeout_ms)

    @classmethod
    def from_settings(cls, redis: RedisClient, settings: Settings) -> Counters:
        return cls(
            redis,
            Keys.from_settings(settings),
            settings.idle_ttl_seconds,
            settings.tombstone_ttl_seconds,
            settings.absent_ttl_seconds,
            settings.idempotency_ttl_seconds,
            settings.redis_timeout_seconds,
            settings.redis_ack_replicas,
            settings.redis_ack_timeout_ms,
        )

    async def load(self) -> None:
        """Load the function library (at start; a call that meets a Redis without it
        loads it too)."""
        await LIBRARY.load(self.redis)

    async def ping(self) -> None:
        """Raise unless Redis answers within REDIS_TIMEOUT_SECONDS (the readiness check)."""
        async with asyncio.timeout(self.timeout_s):
            if isinstance(self.redis, RedisCluster):
                # Every primary (one down leaves slots unserved); not the replicas.
                await self.redis.ping(target_nodes=RedisCluster.PRIMARIES)
            else:
                await self.redis.ping()

    def _user_keys(self, user_id: int) -> list[str]:
        """counter, gone, absent: the first KEYS of every per-user script."""
        k = self.keys
        return [k.counter(user_id), k.gone(user_id), k.absent(user_id)]

    def _generation(self, user_id: int) -> str:
        return self.keys.generation(self.keys.bucket(user_id))

    async def increment(
        self,
        user_id: int,
        idem_key: str | None = None,
        seed: int | None = None,
        generation: int | None = None,
    ) -> tuple[Outcome, int | None]:
        """Count once. On a MISS the value is the bucket's generation: read MySQL after it
        and call again with `seed` and that `generation`. A seed without a generation is
        applied unchecked: only for counters set up outside the request paths."""
        k = self.keys
        keys = [*self._user_keys(user_id), k.dirty(k.bucket(user_id)), self._generation(user_id)]
        if idem_key:
            keys.append(k.idem(user_id, idem_key))
        args = [
            user_id,
            now_ms(),
            "" if seed is None else seed,
            self._idem_s,
            "" if generation is None else generation,
        ]
        return _result(await self._calls.run(INCREMENT, keys, args))

    async def read(self, user_id: int) -> tuple[Outcome, int | None]:
        """The live value; on a MISS the value is the bucket's generation, as above."""
        keys = [*self._user_keys(user_id), self._generation(user_id)]
        return _result(await self._calls.run(READ, keys, ()))

    async def seed(self, user_id: int, value: int, generation: int) -> tuple[Outcome, int | None]:
        """Seed a value read from MySQL under `generation` (from a MISS before the read)."""
        keys = [*self._user_keys(user_id)[:2], self._generation(user_id)]
        return _result(await self._calls.run(SEED, keys, (value, self._idle_ms, generation)))

    async def mark_absent(self, user_id: int, generation: int) -> tuple[Outcome, int | None]:
        keys = [*self._user_keys(user_id), self._generation(user_id)]
        args = (self._absent_ms, generation)
        return _result(await self._calls.run(MARK_ABSENT, keys, args))

    async def created(self, user_id: int) -> None:
        keys = [*self._user_keys(user_id), self._generation(user_id)]
        await self._calls.run(CREATED, keys, (self._idle_ms,))

    async def deleted(self, user_id: int) -> None:
        k = self.keys
        b = k.bucket(user_id)
        keys = [
            *self._user_keys(user_id),
            k.dirty(b),
            k.inflight(b),
            k.inflight_since(b),
            k.generation(b),
        ]
        await self._calls.run(DELETED, keys, (user_id, self._tombstone_s))


def _result(raw: Any) -> tuple[Outcome, int | None]:
    outcome, value = raw
    return Outcome(int(outcome)), (int(value) if value not in (b"", "") else None)
