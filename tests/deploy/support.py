"""Helpers shared by the deploy tests (`test_deploy_*.py`); this module holds no tests.

Everything here is static: no container is built or run and no cluster is contacted.
External linters are looked up in `.venv-tools/bin` (made by `scripts/install-tools.sh`),
then on PATH. A missing one skips its check locally and fails it under CI, where the
script has run first.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_validate.utils import SchemaNotFoundError, ValidationError, validate
from starlette.config import Config

from counter_svc.settings import Settings
from sync_worker.settings import WorkerSettings

ROOT = Path(__file__).resolve().parents[2]
TOOLS_BIN = ROOT / ".venv-tools" / "bin"
OVERLAY = ROOT / "k8s" / "overlays" / "dev"
BASE = ROOT / "k8s" / "base"
APP_IMAGE = "usercounter"
SOURCE_PACKAGES = ("counter_svc", "sync_worker")

# `read(c, "X", ...)`, `read_int(c, "X", ...)`, ... in counter_svc/settings.py and the
# worker's settings; `read_secret(c, "X", ...)` also reads `X_FILE`.
_READER = re.compile(
    r"\b(?:read(_int|_float|_choice|_secret)?|_addresses|_name|_networks|_tls_file)"
    r"\(\s*\w+\s*,\s*\"([A-Z][A-Z0-9_]*)\""
)
_ENVIRON = re.compile(r"(?:environ\.get|getenv|environ\[)\(?\s*\"([A-Z][A-Z0-9_]*)\"")
_ROUTE = re.compile(r"\bRoute\(\s*\"(/[^\"]*)\"")
_ENV_LINE = re.compile(r"^\s*#?\s*([A-Z][A-Z0-9_]*)=", re.MULTILINE)

# Hooks for the fault tests: a deployment must never arm them.
TEST_ONLY_VARIABLES = frozenset({"SYNC_FAULT", "API_FAULT"})


def tool(name: str) -> str:
    """Path of an external tool; skip (locally) or fail (CI) when it is not installed."""
    for candidate in (TOOLS_BIN / name, Path(shutil.which(name) or "")):
        if candidate.name and candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    reason = f"{name} is not installed: run scripts/install-tools.sh"
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI runs it before the tests)")
    pytest.skip(reason)
    raise AssertionError("unreachable")


def tools_path() -> str:
    """PATH with .venv-tools/bin first, for tools that call other tools (checkov -> kubectl)."""
    return os.pathsep.join([str(TOOLS_BIN), os.environ.get("PATH", "")])


def _source_files() -> list[Path]:
    return sorted(p for pkg in SOURCE_PACKAGES for p in (ROOT / pkg).rglob("*.py"))


@functools.cache
def variables_read_by_code() -> frozenset[str]:
    """Every environment variable the API and the worker read (from their source)."""
    names: set[str] = set()
    for path in _source_files():
        text = path.read_text(encoding="utf-8")
        for kind, name in _READER.findall(text):
            names.add(name)
            if kind == "_secret":
                names.add(f"{name}_FILE")
        names.update(_ENVIRON.findall(text))
    if not names:  # the settings changed style: fall back on the documented list
        names = set(variables_documented())
    return frozenset(names)


@functools.cache
def variables_documented() -> frozenset[str]:
    return frozenset(_ENV_LINE.findall((ROOT / ".env.example").read_text(encoding="utf-8")))


@functools.cache
def routes_served(package: str) -> frozenset[str]:
    """Paths of every `Route("/...")` in a package: what its HTTP server answers."""
    paths: set[str] = set()
    for path in sorted((ROOT / package).rglob("*.py")):
        paths.update(_ROUTE.findall(path.read_text(encoding="utf-8")))
    return frozenset(paths)


def parse_settings(env: Mapping[str, str], tmp_path: Path) -> WorkerSettings:
    """Parse an environment with the real settings code. `*_FILE` paths (mounted Secrets)
    are redirected to a stand-in file so the parse does not depend on this machine."""
    stand_in = tmp_path / "secret"
    stand_in.write_text("stand-in\n", encoding="utf-8")
    environ = {k: (str(stand_in) if k.endswith("_FILE") else v) for k, v in env.items()}
    return WorkerSettings.from_env(Config(environ=environ))


def api_settings(env: Mapping[str, str], tmp_path: Path) -> Settings:
    return parse_settings(env, tmp_path).base


def run(args: list[str], timeout: float = 120, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, check=False, capture_output=True, text=True, timeout=timeout, cwd=ROOT, **kwargs
    )


@functools.cache
def render(path: Path) -> tuple[dict[str, Any], ...]:
    """`kubectl kustomize <path>`, parsed; rendered once per test session."""
    result = run(
        [tool("kubectl"), "kustomize", str(path)], env={**os.environ, "PATH": tools_path()}
    )
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def python_module_command(command: list[str]) -> tuple[str, list[str]]:
    """`["python", "-m", "pkg", *args]` -> ("pkg", args); fails on any other shape."""
    assert command[:2] == ["python", "-m"], f"not a `python -m` command: {command}"
    return command[2], command[3:]


@functools.cache
def module_help(module: str) -> str:
    """`python -m <module> --help`: the commands and options the entry point accepts."""
    result = run([sys.executable, "-m", module, "--help"], timeout=60)
    assert result.returncode == 0, f"python -m {module} --help failed: {result.stderr}"
    return result.stdout


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


KUBERNETES_VERSION = "1.33.0"
# Prometheus Operator resources are CRDs, which kubernetes-validate does not bundle and no
# registry here serves; tests/deploy/test_monitoring.py checks them.
CRD_GROUPS = ("monitoring.coreos.com/",)


def strict_schema_errors(objects: tuple[dict[str, Any], ...]) -> list[str]:
    """What the Kubernetes 1.33 schemas refuse in `objects`, strictly (unknown fields
    too); resources of CRD_GROUPS are skipped."""
    errors = []
    for obj in objects:
        if obj["apiVersion"].startswith(CRD_GROUPS):
            continue
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        try:
            validate(obj, KUBERNETES_VERSION, strict=True)
        except ValidationError as e:
            errors.append(f"{where}: {'.'.join(map(str, e.path))}: {e.message}")
        except SchemaNotFoundError as e:
            errors.append(f"{where}: {e.message}")
    return errors


def render_component_on_base(workdir: Path, component: str) -> tuple[dict[str, Any], ...]:
    """`k8s/components/<component>` over the bare base, as a production overlay would use
    it, rendered in a copy of `k8s/` under `workdir`."""
    tree = workdir / "k8s"
    shutil.copytree(ROOT / "k8s", tree)
    overlay = tree / "overlays" / f"with-{component}"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": ["../../base"],
                "components": [f"../../components/{component}"],
            }
        ),
        encoding="utf-8",
    )
    return render(overlay)


def generated_object(objects: tuple[dict[str, Any], ...], kind: str, prefix: str) -> dict[str, Any]:
    """The one rendered object of `kind` that kustomize generated as `prefix-<hash>`
    (a ConfigMap or Secret)."""
    matches = [
        o
        for o in objects
        if o["kind"] == kind and re.fullmatch(rf"{prefix}-[a-z0-9]+", o["metadata"]["name"])
    ]
    assert len(matches) == 1, f"{kind}/{prefix}-*: {len(matches)} found"
    return matches[0]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    """The pod template's spec of a Deployment or StatefulSet."""
    pod: dict[str, Any] = workload["spec"]["template"]["spec"]
    return pod


def only_object(objects: tuple[dict[str, Any], ...], kind: str, name: str) -> dict[str, Any]:
    """The one rendered object of `kind` named `name`."""
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]
