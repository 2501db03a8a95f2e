"""Rate limiting per client, shared through Redis by every API instance."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Any

import pytest
from redis.asyncio import Redis

from counter_svc.keys import Keys
from counter_svc.middleware.ratelimit import LIBRARY, RATE_LIMIT, client_address
from counter_svc.settings import Settings
from tests.helpers import create_user, running_app, unreachable_redis

TOTAL = "usercounter_http_requests_total{"
LIMIT = 5
PROXY = ip_network("127.0.0.1/32")


def limited(settings: Settings, **overrides: Any) -> Settings:
    return replace(settings, rate_limit_per_minute=LIMIT, **overrides)


async def test_the_request_after_the_limit_gets_429_across_two_instances(
    settings: Settings,
) -> None:
    """N requests spread over two API instances pass; the N+1th, on either, is a JSON 429
    with Retry-After and RateLimit-* headers: the budget lives in Redis, not a process."""
    async with running_app(limited(settings)) as a, running_app(limited(settings)) as b:
        answers = [await (a if i % 2 else b).get("/api/v1/users/1/count") for i in range(LIMIT)]
        refused = await a.get("/api/v1/users/1/count")
        refused_too = await b.put("/api/v1/users/1/increment")
    assert [r.status_code for r in answers] == [404] * LIMIT  # counted, and answered
    assert [r.headers["ratelimit-remaining"] for r in answers] == ["4", "3", "2", "1", "0"]
    for response in (refused, refused_too):
        assert response.status_code == 429
        assert response.json()["error"] == "rate_limited"
        assert 1 <= int(response.headers["retry-after"]) <= 60 // LIMIT
        assert response.headers["ratelimit-limit"] == str(LIMIT)
        assert response.headers["ratelimit-remaining"] == "0"
        assert 0 < int(response.headers["ratelimit-reset"]) <= 60
        assert response.headers["ratelimit-policy"] == f"{LIMIT};w=60"
        assert response.headers["x-content-type-options"] == "nosniff"


async def test_successful_answers_carry_the_ratelimit_headers(settings: Settings) -> None:
    """A 201 and a 200 under the limit say the limit, what is left, and when it is full."""
    async with running_app(limited(settings)) as client:
        user_id = await create_user(client, "budget")
        response = await client.put(f"/api/v1/users/{user_id}/increment")
    assert response.status_code == 200
    assert response.headers["ratelimit-limit"] == str(LIMIT)
    assert response.headers["ratelimit-remaining"] == str(LIMIT - 2)
    assert 0 < int(response.headers["ratelimit-reset"]) <= 60


async def test_probes_and_metrics_are_never_limited(settings: Settings) -> None:
    """/healthz, /readyz, /metrics and /openapi.json stay open past the limit."""
    async with running_app(limited(settings)) as client:
        for _ in range(LIMIT + 1):
            await client.get("/api/v1/users/1/count")
        for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
            response = await client.get(path)
            assert response.status_code == 200, path
            assert "ratelimit-limit" not in response.headers


async def test_forwarded_for_is_ignored_from_an_untrusted_peer(settings: Settings) -> None:
    """Without trusted proxies, a client cannot dodge the limit by inventing
    X-Forwarded-For addresses: every request is charged to the TCP peer."""
    async with running_app(limited(settings)) as client:
        statuses = [
            (
                await client.get(
                    "/api/v1/users/1/count", headers={"X-Forwarded-For": f"10.0.0.{i}"}
                )
            ).status_code
            for i in range(LIMIT + 1)
        ]
    assert statuses[-1] == 429


async def test_forwarded_for_from_a_trusted_proxy_separates_clients(settings: Settings) -> None:
    """Behind a trusted proxy, each client address in X-Forwarded-For has its own budget."""
    async with running_app(limited(settings, rate_limit_trusted_proxies=(PROXY,))) as client:
        first = [
            await client.get("/api/v1/users/1/count", headers={"X-Forwarded-For": "203.0.113.7"})
            for _ in range(LIMIT + 1)
        ]
        other = await client.get(
            "/api/v1/users/1/count", headers={"X-Forwarded-For": "203.0.113.8"}
        )
    assert first[-1].status_code == 429
    assert other.status_code == 404
    assert other.headers["ratelimit-remaining"] == str(LIMIT - 1)


async def test_a_redis_failure_lets_requests_through(settings: Settings) -> None:
    """With Redis unreachable the limiter fails open: the request gets the store's 503,
    never a 429 or a 500."""
    gone = limited(unreachable_redis(settings))
    async with running_app(gone) as client:
        response = await client.get("/api/v1/users/1/count")
        metrics = (await client.get("/metrics")).text
    assert response.status_code == 503
    assert "ratelimit-limit" not in response.headers
    errors = [ln for ln in metrics.splitlines() if ln.startswith("usercounter_redis_errors_total")]
    assert float(errors[0].split()[-1]) >= 2  # the limiter's and the store's


async def test_the_budget_refills_over_time(redis: Redis, settings: Settings) -> None:
    """The script lets `limit` through at once, then one per interval: after one interval
    exactly one more request passes."""
    key = Keys.from_settings(settings).rate_limit("198.51.100.1")

    async def charge() -> list[int]:
        reply = await LIBRARY.call(redis, RATE_LIMIT, [key], [100, 2])  # 2 per 200 ms
        return [int(x) for x in reply]

    assert [(await charge())[0] for _ in range(3)] == [1, 1, 0]
    allowed, _, _, retry_ms = await charge()
    assert allowed == 0
    assert 0 < retry_ms <= 100
    await asyncio.sleep((retry_ms + 20) / 1000)
    assert [(await charge())[0] for _ in range(2)] == [1, 0]
    assert 0 < await redis.pttl(key) <= 200  # the key expires once the bucket is full


@pytest.mark.parametrize(
    ("peer", "forwarded", "trusted", "expected"),
    [
        ("192.0.2.1", ["203.0.113.9"], (), "192.0.2.1"),
        ("127.0.0.1", ["203.0.113.9"], (PROXY,), "203.0.113.9"),
        ("127.0.0.1", ["1.1.1.1, 203.0.113.9"], (PROXY,), "203.0.113.9"),
        ("127.0.0.1", ["203.0.113.9, 10.1.2.3"], (PROXY, ip_network("10.0.0.0/8")), "203.0.113.9"),
        ("127.0.0.1", ["not-an-ip"], (PROXY,), "127.0.0.1"),
        ("127.0.0.1", [], (PROXY,), "127.0.0.1"),
        ("2001:db8:1:2:3:4:5:6", [], (), "2001:db8:1:2::/64"),
        ("::ffff:192.0.2.5", [], (), "192.0.2.5"),
        # An IPv4 proxy seen through an IPv6 socket is still the trusted proxy.
        ("::ffff:127.0.0.1", ["203.0.113.9"], (PROXY,), "203.0.113.9"),
        ("fe80::1%eth0", [], (), "fe80::/64"),
    ],
)
def test_client_address(
    peer: str, forwarded: list[str], trusted: tuple[IPv4Network | IPv6Network, ...], expected: str
) -> None:
    """The charged address is the right-most X-Forwarded-For hop that is not a trusted
    proxy (only when the peer is one); IPv6 clients are grouped by /64."""
    assert client_address(peer, forwarded, trusted) == expected


async def test_rate_limited_requests_are_counted_under_their_route(settings: Settings) -> None:
    """429s show up in usercounter_http_requests_total with the route they were refused
    on (not `unmatched`), so the dashboard and alerts see them per route."""
    async with running_app(limited(settings)) as client:
        for _ in range(LIMIT + 2):
            await client.get("/api/v1/users/1/count")
        text = (await client.get("/metrics")).text
    refused = [ln for ln in text.splitlines() if ln.startswith(TOTAL) and 'status="429"' in ln]
    assert len(refused) == 1, refused
    assert 'route="/api/v1/users/{user_id}/count"' in refused[0]
    assert float(refused[0].split()[-1]) == 2
