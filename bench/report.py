"""docs/benchmarks.md: the generated part sits between markers, so the hand-written
analysis around it survives every `make bench`."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def replace_section(path: Path, name: str, body: str, skeleton: str) -> None:
    """Put `body` between `<!-- name:begin -->` and `<!-- name:end -->` in `path`."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = path.read_text(encoding="utf-8") if path.is_file() else skeleton
    if begin not in text or end not in text:
        text = text.rstrip("\n") + f"\n\n{begin}\n{end}\n"
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{head}{begin}\n{body.strip()}\n{end}{tail}", encoding="utf-8")


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gib = 0.0
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = int(line.split()[1]) / 1024 / 1024
    distro = platform.system()
    with contextlib.suppress(OSError):
        m = re.search(r'^PRETTY_NAME="?([^"\n]*)', Path("/etc/os-release").read_text(), re.M)
        distro = m.group(1) if m else distro
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_gib, 1),
        "os": distro,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def tool_version(argv: list[str]) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)  # noqa: S603
        return (out.stdout or out.stderr).strip().splitlines()[0]
    return "unknown"


def _ms(v: float) -> str:
    return f"{v:.2f}"


def _row(label: str, s: dict[str, Any], ceiling: float | None = None) -> str:
    ratio = f"{s['rps'] / ceiling:.0%}" if ceiling else ""
    errors = f"{s['errors']} ({s['error_rate'] * 100:.2f} %)"
    return (
        f"| {label} | {s['rps']:,.0f} | {_ms(s['p50_ms'])} | {_ms(s['p95_ms'])} | "
        f"{_ms(s['p99_ms'])} | {_ms(s['max_ms'])} | {errors} | {ratio} |"
    )


def _intro(r: dict[str, Any]) -> list[str]:
    cfg, m, v = r["config"], r["machine"], r["versions"]
    return [
        f"## Latest run: {r['when']}",
        "",
        f"`make bench` on {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, {m['os']} "
        f"(kernel {m['kernel']}), Python {m['python']}; {v['mariadb']}, Redis {v['redis']}, "
        f"{v['k6']}. Everything runs on this one machine: k6 and redis-benchmark take CPU "
        "from the API they load, and so does whatever else runs there.",
        "",
        f"API: `python -m counter_svc serve`, {cfg['workers']} uvicorn worker(s) "
        f"(WEB_CONCURRENCY), {_settings(cfg)}, plus one `python -m sync_worker`. "
        f"Each phase: {cfg['vus']} VUs for {cfg['duration_s']} s; {cfg['rounds']} round(s) of "
        "healthz, increment, read_heavy, interleaved; the table shows each phase's best "
        "round (other load on the machine only ever slows a round down). Load average "
        f"(1/5/15 min) before: {r['load_before']}, after: {r['load_after']}.",
        "",
    ]


def _settings(cfg: dict[str, Any]) -> str:
    extra = cfg.get("api_env") or []
    return "other settings at their defaults" + (f" except {', '.join(extra)}" if extra else "")


def _table(r: dict[str, Any]) -> list[str]:
    best = r["best"]
    ceiling = best["healthz"]["by_tag"]["scenario:healthz"]["rps"]
    lines = [
        "| phase | requests/s | p50 ms | p95 ms | p99 ms | max ms | errors | of /healthz |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        _row("`/healthz` (ceiling: no storage)", best["healthz"]["by_tag"]["scenario:healthz"]),
        _row("`increment.js`", best["increment"]["by_tag"]["op:increment"], ceiling),
        _row("`read_heavy.js`, all", best["read_heavy"]["by_tag"]["scenario:read_heavy"], ceiling),
    ]
    for op in ("count", "get_user", "increment"):
        s = best["read_heavy"]["by_tag"].get(f"op:{op}")
        if s and s["requests"]:
            lines.append(_row(f"`read_heavy.js`, {op}", s))
    at = r.get("at_rate")
    if at:
        label = f"`increment.js` at {at['rate']:,} req/s (RATE)"
        lines.append(_row(label, at["by_tag"]["op:increment"]))
    ratios = ", ".join(f"{x:.2f}" for x in r["round_ratios"])
    return [*lines, "", f"increment / healthz, round by round: {ratios}.", ""]


def _drain(r: dict[str, Any]) -> list[str]:
    lines = ["### Nothing lost", ""]
    for d in r["drain_checks"]:
        verdict = "OK" if d["ok"] else "**MISMATCH**"
        lines.append(
            f"- {d['phase']}: k6 saw {d['acked']:,} increments acknowledged on {d['users']:,} "
            f"users; MySQL holds {d['mysql']:,}, Redis {d['redis']:,}: {verdict} "
            f"(MySQL caught up {d['seconds']:.2f} s after k6 stopped)."
        )
    dr = r.get("drain_rate")
    if dr:
        match = "matches" if dr["mysql_ok"] else "**does not match**"
        lines += [
            "",
            f"Drain rate: a worker started on {dr['counters']:,} dirty counters (one per user, "
            "made by the API's increment script with no worker running) emptied the backlog "
            f"in {dr['seconds_draining']:.2f} s from its first claim "
            f"({dr['seconds_from_start']:.2f} s including its start-up): "
            f"**{dr['per_second']:,.0f} counters/s** written to MySQL, SYNC_BATCH_SIZE and "
            f"SYNC_CONCURRENCY at their defaults; MySQL {match}.",
        ]
    return lines


def _redis(r: dict[str, Any]) -> list[str]:
    if not r.get("redis"):
        return []
    lines = ["", "### The storage limit (redis-benchmark, same Redis)", ""]
    lines += ["| command | clients | requests/s | p50 ms | p99 ms |", "|---|---:|---:|---:|---:|"]
    for b in r["redis"]:
        lines.append(
            f"| {b['name']} | {b['clients']} | {b['rps']:,.0f} | {b['p50_ms']:.3f} "
            f"| {b['p99_ms']:.3f} |"
        )
    return lines


def _resources(r: dict[str, Any]) -> list[str]:
    rss = r["rss"]
    workers_mb = ", ".join(f"{x:.1f}" for x in rss["api_workers_mb"])
    supervisor = rss.get("api_supervisor_mb")
    lines = [
        "",
        "### Resources",
        "",
        f"- Peak RSS (VmHWM): API worker process(es) {workers_mb} MB"
        + (f"; uvicorn supervisor {supervisor:.1f} MB" if supervisor else "")
        + f"; sync worker {rss['worker_mb']:.1f} MB.",
    ]
    for phase, cpu in r["cpu"].items():
        lines.append(
            f"- CPU during {phase} (cores busy, of {r['machine']['cores']}): API "
            f"{cpu['api']:.2f}, sync worker {cpu['worker']:.2f}, k6 {cpu['k6']:.2f}."
        )
    return lines


def _targets(r: dict[str, Any]) -> list[str]:
    lines = ["", "### Targets", "", "| target | measured | |", "|---|---|---|"]
    for t in r["targets"]:
        lines.append(f"| {t['target']} | {t['measured']} | {'met' if t['met'] else '**missed**'} |")
    return lines


def _rounds(r: dict[str, Any]) -> list[str]:
    if r["config"]["rounds"] < 2:
        return []
    lines = ["", "### Every round", "", "| round | phase | requests/s | p50 | p95 | p99 | errors |"]
    lines.append("|---:|---|---:|---:|---:|---:|---:|")
    tags = {
        "healthz": "scenario:healthz",
        "increment": "op:increment",
        "read_heavy": "scenario:read_heavy",
    }
    for i, rnd in enumerate(r["rounds"], 1):
        for phase, tag in tags.items():
            s = rnd[phase]["by_tag"][tag]
            lines.append(
                f"| {i} | {phase} | {s['rps']:,.0f} | {_ms(s['p50_ms'])} | {_ms(s['p95_ms'])} "
                f"| {_ms(s['p99_ms'])} | {s['errors']} |"
            )
    return lines


BASELINE_LABELS = {"write_behind": "write-behind (this service)", "write_through": "write-through"}
SHAPE_LABELS = {"spread": "1,000 users", "hot": "one hot user"}


def _baseline(r: dict[str, Any]) -> list[str]:
    b = r.get("baseline")
    if not b:
        return []
    cfg = b["config"]
    rates = (
        "half and 80 % of the write-through's closed-loop rate on that shape"
        if cfg["rates"] == "auto"
        else f"{cfg['rates']} req/s"
    )
    lines = [
        "",
        "### Write-behind against write-through",
        "",
        "`k6/increment.js` against this API (one process, its sync worker running) and "
        "against the write-through baseline (`bench/writethrough.py`, one process: each "
        "increment one autocommit UPDATE of its row, `counter = LAST_INSERT_ID(counter + 1)`, "
        "a commit per increment), every other setting at its default (MYSQL_POOL_SIZE 10); "
        f"{b['pinning']['text']}, the sync worker, Redis and MariaDB unpinned. "
        f"{cfg['duration_s']} s per run, the variants taking turns. Closed loop at "
        f"{cfg['vus']} VUs, {cfg['rounds']} round(s), each variant's best round:",
        "",
        "| users | server | increments/s | p50 ms | p99 ms | errors | API CPU ms/increment "
        "| write-behind / write-through |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for shape, by in b["closed"].items():
        for v, s in by.items():
            x = b["speedup"][shape] if v == "write_behind" else None
            lines.append(
                f"| {SHAPE_LABELS[shape]} | {BASELINE_LABELS[v]} | {s['rps']:,.0f} "
                f"| {_ms(s['p50_ms'])} | {_ms(s['p99_ms'])} | {s['errors']} "
                f"| {s['api_cpu_ms_per_req']:.3f} | {f'**{x:.2f}x**' if x else ''} |"
            )
    every = "; ".join(
        f"{SHAPE_LABELS[shape]}: "
        + ", ".join(
            f"{BASELINE_LABELS[v]} {', '.join(f'{x:,.0f}' for x in rps)}" for v, rps in by.items()
        )
        for shape, by in b["closed_rounds"].items()
    )
    lines += [
        "",
        f"Every closed-loop round (increments/s): {every}.",
        "",
        f"At constant arrival rates ({rates}; `RATE`, up to {cfg['vus']} VUs, one run each; "
        "dropped: arrivals k6 could not start for want of a free VU):",
        "",
        "| users | rate req/s | server | achieved req/s | p50 ms | p95 ms | p99 ms | errors "
        "| dropped |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in b["at_rate"]:
        for v in BASELINE_LABELS:
            s = row[v]
            lines.append(
                f"| {SHAPE_LABELS[row['shape']]} | {row['rate']:,} | {BASELINE_LABELS[v]} "
                f"| {s['rps']:,.0f} | {_ms(s['p50_ms'])} | {_ms(s['p95_ms'])} "
                f"| {_ms(s['p99_ms'])} | {s['errors']} | {s['dropped']} |"
            )
    wb = [c for c in b["checks"] if c["variant"] == "write_behind"]
    wt = [c for c in b["checks"] if c["variant"] == "write_through"]
    unknown = sum(c["mysql"] - c["acked"] for c in wt)
    lines += [
        "",
        f"Exactness: after each of the {len(wb)} write-behind runs, once drained, MySQL and "
        "Redis held exactly the increments k6 saw acknowledged: "
        + ("all OK" if all(c["ok"] for c in wb) else "**MISMATCH**")
        + f". After each of the {len(wt)} write-through runs MySQL held "
        + (
            "exactly the acknowledged increments"
            if all(c["exact"] for c in wt)
            else f"{unknown:,} increments more than were acknowledged in all, each answered "
            "with an error after its commit may have happened"
            + ("" if all(c["ok"] for c in wt) else " (**and some runs outside that bound**)")
        )
        + ".",
    ]
    return lines


def _mixed(r: dict[str, Any]) -> list[str]:
    m = r.get("mixed")
    if not m:
        return []
    cfg = m["config"]
    st = cfg["stages_s"]
    lines = [
        "",
        "### Mixed load: create, increment, count, delete",
        "",
        f"`k6/mixed.js`: per iteration a VU creates a user, increments it, reads its count, "
        f"deletes it, then thinks {cfg['sleep_s']:g} s; VUs ramp from 0 to {cfg['vus']} in "
        f"{st['ramp_up']} s, hold {st['hold']} s, ramp down in {st['ramp_down']} s. The API "
        f"as `make run` starts it: {cfg['api']}, plus the sync worker. "
        f"{m['iterations']:,} iterations, {m['lifecycles_completed']:,} with all four "
        f"requests answered as expected; {m['checks_failed']} failed checks (a status, or a "
        "count after one increment that is not 1). Cores busy, on average over the run: API "
        f"{m['cpu']['api']:.2f}, sync worker {m['cpu']['worker']:.2f}, k6 {m['cpu']['k6']:.2f}.",
        "",
        "| operation | requests | failed | error rate | p50 ms | p95 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for op, s in m["by_op"].items():
        label = "all" if op == "all" else f"`{op}`"
        lines.append(
            f"| {label} | {s['requests']:,} | {s['errors']:,} | {s['error_rate'] * 100:.2f} % "
            f"| {_ms(s['p50_ms'])} | {_ms(s['p95_ms'])} | {_ms(s['p99_ms'])} "
            f"| {_ms(s['max_ms'])} |"
        )
    if m["error_codes"]:
        lines += ["", "| operation | status | error code | requests |", "|---|---:|---|---:|"]
        lines += [
            f"| `{c['op']}` | {c['status']} | `{c['code']}` | {c['count']:,} |"
            for c in m["error_codes"]
        ]
    else:
        lines += ["", "No request failed."]
    return lines


def render(r: dict[str, Any]) -> str:
    """The generated section of docs/benchmarks.md from the results of one run."""
    lines = [*_intro(r), *_table(r), *_drain(r), *_redis(r), *_resources(r), *_targets(r)]
    lines += [
        *_rounds(r),
        *_baseline(r),
        *_mixed(r),
        "",
        f"Raw k6 summaries and logs: `{r['results_dir']}` (not committed); the numbers above: "
        "`docs/bench/latest.json`.",
    ]
    return "\n".join(lines)


SKELETON = """# Benchmarks

`make bench` (bench/run.sh → `python -m bench.run`) starts the API and the sync worker on
127.0.0.1 against a fresh database, loads them with k6, checks that MySQL ends up with
exactly the increments k6 saw acknowledged, and rewrites the section below.
"""
