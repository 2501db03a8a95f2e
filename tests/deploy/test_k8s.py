"""The kustomize tree, rendered with `kubectl kustomize` and checked statically (no cluster)."""

from __future__ import annotations

import base64
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.deploy.support import (
    APP_IMAGE,
    BASE,
    OVERLAY,
    ROOT,
    TEST_ONLY_VARIABLES,
    generated_object,
    load_yaml,
    module_help,
    parse_settings,
    pod_spec,
    python_module_command,
    render,
    routes_served,
    run,
    strict_schema_errors,
    variables_read_by_code,
)
from tests.faults import free_port, port_open, wait_until

NAMESPACE = "usercounter-dev"
DEV_HOST = "usercounter.dev.example.com"
WORKLOADS = ("Deployment", "StatefulSet")
# What MySQL and Redis read; its name carries no hash, so a change restarts neither.
STORE_SECRET = "usercounter-store-secrets"
Obj = dict[str, Any]


def _objects() -> tuple[Obj, ...]:
    return render(OVERLAY)


def _get(kind: str, name: str) -> Obj:
    matches = [o for o in _objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


def _by_prefix(kind: str, prefix: str) -> Obj:
    return generated_object(_objects(), kind, prefix)


def _containers(pod: Obj) -> Iterator[Obj]:
    yield from pod.get("initContainers", [])
    yield from pod["containers"]


def _app_containers() -> Iterator[tuple[Obj, Obj]]:
    """(pod spec, container) of every container that runs the UserCounter image."""
    for obj in _objects():
        if obj["kind"] in WORKLOADS:
            pod = pod_spec(obj)
            for c in _containers(pod):
                if c["image"].split(":")[0].rsplit("/", 1)[-1] == APP_IMAGE:
                    yield pod, c


def _env(container: Obj) -> dict[str, str]:
    """The container's effective environment: its ConfigMaps, then its own `env`."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ref = source["configMapRef"]["name"]
        env.update(_get("ConfigMap", ref)["data"])
    for item in container.get("env", []):
        source = item.get("valueFrom", {})
        assert "secretKeyRef" not in source, f"{item['name']}: secrets are mounted as files"
        if "fieldRef" in source:  # the downward API: stands for the pod's name
            assert source["fieldRef"]["fieldPath"] == "metadata.name", item
            env[item["name"]] = "sync-worker-5d8f7c9b4-x2x7q"
            continue
        assert "value" in item, f"{item['name']}: a plain value, a field or a mounted file"
        env[item["name"]] = item["value"]
    return env


def _named_port(container: Obj, port: str | int) -> int:
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return int(number)


def _main(name: str) -> Obj:
    container: Obj
    (container,) = pod_spec(_get("Deployment", name))["containers"]
    return container


def test_base_renders_too() -> None:
    """The base alone renders (overlays for other environments build on it)."""
    kinds = {o["kind"] for o in render(BASE)}
    assert {"Deployment", "StatefulSet", "ConfigMap", "Namespace"} <= kinds


# Custom resources of the Prometheus Operator (PodMonitor, PrometheusRule): their schemas
# are CRDs, which kubernetes-validate does not bundle and no registry here serves. The
# rules are checked by promtool (check + unit tests) and the PodMonitors against the pods
# they select, in tests/deploy/test_monitoring.py.


def test_every_object_validates_strictly_against_kubernetes_1_33() -> None:
    """Each rendered object matches the Kubernetes 1.33 schema; unknown fields fail.
    Prometheus Operator resources are left to tests/deploy/test_monitoring.py."""
    errors = strict_schema_errors(_objects())
    assert not errors, "\n".join(errors)


def test_the_objects_the_deployment_needs() -> None:
    """Namespace, config, secret, workloads, services, ingress, HPA, PDBs, policies."""
    names = {(o["kind"], o["metadata"]["name"].rsplit("-", 1)[0]) for o in _objects()}
    for kind, name in [("ConfigMap", "usercounter-config"), ("Secret", "usercounter-secrets")]:
        assert (kind, name) in names
    for kind, name in [
        ("Namespace", NAMESPACE),
        ("Deployment", "api"),
        ("Deployment", "sync-worker"),
        ("StatefulSet", "mysql"),
        ("StatefulSet", "redis"),
        ("Service", "api"),
        ("Service", "mysql"),
        ("Service", "redis"),
        ("Ingress", "api"),
        ("HorizontalPodAutoscaler", "api"),
        ("PodDisruptionBudget", "api"),
        ("PodDisruptionBudget", "sync-worker"),
        ("NetworkPolicy", "default-deny-ingress"),
    ]:
        _get(kind, name)


def test_everything_lives_in_the_namespace() -> None:
    """Every namespaced object is in the overlay's namespace; none in `default`."""
    for obj in _objects():
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["metadata"]["name"]


def test_api_rollout_and_probes() -> None:
    """3 replicas, no unavailable pod during a rollout, probes on the paths the API serves."""
    api = _get("Deployment", "api")
    assert api["spec"]["replicas"] == 3
    assert api["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    container = _main("api")
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    served = routes_served("counter_svc")
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["path"] in served
    assert container["lifecycle"]["preStop"]["sleep"]["seconds"] >= 3
    spread = pod_spec(api)["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in spread} >= {"kubernetes.io/hostname"}
    for constraint in spread:
        assert constraint["labelSelector"]["matchLabels"] == api["spec"]["selector"]["matchLabels"]


def test_worker_probes() -> None:
    """A MySQL outage must not restart the worker: startup and liveness probe /livez (is it
    still attempting drains), readiness /healthz (did a drain succeed lately)."""
    container = _main("sync-worker")
    assert container["startupProbe"]["httpGet"]["path"] == "/livez"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    served = routes_served("sync_worker")
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["path"] in served


def test_probe_and_metrics_ports_are_the_ones_the_settings_listen_on(tmp_path: Path) -> None:
    """Probe ports and scrape annotations resolve to the port each process binds."""
    for name in ("api", "sync-worker"):
        pod_template = _get("Deployment", name)["spec"]["template"]
        container = _main(name)
        settings = parse_settings(_env(container), tmp_path)
        listen = settings.base.port if name == "api" else settings.metrics_port
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            assert _named_port(container, container[probe]["httpGet"]["port"]) == listen
        annotations = pod_template["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert int(annotations["prometheus.io/port"]) == listen
        package = "counter_svc" if name == "api" else "sync_worker"
        assert annotations["prometheus.io/path"] in routes_served(package)
        assert "/healthz" in routes_served(package)


def test_migration_runs_before_the_api_serves() -> None:
    """An init container runs the idempotent `migrate` command of the same image."""
    pod = pod_spec(_get("Deployment", "api"))
    (init,) = pod["initContainers"]
    assert init["image"] == _main("api")["image"]
    module, args = python_module_command(init["command"])
    assert (module, args) == ("counter_svc", ["migrate"])


def test_container_commands_exist() -> None:
    """Every app container runs a `python -m` command that its entry point accepts."""
    for _, container in _app_containers():
        module, args = python_module_command(container["command"])
        help_text = module_help(module)
        assert all(arg in help_text for arg in args), container["command"]


def test_app_env_is_read_by_the_settings() -> None:
    """Every variable set for an app container is one the settings read; no test hooks."""
    known = variables_read_by_code()
    for _, container in _app_containers():
        env = set(_env(container))
        assert env <= known, f"{container['name']}: {sorted(env - known)} are read by no code"
        assert not env & TEST_ONLY_VARIABLES


def test_app_env_parses_and_points_at_the_cluster_services(tmp_path: Path) -> None:
    """The real settings accept each container's env; MySQL, Redis and secrets are set."""
    for _, container in _app_containers():
        env = _env(container)
        settings = parse_settings(env, tmp_path).base
        assert settings.mysql_host == _get("Service", "mysql")["metadata"]["name"]
        assert settings.redis_url.startswith("redis://redis:6379/")
        assert env["MYSQL_PASSWORD_FILE"]
        assert settings.log_format == "json"
        if container["name"] != "migrate":
            assert env["REDIS_PASSWORD_FILE"]


def test_api_and_worker_agree_on_the_key_layout(tmp_path: Path) -> None:
    """Same buckets, key prefix and database for the API and the worker."""
    api = parse_settings(_env(_main("api")), tmp_path).base
    worker = parse_settings(_env(_main("sync-worker")), tmp_path).base
    assert (api.buckets, api.key_prefix, api.mysql_database) == (
        worker.buckets,
        worker.key_prefix,
        worker.mysql_database,
    )


def test_secret_files_are_mounted_from_the_secret() -> None:
    """Each `*_FILE` path is a key of the mounted Secret, and the Secret has that key."""
    secret = _by_prefix("Secret", "usercounter-secrets")
    for pod, container in _app_containers():
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        for name, path in _env(container).items():
            if not name.endswith("_FILE"):
                continue
            directory, key = path.rsplit("/", 1)
            mount = mounts[directory]
            assert mount["readOnly"] is True
            source = volumes[mount["name"]]["secret"]
            assert source["secretName"] == secret["metadata"]["name"]
            assert key in {item["path"] for item in source["items"]}
            assert key in secret["data"]


def test_dev_secrets_hold_only_fake_values() -> None:
    """The dev overlay's two Secrets are generated from obviously fake, dev-only values."""
    for secret in (_by_prefix("Secret", "usercounter-secrets"), _get("Secret", STORE_SECRET)):
        assert set(secret["data"]) == {"mysql-root-password", "mysql-password", "redis-password"}
        for value in secret["data"].values():
            assert base64.b64decode(value).decode().startswith("dev-only-fake-")
    base_kinds = {o["kind"] for o in render(BASE)}
    assert "Secret" not in base_kinds, "the base carries no credentials"


def _secrets_read_by(pod: Obj) -> set[str]:
    """Names of the Secrets a pod mounts, as volumes or projected volume sources."""
    names = set()
    for volume in pod["volumes"]:
        if "secret" in volume:
            names.add(volume["secret"]["secretName"])
        for source in volume.get("projected", {}).get("sources", []):
            if "secret" in source:
                names.add(source["secret"]["name"])
    return names


def _workload_templates(objects: tuple[Obj, ...]) -> dict[str, Obj]:
    return {o["metadata"]["name"]: o["spec"]["template"] for o in objects if o["kind"] in WORKLOADS}


def test_a_password_change_rolls_the_app_but_neither_store(tmp_path: Path) -> None:
    """MySQL and Redis read a Secret whose name carries no hash, the app pods one whose
    name does: changing every password changes the api and sync-worker pod templates (they
    roll) and leaves the mysql and redis ones as they were (neither restarts)."""
    for name in ("mysql", "redis"):
        assert _secrets_read_by(pod_spec(_get("StatefulSet", name))) == {STORE_SECRET}
    for name in ("api", "sync-worker"):
        (secret,) = _secrets_read_by(pod_spec(_get("Deployment", name)))
        assert secret.startswith("usercounter-secrets-")
    shutil.copytree(ROOT / "k8s", tmp_path / "k8s")
    env = tmp_path / "k8s" / "overlays" / "dev" / "secrets.dev.env"
    text = env.read_text(encoding="utf-8")
    env.write_text(text.replace("=dev-only-fake-", "=dev-only-fake-rotated-"), encoding="utf-8")
    before = _workload_templates(_objects())
    after = _workload_templates(render(tmp_path / "k8s" / "overlays" / "dev"))
    assert {n for n in before if before[n] != after[n]} == {"api", "sync-worker"}


PROD_EXAMPLE = "# k8s/overlays/prod/kustomization.yaml"


def _deploy_doc_block(first_line: str) -> str:
    """The fenced code block of docs/deploy.md whose first line is `first_line`."""
    page = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    blocks: list[str] = re.findall(r"^```\w*\n(.*?)^```", page, re.S | re.M)
    (block,) = [b for b in blocks if b.startswith(f"{first_line}\n")]
    return block


def test_documented_production_overlay_builds(tmp_path: Path) -> None:
    """The production overlay of docs/deploy.md, where it says in a copy of k8s/ and with
    stand-in secret files, renders both Secrets from those files (the stores' under its
    fixed name) and the image by digest; the files are where .gitignore keeps them out of
    git."""
    shutil.copytree(ROOT / "k8s", tmp_path / "k8s")
    overlay = tmp_path / "k8s" / "overlays" / "prod"
    overlay.mkdir()
    example = _deploy_doc_block(PROD_EXAMPLE)
    (overlay / "kustomization.yaml").write_text(example, encoding="utf-8")
    wanted: dict[str, dict[str, str]] = {}
    for generator in yaml.safe_load(example)["secretGenerator"]:
        for entry in generator["files"]:
            key, path = entry.split("=", 1)
            target = (overlay / path).resolve()
            assert target.is_relative_to(overlay.resolve()), f"{path}: outside the overlay"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(f"stand-in {key}\n", encoding="utf-8")
            wanted.setdefault(generator["name"], {})[key] = f"stand-in {key}\n"
            if (ROOT / ".git").exists():
                ignored = run(
                    ["git", "check-ignore", "-q", "--no-index", f"k8s/overlays/prod/{path}"]
                )
                assert ignored.returncode == 0, f"{path} is not git-ignored"
    objects = render(overlay)
    for name, data in wanted.items():
        (secret,) = [
            o for o in objects if o["kind"] == "Secret" and o["metadata"]["name"].startswith(name)
        ]
        decoded = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
        assert decoded == data
    assert STORE_SECRET in {o["metadata"]["name"] for o in objects if o["kind"] == "Secret"}
    (api,) = [o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "api"]
    assert pod_spec(api)["containers"][0]["image"].startswith(
        "registry.example.com/usercounter@sha256:"
    )


def test_only_the_migrate_init_container_gets_mysql_admin_credentials(tmp_path: Path) -> None:
    """migrate runs with MYSQL_ADMIN_USER and the root password; the api and worker run as
    the (least-privilege) service user and never mount the root password."""
    init = pod_spec(_get("Deployment", "api"))["initContainers"][0]
    migrate = parse_settings(_env(init), tmp_path).base
    assert migrate.mysql_admin_user == "root"
    assert migrate.mysql_user != migrate.mysql_admin_user
    assert _env(init)["MYSQL_ADMIN_PASSWORD_FILE"].endswith("/mysql-root-password")
    for pod, container in _app_containers():
        if container["name"] == "migrate":
            continue
        assert "MYSQL_ADMIN_USER" not in _env(container)
        assert parse_settings(_env(container), tmp_path).base.mysql_user == migrate.mysql_user
        volumes = {v["name"]: v for v in pod["volumes"]}
        for mount in container["volumeMounts"]:
            items = volumes[mount["name"]].get("secret", {}).get("items", [])
            assert "mysql-root-password" not in {i["key"] for i in items}, container["name"]


def test_worker_replicas_and_grace_period(tmp_path: Path) -> None:
    """2 workers; SIGKILL comes well after the worker's final drain may end."""
    worker = _get("Deployment", "sync-worker")
    assert worker["spec"]["replicas"] == 2
    settings = parse_settings(_env(_main("sync-worker")), tmp_path)
    grace = pod_spec(worker)["terminationGracePeriodSeconds"]
    assert grace > settings.shutdown_timeout_seconds + 10


def test_pods_are_locked_down() -> None:
    """Non-root, seccomp RuntimeDefault, read-only root, no capabilities, no SA token."""
    for obj in _objects():
        if obj["kind"] not in WORKLOADS:
            continue
        pod = pod_spec(obj)
        assert pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] >= 10000
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        for c in _containers(pod):
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"]
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), c["name"]


def test_app_pods_write_only_to_tmp() -> None:
    """The app's only writable path is an emptyDir at /tmp."""
    for pod, container in _app_containers():
        volumes = {v["name"]: v for v in pod["volumes"]}
        writable = [m for m in container["volumeMounts"] if not m.get("readOnly")]
        assert [m["mountPath"] for m in writable] == ["/tmp"]
        assert "emptyDir" in volumes[writable[0]["name"]]


def test_image_user_matches_the_pod_user() -> None:
    """The pods run as the Dockerfile's USER, so file permissions agree."""
    dockerfile = (Path(__file__).parent.parent.parent / "Dockerfile").read_text(encoding="utf-8")
    user = [ln.split()[1] for ln in dockerfile.splitlines() if ln.startswith("USER ")][-1]
    uid, gid = (int(x) for x in user.split(":"))
    for name in ("api", "sync-worker"):
        sc = pod_spec(_get("Deployment", name))["securityContext"]
        assert (sc["runAsUser"], sc["runAsGroup"]) == (uid, gid)


def test_service_ingress_and_autoscaler_target_the_api() -> None:
    """ClusterIP Service -> api pods; nginx Ingress on the dev host -> Service; HPA -> api."""
    api = _get("Deployment", "api")
    service = _get("Service", "api")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"] == api["spec"]["selector"]["matchLabels"]
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] in {p["name"] for p in _main("api")["ports"]}
    ingress = _get("Ingress", "api")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == DEV_HOST
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "api", "port": {"name": port["name"]}}
    hpa = _get("HorizontalPodAutoscaler", "api")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "api",
    }
    assert hpa["spec"]["minReplicas"] == api["spec"]["replicas"]
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]


@pytest.mark.parametrize("name", ["api", "sync-worker"])
def test_disruption_budgets_select_the_pods(name: str) -> None:
    """Each PDB selects its Deployment's pods and lets one go at a time."""
    pdb = _get("PodDisruptionBudget", name)
    deployment = _get("Deployment", name)
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]
    assert pdb["spec"]["maxUnavailable"] == 1


def _selects(selector: Obj, labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        value = labels.get(expr["key"])
        if expr["operator"] == "In" and value not in expr["values"]:
            return False
        if expr["operator"] not in ("In",):
            raise AssertionError(f"operator {expr['operator']} not handled by this test")
    return True


def _pod_labels() -> dict[str, dict[str, str]]:
    return {
        o["metadata"]["name"]: o["spec"]["template"]["metadata"]["labels"]
        for o in _objects()
        if o["kind"] in WORKLOADS
    }


@pytest.mark.parametrize("store", ["mysql", "redis"])
def test_only_api_and_worker_reach_the_stores(store: str) -> None:
    """Ingress to MySQL and Redis is denied except from the api and sync-worker pods."""
    labels = _pod_labels()
    policies = [o for o in _objects() if o["kind"] == "NetworkPolicy"]
    deny = _get("NetworkPolicy", "default-deny-ingress")
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    allowed: set[str] = set()
    for policy in policies:
        if not _selects(policy["spec"]["podSelector"], labels[store]):
            continue
        for rule in policy["spec"].get("ingress", []):
            for peer in rule["from"]:
                assert set(peer) == {"podSelector"}, "no namespace or IP peers for a store"
                allowed |= {n for n, lbl in labels.items() if _selects(peer["podSelector"], lbl)}
    assert allowed == {"api", "sync-worker"}


def test_statefulsets_have_headless_services_volumes_and_probes() -> None:
    """MySQL and Redis: a headless Service of the same name, a PVC, probes."""
    for name, port in (("mysql", 3306), ("redis", 6379)):
        sts = _get("StatefulSet", name)
        service = _get("Service", sts["spec"]["serviceName"])
        assert service["spec"]["clusterIP"] == "None"
        assert service["spec"]["selector"] == sts["spec"]["selector"]["matchLabels"]
        assert service["spec"]["ports"][0]["port"] == port
        (claim,) = sts["spec"]["volumeClaimTemplates"]
        (container,) = pod_spec(sts)["containers"]
        assert claim["metadata"]["name"] in {m["name"] for m in container["volumeMounts"]}
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert probe in container
    images = {
        n: pod_spec(_get("StatefulSet", n))["containers"][0]["image"] for n in ("mysql", "redis")
    }
    assert images == {"mysql": "mysql:8.0", "redis": "redis:7.2"}


def _redis_conf() -> dict[str, list[str]]:
    """The directives of the rendered redis.conf: name -> arguments, as Redis splits them."""
    conf = _by_prefix("ConfigMap", "redis-config")["data"]["redis.conf"]
    directives: dict[str, list[str]] = {}
    for line in conf.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, *args = shlex.split(line)
            directives[name.lower()] = args
    return directives


def _compose_redis_options() -> dict[str, list[str]]:
    """The `--name value...` options compose's redis command gives redis-server."""
    command = load_yaml(ROOT / "compose.yaml")["services"]["redis"]["command"]
    words = shlex.split(command[-1].replace("$$", "$")) if command[0] == "sh" else command
    options: dict[str, list[str]] = {}
    for word in words[words.index("redis-server") + 1 :]:
        if word.startswith("--"):
            name = word[2:].lower()
            options[name] = []
        else:
            options[name].append(word)
    return options


_REDIS_UNITS = {
    "": 1,
    "k": 1000,
    "kb": 1024,
    "m": 1000**2,
    "mb": 1024**2,
    "g": 1000**3,
    "gb": 1024**3,
}
_K8S_UNITS = {
    "": 1,
    "k": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
}


def _bytes(quantity: str, units: dict[str, int]) -> int:
    match = re.fullmatch(r"(\d+)([A-Za-z]*)", quantity)
    assert match, quantity
    return int(match[1]) * units[match[2]]


def test_redis_persists_by_aof_alone_in_kubernetes_and_compose() -> None:
    """Both Redis set AOF every second and no RDB snapshots (`save ""`; the default
    `3600 1 300 100 60 10000` would fork for nothing), volatile-lru and one maxmemory."""
    k8s, compose = _redis_conf(), _compose_redis_options()
    for where, settings in (("redis.conf", k8s), ("compose.yaml", compose)):
        assert settings["appendonly"] == ["yes"], where
        assert settings["appendfsync"] == ["everysec"], where
        assert settings["save"] == [""], where
        assert settings["maxmemory-policy"] == ["volatile-lru"], where
    assert k8s["maxmemory"] == compose["maxmemory"]


def test_redis_memory_limit_leaves_room_for_the_rewrite_fork() -> None:
    """The container may use twice maxmemory: an AOF rewrite forks, and the pages written
    while it runs are copied and counted against the same limit."""
    (maxmemory,) = _redis_conf()["maxmemory"]
    (container,) = pod_spec(_get("StatefulSet", "redis"))["containers"]
    resources = container["resources"]
    limit = _bytes(resources["limits"]["memory"], _K8S_UNITS)
    assert limit >= 2 * _bytes(maxmemory.lower(), _REDIS_UNITS)
    assert resources["requests"]["memory"] == resources["limits"]["memory"]


REDIS_SECRETS = "/var/run/secrets/redis"
REDIS_AUTH_CONF = "/run/redis/auth.conf"
# Quotes, a backslash, a space, a `#`, and CR/LF at the end (which the app strips).
TRICKY_PASSWORD = 'it\'s "new" \\ #not-a-comment\r\n'
PREVIOUS_PASSWORD = "old one\n"


def _moved(text: str, moves: dict[str, str]) -> str:
    for old, new in moves.items():
        assert old in text, old
        text = text.replace(old, new)
    return text


@contextmanager
def _redis_as_in_its_pod(tmp_path: Path, secrets: dict[str, str]) -> Iterator[int]:
    """Run the redis container's start-up script on this machine, with the rendered
    redis.conf and the `secrets` files, their paths moved under `tmp_path`; yield the
    port of the redis-server it starts, and stop it at the end."""
    (container,) = pod_spec(_get("StatefulSet", "redis"))["containers"]
    shell, flag, script = container["command"]
    port = free_port()
    for sub in ("secrets", "run", "data"):
        (tmp_path / sub).mkdir()
    for name, value in secrets.items():
        (tmp_path / "secrets" / name).write_bytes(value.encode())
    conf = _by_prefix("ConfigMap", "redis-config")["data"]["redis.conf"]
    moves = {REDIS_AUTH_CONF: str(tmp_path / "run" / "auth.conf")}
    (tmp_path / "redis.conf").write_text(
        _moved(conf, {**moves, "\ndir /data\n": f"\ndir {tmp_path / 'data'}\n"}),
        encoding="utf-8",
    )
    server = f"redis-server {tmp_path / 'redis.conf'} --port {port} --bind 127.0.0.1"
    script = _moved(
        script,
        {
            **moves,
            REDIS_SECRETS: str(tmp_path / "secrets"),
            "redis-server /etc/redis/redis.conf": server,
        },
    )
    proc = subprocess.Popen([shell, flag, script], stdout=subprocess.DEVNULL)
    try:
        wait_until(lambda: proc.poll() is not None or port_open(port), 10, "redis-server")
        assert proc.poll() is None, "the start-up script or redis-server stopped"
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _client(port: int, password: str | None = None) -> redis.Redis:
    """A client that tries once: a refused password is an answer, not a reason to retry."""
    return redis.Redis(
        host="127.0.0.1",
        port=port,
        password=password,
        socket_timeout=5,
        retry=Retry(NoBackoff(), retries=0),
    )


def _authenticates(port: int, password: str | None) -> bool:
    client = _client(port, password)
    try:
        return bool(client.ping())
    except redis.AuthenticationError:
        return False
    finally:
        client.close()


needs_redis = pytest.mark.skipif(
    not (shutil.which("redis-server") and shutil.which("redis-cli")),
    reason="needs redis-server and redis-cli",
)


@needs_redis
def test_redis_start_script_accepts_the_password_whatever_it_holds(tmp_path: Path) -> None:
    """The pod's start-up script and redis.conf, run here: Redis accepts the Secret's
    password as the app reads it (quotes, backslash, space, `#`), and the previous one
    while it is in the Secret; nothing else. No clear text in the written file, no RDB
    snapshots; the readiness probe's command logs in and gets PONG."""
    secrets = {"redis-password": TRICKY_PASSWORD, "redis-password-previous": PREVIOUS_PASSWORD}
    with _redis_as_in_its_pod(tmp_path, secrets) as port:
        assert _authenticates(port, TRICKY_PASSWORD.rstrip("\r\n"))
        assert _authenticates(port, PREVIOUS_PASSWORD.rstrip("\r\n"))
        assert not _authenticates(port, TRICKY_PASSWORD)
        assert not _authenticates(port, "wrong")
        with pytest.raises(redis.AuthenticationError):
            _client(port).set("k", 1)
        client = _client(port, TRICKY_PASSWORD.rstrip("\r\n"))
        assert client.config_get("save") == {"save": ""}
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        client.close()
        auth_conf = tmp_path / "run" / "auth.conf"
        assert auth_conf.stat().st_mode & 0o077 == 0
        written = auth_conf.read_text(encoding="utf-8")
        assert "#not-a-comment" not in written
        assert "old one" not in written
        (container,) = pod_spec(_get("StatefulSet", "redis"))["containers"]
        shell, flag, probe = container["readinessProbe"]["exec"]["command"]
        probe = _moved(
            probe, {REDIS_SECRETS: str(tmp_path / "secrets"), "redis-cli": f"redis-cli -p {port}"}
        )
        assert subprocess.run([shell, flag, probe], check=False, timeout=10).returncode == 0


@needs_redis
def test_redis_start_script_drops_the_previous_password_once_it_is_gone(tmp_path: Path) -> None:
    """Without redis-password-previous in the Secret, only redis-password opens Redis."""
    with _redis_as_in_its_pod(tmp_path, {"redis-password": "only this one\n"}) as port:
        assert _authenticates(port, "only this one")
        assert not _authenticates(port, PREVIOUS_PASSWORD.rstrip("\r\n"))


def test_redis_start_script_refuses_an_empty_password(tmp_path: Path) -> None:
    """An empty redis-password stops the start-up script before Redis starts."""
    (container,) = pod_spec(_get("StatefulSet", "redis"))["containers"]
    shell, flag, script = container["command"]
    (tmp_path / "redis-password").write_text("\n", encoding="utf-8")
    script = _moved(
        script,
        {
            REDIS_SECRETS: str(tmp_path),
            REDIS_AUTH_CONF: str(tmp_path / "auth.conf"),
            "exec redis-server": "exec false",
        },
    )
    result = subprocess.run([shell, flag, script], check=False, capture_output=True, text=True)
    assert result.returncode == 1
    assert "empty" in result.stderr


def test_redis_conf_includes_the_passwords_the_script_writes() -> None:
    """redis.conf includes the file that the start-up script writes."""
    assert _redis_conf()["include"] == [REDIS_AUTH_CONF]
