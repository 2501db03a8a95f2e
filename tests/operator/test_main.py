"""`python -m usercounter_operator` without a cluster: a one-line reason, exit status 2,
no traceback. These are real attempts (no configuration to find; a TCP connection to a
port where no API server listens); nothing is faked."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.faults import free_port
from tests.operator.support import ROOT

KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters:
  - name: nowhere
    cluster: {{server: "https://127.0.0.1:{port}"}}
users:
  - name: nobody
    user: {{token: not-a-token}}
contexts:
  - name: nowhere
    context: {{cluster: nowhere, user: nobody}}
current-context: nowhere
"""


def _run(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {
        k: v for k, v in os.environ.items() if not k.startswith(("KUBERNETES_", "KUBECONFIG"))
    }
    environ |= {"HOME": str(tmp_path), **env}
    return subprocess.run(
        [sys.executable, "-m", "usercounter_operator", *args],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_without_any_kubernetes_configuration(tmp_path: Path) -> None:
    result = _run(tmp_path, "--namespace", "usercounter")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "usercounter-operator: no Kubernetes configuration" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_with_a_kubeconfig_whose_server_does_not_answer(tmp_path: Path) -> None:
    config = tmp_path / "kubeconfig"
    config.write_text(KUBECONFIG.format(port=free_port()), encoding="utf-8")
    result = _run(tmp_path, "--namespace", "usercounter", KUBECONFIG=str(config))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "cannot reach the Kubernetes API" in result.stderr


def test_without_a_namespace(tmp_path: Path) -> None:
    result = _run(tmp_path)
    assert result.returncode == 2
    assert "no namespace" in result.stderr
    assert "Traceback" not in result.stderr


def test_help_names_the_options(tmp_path: Path) -> None:
    result = _run(tmp_path, "--help")
    assert result.returncode == 0
    for option in ("--namespace", "--liveness", "--metrics-port"):
        assert option in result.stdout
