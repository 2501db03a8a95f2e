"""MySQL or Redis unreachable: the API degrades to clean 503s and recovers by itself."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest
from redis.asyncio import Redis

from counter_svc.keys import Keys
from counter_svc.settings import Settings
from tests.faults import FaultProxy, free_port, private_redis
from tests.helpers import create_user, running_app

pytestmark = pytest.mark.slow


async def test_mysql_down_hot_counters_keep_working(settings: Settings, redis: Redis) -> None:
    """MySQL cut off: hot increments and counts succeed, create/delete/cold reads answer
    503 JSON with Retry-After; after recovery everything works again."""
    with FaultProxy(settings.mysql_host, settings.mysql_port) as proxy:
        via_proxy = replace(
            settings, mysql_host="127.0.0.1", mysql_port=proxy.port, mysql_timeout_seconds=0.5
        )
        async with running_app(via_proxy) as client:
            hot = await create_user(client, "hot")
            cold = await create_user(client, "cold")
            await client.put(f"/api/v1/users/{hot}/increment")
            # "cold" has a live counter too; make it cold so the read must go to MySQL.
            await redis.delete(Keys.from_settings(settings).counter(cold))

            proxy.block()
            results = await asyncio.gather(
                *(client.put(f"/api/v1/users/{hot}/increment") for _ in range(50))
            )
            assert {r.status_code for r in results} == {200}
            count = await client.get(f"/api/v1/users/{hot}/count")
            assert count.json()["data"]["counter"] == 51
            for method, path, body in [
                ("POST", "/api/v1/users", {"username": "during-outage"}),
                ("DELETE", f"/api/v1/users/{hot}", None),
                ("GET", f"/api/v1/users/{cold}/count", None),
                ("PUT", f"/api/v1/users/{cold}/increment", None),
            ]:
                r = await client.request(method, path, json=body)
                assert r.status_code == 503, (method, path, r.text)
                assert r.json()["error"] == "service_unavailable"
                assert r.headers["retry-after"].isdigit()
            # Still ready: it serves what Redis holds. Not ready would take every pod out
            # of the Service at once, hot increments included.
            ready = await client.get("/readyz")
            assert ready.status_code == 200
            assert ready.json() == {
                "status": "degraded",
                "checks": {"mysql": "unavailable", "redis": "ok"},
            }

            proxy.restore()
            assert (await client.get("/readyz")).json()["status"] == "ready"
            assert (await client.get(f"/api/v1/users/{cold}/count")).status_code == 200
            assert (await client.put(f"/api/v1/users/{cold}/increment")).json()["data"][
                "counter"
            ] == 1
            assert (
                await client.post("/api/v1/users", json={"username": "after"})
            ).status_code == 201
            assert (await client.delete(f"/api/v1/users/{hot}")).status_code == 200


async def test_mysql_hanging_answers_503_within_the_timeout(settings: Settings) -> None:
    """MySQL that accepts but never answers: create answers 503 after the timeout, no hang."""
    with FaultProxy(settings.mysql_host, settings.mysql_port) as proxy:
        via_proxy = replace(
            settings, mysql_host="127.0.0.1", mysql_port=proxy.port, mysql_timeout_seconds=0.5
        )
        async with running_app(via_proxy) as client:
            proxy.block(hang=True)
            loop = asyncio.get_running_loop()
            started = loop.time()
            r = await client.post("/api/v1/users", json={"username": "hang"})
            assert r.status_code == 503
            assert loop.time() - started < 3
            proxy.restore()
            assert (await client.post("/api/v1/users", json={"username": "ok"})).status_code == 201


@pytest.mark.single_redis(reason="kills and restarts a private redis-server")
async def test_redis_down_answers_503_and_recovers(settings: Settings, tmp_path: Path) -> None:
    """Redis killed: counter calls answer 503 JSON; once it is back they work again."""
    with private_redis(tmp_path, appendonly=True) as server:
        on_private = replace(settings, redis_url=server.url, redis_timeout_seconds=0.5)
        async with running_app(on_private) as client:
            user_id = await create_user(client, "redis-outage")
            await client.put(f"/api/v1/users/{user_id}/increment")
            server.kill()
            for method, path in [
                ("PUT", f"/api/v1/users/{user_id}/increment"),
                ("GET", f"/api/v1/users/{user_id}/count"),
                ("GET", f"/api/v1/users/{user_id}"),
            ]:
                r = await client.request(method, path)
                assert r.status_code == 503, (method, path, r.text)
                assert r.json()["error"] == "service_unavailable"
                assert "retry-after" in r.headers
            ready = await client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["checks"]["redis"] == "unavailable"
            assert (await client.get("/healthz")).status_code == 200
            server.start()
            statuses = [
                (await client.put(f"/api/v1/users/{user_id}/increment")).status_code
                for _ in range(3)
            ]
            assert statuses[-1] == 200
            assert (await client.get("/readyz")).status_code == 200


async def test_an_unreachable_redis_cluster_answers_503_from_the_start(
    settings: Settings,
) -> None:
    """Cluster seeds that do not answer at start-up: the API still starts, counter calls
    answer 503 JSON (redis-py's cluster errors are not all RedisErrors), /readyz 503."""
    port = free_port()
    gone = replace(settings, redis_sentinels=(), redis_cluster_nodes=(("127.0.0.1", port),))
    async with running_app(gone) as client:
        user_id = await create_user(client, "cluster-gone")
        for method, path in [
            ("PUT", f"/api/v1/users/{user_id}/increment"),
            ("GET", f"/api/v1/users/{user_id}/count"),
        ]:
            r = await client.request(method, path)
            assert r.status_code == 503, (method, path, r.text)
            assert r.json()["error"] == "service_unavailable"
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["redis"] == "unavailable"


@pytest.mark.single_redis(reason="hangs a proxy in front of the one Redis server")
async def test_readiness_bounds_each_store_by_its_own_timeout(settings: Settings) -> None:
    """A hanging Redis makes /readyz answer 503 within REDIS_TIMEOUT_SECONDS, not within
    the (here much longer) MySQL timeout: the probe must not outlast its own deadline."""
    with FaultProxy("127.0.0.1", 6379) as proxy:
        via_proxy = replace(
            settings,
            redis_url=f"redis://127.0.0.1:{proxy.port}/0",
            redis_timeout_seconds=0.3,
            mysql_timeout_seconds=8.0,
        )
        async with running_app(via_proxy) as client:
            assert (await client.get("/readyz")).status_code == 200
            proxy.block(hang=True)
            loop = asyncio.get_running_loop()
            started = loop.time()
            ready = await client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["checks"] == {"mysql": "ok", "redis": "unavailable"}
            assert loop.time() - started < 4, "bounded by the Redis timeout, not MySQL's 8 s"
