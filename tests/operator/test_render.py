"""The objects the operator renders: the same as `kubectl kustomize k8s/overlays/dev` for
the dev settings (modulo the documented differences), valid Kubernetes 1.33, clean under
checkov, and a ConfigMap the real settings code parses. No cluster is contacted."""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_validate.utils import validate

from tests.deploy.support import OVERLAY, parse_settings, render, run, tool, tools_path
from tests.operator.support import OWNER, SPECS, Obj
from usercounter_operator.render import CONFIG_HASH, OWNED, Owner
from usercounter_operator.render import render as operator_render
from usercounter_operator.spec import SpecError, parse

DROPPED_LABELS = ("app.kubernetes.io/instance", "app.kubernetes.io/managed-by")
_HASHED = re.compile(r"^(usercounter-(?:config|secrets))-[a-z0-9]{10}$")


def _objects(name: str, **kwargs: Any) -> list[Obj]:
    return operator_render(parse(SPECS[name]), OWNER, **kwargs)


def _walk(value: Any, fix_string: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: _walk(v, fix_string)
            for k, v in value.items()
            if k not in DROPPED_LABELS and k != CONFIG_HASH
        }
    if isinstance(value, list):
        return [_walk(v, fix_string) for v in value]
    if isinstance(value, str):
        return fix_string(value)
    return value


def _normalized_operator(obj: Obj, owner: Owner) -> Obj:
    """The documented differences undone: the `<name>-` prefix of names and references,
    the instance and managed-by labels, the config-hash annotation, namespace, owner."""
    out = copy.deepcopy(obj)
    del out["metadata"]["namespace"], out["metadata"]["ownerReferences"]
    prefix = f"{owner.name}-"
    return _walk(out, lambda s: s.removeprefix(prefix))  # type: ignore[no-any-return]


def _normalized_kustomize(obj: Obj) -> Obj:
    """kustomize's generated-name hashes and the namespace dropped; the API's replicas
    left to the HPA, as the operator leaves them."""
    out = copy.deepcopy(obj)
    out["metadata"].pop("namespace", None)
    if out["kind"] == "Deployment" and out["metadata"]["name"] == "api":
        del out["spec"]["replicas"]
    return _walk(out, lambda s: _HASHED.sub(r"\1", s))  # type: ignore[no-any-return]


SENTINELS = [f"redis-sentinel-{i}.redis-sentinel:26379" for i in range(3)]
# The settings of each overlay, as a UserCounter spec.
OVERLAY_SPECS: dict[str, Obj] = {
    "dev": SPECS["dev"],
    "dev-sentinel": {
        **SPECS["dev"],
        "api": {**SPECS["dev"]["api"], "host": "usercounter-sentinel.dev.example.com"},
        "redis": {"mode": "sentinel", "sentinels": SENTINELS, "ackReplicas": 1},
    },
}


@pytest.mark.parametrize("overlay", sorted(OVERLAY_SPECS))
def test_overlay_settings_render_what_kustomize_renders(overlay: str) -> None:
    """k8s/operator/sample-usercounter.yaml holds the settings of k8s/overlays/dev (and
    with Sentinel, of overlays/dev-sentinel): every object the operator owns equals
    kustomize's, field for field, modulo the documented differences
    (docs/operator.md#what-differs-from-kubectl-apply--k)."""
    wanted = set(OWNED) | {("ConfigMap", "usercounter-config")}
    expected = {}
    for obj in render(OVERLAY.parent / overlay):
        o = _normalized_kustomize(obj)
        key = (o["kind"], o["metadata"]["name"])
        if key in wanted:
            expected[key] = o
    got = {}
    for obj in operator_render(parse(OVERLAY_SPECS[overlay]), OWNER):
        o = _normalized_operator(obj, OWNER)
        got[(o["kind"], o["metadata"]["name"])] = o
    assert set(got) == set(expected) == wanted
    for key, obj in expected.items():
        assert got[key] == obj, f"{key}:\n{yaml.safe_dump(got[key])}\n---\n{yaml.safe_dump(obj)}"


def test_names_labels_owner_and_selectors() -> None:
    for obj in _objects("dev"):
        meta = obj["metadata"]
        assert meta["name"].startswith("demo-")
        assert meta["namespace"] == OWNER.namespace
        assert meta["labels"]["app.kubernetes.io/instance"] == "demo"
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "usercounter-operator"
        (ref,) = meta["ownerReferences"]
        assert ref == OWNER.reference()
        assert ref["uid"] == OWNER.uid
        spec = obj.get("spec", {})
        for selector in (spec.get("selector"), spec.get("podSelector")):
            if selector:
                labels = selector.get("matchLabels", selector)
                assert labels["app.kubernetes.io/instance"] == "demo", obj["metadata"]["name"]


@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_render_validates_strictly_against_kubernetes_1_33(name: str) -> None:
    for obj in _objects(name):
        validate(obj, "1.33.0", strict=True)


def _workload(objects: list[Obj], name: str) -> Obj:
    (found,) = (o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == name)
    return found


def test_spec_settings_reach_the_objects() -> None:
    objects = _objects("everything")
    api = _workload(objects, "demo-api")
    pod = api["spec"]["template"]["spec"]
    assert "replicas" not in api["spec"]  # the HPA's
    (container,) = pod["containers"]
    assert container["image"] == "usercounter:1.2.3"
    assert container["imagePullPolicy"] == "Always"
    # each value given replaces the base's; the others stay
    assert container["resources"] == {
        "requests": {"cpu": "100m", "memory": "64Mi"},
        "limits": {"cpu": "1", "memory": "1Gi"},
    }
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["AUTH_TOKEN_FILE"] == "/var/run/secrets/usercounter-auth/auth-token"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["auth-token"]["secret"]["secretName"] == "api-tokens"
    assert volumes["auth-token"]["secret"]["items"] == [{"key": "tokens", "path": "auth-token"}]
    assert volumes["secrets"]["secret"]["secretName"] == "prod-secrets"
    worker = _workload(objects, "demo-sync-worker")
    assert worker["spec"]["replicas"] == 3
    (hpa,) = (o for o in objects if o["kind"] == "HorizontalPodAutoscaler")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 4)
    assert hpa["spec"]["scaleTargetRef"]["name"] == "demo-api"
    assert hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 50
    (ingress,) = (o for o in objects if o["kind"] == "Ingress")
    assert ingress["spec"]["ingressClassName"] == "traefik"
    assert ingress["spec"]["rules"][0]["host"] == "counter.example.org"
    assert ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"] == (
        "demo-api"
    )


def test_without_autoscaling_the_api_has_fixed_replicas_and_no_hpa() -> None:
    objects = _objects("fixed-replicas")
    assert _workload(objects, "demo-api")["spec"]["replicas"] == 5
    assert not [o for o in objects if o["kind"] == "HorizontalPodAutoscaler"]


def test_suspended_stops_the_api_and_keeps_the_workers_until_drained() -> None:
    objects = _objects("suspended")
    assert _workload(objects, "demo-api")["spec"]["replicas"] == 0
    assert not [o for o in objects if o["kind"] == "HorizontalPodAutoscaler"]
    assert _workload(objects, "demo-sync-worker")["spec"]["replicas"] == 2
    drained = _objects("suspended", worker_replicas=0)
    assert _workload(drained, "demo-sync-worker")["spec"]["replicas"] == 0


def test_apply_order_config_first_worker_before_api() -> None:
    kinds = [(o["kind"], o["metadata"]["name"]) for o in _objects("dev")]
    assert kinds[0] == ("ConfigMap", "demo-usercounter-config")
    assert kinds.index(("Deployment", "demo-sync-worker")) < kinds.index(("Deployment", "demo-api"))
    assert kinds[-1][0] == "Ingress"


def test_migration_runs_before_the_api_serves() -> None:
    """The base's order is kept: every API pod runs `migrate` as an init container, and
    the rollout (maxUnavailable 0) does not go on while a new pod's migrate fails."""
    api = _workload(_objects("dev"), "demo-api")
    (init,) = api["spec"]["template"]["spec"]["initContainers"]
    assert init["command"] == ["python", "-m", "counter_svc", "migrate"]
    assert init["image"] == "usercounter:dev"
    env = {e["name"]: e["value"] for e in init["env"]}
    assert env["MYSQL_ADMIN_USER"] == "root"
    assert api["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_a_setting_change_rolls_the_pods() -> None:
    before = _workload(_objects("dev"), "demo-api")
    changed = parse({**SPECS["dev"], "logLevel": "info"})
    after = _workload(operator_render(changed, OWNER), "demo-api")
    annotation = before["spec"]["template"]["metadata"]["annotations"][CONFIG_HASH]
    assert annotation != after["spec"]["template"]["metadata"]["annotations"][CONFIG_HASH]


@pytest.mark.parametrize("name", sorted(SPECS))
def test_the_config_parses_with_the_real_settings(name: str, tmp_path: Path) -> None:
    spec = parse(SPECS[name])
    (config,) = (o for o in operator_render(spec, OWNER) if o["kind"] == "ConfigMap")
    env = dict(config["data"])
    env["MYSQL_PASSWORD_FILE"] = env["REDIS_PASSWORD_FILE"] = "x"
    settings = parse_settings(env, tmp_path).base
    assert settings.key_prefix == spec.key_prefix
    assert settings.buckets == spec.buckets
    assert settings.redis_ack_replicas == spec.redis.ack_replicas
    assert settings.rate_limit_per_minute == spec.protections.rate_limit_per_minute
    assert bool(settings.redis_sentinels) == (spec.redis.mode == "sentinel")


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({}, "spec.image"),
        ({"image": "x", "redis": {"mode": "cluster"}}, "spec.redis.mode"),
        ({"image": "x", "redis": {"mode": "sentinel"}}, "spec.redis.sentinels"),
        ({"image": "x", "keyLayout": {"buckets": 0}}, "spec.keyLayout.buckets"),
        ({"image": "x", "keyLayout": {"keyPrefix": "a b"}}, "spec.keyLayout.keyPrefix"),
        ({"image": "x", "api": {"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}}, "minRep"),
        ({"image": "x", "worker": {"replicas": 0}}, "spec.worker.replicas"),
    ],
)
def test_bad_specs_are_refused_naming_the_field(raw: Obj, field: str) -> None:
    with pytest.raises(SpecError, match=re.escape(field)):
        parse(raw)


def test_checkov_passes_on_every_render(tmp_path: Path) -> None:
    """The rendered objects of every spec pass the checks k8s/base passes (its inline
    skips come along from the base)."""
    for name in SPECS:
        docs = _objects(name)
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump_all(docs), encoding="utf-8")
    out = tmp_path / "out"
    result = run(
        [
            tool("checkov"),
            "-d",
            str(tmp_path),
            "--framework",
            "kubernetes",
            "--skip-download",
            "--compact",
            "--output",
            "json",
            "--output-file-path",
            str(out),
        ],
        timeout=300,
        env={**os.environ, "PATH": tools_path()},
    )
    report = json.loads((out / "results_json.json").read_text(encoding="utf-8"))
    failed = [f"{f['check_id']} {f['resource']}" for f in report["results"]["failed_checks"]]
    assert not failed, "\n".join(failed) + result.stderr[-2000:]
    assert report["summary"]["passed"] > 0
