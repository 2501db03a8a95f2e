"""The worker process: drain passes on an interval, back-off on errors, graceful stop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
from datetime import UTC, datetime

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from asyncmy.pool import Pool

from counter_svc.connections import REDIS_ERRORS, RedisClient, open_mysql, open_redis
from counter_svc.keys import Keys
from sync_worker.drain import Drainer, MySQLError
from sync_worker.faults import Hook, WorkerFaults, no_fault
from sync_worker.health import HealthServer, health_app
from sync_worker.metrics import Metrics
from sync_worker.settings import WorkerSettings

log = structlog.get_logger("sync_worker")

BACKOFF_MAX_SECONDS = 5.0


def error_kind(e: BaseException) -> str:
    if isinstance(e, MySQLError):
        return "mysql"
    if isinstance(e, REDIS_ERRORS):
        return "redis"
    return "other"


class Worker:
    """Runs drain passes over all buckets; a failed pass backs off with jitter and keeps
    its claim in `inflight` for the next one. Never exits on a drain error."""

    def __init__(
        self,
        settings: WorkerSettings,
        redis: RedisClient,
        mysql: Pool,
        metrics: Metrics | None = None,
        hook: Hook = no_fault,
    ) -> None:
        base = settings.base
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.drainer = Drainer(
            redis,
            mysql,
            Keys.from_settings(base),
            batch_size=settings.batch_size,
            lease_seconds=settings.lease_seconds,
            idle_ttl_seconds=base.idle_ttl_seconds,
            tombstone_ttl_seconds=base.tombstone_ttl_seconds,
            # A batch write never outlives the lease, so no peer replays it meanwhile.
            write_timeout_seconds=min(
                settings.lease_seconds / 2, max(10.0, 5 * base.mysql_timeout_seconds)
            ),
            metrics=self.metrics,
            hook=hook,
            token=settings.worker_id,
            repair=base.redis_ack_replicas == 0,
            ack_replicas=base.redis_ack_replicas,
            ack_timeout_ms=base.redis_ack_timeout_ms,
        )
        self._lock = asyncio.Lock()
        self._failures = 0
        self._retry_at = 0.0
        self._stop = asyncio.Event()
        self._signals = 0
        self._current: asyncio.Future[bool] | None = None

    async def run_pass(self, *, force: bool = False) -> bool:
        """One pass over all buckets unless backing off; True when it succeeded."""
        if not force and time.monotonic() < self._retry_at:
            return False
        async with self._lock:
            return await self._pass()

    async def _pass(self) -> bool:
        errors = await self.drainer.drain_all(self.settings.concurrency)
        try:
            await self.drainer.observe()
        except REDIS_ERRORS as e:
            errors.append(e)
        self.metrics.progressed()
        if not errors:
            if self._failures:
                log.info("drain_recovered", after_failures=self._failures)
            self._failures = 0
            self.metrics.succeeded()
            return True
        for error in errors:
            self.metrics.errors.labels(error_kind(error)).inc()
        self._failures += 1
        delay = min(BACKOFF_MAX_SECONDS, self.settings.interval_seconds * 2 ** (self._failures - 1))
        delay *= random.uniform(0.5, 1.0)
        self._retry_at = time.monotonic() + delay
        first = errors[0]
        log.warning(
            "drain_failed",
            kind=error_kind(first),
            error=str(first) or type(first).__name__,
            errors=len(errors),
            failures=self._failures,
            retry_in_s=round(delay, 2),
            # The exception itself: outside an `except` block, `exc_info=True` finds none.
            exc_info=first if error_kind(first) == "other" else False,
        )
        return False

    async def _tick(self) -> None:
        # The pass is the worker's own task, not the scheduler's job, so the job returns at
        # once: a pass longer than the interval makes later ticks return here instead of
        # hitting `max_instances` (an APScheduler warning per tick), and stopping the
        # scheduler never cancels the batch in hand (the final drain waits for it).
        if self._stop.is_set() or (self._current is not None and not self._current.done()):
            return
        self._current = asyncio.create_task(self.run_pass())
        self._current.add_done_callback(self._pass_ended)

    def _pass_ended(self, task: asyncio.Future[bool]) -> None:
        # Drain errors are handled in the pass; anything escaping it is a bug to show.
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("pass_crashed", exc_info=error)

    def _on_signal(self, signum: int) -> None:
        self._signals += 1
        if self._signals > 1 and signum == signal.SIGINT:
            # Cold stop: whatever was claimed stays in inflight for the next drain.
            os._exit(130)
        log.info("stopping", signal=signal.Signals(signum).name)
        self._stop.set()

    async def serve(self) -> None:
        """Run until SIGTERM or SIGINT, then drain once more (bounded) and return."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)
        http = None
        if self.settings.metrics_port:
            app = health_app(
                self.metrics,
                self.settings.health_max_age_seconds,
                self.settings.liveness_max_age_seconds,
            )
            http = HealthServer(app, self.settings.base.host, self.settings.metrics_port)
            await http.start()
        scheduler = AsyncIOScheduler(event_loop=loop, timezone=UTC)
        scheduler.add_job(
            self._tick,
            "interval",
            seconds=self.settings.interval_seconds,
            max_instances=1,
            coalesce=True,
            next_run_time=datetime.now(UTC),
            misfire_grace_time=None,
        )
        try:
            await self.drainer.buckets.load()  # else the first call loads it
        except REDIS_ERRORS as e:
            log.warning("redis_functions_not_loaded", error=str(e))
        scheduler.start()
        log.info("started", **self.settings.base.safe_summary(), token=self.drainer.token)
        await self._stop.wait()
        # Paused, and shut down only after the final drain: a tick submitted just before the
        # stop then still runs (and returns), instead of being cancelled before it starts,
        # which APScheduler would log as an error with a traceback.
        scheduler.pause()
        await self.final_drain()
        if self._current is not None and not self._current.done():
            # Past the shutdown timeout: give up the batch in hand; its claim stays in
            # inflight and the next worker flushes it first.
            self._current.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._current
        scheduler.shutdown(wait=False)
        if http is not None:
            await http.stop()

    async def final_drain(self) -> None:
        """Wait for the pass in hand, then drain once more; both within the shutdown timeout."""
        timeout = self.settings.shutdown_timeout_seconds
        try:
            async with asyncio.timeout(timeout):
                ok = await self.run_pass(force=True)
            log.info("final_drain", ok=ok)
        except TimeoutError:
            log.warning("final_drain_timeout", timeout_s=timeout)


async def run(settings: WorkerSettings, *, once: bool = False, hook: Hook | None = None) -> int:
    """The process: open pools, serve (or drain once), close pools in reverse order."""
    redis = open_redis(settings.base)
    # minsize 0: start even while MySQL is down; the drain backs off until it returns.
    mysql = await open_mysql(settings.base, minsize=0)
    try:
        worker = Worker(settings, redis, mysql, hook=hook or WorkerFaults.from_env().hit)
        if once:
            return 0 if await worker.run_pass(force=True) else 1
        await worker.serve()
        return 0
    finally:
        mysql.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await mysql.wait_closed()
        await redis.aclose()
