#!/usr/bin/env bash
# Starts a private PostgreSQL 15 cluster for the tests and prints the export line for
# PATCHCAST_TEST_POSTGRES. Sourced by scripts/test.sh (which stops it at exit), or run by hand:
#   eval "$(scripts/postgres.sh start DIR)"   ...   scripts/postgres.sh stop DIR
# Installs PostgreSQL with apt-get when it is missing. The cluster listens on 127.0.0.1 and a
# socket directory under DIR only, on a free port, as the `postgres` user (initdb refuses root).
set -euo pipefail

pg_bin() {
    local d
    for d in /usr/lib/postgresql/15/bin /usr/lib/postgresql/*/bin; do
        [ -x "$d/initdb" ] && { echo "$d"; return; }
    done
    return 1
}

install_postgres() {
    if ! pg_bin >/dev/null 2>&1; then
        echo "installing PostgreSQL (apt-get)" >&2
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300 \
            --no-install-recommends postgresql >&2
    fi
}

as_pg() {
    if [ "$(id -u)" = 0 ]; then su postgres -s /bin/sh -c "$*"; else sh -c "$*"; fi
}

start() {
    local dir=$1
    install_postgres
    local bin; bin=$(pg_bin)
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres "$dir"
    local port
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    as_pg "'$bin/initdb' -D '$dir/data' -U postgres --auth=trust -E UTF8 --no-sync >'$dir/initdb.log' 2>&1" \
        || { cat "$dir/initdb.log" >&2; return 1; }
    as_pg "'$bin/pg_ctl' -D '$dir/data' -l '$dir/server.log' -w -o \"-p $port -k '$dir' -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=400\" start >&2" \
        || { cat "$dir/server.log" >&2; return 1; }
    echo "export PATCHCAST_TEST_POSTGRES=postgres://postgres@127.0.0.1:$port/postgres"
}

stop() {
    local dir=$1 bin
    bin=$(pg_bin) || return 0
    [ -d "$dir/data" ] && as_pg "'$bin/pg_ctl' -D '$dir/data' -m fast -w stop >/dev/null 2>&1" || true
}

case "${1:-}" in
    start) start "$2" ;;
    stop) stop "$2" ;;
    *) echo "usage: $0 start|stop DIR" >&2; exit 2 ;;
esac
