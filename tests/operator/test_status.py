"""The status the operator writes: the workers' gauges parsed from their real exposition
format, and the Ready / Progressing / Degraded conditions."""

from __future__ import annotations

from typing import Any

from prometheus_client import generate_latest

from sync_worker.metrics import Metrics
from usercounter_operator.status import (
    Rollout,
    WorkerStats,
    combine,
    conditions,
    keep_transition_times,
    parse_worker_metrics,
)

Obj = dict[str, Any]
NOW = "2026-01-01T00:00:00Z"


def _exposition(backlog: int, inflight: int, lag: float) -> str:
    m = Metrics()
    m.backlog.set(backlog)
    m.inflight.set(inflight)
    m.lag.set(lag)
    return generate_latest(m.registry).decode()


def test_parses_the_real_worker_exposition() -> None:
    found = parse_worker_metrics(_exposition(120, 7, 3.5))
    assert found == {"sync_dirty_backlog": 120, "sync_inflight": 7, "sync_lag_seconds": 3.5}


def test_combine_keeps_the_largest_and_skips_silent_workers() -> None:
    scrapes = [
        parse_worker_metrics(_exposition(10, 1, 0.5)),
        parse_worker_metrics(_exposition(12, 0, 0.7)),
        {},  # a worker that did not answer
    ]
    assert combine(scrapes) == WorkerStats(backlog=12, inflight=1, lag_seconds=0.7)
    assert combine([{}]) is None


def _deployment(replicas: int, ready: int, generation: int = 2, observed: int = 2) -> Obj:
    return {
        "metadata": {"generation": generation},
        "spec": {"replicas": replicas},
        "status": {
            "readyReplicas": ready,
            "updatedReplicas": ready,
            "observedGeneration": observed,
        },
    }


def _by_type(items: list[dict[str, str]]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in items}


def test_everything_rolled_out_and_in_sync_is_ready() -> None:
    api = Rollout.from_deployment(_deployment(3, 3), 3)
    worker = Rollout.from_deployment(_deployment(2, 2), 2)
    got = _by_type(conditions(api, worker, WorkerStats(0, 0, 0.2), lag_limit_seconds=60, now=NOW))
    assert got == {
        "Ready": ("True", "Available"),
        "Progressing": ("False", "RolloutComplete"),
        "Degraded": ("False", "AsExpected"),
    }


def test_a_rollout_in_progress() -> None:
    api = Rollout.from_deployment(_deployment(3, 1, generation=3, observed=3), 3)
    worker = Rollout.from_deployment(_deployment(2, 2), 2)
    got = _by_type(conditions(api, worker, None, lag_limit_seconds=60, now=NOW))
    assert got["Progressing"] == ("True", "RollingOut")
    assert got["Ready"] == ("False", "RollingOut")
    # a spec the Deployment controller has not seen yet is progress too
    stale = Rollout.from_deployment(_deployment(3, 3, generation=4, observed=3), 3)
    assert not stale.complete


def test_mysql_behind_is_degraded() -> None:
    api = Rollout.from_deployment(_deployment(3, 3), 3)
    worker = Rollout.from_deployment(_deployment(2, 0), 2)
    got = conditions(api, worker, WorkerStats(5000, 0, 300.0), lag_limit_seconds=60, now=NOW)
    degraded = next(c for c in got if c["type"] == "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "SyncLagging")
    assert "300 s behind" in degraded["message"]
    assert "no sync worker" in degraded["message"]


def test_a_stuck_drain_is_degraded_and_not_ready() -> None:
    api = Rollout.from_deployment(_deployment(0, 0), 0)
    worker = Rollout.from_deployment(_deployment(2, 2), 2)
    drain = ("MySQLUnreachable", "MySQL does not answer and Redis still holds 5 dirty")
    got = _by_type(conditions(api, worker, None, lag_limit_seconds=60, drain=drain, now=NOW))
    assert got["Degraded"] == ("True", "MySQLUnreachable")
    assert got["Ready"] == ("False", "MySQLUnreachable")
    waiting = ("Draining", "waiting")
    got = _by_type(conditions(api, worker, None, lag_limit_seconds=60, drain=waiting, now=NOW))
    assert got["Degraded"] == ("False", "AsExpected")


def test_transition_time_moves_only_with_the_status() -> None:
    old = [{"type": "Ready", "status": "True", "lastTransitionTime": "2025-01-01T00:00:00Z"}]
    same = [
        {"type": "Ready", "status": "True", "reason": "x", "message": "", "lastTransitionTime": NOW}
    ]
    assert keep_transition_times(same, old)[0]["lastTransitionTime"] == "2025-01-01T00:00:00Z"
    flipped = [{**same[0], "status": "False"}]
    assert keep_transition_times(flipped, old)[0]["lastTransitionTime"] == NOW
