"""A test hook: make a process crash, freeze, wait or fail at a named step.

`<VARIABLE>=step:action[@n][,step:action[@n]...]` fires `action` the `n`-th time (default
the first time) the process reaches `step`. The worker reads `SYNC_FAULT` (its steps are in
`sync_worker/faults.py`), the API `API_FAULT` (`counter_svc/store.py`). It exists for the
crash and race tests and for operators rehearsing a failure; leave it unset in production.

Actions: `exit` (SIGKILL itself, as a crash), `pause` (freeze the whole process, for a
test to SIGKILL it at that step), `stall` (this task hangs, as on a stuck server, while
the process still answers signals), `delay=SECONDS` (this task waits that long, then goes
on, as after a GC pause), `raise` (an error the process must survive).
Before acting, one line `<process> fault: <step> <action>` is written to stderr.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import ClassVar

ACTIONS = ("exit", "pause", "stall", "delay", "raise")
PAUSE_SECONDS = 600  # bounded: a forgotten paused process still ends

Hook = Callable[[str], Awaitable[None]]


class FaultInjected(RuntimeError):
    """Raised by the `raise` action."""


class FaultSpecError(ValueError):
    """The fault variable does not name a known step and action."""


@dataclass
class Faults:
    """The faults armed in this process; `hit(step)` is called at each step. A subclass
    names the variable, the process and its steps."""

    variable: ClassVar[str] = "FAULT"
    process: ClassVar[str] = "process"
    steps: ClassVar[tuple[str, ...]] = ()

    armed: dict[str, tuple[str, int]] = field(default_factory=dict)
    seen: dict[str, int] = field(default_factory=dict)
    delays: dict[str, float] = field(default_factory=dict)

    @classmethod
    def parse(cls, spec: str) -> Faults:
        armed: dict[str, tuple[str, int]] = {}
        delays: dict[str, float] = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            step, _, rest = item.partition(":")
            action, _, nth = rest.partition("@")
            action, _, seconds = action.partition("=")
            if (
                step not in cls.steps
                or action not in ACTIONS
                or (nth and not nth.isdigit())
                or (action == "delay") != bool(seconds)
                or (seconds and not seconds.replace(".", "", 1).isdigit())
            ):
                raise FaultSpecError(
                    f"{cls.variable} item {item!r}: want step:action[@n], steps "
                    f"{', '.join(cls.steps)}, actions {', '.join(ACTIONS)} (delay=SECONDS)"
                )
            armed[step] = (action, int(nth or 1))
            if seconds:
                delays[step] = min(float(seconds), PAUSE_SECONDS)
        return cls(armed, delays=delays)

    @classmethod
    def from_env(cls) -> Faults:
        return cls.parse(os.environ.get(cls.variable, ""))

    async def hit(self, step: str) -> None:
        if step not in self.armed:
            return
        self.seen[step] = self.seen.get(step, 0) + 1
        action, nth = self.armed[step]
        if self.seen[step] != nth:
            return
        sys.stderr.write(f"{self.process} fault: {step} {action}\n")
        sys.stderr.flush()
        if action == "exit":
            os.kill(os.getpid(), signal.SIGKILL)
        elif action == "pause":
            # Blocks the event loop on purpose: the process is frozen, as if stopped.
            time.sleep(PAUSE_SECONDS)  # noqa: ASYNC251
        elif action == "stall":
            await asyncio.sleep(PAUSE_SECONDS)
        elif action == "delay":
            await asyncio.sleep(self.delays[step])
        else:
            raise FaultInjected(f"fault injected at {step}")


async def no_fault(step: str) -> None:
    """The hook used when no fault is armed."""


class ApiFaults(Faults):
    """`API_FAULT`: `after_mysql_read`, a cold request between its MySQL read and its seed."""

    variable = "API_FAULT"
    process = "counter_svc"
    steps = ("after_mysql_read",)
