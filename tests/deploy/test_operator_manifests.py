"""k8s/operator (the operator's CRD, RBAC, Deployment, policies), rendered with
`kubectl kustomize` and checked statically like k8s/base; checkov scans it with the rest
of k8s/ in test_lint.py. No cluster is contacted."""

from __future__ import annotations

from typing import Any

from kubernetes_validate.utils import validate

from tests.deploy.support import APP_IMAGE, BASE, ROOT, module_help, render
from tests.operator.support import OWNER, SPECS
from usercounter_operator.render import render as operator_render
from usercounter_operator.spec import GROUP, PLURAL, parse

OPERATOR = ROOT / "k8s" / "operator"
Obj = dict[str, Any]


def _objects() -> tuple[Obj, ...]:
    return render(OPERATOR)


def _one(kind: str) -> Obj:
    (found,) = (o for o in _objects() if o["kind"] == kind)
    return found


def test_every_object_validates_strictly_against_kubernetes_1_33() -> None:
    for obj in _objects():
        validate(obj, "1.33.0", strict=True)


def test_the_objects() -> None:
    kinds = sorted(o["kind"] for o in _objects())
    assert kinds == [
        "CustomResourceDefinition",
        "Deployment",
        "Namespace",
        "NetworkPolicy",
        "NetworkPolicy",
        "NetworkPolicy",
        "Role",
        "RoleBinding",
        "ServiceAccount",
    ]
    assert all(o["metadata"].get("namespace", "usercounter") == "usercounter" for o in _objects())


def test_rbac_is_namespaced_and_least_privilege() -> None:
    """A Role, no ClusterRole; no wildcard; every kind the operator renders is covered,
    Secrets only readable one by one (get), pods only listed."""
    role = _one("Role")
    rules = role["rules"]
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        assert "*" not in rule["verbs"], rule
        assert "*" not in rule["resources"], rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    plural = {
        "ConfigMap": ("", "configmaps"),
        "ServiceAccount": ("", "serviceaccounts"),
        "Service": ("", "services"),
        "Deployment": ("apps", "deployments"),
        "HorizontalPodAutoscaler": ("autoscaling", "horizontalpodautoscalers"),
        "PodDisruptionBudget": ("policy", "poddisruptionbudgets"),
        "NetworkPolicy": ("networking.k8s.io", "networkpolicies"),
        "Ingress": ("networking.k8s.io", "ingresses"),
    }
    for obj in operator_render(parse(SPECS["dev"]), OWNER):
        verbs = granted[plural[obj["kind"]]]
        assert {"get", "create", "patch", "delete"} <= verbs, obj["kind"]
    assert {"watch", "patch"} <= granted[(GROUP, PLURAL)]
    assert "patch" in granted[(GROUP, f"{PLURAL}/status")]
    assert granted[("", "secrets")] == {"get"}
    assert granted[("", "pods")] == {"get", "list"}
    binding = _one("RoleBinding")
    assert binding["roleRef"]["kind"] == "Role"
    (subject,) = binding["subjects"]
    assert subject["name"] == _one("ServiceAccount")["metadata"]["name"]


def _api_pod() -> Obj:
    (api,) = (
        o for o in render(BASE) if o["kind"] == "Deployment" and o["metadata"]["name"] == "api"
    )
    pod: Obj = api["spec"]["template"]["spec"]
    return pod


def test_the_operator_pod_is_as_locked_down_as_the_api() -> None:
    deployment = _one("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    api = _api_pod()
    assert pod["securityContext"] == api["securityContext"]
    (container,) = pod["containers"]
    assert container["securityContext"] == api["containers"][0]["securityContext"]
    assert container["resources"]["limits"]
    assert container["resources"]["requests"]
    assert {v["name"] for v in pod["volumes"]} == {"tmp"}
    assert pod["serviceAccountName"] == _one("ServiceAccount")["metadata"]["name"]


def test_one_operator_at_a_time_from_the_app_image() -> None:
    deployment = _one("Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"].split(":")[0] == APP_IMAGE


def test_command_probes_and_ports_match_the_entry_point() -> None:
    (container,) = _one("Deployment")["spec"]["template"]["spec"]["containers"]
    command = container["command"]
    assert command[:3] == ["python", "-m", "usercounter_operator"]
    options = dict(arg.split("=", 1) for arg in command[3:])
    helptext = module_help("usercounter_operator")
    assert all(option in helptext for option in options)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    liveness = options["--liveness"]
    assert liveness.endswith(f":{ports['health']}/healthz")
    assert int(options["--metrics-port"]) == ports["metrics"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    (env,) = container["env"]
    assert env["name"] == "WATCH_NAMESPACE"


def test_the_sample_is_not_applied_with_the_operator() -> None:
    assert not [o for o in _objects() if o["kind"] == "UserCounter"]
    assert (OPERATOR / "sample-usercounter.yaml").is_file()
