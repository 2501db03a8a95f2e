"""Redis Cluster against a single server: the same increment load, how evenly it spreads
over the shards, and what each primary and the API spend per increment.

A part of the Redis modes phase (`python -m bench.redis_modes`, `make bench`). Private
servers on free ports of 127.0.0.1, running for the whole phase: one `redis-server`, and
a cluster of three primaries with a replica each (`tests/topology.py`), all with the
same flags (no AOF, no RDB snapshots). Each run starts one pinned API process and a sync
worker against a variant and loads it with k6/increment.js over 640 users, ten in each
of the 64 buckets (so every bucket, and every primary's share of them, is loaded in
proportion); the variants take turns, round after round. After every run MySQL and Redis
must hold exactly the increments k6 saw acknowledged.

Per primary: its increments (the acknowledged increments of the users whose bucket its
slots hold, read from MySQL after the drain) and FCALLs (INFO commandstats), and its
CPU time (INFO cpu, used_cpu_sys + used_cpu_user) over the k6 run. CPU per increment is
that time over those increments: it includes everything the primary did meanwhile (the
worker's drain, replication to its replica, cron and the cluster bus), an upper bound of
what one increment costs. Then each server alone under redis-benchmark of the increment
function (64 connections, no API or worker): its CPU per call when kept busy. From both,
what N primaries would carry with a core each (bench/cluster_report.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from redis.crc import key_slot

from bench import checks, cluster_report, loads, report, stack
from counter_svc.counters import INCREMENT, LIBRARY
from counter_svc.keys import Keys
from counter_svc.settings import Settings
from tests.topology import RedisNode, redis_cluster

ROOT = stack.ROOT
VARIANTS = ("single", "cluster")
LABELS = {"single": "single server", "cluster": "Cluster, 3 primaries + 3 replicas"}
# Ten users per bucket of the default 64.
USERS_PER_BUCKET = 10
# Seconds the servers are watched with no client, for their background CPU.
IDLE_S = 3.0
# redis-benchmark calls of each server, and about how long all of them take.
BENCHMARK_CALLS = 100_000
BENCHMARK_S = 15.0
# As the single server of bench/redis_modes.py and the topology's nodes.
DATA_FLAGS = ("--repl-diskless-sync-delay", "0")


@dataclass(frozen=True)
class Shard:
    """A node that serves slots: a cluster primary, or the single server (every slot)."""

    name: str
    node: RedisNode
    slots: tuple[tuple[int, int], ...]

    def serves(self, slot: int) -> bool:
        return any(start <= slot <= end for start, end in self.slots)

    @property
    def address(self) -> str:
        return where(self.node)


def where(node: RedisNode) -> str:
    return f"{node.address[0]}:{node.address[1]}"


@dataclass(frozen=True)
class Variant:
    settings: Settings
    shards: list[Shard]
    replicas: list[RedisNode]


@dataclass(frozen=True)
class Sample:
    """What a server has done so far: CPU time (INFO cpu, user + system), FCALLs run (INFO
    commandstats) and reads from its clients' sockets (INFO stats: one per batch of
    commands that arrived together)."""

    cpu_s: float
    fcalls: int
    reads: int

    def __sub__(self, other: Sample) -> Sample:
        return Sample(
            self.cpu_s - other.cpu_s, self.fcalls - other.fcalls, self.reads - other.reads
        )


def sample(node: RedisNode) -> Sample:
    client = node.client()
    try:
        cpu = client.info("cpu")
        commands = client.info("commandstats")
        stats = client.info("stats")
    finally:
        client.close()
    return Sample(
        float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"]),
        int(commands.get("cmdstat_fcall", {}).get("calls", 0)),
        int(stats["total_reads_processed"]),
    )


@contextmanager
def servers(directory: Path, base: Settings) -> Iterator[dict[str, Variant]]:
    """The single server and the cluster, running together; each variant's settings,
    shards and replicas."""
    single = RedisNode(directory / "single", appendonly=False, extra=DATA_FLAGS, name="single")
    # A node timeout well above the 1 s of the tests: a node starved of CPU for a moment
    # on a busy machine must not be failed over in the middle of a run.
    with redis_cluster(directory, node_timeout_ms=5000, timeout=60) as topo:
        try:
            single.start()
            primaries = topo.primaries()
            shards = [
                Shard(f"primary {i}", topo.node(p.address), p.slots)
                for i, p in enumerate(primaries, 1)
            ]
            served = {p.address for p in primaries}
            replicas = [n for n in topo.nodes if n.address not in served]
            plain = replace(base, redis_password="", redis_sentinels=(), redis_ack_replicas=0)
            host, port = topo.seeds[0]
            yield {
                "single": Variant(
                    replace(plain, redis_url=single.url),
                    [Shard("single server", single, ((0, 16383),))],
                    [],
                ),
                "cluster": Variant(
                    replace(
                        plain,
                        redis_url=f"redis://{host}:{port}/0",
                        redis_cluster_nodes=tuple(topo.seeds),
                    ),
                    shards,
                    replicas,
                ),
            }
            if {p.address for p in topo.primaries()} != served:
                raise RuntimeError("a cluster primary failed over during the runs")
        finally:
            single.stop()


def estimate_s(args: argparse.Namespace) -> float:
    """About how long the comparison takes: the runs, their start-ups and the servers'."""
    runs = args.rounds * len(VARIANTS)
    return float(runs * (args.duration + 1) + 2 * min(args.duration, 5) + IDLE_S + BENCHMARK_S + 10)


class ClusterBench:
    def __init__(
        self,
        args: argparse.Namespace,
        results: Path,
        variants: dict[str, Variant],
        progress: loads.Progress | None = None,
    ) -> None:
        self.args = args
        self.results = results
        self.variants = variants
        self.pinning = stack.Pinning.choose()
        self.progress = progress or loads.Progress(estimate_s(args))
        self.runs: list[dict[str, Any]] = []

    def idle(self) -> dict[str, float]:
        """Each server's CPU per second with no client at all (cron, the cluster bus)."""
        nodes = {
            where(n): n
            for v in self.variants.values()
            for n in [*(s.node for s in v.shards), *v.replicas]
        }
        with self.progress.phase("Redis Cluster: the idle servers", IDLE_S):
            before = {a: sample(n).cpu_s for a, n in nodes.items()}
            started = time.monotonic()
            time.sleep(IDLE_S)
            wall = time.monotonic() - started
            return {a: round((sample(n).cpu_s - before[a]) / wall, 5) for a, n in nodes.items()}

    def run_one(self, variant: str, rnd: int) -> dict[str, Any]:
        """One run of k6/increment.js against a fresh API and worker of `variant`, with the
        CPU and FCALLs of its shards over the run; round 0 is a warm-up of 5 s at most."""
        a = self.args
        seconds = min(a.duration, 5) if rnd == 0 else a.duration
        tag = f"c{rnd}-{variant}"
        v = self.variants[variant]
        keys = Keys.from_settings(v.settings)
        users = USERS_PER_BUCKET * keys.buckets
        name = f"{LABELS[variant]}, {a.vus} VUs " + (f"(round {rnd})" if rnd else "(warm-up)")
        with stack.api_and_worker(v.settings, self.results, variant, self.pinning) as (api, url):
            env = {
                "BASE_URL": url,
                "VUS": str(a.vus),
                "DURATION": f"{seconds}s",
                "USER_PREFIX": tag,
                "CLEANUP": "false",
                "USERS": str(users),
            }
            api0 = stack.api_cpu_seconds(api)
            shards0 = [sample(s.node) for s in v.shards]
            replicas0 = sum(sample(r).cpu_s for r in v.replicas)
            with self.progress.phase(name, seconds):
                run = loads.run_k6(
                    "increment.js",
                    env,
                    self.results / f"k6-{tag}.json",
                    self.results / f"k6-{tag}.log",
                    timeout_s=seconds + 300,
                    prefix=self.pinning.prefix(self.pinning.k6_cpu),
                )
            done = [sample(s.node) - s0 for s, s0 in zip(v.shards, shards0, strict=True)]
            replicas = sum(sample(r).cpu_s for r in v.replicas) - replicas0
            api_cpu = stack.api_cpu_seconds(api) - api0
            acked = loads.counter(run, "increments_acked")
            check = asyncio.run(checks.wait_drained(v.settings, tag, acked, 30.0))
            rows = asyncio.run(checks.user_counters(v.settings, tag))
        s = loads.stats(run, "op:increment", seconds).as_dict()
        s["api_cpu_ms_per_req"] = round(1000 * api_cpu / s["requests"], 4) if s["requests"] else 0
        owner = bucket_owners(v.shards, keys)
        shards = []
        for i, shard in enumerate(v.shards):
            mine = [(uid, n) for uid, n in rows if owner[keys.bucket(uid)] == i]
            increments = sum(n for _, n in mine)
            shards.append(
                {
                    "name": shard.name,
                    "address": shard.address,
                    "slots": sum(end - start + 1 for start, end in shard.slots),
                    "buckets": sum(1 for o in owner.values() if o == i),
                    "users": len(mine),
                    "increments": increments,
                    "ops_per_s": round(increments / seconds, 1),
                    "fcalls": done[i].fcalls,
                    "reads": done[i].reads,
                    "cpu_s": round(done[i].cpu_s, 4),
                    "cores": round(done[i].cpu_s / run.wall_s, 3),
                    "cpu_us_per_increment": _per(done[i].cpu_s, increments),
                }
            )
        total = sum(x["increments"] for x in shards)
        entry = {
            "variant": variant,
            "round": rnd,
            "stats": s,
            "wall_s": round(run.wall_s, 2),
            "shards": shards,
            "spread": _spread(shards),
            "replicas_cpu_us_per_increment": _per(replicas, total) if v.replicas else None,
            "check": check.as_dict(),
        }
        self.progress.say(
            f"{name}: {s['rps']:,.0f} req/s, p99 {s['p99_ms']:.2f} ms, {s['errors']} errors, "
            f"API {s['api_cpu_ms_per_req']:.3f} ms CPU/increment; per shard (increments/s, "
            "Redis µs CPU/increment): "
            + ", ".join(f"{x['ops_per_s']:,.0f} {x['cpu_us_per_increment']:.1f}" for x in shards)
            + f"; max/min {entry['spread']:.2f}; acked {check.acked}, MySQL {check.mysql}, "
            f"Redis {check.redis}: {'OK' if check.ok else 'MISMATCH'}"
        )
        return entry

    def run(self) -> dict[str, Any]:
        idle = self.idle()
        # The first run against each variant is slower (cold caches, the functions loaded
        # on first use): a short run of each that is not counted.
        for v in VARIANTS:
            self.run_one(v, 0)
        for rnd in range(1, self.args.rounds + 1):
            for v in VARIANTS:
                self.runs.append(self.run_one(v, rnd))
        a = self.args
        config = {
            "vus": a.vus,
            "duration_s": a.duration,
            "rounds": a.rounds,
            "users_per_bucket": USERS_PER_BUCKET,
        }
        return cluster_report.summarize(
            self.runs, config, LABELS, self.pinning, idle, self.benchmark()
        )

    def benchmark(self) -> dict[str, dict[str, float]]:
        """Each server alone, with no API or worker running: redis-benchmark of the
        increment function at 64 connections (one call per read), on the keys of a bucket
        it serves. Its calls/s, and its CPU per call when it is kept busy."""
        out: dict[str, dict[str, float]] = {}
        requests = 20_000 if self.args.quick else BENCHMARK_CALLS
        with self.progress.phase("Redis Cluster: redis-benchmark of each server", BENCHMARK_S):
            for v in self.variants.values():
                keys = Keys(f"{v.settings.key_prefix}-rb", v.settings.buckets)
                owner = bucket_owners(v.shards, keys)
                for i, shard in enumerate(v.shards):
                    bucket = min(b for b, o in owner.items() if o == i)
                    fcall = increment_fcall(keys, keys.buckets + bucket)
                    client = shard.node.client()
                    try:
                        client.function_load(LIBRARY.code, replace=True)
                        client.set(fcall[3], 0)
                        before = sample(shard.node)
                        b = loads.redis_benchmark(shard.node.url, "", "FCALL", fcall, 64, requests)
                        done = sample(shard.node) - before
                        client.delete(*fcall[3:8])
                    finally:
                        client.close()
                    if b is None:
                        self.progress.say("redis-benchmark: not available, no saturation figures")
                        return {}
                    out[shard.address] = {
                        "calls_per_s": round(b.rps),
                        "cpu_us_per_call": _per(done.cpu_s, done.fcalls),
                        "fcalls_per_read": round(done.fcalls / max(1, done.reads), 1),
                    }
        return out


def bucket_owners(shards: list[Shard], keys: Keys) -> dict[int, int]:
    """The index in `shards` of the shard that serves each bucket's hash tag."""
    owners = {}
    for b in range(keys.buckets):
        slot = key_slot(keys.tag(b).encode())
        owners[b] = next(i for i, s in enumerate(shards) if s.serves(slot))
    return owners


def increment_fcall(keys: Keys, user_id: int) -> list[str]:
    """The increment function's FCALL as the API sends it for `user_id` (no idempotency
    key), for redis-benchmark."""
    bucket = keys.bucket(user_id)
    counter_keys = [
        keys.counter(user_id),
        keys.gone(user_id),
        keys.absent(user_id),
        keys.dirty(bucket),
        keys.generation(bucket),
    ]
    return [
        "FCALL",
        LIBRARY.qualified(INCREMENT),
        "5",
        *counter_keys,
        str(user_id),
        "1",
        "",
        "60",
        "",
    ]


def _per(cpu_s: float, increments: int) -> float:
    """Microseconds of CPU per increment."""
    return round(1e6 * cpu_s / increments, 2) if increments else 0.0


def _spread(shards: list[dict[str, Any]]) -> float:
    rates = [x["ops_per_s"] for x in shards]
    return round(max(rates) / min(rates), 3) if min(rates) else 0.0


def run_phase(
    args: argparse.Namespace,
    base: Settings,
    results: Path,
    versions: dict[str, str],
    progress: loads.Progress | None = None,
    command: str = "make bench",
) -> dict[str, Any]:
    """The whole comparison: `args` has duration, vus, rounds, keep and no_report; writes
    the report unless `args.no_report`. `base` gives MySQL and the key prefix (MySQL's
    database is dropped and created anew); the Redis servers are private."""
    results.mkdir(parents=True, exist_ok=True)
    load_before = report.load_average()
    progress = progress or loads.Progress(estimate_s(args))
    progress.say(f"Redis Cluster: private servers under {results.relative_to(ROOT)}")
    asyncio.run(stack.reset(base))
    try:
        with servers(results / "redis", base) as variants:
            bench = ClusterBench(args, results, variants, progress)
            out = bench.run()
    finally:
        if not args.keep:
            asyncio.run(stack.drop(base))
    out.update(
        machine=report.machine(),
        versions=versions,
        load_before=load_before,
        load_after=report.load_average(),
        results_dir=str(results.relative_to(ROOT)),
        command=command,
    )
    (results / "redis-cluster.json").write_text(json.dumps(out, indent=1))
    if not args.no_report:
        cluster_report.write_report(out)
    loaded = out["projection"]["under_load"]
    progress.say(
        f"Redis Cluster: spread max/min {out['spread']['median']:.2f} (worst "
        f"{out['spread']['worst']:.2f}, {'met' if out['spread']['met'] else 'MISSED'}); "
        f"{loaded['cpu_us_per_increment']:.1f} µs CPU per increment on the costliest primary "
        f"⇒ {loaded['per_primary']:,}/s per primary core; API cost x{out['client_cost']}"
    )
    return out
