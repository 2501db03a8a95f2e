"""The objects a UserCounter owns, rendered from the kustomize base and patched by its spec.

One source of truth: the shapes come from the YAML files of k8s/base (and, when the spec
asks for them, the patches of k8s/components/mysql-least-privilege and redis-sentinel),
read at run time; this module only changes what the spec sets, the way kustomize would:

- names: every owned object is `<resource name>-<base name>` (`demo-api`), and each
  reference to one (ConfigMap, HPA target, Ingress backend, ServiceAccount) follows;
- labels: `app.kubernetes.io/part-of: usercounter`, `managed-by: usercounter-operator`
  and `instance: <resource name>` on every object and pod template; `instance` is also
  added to every selector, so two UserCounters in one namespace never select each other;
- the namespace, an ownerReference to the UserCounter, the image and pull policy;
- the ConfigMap has a fixed name; a pod-template annotation carries its hash instead, so
  a changed setting rolls the pods as kustomize's hashed names do;
- with autoscaling on, the API Deployment leaves `replicas` to the HPA (server-side apply
  would otherwise reset what the HPA chose on every reconcile).

tests/operator/test_render.py compares the result with `kubectl kustomize
k8s/overlays/dev` modulo exactly these differences.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from usercounter_operator.spec import GROUP, KIND, VERSION, Spec

Obj = dict[str, Any]

APP_IMAGE = "usercounter"
BASE_SECRET = "usercounter-secrets"  # noqa: S105 (the base's Secret name)
BASE_CONFIG = "usercounter-config"
MANAGED_BY = "usercounter-operator"
CONFIG_HASH = f"{GROUP}/config-hash"
# The objects of k8s/base the operator owns, by (kind, name). MySQL, Redis, their
# Services and NetworkPolicies, default-deny-ingress and the Namespace stay with whoever
# runs the stores (docs/operator.md#what-it-owns).
OWNED = (
    ("ServiceAccount", "usercounter"),
    ("Deployment", "api"),
    ("Service", "api"),
    ("Ingress", "api"),
    ("HorizontalPodAutoscaler", "api"),
    ("PodDisruptionBudget", "api"),
    ("NetworkPolicy", "api"),
    ("Deployment", "sync-worker"),
    ("PodDisruptionBudget", "sync-worker"),
    ("NetworkPolicy", "sync-worker"),
)
BASE_FILES = ("serviceaccount.yaml", "sync-worker.yaml", "api.yaml", "networkpolicies.yaml")
# Configuration and plumbing first; the worker before the API, so increments never run
# ahead of a worker; the HPA and the Ingress once the API Deployment exists.
APPLY_ORDER = (
    "ConfigMap",
    "ServiceAccount",
    "Service",
    "PodDisruptionBudget",
    "NetworkPolicy",
    "Deployment",
    "HorizontalPodAutoscaler",
    "Ingress",
)
AUTH_MOUNT = "/var/run/secrets/usercounter-auth"


def manifests_dir() -> Path:
    """k8s/ of the source tree, or the copy packaged in the wheel (`_manifests`), or
    USERCOUNTER_MANIFESTS."""
    configured = os.environ.get("USERCOUNTER_MANIFESTS")
    if configured:
        return Path(configured)
    packaged = Path(__file__).parent / "_manifests"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[1] / "k8s"


@dataclass(frozen=True)
class Owner:
    """The UserCounter the objects belong to."""

    name: str
    namespace: str
    uid: str

    def reference(self) -> Obj:
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


def _load_all(path: Path) -> list[Obj]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def read_env(path: Path) -> dict[str, str]:
    """A kustomize `envs` file: KEY=VALUE lines, # comments."""
    env: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value
    return env


def merge(target: Any, patch: Any) -> Any:
    """The part of a strategic merge the component patches use: maps merge, lists of
    named items merge by name (the patch's items first, as kustomize orders them),
    anything else is replaced."""
    if isinstance(target, dict) and isinstance(patch, dict):
        out = dict(target)
        for key, value in patch.items():
            out[key] = merge(target[key], value) if key in target else copy.deepcopy(value)
        return out
    if (
        isinstance(target, list)
        and isinstance(patch, list)
        and all(isinstance(i, dict) and "name" in i for i in [*target, *patch])
    ):
        originals = {i["name"]: i for i in target}
        # kustomize's order: the patch's items first (merged into the originals they
        # name), then the originals the patch does not name.
        head = [
            merge(originals[i["name"]], i) if i["name"] in originals else copy.deepcopy(i)
            for i in patch
        ]
        named = {i["name"] for i in patch}
        return head + [copy.deepcopy(i) for i in target if i["name"] not in named]
    return copy.deepcopy(patch)


def _patch_files(spec: Spec, root: Path) -> list[Path]:
    files = []
    if spec.mysql.admin_user:
        files.append(root / "components" / "mysql-least-privilege" / "migrate-as-admin.yaml")
    if spec.redis.mode == "sentinel":
        files.append(root / "components" / "redis-sentinel" / "sentinel-mode.yaml")
    return files


def base_objects(spec: Spec, root: Path | None = None) -> list[Obj]:
    """The owned objects of k8s/base, with the component patches the spec calls for."""
    root = root or manifests_dir()
    objects = [o for f in BASE_FILES for o in _load_all(root / "base" / f)]
    objects = [o for o in objects if (o["kind"], o["metadata"]["name"]) in OWNED]
    for path in _patch_files(spec, root):
        for patch in _load_all(path):
            for n, obj in enumerate(objects):
                if (obj["kind"], obj["metadata"]["name"]) == (
                    patch["kind"],
                    patch["metadata"]["name"],
                ):
                    objects[n] = merge(obj, patch)
    return objects


def config_data(spec: Spec, root: Path | None = None) -> dict[str, str]:
    root = root or manifests_dir()
    data = read_env(root / "base" / "config.env")
    if spec.redis.mode == "sentinel":
        data.update(read_env(root / "components" / "redis-sentinel" / "config.env"))
    data.update(spec.config_env())
    return data


def config_hash(data: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _pod(obj: Obj) -> Obj:
    pod: Obj = obj["spec"]["template"]["spec"]
    return pod


def _containers(pod: Obj) -> Iterator[Obj]:
    yield from pod.get("initContainers", [])
    yield from pod["containers"]


class _Renderer:
    def __init__(self, spec: Spec, owner: Owner) -> None:
        self.spec = spec
        self.owner = owner
        self.labels = {
            "app.kubernetes.io/part-of": "usercounter",
            "app.kubernetes.io/managed-by": MANAGED_BY,
            "app.kubernetes.io/instance": owner.name,
        }
        self.instance = {"app.kubernetes.io/instance": owner.name}

    def name(self, base: str) -> str:
        return f"{self.owner.name}-{base}"

    def metadata(self, obj: Obj) -> None:
        meta = obj["metadata"]
        meta["name"] = self.name(meta["name"])
        meta["namespace"] = self.owner.namespace
        meta["labels"] = {**meta.get("labels", {}), **self.labels}
        meta["ownerReferences"] = [self.owner.reference()]

    def select(self, selector: Obj) -> None:
        selector["matchLabels"] = {**selector.get("matchLabels", {}), **self.instance}

    def workload(self, obj: Obj, config_digest: str, replicas: int | None) -> None:
        spec = obj["spec"]
        if replicas is None:
            spec.pop("replicas", None)
        else:
            spec["replicas"] = replicas
        self.select(spec["selector"])
        template = spec["template"]
        template["metadata"]["labels"] = {**template["metadata"]["labels"], **self.labels}
        template["metadata"].setdefault("annotations", {})[CONFIG_HASH] = config_digest
        pod = _pod(obj)
        pod["serviceAccountName"] = self.name(pod["serviceAccountName"])
        for constraint in pod.get("topologySpreadConstraints", []):
            self.select(constraint["labelSelector"])
        for volume in pod.get("volumes", []):
            if volume.get("secret", {}).get("secretName") == BASE_SECRET:
                volume["secret"]["secretName"] = self.spec.secret_name
        for container in _containers(pod):
            self.container(container)

    def container(self, container: Obj) -> None:
        if container["image"] == APP_IMAGE:
            container["image"] = self.spec.image
            container["imagePullPolicy"] = self.spec.image_pull_policy
        for source in container.get("envFrom", []):
            ref = source.get("configMapRef", {})
            if ref.get("name") == BASE_CONFIG:
                ref["name"] = self.name(BASE_CONFIG)
        for item in container.get("env", []):
            if item["name"] == "MYSQL_ADMIN_USER" and self.spec.mysql.admin_user:
                item["value"] = self.spec.mysql.admin_user

    def auth_token(self, obj: Obj) -> None:
        ref = self.spec.protections.auth_token_secret
        if ref is None:
            return
        pod = _pod(obj)
        pod["volumes"].append(
            {
                "name": "auth-token",
                "secret": {
                    "secretName": ref.name,
                    "defaultMode": 0o440,
                    "items": [{"key": ref.key, "path": "auth-token"}],
                },
            }
        )
        (api,) = (c for c in pod["containers"] if c["name"] == "api")
        api["env"].append({"name": "AUTH_TOKEN_FILE", "value": f"{AUTH_MOUNT}/auth-token"})
        api["volumeMounts"].append(
            {"name": "auth-token", "mountPath": AUTH_MOUNT, "readOnly": True}
        )

    @staticmethod
    def resources(obj: Obj, container_name: str, resources: dict[str, dict[str, str]]) -> None:
        for container in _pod(obj)["containers"]:
            if container["name"] == container_name:
                # Each value given replaces the base's; the others stay.
                for part, values in resources.items():
                    container["resources"].setdefault(part, {}).update(values)


def render(
    spec: Spec,
    owner: Owner,
    *,
    worker_replicas: int | None = None,
    root: Path | None = None,
) -> list[Obj]:
    """Every object the UserCounter owns, in apply order (ConfigMap first, the API's
    Deployment after the worker's, the HPA and Ingress last). `worker_replicas` overrides
    the spec's (0 once a suspended resource has drained). A suspended resource's API has 0
    replicas and no HPA."""
    r = _Renderer(spec, owner)
    data = config_data(spec, root)
    digest = config_hash(data)
    config: Obj = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": BASE_CONFIG},
        "data": data,
    }
    autoscaled = spec.api.autoscaling.enabled and not spec.suspend
    out = [config]
    for obj in base_objects(spec, root):
        if obj["kind"] == "HorizontalPodAutoscaler" and not autoscaled:
            continue
        _patch(r, obj, digest, autoscaled, worker_replicas)
        out.append(obj)
    for obj in out:
        r.metadata(obj)
    return sorted(out, key=lambda o: APPLY_ORDER.index(o["kind"]))


def _patch(
    r: _Renderer, obj: Obj, digest: str, autoscaled: bool, worker_replicas: int | None
) -> None:
    """The spec's settings into one object of the base."""
    spec = r.spec
    kind, name = obj["kind"], obj["metadata"]["name"]
    if kind == "HorizontalPodAutoscaler":
        target = obj["spec"]["scaleTargetRef"]
        target["name"] = r.name(target["name"])
        obj["spec"]["minReplicas"] = spec.api.autoscaling.min_replicas
        obj["spec"]["maxReplicas"] = spec.api.autoscaling.max_replicas
        (metric,) = obj["spec"]["metrics"]
        metric["resource"]["target"]["averageUtilization"] = (
            spec.api.autoscaling.target_cpu_utilization
        )
    elif kind == "Deployment" and name == "api":
        replicas = 0 if spec.suspend else (None if autoscaled else spec.api.replicas)
        r.workload(obj, digest, replicas)
        r.auth_token(obj)
        if spec.api.resources:
            r.resources(obj, "api", spec.api.resources)
    elif kind == "Deployment":
        replicas = spec.worker.replicas if worker_replicas is None else worker_replicas
        r.workload(obj, digest, replicas)
        if spec.worker.resources:
            r.resources(obj, "sync-worker", spec.worker.resources)
    elif kind == "Service":
        obj["spec"]["selector"] = {**obj["spec"]["selector"], **r.instance}
    elif kind in ("PodDisruptionBudget", "NetworkPolicy"):
        r.select(obj["spec"]["podSelector" if kind == "NetworkPolicy" else "selector"])
    elif kind == "Ingress":
        (rule,) = obj["spec"]["rules"]
        rule["host"] = spec.api.host
        obj["spec"]["ingressClassName"] = spec.api.ingress_class_name
        for path in rule["http"]["paths"]:
            service = path["backend"]["service"]
            service["name"] = r.name(service["name"])


def owned_names(owner_name: str) -> set[tuple[str, str]]:
    """(kind, name) of every object a UserCounter of this name can own."""
    return {(kind, f"{owner_name}-{name}") for kind, name in OWNED} | {
        ("ConfigMap", f"{owner_name}-{BASE_CONFIG}")
    }
