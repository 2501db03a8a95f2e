"""External linters over the deployment files: hadolint, checkov, the Compose schema."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.support import ROOT, run, tool, tools_path

# checkov: the inline skip of a Kubernetes object, and of a Dockerfile.
_K8S_SKIP = re.compile(r"^(\s*)checkov\.io/skip\d+:\s*(CKV2?_\w+)=(.*)$")
_DOCKER_SKIP = re.compile(r"#\s*checkov:skip=(CKV2?_\w+)(?::(.*))?")


def _checkov(tmp_path: Path, *args: str) -> list[dict[str, Any]]:
    out = tmp_path / "out"
    result = run(
        [
            tool("checkov"),
            *args,
            "--skip-download",  # no calls home: only registries are reachable here and in CI
            "--compact",
            "--output",
            "json",
            "--output-file-path",
            str(out),
        ],
        timeout=300,
        env={**os.environ, "PATH": tools_path()},
    )
    report = out / "results_json.json"
    assert report.is_file(), result.stderr[-3000:]
    data = json.loads(report.read_text(encoding="utf-8"))
    return data if isinstance(data, list) else [data]


@pytest.fixture(scope="module")
def checkov_reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """checkov over k8s/ (each kustomization rendered) and the Dockerfile, once per run."""
    reports = {}
    for framework, target in (("kustomize", ["-d", "k8s"]), ("dockerfile", ["-f", "Dockerfile"])):
        (report,) = _checkov(tmp_path_factory.mktemp(framework), *target, "--framework", framework)
        assert report["check_type"] == framework
        reports[framework] = report
    return reports


@pytest.mark.parametrize("framework", ["kustomize", "dockerfile"])
def test_checkov_passes(checkov_reports: dict[str, dict[str, Any]], framework: str) -> None:
    """No failed checkov check and no parse error; each skip carries its reason."""
    report = checkov_reports[framework]
    summary = report["summary"]
    failed = [
        f"{f['check_id']} {f['check_name']} ({f['resource']})"
        for f in report["results"]["failed_checks"]
    ]
    assert not failed, "\n".join(failed)
    assert summary["parsing_errors"] == 0
    assert summary["passed"] > 0
    for skipped in report["results"]["skipped_checks"]:
        assert skipped["check_result"].get("suppress_comment"), skipped["check_id"]


def test_checkov_scans_every_overlay(checkov_reports: dict[str, dict[str, Any]]) -> None:
    """The kustomize scan covers each overlay's workloads, dev-sentinel's Redis data nodes
    and Sentinels and dev-cluster's included (a component is scanned through the overlays
    that use it)."""
    results = checkov_reports["kustomize"]["results"]
    resources = {
        r["resource"] for kind in ("passed_checks", "skipped_checks") for r in results[kind]
    }
    # checkov names a rendered object `overlay:<dir>:<Kind>.<namespace>.<name>`.
    scanned = {r.rsplit(":", 1)[-1] for r in resources}
    for namespace, statefulset in (
        ("usercounter-dev", "redis"),
        ("usercounter-dev-sentinel", "redis-data"),
        ("usercounter-dev-sentinel", "redis-sentinel"),
        # dev-cluster has no Redis of its own (the operator runs it): its MySQL stands in
        ("usercounter-dev-cluster", "mysql"),
    ):
        assert f"StatefulSet.{namespace}.{statefulset}" in scanned, statefulset
    # and the operator's own kustomization (k8s/operator)
    assert "Deployment.usercounter.usercounter-operator" in scanned


def test_checkov_skips_are_justified_in_a_comment() -> None:
    """Every checkov skip has a reason and a comment on the line above it."""
    files = [*sorted((ROOT / "k8s").rglob("*.yaml")), ROOT / "Dockerfile"]
    skips = 0
    for path in files:
        lines = path.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            match = _K8S_SKIP.match(line) or _DOCKER_SKIP.search(line)
            if not match:
                continue
            skips += 1
            reason = match.groups()[-1]
            where = f"{path.relative_to(ROOT)}:{i + 1}"
            assert (reason or "").strip(), f"{where}: skip without a reason"
            assert lines[i - 1].strip().startswith("#"), f"{where}: no comment above the skip"
    assert skips, "expected the documented CKV_K8S_15/CKV_K8S_43 skips"


def test_hadolint_passes() -> None:
    """hadolint finds nothing in the Dockerfile, not even style hints."""
    result = run([tool("hadolint"), "--no-color", "--failure-threshold", "style", "Dockerfile"])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", ["compose.yaml", "compose.sentinel.yaml"])
def test_compose_matches_the_compose_specification(path: str) -> None:
    """compose.yaml (its `sentinel` profile included) and the override that points the app
    at that profile validate against the Compose specification schema check-jsonschema
    ships."""
    result = run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", path]
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_install_tools_script_parses() -> None:
    """scripts/install-tools.sh is valid bash and stops on the first error."""
    script = ROOT / "scripts" / "install-tools.sh"
    assert os.access(script, os.X_OK)
    assert "set -euo pipefail" in script.read_text(encoding="utf-8")
    result = run(["bash", "-n", str(script)])
    assert result.returncode == 0, result.stderr
