"""The worker's side of Redis: each script of a drain beside the one method that calls it
and owns its KEYS order (docs/design.md, "The sync worker"). `Drainer` holds the batch
logic and calls these; key names come from `counter_svc.keys`.

Every worker script is flagged `allow-oom`. Dirty counters carry no TTL, so a Redis that
filled up while the worker was behind has nothing left to evict; only a drain gives
counters their idle TTL and so makes room. Refused at `maxmemory`, the worker could never
drain again, and every increment would fail until an operator stepped in.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio.cluster import PipelineCommand, RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from counter_svc.connections import REDIS_ERRORS, RedisClient
from counter_svc.counters import GENERATION
from counter_svc.functions import Function, Library, is_missing
from counter_svc.keys import Keys
from counter_svc.pipelining import NotReplicated

# Bucket lease. KEYS: lease. ARGV: token, ms.
# Renew and release act only while the lease is still ours: a worker that stalled past its
# lease must not extend or drop a lease another worker has taken since.
TAKE_LEASE = Function(
    "take_lease",
    """
return redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
""",
    ("allow-oom",),
)

RENEW_LEASE = Function(
    "renew_lease",
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
""",
    ("allow-oom",),
)

RELEASE_LEASE = Function(
    "release_lease",
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
""",
    ("allow-oom",),
)

# Worker claim. KEYS: dirty, inflight, inflight_since, then the counter of each candidate.
# ARGV: the candidate ids (the oldest dirty ones, read just before by the caller, which
# holds the bucket's lease). A non-empty inflight (left by a crash or a slow peer) is
# returned as is, to be flushed first. Otherwise each candidate still dirty moves, with its
# current value, to inflight, and inflight_since keeps the dirty score of the oldest one:
# once out of `dirty`, that is the only record of how long MySQL has been behind for them.
# Every script that can empty inflight deletes inflight_since with it. Every key is
# declared, none built here, so a Redis Cluster can redirect the call while the bucket's
# slot moves.
CLAIM = Function(
    "claim",
    """
if redis.call('EXISTS', KEYS[2]) == 1 then
  -- Rewritten, so that the caller's WAIT covers the batch it gets back (Redis 7.2 moves a
  -- connection's replication offset only when it writes).
  local since = redis.call('GET', KEYS[3])
  if not since then  -- left by an older version: the lag counts from now
    local t = redis.call('TIME')
    since = tostring(tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
  end
  redis.call('SET', KEYS[3], since)
  return {1, redis.call('HGETALL', KEYS[2])}
end
local ids, out, since = {}, {}, nil
for i = 1, #ARGV do
  local id = ARGV[i]
  local score = redis.call('ZSCORE', KEYS[1], id)
  if score then
    ids[#ids + 1] = id
    local v = redis.call('GET', KEYS[3 + i])
    if v then
      out[#out + 1] = id
      out[#out + 1] = v
      if not since or tonumber(score) < tonumber(since) then since = score end
    end
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
""",
    ("allow-oom",),
)

# Worker finish, after the MySQL commit. KEYS: inflight, dirty, inflight_since,
# generation, then the counter of each id. ARGV: idle ttl ms, then id, value pairs that
# were committed. Each inflight entry is dropped only if it still holds the committed value
# (a peer may have claimed anew); each counter gets the idle TTL only if nobody incremented
# it since. A counter with a TTL may be evicted, so the generation moves when any got one.
FINISH = Function(
    "finish",
    """
local expired = 0
for i = 2, #ARGV, 2 do
  local id, v = ARGV[i], ARGV[i + 1]
  if redis.call('HGET', KEYS[1], id) == v then redis.call('HDEL', KEYS[1], id) end
  local key = KEYS[4 + i / 2]
  if redis.call('GET', key) == v and not redis.call('ZSCORE', KEYS[2], id) then
    redis.call('PEXPIRE', key, ARGV[1])
    expired = expired + 1
  end
end
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('DEL', KEYS[3]) end
if expired > 0 then bump_generation(KEYS[4]) end
return expired
""",
    ("allow-oom",),
)

# Forget ids whose MySQL row is gone (checked by the worker in the flush transaction).
# KEYS: dirty, inflight, inflight_since, generation, then counter, gone for each id.
# ARGV: tombstone ttl s, then ids. The tombstone makes a racing cold increment answer 404
# even if the API that deleted the row died before writing one.
FORGET = Function(
    "forget",
    """
for i = 2, #ARGV do
  local id = ARGV[i]
  redis.call('SET', KEYS[2 * i + 2], '1', 'EX', ARGV[1])
  redis.call('DEL', KEYS[2 * i + 1])
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
end
if redis.call('EXISTS', KEYS[2]) == 0 then redis.call('DEL', KEYS[3]) end
bump_generation(KEYS[4])
return #ARGV - 1
""",
    ("allow-oom",),
)


# Repair, after the MySQL commit found rows ahead of the claimed values. KEYS: inflight,
# then the counter of each id. ARGV: id, claimed, MySQL's value, difference, per id. Only
# while `inflight` still holds the claimed value (this batch, not a peer's newer claim):
# the counter is raised by the difference (so later increments count on from MySQL's
# value) and the entry then holds MySQL's value, which FINISH compares against; a replay
# of the batch finds nothing to raise. Returns the counters raised.
RAISE_BEHIND = Function(
    "raise_behind",
    """
local raised = 0
for i = 1, #ARGV, 4 do
  local id = ARGV[i]
  if redis.call('HGET', KEYS[1], id) == ARGV[i + 1] then
    local key = KEYS[2 + (i - 1) / 4]
    if redis.call('EXISTS', key) == 1 then
      redis.call('INCRBY', key, ARGV[i + 3])
      raised = raised + 1
    end
    redis.call('HSET', KEYS[1], id, ARGV[i + 2])
  end
end
return raised
""",
    ("allow-oom",),
)

# The worker's functions, loaded as one library (counter_svc/functions.py).
LIBRARY = Library(
    "worker",
    (TAKE_LEASE, RENEW_LEASE, RELEASE_LEASE, CLAIM, FINISH, FORGET, RAISE_BEHIND),
    prelude=GENERATION,
)


@dataclass(frozen=True)
class Backlog:
    """What is not in MySQL yet, over all buckets."""

    dirty: int
    inflight: int
    lag_seconds: float  # age of the oldest increment not in MySQL, dirty or claimed
    # Cluster mode: the same per primary (its address), over the buckets it serves.
    shards: dict[str, Backlog] = field(default_factory=dict)


class Buckets:
    """The bucket operations of one worker: its lease token is its identity."""

    def __init__(
        self,
        redis: RedisClient,
        keys: Keys,
        token: str,
        ack_replicas: int = 0,
        ack_timeout_ms: int = 100,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.token = token
        # REDIS_ACK_REPLICAS: a claimed batch goes to MySQL only once that many replicas
        # have it. MySQL seeds Redis: a value written there from a write that a failover
        # then loses (one answered 503 not_replicated, which its client retries) would come
        # back through a seed and count twice.
        self.ack_replicas = ack_replicas
        self.ack_timeout_ms = ack_timeout_ms

    async def take_lease(self, bucket: int, ms: int) -> bool:
        """Take the bucket's lease, or take back one this token still holds."""
        lease = self.keys.lease(bucket)
        if await self._call(TAKE_LEASE, [lease], [self.token, ms]):
            return True
        return bool(await self._call(RENEW_LEASE, [lease], [self.token, ms]))

    async def renew_lease(self, bucket: int, ms: int) -> bool:
        return bool(await self._call(RENEW_LEASE, [self.keys.lease(bucket)], [self.token, ms]))

    async def release_lease(self, bucket: int) -> None:
        await self._call(RELEASE_LEASE, [self.keys.lease(bucket)], [self.token])

    async def claim(self, bucket: int, batch_size: int) -> tuple[bool, list[bytes]]:
        """(leftover, [id, value, ...]): a batch moved from `dirty` to `inflight`, or the
        `inflight` a crashed or stalled drain left behind."""
        k = self.keys
        # The candidates first (a read): the claim names each key it touches. Ids that
        # become dirty meanwhile wait for the next claim; the lease keeps peers away.
        members = await self.redis.zrange(k.dirty(bucket), 0, batch_size - 1)
        ids = [int(i) for i in members if isinstance(i, bytes | str)]
        keys = [
            k.dirty(bucket),
            k.inflight(bucket),
            k.inflight_since(bucket),
            *(k.counter(i) for i in ids),
        ]
        if not self.ack_replicas:
            leftover, flat = await self._call(CLAIM, keys, ids)
            return bool(leftover), list(flat)
        # The WAIT on the connection that claimed: the replicas then have the batch and
        # everything written before it.
        claimed, confirmed = await self._claim_and_wait(keys, ids)
        if is_missing(claimed):
            await LIBRARY.load(self.redis, keys[0])
            claimed, confirmed = await self._claim_and_wait(keys, ids)
        if isinstance(claimed, Exception):
            raise claimed
        leftover, flat = claimed
        if flat and (not isinstance(confirmed, int) or confirmed < self.ack_replicas):
            # Left in inflight: the next claim returns it, and waits again.
            raise NotReplicated(
                f"bucket {bucket}: {confirmed} of {self.ack_replicas} replicas have the "
                f"claimed batch after {self.ack_timeout_ms} ms; not written to MySQL yet"
            )
        return bool(leftover), list(flat)

    async def _claim_and_wait(self, keys: list[Any], ids: list[int]) -> tuple[Any, Any]:
        """CLAIM then WAIT on one connection: of the node that owns the bucket in a
        cluster (WAIT has no key to route it by), else of the primary."""
        argv = (LIBRARY.qualified(CLAIM), len(keys), *keys, *ids)
        if isinstance(self.redis, RedisCluster):
            await self.redis.initialize()
            node = self.redis.get_node_from_key(keys[0])
            if node is None:
                return RedisConnectionError(f"no node serves {keys[0]}"), None
            claim = PipelineCommand(0, "FCALL", *argv)
            wait = PipelineCommand(1, "WAIT", self.ack_replicas, self.ack_timeout_ms)
            try:
                await node.execute_pipeline([claim, wait])
            except RedisError as e:
                return e, None
            return claim.result, wait.result
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.fcall(*argv)
            pipe.wait(self.ack_replicas, self.ack_timeout_ms)
            claimed, confirmed = await pipe.execute(raise_on_error=False)
        return claimed, confirmed

    async def finish(self, bucket: int, idle_ms: int, done: list[bytes]) -> int:
        """After the commit: `done` is [id, value, ...] as claimed. Returns the counters
        that got their idle TTL."""
        k = self.keys
        keys = [
            k.inflight(bucket),
            k.dirty(bucket),
            k.inflight_since(bucket),
            k.generation(bucket),
            *(k.counter(int(i)) for i in done[::2]),
        ]
        expired: int = await self._call(FINISH, keys, [idle_ms, *done])
        return expired

    async def forget(self, bucket: int, tombstone_s: int, ids: list[int]) -> None:
        """Ids whose MySQL row is gone: drop their counters, leave tombstones."""
        k = self.keys
        keys = [k.dirty(bucket), k.inflight(bucket), k.inflight_since(bucket), k.generation(bucket)]
        for user_id in ids:
            keys += [k.counter(user_id), k.gone(user_id)]
        await self._call(FORGET, keys, [tombstone_s, *ids])

    async def raise_behind(self, bucket: int, triples: list[tuple[int, int, int]]) -> int:
        """(id, claimed, MySQL's value) for rows MySQL is ahead of; returns those raised."""
        k = self.keys
        keys = [k.inflight(bucket), *(k.counter(i) for i, _, _ in triples)]
        args = [x for i, c, m in triples for x in (i, c, m, m - c)]
        raised: int = await self._call(RAISE_BEHIND, keys, args)
        return raised

    async def load(self) -> None:
        """Load the function library (at start; a call that meets a Redis without it
        loads it too)."""
        await LIBRARY.load(self.redis)

    async def _call(self, function: Function, keys: list[Any], args: list[Any]) -> Any:
        return await LIBRARY.call(self.redis, function, keys, args)

    async def _execute(self, pipe: Any) -> list[Any]:
        try:
            replies: list[Any] = await pipe.execute()
        except (RedisConnectionError, RedisTimeoutError):
            if isinstance(self.redis, RedisCluster):
                # redis-py does not read the slot table again after a pipeline's
                # connection error (a single command's, it does): a node may be gone.
                with contextlib.suppress(*REDIS_ERRORS):
                    await self.redis.nodes_manager.initialize()
            raise
        return replies

    async def busy(self) -> list[int]:
        """The buckets with dirty or claimed ids (one pipelined round trip)."""
        k = self.keys
        pipe = self.redis.pipeline(transaction=False)
        for b in range(k.buckets):
            pipe.exists(k.dirty(b), k.inflight(b))
        replies = await self._execute(pipe)
        return [b for b, found in enumerate(replies) if found]

    async def backlog(self) -> Backlog:
        """One pipelined round trip over every bucket. A claimed batch counts from
        `inflight_since` (during a MySQL outage the first claim empties `dirty`)."""
        k = self.keys
        pipe = self.redis.pipeline(transaction=False)
        for b in range(k.buckets):
            pipe.zcard(k.dirty(b))
            pipe.hlen(k.inflight(b))
            pipe.zrange(k.dirty(b), 0, 0, withscores=True)
            pipe.get(k.inflight_since(b))
        replies = await self._execute(pipe)
        now_ms = time.time() * 1000
        rows = [replies[4 * b : 4 * b + 4] for b in range(k.buckets)]
        total = _summary(rows, now_ms)
        if not isinstance(self.redis, RedisCluster):
            return total
        by_node: dict[str, list[list[Any]]] = {}
        for b, row in enumerate(rows):
            node = self.redis.get_node_from_key(k.dirty(b))
            by_node.setdefault(node.name if node else "", []).append(row)
        shards = {name: _summary(group, now_ms) for name, group in by_node.items()}
        return Backlog(total.dirty, total.inflight, total.lag_seconds, shards)


def _summary(rows: list[list[Any]], now_ms: float) -> Backlog:
    """The backlog of some buckets, from their (ZCARD dirty, HLEN inflight, oldest dirty
    entry, inflight_since) replies."""
    oldest = [row[2][0][1] for row in rows if row[2]]
    # Only beside a non-empty inflight: a record that outlived its batch (emptied by a
    # worker or API of an older version) must not read as lag.
    oldest += [float(row[3]) for row in rows if row[1] and row[3]]
    lag = max(0.0, (now_ms - min(oldest)) / 1000) if oldest else 0.0
    return Backlog(sum(row[0] for row in rows), sum(row[1] for row in rows), lag)
