"""Cluster mode against a real Redis Cluster: three primaries with a replica each on
private ports (tests/topology.py); the API and two sync workers as real processes,
never restarted.

- Exactness: 64 clients over 1,000 users (every bucket), with and without
  Idempotency-Keys, while two workers drain: MySQL = Redis = acknowledged.
- Resharding under load: slots that hold buckets move between primaries while
  increments flow and the workers drain: exact at the end.
- A slot caught half moved (counters on the target, the dirty set on the source): the
  drain's claim is redirected, never run where the counters look missing; no dirty id
  is dropped, and after the move every value reaches MySQL.
- Failover with REDIS_ACK_REPLICAS 0: a primary is killed with SIGKILL mid-run; its
  replica takes over and the API and workers follow without a restart. What the
  failover lost is measured; after the repair drain Redis and MySQL agree and MySQL
  never went back.
- Failover with REDIS_ACK_REPLICAS 1: the same kill loses nothing acknowledged:
  MySQL = Redis = acknowledged, exactly.
- WAIT goes to the node that ran the writes: with one primary's replica stopped, the
  increments of that primary's buckets answer 503 not_replicated, the others 200.
- Per primary: the worker's backlog gauges by shard and the API's memory per primary.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from asyncmy.pool import Pool
from prometheus_client import generate_latest
from redis.exceptions import RedisError

from counter_svc.connections import RedisClient, open_redis
from counter_svc.counters import Outcome
from counter_svc.settings import Settings
from sync_worker.buckets import Buckets
from sync_worker.drain import Drainer
from tests.faults import wait_until
from tests.helpers import (
    WorkerProcess,
    add_users,
    counters_of,
    keys_of,
    mysql_counters,
    running_app,
    serving,
    settle,
    worker_settings,
)
from tests.redis.test_sentinel import (
    LANES,
    Clients,
    assert_never_decreased,
    recovered_after,
    sample_mysql,
)
from tests.topology import Address, RedisClusterTopology, _call, redis_cluster

pytestmark = pytest.mark.slow

USERS = 1000


@contextmanager
def cluster_mode(
    settings: Settings, tmp_path: Path, ack_replicas: int = 0
) -> Iterator[tuple[RedisClusterTopology, Settings]]:
    with redis_cluster(tmp_path) as topo:
        yield (
            topo,
            replace(
                settings,
                redis_cluster_nodes=tuple(topo.seeds),
                redis_timeout_seconds=0.5,
                redis_ack_replicas=ack_replicas,
                redis_ack_timeout_ms=200,
            ),
        )


def buckets_per_primary(topo: RedisClusterTopology, own: Settings) -> dict[Address, int]:
    """How many buckets each primary serves: the slot of each bucket's hash tag (asked
    with CLUSTER KEYSLOT) against the slot ranges of CLUSTER NODES."""
    owners = Counter(slot_owners(topo, own).values())
    return {p.address: owners[p.address] for p in topo.primaries()}


async def redis_values(redis: RedisClient, own: Settings, ids: list[int]) -> dict[int, int]:
    """Each user's counter in Redis (0 when absent): GETs pipelined, split by node."""
    k = keys_of(own)
    pipe = redis.pipeline(transaction=False)
    for i in ids:
        pipe.get(k.counter(i))
    values = await pipe.execute()
    return {i: int(v) if v is not None else 0 for i, v in zip(ids, values, strict=True)}


async def drained(
    own: Settings, mysql: Pool, ids: list[int]
) -> tuple[dict[int, int], dict[int, int]]:
    """Wait until the workers caught up; (Redis, MySQL) per user."""
    redis = open_redis(own)
    try:
        await settle(redis, own, within=30)
        # The worker's backlog, one pipeline split by node, agrees: nothing left.
        backlog = await Buckets(redis, keys_of(own), "probe").backlog()
        assert (backlog.dirty, backlog.inflight) == (0, 0), backlog
        in_redis = await redis_values(redis, own, ids)
    finally:
        await redis.aclose()
    in_mysql = await mysql_counters(mysql)
    return in_redis, {i: in_mysql[i] for i in ids}


async def without_keys(url: str, ids: list[int], per_lane: int) -> dict[int, int]:
    """64 clients incrementing without Idempotency-Keys; each answer must be 200 (a
    retry without a key could count twice)."""
    acked: dict[int, int] = {}
    async with httpx.AsyncClient(
        base_url=url, timeout=5, limits=httpx.Limits(max_connections=LANES)
    ) as http:

        async def lane(n: int) -> None:
            for i in range(per_lane):
                user_id = ids[(n * per_lane + i) % len(ids)]
                r = await http.put(f"/api/v1/users/{user_id}/increment")
                assert r.status_code == 200, r.text
                acked[user_id] = acked.get(user_id, 0) + 1

        await asyncio.gather(*(lane(n) for n in range(LANES)))
    return {i: acked.get(i, 0) for i in ids}


@asynccontextmanager
async def two_workers(own: Settings) -> AsyncIterator[list[WorkerProcess]]:
    """Two sync worker processes, started and ready; killed on exit."""
    ws = worker_settings(own, interval_seconds=0.2, lease_seconds=5.0)
    workers = [WorkerProcess(replace(ws, worker_id=f"w{n}")) for n in (1, 2)]
    try:
        for w in workers:
            await w.await_line('"event":"started"', within=20)
        yield workers
    finally:
        for w in workers:
            w.kill()


@pytest.mark.parametrize("idempotency_keys", [True, False])
async def test_exact_under_load_with_two_workers(
    settings: Settings, mysql: Pool, tmp_path: Path, idempotency_keys: bool
) -> None:
    with cluster_mode(settings, tmp_path) as (topo, own):
        spread = buckets_per_primary(topo, own)
        ids = await add_users(mysql, USERS)
        per_lane = 60  # 64 x 60 = 3,840 increments: every user about 4 times
        with serving(own, tmp_path / "api.log") as (url, _):
            async with two_workers(own) as workers:
                started = time.monotonic()
                if idempotency_keys:
                    clients = Clients(url, ids)
                    await clients.run(per_lane=per_lane, deadline_s=180)
                    assert clients.unanswered == 0
                    expected = clients.expected()
                else:
                    expected = await without_keys(url, ids, per_lane)
                elapsed = time.monotonic() - started
                in_redis, in_mysql = await drained(own, mysql, ids)
                assert all(w.proc.poll() is None for w in workers)
    acked = sum(expected.values())
    print(
        f"\n[cluster 3x2, {'with' if idempotency_keys else 'without'} Idempotency-Keys, "
        f"2 workers] {acked} increments in {elapsed:.2f} s ({acked / elapsed:.0f}/s); "
        f"buckets per primary {sorted(spread.values())}; MySQL = Redis = acknowledged"
    )
    assert acked == LANES * per_lane
    assert in_redis == expected
    assert in_mysql == expected
    assert len(spread) == 3
    assert all(n > 0 for n in spread.values()), spread
    assert sum(spread.values()) == own.buckets


async def test_resharding_under_load_is_exact(
    settings: Settings, mysql: Pool, tmp_path: Path
) -> None:
    """2,000 slots (holding about a third of one primary's buckets) move to another
    primary while increments flow and two workers drain: exact at the end."""
    with cluster_mode(settings, tmp_path) as (topo, own):
        before = buckets_per_primary(topo, own)
        source, target = sorted(before, key=lambda a: before[a])[-1], min(before)
        if target == source:
            target = max(before)
        ids = await add_users(mysql, USERS)
        with serving(own, tmp_path / "api.log") as (url, _):
            async with two_workers(own) as workers:
                clients = Clients(url, ids)
                load = asyncio.create_task(clients.run(per_lane=60, deadline_s=180))
                await asyncio.sleep(1.0)
                started = time.monotonic()
                await asyncio.to_thread(topo.reshard, source, target, 2000, 120)
                resharded_s = time.monotonic() - started
                after = buckets_per_primary(topo, own)
                await load
                in_redis, in_mysql = await drained(own, mysql, ids)
                assert all(w.proc.poll() is None for w in workers)
    moved = before[source] - after[source]
    print(
        f"\n[cluster 3x2, reshard 2000 slots under load] {moved} buckets moved in "
        f"{resharded_s:.2f} s; buckets per primary {sorted(before.values())} -> "
        f"{sorted(after.values())}; acknowledged {sum(clients.acked.values())}, retries "
        f"{clients.retries}; MySQL = Redis = acknowledged"
    )
    assert moved > 0, (before, after)
    assert clients.unanswered == 0
    assert in_redis == clients.expected()
    assert in_mysql == clients.expected()


async def test_a_drain_while_its_slot_moves_drops_no_dirty_id(
    settings: Settings, mysql: Pool, tmp_path: Path
) -> None:
    """A bucket's slot caught half moved: its counters already on the target primary,
    its dirty set still on the source. The claim names every key, so the cluster
    redirects it (ASK, then TRYAGAIN while the keys are split) instead of running it on
    a node that would see the counters as missing; no dirty id is dropped, and once the
    slot has moved the next drain writes every value to MySQL."""
    with cluster_mode(settings, tmp_path) as (topo, own):
        k = keys_of(own)
        bucket = 0
        source = slot_owners(topo, own)[bucket]
        target = next(p.address for p in topo.primaries() if p.address != source)
        ids = [i for i in await add_users(mysql, own.buckets * 4) if k.bucket(i) == bucket]
        async with running_app(own) as client:
            for i in ids:
                assert (await client.put(f"/api/v1/users/{i}/increment")).status_code == 200
        pw = topo.password
        slot = int(_call(source, pw, "CLUSTER KEYSLOT", k.tag(bucket)))
        node_ids = {n.address: n.id for n in topo.cluster_nodes()}
        _call(target, pw, "CLUSTER", "SETSLOT", slot, "IMPORTING", node_ids[source])
        _call(source, pw, "CLUSTER", "SETSLOT", slot, "MIGRATING", node_ids[target])
        counter_keys = [k.counter(i) for i in ids]
        _call(source, pw, "MIGRATE", *target, "", 0, 5000, "KEYS", *counter_keys)
        redis = open_redis(own)
        try:
            drain = Drainer(redis, mysql, k, batch_size=100, lease_seconds=5)
            mid_migration_errors = await drain.drain_all(concurrency=4)
            still_dirty = int(_call(source, pw, "ZCARD", k.dirty(bucket)))
            written_mid_migration = await mysql_counters(mysql)
            # The rest of the slot's keys, then the slot itself, as `redis-cli --cluster
            # reshard` finishes a slot.
            rest = _call(source, pw, "CLUSTER", "GETKEYSINSLOT", slot, 1000)
            _call(source, pw, "MIGRATE", *target, "", 0, 5000, "KEYS", *rest)
            for p in topo.primaries():
                _call(p.address, pw, "CLUSTER", "SETSLOT", slot, "NODE", node_ids[target])
            await asyncio.to_thread(topo.wait_ok)
            for _ in range(20):
                errors = await drain.drain_all(concurrency=4)
                if not errors and not await drain.buckets.busy():
                    break
                await asyncio.sleep(0.2)
        finally:
            await redis.aclose()
        in_mysql = await mysql_counters(mysql)
    refusals = [f"{type(e).__name__}: {e}"[:90] for e in mid_migration_errors]
    print(
        f"\n[cluster 3x2, slot {slot} half moved] {len(ids)} dirty ids of bucket {bucket}; "
        f"the drain mid-migration: {refusals}; "
        f"dirty kept on the source {still_dirty}; MySQL after the move "
        f"{sum(in_mysql[i] for i in ids)}"
    )
    assert len(ids) >= 2
    assert still_dirty == len(ids)
    assert all(written_mid_migration[i] == 0 for i in ids)
    assert {i: in_mysql[i] for i in ids} == {i: 1 for i in ids}


async def test_primary_killed_mid_run_is_followed_without_restart(
    settings: Settings, mysql: Pool, tmp_path: Path
) -> None:
    """kill -9 of a primary under load: its replica takes over, the API and the workers
    follow it without a restart, clients retry 503s with their Idempotency-Keys. With
    ACK replicas 0 the failover may lose acknowledged increments the replica had not
    received: measured; after the repair drain Redis = MySQL, MySQL never went back,
    and nothing counted twice."""
    with cluster_mode(settings, tmp_path) as (topo, own):
        ids = await add_users(mysql, USERS)
        with serving(own, tmp_path / "api.log") as (url, _):
            async with two_workers(own) as workers:
                clients = Clients(url, ids)
                load = asyncio.create_task(clients.run(per_lane=60, deadline_s=180))
                sampler = asyncio.create_task(sample_mysql(mysql, clients, load))
                await asyncio.sleep(1.5)
                old = topo.kill(topo.primaries()[0].address)
                kill_at = time.monotonic()
                failover_s = await asyncio.to_thread(topo.wait_for_failover, old, 30)
                await load
                await sampler
                # Each counter once more, so the drain meets every counter whose Redis
                # value fell behind MySQL and repairs it.
                again = Clients(url, ids)
                await again.run(per_lane=(USERS + LANES - 1) // LANES, deadline_s=120)
                in_redis, in_mysql = await drained(own, mysql, ids)
                spread = buckets_per_primary(topo, own)
                assert all(w.proc.poll() is None for w in workers), "followed without restart"
    expected = {i: clients.acked.get(i, 0) + again.acked.get(i, 0) for i in ids}
    lost = sum(expected.values()) - sum(in_mysql.values())
    print(
        f"\n[cluster 3x2, ACK replicas 0, kill -9 primary] failover {failover_s:.2f} s, no "
        f"increment answered for {recovered_after(kill_at, clients):.2f} s; acknowledged "
        f"{sum(expected.values())}, lost {lost}, retries {clients.retries}; buckets per "
        f"primary after {sorted(spread.values())}"
    )
    assert clients.unanswered == 0
    assert again.unanswered == 0
    assert in_redis == in_mysql, "after the drain Redis and MySQL agree"
    assert_never_decreased([*clients.mysql_samples, in_mysql])
    assert all(in_mysql[i] <= expected[i] for i in ids), "nothing counted twice"
    assert lost >= 0


async def test_primary_killed_mid_run_with_ack_replicas_loses_nothing(
    settings: Settings, mysql: Pool, tmp_path: Path
) -> None:
    """REDIS_ACK_REPLICAS=1: kill -9 of a primary under load. Its replica takes over; the
    killed node is started again and rejoins as the new primary's replica (until then
    WAIT 1 on that shard confirms nothing: its increments answer 503 and are retried
    with their Idempotency-Keys). The API and the workers are never restarted. Every
    200 was on a replica before it was sent, so nothing acknowledged is lost:
    MySQL = Redis = acknowledged, exactly."""
    with cluster_mode(settings, tmp_path, ack_replicas=1) as (topo, own):
        ids = await add_users(mysql, USERS)
        with serving(own, tmp_path / "api.log") as (url, _):
            async with two_workers(own) as workers:
                clients = Clients(url, ids)
                load = asyncio.create_task(clients.run(per_lane=60, deadline_s=180))
                sampler = asyncio.create_task(sample_mysql(mysql, clients, load))
                await asyncio.sleep(1.5)
                old = topo.kill(topo.primaries()[0].address)
                kill_at = time.monotonic()
                failover_s = await asyncio.to_thread(topo.wait_for_failover, old, 30)
                await asyncio.to_thread(topo.restart, topo.node(old))
                await asyncio.to_thread(topo.wait_ok, 30)
                rejoined_s = time.monotonic() - kill_at
                await load
                await sampler
                in_redis, in_mysql = await drained(own, mysql, ids)
                spread = buckets_per_primary(topo, own)
                assert all(w.proc.poll() is None for w in workers), "followed without restart"
    expected = clients.expected()
    print(
        f"\n[cluster 3x2, ACK replicas 1, kill -9 primary] failover {failover_s:.2f} s, "
        f"old primary back as a replica after {rejoined_s:.2f} s, no increment answered "
        f"for {recovered_after(kill_at, clients):.2f} s; acknowledged "
        f"{sum(expected.values())}, lost 0, retries {clients.retries}; buckets per primary "
        f"after {sorted(spread.values())}; MySQL = Redis = acknowledged"
    )
    assert clients.unanswered == 0
    assert sum(expected.values()) == LANES * 60
    assert in_redis == expected
    assert in_mysql == expected
    assert_never_decreased([*clients.mysql_samples, in_mysql])


async def test_wait_goes_to_the_node_that_ran_the_writes(
    settings: Settings, mysql: Pool, tmp_path: Path
) -> None:
    """REDIS_ACK_REPLICAS=1 and one primary's replica stopped: one tick of increments
    over every bucket. Those on that primary answer 503 not_replicated (its WAIT sees no
    replica), all others 200 (their primaries' WAITs are confirmed): each node's WAIT
    was sent to that node, on the connection of its writes. Reads on the primary without
    a replica still answer."""
    with cluster_mode(settings, tmp_path, ack_replicas=1) as (topo, own):
        k = keys_of(own)
        owners = slot_owners(topo, own)
        victim = topo.primaries()[0].address
        # CLUSTER NODES of the node asked may not list the replica as such at once.
        wait_until(lambda: len(topo.replicas_of(victim)) == 1, 10, "the victim's replica")
        (replica,) = topo.replicas_of(victim)
        ids = await add_users(mysql, own.buckets * 4)
        async with running_app(own) as client:
            # Every counter in Redis first, each increment confirmed by a replica.
            first = await asyncio.gather(*(client.put(f"/api/v1/users/{i}/increment") for i in ids))
            assert all(r.status_code == 200 for r in first), [r.text for r in first]
            topo.kill(replica.address)
            answers = await asyncio.gather(
                *(client.put(f"/api/v1/users/{i}/increment") for i in ids)
            )
            on_victim = [i for i in ids if owners[k.bucket(i)] == victim]
            reads = await asyncio.gather(
                *(client.get(f"/api/v1/users/{i}/count") for i in on_victim)
            )
    refused = {i for i, r in zip(ids, answers, strict=True) if r.status_code == 503}
    print(
        f"\n[cluster 3x2, ACK replicas 1, one replica stopped] {len(ids)} increments in "
        f"one tick: {len(refused)} answered 503 not_replicated, all of the "
        f"{len(on_victim)} on the primary without a replica; {len(ids) - len(refused)} "
        f"answered 200"
    )
    assert refused == set(on_victim)
    assert 0 < len(on_victim) < len(ids)
    for i, r in zip(ids, answers, strict=True):
        if i in refused:
            assert r.json()["error"] == "not_replicated", r.text
        else:
            assert r.status_code == 200, r.text
    assert all(r.status_code == 200 for r in reads)
    assert all(r.json()["data"]["counter"] == 2 for r in reads), "ran, not acknowledged"


async def test_a_node_without_functions_or_down_fails_only_its_calls(
    settings: Settings, tmp_path: Path
) -> None:
    """One tick's calls over every bucket: a primary whose functions were flushed gets
    the library again and its calls run; a primary that was just killed fails its own
    calls only, and the other shards answer in the same batch."""
    with cluster_mode(settings, tmp_path) as (topo, own):
        redis = open_redis(own)
        try:
            counters = counters_of(redis, own)
            buckets = Buckets(redis, keys_of(own), "probe")
            await counters.load()
            await buckets.load()
            victim = topo.primaries()[0].address
            _call(victim, topo.password, "FUNCTION", "FLUSH")
            users = range(1, own.buckets + 1)  # one per bucket
            results = await asyncio.gather(*(counters.increment(i, seed=0) for i in users))
            assert all(outcome is Outcome.OK for outcome, _ in results), results
            leases = await asyncio.gather(
                *(buckets.take_lease(b, 5000) for b in range(own.buckets))
            )
            assert all(leases)
            on_victim = {b for b, n in slot_owners(topo, own).items() if n == victim}
            topo.kill(victim)
            answers = await asyncio.gather(
                *(counters.increment(i, seed=0) for i in users), return_exceptions=True
            )
        finally:
            await redis.aclose()
    errors = [a for a in answers if isinstance(a, BaseException)]
    failed = {i % own.buckets for i, a in zip(users, answers, strict=True) if a in errors}
    print(
        f"\n[cluster 3x2, one tick over 64 buckets, a primary killed] {len(failed)} calls "
        f"failed, all of the {len(on_victim)} buckets of the killed primary"
    )
    assert failed == on_victim
    assert all(isinstance(e, RedisError) for e in errors), errors


async def test_per_primary_backlog_and_memory(
    settings: Settings, mysql: Pool, tmp_path: Path
) -> None:
    """The worker's backlog split by primary (the `shard` gauges) adds up to the total and
    follows the buckets each primary serves; the API's /metrics has the memory of each
    primary."""
    with cluster_mode(settings, tmp_path) as (topo, own):
        k = keys_of(own)
        owners = slot_owners(topo, own)
        ids = await add_users(mysql, own.buckets * 2)
        async with running_app(own) as client:
            answers = await asyncio.gather(
                *(client.put(f"/api/v1/users/{i}/increment") for i in ids)
            )
            assert all(r.status_code == 200 for r in answers)
            metrics = (await client.get("/metrics")).text
        redis = open_redis(own)
        try:
            drain = Drainer(redis, mysql, k)
            backlog = await drain.buckets.backlog()
            await drain.observe()  # what the worker exports
        finally:
            await redis.aclose()
    exported = generate_latest(drain.metrics.registry).decode()
    names = {f"{h}:{p}" for h, p in set(owners.values())}
    dirty = Counter(f"{h}:{p}" for h, p in (owners[k.bucket(i)] for i in ids))
    memory = [
        line
        for line in metrics.splitlines()
        if line.startswith("usercounter_redis_node_memory_used_bytes{")
    ]
    print(
        f"\n[cluster 3x2, per primary] dirty backlog by shard "
        f"{sorted((s, b.dirty) for s, b in backlog.shards.items())}; memory gauges {memory}"
    )
    assert set(backlog.shards) == names
    assert {s: b.dirty for s, b in backlog.shards.items()} == dirty
    assert sum(b.dirty for b in backlog.shards.values()) == backlog.dirty == len(ids)
    assert max(b.lag_seconds for b in backlog.shards.values()) == backlog.lag_seconds
    for shard, part in backlog.shards.items():
        assert f'sync_shard_dirty_backlog{{shard="{shard}"}} {float(part.dirty)}' in exported
        assert f'sync_shard_inflight{{shard="{shard}"}} 0.0' in exported
        assert f'sync_shard_lag_seconds{{shard="{shard}"}}' in exported
    assert {line.split('node="')[1].split('"')[0] for line in memory} == names
    assert all(float(line.rsplit(" ", 1)[1]) > 0 for line in memory)


def slot_owners(topo: RedisClusterTopology, own: Settings) -> dict[int, Address]:
    """The primary serving each bucket."""
    k = keys_of(own)
    primaries = topo.primaries()
    asked = primaries[0].address
    owners = {}
    for b in range(k.buckets):
        slot = int(_call(asked, topo.password, "CLUSTER KEYSLOT", k.tag(b)))
        (node,) = [p for p in primaries if any(a <= slot <= e for a, e in p.slots)]
        owners[b] = node.address
    return owners
