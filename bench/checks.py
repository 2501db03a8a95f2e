"""What the bench checks and measures in MySQL and Redis directly: that the drain left
MySQL equal to the acknowledged increments, and how fast the worker drains a backlog."""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass
from typing import Any

import asyncmy

from counter_svc.connections import RedisClient, mysql_kwargs, open_redis
from counter_svc.counters import Counters
from counter_svc.keys import Keys
from counter_svc.settings import Settings


@dataclass
class DrainCheck:
    """After a load run: MySQL and Redis against what k6 saw acknowledged."""

    users: int
    acked: int
    mysql: int
    redis: int
    seconds: float

    @property
    def ok(self) -> bool:
        return self.mysql == self.acked == self.redis

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "seconds": round(self.seconds, 3), "ok": self.ok}


async def user_counters(settings: Settings, username_prefix: str) -> list[tuple[int, int]]:
    """(id, counter) of every user named `<prefix>-...` in MySQL."""
    conn = await asyncmy.connect(**mysql_kwargs(settings, settings.mysql_database))
    try:
        async with conn.cursor() as cur:
            await cur.execute(
                "SELECT id, counter FROM users WHERE username LIKE %s", (f"{username_prefix}-%",)
            )
            return [(int(i), int(c)) for i, c in await cur.fetchall()]
    finally:
        conn.close()


async def mysql_total(settings: Settings, username_prefix: str) -> tuple[int, int]:
    """How many users are named `<prefix>-...`, and the sum of their counters in MySQL."""
    rows = await user_counters(settings, username_prefix)
    return len(rows), sum(c for _, c in rows)


async def _redis_sum(redis: RedisClient, keys: Keys, ids: list[int]) -> int:
    total = 0
    for start in range(0, len(ids), 1000):
        chunk = ids[start : start + 1000]
        async with redis.pipeline(transaction=False) as pipe:
            for user_id in chunk:
                pipe.get(keys.counter(user_id))
            total += sum(int(v) for v in await pipe.execute() if v is not None)
    return total


async def wait_drained(
    settings: Settings, username_prefix: str, acked: int, timeout_s: float
) -> DrainCheck:
    """Poll until MySQL holds `acked` for the users named `<prefix>-...`, or time out;
    then compare with Redis too. `seconds` is how long MySQL took to catch up."""
    started = time.monotonic()
    rows = await user_counters(settings, username_prefix)
    while sum(c for _, c in rows) != acked and time.monotonic() - started < timeout_s:
        await asyncio.sleep(0.05)
        rows = await user_counters(settings, username_prefix)
    seconds = time.monotonic() - started
    redis = open_redis(settings)
    try:
        in_redis = await _redis_sum(redis, Keys.from_settings(settings), [i for i, _ in rows])
    finally:
        await redis.aclose()
    return DrainCheck(len(rows), acked, sum(c for _, c in rows), in_redis, seconds)


async def backlog(redis: RedisClient, keys: Keys) -> tuple[int, int]:
    """Dirty and in-flight ids over all buckets."""
    async with redis.pipeline(transaction=False) as pipe:
        for b in range(keys.buckets):
            pipe.zcard(keys.dirty(b))
            pipe.hlen(keys.inflight(b))
        counts = [int(n) for n in await pipe.execute()]
    return sum(counts[0::2]), sum(counts[1::2])


async def make_backlog(settings: Settings, n: int, username_prefix: str) -> list[int]:
    """`n` new users, each incremented once through the API's own increment script, with
    no worker running: a backlog of `n` dirty counters. Returns their ids."""
    conn = await asyncmy.connect(**mysql_kwargs(settings, settings.mysql_database))
    try:
        async with conn.cursor() as cur:
            for start in range(0, n, 1000):
                names = [(f"{username_prefix}-{i}",) for i in range(start, min(n, start + 1000))]
                await cur.executemany("INSERT INTO users (username) VALUES (%s)", names)
            await cur.execute(
                "SELECT id FROM users WHERE username LIKE %s", (f"{username_prefix}-%",)
            )
            ids = [int(r[0]) for r in await cur.fetchall()]
    finally:
        conn.close()
    redis = open_redis(settings)
    counters = Counters.from_settings(redis, settings)
    try:
        for start in range(0, len(ids), 200):
            await asyncio.gather(*(counters.increment(i, seed=0) for i in ids[start : start + 200]))
    finally:
        await redis.aclose()
    return ids


@dataclass
class DrainRate:
    """A worker started on a backlog of `counters` dirty counters."""

    counters: int
    seconds_from_start: float
    seconds_draining: float
    mysql_ok: bool

    @property
    def per_second(self) -> float:
        return self.counters / self.seconds_draining if self.seconds_draining else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "counters": self.counters,
            "seconds_from_start": round(self.seconds_from_start, 3),
            "seconds_draining": round(self.seconds_draining, 3),
            "per_second": round(self.per_second, 1),
            "mysql_ok": self.mysql_ok,
        }


async def time_drain(
    settings: Settings, n: int, username_prefix: str, started: float, timeout_s: float
) -> DrainRate:
    """Watch the backlog of a worker started at `started` (monotonic) until it is empty.
    `seconds_draining` counts from the first claim seen, leaving out the worker's start-up."""
    redis = open_redis(settings)
    keys = Keys.from_settings(settings)
    first_claim: float | None = None
    # The last poll that still saw the whole backlog: the first claim came after it. A
    # small backlog can drain between two polls; counting from there errs on the slow side.
    last_full = started
    try:
        while time.monotonic() - started < timeout_s:
            dirty, inflight = await backlog(redis, keys)
            now = time.monotonic()
            if first_claim is None:
                if dirty < n:
                    first_claim = last_full
                else:
                    last_full = now
            if dirty + inflight == 0:
                break
            await asyncio.sleep(0.01)
    finally:
        await redis.aclose()
    done = time.monotonic()
    check = await wait_drained(settings, username_prefix, n, timeout_s=max(1.0, timeout_s / 4))
    return DrainRate(n, done - started, done - (first_claim or started), check.ok)
