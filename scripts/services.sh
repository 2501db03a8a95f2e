#!/usr/bin/env bash
# Makes sure MySQL and Redis answer at the configured addresses.
#
#   scripts/services.sh up      use what answers; else start private servers under .local/
#   scripts/services.sh down    stop the private servers (never anything else)
#   scripts/services.sh status  say what answers where
#
# The addresses come from the same variables as the service (MYSQL_HOST, MYSQL_PORT,
# MYSQL_USER, MYSQL_PASSWORD[_FILE], REDIS_URL, REDIS_PASSWORD[_FILE]): the environment
# first, then the file named by ENV_FILE (default .env), then the defaults.
# A private server is started only for a local address whose port is free; it keeps
# its data, socket, pid file and log in .local/mysql or .local/redis.
set -euo pipefail

cd "$(dirname "$0")/.."
LOCAL="$PWD/.local"
INSTALL_HINT="apt-get install mariadb-server redis-server"

log() { printf 'services: %s\n' "$*"; }
die() {
    printf 'services: error: %s\n' "$*" >&2
    exit 1
}

# --- configuration ----------------------------------------------------------------

trim() {
    local s=${1#"${1%%[![:space:]]*}"}
    printf '%s' "${s%"${s##*[![:space:]]}"}"
}

# The value of $1 as the service reads it: environment (even when empty), else the env
# file, else empty. Like starlette's Config: first '=' splits, surrounding quotes go.
config() {
    local key=$1 file=${ENV_FILE:-.env} line value=""
    if [[ -v $key ]]; then
        printf '%s' "${!key}"
        return
    fi
    [ -f "$file" ] || return 0
    while IFS= read -r line || [ -n "$line" ]; do
        [[ $line == *=* ]] || continue
        [ "$(trim "${line%%=*}")" = "$key" ] || continue
        value=$(trim "${line#*=}")
        if [[ $value =~ ^\"(.*)\"$ || $value =~ ^\'(.*)\'$ ]]; then
            value=${BASH_REMATCH[1]}
        fi
    done <"$file"
    printf '%s' "$value"
}

# Like the service: KEY_FILE (a mounted Secret) wins over KEY.
secret() {
    local path
    path=$(config "$1_FILE")
    if [ -n "$path" ]; then
        [ -r "$path" ] || die "$1_FILE names a file that cannot be read: $path"
        # $(...) drops the trailing newline, as the service does.
        printf '%s' "$(cat "$path")"
    else
        config "$1"
    fi
}

load_config() {
    MYSQL_HOST_=$(config MYSQL_HOST)
    MYSQL_HOST_=${MYSQL_HOST_:-127.0.0.1}
    MYSQL_PORT_=$(config MYSQL_PORT)
    MYSQL_PORT_=${MYSQL_PORT_:-3306}
    MYSQL_USER_=$(config MYSQL_USER)
    MYSQL_USER_=${MYSQL_USER_:-root}
    MYSQL_PASSWORD_=$(secret MYSQL_PASSWORD)

    local url
    url=$(config REDIS_URL)
    url=${url:-redis://127.0.0.1:6379/0}
    REDIS_PASSWORD_=$(secret REDIS_PASSWORD)
    REDIS_SCHEME=${url%%://*}
    if [[ $url =~ ^rediss?://(([^@/]*)@)?(\[[^]/]+\]|[^:/]*)(:([0-9]+))?(/.*)?$ ]]; then
        local userinfo=${BASH_REMATCH[2]}
        REDIS_HOST=${BASH_REMATCH[3]:-127.0.0.1}
        REDIS_HOST=${REDIS_HOST#[}
        REDIS_HOST=${REDIS_HOST%]}
        REDIS_PORT=${BASH_REMATCH[5]:-6379}
        if [ -z "$REDIS_PASSWORD_" ] && [[ $userinfo == *:* ]]; then
            REDIS_PASSWORD_=${userinfo#*:}
        fi
    elif [ "$REDIS_SCHEME" != unix ]; then
        die "REDIS_URL must look like redis://host:port/db"
    fi
    [[ $MYSQL_PORT_ =~ ^[0-9]+$ ]] || die "MYSQL_PORT must be a number"
}

is_local() { [[ $1 == localhost || $1 == 127.* || $1 == ::1 ]]; }
bind_address() { if [ "$1" = localhost ]; then echo 127.0.0.1; else echo "$1"; fi; }

# --- probes (bash's /dev/tcp, so no client is needed) --------------------------------

port_open() { timeout 2 bash -c "exec 3<>'/dev/tcp/$1/$2'" 2>/dev/null; }

# A MySQL server greets first: a 4-byte header, then the protocol version (10) or an
# error packet (0xff, e.g. "host blocked"); either way a MySQL server is there.
mysql_answers() {
    local bytes
    bytes=$(timeout 3 bash -c "exec 3<>'/dev/tcp/$1/$2' && head -c 5 <&3 | od -An -tu1" 2>/dev/null) ||
        return 1
    read -r -a bytes <<<"$bytes"
    [ "${#bytes[@]}" -eq 5 ] && [[ ${bytes[4]} == 10 || ${bytes[4]} == 255 ]]
}

# Any RESP reply to PING (+PONG, -NOAUTH ...) means a Redis server is there.
redis_answers() {
    timeout 3 bash -c "exec 3<>'/dev/tcp/$1/$2' && printf 'PING\r\n' >&3 &&
        IFS= read -r -t 2 line <&3 && [[ \$line == [+-]* ]]" 2>/dev/null
}

# Waits up to $1 seconds for the probe "$2 ..." to succeed.
wait_for() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.3
    done
}

find_bin() {
    local name
    for name in "$@"; do
        if command -v "$name" >/dev/null 2>&1; then
            command -v "$name"
            return
        fi
        for dir in /usr/sbin /usr/local/sbin /usr/bin; do
            [ -x "$dir/$name" ] && echo "$dir/$name" && return
        done
    done
    return 1
}

# A pid from a pid file, only while it is a server of ours (its working directory is
# under .local/): a stale file whose pid was reused by another process is ignored.
our_pid() {
    local pid
    [ -f "$1" ] || return 1
    pid=$(cat "$1" 2>/dev/null) || return 1
    [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
    [[ $(readlink "/proc/$pid/cwd" 2>/dev/null) == "$LOCAL"/* ]] || return 1
    echo "$pid"
}

# --- MySQL / MariaDB ----------------------------------------------------------------

mysql_socket() {
    # A Unix socket path must fit in 108 bytes; a deep checkout falls back to /tmp.
    local sock="$LOCAL/mysql/mysqld.sock"
    if [ "${#sock}" -gt 100 ]; then
        sock="/tmp/usercounter-$(printf '%s' "$LOCAL" | cksum | cut -d' ' -f1).sock"
    fi
    echo "$sock"
}

sql_quote() { printf "'%s'" "${1//\'/\'\'}"; }

start_mysql() {
    local dir="$LOCAL/mysql" server init client sock mysql_opts=()
    server=$(find_bin mariadbd mysqld) ||
        die "no MySQL at $MYSQL_HOST_:$MYSQL_PORT_ and no mariadbd/mysqld to start one. Install it: $INSTALL_HINT"
    sock=$(mysql_socket)
    mkdir -p "$dir"
    if [ ! -d "$dir/data/mysql" ]; then
        log "initialising a private MariaDB/MySQL in .local/mysql/data"
        rm -rf "$dir/data"
        if init=$(find_bin mariadb-install-db mysql_install_db) && "$server" --version | grep -qi mariadb; then
            "$init" --no-defaults --datadir="$dir/data" --user="$(id -un)" \
                --auth-root-authentication-method=normal --skip-test-db >"$dir/init.log" 2>&1 ||
                die "initialising the data directory failed; see .local/mysql/init.log"
        else
            "$server" --no-defaults --initialize-insecure --datadir="$dir/data" \
                --user="$(id -un)" >"$dir/init.log" 2>&1 ||
                die "initialising the data directory failed; see .local/mysql/init.log"
        fi
        rm -f "$dir/.users-done"
    fi
    "$server" --version | grep -qi mariadb || mysql_opts+=(--mysqlx=OFF)
    log "starting private $(basename "$server") on $MYSQL_HOST_:$MYSQL_PORT_ (data in .local/mysql)"
    # setsid: the server outlives this script and a Ctrl-C of `make run`.
    (cd "$dir/data" && exec setsid "$server" --no-defaults --datadir="$dir/data" \
        --socket="$sock" --pid-file="$dir/mysqld.pid" --log-error="$dir/mysqld.log" \
        --bind-address="$(bind_address "$MYSQL_HOST_")" --port="$MYSQL_PORT_" \
        --user="$(id -un)" "${mysql_opts[@]}" \
        </dev/null >>"$dir/mysqld.log" 2>&1 &)
    if ! wait_for 90 mysql_answers "$MYSQL_HOST_" "$MYSQL_PORT_"; then
        tail -n 20 "$dir/mysqld.log" >&2 || true
        die "the private MySQL did not answer within 90 s; its log is .local/mysql/mysqld.log"
    fi
    # A fresh server has a passwordless root; give it the configured account once.
    if [ ! -f "$dir/.users-done" ] && { [ "$MYSQL_USER_" != root ] || [ -n "$MYSQL_PASSWORD_" ]; }; then
        client=$(find_bin mariadb mysql) || die "no mariadb/mysql client to create $MYSQL_USER_. Install it: $INSTALL_HINT"
        local user pass
        user=$(sql_quote "$MYSQL_USER_")
        pass=$(sql_quote "$MYSQL_PASSWORD_")
        "$client" --no-defaults --socket="$sock" -uroot -e "
            CREATE USER IF NOT EXISTS $user@'%' IDENTIFIED BY $pass;
            CREATE USER IF NOT EXISTS $user@'localhost' IDENTIFIED BY $pass;
            CREATE USER IF NOT EXISTS $user@'127.0.0.1' IDENTIFIED BY $pass;
            CREATE USER IF NOT EXISTS $user@'::1' IDENTIFIED BY $pass;
            ALTER USER $user@'%' IDENTIFIED BY $pass;
            ALTER USER $user@'localhost' IDENTIFIED BY $pass;
            ALTER USER $user@'127.0.0.1' IDENTIFIED BY $pass;
            ALTER USER $user@'::1' IDENTIFIED BY $pass;
            GRANT ALL PRIVILEGES ON *.* TO $user@'%' WITH GRANT OPTION;
            GRANT ALL PRIVILEGES ON *.* TO $user@'localhost' WITH GRANT OPTION;
            GRANT ALL PRIVILEGES ON *.* TO $user@'127.0.0.1' WITH GRANT OPTION;
            GRANT ALL PRIVILEGES ON *.* TO $user@'::1' WITH GRANT OPTION;" ||
            die "could not create the MySQL account $MYSQL_USER_ in the private server"
        touch "$dir/.users-done"
    fi
    log "MySQL ready on $MYSQL_HOST_:$MYSQL_PORT_"
}

ensure_mysql() {
    if mysql_answers "$MYSQL_HOST_" "$MYSQL_PORT_"; then
        log "MySQL answers on $MYSQL_HOST_:$MYSQL_PORT_"
        return
    fi
    is_local "$MYSQL_HOST_" ||
        die "MySQL at $MYSQL_HOST_:$MYSQL_PORT_ does not answer; start it or set MYSQL_HOST/MYSQL_PORT"
    if our_pid "$LOCAL/mysql/mysqld.pid" >/dev/null; then
        # Ours, but starting or listening elsewhere (MYSQL_PORT changed): give it a moment.
        wait_for 30 mysql_answers "$MYSQL_HOST_" "$MYSQL_PORT_" && return
        die "the private MySQL (.local/mysql) runs but does not answer on $MYSQL_HOST_:$MYSQL_PORT_; run 'make stop-services' and retry"
    fi
    ! port_open "$MYSQL_HOST_" "$MYSQL_PORT_" ||
        die "port $MYSQL_PORT_ on $MYSQL_HOST_ is taken by something that is not MySQL; set MYSQL_PORT to a free port"
    start_mysql
}

# --- Redis --------------------------------------------------------------------------

start_redis() {
    local dir="$LOCAL/redis" server auth=()
    server=$(find_bin redis-server) ||
        die "no Redis at $REDIS_HOST:$REDIS_PORT and no redis-server to start one. Install it: $INSTALL_HINT"
    mkdir -p "$dir"
    [ -z "$REDIS_PASSWORD_" ] || auth=(--requirepass "$REDIS_PASSWORD_")
    log "starting private redis-server on $REDIS_HOST:$REDIS_PORT (data in .local/redis)"
    # AOF as in production, so counters not yet written behind survive a restart.
    "$server" --daemonize yes --bind "$(bind_address "$REDIS_HOST")" --port "$REDIS_PORT" \
        --dir "$dir" --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" \
        --save "" --appendonly yes --appendfsync everysec \
        --maxmemory-policy volatile-lru "${auth[@]}" </dev/null ||
        die "redis-server failed to start; its log is .local/redis/redis.log"
    if ! wait_for 20 redis_answers "$REDIS_HOST" "$REDIS_PORT"; then
        tail -n 20 "$dir/redis.log" >&2 || true
        die "the private Redis did not answer within 20 s; its log is .local/redis/redis.log"
    fi
    log "Redis ready on $REDIS_HOST:$REDIS_PORT"
}

ensure_redis() {
    if [ "$REDIS_SCHEME" = unix ]; then
        log "REDIS_URL is a Unix socket; not checked"
        return
    fi
    if redis_answers "$REDIS_HOST" "$REDIS_PORT"; then
        log "Redis answers on $REDIS_HOST:$REDIS_PORT"
        return
    fi
    if [ "$REDIS_SCHEME" = rediss ] || ! is_local "$REDIS_HOST"; then
        die "Redis at $REDIS_HOST:$REDIS_PORT does not answer; start it or set REDIS_URL"
    fi
    ! port_open "$REDIS_HOST" "$REDIS_PORT" ||
        die "port $REDIS_PORT on $REDIS_HOST is taken by something that is not Redis; set REDIS_URL to a free port"
    start_redis
}

# --- stop ---------------------------------------------------------------------------

stop_one() {
    local name=$1 pidfile=$2 pid
    if ! pid=$(our_pid "$pidfile"); then
        rm -f "$pidfile"
        return
    fi
    log "stopping private $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 60))
    while kill -0 "$pid" 2>/dev/null; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "$name did not stop within 60 s; killing it"
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.2
    done
    rm -f "$pidfile"
}

status() {
    local where
    if mysql_answers "$MYSQL_HOST_" "$MYSQL_PORT_"; then where=answers; else where="does not answer"; fi
    log "MySQL $MYSQL_HOST_:$MYSQL_PORT_ $where"
    if [ "$REDIS_SCHEME" = unix ]; then
        log "Redis on a Unix socket (not checked)"
    else
        if redis_answers "$REDIS_HOST" "$REDIS_PORT"; then where=answers; else where="does not answer"; fi
        log "Redis $REDIS_HOST:$REDIS_PORT $where"
    fi
    local pid
    if pid=$(our_pid "$LOCAL/mysql/mysqld.pid"); then log "private MySQL running (pid $pid)"; fi
    if pid=$(our_pid "$LOCAL/redis/redis.pid"); then log "private Redis running (pid $pid)"; fi
}

case "${1:-up}" in
up)
    load_config
    ensure_mysql
    ensure_redis
    ;;
down)
    stop_one MySQL "$LOCAL/mysql/mysqld.pid"
    stop_one Redis "$LOCAL/redis/redis.pid"
    ;;
status)
    load_config
    status
    ;;
*) die "usage: $0 up|down|status" ;;
esac
