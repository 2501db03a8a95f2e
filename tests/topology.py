"""Replicated Redis for tests: a Sentinel-managed primary with replicas, and a Cluster.

`sentinel_topology` starts one primary, two replicas and three Sentinels; `redis_cluster`
starts six cluster nodes (three primaries, each with a replica). Both are private
`redis-server` processes on free ports of 127.0.0.1, in a directory of the test, stopped
on exit; they build on `tests/faults.py` (`PrivateRedis`, `FaultProxy`, `wait_until`).
A test may SIGKILL a primary and wait for the failover, stall the replication links of a
Sentinel topology through a `FaultProxy`, or move slots between cluster primaries. Every
wait is bounded in time. The helpers are synchronous; from an async test, run the long
waits in `asyncio.to_thread` so that the test's own clients keep running meanwhile.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis as sync_redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.faults import LOCALHOST, FaultProxy, PrivateRedis, free_port, wait_until

Address = tuple[str, int]
CLUSTER_SLOTS = 16384


def _client(address: Address, password: str | None, timeout: float = 1.0) -> sync_redis.Redis:
    """A short-lived client that fails at once: no retries, short timeouts."""
    return sync_redis.Redis(
        host=address[0],
        port=address[1],
        password=password,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        decode_responses=True,
    )


def _call(address: Address, password: str | None, *args: Any, raw: bool = False) -> Any:
    """One command on a fresh connection; with `raw`, the reply as the server sent it
    (redis-py parses some, e.g. CLUSTER NODES, into its own shapes)."""
    client = _client(address, password)
    if raw:
        client.response_callbacks.clear()
    try:
        return client.execute_command(*args)  # type: ignore[no-untyped-call]
    finally:
        client.close()


def _info(address: Address, password: str | None, section: str) -> dict[str, Any]:
    client = _client(address, password)
    try:
        return dict(client.info(section))
    finally:
        client.close()


def _log_tail(path: Path, lines: int = 15) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return "(no log)"


class RedisNode(PrivateRedis):
    """A `redis-server` of a topology: a `PrivateRedis` whose readiness probe and
    `client()` log in with `password` when one is set."""

    def __init__(
        self,
        directory: Path,
        appendonly: bool,
        extra: tuple[str, ...] = (),
        password: str | None = None,
        name: str = "redis",
    ) -> None:
        super().__init__(directory, appendonly, extra)
        self.password = password
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name} {LOCALHOST}:{self.port} pid={self.pid}>"

    @property
    def address(self) -> Address:
        return (LOCALHOST, self.port)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def log(self) -> Path:
        return self.dir / "redis.log"

    def client(self, timeout: float = 1.0) -> sync_redis.Redis:
        """A sync client of this node (decoded answers, no retries); close it."""
        return _client(self.address, self.password, timeout)

    def start(self, timeout: float = 10) -> None:
        try:
            super().start(timeout)
        except TimeoutError as e:
            raise TimeoutError(f"{e}; {self.name} log:\n{_log_tail(self.log)}") from None

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}")
        # -LOADING while the AOF loads raises here; only a PONG means ready.
        return bool(_call(self.address, self.password, "PING"))


class SentinelNode(RedisNode):
    """A `redis-server --sentinel` with its own config file, which Sentinel rewrites
    as it learns the topology (so a restart keeps what it knew)."""

    def __init__(
        self, directory: Path, config: str, password: str | None, name: str = "sentinel"
    ) -> None:
        super().__init__(directory, appendonly=False, password=password, name=name)
        self.config = self.dir / "sentinel.conf"
        self.config.write_text(f"port {self.port}\n{config}logfile {self.log}\ndir {self.dir}\n")

    def args(self) -> list[str]:
        binary = shutil.which("redis-server") or "redis-server"
        return [binary, str(self.config), "--sentinel"]


def _data_args(
    password: str | None, min_replicas_to_write: int, min_replicas_max_lag: int
) -> tuple[str, ...]:
    # A full sync starts at once instead of waiting 5 s for more replicas to join it.
    args: tuple[str, ...] = ("--repl-diskless-sync-delay", "0")
    if password:
        args += ("--requirepass", password, "--masterauth", password)
    if min_replicas_to_write:
        args += (
            "--min-replicas-to-write",
            str(min_replicas_to_write),
            "--min-replicas-max-lag",
            str(min_replicas_max_lag),
        )
    return args


@dataclass
class SentinelTopology:
    """A primary, its replicas and the Sentinels that watch them (see `sentinel_topology`).

    `data_nodes` lists the primary it started with first; after a failover another node
    is the primary: ask `primary()`.
    """

    master_name: str
    data_nodes: list[RedisNode]
    sentinels: list[SentinelNode]
    # One per replica, in the order of `data_nodes[1:]`, when started with replication_proxy.
    proxies: list[FaultProxy]
    password: str | None
    sentinel_password: str | None
    _killed_at: dict[Address, float] = field(default_factory=dict)

    @property
    def sentinel_addresses(self) -> list[Address]:
        return [s.address for s in self.sentinels]

    @property
    def replicas(self) -> list[RedisNode]:
        """The running data nodes other than the current primary (asks the Sentinels)."""
        primary = self.primary()
        return [n for n in self.data_nodes if n.alive and n.address != primary]

    def node(self, address: Address) -> RedisNode:
        """The data node listening on `address`."""
        for n in self.data_nodes:
            if n.address == address:
                return n
        raise KeyError(f"no data node at {address}")

    def primary(self) -> Address:
        """The primary's address as the first Sentinel that answers reports it
        (SENTINEL GET-MASTER-ADDR-BY-NAME)."""
        errors = []
        for s in self.sentinels:
            if not s.alive:
                continue
            try:
                return self._ask(s)
            except sync_redis.RedisError as e:
                errors.append(f"{s.address}: {e!r}")
        raise RuntimeError(f"no Sentinel answers: {errors}")

    def _ask(self, sentinel: SentinelNode) -> Address:
        host, port = _call(
            sentinel.address,
            self.sentinel_password,
            "SENTINEL",
            "GET-MASTER-ADDR-BY-NAME",
            self.master_name,
            raw=True,
        )
        return (str(host), int(port))

    def role(self, address: Address) -> str:
        """`role` of INFO replication of the data node at `address`: master or slave."""
        return str(_info(address, self.password, "replication")["role"])

    def kill_primary(self) -> Address:
        """SIGKILL the current primary; returns its address (for `wait_for_failover`)."""
        address = self.primary()
        self.node(address).kill()
        self._killed_at[address] = time.monotonic()
        return address

    def wait_for_failover(self, old: Address, timeout: float = 15) -> float:
        """Wait until every running Sentinel names one primary other than `old` and that
        node says role:master. Returns the seconds since `kill_primary` killed `old` (or,
        when it did not, since this call)."""
        start = self._killed_at.get(old, time.monotonic())

        def promoted() -> bool:
            named = {self._ask(s) for s in self.sentinels if s.alive}
            if len(named) != 1:
                return False
            (new,) = named
            return new != old and self.role(new) == "master"

        wait_until(promoted, timeout, f"failover of {self.master_name} away from {old}")
        return time.monotonic() - start

    def wait_for_replica(self, node: RedisNode, timeout: float = 20) -> float:
        """Wait until `node` replicates from the current primary with its link up; returns
        the seconds it took."""
        start = time.monotonic()

        def replica() -> bool:
            info = _info(node.address, self.password, "replication")
            return bool(
                info["role"] == "slave"
                and (info["master_host"], int(info["master_port"])) == self.primary()
                and info["master_link_status"] == "up"
            )

        wait_until(replica, timeout, f"{node.name} a replica of the primary", step=0.1)
        return time.monotonic() - start

    def wait_replicated(self, replicas: int, timeout: float = 10) -> None:
        """Wait until the current primary has `replicas` replicas online (INFO replication)."""

        def online() -> bool:
            info = _info(self.primary(), self.password, "replication")
            up = [
                v
                for k, v in info.items()
                if k.startswith("slave") and isinstance(v, dict) and v.get("state") == "online"
            ]
            return len(up) >= replicas

        wait_until(online, timeout, f"{replicas} replicas online")

    def wait_watched(self, timeout: float = 15) -> None:
        """Wait until every Sentinel knows the primary, every replica and the other
        Sentinels: only then can they agree on a failover."""
        replicas = len(self.data_nodes) - 1
        others = len(self.sentinels) - 1

        def watched() -> bool:
            for s in self.sentinels:
                state = _call(
                    s.address,
                    self.sentinel_password,
                    "SENTINEL",
                    "MASTER",
                    self.master_name,
                    raw=True,
                )
                # A map under RESP3 (redis-py 8's default), a flat list under RESP2.
                fields = (
                    state if isinstance(state, dict) else dict(zip(*[iter(state)] * 2, strict=True))
                )
                if fields["flags"] != "master":
                    return False
                if int(fields["num-slaves"]) < replicas:
                    return False
                if int(fields["num-other-sentinels"]) < others:
                    return False
            return True

        wait_until(watched, timeout, "Sentinels watching every node", step=0.1)

    def _proxies_of(self, replica: RedisNode | None) -> list[FaultProxy]:
        if not self.proxies:
            raise RuntimeError("started without replication_proxy: no link to stall")
        if replica is None:
            return self.proxies
        return [self.proxies[self.data_nodes.index(replica) - 1]]

    def stall_replication(self, replica: RedisNode | None = None) -> None:
        """Hold every byte between the first primary and its replicas (or `replica`
        only) in the proxies; the links stay open. Only the links the topology started
        with go through a proxy: a replica re-pointed by a failover replicates directly."""
        for p in self._proxies_of(replica):
            p.pause()

    def resume_replication(self, replica: RedisNode | None = None) -> None:
        """Let what `stall_replication` held through."""
        for p in self._proxies_of(replica):
            p.resume()

    def restart(self, node: RedisNode, timeout: float = 10) -> None:
        """SIGKILL `node` if it runs, and start it again from its files with its first
        arguments: a killed primary comes back as a primary, until the Sentinels turn it
        into a replica of the new one (about 10 s later here; `wait_for_replica`)."""
        node.restart(timeout)


@contextlib.contextmanager
def sentinel_topology(
    tmp_path: Path,
    *,
    master_name: str = "counters",
    replicas: int = 2,
    sentinels: int = 3,
    quorum: int = 2,
    appendonly: bool = False,
    password: str | None = None,
    sentinel_password: str | None = None,
    min_replicas_to_write: int = 0,
    min_replicas_max_lag: int = 10,
    replication_proxy: bool = False,
    down_after_ms: int = 1000,
    failover_timeout_ms: int | None = None,
    timeout: float = 20,
) -> Iterator[SentinelTopology]:
    """A primary, `replicas` replicas and `sentinels` Sentinels (quorum `quorum`), all
    running and watching each other before the body starts; stopped on exit.

    `password` is every data node's requirepass and masterauth, `sentinel_password` the
    Sentinels' own. With `replication_proxy`, each replica replicates through a
    `FaultProxy` (see `stall_replication`). Sentinel re-points a replica that replicates
    from an address other than the primary's `failover-timeout` after it sees it, so the
    failover timeout defaults to 5 s without proxies and to 120 s with them (a failover
    still takes a few seconds; only a failed leader election waits twice that long).
    """
    if failover_timeout_ms is None:
        failover_timeout_ms = 120_000 if replication_proxy else 5000
    root = tmp_path / f"sentinel-{free_port()}"
    data_args = _data_args(password, min_replicas_to_write, min_replicas_max_lag)
    primary = RedisNode(root / "primary", appendonly, data_args, password, "primary")
    data_nodes = [primary]
    proxies: list[FaultProxy] = []
    started: list[RedisNode] = []
    try:
        primary.start()
        started.append(primary)
        for i in range(replicas):
            upstream = primary.port
            if replication_proxy:
                proxy = FaultProxy(LOCALHOST, primary.port).start()
                proxies.append(proxy)
                upstream = proxy.port
            replica = RedisNode(
                root / f"replica{i + 1}",
                appendonly,
                (*data_args, "--replicaof", LOCALHOST, str(upstream)),
                password,
                f"replica{i + 1}",
            )
            data_nodes.append(replica)
            replica.start()
            started.append(replica)
        config = (
            f"bind {LOCALHOST}\n"
            f"sentinel monitor {master_name} {LOCALHOST} {primary.port} {quorum}\n"
            f"sentinel down-after-milliseconds {master_name} {down_after_ms}\n"
            f"sentinel failover-timeout {master_name} {failover_timeout_ms}\n"
            f"sentinel parallel-syncs {master_name} 1\n"
        )
        if password:
            config += f"sentinel auth-pass {master_name} {password}\n"
        if sentinel_password:
            config += (
                f"requirepass {sentinel_password}\nsentinel sentinel-pass {sentinel_password}\n"
            )
        sentinel_nodes = [
            SentinelNode(root / f"sentinel{i + 1}", config, sentinel_password, f"sentinel{i + 1}")
            for i in range(sentinels)
        ]
        for s in sentinel_nodes:
            s.start()
            started.append(s)
        topology = SentinelTopology(
            master_name, data_nodes, sentinel_nodes, proxies, password, sentinel_password
        )
        topology.wait_replicated(replicas, timeout)
        topology.wait_watched(timeout)
        yield topology
    finally:
        for p in proxies:
            p.close()
        for node in reversed(started):
            node.stop()


@dataclass(frozen=True)
class ClusterNodeInfo:
    """One line of CLUSTER NODES."""

    id: str
    address: Address
    primary: bool
    primary_id: str | None  # a replica's primary
    slots: tuple[tuple[int, int], ...]  # inclusive ranges
    failed: bool  # flagged fail (or fail?, as the asked node sees it)

    @property
    def slot_count(self) -> int:
        return sum(end - start + 1 for start, end in self.slots)


def parse_cluster_nodes(text: str) -> list[ClusterNodeInfo]:
    """The lines of a CLUSTER NODES reply (slots being migrated or imported left out)."""
    nodes = []
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.split()
        node_id, addr, flags_text, master = parts[:4]
        host, _, rest = addr.partition(":")
        port = int(rest.split("@")[0])
        flags = set(flags_text.split(","))
        slots = []
        for item in parts[8:]:
            if item.startswith("["):  # a slot being imported or migrated
                continue
            start, _, end = item.partition("-")
            slots.append((int(start), int(end or start)))
        nodes.append(
            ClusterNodeInfo(
                id=node_id,
                address=(host, port),
                primary="master" in flags,
                primary_id=None if master == "-" else master,
                slots=tuple(slots),
                failed=bool(flags & {"fail", "fail?"}),
            )
        )
    return nodes


@dataclass
class RedisClusterTopology:
    """Six (or more) cluster nodes; see `redis_cluster`."""

    nodes: list[RedisNode]
    password: str | None
    _killed_at: dict[Address, float] = field(default_factory=dict)

    @property
    def seeds(self) -> list[Address]:
        """The addresses of every node that runs, to seed a cluster client."""
        return [n.address for n in self.nodes if n.alive]

    def node(self, address: Address) -> RedisNode:
        """The node listening on `address`."""
        for n in self.nodes:
            if n.address == address:
                return n
        raise KeyError(f"no cluster node at {address}")

    def cluster_nodes(self, asked: RedisNode | None = None) -> list[ClusterNodeInfo]:
        """CLUSTER NODES as `asked` (default: the first running node) sees the cluster."""
        asked = asked or next(n for n in self.nodes if n.alive)
        return parse_cluster_nodes(_call(asked.address, self.password, "CLUSTER NODES", raw=True))

    def primaries(self) -> list[ClusterNodeInfo]:
        """The primaries that serve slots and are not flagged failed, by address."""
        return sorted(
            (n for n in self.cluster_nodes() if n.primary and n.slots and not n.failed),
            key=lambda n: n.address,
        )

    def replicas_of(self, primary: Address) -> list[ClusterNodeInfo]:
        """The replicas of the primary at `primary` that are not flagged failed."""
        nodes = self.cluster_nodes()
        (p,) = [n for n in nodes if n.address == primary]
        return [n for n in nodes if n.primary_id == p.id and not n.failed]

    def state(self, node: RedisNode) -> str:
        """cluster_state of CLUSTER INFO on `node`: ok or fail."""
        info: str = _call(node.address, self.password, "CLUSTER INFO", raw=True)
        fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
        return fields["cluster_state"].strip()

    def wait_ok(self, timeout: float = 20) -> None:
        """Wait until every running node says cluster_state:ok, sees every other node,
        sees all slots served by primaries it does not flag failed, and every
        replica's link to its primary is up."""
        running = [n for n in self.nodes if n.alive]

        def ok() -> bool:
            for n in running:
                if self.state(n) != "ok":
                    return False
                nodes = self.cluster_nodes(n)
                if len(nodes) != len(self.nodes):
                    return False
                served = sum(x.slot_count for x in nodes if x.primary and not x.failed)
                if served != CLUSTER_SLOTS:
                    return False
                info = _info(n.address, self.password, "replication")
                if info["role"] == "slave" and info["master_link_status"] != "up":
                    return False
            return True

        wait_until(ok, timeout, "cluster_state:ok on every node", step=0.1)

    def kill(self, node: RedisNode | Address) -> Address:
        """SIGKILL a node; returns its address."""
        target = node if isinstance(node, RedisNode) else self.node(node)
        target.kill()
        self._killed_at[target.address] = time.monotonic()
        return target.address

    def restart(self, node: RedisNode, timeout: float = 10) -> None:
        """SIGKILL `node` if it runs and start it again from its files (nodes.conf keeps
        its identity: a killed primary that was failed over rejoins as a replica)."""
        node.restart(timeout)

    def wait_for_failover(self, old: Address, timeout: float = 15) -> float:
        """Wait until no running node counts `old` as a serving primary any more, each
        says cluster_state:ok and sees all slots served (so `old`'s replica took its
        slots). Returns the seconds since `kill` killed `old` (or, when it did not, since
        this call)."""
        start = self._killed_at.get(old, time.monotonic())
        running = [n for n in self.nodes if n.alive]

        def promoted() -> bool:
            for n in running:
                if self.state(n) != "ok":
                    return False
                nodes = self.cluster_nodes(n)
                live = [x for x in nodes if x.primary and not x.failed]
                if any(x.address == old for x in live):
                    return False
                if sum(x.slot_count for x in live) != CLUSTER_SLOTS:
                    return False
            return True

        wait_until(promoted, timeout, f"cluster failover away from {old}", step=0.1)
        return time.monotonic() - start

    def redis_cli(self, *args: str, timeout: float = 60) -> str:
        """Run `redis-cli` (the password through REDISCLI_AUTH); returns its output."""
        binary = shutil.which("redis-cli") or "redis-cli"
        env = dict(os.environ)
        if self.password:
            env["REDISCLI_AUTH"] = self.password
        done = subprocess.run(
            [binary, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"redis-cli {' '.join(args)} exited with {done.returncode}:\n"
                f"{done.stdout[-2000:]}{done.stderr[-2000:]}"
            )
        return done.stdout

    def reshard(self, source: Address, target: Address, slots: int, timeout: float = 60) -> None:
        """Move `slots` slots (and their keys) from primary `source` to primary `target`
        with `redis-cli --cluster reshard`, then wait until every running node agrees."""
        nodes = {n.address: n for n in self.cluster_nodes()}
        src, dst = nodes[source], nodes[target]
        deadline = time.monotonic() + timeout
        seed = f"{LOCALHOST}:{next(n for n in self.nodes if n.alive).port}"
        self.redis_cli(
            "--cluster",
            "reshard",
            seed,
            "--cluster-from",
            src.id,
            "--cluster-to",
            dst.id,
            "--cluster-slots",
            str(slots),
            "--cluster-yes",
            timeout=timeout,
        )
        want = {src.id: src.slot_count - slots, dst.id: dst.slot_count + slots}

        def agreed() -> bool:
            for n in self.nodes:
                if not n.alive:
                    continue
                counts = {x.id: x.slot_count for x in self.cluster_nodes(n)}
                if any(counts.get(i) != c for i, c in want.items()):
                    return False
            return True

        wait_until(agreed, max(deadline - time.monotonic(), 1), "slots moved on every node")


@contextlib.contextmanager
def redis_cluster(
    tmp_path: Path,
    *,
    primaries: int = 3,
    replicas_per_primary: int = 1,
    appendonly: bool = False,
    password: str | None = None,
    node_timeout_ms: int = 1000,
    timeout: float = 30,
) -> Iterator[RedisClusterTopology]:
    """A Redis Cluster of `primaries` primaries with `replicas_per_primary` replicas each
    (6 nodes by default), created with `redis-cli --cluster create` and ok on every node
    before the body starts; stopped on exit. `password` is every node's requirepass and
    masterauth."""
    root = tmp_path / f"cluster-{free_port()}"
    count = primaries * (1 + replicas_per_primary)
    nodes: list[RedisNode] = []
    try:
        for i in range(count):
            directory = root / f"node{i + 1}"
            args = (
                *_data_args(password, 0, 0),
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(directory / "nodes.conf"),
                "--cluster-node-timeout",
                str(node_timeout_ms),
                # The bus port is port + 10000 unless set: a free port of its own instead.
                "--cluster-port",
                str(free_port()),
            )
            node = RedisNode(directory, appendonly, args, password, f"node{i + 1}")
            nodes.append(node)
            node.start()
        cluster = RedisClusterTopology(nodes, password)
        cluster.redis_cli(
            "--cluster",
            "create",
            *(f"{LOCALHOST}:{n.port}" for n in nodes),
            "--cluster-replicas",
            str(replicas_per_primary),
            "--cluster-yes",
            timeout=timeout,
        )
        cluster.wait_ok(timeout)
        yield cluster
    finally:
        for node in nodes:
            node.stop()
