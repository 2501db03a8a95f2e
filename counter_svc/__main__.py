"""`python -m counter_svc serve | migrate`."""

from __future__ import annotations

import argparse
import asyncio
import sys

import structlog

from counter_svc.faults import ApiFaults, FaultSpecError
from counter_svc.logs import configure_logging
from counter_svc.settings import Settings, SettingsError

log = structlog.get_logger("counter_svc")


def _serve(settings: Settings) -> None:
    import uvicorn

    from counter_svc.serving import protocol_with, raise_open_files_limit

    log.info(
        "starting", **settings.safe_summary(), port=settings.port, workers=settings.web_concurrency
    )
    raise_open_files_limit()  # before the workers start: they inherit it
    uvicorn.run(
        "counter_svc.asgi:app",
        host=settings.host,
        port=settings.port,
        workers=settings.web_concurrency,
        loop="uvloop",
        # httptools, one socket write per response, request heads bounded in size and time
        http=protocol_with(settings.request_head_timeout_seconds),
        # No WebSocket routes: an upgrade request is answered as plain HTTP, by the app,
        # in its JSON shape with its headers (uvicorn's WebSocket side would answer first).
        ws="none",
        access_log=False,  # the app writes one structured line per request
        log_config=None,
        proxy_headers=False,
        timeout_graceful_shutdown=10,
        server_header=False,
    )


def _migrate(settings: Settings) -> None:
    from counter_svc.migrate import migrate

    asyncio.run(migrate(settings))
    log.info("migrated", database=settings.mysql_database)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m counter_svc", description=__doc__)
    parser.add_argument("command", choices=["serve", "migrate"])
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
        faults = ApiFaults.from_env()
    except (SettingsError, FaultSpecError) as e:
        print(f"configuration error: {e}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format, settings.log_level)
    if faults.armed:
        log.warning("fault_hook_armed", faults=sorted(faults.armed))
    if args.command == "serve":
        _serve(settings)
    else:
        try:
            _migrate(settings)
        except Exception as e:
            log.error("migrate_failed", error=str(e))  # noqa: TRY400 - the cause, not a traceback
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
