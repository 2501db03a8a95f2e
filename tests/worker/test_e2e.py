"""End to end: two API processes over HTTP and two worker processes, counted exactly."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from asyncmy.pool import Pool
from redis.asyncio import Redis

from counter_svc.settings import Settings
from tests.faults import free_port, wait_until
from tests.helpers import (
    ROOT,
    WorkerProcess,
    mysql_counters,
    redis_counters,
    settle,
    worker_env,
    worker_settings,
)

pytestmark = pytest.mark.slow


@contextmanager
def api_process(settings: Settings) -> Iterator[str]:
    """`python -m counter_svc serve` on a free port of 127.0.0.1; yields its base URL."""
    port = free_port()
    env = worker_env(worker_settings(settings), HOST="127.0.0.1", PORT=str(port))
    proc = subprocess.Popen(
        [sys.executable, "-m", "counter_svc", "serve"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(f"{url}/healthz", timeout=0.5).status_code == 200, 20, url)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


async def test_two_apis_and_two_workers_agree_with_the_200s(
    redis: Redis, mysql: Pool, settings: Settings
) -> None:
    """Every 200 from either API is in MySQL and Redis exactly once after the workers drain."""
    ws = worker_settings(settings, interval_seconds=0.2, batch_size=20, lease_seconds=2.0)
    workers = [WorkerProcess(ws) for _ in range(2)]
    acked: dict[int, int] = {}
    try:
        with api_process(settings) as url_a, api_process(settings) as url_b:
            async with (
                httpx.AsyncClient(base_url=url_a, timeout=10) as a,
                httpx.AsyncClient(base_url=url_b, timeout=10) as b,
            ):
                ids = []
                for n in range(20):
                    created = await (a, b)[n % 2].post("/api/v1/users", json={"username": f"e{n}"})
                    assert created.status_code == 201, created.text
                    ids.append(created.json()["data"]["id"])

                async def lane(client: httpx.AsyncClient, offset: int) -> None:
                    for n in range(150):
                        user_id = ids[(n + offset) % len(ids)]
                        response = await client.put(f"/api/v1/users/{user_id}/increment")
                        if response.status_code == 200:
                            acked[user_id] = acked.get(user_id, 0) + 1

                await asyncio.gather(*(lane((a, b)[k % 2], k) for k in range(16)))
                await settle(redis, settings, within=30)
                counts = [(await a.get(f"/api/v1/users/{i}/count")).json() for i in ids]
    finally:
        for w in workers:
            w.kill()
    expected = {i: acked.get(i, 0) for i in ids}
    assert sum(expected.values()) == 16 * 150
    assert await redis_counters(redis, settings, ids) == expected
    assert await mysql_counters(mysql) == expected
    assert {c["data"]["user_id"]: c["data"]["counter"] for c in counts} == expected
