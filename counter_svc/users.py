"""The MySQL side: users rows. MySQL is the source of truth for which users exist."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from asyncmy.errors import IntegrityError, InterfaceError, InternalError, OperationalError
from asyncmy.pool import Pool

from counter_svc.errors import Overloaded, Unavailable, UsernameTaken

T = TypeVar("T")

_DUPLICATE_ENTRY = 1062
_COLUMNS = "id, username, counter, created_at, updated_at"


@dataclass(frozen=True, slots=True)
class User:
    id: int
    username: str
    counter: int
    created_at: datetime | None
    updated_at: datetime | None


class MySQLUnavailable(Unavailable):
    """MySQL could not be reached or did not answer in time."""


class MySQLOverloaded(Overloaded):
    """No pooled connection came free within MYSQL_TIMEOUT_SECONDS, every one busy with a
    query of another request, while MySQL answered the last query that ended."""

    backend = "mysql"


# The errors of a MySQL that is down, unreachable or too slow. RuntimeError: asyncmy
# raises it when a connection is reset while it is being set up ("Transport does not
# expose socket instance"); it is an outage, not a bug here.
_OUTAGE = (OperationalError, InterfaceError, InternalError, OSError, TimeoutError, RuntimeError)


class Users:
    """Queries on the users table, each bounded by a timeout and mapped to domain errors."""

    def __init__(self, pool: Pool, timeout_s: float, on_error: Callable[[], None]) -> None:
        self.pool = pool
        self.timeout_s = timeout_s
        self._on_error = on_error
        self.busy = 0  # connections checked out of the pool by a query under way
        # When a query last reached MySQL and when one last failed (time.monotonic()).
        self._answered_at = 0.0
        self._failed_at = -1.0

    async def get(self, user_id: int) -> User | None:
        async def q(cur: Any) -> User | None:
            await cur.execute(f"SELECT {_COLUMNS} FROM users WHERE id = %s", (user_id,))  # noqa: S608
            row = await cur.fetchone()
            return User(*row) if row else None

        return await self._run(q)

    async def create(self, username: str) -> User:
        async def q(cur: Any) -> User:
            try:
                await cur.execute("INSERT INTO users (username) VALUES (%s)", (username,))
            except IntegrityError as e:
                if e.args and e.args[0] == _DUPLICATE_ENTRY:
                    raise UsernameTaken(f"username {username!r} is already taken") from e
                raise
            new_id = cur.lastrowid
            await cur.execute(f"SELECT {_COLUMNS} FROM users WHERE id = %s", (new_id,))  # noqa: S608
            row = await cur.fetchone()
            # Read back on the same connection: a concurrent delete is the only way to miss it.
            return User(*row) if row else User(new_id, username, 0, None, None)

        return await self._run(q)

    async def delete(self, user_id: int) -> bool:
        async def q(cur: Any) -> bool:
            await cur.execute("DELETE FROM users WHERE id = %s", (user_id,))
            return bool(cur.rowcount)

        return await self._run(q)

    async def ping(self) -> None:
        async def q(cur: Any) -> None:
            await cur.execute("SELECT 1")
            await cur.fetchone()

        await self._run(q)

    async def check(self) -> str:
        """The readiness check: "ok" when MySQL answers a ping; "busy" when the pool is
        saturated (a probe must not queue behind requests: its own deadline is shorter
        than the wait); raises MySQLUnavailable when MySQL does not answer."""
        if self.saturated():
            return "busy"
        try:
            await self.ping()
        except MySQLOverloaded:
            return "busy"
        return "ok"

    def saturated(self) -> bool:
        """Every connection the pool may hold is checked out by a query, none is being
        opened, and the last query that ended reached MySQL: a new query can only wait.

        `pool.size` counts free, checked-out and connecting connections; `busy` counts
        those checked out here (this class is the pool's only user), so the rest are being
        opened: a wait spent connecting to a dead server is an outage, not overload."""
        pool = self.pool
        opening = pool.size - pool.freesize - self.busy
        return self.answering and pool.size >= pool.maxsize and opening == 0

    @property
    def answering(self) -> bool:
        """Whether MySQL answers: the last query that ended reached it, or one did within
        MYSQL_TIMEOUT_SECONDS. At saturation some queries time out in a starved process
        among many that succeed; those must not make a busy MySQL look dead."""
        return (
            self._failed_at < self._answered_at
            or time.monotonic() - self._answered_at <= self.timeout_s
        )

    async def _run(self, query: Callable[[Any], Awaitable[T]]) -> T:
        conn = await self._acquire()
        self.busy += 1
        try:
            async with asyncio.timeout(self.timeout_s), conn.cursor() as cur:
                result = await query(cur)
        except UsernameTaken:
            self._answered_at = time.monotonic()
            raise
        except BaseException as e:
            # A query cut off by the timeout leaves its answer unread on the wire: the
            # next user of this connection would read it. Never reuse it.
            conn.close()
            if isinstance(e, _OUTAGE):
                raise self._unavailable() from e
            raise
        finally:
            self.busy -= 1
            self.pool.release(conn)
        self._answered_at = time.monotonic()
        return result

    async def _acquire(self) -> Any:
        """A pooled connection, waited for at most MYSQL_TIMEOUT_SECONDS; the query then
        has a timeout of its own, so a long wait is never charged to MySQL."""
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self.pool.acquire()
        except _OUTAGE as e:
            if isinstance(e, TimeoutError) and self.saturated():
                # The whole wait went on standing in line behind queries MySQL answers.
                raise MySQLOverloaded("the service is overloaded, try again shortly") from e
            raise self._unavailable() from e

    def _unavailable(self) -> MySQLUnavailable:
        self._failed_at = time.monotonic()
        self._on_error()
        return MySQLUnavailable("the database is unavailable, try again shortly")
