"""The replicated-Redis helpers themselves (tests/topology.py), against real servers and
the redis-py clients the service would use for them: Sentinel and Cluster."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

from tests.topology import (
    CLUSTER_SLOTS,
    RedisNode,
    parse_cluster_nodes,
    redis_cluster,
    sentinel_topology,
)

PASSWORD = "data-secret"
SENTINEL_PASSWORD = "sentinel-secret"
TIMEOUTS: dict[str, Any] = {"socket_timeout": 0.5, "socket_connect_timeout": 0.5}


def _no_retry() -> Retry:
    return Retry(NoBackoff(), 0)


@dataclass
class Probe:
    """Runs `op` every 20 ms until stopped; keeps each outcome that differs from the one
    before it (ok, or the exception's type and text), with when it started and how long
    the call took."""

    op: Callable[[], Awaitable[object]]
    outcomes: list[tuple[float, float, str]] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    _stop: bool = False

    async def run(self) -> None:
        start = time.monotonic()
        last = None
        while not self._stop:
            t = time.monotonic()
            try:
                await self.op()
                outcome = "ok"
            except RedisError as e:
                self.errors.append(e)
                outcome = f"{type(e).__name__}: {str(e)[:60]}"
            if outcome != last:
                self.outcomes.append((t - start, time.monotonic() - t, outcome))
                last = outcome
            await asyncio.sleep(0.02)

    def stop(self) -> None:
        self._stop = True

    def lines(self) -> str:
        return "\n".join(
            f"  {at:5.2f} s (+{took * 1000:.0f} ms) {o}" for at, took, o in self.outcomes
        )


def _sentinel(addresses: list[tuple[str, int]], passwords: bool = False) -> Sentinel:
    """A Sentinel client; its `master_for` clients get the same short timeouts. Its
    clients of the Sentinels do not retry: by default (redis-py's Redis default, 10
    retries with back-off) a Sentinel that is down delays each lookup by seconds."""
    sentinel_kwargs: dict[str, Any] = {**TIMEOUTS, "retry": _no_retry()}
    kwargs = dict(TIMEOUTS)
    if passwords:
        sentinel_kwargs["password"] = SENTINEL_PASSWORD
        kwargs["password"] = PASSWORD
    return Sentinel(addresses, sentinel_kwargs=sentinel_kwargs, **kwargs)  # type: ignore[no-untyped-call]


async def _eventually(check: Callable[[], Awaitable[bool]], within: float) -> None:
    """Call `check` every 100 ms until it returns true (a RedisError counts as false)."""
    deadline = time.monotonic() + within
    while True:
        with contextlib.suppress(RedisError):
            if await check():
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"not true after {within} s")
        await asyncio.sleep(0.1)


@pytest.mark.slow
async def test_sentinel_topology_replicates_to_every_replica(tmp_path: Path) -> None:
    """With passwords on the data nodes and on the Sentinels: Sentinel clients find the
    primary the helpers name, and a write on it reaches both replicas. With a Sentinel
    down, the others still name the primary."""
    with sentinel_topology(
        tmp_path, password=PASSWORD, sentinel_password=SENTINEL_PASSWORD
    ) as topo:
        assert len(topo.data_nodes) == 3
        assert len(topo.sentinels) == 3
        assert all(n.pid for n in topo.data_nodes + topo.sentinels)
        sentinel = _sentinel(topo.sentinel_addresses, passwords=True)
        primary = sentinel.master_for(topo.master_name, retry=_no_retry())
        try:
            assert await sentinel.discover_master(topo.master_name) == topo.primary()
            assert topo.primary() == topo.data_nodes[0].address
            assert await primary.set("k", "v")
            assert await primary.wait(2, 2000) == 2
            for replica in topo.replicas:
                client = replica.client()
                try:
                    assert client.get("k") == "v"
                    assert client.info("replication")["role"] == "slave"
                finally:
                    client.close()

            # One Sentinel down: the others still name the primary, at once.
            topo.sentinels[0].kill()
            assert topo.primary() == topo.data_nodes[0].address
            fresh = _sentinel(topo.sentinel_addresses, passwords=True)
            try:
                start = time.monotonic()
                assert await fresh.discover_master(topo.master_name) == topo.primary()
                assert time.monotonic() - start < 0.5
            finally:
                await fresh.aclose()
        finally:
            await primary.aclose()
            await sentinel.aclose()


@pytest.mark.slow
async def test_sentinel_promotes_a_replica_after_kill_9_and_clients_follow(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGKILL the primary: the Sentinels promote a replica within the failover timeout,
    a `master_for` client fails fast with ConnectionError meanwhile (MasterNotFoundError
    once the Sentinels see the primary down) and then writes to the new primary, which
    has what was replicated before the kill. Restarted, the old primary first comes back
    as a primary, until the Sentinels turn it into a replica of the new one."""
    with sentinel_topology(tmp_path) as topo:
        sentinel = _sentinel(topo.sentinel_addresses)
        primary = sentinel.master_for(topo.master_name, retry=_no_retry())
        try:
            await primary.set("before", "1")
            assert await primary.wait(2, 2000) == 2
            probe = Probe(lambda: primary.incr("n"))
            task = asyncio.create_task(probe.run())
            await asyncio.sleep(0.2)
            old = topo.kill_primary()
            seconds = await asyncio.to_thread(topo.wait_for_failover, old, 15)
            await asyncio.sleep(0.3)
            probe.stop()
            await task
            new = topo.primary()
            with capsys.disabled():
                print(
                    f"\n[sentinel, kill -9 primary] promoted {new} {seconds:.2f} s after the kill"
                )
                print(f"[sentinel, master_for during the failover]\n{probe.lines()}")
            assert new != old
            assert seconds < 5.0  # failover-timeout
            assert probe.errors
            assert all(isinstance(e, RedisConnectionError) for e in probe.errors)
            assert any(isinstance(e, MasterNotFoundError) for e in probe.errors)
            assert probe.outcomes[-1][2] == "ok"
            assert await primary.get("before") == b"1"
            assert primary.connection_pool.master_address == new

            # The old primary, restarted from its own arguments, is a primary again...
            restarted = topo.node(old)
            topo.restart(restarted)
            assert topo.role(old) == "master"
            # ...until the Sentinels see it and turn it into a replica of the new one.
            as_primary = await asyncio.to_thread(topo.wait_for_replica, restarted, 20)
            with capsys.disabled():
                print(
                    f"[sentinel, old primary restarted] a primary again for {as_primary:.2f} s, "
                    f"then a replica of {new}"
                )
        finally:
            await primary.aclose()
            await sentinel.aclose()


@pytest.mark.slow
async def test_stalled_replication_holds_wait_and_min_replicas_refuses_writes(
    tmp_path: Path,
) -> None:
    """Replication through the proxies: stalled, WAIT 1 100 counts no replica, and once
    the replicas lag past min-replicas-max-lag the primary refuses writes (NOREPLICAS);
    resumed, WAIT counts them again and writes go through."""
    with sentinel_topology(
        tmp_path, replication_proxy=True, min_replicas_to_write=1, min_replicas_max_lag=2
    ) as topo:
        assert len(topo.proxies) == 2
        client = Redis(port=topo.primary()[1], retry=_no_retry(), **TIMEOUTS)
        try:
            await client.set("k", 1)
            assert await client.wait(1, 1000) >= 1
            topo.stall_replication()
            await client.set("k", 2)  # the replicas' last acks are fresh: still accepted
            assert await client.wait(1, 100) == 0
            refused: list[ResponseError] = []

            async def refused_write() -> bool:
                try:
                    await client.set("k", 3)
                except ResponseError as e:
                    refused.append(e)
                    return True
                return False

            await _eventually(refused_write, 6)
            assert str(refused[0]).startswith("NOREPLICAS")
            topo.resume_replication()
            assert await client.wait(2, 2000) == 2
            last = await client.get("k")  # the last write accepted before the refusals
            assert last == b"3"
            for replica in topo.replicas:
                replica_client = replica.client()
                try:
                    assert replica_client.get("k") == "3"
                finally:
                    replica_client.close()

            async def accepted_write() -> bool:
                await client.set("k", 4)
                return True

            await _eventually(accepted_write, 5)
        finally:
            await client.aclose()


def _key_per_slot() -> list[str]:
    keys: dict[int, str] = {}
    i = 0
    while len(keys) < CLUSTER_SLOTS:
        key = f"k{i}"
        keys.setdefault(key_slot(key.encode()), key)
        i += 1
    return [keys[s] for s in range(CLUSTER_SLOTS)]


def _cluster_client(seeds: list[tuple[str, int]], **kwargs: Any) -> RedisCluster:
    return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in seeds], **TIMEOUTS, **kwargs)


@pytest.mark.slow
async def test_cluster_serves_every_slot_and_a_reshard_moves_slots(tmp_path: Path) -> None:
    """Six nodes, three primaries: a key in each of the 16384 slots is written and read
    back; `reshard` moves 100 slots, with their keys, to another primary, and the client
    (its slot map now stale) still reads every key."""
    keys = _key_per_slot()
    with redis_cluster(tmp_path) as cluster:
        primaries = cluster.primaries()
        assert len(primaries) == 3
        assert len(cluster.nodes) == 6
        assert sum(p.slot_count for p in primaries) == CLUSTER_SLOTS
        assert all(len(cluster.replicas_of(p.address)) == 1 for p in primaries)
        client = _cluster_client(cluster.seeds, retry=_no_retry())
        try:
            await client.mset_nonatomic({k: k for k in keys})
            sizes = [_dbsize(cluster.node(p.address)) for p in primaries]
            assert sum(sizes) == CLUSTER_SLOTS
            assert all(s > 5000 for s in sizes)

            source, target = primaries[0], primaries[1]
            cluster.reshard(source.address, target.address, 100)
            after = {p.address: p.slot_count for p in cluster.primaries()}
            assert after[source.address] == source.slot_count - 100
            assert after[target.address] == target.slot_count + 100
            assert await client.mget_nonatomic(keys) == [k.encode() for k in keys]
        finally:
            await client.aclose()


def _dbsize(node: RedisNode) -> int:
    client = node.client()
    try:
        return int(client.dbsize())
    finally:
        client.close()


@pytest.mark.slow
async def test_cluster_promotes_the_replica_of_a_killed_primary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With a password: SIGKILL a primary, its replica takes its slots; a client without
    retries fails fast meanwhile and then writes to the promoted replica; one with
    redis-py's default retries fails too (its retries do not wait for the failover)."""
    with redis_cluster(tmp_path, password=PASSWORD) as cluster:
        victim = cluster.primaries()[0]
        (heir,) = cluster.replicas_of(victim.address)
        start = victim.slots[0][0]
        key = _key_per_slot()[start]
        no_retry = _cluster_client(cluster.seeds, password=PASSWORD, retry=_no_retry())
        default = _cluster_client(cluster.seeds, password=PASSWORD)
        try:
            await no_retry.set(key, 0)
            probes = [Probe(lambda: no_retry.incr(key)), Probe(lambda: default.incr(key))]
            tasks = [asyncio.create_task(p.run()) for p in probes]
            await asyncio.sleep(0.2)
            old = cluster.kill(victim.address)
            seconds = await asyncio.to_thread(cluster.wait_for_failover, old, 15)
            await asyncio.sleep(0.3)
            for p in probes:
                p.stop()
            await asyncio.gather(*tasks)
            with capsys.disabled():
                print(
                    f"\n[cluster, kill -9 primary] replica promoted {seconds:.2f} s after the kill"
                )
                print(f"[cluster, retry=0 client during the failover]\n{probes[0].lines()}")
                print(f"[cluster, default-retry client during the failover]\n{probes[1].lines()}")
            promoted = {p.address: p for p in cluster.primaries()}
            assert old not in promoted
            assert promoted[heir.address].slots == victim.slots
            assert seconds < 10
            for p in probes:
                assert p.errors
                assert p.outcomes[-1][2] == "ok"
                assert all(isinstance(e, RedisConnectionError) for e in p.errors)
            assert int(await no_retry.get(key) or 0) > 0
        finally:
            await no_retry.aclose()
            await default.aclose()


def test_cluster_nodes_lines_are_parsed() -> None:
    """CLUSTER NODES: flags, a replica's primary, slot ranges; migrating slots skipped."""
    text = (
        "a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460 5462 [5463->-b2]\n"
        "b2 127.0.0.1:7001@17001,host master,fail - 0 0 2 disconnected 5461\n"
        "c3 127.0.0.1:7002@17002 slave a1 0 0 1 connected\n"
    )
    a, b, c = parse_cluster_nodes(text)
    assert (a.id, a.address, a.primary, a.failed) == ("a1", ("127.0.0.1", 7000), True, False)
    assert a.slots == ((0, 5460), (5462, 5462))
    assert a.slot_count == 5462
    assert b.failed
    assert b.slots == ((5461, 5461),)
    assert (c.primary, c.primary_id, c.slots) == (False, "a1", ())
