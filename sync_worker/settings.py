"""The worker's own settings (the `SYNC_*` variables) on top of the shared ones."""

from __future__ import annotations

import re
from dataclasses import dataclass

from starlette.config import Config

from counter_svc.settings import Settings, SettingsError, load_config, read, read_float, read_int

_WORKER_ID_RE = re.compile(r"[A-Za-z0-9._:@-]{1,200}")


@dataclass(frozen=True)
class WorkerSettings:
    """Read once at start-up; an unusable value stops the worker naming the variable."""

    base: Settings
    interval_seconds: float = 1.0
    batch_size: int = 1000
    lease_seconds: float = 30.0
    concurrency: int = 4
    metrics_port: int = 9100
    health_max_age_seconds: float = 60.0
    liveness_max_age_seconds: float = 60.0
    shutdown_timeout_seconds: float = 20.0
    # The worker's lease token. Stable across restarts of one worker (Kubernetes: the pod
    # name), a restarted worker takes its own leases back at once instead of waiting for
    # them to expire. Empty: a random token per process.
    worker_id: str = ""

    @classmethod
    def from_env(cls, config: Config | None = None) -> WorkerSettings:
        c = config or load_config()
        return cls(
            base=Settings.from_env(c),
            interval_seconds=read_float(
                c, "SYNC_INTERVAL_SECONDS", cls.interval_seconds, 0.01, 3600
            ),
            batch_size=read_int(c, "SYNC_BATCH_SIZE", cls.batch_size, 1, 50_000),
            lease_seconds=read_float(c, "SYNC_LEASE_SECONDS", cls.lease_seconds, 1, 3600),
            concurrency=read_int(c, "SYNC_CONCURRENCY", cls.concurrency, 1, 256),
            metrics_port=read_int(c, "SYNC_METRICS_PORT", cls.metrics_port, 0, 65535),
            health_max_age_seconds=read_float(
                c, "SYNC_HEALTH_MAX_AGE_SECONDS", cls.health_max_age_seconds, 1, 86_400
            ),
            # At least 10 s: failing passes are up to 5 s apart (the back-off cap).
            liveness_max_age_seconds=read_float(
                c, "SYNC_LIVENESS_MAX_AGE_SECONDS", cls.liveness_max_age_seconds, 10, 86_400
            ),
            shutdown_timeout_seconds=read_float(
                c, "SYNC_SHUTDOWN_TIMEOUT_SECONDS", cls.shutdown_timeout_seconds, 0.1, 3600
            ),
            worker_id=_worker_id(c),
        )


def _worker_id(config: Config) -> str:
    value = read(config, "SYNC_WORKER_ID", str, "").strip()
    if value and not _WORKER_ID_RE.fullmatch(value):
        raise SettingsError(
            "SYNC_WORKER_ID must be 1 to 200 characters of letters, digits and . _ : @ -"
        )
    return value
