"""Every row of the HTTP contract in docs/design.md: status codes, headers and bodies."""

from __future__ import annotations

import re

import httpx
from redis.asyncio import Redis

from counter_svc.keys import Keys
from counter_svc.settings import Settings
from tests.helpers import create_user

RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


async def test_create_user_answers_201_with_user_and_location(client: httpx.AsyncClient) -> None:
    """Create answers 201, the user object under `data`, and a Location header."""
    response = await client.post("/api/v1/users", json={"username": "alice"})
    assert response.status_code == 201
    body = response.json()
    assert body["message"]
    user = body["data"]
    assert set(user) == {"id", "username", "counter", "created_at", "updated_at"}
    assert user["username"] == "alice"
    assert user["counter"] == 0
    assert RFC3339.match(user["created_at"])
    assert RFC3339.match(user["updated_at"])
    assert response.headers["location"] == f"/api/v1/users/{user['id']}"
    assert response.headers["content-type"] == "application/json"


async def test_duplicate_username_answers_409(client: httpx.AsyncClient) -> None:
    """A taken username answers 409 username_taken."""
    await create_user(client, "bob")
    response = await client.post("/api/v1/users", json={"username": "bob"})
    assert response.status_code == 409
    assert response.json()["error"] == "username_taken"


async def test_get_user_has_live_counter(client: httpx.AsyncClient) -> None:
    """GET user shows the counter as incremented, before any sync to MySQL."""
    user_id = await create_user(client, "carol")
    for _ in range(3):
        await client.put(f"/api/v1/users/{user_id}/increment")
    response = await client.get(f"/api/v1/users/{user_id}")
    assert response.status_code == 200
    assert response.json()["data"]["counter"] == 3
    assert response.json()["data"]["username"] == "carol"


async def test_count_and_increment_shapes(client: httpx.AsyncClient) -> None:
    """Count and increment answer 200 with {user_id, counter}; increment returns the new value."""
    user_id = await create_user(client, "dave")
    count = await client.get(f"/api/v1/users/{user_id}/count")
    assert count.status_code == 200
    assert count.json()["data"] == {"user_id": user_id, "counter": 0}
    inc = await client.put(f"/api/v1/users/{user_id}/increment")
    assert inc.status_code == 200
    assert inc.json()["data"] == {"user_id": user_id, "counter": 1}


async def test_delete_user_then_everything_is_404(client: httpx.AsyncClient) -> None:
    """After delete: GET, count, increment and a second delete all answer 404."""
    user_id = await create_user(client, "erin")
    await client.put(f"/api/v1/users/{user_id}/increment")
    response = await client.delete(f"/api/v1/users/{user_id}")
    assert response.status_code == 200
    assert response.json()["message"]
    for method, path in [
        ("GET", f"/api/v1/users/{user_id}"),
        ("GET", f"/api/v1/users/{user_id}/count"),
        ("PUT", f"/api/v1/users/{user_id}/increment"),
        ("DELETE", f"/api/v1/users/{user_id}"),
    ]:
        r = await client.request(method, path)
        assert r.status_code == 404, (method, path, r.text)
        assert r.json()["error"] == "user_not_found"


async def test_unknown_user_is_404_everywhere(client: httpx.AsyncClient) -> None:
    """An id that never existed answers 404 user_not_found on every user endpoint."""
    for method, path in [
        ("GET", "/api/v1/users/424242"),
        ("GET", "/api/v1/users/424242/count"),
        ("PUT", "/api/v1/users/424242/increment"),
        ("DELETE", "/api/v1/users/424242"),
    ]:
        r = await client.request(method, path)
        assert r.status_code == 404, (method, path)
        assert r.json() == {"error": "user_not_found", "message": "user 424242 not found"}


async def test_bad_id_is_400_invalid_user_id(client: httpx.AsyncClient) -> None:
    """A non-numeric or out-of-range id answers 400 invalid_user_id."""
    for user_id in ["abc", "0", "2147483648", "-1"]:
        r = await client.get(f"/api/v1/users/{user_id}/count")
        assert r.status_code == 400
        assert r.json()["error"] == "invalid_user_id"


async def test_unknown_route_and_wrong_method_use_json_errors(client: httpx.AsyncClient) -> None:
    """Unknown routes answer 404 and wrong methods 405 (with Allow), both in the error shape."""
    r = await client.get("/api/v2/nothing")
    assert r.status_code == 404
    assert r.json()["error"] == "not_found"
    r = await client.patch("/api/v1/users/1")
    assert r.status_code == 405
    assert r.json()["error"] == "method_not_allowed"
    assert "DELETE" in r.headers["allow"]


async def test_health_readiness_metrics_openapi(client: httpx.AsyncClient) -> None:
    """/healthz, /readyz, /metrics and /openapi.json answer 200 with their formats."""
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "checks": {"mysql": "ok", "redis": "ok"}}
    user_id = await create_user(client, "frank")
    await client.put(f"/api/v1/users/{user_id}/increment")
    metrics = (await client.get("/metrics")).text
    assert "usercounter_increments_total 1.0" in metrics
    assert 'route="/api/v1/users/{user_id}/increment",status="200"' in metrics
    assert "usercounter_http_request_duration_seconds_bucket" in metrics
    doc = (await client.get("/openapi.json")).json()
    assert doc["openapi"].startswith("3.1")
    assert "/api/v1/users/{user_id}/increment" in doc["paths"]


async def test_request_id_is_echoed_or_generated(client: httpx.AsyncClient) -> None:
    """A sane X-Request-ID is returned as is; otherwise one is generated."""
    r = await client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    r = await client.get("/healthz", headers={"X-Request-ID": "bad id with spaces"})
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])


async def test_probe_then_create_is_visible_at_once(
    client: httpx.AsyncClient, redis: Redis, settings: Settings
) -> None:
    """An id probed (404, negative-cached) before it exists is countable once it is created."""
    next_id = await create_user(client, "probe-seed") + 1
    assert (await client.get(f"/api/v1/users/{next_id}/count")).status_code == 404
    assert (await client.put(f"/api/v1/users/{next_id}/increment")).status_code == 404
    keys = Keys.from_settings(settings)
    assert await redis.exists(keys.absent(next_id))
    assert await create_user(client, "probed") == next_id
    count = await client.get(f"/api/v1/users/{next_id}/count")
    assert count.status_code == 200
    assert count.json()["data"]["counter"] == 0
    assert (await client.put(f"/api/v1/users/{next_id}/increment")).json()["data"]["counter"] == 1
