#!/usr/bin/env bash
# Makes the servers the integration tests use available on loopback before they run:
#   PostgreSQL on 127.0.0.1:5432, user postgres logging in without a password (trust);
#   Redis on 127.0.0.1:6379.
# A service that already answers is left alone (never stopped or reconfigured). Otherwise its
# installed binaries are started; otherwise, as root on Debian/Ubuntu, the packages are
# installed first. Quiet when everything already runs; exits non-zero with a reason when a
# service cannot be made available within the wait.
#
# Usage: ci/services.sh            make both available
#        ci/services.sh --check    change nothing: report each service's state and what would be
#                                  done; exit 0 when both are ready, 1 otherwise
# Environment: CALLFS_SERVICES_WAIT (seconds, default 30), CALLFS_SERVICES_APT_TIMEOUT (seconds),
# CALLFS_SERVICES_PG_PORT / CALLFS_SERVICES_REDIS_PORT (other ports to probe, with --check only).
set -euo pipefail

HOST=127.0.0.1
PG_PORT=5432
REDIS_PORT=6379
WAIT=${CALLFS_SERVICES_WAIT:-30}              # seconds for both to accept connections
APT_TIMEOUT=${CALLFS_SERVICES_APT_TIMEOUT:-900}

CHECK=0
case "${1:-}" in
    "") ;;
    --check|--dry-run) CHECK=1 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "services.sh: unknown argument: $1 (use --check)" >&2; exit 2 ;;
esac
if [ "$CHECK" = 1 ]; then
    PG_PORT=${CALLFS_SERVICES_PG_PORT:-$PG_PORT}
    REDIS_PORT=${CALLFS_SERVICES_REDIS_PORT:-$REDIS_PORT}
fi

say() { echo "services.sh: $*" >&2; }
fail() { say "$*"; exit 1; }

port_open() {  # true when something accepts TCP connections on $HOST:$1
    timeout 2 bash -c "exec 3<>/dev/tcp/$HOST/$1" 2>/dev/null
}

pg_login() {  # true when user postgres gets in without a password (psql missing: port only)
    if command -v psql >/dev/null 2>&1; then
        PGCONNECT_TIMEOUT=3 psql -w -h "$HOST" -p "$PG_PORT" -U postgres -d postgres -Atqc \
            'SELECT 1' >/dev/null 2>&1
    else
        port_open "$PG_PORT"
    fi
}

redis_ready() {
    if command -v redis-cli >/dev/null 2>&1; then
        [ "$(timeout 3 redis-cli -h "$HOST" -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]
    else
        port_open "$REDIS_PORT"
    fi
}

newest_version_in() {  # the highest numeric directory name under $1, if any
    local dir found=""
    for dir in "$1"/*; do
        [ -d "$dir" ] || continue
        case "${dir##*/}" in *[!0-9.]*) continue ;; esac
        found+="${dir##*/}"$'\n'
    done
    printf '%s' "$found" | sort -V | tail -n 1
}

pg_version() {  # the newest PostgreSQL with a Debian cluster, else with installed binaries
    local v
    v=$(newest_version_in /etc/postgresql)
    [ -n "$v" ] || v=$(newest_version_in /usr/lib/postgresql)
    echo "$v"
}

have_pg() { command -v pg_ctlcluster >/dev/null 2>&1 && [ -n "$(pg_version)" ]; }
have_redis() { command -v redis-server >/dev/null 2>&1; }
can_install() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; }

plan() {  # what would make service $1 available: ready, start, install, or none
    case "$1" in
        postgres)
            if port_open "$PG_PORT"; then echo ready
            elif have_pg; then echo start
            elif can_install; then echo install
            else echo none; fi ;;
        redis)
            if port_open "$REDIS_PORT"; then echo ready
            elif have_redis; then echo start
            elif can_install; then echo install
            else echo none; fi ;;
    esac
}

PG_PLAN=$(plan postgres)
REDIS_PLAN=$(plan redis)

if [ "$CHECK" = 1 ]; then
    status=0
    if [ "$PG_PLAN" = ready ]; then
        if pg_login; then
            echo "postgres: ready on $HOST:$PG_PORT (user postgres, no password)"
        else
            echo "postgres: answers on $HOST:$PG_PORT, but user postgres cannot log in without" \
                 "a password; it would be left as it is"
            status=1
        fi
    else
        echo "postgres: not answering on $HOST:$PG_PORT; would $PG_PLAN"
        status=1
    fi
    if [ "$REDIS_PLAN" = ready ]; then
        echo "redis: ready on $HOST:$REDIS_PORT"
    else
        echo "redis: not answering on $HOST:$REDIS_PORT; would $REDIS_PLAN"
        status=1
    fi
    exit "$status"
fi

if [ "$PG_PLAN" = none ]; then
    fail "PostgreSQL is not running on $HOST:$PG_PORT, is not installed, and cannot be" \
         "installed here (needs root and apt-get)"
fi
if [ "$REDIS_PLAN" = none ]; then
    fail "Redis is not running on $HOST:$REDIS_PORT, is not installed, and cannot be" \
         "installed here (needs root and apt-get)"
fi

# -- install what is missing ---------------------------------------------------------------------

packages=()
[ "$PG_PLAN" = install ] && packages+=(postgresql)
[ "$REDIS_PLAN" = install ] && packages+=(redis-server)
if [ "${#packages[@]}" -gt 0 ]; then
    say "installing ${packages[*]}"
    export DEBIAN_FRONTEND=noninteractive
    timeout "$APT_TIMEOUT" apt-get update -qq >/dev/null \
        || fail "apt-get update failed or timed out"
    timeout "$APT_TIMEOUT" apt-get install -y -qq --no-install-recommends "${packages[@]}" \
        >/dev/null || fail "apt-get install ${packages[*]} failed or timed out"
    [ "$PG_PLAN" = install ] && PG_PLAN=start
    [ "$REDIS_PLAN" = install ] && REDIS_PLAN=start
fi

# -- start what is not running -------------------------------------------------------------------

if [ "$PG_PLAN" = start ]; then
    version=$(pg_version)
    [ -n "$version" ] || fail "PostgreSQL is installed but no version was found"
    if [ ! -d "/etc/postgresql/$version/main" ]; then
        say "creating PostgreSQL $version cluster main"
        pg_createcluster "$version" main >/dev/null || fail "pg_createcluster $version main failed"
    fi
    say "starting PostgreSQL $version (cluster main)"
    pg_ctlcluster "$version" main start || fail "pg_ctlcluster $version main start failed"
fi

if [ "$REDIS_PLAN" = start ]; then
    say "starting Redis"
    redis-server --daemonize yes --bind "$HOST" --port "$REDIS_PORT" --save '' --appendonly no \
        >/dev/null || fail "redis-server did not start"
fi

# -- wait until both answer ----------------------------------------------------------------------

deadline=$((SECONDS + WAIT))
trusted=0
while :; do
    pg_ok=0
    redis_ok=0
    if pg_login; then
        pg_ok=1
    elif [ "$PG_PLAN" = start ] && [ "$trusted" = 0 ] && port_open "$PG_PORT"; then
        # A server this script started (or installed) still asks for a password: let loopback
        # in without one. First match wins in pg_hba.conf, so the line goes first.
        hba="/etc/postgresql/$(pg_version)/main/pg_hba.conf"
        trust_line='^host[[:space:]]+all[[:space:]]+all[[:space:]]+127\.0\.0\.1/32[[:space:]]+trust'
        if [ -w "$hba" ] && ! grep -qE "$trust_line" "$hba"; then
            say "allowing user postgres from $HOST without a password ($hba)"
            { echo "host all all 127.0.0.1/32 trust"; cat "$hba"; } >"$hba.callfs-new"
            chown --reference="$hba" "$hba.callfs-new" 2>/dev/null || true
            chmod --reference="$hba" "$hba.callfs-new" 2>/dev/null || true
            mv "$hba.callfs-new" "$hba"
            pg_ctlcluster "$(pg_version)" main reload || true
        fi
        trusted=1
    fi
    redis_ready && redis_ok=1
    if [ "$pg_ok" = 1 ] && [ "$redis_ok" = 1 ]; then
        exit 0
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
        [ "$pg_ok" = 1 ] || say "PostgreSQL does not accept user postgres on $HOST:$PG_PORT" \
                                "without a password after ${WAIT}s"
        [ "$redis_ok" = 1 ] || say "Redis does not answer on $HOST:$REDIS_PORT after ${WAIT}s"
        exit 1
    fi
    sleep 0.5
done
