"""Shared by the operator tests: the sample resource, specs to render, the CRD schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from usercounter_operator.render import Owner

ROOT = Path(__file__).resolve().parents[2]
OPERATOR_DIR = ROOT / "k8s" / "operator"
SAMPLE = OPERATOR_DIR / "sample-usercounter.yaml"
CRD = OPERATOR_DIR / "crd.yaml"
OWNER = Owner("demo", "usercounter-dev", "4f1c2a7e-0000-4000-8000-000000000001")
Obj = dict[str, Any]


def sample() -> Obj:
    doc: Obj = yaml.safe_load(SAMPLE.read_text(encoding="utf-8"))
    return doc


def crd() -> Obj:
    doc: Obj = yaml.safe_load(CRD.read_text(encoding="utf-8"))
    return doc


def schema() -> Obj:
    (version,) = crd()["spec"]["versions"]
    result: Obj = version["schema"]["openAPIV3Schema"]
    return result


# Specs the render tests go through: the dev overlay's settings (the sample), Sentinel,
# every optional setting, no autoscaling, suspended.
SPECS: dict[str, Obj] = {
    "dev": sample()["spec"],
    "sentinel": {
        "image": "registry.example.com/usercounter@sha256:" + "a" * 64,
        "keyLayout": {"buckets": 128, "keyPrefix": "uc2"},
        "redis": {
            "mode": "sentinel",
            "sentinels": ["redis-sentinel-0.redis-sentinel:26379", "redis-sentinel-1.x:26379"],
            "masterName": "usercounter",
            "ackReplicas": 1,
        },
    },
    "everything": {
        "image": "usercounter:1.2.3",
        "imagePullPolicy": "Always",
        "keyLayout": {},
        "api": {
            "host": "counter.example.org",
            "ingressClassName": "traefik",
            "autoscaling": {
                "minReplicas": 2,
                "maxReplicas": 4,
                "targetCPUUtilizationPercentage": 50,
            },
            "resources": {
                "requests": {"cpu": "100m", "memory": "64Mi"},
                "limits": {"memory": "1Gi"},
            },
        },
        "worker": {"replicas": 3, "resources": {"limits": {"cpu": "2", "memory": "512Mi"}}},
        "mysql": {"host": "db.example.org", "port": 3307, "database": "uc", "user": "svc"},
        "secrets": {"name": "prod-secrets"},
        "protections": {
            "rateLimitPerMinute": 600,
            "authTokenSecretRef": {"name": "api-tokens", "key": "tokens"},
        },
    },
    "fixed-replicas": {
        "image": "usercounter:dev",
        "keyLayout": {},
        "api": {"replicas": 5, "autoscaling": {"enabled": False}},
    },
    "suspended": {"image": "usercounter:dev", "keyLayout": {}, "suspend": True},
}
