"""The API's middleware, outermost first, as one list for `Starlette(middleware=...)`.

Only `RequestContext` always runs (request id, security headers, access log, metrics);
every protection is in the list only when configured, so the default path runs none of
their code (docs/operations.md#protections).
"""

from __future__ import annotations

from starlette.middleware import Middleware

from counter_svc.keys import Keys
from counter_svc.metrics import Metrics
from counter_svc.middleware.auth import BearerAuth
from counter_svc.middleware.context import RequestContext
from counter_svc.middleware.cors import (
    CORS_EXPOSED_HEADERS,
    CORS_METHODS,
    CORS_REQUEST_HEADERS,
    JsonCORS,
)
from counter_svc.middleware.ratelimit import RateLimit
from counter_svc.middleware.timeout import RequestTimeout
from counter_svc.settings import Settings


def middleware_stack(settings: Settings, metrics: Metrics) -> list[Middleware]:
    """`RequestContext` outermost, so every answer passes through it; then CORS (so 401
    and 429 carry CORS headers), rate limit (before auth: guessing tokens costs budget),
    auth, and the timeout nearest the handlers."""
    stack = [
        Middleware(
            RequestContext,
            metrics=metrics,
            access_log=settings.access_log,
            access_log_sample=settings.access_log_sample,
        )
    ]
    if settings.cors_allow_origins:
        stack.append(
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
        stack.append(
            Middleware(
                RateLimit,
                per_minute=settings.rate_limit_per_minute,
                trusted_proxies=settings.rate_limit_trusted_proxies,
                keys=Keys.from_settings(settings),
                metrics=metrics,
            )
        )
    if settings.auth_tokens:
        stack.append(Middleware(BearerAuth, tokens=settings.auth_tokens))
    if settings.request_timeout_seconds:
        stack.append(Middleware(RequestTimeout, seconds=settings.request_timeout_seconds))
    return stack
