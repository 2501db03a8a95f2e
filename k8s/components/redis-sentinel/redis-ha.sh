#!/bin/sh
# The start-up, probe and pre-stop commands of the data nodes and Sentinels of the
# redis-sentinel component, one sub-command each (`sh redis-ha.sh <command>`):
#   data, sentinel               write this pod's config into $RUN_DIR, exec the server
#   data-ready, sentinel-ready   readiness probes
#   data-prestop                 a primary about to stop hands over to a replica first
# The StatefulSets set the environment: SELF (this pod's DNS name), DATA_NODES and
# SENTINELS (every data node's and Sentinel's DNS name), MASTER_NAME, SECRETS_DIR (the
# mounted store Secret), RUN_DIR (a writable emptyDir), CONF_DIR (this ConfigMap) and,
# for the data nodes, BASE_CONF (the base redis.conf). Passwords never reach argv or env:
# redis-cli reads them from REDISCLI_AUTH, set for that one command.
set -eu

REDIS_PORT=6379
SENTINEL_PORT=26379
PROBE_HOST=${PROBE_HOST:-127.0.0.1}

# A Secret file's content less trailing CR/LF, as the app reads it.
secret() { sed -z 's/[\r\n]*$//' "$SECRETS_DIR/$1"; }

# `user default on ... #<sha256>...`: the password of the Secret key $1 and, during a
# rotation (docs/deploy.md#rotate-a-secret), of `$1-previous`, as hashes: no clear text and
# nothing to quote. Stops the start-up on an empty password.
acl_line() {
    line="user default on ~* &* +@all"
    for name in "$1" "$1-previous"; do
        [ "$name" = "$1" ] || [ -e "$SECRETS_DIR/$name" ] || continue
        if [ -z "$(secret "$name")" ]; then
            echo "redis-ha: $SECRETS_DIR/$name is empty or unreadable" >&2
            exit 1
        fi
        line="$line #$(secret "$name" | sha256sum | cut -c1-64)"
    done
    printf '%s\n' "$line"
}

# The password of Secret key $1 as a double-quoted config string with every byte as \xHH
# (masterauth, auth-pass and sentinel-pass need it in clear): whatever it holds, nothing
# is left to escape.
quoted() { printf '"%s"' "$(secret "$1" | od -An -v -tx1 | tr -d ' \n' | sed 's/../\\x&/g')"; }

# redis-cli HOST PORT SECRET-KEY COMMAND...: one try, 3 s at most.
cli() {
    cli_host=$1 cli_port=$2 cli_key=$3
    shift 3
    REDISCLI_AUTH="$(secret "$cli_key")" timeout 3 redis-cli -h "$cli_host" -p "$cli_port" "$@"
}

is_data_node() {
    for node in $DATA_NODES; do [ "$node" = "$1" ] && return 0; done
    return 1
}

# The primary a Sentinel names now (the first that answers), or nothing.
primary_from_sentinels() {
    for sentinel in $SENTINELS; do
        [ "$sentinel" != "$SELF" ] || continue
        answer=$(cli "$sentinel" $SENTINEL_PORT redis-sentinel-password \
            SENTINEL get-master-addr-by-name "$MASTER_NAME" 2>/dev/null | head -n 1) || continue
        if is_data_node "$answer"; then
            echo "$answer"
            return
        fi
    done
}

# With no Sentinel to ask: the data node that says it is a primary, the one with the most
# replicas if several do (one back from a restart has none yet), or nothing.
primary_from_data_nodes() {
    best="" best_replicas=-1
    for node in $DATA_NODES; do
        [ "$node" != "$SELF" ] || continue
        info=$(cli "$node" $REDIS_PORT redis-password INFO replication 2>/dev/null | tr -d '\r') ||
            continue
        case "$info" in *role:master*) ;; *) continue ;; esac
        replicas=$(printf '%s\n' "$info" | sed -n 's/^connected_slaves://p')
        if [ "${replicas:-0}" -gt "$best_replicas" ]; then
            best=$node best_replicas=${replicas:-0}
        fi
    done
    echo "$best"
}

# The current primary: what the Sentinels say, else what the data nodes say, else the
# first data node (a new deployment: it starts as the primary, the others replicate it).
find_primary() {
    primary=$(primary_from_sentinels)
    [ -n "$primary" ] || primary=$(primary_from_data_nodes)
    if [ -z "$primary" ]; then
        set -- $DATA_NODES
        primary=$1
    fi
    echo "$primary"
}

start_data() {
    umask 077
    # Included by the base redis.conf: the data nodes' own ACL, as the base Redis has it.
    acl_line redis-password >"$RUN_DIR/auth.conf"
    primary=$(find_primary)
    # A config of its own in the emptyDir, written anew at each start: Sentinel's
    # reconfigurations end with CONFIG REWRITE, which needs a writable file.
    {
        echo "include $BASE_CONF"
        echo "include $CONF_DIR/replication.conf"
        # A name, not the pod IP, in what the replicas report to the primary and so to the
        # Sentinels: a restarted pod keeps its name, not its IP.
        echo "replica-announce-ip $SELF"
        echo "masterauth $(quoted redis-password)"
        [ "$primary" = "$SELF" ] || echo "replicaof $primary $REDIS_PORT"
    } >"$RUN_DIR/redis.conf"
    if [ "$primary" = "$SELF" ]; then
        echo "redis-ha: $SELF starts as the primary" >&2
    else
        echo "redis-ha: $SELF starts as a replica of $primary" >&2
    fi
    exec redis-server "$RUN_DIR/redis.conf"
}

start_sentinel() {
    umask 077
    primary=$(find_primary)
    # Sentinel rewrites its config file as it runs (epochs, the replicas and Sentinels it
    # found), so it gets a copy in the emptyDir; written anew at each start, from the
    # current primary, which the other Sentinels tell it.
    {
        sed "s/@PRIMARY@/$primary/" "$CONF_DIR/sentinel.conf"
        echo "dir $RUN_DIR"
        echo "sentinel announce-ip $SELF"
        echo "sentinel announce-port $SENTINEL_PORT"
        # The same ID across restarts: the other Sentinels see the same peer come back
        # rather than a new one beside a dead one.
        echo "sentinel myid $(printf '%s' "$SELF" | sha1sum | cut -c1-40)"
        echo "sentinel auth-pass $MASTER_NAME $(quoted redis-password)"
        echo "sentinel sentinel-pass $(quoted redis-sentinel-password)"
        acl_line redis-sentinel-password
    } >"$RUN_DIR/sentinel.conf"
    echo "redis-ha: $SELF monitors $MASTER_NAME at $primary" >&2
    exec redis-server "$RUN_DIR/sentinel.conf" --sentinel
}

# Ready when, with one of the passwords mounted now (the kubelet may update the files
# before a rotation reached the server), the answer has a line that the regex $2 matches.
probe() {
    probe_port=$1 probe_wanted=$2 probe_key=$3
    shift 3
    for file in "$SECRETS_DIR/$probe_key" "$SECRETS_DIR/$probe_key-previous"; do
        [ -e "$file" ] || continue
        answer=$(cli "$PROBE_HOST" "$probe_port" "${file##*/}" "$@" 2>/dev/null | tr -d '\r') ||
            continue
        printf '%s\n' "$answer" | grep -Eq "$probe_wanted" && return 0
    done
    return 1
}

case "${1:-}" in
data) start_data ;;
sentinel) start_sentinel ;;
# A primary, or a replica whose link to its primary is up: a replica still loading or
# syncing is not ready, so the disruption budget lets no other data node go meanwhile.
data-ready) probe $REDIS_PORT '^(role:master|master_link_status:up)$' redis-password INFO replication ;;
# This Sentinel sees enough Sentinels for the quorum and for a failover's majority.
sentinel-ready) probe $SENTINEL_PORT '^OK' redis-sentinel-password SENTINEL CKQUORUM "$MASTER_NAME" ;;
data-prestop)
    # A primary with a replica attached asks a Sentinel to promote one now, and waits (20 s
    # at most) to be a replica: a drain or a rollout costs a switchover of about a second
    # instead of down-after-milliseconds of failed writes and then a failover.
    info=$(cli "$PROBE_HOST" $REDIS_PORT redis-password INFO replication 2>/dev/null | tr -d '\r') ||
        exit 0
    case "$info" in *role:master*) ;; *) exit 0 ;; esac
    case "$info" in *connected_slaves:0*) exit 0 ;; esac
    for sentinel in $SENTINELS; do
        if cli "$sentinel" $SENTINEL_PORT redis-sentinel-password \
            SENTINEL FAILOVER "$MASTER_NAME" 2>/dev/null | grep -q OK; then
            waited=0
            while [ "$waited" -lt 20 ]; do
                sleep 1
                waited=$((waited + 1))
                if cli "$PROBE_HOST" $REDIS_PORT redis-password INFO replication 2>/dev/null |
                    grep -q '^role:slave'; then
                    exit 0
                fi
            done
            exit 0
        fi
    done
    ;;
*)
    echo "usage: redis-ha.sh data|sentinel|data-ready|sentinel-ready|data-prestop" >&2
    exit 2
    ;;
esac
