"""Security headers on every answer, CORS by allowed origin, and the request timeout."""

from __future__ import annotations

import time
from dataclasses import replace

import httpx
import pytest
from redis.asyncio import Redis
from starlette.config import Config
from starlette.requests import Request
from starlette.responses import Response

from counter_svc.app import create_app
from counter_svc.keys import Keys
from counter_svc.settings import Settings, SettingsError
from tests.faults import FaultProxy
from tests.helpers import EXPECTED_HEADERS, create_user, running_app

ORIGIN = "https://app.example.com"


def assert_security_headers(response: httpx.Response) -> None:
    for name, value in EXPECTED_HEADERS.items():
        assert response.headers.get(name) == value, (name, response.status_code)
        assert len(response.headers.get_list(name)) == 1, name


async def test_security_headers_on_success(client: httpx.AsyncClient) -> None:
    """A 2xx answer carries nosniff, no-referrer, a deny-all CSP, DENY framing, no-store."""
    user_id = await create_user(client, "headers")
    for response in (
        await client.put(f"/api/v1/users/{user_id}/increment"),
        await client.get("/healthz"),
        await client.get("/metrics"),
    ):
        assert response.status_code == 200
        assert_security_headers(response)


async def test_security_headers_on_errors(client: httpx.AsyncClient) -> None:
    """4xx answers (bad id, unknown user, unknown route, wrong method) carry them too."""
    for response in (
        await client.get("/api/v1/users/abc"),
        await client.get("/api/v1/users/999999/count"),
        await client.get("/nope"),
        await client.patch("/api/v1/users/1"),
    ):
        assert response.status_code in (400, 404, 405)
        assert response.headers["content-type"] == "application/json"
        assert_security_headers(response)


async def test_security_headers_on_an_unexpected_500(settings: Settings) -> None:
    """The JSON 500 written for an unhandled error carries them as well."""
    app = create_app(settings)

    async def boom(request: Request) -> Response:
        raise RuntimeError("boom")

    app.add_route("/boom", boom)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as c:
            response = await c.get("/boom")
    assert response.status_code == 500
    assert response.json()["error"] == "internal_error"
    assert_security_headers(response)


async def test_cors_is_off_by_default(client: httpx.AsyncClient) -> None:
    """Without CORS_ALLOW_ORIGINS no Access-Control header is sent and a preflight is 405."""
    response = await client.get("/healthz", headers={"Origin": ORIGIN})
    assert not [h for h in response.headers if h.startswith("access-control-")]
    preflight = await client.options(
        "/api/v1/users", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
    )
    assert preflight.status_code == 405
    assert preflight.json()["error"] == "method_not_allowed"


async def test_cors_preflight_from_an_allowed_origin(settings: Settings) -> None:
    """A preflight from an allowed origin gets that origin, the methods and headers back."""
    async with running_app(replace(settings, cors_allow_origins=(ORIGIN,))) as client:
        response = await client.options(
            "/api/v1/users/1/increment",
            headers={
                "Origin": ORIGIN,
                "Access-Control-Request-Method": "PUT",
                "Access-Control-Request-Headers": "authorization, idempotency-key",
            },
        )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert "PUT" in response.headers["access-control-allow-methods"]
    allowed = response.headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed
    assert "idempotency-key" in allowed
    assert "access-control-allow-credentials" not in response.headers
    assert_security_headers(response)


async def test_cors_preflight_from_another_origin_is_a_json_400(settings: Settings) -> None:
    """A preflight from an origin not in the list is refused in the JSON error shape."""
    async with running_app(replace(settings, cors_allow_origins=(ORIGIN,))) as client:
        response = await client.options(
            "/api/v1/users",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
    assert response.status_code == 400
    assert response.json()["error"] == "cors_rejected"
    assert "access-control-allow-origin" not in response.headers


async def test_cors_simple_request_exposes_headers_to_the_allowed_origin(
    settings: Settings,
) -> None:
    """An allowed origin may read the answer and its Location/RateLimit/request-id headers;
    another origin gets no Access-Control-Allow-Origin."""
    async with running_app(replace(settings, cors_allow_origins=(ORIGIN,))) as client:
        allowed = await client.post(
            "/api/v1/users", json={"username": "cors"}, headers={"Origin": ORIGIN}
        )
        other = await client.get("/healthz", headers={"Origin": "https://evil.example"})
    assert allowed.status_code == 201
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    exposed = allowed.headers["access-control-expose-headers"]
    for name in ("Location", "X-Request-ID", "RateLimit-Remaining", "Retry-After"):
        assert name in exposed
    assert "access-control-allow-origin" not in other.headers


def test_cors_wildcard_with_credentials_is_refused() -> None:
    """CORS_ALLOW_ORIGINS=* with CORS_ALLOW_CREDENTIALS=true stops start-up, naming both."""
    env = {"CORS_ALLOW_ORIGINS": "*", "CORS_ALLOW_CREDENTIALS": "true"}
    with pytest.raises(SettingsError, match=r"CORS_ALLOW_CREDENTIALS.*CORS_ALLOW_ORIGINS"):
        Settings.from_env(Config(environ=env))


@pytest.mark.parametrize("origin", ["app.example.com", "https://app.example.com/", "ftp://x"])
def test_cors_origin_must_be_an_origin(origin: str) -> None:
    """An entry that is not scheme://host[:port] is refused, naming CORS_ALLOW_ORIGINS."""
    with pytest.raises(SettingsError, match="CORS_ALLOW_ORIGINS"):
        Settings.from_env(Config(environ={"CORS_ALLOW_ORIGINS": origin}))


async def test_request_timeout_answers_503_json(settings: Settings) -> None:
    """With REQUEST_TIMEOUT_SECONDS, a read stuck on a hung MySQL is cut off at that
    bound with a JSON 503 and Retry-After, long before MySQL's own timeout."""
    with FaultProxy(settings.mysql_host, settings.mysql_port) as proxy:
        slow = replace(
            settings,
            mysql_host="127.0.0.1",
            mysql_port=proxy.port,
            mysql_timeout_seconds=5.0,
            request_timeout_seconds=0.3,
        )
        async with running_app(slow) as client:
            proxy.block(hang=True)
            started = time.perf_counter()
            response = await client.get("/api/v1/users/1")
            elapsed = time.perf_counter() - started
    assert response.status_code == 503
    assert response.json()["error"] == "timeout"
    assert response.headers["retry-after"] == "1"
    assert_security_headers(response)
    assert elapsed < 2.0


async def test_request_timeout_never_splits_a_delete(settings: Settings, redis: Redis) -> None:
    """A delete slower than REQUEST_TIMEOUT_SECONDS is not cut off between its MySQL and
    Redis steps: the user is deleted everywhere, and increments answer 404 after it."""
    with FaultProxy(settings.mysql_host, settings.mysql_port) as proxy:
        slow = replace(
            settings,
            mysql_host="127.0.0.1",
            mysql_port=proxy.port,
            request_timeout_seconds=0.05,
        )
        async with running_app(slow) as client:
            created = await client.post("/api/v1/users", json={"username": "slow-delete"})
            user_id = created.json()["data"]["id"]
            assert (await client.put(f"/api/v1/users/{user_id}/increment")).status_code == 200
            proxy.delay(0.2)  # every MySQL reply now takes longer than the request timeout
            deleted = await client.delete(f"/api/v1/users/{user_id}")
            proxy.delay(0)
            assert deleted.status_code == 200
            assert (await client.put(f"/api/v1/users/{user_id}/increment")).status_code == 404
    assert not await redis.exists(Keys.from_settings(settings).counter(user_id))
