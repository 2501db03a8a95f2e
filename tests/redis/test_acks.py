"""REDIS_ACK_REPLICAS: a write is answered 200 only once WAIT confirmed it on that many
replicas; otherwise 503 `not_replicated` ("may have counted"), and reads still work."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from redis.asyncio import Redis

from counter_svc.settings import Settings
from tests.faults import private_redis
from tests.helpers import create_user, running_app

# Cluster mode has its own WAIT tests (test_cluster.py).
pytestmark = pytest.mark.single_redis(reason="a private redis-server without replicas")


async def test_writes_without_enough_replicas_answer_503_and_reads_still_work(
    settings: Settings, tmp_path: Path
) -> None:
    """A primary with no replica at all: WAIT 1 confirms nothing, so no increment is
    acknowledged; each says so, with Retry-After, and counts and reads keep answering."""
    with private_redis(tmp_path, appendonly=False) as server:
        acked = replace(
            settings, redis_url=server.url, redis_ack_replicas=1, redis_ack_timeout_ms=50
        )
        async with running_app(acked) as client:
            user_id = await create_user(client, "acks")  # 201: the Redis step is best effort
            r = await client.put(f"/api/v1/users/{user_id}/increment")
            assert r.status_code == 503, r.text
            assert r.json()["error"] == "not_replicated"
            assert r.headers["retry-after"] == "1"
            # It ran on the primary ("may have counted"): the count shows it.
            count = await client.get(f"/api/v1/users/{user_id}/count")
            assert count.status_code == 200
            assert count.json()["data"]["counter"] == 1
            metrics = (await client.get("/metrics")).text
            assert "usercounter_redis_not_replicated_total 1.0" in metrics


async def test_with_acks_off_the_same_primary_answers_200(
    settings: Settings, tmp_path: Path
) -> None:
    """The default (0): no WAIT, today's behaviour."""
    with private_redis(tmp_path, appendonly=False) as server:
        async with running_app(replace(settings, redis_url=server.url)) as client:
            user_id = await create_user(client, "no-acks")
            r = await client.put(f"/api/v1/users/{user_id}/increment")
            assert r.status_code == 200
            assert r.json()["data"]["counter"] == 1


async def test_only_promised_writes_wait_for_replicas(settings: Settings, tmp_path: Path) -> None:
    """Cache fills and answers that wrote nothing keep their answers without replicas: a
    cold count and get seed from MySQL (200), an unknown or deleted user is 404; a
    replayed increment is a promise like the first, so it is 503 too."""
    with private_redis(tmp_path, appendonly=False) as server:
        base = replace(settings, redis_url=server.url)
        async with running_app(base) as client:
            user_id = await create_user(client, "cold")
            gone = await create_user(client, "gone")
            assert (await client.delete(f"/api/v1/users/{gone}")).status_code == 200
            await client.put(f"/api/v1/users/{user_id}/increment")
        await flush(server.url)  # every counter cold: the next reads seed from MySQL
        acked = replace(base, redis_ack_replicas=1, redis_ack_timeout_ms=50)
        async with running_app(acked) as client:
            count = await client.get(f"/api/v1/users/{user_id}/count")
            assert count.status_code == 200, count.text
            assert (await client.get(f"/api/v1/users/{user_id}")).status_code == 200
            assert (await client.put(f"/api/v1/users/{gone}/increment")).status_code == 404
            assert (await client.put("/api/v1/users/999999/increment")).status_code == 404
            key = {"Idempotency-Key": "order-1"}
            for _ in range(2):  # the first, then its replay
                r = await client.put(f"/api/v1/users/{user_id}/increment", headers=key)
                assert r.status_code == 503, r.text
                assert r.json()["error"] == "not_replicated"


async def flush(url: str) -> None:
    redis = Redis.from_url(url)
    try:
        await redis.flushall()
    finally:
        await redis.aclose()
