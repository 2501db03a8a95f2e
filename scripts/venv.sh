#!/usr/bin/env bash
# Creates the venv (Python 3.11+) when missing and installs the exact versions of LOCK
# into it, then the project itself as an editable package. LOCK is requirements.lock (what
# running needs; `make run`) unless set: the Makefile installs requirements-dev.lock on top
# of it for the tests and linters. Installing into an existing venv only adds or changes
# what the lock pins; nothing is removed. Uses uv when it is on PATH (much faster), pip
# otherwise; INSTALLER=pip forces pip. pip runs with -qq: this machine's pip.conf names
# extra local indexes that print a warning for every package; errors still show.
set -euo pipefail

cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
LOCK=${LOCK:-requirements.lock}

log() { printf 'install: %s\n' "$*"; }
die() {
    printf 'install: error: %s\n' "$*" >&2
    exit 1
}

new_enough() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }

pick_python() {
    local candidate
    for candidate in ${PYTHON:-} python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1 && new_enough "$candidate"; then
            echo "$candidate"
            return
        fi
    done
    die "Python 3.11 or newer is needed. Install it: apt-get install python3 python3-venv"
}

if ! [ -x "$VENV/bin/python" ] || ! new_enough "$VENV/bin/python"; then
    python=$(pick_python)
    log "creating $VENV with $python ($("$python" --version))"
    rm -rf "$VENV"
    if ! "$python" -m venv "$VENV"; then
        rm -rf "$VENV"
        die "'$python -m venv' failed. Install it: apt-get install python3-venv"
    fi
fi

if [ "${INSTALLER:-auto}" != pip ] && command -v uv >/dev/null 2>&1; then
    log "installing $LOCK with uv"
    uv pip install --quiet --python "$VENV/bin/python" -r "$LOCK"
    uv pip install --quiet --python "$VENV/bin/python" --no-deps -e .
else
    log "installing $LOCK with pip"
    pip=("$VENV/bin/python" -m pip --disable-pip-version-check)
    "${pip[@]}" install -qq -r "$LOCK"
    "${pip[@]}" install -qq --no-deps -e .
fi
log "done: $("$VENV/bin/python" --version) in $VENV"
