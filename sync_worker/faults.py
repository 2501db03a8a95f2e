"""The worker's fault hook (`SYNC_FAULT`, see `counter_svc/faults.py`).

Steps, in drain order: `before_claim`, `after_claim`, `mid_batch` (UPDATE sent, not yet
committed), `after_commit` (committed, inflight not yet cleaned), `after_finish`.
"""

from __future__ import annotations

from counter_svc.faults import FaultInjected, Faults, FaultSpecError, Hook, no_fault

STEPS = ("before_claim", "after_claim", "mid_batch", "after_commit", "after_finish")


class WorkerFaults(Faults):
    variable = "SYNC_FAULT"
    process = "sync_worker"
    steps = STEPS


__all__ = ["STEPS", "FaultInjected", "FaultSpecError", "Hook", "WorkerFaults", "no_fault"]
