"""A full connection pool is overload, not an outage: its own 503 code, metric and readiness."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import pytest
from redis.asyncio import Redis

from counter_svc.settings import Settings
from counter_svc.users import Users
from tests.faults import FaultProxy
from tests.helpers import create_user, running_app, store_of

pytestmark = pytest.mark.slow


@asynccontextmanager
async def pool_kept_busy(users: Users) -> AsyncIterator[None]:
    """One task running short queries back to back: MySQL answers each, and the task takes
    the connection again as it releases it, so a pool of one never has it free."""
    stop, holding = asyncio.Event(), asyncio.Event()

    async def nap(cur: Any) -> None:
        holding.set()
        await cur.execute("SELECT SLEEP(0.1)")
        await cur.fetchone()

    async def keep_busy() -> None:
        for _ in range(300):  # bounded: 30 s at most
            if stop.is_set():
                return
            await users._run(nap)

    task = asyncio.create_task(keep_busy())
    try:
        async with asyncio.timeout(5):
            await holding.wait()
        yield
    finally:
        stop.set()
        await task


def metric(text: str, name: str) -> float:
    line = next(line for line in text.splitlines() if line.startswith(name + " "))
    return float(line.split()[-1])


async def test_full_mysql_pool_answers_overloaded_and_stays_ready(settings: Settings) -> None:
    """Every pooled MySQL connection busy with queries MySQL answers: a create answers 503
    `overloaded` with Retry-After, /readyz stays ready (MySQL "busy"), and the rejection is
    counted as overload, not as a MySQL error."""
    small = replace(settings, mysql_pool_size=1, mysql_timeout_seconds=0.5)
    async with running_app(small) as client:
        await create_user(client, "before")
        async with pool_kept_busy(store_of(client).users):
            r = await client.post("/api/v1/users", json={"username": "waits"})
            assert r.status_code == 503, r.text
            assert r.json() == {
                "error": "overloaded",
                "message": "the service is overloaded, try again shortly",
            }
            assert r.headers["retry-after"].isdigit()
            ready = await client.get("/readyz")
            assert ready.status_code == 200
            assert ready.json() == {"status": "ready", "checks": {"mysql": "busy", "redis": "ok"}}
            metrics = (await client.get("/metrics")).text
        labels = '{backend="mysql"}'
        assert metric(metrics, f"usercounter_overload_rejections_total{labels}") == 1
        assert metric(metrics, "usercounter_mysql_errors_total") == 0
        assert metric(metrics, f"usercounter_backend_up{labels}") == 1
        assert (await client.post("/api/v1/users", json={"username": "after"})).status_code == 201


async def test_hung_mysql_with_a_full_pool_is_an_outage(settings: Settings) -> None:
    """MySQL hanging while the only pooled connection is in use: the request waiting for it
    (which then tries to open a new one) answers `service_unavailable`, not `overloaded`,
    and /readyz reports MySQL unavailable."""
    with FaultProxy(settings.mysql_host, settings.mysql_port) as proxy:
        via_proxy = replace(
            settings,
            mysql_host="127.0.0.1",
            mysql_port=proxy.port,
            mysql_pool_size=1,
            mysql_timeout_seconds=0.5,
        )
        async with running_app(via_proxy) as client:
            await create_user(client, "before")
            proxy.pause()
            try:
                first, waiting = await asyncio.gather(
                    client.post("/api/v1/users", json={"username": "holds"}),
                    client.post("/api/v1/users", json={"username": "waits"}),
                )
                for r in (first, waiting):
                    assert r.status_code == 503, r.text
                    assert r.json()["error"] == "service_unavailable"
                ready = await client.get("/readyz")
                assert ready.json()["checks"]["mysql"] == "unavailable"
                assert ready.json()["status"] == "degraded"
                metrics = (await client.get("/metrics")).text
                assert (
                    metric(metrics, 'usercounter_overload_rejections_total{backend="mysql"}') == 0
                )
            finally:
                proxy.resume()


@pytest.mark.single_redis("holds the one connection of a single server's blocking pool")
async def test_full_redis_pool_answers_overloaded_and_stays_ready(settings: Settings) -> None:
    """The only pooled Redis connection held while Redis answers: an increment answers 503
    `overloaded` after REDIS_TIMEOUT_SECONDS, /readyz stays ready (Redis "busy")."""
    small = replace(settings, redis_pool_size=1, redis_timeout_seconds=0.5)
    async with running_app(small) as client:
        user_id = await create_user(client, "redis-pool")
        redis = store_of(client).counters.redis
        assert isinstance(redis, Redis)
        pool = redis.connection_pool
        held = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            r = await client.put(f"/api/v1/users/{user_id}/increment")
            assert r.status_code == 503, r.text
            assert r.json()["error"] == "overloaded"
            assert r.headers["retry-after"].isdigit()
            ready = await client.get("/readyz")
            assert ready.status_code == 200
            assert ready.json() == {"status": "ready", "checks": {"mysql": "ok", "redis": "busy"}}
        finally:
            await pool.release(held)
        r = await client.put(f"/api/v1/users/{user_id}/increment")
        assert r.json()["data"]["counter"] == 1
        metrics = (await client.get("/metrics")).text
        assert metric(metrics, 'usercounter_overload_rejections_total{backend="redis"}') == 1
        assert metric(metrics, "usercounter_redis_errors_total") == 0
