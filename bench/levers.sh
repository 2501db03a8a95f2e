#!/usr/bin/env bash
# The lever experiments of docs/benchmarks.md that need no other source tree: each runs
# variants of this tree side by side (python -m bench.levers) and updates the report.
# About 30 minutes on a 2-core machine. One experiment: bash bench/levers.sh workers
set -euo pipefail

cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
lever() { "$PY" -m bench.levers --rounds "${ROUNDS:-3}" --duration "${DURATION:-10}" "$@"; }
UVICORN="python -m uvicorn counter_svc.asgi:app --host 127.0.0.1 --port {port} --workers {workers} --no-access-log --no-server-header"

access_log() {
    lever --name "2. Access log (ACCESS_LOG)" \
        --note "One JSON line per request to stderr (a file here, a pipe in a container)." \
        --variant "all (default)=." --variant "errors=.;ACCESS_LOG=errors" --variant "off=.;ACCESS_LOG=off"
}
workers() {
    lever --name "3. uvicorn workers (WEB_CONCURRENCY) on 2 cores" \
        --note "k6 runs on the same 2 cores and needs about as much CPU per request as the API." \
        --variant "1=.;WEB_CONCURRENCY=1" --variant "2 (one per core)=.;WEB_CONCURRENCY=2" \
        --variant "3=.;WEB_CONCURRENCY=3" --variant "4=.;WEB_CONCURRENCY=4"
}
pool() {
    lever --name "4. Redis connections per process (REDIS_POOL_SIZE)" \
        --note "With auto-pipelining a worker holds one connection per batch in flight." \
        --variant "4=.;REDIS_POOL_SIZE=4" --variant "16=.;REDIS_POOL_SIZE=16" \
        --variant "64 (default)=.;REDIS_POOL_SIZE=64"
}
hiredis() {
    lever --name "5. hiredis reply parser" --phases increment \
        --variant "hiredis (installed with redis[hiredis])=." \
        --variant "pure-Python parser=.;PYTHONPATH=bench/shims/no_hiredis"
}
server() {
    lever --name "6. Event loop and HTTP parser" \
        --note "The same app under \`uvicorn\` run from its command line: uvloop or asyncio, httptools or h11 (each with two writes per response), against \`serve\` (uvloop, httptools, one write per response)." \
        --variant "serve: uvloop + httptools, one write=." \
        --variant "uvloop + httptools=.;cmd=$UVICORN --loop uvloop --http httptools" \
        --variant "asyncio + h11=.;cmd=$UVICORN --loop asyncio --http h11"
}

if [ "$#" -eq 0 ]; then set -- access_log workers pool hiredis server; fi
for experiment in "$@"; do "$experiment"; done
