"""The Starlette application: lifespan-owned pools, error table, request middleware."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from counter_svc.connections import REDIS_ERRORS, open_mysql, open_redis
from counter_svc.counters import Counters
from counter_svc.errors import HTTP_CODES, ApiError, Overloaded, error_response
from counter_svc.faults import Hook, no_fault
from counter_svc.metrics import BackendGauges, Metrics
from counter_svc.middleware import middleware_stack
from counter_svc.routes import ROUTES
from counter_svc.settings import Settings
from counter_svc.store import Store
from counter_svc.users import Users

log = structlog.get_logger(__name__)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    if isinstance(exc, Overloaded):
        request.app.state.metrics.overloads.labels(exc.backend).inc()
    return error_response(exc.status, exc.code, exc.message, exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = HTTP_CODES.get(exc.status_code, "http_error")
    message = {404: "no such route", 405: f"method {request.method} is not allowed here"}.get(
        exc.status_code, str(exc.detail)
    )
    return error_response(exc.status_code, code, message, dict(exc.headers or {}))


def create_app(
    settings: Settings,
    metrics: Metrics | None = None,
    hook: Hook | None = None,
    *,
    freeze_gc: bool = False,
) -> Starlette:
    """The API. Pools are opened in the lifespan and closed in reverse order. `hook` is the
    store's fault hook (`API_FAULT`, tests only); `freeze_gc` is for a process that
    serves this app only (`counter_svc.asgi`)."""
    metrics = metrics or Metrics()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # minsize=0: the API starts, and answers 503, while MySQL is still down.
        pool = await open_mysql(settings, minsize=0)
        redis = open_redis(settings)
        counters = Counters.from_settings(redis, settings)
        try:
            await counters.load()  # else the first call of each process loads it
        except REDIS_ERRORS as e:
            log.warning("redis_functions_not_loaded", error=str(e))
        users = Users(pool, settings.mysql_timeout_seconds, metrics.mysql_errors.inc)
        app.state.store = Store(users, counters, metrics, hook or no_fault)
        if freeze_gc:
            # What start-up made (modules, routes, pools) lives as long as the process:
            # out of the collector's way, so a full collection walks only what requests
            # allocate (shorter pauses in the tail).
            gc.collect()
            gc.freeze()
        try:
            yield
        finally:
            await redis.aclose()
            pool.close()
            await pool.wait_closed()

    app = http_shell(settings, metrics, ROUTES, lifespan)
    app.state.backend_gauges = BackendGauges(metrics, settings)  # refreshed by /metrics
    return app


def http_shell(
    settings: Settings,
    metrics: Metrics,
    routes: Sequence[BaseRoute],
    lifespan: Callable[[Starlette], AbstractAsyncContextManager[None]],
) -> Starlette:
    """The API's HTTP contract around `routes`: the middleware, the JSON error table, no
    slash redirects. The bench's write-through baseline serves its routes in it too."""
    app = Starlette(
        routes=routes,
        middleware=middleware_stack(settings, metrics),
        lifespan=lifespan,
        exception_handlers={ApiError: _api_error, HTTPException: _http_error},
    )
    app.router.redirect_slashes = False
    app.state.metrics = metrics
    app.state.max_body_bytes = settings.max_body_bytes
    return app
