"""Mixed load the way existing clients drive the service: `k6/mixed.js` (per iteration
create, increment, count, delete, then a think time) ramping to `--mixed-vus` VUs,
against the API and the sync worker as `make run` starts them: one process each, every
setting at its default, nothing pinned. A phase of `make bench` (bench/run.py).

What it reports: per operation the requests, the failed ones and p50/p95/p99; every error
code that came back, by operation, as the JSON answers named it (from the lines
`k6/mixed.js` writes to its console output); the iterations whose four requests all
succeeded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench import loads, stack
from counter_svc.settings import Settings

OPS = ("create", "increment", "count", "delete")


def stages(args: argparse.Namespace) -> dict[str, int]:
    """Seconds of each stage of the ramp."""
    return {"ramp_up": args.mixed_ramp, "hold": args.mixed_hold, "ramp_down": args.mixed_down}


def estimate_s(args: argparse.Namespace) -> float:
    return float(sum(stages(args).values()) + 15)


def error_codes(console: Path) -> list[dict[str, Any]]:
    """The failed requests k6/mixed.js logged, counted by operation, status and code."""
    tally: Counter[tuple[str, int, str]] = Counter()
    if console.is_file():
        for line in console.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(json.loads(line)["msg"])["mixed_error"]
            except (ValueError, KeyError, TypeError):
                continue  # another console line (none are written today)
            tally[(str(entry["op"]), int(entry["status"]), str(entry["code"]))] += 1
    return [
        {"op": op, "status": status, "code": code, "count": n}
        for (op, status, code), n in sorted(tally.items(), key=lambda kv: (-kv[1], kv[0]))
    ]


def run_phase(
    args: argparse.Namespace, base: Settings, results: Path, progress: loads.Progress
) -> dict[str, Any]:
    """One run of k6/mixed.js against a fresh API and worker; `base` gives MySQL and
    Redis, with a database and key prefix of the phase's own."""
    results.mkdir(parents=True, exist_ok=True)
    settings = replace(
        base,
        mysql_database=f"{base.mysql_database[:50]}_mixed",
        key_prefix=f"{base.key_prefix[:24]}-mixed",
    )
    asyncio.run(stack.reset(settings))
    worker = stack.start_worker(settings, results / "worker.log")
    api: stack.Child | None = None
    st = stages(args)
    seconds = sum(st.values())
    try:
        # WEB_CONCURRENCY=1 and no other setting: the defaults `make run` starts with.
        api, url = stack.start_api(settings, results / "api.log", 1)
        if not worker.alive():
            raise RuntimeError(f"the sync worker exited at once:\n{worker.tail()}")
        env = {
            "BASE_URL": url,
            "VUS": str(args.mixed_vus),
            "RAMP_UP": f"{st['ramp_up']}s",
            "HOLD": f"{st['hold']}s",
            "RAMP_DOWN": f"{st['ramp_down']}s",
            "SLEEP": str(args.mixed_sleep),
            "USER_PREFIX": "mixed",
        }
        console = results / "k6-mixed-console.jsonl"
        name = f"mixed load, 0 to {args.mixed_vus} VUs, {args.mixed_sleep:g} s think time"
        cpu0 = stack.cpu_seconds(api.proc.pid), stack.cpu_seconds(worker.proc.pid)
        with progress.phase(name, seconds):
            run = loads.run_k6(
                "mixed.js",
                env,
                results / "k6-mixed.json",
                results / "k6-mixed.log",
                timeout_s=seconds + 300,
                options=["--log-format=json", f"--console-output={console}"],
            )
        wall = run.wall_s or 1.0
        cpu = {  # cores busy, on average over the whole k6 run
            "api": (stack.cpu_seconds(api.proc.pid) - cpu0[0]) / wall,
            "worker": (stack.cpu_seconds(worker.proc.pid) - cpu0[1]) / wall,
            "k6": run.k6_cpu_s / wall,
        }
    finally:
        if api is not None:
            api.stop()
        worker.stop()
        if not args.keep:
            asyncio.run(stack.drop(settings))
    out = summarize(run, args, error_codes(console))
    out["cpu"] = {k: round(v, 2) for k, v in cpu.items()}
    total = out["by_op"]["all"]
    progress.say(
        f"mixed load: {total['requests']:,} requests, {total['errors']:,} failed "
        f"({total['error_rate']:.2%}); "
        + ", ".join(
            f"{op} p95 {out['by_op'][op]['p95_ms']:.1f} / p99 {out['by_op'][op]['p99_ms']:.1f} ms"
            for op in OPS
        )
    )
    return out


def summarize(
    run: loads.K6Run, args: argparse.Namespace, codes: list[dict[str, Any]]
) -> dict[str, Any]:
    seconds = sum(stages(args).values())
    by_op = {op: loads.stats(run, f"op:{op}", seconds).as_dict() for op in OPS}
    by_op["all"] = loads.stats(run, "scenario:mixed", seconds).as_dict()
    metrics = run.summary["metrics"]
    checks = metrics.get("checks", {}).get("values", {})
    return {
        "config": {
            "vus": args.mixed_vus,
            "sleep_s": args.mixed_sleep,
            "stages_s": stages(args),
            "api": "one process (WEB_CONCURRENCY=1), every setting at its default, not pinned",
        },
        "by_op": by_op,
        "error_codes": codes,
        # Failed requests k6 counted against the lines it logged: equal unless lines are lost.
        "codes_logged": sum(c["count"] for c in codes),
        "iterations": loads.counter(run, "iterations"),
        "lifecycles_completed": loads.counter(run, "lifecycles_completed"),
        "checks_failed": int(checks.get("fails", 0)),
        "vus_max": int(metrics.get("vus", {}).get("values", {}).get("max", 0)),
    }
