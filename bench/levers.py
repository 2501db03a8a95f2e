"""Side-by-side runs of API variants, for the levers section of docs/benchmarks.md.

    python -m bench.levers --name "pool size" \\
        --variant "64=." --variant "16=.;REDIS_POOL_SIZE=16" [--rounds 3] [--duration 10]

A variant is `label=TREE[;KEY=VALUE...][;cmd=ARGV]`: TREE is a source tree holding
counter_svc/ (`.` for this one; another, e.g. `git archive HEAD | tar -x -C /tmp/before`,
measures the code before a change), KEY=VALUE are environment variables of the API, and
cmd replaces `python -m counter_svc serve` ({port} and {workers} are filled in). Variants
run interleaved, round after round, on a fresh API each time and without the sync worker,
so that other load on the machine spreads over all of them; the median round is kept.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench import loads, report, stack
from counter_svc.settings import Settings, load_config

ROOT = stack.ROOT
LEVERS_JSON = ROOT / "docs" / "bench" / "levers.json"
MAIN_TAG = {
    "healthz": "scenario:healthz",
    "increment": "op:increment",
    "read_heavy": "scenario:read_heavy",
}


@dataclass
class Variant:
    label: str
    tree: Path
    env: dict[str, str] = field(default_factory=dict)
    argv: list[str] | None = None


def parse_variant(text: str) -> Variant:
    label, _, spec = text.partition("=")
    parts = spec.split(";")
    tree = (ROOT / parts[0]).resolve() if parts[0] else ROOT
    if not (tree / "counter_svc").is_dir():
        raise argparse.ArgumentTypeError(f"{tree} holds no counter_svc/")
    v = Variant(label, tree)
    for part in parts[1:]:
        key, _, value = part.partition("=")
        if key == "cmd":
            v.argv = [sys.executable if a == "python" else a for a in shlex.split(value)]
        else:
            v.env[key] = value
    return v


def run_variant(
    v: Variant,
    settings: Settings,
    args: argparse.Namespace,
    results: Path,
    rnd: int,
    progress: loads.Progress,
) -> dict[str, Any]:
    workers = int(v.env.get("WEB_CONCURRENCY", args.workers))
    slug = "".join(c if c.isalnum() else "-" for c in v.label)[:40]
    api, url = stack.start_api(
        settings, results / f"api-{slug}.log", workers, v.env, v.argv, v.tree
    )
    out: dict[str, Any] = {}
    try:
        for phase in args.phases:
            env = {
                "BASE_URL": url,
                "VUS": str(args.vus),
                "DURATION": f"{args.duration}s",
                "USER_PREFIX": f"lv{rnd}-{abs(hash(v.label)) % 10**8}",
                "CLEANUP": "false",
                "USERS": "100",
            }
            cpu0 = stack.api_cpu_seconds(api)
            with progress.phase(f"{v.label}: {phase} (round {rnd})", args.duration):
                run = loads.run_k6(
                    f"{phase}.js",
                    env,
                    results / f"{phase}-{slug}-r{rnd}.json",
                    results / f"{phase}-{slug}-r{rnd}.log",
                    args.duration + 300,
                )
            cpu = stack.api_cpu_seconds(api) - cpu0
            s = loads.stats(run, MAIN_TAG[phase], args.duration).as_dict()
            s["api_cpu_ms_per_req"] = round(1000 * cpu / s["requests"], 3) if s["requests"] else 0
            s["k6_cpu_ms_per_req"] = (
                round(1000 * run.k6_cpu_s / s["requests"], 3) if s["requests"] else 0
            )
            out[phase] = s
            progress.say(
                f"{v.label} {phase}: {s['rps']:,.0f} req/s, p99 {s['p99_ms']:.2f} ms, "
                f"API {s['api_cpu_ms_per_req']:.3f} ms CPU/req"
            )
        rss = [stack.memory_kb(p).get("VmHWM", 0) / 1024 for p in stack.api_pids(api)]
        out["rss_mb"] = round(max(rss), 1)
    finally:
        api.stop()
    return out


def median_round(rounds: list[dict[str, Any]], phases: list[str]) -> dict[str, Any]:
    """Per phase, the round with the median request rate."""
    med: dict[str, Any] = {}
    for phase in phases:
        ordered = sorted(rounds, key=lambda r: r[phase]["rps"])
        med[phase] = ordered[(len(ordered) - 1) // 2][phase]  # the lower median of an even count
    med["rss_mb"] = max(r["rss_mb"] for r in rounds)
    return med


def render(experiments: dict[str, Any]) -> str:
    lines = []
    for name, e in experiments.items():
        lines += [
            f"#### {name}",
            "",
            f"{e['when']}; {e['config']}; load average before "
            f"{e['load_before']}, after {e['load_after']}.",
            "",
        ]
        if e.get("note"):
            lines += [e["note"], ""]
        phases = e["phases"]
        head = (
            "| variant | "
            + " | ".join(f"{p} req/s | {p} p50 / p99 ms" for p in phases)
            + " | API CPU ms/increment | peak RSS MB |"
        )
        lines += [head, "|---|" + "---:|---:|" * len(phases) + "---:|---:|"]
        for label, v in e["variants"].items():
            cells = [
                f"{v[p]['rps']:,.0f} | {v[p]['p50_ms']:.1f} / {v[p]['p99_ms']:.1f}" for p in phases
            ]
            cpu = v.get("increment", v[phases[0]])["api_cpu_ms_per_req"]
            lines.append(
                f"| {label} | " + " | ".join(cells) + f" | {cpu:.3f} | {v['rss_mb']:.0f} |"
            )
        rounds = e.get("rounds_rps")
        if rounds:
            lines += [
                "",
                "Every round (req/s): "
                + "; ".join(
                    f"{label} {', '.join(f'{x:,.0f}' for x in xs)}" for label, xs in rounds.items()
                )
                + ".",
            ]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.levers", description=__doc__.split("\n\n")[0])
    p.add_argument("--name", required=True, help="the experiment's title in the report")
    p.add_argument("--variant", action="append", type=parse_variant, required=True)
    p.add_argument("--phases", default="healthz,increment", type=lambda s: s.split(","))
    p.add_argument("--duration", type=int, default=10)
    p.add_argument("--vus", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--note", default="", help="a sentence printed under the experiment's title")
    p.add_argument("--dry", action="store_true", help="print, do not record")
    args = p.parse_args(argv)
    settings = replace(
        Settings.from_env(load_config()), mysql_database="usercounter_levers", key_prefix="uclevers"
    )
    results = ROOT / "bench-results" / ("levers-" + time.strftime("%Y%m%d-%H%M%S"))
    results.mkdir(parents=True, exist_ok=True)
    total = (
        args.rounds * len(args.variant) * len(args.phases) * (args.duration + 5)
        + args.rounds * len(args.variant) * 4
    )
    progress = loads.Progress(total)
    load_before = report.load_average()
    asyncio.run(stack.reset(settings))
    rounds: dict[str, list[dict[str, Any]]] = {v.label: [] for v in args.variant}
    try:
        for rnd in range(1, args.rounds + 1):
            for v in args.variant:
                rounds[v.label].append(run_variant(v, settings, args, results, rnd, progress))
    finally:
        asyncio.run(stack.drop(settings))
    experiment = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "config": f"{args.vus} VUs, {args.duration} s per phase, {args.rounds} interleaved rounds, "
        f"median round shown, {args.workers} uvicorn workers unless the variant says",
        "load_before": load_before,
        "load_after": report.load_average(),
        "note": args.note,
        "phases": args.phases,
        "variants": {label: median_round(rs, args.phases) for label, rs in rounds.items()},
        "rounds_rps": {
            label: [r[args.phases[-1]]["rps"] for r in rs] for label, rs in rounds.items()
        },
    }
    (results / "experiment.json").write_text(json.dumps(experiment, indent=1))
    print(render({args.name: experiment}))
    if not args.dry:
        data = json.loads(LEVERS_JSON.read_text()) if LEVERS_JSON.is_file() else {}
        data[args.name] = experiment
        LEVERS_JSON.parent.mkdir(parents=True, exist_ok=True)
        LEVERS_JSON.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
        report.replace_section(
            ROOT / "docs" / "benchmarks.md", "levers", render(data), report.SKELETON
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
