"""The write-through baseline of the bench (bench/writethrough.py) speaks the API's
contract, and each answered increment is already committed in MySQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from asyncmy.pool import Pool

from bench.writethrough import create_app
from counter_svc.settings import Settings


@pytest.fixture
async def baseline(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://baseline") as client:
            yield client


async def stored(mysql: Pool, user_id: int) -> int | None:
    async with mysql.acquire() as conn, conn.cursor() as cur:
        await cur.execute("SELECT counter FROM users WHERE id = %s", (user_id,))
        row = await cur.fetchone()
    return None if row is None else int(row[0])


async def test_life_cycle_answers_as_the_api(baseline: httpx.AsyncClient, mysql: Pool) -> None:
    """Create, increment, count and delete answer with the API's shapes and codes."""
    created = await baseline.post("/api/v1/users", json={"username": "wt-a"})
    assert created.status_code == 201
    user_id = created.json()["data"]["id"]
    for expected in (1, 2):
        r = await baseline.put(f"/api/v1/users/{user_id}/increment")
        assert r.json() == {
            "message": "counter incremented",
            "data": {"user_id": user_id, "counter": expected},
        }
    assert await stored(mysql, user_id) == 2
    assert (await baseline.get(f"/api/v1/users/{user_id}/count")).json()["data"]["counter"] == 2
    assert (await baseline.delete(f"/api/v1/users/{user_id}")).status_code == 200
    gone = await baseline.put(f"/api/v1/users/{user_id}/increment")
    assert (gone.status_code, gone.json()["error"]) == (404, "user_not_found")


async def test_concurrent_increments_each_get_their_own_value(
    baseline: httpx.AsyncClient, mysql: Pool
) -> None:
    """Concurrent increments of one user answer 1..n, once each, and MySQL holds n."""
    created = await baseline.post("/api/v1/users", json={"username": "wt-hot"})
    user_id = created.json()["data"]["id"]
    answers = await asyncio.gather(
        *(baseline.put(f"/api/v1/users/{user_id}/increment") for _ in range(40))
    )
    assert sorted(r.json()["data"]["counter"] for r in answers) == list(range(1, 41))
    assert await stored(mysql, user_id) == 40
