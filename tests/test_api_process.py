"""`python -m counter_svc serve` as a real process: logs, secrets, graceful shutdown."""

from __future__ import annotations

import json
import signal
import urllib.request
from pathlib import Path

import pytest

from counter_svc.settings import Settings
from tests.conftest import serving

pytestmark = pytest.mark.slow


def test_serve_logs_json_with_request_id_hides_secrets_and_stops_cleanly(
    settings: Settings, tmp_path: Path
) -> None:
    """JSON access lines carry the request id; the password never appears; SIGTERM exits 0."""
    secret = tmp_path / "mysql-password"
    secret.write_text("Very-Secret-Pw-42")
    log_path = tmp_path / "api.log"
    env = {
        "MYSQL_PASSWORD_FILE": str(secret),
        "REDIS_URL": settings.redis_url.replace("redis://", "redis://:redis-Secret-7@"),
    }
    with serving(settings, log_path, **env) as (url, proc):
        request = urllib.request.Request(f"{url}/readyz", headers={"X-Request-ID": "probe-1"})
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(request, timeout=10)
        # Wrong credentials for both stores: not ready, but alive and saying why.
        assert answer.value.code == 503
        answer.value.close()
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
