"""The UserCounter CRD, checked without an API server: a structural schema, CEL rules
that compile (cel-python) and decide as intended, and example resources against the
openAPIV3Schema with jsonschema (defaults filled first, as the API server does)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import celpy
import jsonschema
import pytest
from celpy.adapter import json_to_cel
from kubernetes_validate.utils import validate

from tests.operator.support import SPECS, Obj, crd, sample, schema

Path_ = tuple[str, ...]


def _nodes(node: Obj, path: Path_ = ()) -> Iterator[tuple[Path_, Obj]]:
    yield path, node
    for name, child in (node.get("properties") or {}).items():
        yield from _nodes(child, (*path, name))
    for key in ("items", "additionalProperties"):
        child = node.get(key)
        if isinstance(child, dict):
            yield from _nodes(child, (*path, f"[{key}]"))


def test_crd_validates_strictly_against_kubernetes_1_33() -> None:
    validate(crd(), "1.33.0", strict=True)


def test_the_schema_is_structural() -> None:
    """Every node has a type (or is int-or-string / preserves unknown fields), no node has
    both properties and additionalProperties, and metadata is left to the API server."""
    for path, node in _nodes(schema()):
        where = ".".join(path) or "<root>"
        if node.get("x-kubernetes-int-or-string"):
            assert "type" not in node, where
            continue
        assert "type" in node, f"{where}: no type"
        assert not ("properties" in node and "additionalProperties" in node), where
        assert node.get("additionalProperties") is not True, f"{where}: bare additionalProperties"
    assert schema()["properties"]["metadata"] == {"type": "object"}


def _rules() -> Iterator[tuple[Path_, str]]:
    for path, node in _nodes(schema()):
        for rule in node.get("x-kubernetes-validations", []):
            assert rule.get("message"), f"{path}: a rule without a message"
            yield path, rule["rule"]


def test_every_cel_rule_compiles() -> None:
    env = celpy.Environment()
    rules = list(_rules())
    assert len(rules) >= 3
    for _path, rule in rules:
        env.compile(rule)  # raises CELParseError on a bad rule
    assert (("spec", "keyLayout"), "self == oldSelf") in rules


def _defaulted(node: Obj, value: Any) -> Any:
    """`value` with the schema's defaults filled in, as the API server does."""
    if isinstance(value, dict):
        out = dict(value)
        for name, child in (node.get("properties") or {}).items():
            if name not in out and "default" in child:
                out[name] = copy.deepcopy(child["default"])
            if name in out:
                out[name] = _defaulted(child, out[name])
        return out
    if isinstance(value, list) and isinstance(node.get("items"), dict):
        return [_defaulted(node["items"], v) for v in value]
    return value


def _at(value: Any, path: Path_) -> Any:
    for part in path:
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def cel_errors(obj: Obj, old: Obj | None = None) -> list[str]:
    """Every x-kubernetes-validations rule evaluated with cel-python where its field is
    set; a transition rule (oldSelf) only on an update where the old field is set too."""
    env = celpy.Environment()
    errors = []
    for path, node in _nodes(schema()):
        for rule in node.get("x-kubernetes-validations", []):
            current = _at(obj, path)
            if current is None:
                continue
            activation = {"self": json_to_cel(current)}
            if "oldSelf" in rule["rule"]:
                previous = _at(old, path) if old else None
                if previous is None:
                    continue
                activation["oldSelf"] = json_to_cel(previous)
            program = env.program(env.compile(rule["rule"]))
            if not bool(program.evaluate(activation)):
                errors.append(f"{'.'.join(path)}: {rule['message']}")
    return errors


def _json_schema(node: Any) -> Any:
    """openAPIV3Schema as JSON Schema: the x-kubernetes-* keys dropped."""
    if isinstance(node, dict):
        return {k: _json_schema(v) for k, v in node.items() if not k.startswith("x-kubernetes")}
    if isinstance(node, list):
        return [_json_schema(v) for v in node]
    return node


def admit(obj: Obj, old: Obj | None = None) -> list[str]:
    """What the API server would say, as far as the schema and rules decide it."""
    full = _defaulted(schema(), obj)
    validator = jsonschema.Draft4Validator(_json_schema(schema()))
    errors = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(full)]
    if not errors:
        errors += cel_errors(full, _defaulted(schema(), old) if old else None)
    return errors


def _resource(spec: Obj) -> Obj:
    return {
        "apiVersion": "usercounter.dev/v1alpha1",
        "kind": "UserCounter",
        "metadata": {"name": "demo"},
        "spec": spec,
    }


def test_the_sample_is_valid() -> None:
    assert admit(sample()) == []


@pytest.mark.parametrize("name", sorted(SPECS))
def test_the_specs_the_render_tests_use_are_valid(name: str) -> None:
    assert admit(_resource(SPECS[name])) == []


BASE: Obj = {"image": "usercounter:dev", "keyLayout": {}}


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ({"keyLayout": {}}, "'image' is a required property"),
        ({**BASE, "redis": {"mode": "cluster"}}, "is not one of"),
        ({**BASE, "redis": {"mode": "sentinel"}}, "sentinel mode needs"),
        ({**BASE, "redis": {"mode": "sentinel", "sentinels": []}}, "sentinel mode needs"),
        ({**BASE, "redis": {"url": "http://redis"}}, "does not match"),
        ({**BASE, "redis": {"mode": "sentinel", "sentinels": ["nope"]}}, "does not match"),
        ({**BASE, "keyLayout": {"buckets": 0}}, "less than the minimum"),
        ({**BASE, "keyLayout": {"keyPrefix": "a b"}}, "does not match"),
        ({**BASE, "worker": {"replicas": 0}}, "less than the minimum"),
        ({**BASE, "api": {"autoscaling": {"minReplicas": 9, "maxReplicas": 3}}}, "must not exceed"),
        ({**BASE, "api": {"resources": {"limits": {"cpu": "lots"}}}}, "does not match"),
        ({**BASE, "protections": {"authTokenSecretRef": {}}}, "'name' is a required property"),
        ({**BASE, "logLevel": "verbose"}, "is not one of"),
    ],
)
def test_invalid_resources_are_refused(spec: Obj, says: str) -> None:
    errors = admit(_resource(spec))
    assert any(says in e for e in errors), errors


def test_the_key_layout_cannot_change_after_creation() -> None:
    """Defaulted to {} when left out, so the transition rule always has both sides."""
    old = _resource({**BASE, "keyLayout": {"buckets": 64, "keyPrefix": "uc"}})
    for change in ({"buckets": 128, "keyPrefix": "uc"}, {"buckets": 64, "keyPrefix": "uc2"}):
        errors = admit(_resource({**BASE, "keyLayout": change}), old)
        assert any("keyLayout is immutable" in e for e in errors), change
    # the same layout, spelled out or left to the defaults, is no change
    assert admit(_resource(BASE), old) == []
    assert admit(_resource({**BASE, "api": {"replicas": 7}}), old) == []


def test_status_has_the_conditions_and_sync_figures() -> None:
    status = schema()["properties"]["status"]["properties"]
    assert {"observedGeneration", "conditions", "syncBacklog", "syncInflight"} <= set(status)
    assert {"syncLagSeconds", "apiReadyReplicas", "workerReadyReplicas"} <= set(status)
    (version,) = crd()["spec"]["versions"]
    assert version["subresources"] == {"status": {}}
