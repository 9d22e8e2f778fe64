#!/usr/bin/env bash
# Starts a private tinyproxy (an HTTP CONNECT proxy) for the proxy tests and prints the export
# lines (PATCHCAST_TEST_PROXY, _USER, _PASSWORD, _LOG). Run by scripts/test.sh (which stops it
# at exit), or by hand:
#   eval "$(scripts/tinyproxy.sh start DIR)"   ...   scripts/tinyproxy.sh stop DIR
# Installs tinyproxy with apt-get when it is missing. It listens on 127.0.0.1 only, on a free
# port, with its own config, log and pid file under DIR; it asks for Basic credentials
# (BasicAuth) and has no ConnectPort line, so CONNECT reaches any port (the test servers
# listen on free ports). LogLevel Info records each CONNECT, which the tests look for.
set -euo pipefail

USER_NAME=pcproxy

install_tinyproxy() {
    if ! command -v tinyproxy >/dev/null; then
        echo "installing tinyproxy (apt-get)" >&2
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300 \
            --no-install-recommends tinyproxy >&2
    fi
}

start() {
    local dir=$1
    install_tinyproxy
    mkdir -p "$dir"
    local port password
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    password=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
    touch "$dir/tinyproxy.log"
    cat >"$dir/tinyproxy.conf" <<CONF
Port $port
Listen 127.0.0.1
Timeout 120
LogFile "$dir/tinyproxy.log"
LogLevel Info
PidFile "$dir/tinyproxy.pid"
MaxClients 200
Allow 127.0.0.1
DisableViaHeader Yes
BasicAuth $USER_NAME $password
CONF
    if [ "$(id -u)" = 0 ]; then
        # tinyproxy drops root; the unprivileged user must write its log and pid file.
        echo "User nobody" >>"$dir/tinyproxy.conf"
        echo "Group nogroup" >>"$dir/tinyproxy.conf"
        chown nobody "$dir" "$dir/tinyproxy.log"
    fi
    # Its own session, so a signal to the caller's process group does not reach it.
    setsid tinyproxy -d -c "$dir/tinyproxy.conf" >"$dir/stdout.log" 2>&1 </dev/null &
    echo $! >"$dir/tinyproxy.launch.pid"
    local i
    for i in $(seq 1 100); do
        if python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 0.2)" 2>/dev/null; then
            break
        fi
        sleep 0.1
    done
    echo "export PATCHCAST_TEST_PROXY=http://127.0.0.1:$port"
    echo "export PATCHCAST_TEST_PROXY_USER=$USER_NAME"
    echo "export PATCHCAST_TEST_PROXY_PASSWORD=$password"
    echo "export PATCHCAST_TEST_PROXY_LOG=$dir/tinyproxy.log"
}

stop() {
    local dir=$1
    if [ -f "$dir/tinyproxy.launch.pid" ]; then
        kill "$(cat "$dir/tinyproxy.launch.pid")" 2>/dev/null || true
        rm -f "$dir/tinyproxy.launch.pid"
    fi
}

case "${1:-}" in
    start) start "$2" ;;
    stop) stop "$2" ;;
    *) echo "usage: $0 start|stop DIR" >&2; exit 2 ;;
esac
