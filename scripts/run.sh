#!/usr/bin/env bash
# Runs the API and the sync worker together in the foreground (the worker only once
# sync_worker/__main__.py exists). Ctrl-C or SIGTERM stops both gracefully; when either
# one exits by itself, the other is stopped too and its exit code is passed on.
set -euo pipefail

cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
STOP_TIMEOUT=${STOP_TIMEOUT:-30} # the worker's final drain may take SYNC_SHUTDOWN_TIMEOUT_SECONDS

log() { printf 'run: %s\n' "$*"; }

names=()
pids=()
start() {
    local name=$1
    shift
    # Own session: a Ctrl-C reaches only this script, which sends one SIGTERM to each
    # child, instead of uvicorn seeing both SIGINT and SIGTERM (a second signal forces
    # it to drop in-flight requests).
    setsid "$@" &
    names+=("$name")
    pids+=("$!")
    log "$name started (pid $!): $*"
}

alive() { kill -0 "$1" 2>/dev/null; }

[ -f counter_svc/__main__.py ] || {
    echo "run: counter_svc/__main__.py does not exist yet: nothing to run" >&2
    exit 1
}

stopping=""
trap 'stopping=yes' INT TERM

start api "$PY" -m counter_svc serve
if [ -f sync_worker/__main__.py ]; then
    start worker "$PY" -m sync_worker
else
    log "sync_worker/__main__.py does not exist yet: running the API alone"
fi

# Wait until a signal arrives (wait returns early on a trapped signal) or a child exits.
while [ -z "$stopping" ]; do
    wait -n || true
    for pid in "${pids[@]}"; do alive "$pid" || break 2; done
done

status=0
for i in "${!pids[@]}"; do
    if ! alive "${pids[$i]}"; then
        code=0
        wait "${pids[$i]}" || code=$?
        if [ -z "$stopping" ]; then
            log "${names[$i]} exited with status $code; stopping the rest"
            status=$((code == 0 ? 1 : code))
        fi
    fi
done

for i in "${!pids[@]}"; do
    if alive "${pids[$i]}"; then
        log "stopping ${names[$i]} (pid ${pids[$i]})"
        kill -TERM "${pids[$i]}" 2>/dev/null || true
    fi
done
deadline=$((SECONDS + STOP_TIMEOUT))
for i in "${!pids[@]}"; do
    while alive "${pids[$i]}"; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "${names[$i]} did not stop within ${STOP_TIMEOUT} s; killing it"
            kill -KILL "${pids[$i]}" 2>/dev/null || true
        fi
        sleep 0.2
    done
    wait "${pids[$i]}" 2>/dev/null || true
done
log "stopped"
exit "$status"
