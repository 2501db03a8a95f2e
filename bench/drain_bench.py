"""Drain benchmark: 100,000 dirty counters written from Redis to MySQL by one worker.

    .venv/bin/python bench/drain_bench.py [--counters 100000] [--out docs/bench-drain.md]

Uses the MySQL and Redis of the usual settings (MYSQL_*, REDIS_URL) with its own database
name and key prefix, both removed at the end. Prints a table and writes it as Markdown.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import time
from dataclasses import dataclass, replace
from pathlib import Path

import asyncmy
from asyncmy.pool import Pool

from counter_svc.connections import RedisClient, mysql_kwargs, open_mysql, open_redis
from counter_svc.counters import now_ms
from counter_svc.keys import Keys, delete_all
from counter_svc.logs import configure_logging
from counter_svc.migrate import migrate
from counter_svc.settings import Settings, load_config
from sync_worker.drain import Drainer

BATCH_SIZES = (100, 1000, 5000)
CONCURRENCY = (1, 4)
TARGET = 50_000


@dataclass
class Result:
    batch_size: int
    concurrency: int
    seconds: float
    batches: int

    def rate(self, n: int) -> float:
        return n / self.seconds


async def add_users(mysql: Pool, n: int) -> None:
    async with mysql.acquire() as conn, conn.cursor() as cur:
        for start in range(1, n + 1, 5000):
            rows = [(i, f"bench{i}") for i in range(start, min(start + 5000, n + 1))]
            await cur.executemany("INSERT INTO users (id, username) VALUES (%s, %s)", rows)


async def make_dirty(redis: RedisClient, keys: Keys, n: int, value: int) -> None:
    """n counters at `value`, each dirty, as the API's increments leave them."""
    now = now_ms()
    for start in range(1, n + 1, 5000):
        pipe = redis.pipeline(transaction=False)
        for i in range(start, min(start + 5000, n + 1)):
            pipe.set(keys.counter(i), value)
            pipe.zadd(keys.dirty(keys.bucket(i)), {str(i): now}, nx=True)
        await pipe.execute()


async def mysql_total(mysql: Pool) -> int:
    async with mysql.acquire() as conn, conn.cursor() as cur:
        await cur.execute("SELECT COALESCE(SUM(counter), 0) FROM users")
        (total,) = await cur.fetchone()
        return int(total)


async def run(n: int, buckets: int) -> list[Result]:
    run_id = f"{os.getpid()}"
    settings = replace(
        Settings.from_env(load_config()),
        mysql_database=f"uc_bench_{run_id}",
        key_prefix=f"ucbench{run_id}",
        buckets=buckets,
    )
    keys = Keys.from_settings(settings)
    await migrate(settings)
    mysql = await open_mysql(settings, minsize=1)
    redis = open_redis(settings)
    results: list[Result] = []
    try:
        await add_users(mysql, n)
        value = 0
        for batch_size in BATCH_SIZES:
            for concurrency in CONCURRENCY:
                value += 1
                await make_dirty(redis, keys, n, value)
                drainer = Drainer(
                    redis, mysql, keys, batch_size=batch_size, max_batches_per_bucket=10_000
                )
                started = time.perf_counter()
                errors = await drainer.drain_all(concurrency)
                seconds = time.perf_counter() - started
                assert not errors, errors
                assert await mysql_total(mysql) == n * value, "the drain was not exact"
                batches = int(drainer.metrics.batches._value.get())
                results.append(Result(batch_size, concurrency, seconds, batches))
                print(f"batch {batch_size:>5}  concurrency {concurrency}  {n / seconds:>9,.0f}/s")
    finally:
        await delete_all(redis, Keys.from_settings(settings))
        await redis.aclose()
        mysql.close()
        await mysql.wait_closed()
        conn = await asyncmy.connect(**mysql_kwargs(settings))
        async with conn.cursor() as cur:
            await cur.execute(f"DROP DATABASE IF EXISTS `{settings.mysql_database}`")
        conn.close()
    return results


async def server_versions() -> str:
    settings = Settings.from_env(load_config())
    conn = await asyncmy.connect(**mysql_kwargs(settings))
    async with conn.cursor() as cur:
        await cur.execute("SELECT VERSION()")
        (mysql_version,) = await cur.fetchone()
    conn.close()
    redis = open_redis(settings)
    info = await redis.info("server")
    await redis.aclose()
    return f"MySQL/MariaDB {mysql_version}, Redis {info['redis_version']}"


def table(results: list[Result], n: int) -> str:
    lines = [
        "| batch size | buckets drained at once | seconds | batches | counters/s |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.batch_size:,} | {r.concurrency} | {r.seconds:.2f} | {r.batches:,} "
            f"| {r.rate(n):,.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counters", type=int, default=100_000)
    # 16 buckets: 6,250 dirty ids each, so even a batch of 5,000 is a full batch; 64 is the
    # deployment default, where a bucket holds ~1,560 and larger batches change little.
    parser.add_argument("--buckets", default="16,64")
    parser.add_argument("--out", type=Path, default=Path("docs/bench-drain.md"))
    args = parser.parse_args()
    configure_logging("console", "warning")  # no line per batch while measuring
    n = args.counters
    sections = []
    for buckets in (int(b) for b in args.buckets.split(",")):
        print(f"{buckets} buckets, {n // buckets:,} dirty ids each")
        results = asyncio.run(run(n, buckets))
        best = max(results, key=lambda r: r.rate(n))
        default = next(r for r in results if r.batch_size == 1000 and r.concurrency == 4)
        sections.append(
            f"### {buckets} buckets ({n // buckets:,} dirty ids per bucket)\n\n"
            f"{table(results, n)}\n\n"
            f"Default (`SYNC_BATCH_SIZE=1000`, `SYNC_CONCURRENCY=4`): "
            f"{default.rate(n):,.0f} counters/s; best: batch {best.batch_size:,}, "
            f"concurrency {best.concurrency}: {best.rate(n):,.0f} counters/s.\n"
        )
    versions = asyncio.run(server_versions())
    text = (
        "# Drain benchmark\n\n"
        f"{n:,} dirty counters (one per user) written from Redis to MySQL by one worker\n"
        "process (`Drainer.drain_all`: lease, claim, one `UPDATE ... JOIN JSON_TABLE` with\n"
        "`GREATEST` per batch, cleanup), every run checked exact afterwards. "
        f"Target: {TARGET:,} counters/s.\n\n"
        f"Machine: {os.cpu_count()} cores, Python {platform.python_version()}, {versions}, "
        "all on 127.0.0.1.\n"
        "Run: `.venv/bin/python bench/drain_bench.py`.\n\n" + "\n".join(sections)
    )
    print()
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
