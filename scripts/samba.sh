#!/usr/bin/env bash
# Starts a private Samba server (smbd) for the SMB tests and prints the export lines
# (PATCHCAST_TEST_SMB, _USER, _PASSWORD, _DIR). Run by scripts/test.sh (which stops it at
# exit), or by hand:
#   eval "$(scripts/samba.sh start DIR)"   ...   scripts/samba.sh stop DIR
# Installs samba with apt-get when it is missing. smbd listens on 127.0.0.1 only, on a free
# port, with its own smb.conf, state directories and password database under DIR. The
# `aio read/write size = 0` lines keep Samba from sending interim STATUS_PENDING replies,
# which the smb crate (0.10.2) mishandles (see ../shared/TESTBED.md).
set -euo pipefail

USER_NAME=pcsmbtest

install_samba() {
    if ! [ -x /usr/sbin/smbd ] || ! command -v smbpasswd >/dev/null; then
        echo "installing Samba (apt-get)" >&2
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300 \
            --no-install-recommends samba smbclient >&2
    fi
}

start() {
    local dir=$1
    install_samba
    mkdir -p "$dir"/{share,private,lock,state,cache,pid,ncalrpc,log}
    id "$USER_NAME" >/dev/null 2>&1 || useradd -M -s /usr/sbin/nologin "$USER_NAME"
    chown "$USER_NAME" "$dir/share"
    chmod 755 "$dir" "$dir/share"
    local port password
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    password=$(head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n')
    cat >"$dir/smb.conf" <<CONF
[global]
    server role = standalone server
    interfaces = 127.0.0.1
    bind interfaces only = yes
    smb ports = $port
    disable netbios = yes
    private dir = $dir/private
    lock directory = $dir/lock
    state directory = $dir/state
    cache directory = $dir/cache
    pid directory = $dir/pid
    ncalrpc dir = $dir/ncalrpc
    log file = $dir/log/smbd.log
    passdb backend = tdbsam:$dir/private/passdb.tdb
    map to guest = never
    load printers = no
    printing = bsd
    printcap name = /dev/null
    disable spoolss = yes
    server min protocol = SMB2_10
    smb encrypt = desired
    aio read size = 0
    aio write size = 0

[patchcast]
    path = $dir/share
    read only = no
    valid users = $USER_NAME
    force user = $USER_NAME
CONF
    printf '%s\n%s\n' "$password" "$password" | smbpasswd -c "$dir/smb.conf" -s -a "$USER_NAME" >/dev/null
    # Its own session: on SIGTERM smbd signals its whole process group, which would
    # otherwise be the caller's (test.sh died with 143 at its own cleanup).
    setsid /usr/sbin/smbd --foreground --no-process-group -s "$dir/smb.conf" \
        >"$dir/log/stdout.log" 2>&1 </dev/null &
    echo $! >"$dir/smbd.pid"
    # Wait until it accepts connections (usually ~0.1 s).
    local i
    for i in $(seq 1 100); do
        if python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 0.2)" 2>/dev/null; then
            break
        fi
        sleep 0.1
    done
    echo "export PATCHCAST_TEST_SMB=smb://127.0.0.1:$port/patchcast"
    echo "export PATCHCAST_TEST_SMB_USER=$USER_NAME"
    echo "export PATCHCAST_TEST_SMB_PASSWORD=$password"
    echo "export PATCHCAST_TEST_SMB_DIR=$dir/share"
}

stop() {
    local dir=$1
    if [ -f "$dir/smbd.pid" ]; then
        kill "$(cat "$dir/smbd.pid")" 2>/dev/null || true
        rm -f "$dir/smbd.pid"
    fi
}

case "${1:-}" in
    start) start "$2" ;;
    stop) stop "$2" ;;
    *) echo "usage: $0 start|stop DIR" >&2; exit 2 ;;
esac
