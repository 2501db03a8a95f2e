"""Sentinel mode against a real topology: a primary, two replicas and three Sentinels on
private ports; the API and the sync worker as real processes, never restarted.

What an acknowledged increment survives (docs/design.md, "Redis modes"):
- REDIS_ACK_REPLICAS=1: the loss of the primary, even after its replication stalled:
  nothing acknowledged is lost, and MySQL = Redis = acknowledged.
- REDIS_ACK_REPLICAS=0: a failover after a stall loses what the replicas had not
  received; it is measured, and the repair (invariant 12) brings Redis and MySQL back to
  agreement, with MySQL never going back.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx
import pytest
from asyncmy.pool import Pool

from counter_svc.connections import open_redis
from counter_svc.settings import Settings
from tests.helpers import (
    WorkerProcess,
    add_users,
    keys_of,
    mysql_counters,
    redis_counters,
    serving,
    settle,
    worker_settings,
)
from tests.topology import SentinelTopology, sentinel_topology

# Bounded by the load deadline (90 s) plus the topology, on a loaded 2-core machine too.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(240),
    pytest.mark.single_redis(reason="Sentinel mode, on its own topology"),
]

USERS = 500
LANES = 64
PER_LANE = 60  # increments per client in the kill -9 test


@dataclass
class Clients:
    """64 clients incrementing over the users with an Idempotency-Key each, retrying a
    503 or a dropped connection with the same key until it is answered 200."""

    url: str
    ids: list[int]
    acked: dict[int, int] = field(default_factory=dict)
    answered_at: list[float] = field(default_factory=list)  # monotonic time of each 200
    unanswered: int = 0
    retries: int = 0
    mysql_samples: list[dict[int, int]] = field(default_factory=list)

    async def run(
        self, per_lane: int, deadline_s: float = 90, stop: asyncio.Event | None = None
    ) -> None:
        """`per_lane` increments per lane, or fewer once `stop` is set (each one already
        begun is still retried until answered)."""
        deadline = time.monotonic() + deadline_s
        limits = httpx.Limits(max_connections=LANES)
        async with httpx.AsyncClient(base_url=self.url, timeout=5, limits=limits) as http:

            async def lane(n: int) -> None:
                for i in range(per_lane):
                    if stop is not None and stop.is_set():
                        return
                    user_id = self.ids[(n * per_lane + i) % len(self.ids)]
                    if await self._one(http, user_id, deadline):
                        self.acked[user_id] = self.acked.get(user_id, 0) + 1
                    else:
                        self.unanswered += 1

            await asyncio.gather(*(lane(n) for n in range(LANES)))

    async def _one(self, http: httpx.AsyncClient, user_id: int, deadline: float) -> bool:
        headers = {"Idempotency-Key": secrets.token_hex(8)}
        while time.monotonic() < deadline:
            try:
                r = await http.put(f"/api/v1/users/{user_id}/increment", headers=headers)
            except httpx.TransportError:
                r = None
            if r is not None and r.status_code == 200:
                self.answered_at.append(time.monotonic())
                return True
            assert r is None or r.status_code == 503, r.text
            self.retries += 1
            await asyncio.sleep(0.05)
        return False

    def expected(self) -> dict[int, int]:
        return {i: self.acked.get(i, 0) for i in self.ids}


@contextmanager
def sentinel_mode(
    settings: Settings, tmp_path: Path, ack_replicas: int, **topology: object
) -> Iterator[tuple[SentinelTopology, Settings]]:
    with sentinel_topology(tmp_path, **topology) as topo:  # type: ignore[arg-type]
        yield (
            topo,
            replace(
                settings,
                redis_sentinels=tuple(topo.sentinel_addresses),
                redis_sentinel_master=topo.master_name,
                redis_ack_replicas=ack_replicas,
                redis_ack_timeout_ms=200,
                redis_timeout_seconds=0.5,
            ),
        )


@asynccontextmanager
async def api_and_worker(
    own: Settings, tmp_path: Path, **worker: object
) -> AsyncIterator[tuple[str, WorkerProcess]]:
    """The API and a started sync worker, as processes in Sentinel mode."""
    ws = worker_settings(own, interval_seconds=0.2, lease_seconds=5.0)
    ws = replace(ws, **worker)  # type: ignore[arg-type]
    with serving(own, tmp_path / "api.log") as (url, _):
        process = WorkerProcess(ws)
        try:
            await process.await_line('"event":"started"', within=20)
            yield url, process
        finally:
            process.kill()


async def exact_at_the_end(
    own: Settings, mysql: Pool, clients: Clients
) -> tuple[dict[int, int], dict[int, int]]:
    """Wait for the worker to catch up on the current primary; (Redis, MySQL) per user."""
    redis = open_redis(own)
    try:
        await settle(redis, own, within=30)
        in_redis = await redis_counters(redis, own, clients.ids)
    finally:
        await redis.aclose()
    in_mysql = await mysql_counters(mysql)
    return {i: in_redis.get(i, 0) for i in clients.ids}, {i: in_mysql[i] for i in clients.ids}


def recovered_after(kill_at: float, clients: Clients) -> float:
    """The longest time without any increment answered 200, from the kill on: how long
    the failover kept increments from being acknowledged."""
    times = sorted(t for t in clients.answered_at if t >= kill_at)
    assert times, "no increment was answered after the failover"
    return max(b - a for a, b in itertools.pairwise([kill_at, *times]))


async def test_primary_killed_mid_run_with_ack_replicas_loses_nothing(
    settings: Settings, mysql: Pool, tmp_path: Path
) -> None:
    with sentinel_mode(settings, tmp_path, 1, min_replicas_to_write=1) as (topo, own):
        ids = await add_users(mysql, USERS)
        async with api_and_worker(own, tmp_path) as (url, worker):
            clients = Clients(url, ids)
            load = asyncio.create_task(clients.run(per_lane=PER_LANE))
            await asyncio.sleep(1.5)
            old = topo.kill_primary()
            kill_at = time.monotonic()
            failover_s = await asyncio.to_thread(topo.wait_for_failover, old, 20)
            await load
            redis, in_mysql = await exact_at_the_end(own, mysql, clients)
            assert worker.proc.poll() is None, "the worker followed without a restart"
    recovered = recovered_after(kill_at, clients)
    acked = sum(clients.acked.values())
    print(
        f"\n[sentinel, ACK replicas 1, kill -9 primary] failover {failover_s:.2f} s, "
        f"no increment answered for {recovered:.2f} s; acknowledged {acked}, "
        f"retries {clients.retries}, lost 0 (MySQL = Redis = acknowledged)"
    )
    assert clients.unanswered == 0
    assert acked == LANES * PER_LANE
    assert redis == clients.expected()
    assert in_mysql == clients.expected()


@pytest.mark.parametrize("ack_replicas", [1, 0])
async def test_failover_after_a_replication_stall(
    settings: Settings, mysql: Pool, tmp_path: Path, ack_replicas: int
) -> None:
    """Replication stalls for 1 s under load, then the primary dies. With ACK replicas 1
    nothing acknowledged is lost (the stalled writes were answered 503 and retried with
    their keys). With 0 the stalled increments are lost and measured; the drain's repair
    then makes Redis and MySQL agree again, and MySQL never went back."""
    with sentinel_mode(settings, tmp_path, ack_replicas, replication_proxy=True) as (topo, own):
        ids = await add_users(mysql, USERS)
        async with api_and_worker(own, tmp_path) as (url, worker):
            clients = Clients(url, ids)
            stop = asyncio.Event()
            load = asyncio.create_task(clients.run(per_lane=10_000, stop=stop))
            sampler = asyncio.create_task(sample_mysql(mysql, clients, load))
            await asyncio.sleep(1.0)
            topo.stall_replication()
            await asyncio.sleep(1.0)
            # No new increments from here on but the retries of those under way: what
            # Redis lost can then not be hidden by later counts passing MySQL.
            stop.set()
            old = topo.kill_primary()
            kill_at = time.monotonic()
            failover_s = await asyncio.to_thread(topo.wait_for_failover, old, 20)
            await load
            await sampler
            # Every counter is counted once more, so that the drain meets each one
            # whose Redis value fell behind MySQL (without the repair, it would stay
            # behind, and Redis and MySQL would disagree).
            after = Clients(url, ids)
            await after.run(per_lane=(USERS + LANES - 1) // LANES)
            redis, in_mysql = await exact_at_the_end(own, mysql, clients)
            repaired = worker.count('"event":"redis_behind_mysql"')

    expected = {i: clients.acked.get(i, 0) + after.acked.get(i, 0) for i in ids}
    lost = sum(expected.values()) - sum(in_mysql.values())
    recovered = recovered_after(kill_at, clients)
    print(
        f"\n[sentinel, ACK replicas {ack_replicas}, stall 1 s, kill -9 primary] failover "
        f"{failover_s:.2f} s, no increment answered for {recovered:.2f} s; acknowledged "
        f"{sum(expected.values())}, lost {lost}, retries {clients.retries}, "
        f"repair batches {repaired}"
    )
    assert clients.unanswered == 0
    assert redis == in_mysql, "after the drain Redis and MySQL agree"
    assert_never_decreased([*clients.mysql_samples, in_mysql])
    if ack_replicas:
        assert lost == 0
        assert in_mysql == expected
    else:
        assert lost > 0, "the stall should have cost acknowledged increments"
        assert all(in_mysql[i] <= expected[i] for i in ids), "nothing counted twice"


async def sample_mysql(mysql: Pool, clients: Clients, load: asyncio.Task[None]) -> None:
    while not load.done():
        clients.mysql_samples.append(await mysql_counters(mysql))
        await asyncio.sleep(0.2)


def assert_never_decreased(samples: list[dict[int, int]]) -> None:
    for before, after in itertools.pairwise(samples):
        went_back = {i: (v, after.get(i, 0)) for i, v in before.items() if after.get(i, 0) < v}
        assert not went_back, f"MySQL went back: {dict(list(went_back.items())[:5])}"


async def test_worker_killed_mid_batch_during_a_failover_is_exact(
    settings: Settings, mysql: Pool, tmp_path: Path
) -> None:
    """The worker is SIGKILLed holding a claimed batch, the primary is killed too; a new
    worker drains from the promoted replica: MySQL = Redis = acknowledged."""
    with sentinel_mode(settings, tmp_path, 1, min_replicas_to_write=1) as (topo, own):
        ids = await add_users(mysql, USERS)
        ws = worker_settings(own, interval_seconds=0.2, lease_seconds=2.0, batch_size=20)
        with serving(own, tmp_path / "api.log") as (url, _):
            first = WorkerProcess(ws, SYNC_FAULT="after_claim:pause@3")
            try:
                clients = Clients(url, ids)
                load = asyncio.create_task(clients.run(per_lane=50))
                await first.await_line("sync_worker fault: after_claim pause", within=20)
                first.kill()
                old = topo.kill_primary()
                await asyncio.to_thread(topo.wait_for_failover, old, 20)
                await load
            finally:
                first.kill()
            second = WorkerProcess(ws)
            try:
                redis, in_mysql = await exact_at_the_end(own, mysql, clients)
            finally:
                second.kill()
    assert clients.unanswered == 0
    assert redis == clients.expected()
    assert in_mysql == clients.expected()
    assert keys_of(own).buckets == own.buckets
