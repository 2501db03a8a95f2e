"""Where the API's time goes: py-spy samples one API process while k6 loads it.

    python -m bench.profile [--script increment] [--seconds 15] [--vus 64]

Starts `python -m counter_svc serve` with one uvicorn worker (one process to sample) on
127.0.0.1 against a database of its own, runs k6/<script>.js, records with py-spy, and
prints the share of samples per layer (by the innermost Python frame: time spent in C,
such as a socket write, counts for the Python function that called it) and the top
functions. `--out FILE` also writes that as Markdown.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import re
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from bench import loads, stack
from counter_svc.settings import Settings, load_config

ROOT = stack.ROOT

# (layer, pattern on "function (file)") in order: the first match names the layer.
LAYERS: list[tuple[str, str]] = [
    (
        "HTTP response socket write (kernel TCP)",
        r"^(CoalescingTransport\.flush|RequestResponseCycle\.send) ",
    ),
    ("Redis socket write (kernel TCP)", r"^StreamWriter\.writelines "),
    ("event loop: epoll, socket reads, callbacks (uvloop)", r"\((asyncio|uvloop)/"),
    ("HTTP parsing and protocol (uvicorn, httptools)", r"\(uvicorn/"),
    ("Starlette routing, requests, responses", r"\(starlette/"),
    ("access log (structlog)", r"\(structlog/"),
    ("metrics (prometheus_client)", r"\(prometheus_client/"),
    ("redis-py (commands, pool, pipeline, parser)", r"\((redis|hiredis)/"),
    (
        "middleware of the API (request id, headers, metrics, log)",
        r"\(counter_svc/(app\.py|metrics\.py|middleware/)",
    ),
    ("request code of the API (routes, store, counters)", r"\(counter_svc/"),
]


def layer_of(frame: str) -> str:
    for name, pattern in LAYERS:
        if re.search(pattern, frame):
            return name
    return "other (stdlib, orjson, ...)"


def summarize(raw: Path, top: int = 25) -> str:
    """Markdown: share of samples per layer and the top functions by self time."""
    layers: collections.Counter[str] = collections.Counter()
    functions: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack_text, _, count = line.rpartition(" ")
        if not stack_text:
            continue
        n = int(count)
        leaf = re.sub(r":\d+\)$", ")", stack_text.split(";")[-1])
        total += n
        layers[layer_of(leaf)] += n
        functions[leaf] += n
    if not total:
        return "no samples"
    out = ["| layer (innermost Python frame) | share of samples |", "|---|---:|"]
    out += [f"| {name} | {100 * n / total:.1f} % |" for name, n in layers.most_common()]
    out += ["", "| function (file) | self |", "|---|---:|"]
    out += [f"| `{f}` | {100 * n / total:.1f} % |" for f, n in functions.most_common(top)]
    out += ["", f"{total:,} samples."]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.profile", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--script", default="increment", help="k6 scenario (default increment)")
    p.add_argument("--seconds", type=int, default=15)
    p.add_argument("--vus", type=int, default=64)
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--out", type=Path, help="also write the summary here (Markdown)")
    args = p.parse_args(argv)
    py_spy = Path(sys.executable).parent / "py-spy"
    if not py_spy.is_file():
        print("py-spy is not installed (it is in requirements-dev.lock)", file=sys.stderr)
        return 2
    settings = replace(
        Settings.from_env(load_config()), mysql_database="usercounter_profile", key_prefix="ucprof"
    )
    results = ROOT / "bench-results" / ("profile-" + time.strftime("%Y%m%d-%H%M%S"))
    results.mkdir(parents=True, exist_ok=True)
    asyncio.run(stack.reset(settings))
    api, url = stack.start_api(settings, results / "api.log", workers=1)
    raw = results / f"{args.script}.pyspy.txt"
    try:
        # py-spy starts sampling at once; k6's set-up takes a moment, so it runs longer.
        spy = subprocess.Popen(  # noqa: S603
            [
                str(py_spy),
                "record",
                "-p",
                str(api.proc.pid),
                "-d",
                str(args.seconds),
                "-r",
                str(args.rate),
                "-f",
                "raw",
                "-o",
                str(raw),
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        env = {
            "BASE_URL": url,
            "VUS": str(args.vus),
            "DURATION": f"{args.seconds + 3}s",
            "CLEANUP": "false",
            "USER_PREFIX": "prof",
        }
        run = loads.run_k6(
            f"{args.script}.js", env, results / "k6.json", results / "k6.log", args.seconds + 300
        )
        spy.wait(timeout=60)
    finally:
        api.stop()
        asyncio.run(stack.drop(settings))
    tag = "op:increment" if args.script == "increment" else f"scenario:{args.script}"
    s = loads.stats(run, tag, args.seconds + 3)
    head = (
        f"`python -m bench.profile --script {args.script}`: one uvicorn worker, {args.vus} "
        f"VUs, {s.rps:,.0f} req/s, p50 {s.p50_ms:.1f} ms, p99 {s.p99_ms:.1f} ms while sampled."
    )
    text = head + "\n\n" + summarize(raw)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
