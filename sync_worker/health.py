"""The worker's HTTP side: `/metrics` for Prometheus, `/healthz` and `/livez` for probes."""

from __future__ import annotations

import asyncio
import contextlib
import urllib.request
from collections.abc import Awaitable, Callable, Iterator

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sync_worker.metrics import Metrics


def health_app(
    metrics: Metrics, max_age_seconds: float, liveness_max_age_seconds: float
) -> Starlette:
    """`/healthz` answers 503 when no drain pass succeeded for `max_age_seconds` (MySQL or
    Redis down counts); `/livez` answers 503 only when no batch or pass, failed or not,
    finished for `liveness_max_age_seconds`: the worker itself is stuck."""

    async def prometheus(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[
            Route("/healthz", _age_probe(metrics.success_age, max_age_seconds, "stale", "success")),
            Route(
                "/livez",
                _age_probe(metrics.progress_age, liveness_max_age_seconds, "stuck", "progress"),
            ),
            Route("/metrics", prometheus),
        ]
    )


def _age_probe(
    age_of: Callable[[], float], max_age: float, failing: str, what: str
) -> Callable[[Request], Awaitable[Response]]:
    """A probe that answers 200 while `age_of()` is within `max_age`, else 503 `failing`."""

    async def probe(request: Request) -> Response:
        age = age_of()
        ok = age <= max_age
        body = {"status": "ok" if ok else failing, f"last_{what}_age_seconds": round(age, 3)}
        return JSONResponse(body, status_code=200 if ok else 503)

    return probe


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The worker owns SIGTERM and SIGINT; uvicorn must not take them over.
        yield


class HealthServer:
    """uvicorn serving `health_app` inside the worker's event loop."""

    def __init__(self, app: Starlette, host: str, port: int) -> None:
        config = uvicorn.Config(
            app, host=host, port=port, lifespan="off", access_log=False, log_config=None
        )
        self._server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve())
        for _ in range(200):  # up to 2 s; a port in use ends the task at once
            if self._server.started or self._task.done():
                break
            await asyncio.sleep(0.01)
        if self._task.done():
            self._task.result()
            raise RuntimeError("the metrics server did not start")

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._task, timeout=5)


def check(port: int, timeout: float = 2.0) -> int:
    """`--check`: exit code 0 when the local worker's `/healthz` answers 200, else 1."""
    url = f"http://127.0.0.1:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return 0 if response.status == 200 else 1
    except OSError:
        return 1
