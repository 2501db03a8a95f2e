"""The write-through baseline: the service's predecessor design, every increment an
`UPDATE ... counter + 1` committed in MySQL before it is answered. No Redis, no worker.

    python -m bench.writethrough      (PORT, WEB_CONCURRENCY=1 and MYSQL_* as the API)

For bench/baseline.py only. It serves the routes the load tests use with the API's own
handlers, middleware, error table and uvicorn protocol (`counter_svc.routes`,
`counter_svc.middleware`, `counter_svc.serving`), so the one difference measured is the
storage path: a store whose every call is one MySQL statement in its own (autocommit)
transaction, on the schema of `counter_svc/schema.sql`.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from counter_svc.app import http_shell
from counter_svc.connections import open_mysql
from counter_svc.errors import ApiError, InvalidIdempotencyKey, UserNotFound
from counter_svc.logs import configure_logging
from counter_svc.metrics import Metrics
from counter_svc.routes import (
    create_user,
    get_count,
    healthz,
    increment,
    json_response,
    user_resource,
)
from counter_svc.settings import Settings, SettingsError
from counter_svc.users import User, Users


class CounterRows(Users):
    """The users table with the counter written through: the API's queries plus two."""

    async def increment(self, user_id: int) -> int | None:
        """The new counter, or None without a row. LAST_INSERT_ID(expr) hands the new value
        back in the UPDATE's own reply: one statement and one round trip, the cheapest a
        write-through increment can be, so the comparison flatters the baseline if anything."""

        async def q(cur: Any) -> int | None:
            await cur.execute(
                "UPDATE users SET counter = LAST_INSERT_ID(counter + 1) WHERE id = %s",
                (user_id,),
            )
            return int(cur.lastrowid) if cur.rowcount else None

        return await self._run(q)

    async def counter(self, user_id: int) -> int | None:
        async def q(cur: Any) -> int | None:
            await cur.execute("SELECT counter FROM users WHERE id = %s", (user_id,))
            row = await cur.fetchone()
            return int(row[0]) if row else None

        return await self._run(q)


class WriteThroughStore:
    """The calls `counter_svc.routes` makes on `Store`, each one MySQL statement."""

    def __init__(self, rows: CounterRows) -> None:
        self.rows = rows

    async def create_user(self, username: str) -> User:
        return await self.rows.create(username)

    async def get_user(self, user_id: int) -> User:
        user = await self.rows.get(user_id)
        if user is None:
            raise UserNotFound(f"user {user_id} not found")
        return user

    async def count(self, user_id: int) -> int:
        return _found(user_id, await self.rows.counter(user_id))

    async def increment(self, user_id: int, idem_key: str | None = None) -> int:
        if idem_key is not None:
            raise InvalidIdempotencyKey("the write-through baseline takes no Idempotency-Key")
        return _found(user_id, await self.rows.increment(user_id))

    async def delete_user(self, user_id: int) -> None:
        if not await self.rows.delete(user_id):
            raise UserNotFound(f"user {user_id} not found")


def _found(user_id: int, value: int | None) -> int:
    if value is None:
        raise UserNotFound(f"user {user_id} not found")
    return value


async def readyz(request: Request) -> Response:
    try:
        await request.app.state.store.rows.ping()
    except ApiError:
        body = {"error": "not_ready", "message": "MySQL is unavailable"}
        return json_response(503, body, {"Retry-After": "1"})
    return json_response(200, {"status": "ready", "checks": {"mysql": "ok"}})


ROUTES = [
    Route("/api/v1/users", create_user, methods=["POST"]),
    Route("/api/v1/users/{user_id}", user_resource, methods=["GET", "DELETE"]),
    Route("/api/v1/users/{user_id}/count", get_count, methods=["GET"]),
    Route("/api/v1/users/{user_id}/increment", increment, methods=["PUT"]),
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
]


def create_app(settings: Settings) -> Starlette:
    """The baseline app: the API's routes and middleware over `WriteThroughStore`."""
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        pool = await open_mysql(settings, minsize=0)
        rows = CounterRows(pool, settings.mysql_timeout_seconds, metrics.mysql_errors.inc)
        app.state.store = WriteThroughStore(rows)
        try:
            yield
        finally:
            pool.close()
            await pool.wait_closed()

    return http_shell(settings, metrics, ROUTES, lifespan)


def main() -> int:
    import uvicorn

    from counter_svc.serving import protocol_with

    try:
        settings = Settings.from_env()
    except SettingsError as e:
        print(f"configuration error: {e}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format, settings.log_level)
    # As `python -m counter_svc serve` runs the API, with one process.
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=protocol_with(settings.request_head_timeout_seconds),
        ws="none",
        access_log=False,
        log_config=None,
        proxy_headers=False,
        timeout_graceful_shutdown=10,
        server_header=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
