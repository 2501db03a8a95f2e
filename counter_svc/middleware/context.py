"""The outermost middleware: request ids, security headers, the access log, request
metrics, the JSON 500, and the refusal of paths with an encoded separator."""

from __future__ import annotations

import itertools
import os
import re
import secrets
import time

import structlog
from prometheus_client import Counter, Histogram
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from counter_svc.errors import error_response
from counter_svc.metrics import Metrics
from counter_svc.middleware.headers import SECURITY_HEADERS
from counter_svc.routes import ROUTES

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

    def __init__(
        self, app: ASGIApp, metrics: Metrics, access_log: str = "all", access_log_sample: int = 1
    ) -> None:
        self.app = app
        self.metrics = metrics
        # ACCESS_LOG: the status from which a request gets its line (600: none).
        self.log_from_status = {"all": 0, "errors": 400, "off": 600}[access_log]
        # ACCESS_LOG_SAMPLE: one success in N gets its line; the line says N, so counts
        # taken from the log can be scaled back. The metrics count every request.
        self.sample = access_log_sample
        self._successes = itertools.count()
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
            if status >= self.log_from_status and (
                self.sample == 1 or status >= 400 or next(self._successes) % self.sample == 0
            ):
                log.info(
                    "request",
                    method=method,
                    route=route,
                    path=scope["path"],
                    status=status,
                    duration_ms=round(elapsed * 1000, 3),
                    **({"sampled": self.sample} if self.sample > 1 and status < 400 else {}),
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
