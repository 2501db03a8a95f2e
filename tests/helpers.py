"""Helpers shared by the test groups: the API in-process or as a real process, users,
increments through the API's Redis path, what MySQL and Redis hold, and the worker run as
a real process. Fixtures live in conftest.py; fault tools (private servers, the fault
proxy) in faults.py."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import AbstractContextManager as ContextManager
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from subprocess import Popen

import asyncmy
import httpx
from asyncmy.pool import Pool

from counter_svc.app import create_app
from counter_svc.connections import RedisClient, mysql_kwargs, open_redis
from counter_svc.counters import Counters, Outcome
from counter_svc.faults import Hook
from counter_svc.keys import Keys, delete_all
from counter_svc.middleware.headers import SECURITY_HEADERS
from counter_svc.settings import Settings
from counter_svc.store import SEED_ATTEMPTS, Store
from sync_worker.settings import WorkerSettings
from tests.faults import free_port, port_open, wait_until

ROOT = Path(__file__).resolve().parent.parent
# The security headers every answer carries, as httpx reports them.
EXPECTED_HEADERS = {k.decode(): v.decode() for k, v in SECURITY_HEADERS}


def keys_of(settings: Settings) -> Keys:
    return Keys.from_settings(settings)


def counters_of(redis: RedisClient, settings: Settings) -> Counters:
    return Counters.from_settings(redis, settings)


def worker_settings(settings: Settings, **overrides: object) -> WorkerSettings:
    defaults: dict[str, object] = {
        "interval_seconds": 0.1,
        "batch_size": 200,
        "lease_seconds": 5.0,
        "metrics_port": 0,
        "shutdown_timeout_seconds": 5.0,
    }
    return replace(WorkerSettings(base=settings), **(defaults | overrides))  # type: ignore[arg-type]


async def add_users(mysql: Pool, count: int, start: int = 1, counter: int = 0) -> list[int]:
    """Insert users with ids start..start+count-1 directly (no API needed)."""
    return await insert_users(mysql, list(range(start, start + count)), counter)


async def insert_users(mysql: Pool, ids: list[int], counter: int = 0) -> list[int]:
    async with mysql.acquire() as conn, conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO users (id, username, counter) VALUES (%s, %s, %s)",
            [(i, f"user{i}", counter) for i in ids],
        )
    return ids


async def mysql_counters(mysql: Pool) -> dict[int, int]:
    async with mysql.acquire() as conn, conn.cursor() as cur:
        await cur.execute("SELECT id, counter FROM users")
        return {int(i): int(c) for i, c in await cur.fetchall()}


async def redis_counters(
    redis: RedisClient, settings: Settings, ids: Iterable[int]
) -> dict[int, int]:
    """The counters of `ids` that Redis holds. GETs in one pipeline, not MGET: in a
    cluster the counters live in many slots, and the pipeline is split by node."""
    k = keys_of(settings)
    ids = list(ids)
    pipe = redis.pipeline(transaction=False)
    for i in ids:
        pipe.get(k.counter(i))
    values = await pipe.execute()
    return {i: int(v) for i, v in zip(ids, values, strict=True) if v is not None}


def unreachable_redis(settings: Settings) -> Settings:
    """`settings` whose Redis nothing answers, in their mode: a free port as REDIS_URL or,
    in cluster mode, as the only cluster seed."""
    port = free_port()
    seeds = (("127.0.0.1", port),) if settings.redis_cluster_nodes else ()
    return replace(settings, redis_url=f"redis://127.0.0.1:{port}/0", redis_cluster_nodes=seeds)


async def increment(counters: Counters, mysql: Pool, user_id: int) -> int | None:
    """One increment as the API does it: hot path, else seed from MySQL under the bucket's
    generation, read again if that moved. The new value, or None when the user does not
    exist (the API's 404)."""
    seed: int | None = None
    generation: int | None = None
    for _ in range(SEED_ATTEMPTS):
        outcome, value = await counters.increment(user_id, seed=seed, generation=generation)
        if outcome == Outcome.MISS:
            async with mysql.acquire() as conn, conn.cursor() as cur:
                await cur.execute("SELECT counter FROM users WHERE id = %s", (user_id,))
                row = await cur.fetchone()
            if row is None:
                return None
            seed, generation = int(row[0]), value
        elif outcome == Outcome.STALE:
            seed = generation = None
        else:
            return value if outcome == Outcome.OK else None
    raise RuntimeError(f"user {user_id}: every seed was refused")


@dataclass
class Load:
    """Increments spread round-robin over users, counting every acknowledged one."""

    counters: Counters
    mysql: Pool
    ids: list[int]
    acked: dict[int, int] = field(default_factory=dict)
    failed: int = 0

    async def run(self, total: int, concurrency: int = 20, pause: float = 0.0) -> None:
        queue = iter(range(total))

        async def one_lane() -> None:
            for n in queue:
                user_id = self.ids[n % len(self.ids)]
                try:
                    value = await increment(self.counters, self.mysql, user_id)
                except Exception:
                    self.failed += 1  # not acknowledged: may or may not have counted
                    value = None
                if value is not None:
                    self.acked[user_id] = self.acked.get(user_id, 0) + 1
                if pause:
                    await asyncio.sleep(pause)

        await asyncio.gather(*(one_lane() for _ in range(concurrency)))

    def expected(self, base: int = 0) -> dict[int, int]:
        return {i: base + self.acked.get(i, 0) for i in self.ids}


def worker_env(ws: WorkerSettings, **extra: str) -> dict[str, str]:
    env = settings_env(ws.base) | {
        "SYNC_INTERVAL_SECONDS": str(ws.interval_seconds),
        "SYNC_BATCH_SIZE": str(ws.batch_size),
        "SYNC_LEASE_SECONDS": str(ws.lease_seconds),
        "SYNC_CONCURRENCY": str(ws.concurrency),
        "SYNC_METRICS_PORT": str(ws.metrics_port),
        "SYNC_HEALTH_MAX_AGE_SECONDS": str(ws.health_max_age_seconds),
        "SYNC_LIVENESS_MAX_AGE_SECONDS": str(ws.liveness_max_age_seconds),
        "SYNC_SHUTDOWN_TIMEOUT_SECONDS": str(ws.shutdown_timeout_seconds),
        "LOG_LEVEL": "info",
    }
    if ws.worker_id:
        env["SYNC_WORKER_ID"] = ws.worker_id
    env.update(extra)
    return env


class WorkerProcess:
    """`python -m sync_worker` as a child process; its stderr is collected by a thread so
    a test can wait for a line (a fault marker, a log event) with a bound in time."""

    def __init__(self, ws: WorkerSettings, *args: str, **env: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sync_worker", *args],
            cwd=ROOT,
            env=worker_env(ws, **env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    def wait_for_line(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            for line in self.lines[seen:]:
                if text in line:
                    return line
            seen = len(self.lines)
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.02)
        tail = "\n".join(self.lines[-20:])
        raise TimeoutError(f"no line with {text!r} within {timeout} s; stderr tail:\n{tail}")

    def count(self, text: str) -> int:
        return sum(text in line for line in list(self.lines))

    async def await_count(self, text: str, at_least: int, within: float) -> None:
        """Wait until `at_least` lines contain `text`."""
        deadline = time.monotonic() + within
        while self.count(text) < at_least:
            if time.monotonic() > deadline:
                raise TimeoutError(f"fewer than {at_least} lines with {text!r} in {within} s")
            await asyncio.sleep(0.02)

    async def await_line(self, text: str, within: float) -> str:
        return await asyncio.to_thread(self.wait_for_line, text, within)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self._close()

    def _close(self) -> None:
        self._reader.join(timeout=5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    async def wait(self, within: float) -> int:
        code = await asyncio.to_thread(self.proc.wait, within)
        self._close()
        return code

    def output(self) -> str:
        return "\n".join(self.lines)


async def run_cli(ws: WorkerSettings, *args: str, **env: str) -> subprocess.CompletedProcess[bytes]:
    """`python -m sync_worker ARGS` to completion (bounded), output captured."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "sync_worker", *args],
        cwd=ROOT,
        env=worker_env(ws, **env),
        capture_output=True,
        timeout=60,
        check=False,
    )


async def settle(redis: RedisClient, settings: Settings, within: float = 20.0) -> None:
    """Wait until no bucket has dirty or inflight ids (the worker caught up)."""
    k = keys_of(settings)
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        pipe = redis.pipeline(transaction=False)
        for b in range(k.buckets):
            pipe.zcard(k.dirty(b))
            pipe.hlen(k.inflight(b))
        if not any(await pipe.execute()):
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"dirty/inflight not empty after {within} s")


# --- the API and its data ------------------------------------------------------------


def drop_run(settings: Settings) -> None:
    """Drop the database and delete the Redis keys that `settings` name."""
    import asyncio

    async def drop() -> None:
        conn = await asyncmy.connect(**mysql_kwargs(settings))
        async with conn.cursor() as cur:
            await cur.execute(f"DROP DATABASE IF EXISTS `{settings.mysql_database}`")
        conn.close()
        redis = open_redis(settings)
        await delete_all(redis, Keys.from_settings(settings))
        await redis.aclose()

    asyncio.run(drop())


@asynccontextmanager
async def running_app(
    settings: Settings, hook: Hook | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """An API instance with its lifespan run, and a client that talks to it in-process.
    `hook` is called at the store's named steps (`Store.hook`)."""
    app = create_app(settings, hook=hook)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            yield client


def store_of(client: httpx.AsyncClient) -> Store:
    """The store of the in-process app a `running_app` client talks to."""
    transport = client._transport
    assert isinstance(transport, httpx.ASGITransport)
    store: Store = transport.app.state.store  # type: ignore[attr-defined]
    return store


async def create_user(client: httpx.AsyncClient, username: str) -> int:
    response = await client.post("/api/v1/users", json={"username": username})
    assert response.status_code == 201, response.text
    user_id: int = response.json()["data"]["id"]
    return user_id


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a child process read `settings` (and no `.env`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MYSQL_", "REDIS_", "SYNC_"))}
    return env | settings.environ() | {"LOG_FORMAT": "json", "ENV_FILE": os.devnull}


def serving(
    settings: Settings, log_path: Path, **env: str
) -> ContextManager[tuple[str, Popen[bytes]]]:
    """`python -m counter_svc serve` as a real process on a free port, with extra
    variables; its output goes to `log_path`. Yields its base URL and the process."""
    return serving_with(settings, log_path, env)


@contextmanager
def serving_with(
    settings: Settings,
    log_path: Path,
    env: dict[str, str],
    preexec_fn: Callable[[], object] | None = None,
) -> Iterator[tuple[str, Popen[bytes]]]:
    """`serving`, with `preexec_fn` run in the child process before it starts."""
    port = free_port()
    full_env = settings_env(settings) | {"PORT": str(port), "HOST": "127.0.0.1"} | env
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "counter_svc", "serve"],
            env=full_env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=preexec_fn,
        )
        try:
            wait_until(lambda: port_open(port), 20, "the API to listen")
            yield f"http://127.0.0.1:{port}", proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
