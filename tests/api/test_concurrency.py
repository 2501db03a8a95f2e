"""Concurrent requests: exact counts, idempotent retries, deletes racing increments."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import httpx
from asyncmy.pool import Pool
from redis.asyncio import Redis

from counter_svc.keys import Keys
from counter_svc.settings import Settings
from tests.helpers import create_user, running_app


async def test_50_users_x_200_concurrent_increments_are_exact(
    redis: Redis, settings: Settings
) -> None:
    """10,000 concurrent increments over 50 users: each count equals its 200 responses."""
    # 200 requests in flight in one process on a busy 2-core machine can wait more than
    # the default 1 s for a pooled connection (a clean 503); this test is about exactness.
    async with running_app(replace(settings, redis_timeout_seconds=30)) as client:
        await _increment_50_users_200_times(client, redis, settings)


async def _increment_50_users_200_times(
    client: httpx.AsyncClient, redis: Redis, settings: Settings
) -> None:
    ids = [await create_user(client, f"load-{i}") for i in range(50)]
    # Half the users start cold (counter key evicted), so the seeding path races too.
    keys = Keys.from_settings(settings)
    await redis.delete(*(keys.counter(user_id) for user_id in ids[::2]))
    sem = asyncio.Semaphore(200)

    async def inc(user_id: int) -> int:
        async with sem:
            return (await client.put(f"/api/v1/users/{user_id}/increment")).status_code

    statuses = await asyncio.gather(*(inc(u) for u in ids for _ in range(200)))
    assert statuses.count(200) == 10_000
    for user_id in ids:
        r = await client.get(f"/api/v1/users/{user_id}/count")
        assert r.json()["data"]["counter"] == 200, user_id


async def test_idempotent_retry_counts_once(client: httpx.AsyncClient) -> None:
    """A retried increment with the same Idempotency-Key returns the first answer."""
    user_id = await create_user(client, "idem")
    headers = {"Idempotency-Key": "order-17"}
    first = await client.put(f"/api/v1/users/{user_id}/increment", headers=headers)
    second = await client.put(f"/api/v1/users/{user_id}/increment", headers=headers)
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    assert (await client.get(f"/api/v1/users/{user_id}/count")).json()["data"]["counter"] == 1
    other = await client.put(f"/api/v1/users/{user_id}/increment", headers={"Idempotency-Key": "x"})
    assert other.json()["data"]["counter"] == 2


async def test_idempotent_racing_requests_count_once(
    client: httpx.AsyncClient, redis: Redis, settings: Settings
) -> None:
    """Twenty requests racing with one key, on a cold counter, count once and agree."""
    user_id = await create_user(client, "idem-race")
    await redis.delete(Keys.from_settings(settings).counter(user_id))
    headers = {"Idempotency-Key": "same"}
    answers = await asyncio.gather(
        *(client.put(f"/api/v1/users/{user_id}/increment", headers=headers) for _ in range(20))
    )
    assert {r.status_code for r in answers} == {200}
    assert {r.json()["data"]["counter"] for r in answers} == {1}
    assert (await client.get(f"/api/v1/users/{user_id}/count")).json()["data"]["counter"] == 1


async def test_idempotency_key_ignores_surrounding_white_space(client: httpx.AsyncClient) -> None:
    """Spaces and tabs around the key are not part of it (RFC 9110 5.5): a proxy that trims
    header values does not turn a retry into a second count."""
    user_id = await create_user(client, "idem-ows")
    path = f"/api/v1/users/{user_id}/increment"
    for key in ("k-1 ", "k-1", "\tk-1", " k-1\t "):
        response = await client.put(path, headers={"Idempotency-Key": key})
        assert response.status_code == 200, (key, response.text)
        assert response.json()["data"]["counter"] == 1, key
    assert (await client.get(f"/api/v1/users/{user_id}/count")).json()["data"]["counter"] == 1


async def test_two_idempotency_keys_are_refused(client: httpx.AsyncClient) -> None:
    """Two Idempotency-Key headers (or one sent twice) are a 400, not the first one taken
    silently; nothing is counted."""
    user_id = await create_user(client, "idem-twice")
    path = f"/api/v1/users/{user_id}/increment"
    for keys in (("a", "b"), ("a", "a")):
        response = await client.put(path, headers=[("Idempotency-Key", k) for k in keys])
        assert response.status_code == 400, keys
        assert response.json()["error"] == "invalid_idempotency_key"
    assert (await client.get(f"/api/v1/users/{user_id}/count")).json()["data"]["counter"] == 0


async def test_idempotency_key_is_scoped_per_user(client: httpx.AsyncClient) -> None:
    """The same key on two users counts on each."""
    a, b = await create_user(client, "scope-a"), await create_user(client, "scope-b")
    headers = {"Idempotency-Key": "k"}
    await client.put(f"/api/v1/users/{a}/increment", headers=headers)
    r = await client.put(f"/api/v1/users/{b}/increment", headers=headers)
    assert r.json()["data"] == {"user_id": b, "counter": 1}


async def test_delete_racing_increments_never_resurrects(
    client: httpx.AsyncClient, redis: Redis, mysql: Pool, settings: Settings
) -> None:
    """Delete racing 20 increments, 20 times: afterwards 404 everywhere and no key left."""
    for round_ in range(20):
        user_id = await create_user(client, f"doomed-{round_}")
        if round_ % 2:  # cold start on odd rounds: the seeding path races the delete
            await redis.delete(Keys.from_settings(settings).counter(user_id))
        incs = [client.put(f"/api/v1/users/{user_id}/increment") for _ in range(20)]
        results = await asyncio.gather(client.delete(f"/api/v1/users/{user_id}"), *incs)
        assert results[0].status_code == 200
        assert {r.status_code for r in results[1:]} <= {200, 404}
        for path in (f"/api/v1/users/{user_id}/count", f"/api/v1/users/{user_id}"):
            assert (await client.get(path)).status_code == 404
        assert (await client.put(f"/api/v1/users/{user_id}/increment")).status_code == 404
        tag = f"{settings.key_prefix}:{{{user_id % settings.buckets}}}"
        assert not await redis.exists(f"{tag}:c:{user_id}")
        assert await redis.zscore(f"{tag}:dirty", user_id) is None
        assert not await redis.hexists(f"{tag}:inflight", str(user_id))
    async with mysql.acquire() as conn, conn.cursor() as cur:
        await cur.execute("SELECT COUNT(*) FROM users WHERE username LIKE 'doomed-%%'")
        assert (await cur.fetchone())[0] == 0


async def test_two_instances_share_users_at_once(settings: Settings) -> None:
    """A user created on one replica is countable and incrementable on another at once."""
    async with running_app(settings) as one, running_app(settings) as two:
        user_id = await create_user(one, "replicated")
        assert (await two.get(f"/api/v1/users/{user_id}/count")).json()["data"]["counter"] == 0
        await asyncio.gather(
            *(c.put(f"/api/v1/users/{user_id}/increment") for c in (one, two) for _ in range(50))
        )
        assert (await one.get(f"/api/v1/users/{user_id}/count")).json()["data"]["counter"] == 100
        assert (await two.delete(f"/api/v1/users/{user_id}")).status_code == 200
        assert (await one.put(f"/api/v1/users/{user_id}/increment")).status_code == 404


async def test_probe_on_one_replica_create_on_another(settings: Settings) -> None:
    """An id probed on replica one becomes visible there as soon as replica two creates it."""
    async with running_app(settings) as one, running_app(settings) as two:
        next_id = await create_user(two, "before") + 1
        assert (await one.get(f"/api/v1/users/{next_id}/count")).status_code == 404
        assert await create_user(two, "after") == next_id
        assert (await one.put(f"/api/v1/users/{next_id}/increment")).status_code == 200
