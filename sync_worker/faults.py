"""A test hook: make the worker crash, freeze or fail at a named step of a drain.

`SYNC_FAULT=step:action[@n][,step:action[@n]...]` fires `action` the `n`-th time (default
the first time) the worker reaches `step`. It exists for the crash tests and for
operators rehearsing a failure; leave it unset in production.

Steps, in drain order: `before_claim`, `after_claim`, `mid_batch` (UPDATE sent, not yet
committed), `after_commit` (committed, inflight not yet cleaned), `after_finish`.
Actions: `exit` (SIGKILL itself, as a crash), `pause` (freeze the whole process, for a
test to SIGKILL it at that step), `stall` (this drain hangs, as on a stuck server, while
the process still answers signals), `raise` (an error the worker must survive).
Before acting, one line `sync_worker fault: <step> <action>` is written to stderr.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

STEPS = ("before_claim", "after_claim", "mid_batch", "after_commit", "after_finish")
ACTIONS = ("exit", "pause", "stall", "raise")
PAUSE_SECONDS = 600  # bounded: a forgotten paused worker still ends

Hook = Callable[[str], Awaitable[None]]


class FaultInjected(RuntimeError):
    """Raised by the `raise` action."""


class FaultSpecError(ValueError):
    """`SYNC_FAULT` does not name a known step and action."""


@dataclass
class Faults:
    """The faults armed in this process; `hit(step)` is called by the drain at each step."""

    armed: dict[str, tuple[str, int]] = field(default_factory=dict)
    seen: dict[str, int] = field(default_factory=dict)

    @classmethod
    def parse(cls, spec: str) -> Faults:
        armed: dict[str, tuple[str, int]] = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            step, _, rest = item.partition(":")
            action, _, nth = rest.partition("@")
            if step not in STEPS or action not in ACTIONS or (nth and not nth.isdigit()):
                raise FaultSpecError(
                    f"SYNC_FAULT item {item!r}: want step:action[@n], steps {', '.join(STEPS)}, "
                    f"actions {', '.join(ACTIONS)}"
                )
            armed[step] = (action, int(nth or 1))
        return cls(armed)

    @classmethod
    def from_env(cls) -> Faults:
        return cls.parse(os.environ.get("SYNC_FAULT", ""))

    async def hit(self, step: str) -> None:
        if step not in self.armed:
            return
        self.seen[step] = self.seen.get(step, 0) + 1
        action, nth = self.armed[step]
        if self.seen[step] != nth:
            return
        sys.stderr.write(f"sync_worker fault: {step} {action}\n")
        sys.stderr.flush()
        if action == "exit":
            os.kill(os.getpid(), signal.SIGKILL)
        elif action == "pause":
            # Blocks the event loop on purpose: the process is frozen, as if stopped.
            time.sleep(PAUSE_SECONDS)  # noqa: ASYNC251
        elif action == "stall":
            await asyncio.sleep(PAUSE_SECONDS)
        else:
            raise FaultInjected(f"fault injected at {step}")


async def no_fault(step: str) -> None:
    """The hook used when no fault is armed."""
