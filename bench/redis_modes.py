"""The Redis modes side by side: one API process against a single Redis server, against a
Sentinel-managed primary with REDIS_ACK_REPLICAS=0, and with REDIS_ACK_REPLICAS=1; then
Redis Cluster against a single server (bench/redis_cluster.py).

    python -m bench.redis_modes [--duration 20] [--vus 64] [--rounds 2] [--quick] [--no-report]
                                [--no-cluster | --cluster-only]

`make bench` runs it after its own phases (bench/run.py); alone it writes only its own
sections of docs/benchmarks.md. Private servers on free ports of 127.0.0.1: one
`redis-server` for the single-server variant, and one Sentinel topology (a primary, two
replicas, three Sentinels; tests/topology.py) that both Sentinel variants share, so the
only difference between those two is the API's REDIS_ACK_REPLICAS. Every data node runs
with the same flags: no AOF, no RDB snapshots; the topology's nodes with
`min-replicas-to-write 1`. All of them run for the whole phase, so each variant has the
same background.

Each run starts the API (`python -m counter_svc serve`, WEB_CONCURRENCY=1) and a sync
worker against one variant, loads it with k6/increment.js, waits for the drain and
compares MySQL with the increments k6 saw acknowledged, then stops both. Runs are
interleaved (single, ACK 0, ACK 1, then the next round) so that drift on the machine
affects every variant alike: first `--rounds` rounds at `--vus` constant VUs, then one
round at a fixed arrival rate (half the slowest variant's rate) for the latency below
saturation. With two or more cores, the API is pinned to one core and k6 to another
(`taskset`); the worker, Redis and MySQL run wherever the kernel puts them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench import checks, loads, redis_cluster, report, stack
from counter_svc.settings import Settings, load_config
from tests.topology import RedisNode, sentinel_topology

ROOT = stack.ROOT
REPORT = ROOT / "docs" / "benchmarks.md"
RESULTS_JSON = ROOT / "docs" / "bench" / "redis-modes.json"
SECTION = "redis-modes"
VARIANTS = ("single", "ack0", "ack1")
LABELS = {
    "single": "single server",
    "ack0": "Sentinel, ACK replicas 0",
    "ack1": "Sentinel, ACK replicas 1",
}
# The target: ACK replicas 1 costs at most 15 % of ACK replicas 0's throughput.
ACK_COST_TARGET = 0.15
# The flags of every data node besides those PrivateRedis always sets (no AOF, no RDB):
# as tests/topology.py starts the topology's nodes.
DATA_FLAGS = ("--repl-diskless-sync-delay", "0")


@contextmanager
def servers(directory: Path, base: Settings) -> Iterator[dict[str, Settings]]:
    """The private servers of every variant, running together; the settings of each."""
    single = RedisNode(directory / "single", appendonly=False, extra=DATA_FLAGS, name="single")
    with sentinel_topology(
        directory, master_name="usercounter", min_replicas_to_write=1, timeout=30
    ) as topo:
        try:
            single.start()
            host, port = topo.primary()
            sentinel = replace(
                base,
                redis_url=f"redis://{host}:{port}/0",
                redis_password="",
                redis_sentinels=tuple(topo.sentinel_addresses),
                redis_sentinel_master=topo.master_name,
                redis_sentinel_password="",
            )
            yield {
                "single": replace(
                    base,
                    redis_url=single.url,
                    redis_password="",
                    redis_sentinels=(),
                    redis_ack_replicas=0,
                ),
                "ack0": replace(sentinel, redis_ack_replicas=0),
                "ack1": replace(sentinel, redis_ack_replicas=1),
            }
        finally:
            single.stop()


def estimate_s(args: argparse.Namespace, *, modes: bool = True, cluster: bool = True) -> float:
    """About how long the phase takes: the runs, their start-ups and the servers'."""
    runs = (args.rounds + 1) * len(VARIANTS)
    total = float(runs * (args.duration + 1) + min(args.duration, 5)) if modes else 0.0
    return total + (redis_cluster.estimate_s(args) if cluster else 0.0)


class ModesBench:
    def __init__(
        self, args: argparse.Namespace, results: Path, progress: loads.Progress | None = None
    ) -> None:
        self.args = args
        self.results = results
        self.pinning = stack.Pinning.choose()
        self.progress = progress or loads.Progress(estimate_s(args, cluster=False))
        self.runs: list[dict[str, Any]] = []

    def run_one(self, variant: str, settings: Settings, rnd: int, rate: int = 0) -> dict[str, Any]:
        """One run of k6/increment.js against a fresh API and worker of `variant`; round 0
        is the warm-up, 5 s at most."""
        a = with_duration(self.args, min(self.args.duration, 5)) if rnd == 0 else self.args
        tag = f"m{rnd}-{variant}" + (f"-{rate}" if rate else "")
        with stack.api_and_worker(settings, self.results, variant, self.pinning) as (api, url):
            env = {
                "BASE_URL": url,
                "VUS": str(a.vus),
                "DURATION": f"{a.duration}s",
                "USER_PREFIX": tag,
                "CLEANUP": "false",
                "USERS": "100",
                **({"RATE": str(rate)} if rate else {}),
            }
            load = f"at {rate:,} req/s" if rate else f"{a.vus} VUs"
            name = f"{LABELS[variant]}, {load} " + (f"(round {rnd})" if rnd else "(warm-up)")
            cpu0 = stack.api_cpu_seconds(api)
            with self.progress.phase(name, a.duration):
                run = loads.run_k6(
                    "increment.js",
                    env,
                    self.results / f"k6-{tag}.json",
                    self.results / f"k6-{tag}.log",
                    timeout_s=a.duration + 300,
                    prefix=self.pinning.prefix(self.pinning.k6_cpu),
                )
            cpu = stack.api_cpu_seconds(api) - cpu0
            s = loads.stats(run, "op:increment", a.duration).as_dict()
            s["api_cpu_ms_per_req"] = round(1000 * cpu / s["requests"], 3) if s["requests"] else 0
            acked = loads.counter(run, "increments_acked")
            check = asyncio.run(checks.wait_drained(settings, tag, acked, 30.0))
        self.progress.say(
            f"{name}: {s['rps']:,.0f} req/s, p50 {s['p50_ms']:.2f} ms, p99 {s['p99_ms']:.2f} ms, "
            f"{s['errors']} errors, API {s['api_cpu_ms_per_req']:.3f} ms CPU/increment; "
            f"acked {check.acked}, MySQL {check.mysql}, Redis {check.redis}: "
            f"{'OK' if check.ok else 'MISMATCH'}"
        )
        entry = {
            "variant": variant,
            "round": rnd,
            "rate": rate,
            "stats": s,
            "check": check.as_dict(),
        }
        self.runs.append(entry)
        return entry

    def run(self, base: Settings) -> dict[str, Any]:
        a = self.args
        self.progress.say(f"Redis modes: private servers under {self.results.relative_to(ROOT)}")
        with servers(self.results / "redis", base) as settings:
            self.progress.say(f"Redis modes: {self.pinning.describe()}")
            asyncio.run(stack.reset(base))
            try:
                # The first API of a run is slower (cold MySQL and Redis caches, page faults):
                # a short run of the first variant that is not counted.
                self.run_one(VARIANTS[0], settings[VARIANTS[0]], 0)
                self.runs.clear()
                for rnd in range(1, a.rounds + 1):
                    for v in VARIANTS:
                        self.run_one(v, settings[v], rnd)
                slowest = min(_median(self.runs, v, 0, "rps") for v in VARIANTS)
                rate = max(100, int(slowest / 2 / 100) * 100)
                for v in VARIANTS:
                    self.run_one(v, settings[v], 1, rate)
                return summarize(self.runs, a, self.pinning, rate)
            finally:
                if not a.keep:
                    asyncio.run(stack.drop(base))


def with_duration(args: argparse.Namespace, seconds: int) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), "duration": seconds})


def _of(runs: list[dict[str, Any]], variant: str, rate: int) -> list[dict[str, Any]]:
    return [r for r in runs if r["variant"] == variant and r["rate"] == rate]


def _median(runs: list[dict[str, Any]], variant: str, rate: int, key: str) -> float:
    return float(statistics.median(r["stats"][key] for r in _of(runs, variant, rate)))


def _variant_summary(runs: list[dict[str, Any]], variant: str, rate: int) -> dict[str, Any]:
    keys = ("rps", "p50_ms", "p99_ms", "api_cpu_ms_per_req")
    mine = _of(runs, variant, rate)
    return {
        **{k: round(_median(runs, variant, rate, k), 3) for k in keys},
        "errors": sum(r["stats"]["errors"] for r in mine),
        "requests": sum(r["stats"]["requests"] for r in mine),
        "rounds_rps": [r["stats"]["rps"] for r in mine],
    }


def summarize(
    runs: list[dict[str, Any]], args: argparse.Namespace, pinning: stack.Pinning, rate: int
) -> dict[str, Any]:
    closed = {v: _variant_summary(runs, v, 0) for v in VARIANTS}
    at_rate = {v: _variant_summary(runs, v, rate) for v in VARIANTS}
    per_round = [
        {
            "ack1_of_ack0": (
                _of(runs, "ack1", 0)[i]["stats"]["rps"] / _of(runs, "ack0", 0)[i]["stats"]["rps"]
            ),
            "ack0_of_single": (
                _of(runs, "ack0", 0)[i]["stats"]["rps"] / _of(runs, "single", 0)[i]["stats"]["rps"]
            ),
        }
        for i in range(args.rounds)
    ]
    ack1_of_ack0 = closed["ack1"]["rps"] / closed["ack0"]["rps"]
    return {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "config": {"vus": args.vus, "duration_s": args.duration, "rounds": args.rounds},
        "pinning": {
            "api_cpu": pinning.api_cpu,
            "k6_cpu": pinning.k6_cpu,
            "text": pinning.describe(),
        },
        "rate": rate,
        "closed": closed,
        "at_rate": at_rate,
        "ratios": {
            "ack1_of_ack0": round(ack1_of_ack0, 3),
            "ack0_of_single": round(closed["ack0"]["rps"] / closed["single"]["rps"], 3),
            "per_round": [{k: round(x, 3) for k, x in r.items()} for r in per_round],
        },
        "target": {
            "text": f"ACK replicas 1 costs at most {ACK_COST_TARGET:.0%} of ACK replicas 0's "
            "increment throughput",
            "met": ack1_of_ack0 >= 1 - ACK_COST_TARGET,
            "measured": f"ACK 1 at {ack1_of_ack0:.2f} of ACK 0's rate"
            + (f", {1 - ack1_of_ack0:.1%} less" if ack1_of_ack0 < 1 else ", no cost measured"),
        },
        "checks": [{"variant": r["variant"], "round": r["round"], **r["check"]} for r in runs],
        "runs": runs,
    }


def _row(label: str, s: dict[str, Any], of: float | None, of_single: float | None) -> str:
    ratio = f"{s['rps'] / of:.2f}" if of else ""
    vs_single = f"{s['rps'] / of_single:.2f}" if of_single else ""
    return (
        f"| {label} | {s['rps']:,.0f} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} | {s['errors']} "
        f"| {s['api_cpu_ms_per_req']:.3f} | {vs_single} | {ratio} |"
    )


def render(r: dict[str, Any]) -> str:
    """The generated part of the Redis modes section of docs/benchmarks.md."""
    cfg, m, v = r["config"], r["machine"], r["versions"]
    closed, at_rate, ratios = r["closed"], r["at_rate"], r["ratios"]
    head = [
        "| variant | increment req/s | p50 ms | p99 ms | errors | API CPU ms/increment "
        "| of single | of ACK 0 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines = [
        f"#### Latest run: {r['when']}",
        "",
        f"`{r.get('command', 'make bench')}` on {m['cpu']}, {m['cores']} cores, {m['os']}; "
        f"Redis {v['redis']}, {v['mariadb']}, "
        f"{v['k6']}. One API process (WEB_CONCURRENCY=1), {r['pinning']['text']}; the sync "
        "worker, the Redis servers and MariaDB unpinned. "
        f"{cfg['vus']} VUs for {cfg['duration_s']} s per run, {cfg['rounds']} interleaved "
        "round(s) of single, ACK 0, ACK 1; each figure is the median of the rounds. "
        f"Load average before: {r['load_before']}, after: {r['load_after']}.",
        "",
        *head,
    ]
    single_rps = closed["single"]["rps"]
    for key in VARIANTS:
        of = closed["ack0"]["rps"] if key == "ack1" else None
        lines.append(_row(LABELS[key], closed[key], of, single_rps if key != "single" else None))
    lines += ["", f"At a fixed arrival rate of {r['rate']:,} increments/s (RATE, one round):", ""]
    lines += head
    for key in VARIANTS:
        lines.append(_row(LABELS[key], at_rate[key], None, None))
    rounds = "; ".join(
        f"round {i}: {x['ack1_of_ack0']:.2f} and {x['ack0_of_single']:.2f}"
        for i, x in enumerate(ratios["per_round"], 1)
    )
    every = "; ".join(
        f"{LABELS[k]} {', '.join(f'{x:,.0f}' for x in closed[k]['rounds_rps'])}" for k in VARIANTS
    )
    t = r["target"]
    checks_ok = all(c["ok"] for c in r["checks"])
    lines += [
        "",
        f"Ratios of the medians: **ACK 1 / ACK 0 = {ratios['ack1_of_ack0']:.2f}**, "
        f"ACK 0 / single = {ratios['ack0_of_single']:.2f} (round by round, ACK 1 / ACK 0 and "
        f"ACK 0 / single: {rounds}). Every round (req/s): {every}.",
        "",
        f"Target: {t['text']}: {t['measured']}, **{'met' if t['met'] else 'missed'}**.",
        "",
        f"Nothing lost: after each of the {len(r['checks'])} runs MySQL held exactly the "
        "increments k6 saw acknowledged, and so did Redis: "
        + ("all OK." if checks_ok else "**MISMATCH** (see `docs/bench/redis-modes.json`)."),
        "",
        f"Raw k6 summaries and logs: `{r['results_dir']}` (not committed); the numbers above: "
        "`docs/bench/redis-modes.json`.",
    ]
    return "\n".join(lines)


def write_report(out: dict[str, Any]) -> None:
    RESULTS_JSON.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_JSON.write_text(json.dumps(out, indent=1) + "\n")
    report.replace_section(REPORT, SECTION, render(out), report.SKELETON)


def run_phase(
    args: argparse.Namespace,
    base: Settings,
    results: Path,
    versions: dict[str, str],
    progress: loads.Progress | None = None,
    command: str = "make bench",
    *,
    modes: bool = True,
    cluster: bool = True,
) -> dict[str, Any]:
    """The whole phase (what `make bench` calls): the modes side by side, then Redis
    Cluster against a single server (bench/redis_cluster.py); either may be left out.
    `args` has duration, vus, rounds, keep and no_report; each part writes its section
    of the report unless `args.no_report`. `base` gives MySQL and the key prefix (MySQL's
    database is dropped and created anew); the Redis servers are private. Returns each
    part's results and the exactness checks of all runs."""
    progress = progress or loads.Progress(estimate_s(args, modes=modes, cluster=cluster))
    versions = {**versions, "redis": _redis_version()}
    out: dict[str, Any] = {"modes": None, "cluster": None, "checks": []}
    if modes:
        out["modes"] = modes_phase(args, base, results, versions, progress, command)
        out["checks"] += out["modes"]["checks"]
    if cluster:
        out["cluster"] = redis_cluster.run_phase(
            args, base, results / "cluster", versions, progress, command
        )
        out["checks"] += out["cluster"]["checks"]
    return out


def modes_phase(
    args: argparse.Namespace,
    base: Settings,
    results: Path,
    versions: dict[str, str],
    progress: loads.Progress,
    command: str,
) -> dict[str, Any]:
    """Single server, Sentinel ACK 0 and ACK 1 side by side (see `run_phase`)."""
    results.mkdir(parents=True, exist_ok=True)
    load_before = report.load_average()
    bench = ModesBench(args, results, progress)
    out = bench.run(base)
    out.update(
        machine=report.machine(),
        versions=versions,
        load_before=load_before,
        load_after=report.load_average(),
        results_dir=str(results.relative_to(ROOT)),
        command=command,
    )
    (results / "redis-modes.json").write_text(json.dumps(out, indent=1))
    if not args.no_report:
        write_report(out)
    r = out["ratios"]
    bench.progress.say(
        f"Redis modes: ACK 1 / ACK 0 = {r['ack1_of_ack0']:.2f}, ACK 0 / single = "
        f"{r['ack0_of_single']:.2f}; target ({out['target']['text']}): "
        f"{out['target']['measured']}, {'met' if out['target']['met'] else 'MISSED'}"
    )
    return out


def _redis_version() -> str:
    text = report.tool_version([shutil.which("redis-server") or "redis-server", "--version"])
    for part in text.split():
        if part.startswith("v="):
            return part[2:]
    return text


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(
        prog="python -m bench.redis_modes", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--duration", type=int, default=int(env("BENCH_DURATION", "20")))
    p.add_argument("--vus", type=int, default=int(env("BENCH_VUS", "64")))
    p.add_argument("--rounds", type=int, default=int(env("BENCH_ROUNDS", "2")))
    p.add_argument("--database", default="usercounter_bench_modes")
    p.add_argument("--key-prefix", default="ucmodes")
    p.add_argument("--quick", action="store_true", help="3 s runs, 1 round")
    p.add_argument("--no-report", action="store_true", help="do not rewrite docs/benchmarks.md")
    p.add_argument("--keep", action="store_true", help="keep the database at the end")
    part = p.add_mutually_exclusive_group()
    part.add_argument(
        "--no-cluster", action="store_true", help="leave out Redis Cluster against single server"
    )
    part.add_argument(
        "--cluster-only", action="store_true", help="only Redis Cluster against single server"
    )
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.rounds = 3, 1
    if args.rounds < 1 or args.duration < 1:
        p.error("--rounds and --duration must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    base = replace(
        Settings.from_env(load_config()), mysql_database=args.database, key_prefix=args.key_prefix
    )
    results = ROOT / "bench-results" / ("redis-modes-" + time.strftime("%Y%m%d-%H%M%S"))
    from bench.run import versions  # bench.run imports this module

    try:
        command = " ".join(["python -m bench.redis_modes", *(argv or sys.argv[1:])])
        out = run_phase(
            args,
            base,
            results,
            versions(base),
            command=command,
            modes=not args.cluster_only,
            cluster=not args.no_cluster,
        )
    except (RuntimeError, TimeoutError, OSError) as e:
        print(f"bench.redis_modes: failed: {e}", file=sys.stderr)
        return 1
    if not all(c["ok"] for c in out["checks"]):
        print("bench.redis_modes: FAILED: MySQL does not match the acknowledged increments")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
