"""`python -m sync_worker` as a process: stop on signals, --once, --check, /metrics."""

from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import replace

import httpx
import pytest
from asyncmy.pool import Pool
from redis.asyncio import Redis
from starlette.config import Config

from counter_svc.settings import Settings, SettingsError
from sync_worker.faults import FaultSpecError, WorkerFaults
from sync_worker.settings import WorkerSettings
from tests.faults import FaultProxy, free_port
from tests.helpers import (
    WorkerProcess,
    add_users,
    counters_of,
    increment,
    keys_of,
    mysql_counters,
    run_cli,
    worker_settings,
)


async def _dirty_users(redis: Redis, mysql: Pool, settings: Settings, n: int = 5) -> list[int]:
    ids = await add_users(mysql, n)
    counters = counters_of(redis, settings)
    for user_id in ids:
        await increment(counters, mysql, user_id)
    return ids


async def test_once_drains_and_exits_zero(redis: Redis, mysql: Pool, settings: Settings) -> None:
    """`--once` writes every dirty counter to MySQL and exits 0."""
    ids = await _dirty_users(redis, mysql, settings)
    worker = WorkerProcess(worker_settings(settings), "--once")
    assert await worker.wait(within=30) == 0
    assert await mysql_counters(mysql) == dict.fromkeys(ids, 1)


async def test_sigterm_drains_once_more_and_exits_zero(
    redis: Redis, mysql: Pool, settings: Settings
) -> None:
    """Increments made after the last scheduled pass reach MySQL through the final drain."""
    ws = worker_settings(settings, interval_seconds=60)  # one pass at start, then none
    worker = WorkerProcess(ws)
    try:
        await worker.await_line('"event":"started"', within=15)
        ids = await _dirty_users(redis, mysql, settings)
        worker.signal(signal.SIGTERM)
        assert await worker.wait(within=15) == 0
    finally:
        worker.kill()
    assert await mysql_counters(mysql) == dict.fromkeys(ids, 1)
    assert '"final_drain"' in worker.output()


async def test_sigterm_with_a_stuck_batch_exits_within_the_shutdown_timeout(
    redis: Redis, mysql: Pool, settings: Settings
) -> None:
    """A batch that never finishes delays a SIGTERM stop by the shutdown timeout, no more."""
    await _dirty_users(redis, mysql, settings, n=1)
    ws = worker_settings(settings, shutdown_timeout_seconds=1.0)
    worker = WorkerProcess(ws, SYNC_FAULT="mid_batch:stall")
    try:
        await worker.await_line("sync_worker fault: mid_batch stall", within=15)
        started = time.monotonic()
        worker.signal(signal.SIGTERM)
        assert await worker.wait(within=10) == 0
        assert time.monotonic() - started < 4
    finally:
        worker.kill()
    k = keys_of(settings)
    assert await redis.hget(k.inflight(k.bucket(1)), "1") == b"1"  # kept for the next drain


async def test_second_sigint_stops_at_once_and_keeps_the_claim(
    redis: Redis, mysql: Pool, settings: Settings
) -> None:
    """Ctrl-C twice exits at once; the claimed batch waits in inflight and is not lost."""
    await _dirty_users(redis, mysql, settings, n=1)
    ws = worker_settings(settings, shutdown_timeout_seconds=30.0, lease_seconds=1.0)
    worker = WorkerProcess(ws, SYNC_FAULT="after_claim:stall")
    try:
        await worker.await_line("sync_worker fault: after_claim stall", within=15)
        worker.signal(signal.SIGINT)
        await worker.await_line('"stopping"', within=5)
        started = time.monotonic()
        worker.signal(signal.SIGINT)
        assert await worker.wait(within=5) == 130
        assert time.monotonic() - started < 2
    finally:
        worker.kill()
    await asyncio.sleep(1.0)  # the dead worker's bucket lease runs out
    once = WorkerProcess(ws, "--once")
    assert await once.wait(within=30) == 0
    assert await mysql_counters(mysql) == {1: 1}


async def test_metrics_and_health_endpoints_report_the_drain(
    redis: Redis, mysql: Pool, settings: Settings
) -> None:
    """/metrics counts flushed counters and batches; /healthz and --check say healthy."""
    await _dirty_users(redis, mysql, settings)
    ws = worker_settings(settings, metrics_port=free_port())
    worker = WorkerProcess(ws)
    try:
        await worker.await_line('"batch"', within=15)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ws.metrics_port}") as http:
            metrics = (await http.get("/metrics")).text
            health = await http.get("/healthz")
        check = await run_cli(ws, "--check")
    finally:
        worker.kill()
    assert "sync_counters_flushed_total 5.0" in metrics
    assert "sync_batch_duration_seconds_count" in metrics
    assert "sync_lag_seconds" in metrics
    assert 'sync_errors_total{kind="mysql"} 0.0' in metrics
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    assert check.returncode == 0


async def test_health_fails_when_no_drain_succeeds(
    redis: Redis, mysql: Pool, settings: Settings
) -> None:
    """With MySQL unreachable, /healthz turns 503 after the max age and --check exits 1."""
    await _dirty_users(redis, mysql, settings, n=1)
    ws = worker_settings(settings, metrics_port=free_port(), health_max_age_seconds=1.0)
    worker = WorkerProcess(ws, MYSQL_PORT=str(free_port()))  # nothing listens there
    try:
        await worker.await_line('"drain_failed"', within=15)
        await asyncio.sleep(1.2)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ws.metrics_port}") as http:
            health = await http.get("/healthz")
            metrics = (await http.get("/metrics")).text
        check = await run_cli(ws, "--check")
        assert worker.proc.poll() is None  # a transient error never ends the worker
    finally:
        worker.kill()
    assert health.status_code == 503
    assert check.returncode == 1
    assert 'sync_errors_total{kind="mysql"} 0.0' not in metrics
    assert "sync_inflight 1.0" in metrics


@pytest.mark.slow
async def test_liveness_holds_through_a_mysql_outage_while_health_fails(
    redis: Redis, mysql: Pool, settings: Settings
) -> None:
    """MySQL cut off: /healthz turns 503, but /livez stays 200 past its own max age, since
    failed attempts show the worker is running; Kubernetes has nothing to restart."""
    await _dirty_users(redis, mysql, settings, n=1)
    with FaultProxy(settings.mysql_host, settings.mysql_port) as proxy:
        proxy.block()
        own = replace(settings, mysql_port=proxy.port)
        ws = worker_settings(
            own,
            metrics_port=free_port(),
            health_max_age_seconds=1.0,
            liveness_max_age_seconds=10.0,
        )
        worker = WorkerProcess(ws)
        try:
            await worker.await_line('"drain_failed"', within=15)
            health: list[int] = []
            live: list[int] = []
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ws.metrics_port}") as http:
                for _ in range(26):  # 13 s, past both max ages and the 5 s back-off cap
                    health.append((await http.get("/healthz")).status_code)
                    live.append((await http.get("/livez")).status_code)
                    await asyncio.sleep(0.5)
            assert worker.proc.poll() is None
        finally:
            worker.kill()
    assert health[-1] == 503
    assert set(live) == {200}


@pytest.mark.slow
async def test_liveness_fails_when_a_drain_is_stuck(
    redis: Redis, mysql: Pool, settings: Settings
) -> None:
    """A batch that hangs, so no batch or pass ever finishes, turns /livez 503 after its
    max age: a stuck worker is restarted."""
    await _dirty_users(redis, mysql, settings, n=1)
    ws = worker_settings(settings, metrics_port=free_port(), liveness_max_age_seconds=10.0)
    # After the claim, not in the write: the write's own timeout would end that stall.
    worker = WorkerProcess(ws, SYNC_FAULT="after_claim:stall")
    try:
        await worker.await_line("sync_worker fault: after_claim stall", within=15)
        statuses: list[int] = []
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ws.metrics_port}") as http:
            for _ in range(30):  # up to 15 s
                statuses.append((await http.get("/livez")).status_code)
                if statuses[-1] == 503:
                    break
                await asyncio.sleep(0.5)
        assert worker.proc.poll() is None
    finally:
        worker.kill()
    assert statuses[0] == 200
    assert statuses[-1] == 503


async def test_bad_setting_stops_start_up_naming_the_variable(settings: Settings) -> None:
    """An invalid SYNC_* value exits 2 with a message that names the variable."""
    result = await run_cli(worker_settings(settings), "--once", SYNC_BATCH_SIZE="lots")
    assert result.returncode == 2
    assert b"SYNC_BATCH_SIZE" in result.stderr


def test_a_liveness_max_age_within_the_back_off_is_refused() -> None:
    """SYNC_LIVENESS_MAX_AGE_SECONDS under 10 s would fail between retries during an outage."""
    with pytest.raises(SettingsError, match="SYNC_LIVENESS_MAX_AGE_SECONDS"):
        WorkerSettings.from_env(Config(environ={"SYNC_LIVENESS_MAX_AGE_SECONDS": "5"}))
    ok = WorkerSettings.from_env(Config(environ={"SYNC_LIVENESS_MAX_AGE_SECONDS": "90"}))
    assert ok.liveness_max_age_seconds == 90.0


def test_fault_spec_is_checked() -> None:
    """SYNC_FAULT accepts step:action[@n] and refuses unknown steps or actions."""
    assert WorkerFaults.parse("after_claim:exit@3, mid_batch:pause").armed == {
        "after_claim": ("exit", 3),
        "mid_batch": ("pause", 1),
    }
    with pytest.raises(FaultSpecError, match="SYNC_FAULT"):
        WorkerFaults.parse("after_lunch:exit")


async def test_a_stalled_pass_skips_ticks_quietly_and_sigterm_logs_no_traceback(
    redis: Redis, mysql: Pool, settings: Settings
) -> None:
    """Ticks that land on a pass still running are not warned about, and a SIGTERM stop
    that gives up a stuck batch logs no traceback and no error."""
    await _dirty_users(redis, mysql, settings, n=1)
    ws = worker_settings(settings, interval_seconds=0.05, shutdown_timeout_seconds=1.0)
    worker = WorkerProcess(ws, SYNC_FAULT="mid_batch:stall")
    try:
        await worker.await_line("sync_worker fault: mid_batch stall", within=15)
        await asyncio.sleep(0.5)  # about ten ticks while the pass hangs
        worker.signal(signal.SIGTERM)
        assert await worker.wait(within=10) == 0
    finally:
        worker.kill()
    output = worker.output()
    assert '"final_drain_timeout"' in output  # the stop really cut a batch short
    assert "maximum number of running instances" not in output
    assert "Traceback" not in output
    assert "CancelledError" not in output
    assert '"level":"error"' not in output


async def test_an_unexpected_error_in_a_drain_is_logged_with_its_traceback(
    redis: Redis, mysql: Pool, settings: Settings
) -> None:
    """Quieting the stop does not hide real failures: an unexpected error keeps its trace."""
    await _dirty_users(redis, mysql, settings, n=1)
    worker = WorkerProcess(worker_settings(settings), SYNC_FAULT="after_claim:raise")
    try:
        line = await worker.await_line('"drain_failed"', within=15)
        worker.signal(signal.SIGTERM)
        assert await worker.wait(within=10) == 0
    finally:
        worker.kill()
    assert '"level":"warning"' in line
    assert "Traceback" in line
    assert "FaultInjected" in line
    assert await mysql_counters(mysql) == {1: 1}  # the next pass wrote the kept claim


async def test_an_unreachable_redis_cluster_is_a_redis_error_that_never_ends_the_worker(
    settings: Settings,
) -> None:
    """Cluster seeds that do not answer (redis-py raises no RedisError then): the worker
    starts, logs drain_failed of kind redis without a traceback, and stops on SIGTERM."""
    ws = worker_settings(settings, metrics_port=free_port())
    worker = WorkerProcess(ws, REDIS_SENTINELS="", REDIS_CLUSTER_NODES=f"127.0.0.1:{free_port()}")
    try:
        line = await worker.await_line('"drain_failed"', within=15)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ws.metrics_port}") as http:
            metrics = (await http.get("/metrics")).text
        assert worker.proc.poll() is None
        worker.signal(signal.SIGTERM)
        assert await worker.wait(within=10) == 0
    finally:
        worker.kill()
    assert '"kind":"redis"' in line
    assert "Traceback" not in line
    errors = [ln for ln in metrics.splitlines() if ln.startswith('sync_errors_total{kind="redis"}')]
    assert float(errors[0].split()[-1]) >= 1
