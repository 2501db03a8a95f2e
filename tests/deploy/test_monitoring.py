"""The Grafana dashboard, the alert rules and the PodMonitors of k8s/monitoring: every
metric they query is one the API or the worker really exports, the rules pass promtool
(check and unit tests), and each alert has its runbook section."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from counter_svc.settings import Settings
from tests.deploy.support import OVERLAY, ROOT, render, run, tool
from tests.faults import free_port
from tests.helpers import WorkerProcess, create_user, running_app, worker_settings
from tests.topology import SentinelTopology, redis_cluster, sentinel_topology

MONITORING = ROOT / "k8s" / "monitoring"
RUNBOOK = ROOT / "docs" / "runbook.md"
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$namespace": ".*"}

# PromQL words that are not metric names.
_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "bool", "offset", "inf", "nan",
}  # fmt: skip
_STRING = re.compile(r'"(?:\\.|[^"\\])*"')
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?")


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords,
    label names (in `{...}` or `by (...)`), durations or numbers."""
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges and subqueries
    text = _LABEL_LIST.sub("", text)
    names = set()
    for name, call in _IDENT.findall(text):
        if not call and name.lower() not in _KEYWORDS:
            names.add(name)
    return names


def test_metric_names_parser() -> None:
    """The PromQL parser finds metrics, not functions, labels, keywords or durations."""
    expr = (
        'histogram_quantile(0.99, sum by (pod, le) (rate(a_bucket{route!="x", s=~"5.."}[5m])))'
        " / on (pod) group_left b_total > 0.5 and time() - c offset 5m"
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "c"}


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((MONITORING / "dashboard.json").read_text())
    return data


def dashboard_exprs() -> list[str]:
    exprs = [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]
    for variable in dashboard()["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            exprs.append(re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", query["query"]))
    return exprs


def rule_spec() -> dict[str, Any]:
    (rule,) = yaml.safe_load_all((MONITORING / "prometheusrule.yaml").read_text())
    spec: dict[str, Any] = rule["spec"]
    return spec


def alerts() -> list[dict[str, Any]]:
    return [r for g in rule_spec()["groups"] for r in g["rules"] if "alert" in r]


def queried_metrics() -> set[str]:
    names: set[str] = set()
    for expr in [*dashboard_exprs(), *(a["expr"] for a in alerts())]:
        names |= metric_names(expr)
    return names


def exposed(text: str) -> set[str]:
    """Sample names in a Prometheus text exposition."""
    return {
        re.split(r"[{ ]", line, maxsplit=1)[0]
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


@pytest.fixture
async def api_metrics(settings: Settings) -> AsyncIterator[set[str]]:
    """The API's /metrics after a little of every kind of traffic."""
    async with running_app(settings) as client:
        user_id = await create_user(client, "monitored")
        for _ in range(3):
            await client.put(f"/api/v1/users/{user_id}/increment")
        await client.get(f"/api/v1/users/{user_id}/count")
        await client.get("/api/v1/users/999999/count")
        await client.get("/nope")
        yield exposed((await client.get("/metrics")).text)


def sentinel_app(
    settings: Settings, topology: SentinelTopology
) -> contextlib.AbstractAsyncContextManager[httpx.AsyncClient]:
    """`running_app` with Redis found through the topology's Sentinels (its shutdown
    closes the Sentinel clients with the primary's)."""
    return running_app(
        replace(
            settings,
            redis_sentinels=tuple(topology.sentinel_addresses),
            redis_sentinel_master=topology.master_name,
        )
    )


@pytest.fixture
async def sentinel_api_metrics(settings: Settings, tmp_path: Path) -> AsyncIterator[set[str]]:
    """The API's /metrics in Sentinel mode after an increment: `usercounter_redis_primary`
    has a series only there (a single Redis server has no primary to name)."""
    with sentinel_topology(tmp_path, replicas=1, sentinels=1, quorum=1) as topology:
        async with sentinel_app(settings, topology) as client:
            user_id = await create_user(client, "followed")
            assert (await client.put(f"/api/v1/users/{user_id}/increment")).status_code == 200
            yield exposed((await client.get("/metrics")).text)


@contextlib.asynccontextmanager
async def drained_worker_metrics(settings: Settings, username: str) -> AsyncIterator[set[str]]:
    """The metric names of the API and of `python -m sync_worker` after the worker
    drained one increment of a new user."""
    async with running_app(settings) as client:
        user_id = await create_user(client, username)
        assert (await client.put(f"/api/v1/users/{user_id}/increment")).status_code == 200
        api = exposed((await client.get("/metrics")).text)
    port = free_port()
    worker = WorkerProcess(worker_settings(settings, metrics_port=port))
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as scraper:
            deadline = time.monotonic() + 30
            while True:
                try:
                    text = (await scraper.get("/metrics")).text
                except httpx.TransportError:
                    text = ""
                if batches_committed(text) > 0:
                    break
                assert time.monotonic() < deadline, "the worker drained no batch in 30 s"
                await asyncio.sleep(0.1)
            yield api | exposed(text)
    finally:
        worker.kill()


@pytest.fixture
async def worker_metrics(settings: Settings) -> AsyncIterator[set[str]]:
    async with drained_worker_metrics(settings, "drained") as names:
        yield names


@pytest.fixture
async def cluster_metrics(settings: Settings, tmp_path: Path) -> AsyncIterator[set[str]]:
    """The API's and the worker's /metrics in Cluster mode: the per-primary series (the
    backlog by shard, the memory by node) exist only there."""
    with redis_cluster(tmp_path) as topology:
        own = replace(settings, redis_cluster_nodes=tuple(topology.seeds))
        async with drained_worker_metrics(own, "sharded") as names:
            yield names


def batches_committed(text: str) -> float:
    lines = [ln for ln in text.splitlines() if ln.startswith("sync_batches_total ")]
    return float(lines[0].split()[-1]) if lines else 0.0


def test_every_queried_metric_is_exported(
    api_metrics: set[str],
    sentinel_api_metrics: set[str],
    worker_metrics: set[str],
    cluster_metrics: set[str],
) -> None:
    """Each metric in the dashboard's and the alerts' PromQL (with its _total, _bucket...
    suffix) is in the live /metrics of the API (on one Redis server, or for the Redis
    primary's gauge in Sentinel mode) or of the worker, or for the per-primary series of
    either in Cluster mode."""
    queried = queried_metrics()
    assert len(queried) > 15, queried
    exported = api_metrics | sentinel_api_metrics | worker_metrics | cluster_metrics
    missing = queried - exported
    assert not missing, f"queried but exported by neither: {sorted(missing)}"
    assert api_metrics <= sentinel_api_metrics, "Sentinel mode drops a metric"


def test_backend_gauges_report_both_stores(api_metrics: set[str]) -> None:
    """The scrape itself refreshes usercounter_backend_up and the Redis memory gauges."""
    for name in (
        "usercounter_backend_up",
        "usercounter_redis_memory_used_bytes",
        "usercounter_redis_memory_max_bytes",
    ):
        assert name in api_metrics


async def test_backend_up_follows_the_stores(settings: Settings) -> None:
    """usercounter_backend_up is 1 for both stores when they answer, 0 for Redis when it
    does not."""

    async def up(s: Settings) -> dict[str, float]:
        async with running_app(s) as client:
            text = (await client.get("/metrics")).text
        found = re.findall(r'usercounter_backend_up\{backend="(\w+)"\} (\S+)', text)
        return {backend: float(value) for backend, value in found}

    assert await up(settings) == {"mysql": 1.0, "redis": 1.0}
    gone = replace(settings, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    assert await up(gone) == {"mysql": 1.0, "redis": 0.0}


def redis_gauges(text: str) -> tuple[set[str], float, float]:
    """The addresses `usercounter_redis_primary` names (value 1), failovers seen, and the
    last failover's Unix time, in an API's /metrics."""
    primary = set(re.findall(r'^usercounter_redis_primary\{address="([^"]+)"\} 1\.0$', text, re.M))
    (seen,) = re.findall(r"^usercounter_redis_failovers_seen (\S+)$", text, re.M)
    (last,) = re.findall(r"^usercounter_redis_last_failover_timestamp_seconds (\S+)$", text, re.M)
    return primary, float(seen), float(last)


@pytest.mark.slow
async def test_redis_gauges_follow_a_failover(settings: Settings, tmp_path: Path) -> None:
    """What the *Redis primary* panels and UserCounterRedisFailover read, in Sentinel mode:
    the primary's address; after it is killed and a replica promoted, the new address, one
    failover seen and its time."""
    with sentinel_topology(tmp_path) as topology:
        async with sentinel_app(settings, topology) as client:
            user_id = await create_user(client, "failover")
            increment = f"/api/v1/users/{user_id}/increment"
            assert (await client.put(increment)).status_code == 200
            first = "{}:{}".format(*topology.primary())
            assert redis_gauges((await client.get("/metrics")).text) == ({first}, 0.0, 0.0)

            killed_at = time.time()
            old = topology.kill_primary()
            await asyncio.to_thread(topology.wait_for_failover, old, 15)
            second = "{}:{}".format(*topology.primary())
            # The pool finds the new primary when it opens a connection: on the requests
            # after the failover (the first ones may still answer 503).
            deadline = time.monotonic() + 15
            while (await client.put(increment)).status_code != 200:
                assert time.monotonic() < deadline, "no increment succeeded after the failover"
                await asyncio.sleep(0.1)
            primary, seen, last = redis_gauges((await client.get("/metrics")).text)
            assert primary == {second} != {first}
            assert seen == 1.0
            assert killed_at <= last <= time.time()


def test_rules_pass_promtool_check(tmp_path: Path) -> None:
    """`promtool check rules` accepts the PrometheusRule's groups."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(rule_spec()))
    result = run([tool("promtool"), "check", "rules", str(rules)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in result.stdout


def test_alerts_fire_as_their_unit_tests_expect(tmp_path: Path) -> None:
    """`promtool test rules` on alerts.test.yaml: each alert fires on the series that
    should page (with its rendered summary) and stays quiet on healthy ones."""
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule_spec()))
    shutil.copy(MONITORING / "alerts.test.yaml", tmp_path / "alerts.test.yaml")
    result = run([tool("promtool"), "test", "rules", str(tmp_path / "alerts.test.yaml")])
    assert result.returncode == 0, result.stdout + result.stderr
    tested = set(re.findall(r"alertname: (\w+)", (MONITORING / "alerts.test.yaml").read_text()))
    assert tested == {a["alert"] for a in alerts()}


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """Every dashboard query, with Grafana's variables filled in, parses: promtool checks
    them as recording rules."""
    exprs = dashboard_exprs()
    for name, value in GRAFANA_VARIABLES.items():
        exprs = [e.replace(name, value) for e in exprs]
    assert not [e for e in exprs if "$" in e], "a Grafana variable the test does not fill"
    recorded = [{"record": f"panel:q{i}", "expr": e} for i, e in enumerate(exprs)]
    rules = {"groups": [{"name": "dashboard", "rules": recorded}]}
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    result = run([tool("promtool"), "check", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_runbook_section() -> None:
    """Each alert has a summary, a description, a severity and a runbook_url whose anchor
    is a `## <AlertName>` section of docs/runbook.md."""
    headings = re.findall(r"^## (\S+)", RUNBOOK.read_text(), re.MULTILINE)
    anchors = {h.lower() for h in headings}
    for alert in alerts():
        annotations = alert["annotations"]
        assert annotations["summary"], alert["alert"]
        assert annotations["description"], alert["alert"]
        assert alert["labels"]["severity"] in ("warning", "critical")
        page, anchor = annotations["runbook_url"].split("#")
        assert page == "docs/runbook.md"
        assert anchor == alert["alert"].lower(), alert["alert"]
        assert anchor in anchors, alert["alert"]


def test_dashboard_has_the_panels_operators_need() -> None:
    """Request and error rate by route, latency quantiles, increments, cache hits, backlog,
    lag, drain rate, batch duration, errors by kind, store availability, the Redis primary
    and its failovers, writes not replicated, stale seeds, counters repaired, per-pod
    panels."""
    panels = [p for p in dashboard()["panels"] if p["type"] != "row"]
    text = " ".join(t["expr"] for p in panels for t in p["targets"])
    for needle in (
        "sum by (method, route) (rate(usercounter_http_requests_total",
        'status=~"[45].."',
        "histogram_quantile(0.5,",
        "histogram_quantile(0.95,",
        "histogram_quantile(0.99,",
        "usercounter_increments_total",
        "usercounter_cache_hits_total",
        "sync_dirty_backlog",
        "sync_lag_seconds",
        "sync_counters_flushed_total",
        "sync_batch_duration_seconds_bucket",
        "sum by (kind) (rate(sync_errors_total",
        "usercounter_backend_up",
        "usercounter_redis_memory_used_bytes",
        "sum by (address) (usercounter_redis_primary",
        "time() - max(usercounter_redis_last_failover_timestamp_seconds",
        "changes(usercounter_redis_failovers_seen",
        "rate(usercounter_redis_not_replicated_total",
        "rate(usercounter_stale_seeds_total",
        "increase(sync_counters_repaired_total",
        "sum by (pod)",
    ):
        assert needle in text, needle
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["description"], panel["title"]


def test_dashboard_is_importable_as_is() -> None:
    """No fixed id, a stable uid, a data source variable; panels do not overlap."""
    board = dashboard()
    assert board["id"] is None
    assert board["uid"] == "usercounter"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    taken: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24
        xs, ys = range(pos["x"], pos["x"] + pos["w"]), range(pos["y"], pos["y"] + pos["h"])
        cells = {(x, y) for x in xs for y in ys}
        assert not cells & taken, panel["title"]
        taken |= cells
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"])


def _rendered(kind: str, name: str) -> dict[str, Any]:
    (obj,) = [o for o in render(OVERLAY) if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj


def test_overlay_ships_the_dashboard_for_the_grafana_sidecar() -> None:
    """The dev overlay renders the dashboard ConfigMap, labelled for the sidecar, holding
    dashboard.json byte for byte, under a fixed name."""
    configmap = _rendered("ConfigMap", "usercounter-dashboard")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["data"]["usercounter.json"] == (MONITORING / "dashboard.json").read_text()


def test_overlay_ships_the_rules() -> None:
    """The dev overlay renders the PrometheusRule with the same groups as the file."""
    rule = _rendered("PrometheusRule", "usercounter")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"] == rule_spec()
    assert rule["metadata"]["labels"]["release"]


@pytest.mark.parametrize(("monitor", "component"), [("api", "api"), ("sync-worker", "sync-worker")])
def test_pod_monitors_scrape_the_ports_that_serve_metrics(monitor: str, component: str) -> None:
    """Each PodMonitor selects its Deployment's pods, on a named container port, at the
    path the pod's prometheus.io annotations name; NetworkPolicy admits the scrape."""
    pm = _rendered("PodMonitor", monitor)
    deployment = _rendered("Deployment", component)
    template = deployment["spec"]["template"]
    assert pm["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert pm["metadata"]["namespace"] == deployment["metadata"]["namespace"]
    (endpoint,) = pm["spec"]["podMetricsEndpoints"]
    containers = template["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for c in containers for p in c["ports"]}
    assert endpoint["port"] in ports
    annotations = template["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == ports[endpoint["port"]]
    assert endpoint["path"] == annotations["prometheus.io/path"]
    policy = _rendered("NetworkPolicy", component)
    allowed = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert ports[endpoint["port"]] in allowed
