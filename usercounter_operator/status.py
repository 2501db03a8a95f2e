"""The `status` of a UserCounter: conditions from the Deployments and the workers' metrics.

Pure functions; the handlers feed them what they read from the cluster and the worker
pods' `:9100/metrics`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

WORKER_GAUGES = ("sync_dirty_backlog", "sync_inflight", "sync_lag_seconds")


@dataclass(frozen=True)
class WorkerStats:
    """The sync backlog as the workers report it. Each worker measures every bucket, so
    the figures of several workers are the same quantity seen at different instants: the
    largest is kept."""

    backlog: int
    inflight: int
    lag_seconds: float


def parse_worker_metrics(text: str) -> dict[str, float]:
    """The three backlog gauges out of a worker's Prometheus text exposition."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name in WORKER_GAUGES:
            for sample in family.samples:
                if sample.name == family.name:
                    found[family.name] = float(sample.value)
    return found


def combine(scrapes: Iterable[Mapping[str, float]]) -> WorkerStats | None:
    """The workers' figures into one; None when no worker answered with all three."""
    complete = [s for s in scrapes if all(g in s for g in WORKER_GAUGES)]
    if not complete:
        return None
    return WorkerStats(
        backlog=int(max(s["sync_dirty_backlog"] for s in complete)),
        inflight=int(max(s["sync_inflight"] for s in complete)),
        lag_seconds=max(s["sync_lag_seconds"] for s in complete),
    )


@dataclass(frozen=True)
class Rollout:
    """What a Deployment's status says."""

    desired: int
    ready: int
    updated: int
    observed_current: bool  # status.observedGeneration == metadata.generation

    @classmethod
    def from_deployment(cls, deployment: Mapping[str, Any] | None, desired: int) -> Rollout:
        if deployment is None:
            return cls(desired, 0, 0, False)
        status = deployment.get("status") or {}
        generation = deployment.get("metadata", {}).get("generation")
        return cls(
            desired=int(deployment.get("spec", {}).get("replicas", desired) or 0),
            ready=int(status.get("readyReplicas") or 0),
            updated=int(status.get("updatedReplicas") or 0),
            observed_current=status.get("observedGeneration") == generation,
        )

    @property
    def complete(self) -> bool:
        return self.observed_current and self.ready >= self.desired and self.updated >= self.desired


def condition(kind: str, ok: bool, reason: str, message: str, now: str) -> dict[str, str]:
    return {
        "type": kind,
        "status": "True" if ok else "False",
        "reason": reason,
        "message": message,
        "lastTransitionTime": now,
    }


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def conditions(
    api: Rollout,
    worker: Rollout,
    stats: WorkerStats | None,
    *,
    lag_limit_seconds: float,
    drain: tuple[str, str] | None = None,
    now: str | None = None,
) -> list[dict[str, str]]:
    """Ready, Progressing and Degraded. `drain` is (reason, message) while a suspend or a
    delete waits for the drain; a reason other than Draining/Drained means it is stuck."""
    now = now or now_rfc3339()
    progressing = not (api.complete and worker.complete)
    troubles = []
    if stats is not None and stats.lag_seconds > lag_limit_seconds:
        troubles.append(("SyncLagging", f"MySQL is {stats.lag_seconds:.0f} s behind Redis"))
    if drain and drain[0] not in ("Draining", "Drained"):
        troubles.append(drain)
    if worker.observed_current and worker.desired and not worker.ready:
        troubles.append(("NoWorkerReady", "no sync worker reports a recent successful drain"))
    ready = not progressing and not troubles and api.ready > 0
    if drain:
        ready_reason, ready_message = drain
    elif ready:
        ready_reason, ready_message = "Available", f"{api.ready} API and {worker.ready} workers"
    else:
        ready_reason = "RollingOut" if progressing else (troubles[0][0] if troubles else "NoAPI")
        ready_message = (
            f"API {api.ready}/{api.desired} ready, workers {worker.ready}/{worker.desired}"
        )
    return [
        condition("Ready", ready, ready_reason, ready_message, now),
        condition(
            "Progressing",
            progressing,
            "RollingOut" if progressing else "RolloutComplete",
            f"API {api.updated}/{api.desired} updated, workers {worker.updated}/{worker.desired}",
            now,
        ),
        condition(
            "Degraded",
            bool(troubles),
            troubles[0][0] if troubles else "AsExpected",
            "; ".join(m for _, m in troubles) if troubles else "nothing wrong is known",
            now,
        ),
    ]


def keep_transition_times(
    new: list[dict[str, str]], old: Iterable[Mapping[str, Any]]
) -> list[dict[str, str]]:
    """lastTransitionTime changes only when a condition's status does."""
    previous = {c.get("type"): c for c in old}
    out = []
    for c in new:
        before = previous.get(c["type"])
        if before and before.get("status") == c["status"] and before.get("lastTransitionTime"):
            c = {**c, "lastTransitionTime": str(before["lastTransitionTime"])}
        out.append(c)
    return out
