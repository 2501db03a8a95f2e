"""Edge cases found in review: retries after delete, half-done deletes, huge counters,
Redis out of memory, create racing delete, cancelled single-flight callers."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from asyncmy.pool import Pool
from redis.asyncio import Redis

from counter_svc.counters import Counters
from counter_svc.keys import Keys
from counter_svc.settings import Settings
from counter_svc.singleflight import SingleFlight
from tests.faults import private_redis
from tests.helpers import create_user, running_app


def keys_of(settings: Settings) -> Keys:
    return Keys.from_settings(settings)


async def test_idempotent_retry_after_delete_is_404(client: httpx.AsyncClient) -> None:
    """A retried idempotent increment of a deleted user answers 404, not the stored 200."""
    user_id = await create_user(client, "idem-deleted")
    headers = {"Idempotency-Key": "k1"}
    assert (await client.put(f"/api/v1/users/{user_id}/increment", headers=headers)).is_success
    assert (await client.delete(f"/api/v1/users/{user_id}")).status_code == 200
    retry = await client.put(f"/api/v1/users/{user_id}/increment", headers=headers)
    assert retry.status_code == 404


async def test_retried_delete_finishes_a_half_done_delete(
    client: httpx.AsyncClient, mysql: Pool, redis: Redis, settings: Settings
) -> None:
    """Row deleted but the Redis step lost: a retried DELETE (404) still removes the counter."""
    user_id = await create_user(client, "half-deleted")
    await client.put(f"/api/v1/users/{user_id}/increment")
    async with mysql.acquire() as conn, conn.cursor() as cur:
        await cur.execute("DELETE FROM users WHERE id = %s", (user_id,))
    assert (await client.get(f"/api/v1/users/{user_id}/count")).status_code == 200  # lingering
    assert (await client.delete(f"/api/v1/users/{user_id}")).status_code == 404
    assert (await client.get(f"/api/v1/users/{user_id}/count")).status_code == 404
    assert (await client.put(f"/api/v1/users/{user_id}/increment")).status_code == 404
    assert not await redis.exists(keys_of(settings).counter(user_id))


async def test_delete_of_an_unknown_id_leaves_no_tombstone(
    client: httpx.AsyncClient, redis: Redis, settings: Settings
) -> None:
    """DELETE of an id not yet created answers 404 and does not block that id's future user."""
    next_id = await create_user(client, "before-unknown") + 1
    assert (await client.delete(f"/api/v1/users/{next_id}")).status_code == 404
    assert not await redis.exists(keys_of(settings).gone(next_id))
    assert await create_user(client, "after-unknown") == next_id
    assert (await client.put(f"/api/v1/users/{next_id}/increment")).status_code == 200


async def test_create_racing_a_delete_keeps_the_user_deleted(
    client: httpx.AsyncClient, redis: Redis, settings: Settings
) -> None:
    """A delete landing between a create's INSERT and its Redis step wins: no counter appears."""
    user_id = await create_user(client, "raced")
    keys = keys_of(settings)
    assert (await client.delete(f"/api/v1/users/{user_id}")).status_code == 200
    counters = Counters(redis, keys, settings.idle_ttl_seconds, 60, 10, 60)
    await counters.created(user_id)  # the create's late Redis step
    assert not await redis.exists(keys.counter(user_id))
    assert (await client.get(f"/api/v1/users/{user_id}/count")).status_code == 404


@pytest.mark.parametrize("start", [99_999_999_999_998, 2**62])
async def test_huge_counters_are_exact(
    client: httpx.AsyncClient, mysql: Pool, redis: Redis, settings: Settings, start: int
) -> None:
    """Counters past 10^14 (beyond what Lua prints exactly) come back exact."""
    user_id = await create_user(client, f"huge-{start}")
    async with mysql.acquire() as conn, conn.cursor() as cur:
        await cur.execute("UPDATE users SET counter = %s WHERE id = %s", (start, user_id))
    await redis.delete(keys_of(settings).counter(user_id))  # cold: seeded from MySQL
    values = [
        (await client.put(f"/api/v1/users/{user_id}/increment")).json()["data"]["counter"]
        for _ in range(3)
    ]
    assert values == [start + 1, start + 2, start + 3]
    count = await client.get(f"/api/v1/users/{user_id}/count")
    assert count.json()["data"]["counter"] == start + 3


@pytest.mark.single_redis(reason="sets maxmemory on a private redis-server")
async def test_redis_out_of_memory_answers_503_and_counts_still_read(
    settings: Settings, tmp_path: Path
) -> None:
    """Redis at maxmemory: increments answer 503 JSON, counts of live counters still work."""
    with private_redis(tmp_path, appendonly=False) as server:
        on_private = replace(settings, redis_url=server.url)
        async with running_app(on_private) as client:
            user_id = await create_user(client, "oom")
            assert (await client.put(f"/api/v1/users/{user_id}/increment")).status_code == 200
            admin = Redis.from_url(server.url)
            try:
                # 4 MiB of data, then a 1 MiB limit that nothing may be evicted to meet.
                await admin.mset({f"filler:{i}": "x" * 4096 for i in range(1024)})
                await admin.config_set("maxmemory-policy", "noeviction")
                await admin.config_set("maxmemory", "1mb")
                r = await client.put(f"/api/v1/users/{user_id}/increment")
                assert r.status_code == 503
                assert r.json()["error"] == "service_unavailable"
                assert "retry-after" in r.headers
                count = await client.get(f"/api/v1/users/{user_id}/count")
                assert count.status_code == 200
                assert count.json()["data"]["counter"] == 1
            finally:
                await admin.aclose()


async def test_single_flight_survives_a_cancelled_caller() -> None:
    """When the first caller of a shared read is cancelled, the others still get the answer."""
    flight: SingleFlight[int] = SingleFlight()
    calls = 0

    async def slow() -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return 42

    first = asyncio.create_task(flight.do("k", slow))
    await asyncio.sleep(0)
    second = asyncio.create_task(flight.do("k", slow))
    await asyncio.sleep(0.01)
    first.cancel()
    assert await second == 42
    assert calls == 1
    with pytest.raises(asyncio.CancelledError):
        await first
