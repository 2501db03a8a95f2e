"""`REQUEST_TIMEOUT_SECONDS`: a deadline for `/api/` reads."""

from __future__ import annotations

import asyncio

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from counter_svc.errors import error_response
from counter_svc.middleware.rejections import refuse

log = structlog.get_logger(__name__)


class RequestTimeout:
    """503 with `Retry-After` when an `/api/` read takes longer than the limit.

    Only reads (GET, HEAD) are cut off: their work is cancelled and their MySQL connection
    closed, never reused. Writes are not: cutting one between its MySQL and Redis steps,
    or after Redis counted an increment, would answer 503 for a change that happened
    (a deleted user could keep counting). They are bounded by MYSQL_TIMEOUT_SECONDS and
    REDIS_TIMEOUT_SECONDS instead, step by step."""

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] not in ("GET", "HEAD")
            or not scope["path"].startswith("/api/")
        ):
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracking(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            async with asyncio.timeout(self.seconds):
                await self.app(scope, receive, send_tracking)
        except TimeoutError:
            if started:
                raise
            log.warning("request_timeout", method=scope["method"], path=scope["path"])
            response = error_response(
                503,
                "timeout",
                f"the request took longer than {self.seconds:g} s; try again shortly",
                {"Retry-After": "1"},
            )
            await refuse(response, scope, receive, send)
