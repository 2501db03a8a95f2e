"""The Starlette application: lifespan-owned pools, error table, request middleware."""

from __future__ import annotations

import itertools
import os
import re
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from prometheus_client import Counter, Histogram
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from counter_svc.connections import open_mysql, open_redis
from counter_svc.counters import Counters
from counter_svc.errors import HTTP_CODES, ApiError, error_response
from counter_svc.faults import Hook, no_fault
from counter_svc.metrics import BackendGauges, Metrics
from counter_svc.routes import ROUTES
from counter_svc.security import SECURITY_HEADERS, protect
from counter_svc.settings import Settings
from counter_svc.store import Store
from counter_svc.users import Users

log = structlog.get_logger("counter_svc.access")

_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# A slash or backslash percent-encoded in the path: decoded before routing, it would make
# `/api%2Fv1%2Fusers%2F1%2Fincrement` the increment of user 1 for the app, and another
# path (or none) for every proxy, log, rate limit and cache in front of it.
_ENCODED_SEPARATOR_RE = re.compile(rb"%(2f|5c)", re.IGNORECASE)
_ROUTE_TEMPLATES: dict[object, str] = {route.endpoint: route.path for route in ROUTES}
# What the access log and metrics record for a request whose client hung up mid-body.
CLIENT_CLOSED = 499

# Request ids: a random prefix per process and a counter, 32 hex digits like a uuid4 but
# without reading the OS's random source (a syscall) on every request.
_id_prefix = secrets.token_hex(8)
_id_counter = itertools.count()


def _reseed_request_ids() -> None:
    global _id_prefix, _id_counter
    _id_prefix, _id_counter = secrets.token_hex(8), itertools.count()


os.register_at_fork(after_in_child=_reseed_request_ids)


class RequestContext:
    """Per request: a request id (kept from `X-Request-ID` when sane), the security
    headers, one access log line, metrics by route template, and a JSON 500 for anything
    unexpected. The outermost middleware, so every answer of the app passes through it;
    a path with an encoded slash or backslash is refused here, before anything else."""

    def __init__(self, app: ASGIApp, metrics: Metrics, access_log: str = "all") -> None:
        self.app = app
        self.metrics = metrics
        # ACCESS_LOG: the status from which a request gets its line (600: none).
        self.log_from_status = {"all": 0, "errors": 400, "off": 600}[access_log]
        # Labelled children, looked up once: `labels()` validates and locks on every call.
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                    *SECURITY_HEADERS,
                ]
            await send(message)

        self.metrics.in_progress.inc()
        try:
            raw_path = scope.get("raw_path") or b""
            if b"%" in raw_path and _ENCODED_SEPARATOR_RE.search(raw_path):
                # Before auth and routing, the same answer for every route.
                response = error_response(
                    400, "invalid_path", "the path must not contain an encoded '/' or '\\'"
                )
                await response(scope, receive, send_with_id)
            else:
                await self.app(scope, receive, send_with_id)
        except ClientDisconnect:
            # The client hung up before its request body was in; nobody is left to answer.
            # Not a server error: no traceback, and 499 (nginx's "client closed request")
            # in the log and metrics instead of a 500 that would page someone.
            status = CLIENT_CLOSED
        except Exception:
            log.exception("unhandled_error", method=scope["method"], path=scope["path"])
            if not response_started:
                response = error_response(500, "internal_error", "an unexpected error occurred")
                await response(scope, receive, send_with_id)
        finally:
            self.metrics.in_progress.dec()
            elapsed = time.perf_counter() - started
            route = _ROUTE_TEMPLATES.get(scope.get("endpoint"), "unmatched")
            method = scope["method"]
            requests, latency = self._metrics(method, route, status)
            requests.inc()
            latency.observe(elapsed)
            if status >= self.log_from_status:
                log.info(
                    "request",
                    method=method,
                    route=route,
                    path=scope["path"],
                    status=status,
                    duration_ms=round(elapsed * 1000, 3),
                )

    def _metrics(self, method: str, route: str, status: int) -> tuple[Counter, Histogram]:
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:
            m = self.metrics
            children = (
                m.requests.labels(method, route, str(status)),
                m.latency.labels(method, route),
            )
            self._children[key] = children
        return children


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            candidate: str = value.decode("latin-1")
            if _REQUEST_ID_RE.fullmatch(candidate):
                return candidate
            break
    return new_request_id()


def new_request_id() -> str:
    return f"{_id_prefix}{next(_id_counter):016x}"


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = HTTP_CODES.get(exc.status_code, "http_error")
    message = {404: "no such route", 405: f"method {request.method} is not allowed here"}.get(
        exc.status_code, str(exc.detail)
    )
    return error_response(exc.status_code, code, message, dict(exc.headers or {}))


def create_app(
    settings: Settings, metrics: Metrics | None = None, hook: Hook | None = None
) -> Starlette:
    """The API. Pools are opened in the lifespan and closed in reverse order. `hook` is the
    store's fault hook (`API_FAULT`, tests only)."""
    metrics = metrics or Metrics()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # minsize=0: the API starts, and answers 503, while MySQL is still down.
        pool = await open_mysql(settings, minsize=0)
        redis = open_redis(settings)
        counters = Counters.from_settings(redis, settings)
        users = Users(pool, settings.mysql_timeout_seconds, metrics.mysql_errors.inc)
        app.state.store = Store(users, counters, metrics, hook or no_fault)
        try:
            yield
        finally:
            await redis.aclose()
            pool.close()
            await pool.wait_closed()

    app = Starlette(
        routes=ROUTES,
        lifespan=lifespan,
        exception_handlers={ApiError: _api_error, HTTPException: _http_error},
    )
    app.router.redirect_slashes = False
    app.state.metrics = metrics
    app.state.backend_gauges = BackendGauges(metrics, settings)  # refreshed by /metrics
    app.state.max_body_bytes = settings.max_body_bytes
    app.add_middleware(RequestContext, metrics=metrics, access_log=settings.access_log)
    protect(app, settings, metrics)  # CORS, rate limit, auth, timeout: when configured
    return app
