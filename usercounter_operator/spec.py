"""The `spec` of a UserCounter resource, read into frozen dataclasses.

The CRD's schema (k8s/operator/crd.yaml) already refuses most bad input and fills the
defaults; `parse` applies the same defaults and checks again, so the renderer never sees a
half-filled spec (an object written before a default existed, a test's hand-made dict).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

GROUP = "usercounter.dev"
VERSION = "v1alpha1"
KIND = "UserCounter"
PLURAL = "usercounters"

_PREFIX = re.compile(r"^[A-Za-z0-9_.:-]{1,32}$")
_HOST_PORT = re.compile(r"^[A-Za-z0-9.-]+:[0-9]{1,5}$")
LOG_LEVELS = ("debug", "info", "warning", "error")


class SpecError(ValueError):
    """The spec cannot be rendered; the message names the field."""


Resources = dict[str, dict[str, str]]


@dataclass(frozen=True)
class Autoscaling:
    enabled: bool = True
    min_replicas: int = 3
    max_replicas: int = 12
    target_cpu_utilization: int = 70


@dataclass(frozen=True)
class Api:
    replicas: int = 3
    autoscaling: Autoscaling = field(default_factory=Autoscaling)
    host: str = "usercounter.example.com"
    ingress_class_name: str = "nginx"
    resources: Resources | None = None


@dataclass(frozen=True)
class Worker:
    replicas: int = 2
    resources: Resources | None = None


@dataclass(frozen=True)
class Redis:
    mode: str = "single"
    url: str = "redis://redis:6379/0"
    sentinels: tuple[str, ...] = ()
    master_name: str = "usercounter"
    ack_replicas: int = 0


@dataclass(frozen=True)
class MySQL:
    host: str = "mysql"
    port: int = 3306
    database: str = "usercounter"
    user: str = "usercounter"
    # Set: the migrate init container runs as this user with the Secret's
    # mysql-root-password (k8s/components/mysql-least-privilege).
    admin_user: str | None = None


@dataclass(frozen=True)
class SecretKeyRef:
    name: str
    key: str


@dataclass(frozen=True)
class Protections:
    rate_limit_per_minute: int = 0
    auth_token_secret: SecretKeyRef | None = None


@dataclass(frozen=True)
class Spec:
    image: str
    image_pull_policy: str = "IfNotPresent"
    api: Api = field(default_factory=Api)
    worker: Worker = field(default_factory=Worker)
    redis: Redis = field(default_factory=Redis)
    mysql: MySQL = field(default_factory=MySQL)
    secret_name: str = "usercounter-secrets"  # noqa: S105 (a Secret's name)
    buckets: int = 64
    key_prefix: str = "uc"
    protections: Protections = field(default_factory=Protections)
    log_level: str = "info"
    suspend: bool = False
    drain_timeout_seconds: int = 600

    def config_env(self) -> dict[str, str]:
        """The settings this spec fixes in the ConfigMap, over k8s/base/config.env."""
        env = {
            "MYSQL_HOST": self.mysql.host,
            "MYSQL_PORT": str(self.mysql.port),
            "MYSQL_USER": self.mysql.user,
            "MYSQL_DATABASE": self.mysql.database,
            "REDIS_URL": self.redis.url,
            "REDIS_KEY_PREFIX": self.key_prefix,
            "COUNTER_BUCKETS": str(self.buckets),
            "LOG_LEVEL": self.log_level,
        }
        if self.redis.mode == "sentinel":
            env["REDIS_SENTINELS"] = ",".join(self.redis.sentinels)
            env["REDIS_SENTINEL_MASTER"] = self.redis.master_name
        if self.redis.ack_replicas:
            env["REDIS_ACK_REPLICAS"] = str(self.redis.ack_replicas)
        if self.protections.rate_limit_per_minute:
            env["RATE_LIMIT_PER_MINUTE"] = str(self.protections.rate_limit_per_minute)
        return env


def _section(raw: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = raw.get(name) or {}
    if not isinstance(value, Mapping):
        raise SpecError(f"spec.{name} must be an object")
    return value


def _int(raw: Mapping[str, Any], key: str, default: int, low: int, high: int, where: str) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise SpecError(f"{where}.{key} must be an integer from {low} to {high}")
    return value


def _resources(raw: Mapping[str, Any], where: str) -> Resources | None:
    value = raw.get("resources")
    if value is None:
        return None
    out: Resources = {}
    for part in ("requests", "limits"):
        items = value.get(part) or {}
        if items:
            out[part] = {str(k): str(v) for k, v in items.items()}
        if set(items) - {"cpu", "memory", "ephemeral-storage"}:
            raise SpecError(f"{where}.resources.{part}: only cpu, memory, ephemeral-storage")
    return out


def _api(raw: Mapping[str, Any]) -> Api:
    scaling_raw = _section(raw, "autoscaling")
    scaling = Autoscaling(
        enabled=bool(scaling_raw.get("enabled", True)),
        min_replicas=_int(scaling_raw, "minReplicas", 3, 1, 1000, "spec.api.autoscaling"),
        max_replicas=_int(scaling_raw, "maxReplicas", 12, 1, 1000, "spec.api.autoscaling"),
        target_cpu_utilization=_int(
            scaling_raw, "targetCPUUtilizationPercentage", 70, 1, 100, "spec.api.autoscaling"
        ),
    )
    if scaling.min_replicas > scaling.max_replicas:
        raise SpecError("spec.api.autoscaling.minReplicas must not exceed maxReplicas")
    return Api(
        replicas=_int(raw, "replicas", 3, 1, 1000, "spec.api"),
        autoscaling=scaling,
        host=str(raw.get("host", Api.host)),
        ingress_class_name=str(raw.get("ingressClassName", Api.ingress_class_name)),
        resources=_resources(raw, "spec.api"),
    )


def _redis(raw: Mapping[str, Any]) -> Redis:
    mode = raw.get("mode", "single")
    if mode not in ("single", "sentinel"):
        raise SpecError("spec.redis.mode must be single or sentinel (cluster: not supported yet)")
    sentinels = tuple(str(s) for s in raw.get("sentinels") or ())
    if mode == "sentinel" and not sentinels:
        raise SpecError("spec.redis.sentinels: sentinel mode needs at least one host:port")
    for address in sentinels:
        if not _HOST_PORT.match(address):
            raise SpecError(f"spec.redis.sentinels: {address!r} is not host:port")
    url = str(raw.get("url", Redis.url))
    if not url.startswith(("redis://", "rediss://")):
        raise SpecError("spec.redis.url must start with redis:// or rediss://")
    return Redis(
        mode=mode,
        url=url,
        sentinels=sentinels,
        master_name=str(raw.get("masterName", Redis.master_name)),
        ack_replicas=_int(raw, "ackReplicas", 0, 0, 16, "spec.redis"),
    )


def _mysql(raw: Mapping[str, Any]) -> MySQL:
    admin = raw.get("adminUser")
    return MySQL(
        host=str(raw.get("host", MySQL.host)),
        port=_int(raw, "port", 3306, 1, 65535, "spec.mysql"),
        database=str(raw.get("database", MySQL.database)),
        user=str(raw.get("user", MySQL.user)),
        admin_user=str(admin) if admin else None,
    )


def _protections(raw: Mapping[str, Any]) -> Protections:
    token = raw.get("authTokenSecretRef")
    ref = None
    if token:
        if not token.get("name"):
            raise SpecError("spec.protections.authTokenSecretRef.name is required")
        ref = SecretKeyRef(name=str(token["name"]), key=str(token.get("key", "auth-token")))
    return Protections(
        rate_limit_per_minute=_int(raw, "rateLimitPerMinute", 0, 0, 1_000_000, "spec.protections"),
        auth_token_secret=ref,
    )


def parse(raw: Mapping[str, Any]) -> Spec:
    """The spec of a UserCounter (its `spec` field), defaults filled, or SpecError."""
    image = raw.get("image")
    if not isinstance(image, str) or not image:
        raise SpecError("spec.image is required")
    policy = raw.get("imagePullPolicy", "IfNotPresent")
    if policy not in ("Always", "IfNotPresent", "Never"):
        raise SpecError("spec.imagePullPolicy must be Always, IfNotPresent or Never")
    layout = _section(raw, "keyLayout")
    prefix = str(layout.get("keyPrefix", "uc"))
    if not _PREFIX.match(prefix):
        raise SpecError("spec.keyLayout.keyPrefix: 1-32 of letters, digits, _ . : -")
    secrets = _section(raw, "secrets")
    log_level = raw.get("logLevel", "info")
    if log_level not in LOG_LEVELS:
        raise SpecError(f"spec.logLevel must be one of {', '.join(LOG_LEVELS)}")
    worker = _section(raw, "worker")
    return Spec(
        image=image,
        image_pull_policy=policy,
        api=_api(_section(raw, "api")),
        worker=Worker(
            replicas=_int(worker, "replicas", 2, 1, 100, "spec.worker"),
            resources=_resources(worker, "spec.worker"),
        ),
        redis=_redis(_section(raw, "redis")),
        mysql=_mysql(_section(raw, "mysql")),
        secret_name=str(secrets.get("name", Spec.secret_name)),
        buckets=_int(layout, "buckets", 64, 1, 4096, "spec.keyLayout"),
        key_prefix=prefix,
        protections=_protections(_section(raw, "protections")),
        log_level=log_level,
        suspend=bool(raw.get("suspend", False)),
        drain_timeout_seconds=_int(raw, "drainTimeoutSeconds", 600, 10, 86_400, "spec"),
    )
