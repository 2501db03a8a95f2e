"""The operator's own Prometheus metrics, served on --metrics-port (8081)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter


class _Handlers:
    def __init__(self) -> None:
        self.runs = Counter(
            "usercounter_operator_handler_runs",
            "Handler runs by handler and result (ok, retry, error).",
            ["handler", "result"],
        )

    @contextmanager
    def track(self, handler: str) -> Iterator[None]:
        """Counts one run: ok, retry (kopf.TemporaryError: a drain still waiting) or error."""
        import kopf

        try:
            yield
        except kopf.TemporaryError:
            self.runs.labels(handler, "retry").inc()
            raise
        except Exception:
            self.runs.labels(handler, "error").inc()
            raise
        self.runs.labels(handler, "ok").inc()


RECONCILES = _Handlers()
DRAIN_CHECKS = Counter(
    "usercounter_operator_drain_checks",
    "Drain checks by verdict (Drained, Draining, DrainTimedOut, MySQLUnreachable).",
    ["verdict"],
)
