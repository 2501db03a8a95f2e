"""The increment's tail and its CPU cost: one pinned API process, the sync worker running.

    python -m bench.latency [--duration 20] [--vus 64] [--quick] [--no-report]

`make bench` runs it as a phase (bench/run.py); alone it writes only its own section of
docs/benchmarks.md and docs/bench/latency.json. One API process (WEB_CONCURRENCY=1) pinned
to one core with `taskset`, k6 pinned to the other, so that the figures are the
service's and not the load generator's; the sync worker, Redis and MariaDB run wherever
the kernel puts them, as they would beside an API pod.

In one run, on one API process:
1. `/healthz` and increments as fast as `--vus` closed-loop VUs go: the capacity of the
   process, the increment's share of `/healthz`, and the API's CPU time per request (the
   process's user + system time over the requests it answered).
2. Increments at half that capacity as a constant arrival rate over 1,000 users, while the
   sync worker drains the same users: p50, p99, p99.9 and the maximum; then the same
   with the worker stopped (SIGSTOP) for the run: what is left of the tail without any
   drain, so the difference is what the drain costs the API's tail.
After each run MySQL and Redis must hold exactly the increments k6 saw acknowledged.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench import checks, loads, report, stack
from bench.stack import Pinning
from counter_svc.settings import Settings, load_config

ROOT = stack.ROOT
REPORT = ROOT / "docs" / "benchmarks.md"
RESULTS_JSON = ROOT / "docs" / "bench" / "latency.json"
SECTION = "latency"
USERS = 1000
# The targets: the increment's p99 at half its capacity, its CPU and its share of /healthz.
P99_TARGET_MS = 10.0
CPU_TARGET_MS = 0.120
RATIO_TARGET = 0.70
# Worker variants at the fixed rate: key, label, environment, stopped for the run.
WORKERS: tuple[tuple[str, str, dict[str, str], bool], ...] = (
    ("running", "worker running, draining the same users", {}, False),
    ("stopped", "worker stopped (SIGSTOP) for the run", {}, True),
)


def estimate_s(args: argparse.Namespace) -> float:
    return float((2 + len(WORKERS)) * (args.duration + 8) + 15)


class LatencyBench:
    def __init__(
        self,
        args: argparse.Namespace,
        settings: Settings,
        results: Path,
        progress: loads.Progress | None = None,
    ) -> None:
        self.args = args
        self.settings = settings
        self.results = results
        self.pinning = Pinning.choose()
        self.progress = progress or loads.Progress(estimate_s(args))
        self.api: stack.Child | None = None
        self.url = ""

    def _api_cpu(self) -> float:
        assert self.api is not None
        return stack.api_cpu_seconds(self.api)

    def k6(self, script: str, tag: str, rate: int = 0) -> tuple[loads.K6Run, float]:
        """One k6 run pinned to its core; the API's CPU seconds per second of load.

        The API's CPU time is sampled every 0.1 s; the rate is taken over the middle 80 %
        of the last `duration` seconds before k6 exits, so k6's set-up (it creates the
        users through the API) and its start and stop stay out of the figure."""
        a = self.args
        env = {
            "BASE_URL": self.url,
            "VUS": str(a.vus),
            "DURATION": f"{a.duration}s",
            "USER_PREFIX": tag,
            "CLEANUP": "false",
            "USERS": str(USERS),
            **({"RATE": str(rate)} if rate else {}),
        }
        samples: list[tuple[float, float]] = []
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.1):
                samples.append((time.monotonic(), self._api_cpu()))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            run = loads.run_k6(
                f"{script}.js",
                env,
                self.results / f"k6-{tag}.json",
                self.results / f"k6-{tag}.log",
                timeout_s=a.duration + 300,
                prefix=self.pinning.prefix(self.pinning.k6_cpu),
            )
        finally:
            ended = time.monotonic()
            done.set()
            sampler.join()
        start, end = ended - 0.9 * a.duration, ended - 0.1 * a.duration
        window = [(t, c) for t, c in samples if start <= t <= end]
        if len(window) < 2:
            return run, 0.0
        (t0, c0), (t1, c1) = window[0], window[-1]
        return run, (c1 - c0) / (t1 - t0)

    def closed(self, script: str, tag_name: str) -> dict[str, Any]:
        with self.progress.phase(
            f"{script} at {self.args.vus} VUs, one pinned API", self.args.duration
        ):
            run, cpu = self.k6(script, f"lat-{script}")
        s = loads.stats(run, tag_name, self.args.duration).as_dict()
        s["api_cpu_ms_per_req"] = round(1000 * cpu / s["rps"], 4) if s["rps"] else 0.0
        s["api_cpu_share"] = round(cpu, 3)
        self.progress.say(
            f"{script}: {s['rps']:,.0f} req/s, p99 {s['p99_ms']:.2f} ms, "
            f"API {1000 * s['api_cpu_ms_per_req']:.0f} µs CPU/request"
        )
        if script == "increment":
            self.check(f"lat-{script}", loads.counter(run, "increments_acked"), s, drain=True)
        return s

    def at_rate(
        self, key: str, label: str, env: dict[str, str], stop: bool, rate: int
    ) -> dict[str, Any]:
        """Increments at `rate` with a fresh worker of one variant (stopped if `stop`)."""
        worker = stack.start_worker(self.settings, self.results / f"worker-{key}.log", env)
        tag = f"lat-{key}"
        try:
            time.sleep(1.0)
            if not worker.alive():
                raise RuntimeError(f"the sync worker exited at once:\n{worker.tail()}")
            cpu_w0 = stack.cpu_seconds(worker.proc.pid)
            if stop:
                os.kill(worker.proc.pid, signal.SIGSTOP)
            try:
                with self.progress.phase(f"increments at {rate:,}/s, {label}", self.args.duration):
                    run, cpu = self.k6("increment", tag, rate)
            finally:
                if stop:
                    os.kill(worker.proc.pid, signal.SIGCONT)
            worker_cpu = stack.cpu_seconds(worker.proc.pid) - cpu_w0
            s = loads.stats(run, "op:increment", self.args.duration).as_dict()
            s["api_cpu_ms_per_req"] = round(1000 * cpu / s["rps"], 4) if s["rps"] else 0.0
            s["api_cpu_share"] = round(cpu, 3)
            s["worker_cpu_share"] = round(worker_cpu / (run.wall_s or 1.0), 3)
            self.check(tag, loads.counter(run, "increments_acked"), s)
        finally:
            worker.stop()
        self.progress.say(
            f"{label}: {s['rps']:,.0f} req/s, p50 {s['p50_ms']:.2f}, p99 {s['p99_ms']:.2f}, "
            f"p99.9 {s['p999_ms']:.2f}, max {s['max_ms']:.1f} ms, {s['errors']} errors"
        )
        return {"key": key, "label": label, **s}

    def check(self, prefix: str, acked: int, into: dict[str, Any], drain: bool = False) -> None:
        """MySQL and Redis hold exactly what k6 saw acknowledged, once a worker drained it:
        the run's own, or with `drain` one started for the check."""
        worker = (
            stack.start_worker(self.settings, self.results / "worker-check.log") if drain else None
        )
        try:
            check = asyncio.run(checks.wait_drained(self.settings, prefix, acked, 30.0))
        finally:
            if worker is not None:
                worker.stop()
        into["check"] = check.as_dict()
        if not check.ok:
            self.progress.say(
                f"{prefix}: MISMATCH acked {check.acked}, MySQL {check.mysql}, Redis {check.redis}"
            )

    def run(self) -> dict[str, Any]:
        asyncio.run(stack.reset(self.settings))
        serve = [sys.executable, "-m", "counter_svc", "serve"]
        self.progress.say(f"latency: one API process; {self.pinning.describe()}")
        self.api, self.url = stack.start_api(
            self.settings,
            self.results / "api.log",
            1,
            argv=[*self.pinning.prefix(self.pinning.api_cpu), *serve],
        )
        try:
            healthz = self.closed("healthz", "scenario:healthz")
            increment = self.closed("increment", "op:increment")
            rate = max(100, int(increment["rps"] / 2 / 100) * 100)
            runs = [self.at_rate(k, label, env, stop, rate) for k, label, env, stop in WORKERS]
        finally:
            self.api.stop()
            if not self.args.keep:
                asyncio.run(stack.drop(self.settings))
        return summarize(healthz, increment, rate, runs, self.pinning)


def summarize(
    healthz: dict[str, Any],
    increment: dict[str, Any],
    rate: int,
    runs: list[dict[str, Any]],
    pinning: Pinning,
) -> dict[str, Any]:
    ratio = increment["rps"] / healthz["rps"] if healthz["rps"] else 0.0
    shipped = runs[0]
    cpu = increment["api_cpu_ms_per_req"]
    return {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "pinning": {
            "api_cpu": pinning.api_cpu,
            "k6_cpu": pinning.k6_cpu,
            "text": pinning.describe(),
        },
        "healthz": healthz,
        "increment": increment,
        "rate": rate,
        "at_rate": runs,
        "targets": [
            {
                "target": f"increment p99 ≤ {P99_TARGET_MS:.0f} ms at half the capacity, "
                "worker running",
                "met": shipped["p99_ms"] <= P99_TARGET_MS,
                "measured": f"{shipped['p99_ms']:.2f} ms at {rate:,}/s (p99.9 "
                f"{shipped['p999_ms']:.2f} ms, max {shipped['max_ms']:.1f} ms)",
            },
            {
                "target": f"API CPU per increment ≤ {1000 * CPU_TARGET_MS:.0f} µs",
                "met": 0 < cpu <= CPU_TARGET_MS,
                "measured": f"{1000 * cpu:.0f} µs (/healthz: "
                f"{1000 * healthz['api_cpu_ms_per_req']:.0f} µs)",
            },
            {
                "target": f"increment ≥ {RATIO_TARGET:.2f} of /healthz of the same process",
                "met": ratio >= RATIO_TARGET,
                "measured": f"{ratio:.2f} ({increment['rps']:,.0f} of {healthz['rps']:,.0f} req/s)",
            },
        ],
        "checks": [
            {"run": r.get("key", name), **r["check"]}
            for name, r in (("increment", increment), *((x["key"], x) for x in runs))
        ],
    }


def render(r: dict[str, Any]) -> str:
    m, v = r["machine"], r["versions"]
    h, i = r["healthz"], r["increment"]
    lines = [
        f"#### Latest run: {r['when']}",
        "",
        f"`{r.get('command', 'make bench')}` on {m['cpu']}, {m['cores']} cores; Redis "
        f"{v['redis']}, {v['mariadb']}, {v['k6']}. One API process, {r['pinning']['text']}; "
        f"the sync worker, Redis and MariaDB unpinned. {r['config']['vus']} VUs, "
        f"{r['config']['duration_s']} s per run, {USERS:,} users. Load average before: "
        f"{r['load_before']}, after: {r['load_after']}.",
        "",
        "| closed loop | req/s | p50 ms | p99 ms | API CPU µs/request |",
        "|---|---:|---:|---:|---:|",
        f"| `/healthz` | {h['rps']:,.0f} | {h['p50_ms']:.2f} | {h['p99_ms']:.2f} "
        f"| {1000 * h['api_cpu_ms_per_req']:.0f} |",
        f"| increment | {i['rps']:,.0f} | {i['p50_ms']:.2f} | {i['p99_ms']:.2f} "
        f"| {1000 * i['api_cpu_ms_per_req']:.0f} |",
        "",
        f"Increments at {r['rate']:,}/s (half the closed-loop rate, constant arrival rate):",
        "",
        "| sync worker | req/s | p50 ms | p99 ms | p99.9 ms | max ms | errors "
        "| API CPU µs/increment | worker CPU (share of a core) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for x in r["at_rate"]:
        lines.append(
            f"| {x['label']} | {x['rps']:,.0f} | {x['p50_ms']:.2f} | {x['p99_ms']:.2f} "
            f"| {x['p999_ms']:.2f} | {x['max_ms']:.1f} | {x['errors']} "
            f"| {1000 * x['api_cpu_ms_per_req']:.0f} | {x['worker_cpu_share']:.2f} |"
        )
    lines += ["", "| target | measured | |", "|---|---|---|"]
    for t in r["targets"]:
        lines.append(f"| {t['target']} | {t['measured']} | {'met' if t['met'] else '**missed**'} |")
    ok = all(c["ok"] for c in r["checks"])
    lines += [
        "",
        f"Nothing lost: after each of the {len(r['checks'])} increment runs MySQL and Redis "
        "held exactly the increments k6 saw acknowledged: "
        + ("all OK." if ok else "**MISMATCH** (see `docs/bench/latency.json`)."),
        "",
        f"Raw k6 summaries and logs: `{r['results_dir']}` (not committed); the numbers above: "
        "`docs/bench/latency.json`.",
    ]
    return "\n".join(lines)


def run_phase(
    args: argparse.Namespace,
    settings: Settings,
    results: Path,
    versions: dict[str, str],
    progress: loads.Progress | None = None,
    command: str = "make bench",
) -> dict[str, Any]:
    """The whole phase (what `make bench` calls); writes the report unless `no_report`."""
    results.mkdir(parents=True, exist_ok=True)
    load_before = report.load_average()
    bench = LatencyBench(args, settings, results, progress)
    out = bench.run()
    out.update(
        config={"vus": args.vus, "duration_s": args.duration},
        machine=report.machine(),
        versions=versions,
        load_before=load_before,
        load_after=report.load_average(),
        results_dir=str(results.relative_to(ROOT)),
        command=command,
    )
    (results / "latency.json").write_text(json.dumps(out, indent=1))
    if not args.no_report:
        RESULTS_JSON.parent.mkdir(parents=True, exist_ok=True)
        RESULTS_JSON.write_text(json.dumps(out, indent=1) + "\n")
        report.replace_section(REPORT, SECTION, render(out), report.SKELETON)
    for t in out["targets"]:
        bench.progress.say(
            f"target {t['target']}: {t['measured']} — {'met' if t['met'] else 'MISSED'}"
        )
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(
        prog="python -m bench.latency", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--duration", type=int, default=int(env("BENCH_DURATION", "20")))
    p.add_argument("--vus", type=int, default=int(env("BENCH_VUS", "64")))
    p.add_argument("--database", default="usercounter_bench_latency")
    p.add_argument("--key-prefix", default="uclatency")
    p.add_argument("--quick", action="store_true", help="3 s runs")
    p.add_argument("--no-report", action="store_true", help="do not rewrite docs/benchmarks.md")
    p.add_argument("--keep", action="store_true", help="keep the database at the end")
    args = p.parse_args(argv)
    if args.quick:
        args.duration = 3
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = replace(
        Settings.from_env(load_config()), mysql_database=args.database, key_prefix=args.key_prefix
    )
    results = ROOT / "bench-results" / ("latency-" + time.strftime("%Y%m%d-%H%M%S"))
    from bench.run import versions  # bench.run imports this module

    try:
        command = " ".join(["python -m bench.latency", *(argv or sys.argv[1:])])
        out = run_phase(args, settings, results, versions(settings), command=command)
    except (RuntimeError, TimeoutError, OSError) as e:
        print(f"bench.latency: failed: {e}", file=sys.stderr)
        return 1
    if not all(c["ok"] for c in out["checks"]):
        print("bench.latency: FAILED: MySQL does not match the acknowledged increments")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
