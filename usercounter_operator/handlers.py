"""The kopf handlers: reconcile, suspend, delete with drain, and the status timer.

They call the Kubernetes API through lightkube (server-side apply, field manager
`usercounter-operator`); everything they decide is computed by the pure modules beside
them (spec, render, drain, status), which the tests exercise. The handlers themselves
have never run against an API server (docs/operator.md#what-was-tested).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Mapping
from dataclasses import replace
from datetime import timedelta
from typing import Any

import aiohttp
import httpx2
import kopf
from lightkube import AsyncClient, codecs
from lightkube.core.exceptions import ApiError
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.autoscaling_v2 import HorizontalPodAutoscaler
from lightkube.resources.core_v1 import Pod, Secret

from counter_svc.connections import open_redis
from counter_svc.keys import Keys
from counter_svc.settings import Settings
from usercounter_operator import metrics
from usercounter_operator.drain import MySQLTarget, Verdict, mysql_reachable, wait_drained
from usercounter_operator.render import Owner, render
from usercounter_operator.spec import GROUP, PLURAL, VERSION, Spec, SpecError, parse
from usercounter_operator.status import (
    Rollout,
    combine,
    conditions,
    keep_transition_times,
    parse_worker_metrics,
)

FIELD_MANAGER = "usercounter-operator"
FINALIZER = f"{GROUP}/drain"
WORKER_METRICS_PORT = 9100
LAG_LIMIT_SECONDS = 60.0
RETRY_SECONDS = 10
log = logging.getLogger(__name__)


def _client() -> AsyncClient:
    return AsyncClient(field_manager=FIELD_MANAGER, timeout=httpx2.Timeout(10.0))


def _namespaced(namespace: str | None) -> str:
    if not namespace:
        raise kopf.PermanentError("a UserCounter is namespaced")
    return namespace


def _spec(raw: Mapping[str, Any]) -> Spec:
    try:
        return parse(raw)
    except SpecError as e:
        raise kopf.PermanentError(str(e)) from e


async def _apply(kube: AsyncClient, objects: list[dict[str, Any]]) -> None:
    for obj in objects:
        await kube.apply(codecs.from_dict(obj), field_manager=FIELD_MANAGER, force=True)


async def _delete_hpa(kube: AsyncClient, name: str, namespace: str) -> None:
    try:
        await kube.delete(HorizontalPodAutoscaler, f"{name}-api", namespace=namespace)
    except ApiError as e:
        if e.status.code != 404:
            raise


async def _deployment(kube: AsyncClient, name: str, namespace: str) -> dict[str, Any] | None:
    try:
        found = await kube.get(Deployment, name, namespace=namespace)
    except ApiError as e:
        if e.status.code == 404:
            return None
        raise
    result: dict[str, Any] = found.to_dict()
    return result


async def _secret_value(kube: AsyncClient, name: str, namespace: str, key: str) -> str:
    secret = await kube.get(Secret, name, namespace=namespace)
    raw = (secret.data or {}).get(key)
    return base64.b64decode(raw).decode() if raw else ""


async def _check_drain(kube: AsyncClient, spec: Spec, namespace: str, elapsed: float) -> Verdict:
    """One look at the buckets (no waiting: kopf retries the handler)."""
    secret = spec.secret_name
    redis_password = await _secret_value(kube, secret, namespace, "redis-password")
    sentinel_password = ""
    if spec.redis.mode == "sentinel":
        sentinel_password = await _secret_value(kube, secret, namespace, "redis-sentinel-password")
    settings = replace(
        Settings(),
        redis_url=spec.redis.url,
        redis_password=redis_password,
        redis_sentinels=tuple(
            (h, int(p)) for h, p in (s.rsplit(":", 1) for s in spec.redis.sentinels)
        ),
        redis_sentinel_master=spec.redis.master_name,
        redis_sentinel_password=sentinel_password,
        redis_pool_size=2,
        redis_timeout_seconds=2.0,
    )
    target = MySQLTarget(
        host=spec.mysql.host,
        port=spec.mysql.port,
        user=spec.mysql.user,
        password=await _secret_value(kube, secret, namespace, "mysql-password"),
    )
    redis = open_redis(settings)
    try:
        return await wait_drained(
            redis,
            Keys(spec.key_prefix, spec.buckets),
            limit_seconds=spec.drain_timeout_seconds,
            mysql_check=lambda: mysql_reachable(target),
            poll=0,
            started=time.monotonic() - elapsed,
        )
    finally:
        await redis.aclose()


async def _stop_api_and_drain(
    kube: AsyncClient,
    spec: Spec,
    owner: Owner,
    elapsed: float,
    patch: kopf.Patch,
) -> None:
    """API to 0 replicas (no HPA), wait until its pods are gone, then until the buckets
    are empty. Raises kopf.TemporaryError (a retry) until then; never deletes a key."""
    suspended = replace(spec, suspend=True)
    await _apply(kube, render(suspended, owner, worker_replicas=spec.worker.replicas))
    await _delete_hpa(kube, owner.name, owner.namespace)
    api = await _deployment(kube, f"{owner.name}-api", owner.namespace)
    if api and (api.get("status") or {}).get("replicas"):
        patch.status["drain"] = {"reason": "StoppingAPI", "message": "waiting for API pods"}
        raise kopf.TemporaryError("waiting for the API pods to stop", delay=5)
    verdict = await _check_drain(kube, spec, owner.namespace, elapsed)
    patch.status["drain"] = {
        "reason": verdict.reason,
        "message": verdict.message,
        "dirty": verdict.backlog.dirty,
        "inflight": verdict.backlog.inflight,
    }
    metrics.DRAIN_CHECKS.labels(verdict.reason).inc()
    api_rollout = Rollout.from_deployment(api, 0)
    worker = await _deployment(kube, f"{owner.name}-sync-worker", owner.namespace)
    worker_rollout = Rollout.from_deployment(worker, spec.worker.replicas)
    patch.status["conditions"] = conditions(
        api_rollout,
        worker_rollout,
        None,
        lag_limit_seconds=LAG_LIMIT_SECONDS,
        drain=(verdict.reason, verdict.message),
    )
    if not verdict.drained:
        raise kopf.TemporaryError(verdict.message, delay=RETRY_SECONDS)


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
async def reconcile(
    *,
    spec: kopf.Spec,
    name: str,
    namespace: str | None,
    uid: str,
    meta: kopf.Meta,
    patch: kopf.Patch,
    runtime: timedelta,
    **_: Any,
) -> None:
    """Apply every owned object; with `suspend`, stop the API and drain first."""
    parsed = _spec(spec)
    owner = Owner(name, _namespaced(namespace), uid)
    with metrics.RECONCILES.track("reconcile"):
        async with _client() as kube:
            worker_replicas = None
            if parsed.suspend:
                await _stop_api_and_drain(kube, parsed, owner, runtime.total_seconds(), patch)
                worker_replicas = 0
            else:
                patch.status["drain"] = None  # a past suspend's report
            await _apply(kube, render(parsed, owner, worker_replicas=worker_replicas))
            if parsed.suspend or not parsed.api.autoscaling.enabled:
                await _delete_hpa(kube, name, owner.namespace)
    patch.status["observedGeneration"] = meta.get("generation")


@kopf.on.delete(GROUP, VERSION, PLURAL)
async def drain_before_delete(
    *,
    spec: kopf.Spec,
    name: str,
    namespace: str | None,
    uid: str,
    patch: kopf.Patch,
    runtime: timedelta,
    **_: Any,
) -> None:
    """The finalizer: returns (and kopf removes it) only once nothing is left unsynced;
    the owned objects then go with the resource (ownerReferences)."""
    parsed = _spec(spec)
    with metrics.RECONCILES.track("delete"):
        async with _client() as kube:
            owner = Owner(name, _namespaced(namespace), uid)
            await _stop_api_and_drain(kube, parsed, owner, runtime.total_seconds(), patch)


async def _scrape(session: aiohttp.ClientSession, ip: str) -> dict[str, float]:
    url = f"http://{ip}:{WORKER_METRICS_PORT}/metrics"
    try:
        async with session.get(url) as response:
            return parse_worker_metrics(await response.text())
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return {}


@kopf.timer(GROUP, VERSION, PLURAL, interval=30, initial_delay=10)
async def observe(
    *,
    spec: kopf.Spec,
    name: str,
    namespace: str | None,
    status: kopf.Status,
    meta: kopf.Meta,
    patch: kopf.Patch,
    **_: Any,
) -> None:
    """Ready replicas, the workers' backlog and lag, and the conditions, into status."""
    parsed = _spec(spec)
    namespace = _namespaced(namespace)
    with metrics.RECONCILES.track("observe"):
        async with _client() as kube:
            api_obj = await _deployment(kube, f"{name}-api", namespace)
            worker_obj = await _deployment(kube, f"{name}-sync-worker", namespace)
            selector: dict[str, Any] = {
                "app.kubernetes.io/instance": name,
                "app.kubernetes.io/component": "sync-worker",
            }
            ips = [
                p.status.podIP
                async for p in kube.list(Pod, namespace=namespace, labels=selector)
                if p.status and p.status.podIP
            ]
    timeout = aiohttp.ClientTimeout(total=3)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        scrapes = await asyncio.gather(*(_scrape(session, ip) for ip in ips))
    stats = combine(scrapes)
    api = Rollout.from_deployment(api_obj, 0 if parsed.suspend else parsed.api.replicas)
    worker = Rollout.from_deployment(worker_obj, parsed.worker.replicas)
    deleting = bool(meta.get("deletionTimestamp"))
    drain = status.get("drain") if parsed.suspend or deleting else None
    new = conditions(
        api,
        worker,
        stats,
        lag_limit_seconds=LAG_LIMIT_SECONDS,
        drain=(drain["reason"], drain["message"]) if drain else None,
    )
    patch.status["conditions"] = keep_transition_times(new, status.get("conditions") or [])
    patch.status["apiReadyReplicas"] = api.ready
    patch.status["workerReadyReplicas"] = worker.ready
    if stats is not None:
        patch.status["syncBacklog"] = stats.backlog
        patch.status["syncInflight"] = stats.inflight
        patch.status["syncLagSeconds"] = round(stats.lag_seconds, 3)


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.finalizer = FINALIZER
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
