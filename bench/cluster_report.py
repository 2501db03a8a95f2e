"""The Redis Cluster section of docs/benchmarks.md, from the results of
bench/redis_cluster.py (also kept in docs/bench/redis-cluster.json)."""

from __future__ import annotations

import json
import statistics
import time
from typing import Any

from bench import report, stack

REPORT = stack.ROOT / "docs" / "benchmarks.md"
RESULTS_JSON = stack.ROOT / "docs" / "bench" / "redis-cluster.json"
SECTION = "redis-cluster"
# The target: the busiest primary serves at most 20 % more than the idlest.
SPREAD_TARGET = 1.20
# Cluster sizes the per-primary cost is projected to.
PROJECTED = (3, 6, 10)


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def _variant_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("rps", "p50_ms", "p99_ms", "api_cpu_ms_per_req")
    shards = []
    for i, first in enumerate(runs[0]["shards"]):
        mine = [r["shards"][i] for r in runs]
        shards.append(
            {
                **{k: first[k] for k in ("name", "address", "slots", "buckets", "users")},
                **{
                    k: round(_median([x[k] for x in mine]), 3)
                    for k in ("ops_per_s", "cores", "cpu_us_per_increment")
                },
                "fcalls_per_increment": round(
                    sum(x["fcalls"] for x in mine) / max(1, sum(x["increments"] for x in mine)), 3
                ),
                "fcalls_per_read": round(
                    sum(x["fcalls"] for x in mine) / max(1, sum(x["reads"] for x in mine)), 2
                ),
            }
        )
    replicas = [r["replicas_cpu_us_per_increment"] for r in runs]
    return {
        **{k: round(_median([r["stats"][k] for r in runs]), 4) for k in keys},
        "errors": sum(r["stats"]["errors"] for r in runs),
        "requests": sum(r["stats"]["requests"] for r in runs),
        "rounds_rps": [r["stats"]["rps"] for r in runs],
        "shards": shards,
        "rounds_spread": [r["spread"] for r in runs],
        "replicas_cpu_us_per_increment": (
            round(_median(replicas), 2) if all(x is not None for x in replicas) else None
        ),
    }


def summarize(
    runs: list[dict[str, Any]],
    config: dict[str, Any],
    labels: dict[str, str],
    pinning: stack.Pinning,
    idle: dict[str, float],
    benchmarked: dict[str, dict[str, float]],
) -> dict[str, Any]:
    """The results of the runs (single server and cluster, by round), the servers' idle
    CPU per second and their redis-benchmark figures, summed up and projected."""
    by = {v: _variant_summary([r for r in runs if r["variant"] == v]) for v in labels}
    cluster, single = by["cluster"], by["single"]
    worst = max(cluster["rounds_spread"])
    api_ms = cluster["api_cpu_ms_per_req"]
    # The costliest primary bounds a cluster whose buckets spread evenly.
    loaded = max(x["cpu_us_per_increment"] for x in cluster["shards"])
    projection = {"under_load": project(loaded, api_ms)}
    if benchmarked:
        alone = max(benchmarked[x["address"]]["cpu_us_per_call"] for x in cluster["shards"])
        projection["benchmarked"] = project(alone, api_ms)
    return {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "labels": labels,
        "config": config,
        "pinning": {
            "api_cpu": pinning.api_cpu,
            "k6_cpu": pinning.k6_cpu,
            "text": pinning.describe(),
        },
        "idle_cpu_per_s": idle,
        "variants": by,
        "spread": {
            "median": round(_median(cluster["rounds_spread"]), 3),
            "worst": worst,
            "target": f"max/min of the primaries' increments/s at most {SPREAD_TARGET:.2f}",
            "met": 0 < worst <= SPREAD_TARGET,
        },
        "client_cost": round(cluster["api_cpu_ms_per_req"] / single["api_cpu_ms_per_req"], 3)
        if single["api_cpu_ms_per_req"]
        else None,
        "benchmarked": benchmarked,
        "projection": projection,
        "checks": [{"variant": r["variant"], "round": r["round"], **r["check"]} for r in runs],
        "runs": runs,
    }


def project(cpu_us: float, api_ms: float) -> dict[str, Any]:
    """What N primaries with a core each carry at `cpu_us` of CPU per increment, and the
    API cores (at `api_ms` per increment) it takes to send it."""
    per_primary = 1e6 / cpu_us if cpu_us else 0.0
    return {
        "cpu_us_per_increment": cpu_us,
        "per_primary": round(per_primary),
        "sizes": [
            {
                "primaries": n,
                "increments_per_s": round(n * per_primary),
                "api_cores": round(n * per_primary * api_ms / 1000, 1),
            }
            for n in PROJECTED
        ],
    }


def render(r: dict[str, Any]) -> str:
    """The generated part of the Redis Cluster section of docs/benchmarks.md."""
    cfg, m, v = r["config"], r["machine"], r["versions"]
    lines = [
        f"#### Latest run: {r['when']}",
        "",
        f"`{r.get('command', 'make bench')}` on {m['cpu']}, {m['cores']} cores, {m['os']}; "
        f"Redis {v['redis']}, {v['mariadb']}, {v['k6']}. One API process (WEB_CONCURRENCY=1), "
        f"{r['pinning']['text']}; the sync worker, the seven Redis servers and MariaDB "
        f"unpinned. {cfg['vus']} VUs for {cfg['duration_s']} s per run over "
        f"{cfg['users_per_bucket']} users in each bucket, {cfg['rounds']} interleaved "
        "round(s) of single server and cluster; each figure is the median of the rounds. "
        f"Load average before: {r['load_before']}, after: {r['load_after']}.",
        "",
        f"On this {m['cores']}-core machine every process shares the same cores, so these runs "
        "show how the work spreads over the shards and what cluster mode costs the client, "
        "not the scale-out itself; that is computed from the per-primary cost below.",
        "",
        *_variants_table(r),
        "",
        *_servers_table(r),
        "",
        *_spread_and_cost(r),
        "",
        *_projection(r),
        "",
        f"Nothing lost: after each of the {len(r['checks'])} runs MySQL held exactly the "
        "increments k6 saw acknowledged, and so did Redis: "
        + (
            "all OK."
            if all(c["ok"] for c in r["checks"])
            else "**MISMATCH** (see `docs/bench/redis-cluster.json`)."
        ),
        "",
        f"Raw k6 summaries and logs: `{r['results_dir']}` (not committed); the numbers above: "
        "`docs/bench/redis-cluster.json`.",
    ]
    return "\n".join(lines)


def _variants_table(r: dict[str, Any]) -> list[str]:
    lines = [
        "| variant | increment req/s | p50 ms | p99 ms | errors | API CPU ms/increment "
        "| Redis CPU µs/increment, each primary |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key in r["labels"]:
        s = r["variants"][key]
        redis_us = " / ".join(f"{x['cpu_us_per_increment']:.1f}" for x in s["shards"])
        lines.append(
            f"| {r['labels'][key]} | {s['rps']:,.0f} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} "
            f"| {s['errors']} | {s['api_cpu_ms_per_req']:.3f} | {redis_us} |"
        )
    return lines


def _servers_table(r: dict[str, Any]) -> list[str]:
    lines = [
        "Each server during the runs (CPU from INFO cpu over the k6 run; increments are "
        "MySQL's after the drain; FCALLs include the sync worker's; a read is one batch of "
        "commands from a socket), and each alone under redis-benchmark (the increment "
        "function at 64 connections, one call per read, with no API or worker running):",
        "",
        "| server | slots | buckets | users | increments/s | share | FCALL/increment "
        "| FCALL/read | cores busy | CPU µs/increment | redis-benchmark calls/s "
        "| CPU µs/call |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key in ("cluster", "single"):
        shards = r["variants"][key]["shards"]
        total = sum(x["ops_per_s"] for x in shards) or 1
        for x in shards:
            alone = r["benchmarked"].get(x["address"])
            benchmarked = (
                f"{alone['calls_per_s']:,.0f} | {alone['cpu_us_per_call']:.1f}" if alone else " | "
            )
            lines.append(
                f"| {x['name']} ({x['address']}) | {x['slots']:,} | {x['buckets']} "
                f"| {x['users']} | {x['ops_per_s']:,.0f} | {x['ops_per_s'] / total:.1%} "
                f"| {x['fcalls_per_increment']:.2f} | {x['fcalls_per_read']:.1f} "
                f"| {x['cores']:.2f} | {x['cpu_us_per_increment']:.1f} | {benchmarked} |"
            )
    idle = [1000 * x for x in r["idle_cpu_per_s"].values()]
    lines += [
        "",
        f"With no client at all, each server used {min(idle):.1f}-{max(idle):.1f} ms of CPU "
        "per second (cron, and the cluster bus for the cluster's nodes), counted in the "
        "figures above.",
    ]
    return lines


def _spread_and_cost(r: dict[str, Any]) -> list[str]:
    single, cluster = r["variants"]["single"], r["variants"]["cluster"]
    spread = r["spread"]
    rounds = ", ".join(f"{x:.2f}" for x in cluster["rounds_spread"])
    every = "; ".join(
        f"{r['labels'][k]} {', '.join(f'{x:,.0f}' for x in r['variants'][k]['rounds_rps'])}"
        for k in r["labels"]
    )
    replicas = cluster["replicas_cpu_us_per_increment"]
    return [
        f"Spread: the busiest primary served **{spread['median']:.2f} times** the increments/s "
        f"of the idlest (median of the rounds; round by round {rounds}). Target: "
        f"{spread['target']}: worst round {spread['worst']:.2f}, "
        f"**{'met' if spread['met'] else 'missed'}**.",
        "",
        f"Client cost: the API spent {cluster['api_cpu_ms_per_req']:.3f} ms of CPU per "
        f"increment in cluster mode against {single['api_cpu_ms_per_req']:.3f} ms with a "
        f"single server (**{r['client_cost']:.2f} times**: the calls of a tick go out as one "
        "pipeline per node). The replicas "
        + (
            f"spent {replicas:.1f} µs of CPU per increment between them, applying the stream."
            if replicas is not None
            else "were not measured."
        )
        + f" Every round (req/s): {every}.",
    ]


def _projection(r: dict[str, Any]) -> list[str]:
    proj = r["projection"]
    loaded, alone = proj["under_load"], proj.get("benchmarked")
    api_ms = r["variants"]["cluster"]["api_cpu_ms_per_req"]
    text = (
        f"Scale-out, computed: one core per primary carries 1 / (CPU per increment). During "
        f"the runs the costliest primary spent {loaded['cpu_us_per_increment']:.1f} µs per "
        f"increment, about {loaded['per_primary']:,} increments/s per core: an upper bound "
        "of the cost, since at this load each read brings only a call or two, and the work "
        "per read (waking up, reading, replying) dominates."
    )
    if alone:
        text += (
            " Kept busy by redis-benchmark, the costliest primary spent "
            f"{alone['cpu_us_per_increment']:.1f} µs per call, about "
            f"{alone['per_primary']:,} increments/s per core (still one call per read; the "
            "sync worker's share not included)."
        )
    head = "| primaries | increments/s (runs' cost) | API cores |"
    rule = "|---:|---:|---:|"
    if alone:
        head += " increments/s (redis-benchmark's cost) | API cores |"
        rule += "---:|---:|"
    lines = [text, "", head, rule]
    for i, x in enumerate(loaded["sizes"]):
        row = f"| {x['primaries']} | {x['increments_per_s']:,} | {x['api_cores']:.1f} |"
        if alone:
            y = alone["sizes"][i]
            row += f" {y['increments_per_s']:,} | {y['api_cores']:.1f} |"
        lines.append(row)
    lines += [
        "",
        f"API cores: what it takes to send that many increments at the {api_ms:.3f} ms of API "
        "CPU per increment measured in cluster mode above. Long before Redis, the API tier "
        "bounds the rate; it scales by processes and pods.",
    ]
    return lines


def write_report(out: dict[str, Any]) -> None:
    RESULTS_JSON.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_JSON.write_text(json.dumps(out, indent=1) + "\n")
    report.replace_section(REPORT, SECTION, render(out), report.SKELETON)
