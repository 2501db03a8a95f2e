"""Render docs/dashboard.png: the panels of dashboard.json, drawn from what a real
Prometheus scraped off a real local run. Not a Grafana screenshot (Grafana cannot be
installed here); the queries are the dashboard's own, evaluated by Prometheus.

The run: two API processes and two sync workers on this machine's MySQL and Redis (a
database and key prefix of their own, removed afterwards), Prometheus scraping all four
every 2 s with the alert rules loaded, and a scripted load in four phases:
  steady    clients create users, increment, read counters (a few 404s)
  outage    MySQL blocked by a TCP proxy: creates fail 503, increments go on from Redis,
            the workers fail, backlog and lag grow
  recovery  MySQL back: the backlog drains
  abuse     one client over its rate limit (429) and one without the token (401)

With any Python that has matplotlib, httpx and PyYAML (none is a project dependency):
    python3 -m venv ~/.cache/uc-render && ~/.cache/uc-render/bin/pip install matplotlib httpx pyyaml
    ~/.cache/uc-render/bin/python k8s/monitoring/render_dashboard.py [--seconds 240]

Needs .venv (make install) and .venv-tools/bin/prometheus (scripts/install-tools.sh).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.faults import FaultProxy, free_port, port_open, wait_until  # noqa: E402

HERE = Path(__file__).parent
PYTHON = str(ROOT / ".venv" / "bin" / "python")
TOKEN = "render-0123456789abcdef"  # noqa: S105 - a throw-away token of a local run
RATE_WINDOW = "10s"
PHASES = (("steady", 0.3), ("outage", 0.2), ("recovery", 0.3), ("abuse", 0.2))


# --- the stack ----------------------------------------------------------------------------


def base_env(db: str, prefix: str, mysql_port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MYSQL_", "REDIS_"))}
    env.update(
        ENV_FILE=os.devnull,
        MYSQL_HOST="127.0.0.1",
        MYSQL_PORT=str(mysql_port),
        MYSQL_USER="root",
        MYSQL_DATABASE=db,
        REDIS_KEY_PREFIX=prefix,
        LOG_FORMAT="json",
        LOG_LEVEL="warning",
        MYSQL_TIMEOUT_SECONDS="1",
    )
    return env


@contextlib.contextmanager
def process(args: list[str], env: dict[str, str], log: Path, port: int) -> Iterator[None]:
    with log.open("wb") as out:
        proc = subprocess.Popen(  # noqa: S603 - our own fixed commands
            args, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT
        )
        try:
            wait_until(lambda: port_open(port), 30, f"{args[2]} on {port}")
            yield
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def prometheus_config(api: list[int], workers: list[int]) -> dict[str, Any]:
    def targets(ports: list[int], name: str) -> list[dict[str, Any]]:
        return [
            {"targets": [f"127.0.0.1:{p}"], "labels": {"namespace": "local", "pod": f"{name}-{i}"}}
            for i, p in enumerate(ports, 1)
        ]

    return {
        "global": {"scrape_interval": "2s", "evaluation_interval": "2s"},
        "rule_files": ["rules.yaml"],
        "scrape_configs": [
            {"job_name": "api", "static_configs": targets(api, "api")},
            {"job_name": "sync-worker", "static_configs": targets(workers, "sync-worker")},
        ],
    }


# --- the load -----------------------------------------------------------------------------


class Load:
    def __init__(self, urls: list[str]) -> None:
        self.clients = [httpx.AsyncClient(base_url=u, timeout=5) for u in urls]
        self.users: list[int] = []
        self.phase = "steady"
        self.stop = False

    def client(self) -> httpx.AsyncClient:
        return random.choice(self.clients)

    async def call(self, method: str, path: str, ip: str, **kw: Any) -> int:
        headers = {"X-Forwarded-For": ip, **kw.pop("headers", {})}
        try:
            response = await self.client().request(method, path, headers=headers, **kw)
        except httpx.HTTPError:
            return 0
        return response.status_code

    async def create(self, ip: str) -> None:
        name = f"u{time.time_ns()}{random.randrange(1000)}"
        auth = {"Authorization": f"Bearer {TOKEN}"}
        try:
            r = await self.client().post(
                "/api/v1/users", json={"username": name}, headers={"X-Forwarded-For": ip, **auth}
            )
        except httpx.HTTPError:
            return
        if r.status_code == 201:
            self.users.append(r.json()["data"]["id"])

    async def lane(self, n: int) -> None:
        """One well-behaved client: ~6 requests/s, under its 10/s budget."""
        ip = f"10.0.0.{n}"
        auth = {"Authorization": f"Bearer {TOKEN}"}
        while not self.stop:
            roll = random.random()
            # A few hot users: most increments land on counters already in Redis.
            user = random.choice(self.users[: max(20, len(self.users) // 3)])
            if roll < 0.65:
                await self.call("PUT", f"/api/v1/users/{user}/increment", ip, headers=auth)
            elif roll < 0.85:
                await self.call("GET", f"/api/v1/users/{user}/count", ip)
            elif roll < 0.93:
                await self.call("GET", f"/api/v1/users/{random.choice(self.users)}/count", ip)
            elif roll < 0.97:
                await self.create(ip)
            else:
                await self.call("GET", f"/api/v1/users/{10_000_000 + n}/count", ip)
            await asyncio.sleep(random.uniform(0.1, 0.22))

    async def abuser(self) -> None:
        """Over its rate limit (~50/s against 10/s, bursts of 600) in the last phase only."""
        while not self.stop:
            if self.phase == "abuse":
                await self.call("GET", f"/api/v1/users/{self.users[0]}/count", "10.9.9.9")
                await asyncio.sleep(1 / 50)
            else:
                await asyncio.sleep(0.1)

    async def no_token(self) -> None:
        """A client that forgot its token, in the last phase only."""
        while not self.stop:
            if self.phase == "abuse":
                await self.call("PUT", f"/api/v1/users/{self.users[1]}/increment", "10.8.8.8")
            await asyncio.sleep(1 / 4)


async def drive(
    urls: list[str], proxy: FaultProxy, seconds: float
) -> dict[str, tuple[float, float]]:
    load = Load(urls)
    for i in range(200):
        await load.create(f"10.1.0.{i % 250}")
    tasks = [asyncio.create_task(load.lane(n)) for n in range(1, 31)]
    tasks += [asyncio.create_task(load.abuser()), asyncio.create_task(load.no_token())]
    windows: dict[str, tuple[float, float]] = {}
    for phase, share in PHASES:
        load.phase = phase
        if phase == "outage":
            proxy.block()
        elif phase == "recovery":
            proxy.restore()
        start = time.time()
        print(f"phase {phase} for {seconds * share:.0f} s", flush=True)
        await asyncio.sleep(seconds * share)
        windows[phase] = (start, time.time())
    load.stop = True
    await asyncio.gather(*tasks)
    for c in load.clients:
        await c.aclose()
    return windows


# --- the picture --------------------------------------------------------------------------


def query_range(prom: str, expr: str, start: float, end: float) -> list[dict[str, Any]]:
    expr = expr.replace("$__rate_interval", RATE_WINDOW).replace("$namespace", ".*")
    params = {"query": expr, "start": start, "end": end, "step": 2}
    r = httpx.get(f"{prom}/api/v1/query_range", params=params, timeout=30)
    r.raise_for_status()
    result: list[dict[str, Any]] = r.json()["data"]["result"]
    return result


def legend(fmt: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt) or "value"


def fmt_value(value: float, unit: str) -> str:
    if value != value:  # NaN
        return "n/a"
    if unit == "percentunit":
        return f"{value * 100:.1f}%"
    if unit == "s":
        return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.1f} s"
    if unit == "bytes":
        return f"{value / 2**20:.1f} MiB"
    if unit == "short" and abs(value) >= 1000:
        return f"{value / 1000:.1f}k"
    suffix = {"reqps": " req/s", "ops": "/s"}.get(unit, "")
    return f"{value:.3g}{suffix}"


def draw(
    board: dict[str, Any],
    prom: str,
    start: float,
    end: float,
    windows: dict[str, tuple[float, float]],
    out: Path,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    plt.style.use("dark_background")
    height = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in board["panels"])
    fig = plt.figure(figsize=(24, height * 0.62), facecolor="#111217")
    grid = fig.add_gridspec(
        height, 24, hspace=2.2, wspace=1.2, left=0.03, right=0.99, top=1 - 3.0 / height, bottom=0.02
    )
    fig.suptitle(
        f"{board['title']} — panels of k8s/monitoring/dashboard.json, evaluated by Prometheus on a "
        f"{(end - start) / 60:.0f}-minute local run (2 API, 2 workers). Shaded: MySQL blocked "
        "(red), recovery (green), a client over its rate limit + one without token (orange).",
        fontsize=13,
        color="#d8d9da",
    )
    shades = {"outage": "#f2495c", "recovery": "#73bf69", "abuse": "#ff9830"}
    for panel in board["panels"]:
        g = panel["gridPos"]
        if panel["type"] == "row":
            ax = fig.add_subplot(grid[g["y"] : g["y"] + 1, :])
            ax.axis("off")
            ax.text(0, 0.2, panel["title"], fontsize=14, weight="bold", color="#d8d9da")
            continue
        ax = fig.add_subplot(grid[g["y"] : g["y"] + g["h"], g["x"] : g["x"] + g["w"]])
        ax.set_facecolor("#181b1f")
        ax.set_title(panel["title"], fontsize=10, loc="left", color="#d8d9da")
        unit = panel["fieldConfig"]["defaults"].get("unit", "short")
        series = [
            (legend(t["legendFormat"], s["metric"]), s["values"])
            for t in panel["targets"]
            for s in query_range(prom, t["expr"], start, end)
        ]
        if panel["type"] == "stat":
            ax.set_xticks([])
            ax.set_yticks([])
            text = (
                "  ".join(
                    (f"{name}: " if len(series) > 1 else "") + fmt_value(float(values[-1][1]), unit)
                    for name, values in series
                )
                or "no data"
            )
            ax.text(
                0.5,
                0.45,
                text,
                ha="center",
                va="center",
                fontsize=15 if len(series) > 1 else 22,
                color="#73bf69",
                transform=ax.transAxes,
            )
            continue
        for name, values in sorted(series, key=lambda s: s[0]):
            xs = [(float(t) - start) / 60 for t, _ in values]
            ys = [float(v) for _, v in values]
            ax.plot(xs, ys, linewidth=1.2, label=name[:40])
        for phase, color in shades.items():
            a, b = windows[phase]
            ax.axvspan((a - start) / 60, (b - start) / 60, color=color, alpha=0.08)
        ax.set_xlim(0, (end - start) / 60)
        ax.tick_params(labelsize=8)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _, u=unit: fmt_value(v, u)))
        ax.set_xlabel("minutes", fontsize=8)
        if series:
            ax.legend(
                fontsize=7, loc="upper left", ncol=2 if len(series) > 4 else 1, framealpha=0.3
            )
        else:
            ax.text(0.5, 0.5, "no data", ha="center", transform=ax.transAxes)
    fig.savefig(out, dpi=72, facecolor=fig.get_facecolor())
    print(f"wrote {out}")


# --- main ---------------------------------------------------------------------------------


def start_stack(
    stack: contextlib.ExitStack, work: Path, env: dict[str, str], ports: dict[str, list[int]]
) -> None:
    """Two APIs and two workers (MySQL through the proxy), then Prometheus scraping them."""
    for i, port in enumerate(ports["api"]):
        serve = env | {"PORT": str(port), "HOST": "127.0.0.1"}
        cmd = [PYTHON, "-m", "counter_svc", "serve"]
        stack.enter_context(process(cmd, serve, work / f"api-{i}.log", port))
    for i, port in enumerate(ports["worker"]):
        worker = env | {"SYNC_METRICS_PORT": str(port)}
        cmd = [PYTHON, "-m", "sync_worker"]
        stack.enter_context(process(cmd, worker, work / f"worker-{i}.log", port))
    (rule,) = yaml.safe_load_all((HERE / "prometheusrule.yaml").read_text())
    (work / "rules.yaml").write_text(yaml.safe_dump(rule["spec"]))
    config = prometheus_config(ports["api"], ports["worker"])
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    prometheus = shutil.which("prometheus", path=f"{ROOT / '.venv-tools' / 'bin'}:{os.defpath}")
    if not prometheus:
        raise SystemExit("prometheus not found: run scripts/install-tools.sh")
    (port,) = ports["prometheus"]
    cmd = [
        prometheus,
        f"--config.file={work / 'prometheus.yml'}",
        f"--storage.tsdb.path={work / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    stack.enter_context(process(cmd, dict(os.environ), work / "prometheus.log", port))


def clean_up(db: str, prefix: str) -> None:
    """Drop the run's database and keys (the servers have stopped)."""
    code = (
        "import asyncio, os, redis, asyncmy\n"
        "async def main():\n"
        "    c = await asyncmy.connect(host='127.0.0.1', user='root')\n"
        "    async with c.cursor() as cur:\n"
        f"        await cur.execute('DROP DATABASE IF EXISTS `{db}`')\n"
        "    c.close()\n"
        "    r = redis.asyncio.Redis()\n"
        f"    keys = [k async for k in r.scan_iter(match='{prefix}:*', count=1000)]\n"
        "    if keys: await r.delete(*keys)\n"
        "    await r.aclose()\n"
        "asyncio.run(main())\n"
    )
    subprocess.run([PYTHON, "-c", code], check=False, cwd=ROOT)  # noqa: S603 - our own code


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=240)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboard.png")
    args = parser.parse_args()
    import matplotlib  # noqa: F401 - fail now rather than after the run

    board = json.loads((HERE / "dashboard.json").read_text())
    db, prefix = f"uc_render_{os.getpid()}", f"ucrender{os.getpid()}"
    ports = {
        "api": [free_port(), free_port()],
        "worker": [free_port(), free_port()],
        "prometheus": [free_port()],
    }
    with (
        tempfile.TemporaryDirectory() as tmp,
        FaultProxy("127.0.0.1", 3306) as proxy,
        contextlib.ExitStack() as stack,
    ):
        work = Path(tmp)
        direct = base_env(db, prefix, 3306)
        migrate = [PYTHON, "-m", "counter_svc", "migrate"]
        subprocess.run(migrate, env=direct, check=True, cwd=ROOT)  # noqa: S603 - fixed command
        (work / "token").write_text(TOKEN + "\n")
        env = base_env(db, prefix, proxy.port) | {
            "AUTH_TOKEN_FILE": str(work / "token"),
            "RATE_LIMIT_PER_MINUTE": "600",
            "RATE_LIMIT_TRUSTED_PROXIES": "127.0.0.1",
        }
        start_stack(stack, work, env, ports)
        start = time.time()
        urls = [f"http://127.0.0.1:{p}" for p in ports["api"]]
        windows = asyncio.run(drive(urls, proxy, args.seconds))
        time.sleep(4)  # two more scrapes: the stat panels show the end of the load
        end = time.time()
        prom = f"http://127.0.0.1:{ports['prometheus'][0]}"
        draw(board, prom, start, end, windows, args.out)
        stack.close()
        clean_up(db, prefix)
    return 0


if __name__ == "__main__":
    sys.exit(main())
