"""HTTP protections around the API: security headers, CORS, a request timeout, and
`protect()`, which puts them (with rate limiting and authentication) in order.

Only the security headers are always on: `RequestContext` appends them together with
the request id, so they cost no middleware layer of their own. Every other protection
is added to the stack only when configured, so the default path runs none of their code.
"""

from __future__ import annotations

import asyncio

import structlog
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from counter_svc.auth import BearerAuth
from counter_svc.errors import error_response
from counter_svc.keys import Keys
from counter_svc.metrics import Metrics
from counter_svc.ratelimit import RateLimit
from counter_svc.rejections import refuse
from counter_svc.settings import Settings

log = structlog.get_logger(__name__)

# A JSON API: nothing in an answer may run, frame, sniff or leak the referrer; nothing
# may be cached by a proxy (a counter read is stale the moment it is stored).
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
)

CORS_METHODS = ("GET", "POST", "PUT", "DELETE")
CORS_REQUEST_HEADERS = ("Authorization", "Content-Type", "Idempotency-Key", "X-Request-ID")
CORS_EXPOSED_HEADERS = (
    "Location",
    "Retry-After",
    "X-Request-ID",
    "RateLimit-Limit",
    "RateLimit-Remaining",
    "RateLimit-Reset",
    "RateLimit-Policy",
)


class JsonCORS(CORSMiddleware):
    """Starlette's CORS, with a refused preflight answered in the API's JSON error shape."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code != 400:
            return response
        headers = {k: v for k, v in response.headers.items() if k.lower() != "content-length"}
        headers.pop("content-type", None)
        return error_response(400, "cors_rejected", bytes(response.body).decode(), headers)


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


def protect(app: Starlette, settings: Settings, metrics: Metrics) -> None:
    """Add, inside `RequestContext`, the configured protections in order: CORS (so 401
    and 429 carry CORS headers), rate limit (before auth: guessing tokens costs budget),
    auth, and the timeout nearest the handlers."""
    inner = []
    if settings.cors_allow_origins:
        inner.append(
            Middleware(
                JsonCORS,
                allow_origins=settings.cors_allow_origins,
                allow_methods=CORS_METHODS,
                allow_headers=CORS_REQUEST_HEADERS,
                allow_credentials=settings.cors_allow_credentials,
                expose_headers=CORS_EXPOSED_HEADERS,
            )
        )
    if settings.rate_limit_per_minute:
        inner.append(
            Middleware(
                RateLimit,
                per_minute=settings.rate_limit_per_minute,
                trusted_proxies=settings.rate_limit_trusted_proxies,
                keys=Keys.from_settings(settings),
                metrics=metrics,
            )
        )
    if settings.auth_tokens:
        inner.append(Middleware(BearerAuth, tokens=settings.auth_tokens))
    if settings.request_timeout_seconds:
        inner.append(Middleware(RequestTimeout, seconds=settings.request_timeout_seconds))
    app.user_middleware.extend(inner)
