"""The Redis side of UserCounter: every key name and every Lua script lives here.

Keys are bucketed by `id % buckets` and carry the bucket as a Cluster hash tag
(`uc:{7}:c:123`), so each script touches one slot and buckets drain in parallel.
The sync worker imports this module; nothing else spells a key.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from counter_svc.pipelining import AutoPipeline
from counter_svc.settings import Settings


class Outcome(IntEnum):
    """What a counter script found; shared with the Lua code as small integers."""

    OK = 0
    MISS = 1  # no live counter: the caller must read MySQL and seed
    GONE = 2  # tombstone: the user was deleted
    REPLAY = 3  # idempotency key seen before: the stored answer is returned
    ABSENT = 4  # negative cache: MySQL had no such row a moment ago
    STALE = 5  # a seed refused: the bucket's generation moved since the MySQL read began


@dataclass(frozen=True)
class Keys:
    """The key layout of one deployment (prefix and bucket count are fixed for its life)."""

    prefix: str = "uc"
    buckets: int = 64

    def bucket(self, user_id: int) -> int:
        return user_id % self.buckets

    def tag(self, bucket: int) -> str:
        return f"{self.prefix}:{{{bucket}}}"

    def counter(self, user_id: int) -> str:
        return f"{self.tag(self.bucket(user_id))}:c:{user_id}"

    def counter_prefix(self, bucket: int) -> str:
        """Counter keys of a bucket are this string followed by the id."""
        return f"{self.tag(bucket)}:c:"

    def dirty(self, bucket: int) -> str:
        return f"{self.tag(bucket)}:dirty"

    def inflight(self, bucket: int) -> str:
        return f"{self.tag(bucket)}:inflight"

    def inflight_since(self, bucket: int) -> str:
        """When the oldest id of the claimed batch became dirty (ms): the lag of `inflight`."""
        return f"{self.tag(bucket)}:inflight_since"

    def lease(self, bucket: int) -> str:
        return f"{self.tag(bucket)}:lease"

    def generation(self, bucket: int) -> str:
        """Bumped by every script that can make a counter of the bucket disappear (gives it
        the idle TTL, or deletes it): a seed read from MySQL before a bump may be stale."""
        return f"{self.tag(bucket)}:gen"

    def gone(self, user_id: int) -> str:
        return f"{self.tag(self.bucket(user_id))}:gone:{user_id}"

    def absent(self, user_id: int) -> str:
        return f"{self.tag(self.bucket(user_id))}:absent:{user_id}"

    def idem(self, user_id: int, key: str) -> str:
        return f"{self.tag(self.bucket(user_id))}:idem:{user_id}:{key}"

    def rate_limit(self, client: str) -> str:
        """The request budget of one client (an address or a /64); its own hash tag."""
        return f"{self.prefix}:rl:{{{client}}}"

    def all_keys_pattern(self) -> str:
        return f"{self.prefix}:*"


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
INCREMENT_LUA = """
if redis.call('EXISTS', KEYS[2]) == 1 then return {2, ''} end
local idem = KEYS[6]
if idem then
  local prev = redis.call('GET', idem)
  if prev then return {3, prev} end
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
"""

# Read. KEYS: counter, gone, absent, generation. Returns {outcome, value}; a MISS (and an
# ABSENT: `get` reads the row anyway) returns the bucket's generation, as the increment does.
# Flagged read-only, so counts keep working when Redis is at maxmemory or a replica.
READ_LUA = """#!lua flags=no-writes
if redis.call('EXISTS', KEYS[2]) == 1 then return {2, ''} end
local v = redis.call('GET', KEYS[1])
if v then return {0, v} end
local gen = redis.call('GET', KEYS[4]) or '0'
if redis.call('EXISTS', KEYS[3]) == 1 then return {4, gen} end
return {1, gen}
"""

# Seed a counter read from MySQL. KEYS: counter, gone, generation. ARGV: value, idle ttl
# ms, the generation the value was read under. A live counter is newer and kept; a moved
# generation means the value may be older than one already synced and evicted: refused
# (STALE), the caller reads MySQL again. The idle TTL lets a clean counter be evicted.
SEED_LUA = """
if redis.call('EXISTS', KEYS[2]) == 1 then return {2, ''} end
local v = redis.call('GET', KEYS[1])
if v then return {0, v} end
if (redis.call('GET', KEYS[3]) or '0') ~= ARGV[3] then return {5, ''} end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {0, ARGV[1]}
"""

# Remember that MySQL has no such row. KEYS: counter, gone, absent, generation. ARGV: ttl
# ms, the generation the row was looked up under. Refused when a counter exists, or when
# the generation moved (a create may have come and its counter gone since): a create that
# landed meanwhile always wins.
MARK_ABSENT_LUA = """
if redis.call('EXISTS', KEYS[2]) == 1 then return {2, ''} end
local v = redis.call('GET', KEYS[1])
if v then return {0, v} end
if (redis.call('GET', KEYS[4]) or '0') ~= ARGV[2] then return {5, ''} end
redis.call('SET', KEYS[3], '1', 'PX', ARGV[1])
return {4, ''}
"""

# A user was just inserted. KEYS: counter, gone, absent, generation. ARGV: idle ttl ms.
# Ids are never reused, so a tombstone here means a delete of this very user raced in
# between the INSERT and this call: it must win. A negative-cache entry is stale. The
# new counter carries the idle TTL, so the generation moves.
CREATED_LUA = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('DEL', KEYS[3])
redis.call('SET', KEYS[1], '0', 'NX', 'PX', ARGV[1])
redis.call('INCR', KEYS[4])
return 1
"""

# A user was just deleted from MySQL. KEYS: counter, gone, absent, dirty, inflight,
# inflight_since, generation. ARGV: id, tombstone ttl seconds.
DELETED_LUA = """
redis.call('SET', KEYS[2], '1', 'EX', ARGV[2])
redis.call('DEL', KEYS[1], KEYS[3])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('HDEL', KEYS[5], ARGV[1])
if redis.call('EXISTS', KEYS[5]) == 0 then redis.call('DEL', KEYS[6]) end
redis.call('INCR', KEYS[7])
return 1
"""

# Worker claim. KEYS: dirty, inflight, inflight_since. ARGV: batch size, counter key
# prefix of the bucket. A non-empty inflight (left by a crash or a slow peer) is returned as
# is, to be flushed first. Otherwise the oldest dirty ids move, with their current values,
# to inflight, and inflight_since keeps the dirty score of the oldest one: once out of
# `dirty`, that is the only record of how long MySQL has been behind for them. Every script
# that can empty inflight deletes inflight_since with it.
# Counter keys are built here from the bucket's hash tag, so they share the slot.
# `allow-oom`, as every worker script: see "Sync worker only" below.
CLAIM_LUA = """#!lua flags=allow-oom
if redis.call('EXISTS', KEYS[2]) == 1 then
  return {1, redis.call('HGETALL', KEYS[2])}
end
local range = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1, 'WITHSCORES')
if #range == 0 then return {0, {}} end
local ids, out, since = {}, {}, nil
for i = 1, #range, 2 do
  local id = range[i]
  ids[#ids + 1] = id
  local v = redis.call('GET', ARGV[2] .. id)
  if v then
    out[#out + 1] = id
    out[#out + 1] = v
    -- Scores ascend: the first id kept is the oldest.
    if not since then since = range[i + 1] end
  end
end
for i = 1, #ids, 1000 do
  redis.call('ZREM', KEYS[1], unpack(ids, i, math.min(i + 999, #ids)))
end
for i = 1, #out, 1000 do
  redis.call('HSET', KEYS[2], unpack(out, i, math.min(i + 999, #out)))
end
if since then redis.call('SET', KEYS[3], since) end
return {0, out}
"""

# Worker finish, after the MySQL commit. KEYS: inflight, dirty, inflight_since,
# generation. ARGV: counter key prefix, idle ttl ms, then id, value pairs that were
# committed. Each inflight entry is dropped only if it still holds the committed value (a
# peer may have claimed anew); each counter gets the idle TTL only if nobody incremented
# it since. A counter with a TTL may be evicted, so the generation moves when any got one.
FINISH_LUA = """#!lua flags=allow-oom
local expired = 0
for i = 3, #ARGV, 2 do
  local id, v = ARGV[i], ARGV[i + 1]
  if redis.call('HGET', KEYS[1], id) == v then redis.call('HDEL', KEYS[1], id) end
  local key = ARGV[1] .. id
  if redis.call('GET', key) == v and not redis.call('ZSCORE', KEYS[2], id) then
    redis.call('PEXPIRE', key, ARGV[2])
    expired = expired + 1
  end
end
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('DEL', KEYS[3]) end
if expired > 0 then redis.call('INCR', KEYS[4]) end
return expired
"""


# Rate limit, GCRA (a leaky bucket kept as one timestamp): `limit` requests per `period`,
# at most `limit` at once. KEYS: the client's key. ARGV: ms per request, limit.
# The key holds the "theoretical arrival time" of the next request. Redis' clock serves
# every replica alike. Returns {allowed 1/0, remaining, ms until full, ms until allowed}.
RATE_LIMIT_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local period = interval * tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local allow_at = tat + interval - period
if now < allow_at then
  return {0, 0, math.ceil(tat - now), math.ceil(allow_at - now)}
end
tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.3f', tat), 'PX', math.ceil(tat - now))
return {1, math.floor((now - allow_at) / interval), math.ceil(tat - now), 0}
"""


async def delete_all(redis: Redis, keys: Keys) -> int:
    """Delete every key of this prefix (a test run, a benchmark, a retired tenant)."""
    deleted = 0
    batch: list[bytes] = []
    async for key in redis.scan_iter(match=keys.all_keys_pattern(), count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            deleted += await redis.delete(*batch)
            batch.clear()
    if batch:
        deleted += await redis.delete(*batch)
    return deleted


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Counters:
    """The counter operations of the API, each one script call; the calls of concurrent
    requests share round trips (`AutoPipeline`)."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        idle_ttl_s: int,
        tombstone_ttl_s: int,
        absent_ttl_s: int,
        idem_ttl_s: int,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self._idle_ms = idle_ttl_s * 1000
        self._tombstone_s = tombstone_ttl_s
        self._absent_ms = absent_ttl_s * 1000
        self._idem_s = idem_ttl_s
        self._calls = AutoPipeline(redis)
        self._increment: AsyncScript = redis.register_script(INCREMENT_LUA)
        self._read: AsyncScript = redis.register_script(READ_LUA)
        self._seed: AsyncScript = redis.register_script(SEED_LUA)
        self._mark_absent: AsyncScript = redis.register_script(MARK_ABSENT_LUA)
        self._created: AsyncScript = redis.register_script(CREATED_LUA)
        self._deleted: AsyncScript = redis.register_script(DELETED_LUA)

    @classmethod
    def from_settings(cls, redis: Redis, settings: Settings) -> Counters:
        return cls(
            redis,
            Keys(settings.key_prefix, settings.buckets),
            settings.idle_ttl_seconds,
            settings.tombstone_ttl_seconds,
            settings.absent_ttl_seconds,
            settings.idempotency_ttl_seconds,
        )

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
        return _result(await self._calls.run(self._increment, keys, args))

    async def read(self, user_id: int) -> tuple[Outcome, int | None]:
        """The live value; on a MISS the value is the bucket's generation, as above."""
        keys = [*self._user_keys(user_id), self._generation(user_id)]
        return _result(await self._calls.run(self._read, keys, ()))

    async def seed(self, user_id: int, value: int, generation: int) -> tuple[Outcome, int | None]:
        """Seed a value read from MySQL under `generation` (from a MISS before the read)."""
        keys = [*self._user_keys(user_id)[:2], self._generation(user_id)]
        return _result(await self._calls.run(self._seed, keys, (value, self._idle_ms, generation)))

    async def mark_absent(self, user_id: int, generation: int) -> tuple[Outcome, int | None]:
        keys = [*self._user_keys(user_id), self._generation(user_id)]
        args = (self._absent_ms, generation)
        return _result(await self._calls.run(self._mark_absent, keys, args))

    async def created(self, user_id: int) -> None:
        keys = [*self._user_keys(user_id), self._generation(user_id)]
        await self._calls.run(self._created, keys, (self._idle_ms,))

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
        await self._calls.run(self._deleted, keys, (user_id, self._tombstone_s))


def _result(raw: Any) -> tuple[Outcome, int | None]:
    outcome, value = raw
    return Outcome(int(outcome)), (int(value) if value not in (b"", "") else None)


# --- Sync worker only -------------------------------------------------------------------
#
# Every worker script is flagged `allow-oom`. Dirty counters carry no TTL, so a Redis that
# filled up while the worker was behind has nothing left to evict; only a drain gives
# counters their idle TTL and so makes room. Refused at `maxmemory`, the worker could never
# drain again, and every increment would fail until an operator stepped in.

# Bucket lease. KEYS: lease. ARGV: token, ms.
# Renew and release act only while the lease is still ours: a worker that stalled past its
# lease must not extend or drop a lease another worker has taken since.
TAKE_LEASE_LUA = """#!lua flags=allow-oom
return redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
"""

RENEW_LEASE_LUA = """#!lua flags=allow-oom
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

RELEASE_LEASE_LUA = """#!lua flags=allow-oom
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# Forget ids whose MySQL row is gone (checked by the worker in the flush transaction).
# KEYS: dirty, inflight, inflight_since, generation, then counter, gone for each id.
# ARGV: tombstone ttl s, then ids. The tombstone makes a racing cold increment answer 404
# even if the API that deleted the row died before writing one.
FORGET_LUA = """#!lua flags=allow-oom
for i = 2, #ARGV do
  local id = ARGV[i]
  redis.call('SET', KEYS[2 * i + 2], '1', 'EX', ARGV[1])
  redis.call('DEL', KEYS[2 * i + 1])
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
end
if redis.call('EXISTS', KEYS[2]) == 0 then redis.call('DEL', KEYS[3]) end
redis.call('INCR', KEYS[4])
return #ARGV - 1
"""
