"""The redis-sentinel component and the dev-sentinel overlay, rendered with `kubectl
kustomize` and checked statically (no cluster); the pods' start-up scripts also run here,
as local processes against this machine's redis-server."""

from __future__ import annotations

import base64
import os
import random
import re
import shlex
import shutil
import socket
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.deploy.support import (
    APP_IMAGE,
    ROOT,
    TEST_ONLY_VARIABLES,
    generated_object,
    only_object,
    parse_settings,
    pod_spec,
    render,
    render_component_on_base,
    strict_schema_errors,
    variables_read_by_code,
)
from tests.faults import wait_until

SENTINEL_OVERLAY = ROOT / "k8s" / "overlays" / "dev-sentinel"
COMPONENT = ROOT / "k8s" / "components" / "redis-sentinel"
NAMESPACE = "usercounter-dev-sentinel"
STORE_SECRET = "usercounter-store-secrets"
WORKLOADS = ("Deployment", "StatefulSet")
Obj = dict[str, Any]


def _objects() -> tuple[Obj, ...]:
    return render(SENTINEL_OVERLAY)


def _get(kind: str, name: str, objects: tuple[Obj, ...] | None = None) -> Obj:
    return only_object(objects if objects is not None else _objects(), kind, name)


def _by_prefix(kind: str, prefix: str) -> Obj:
    return generated_object(_objects(), kind, prefix)


def _container(workload: Obj) -> Obj:
    container: Obj
    (container,) = pod_spec(workload)["containers"]
    return container


def _plain_env(container: Obj) -> dict[str, str]:
    """A container's own `env`, `$(VAR)` references expanded as the kubelet does; the
    downward API's pod name stands for the first pod."""
    env: dict[str, str] = {}
    for item in container.get("env", []):
        if "valueFrom" in item:
            assert item["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}, item
            env[item["name"]] = "POD-NAME"
            continue
        env[item["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m[1]], item["value"])
    return env


def _app_env(container: Obj) -> dict[str, str]:
    """The effective environment of an app container: its ConfigMaps, then its `env`."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(
            _by_prefix("ConfigMap", source["configMapRef"]["name"].rsplit("-", 1)[0])["data"]
        )
    for item in container.get("env", []):
        source = item.get("valueFrom", {})
        assert "secretKeyRef" not in source, f"{item['name']}: secrets are mounted as files"
        if "fieldRef" in source:
            env[item["name"]] = "sync-worker-5d8f7c9b4-x2x7q"
            continue
        env[item["name"]] = item["value"]
    return env


def _sentinel_mode_containers() -> Iterator[tuple[Obj, Obj]]:
    """(pod spec, container) of the api and sync-worker main containers."""
    for name in ("api", "sync-worker"):
        deployment = _get("Deployment", name)
        yield pod_spec(deployment), _container(deployment)


def _conf(text: str) -> list[list[str]]:
    """A Redis config file's directives, split as Redis splits them; comments dropped."""
    return [shlex.split(ln) for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


def _ha_file(name: str) -> str:
    text: str = _by_prefix("ConfigMap", "redis-ha")["data"][name]
    return text


def _pod_dns_names(statefulset: Obj) -> list[str]:
    """`<name>-<i>.<serviceName>` of each pod: its stable DNS name in the namespace."""
    name, spec = statefulset["metadata"]["name"], statefulset["spec"]
    return [f"{name}-{i}.{spec['serviceName']}" for i in range(spec["replicas"])]


# --- rendering and validation --------------------------------------------------------


def test_every_object_validates_strictly_against_kubernetes_1_33() -> None:
    """Each rendered object of dev-sentinel matches the Kubernetes 1.33 schema, strictly.
    Prometheus Operator resources are left to tests/deploy/test_monitoring.py."""
    errors = strict_schema_errors(_objects())
    assert not errors, "\n".join(errors)


def test_the_single_redis_is_replaced() -> None:
    """No StatefulSet, Service or NetworkPolicy `redis`; the data nodes and Sentinels, with
    their headless Services, PDBs and policies, in the overlay's namespace."""
    names = {(o["kind"], o["metadata"]["name"]) for o in _objects()}
    for kind in ("StatefulSet", "Service", "NetworkPolicy"):
        assert (kind, "redis") not in names
        for name in ("redis-data", "redis-sentinel"):
            _get(kind, name)
    for name in ("redis-data", "redis-sentinel", "api", "sync-worker"):
        _get("PodDisruptionBudget", name)
    for obj in _objects():
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["metadata"]["name"]
    assert ("Namespace", NAMESPACE) in names


@pytest.mark.parametrize(("name", "port"), [("redis-data", 6379), ("redis-sentinel", 26379)])
def test_three_pods_each_with_headless_service_pdb_and_probes(name: str, port: int) -> None:
    """3 pods started together; a headless Service that publishes them before they are
    ready; a PDB that lets one go at a time; startup, liveness and readiness probes."""
    sts = _get("StatefulSet", name)
    assert sts["spec"]["replicas"] == 3
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    selector = sts["spec"]["selector"]
    service = _get("Service", sts["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == selector["matchLabels"]
    assert [p["port"] for p in service["spec"]["ports"]] == [port]
    container = _container(sts)
    assert [p["containerPort"] for p in container["ports"]] == [port]
    assert container["image"] == "redis:7.2"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert probe in container
    pdb = _get("PodDisruptionBudget", name)
    assert pdb["spec"]["selector"] == selector
    assert pdb["spec"]["maxUnavailable"] == 1
    assert sts["spec"]["template"]["metadata"]["labels"] == selector["matchLabels"]


def _anti_affinity_terms(sts: Obj) -> tuple[list[Obj], list[Obj]]:
    anti = pod_spec(sts)["affinity"]["podAntiAffinity"]
    required = anti.get("requiredDuringSchedulingIgnoredDuringExecution", [])
    preferred = [
        t["podAffinityTerm"]
        for t in anti.get("preferredDuringSchedulingIgnoredDuringExecution", [])
    ]
    return required, preferred


@pytest.fixture(scope="module")
def component_on_base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Obj, ...]:
    """The component over the bare base, as a production overlay would use it."""
    return render_component_on_base(tmp_path_factory.mktemp("k8s"), "redis-sentinel")


@pytest.mark.parametrize("name", ["redis-data", "redis-sentinel"])
def test_one_pod_per_node(component_on_base: tuple[Obj, ...], name: str) -> None:
    """The component requires one data node and one Sentinel per node (kubernetes.io/
    hostname); dev-sentinel, for one-node dev clusters, only prefers it."""
    for objects, strict in ((component_on_base, True), (_objects(), False)):
        sts = _get("StatefulSet", name, objects)
        required, preferred = _anti_affinity_terms(sts)
        (term,) = required if strict else preferred
        assert not (preferred if strict else required)
        assert term["topologyKey"] == "kubernetes.io/hostname"
        assert term["labelSelector"] == sts["spec"]["selector"]


def test_component_on_base_validates_and_keeps_the_base_otherwise(
    component_on_base: tuple[Obj, ...],
) -> None:
    """Over the bare base the component renders valid objects, and takes away only the
    single Redis: every other object of the base is still there."""
    assert strict_schema_errors(tuple(component_on_base)) == []
    base = {(o["kind"], o["metadata"]["name"]) for o in render(ROOT / "k8s" / "base")}
    with_component = {(o["kind"], o["metadata"]["name"]) for o in component_on_base}
    removed = {("StatefulSet", "redis"), ("Service", "redis"), ("NetworkPolicy", "redis")}
    generated = {(k, n) for k, n in base if k == "ConfigMap"}
    assert base - with_component == removed | {
        c for c in generated if c[1].startswith("usercounter-config-")
    }


# --- Redis and Sentinel configuration ----------------------------------------------------


def test_data_nodes_persist_by_aof_and_refuse_writes_without_a_replica() -> None:
    """The config each data node writes includes the base redis.conf (AOF every second, no
    RDB snapshots) from its mount, then replication.conf: min-replicas-to-write 1,
    min-replicas-max-lag 10."""
    sts = _get("StatefulSet", "redis-data")
    container, env = _container(sts), _plain_env(_container(sts))
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec(sts)["volumes"]}
    base_dir, base_file = env["BASE_CONF"].rsplit("/", 1)
    config_map = volumes[mounts[base_dir]]["configMap"]["name"]
    base = dict((d[0], d[1:]) for d in _conf(_get("ConfigMap", config_map)["data"][base_file]))
    assert base["appendonly"] == ["yes"]
    assert base["appendfsync"] == ["everysec"]
    assert base["save"] == [""]
    assert volumes[mounts[env["CONF_DIR"]]]["configMap"]["name"].startswith("redis-ha-")
    replication = dict((d[0], d[1:]) for d in _conf(_ha_file("replication.conf")))
    assert replication["min-replicas-to-write"] == ["1"]
    assert replication["min-replicas-max-lag"] == ["10"]
    script = _ha_file("redis-ha.sh")
    assert 'echo "include $BASE_CONF"' in script
    assert 'echo "include $CONF_DIR/replication.conf"' in script
    # The memory limit leaves room for the AOF rewrite's fork, as the base Redis does.
    resources = container["resources"]
    assert resources["limits"]["memory"] == resources["requests"]["memory"] == "512Mi"
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert mounts["/data"] == claim["metadata"]["name"]


def test_sentinels_quorum_timeouts_and_names() -> None:
    """Quorum 2 of 3, down after 5 s, failover timeout 60 s; hostnames resolved and
    announced, set before `sentinel monitor`; one master name for Sentinels, scripts and app."""
    directives = _conf(_ha_file("sentinel.conf"))
    sentinel = {tuple(d[1:2]): d[2:] for d in directives if d[0] == "sentinel"}
    (monitor,) = [d for d in directives if d[:2] == ["sentinel", "monitor"]]
    master, host, port, quorum = monitor[2:]
    assert (host, port, quorum) == ("@PRIMARY@", "6379", "2")
    assert sentinel[("down-after-milliseconds",)] == [master, "5000"]
    assert sentinel[("failover-timeout",)] == [master, "60000"]
    order = [tuple(d[:2]) for d in directives]
    for option in ("resolve-hostnames", "announce-hostnames"):
        assert sentinel[(option,)] == ["yes"]
        assert order.index(("sentinel", option)) < order.index(("sentinel", "monitor"))
    assert _get("StatefulSet", "redis-sentinel")["spec"]["replicas"] > 2 * (int(quorum) - 1)
    for name in ("redis-data", "redis-sentinel"):
        assert _plain_env(_container(_get("StatefulSet", name)))["MASTER_NAME"] == master
    for _, container in _sentinel_mode_containers():
        assert _app_env(container)["REDIS_SENTINEL_MASTER"] == master


def test_scripts_name_every_pod_by_its_stable_dns_name() -> None:
    """DATA_NODES and SENTINELS are the StatefulSets' pod DNS names; SELF is this pod's;
    the data nodes announce it (replica-announce-ip) and the Sentinels announce theirs.
    `replica-announce-hostname` is no Redis directive: it would stop Redis at start."""
    data, sentinels = _get("StatefulSet", "redis-data"), _get("StatefulSet", "redis-sentinel")
    for sts in (data, sentinels):
        env = _plain_env(_container(sts))
        assert env["DATA_NODES"].split() == _pod_dns_names(data)
        assert env["SENTINELS"].split() == _pod_dns_names(sentinels)
        assert env["SELF"] == f"POD-NAME.{sts['spec']['serviceName']}"
        assert _container(sts)["command"][:2] == ["sh", f"{env['CONF_DIR']}/redis-ha.sh"]
    script = _ha_file("redis-ha.sh")
    assert 'echo "replica-announce-ip $SELF"' in script
    assert 'echo "sentinel announce-ip $SELF"' in script
    assert "replica-announce-hostname" not in script + _ha_file("replication.conf")


def test_sentinels_write_their_config_to_an_emptydir() -> None:
    """Sentinel rewrites its config file: the copy it runs with is in a writable emptyDir,
    and the root filesystem stays read-only."""
    sts = _get("StatefulSet", "redis-sentinel")
    container = _container(sts)
    run_dir = _plain_env(container)["RUN_DIR"]
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == run_dir]
    assert not mount.get("readOnly")
    volumes = {v["name"]: v for v in pod_spec(sts)["volumes"]}
    assert "emptyDir" in volumes[mount["name"]]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert 'exec redis-server "$RUN_DIR/sentinel.conf" --sentinel' in _ha_file("redis-ha.sh")


def test_redis_pods_are_locked_down() -> None:
    """As the base Redis: non-root, seccomp RuntimeDefault, read-only root, no
    capabilities, no service account token, requests and limits."""
    for name in ("redis-data", "redis-sentinel"):
        pod = pod_spec(_get("StatefulSet", name))
        assert pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] >= 10000
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        sc = _container(_get("StatefulSet", name))["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(
                _container(_get("StatefulSet", name))["resources"][kind]
            )


# --- the app in Sentinel mode -------------------------------------------------------------


def test_app_points_at_the_three_sentinels() -> None:
    """REDIS_SENTINELS lists each Sentinel pod at the Sentinel port; REDIS_ACK_REPLICAS=1;
    REDIS_URL keeps its database number, and its host is no Service any more (an image
    without Sentinel support fails its readiness probe instead of using a replica)."""
    sentinels = _get("StatefulSet", "redis-sentinel")
    (port,) = [p["containerPort"] for p in _container(sentinels)["ports"]]
    services = {o["metadata"]["name"] for o in _objects() if o["kind"] == "Service"}
    for _, container in _sentinel_mode_containers():
        env = _app_env(container)
        assert env["REDIS_SENTINELS"].split(",") == [
            f"{host}:{port}" for host in _pod_dns_names(sentinels)
        ]
        assert env["REDIS_ACK_REPLICAS"] == "1"
        assert 0 < int(env["REDIS_ACK_TIMEOUT_MS"]) <= 1000
        url = re.fullmatch(r"redis://([\w.-]+):6379/(\d+)", env["REDIS_URL"])
        assert url, env["REDIS_URL"]
        assert url[1] not in services


def test_app_env_parses_with_the_real_settings(tmp_path: Path) -> None:
    """Each app container's env parses with the real settings, Sentinel mode included;
    every variable is one the code reads."""
    known = variables_read_by_code()
    for workload in (o for o in _objects() if o["kind"] in WORKLOADS):
        for container in [
            *pod_spec(workload).get("initContainers", []),
            *pod_spec(workload)["containers"],
        ]:
            if container["image"].split(":")[0].rsplit("/", 1)[-1] != APP_IMAGE:
                continue
            env = _app_env(container)
            assert set(env) <= known, f"{container['name']}: {sorted(set(env) - known)}"
            assert not set(env) & TEST_ONLY_VARIABLES
            settings = parse_settings(env, tmp_path).base
            assert settings.redis_url.endswith("/0")
            assert settings.log_format == "json"
            if "REDIS_SENTINELS" in env:
                assert len(settings.redis_sentinels) == 3
                assert settings.redis_ack_replicas == 1


def test_sentinel_password_is_a_mounted_file_of_the_app_secret() -> None:
    """REDIS_SENTINEL_PASSWORD_FILE is a key of the app's hashed Secret, mounted read-only;
    the api and worker still have their MySQL and Redis passwords."""
    secret = _by_prefix("Secret", "usercounter-secrets")
    for pod, container in _sentinel_mode_containers():
        env = _app_env(container)
        assert {
            "MYSQL_PASSWORD_FILE",
            "REDIS_PASSWORD_FILE",
            "REDIS_SENTINEL_PASSWORD_FILE",
        } <= set(env)
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        for name in ("MYSQL_PASSWORD_FILE", "REDIS_PASSWORD_FILE", "REDIS_SENTINEL_PASSWORD_FILE"):
            directory, key = env[name].rsplit("/", 1)
            assert mounts[directory]["readOnly"] is True
            source = volumes[mounts[directory]["name"]]["secret"]
            assert source["secretName"] == secret["metadata"]["name"]
            assert key in {i["path"] for i in source["items"]}
            assert key in secret["data"]


def test_stores_read_the_fixed_name_secret_with_fake_dev_values() -> None:
    """Data nodes and Sentinels mount only the store Secret (a fixed name: a password change
    restarts none of them); both Secrets hold the Sentinels' password, a fake dev value."""
    store = _get("Secret", STORE_SECRET)
    for name in ("redis-data", "redis-sentinel"):
        names = set()
        for volume in pod_spec(_get("StatefulSet", name))["volumes"]:
            for source in volume.get("projected", {}).get("sources", []):
                names.add(source["secret"]["name"])
                for item in source["secret"]["items"]:
                    assert source["secret"].get("optional") or item["key"] in store["data"]
            assert "secret" not in volume
        assert names == {STORE_SECRET}
    for secret in (store, _by_prefix("Secret", "usercounter-secrets")):
        for value in secret["data"].values():
            assert base64.b64decode(value).decode().startswith("dev-only-fake-")
        assert "redis-sentinel-password" in secret["data"]


# --- NetworkPolicies --------------------------------------------------------------------


def _selects(selector: Obj, labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        assert expr["operator"] == "In", f"operator {expr['operator']} not handled here"
        if labels.get(expr["key"]) not in expr["values"]:
            return False
    return True


@pytest.mark.parametrize(
    ("target", "port", "allowed"),
    [
        ("redis-data", 6379, {"api", "sync-worker", "redis-data", "redis-sentinel"}),
        ("redis-sentinel", 26379, {"api", "sync-worker", "redis-data", "redis-sentinel"}),
        ("mysql", 3306, {"api", "sync-worker"}),
    ],
)
def test_who_reaches_the_stores(target: str, port: int, allowed: set[str]) -> None:
    """Ingress is denied by default; the app reaches the Sentinels and the data nodes, the
    data nodes each other (replication) and the Sentinels (asked for the primary at
    start), the Sentinels the data nodes and each other; MySQL is unchanged."""
    labels = {
        o["metadata"]["name"]: o["spec"]["template"]["metadata"]["labels"]
        for o in _objects()
        if o["kind"] in WORKLOADS
    }
    deny = _get("NetworkPolicy", "default-deny-ingress")
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    reached: set[str] = set()
    for policy in (o for o in _objects() if o["kind"] == "NetworkPolicy"):
        if not _selects(policy["spec"]["podSelector"], labels[target]):
            continue
        for rule in policy["spec"].get("ingress", []):
            assert [p["port"] for p in rule["ports"]] == [port]
            for peer in rule["from"]:
                assert set(peer) == {"podSelector"}, "no namespace or IP peers for a store"
                reached |= {n for n, lbl in labels.items() if _selects(peer["podSelector"], lbl)}
    assert reached == allowed


# --- the start-up scripts, run here ----------------------------------------------------

# A password with quotes, a backslash, a space, a `#`, and CR/LF at the end (dropped).
DATA_PASSWORD = 'it\'s "new" \\ #not-a-comment\r\n'
SENTINEL_PASSWORD = 'sentinel "pw" \\ #x\n'


def _free_on(address: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((address, port))
        except OSError:
            return False
        return True


class _Topology:
    """The three data nodes and three Sentinels, each the rendered redis-ha.sh running
    here with the pod's environment: loopback addresses stand for the pods' DNS names
    (the ports stay 6379 and 26379), directories under tmp_path for the volumes."""

    def __init__(self, tmp_path: Path, stack: ExitStack) -> None:
        net = f"127.{random.randint(100, 250)}.{random.randint(0, 250)}"
        self.data = [f"{net}.{i}" for i in (11, 12, 13)]
        self.sentinels = [f"{net}.{i}" for i in (21, 22, 23)]
        if not all(_free_on(a, 6379) for a in self.data) or not all(
            _free_on(a, 26379) for a in self.sentinels
        ):
            pytest.skip("cannot bind 6379/26379 on 127.x loopback addresses here")
        self.tmp, self.stack = tmp_path, stack
        self.secrets = tmp_path / "secrets"
        self.secrets.mkdir()
        (self.secrets / "redis-password").write_bytes(DATA_PASSWORD.encode())
        (self.secrets / "redis-sentinel-password").write_bytes(SENTINEL_PASSWORD.encode())
        self.script = tmp_path / "redis-ha.sh"
        self.script.write_text(_ha_file("redis-ha.sh"), encoding="utf-8")
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.base_env = {
            "PATH": os.environ["PATH"],
            "DATA_NODES": " ".join(self.data),
            "SENTINELS": " ".join(self.sentinels),
            "MASTER_NAME": _plain_env(_container(_get("StatefulSet", "redis-data")))["MASTER_NAME"],
            "SECRETS_DIR": str(self.secrets),
        }

    def _dirs(self, address: str) -> tuple[Path, Path]:
        home = self.tmp / address
        (home / "run").mkdir(parents=True, exist_ok=True)
        (home / "data").mkdir(exist_ok=True)
        return home, home / "run"

    def env(self, address: str) -> dict[str, str]:
        home, run = self._dirs(address)
        env = {**self.base_env, "SELF": address, "RUN_DIR": str(run), "PROBE_HOST": address}
        if address in self.data:
            conf = _by_prefix("ConfigMap", "redis-config")["data"]["redis.conf"]
            conf = re.sub(r"(?m)^bind .*$", f"bind {address}", conf)
            conf = conf.replace("\ndir /data\n", f"\ndir {home / 'data'}\n")
            conf = conf.replace("/run/redis/auth.conf", str(run / "auth.conf"))
            (home / "redis.conf").write_text(conf, encoding="utf-8")
            (home / "replication.conf").write_text(_ha_file("replication.conf"), encoding="utf-8")
            env |= {"BASE_CONF": str(home / "redis.conf"), "CONF_DIR": str(home)}
        else:
            conf = re.sub(r"(?m)^bind .*$", f"bind {address}", _ha_file("sentinel.conf"))
            (home / "sentinel.conf").write_text(conf, encoding="utf-8")
            env["CONF_DIR"] = str(home)
        return env

    def start(self, address: str) -> None:
        command = "data" if address in self.data else "sentinel"
        log = (self.tmp / f"{address}.log").open("ab")
        self.stack.callback(log.close)
        proc = subprocess.Popen(
            ["sh", str(self.script), command], env=self.env(address), stdout=log, stderr=log
        )
        self.procs[address] = proc
        self.stack.callback(self._stop, proc)
        port = 6379 if command == "data" else 26379
        wait_until(lambda: proc.poll() is not None or _connects(address, port), 10, address)
        assert proc.poll() is None, (self.tmp / f"{address}.log").read_text(errors="replace")

    @staticmethod
    def _stop(proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def run(self, address: str, command: str) -> int:
        result = subprocess.run(
            ["sh", str(self.script), command],
            env=self.env(address),
            capture_output=True,
            timeout=60,
            check=False,
        )
        return result.returncode

    def client(self, address: str) -> redis.Redis:
        sentinel = address in self.sentinels
        password = (SENTINEL_PASSWORD if sentinel else DATA_PASSWORD).rstrip("\r\n")
        client = redis.Redis(
            host=address,
            port=26379 if sentinel else 6379,
            password=password,
            socket_timeout=3,
            retry=Retry(NoBackoff(), retries=0),
            decode_responses=True,
        )
        self.stack.callback(client.close)
        return client

    def primary(self) -> str:
        """The primary a Sentinel names (the first that answers)."""
        for sentinel in self.sentinels:
            with suppress(redis.RedisError):
                client: Any = self.client(sentinel)  # the Sentinel commands are untyped
                host, _ = client.execute_command(
                    "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.base_env["MASTER_NAME"]
                )
                return str(host)
        raise AssertionError("no Sentinel answers")

    def role(self, address: str) -> str:
        with suppress(redis.RedisError):
            return str(self.client(address).info("replication")["role"])
        return "down"

    def linked(self, address: str) -> bool:
        with suppress(redis.RedisError):
            info = self.client(address).info("replication")
            return bool(info["role"] == "master" or info.get("master_link_status") == "up")
        return False


def _connects(address: str, port: int) -> bool:
    with suppress(OSError), socket.create_connection((address, port), timeout=0.2):
        return True
    return False


@contextmanager
def _topology(tmp_path: Path) -> Iterator[_Topology]:
    with ExitStack() as stack:
        yield _Topology(tmp_path, stack)


needs_redis = pytest.mark.skipif(
    not (shutil.which("redis-server") and shutil.which("redis-cli")),
    reason="needs redis-server and redis-cli",
)


@needs_redis
@pytest.mark.slow
def test_scripts_replicate_fail_over_and_rejoin(tmp_path: Path) -> None:
    """The rendered redis-ha.sh, run here for 3 data nodes and 3 Sentinels: the first data
    node starts as the primary and the others replicate it, with a password that needs
    quoting; the Sentinels find each other and agree (readiness probes pass); the
    pre-stop hook of the primary hands over to a replica; when the primary is killed the
    Sentinels promote a replica, and the killed node, started again, asks them and
    rejoins as a replica of the new primary. A write needs a replica (min-replicas)."""
    with _topology(tmp_path) as ha:
        for address in ha.data + ha.sentinels:
            ha.start(address)
        wait_until(lambda: all(ha.linked(a) for a in ha.data), 30, "replication")
        assert ha.primary() == ha.data[0]
        assert [ha.role(a) for a in ha.data] == ["master", "slave", "slave"]
        assert all(ha.run(a, "data-ready") == 0 for a in ha.data)
        wait_until(
            lambda: all(ha.run(s, "sentinel-ready") == 0 for s in ha.sentinels), 30, "quorum"
        )
        assert ha.client(ha.data[0]).set("k", "1")
        assert ha.client(ha.data[0]).wait(1, 1000) >= 1

        # A rollout or drain: the primary's pre-stop hook hands over first.
        assert ha.run(ha.data[0], "data-prestop") == 0
        assert ha.role(ha.data[0]) == "slave"
        second = ha.primary()
        assert second in ha.data[1:]
        wait_until(lambda: ha.role(second) == "master", 15, "promoted replica")

        # A crash: the Sentinels promote the remaining replica after down-after-milliseconds.
        ha.procs[second].kill()
        ha.procs[second].wait()
        wait_until(lambda: ha.primary() not in (second,), 40, "failover")
        third = ha.primary()
        wait_until(lambda: ha.role(third) == "master", 15, "new primary")
        assert ha.client(third).get("k") == "1"

        # The old primary comes back: the Sentinels name the new one, so it replicates it.
        ha.start(second)
        wait_until(lambda: ha.role(second) == "slave" and ha.linked(second), 30, "rejoin")
        assert ha.client(second).info("replication")["master_host"] == third
        log = (tmp_path / f"{second}.log").read_text(errors="replace")
        assert f"redis-ha: {second} starts as a replica of {third}" in log

        # No clear password in the files the scripts wrote, but the hashed ACL.
        for address in ha.data:
            written = (tmp_path / address / "run" / "auth.conf").read_text(encoding="utf-8")
            assert "not-a-comment" not in written
            assert written.startswith("user default on ")


@needs_redis
def test_scripts_refuse_an_empty_password(tmp_path: Path) -> None:
    """An empty password stops a data node's and a Sentinel's start-up before the server."""
    with _topology(tmp_path) as ha:
        for key in ("redis-password", "redis-sentinel-password"):
            (ha.secrets / key).write_text("\n", encoding="utf-8")
        for address, command in ((ha.data[0], "data"), (ha.sentinels[0], "sentinel")):
            result = subprocess.run(
                ["sh", str(ha.script), command],
                env=ha.env(address),
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert result.returncode == 1
            assert "empty or unreadable" in result.stderr


PROD_EXAMPLE = "# k8s/overlays/prod-sentinel/kustomization.yaml"


def test_documented_production_overlay_builds(tmp_path: Path) -> None:
    """The production overlay of docs/deploy.md#redis-with-sentinel, in a copy of k8s/ with
    stand-in secret files, renders both Secrets with the four keys, the data nodes and
    Sentinels one per node, and the api in Sentinel mode; the secret files are git-ignored."""
    page = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    blocks: list[str] = re.findall(r"^```\w*\n(.*?)^```", page, re.S | re.M)
    (example,) = [b for b in blocks if b.startswith(f"{PROD_EXAMPLE}\n")]
    shutil.copytree(ROOT / "k8s", tmp_path / "k8s")
    overlay = tmp_path / "k8s" / "overlays" / "prod-sentinel"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(example, encoding="utf-8")
    keys = set()
    for generator in yaml.safe_load(example)["secretGenerator"]:
        for entry in generator["files"]:
            key, path = entry.split("=", 1)
            keys.add(key)
            (overlay / path).parent.mkdir(exist_ok=True)
            (overlay / path).write_text(f"stand-in {key}\n", encoding="utf-8")
            if (ROOT / ".git").exists():
                ignored = subprocess.run(
                    [
                        "git",
                        "check-ignore",
                        "-q",
                        "--no-index",
                        f"k8s/overlays/prod-sentinel/{path}",
                    ],
                    cwd=ROOT,
                    check=False,
                )
                assert ignored.returncode == 0, f"{path} is not git-ignored"
    objects = render(overlay)
    assert "redis-sentinel-password" in keys
    assert strict_schema_errors(tuple(objects)) == []
    for obj in objects:
        if obj["kind"] == "Secret":
            assert set(obj["data"]) == keys
    for name in ("redis-data", "redis-sentinel"):
        required, _ = _anti_affinity_terms(_get("StatefulSet", name, objects))
        assert required
    (config,) = [
        o
        for o in objects
        if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("usercounter-config-")
    ]
    assert (
        config["data"]["REDIS_SENTINELS"]
        == _by_prefix("ConfigMap", "usercounter-config")["data"]["REDIS_SENTINELS"]
    )
