"""The redis-cluster component, the dev-cluster overlay and compose's `cluster` profile,
checked statically: rendered with `kubectl kustomize`, validated against the Kubernetes
1.33 and Compose schemas, scanned by checkov, their app environment parsed with the real
settings. No cluster and no container ran; the Redis Cluster itself is run by the
OT-CONTAINER-KIT redis-operator, whose CRD is not installed here, so the example
RedisCluster is checked for its names only."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.support import (
    APP_IMAGE,
    ROOT,
    TEST_ONLY_VARIABLES,
    api_settings,
    generated_object,
    load_yaml,
    only_object,
    parse_settings,
    pod_spec,
    render,
    render_component_on_base,
    run,
    strict_schema_errors,
    variables_read_by_code,
)
from tests.deploy.test_container import (
    CLUSTER_NODES,
    _environment,
    _redis_server_options,
    _run_command,
    _service,
)
from tests.deploy.test_lint import _checkov

CLUSTER_OVERLAY = ROOT / "k8s" / "overlays" / "dev-cluster"
COMPONENT = ROOT / "k8s" / "components" / "redis-cluster"
EXAMPLE = COMPONENT / "rediscluster.example.yaml"
NAMESPACE = "usercounter-dev-cluster"
STORE_SECRET = "usercounter-store-secrets"
WORKLOADS = ("Deployment", "StatefulSet")
Obj = dict[str, Any]


def _objects() -> tuple[Obj, ...]:
    return render(CLUSTER_OVERLAY)


def _get(kind: str, name: str, objects: tuple[Obj, ...] | None = None) -> Obj:
    return only_object(objects if objects is not None else _objects(), kind, name)


def _by_prefix(kind: str, prefix: str, objects: tuple[Obj, ...] | None = None) -> Obj:
    return generated_object(objects if objects is not None else _objects(), kind, prefix)


def _app_env(container: Obj, objects: tuple[Obj, ...]) -> dict[str, str]:
    """The effective environment of an app container: its ConfigMaps, then its `env`."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        name = source["configMapRef"]["name"].rsplit("-", 1)[0]
        env.update(_by_prefix("ConfigMap", name, objects)["data"])
    for item in container.get("env", []):
        source = item.get("valueFrom", {})
        assert "secretKeyRef" not in source, f"{item['name']}: secrets are mounted as files"
        env[item["name"]] = "a-pod-name" if "fieldRef" in source else item["value"]
    return env


def _app_containers(objects: tuple[Obj, ...]) -> list[tuple[str, Obj]]:
    """(workload name, container) of every container that runs the app's image."""
    found = []
    for workload in (o for o in objects if o["kind"] in WORKLOADS):
        pod = pod_spec(workload)
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            if container["image"].split(":")[0].rsplit("/", 1)[-1] == APP_IMAGE:
                found.append((workload["metadata"]["name"], container))
    return found


def _example() -> Obj:
    example = load_yaml(EXAMPLE)
    assert isinstance(example, dict)
    return example


def _operator_pod_labels() -> dict[str, dict[str, str]]:
    """The labels the operator gives the pods of the example RedisCluster `<name>`:
    `app: <name>-leader|follower`, `redis_setup_type: cluster`, `role`."""
    name = _example()["metadata"]["name"]
    return {
        f"{name}-{role}": {"app": f"{name}-{role}", "redis_setup_type": "cluster", "role": role}
        for role in ("leader", "follower")
    }


@pytest.fixture(scope="module")
def component_on_base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Obj, ...]:
    """The component over the bare base, as a production overlay would use it."""
    return render_component_on_base(tmp_path_factory.mktemp("k8s"), "redis-cluster")


# --- rendering and validation --------------------------------------------------------


def test_every_object_validates_strictly_against_kubernetes_1_33(
    component_on_base: tuple[Obj, ...],
) -> None:
    """Each rendered object of dev-cluster, and of the component over the bare base,
    matches the Kubernetes 1.33 schema, strictly. Prometheus Operator resources are left
    to tests/deploy/test_monitoring.py."""
    for objects in (_objects(), component_on_base):
        errors = strict_schema_errors(objects)
        assert not errors, "\n".join(errors)


def test_the_single_redis_is_gone() -> None:
    """No StatefulSet, Service, NetworkPolicy `redis` nor its redis-config; no Redis pod of
    our own at all (the operator runs the cluster); everything in the overlay's namespace."""
    names = {(o["kind"], o["metadata"]["name"]) for o in _objects()}
    for kind in ("StatefulSet", "Service", "NetworkPolicy"):
        assert (kind, "redis") not in names
    assert not [n for k, n in names if k == "ConfigMap" and n.startswith("redis-config")]
    for obj in _objects():
        if obj["kind"] in WORKLOADS:
            for container in pod_spec(obj)["containers"]:
                assert not container["image"].startswith("redis"), obj["metadata"]["name"]
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["metadata"]["name"]
    assert ("Namespace", NAMESPACE) in names


def test_component_on_base_keeps_the_base_otherwise(component_on_base: tuple[Obj, ...]) -> None:
    """Over the bare base the component takes away only the single Redis (its StatefulSet,
    Service, NetworkPolicy and config) and adds only the cluster's two NetworkPolicies."""
    base = {(o["kind"], o["metadata"]["name"]) for o in render(ROOT / "k8s" / "base")}
    with_component = {(o["kind"], o["metadata"]["name"]) for o in component_on_base}
    removed = {("StatefulSet", "redis"), ("Service", "redis"), ("NetworkPolicy", "redis")}
    regenerated = {
        (k, n)
        for k, n in base
        if k == "ConfigMap" and n.startswith(("redis-config-", "usercounter-config-"))
    }
    assert base - with_component == removed | regenerated
    added = {(k, n) for k, n in with_component - base if k != "ConfigMap"}
    assert added == {
        ("NetworkPolicy", "redis-cluster-clients"),
        ("NetworkPolicy", "redis-cluster-nodes"),
    }


def test_checkov_passes_on_the_overlay(tmp_path: Path) -> None:
    """checkov's kustomize scan of dev-cluster: no failed check, no parse error, each skip
    with its reason (the base's, commented where they are made)."""
    (report,) = _checkov(
        tmp_path, "-d", str(CLUSTER_OVERLAY.relative_to(ROOT)), "--framework", "kustomize"
    )
    results = report["results"]
    failed = [f"{f['check_id']} ({f['resource']})" for f in results["failed_checks"]]
    assert not failed, "\n".join(failed)
    assert report["summary"]["parsing_errors"] == 0
    scanned = {
        r["resource"].rsplit(":", 1)[-1]
        for kind in ("passed_checks", "skipped_checks")
        for r in results[kind]
    }
    for name in ("api", "sync-worker"):
        assert f"Deployment.{NAMESPACE}.{name}" in scanned
    for skipped in results["skipped_checks"]:
        assert skipped["check_result"].get("suppress_comment"), skipped["check_id"]


# --- the app in Cluster mode -----------------------------------------------------------


def test_app_env_parses_with_the_real_settings_in_cluster_mode(
    tmp_path: Path, component_on_base: tuple[Obj, ...]
) -> None:
    """Each app container's env (api, sync-worker, migrate) parses with the real settings
    and selects Cluster mode: the seeds are the operator's leader and follower Services of
    the example RedisCluster, port 6379; REDIS_ACK_REPLICAS 0 (the settings refuse more
    with a cluster); the passwords are mounted files; every variable is one the code reads."""
    name = _example()["metadata"]["name"]
    known = variables_read_by_code()
    for objects in (_objects(), component_on_base):
        containers = _app_containers(objects)
        assert {w for w, _ in containers} >= {"api", "sync-worker"}
        for workload, container in containers:
            env = _app_env(container, objects)
            assert set(env) <= known, f"{workload}: {sorted(set(env) - known)}"
            assert not set(env) & TEST_ONLY_VARIABLES
            assert "REDIS_SENTINELS" not in env
            settings = parse_settings(env, tmp_path).base
            assert settings.redis_cluster_nodes == (
                (f"{name}-leader", 6379),
                (f"{name}-follower", 6379),
            ), workload
            assert settings.redis_ack_replicas == 0
            assert settings.redis_sentinels == ()
            if container["name"] in ("api", "sync-worker"):
                assert env["REDIS_PASSWORD_FILE"].endswith("/redis-password")
                assert settings.redis_password == "stand-in"


def test_an_overlay_may_raise_acknowledged_replicas_in_cluster_mode(tmp_path: Path) -> None:
    """The component keeps REDIS_ACK_REPLICAS=0 (one replica per primary); an overlay for a
    cluster with two replicas per primary may set 1, and the settings take it."""
    env = dict(_by_prefix("ConfigMap", "usercounter-config")["data"])
    assert env["REDIS_ACK_REPLICAS"] == "0"
    env["REDIS_ACK_REPLICAS"] = "1"
    settings = parse_settings(env, tmp_path).base
    assert settings.redis_cluster_nodes
    assert settings.redis_ack_replicas == 1


# --- NetworkPolicies --------------------------------------------------------------------


def _selects(selector: Obj, labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        assert expr["operator"] == "In", f"operator {expr['operator']} not handled here"
        if labels.get(expr["key"]) not in expr["values"]:
            return False
    return True


def _reach(port: int) -> tuple[set[str], set[str]]:
    """Who may reach every cluster pod on `port`: pods (by workload name, or the cluster's
    own pods) and namespaces (by name)."""
    app_pods = {
        o["metadata"]["name"]: o["spec"]["template"]["metadata"]["labels"]
        for o in _objects()
        if o["kind"] in WORKLOADS
    }
    cluster_pods = _operator_pod_labels()
    peers = {**app_pods, **cluster_pods}
    per_target = []
    for labels in cluster_pods.values():
        pods: set[str] = set()
        namespaces: set[str] = set()
        for policy in (o for o in _objects() if o["kind"] == "NetworkPolicy"):
            if not _selects(policy["spec"]["podSelector"], labels):
                continue
            assert policy["spec"]["policyTypes"] == ["Ingress"]
            for rule in policy["spec"].get("ingress", []):
                if port not in [p["port"] for p in rule["ports"]]:
                    continue
                assert all(p["protocol"] == "TCP" for p in rule["ports"])
                for peer in rule["from"]:
                    assert set(peer) in ({"podSelector"}, {"namespaceSelector"}), peer
                    if "podSelector" in peer:
                        pods |= {
                            n for n, lbl in peers.items() if _selects(peer["podSelector"], lbl)
                        }
                    else:
                        (namespace,) = peer["namespaceSelector"]["matchLabels"].values()
                        namespaces.add(namespace)
        per_target.append((pods, namespaces))
    assert all(t == per_target[0] for t in per_target), "leaders and followers differ"
    return per_target[0]


def test_api_and_worker_reach_the_cluster_nodes_on_6379() -> None:
    """Ingress is denied by default; the api and sync-worker reach every cluster pod
    (leaders and followers) on 6379, and so do the nodes and the operator; MySQL is not
    opened to the cluster."""
    deny = _get("NetworkPolicy", "default-deny-ingress")
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    pods, namespaces = _reach(6379)
    assert pods == {"api", "sync-worker", *_operator_pod_labels()}
    assert namespaces == {"ot-operators"}


def test_only_the_nodes_use_the_cluster_bus() -> None:
    """16379, the cluster bus, is open between the cluster's nodes only: clients never use
    it, and the operator talks to the nodes on 6379."""
    pods, namespaces = _reach(16379)
    assert pods == set(_operator_pod_labels())
    assert not namespaces


# --- the operator's RedisCluster (not applied by the component) -------------------------


def test_example_rediscluster_is_documented_not_applied() -> None:
    """The example RedisCluster (v1beta2, 3 leaders) is in no kustomization and so in no
    rendering; its password is the store Secret's redis-password, the app's value."""
    example = _example()
    assert example["apiVersion"] == "redis.redis.opstreelabs.in/v1beta2"
    assert example["kind"] == "RedisCluster"
    assert example["spec"]["clusterSize"] == 3
    for path in (ROOT / "k8s").rglob("kustomization.yaml"):
        kustomization = load_yaml(path)
        listed = [*kustomization.get("resources", []), *kustomization.get("components", [])]
        assert not [r for r in listed if r.endswith(EXAMPLE.name)], path
    assert not [o for o in _objects() if o["kind"] == "RedisCluster"]
    secret = example["spec"]["kubernetesConfig"]["redisSecret"]
    assert secret["name"] == STORE_SECRET
    assert secret["key"] in _get("Secret", STORE_SECRET)["data"]
    app_secret = _by_prefix("Secret", "usercounter-secrets")["data"]
    assert app_secret[secret["key"]] == _get("Secret", STORE_SECRET)["data"][secret["key"]]


# --- compose's `cluster` profile and compose.cluster.yaml ------------------------------


@pytest.mark.parametrize("path", ["compose.yaml", "compose.cluster.yaml"])
def test_compose_files_match_the_compose_specification(path: str) -> None:
    """compose.yaml with its `cluster` profile, and the override that points the app at
    it, validate against the Compose specification schema check-jsonschema ships."""
    result = run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", path]
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_cluster_nodes() -> None:
    """Six nodes on redis:7.2 as the `redis` user, in Cluster mode, with the default
    `redis`' persistence, memory and password settings (masterauth too, for the replicas);
    each announces its service name and keeps nodes.conf and its AOF on its own volume."""
    as_argv = {"exec redis-server": "printf '%s\\n'"}
    single = _redis_server_options(_run_command(_service("redis"), as_argv).splitlines())
    volumes = set(load_yaml(ROOT / "compose.yaml")["volumes"])
    for name in CLUSTER_NODES:
        service = _service(name)
        assert service["image"] == "redis:7.2"
        assert service["user"] == "999:999"
        assert service["profiles"] == ["cluster"]
        options = _redis_server_options(_run_command(service, as_argv).splitlines())
        for option in ("appendonly", "appendfsync", "save", "maxmemory", "maxmemory-policy"):
            assert options[option] == single[option], (name, option)
        assert options["cluster-enabled"] == ["yes"]
        assert options["cluster-config-file"] == ["nodes.conf"]
        assert options["cluster-announce-hostname"] == [name]
        assert options["cluster-preferred-endpoint-type"] == ["hostname"]
        password = _environment(service)["REDIS_PASSWORD"]
        assert password == _environment(_service("redis"))["REDIS_PASSWORD"]
        assert options["requirepass"] == options["masterauth"] == [password]
        assert "replicaof" not in options
        assert service["volumes"] == [f"{name}-data:/data"]
        assert f"{name}-data" in volumes
        assert "redis-cli ping" in " ".join(service["healthcheck"]["test"])


def _create(known_nodes: int) -> list[str]:
    """What the one-shot runs, here: `cluster info` answers `known_nodes`, each name
    resolves to `ip-of-<name>`, and the final redis-cli prints its arguments."""
    return _run_command(
        _service("redis-cluster-create"),
        {
            "redis-cli -h redis-cluster-1 cluster info": f"echo cluster_known_nodes:{known_nodes}",
            'getent hosts "$node"': 'echo "ip-of-$node $node"',
            "exec redis-cli --cluster create": "printf '%s\\n' --cluster create",
        },
    ).splitlines()


def test_compose_cluster_create_names_six_nodes_with_one_replica_each() -> None:
    """Once the six nodes are healthy, the one-shot runs `redis-cli --cluster create` with
    the six nodes' addresses and --cluster-replicas 1 (3 primaries, 3 replicas), password
    from REDISCLI_AUTH; it leaves an existing cluster alone."""
    service = _service("redis-cluster-create")
    assert service["image"] == "redis:7.2"
    assert service["profiles"] == ["cluster"]
    assert service["restart"] == "no"
    assert service["depends_on"] == {n: {"condition": "service_healthy"} for n in CLUSTER_NODES}
    assert 'export REDISCLI_AUTH="$$REDIS_PASSWORD"' in service["command"][2]
    password = _environment(service)["REDIS_PASSWORD"]
    assert password == _environment(_service("redis"))["REDIS_PASSWORD"]
    argv = _create(known_nodes=1)
    assert argv[:2] == ["--cluster", "create"]
    assert argv[2:8] == [f"ip-of-{n}:6379" for n in CLUSTER_NODES]
    assert argv[8:] == ["--cluster-replicas", "1", "--cluster-yes"]
    assert _create(known_nodes=6) == ["redis-cluster-create: the cluster exists already"]


def test_compose_cluster_override_points_the_app_at_the_cluster(tmp_path: Path) -> None:
    """compose.cluster.yaml, merged over compose.yaml, gives the api and sync-worker the six
    nodes as seeds and REDIS_ACK_REPLICAS=0, and makes both wait for the cluster's
    creation. The merged env parses with the real settings and selects Cluster mode with
    the base password."""
    override = load_yaml(ROOT / "compose.cluster.yaml")["services"]
    assert set(override) == {"api", "sync-worker"}
    known = variables_read_by_code()
    for name, extra in override.items():
        assert set(extra) == {"environment", "depends_on"}
        assert extra["depends_on"] == {
            "redis-cluster-create": {"condition": "service_completed_successfully"}
        }
        env = {**_environment(_service(name)), **_environment(extra)}
        assert set(env) <= known
        settings = api_settings(env, tmp_path)
        assert settings.redis_cluster_nodes == tuple((n, 6379) for n in CLUSTER_NODES)
        assert settings.redis_ack_replicas == 0
        assert (
            settings.redis_password == _environment(_service("redis-cluster-1"))["REDIS_PASSWORD"]
        )
