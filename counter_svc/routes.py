"""HTTP endpoints: input checks, then one call into the store, then the JSON answer."""

from __future__ import annotations

import asyncio
import re
import unicodedata
from datetime import UTC, datetime
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from counter_svc.connections import primary_of
from counter_svc.errors import (
    InvalidIdempotencyKey,
    InvalidRequest,
    InvalidUserId,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from counter_svc.openapi import openapi_document
from counter_svc.store import Store
from counter_svc.users import User

MAX_USER_ID = 2_147_483_647
MAX_USERNAME = 100
# One spelling per id: `/users/01` is not `/users/1`, so that proxies, logs, rate limits
# and caches in front see the same resource the API does.
_ID_RE = re.compile(r"[1-9][0-9]{0,9}")
# Visible ASCII, no white space: what is left once the optional white space around a
# header value (RFC 9110 5.5) is trimmed, as a proxy on the way may have done.
_IDEM_RE = re.compile(r"[\x21-\x7e]{1,255}")


def json_response(status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(payload), status_code=status, headers=headers, media_type="application/json"
    )


def _rfc3339(value: Any) -> str | None:
    return None if value is None else value.strftime("%Y-%m-%dT%H:%M:%SZ")


def user_json(user: User) -> dict[str, Any]:
    return {
        "id": user.id,
        "username": user.username,
        "counter": user.counter,
        "created_at": _rfc3339(user.created_at),
        "updated_at": _rfc3339(user.updated_at),
    }


def user_id_of(request: Request) -> int:
    raw = request.path_params["user_id"]
    if not _ID_RE.fullmatch(raw) or not 1 <= int(raw) <= MAX_USER_ID:
        raise InvalidUserId(
            f"user id must be a decimal integer from 1 to {MAX_USER_ID}, without leading zeros"
        )
    return int(raw)


def store_of(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


async def read_json_body(request: Request, limit: int) -> Any:
    """The JSON body, refused with 413 as soon as it passes `limit` bytes."""
    content_type = request.headers.get("content-type", "")
    if content_type.split(";", 1)[0].strip().lower() != "application/json":
        raise UnsupportedMediaType("the request body must be JSON (Content-Type: application/json)")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the request body must be at most {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"the request body must be at most {limit} bytes")
    if not body:
        raise InvalidRequest('the request body is empty; send {"username": "..."}')
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise InvalidRequest("the request body is not valid JSON") from e


def username_of(payload: Any) -> str:
    if not isinstance(payload, dict):
        raise InvalidRequest("the request body must be a JSON object")
    name = payload.get("username")
    if name is None:
        raise InvalidRequest("username is required")
    if not isinstance(name, str):
        raise InvalidRequest("username must be a string")
    if not name.strip():
        raise InvalidRequest("username must not be empty")
    if len(name) > MAX_USERNAME:
        raise InvalidRequest(f"username must be at most {MAX_USERNAME} characters")
    if name != name.strip():
        raise InvalidRequest("username must not start or end with white space")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn") for ch in name):
        raise InvalidRequest("username must not contain control or unassigned characters")
    return name


def idempotency_key_of(request: Request) -> str | None:
    """The key with spaces and tabs around it trimmed: `k`, `k ` and `\tk` are one key."""
    keys = request.headers.getlist("idempotency-key")
    if not keys:
        return None
    if len(keys) > 1:
        raise InvalidIdempotencyKey("send one Idempotency-Key header, not several")
    key = keys[0].strip(" \t")
    if not _IDEM_RE.fullmatch(key):
        raise InvalidIdempotencyKey(
            "Idempotency-Key must be 1 to 255 visible ASCII characters, without white space"
        )
    return key


async def create_user(request: Request) -> Response:
    username = username_of(await read_json_body(request, request.app.state.max_body_bytes))
    user = await store_of(request).create_user(username)
    return json_response(
        201,
        {"message": "user created", "data": user_json(user)},
        {"Location": f"/api/v1/users/{user.id}"},
    )


async def get_user(request: Request) -> Response:
    user = await store_of(request).get_user(user_id_of(request))
    return json_response(200, {"message": "user found", "data": user_json(user)})


async def get_count(request: Request) -> Response:
    user_id = user_id_of(request)
    value = await store_of(request).count(user_id)
    data = {"user_id": user_id, "counter": value}
    return json_response(200, {"message": "counter", "data": data})


async def increment(request: Request) -> Response:
    user_id = user_id_of(request)
    value = await store_of(request).increment(user_id, idempotency_key_of(request))
    return json_response(
        200, {"message": "counter incremented", "data": {"user_id": user_id, "counter": value}}
    )


async def delete_user(request: Request) -> Response:
    user_id = user_id_of(request)
    await store_of(request).delete_user(user_id)
    return json_response(200, {"message": f"user {user_id} deleted", "data": {"id": user_id}})


async def user_resource(request: Request) -> Response:
    # One route for both methods, so a 405 lists every allowed method in `Allow`.
    if request.method == "DELETE":
        return await delete_user(request)
    return await get_user(request)


async def healthz(request: Request) -> Response:
    return json_response(200, {"status": "ok"})


async def readyz(request: Request) -> Response:
    """Reports MySQL and Redis, each check bounded by its timeout. Not ready (503) only
    without Redis, which every API call needs. Without MySQL the pod still serves what
    invariant 7 promises, increments and counts from Redis, so it stays ready ("degraded"):
    a shared store's outage must not take every pod out of its Service at once. A store
    that answers while every pooled connection to it is in use is "busy": the pod is
    overloaded, not cut off, and stays ready."""
    store = store_of(request)
    # Each check bounded by its own store's timeout (MYSQL_/REDIS_TIMEOUT_SECONDS).
    results = await asyncio.gather(store.users.check(), store.redis_check(), return_exceptions=True)
    checks = {
        name: "unavailable" if isinstance(r, BaseException) else r
        for name, r in zip(("mysql", "redis"), results, strict=True)
    }
    # Sentinel mode: which node is primary and when this process last saw it move.
    followed = primary_of(store.counters.redis)
    extra = {} if followed is None else {"redis": _followed_json(followed)}
    if checks["redis"] != "unavailable":
        status = "degraded" if checks["mysql"] == "unavailable" else "ready"
        return json_response(200, {"status": status, "checks": checks, **extra})
    return json_response(
        503,
        {
            "error": "not_ready",
            "message": "a backing store is unavailable",
            "checks": checks,
            **extra,
        },
        {"Retry-After": "1"},
    )


def _followed_json(followed: dict[str, Any]) -> dict[str, Any]:
    last = followed["last_failover"]
    return {
        "primary": followed["primary"] or None,
        "failovers": followed["failovers"],
        "last_failover": None
        if last is None
        else datetime.fromtimestamp(last, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


async def metrics(request: Request) -> Response:
    gauges = getattr(request.app.state, "backend_gauges", None)
    if gauges is not None:  # usercounter_backend_up and Redis memory, as of this scrape
        await gauges.refresh(store_of(request))
    body = generate_latest(request.app.state.metrics.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


async def openapi(request: Request) -> Response:
    return json_response(200, openapi_document(request.app.state.max_body_bytes))


ROUTES = [
    Route("/api/v1/users", create_user, methods=["POST"]),
    Route("/api/v1/users/{user_id}", user_resource, methods=["GET", "DELETE"]),
    Route("/api/v1/users/{user_id}/count", get_count, methods=["GET"]),
    Route("/api/v1/users/{user_id}/increment", increment, methods=["PUT"]),
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
    Route("/openapi.json", openapi, methods=["GET"]),
]
