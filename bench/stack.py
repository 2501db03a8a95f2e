"""The stack under load: the API and the sync worker as child processes on 127.0.0.1,
against a database and key prefix of the bench's own that are reset per run."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import asyncmy

from counter_svc.connections import mysql_kwargs, open_redis
from counter_svc.keys import Keys, delete_all
from counter_svc.migrate import migrate
from counter_svc.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
LOCALHOST = "127.0.0.1"

# `DROP DATABASE IF EXISTS` of a database that is not there is a MySQL warning, which
# asyncmy logs; the bench expects it on every first run.
logging.getLogger("asyncmy").setLevel(logging.ERROR)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOCALHOST, 0))
        return int(s.getsockname()[1])


def http_ok(url: str, timeout: float = 0.5) -> bool:
    with (
        contextlib.suppress(OSError),
        urllib.request.urlopen(url, timeout=timeout) as r,  # noqa: S310 - 127.0.0.1 only
    ):
        return bool(r.status == 200)
    return False


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not ready after {timeout:.0f} s")
        time.sleep(0.1)


@dataclass(frozen=True)
class Pinning:
    """The cores the API and k6 run on (`taskset -c`), or none when they cannot be split."""

    api_cpu: int | None
    k6_cpu: int | None

    @classmethod
    def choose(cls) -> Pinning:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2 or not shutil.which("taskset"):
            return cls(None, None)
        return cls(cpus[0], cpus[1])

    def prefix(self, cpu: int | None) -> list[str]:
        return ["taskset", "-c", str(cpu)] if cpu is not None else []

    def describe(self) -> str:
        if self.api_cpu is None:
            return "not pinned (fewer than 2 cores, or no taskset)"
        return f"API on CPU {self.api_cpu} (`taskset -c {self.api_cpu}`), k6 on CPU {self.k6_cpu}"


def child_env(settings: Settings, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment that makes a child process read `settings` (and nothing from .env)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MYSQL_", "REDIS_"))}
    env.update(settings.environ(), LOG_FORMAT="json", ENV_FILE=os.devnull, HOST=LOCALHOST)
    env.update(extra or {})
    return env


@dataclass
class Child:
    """A child process in a session of its own, with its output in a log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    started: float = field(default_factory=time.monotonic)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 30) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=10)

    def tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""


def start(
    name: str, argv: Sequence[str], env: dict[str, str], log: Path, cwd: Path = ROOT
) -> Child:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(  # noqa: S603 - our own interpreter and modules
            list(argv),
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Child(name, proc, log)


def start_api(
    settings: Settings,
    log: Path,
    workers: int,
    env: dict[str, str] | None = None,
    argv: Sequence[str] | None = None,
    cwd: Path = ROOT,
) -> tuple[Child, str]:
    """`python -m counter_svc serve` (or `argv`) on a free port; returns it and its URL."""
    port = free_port()
    extra = {"PORT": str(port), "WEB_CONCURRENCY": str(workers), **(env or {})}
    command = list(argv or [sys.executable, "-m", "counter_svc", "serve"])
    command = [c.replace("{port}", str(port)).replace("{workers}", str(workers)) for c in command]
    child = start("api", command, child_env(settings, extra), log, cwd)
    url = f"http://{LOCALHOST}:{port}"
    try:
        wait_for(lambda: not child.alive() or http_ok(f"{url}/readyz"), 60, "the API")
    except TimeoutError:
        child.stop()
        raise
    if not child.alive():
        raise RuntimeError(f"the API exited with {child.proc.returncode}:\n{child.tail()}")
    # Every uvicorn worker must be up, not only the first one to answer.
    expected = 1 if workers == 1 else workers + 1
    wait_for(lambda: len(api_pids(child)) >= expected, 30, "the API's worker processes")
    for _ in range(4 * workers):  # a request per worker, most likely, before timing starts
        http_ok(f"{url}/readyz")
    time.sleep(1.0)
    return child, url


def start_worker(settings: Settings, log: Path, env: dict[str, str] | None = None) -> Child:
    extra = {"SYNC_METRICS_PORT": str(free_port()), **(env or {})}
    return start("worker", [sys.executable, "-m", "sync_worker"], child_env(settings, extra), log)


@contextlib.contextmanager
def api_and_worker(
    settings: Settings, results: Path, name: str, pinning: Pinning
) -> Iterator[tuple[Child, str]]:
    """A sync worker and one API process (WEB_CONCURRENCY=1, on `pinning`'s API core)
    against `settings`, logging to `results`; yields the API and its URL, stops both."""
    worker = start_worker(settings, results / f"worker-{name}.log")
    api: Child | None = None
    serve = [sys.executable, "-m", "counter_svc", "serve"]
    try:
        api, url = start_api(
            settings,
            results / f"api-{name}.log",
            1,
            argv=[*pinning.prefix(pinning.api_cpu), *serve],
        )
        if not worker.alive():
            raise RuntimeError(f"the sync worker exited at once:\n{worker.tail()}")
        yield api, url
    finally:
        if api is not None:
            api.stop()
        worker.stop()


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def api_pids(child: Child) -> list[int]:
    """The uvicorn process and its workers (the spawn helper excluded)."""
    pids = [child.proc.pid]
    for pid in children(child.proc.pid):
        with contextlib.suppress(OSError):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"resource_tracker" not in cmdline:
                pids.append(pid)
    return pids


def api_cpu_seconds(child: Child) -> float:
    """User + system CPU time so far of the API: its process and its uvicorn workers."""
    return sum(cpu_seconds(p) for p in api_pids(child))


def memory_kb(pid: int) -> dict[str, int]:
    """Current (VmRSS) and peak (VmHWM) resident memory of a process, in kB."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return 0.0


async def reset(settings: Settings) -> None:
    """A fresh database with the schema applied and no key under the bench's prefix."""
    await drop(settings)
    await migrate(settings)


async def drop(settings: Settings) -> None:
    conn = await asyncmy.connect(**mysql_kwargs(settings))
    try:
        async with conn.cursor() as cur:
            await cur.execute(f"DROP DATABASE IF EXISTS `{settings.mysql_database}`")
    finally:
        conn.close()
    await delete_keys(settings)


async def delete_keys(settings: Settings) -> None:
    redis = open_redis(settings)
    try:
        await delete_all(redis, Keys.from_settings(settings))
    finally:
        await redis.aclose()
