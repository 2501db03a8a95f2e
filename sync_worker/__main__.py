"""`python -m sync_worker [--once | --check]`: the write-behind worker of UserCounter."""

from __future__ import annotations

import argparse
import logging
import sys

import structlog

from counter_svc.logs import configure_logging
from counter_svc.settings import SettingsError
from sync_worker.faults import FaultSpecError, WorkerFaults
from sync_worker.health import check
from sync_worker.settings import WorkerSettings

log = structlog.get_logger("sync_worker")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sync_worker", description=__doc__)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true", help="drain every bucket once and exit")
    mode.add_argument(
        "--check", action="store_true", help="exit 0 if the running worker's /healthz is ok"
    )
    args = parser.parse_args(argv)
    try:
        settings = WorkerSettings.from_env()
        faults = WorkerFaults.from_env()
    except (SettingsError, FaultSpecError) as e:
        print(f"configuration error: {e}", file=sys.stderr)
        return 2
    if args.check:
        return check(settings.metrics_port)
    configure_logging(settings.base.log_format, settings.base.log_level)
    # One line per job run is noise next to the worker's own line per batch.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    if faults.armed:
        log.warning("fault_hook_armed", faults=sorted(faults.armed))

    import uvloop

    from sync_worker.worker import run

    # The API's event loop too (uvicorn's loop="uvloop"): less CPU per Redis and MySQL
    # round trip, which the worker shares a machine's cores with the API for.
    return uvloop.run(run(settings, once=args.once, hook=faults.hit))


if __name__ == "__main__":
    sys.exit(main())
