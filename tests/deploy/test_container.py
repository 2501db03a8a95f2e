"""The Dockerfile, .dockerignore and compose.yaml, checked statically (no engine here)."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.support import (
    APP_IMAGE,
    ROOT,
    TEST_ONLY_VARIABLES,
    api_settings,
    load_yaml,
    module_help,
    parse_settings,
    python_module_command,
    routes_served,
    variables_read_by_code,
)

Instruction = tuple[str, str]


def _instructions() -> list[Instruction]:
    """The Dockerfile as (KEYWORD, arguments), continuation lines joined, comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines]


def _stages() -> list[list[Instruction]]:
    stages: list[list[Instruction]] = []
    for keyword, args in _instructions():
        if keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword, args))
    return stages


def _final() -> list[Instruction]:
    return _stages()[-1]


def _args(stage: list[Instruction], keyword: str) -> list[str]:
    return [args for kw, args in stage if kw == keyword]


def _env(stage: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in _args(stage, "ENV"):
        for item in shlex.split(args):
            key, _, value = item.partition("=")
            env[key] = value
    return env


def test_dockerfile_is_multi_stage_on_the_tests_python() -> None:
    """A builder stage and a final stage, both on the slim image of the tests' Python minor."""
    stages = _stages()
    assert len(stages) >= 2
    wanted = f"python:{sys.version_info.major}.{sys.version_info.minor}-slim-bookworm"
    for stage in stages:
        image = stage[0][1].split()[0]
        assert image == wanted, f"{image} is not {wanted}"
    assert " AS builder" in stages[0][0][1]


def test_dockerfile_builds_wheels_from_the_lock() -> None:
    """The builder makes wheels from requirements.lock; the final stage installs only those."""
    builder = " ".join(_args(_stages()[0], "RUN"))
    assert "pip wheel" in builder
    assert "requirements.lock" in builder
    final_run = " ".join(_args(_final(), "RUN"))
    assert "--no-index" in final_run
    assert "requirements.lock" in final_run


def test_final_stage_has_no_compilers_or_source_copies() -> None:
    """Nothing is compiled in the final stage and no source tree is copied into it."""
    final_run = " ".join(_args(_final(), "RUN"))
    for word in ("gcc", "build-essential", "apt-get install", "-dev "):
        assert word not in final_run
    assert not _args(_final(), "COPY"), "the final stage installs from the builder's wheels"


def test_final_stage_runs_as_a_numeric_non_root_user() -> None:
    """USER is a numeric uid (Kubernetes' runAsNonRoot can verify it) and not root."""
    (user,) = _args(_final(), "USER")
    uid = user.split(":")[0]
    assert uid.isdigit()
    assert int(uid) >= 10000


def test_final_stage_environment() -> None:
    """No .pyc writes (read-only root fs), unbuffered output, JSON logs by default."""
    env = _env(_final())
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert set(env) - {"PIP_DISABLE_PIP_VERSION_CHECK", "PIP_NO_CACHE_DIR"} <= (
        {"PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED"} | variables_read_by_code()
    )


def test_default_command_serves_the_api() -> None:
    """CMD is `python -m counter_svc serve`, a command the entry point accepts."""
    (cmd,) = _args(_final(), "CMD")
    module, args = python_module_command(json.loads(cmd))
    assert (module, args) == ("counter_svc", ["serve"])
    assert "serve" in module_help(module)


def test_healthcheck_probes_the_api_liveness_path(tmp_path: Path) -> None:
    """HEALTHCHECK calls /healthz on $PORT, a path the API serves."""
    (check,) = _args(_final(), "HEALTHCHECK")
    assert "/healthz" in check
    assert "/healthz" in routes_served("counter_svc")
    ports = {int(p) for p in " ".join(_args(_final(), "EXPOSE")).split()}
    env = _env(_final())
    settings = parse_settings(env, tmp_path)
    assert {settings.base.port, settings.metrics_port} == ports


def _docker_ignored(name: str) -> bool:
    """Whether a top-level path is left out of the build context (last match wins)."""
    ignored = False
    for raw in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").rstrip("/")
        if fnmatch.fnmatchcase(name, pattern):
            ignored = not negate
    return ignored


@pytest.mark.parametrize(
    "name", ["tests", ".venv", ".venv-tools", ".git", ".env", "k8s", "compose.yaml", "k6"]
)
def test_dockerignore_keeps_out(name: str) -> None:
    """Tests, venvs, git, secrets and deployment files never reach the build context."""
    assert _docker_ignored(name)


def test_dockerignore_keeps_what_the_dockerfile_copies() -> None:
    """Every COPY source of the builder is in the build context."""
    sources = [
        src.rstrip("/")
        for args in _args(_stages()[0], "COPY")
        if not args.startswith("--from")
        for src in args.split()[:-1]
    ]
    assert sources
    for src in sources:
        assert (ROOT / src).exists(), src
        assert not _docker_ignored(src), f"{src} is excluded by .dockerignore"


# --- compose.yaml ---------------------------------------------------------------------

_INTERPOLATION = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?::?-([^}]*))?\}")


def _interpolate(value: str) -> str:
    """Compose interpolation with an empty environment: `${X:-d}` -> d, `$$` -> `$`."""
    return _INTERPOLATION.sub(lambda m: m.group(2) or "", value).replace("$$", "$")


def _compose() -> dict[str, Any]:
    compose = load_yaml(ROOT / "compose.yaml")
    assert isinstance(compose, dict)
    return compose


def _service(name: str) -> dict[str, Any]:
    service: dict[str, Any] = _compose()["services"][name]
    return service


def _app_services() -> dict[str, dict[str, Any]]:
    return {
        name: svc
        for name, svc in _compose()["services"].items()
        if str(svc.get("image", "")).split(":")[0] == APP_IMAGE
    }


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: _interpolate(str(v)) for k, v in env.items()}


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration):
        total += float(number) * units[unit]
    return total


def test_compose_has_the_services() -> None:
    """mysql, redis, a one-shot migrate, the api and the sync worker; the Redis primary,
    replicas and Sentinels only with the `sentinel` profile, the six Redis Cluster nodes
    and the one-shot that creates the cluster only with the `cluster` profile."""
    services = {n: s for n, s in _compose()["services"].items() if not s.get("profiles")}
    assert set(services) == {"mysql", "redis", "migrate", "api", "sync-worker"}
    profiled = {n: s["profiles"] for n, s in _compose()["services"].items() if s.get("profiles")}
    assert profiled == {
        **{name: ["sentinel"] for name in SENTINEL_DATA_NODES + SENTINEL_SENTINELS},
        **{name: ["cluster"] for name in [*CLUSTER_NODES, "redis-cluster-create"]},
    }
    assert services["mysql"]["image"] == "mysql:8.0"
    assert services["redis"]["image"] == "redis:7.2"
    assert set(_app_services()) == {"migrate", "api", "sync-worker"}
    for svc in _app_services().values():
        assert svc["build"]["context"] == "."


def test_compose_app_commands_exist() -> None:
    """Each app service runs a `python -m` command its entry point accepts."""
    wanted = {
        "migrate": ("counter_svc", ["migrate"]),
        "api": ("counter_svc", ["serve"]),
        "sync-worker": ("sync_worker", []),
    }
    for name, svc in _app_services().items():
        module, args = python_module_command(svc["command"])
        assert (module, args) == wanted[name]
        help_text = module_help(module)
        assert all(arg in help_text for arg in args)
    check = _service("sync-worker")["healthcheck"]["test"]
    module, args = python_module_command(check[1:])
    assert args == ["--check"]
    assert "--check" in module_help(module)


def test_compose_start_order() -> None:
    """migrate waits for a healthy MySQL; api and worker wait for migrate and Redis."""
    assert _service("migrate")["depends_on"] == {"mysql": {"condition": "service_healthy"}}
    for name in ("api", "sync-worker"):
        assert _service(name)["depends_on"] == {
            "migrate": {"condition": "service_completed_successfully"},
            "redis": {"condition": "service_healthy"},
        }
    assert _service("migrate")["restart"] == "no"


def test_compose_healthchecks() -> None:
    """Long-running services have a healthcheck; the one-shot migrate disables the image's."""
    for name in ("mysql", "redis", "api", "sync-worker"):
        assert _service(name)["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL")
    assert _service("migrate")["healthcheck"] == {"disable": True}
    api_check = " ".join(_service("api")["healthcheck"]["test"])
    assert "/healthz" in api_check
    assert "/healthz" in routes_served("counter_svc")


def test_compose_redis_persistence_eviction_and_password() -> None:
    """Redis: AOF every second, volatile-lru, a password; data on a named volume."""
    command = " ".join(_service("redis")["command"])
    for flag in (
        "--appendonly yes",
        "--appendfsync everysec",
        "--maxmemory-policy volatile-lru",
        "--requirepass",
    ):
        assert flag in command
    volumes = set(_compose()["volumes"])
    assert {"mysql-data", "redis-data"} <= volumes
    assert "redis-data:/data" in _service("redis")["volumes"]
    assert "mysql-data:/var/lib/mysql" in _service("mysql")["volumes"]


def test_compose_redis_runs_as_the_redis_user() -> None:
    """The command starts with `sh`, so the image's entrypoint keeps root: the service
    sets the image's `redis` user (uid and gid 999, the owner of /data) itself."""
    redis = _service("redis")
    assert redis["image"] == "redis:7.2"
    assert redis["command"][0] != "redis-server"
    assert redis["user"] == "999:999"


def test_compose_app_env_is_read_by_the_settings() -> None:
    """Every variable compose sets for the app is one the settings read."""
    known = variables_read_by_code()
    for name, svc in _app_services().items():
        env = _environment(svc)
        assert set(env) <= known, f"{name}: {sorted(set(env) - known)} are read by no code"
        assert not set(env) & TEST_ONLY_VARIABLES
        assert svc["env_file"] == [{"path": ".env", "required": False}]


def test_compose_app_env_parses_and_points_at_the_services(tmp_path: Path) -> None:
    """The settings accept compose's values, which name the mysql and redis services."""
    mysql_env = _environment(_service("mysql"))
    redis_env = _environment(_service("redis"))
    for name, svc in _app_services().items():
        env = _environment(svc)
        settings = api_settings(env, tmp_path)
        assert settings.mysql_host == "mysql", name
        assert settings.redis_url.startswith("redis://redis:6379/"), name
        assert settings.mysql_user == mysql_env["MYSQL_USER"]
        assert settings.mysql_password == mysql_env["MYSQL_PASSWORD"]
        assert settings.mysql_database == mysql_env["MYSQL_DATABASE"]
        assert settings.redis_password == redis_env["REDIS_PASSWORD"]
        assert settings.log_format == "json"


def test_compose_api_port_and_worker_grace(tmp_path: Path) -> None:
    """The published port is the API's $PORT; the worker gets longer than its final drain."""
    api_port = api_settings(_environment(_service("api")), tmp_path).port
    assert _service("api")["ports"] == [f"{api_port}:{api_port}"]
    worker = parse_settings(_environment(_service("sync-worker")), tmp_path)
    grace = _seconds(_service("sync-worker")["stop_grace_period"])
    assert grace > worker.shutdown_timeout_seconds + 5


def test_compose_app_containers_are_locked_down() -> None:
    """Read-only root, /tmp on tmpfs, no capabilities, no privilege escalation."""
    for svc in _app_services().values():
        assert svc["read_only"] is True
        assert svc["tmpfs"] == ["/tmp"]
        assert svc["cap_drop"] == ["ALL"]
        assert "no-new-privileges:true" in svc["security_opt"]


def test_compose_passwords_are_dev_only_defaults() -> None:
    """Passwords default to fake dev-only values and can be overridden from .env."""
    text = (ROOT / "compose.yaml").read_text(encoding="utf-8")
    text += (ROOT / "compose.sentinel.yaml").read_text(encoding="utf-8")
    for var in (
        "MYSQL_PASSWORD",
        "MYSQL_ROOT_PASSWORD",
        "REDIS_PASSWORD",
        "REDIS_SENTINEL_PASSWORD",
    ):
        defaults = re.findall(rf"\$\{{{var}:-([^}}]*)\}}", text)
        assert defaults
        assert all(d.startswith("dev-only-") for d in defaults)
        assert len(set(defaults)) == 1, f"{var}: one default everywhere"


# --- compose.yaml's `sentinel` profile and compose.sentinel.yaml ------------------------

SENTINEL_DATA_NODES = ["redis-primary", "redis-replica-1", "redis-replica-2"]
SENTINEL_SENTINELS = ["redis-sentinel-1", "redis-sentinel-2", "redis-sentinel-3"]
# The `cluster` profile's nodes (tests/deploy/test_cluster_manifests.py checks them).
CLUSTER_NODES = [f"redis-cluster-{i}" for i in range(1, 7)]
# What the api and sync-worker read in Sentinel mode, on top of the base settings.
SENTINEL_PREFIXES = ("REDIS_SENTINEL", "REDIS_ACK_")


def _run_command(service: dict[str, Any], moves: dict[str, str]) -> str:
    """Run a service's `sh -c` command here, with its environment (interpolated as with an
    empty shell environment) and `moves` applied to the script; return its stdout."""
    shell, flag, script = service["command"]
    script = script.replace("$$", "$")
    for old, new in moves.items():
        assert old in script, old
        script = script.replace(old, new)
    env = {"PATH": os.environ["PATH"], **_environment(service)}
    result = subprocess.run(
        [shell, flag, script], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _redis_server_options(argv: list[str]) -> dict[str, list[str]]:
    options: dict[str, list[str]] = {}
    for word in argv:
        if word.startswith("--"):
            name = word[2:]
            options[name] = []
        else:
            options[name].append(word)
    return options


def _sentinel_conf(name: str, tmp_path: Path) -> list[list[str]]:
    """The config file a Sentinel service writes at start, its directives split as Redis
    splits them."""
    out = tmp_path / name
    out.mkdir()
    _run_command(
        _service(name),
        {"/data/sentinel.conf": str(out / "sentinel.conf"), "exec redis-server": "exit 0 #"},
    )
    text = (out / "sentinel.conf").read_text(encoding="utf-8")
    return [[_unhex(word) for word in shlex.split(line)] for line in text.splitlines()]


def _unhex(word: str) -> str:
    """The `\\xHH` escapes Redis decodes in a double-quoted config string."""
    if not re.fullmatch(r"(\\x[0-9a-f]{2})+", word):
        return word
    return bytes.fromhex(word.replace("\\x", "")).decode()


def test_compose_sentinel_data_nodes(tmp_path: Path) -> None:
    """The primary and both replicas run the default redis' persistence and memory settings
    plus min-replicas-to-write 1 / max-lag 10 and masterauth; each announces its service
    name; the replicas replicate redis-primary. Each keeps its AOF on its own volume."""
    as_argv = {"exec redis-server": "printf '%s\\n'"}
    single = _redis_server_options(_run_command(_service("redis"), as_argv).splitlines())
    for name in SENTINEL_DATA_NODES:
        service = _service(name)
        assert service["image"] == "redis:7.2"
        assert service["user"] == "999:999"
        options = _redis_server_options(_run_command(service, as_argv).splitlines())
        for option in ("appendonly", "appendfsync", "save", "maxmemory", "maxmemory-policy"):
            assert options[option] == single[option], (name, option)
        assert options["min-replicas-to-write"] == ["1"]
        assert options["min-replicas-max-lag"] == ["10"]
        password = _environment(service)["REDIS_PASSWORD"]
        assert options["requirepass"] == options["masterauth"] == [password]
        assert options["replica-announce-ip"] == [name]
        replicaof = options.get("replicaof")
        assert replicaof == (None if name == "redis-primary" else ["redis-primary", "6379"])
        assert service["volumes"] == [f"{name}-data:/data"]
        assert f"{name}-data" in _compose()["volumes"]
        assert "role:master|master_link_status:up" in " ".join(service["healthcheck"]["test"])


def test_compose_sentinels(tmp_path: Path) -> None:
    """Three Sentinels: quorum 2 on redis-primary, down after 5 s, failover timeout 60 s,
    hostnames resolved and announced (set before `sentinel monitor`), each announcing its
    service name; they start once the primary is healthy; passwords written as escapes."""
    for name in SENTINEL_SENTINELS:
        directives = _sentinel_conf(name, tmp_path)
        order = [tuple(d[:2]) for d in directives]
        (monitor,) = [d for d in directives if d[:2] == ["sentinel", "monitor"]]
        assert monitor[2:] == ["usercounter", "redis-primary", "6379", "2"]
        assert ["sentinel", "down-after-milliseconds", "usercounter", "5000"] in directives
        assert ["sentinel", "failover-timeout", "usercounter", "60000"] in directives
        for option in ("resolve-hostnames", "announce-hostnames"):
            assert ["sentinel", option, "yes"] in directives
            assert order.index(("sentinel", option)) < order.index(("sentinel", "monitor"))
        assert ["sentinel", "announce-ip", name] in directives
        env = _environment(_service(name))
        assert ["sentinel", "auth-pass", "usercounter", env["REDIS_PASSWORD"]] in directives
        assert ["requirepass", env["REDIS_SENTINEL_PASSWORD"]] in directives
        assert _service(name)["depends_on"] == {"redis-primary": {"condition": "service_healthy"}}
        assert "ckquorum usercounter" in " ".join(_service(name)["healthcheck"]["test"])


def _sentinel_override() -> dict[str, Any]:
    override = load_yaml(ROOT / "compose.sentinel.yaml")
    assert isinstance(override, dict)
    return override


def test_compose_sentinel_override_points_the_app_at_the_sentinels(tmp_path: Path) -> None:
    """compose.sentinel.yaml, merged over compose.yaml, gives the api and sync-worker the
    three Sentinels, the master name they monitor, their password and REDIS_ACK_REPLICAS=1,
    and makes both wait for healthy Sentinels. The merged env parses with the settings
    less the Sentinel-mode variables the code does not read yet (the Python side of
    Sentinel mode lands separately; the settings' own tests cover them)."""
    override = _sentinel_override()["services"]
    assert set(override) == {"api", "sync-worker"}
    (monitor,) = [
        d for d in _sentinel_conf("redis-sentinel-1", tmp_path) if d[:2] == ["sentinel", "monitor"]
    ]
    known = variables_read_by_code()
    for name, extra in override.items():
        env = {**_environment(_service(name)), **_environment(extra)}
        hosts = [entry.rsplit(":", 1) for entry in env["REDIS_SENTINELS"].split(",")]
        assert hosts == [[s, "26379"] for s in SENTINEL_SENTINELS]
        assert env["REDIS_SENTINEL_MASTER"] == monitor[2]
        sentinel_env = _environment(_service("redis-sentinel-1"))
        assert env["REDIS_SENTINEL_PASSWORD"] == sentinel_env["REDIS_SENTINEL_PASSWORD"]
        assert env["REDIS_ACK_REPLICAS"] == "1"
        assert set(extra) == {"environment", "depends_on"}
        assert extra["depends_on"] == {
            s: {"condition": "service_healthy"} for s in SENTINEL_SENTINELS
        }
        settings_env = {
            k: v for k, v in env.items() if not k.startswith(SENTINEL_PREFIXES) or k in known
        }
        assert set(settings_env) <= known
        settings = api_settings(settings_env, tmp_path)
        assert settings.redis_url.endswith("/0")
        assert settings.redis_password == _environment(_service("redis-primary"))["REDIS_PASSWORD"]
