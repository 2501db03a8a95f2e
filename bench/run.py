"""`make bench`: start the API and the sync worker on 127.0.0.1, load them, check nothing
was lost, and write docs/benchmarks.md.

    python -m bench.run [--duration 20] [--vus 64] [--workers N] [--rounds 2] [--quick]

Phases, in one run: the `/healthz` ceiling, `increment.js` (then: wait for the drain
and compare MySQL with the increments k6 saw acknowledged), `read_heavy.js` (the same
check), redis-benchmark, the drain rate of a worker started on a large backlog; then the
increment's tail and cost on one pinned API process (bench/latency.py), the API against
the write-through design it replaced (bench/baseline.py), the mixed load of existing
clients (bench/mixed.py), and the Redis modes side by side (bench/redis_modes.py: single
server, Sentinel with ACK replicas 0 and 1, then Redis Cluster against a single server,
on private servers). A mismatch, or a phase that cannot run, exits non-zero.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench import baseline, checks, latency, loads, mixed, redis_modes, report, stack
from counter_svc.connections import mysql_kwargs, open_redis
from counter_svc.counters import INCREMENT, LIBRARY
from counter_svc.keys import Keys
from counter_svc.settings import Settings, load_config

ROOT = stack.ROOT
PHASES = ("healthz", "increment", "read_heavy")
# The tag whose numbers stand for the phase in the table.
MAIN_TAG = {
    "healthz": "scenario:healthz",
    "increment": "op:increment",
    "read_heavy": "scenario:read_heavy",
}
TAGS = {
    "healthz": ["scenario:healthz", "op:healthz"],
    "increment": ["scenario:increment", "op:increment"],
    "read_heavy": ["scenario:read_heavy", "op:count", "op:get_user", "op:increment"],
}
P99_TARGET_MS = 10.0
RATIO_TARGET = 0.70
RSS_TARGET_MB = 100.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--duration",
        type=int,
        default=int(env("BENCH_DURATION", "20")),
        help="seconds per k6 phase (BENCH_DURATION, 20)",
    )
    p.add_argument(
        "--vus",
        type=int,
        default=int(env("BENCH_VUS", "64")),
        help="k6 virtual users per phase (BENCH_VUS, 64)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=int(env("BENCH_WORKERS", str(os.cpu_count() or 1))),
        help="uvicorn workers of the API (BENCH_WORKERS, default: the core count)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=int(env("BENCH_ROUNDS", "2")),
        help="interleaved rounds of the k6 phases (BENCH_ROUNDS, 2)",
    )
    p.add_argument(
        "--drain-users",
        type=int,
        default=int(env("BENCH_DRAIN_USERS", "100000")),
        help="dirty counters for the drain-rate phase (BENCH_DRAIN_USERS, 100000)",
    )
    p.add_argument(
        "--database",
        default=env("BENCH_DATABASE", "usercounter_bench"),
        help="MySQL database, dropped and created anew (BENCH_DATABASE)",
    )
    p.add_argument(
        "--key-prefix",
        default=env("BENCH_KEY_PREFIX", "ucbench"),
        help="Redis key prefix, its keys deleted before and after (BENCH_KEY_PREFIX)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a short check that everything runs: 3 s phases, 1 round, small sizes",
    )
    p.add_argument("--no-report", action="store_true", help="do not rewrite docs/benchmarks.md")
    p.add_argument(
        "--no-redis-modes",
        action="store_true",
        default=env("BENCH_REDIS_MODES", "1") == "0",
        help="skip the Redis modes phase (bench/redis_modes.py; BENCH_REDIS_MODES=0)",
    )
    p.add_argument(
        "--no-latency",
        action="store_true",
        default=env("BENCH_LATENCY", "1") == "0",
        help="skip the tail-latency phase (bench/latency.py; BENCH_LATENCY=0)",
    )
    p.add_argument(
        "--no-baseline",
        action="store_true",
        default=env("BENCH_BASELINE", "1") == "0",
        help="skip write-behind against write-through (bench/baseline.py; BENCH_BASELINE=0)",
    )
    p.add_argument(
        "--baseline-duration",
        type=int,
        default=int(env("BENCH_BASELINE_DURATION", "8")),
        help="seconds per run of the write-through comparison (BENCH_BASELINE_DURATION, 8)",
    )
    p.add_argument(
        "--baseline-rates",
        default=env("BENCH_BASELINE_RATES", "auto"),
        help="arrival rates of the write-through comparison, e.g. 500,1000; auto: half and "
        "80%% of the write-through's closed-loop rate (BENCH_BASELINE_RATES)",
    )
    p.add_argument(
        "--no-mixed",
        action="store_true",
        default=env("BENCH_MIXED", "1") == "0",
        help="skip the mixed load (bench/mixed.py, k6/mixed.js; BENCH_MIXED=0)",
    )
    p.add_argument(
        "--mixed-vus",
        type=int,
        default=int(env("BENCH_MIXED_VUS", "600")),
        help="peak VUs of the mixed load (BENCH_MIXED_VUS, 600)",
    )
    p.add_argument(
        "--mixed-ramp",
        type=int,
        default=int(env("BENCH_MIXED_RAMP", "60")),
        help="seconds of the mixed load's ramp from 0 to its peak (BENCH_MIXED_RAMP, 60)",
    )
    p.add_argument(
        "--mixed-hold",
        type=int,
        default=int(env("BENCH_MIXED_HOLD", "30")),
        help="seconds the mixed load holds its peak (BENCH_MIXED_HOLD, 30)",
    )
    p.add_argument(
        "--mixed-down",
        type=int,
        default=int(env("BENCH_MIXED_DOWN", "10")),
        help="seconds of the mixed load's ramp down to 0 (BENCH_MIXED_DOWN, 10)",
    )
    p.add_argument(
        "--mixed-sleep",
        type=float,
        default=float(env("BENCH_MIXED_SLEEP", "1")),
        help="think time of each mixed-load iteration, seconds (BENCH_MIXED_SLEEP, 1)",
    )
    p.add_argument("--keep", action="store_true", help="keep the database and keys at the end")
    p.add_argument(
        "--api-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an environment variable of the API (repeatable), e.g. ACCESS_LOG=off",
    )
    args = p.parse_args(argv)
    if any("=" not in kv for kv in args.api_env):
        p.error("--api-env takes KEY=VALUE")
    if args.quick:
        args.duration, args.rounds, args.drain_users = 3, 1, min(args.drain_users, 2000)
        args.baseline_duration = 3
        args.mixed_ramp, args.mixed_hold, args.mixed_down = 10, 5, 5
    try:
        baseline.parse_rates(args.baseline_rates)
    except ValueError as e:
        p.error(f"--baseline-rates: {e}")
    if min(args.baseline_duration, args.mixed_vus, args.mixed_ramp + args.mixed_hold) < 1:
        p.error("--baseline-duration, --mixed-vus and the mixed load's stages must be positive")
    if not re.fullmatch(r"[A-Za-z0-9_]{1,64}", args.database) or args.database == "usercounter":
        p.error("--database must be letters, digits or '_' and not the service's own database")
    return args


def bench_settings(args: argparse.Namespace) -> Settings:
    """Where MySQL and Redis are comes from the environment (or .env) as for the service;
    the database and key prefix are the bench's own."""
    base = Settings.from_env(load_config())
    return replace(base, mysql_database=args.database, key_prefix=args.key_prefix)


class Bench:
    def __init__(self, args: argparse.Namespace, settings: Settings, results: Path) -> None:
        self.args = args
        self.settings = settings
        self.results = results
        per_phase = args.duration + 6  # start-up, set-up and summary of a k6 run
        total = (args.rounds * len(PHASES) + 1) * per_phase + args.rounds * 4 + 25
        if not args.no_redis_modes:
            total += redis_modes.estimate_s(args)
        if not args.no_latency:
            total += latency.estimate_s(args)
        if not args.no_baseline:
            total += baseline.estimate_s(args)
        if not args.no_mixed:
            total += mixed.estimate_s(args)
        self.progress = loads.Progress(total)
        self.api: stack.Child | None = None
        self.worker: stack.Child | None = None
        self.url = ""
        self.out: dict[str, Any] = {"rounds": [], "drain_checks": [], "cpu": {}}

    # --- processes --------------------------------------------------------------------

    def start(self) -> None:
        self.progress.say(
            f"fresh database {self.settings.mysql_database}, keys {self.settings.key_prefix}:*"
        )
        asyncio.run(stack.reset(self.settings))
        api_env = dict(kv.split("=", 1) for kv in self.args.api_env)
        self.api, self.url = stack.start_api(
            self.settings, self.results / "api.log", self.args.workers, api_env
        )
        self.progress.say(
            f"API on {self.url}, {self.args.workers} worker(s), pids {stack.api_pids(self.api)}"
        )
        self.worker = self._start_worker()

    def _start_worker(self) -> stack.Child:
        worker = stack.start_worker(self.settings, self.results / "worker.log")
        time.sleep(0.5)
        if not worker.alive():
            raise RuntimeError(f"the sync worker exited at once:\n{worker.tail()}")
        return worker

    def stop(self) -> None:
        for child in (self.worker, self.api):
            if child is not None:
                child.stop()
        if not self.args.keep:
            asyncio.run(stack.drop(self.settings))

    def _cpu(self) -> tuple[float, float]:
        assert self.api is not None
        assert self.worker is not None
        api = stack.api_cpu_seconds(self.api)
        return api, stack.cpu_seconds(self.worker.proc.pid)

    # --- phases -----------------------------------------------------------------------

    def k6_phase(self, phase: str, rnd: int, rate: int = 0) -> dict[str, Any]:
        """One k6 run of k6/<phase>.js; with `rate`, increment.js at that arrival rate."""
        a = self.args
        script = "increment" if rate else phase
        label = f"{script} at {rate:,} req/s" if rate else phase
        prefix = f"r{rnd}-{phase.replace('_', '')}" + (f"-{rate}" if rate else "")
        env = {
            "BASE_URL": self.url,
            "VUS": str(a.vus),
            "DURATION": f"{a.duration}s",
            "USER_PREFIX": prefix,
            "CLEANUP": "false",
            "P99_MS": str(P99_TARGET_MS),
            "P95_MS": str(P99_TARGET_MS),
            "USERS": "100" if script == "increment" else "1000",
            **({"RATE": str(rate)} if rate else {}),
        }
        name = f"{label} (round {rnd}/{a.rounds}, {a.vus} VUs)"
        api0, worker0 = self._cpu()
        with self.progress.phase(name, a.duration):
            run = loads.run_k6(
                f"{script}.js",
                env,
                self.results / f"k6-{prefix}.json",
                self.results / f"k6-{prefix}.log",
                timeout_s=a.duration + 300,
            )
        api1, worker1 = self._cpu()
        result = loads.compact(run, TAGS[script], a.duration)
        wall = run.wall_s or 1.0
        result["cpu"] = {
            "api": (api1 - api0) / wall,
            "worker": (worker1 - worker0) / wall,
            "k6": run.k6_cpu_s / wall,
        }
        s = result["by_tag"][MAIN_TAG[script]]
        self.progress.say(
            f"{label}: {s['rps']:,.0f} req/s, p50 {s['p50_ms']:.2f} ms, p99 {s['p99_ms']:.2f} ms, "
            f"{s['errors']} errors; thresholds {'passed' if run.thresholds_ok else 'crossed'}"
        )
        if script != "healthz":
            self.drain_check(f"{label} round {rnd}", prefix, result["increments_acked"])
        return result

    def drain_check(self, label: str, prefix: str, acked: int) -> None:
        timeout = 30.0
        with self.progress.phase(f"drain check after {label}", 2):
            check = asyncio.run(checks.wait_drained(self.settings, prefix, acked, timeout))
        self.out["drain_checks"].append({"phase": label, **check.as_dict()})
        self.progress.say(
            f"drain check {label}: acked {check.acked}, MySQL {check.mysql}, Redis {check.redis}: "
            f"{'OK' if check.ok else 'MISMATCH'} ({check.seconds:.2f} s)"
        )

    def redis_phase(self) -> None:
        s = self.settings
        n = 20_000 if self.args.quick else 200_000
        keys = Keys(f"{s.key_prefix}-rb", s.buckets)
        user_id = 1
        counter_keys = [
            keys.counter(user_id),
            keys.gone(user_id),
            keys.absent(user_id),
            keys.dirty(keys.bucket(user_id)),
            keys.generation(keys.bucket(user_id)),
        ]

        async def prepare() -> None:
            redis = open_redis(s)
            try:
                await redis.set(counter_keys[0], 0)
                await LIBRARY.load(redis)
            finally:
                await redis.aclose()

        asyncio.run(prepare())
        fcall = [
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
        runs = [
            ("INCR", ["INCR", counter_keys[0]], 64),
            ("increment function (FCALL)", fcall, 64),
            ("INCR, pipelined 16 deep", ["-P", "16", "INCR", counter_keys[0]], 64),
        ]
        self.out["redis"] = []
        with self.progress.phase("redis-benchmark", 8):
            for label, argv, clients in runs:
                pipelined = argv[0] == "-P"
                extra = argv[:2] if pipelined else []
                command = argv[2:] if pipelined else argv
                b = loads.redis_benchmark(
                    s.redis_url, s.redis_password, label, [*extra, *command], clients, n
                )
                if b is None:
                    self.progress.say("redis-benchmark: not available, skipped")
                    break
                self.out["redis"].append(
                    {
                        "name": label,
                        "clients": clients,
                        "rps": b.rps,
                        "p50_ms": b.p50_ms,
                        "p99_ms": b.p99_ms,
                    }
                )

        async def clean() -> None:
            redis = open_redis(s)
            try:
                await redis.delete(*counter_keys)
            finally:
                await redis.aclose()

        asyncio.run(clean())

    def drain_rate_phase(self) -> None:
        assert self.worker is not None
        n = self.args.drain_users
        with self.progress.phase(f"drain rate ({n:,} dirty counters)", 15):
            self.worker.stop()
            asyncio.run(checks.make_backlog(self.settings, n, "drain"))
            started = time.monotonic()
            # Watched from the moment it is spawned (no settling pause as in _start_worker):
            # a worker that claims before the first look would be timed from its spawn.
            self.worker = stack.start_worker(self.settings, self.results / "worker.log")
            rate = asyncio.run(checks.time_drain(self.settings, n, "drain", started, 120))
            if not self.worker.alive():
                raise RuntimeError(f"the sync worker exited:\n{self.worker.tail()}")
        self.out["drain_rate"] = rate.as_dict()
        self.progress.say(
            f"drain rate: {rate.counters:,} counters in {rate.seconds_draining:.2f} s "
            f"({rate.per_second:,.0f}/s), MySQL {'OK' if rate.mysql_ok else 'MISMATCH'}"
        )

    def memory(self) -> None:
        assert self.api is not None
        assert self.worker is not None
        pids = stack.api_pids(self.api)
        peaks = {p: stack.memory_kb(p).get("VmHWM", 0) / 1024 for p in pids}
        supervisor = peaks.pop(self.api.proc.pid) if len(pids) > 1 else None
        self.out["rss"] = {
            "api_workers_mb": [round(v, 1) for v in peaks.values()] or [round(supervisor or 0, 1)],
            "api_supervisor_mb": round(supervisor, 1) if supervisor is not None else None,
            "worker_mb": round(stack.memory_kb(self.worker.proc.pid).get("VmHWM", 0) / 1024, 1),
        }

    def run_all(self) -> None:
        """The phases against the bench's API and worker, then, with those stopped, the
        phases that start servers of their own."""
        try:
            self.start()
            self.run()
        finally:
            self.stop()
        a = self.args
        if not a.no_baseline:
            self.out["baseline"] = baseline.run_phase(
                a, self.settings, self.results / "baseline", self.progress
            )
        if not a.no_mixed:
            self.out["mixed"] = mixed.run_phase(
                a, self.settings, self.results / "mixed", self.progress
            )

    def run(self) -> None:
        for rnd in range(1, self.args.rounds + 1):
            self.out["rounds"].append({p: self.k6_phase(p, rnd) for p in PHASES})
        # Latency below saturation: half the best closed-loop rate, as an arrival rate.
        best = max(r["increment"]["by_tag"]["op:increment"]["rps"] for r in self.out["rounds"])
        rate = max(100, int(best / 2 / 100) * 100)
        self.out["at_rate"] = {"rate": rate, **self.k6_phase("increment_rate", 1, rate)}
        self.memory()
        self.redis_phase()
        self.drain_rate_phase()


def summarize(out: dict[str, Any], args: argparse.Namespace) -> None:
    rounds = out["rounds"]
    best = {p: max(rounds, key=lambda r: r[p]["by_tag"][MAIN_TAG[p]]["rps"])[p] for p in PHASES}
    out["best"] = best
    out["round_ratios"] = [
        r["increment"]["by_tag"]["op:increment"]["rps"]
        / r["healthz"]["by_tag"]["scenario:healthz"]["rps"]
        for r in rounds
    ]
    out["cpu"] = {
        p: {
            k: round(statistics.fmean(r[p]["cpu"][k] for r in rounds), 2)
            for k in ("api", "worker", "k6")
        }
        for p in PHASES
    }
    inc = best["increment"]["by_tag"]["op:increment"]
    ceiling = best["healthz"]["by_tag"]["scenario:healthz"]["rps"]
    ratio = inc["rps"] / ceiling if ceiling else 0.0
    errors = sum(r[p]["by_tag"][MAIN_TAG[p]]["errors"] for r in rounds for p in PHASES)
    rss = max([*out["rss"]["api_workers_mb"], out["rss"]["api_supervisor_mb"] or 0])
    out["targets"] = [
        {
            "target": f"increment ≥ {RATIO_TARGET:.0%} of /healthz",
            "met": ratio >= RATIO_TARGET,
            "measured": f"{ratio:.0%} ({inc['rps']:,.0f} of {ceiling:,.0f} req/s)",
        },
        {
            "target": f"increment p99 < {P99_TARGET_MS:.0f} ms at {args.vus} VUs",
            "met": inc["p99_ms"] < P99_TARGET_MS,
            "measured": f"{inc['p99_ms']:.2f} ms",
        },
        {"target": "zero errors", "met": errors == 0, "measured": f"{errors} failed requests"},
        {
            "target": f"API process RSS < {RSS_TARGET_MB:.0f} MB",
            "met": rss < RSS_TARGET_MB,
            "measured": f"{rss:.1f} MB peak",
        },
        {
            "target": "MySQL = Redis = acknowledged increments",
            "met": all(d["ok"] for d in out["drain_checks"]),
            "measured": f"{len(out['drain_checks'])} checks",
        },
    ]


def not_exact(out: dict[str, Any]) -> list[dict[str, Any]]:
    """The checks of MySQL against the acknowledged increments that failed."""
    failed = [d for d in out["drain_checks"] if not d["ok"]]
    failed += [c for c in out.get("baseline", {}).get("checks", []) if not c["ok"]]
    if out.get("drain_rate") and not out["drain_rate"]["mysql_ok"]:
        failed.append(out["drain_rate"])
    return failed


def modes_settings(settings: Settings, args: argparse.Namespace) -> Settings:
    """MySQL as for the other phases, with a database and key prefix of its own."""
    return replace(
        settings,
        mysql_database=f"{args.database[:58]}_modes",
        key_prefix=f"{args.key_prefix[:26]}-modes",
    )


def latency_settings(settings: Settings, args: argparse.Namespace) -> Settings:
    """MySQL as for the other phases, with a database and key prefix of its own."""
    return replace(
        settings,
        mysql_database=f"{args.database[:56]}_latency",
        key_prefix=f"{args.key_prefix[:24]}-latency",
    )


def versions(settings: Settings) -> dict[str, str]:
    async def servers() -> tuple[str, str]:
        import asyncmy

        conn = await asyncmy.connect(**mysql_kwargs(settings))
        try:
            async with conn.cursor() as cur:
                await cur.execute("SELECT VERSION()")
                mysql = str((await cur.fetchone())[0])
        finally:
            conn.close()
        redis = open_redis(settings)
        try:
            info = await redis.info("server")
        finally:
            await redis.aclose()
        return mysql, str(info.get("redis_version", "?"))

    mysql, redis = asyncio.run(servers())
    kind = "MariaDB" if "mariadb" in mysql.lower() else "MySQL"
    return {
        "mariadb": f"{kind} {mysql.split('-')[0]}",
        "redis": redis,
        "k6": report.tool_version([loads.k6_binary(), "version"]).split(" (")[0],
    }


def side_by_side_phases(
    args: argparse.Namespace,
    settings: Settings,
    results: Path,
    ver: dict[str, str],
    progress: loads.Progress,
) -> list[dict[str, Any]]:
    """The phases that compare variants on one pinned API process, each with a database
    and servers of its own; returns their exactness checks that failed."""
    failed: list[dict[str, Any]] = []
    if not args.no_latency:
        try:
            out = latency.run_phase(
                args, latency_settings(settings, args), results / "latency", ver, progress
            )
        except (RuntimeError, TimeoutError, OSError) as e:
            raise RuntimeError(f"the latency phase failed: {e}") from e
        failed += [c for c in out["checks"] if not c["ok"]]
    if not args.no_redis_modes:
        try:
            out = redis_modes.run_phase(
                args, modes_settings(settings, args), results / "redis-modes", ver, progress
            )
        except (RuntimeError, TimeoutError, OSError) as e:
            raise RuntimeError(f"the Redis modes phase failed: {e}") from e
        failed += [c for c in out["checks"] if not c["ok"]]
    return failed


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = bench_settings(args)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results = ROOT / "bench-results" / stamp
    results.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any]
    try:
        ver = versions(settings)
    except Exception as e:
        print(f"bench: MySQL or Redis does not answer ({e}); try `make services`", file=sys.stderr)
        return 2
    load_before = report.load_average()
    bench = Bench(args, settings, results)
    bench.progress.say(
        f"{args.rounds} round(s) x {len(PHASES)} phases x {args.duration} s at {args.vus} VUs; "
        f"results in {results.relative_to(ROOT)}; load average {load_before}"
    )
    try:
        bench.run_all()
    except (RuntimeError, TimeoutError, OSError) as e:
        print(f"bench: failed: {e}", file=sys.stderr)
        return 1
    out = bench.out
    out.update(
        when=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        machine=report.machine(),
        versions=ver,
        config={
            "vus": args.vus,
            "duration_s": args.duration,
            "workers": args.workers,
            "rounds": args.rounds,
            "drain_users": args.drain_users,
            "baseline_duration_s": None if args.no_baseline else args.baseline_duration,
            "mixed_vus": None if args.no_mixed else args.mixed_vus,
            "api_env": args.api_env,
        },
        load_before=load_before,
        load_after=report.load_average(),
        results_dir=str(results.relative_to(ROOT)),
    )
    summarize(out, args)
    (results / "results.json").write_text(json.dumps(out, indent=1))
    if not args.no_report:
        latest = ROOT / "docs" / "bench" / "latest.json"
        latest.parent.mkdir(parents=True, exist_ok=True)
        latest.write_text(json.dumps(out, indent=1) + "\n")
        report.replace_section(
            ROOT / "docs" / "benchmarks.md", "bench", report.render(out), report.SKELETON
        )
    for t in out["targets"]:
        bench.progress.say(
            f"target {t['target']}: {t['measured']} — {'met' if t['met'] else 'MISSED'}"
        )
    mismatches = not_exact(out)
    try:
        mismatches += side_by_side_phases(args, settings, results, ver, bench.progress)
    except (RuntimeError, TimeoutError, OSError) as e:
        print(f"bench: {e}", file=sys.stderr)
        return 1
    if mismatches:
        print(
            f"bench: FAILED: MySQL does not match the acknowledged increments: {mismatches}",
            file=sys.stderr,
        )
        return 1
    bench.progress.say("done" + ("" if args.no_report else "; wrote docs/benchmarks.md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
