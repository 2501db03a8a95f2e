"""`python -m counter_svc serve` as a real process: logs, secrets, graceful shutdown."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from counter_svc.settings import Settings
from tests.conftest import settings_env
from tests.faults import free_port, port_open, wait_until

pytestmark = pytest.mark.slow


def test_serve_logs_json_with_request_id_hides_secrets_and_stops_cleanly(
    settings: Settings, tmp_path: Path
) -> None:
    """JSON access lines carry the request id; the password never appears; SIGTERM exits 0."""
    secret = tmp_path / "mysql-password"
    secret.write_text("Very-Secret-Pw-42")
    port = free_port()
    env = settings_env(settings) | {
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "MYSQL_PASSWORD_FILE": str(secret),
        "REDIS_URL": settings.redis_url.replace("redis://", "redis://:redis-Secret-7@"),
    }
    log_path = tmp_path / "api.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "counter_svc", "serve"],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until(lambda: port_open(port), 20, "the API to listen")
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/readyz", headers={"X-Request-ID": "probe-1"}
            )
            with pytest.raises(urllib.error.HTTPError) as answer:
                urllib.request.urlopen(request, timeout=10)
            # Wrong credentials for both stores: not ready, but alive and saying why.
            assert answer.value.code == 503
            answer.value.close()
        finally:
            proc.send_signal(signal.SIGTERM)
            # uvicorn finishes in-flight requests, then re-raises SIGTERM as its exit status.
            assert proc.wait(timeout=15) in (0, -signal.SIGTERM)
    text = log_path.read_text()
    assert "Very-Secret-Pw-42" not in text
    assert "redis-Secret-7" not in text
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    access = [line for line in lines if line.get("event") == "request"]
    assert access
    assert access[0]["request_id"] == "probe-1"
    assert access[0]["status"] == 503
    assert access[0]["route"] == "/readyz"
    assert "duration_ms" in access[0]
    assert any(line.get("event", "").startswith("Finished server process") for line in lines)
