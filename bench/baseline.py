"""Write-behind against write-through: the API (Redis in front, the sync worker draining
into MySQL) side by side with the predecessor's design, where every increment is an
`UPDATE users SET counter = counter + 1` committed before it is answered
(bench/writethrough.py). A phase of `make bench` (bench/run.py).

Both servers run for the whole phase, each as one process pinned to the same core with
`taskset`, k6 pinned to another (as bench/redis_modes.py does); the sync worker, Redis
and MySQL are not pinned. They take turns under `k6/increment.js` on two shapes of load:
1,000 users picked at random (spread) and one user (hot: on the write-through side every
increment waits for the row lock held by the one before it until it commits). First
closed loop (`--vus` constant VUs) for throughput, then constant arrival rates, the same
for both, for latency below saturation: by default half and 80 % of the write-through's
closed-loop rate on that shape, or fixed rates (`--baseline-rates 500,1000`). The
closed-loop runs are repeated in `--rounds` interleaved rounds and each variant's best
round counts (other load on the machine only ever slows a round down); the rates run once.

Nothing may be lost: after each write-behind run, once drained, MySQL and Redis must hold
exactly the increments k6 saw acknowledged. After a write-through run MySQL must hold at
least those and at most those plus the increments answered with an error: a request cut
off by its timeout may still have committed, the one outcome write-through leaves unknown.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench import checks, loads, stack
from bench.stack import Pinning
from counter_svc.settings import Settings

VARIANTS = ("write_behind", "write_through")
LABELS = {"write_behind": "write-behind (this service)", "write_through": "write-through"}
# Users per shape of load.
SHAPES = {"spread": 1000, "hot": 1}
# Arrival rates by default: these fractions of the write-through's closed-loop rate.
RATE_FRACTIONS = (0.5, 0.8)
WARM_UP_S = 3


def parse_rates(text: str) -> tuple[int, ...]:
    """`auto` (empty), or comma-separated requests per second."""
    if text.strip().lower() in ("", "auto"):
        return ()
    try:
        rates = tuple(int(x) for x in text.split(","))
    except ValueError as e:
        raise ValueError(f"rates must be 'auto' or integers such as 500,1000, not {text!r}") from e
    if not rates or min(rates) < 1:
        raise ValueError(f"rates must be at least 1 request/s, not {text!r}")
    return rates


def estimate_s(args: argparse.Namespace) -> float:
    """About how long the phase takes: the runs, their set-ups (1,000 users each for the
    spread shape), the warm-ups and the servers' start."""
    rates = len(parse_rates(args.baseline_rates)) or len(RATE_FRACTIONS)
    runs = len(SHAPES) * len(VARIANTS) * (args.rounds + rates)
    setups = len(VARIANTS) * (args.rounds + rates) * 4
    return float(runs * (args.baseline_duration + 2) + setups + 2 * (WARM_UP_S + 3) + 10)


@dataclass
class Server:
    """One variant under test: its settings, its process and where it answers."""

    variant: str
    settings: Settings
    api: stack.Child
    url: str


class BaselineBench:
    def __init__(
        self, args: argparse.Namespace, base: Settings, results: Path, progress: loads.Progress
    ) -> None:
        self.args = args
        self.results = results
        self.progress = progress
        self.pinning = Pinning.choose()
        self.settings = {
            "write_behind": replace(
                base,
                mysql_database=f"{base.mysql_database[:50]}_wbehind",
                key_prefix=f"{base.key_prefix[:24]}-wbehind",
            ),
            "write_through": replace(base, mysql_database=f"{base.mysql_database[:50]}_wthrough"),
        }
        self.servers: dict[str, Server] = {}
        self.worker: stack.Child | None = None
        self.runs: list[dict[str, Any]] = []
        self._n = 0

    def start(self) -> None:
        for s in self.settings.values():
            asyncio.run(stack.reset(s))
        wb = self.settings["write_behind"]
        self.worker = stack.start_worker(wb, self.results / "worker.log")
        commands = {
            "write_behind": [sys.executable, "-m", "counter_svc", "serve"],
            "write_through": [sys.executable, "-m", "bench.writethrough"],
        }
        pin = self.pinning.prefix(self.pinning.api_cpu)
        for v in VARIANTS:
            api, url = stack.start_api(
                self.settings[v], self.results / f"api-{v}.log", 1, argv=[*pin, *commands[v]]
            )
            self.servers[v] = Server(v, self.settings[v], api, url)
        if not self.worker.alive():
            raise RuntimeError(f"the sync worker exited at once:\n{self.worker.tail()}")
        self.progress.say(
            f"write-behind and write-through: {self.pinning.describe()}, one process each"
        )

    def stop(self) -> None:
        for server in self.servers.values():
            server.api.stop()
        if self.worker is not None:
            self.worker.stop()
        if not self.args.keep:
            for s in self.settings.values():
                asyncio.run(stack.drop(s))

    def run_one(
        self, variant: str, shape: str, rate: int = 0, rnd: int = 1, warm_up: bool = False
    ) -> None:
        """One k6/increment.js run against `variant`, then its exactness check."""
        server = self.servers[variant]
        seconds = WARM_UP_S if warm_up else self.args.baseline_duration
        users = 100 if warm_up else SHAPES[shape]
        self._n += 1
        tag = f"b{self._n:02d}-{variant.replace('_', '')}"
        env = {
            "BASE_URL": server.url,
            "VUS": str(self.args.vus),
            "DURATION": f"{seconds}s",
            "USER_PREFIX": tag,
            "CLEANUP": "false",
            "USERS": str(users),
            **({"RATE": str(rate)} if rate else {}),
        }
        load = f"at {rate:,} req/s" if rate else f"{self.args.vus} VUs"
        name = f"{LABELS[variant]}, {shape} ({users:,} users), {load}"
        if warm_up:
            name += " (warm-up)"
        cpu0 = stack.api_cpu_seconds(server.api)
        with self.progress.phase(name, seconds):
            run = loads.run_k6(
                "increment.js",
                env,
                self.results / f"k6-{tag}.json",
                self.results / f"k6-{tag}.log",
                timeout_s=seconds + 300,
                prefix=self.pinning.prefix(self.pinning.k6_cpu),
            )
        cpu = stack.api_cpu_seconds(server.api) - cpu0
        s = loads.stats(run, "op:increment", seconds).as_dict()
        s["api_cpu_ms_per_req"] = round(1000 * cpu / s["requests"], 3) if s["requests"] else 0
        s["dropped"] = loads.counter(run, "dropped_iterations")
        acked = loads.counter(run, "increments_acked")
        check = self._check(server, tag, acked, s["errors"])
        self.progress.say(
            f"{name}: {s['rps']:,.0f} req/s, p50 {s['p50_ms']:.2f} ms, p99 {s['p99_ms']:.2f} ms, "
            f"{s['errors']} errors, {s['dropped']} dropped; acked {acked:,}, "
            f"MySQL {check['mysql']:,}: {'OK' if check['ok'] else 'MISMATCH'}"
        )
        if not warm_up:
            self.runs.append(
                {
                    "variant": variant,
                    "shape": shape,
                    "rate": rate,
                    "round": rnd,
                    "stats": s,
                    "check": check,
                }
            )

    def _check(self, server: Server, tag: str, acked: int, errors: int) -> dict[str, Any]:
        if server.variant == "write_behind":
            drained = asyncio.run(checks.wait_drained(server.settings, tag, acked, 30.0))
            return {"exact": drained.ok, **drained.as_dict()}
        users, total = asyncio.run(checks.mysql_total(server.settings, tag))
        return {
            "users": users,
            "acked": acked,
            "mysql": total,
            "answered_error": errors,
            "exact": total == acked,
            # An increment answered with an error (its timeout) may have committed anyway.
            "ok": acked <= total <= acked + errors,
        }

    def run(self) -> dict[str, Any]:
        self.start()
        try:
            for v in VARIANTS:
                self.run_one(v, "spread", warm_up=True)
            order = list(VARIANTS)
            for rnd in range(1, self.args.rounds + 1):
                for shape in SHAPES:
                    for v in order:
                        self.run_one(v, shape, rnd=rnd)
                    order.reverse()  # neither variant always goes first
            rates = self._rates()
            for shape in SHAPES:
                for rate in rates[shape]:
                    for v in order:
                        self.run_one(v, shape, rate)
                    order.reverse()
        finally:
            self.stop()
        return summarize(self.runs, self.args, self.pinning, rates)

    def _rates(self) -> dict[str, tuple[int, ...]]:
        fixed = parse_rates(self.args.baseline_rates)
        if fixed:
            return dict.fromkeys(SHAPES, fixed)
        rates = {}
        for shape in SHAPES:
            capacity = _best(self.runs, "write_through", shape)["rps"]
            rates[shape] = tuple(max(50, int(capacity * f / 50) * 50) for f in RATE_FRACTIONS)
        return rates


def _of(runs: list[dict[str, Any]], variant: str, shape: str, rate: int) -> list[dict[str, Any]]:
    return [
        r for r in runs if r["variant"] == variant and r["shape"] == shape and r["rate"] == rate
    ]


def _best(runs: list[dict[str, Any]], variant: str, shape: str) -> dict[str, Any]:
    """The stats of the variant's fastest closed-loop round on `shape`."""
    stats: dict[str, Any] = max(
        (r["stats"] for r in _of(runs, variant, shape, 0)), key=lambda s: s["rps"]
    )
    return stats


def summarize(
    runs: list[dict[str, Any]],
    args: argparse.Namespace,
    pinning: Pinning,
    rates: dict[str, tuple[int, ...]],
) -> dict[str, Any]:
    closed = {shape: {v: _best(runs, v, shape) for v in VARIANTS} for shape in SHAPES}
    closed_rounds = {
        shape: {v: [r["stats"]["rps"] for r in _of(runs, v, shape, 0)] for v in VARIANTS}
        for shape in SHAPES
    }
    at_rate = [
        {
            "shape": shape,
            "rate": rate,
            **{v: _of(runs, v, shape, rate)[0]["stats"] for v in VARIANTS},
        }
        for shape in SHAPES
        for rate in rates[shape]
    ]
    speedup = {
        shape: round(c["write_behind"]["rps"] / c["write_through"]["rps"], 2)
        if c["write_through"]["rps"]
        else None
        for shape, c in closed.items()
    }
    p99_ratios = [
        r["write_through"]["p99_ms"] / r["write_behind"]["p99_ms"]
        for r in at_rate
        if r["write_behind"]["p99_ms"]
    ]
    return {
        "config": {
            "vus": args.vus,
            "duration_s": args.baseline_duration,
            "rounds": args.rounds,
            "shapes": SHAPES,
            "rates": "auto" if not parse_rates(args.baseline_rates) else args.baseline_rates,
            "rate_fractions": RATE_FRACTIONS,
        },
        "pinning": {
            "api_cpu": pinning.api_cpu,
            "k6_cpu": pinning.k6_cpu,
            "text": pinning.describe(),
        },
        "closed": closed,
        "closed_rounds": closed_rounds,
        "at_rate": at_rate,
        "speedup": speedup,
        "p99_ratio_median": round(statistics.median(p99_ratios), 2) if p99_ratios else None,
        "checks": [
            {"variant": r["variant"], "shape": r["shape"], "rate": r["rate"], **r["check"]}
            for r in runs
        ],
        "runs": runs,
    }


def run_phase(
    args: argparse.Namespace, base: Settings, results: Path, progress: loads.Progress
) -> dict[str, Any]:
    """The whole comparison: `args` has vus, baseline_duration, baseline_rates and keep;
    `base` gives MySQL and Redis (a database and key prefix of its own per variant are
    derived from it, dropped and created anew)."""
    results.mkdir(parents=True, exist_ok=True)
    out = BaselineBench(args, base, results, progress).run()
    sp = out["speedup"]
    progress.say(
        "write-behind / write-through, closed loop: "
        + ", ".join(f"{shape} {x:.2f}x" for shape, x in sp.items() if x is not None)
    )
    return out
