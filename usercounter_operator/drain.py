"""Is everything in Redis also in MySQL? The check behind a safe scale-down and delete.

Reads Redis directly with the project's key layout (counter_svc.keys.Keys): an id still
to be written is either in a bucket's `dirty` sorted set or claimed in its `inflight`
hash, so the data is safe to leave behind only when every bucket has both empty. This
module only reads: it never deletes a key, whatever the outcome.

`wait_drained` polls until that holds or a deadline passes; when it does not, the verdict
says why, with MySQL's reachability tested directly (a login and `SELECT 1`), since a
backlog that does not shrink is nearly always MySQL being down.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncmy

from counter_svc.connections import RedisClient
from counter_svc.keys import Keys


@dataclass(frozen=True)
class Backlog:
    """What the buckets hold that MySQL may not have yet."""

    dirty: int
    inflight: int
    pending_buckets: tuple[int, ...]

    @property
    def empty(self) -> bool:
        return not self.pending_buckets

    def describe(self) -> str:
        return (
            f"{self.dirty} dirty and {self.inflight} in-flight ids "
            f"in {len(self.pending_buckets)} bucket(s)"
        )


async def read_backlog(redis: RedisClient, keys: Keys) -> Backlog:
    """ZCARD of every `dirty(b)` and HLEN of every `inflight(b)`, in one pipeline."""
    pipe = redis.pipeline(transaction=False)
    for b in range(keys.buckets):
        pipe.zcard(keys.dirty(b))
        pipe.hlen(keys.inflight(b))
    counts = [int(c) for c in await pipe.execute()]
    dirty = counts[0::2]
    inflight = counts[1::2]
    pending = tuple(b for b in range(keys.buckets) if dirty[b] or inflight[b])
    return Backlog(sum(dirty), sum(inflight), pending)


@dataclass(frozen=True)
class MySQLTarget:
    host: str
    port: int
    user: str
    password: str
    timeout_seconds: float = 2.0


async def mysql_reachable(target: MySQLTarget) -> bool:
    """A login and `SELECT 1` within the timeout."""
    try:
        conn = await asyncio.wait_for(
            asyncmy.connect(
                host=target.host,
                port=target.port,
                user=target.user,
                password=target.password,
                connect_timeout=max(1, round(target.timeout_seconds)),
            ),
            target.timeout_seconds,
        )
    except (OSError, TimeoutError, asyncmy.errors.Error):
        return False
    try:
        async with conn.cursor() as cur:
            await asyncio.wait_for(cur.execute("SELECT 1"), target.timeout_seconds)
    except (OSError, TimeoutError, asyncmy.errors.Error):
        return False
    else:
        return True
    finally:
        conn.close()


@dataclass(frozen=True)
class Verdict:
    """The outcome of a drain check, as the resource's status reports it."""

    drained: bool
    backlog: Backlog
    reason: str  # the condition reason: Drained, Draining, DrainTimedOut, MySQLUnreachable
    message: str


def judge(backlog: Backlog, *, elapsed: float, timeout: float, mysql_ok: bool | None) -> Verdict:
    """The verdict for one observation. `mysql_ok` None: not tested (still within time)."""
    if backlog.empty:
        return Verdict(True, backlog, "Drained", "dirty and inflight are empty in every bucket")
    if elapsed < timeout:
        return Verdict(False, backlog, "Draining", f"waiting for {backlog.describe()}")
    if mysql_ok is False:
        return Verdict(
            False,
            backlog,
            "MySQLUnreachable",
            f"MySQL does not answer and Redis still holds {backlog.describe()}; "
            "nothing is removed until they are written",
        )
    return Verdict(
        False,
        backlog,
        "DrainTimedOut",
        f"after {timeout:.0f} s Redis still holds {backlog.describe()}; "
        "nothing is removed until they are written",
    )


async def wait_drained(
    redis: RedisClient,
    keys: Keys,
    *,
    limit_seconds: float,
    mysql_check: Callable[[], Awaitable[bool]],
    poll: float = 0.5,
    started: float | None = None,
) -> Verdict:
    """Poll the backlog until it is empty (Drained) or `limit_seconds` from `started`
    (monotonic; now by default) have passed, then test MySQL and say why not."""
    started = time.monotonic() if started is None else started
    while True:
        backlog = await read_backlog(redis, keys)
        elapsed = time.monotonic() - started
        if backlog.empty or elapsed >= limit_seconds:
            mysql_ok = None if backlog.empty else await mysql_check()
            return judge(backlog, elapsed=elapsed, timeout=limit_seconds, mysql_ok=mysql_ok)
        await asyncio.sleep(min(poll, max(0.0, limit_seconds - elapsed)))
